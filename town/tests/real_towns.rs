use std::path::{Path, PathBuf};
use std::time::Instant;

use lamplighter_town::{LampId, RoadKind, Town, TownError};

const CAMBRIDGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/town/cambridge_ma"
);
const BRISTOL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/town/bristol/streetlights.csv"
);

/// The data is required: a missing file fails the test with its name.
fn need(path: &str, file: &str) -> PathBuf {
    let p = Path::new(path);
    let f = if file.is_empty() {
        p.to_path_buf()
    } else {
        p.join(file)
    };
    assert!(
        f.exists(),
        "test data missing: {} (see ../shared/data/README.md)",
        f.display()
    );
    p.to_path_buf()
}

#[test]
fn cambridge_counts_and_linking() {
    let dir = need(CAMBRIDGE, "INFRA_StreetLights.geojson");
    need(CAMBRIDGE, "TRANS_Centerlines.geojson");
    let t0 = Instant::now();
    let (town, report) = Town::load_geojson_dir_with_report(&dir).unwrap();
    eprintln!(
        "cambridge loaded in {:?}: {report:?}, {} zones",
        t0.elapsed(),
        town.zones.len()
    );
    assert_eq!(town.lamps.len(), 6117);
    assert_eq!(town.roads.len(), 2643);
    // 5,736 lights find a centre-line with their Street_ID (as integers, "791" == 791.0) ...
    assert_eq!(report.street_id_matches, 5736);
    // ... but the two files number streets differently: most of those are far away, so
    // lights are linked by street name first (see the geojson module docs).
    assert!(report.street_id_far > 5000, "{report:?}");
    assert_eq!(
        report.linked_by_name + report.linked_by_id + report.linked_by_nearest,
        6117
    );
    assert!(report.linked_by_name > 5500, "{report:?}");
    assert!(town.dropped.is_empty());
    town.check().unwrap();
    let count = |k| town.roads.iter().filter(|r| r.kind == k).count();
    assert_eq!(count(RoadKind::Arterial), 284);
    assert_eq!(count(RoadKind::Major), 633);
    assert!(count(RoadKind::Footway) >= 1);
    // Every lamp stands near its road (linked by id, some lights are far down the street
    // from the segment's centre-line, but within a few hundred metres).
    let mut far = 0;
    for l in &town.lamps {
        let road = &town.roads[l.road];
        let d = road
            .points
            .iter()
            .map(|&p| lamplighter_town::distance_m(p, l.position()))
            .fold(f64::INFINITY, f64::min);
        if d > 150.0 {
            far += 1;
        }
    }
    assert!(
        far < 20,
        "{far} lamps more than 150 m from every vertex of their road"
    );
    // Wattage from the fixture class: A1/A2/A3 = 120/80/40 W per head.
    let watts: std::collections::BTreeSet<u32> =
        town.lamps.iter().map(|l| l.rated_power_w as u32).collect();
    assert!(
        watts.contains(&40) && watts.contains(&80) && watts.contains(&120),
        "{watts:?}"
    );
    let mass_ave = town
        .zones
        .iter()
        .find(|z| z.name.starts_with("Massachusetts Ave"))
        .expect("a Mass Ave zone");
    assert!(mass_ave.lamps.len() <= 80);
    assert!(town.zones.iter().all(|z| z.lamps.len() <= 80));
    assert!(!town.neighbours(LampId(0), 100.0, 5).is_empty());
    let c = town.centre();
    assert!(
        (c.0 - 42.37).abs() < 0.03 && (c.1 + 71.11).abs() < 0.03,
        "{c:?}"
    );
}

#[test]
fn bristol_loads_with_the_outlier_dropped() {
    let csv = need(BRISTOL, "");
    let t0 = Instant::now();
    let (town, report) = Town::load_points_csv_with_report(&csv).unwrap();
    eprintln!(
        "bristol loaded in {:?}: {report:?}, {} zones",
        t0.elapsed(),
        town.zones.len()
    );
    for k in RoadKind::ALL {
        let roads = town.roads.iter().filter(|r| r.kind == k).count();
        let lamps = town
            .lamps
            .iter()
            .filter(|l| town.roads[l.road].kind == k)
            .count();
        eprintln!("  {k}: {roads} roads, {lamps} lamps");
    }
    assert_eq!(town.lamps.len(), 49_450);
    assert_eq!(town.dropped.len(), 1, "{:?}", town.dropped);
    let d = &town.dropped[0];
    assert!(d.reason.contains("outlier"), "{}", d.reason);
    assert!(d.lon > -2.3, "the outlier is the point far east: {d:?}");
    town.check().unwrap();
    // Roads were inferred: far fewer roads than lamps, most lamps on multi-lamp roads.
    assert!(
        town.roads.len() < town.lamps.len() / 3,
        "{} roads",
        town.roads.len()
    );
    let on_chains = town
        .lamps
        .iter()
        .filter(|l| town.roads[l.road].points.len() >= 2)
        .count();
    assert!(
        on_chains as f64 > 0.95 * town.lamps.len() as f64,
        "{on_chains}"
    );
    assert!(town
        .zones
        .iter()
        .all(|z| !z.lamps.is_empty() && z.lamps.len() <= 80));
}

#[test]
fn load_detects_the_source() {
    let cam = need(CAMBRIDGE, "INFRA_StreetLights.geojson");
    assert_eq!(Town::load(&cam).unwrap().lamps.len(), 6117);
    let csv = need(BRISTOL, "");
    let via_dir = Town::load(csv.parent().unwrap()).unwrap();
    assert_eq!(via_dir.lamps.len(), 49_450);
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "lamplighter-town-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn errors_name_the_file() {
    let empty = tmpdir("empty");
    let e = Town::load(&empty).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TownError::NotATown { .. }), "{msg}");
    assert!(
        msg.contains("INFRA_StreetLights.geojson")
            && msg.contains("TRANS_Centerlines.geojson")
            && msg.contains("streetlights.csv"),
        "{msg}"
    );

    let e = Town::load_geojson_dir(&empty).unwrap_err().to_string();
    assert!(
        e.contains("TRANS_Centerlines.geojson") && e.contains("not found"),
        "{e}"
    );

    let missing = empty.join("nope.csv");
    let e = Town::load_points_csv(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.csv") && e.contains("not found"), "{e}");
    let e = Town::load(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.csv"), "{e}");

    // Only one of the two GeoJSON files: the message names the other.
    let half = tmpdir("half");
    std::fs::write(half.join("TRANS_Centerlines.geojson"), r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"LineString","coordinates":[[-71.1,42.37],[-71.101,42.371]]},"properties":{"Street":"A St","Street_ID":1.0}}]}"#).unwrap();
    let e = Town::load(&half).unwrap_err().to_string();
    assert!(
        e.contains("INFRA_StreetLights.geojson") && e.contains("not found"),
        "{e}"
    );

    // Bad JSON: path and reason.
    std::fs::write(
        half.join("INFRA_StreetLights.geojson"),
        "{\"type\": \"FeatureCollection\", \"features\": [",
    )
    .unwrap();
    let e = Town::load(&half).unwrap_err();
    assert!(matches!(e, TownError::Json { .. }));
    let e = e.to_string();
    assert!(
        e.contains("INFRA_StreetLights.geojson") && e.contains("line 1"),
        "{e}"
    );

    // A tiny valid pair loads.
    std::fs::write(half.join("INFRA_StreetLights.geojson"), r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","geometry":{"type":"Point","coordinates":[-71.1001,42.3701]},"properties":{"Street_ID":"1","FixtureType":"A2","NumLamps":2}},
        {"type":"Feature","geometry":{"type":"Point","coordinates":[-71.1005,42.3706]},"properties":{"Street_ID":"99","FixtureType":"?"}},
        {"type":"Feature","geometry":null,"properties":{}}]}"#).unwrap();
    let (t, r) = Town::load_geojson_dir_with_report(&half).unwrap();
    assert_eq!(
        (
            t.lamps.len(),
            r.linked_by_id,
            r.linked_by_nearest,
            t.dropped.len()
        ),
        (2, 1, 1, 1),
        "{r:?}"
    );
    assert_eq!(t.lamps[0].rated_power_w, 160.0);
    assert_eq!(
        t.lamps[1].rated_power_w, 80.0,
        "unknown fixture: median of the town's fixtures on that kind of road"
    );
    t.check().unwrap();

    // CSV without coordinate columns, and with a bad row.
    let csv = half.join("pts.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    let e = Town::load_points_csv(&csv).unwrap_err().to_string();
    assert!(e.contains("pts.csv") && e.contains("longitude"), "{e}");
    std::fs::write(
        &csv,
        "longitude,latitude\n-2.59,51.45\n-2.5904,51.45\nabc,51.45\n-2.5908,51.45\n",
    )
    .unwrap();
    let t = Town::load_points_csv(&csv).unwrap();
    assert_eq!(t.lamps.len(), 3);
    assert_eq!(t.dropped.len(), 1);
    assert!(t.dropped[0].reason.contains("line 4"), "{:?}", t.dropped);
    assert_eq!(t.roads.len(), 1);
    t.check().unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    let _ = std::fs::remove_dir_all(&half);
}
