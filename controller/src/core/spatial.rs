//! Neighbours by distance, through a grid of cells one radius wide, so a town of 50,000
//! lamps is indexed in linear time rather than by comparing every pair.

use std::collections::HashMap;

use lamplighter_protocol::TenantId;

const METRES_PER_DEG_LAT: f64 = 111_320.0;

/// For each point, up to `k` other points of the same tenant within `radius_m`, nearest first.
pub fn neighbours(points: &[(TenantId, f64, f64)], radius_m: f64, k: usize) -> Vec<Vec<usize>> {
    if points.is_empty() || radius_m <= 0.0 || k == 0 {
        return vec![Vec::new(); points.len()];
    }
    let mean_lat = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let m_per_deg_lon = METRES_PER_DEG_LAT * mean_lat.to_radians().cos().max(0.01);
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.2 * m_per_deg_lon, p.1 * METRES_PER_DEG_LAT))
        .collect();
    let cell = |(x, y): (f64, f64)| ((x / radius_m).floor() as i64, (y / radius_m).floor() as i64);
    let mut grid: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (i, &p) in xy.iter().enumerate() {
        grid.entry(cell(p)).or_default().push(i);
    }
    xy.iter()
        .enumerate()
        .map(|(i, &p)| {
            let (cx, cy) = cell(p);
            let mut near: Vec<(f64, usize)> = Vec::new();
            for dx in -1..=1 {
                for dy in -1..=1 {
                    for &j in grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                        if j == i || points[j].0 != points[i].0 {
                            continue;
                        }
                        let d = ((xy[j].0 - p.0).powi(2) + (xy[j].1 - p.1).powi(2)).sqrt();
                        if d <= radius_m {
                            near.push((d, j));
                        }
                    }
                }
            }
            near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            near.into_iter().take(k).map(|(_, j)| j).collect()
        })
        .collect()
}

/// Neighbour lists packed end to end (compressed sparse rows): a lamp's list is one short
/// slice of one array, not a heap allocation of its own.
#[derive(Debug, Clone, Default)]
pub struct Adjacency {
    /// Lamp `i`'s neighbours are `ids[start[i]..start[i + 1]]`.
    start: Vec<u32>,
    ids: Vec<u32>,
}

impl Adjacency {
    pub fn new(lists: Vec<Vec<usize>>) -> Self {
        let mut start = Vec::with_capacity(lists.len() + 1);
        let mut ids = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        start.push(0);
        for list in lists {
            ids.extend(list.into_iter().map(|j| j as u32));
            start.push(ids.len() as u32);
        }
        Adjacency { start, ids }
    }

    /// Asks the cache for lamp `i`'s list (a hint: see [`super::ControllerCore::prefetch_report`]).
    pub fn prefetch_of(&self, i: usize) {
        if let Some(&s) = self.start.get(i) {
            lamplighter_protocol::hint::prefetch(self.ids.as_ptr().wrapping_add(s as usize));
        }
    }

    /// [`Adjacency::of`], or `None` for a lamp out of range.
    pub fn get(&self, i: usize) -> Option<&[u32]> {
        let (s, e) = (*self.start.get(i)?, *self.start.get(i + 1)?);
        self.ids.get(s as usize..e as usize)
    }

    /// Lamp `i`'s neighbours, nearest first.
    pub fn of(&self, i: usize) -> &[u32] {
        self.get(i).expect("a lamp of the core")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_near_same_tenant_and_nearest_first() {
        let t = TenantId::new("a").unwrap();
        let u = TenantId::new("b").unwrap();
        // Points along a street 30 m apart (0.00027 deg of latitude), one of another tenant.
        let pts: Vec<_> = (0..5)
            .map(|i| (t.clone(), 51.0 + i as f64 * 0.00027, -2.0))
            .chain([(u, 51.0, -2.0)])
            .collect();
        let n = neighbours(&pts, 40.0, 4);
        assert_eq!(n[0], vec![1]);
        assert_eq!(n[2].len(), 2);
        assert!(n[2].contains(&1) && n[2].contains(&3));
        assert!(n[5].is_empty(), "other tenant's lamps are never neighbours");
        let n = neighbours(&pts, 70.0, 1);
        assert_eq!(n[2].len(), 1);
    }

    #[test]
    fn adjacency_keeps_each_list_in_order() {
        let a = Adjacency::new(vec![vec![2, 1], vec![], vec![0]]);
        assert_eq!(a.of(0), &[2, 1]);
        assert!(a.of(1).is_empty());
        assert_eq!(a.of(2), &[0]);
    }
}
