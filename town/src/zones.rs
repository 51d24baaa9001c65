//! Grouping lamps into zones: consecutive lamps along one street of one road kind, 20-80
//! lamps each where the street has that many.

use std::collections::HashMap;

use lamplighter_protocol::{LampId, ZoneId};

use crate::{DroppedPoint, Lamp, Road, RoadKind, Town, Zone};

/// Largest zone.
pub(crate) const MAX_ZONE_LAMPS: usize = 80;
/// Streets longer than [`MAX_ZONE_LAMPS`] are cut into zones of about this many lamps.
pub(crate) const TARGET_ZONE_LAMPS: usize = 60;

/// A lamp before it has an id and a zone.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub lat: f64,
    pub lon: f64,
    pub road: usize,
    pub street: String,
    /// The zone grouping key: lamps with the same key and road kind may share a zone.
    pub group: String,
    /// Position along the street (any monotone measure) to order the lamps of a group.
    pub along: f64,
    pub rated_power_w: f32,
}

/// Sizes of the zones for a street of `n` lamps: one zone up to 80, else equal parts of
/// about 60 (so 41-80 each).
pub(crate) fn split_sizes(n: usize) -> Vec<usize> {
    if n <= MAX_ZONE_LAMPS {
        return vec![n];
    }
    let m = n.div_ceil(TARGET_ZONE_LAMPS);
    (0..m).map(|i| n / m + usize::from(i < n % m)).collect()
}

/// Builds the town: lamp ids in draft order, zones per (group, kind) in order of their
/// first lamp, cut along the street.
pub(crate) fn assemble(
    name: String,
    drafts: Vec<Draft>,
    roads: Vec<Road>,
    dropped: Vec<DroppedPoint>,
) -> Town {
    let kind_of = |d: &Draft| roads[d.road].kind;
    // Groups in order of first appearance.
    let mut order: Vec<(String, RoadKind)> = Vec::new();
    let mut members: HashMap<(String, RoadKind), Vec<usize>> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        let key = (d.group.clone(), kind_of(d));
        let e = members.entry(key.clone()).or_default();
        if e.is_empty() {
            order.push(key);
        }
        e.push(i);
    }
    let mut kinds_per_group: HashMap<&str, usize> = HashMap::new();
    for (g, _) in &order {
        *kinds_per_group.entry(g.as_str()).or_default() += 1;
    }

    let mut zone_of = vec![ZoneId(0); drafts.len()];
    let mut zones = Vec::new();
    for key in &order {
        let mut idx = members[key].clone();
        idx.sort_by(|&a, &b| drafts[a].along.total_cmp(&drafts[b].along).then(a.cmp(&b)));
        let kind = key.1;
        let street = &drafts[idx[0]].street;
        let mut base = street.clone();
        if kinds_per_group[key.0.as_str()] > 1 {
            base = format!("{base} ({kind})");
        }
        let sizes = split_sizes(idx.len());
        let m = sizes.len();
        let capacity_per_h = kind.capacity_per_h();
        let mut start = 0;
        for (k, size) in sizes.into_iter().enumerate() {
            let id = ZoneId(zones.len() as u32);
            let lamps: Vec<LampId> = idx[start..start + size]
                .iter()
                .map(|&i| LampId(i as u32))
                .collect();
            for l in &lamps {
                zone_of[l.0 as usize] = id;
            }
            zones.push(Zone {
                id,
                name: if m > 1 {
                    format!("{base} {}/{m}", k + 1)
                } else {
                    base.clone()
                },
                road_kind: kind,
                design_class: kind.design_class(),
                lamps,
                capacity_per_h,
            });
            start += size;
        }
    }
    let lamps = drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let kind = roads[d.road].kind;
            Lamp {
                id: LampId(i as u32),
                lat: d.lat,
                lon: d.lon,
                road: d.road,
                zone: zone_of[i],
                design_class: kind.design_class(),
                rated_power_w: d.rated_power_w,
                street: d.street,
            }
        })
        .collect();
    let mut town = Town::new(name, lamps, roads, zones);
    town.dropped = dropped;
    town
}

/// Positions of points along their principal axis (for ordering the lamps of a street
/// made of several segments). Input and output in planar metres.
pub(crate) fn principal_axis_positions(xy: &[(f64, f64)]) -> Vec<f64> {
    if xy.is_empty() {
        return Vec::new();
    }
    let n = xy.len() as f64;
    let (mx, my) = xy.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mx, my) = (mx / n, my / n);
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for p in xy {
        let (dx, dy) = (p.0 - mx, p.1 - my);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    let theta = 0.5 * (2.0 * sxy).atan2(sxx - syy);
    let (c, s) = (theta.cos(), theta.sin());
    xy.iter().map(|p| (p.0 - mx) * c + (p.1 - my) * s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_stay_in_range() {
        assert_eq!(split_sizes(1), vec![1]);
        assert_eq!(split_sizes(80), vec![80]);
        for n in 81..2000 {
            let s = split_sizes(n);
            assert_eq!(s.iter().sum::<usize>(), n);
            assert!(s.iter().all(|&k| (20..=80).contains(&k)), "{n}: {s:?}");
        }
    }

    #[test]
    fn principal_axis_orders_a_line() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 3.0, i as f64 * 4.0 + 0.1 * (i % 2) as f64))
            .collect();
        let a = principal_axis_positions(&pts);
        let increasing = a.windows(2).all(|w| w[1] > w[0]);
        let decreasing = a.windows(2).all(|w| w[1] < w[0]);
        assert!(increasing || decreasing, "{a:?}");
    }
}
