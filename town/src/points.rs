//! A points-only city (Bristol): lamp positions without attributes; roads are inferred.
//!
//! 1. Read `longitude,latitude` rows (header names matched case-insensitively: `longitude`,
//!    `lon`, `lng`, `x` and `latitude`, `lat`, `y`). Rows that do not parse are dropped with
//!    their line number and reason; they do not fail the load.
//! 2. Drop isolated points: a light whose nearest other light is more than
//!    [`OUTLIER_M`] away is not on any street we can infer (in Bristol, CSV line 3005, a
//!    point 25 km east of the centre whose nearest other light is 19 km away, a mis-keyed
//!    coordinate).
//! 3. Chain lamps into roads: candidate links join lamps within [`LINK_M`]; they are taken
//!    shortest first, keeping each lamp to at most two links, no cycles, and no sharp turns
//!    (a lamp's two links must be at least 110 degrees apart), the way a street's lamps follow
//!    each other. Staggered lamps on both sides of a wide road zig-zag into one chain.
//!    Each chain of two or more lamps is a road through its lamps; lamps at the same spot
//!    (two lanterns on one column) share a road; a lamp that joins no chain goes on the road
//!    of its nearest chained lamp within [`ATTACH_M`], or on a one-point road of its own.
//! 4. Road kind, a heuristic in the absence of attributes (an assumption, not data): a
//!    chain only continues through a junction along a straight line of lamps, which through
//!    routes have and residential streets rarely do, so chains longer than 1.2 km are
//!    arterial and longer than 500 m major; short chains (under 300 m) whose lamps stand
//!    closer than 15 m on average are footways (precincts and paths are lit by closely
//!    spaced low columns); the rest are local. In Bristol the median chain is about 90 m and
//!    the median spacing 25 m.

use std::collections::HashMap;
use std::path::Path;

use crate::geo::{polyline_length_m, LocalProjection, PointGrid};
use crate::zones::{assemble, Draft};
use crate::{DroppedPoint, LoadReport, Road, RoadKind, Town, TownError};

pub(crate) const CSV_FILE: &str = "streetlights.csv";
/// A light with no other light within this distance is dropped (m).
pub const OUTLIER_M: f64 = 2_000.0;
/// Lamps up to this far apart may be consecutive on one inferred road (m).
pub const LINK_M: f64 = 60.0;
/// An unchained lamp joins the road of a chained lamp up to this far away (m).
pub const ATTACH_M: f64 = 100.0;
/// Inferred chains longer than this are arterials (m).
const ARTERIAL_M: f64 = 1_200.0;
/// Inferred chains longer than this are major roads (m).
const MAJOR_M: f64 = 500.0;
/// Short chains with a mean spacing under this are footways (m).
const FOOTWAY_SPACING_M: f64 = 15.0;
/// Smallest angle between a lamp's two links (degrees).
const MIN_TURN_DEG: f64 = 110.0;

pub(crate) fn load_csv(path: &Path) -> Result<Town, TownError> {
    load_csv_with_report(path).map(|(t, _)| t)
}

fn column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers
        .iter()
        .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
}

pub(crate) fn load_csv_with_report(path: &Path) -> Result<(Town, LoadReport), TownError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TownError::MissingFile {
                path: path.to_path_buf(),
                needed:
                    "a CSV of street-light points with longitude and latitude columns is needed"
                        .into(),
            }
        } else {
            TownError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let headers = rdr
        .headers()
        .map_err(|e| TownError::Format {
            path: path.to_path_buf(),
            reason: format!("cannot read the header: {e}"),
        })?
        .clone();
    let (Some(lon_col), Some(lat_col)) = (
        column(&headers, &["longitude", "lon", "lng", "long", "x"]),
        column(&headers, &["latitude", "lat", "y"]),
    ) else {
        return Err(TownError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "no longitude and latitude columns in the header {:?} (expected e.g. \"longitude,latitude\")",
                headers.iter().collect::<Vec<_>>()
            ),
        });
    };

    let mut dropped = Vec::new();
    let mut pts: Vec<(f64, f64)> = Vec::new();
    let mut lines: Vec<usize> = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let parsed = rec.map_err(|e| e.to_string()).and_then(|r| {
            let get = |c: usize| -> Result<f64, String> {
                let s = r.get(c).ok_or("missing column")?.trim();
                s.parse::<f64>().map_err(|_| format!("not a number: {s:?}"))
            };
            let (lon, lat) = (get(lon_col)?, get(lat_col)?);
            if lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0 {
                Ok((lat, lon))
            } else {
                Err(format!("coordinates out of range: {lat}, {lon}"))
            }
        });
        match parsed {
            Ok(p) => {
                pts.push(p);
                lines.push(line);
            }
            Err(reason) => dropped.push(DroppedPoint {
                line,
                lat: 0.0,
                lon: 0.0,
                reason: format!("line {line}: {reason}"),
            }),
        }
    }
    if pts.is_empty() {
        return Err(TownError::Format {
            path: path.to_path_buf(),
            reason: "no valid points".into(),
        });
    }

    // Project about the median position (robust to the outlier).
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let proj = LocalProjection::new((
        median(pts.iter().map(|p| p.0).collect()),
        median(pts.iter().map(|p| p.1).collect()),
    ));
    let xy: Vec<(f64, f64)> = pts.iter().map(|&p| proj.to_xy(p)).collect();
    let grid = PointGrid::new(xy.clone(), LINK_M);

    // Isolated points.
    let mut keep = vec![true; pts.len()];
    for i in 0..pts.len() {
        match grid.nearest(xy[i], Some(i as u32), OUTLIER_M) {
            Some(_) => {}
            None => {
                keep[i] = false;
                let nn = grid.nearest(xy[i], Some(i as u32), 1e8).map(|(_, d)| d);
                let how_far = nn
                    .map(|d| format!("{:.1} km", d / 1000.0))
                    .unwrap_or_else(|| "none".into());
                dropped.push(DroppedPoint {
                    line: lines[i],
                    lat: pts[i].0,
                    lon: pts[i].1,
                    reason: format!(
                        "line {}: isolated outlier, the nearest other street light is {how_far} away (more than {:.0} km): \
                         no street can be inferred, likely a mis-keyed coordinate",
                        lines[i],
                        OUTLIER_M / 1000.0
                    ),
                });
            }
        }
    }
    dropped.sort_by_key(|d| d.line);
    let kept: Vec<usize> = (0..pts.len()).filter(|&i| keep[i]).collect();
    let kxy: Vec<(f64, f64)> = kept.iter().map(|&i| xy[i]).collect();
    let kpts: Vec<(f64, f64)> = kept.iter().map(|&i| pts[i]).collect();

    let chains = infer_chains(&kxy);
    let mut roads = Vec::with_capacity(chains.road_members.len());
    for (r, members) in chains.road_members.iter().enumerate() {
        let points: Vec<(f64, f64)> = members.iter().map(|&i| kpts[i]).collect();
        let length_m = polyline_length_m(&points);
        let n = members.len();
        let mean_spacing = if n > 1 {
            length_m / (n - 1) as f64
        } else {
            f64::INFINITY
        };
        let kind = if length_m > ARTERIAL_M {
            RoadKind::Arterial
        } else if length_m > MAJOR_M {
            RoadKind::Major
        } else if n > 2 && mean_spacing < FOOTWAY_SPACING_M && length_m < 300.0 {
            RoadKind::Footway
        } else {
            RoadKind::Local
        };
        roads.push(Road {
            id: r,
            kind,
            name: format!("Inferred road {}", r + 1),
            points,
            one_way: false,
            length_m,
        });
    }
    let drafts: Vec<Draft> = (0..kpts.len())
        .map(|i| {
            let road = chains.road_of[i];
            let kind = roads[road].kind;
            Draft {
                lat: kpts[i].0,
                lon: kpts[i].1,
                road,
                street: roads[road].name.clone(),
                group: format!("road-{road}"),
                along: chains.along[i],
                rated_power_w: kind.default_rated_power_w(),
            }
        })
        .collect();
    let report = LoadReport {
        lamps: drafts.len(),
        roads: roads.len(),
        linked_by_nearest: drafts.len(),
        dropped: dropped.len(),
        ..LoadReport::default()
    };
    let name = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "points".into());
    Ok((assemble(name, drafts, roads, dropped), report))
}

struct Chains {
    /// Per road, the representative lamps in order along it.
    road_members: Vec<Vec<usize>>,
    /// Per lamp, its road.
    road_of: Vec<usize>,
    /// Per lamp, its position along the road (index in the chain; attached lamps get the
    /// index of the lamp they attach to plus a half).
    along: Vec<f64>,
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        parent[i as usize] = parent[parent[i as usize] as usize];
        i = parent[i as usize];
    }
    i
}

fn infer_chains(xy: &[(f64, f64)]) -> Chains {
    let n = xy.len();
    // Lamps at the same spot share one representative.
    let mut rep: Vec<usize> = (0..n).collect();
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, p) in xy.iter().enumerate() {
        let key = (
            (p.0 * 10.0).round().to_bits(),
            (p.1 * 10.0).round().to_bits(),
        ); // 0.1 m
        rep[i] = *seen.entry(key).or_insert(i);
    }
    let reps: Vec<usize> = (0..n).filter(|&i| rep[i] == i).collect();
    let grid = PointGrid::new(reps.iter().map(|&i| xy[i]).collect(), LINK_M);
    let m = reps.len();

    let mut pairs: Vec<(f64, u32, u32)> = Vec::new();
    let mut buf = Vec::new();
    for a in 0..m {
        grid.within(grid.xy(a as u32), LINK_M, &mut buf);
        for &(b, d) in &buf {
            if (b as usize) > a {
                pairs.push((d, a as u32, b));
            }
        }
    }
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));

    let cos_max = MIN_TURN_DEG.to_radians().cos(); // links must make an angle >= this
    let mut links: Vec<[u32; 2]> = vec![[u32::MAX; 2]; m];
    let mut deg = vec![0u8; m];
    let mut parent: Vec<u32> = (0..m as u32).collect();
    let dir = |from: u32, to: u32| {
        let (p, q) = (grid.xy(from), grid.xy(to));
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let l = (dx * dx + dy * dy).sqrt().max(1e-9);
        (dx / l, dy / l)
    };
    let turn_ok = |links: &[[u32; 2]], deg: &[u8], at: u32, to: u32| {
        if deg[at as usize] == 0 {
            return true;
        }
        let other = links[at as usize][0];
        let (u, v) = (dir(at, other), dir(at, to));
        u.0 * v.0 + u.1 * v.1 <= cos_max
    };
    for &(_, a, b) in &pairs {
        if deg[a as usize] >= 2 || deg[b as usize] >= 2 {
            continue;
        }
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra == rb || !turn_ok(&links, &deg, a, b) || !turn_ok(&links, &deg, b, a) {
            continue;
        }
        parent[ra as usize] = rb;
        links[a as usize][deg[a as usize] as usize] = b;
        links[b as usize][deg[b as usize] as usize] = a;
        deg[a as usize] += 1;
        deg[b as usize] += 1;
    }

    // Walk the chains from their ends, in order of the lowest end.
    let mut road_of_rep = vec![usize::MAX; m];
    let mut along_rep = vec![0.0; m];
    let mut road_members: Vec<Vec<usize>> = Vec::new();
    for start in 0..m {
        if road_of_rep[start] != usize::MAX || deg[start] != 1 {
            continue;
        }
        let r = road_members.len();
        let mut members = Vec::new();
        let (mut prev, mut cur) = (u32::MAX, start as u32);
        loop {
            road_of_rep[cur as usize] = r;
            along_rep[cur as usize] = members.len() as f64;
            members.push(reps[cur as usize]);
            let next = links[cur as usize][..deg[cur as usize] as usize]
                .iter()
                .copied()
                .find(|&x| x != prev);
            match next {
                Some(x) => {
                    prev = cur;
                    cur = x;
                }
                None => break,
            }
        }
        road_members.push(members);
    }
    // Unchained representatives: attach to the nearest chained one, or a road of their own.
    let chained = PointGrid::new(
        (0..m)
            .filter(|&a| deg[a] > 0)
            .map(|a| grid.xy(a as u32))
            .collect(),
        LINK_M,
    );
    let chained_ids: Vec<usize> = (0..m).filter(|&a| deg[a] > 0).collect();
    for a in 0..m {
        if deg[a] > 0 {
            continue;
        }
        match chained.nearest(grid.xy(a as u32), None, ATTACH_M) {
            Some((j, _)) => {
                let host = chained_ids[j as usize];
                road_of_rep[a] = road_of_rep[host];
                along_rep[a] = along_rep[host] + 0.5;
            }
            None => {
                road_of_rep[a] = road_members.len();
                road_members.push(vec![reps[a]]);
            }
        }
    }
    let mut rep_index = vec![usize::MAX; n];
    for (a, &i) in reps.iter().enumerate() {
        rep_index[i] = a;
    }
    let road_of = (0..n).map(|i| road_of_rep[rep_index[rep[i]]]).collect();
    let along = (0..n).map(|i| along_rep[rep_index[rep[i]]]).collect();
    Chains {
        road_members,
        road_of,
        along,
    }
}
