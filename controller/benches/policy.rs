//! Cost of the policy: one lamp's decision (the pure function), the class state machine per
//! zone interval, and the core's whole tick per lamp (which includes building each lamp's
//! situation, the zone's class and the send check).
//!
//! `cargo bench -p lamplighter-controller --bench policy`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lamplighter_controller::core::classes::{self, ClassSelector};
use lamplighter_controller::core::policy::{
    decide, ClassInForce, LampSituation, Override, PolicyConfig, Reason,
};
use lamplighter_controller::core::{ControllerConfig, ControllerCore, ProvisionedNode};
use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui, LampId, LightingClass, TenantId, UnixMs, ZoneId};

// 2024-12-21 22:00 UTC: dark in Bristol.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);

fn situations() -> Vec<LampSituation> {
    (0..64u64)
        .map(|i| LampSituation {
            now: NIGHT.plus_ms(i * 37_000),
            dark: i % 16 != 0,
            bubble_until: (i % 3 == 0).then(|| NIGHT.plus_ms(i * 40_000)),
            override_: (i % 11 == 0).then(|| Override {
                level_pct: 80,
                until: NIGHT.plus_ms(1_000_000),
            }),
            class: (i % 7 != 0).then(|| ClassInForce {
                design: LightingClass::M(3),
                class: LightingClass::M(3 + (i % 3) as u8),
                reason: if i % 2 == 0 {
                    Reason::Schedule
                } else {
                    Reason::Forecast
                },
            }),
        })
        .collect()
}

fn node(i: u32) -> ProvisionedNode {
    ProvisionedNode {
        lamp: LampId(i),
        tenant: TenantId::new("bench").unwrap(),
        dev_eui: DevEui(0x70B3_D500_0000_0000 + i as u64),
        dev_addr: DevAddr(0x2601_0000 + i),
        keys: SessionKeys {
            nwk_s_key: AesKey([i as u8; 16]),
            app_s_key: AesKey([i as u8 ^ 0x5a; 16]),
        },
        zone: ZoneId(i / 20),
        lat: 51.45 + (i % 100) as f64 * 0.00025,
        lon: -2.59 + (i / 100) as f64 * 0.0004,
        rated_power_w: 40.0,
        last_fcnt_up: None,
        next_fcnt_down: 0,
        last_energy_dwh: None,
    }
}

fn bench(c: &mut Criterion) {
    for name in ["part-night", "adaptive"] {
        let cfg = PolicyConfig::named(name).unwrap();
        let cases = situations();
        let mut k = 0;
        c.bench_function(&format!("decide one lamp ({name})"), |b| {
            b.iter(|| {
                k = (k + 1) % cases.len();
                black_box(decide(black_box(&cfg), black_box(&cases[k])))
            })
        });
    }

    let steps = classes::uni_11248_steps();
    let mut sel = ClassSelector::default();
    let mut i = 0u32;
    c.bench_function("class selection per zone interval", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ratio = (i % 10) as f64 / 10.0;
            let m = classes::classes_down(&steps, black_box(ratio));
            let f = classes::classes_down(&steps, black_box(ratio + 0.1));
            black_box(sel.end_interval(Some(m), Some(f), 2))
        })
    });

    // The whole tick, per lamp: 2,000 lamps in 100 zones, adaptive, nothing to send.
    let lamps = 2_000u32;
    let config = ControllerConfig {
        policy: PolicyConfig::named("adaptive").unwrap(),
        refresh_s: u32::MAX,
        ..ControllerConfig::default()
    };
    let mut core = ControllerCore::new(config, (0..lamps).map(node).collect()).unwrap();
    core.handle_tick(NIGHT);
    while core.poll_command().is_some() {}
    while core.poll_event().is_some() {}
    let mut t = NIGHT;
    let mut group = c.benchmark_group("core tick");
    group.throughput(criterion::Throughput::Elements(lamps as u64));
    group.bench_function("2000 lamps, adaptive, steady", |b| {
        b.iter(|| {
            t = t.plus_ms(1);
            core.handle_tick(black_box(t));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
