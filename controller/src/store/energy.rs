//! Energy, money and carbon: what the lamps used today, this week and this month, what the
//! council would have used lighting the same lamps the old ways, and the half-hourly
//! consumption an unmetered-supply (UMS) customer sends for billing.
//!
//! # Metered energy
//!
//! From the 15-minute rollups (`rollup_15m`, kept 5 years): the sum of the per-reading
//! energy deltas the controller derives from each node's cumulative meter, so a resent
//! reading never counts twice. A reading's energy is what the lamp used since its previous
//! reading, and lands in the 15-minute bucket of the reading's own time (the node's clock).
//! With the default 5-minute reports at most one report interval's energy sits in the next
//! bucket; after an outage the first reading carries the whole gap's energy.
//!
//! # Periods
//!
//! Today, this week (from Monday) and this month, each from its local midnight to `now`,
//! local meaning the deployment's time zone (`[controller.policy] time_zone`, summer time
//! included): the day of a clock change has 23 or 25 hours.
//!
//! # Baselines
//!
//! For each lamp and each 15-minute bucket in which the lamp reported (the hours the meter
//! covers), the energy the lamp would have used under the named policy `full` (100 % dusk to
//! dawn) or `part-night` (100 % to 22:00, 75 % to 00:00, 50 % to 05:30, 100 % to dawn),
//! minute by minute: the policy's own [`crate::core::policy::decide`] gives the level from
//! the darkness at the lamp (`sun::is_dark`, taken at the middle of each minute, at the lamp's
//! position rounded to 0.05 degrees, a few seconds of sunset at most) and the local time, and
//! the lamp's rated power model (`lamplighter_town::LedPowerModel`: driver losses and the
//! 0.5 W standby by day included, as the nodes' meters see them) gives the power at that
//! level. Lamps that did not report in a bucket count in neither metered nor baseline, so
//! an outage does not show up as a saving. Savings are baseline minus metered (negative if
//! the lamps used more), in kWh, GBP and t CO2e, and as a percentage of the baseline.
//!
//! # Half-hourly export
//!
//! [`Store::half_hourly_csv`] writes one row per lamp (the UMS inventory line: a lamp, with
//! its rated power to map it to a charge code) and local half-hour settlement period:
//!
//! `date,period,period_start_utc,tenant,zone,lamp_id,dev_eui,rated_power_w,energy_kwh,readings`
//!
//! - `date`: the local day (`YYYY-MM-DD`, the deployment's time zone).
//! - `period`: 1-48, period 1 starting at local midnight; 1-46 on the day the clocks go
//!   forward and 1-50 on the day they go back, as settlement periods are counted. A time
//!   zone whose offset is not whole half-hours has no such periods and is refused.
//! - `period_start_utc`: when the period starts, ISO 8601 UTC.
//! - `energy_kwh`: metered energy in the period, kWh, 4 decimals (the meters' 0.1 Wh).
//! - `readings`: readings that carried it; `0` means no data for the period (the lamp did
//!   not report), as opposed to a reported zero.
//!
//! Every provisioned lamp of the tenant gets every period in `[from, to)`, with or without
//! data, ordered by lamp then time: the complete grid a meter administrator expects.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use lamplighter_protocol::local_time::{date_of_days, days_of_date, TimeZone};
use lamplighter_protocol::{sun, TenantId, UnixMs};
use lamplighter_town::LedPowerModel;
use rusqlite::params;
use serde::Serialize;

use super::export::iso8601;
use super::{Store, StoreError};
use crate::core::policy::{self, LampSituation, PolicyConfig};

/// Baselines the savings are measured against: named policies.
pub const BASELINES: [&str; 2] = ["full", "part-night"];

const BUCKET_S: i64 = 900;
const HALF_HOUR_S: i64 = 1800;

pub use crate::tariff::{Tariff, TariffError};

#[derive(Debug, thiserror::Error)]
pub enum EnergyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tariff(#[from] TariffError),
    #[error(
        "time zone {zone} is {offset_min} min from UTC: half-hourly settlement periods need \
         whole half-hours"
    )]
    Offset { zone: TimeZone, offset_min: i32 },
    #[error("the range must start before it ends: {from_s} >= {to_s}")]
    Range { from_s: i64, to_s: i64 },
}

/// Savings against one baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Savings {
    pub baseline_kwh: f64,
    pub baseline_gbp: f64,
    pub baseline_co2e_t: f64,
    /// Baseline minus metered (negative: more than the baseline).
    pub saved_kwh: f64,
    pub saved_gbp: f64,
    pub saved_co2e_t: f64,
    /// Of the baseline; `None` when the baseline is zero (nothing reported).
    pub saved_pct: Option<f64>,
}

/// One period's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyPeriod {
    /// `[from_s, to_s)`, Unix seconds; `from_s` is a local midnight, `to_s` is `now`.
    pub from_s: i64,
    pub to_s: i64,
    pub metered_kwh: f64,
    pub gbp: f64,
    pub co2e_t: f64,
    /// Lamp-hours the meters cover (15-minute buckets with a reading, per lamp).
    pub reported_lamp_hours: f64,
    /// By baseline name ([`BASELINES`]).
    pub savings: BTreeMap<&'static str, Savings>,
}

/// Today, this week and this month for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergySummary {
    pub tenant: TenantId,
    pub now_ms: u64,
    pub time_zone: TimeZone,
    pub tariff: Tariff,
    pub today: EnergyPeriod,
    pub week: EnergyPeriod,
    pub month: EnergyPeriod,
}

/// The starts (Unix seconds) of the local day, week (Monday) and month holding `now_s`.
pub fn period_starts(now_s: i64, time_zone: TimeZone) -> (i64, i64, i64) {
    let now = UnixMs((now_s.max(0) * 1000) as u64);
    let day = time_zone.local_days(now);
    let date = date_of_days(day);
    let weekday = chrono::Datelike::weekday(&date).num_days_from_monday() as i64;
    let month_day = days_of_date(chrono::Datelike::with_day(&date, 1).unwrap_or(date));
    let start = |d: i64| (time_zone.instants_at_local(d, 0).0 .0 / 1000) as i64;
    (start(day), start(day - weekday), start(month_day))
}

/// The levels one baseline gives over a bucket: (level, minutes), usually one entry.
type Levels = Vec<(u8, u8)>;

/// Baseline levels per (bucket, place), computed once per query.
struct BaselineLevels {
    policies: Vec<(&'static str, PolicyConfig)>,
    cache: HashMap<(i64, i64, i64, i64), Vec<Levels>>,
}

impl BaselineLevels {
    fn new(time_zone: TimeZone) -> Self {
        let policies = BASELINES
            .iter()
            .filter_map(|&name| {
                PolicyConfig::named(name).map(|p| (name, PolicyConfig { time_zone, ..p }))
            })
            .collect();
        BaselineLevels {
            policies,
            cache: HashMap::new(),
        }
    }

    /// Each baseline's levels over the first `minutes` (at most 15) minutes from
    /// `bucket_s` at cell (`lat_q`, `lon_q`) (degrees times 20).
    fn levels(&mut self, bucket_s: i64, minutes: i64, lat_q: i64, lon_q: i64) -> &[Levels] {
        let policies = &self.policies;
        self.cache
            .entry((bucket_s, minutes, lat_q, lon_q))
            .or_insert_with(|| {
                let (lat, lon) = (lat_q as f64 / 20.0, lon_q as f64 / 20.0);
                let mut out: Vec<Levels> = vec![Vec::new(); policies.len()];
                for minute in 0..minutes.clamp(0, BUCKET_S / 60) {
                    let now = UnixMs(((bucket_s + minute * 60 + 30).max(0) * 1000) as u64);
                    let situation = LampSituation {
                        now,
                        dark: sun::is_dark(lat, lon, now),
                        bubble_until: None,
                        override_: None,
                        class: None,
                    };
                    for (levels, (_, p)) in out.iter_mut().zip(policies) {
                        let level = policy::decide(p, &situation).level_pct;
                        match levels.iter_mut().find(|(l, _)| *l == level) {
                            Some((_, n)) => *n += 1,
                            None => levels.push((level, 1)),
                        }
                    }
                }
                out
            })
    }
}

/// Wh one lamp of `rated_power_w` draws over `levels` (minutes at each level).
fn baseline_wh(model: &LedPowerModel, levels: &Levels) -> f64 {
    levels
        .iter()
        .map(|&(level, minutes)| model.energy_wh(level as f32, minutes as f64 * 60.0))
        .sum()
}

fn savings(baseline_wh: f64, metered_wh: f64, tariff: &Tariff) -> Savings {
    let baseline_kwh = baseline_wh / 1000.0;
    let saved_kwh = (baseline_wh - metered_wh) / 1000.0;
    Savings {
        baseline_kwh,
        baseline_gbp: baseline_kwh * tariff.gbp_per_kwh,
        baseline_co2e_t: baseline_kwh * tariff.co2e_kg_per_kwh / 1000.0,
        saved_kwh,
        saved_gbp: saved_kwh * tariff.gbp_per_kwh,
        saved_co2e_t: saved_kwh * tariff.co2e_kg_per_kwh / 1000.0,
        saved_pct: (baseline_wh > 0.0).then(|| 100.0 * (baseline_wh - metered_wh) / baseline_wh),
    }
}

#[derive(Default)]
struct Sums {
    metered_dwh: i64,
    buckets: i64,
    baseline_wh: Vec<f64>,
}

impl Sums {
    fn period(&self, from_s: i64, to_s: i64, tariff: &Tariff) -> EnergyPeriod {
        let metered_wh = self.metered_dwh as f64 / 10.0;
        let metered_kwh = metered_wh / 1000.0;
        EnergyPeriod {
            from_s,
            to_s,
            metered_kwh,
            gbp: metered_kwh * tariff.gbp_per_kwh,
            co2e_t: metered_kwh * tariff.co2e_kg_per_kwh / 1000.0,
            reported_lamp_hours: self.buckets as f64 * BUCKET_S as f64 / 3600.0,
            savings: BASELINES
                .iter()
                .enumerate()
                .map(|(i, &name)| {
                    let b = self.baseline_wh.get(i).copied().unwrap_or(0.0);
                    (name, savings(b, metered_wh, tariff))
                })
                .collect(),
        }
    }
}

impl Store {
    /// Today, this week (from Monday) and this month of `tenant` up to `now`, with days in
    /// the deployment's time zone: metered kWh, GBP, t CO2e, and savings against the
    /// `full` and `part-night` baselines (the module documentation gives the method).
    pub fn energy_summary(
        &self,
        tenant: &TenantId,
        now: UnixMs,
        time_zone: TimeZone,
        tariff: &Tariff,
    ) -> Result<EnergySummary, EnergyError> {
        tariff.validate()?;
        let now_s = (now.0 / 1000) as i64;
        let (day_s, week_s, month_s) = period_starts(now_s, time_zone);
        let from_s = week_s.min(month_s);
        let mut periods: [(i64, Sums); 3] = [
            (day_s, Sums::default()),
            (week_s, Sums::default()),
            (month_s, Sums::default()),
        ];
        for (_, s) in &mut periods {
            s.baseline_wh = vec![0.0; BASELINES.len()];
        }
        // Lamps in one place with one rated power share their baseline, so the work below
        // grows with buckets and places, not lamps. The rollups are read from their covering
        // index and grouped here: SQLite's own GROUP BY (with the join) took 8 s for a
        // month of 1,000 lamps.
        let mut place_of_lamp: HashMap<i64, usize> = HashMap::new();
        let mut places: Vec<(f64, i64, i64)> = Vec::new();
        {
            let mut place_index: HashMap<(u64, i64, i64), usize> = HashMap::new();
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT lamp_id, rated_power_w, CAST(round(lat * 20) AS INTEGER),
                        CAST(round(lon * 20) AS INTEGER)
                     FROM nodes",
                )
                .map_err(self.sql())?;
            let mut rows = stmt.query([]).map_err(self.sql())?;
            while let Some(r) = rows.next().map_err(self.sql())? {
                let get = || -> rusqlite::Result<(i64, f64, i64, i64)> {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                };
                let (lamp, rated_w, lat_q, lon_q) = get().map_err(self.sql())?;
                let k = *place_index
                    .entry((rated_w.to_bits(), lat_q, lon_q))
                    .or_insert_with(|| {
                        places.push((rated_w, lat_q, lon_q));
                        places.len() - 1
                    });
                place_of_lamp.insert(lamp, k);
            }
        }
        // (bucket, place) -> (lamp-buckets, dWh)
        let mut groups: HashMap<(i64, usize), (i64, i64)> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT bucket_s, lamp_id, energy_dwh FROM rollup_15m INDEXED BY
                        rollup_15m_tenant_time
                     WHERE tenant = ?1 AND bucket_s >= ?2 AND bucket_s <= ?3",
                )
                .map_err(self.sql())?;
            let mut rows = stmt
                .query(params![tenant.as_str(), from_s, now_s])
                .map_err(self.sql())?;
            while let Some(r) = rows.next().map_err(self.sql())? {
                let get = || -> rusqlite::Result<(i64, i64, i64)> {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                };
                let (bucket_s, lamp, dwh) = get().map_err(self.sql())?;
                // A rollup of a lamp no longer provisioned has no place: left out, as a join
                // would.
                if let Some(&place) = place_of_lamp.get(&lamp) {
                    let g = groups.entry((bucket_s, place)).or_default();
                    g.0 += 1;
                    g.1 += dwh;
                }
            }
        }
        // Summed in a fixed order (bucket, power, place), so the figures do not depend on
        // the map's.
        let mut groups: Vec<((i64, usize), (i64, i64))> = groups.into_iter().collect();
        groups.sort_unstable_by(|((b1, p1), _), ((b2, p2), _)| {
            let (w1, a1, o1) = places[*p1];
            let (w2, a2, o2) = places[*p2];
            (b1, w1.to_bits(), a1, o1).cmp(&(b2, w2.to_bits(), a2, o2))
        });
        let mut levels = BaselineLevels::new(time_zone);
        let mut models: HashMap<u32, LedPowerModel> = HashMap::new();
        for ((bucket_s, place), (lamps, dwh)) in groups {
            let (rated_w, lat_q, lon_q) = places[place];
            let rated_w = rated_w as f32;
            let model = *models
                .entry(rated_w.to_bits())
                .or_insert_with(|| LedPowerModel::for_rated(rated_w));
            // The bucket now is in counts up to now only, as its meter readings do.
            let minutes = ((now_s - bucket_s) / 60).min(BUCKET_S / 60);
            let wh: Vec<f64> = levels
                .levels(bucket_s, minutes, lat_q, lon_q)
                .iter()
                .map(|l| baseline_wh(&model, l) * lamps as f64)
                .collect();
            for (start, sums) in &mut periods {
                if bucket_s >= *start {
                    sums.metered_dwh += dwh;
                    sums.buckets += lamps;
                    for (acc, w) in sums.baseline_wh.iter_mut().zip(&wh) {
                        *acc += w;
                    }
                }
            }
        }
        let [today, week, month] = periods.map(|(start, s)| s.period(start, now_s, tariff));
        Ok(EnergySummary {
            tenant: tenant.clone(),
            now_ms: now.0,
            time_zone,
            tariff: *tariff,
            today,
            week,
            month,
        })
    }

    /// Half-hourly consumption per lamp over `[from_s, to_s)` (Unix seconds, rounded out to
    /// whole local half-hours) as CSV for unmetered-supply billing; every lamp of `tenant`
    /// (or of every tenant) gets every period (see the module documentation for the
    /// columns). Returns the rows written.
    pub fn half_hourly_csv(
        &self,
        tenant: Option<&TenantId>,
        from_s: i64,
        to_s: i64,
        time_zone: TimeZone,
        mut out: impl Write,
    ) -> Result<u64, EnergyError> {
        if from_s >= to_s {
            return Err(EnergyError::Range { from_s, to_s });
        }
        // Half-hours [first, last) since the epoch; a zone of whole half-hour offsets has
        // local half-hours that are UTC ones. Each is labelled with its local date and its
        // number from local midnight, once for every lamp.
        let first = from_s.div_euclid(HALF_HOUR_S);
        let last = (to_s + HALF_HOUR_S - 1).div_euclid(HALF_HOUR_S);
        let mut periods = Vec::with_capacity((last - first).max(0) as usize);
        for hh in first..last {
            let start = UnixMs((hh.max(0) * HALF_HOUR_S * 1000) as u64);
            let offset_min = time_zone.offset_min_at(start);
            if offset_min % 30 != 0 {
                return Err(EnergyError::Offset {
                    zone: time_zone,
                    offset_min,
                });
            }
            let day = time_zone.local_days(start);
            let midnight_s = (time_zone.instants_at_local(day, 0).0 .0 / 1000) as i64;
            let period = (hh * HALF_HOUR_S - midnight_s).div_euclid(HALF_HOUR_S) + 1;
            let date = date_of_days(day).format("%Y-%m-%d").to_string();
            periods.push((hh, date, period));
        }
        let mut w = crate::csv_export::writer(&mut out);
        w.write_record([
            "date",
            "period",
            "period_start_utc",
            "tenant",
            "zone",
            "lamp_id",
            "dev_eui",
            "rated_power_w",
            "energy_kwh",
            "readings",
        ])
        .map_err(StoreError::from)?;
        let lamps: Vec<(i64, String, i64, String, f64)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT lamp_id, tenant, zone, dev_eui, rated_power_w FROM nodes
                     WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, lamp_id",
                )
                .map_err(self.sql())?;
            let rows = stmt
                .query_map(params![tenant.map(|t| t.as_str())], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(self.sql())?;
            rows.collect::<Result<_, _>>().map_err(self.sql())?
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT bucket_s / 1800, SUM(energy_dwh), SUM(readings) FROM rollup_15m
                 WHERE lamp_id = ?1 AND bucket_s >= ?2 AND bucket_s < ?3
                 GROUP BY 1 ORDER BY 1",
            )
            .map_err(self.sql())?;
        let mut n = 0u64;
        for (lamp, tenant, zone, dev_eui, rated_w) in &lamps {
            let mut data: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            let mut rows = stmt
                .query(params![lamp, first * HALF_HOUR_S, last * HALF_HOUR_S])
                .map_err(self.sql())?;
            while let Some(r) = rows.next().map_err(self.sql())? {
                let row = (|| -> rusqlite::Result<(i64, i64, i64)> {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })()
                .map_err(self.sql())?;
                data.insert(row.0, (row.1, row.2));
            }
            let tenant = crate::csv_export::text_cell(tenant);
            for (hh, date, period) in &periods {
                let (dwh, readings) = data.get(hh).copied().unwrap_or((0, 0));
                w.write_record([
                    date.as_str(),
                    &period.to_string(),
                    &iso8601(hh * HALF_HOUR_S),
                    &tenant,
                    &zone.to_string(),
                    &lamp.to_string(),
                    dev_eui,
                    &rated_w.to_string(),
                    &format!("{:.4}", dwh as f64 / 10_000.0),
                    &readings.to_string(),
                ])
                .map_err(StoreError::from)?;
                n += 1;
            }
        }
        w.flush().map_err(StoreError::from)?;
        drop(w);
        out.flush().map_err(StoreError::from)?;
        Ok(n)
    }
}
