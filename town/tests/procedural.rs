use lamplighter_town::{distance_m, LampId, RoadKind, Town};

const CENTRE: (f64, f64) = (51.4545, -2.5879);

#[test]
fn same_seed_same_town_and_exact_count() {
    for n in [0usize, 1, 5, 11, 12, 13, 40, 100, 333, 1000, 5000] {
        let a = Town::procedural(n, 7, CENTRE);
        let b = Town::procedural(n, 7, CENTRE);
        assert_eq!(a, b, "n = {n}");
        assert_eq!(a.lamps.len(), n, "n = {n}");
        a.check().unwrap_or_else(|e| panic!("n = {n}: {e}"));
        if n > 0 {
            assert!(!a.zones.is_empty());
        }
    }
    let c = Town::procedural(1000, 8, CENTRE);
    assert_ne!(
        Town::procedural(1000, 7, CENTRE),
        c,
        "another seed, another town"
    );
}

#[test]
fn lamps_zones_and_roads_are_consistent() {
    let t = Town::procedural(2000, 42, CENTRE);
    t.check().unwrap();
    for (i, l) in t.lamps.iter().enumerate() {
        assert_eq!(l.id, LampId(i as u32));
        let road = &t.roads[l.road];
        assert_eq!(l.street, road.name);
        let zone = &t.zones[l.zone.0 as usize];
        assert!(zone.lamps.contains(&l.id));
        assert_eq!(zone.road_kind, road.kind);
        assert_eq!(l.design_class, road.kind.design_class());
        assert!(l.rated_power_w > 0.0);
        // Lamps stand near their road (set back at most 9 m from a vertex-to-vertex line).
        let near = road.points.windows(2).any(|w| {
            let d = distance_m(w[0], l.position()) + distance_m(l.position(), w[1]);
            d <= distance_m(w[0], w[1]) + 2.0 * 10.0
        });
        assert!(near, "lamp {i} is far from road {}", road.name);
    }
    for z in &t.zones {
        assert!(!z.lamps.is_empty());
        assert!(z.lamps.len() <= 80, "{} has {}", z.name, z.lamps.len());
        assert!(z.capacity_per_h > 0.0);
        // One road per zone.
        let r = t.lamps[z.lamps[0].0 as usize].road;
        assert!(z.lamps.iter().all(|l| t.lamps[l.0 as usize].road == r));
    }
    // A 2,000-lamp town has streets long enough for zones of at least 20 lamps.
    assert!(
        t.zones.iter().all(|z| z.lamps.len() >= 20),
        "{:?}",
        t.zones.iter().map(|z| z.lamps.len()).collect::<Vec<_>>()
    );
    // It has every kind of road.
    for kind in RoadKind::ALL {
        assert!(t.roads.iter().any(|r| r.kind == kind), "no {kind}");
    }
    let c = t.centre();
    assert!(distance_m(c, CENTRE) < 300.0, "centre {c:?}");
}

#[test]
fn spacing_is_25_to_40_m_along_each_road() {
    let t = Town::procedural(3000, 3, CENTRE);
    let mut per_road = vec![0usize; t.roads.len()];
    for l in &t.lamps {
        per_road[l.road] += 1;
    }
    for (r, &c) in t.roads.iter().zip(&per_road) {
        let spacing = r.length_m / c as f64;
        assert!(
            (24.5..=40.5).contains(&spacing),
            "{}: {c} lamps on {} m",
            r.name,
            r.length_m
        );
    }
}

#[test]
fn neighbours_are_within_radius_sorted_and_exclude_self() {
    let t = Town::procedural(1500, 11, CENTRE);
    for i in (0..t.lamps.len()).step_by(37) {
        let me = LampId(i as u32);
        let p = t.lamps[i].position();
        let ns = t.neighbours(me, 80.0, 6);
        assert!(ns.len() <= 6);
        assert!(!ns.contains(&me));
        let d: Vec<f64> = ns
            .iter()
            .map(|n| distance_m(p, t.lamps[n.0 as usize].position()))
            .collect();
        assert!(d.iter().all(|&x| x <= 80.0));
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        // Complete: brute force agrees on the count within the radius.
        let all = t
            .lamps
            .iter()
            .filter(|l| l.id != me && distance_m(p, l.position()) <= 80.0)
            .count();
        assert_eq!(ns.len(), all.min(6));
    }
    // Every lamp has a neighbour on its street within 45 m (spacing is at most 40 m).
    assert!(!t.neighbours(LampId(0), 45.0, 1).is_empty());
    assert!(t.neighbours(LampId(0), 1e7, 0).is_empty());
    assert!(t.neighbours(LampId(999_999), 100.0, 5).is_empty());
    assert_eq!(
        t.neighbours(LampId(0), 1e7, usize::MAX).len(),
        t.lamps.len() - 1
    );
}

#[test]
fn town_serialises_round_trip() {
    let t = Town::procedural(200, 1, CENTRE);
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains("\"arterial\""));
    let back: Town = serde_json::from_str(&json).unwrap();
    // serde_json may round the last bit of a float; everything else is exact.
    assert_eq!(back.lamps.len(), t.lamps.len());
    assert_eq!(back.zones, t.zones);
    for (a, b) in back.lamps.iter().zip(&t.lamps) {
        assert!(distance_m(a.position(), b.position()) < 1e-6);
        assert_eq!(
            (a.road, a.zone, a.design_class, &a.street),
            (b.road, b.zone, b.design_class, &b.street)
        );
    }
    back.check().unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    #[test]
    fn any_size_and_seed_keeps_the_invariants(n in 0usize..2500, seed in proptest::prelude::any::<u64>()) {
        let t = Town::procedural(n, seed, (42.37, -71.11));
        proptest::prop_assert_eq!(t.lamps.len(), n);
        proptest::prop_assert!(t.check().is_ok(), "{:?}", t.check());
        proptest::prop_assert!(t.zones.iter().all(|z| !z.lamps.is_empty() && z.lamps.len() <= 80));
    }
}
