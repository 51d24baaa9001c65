//! Loads a town and prints what is in it: `cargo run --release --example town_stats -- <path>`.
use std::time::Instant;

use lamplighter_town::{distance_m, RoadKind, Town};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: town_stats <town folder or csv> | procedural:<n>");
        std::process::exit(2);
    };
    let t0 = Instant::now();
    let town = match path.strip_prefix("procedural:") {
        Some(n) => Town::procedural(n.parse().unwrap_or(1000), 1, (51.4545, -2.5879)),
        None => match Town::load(std::path::Path::new(&path)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
    };
    let elapsed = t0.elapsed();
    println!(
        "{}: {} lamps, {} roads, {} zones, {} dropped, loaded in {:.3} s",
        town.name,
        town.lamps.len(),
        town.roads.len(),
        town.zones.len(),
        town.dropped.len(),
        elapsed.as_secs_f64()
    );
    for d in &town.dropped {
        println!("  dropped: {}", d.reason);
    }
    for k in RoadKind::ALL {
        let roads: Vec<_> = town.roads.iter().filter(|r| r.kind == k).collect();
        let km: f64 = roads.iter().map(|r| r.length_m).sum::<f64>() / 1000.0;
        let lamps: Vec<_> = town
            .lamps
            .iter()
            .filter(|l| town.roads[l.road].kind == k)
            .collect();
        let kw: f64 = lamps.iter().map(|l| l.rated_power_w as f64).sum::<f64>() / 1000.0;
        println!(
            "  {k:>8}: {:5} roads {:8.1} km {:6} lamps {:8.1} kW",
            roads.len(),
            km,
            lamps.len(),
            kw
        );
    }
    let mut sizes: Vec<usize> = town.zones.iter().map(|z| z.lamps.len()).collect();
    sizes.sort();
    if !sizes.is_empty() {
        println!(
            "  zone sizes: min {} median {} max {}; {} zones of 20-80",
            sizes[0],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1],
            sizes.iter().filter(|&&s| (20..=80).contains(&s)).count()
        );
    }
    let mut far = 0;
    let mut dists: Vec<f64> = town
        .lamps
        .iter()
        .map(|l| {
            let r = &town.roads[l.road];
            r.points
                .iter()
                .map(|&p| distance_m(p, l.position()))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    dists.sort_by(f64::total_cmp);
    for &d in &dists {
        if d > 150.0 {
            far += 1;
        }
    }
    if !dists.is_empty() {
        println!(
            "  lamp to nearest vertex of its road: median {:.0} m, p95 {:.0} m, max {:.0} m, {far} over 150 m",
            dists[dists.len() / 2],
            dists[dists.len() * 95 / 100],
            dists[dists.len() - 1]
        );
    }
    if std::env::var_os("ROAD_HIST").is_some() {
        let mut per_road = vec![0usize; town.roads.len()];
        for l in &town.lamps {
            per_road[l.road] += 1;
        }
        let mut lens: Vec<f64> = town.roads.iter().map(|r| r.length_m).collect();
        lens.sort_by(f64::total_cmp);
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
        println!(
            "  road length quantiles 10/50/90/99/max: {:.0} {:.0} {:.0} {:.0} {:.0}",
            q(&lens, 0.1),
            q(&lens, 0.5),
            q(&lens, 0.9),
            q(&lens, 0.99),
            q(&lens, 1.0)
        );
        let mut sp: Vec<f64> = town
            .roads
            .iter()
            .zip(&per_road)
            .filter(|(r, &n)| n > 2 && r.points.len() > 2)
            .map(|(r, _)| r.length_m / (r.points.len() - 1) as f64)
            .collect();
        sp.sort_by(f64::total_cmp);
        println!(
            "  spacing quantiles 10/25/50/75/90: {:.0} {:.0} {:.0} {:.0} {:.0}",
            q(&sp, 0.1),
            q(&sp, 0.25),
            q(&sp, 0.5),
            q(&sp, 0.75),
            q(&sp, 0.9)
        );
    }
    let t1 = Instant::now();
    let n: usize = (0..town.lamps.len().min(10_000))
        .map(|i| {
            town.neighbours(lamplighter_town::LampId(i as u32), 100.0, 8)
                .len()
        })
        .sum();
    println!(
        "  neighbours(100 m, 8) for {} lamps: {:.3} s, {n} found",
        town.lamps.len().min(10_000),
        t1.elapsed().as_secs_f64()
    );
}
