//! Cambridge MA: street lights (GeoJSON points) linked to road centre-lines (GeoJSON lines).
//!
//! * Roads: one per centre-line feature (2,643), MultiLineStrings flattened. `MajorRoad` 1 is
//!   an arterial (Massachusetts Ave, Memorial Dr), 2 a major road (Cambridge St, Broadway),
//!   anything else a local street, except footbridges and paths (footway) and bike paths
//!   (cycleway), recognised by name. `Direction` 1 and -1 are one-way; -1 segments are
//!   reversed so that the points of every one-way road run in the direction of travel.
//! * Linking. The data README says to link by `Street_ID` (compared as integers, `"791"` and
//!   `791.0`), and 5,736 lights do find a centre-line with their number, but the two files
//!   number streets differently: light 1 is on Seagrave Rd, Street_ID 791, and centre-line
//!   791 is Washington Ave, about 2 km away; only about 70 of the 5,736 agree by name, and the
//!   nearest segment with the light's number is a median of 2 km away. So a light goes on
//!   the nearest segment of the street it names (`StreetName` = `Street_Name`, case-
//!   insensitive) if that is within 100 m; else on the nearest segment with its `Street_ID`
//!   if that is within 100 m; else on the nearest segment of any street. [`LoadReport`]
//!   counts each way, and the id matches (`street_id_matches`, 5,736) and how many of them
//!   are more than 100 m away (`street_id_far`).
//! * Wattage: fixture class A1/A2/A3 (120/80/40 LEDs, about 1 W each, see
//!   [`crate::classes::cambridge_fixture_w`]) times the number of heads (`NumLamps`, or the
//!   number of classes listed as in "A2 / A3"). Lights without a known class get the median
//!   wattage of the known fixtures on the same kind of road in the town (or the default of
//!   [`crate::classes`] when there is none).
//! * Zones: the lights of one street (`Street_ID`) and road kind, in order along the street's
//!   principal axis, cut into zones of at most 80.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::geo::{point_polyline, polyline_length_m, LocalProjection};
use crate::zones::{assemble, principal_axis_positions, Draft};
use crate::{DroppedPoint, LoadReport, Road, RoadKind, Town, TownError};

/// A light goes on a segment of its own street (by name, else by id) only if the segment is
/// this close; otherwise on the nearest segment of any street (m).
const LINK_MAX_M: f64 = 100.0;

/// Street names compared case-insensitively with runs of spaces collapsed.
fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

pub(crate) const LIGHTS_FILE: &str = "INFRA_StreetLights.geojson";
pub(crate) const CENTRELINES_FILE: &str = "TRANS_Centerlines.geojson";

#[derive(Deserialize)]
struct FeatureCollection<P> {
    features: Vec<Feature<P>>,
}

#[derive(Deserialize)]
struct Feature<P> {
    geometry: Option<Geometry>,
    properties: Option<P>,
}

#[derive(Deserialize)]
struct Geometry {
    #[serde(rename = "type")]
    kind: String,
    coordinates: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LightProps {
    #[serde(rename = "StreetName")]
    street_name: Option<String>,
    #[serde(rename = "FixtureType")]
    fixture: Option<String>,
    #[serde(rename = "NumLamps")]
    num_lamps: Option<Value>,
    #[serde(rename = "Street_ID")]
    street_id: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LineProps {
    #[serde(rename = "Street")]
    street: Option<String>,
    #[serde(rename = "Street_Name")]
    street_name: Option<String>,
    #[serde(rename = "Label")]
    label: Option<String>,
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "Street_ID")]
    street_id: Option<Value>,
    #[serde(rename = "MajorRoad")]
    major_road: Option<Value>,
    #[serde(rename = "Direction")]
    direction: Option<Value>,
}

fn read_collection<P: for<'de> Deserialize<'de>>(
    path: &Path,
    needed: &str,
) -> Result<Vec<Feature<P>>, TownError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TownError::MissingFile {
                path: path.to_path_buf(),
                needed: needed.to_string(),
            }
        } else {
            TownError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let fc: FeatureCollection<P> = serde_json::from_slice(&bytes).map_err(|e| TownError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(fc.features)
}

/// An integer id from `"791"`, `791`, or `791.0`.
fn as_int(v: &Option<Value>) -> Option<i64> {
    let f = match v.as_ref()? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.is_finite() && f.fract() == 0.0).then_some(f as i64)
}

fn lonlat(v: &Value) -> Option<(f64, f64)> {
    let a = v.as_array()?;
    let (lon, lat) = (a.first()?.as_f64()?, a.get(1)?.as_f64()?);
    (lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0)
        .then_some((lat, lon))
}

fn line_points(g: &Geometry) -> Option<Vec<(f64, f64)>> {
    let line =
        |v: &Value| -> Option<Vec<(f64, f64)>> { v.as_array()?.iter().map(lonlat).collect() };
    let pts = match g.kind.as_str() {
        "LineString" => line(&g.coordinates)?,
        "MultiLineString" => {
            let mut all: Vec<(f64, f64)> = Vec::new();
            for part in g.coordinates.as_array()? {
                for p in line(part)? {
                    if all.last() != Some(&p) {
                        all.push(p);
                    }
                }
            }
            all
        }
        _ => return None,
    };
    (!pts.is_empty()).then_some(pts)
}

fn kind_of(props: &LineProps, name: &str) -> RoadKind {
    match as_int(&props.major_road) {
        Some(1) => RoadKind::Arterial,
        Some(2) => RoadKind::Major,
        _ => {
            let n = name.to_ascii_lowercase();
            if n.contains("bike path") || n.contains("bikeway") || n.contains("cycle") {
                RoadKind::Cycleway
            } else if n.contains("footbridge")
                || n.ends_with(" path")
                || n.ends_with(" walk")
                || n.contains("footpath")
            {
                RoadKind::Footway
            } else {
                RoadKind::Local
            }
        }
    }
}

pub(crate) fn load_dir(dir: &Path) -> Result<Town, TownError> {
    load_dir_with_report(dir).map(|(t, _)| t)
}

pub(crate) fn load_dir_with_report(dir: &Path) -> Result<(Town, LoadReport), TownError> {
    let lights_path = dir.join(LIGHTS_FILE);
    let lines_path = dir.join(CENTRELINES_FILE);
    let lines: Vec<Feature<LineProps>> = read_collection(
        &lines_path,
        &format!("the road centre-lines ({CENTRELINES_FILE}, GeoJSON LineStrings) are needed next to {LIGHTS_FILE}"),
    )?;
    let lights: Vec<Feature<LightProps>> = read_collection(
        &lights_path,
        &format!("the street lights ({LIGHTS_FILE}, GeoJSON Points) are needed next to {CENTRELINES_FILE}"),
    )?;

    let mut dropped = Vec::new();
    let mut roads = Vec::with_capacity(lines.len());
    let mut road_street: Vec<Option<i64>> = Vec::with_capacity(lines.len());
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, f) in lines.iter().enumerate() {
        let props = f.properties.as_ref();
        let default = LineProps::default();
        let props = props.unwrap_or(&default);
        let Some(mut points) = f.geometry.as_ref().and_then(line_points) else {
            dropped.push(DroppedPoint {
                line: i + 1,
                lat: 0.0,
                lon: 0.0,
                reason: format!(
                    "{CENTRELINES_FILE} feature {}: no usable LineString geometry",
                    i + 1
                ),
            });
            continue;
        };
        let name = props
            .street
            .clone()
            .or_else(|| props.label.clone())
            .or_else(|| props.id.clone())
            .unwrap_or_else(|| format!("segment {}", i + 1));
        let direction = as_int(&props.direction).unwrap_or(0);
        if direction == -1 {
            points.reverse();
        }
        let id = roads.len();
        if let Some(n) = props
            .street_name
            .as_deref()
            .map(normalise)
            .filter(|n| !n.is_empty())
        {
            by_name.entry(n).or_default().push(id);
        }
        roads.push(Road {
            id,
            kind: kind_of(props, &name),
            name,
            length_m: polyline_length_m(&points),
            points,
            one_way: direction != 0,
        });
        road_street.push(as_int(&props.street_id));
    }
    if roads.is_empty() {
        return Err(TownError::Format {
            path: lines_path,
            reason: "no road centre-lines with a LineString geometry".into(),
        });
    }

    // Planar geometry around the mean road point.
    let n_pts: usize = roads.iter().map(|r| r.points.len()).sum();
    let (sa, sb) = roads
        .iter()
        .flat_map(|r| r.points.iter())
        .fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let proj = LocalProjection::new((sa / n_pts as f64, sb / n_pts as f64));
    let road_xy: Vec<Vec<(f64, f64)>> = roads
        .iter()
        .map(|r| r.points.iter().map(|&p| proj.to_xy(p)).collect())
        .collect();
    let mut by_street: HashMap<i64, Vec<usize>> = HashMap::new();
    for (r, s) in road_street.iter().enumerate() {
        if let Some(s) = s {
            by_street.entry(*s).or_default().push(r);
        }
    }
    let nearest_of =
        |p: (f64, f64), candidates: &mut dyn Iterator<Item = usize>| -> Option<usize> {
            candidates
                .map(|r| (point_polyline(p, &road_xy[r]), r))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(_, r)| r)
        };

    struct Pending {
        lat: f64,
        lon: f64,
        road: usize,
        heads: f32,
        fixture_w: Option<f32>,
    }
    let mut pending = Vec::with_capacity(lights.len());
    let mut report = LoadReport::default();
    for (i, f) in lights.iter().enumerate() {
        let default = LightProps::default();
        let props = f.properties.as_ref().unwrap_or(&default);
        let pos = f
            .geometry
            .as_ref()
            .filter(|g| g.kind == "Point")
            .and_then(|g| lonlat(&g.coordinates));
        let Some((lat, lon)) = pos else {
            dropped.push(DroppedPoint {
                line: i + 1,
                lat: 0.0,
                lon: 0.0,
                reason: format!(
                    "{LIGHTS_FILE} feature {}: no Point geometry with valid coordinates",
                    i + 1
                ),
            });
            continue;
        };
        let xy = proj.to_xy((lat, lon));
        let id_segs = as_int(&props.street_id).and_then(|s| by_street.get(&s));
        let name_segs = props
            .street_name
            .as_deref()
            .map(normalise)
            .and_then(|n| by_name.get(&n));
        let near = |segs: Option<&Vec<usize>>| {
            let r = nearest_of(xy, &mut segs?.iter().copied())?;
            Some((r, point_polyline(xy, &road_xy[r])))
        };
        let by_id = near(id_segs);
        if let Some((_, d)) = by_id {
            report.street_id_matches += 1;
            if d > LINK_MAX_M {
                report.street_id_far += 1;
            }
        }
        let road = match (near(name_segs), by_id) {
            (Some((r, d)), _) if d <= LINK_MAX_M => {
                report.linked_by_name += 1;
                Some(r)
            }
            (_, Some((r, d))) if d <= LINK_MAX_M => {
                report.linked_by_id += 1;
                Some(r)
            }
            _ => {
                report.linked_by_nearest += 1;
                nearest_of(xy, &mut (0..roads.len()))
            }
        };
        let Some(road) = road else { continue };
        // Heads and fixture wattage.
        let tokens: Vec<Option<f32>> = props
            .fixture
            .as_deref()
            .unwrap_or("")
            .split('/')
            .filter(|t| !t.trim().is_empty())
            .map(crate::classes::cambridge_fixture_w)
            .collect();
        let known: Vec<f32> = tokens.iter().flatten().copied().collect();
        let fixture_w = (!known.is_empty()).then(|| known.iter().sum::<f32>() / known.len() as f32);
        let num_lamps = as_int(&props.num_lamps).unwrap_or(1).clamp(1, 8) as usize;
        let heads = num_lamps.max(known.len()) as f32;
        pending.push(Pending {
            lat,
            lon,
            road,
            heads,
            fixture_w,
        });
    }

    // Median fixture wattage per road kind, for lights without a known fixture.
    let mut per_kind: HashMap<RoadKind, Vec<f32>> = HashMap::new();
    for p in &pending {
        if let Some(w) = p.fixture_w {
            per_kind.entry(roads[p.road].kind).or_default().push(w);
        }
    }
    let median_w: HashMap<RoadKind, f32> = per_kind
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f32::total_cmp);
            (k, v[v.len() / 2])
        })
        .collect();

    let mut drafts: Vec<Draft> = pending
        .iter()
        .map(|p| {
            let road = &roads[p.road];
            let per_head = p
                .fixture_w
                .or_else(|| median_w.get(&road.kind).copied())
                .unwrap_or_else(|| road.kind.default_rated_power_w());
            let group = match road_street[p.road] {
                Some(s) => format!("street-{s}"),
                None => format!("name-{}", road.name),
            };
            Draft {
                lat: p.lat,
                lon: p.lon,
                road: p.road,
                street: road.name.clone(),
                group,
                along: 0.0,
                rated_power_w: per_head * p.heads,
            }
        })
        .collect();
    // Order along each street.
    let mut groups: HashMap<(String, RoadKind), Vec<usize>> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        groups
            .entry((d.group.clone(), roads[d.road].kind))
            .or_default()
            .push(i);
    }
    for idx in groups.values() {
        let xy: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| proj.to_xy((drafts[i].lat, drafts[i].lon)))
            .collect();
        for (&i, a) in idx.iter().zip(principal_axis_positions(&xy)) {
            drafts[i].along = a;
        }
    }
    report.lamps = drafts.len();
    report.roads = roads.len();
    report.dropped = dropped.len();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cambridge".into());
    Ok((assemble(name, drafts, roads, dropped), report))
}
