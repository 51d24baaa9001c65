//! The policy's tests: each rule, the named policies, the ramp and the profile.

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::payload::{Presence, ProfileStep};
use lamplighter_protocol::{LightingClass, UnixMs};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::schedule::profile_level;
use super::*;
use crate::core::classes::TrafficStep;

// 2024-12-21 00:00 UTC.
const MIDNIGHT: UnixMs = UnixMs(1_734_739_200_000);

fn at(h: u64, m: u64) -> UnixMs {
    MIDNIGHT.plus_ms((h * 60 + m) * 60_000)
}

fn situation(now: UnixMs) -> LampSituation {
    LampSituation {
        now,
        dark: true,
        bubble_until: None,
        override_: None,
        class: None,
    }
}

fn class(design: LightingClass, class: LightingClass, reason: Reason) -> Option<ClassInForce> {
    Some(ClassInForce {
        design,
        class,
        reason,
    })
}

fn check(cfg: &PolicyConfig, cases: &[(LampSituation, u8, Reason)]) {
    for (i, (s, level, reason)) in cases.iter().enumerate() {
        assert_eq!(
            decide(cfg, s),
            Decision {
                level_pct: *level,
                reason: *reason
            },
            "case {i}: {s:?}"
        );
    }
}

proptest! {
    /// The level is the latest step's at or before the minute, else the day's last (of
    /// steps at the same minute, the last listed): as `Iterator::max_by_key` finds them.
    #[test]
    fn the_profile_level_is_the_latest_step_before_else_the_days_last(
        // Half-hour steps, so that some share a minute.
        raw in proptest::collection::vec((0u16..48, 0u8..=120), 0..8),
        minute in 0u16..1440,
    ) {
        let steps: Vec<ProfileStep> = raw
            .iter()
            .map(|&(half_hour, level_pct)| ProfileStep {
                minute_of_day: half_hour * 30,
                level_pct,
            })
            .collect();
        let latest_before = steps
            .iter()
            .filter(|s| s.minute_of_day <= minute)
            .max_by_key(|s| s.minute_of_day);
        let last_of_day = steps.iter().max_by_key(|s| s.minute_of_day);
        let expected = latest_before
            .or(last_of_day)
            .map_or(100, |s| s.level_pct.min(100));
        prop_assert_eq!(profile_level(&steps, minute), expected);
    }
}

#[test]
fn the_next_profile_step_is_the_next_change_of_the_profile_level() {
    // Steps at 00:00, 05:30, 12:00 and 22:00 local.
    let mut cfg = PolicyConfig::default();
    let level = |cfg: &PolicyConfig, t: UnixMs| decide(cfg, &situation(t)).level_pct;
    // (now, next step)
    let cases = [
        (at(23, 0), at(24, 0)),
        (at(0, 0), at(5, 30)),
        (at(5, 29).plus_ms(59_999), at(5, 30)),
        (at(5, 30), at(12, 0)),
        (at(21, 59), at(22, 0)),
        (at(22, 0), at(24, 0)),
    ];
    for (zone, utc_offset_min) in [("Etc/GMT", 0), ("Etc/GMT-1", 60), ("Etc/GMT+5", -300)] {
        cfg.time_zone = TimeZone::named(zone).unwrap();
        let local = |t: UnixMs| UnixMs((t.0 as i64 - utc_offset_min as i64 * 60_000) as u64);
        for (i, (now, next)) in cases.iter().enumerate() {
            let (now, next) = (local(*now), local(*next));
            assert_eq!(
                next_profile_step(&cfg, now),
                Some(next),
                "case {i}, offset {utc_offset_min}"
            );
            // Every minute up to the step gives the level of now: none is missed.
            let mut t = UnixMs((now.0 / 60_000 + 1) * 60_000);
            while t < next {
                assert_eq!(level(&cfg, t), level(&cfg, now), "case {i} at {t:?}");
                t = t.plus_ms(60_000);
            }
        }
    }
    cfg.night_profile.clear();
    assert_eq!(next_profile_step(&cfg, at(1, 0)), None);
}

/// 2025-03-30 01:00 UTC (London to BST) and 2025-10-26 01:00 UTC (back to GMT).
const SPRING_2025: UnixMs = UnixMs(1_743_296_400_000);
const AUTUMN_2025: UnixMs = UnixMs(1_761_440_400_000);

fn utc(change: UnixMs, minutes_after: i64) -> UnixMs {
    UnixMs((change.0 as i64 + minutes_after * 60_000) as u64)
}

#[test]
fn the_night_profile_keeps_to_londons_clocks_across_both_2025_changes() {
    // Steps at 00:00 (30 %), 05:30 (70 %), 12:00 (70 %) and 22:00 (50 %) London time.
    let cfg = PolicyConfig::default();
    assert_eq!(cfg.time_zone.name(), "Europe/London");
    let level = |t: UnixMs| decide(&cfg, &situation(t)).level_pct;
    let h = 60;
    // (UTC instant, level): the 22:00 and 05:30 steps are an hour earlier in UTC in summer.
    let cases = [
        (utc(SPRING_2025, -3 * h - 1), 70), // Sat 21:59 GMT
        (utc(SPRING_2025, -3 * h), 50),     // Sat 22:00 GMT
        (utc(SPRING_2025, -1), 30),         // Sun 00:59 GMT
        (utc(SPRING_2025, 0), 30),          // Sun 02:00 BST
        (utc(SPRING_2025, 3 * h + 29), 30), // 05:29 BST = 04:29 UTC
        (utc(SPRING_2025, 3 * h + 30), 70), // 05:30 BST = 04:30 UTC
        (utc(SPRING_2025, 20 * h - 1), 70), // 21:59 BST
        (utc(SPRING_2025, 20 * h), 50),     // 22:00 BST = 21:00 UTC
        (utc(AUTUMN_2025, -4 * h - 1), 70), // Sat 21:59 BST
        (utc(AUTUMN_2025, -4 * h), 50),     // Sat 22:00 BST = 21:00 UTC
        (utc(AUTUMN_2025, -2 * h), 30),     // Sun 00:00 BST
        (utc(AUTUMN_2025, 4 * h + 29), 30), // 05:29 GMT
        (utc(AUTUMN_2025, 4 * h + 30), 70), // 05:30 GMT = 05:30 UTC
        (utc(AUTUMN_2025, 21 * h - 1), 70), // 21:59 GMT
        (utc(AUTUMN_2025, 21 * h), 50),     // 22:00 GMT
    ];
    for (i, (t, want)) in cases.into_iter().enumerate() {
        assert_eq!(level(t), want, "case {i} at {t:?}");
    }
    // The lamps are decided again at the change itself, then at the next step.
    let steps = |from: UnixMs| {
        let first = next_profile_step(&cfg, from).unwrap();
        [first, next_profile_step(&cfg, first).unwrap()]
    };
    assert_eq!(
        steps(utc(SPRING_2025, -30)),
        [SPRING_2025, utc(SPRING_2025, 3 * h + 30)]
    );
    assert_eq!(
        steps(utc(AUTUMN_2025, -30)),
        [AUTUMN_2025, utc(AUTUMN_2025, 4 * h + 30)]
    );
}

#[test]
fn across_a_clock_change_no_step_is_missed_even_inside_the_skipped_or_repeated_hour() {
    // 01:30 is skipped on the spring night and happens twice on the autumn one.
    let step = |minute_of_day, level_pct| ProfileStep {
        minute_of_day,
        level_pct,
    };
    let cfg = PolicyConfig {
        night_profile: vec![step(0, 30), step(90, 60), step(330, 70), step(1320, 50)],
        ..PolicyConfig::default()
    };
    let level = |t: UnixMs| decide(&cfg, &situation(t)).level_pct;
    // Spring: 01:30 comes as the clocks jump at 01:00 UTC.
    assert_eq!(level(utc(SPRING_2025, -1)), 30);
    assert_eq!(level(SPRING_2025), 60);
    assert_eq!(
        next_profile_step(&cfg, utc(SPRING_2025, -30)),
        Some(SPRING_2025)
    );
    // Autumn: 01:30 BST (00:30 UTC), back to 01:00 GMT (01:00 UTC), 01:30 GMT again.
    assert_eq!(level(utc(AUTUMN_2025, -31)), 30);
    assert_eq!(level(utc(AUTUMN_2025, -30)), 60);
    assert_eq!(level(AUTUMN_2025), 30);
    assert_eq!(level(utc(AUTUMN_2025, 30)), 60);
    assert_eq!(
        next_profile_step(&cfg, utc(AUTUMN_2025, -30)),
        Some(AUTUMN_2025)
    );
    assert_eq!(
        next_profile_step(&cfg, AUTUMN_2025),
        Some(utc(AUTUMN_2025, 30))
    );
    // Every minute of both nights: the level holds from one decision to the next step.
    for change in [SPRING_2025, AUTUMN_2025] {
        for start in (-6 * 60..12 * 60).step_by(7) {
            let now = utc(change, start).plus_ms(13_000);
            let next = next_profile_step(&cfg, now).unwrap();
            assert!(next > now && next.since(now) <= 25 * 3_600_000);
            let mut t = UnixMs((now.0 / 60_000 + 1) * 60_000);
            while t < next {
                assert_eq!(
                    level(t),
                    level(now),
                    "from {now:?}, at {t:?}, next {next:?}"
                );
                t = t.plus_ms(60_000);
            }
        }
    }
}

#[test]
fn decisions_follow_the_rules_in_order() {
    let cfg = PolicyConfig::default();
    let o = Some(Override {
        level_pct: 5,
        until: at(3, 0),
    });
    let bubble = Some(at(2, 1));
    // (situation, expected level, expected reason)
    let cases = [
        (situation(at(23, 0)), 50, Reason::Schedule),
        (situation(at(2, 0)), 30, Reason::Schedule),
        (situation(at(6, 0)), 70, Reason::Schedule),
        (situation(at(21, 59)), 70, Reason::Schedule),
        (
            LampSituation {
                dark: false,
                ..situation(at(12, 0))
            },
            0,
            Reason::Daylight,
        ),
        (
            LampSituation {
                bubble_until: bubble,
                ..situation(at(2, 0))
            },
            100,
            Reason::Presence,
        ),
        (
            LampSituation {
                bubble_until: bubble,
                ..situation(at(2, 1))
            },
            30,
            Reason::Schedule,
        ),
        (
            LampSituation {
                override_: o,
                bubble_until: bubble,
                ..situation(at(2, 0))
            },
            5,
            Reason::Override,
        ),
        (
            LampSituation {
                override_: o,
                dark: false,
                ..situation(at(2, 0))
            },
            5,
            Reason::Override,
        ),
        (
            LampSituation {
                override_: o,
                ..situation(at(3, 0))
            },
            30,
            Reason::Schedule,
        ),
        // A class in force means nothing to a policy that is not adaptive.
        (
            LampSituation {
                class: class(LightingClass::P(4), LightingClass::P(4), Reason::Forecast),
                ..situation(at(2, 0))
            },
            30,
            Reason::Schedule,
        ),
    ];
    check(&cfg, &cases);
}

#[test]
fn adaptive_lights_road_users_for_the_class_in_force() {
    use LightingClass::{M, P};
    let cfg = PolicyConfig::named("adaptive").unwrap();
    let near = Some(at(2, 1));
    // A road user near the lamp (a bubble) at 02:00, in a zone whose demand calls for
    // `c`.
    let with = |c: Option<ClassInForce>| LampSituation {
        class: c,
        bubble_until: near,
        ..situation(at(2, 0))
    };
    let empty = |c: Option<ClassInForce>| LampSituation {
        bubble_until: None,
        ..with(c)
    };
    let o = Some(Override {
        level_pct: 10,
        until: at(3, 0),
    });
    let cases = [
        // Road users get the level at which the lamp, designed for its class at 100 %,
        // meets the class their demand calls for now: no more.
        (
            with(class(P(4), P(4), Reason::Schedule)),
            100,
            Reason::Presence,
        ),
        (
            with(class(P(4), P(5), Reason::Schedule)),
            60,
            Reason::Presence,
        ),
        (
            with(class(P(4), P(6), Reason::Schedule)),
            40,
            Reason::Presence,
        ),
        (
            with(class(M(3), M(4), Reason::Schedule)),
            75,
            Reason::Presence,
        ),
        (
            with(class(M(3), M(5), Reason::Schedule)),
            50,
            Reason::Presence,
        ),
        // Nobody near: the lamp waits at the minimum, ready to rise, whatever the class;
        // the reason is the class's (schedule, or forecast when raised ahead of demand).
        (
            empty(class(P(4), P(6), Reason::Schedule)),
            20,
            Reason::Schedule,
        ),
        (
            empty(class(M(3), M(3), Reason::Forecast)),
            20,
            Reason::Forecast,
        ),
        // Raised ahead of demand, with road users near: the forecast's class.
        (
            with(class(M(3), M(3), Reason::Forecast)),
            100,
            Reason::Presence,
        ),
        // Demand unknown: the fail-safe floor, part-night (50 % at 02:00, 75 % at 23:00),
        // and a bubble at the bubble level (the class is not known).
        (empty(None), 50, Reason::FailSafe),
        (
            LampSituation {
                now: at(23, 0),
                ..empty(None)
            },
            75,
            Reason::FailSafe,
        ),
        (with(None), 100, Reason::Presence),
        // The override wins, even below the class in force.
        (
            LampSituation {
                override_: o,
                ..with(class(M(3), M(3), Reason::Schedule))
            },
            10,
            Reason::Override,
        ),
        // Daylight: off whatever the class.
        (
            LampSituation {
                dark: false,
                ..with(class(M(3), M(3), Reason::Forecast))
            },
            0,
            Reason::Daylight,
        ),
    ];
    check(&cfg, &cases);

    // The minimum level is a floor under the class, with or without road users.
    let cfg = PolicyConfig {
        min_level_pct: 55,
        ..cfg
    };
    check(
        &cfg,
        &[
            (
                with(class(P(4), P(6), Reason::Schedule)),
                55,
                Reason::Presence,
            ),
            (
                empty(class(P(4), P(6), Reason::Schedule)),
                55,
                Reason::Schedule,
            ),
        ],
    );
    // Without presence sensing (`reactive = false`) the lamps hold the class in force.
    let cfg = PolicyConfig {
        reactive: false,
        min_level_pct: 20,
        ..cfg
    };
    check(
        &cfg,
        &[
            (
                empty(class(M(3), M(4), Reason::Schedule)),
                75,
                Reason::Schedule,
            ),
            (
                with(class(P(4), P(6), Reason::Forecast)),
                40,
                Reason::Forecast,
            ),
        ],
    );
}

#[test]
fn bubbles_hold_as_long_as_the_slowest_road_user_detected_needs() {
    let adaptive = PolicyConfig::named("adaptive").unwrap();
    let p = |pedestrians, cyclists, vehicles| Presence {
        pedestrians,
        cyclists,
        vehicles,
    };
    let [walk, cycle, drive] = ADAPTIVE_HOLD_BY_USER_S.map(|s| s as u64 * 1000);
    // (presence counts, hold)
    let cases = [
        (p(0, 0, 1), drive),
        (p(0, 0, 9), drive),
        (p(0, 2, 0), cycle),
        (p(1, 0, 0), walk),
        (p(0, 1, 3), cycle),
        (p(1, 1, 1), walk),
        // A report with nothing counted: the policy's bubble hold.
        (p(0, 0, 0), adaptive.bubble_hold_s as u64 * 1000),
    ];
    for (presence, want) in cases {
        assert_eq!(bubble_hold_ms(&adaptive, presence), want, "{presence:?}");
    }
    assert!(drive < cycle && cycle < walk);
    // Each hold covers the sensor range and the next lamp at the slowest speed.
    for (hold_ms, slowest_mps) in [(walk, 0.8 * 1.4), (cycle, 0.8 * 5.0), (drive, 0.8 * 12.0)] {
        let need_s = (20.0 + HOLD_COVERS_GAP_M) / slowest_mps;
        assert!(
            hold_ms as f64 / 1000.0 >= need_s,
            "{hold_ms} ms < {need_s} s"
        );
    }
    // Policies without holds by road user: the one hold for all.
    let reactive = PolicyConfig::named("reactive").unwrap();
    assert_eq!(bubble_hold_ms(&reactive, p(0, 0, 1)), 90_000);
    // Never longer than `bubble_hold_s`.
    let short = PolicyConfig {
        bubble_hold_s: 10,
        ..adaptive
    };
    assert_eq!(bubble_hold_ms(&short, p(1, 0, 0)), 10_000);
}

#[test]
fn minimum_level_is_a_floor_while_dark() {
    let cfg = PolicyConfig {
        min_level_pct: 40,
        ..PolicyConfig::default()
    };
    assert_eq!(decide(&cfg, &situation(at(2, 0))).level_pct, 40);
}

#[test]
fn named_policies_differ_as_their_names_say() {
    let night = situation(at(2, 0));
    let bubble = LampSituation {
        bubble_until: Some(at(2, 1)),
        ..night
    };
    let level =
        |name: &str, s: &LampSituation| decide(&PolicyConfig::named(name).unwrap(), s).level_pct;
    assert_eq!(level("full", &night), 100);
    assert_eq!(level("full", &bubble), 100);
    assert_eq!(level("part-night", &night), 50);
    assert_eq!(
        level("part-night", &bubble),
        50,
        "part-night ignores presence"
    );
    // Part-night through the night: 100 to 22:00, 75 to 00:00, 50 to 05:30, 100 to dawn.
    for ((h, m), want) in [
        ((18, 0), 100),
        ((21, 59), 100),
        ((22, 0), 75),
        ((23, 59), 75),
        ((0, 0), 50),
        ((5, 29), 50),
        ((5, 30), 100),
        ((7, 0), 100),
    ] {
        assert_eq!(level("part-night", &situation(at(h, m))), want, "{h}:{m}");
    }
    assert_eq!(level("reactive", &night), 20);
    assert_eq!(level("reactive", &bubble), 100);
    assert_eq!(level("adaptive", &bubble), 100);
    assert!(PolicyConfig::named("nonsense").is_none());
    for name in POLICY_NAMES {
        let p = PolicyConfig::named(name).unwrap();
        assert_eq!(p.name, *name);
        assert!(p.validate().is_ok(), "{name}");
    }
}

#[test]
fn bad_configs_are_refused() {
    let mut cfg = PolicyConfig::default();
    assert!(cfg.validate().is_ok());
    cfg.min_level_pct = 101;
    assert!(cfg.validate().is_err());
    cfg.min_level_pct = 20;
    cfg.night_profile.clear();
    assert_eq!(cfg.validate(), Err(PolicyError::Profile));
    let ok = PolicyConfig::named("adaptive").unwrap();
    let cases = [
        PolicyConfig {
            interval_s: 700,
            ..ok.clone()
        },
        PolicyConfig {
            interval_s: 30,
            ..ok.clone()
        },
        PolicyConfig {
            confirm_intervals: 0,
            ..ok.clone()
        },
        PolicyConfig {
            forecast_lead_s: 7200,
            ..ok.clone()
        },
        PolicyConfig {
            demand_stale_s: 60,
            ..ok.clone()
        },
        PolicyConfig {
            traffic_steps: vec![TrafficStep {
                below_capacity_pct: 150.0,
                classes_down: 1,
            }],
            ..ok.clone()
        },
        PolicyConfig {
            name: "mystery".into(),
            ..ok.clone()
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(c.validate().is_err(), "case {i}");
    }
}

#[test]
fn policies_are_chosen_by_name_in_toml_with_overrides() {
    #[derive(Deserialize)]
    struct Section {
        policy: PolicyConfig,
    }
    let parse = |s: &str| toml::from_str::<Section>(s).map(|s| s.policy);
    let p = parse("[policy]\nname = \"adaptive\"\n").unwrap();
    assert_eq!(p, PolicyConfig::named("adaptive").unwrap());
    let p = parse("[policy]\nname = \"part-night\"\nmin_level_pct = 30\n").unwrap();
    assert_eq!(
        p,
        PolicyConfig {
            min_level_pct: 30,
            ..PolicyConfig::named("part-night").unwrap()
        }
    );
    let p = parse("[policy]\nbubble_hold_s = 30\n").unwrap();
    assert_eq!((p.name.as_str(), p.bubble_hold_s), ("profile-reactive", 30));
    let p = parse(
        "[policy]\nname = \"adaptive\"\ntraffic_steps = [{ below_capacity_pct = 40.0, classes_down = 1 }]\n",
    )
    .unwrap();
    assert_eq!(p.traffic_steps.len(), 1);

    let e = parse("[policy]\nname = \"dim-everything\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown policy \"dim-everything\""), "{e}");
    assert!(
        e.contains("adaptive"),
        "the error lists the known names: {e}"
    );
    let e = parse("[policy]\nname = \"adaptive\"\nconfirm_intervals = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("confirm_intervals"), "{e}");
    let e = parse("[policy]\nnmae = \"adaptive\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nmae"), "{e}");

    // What is written can be read back.
    for name in POLICY_NAMES {
        let p = PolicyConfig::named(name).unwrap();
        let text = toml::to_string(&Section2 { policy: p.clone() }).unwrap();
        assert_eq!(parse(&text).unwrap(), p, "{name}");
    }
    #[derive(Serialize)]
    struct Section2 {
        policy: PolicyConfig,
    }
}

#[test]
fn ramps_are_bounded_rates() {
    let cfg = PolicyConfig::default();
    assert_eq!(ramp_ms(&cfg, 0, 100), 1_000);
    assert_eq!(ramp_ms(&cfg, 50, 100), 500);
    assert_eq!(ramp_ms(&cfg, 100, 0), 20_000);
    assert_eq!(ramp_ms(&cfg, 100, 75), 5_000);
    assert_eq!(ramp_ms(&cfg, 40, 40), 0);
}

fn any_class() -> impl Strategy<Value = (LightingClass, LightingClass)> {
    (0u8..3, 1i32..=6, 0i32..=5).prop_map(|(series, n, down)| {
        let design = match series {
            0 => LightingClass::M(n as u8),
            1 => LightingClass::P(n as u8),
            _ => LightingClass::C((n - 1) as u8),
        };
        (design, design.with_number(design.number() as i32 + down))
    })
}

fn any_situation() -> impl Strategy<Value = LampSituation> {
    (
        0u64..(7 * 86_400_000),
        any::<bool>(),
        proptest::option::of(0u64..600_000),
        proptest::option::of((0u8..=100, 0u64..7_200_000)),
        proptest::option::of((any_class(), any::<bool>())),
    )
        .prop_map(|(t, dark, bubble, o, class)| {
            let now = MIDNIGHT.plus_ms(t);
            LampSituation {
                now,
                dark,
                bubble_until: bubble.map(|b| UnixMs((now.0 + b).saturating_sub(300_000))),
                override_: o.map(|(level_pct, d)| Override {
                    level_pct,
                    until: UnixMs((now.0 + d).saturating_sub(3_600_000)),
                }),
                class: class.map(|((design, class), forecast)| ClassInForce {
                    design,
                    class,
                    reason: if forecast {
                        Reason::Forecast
                    } else {
                        Reason::Schedule
                    },
                }),
            }
        })
}

fn any_policy() -> impl Strategy<Value = PolicyConfig> {
    (proptest::sample::select(POLICY_NAMES), 0u8..=100, 0u8..=100).prop_map(|(name, a, b)| {
        PolicyConfig {
            min_level_pct: a.min(b),
            bubble_level_pct: a.max(b),
            ..PolicyConfig::named(name).unwrap()
        }
    })
}

proptest! {
    #[test]
    fn never_below_the_floor_or_the_class_in_force_while_dark(
        cfg in any_policy(),
        s in any_situation(),
    ) {
        let d = decide(&cfg, &s);
        prop_assert!(d.level_pct <= 100);
        let overridden = s.override_.is_some_and(|o| s.now < o.until);
        if s.dark && !overridden {
            prop_assert!(d.level_pct >= cfg.min_level_pct, "{d:?}");
            // Road users near a lamp (a bubble) always get the class in force; so does
            // every lamp when presence is not sensed.
            let bubble = cfg.reactive && s.bubble_until.is_some_and(|t| s.now < t);
            if cfg.adaptive && (bubble || !cfg.reactive) {
                if let Some(c) = s.class {
                    prop_assert!(d.level_pct >= c.level_pct(), "{d:?} {c:?}");
                }
            }
        }
        if !s.dark && !overridden {
            prop_assert_eq!(d, Decision { level_pct: 0, reason: Reason::Daylight });
        }
    }

    #[test]
    fn the_override_wins_until_it_expires(
        cfg in any_policy(),
        s in any_situation(),
        level in 0u8..=100,
        left_ms in 1u64..3_600_000,
    ) {
        let o = Override { level_pct: level, until: s.now.plus_ms(left_ms) };
        let d = decide(&cfg, &LampSituation { override_: Some(o), ..s });
        prop_assert_eq!(d, Decision { level_pct: level, reason: Reason::Override });
        let expired = LampSituation { override_: Some(o), now: o.until, ..s };
        let d = decide(&cfg, &expired);
        prop_assert_ne!(d.reason, Reason::Override);
        prop_assert_eq!(d, decide(&cfg, &LampSituation { override_: None, ..expired }));
    }

    #[test]
    fn ramp_rates_are_bounded(
        up in 1u32..600_000,
        down in 1u32..600_000,
        from in 0u8..=100,
        to in 0u8..=100,
    ) {
        let cfg = PolicyConfig { ramp_up_ms: up, ramp_down_ms: down, ..PolicyConfig::default() };
        let ms = ramp_ms(&cfg, from, to) as u64;
        let delta = from.abs_diff(to) as u64;
        let full = if to >= from { up } else { down } as u64;
        // delta / ms <= 100 / full, i.e. the rate never exceeds a full swing's.
        prop_assert!(delta * full <= 100 * ms, "{from}->{to} in {ms} ms (full {full})");
        prop_assert!(ms <= full);
    }
}
