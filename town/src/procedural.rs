//! The procedural town: deterministic for (n_lamps, seed).
//!
//! Layout, in metres around the centre before a small random rotation (up to 17 degrees):
//!
//! * a grid of `k` north-south and `k` east-west streets, blocks of about 95-125 m (lines
//!   jittered by up to 12 % of a block), sized so that the street length is
//!   `n_lamps * 32.5 m` (the mean of the 25-40 m spacing);
//! * the middle street in each direction is an arterial, every fourth street from it a major
//!   road, the rest local streets (a quarter of them one-way);
//! * from `k >= 4`, a riverside cycleway bowing south of the grid and a park footway
//!   bowing west of it, each joining two corners of the grid;
//! * towns too small for a 2 x 2 grid (under about 12 lamps) are one local street.
//!
//! Every street is one [`Road`] (vertices at each crossing, so crossing streets share exact
//! points). Lamps stand every 25-40 m (the count per street is adjusted so the total is
//! exactly `n_lamps`), set back from the centre-line (arterials staggered on both sides).
//! Each street is one zone, cut into zones of 41-80 lamps when longer than 80.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::geo::{polyline_length_m, LocalProjection};
use crate::zones::{assemble, Draft};
use crate::{Road, RoadKind, Town};

const MEAN_SPACING_M: f64 = 32.5;
const MIN_SPACING_M: f64 = 25.0;
const MAX_SPACING_M: f64 = 40.0;
/// Path length relative to (k - 1) blocks: the two bowed paths together.
const PATHS_FACTOR: f64 = 2.2;

const STEMS: &[&str] = &[
    "Church",
    "Mill",
    "Station",
    "Park",
    "Victoria",
    "Albert",
    "King",
    "Queen",
    "Castle",
    "Bridge",
    "Market",
    "Chapel",
    "School",
    "Manor",
    "Orchard",
    "Meadow",
    "Elm",
    "Oak",
    "Ash",
    "Beech",
    "Willow",
    "Cedar",
    "Holly",
    "Hawthorn",
    "Rose",
    "Primrose",
    "Clarence",
    "Gloucester",
    "York",
    "Lancaster",
    "Windsor",
    "Stanley",
    "Grosvenor",
    "Wellington",
    "Nelson",
    "Trafalgar",
    "Waterloo",
    "Cromwell",
    "Milton",
    "Shakespeare",
    "Byron",
    "Tennyson",
    "Dickens",
    "Garden",
    "Grove",
    "Abbey",
    "Priory",
    "Forge",
    "Tannery",
    "Brewery",
    "Wharf",
    "Canal",
    "Quarry",
    "Warren",
    "Kiln",
    "Granary",
    "Lime",
    "Maple",
    "Poplar",
    "Rowan",
    "Sycamore",
    "Chestnut",
    "Heath",
    "Common",
];
const PREFIXES: &[&str] = &[
    "", "North ", "South ", "East ", "West ", "Upper ", "Lower ", "Old ", "New ",
];
const LOCAL_SUFFIXES: &[&str] = &[
    "Street", "Lane", "Road", "Grove", "Terrace", "Gardens", "Place",
];

struct Plan {
    kind: RoadKind,
    name: String,
    /// Planar metres, unrotated.
    pts: Vec<(f64, f64)>,
    one_way: bool,
}

pub(crate) fn generate(n_lamps: usize, seed: u64, centre: (f64, f64)) -> Town {
    let name = format!("procedural-{n_lamps}-seed{seed}");
    if n_lamps == 0 {
        return Town::new(name, Vec::new(), Vec::new(), Vec::new());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let need_m = n_lamps as f64 * MEAN_SPACING_M;
    let mut stems: Vec<&str> = STEMS.to_vec();
    stems.shuffle(&mut rng);
    let mut next_name = 0usize;
    let mut street_name = |rng: &mut ChaCha8Rng, kind: RoadKind| {
        let i = next_name;
        next_name += 1;
        let stem = stems[i % stems.len()];
        let round = i / stems.len();
        let prefix = PREFIXES[round % PREFIXES.len()];
        let number = if round >= PREFIXES.len() {
            format!(" {}", round / PREFIXES.len() + 1)
        } else {
            String::new()
        };
        let suffix = match kind {
            RoadKind::Arterial => "Road",
            RoadKind::Major => ["Street", "Avenue"][rng.gen_range(0..2)],
            RoadKind::Local => LOCAL_SUFFIXES[rng.gen_range(0..LOCAL_SUFFIXES.len())],
            RoadKind::Cycleway => "Greenway",
            RoadKind::Footway => "Walk",
        };
        format!("{prefix}{stem} {suffix}{number}")
    };

    let block0: f64 = rng.gen_range(95.0..125.0);
    let total_for = |k: usize, b: f64| {
        let paths = if k >= 4 { PATHS_FACTOR } else { 0.0 };
        (k - 1) as f64 * b * (2.0 * k as f64 + paths)
    };
    let mut plans: Vec<Plan> = Vec::new();
    if need_m < total_for(2, block0) * 0.9 {
        // One street, vertices every block.
        let segs = (need_m / block0).ceil().max(1.0) as usize;
        let pts = (0..=segs)
            .map(|i| (-need_m / 2.0 + need_m * i as f64 / segs as f64, 0.0))
            .collect();
        let kind = RoadKind::Local;
        plans.push(Plan {
            kind,
            name: street_name(&mut rng, kind),
            pts,
            one_way: false,
        });
    } else {
        let mut k = 2;
        while (total_for(k + 1, block0) - need_m).abs() < (total_for(k, block0) - need_m).abs() {
            k += 1;
        }
        // Exact block size for the street length needed.
        let b = need_m / total_for(k, 1.0);
        let half = (k - 1) as f64 / 2.0;
        let line_pos = |rng: &mut ChaCha8Rng| -> Vec<f64> {
            (0..k)
                .map(|i| {
                    let base = (i as f64 - half) * b;
                    if i == 0 || i == k - 1 {
                        base
                    } else {
                        base + rng.gen_range(-0.12..0.12) * b
                    }
                })
                .collect()
        };
        let xs = line_pos(&mut rng);
        let ys = line_pos(&mut rng);
        let mid = k / 2;
        let kind_of = |i: usize| {
            if i == mid {
                RoadKind::Arterial
            } else if i.abs_diff(mid) % 4 == 0 {
                RoadKind::Major
            } else {
                RoadKind::Local
            }
        };
        for (dir, (along, across)) in [(&ys, &xs), (&xs, &ys)].into_iter().enumerate() {
            for (i, &c) in across.iter().enumerate() {
                let kind = kind_of(i);
                let pts = along
                    .iter()
                    .map(|&a| if dir == 0 { (c, a) } else { (a, c) })
                    .collect();
                let one_way = kind == RoadKind::Local && rng.gen_bool(0.25);
                plans.push(Plan {
                    kind,
                    name: street_name(&mut rng, kind),
                    pts,
                    one_way,
                });
            }
        }
        if k >= 4 {
            let bow = 0.45 * b;
            let (w, h) = (xs[k - 1] - xs[0], ys[k - 1] - ys[0]);
            let steps = 4 * (k - 1);
            let south: Vec<(f64, f64)> = (0..=steps)
                .map(|j| {
                    let t = j as f64 / steps as f64;
                    (
                        xs[0] + t * w,
                        ys[0] - bow * (std::f64::consts::PI * t).sin(),
                    )
                })
                .collect();
            let west: Vec<(f64, f64)> = (0..=steps)
                .map(|j| {
                    let t = j as f64 / steps as f64;
                    (
                        xs[0] - bow * (std::f64::consts::PI * t).sin(),
                        ys[0] + t * h,
                    )
                })
                .collect();
            for (kind, pts) in [(RoadKind::Cycleway, south), (RoadKind::Footway, west)] {
                plans.push(Plan {
                    kind,
                    name: street_name(&mut rng, kind),
                    pts,
                    one_way: false,
                });
            }
        }
    }

    // Lamps per street, adjusted to exactly n_lamps within the spacing bounds.
    let lens: Vec<f64> = plans.iter().map(|p| planar_length(&p.pts)).collect();
    let mut counts: Vec<usize> = lens
        .iter()
        .map(|&len| ((len / rng.gen_range(28.0..37.0)).round() as usize).max(1))
        .collect();
    adjust_counts(&mut counts, &lens, n_lamps, &mut rng);

    let theta: f64 = rng.gen_range(-0.3..0.3);
    let (sin, cos) = theta.sin_cos();
    let proj = LocalProjection::new(centre);
    let to_ll = |p: (f64, f64)| proj.to_latlon((p.0 * cos - p.1 * sin, p.0 * sin + p.1 * cos));

    let mut roads = Vec::with_capacity(plans.len());
    let mut drafts = Vec::with_capacity(n_lamps);
    for (r, plan) in plans.into_iter().enumerate() {
        let c = counts[r];
        let len = lens[r];
        let side = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
        let setback = match plan.kind {
            RoadKind::Arterial => 9.0,
            RoadKind::Major => 7.0,
            RoadKind::Local => 5.0,
            RoadKind::Cycleway | RoadKind::Footway => 2.0,
        };
        let d = if c > 0 { len / c as f64 } else { len };
        for j in 0..c {
            let s = ((j as f64 + 0.5) + rng.gen_range(-0.1..0.1)) * d;
            let (p, (tx, ty)) = point_at(&plan.pts, s);
            let lateral = if plan.kind == RoadKind::Arterial && j % 2 == 1 {
                -side
            } else {
                side
            } * setback;
            let q = (p.0 - ty * lateral, p.1 + tx * lateral);
            let (lat, lon) = to_ll(q);
            drafts.push(Draft {
                lat,
                lon,
                road: r,
                street: plan.name.clone(),
                group: format!("road-{r}"),
                along: s,
                rated_power_w: plan.kind.default_rated_power_w(),
            });
        }
        let points: Vec<(f64, f64)> = plan.pts.iter().map(|&p| to_ll(p)).collect();
        roads.push(Road {
            id: r,
            kind: plan.kind,
            name: plan.name,
            length_m: polyline_length_m(&points),
            points,
            one_way: plan.one_way,
        });
    }
    assemble(name, drafts, roads, Vec::new())
}

/// Moves lamp counts one at a time (in a seeded order) until they sum to `n`, keeping the
/// spacing within 25-40 m while possible.
fn adjust_counts(counts: &mut [usize], lens: &[f64], n: usize, rng: &mut ChaCha8Rng) {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    loop {
        let sum: usize = counts.iter().sum();
        if sum == n || counts.is_empty() {
            return;
        }
        let grow = sum < n;
        let mut diff = sum.abs_diff(n);
        order.shuffle(rng);
        let mut moved = false;
        for &r in &order {
            if diff == 0 {
                break;
            }
            if grow && lens[r] / (counts[r] + 1) as f64 >= MIN_SPACING_M {
                counts[r] += 1;
            } else if !grow && counts[r] > 1 && lens[r] / (counts[r] - 1) as f64 <= MAX_SPACING_M {
                counts[r] -= 1;
            } else {
                continue;
            }
            diff -= 1;
            moved = true;
        }
        if !moved {
            // Out of bounds everywhere: stretch the street that suffers least.
            let pick = if grow {
                (0..counts.len()).max_by(|&a, &b| {
                    (lens[a] / (counts[a] + 1) as f64)
                        .total_cmp(&(lens[b] / (counts[b] + 1) as f64))
                })
            } else {
                (0..counts.len())
                    .filter(|&r| counts[r] > 0)
                    .max_by_key(|&r| counts[r])
            };
            match pick {
                Some(r) if grow => counts[r] += 1,
                Some(r) => counts[r] -= 1,
                None => return,
            }
        }
    }
}

fn planar_length(pts: &[(f64, f64)]) -> f64 {
    pts.windows(2)
        .map(|w| ((w[1].0 - w[0].0).powi(2) + (w[1].1 - w[0].1).powi(2)).sqrt())
        .sum()
}

/// The point at arc length `s` along a planar polyline and the unit tangent there.
fn point_at(pts: &[(f64, f64)], s: f64) -> ((f64, f64), (f64, f64)) {
    let mut left = s.max(0.0);
    for w in pts.windows(2) {
        let (dx, dy) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
        let l = (dx * dx + dy * dy).sqrt();
        if l <= 0.0 {
            continue;
        }
        if left <= l {
            let t = left / l;
            return ((w[0].0 + t * dx, w[0].1 + t * dy), (dx / l, dy / l));
        }
        left -= l;
    }
    match pts {
        [.., a, b] => {
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let l = (dx * dx + dy * dy).sqrt().max(f64::MIN_POSITIVE);
            (*b, (dx / l, dy / l))
        }
        [a] => (*a, (1.0, 0.0)),
        [] => ((0.0, 0.0), (1.0, 0.0)),
    }
}
