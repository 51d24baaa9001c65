//! History: what the dashboard asks of the store (a lamp's or a zone's day, week, month),
//! and the retention policy that keeps raw readings for weeks and rollups for years.
//!
//! Raw readings are keyed `(lamp_id, fcnt)` and indexed `(lamp_id, reading_time_s)`. Every
//! new reading is also added, in the same transaction, to its lamp's 15-minute and daily
//! rollup rows (`rollup_15m`, `rollup_1d`), which carry the lamp's tenant and zone and are
//! indexed `(tenant, zone, bucket_s)`. So a lamp's day reads ~1,440 raw rows from one index
//! range, a lamp's month ~2,880 rollup rows, and a zone's week or month one range of its
//! lamps' rollup rows, whatever the size of the town. Buckets are UTC and use the node's
//! reading time, so readings buffered during an outage land where they were taken.
//! Energy is the sum of the per-reading deltas the controller derives from the nodes'
//! cumulative meters, so a resent reading (kept once) never counts twice.

use std::time::{Duration, Instant};

use lamplighter_protocol::{LampId, TenantId, ZoneId};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Raw readings (by the time the controller received them). Default 35 days.
    pub raw_days: u32,
    /// 15-minute rollups. Default 5 years.
    pub rollup_15m_days: u32,
    /// Daily rollups; 0 keeps them for ever (the default).
    pub rollup_1d_days: u32,
    /// Commands and rejections (the audit trail); 0 keeps them for ever (the default).
    pub audit_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_days: 35,
            rollup_15m_days: 5 * 366,
            rollup_1d_days: 0,
            audit_days: 0,
        }
    }
}

/// The resolution of a history query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Every reading (lamp history only; kept `raw_days`).
    Raw,
    /// 15-minute buckets.
    Min15,
    /// UTC days.
    Day,
}

impl Resolution {
    /// What the dashboard should ask for over a span: raw up to two days (15 minutes for a
    /// zone), 15 minutes up to 45 days, days beyond.
    pub fn for_span(span_s: u64, zone: bool) -> Resolution {
        match span_s {
            s if s <= 2 * 86_400 && !zone => Resolution::Raw,
            s if s <= 45 * 86_400 => Resolution::Min15,
            _ => Resolution::Day,
        }
    }
}

/// One point of a lamp's or zone's history. For a raw reading `readings` is 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Start of the bucket (or the reading's time), Unix seconds.
    pub t_s: i64,
    pub readings: u64,
    pub level_pct_mean: f64,
    pub level_pct_min: u8,
    pub level_pct_max: u8,
    /// Mean power: of the lamp, or the sum over the zone's lamps of each lamp's mean.
    pub power_w: f64,
    /// Energy used in the bucket, Wh.
    pub energy_wh: f64,
    pub pedestrians: u64,
    pub cyclists: u64,
    pub vehicles: u64,
    /// Readings that carried any fault flag.
    pub fault_readings: u64,
}

fn point(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryPoint> {
    Ok(HistoryPoint {
        t_s: r.get(0)?,
        readings: r.get(1)?,
        level_pct_mean: r.get(2)?,
        level_pct_min: r.get(3)?,
        level_pct_max: r.get(4)?,
        power_w: r.get(5)?,
        energy_wh: r.get::<_, i64>(6)? as f64 / 10.0,
        pedestrians: r.get(7)?,
        cyclists: r.get(8)?,
        vehicles: r.get(9)?,
        fault_readings: r.get(10)?,
    })
}

/// A command the controller sent to a lamp.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandSent {
    pub sent_ms: i64,
    pub level_pct: u8,
    pub ramp_ms: u32,
    pub reason: String,
}

fn rollup_table(res: Resolution) -> &'static str {
    match res {
        Resolution::Day => "rollup_1d",
        _ => "rollup_15m",
    }
}

impl Store {
    /// The commands sent to `lamp` in `[from_ms, to_ms)`, oldest first: the latest `limit`
    /// of them when there are more.
    pub fn lamp_commands(
        &self,
        lamp: LampId,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<CommandSent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT sent_ms, level_pct, ramp_ms, reason FROM commands
                 WHERE lamp_id = ?1 AND sent_ms >= ?2 AND sent_ms < ?3
                 ORDER BY sent_ms DESC LIMIT ?4",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![lamp.0, from_ms, to_ms, limit], |r| {
                Ok(CommandSent {
                    sent_ms: r.get(0)?,
                    level_pct: r.get(1)?,
                    ramp_ms: r.get(2)?,
                    reason: r.get(3)?,
                })
            })
            .map_err(self.sql())?;
        let mut out = rows.collect::<Result<Vec<_>, _>>().map_err(self.sql())?;
        out.reverse();
        Ok(out)
    }

    /// A lamp's history over `[from_s, to_s)` (Unix seconds, reading time).
    pub fn lamp_history(
        &self,
        lamp: LampId,
        from_s: i64,
        to_s: i64,
        res: Resolution,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        let sql = match res {
            Resolution::Raw => "SELECT reading_time_s, 1, level_pct * 1.0, level_pct, level_pct,
                    power_w, energy_delta_dwh, pedestrians, cyclists, vehicles, faults != 0
                 FROM readings WHERE lamp_id = ?1 AND reading_time_s >= ?2 AND reading_time_s < ?3
                 ORDER BY reading_time_s, fcnt"
                .to_string(),
            _ => format!(
                "SELECT bucket_s, readings, level_pct_sum * 1.0 / readings, level_pct_min,
                    level_pct_max, power_w_sum / readings, energy_dwh, pedestrians, cyclists,
                    vehicles, fault_readings
                 FROM {} WHERE lamp_id = ?1 AND bucket_s >= ?2 AND bucket_s < ?3
                 ORDER BY bucket_s",
                rollup_table(res)
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.sql())?;
        let rows = stmt
            .query_map(params![lamp.0, from_s, to_s], point)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// A zone's history over `[from_s, to_s)`: the sums over its lamps per bucket (a zone
    /// has no raw resolution; `Raw` reads 15-minute buckets).
    pub fn zone_history(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        from_s: i64,
        to_s: i64,
        res: Resolution,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        let sql = format!(
            "SELECT bucket_s, SUM(readings), SUM(level_pct_sum) * 1.0 / SUM(readings),
                MIN(level_pct_min), MAX(level_pct_max), SUM(power_w_sum / readings),
                SUM(energy_dwh), SUM(pedestrians), SUM(cyclists), SUM(vehicles),
                SUM(fault_readings)
             FROM {} WHERE tenant = ?1 AND zone = ?2 AND bucket_s >= ?3 AND bucket_s < ?4
             GROUP BY bucket_s ORDER BY bucket_s",
            rollup_table(res)
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.sql())?;
        let rows = stmt
            .query_map(params![tenant.as_str(), zone.0, from_s, to_s], point)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Sets the retention policy the writer thread applies.
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    pub(super) fn maybe_apply_retention(&mut self) -> Result<(), StoreError> {
        if self
            .last_retention
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3600))
        {
            return Ok(());
        }
        self.last_retention = Some(Instant::now());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let deleted = self.apply_retention(now_ms)?;
        if deleted > 0 {
            tracing::info!(deleted, "retention: old records deleted");
        }
        Ok(())
    }

    /// Deletes what the retention policy no longer keeps, as of `now_ms`, in chunks of
    /// 10,000 rows per transaction (so writers never wait long). Returns rows deleted.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<u64, StoreError> {
        const CHUNK: i64 = 10_000;
        let day_ms = 86_400_000i64;
        let r = self.retention;
        let mut deleted = 0u64;
        let mut chunked = |store: &mut Store, sql: &str, cutoff: i64| -> Result<(), StoreError> {
            loop {
                let n = store
                    .conn
                    .execute(sql, params![cutoff, CHUNK])
                    .map_err(store.sql())?;
                deleted += n as u64;
                if (n as i64) < CHUNK {
                    return Ok(());
                }
            }
        };
        if r.raw_days > 0 {
            chunked(
                self,
                "DELETE FROM readings WHERE (lamp_id, fcnt) IN
                    (SELECT lamp_id, fcnt FROM readings WHERE received_ms < ?1 LIMIT ?2)",
                now_ms - r.raw_days as i64 * day_ms,
            )?;
        }
        if r.audit_days > 0 {
            let cutoff = now_ms - r.audit_days as i64 * day_ms;
            chunked(
                self,
                "DELETE FROM commands WHERE id IN
                    (SELECT id FROM commands WHERE sent_ms < ?1 LIMIT ?2)",
                cutoff,
            )?;
            chunked(
                self,
                "DELETE FROM rejections WHERE id IN
                    (SELECT id FROM rejections WHERE at_ms < ?1 LIMIT ?2)",
                cutoff,
            )?;
        }
        // Rollups: one primary-key range per lamp (no extra index to maintain on the write
        // path).
        let lamps: Vec<u32> = {
            let mut stmt = self
                .conn
                .prepare("SELECT lamp_id FROM nodes")
                .map_err(self.sql())?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(self.sql())?;
            rows.collect::<Result<_, _>>().map_err(self.sql())?
        };
        for (table, days) in [
            ("rollup_15m", r.rollup_15m_days),
            ("rollup_1d", r.rollup_1d_days),
        ] {
            if days == 0 {
                continue;
            }
            let cutoff_s = (now_ms - days as i64 * day_ms) / 1000;
            for chunk in lamps.chunks(1000) {
                let tx = self
                    .conn
                    .transaction()
                    .map_err(|source| StoreError::Sqlite {
                        path: self.path.clone(),
                        source,
                    })?;
                {
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "DELETE FROM {table} WHERE lamp_id = ?1 AND bucket_s < ?2"
                        ))
                        .map_err(|source| StoreError::Sqlite {
                            path: self.path.clone(),
                            source,
                        })?;
                    for lamp in chunk {
                        deleted += stmt.execute(params![lamp, cutoff_s]).map_err(|source| {
                            StoreError::Sqlite {
                                path: self.path.clone(),
                                source,
                            }
                        })? as u64;
                    }
                }
                tx.commit().map_err(|source| StoreError::Sqlite {
                    path: self.path.clone(),
                    source,
                })?;
            }
        }
        Ok(deleted)
    }
}
