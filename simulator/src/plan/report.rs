//! The planning report: figures per policy (JSON) and an offline HTML page with charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_town::Town;
use plotters::prelude::*;
use serde::Serialize;

use super::faults::{FaultScenario, InvariantReport};
use super::outcome::{Outcome, ZoneSeries};
use super::profile::DemandProfile;
use super::shared::{round, Shared};
use super::{LinkConfig, PlanError, PlanOptions, TownSource};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parameters {
    pub town: TownSource,
    pub policies: Vec<String>,
    pub days: u32,
    pub seed: u64,
    pub start_ms: u64,
    /// The town's clocks (an IANA name).
    pub time_zone: TimeZone,
    pub tariff_gbp_per_kwh: f64,
    pub carbon_kg_per_kwh: f64,
    pub tick_s: u32,
    /// Regions the town was planned as, each with its own controller.
    pub regions: usize,
    pub demand_scale: f64,
    pub link: LinkConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radio: Option<super::radio::RadioConfig>,
    pub faults: FaultScenario,
    /// The rules the figures follow, in words (see the crate docs).
    pub rules: BTreeMap<&'static str, &'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TownSummary {
    pub name: String,
    pub lamps: usize,
    pub zones: usize,
    pub roads: usize,
    pub rated_power_kw: f64,
    pub busy_zone: u32,
    pub quiet_zone: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficEventSummary {
    pub name: String,
    pub zones: usize,
    pub from_h: f64,
    pub until_h: f64,
    pub extra_pedestrians_cyclists_vehicles_per_h: [f64; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExposureCount {
    pub judged: u64,
    pub underlit: u64,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exposure {
    /// All passages simulated (road user reaching a lamp).
    pub passages: u64,
    /// Passages while dark (outside the twilight margin), which are judged.
    pub judged_passages: u64,
    /// Judged passages at a lamp below its required level.
    pub underlit_passages: u64,
    /// underlit / judged (0 when nothing was judged).
    pub share: f64,
    pub by_road_user: BTreeMap<String, ExposureCount>,
    /// Under-lit passages by cause: `node-dead`, `node-fail-safe` (the node ran its own
    /// fail-safe profile), `still-rising` (ramping up to a level that would have been
    /// enough), `commanded-below` (its command was below the requirement).
    pub underlit_by_cause: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LateRises {
    pub passages: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub energy_kwh: f64,
    pub cost_gbp: f64,
    pub carbon_t_co2e: f64,
    /// None when the baseline was not run.
    pub savings_vs_full_pct: Option<f64>,
    pub savings_vs_part_night_pct: Option<f64>,
    pub exposure: Exposure,
    pub late_rises: LateRises,
    pub level_changes: u64,
    pub level_changes_per_lamp_hour: f64,
    pub downlinks: u64,
    pub downlinks_per_lamp: f64,
    pub downlinks_applied: u64,
    pub uplinks: u64,
    pub uplinks_accepted: u64,
    pub uplinks_rejected: u64,
    /// Uplinks that arrived while the controller was down.
    pub uplinks_unheard: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    /// Simulation events processed (a measure of the run's work).
    pub events: u64,
    pub energy_by_hour_kwh: Vec<f64>,
    pub busy_zone: ZoneSeries,
    pub quiet_zone: ZoneSeries,
    pub invariants: InvariantReport,
    /// The LoRa radio's figures (absent for IP nodes): downlink airtime per gateway,
    /// collisions and duty-cycle drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radio: Option<super::radio::RadioReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    pub parameters: Parameters,
    pub town: TownSummary,
    pub demand_sources: BTreeMap<String, String>,
    pub traffic_events: Vec<TrafficEventSummary>,
    pub warnings: Vec<String>,
    /// Policies in the order they were run (baselines first).
    pub policy_order: Vec<String>,
    pub policies: BTreeMap<String, PolicyReport>,
}

impl PlanReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn rules() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "required_level",
            "design class at >= 50 % of road capacity, one class lower at 25-50 %, two below \
             25 % (CEN/TR 13201-1, UNI 11248); level = ratio of the classes' required averages",
        ),
        (
            "judged",
            "passages while dark at the town centre, excluding 2 minutes either side of \
             lighting-up and switch-off",
        ),
        (
            "floor",
            "min(policy minimum, node fail-safe profile level); no live lamp below it while \
             dark for longer than floor_grace_s",
        ),
        (
            "convergence",
            "after the last transient fault heals, every live node applies the controller's \
             latest command within converge_within_s",
        ),
        (
            "link",
            "IP link (default): uniform latency; Retransmit loss adds a TCP retransmission \
             timeout, Drop loses the packet. With `radio`: LoRaWAN EU868, nearest gateway on a \
             grid, SF by path loss, Semtech airtime, LoRaSim collisions with 6 dB capture, 1 % \
             node and 10 % RX2 gateway duty cycles (plan::radio)",
        ),
        (
            "sensors",
            "lamps under full and part-night have no presence sensor (today's photocell and \
             timer schemes) and send only periodic reports; under the other policies each \
             node's sensor sees a road user 20 m before the column with probability 0.95",
        ),
        (
            "regions",
            "with regions > 1 the town is split into sets of whole zones, each under its own \
             controller: a presence bubble stops at its region's edge; figures are summed",
        ),
    ])
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    opts: &PlanOptions,
    town: &Town,
    shared: &Shared<'_>,
    profile: &DemandProfile,
    warnings: Vec<String>,
    time_zone: TimeZone,
    regions: usize,
    policies: &[String],
    outcomes: Vec<Outcome>,
) -> PlanReport {
    let lamps = town.lamps.len().max(1) as f64;
    let hours = opts.days as f64 * 24.0;
    let energy_of = |name: &str| {
        policies
            .iter()
            .position(|p| p == name)
            .map(|k| outcomes[k].energy_wh / 1000.0)
    };
    let full = energy_of("full");
    let part = energy_of("part-night");
    let saving = |base: Option<f64>, e: f64| {
        base.filter(|b| *b > 0.0)
            .map(|b| round((b - e) / b * 100.0, 3))
    };
    let mut map = BTreeMap::new();
    for (p, o) in policies.iter().zip(outcomes) {
        let kwh = o.energy_wh / 1000.0;
        let judged: u64 = o.judged.values().sum();
        let underlit: u64 = o.underlit.values().sum();
        let share = |u: u64, j: u64| {
            if j > 0 {
                round(u as f64 / j as f64, 6)
            } else {
                0.0
            }
        };
        let by_road_user = o
            .judged
            .iter()
            .map(|(k, &j)| {
                let u = o.underlit.get(k).copied().unwrap_or(0);
                (
                    k.to_string(),
                    ExposureCount {
                        judged: j,
                        underlit: u,
                        share: share(u, j),
                    },
                )
            })
            .collect();
        map.insert(
            p.clone(),
            PolicyReport {
                energy_kwh: round(kwh, 3),
                cost_gbp: round(kwh * opts.tariff_gbp_per_kwh, 2),
                carbon_t_co2e: round(kwh * opts.carbon_kg_per_kwh / 1000.0, 5),
                savings_vs_full_pct: saving(full, kwh),
                savings_vs_part_night_pct: saving(part, kwh),
                exposure: Exposure {
                    passages: o.passages,
                    judged_passages: judged,
                    underlit_passages: underlit,
                    share: share(underlit, judged),
                    by_road_user,
                    underlit_by_cause: o
                        .underlit_by_cause
                        .iter()
                        .map(|(k, &v)| (k.to_string(), v))
                        .collect(),
                },
                late_rises: LateRises {
                    passages: o.late_rise_passages,
                    seconds: round(o.late_rise_s, 3),
                },
                level_changes: o.level_changes,
                level_changes_per_lamp_hour: round(o.level_changes as f64 / lamps / hours, 5),
                downlinks: o.downlinks_sent,
                downlinks_per_lamp: round(o.downlinks_sent as f64 / lamps, 3),
                downlinks_applied: o.downlinks_applied,
                uplinks: o.uplinks_sent,
                uplinks_accepted: o.uplinks_accepted,
                uplinks_rejected: o.uplinks_rejected,
                uplinks_unheard: o.uplinks_unheard,
                packets_lost: o.packets_lost,
                packets_retransmitted: o.packets_retransmitted,
                events: o.events_processed,
                energy_by_hour_kwh: o
                    .energy_by_hour_wh
                    .iter()
                    .map(|wh| round(wh / 1000.0, 4))
                    .collect(),
                busy_zone: o.busy,
                quiet_zone: o.quiet,
                invariants: o.invariants,
                radio: o.radio,
            },
        );
    }
    let start = shared.start;
    PlanReport {
        parameters: Parameters {
            town: opts.town.clone(),
            policies: policies.to_vec(),
            days: opts.days,
            seed: opts.seed,
            start_ms: start,
            time_zone,
            tariff_gbp_per_kwh: opts.tariff_gbp_per_kwh,
            carbon_kg_per_kwh: opts.carbon_kg_per_kwh,
            tick_s: opts.tick_s,
            regions,
            demand_scale: opts.demand_scale,
            link: opts.link.clone(),
            radio: opts.radio.clone(),
            faults: opts.faults.clone(),
            rules: rules(),
        },
        town: TownSummary {
            name: town.name.clone(),
            lamps: town.lamps.len(),
            zones: town.zones.len(),
            roads: town.roads.len(),
            rated_power_kw: round(town.total_rated_power_w() / 1000.0, 3),
            busy_zone: shared.busy_zone,
            quiet_zone: shared.quiet_zone,
        },
        demand_sources: BTreeMap::from([
            ("pedestrian".to_string(), profile.sources[0].clone()),
            ("cyclist".to_string(), profile.sources[1].clone()),
            ("vehicle".to_string(), profile.sources[2].clone()),
        ]),
        traffic_events: shared
            .events
            .iter()
            .map(|e| TrafficEventSummary {
                name: e.name.clone(),
                zones: e.zones.len(),
                from_h: round((e.from as f64 - start as f64) / 3_600_000.0, 3),
                until_h: round((e.until as f64 - start as f64) / 3_600_000.0, 3),
                extra_pedestrians_cyclists_vehicles_per_h: e.extra_per_h,
            })
            .collect(),
        warnings,
        policy_order: policies.to_vec(),
        policies: map,
    }
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn chart_err<E: std::fmt::Debug>(e: E) -> PlanError {
    PlanError::Chart(format!("{e:?}"))
}

fn energy_chart(r: &PlanReport) -> Result<String, PlanError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let hours = r.parameters.days as f64 * 24.0;
        let max = r
            .policies
            .values()
            .flat_map(|p| p.energy_by_hour_kwh.iter().copied())
            .fold(0.0, f64::max)
            .max(0.001)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption("Energy by hour (kWh)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..hours, 0f64..max)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc("hours from start")
            .y_desc("kWh")
            .draw()
            .map_err(chart_err)?;
        for (k, name) in r.policy_order.iter().enumerate() {
            let p = &r.policies[name];
            let color = PALETTE[k % PALETTE.len()];
            let pts: Vec<(f64, f64)> = p
                .energy_by_hour_kwh
                .iter()
                .enumerate()
                .flat_map(|(h, &e)| [(h as f64, e), (h as f64 + 1.0, e)])
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(chart_err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn zone_chart(r: &PlanReport, busy: bool) -> Result<String, PlanError> {
    let mut svg = String::new();
    let first = r
        .policy_order
        .first()
        .and_then(|p| r.policies.get(p))
        .ok_or_else(|| PlanError::Chart("no policies".into()))?;
    let z0 = if busy {
        &first.busy_zone
    } else {
        &first.quiet_zone
    };
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let hours = r.parameters.days as f64 * 24.0;
        let dmax = z0.demand_per_h.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1;
        let caption = format!(
            "{} zone {} ({}, {}, {} lamps): level vs demand",
            if busy { "Busy" } else { "Quiet" },
            z0.name,
            z0.road_kind,
            z0.design_class,
            z0.lamps
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..hours, 0f64..105f64)
            .map_err(chart_err)?
            .set_secondary_coord(0f64..hours, 0f64..dmax);
        chart
            .configure_mesh()
            .x_desc("hours from start")
            .y_desc("level %")
            .draw()
            .map_err(chart_err)?;
        chart
            .configure_secondary_axes()
            .y_desc("road users / h")
            .draw()
            .map_err(chart_err)?;
        let grey = RGBColor(0x99, 0x99, 0x99);
        chart
            .draw_secondary_series(AreaSeries::new(
                z0.t_h.iter().copied().zip(z0.demand_per_h.iter().copied()),
                0.0,
                grey.mix(0.25),
            ))
            .map_err(chart_err)?
            .label("demand (users/h, right)")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 4), (x + 18, y + 4)], grey.mix(0.4).filled())
            });
        chart
            .draw_series(LineSeries::new(
                z0.t_h
                    .iter()
                    .copied()
                    .zip(z0.required_level_pct.iter().copied()),
                BLACK.stroke_width(1),
            ))
            .map_err(chart_err)?
            .label("required level")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        for (k, name) in r.policy_order.iter().enumerate() {
            let p = &r.policies[name];
            let z = if busy { &p.busy_zone } else { &p.quiet_zone };
            let color = PALETTE[k % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    z.t_h.iter().copied().zip(z.mean_level_pct.iter().copied()),
                    color.stroke_width(2),
                ))
                .map_err(chart_err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn bars_chart(r: &PlanReport) -> Result<String, PlanError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let (left, right) = root.split_horizontally(450);
        let n = r.policy_order.len();
        let draw = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                    title: &str,
                    values: Vec<f64>|
         -> Result<(), PlanError> {
            let max = values.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..n as f64, 0f64..max)
                .map_err(chart_err)?;
            let names = r.policy_order.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n * 2 + 1)
                .x_label_formatter(&|x| {
                    let k = (*x - 0.5).round();
                    if (x - 0.5 - k).abs() < 0.01 && k >= 0.0 && (k as usize) < names.len() {
                        names[k as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .draw()
                .map_err(chart_err)?;
            chart
                .draw_series(values.iter().enumerate().map(|(k, &v)| {
                    let color = PALETTE[k % PALETTE.len()];
                    Rectangle::new(
                        [(k as f64 + 0.15, 0.0), (k as f64 + 0.85, v)],
                        color.filled(),
                    )
                }))
                .map_err(chart_err)?;
            Ok(())
        };
        let energy: Vec<f64> = r
            .policy_order
            .iter()
            .map(|p| r.policies[p].energy_kwh)
            .collect();
        let exposure: Vec<f64> = r
            .policy_order
            .iter()
            .map(|p| r.policies[p].exposure.share * 100.0)
            .collect();
        draw(&left, "Energy (kWh)", energy)?;
        draw(&right, "Under-lighting exposure (% of passages)", exposure)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes `report.html` (offline: inline SVG charts, no scripts) and `report.json` to `dir`.
pub fn write_html_report(report: &PlanReport, dir: &Path) -> Result<(), PlanError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlanError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let charts = [
        ("Energy by hour", energy_chart(report)?),
        ("Energy and exposure per policy", bars_chart(report)?),
        ("Busy zone", zone_chart(report, true)?),
        ("Quiet zone", zone_chart(report, false)?),
    ];
    let p = &report.parameters;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Lamplighter plan: {name}</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}}th{{background:#f3f3f3}}td:first-child{{text-align:left}}\
         figure{{margin:1.5em 0}}</style></head><body>\n\
         <h1>Lamplighter plan: {name}</h1>\n\
         <p>{lamps} lamps in {zones} zones, {days} day(s) from {start} ms (time zone {zone}), \
         seed {seed}. Tariff {tariff} GBP/kWh, carbon {carbon} kg CO2e/kWh.</p>\n",
        name = esc(&report.town.name),
        lamps = report.town.lamps,
        zones = report.town.zones,
        days = p.days,
        start = p.start_ms,
        zone = esc(p.time_zone.name()),
        seed = p.seed,
        tariff = p.tariff_gbp_per_kwh,
        carbon = p.carbon_kg_per_kwh,
    );
    html.push_str(
        "<table><tr><th>policy</th><th>energy kWh</th><th>cost GBP</th><th>t CO2e</th>\
         <th>saving vs full %</th><th>saving vs part-night %</th><th>exposure %</th>\
         <th>late rises</th><th>changes / lamp-h</th><th>downlinks / lamp</th></tr>\n",
    );
    for name in &report.policy_order {
        let r = &report.policies[name];
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.4}</td><td>{}</td>\
             <td>{}</td><td>{:.3}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td></tr>",
            esc(name),
            r.energy_kwh,
            r.cost_gbp,
            r.carbon_t_co2e,
            pct(r.savings_vs_full_pct),
            pct(r.savings_vs_part_night_pct),
            r.exposure.share * 100.0,
            r.late_rises.passages,
            r.level_changes_per_lamp_hour,
            r.downlinks_per_lamp
        );
    }
    html.push_str("</table>\n");
    for w in &report.warnings {
        let _ = writeln!(html, "<p><strong>Warning:</strong> {}</p>", esc(w));
    }
    for (title, svg) in &charts {
        let _ = writeln!(
            html,
            "<figure><figcaption>{}</figcaption>\n{}\n</figure>",
            esc(title),
            svg
        );
    }
    html.push_str("<h2>Rules</h2><ul>\n");
    for (k, v) in &p.rules {
        let _ = writeln!(html, "<li><b>{}</b>: {}</li>", esc(k), esc(v));
    }
    html.push_str("</ul></body></html>\n");
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html).map_err(io(&html_path))?;
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, report.to_json()).map_err(io(&json_path))?;
    Ok(())
}
