//! Towns for Lamplighter: lamps, the roads they stand on, and the zones the controller
//! dims together.
//!
//! # The model
//!
//! A [`Town`] is three tables that index into each other:
//!
//! * [`Road`]s: polylines of (lat, lon) with a [`RoadKind`] (arterial, major, local,
//!   cycleway, footway), a name, a one-way flag and a length. A road is whatever the source
//!   calls a road: a centre-line segment between junctions (Cambridge), a whole street line
//!   (procedural towns) or a chain of lamps inferred from points (Bristol).
//! * [`Lamp`]s: one per lamp column, `lamps[i].id == LampId(i)`, on `roads[lamp.road]`, in
//!   `zones[lamp.zone]`, with the EN 13201 class it was designed for (at 100 %) and its LED
//!   power.
//! * [`Zone`]s: `zones[i].id == ZoneId(i)`, consecutive lamps along one street of one road
//!   kind, 20-80 lamps where the street is long enough (short real streets make smaller
//!   zones; a zone never spans two streets). All lamps of a zone share its class, so the
//!   controller can dim a zone as one.
//!
//! The class, wattage and traffic capacity follow from the road kind (and the fixture, where
//! the data has one); see [`classes`] for the table and the reasons. The LED power curve
//! is in [`power`] ([`LedPowerModel`]).
//!
//! # Sources
//!
//! * [`Town::procedural`]: a deterministic grid town of any size, for the live demo.
//! * [`Town::load_geojson_dir`]: Cambridge MA street lights and centre-lines.
//! * [`Town::load_points_csv`]: a points-only city (Bristol); roads are inferred by chaining
//!   nearest neighbours and isolated points are dropped with a reason ([`Town::dropped`]).
//! * [`Town::load`]: picks one of the above from what is in a folder.
//!
//! Loaders never panic on bad input; they return a [`TownError`] naming the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lamplighter_protocol::LightingClass;
pub use lamplighter_protocol::{LampId, ZoneId};
use serde::{Deserialize, Serialize};

pub mod classes;
mod geo;
mod geojson;
mod points;
pub mod power;
mod procedural;
mod zones;

pub use geo::{distance_m, polyline_length_m, LocalProjection, EARTH_RADIUS_M};
pub use power::LedPowerModel;

/// The kind of a road, which sets the lighting class of its lamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoadKind {
    Arterial,
    Major,
    Local,
    Cycleway,
    Footway,
}

impl RoadKind {
    pub const ALL: [RoadKind; 5] = [
        RoadKind::Arterial,
        RoadKind::Major,
        RoadKind::Local,
        RoadKind::Cycleway,
        RoadKind::Footway,
    ];
    /// The class lamps on this kind of road are designed for (see [`classes`]).
    pub fn design_class(self) -> LightingClass {
        classes::design_class(self)
    }
    /// Road users per hour at capacity (see [`classes`]).
    pub fn capacity_per_h(self) -> f64 {
        classes::capacity_per_h(self)
    }
    /// LED load of a lamp on this kind of road when the fixture is unknown.
    pub fn default_rated_power_w(self) -> f32 {
        classes::default_rated_power_w(self)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RoadKind::Arterial => "arterial",
            RoadKind::Major => "major",
            RoadKind::Local => "local",
            RoadKind::Cycleway => "cycleway",
            RoadKind::Footway => "footway",
        }
    }
}

impl std::fmt::Display for RoadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lamp column with its luminaire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lamp {
    /// `LampId(i)` for `town.lamps[i]`.
    pub id: LampId,
    pub lat: f64,
    pub lon: f64,
    /// Index into `town.roads`.
    pub road: usize,
    /// Index into `town.zones` (`ZoneId(i)` is `town.zones[i]`).
    pub zone: ZoneId,
    /// The class the lamp meets at 100 %.
    pub design_class: LightingClass,
    /// LED load at 100 % (W); see [`LedPowerModel`] for the input power.
    pub rated_power_w: f32,
    pub street: String,
}

impl Lamp {
    pub fn position(&self) -> (f64, f64) {
        (self.lat, self.lon)
    }
    pub fn power_model(&self) -> LedPowerModel {
        LedPowerModel::for_rated(self.rated_power_w)
    }
}

/// A road (or a segment or inferred chain of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Road {
    /// Its index in `town.roads`.
    pub id: usize,
    pub kind: RoadKind,
    pub name: String,
    /// (lat, lon); at least one point.
    pub points: Vec<(f64, f64)>,
    pub one_way: bool,
    pub length_m: f64,
}

/// Lamps along one street that share a class and a demand forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    /// `ZoneId(i)` for `town.zones[i]`.
    pub id: ZoneId,
    pub name: String,
    pub road_kind: RoadKind,
    pub design_class: LightingClass,
    /// In order along the street.
    pub lamps: Vec<LampId>,
    /// Road users per hour the zone's road carries at capacity (CEN/TR 13201-1 traffic
    /// weighting, UNI 11248 thresholds at 50 % and 25 % of it).
    pub capacity_per_h: f64,
}

/// An input point a loader left out, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DroppedPoint {
    /// 1-based line (CSV, counting the header) or feature index (GeoJSON).
    pub line: usize,
    pub lat: f64,
    pub lon: f64,
    pub reason: String,
}

/// A whole town. Build with [`Town::new`] or one of the loaders; the spatial index for
/// [`Town::neighbours`] is built on first use (call [`Town::invalidate_index`] after
/// moving lamps).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Town {
    pub name: String,
    pub lamps: Vec<Lamp>,
    pub roads: Vec<Road>,
    pub zones: Vec<Zone>,
    /// Input points left out by the loader, with the reason (empty for most sources).
    #[serde(default)]
    pub dropped: Vec<DroppedPoint>,
    #[serde(skip)]
    index: LampIndexCell,
}

impl PartialEq for Town {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.lamps == other.lamps
            && self.roads == other.roads
            && self.zones == other.zones
            && self.dropped == other.dropped
    }
}

#[derive(Clone, Default)]
struct LampIndexCell(OnceLock<geo::PointGrid>);

impl std::fmt::Debug for LampIndexCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "not built"
        })
    }
}

/// What a loader did, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub lamps: usize,
    pub roads: usize,
    /// Lamps placed on a nearby segment of the street they name (Cambridge `StreetName`).
    pub linked_by_name: usize,
    /// Lamps placed on a nearby segment with their street id (Cambridge `Street_ID`).
    pub linked_by_id: usize,
    /// Lamps placed on the nearest road (no usable street id, or inferred roads).
    pub linked_by_nearest: usize,
    /// Lamps whose street id matches some road's id, and how many of those matching roads
    /// are more than 100 m away (the ids then name different streets).
    pub street_id_matches: usize,
    pub street_id_far: usize,
    /// Input points or features left out (see [`Town::dropped`] for why).
    pub dropped: usize,
}

/// Why a town could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TownError {
    #[error("{}: file not found; {needed}", path.display())]
    MissingFile { path: PathBuf, needed: String },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: not a town; looked for {looked_for}", path.display())]
    NotATown { path: PathBuf, looked_for: String },
}

/// Cell size of the lamp index (m).
const INDEX_CELL_M: f64 = 50.0;

impl Town {
    /// Assembles a town from its tables (ids must equal indices; see [`Town::check`]).
    pub fn new(
        name: impl Into<String>,
        lamps: Vec<Lamp>,
        roads: Vec<Road>,
        zones: Vec<Zone>,
    ) -> Town {
        Town {
            name: name.into(),
            lamps,
            roads,
            zones,
            dropped: Vec::new(),
            index: LampIndexCell::default(),
        }
    }

    /// Deterministic for (n_lamps, seed): a grid town centred on `centre` (lat, lon); see
    /// the `procedural` module docs in the source for the layout.
    pub fn procedural(n_lamps: usize, seed: u64, centre: (f64, f64)) -> Town {
        procedural::generate(n_lamps, seed, centre)
    }

    /// Cambridge MA: `INFRA_StreetLights.geojson` and `TRANS_Centerlines.geojson` in `dir`.
    pub fn load_geojson_dir(dir: &Path) -> Result<Town, TownError> {
        geojson::load_dir(dir)
    }

    /// As [`Town::load_geojson_dir`], with counts of how the lamps were linked.
    pub fn load_geojson_dir_with_report(dir: &Path) -> Result<(Town, LoadReport), TownError> {
        geojson::load_dir_with_report(dir)
    }

    /// As [`Town::load_points_csv`], with counts.
    pub fn load_points_csv_with_report(path: &Path) -> Result<(Town, LoadReport), TownError> {
        points::load_csv_with_report(path)
    }

    /// A points-only city (`longitude,latitude` CSV, e.g. Bristol): roads inferred from
    /// chains of lamps, isolated points dropped with a reason.
    pub fn load_points_csv(path: &Path) -> Result<Town, TownError> {
        points::load_csv(path)
    }

    /// Loads whichever source fits `path`: a folder with the two GeoJSON files, a folder
    /// with `streetlights.csv`, or a CSV file.
    pub fn load(path: &Path) -> Result<Town, TownError> {
        if path.is_dir() {
            let lights = path.join(geojson::LIGHTS_FILE);
            let lines = path.join(geojson::CENTRELINES_FILE);
            let csv = path.join(points::CSV_FILE);
            if lights.is_file() || lines.is_file() {
                return Town::load_geojson_dir(path);
            }
            if csv.is_file() {
                return Town::load_points_csv(&csv);
            }
            return Err(TownError::NotATown {
                path: path.to_path_buf(),
                looked_for: format!(
                    "{} and {} (street lights and road centre-lines), or {} (points)",
                    geojson::LIGHTS_FILE,
                    geojson::CENTRELINES_FILE,
                    points::CSV_FILE
                ),
            });
        }
        if path.is_file() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext.eq_ignore_ascii_case("csv") {
                return Town::load_points_csv(path);
            }
            if ext.eq_ignore_ascii_case("geojson") {
                if let Some(dir) = path.parent() {
                    return Town::load_geojson_dir(dir);
                }
            }
            return Err(TownError::NotATown {
                path: path.to_path_buf(),
                looked_for: "a .csv of longitude,latitude points or a folder of GeoJSON".into(),
            });
        }
        Err(TownError::MissingFile {
            path: path.to_path_buf(),
            needed: format!(
                "a town folder ({} + {}, or {}) or a points CSV is needed",
                geojson::LIGHTS_FILE,
                geojson::CENTRELINES_FILE,
                points::CSV_FILE
            ),
        })
    }

    /// Up to `k` other lamps within `radius_m` of `lamp`, nearest first (ties by id).
    /// An unknown lamp has no neighbours.
    pub fn neighbours(&self, lamp: LampId, radius_m: f64, k: usize) -> Vec<LampId> {
        let Some(me) = self.lamps.get(lamp.0 as usize) else {
            return Vec::new();
        };
        if k == 0 || radius_m.is_nan() || radius_m < 0.0 {
            return Vec::new();
        }
        let grid = self.index.0.get_or_init(|| {
            let proj = LocalProjection::new(self.centre());
            geo::PointGrid::new(
                self.lamps
                    .iter()
                    .map(|l| proj.to_xy(l.position()))
                    .collect(),
                INDEX_CELL_M,
            )
        });
        let mut found = Vec::new();
        // A small margin covers the difference between the index's projection and
        // `distance_m`; the exact test below uses `distance_m`.
        grid.within(grid.xy(lamp.0), radius_m * 1.01 + 1.0, &mut found);
        let mut out: Vec<(f64, u32)> = found
            .into_iter()
            .filter(|&(i, _)| i != lamp.0)
            .map(|(i, _)| {
                (
                    distance_m(me.position(), self.lamps[i as usize].position()),
                    i,
                )
            })
            .filter(|&(d, _)| d <= radius_m)
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        out.truncate(k);
        out.into_iter().map(|(_, i)| LampId(i)).collect()
    }

    /// Forgets the spatial index (after lamps were moved, added or removed).
    pub fn invalidate_index(&mut self) {
        self.index = LampIndexCell::default();
    }

    /// Mean position of the lamps (of the road points if there are none; (0, 0) if empty).
    pub fn centre(&self) -> (f64, f64) {
        if !self.lamps.is_empty() {
            let n = self.lamps.len() as f64;
            let (a, b) = self
                .lamps
                .iter()
                .fold((0.0, 0.0), |(a, b), l| (a + l.lat, b + l.lon));
            return (a / n, b / n);
        }
        let pts: Vec<_> = self.roads.iter().flat_map(|r| r.points.iter()).collect();
        if pts.is_empty() {
            return (0.0, 0.0);
        }
        let n = pts.len() as f64;
        let (a, b) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
        (a / n, b / n)
    }

    /// (south, west, north, east) of lamps and roads.
    pub fn bounds(&self) -> Option<(f64, f64, f64, f64)> {
        let mut it = self
            .lamps
            .iter()
            .map(|l| l.position())
            .chain(self.roads.iter().flat_map(|r| r.points.iter().copied()));
        let first = it.next()?;
        Some(
            it.fold((first.0, first.1, first.0, first.1), |(s, w, n, e), p| {
                (s.min(p.0), w.min(p.1), n.max(p.0), e.max(p.1))
            }),
        )
    }

    pub fn lamp(&self, id: LampId) -> Option<&Lamp> {
        self.lamps.get(id.0 as usize)
    }

    pub fn zone(&self, id: ZoneId) -> Option<&Zone> {
        self.zones.get(id.0 as usize)
    }

    /// The road a lamp stands on.
    pub fn road_of(&self, id: LampId) -> Option<&Road> {
        self.lamp(id).and_then(|l| self.roads.get(l.road))
    }

    /// Total LED load at 100 % (W).
    pub fn total_rated_power_w(&self) -> f64 {
        self.lamps.iter().map(|l| l.rated_power_w as f64).sum()
    }

    /// Checks the invariants every town keeps: ids equal indices, every lamp on an existing
    /// road and in the zone that lists it, zones non-empty with the class of their lamps.
    pub fn check(&self) -> Result<(), String> {
        for (i, r) in self.roads.iter().enumerate() {
            if r.id != i {
                return Err(format!("road {i} has id {}", r.id));
            }
            if r.points.is_empty() {
                return Err(format!("road {i} ({}) has no points", r.name));
            }
        }
        let mut listed = vec![None; self.lamps.len()];
        for (i, z) in self.zones.iter().enumerate() {
            if z.id != ZoneId(i as u32) {
                return Err(format!("zone {i} has id {}", z.id));
            }
            if z.lamps.is_empty() {
                return Err(format!("zone {i} ({}) is empty", z.name));
            }
            for l in &z.lamps {
                let Some(slot) = listed.get_mut(l.0 as usize) else {
                    return Err(format!("zone {i} lists unknown lamp {l}"));
                };
                if slot.is_some() {
                    return Err(format!("lamp {l} is in two zones"));
                }
                *slot = Some(i);
            }
        }
        for (i, l) in self.lamps.iter().enumerate() {
            if l.id != LampId(i as u32) {
                return Err(format!("lamp {i} has id {}", l.id));
            }
            if l.road >= self.roads.len() {
                return Err(format!("lamp {i} is on unknown road {}", l.road));
            }
            if listed[i] != Some(l.zone.0 as usize) {
                return Err(format!(
                    "lamp {i} says zone {} but is listed in {:?}",
                    l.zone, listed[i]
                ));
            }
            let z = &self.zones[l.zone.0 as usize];
            if z.design_class != l.design_class {
                return Err(format!(
                    "lamp {i} is {} in zone {} of {}",
                    l.design_class, z.id, z.design_class
                ));
            }
            if !l.lat.is_finite()
                || !l.lon.is_finite()
                || l.rated_power_w.is_nan()
                || l.rated_power_w <= 0.0
            {
                return Err(format!("lamp {i} has a bad position or power"));
            }
        }
        Ok(())
    }
}
