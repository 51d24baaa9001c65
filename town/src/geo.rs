//! Small geodesy: distances, a local metric projection and a uniform grid index.

use std::collections::HashMap;

/// Mean Earth radius (m), IUGG.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Distance in metres between two (lat, lon) points in degrees, equirectangular
/// approximation at their mean latitude (error well under 0.1 % across a town).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let lat_m = ((a.0 + b.0) / 2.0).to_radians();
    let dy = (b.0 - a.0).to_radians();
    let dx = (b.1 - a.1).to_radians() * lat_m.cos();
    EARTH_RADIUS_M * (dx * dx + dy * dy).sqrt()
}

/// Length of a (lat, lon) polyline in metres.
pub fn polyline_length_m(points: &[(f64, f64)]) -> f64 {
    points.windows(2).map(|w| distance_m(w[0], w[1])).sum()
}

/// Equirectangular projection to metres east (x) and north (y) of an origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalProjection {
    pub origin: (f64, f64),
    kx: f64,
    ky: f64,
}

impl LocalProjection {
    pub fn new(origin: (f64, f64)) -> Self {
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        let kx = ky * origin.0.to_radians().cos();
        LocalProjection { origin, kx, ky }
    }
    /// (lat, lon) -> (x east m, y north m).
    pub fn to_xy(&self, p: (f64, f64)) -> (f64, f64) {
        (
            (p.1 - self.origin.1) * self.kx,
            (p.0 - self.origin.0) * self.ky,
        )
    }
    /// (x east m, y north m) -> (lat, lon).
    pub fn to_latlon(&self, xy: (f64, f64)) -> (f64, f64) {
        (
            self.origin.0 + xy.1 / self.ky,
            self.origin.1 + xy.0 / self.kx,
        )
    }
}

/// Distance from point `p` to segment `a`-`b` (planar), and the fraction along the segment
/// of the closest point.
pub(crate) fn point_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
    (((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt(), t)
}

/// Distance from `p` to a planar polyline (a single point counts as a polyline).
pub(crate) fn point_polyline(p: (f64, f64), line: &[(f64, f64)]) -> f64 {
    match line.len() {
        0 => f64::INFINITY,
        1 => ((p.0 - line[0].0).powi(2) + (p.1 - line[0].1).powi(2)).sqrt(),
        _ => line
            .windows(2)
            .map(|w| point_segment(p, w[0], w[1]).0)
            .fold(f64::INFINITY, f64::min),
    }
}

/// A uniform grid over planar points (metres), for radius and nearest queries.
#[derive(Clone, Debug)]
pub struct PointGrid {
    cell_m: f64,
    cells: HashMap<(i32, i32), Vec<u32>>,
    xy: Vec<(f64, f64)>,
}

impl PointGrid {
    pub fn new(xy: Vec<(f64, f64)>, cell_m: f64) -> Self {
        let mut cells: HashMap<(i32, i32), Vec<u32>> = HashMap::new();
        for (i, &p) in xy.iter().enumerate() {
            cells.entry(cell_of(p, cell_m)).or_default().push(i as u32);
        }
        PointGrid { cell_m, cells, xy }
    }

    pub fn xy(&self, i: u32) -> (f64, f64) {
        self.xy[i as usize]
    }

    /// Every point within `radius` of `p` (unsorted), with its distance.
    pub fn within(&self, p: (f64, f64), radius: f64, out: &mut Vec<(u32, f64)>) {
        out.clear();
        if radius.is_nan() || radius < 0.0 || self.xy.is_empty() {
            return;
        }
        let (cx, cy) = cell_of(p, self.cell_m);
        let r = (radius / self.cell_m).ceil().min(1e6) as i32;
        let span = (2 * r as i64 + 1).pow(2);
        if span as usize > self.cells.len() * 4 {
            // A radius wider than the town: scan the occupied cells instead.
            for pts in self.cells.values() {
                self.push_within(pts, p, radius, out);
            }
            return;
        }
        for gx in cx - r..=cx + r {
            for gy in cy - r..=cy + r {
                if let Some(pts) = self.cells.get(&(gx, gy)) {
                    self.push_within(pts, p, radius, out);
                }
            }
        }
    }

    fn push_within(&self, pts: &[u32], p: (f64, f64), radius: f64, out: &mut Vec<(u32, f64)>) {
        for &i in pts {
            let q = self.xy[i as usize];
            let d = ((q.0 - p.0).powi(2) + (q.1 - p.1).powi(2)).sqrt();
            if d <= radius {
                out.push((i, d));
            }
        }
    }

    /// The nearest point to `p` other than `exclude`, searching out to `max_radius`.
    pub fn nearest(
        &self,
        p: (f64, f64),
        exclude: Option<u32>,
        max_radius: f64,
    ) -> Option<(u32, f64)> {
        let mut buf = Vec::new();
        let mut radius = self.cell_m;
        loop {
            let r = radius.min(max_radius);
            self.within(p, r, &mut buf);
            let best = buf
                .iter()
                .filter(|(i, _)| Some(*i) != exclude)
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .copied();
            if best.is_some() || r >= max_radius {
                return best;
            }
            radius *= 4.0;
        }
    }
}

fn cell_of(p: (f64, f64), cell_m: f64) -> (i32, i32) {
    (
        (p.0 / cell_m).floor().clamp(-1e9, 1e9) as i32,
        (p.1 / cell_m).floor().clamp(-1e9, 1e9) as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_about_right() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m((51.0, -2.0), (52.0, -2.0));
        assert!((d - 111_195.0).abs() < 50.0, "{d}");
        // 0.001 deg of longitude at 51.45 N is about 69.4 m.
        let d = distance_m((51.45, -2.59), (51.45, -2.591));
        assert!((d - 69.4).abs() < 0.5, "{d}");
        assert_eq!(distance_m((1.0, 2.0), (1.0, 2.0)), 0.0);
    }

    #[test]
    fn projection_round_trips() {
        let p = LocalProjection::new((42.37, -71.11));
        let q = (42.38, -71.10);
        let back = p.to_latlon(p.to_xy(q));
        assert!((back.0 - q.0).abs() < 1e-12 && (back.1 - q.1).abs() < 1e-12);
        let xy = p.to_xy(q);
        let d = (xy.0 * xy.0 + xy.1 * xy.1).sqrt();
        assert!((d - distance_m(p.origin, q)).abs() < 1.0);
    }

    #[test]
    fn grid_queries() {
        let pts: Vec<(f64, f64)> = (0..100)
            .map(|i| ((i % 10) as f64 * 10.0, (i / 10) as f64 * 10.0))
            .collect();
        let g = PointGrid::new(pts, 25.0);
        let mut out = Vec::new();
        g.within((0.0, 0.0), 10.0, &mut out);
        out.sort_by_key(|x| x.0);
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 10]);
        assert_eq!(g.nearest((0.0, 0.0), Some(0), 1000.0).map(|x| x.0), Some(1));
        assert_eq!(g.nearest((1e5, 1e5), None, 10.0), None);
        assert!(g.nearest((1e4, 1e4), None, 1e6).is_some());
    }
}
