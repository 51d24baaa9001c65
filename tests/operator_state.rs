//! What operators set through the dashboard, across a real restart of the system with its
//! real store: overrides in force and zones' settings are kept by the controller's store
//! (not the dashboard), applied again when the system starts, and what an earlier version
//! kept in the accounts file is moved to the store once.

use lamplighter::system;
use lamplighter_dashboards::{Accounts, Role};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{TenantId, UnixMs, ZoneId};
use serde_json::Value;

use crate::util::{http_bearer, one_system_at_a_time, provision_town, system_config};

// 2024-12-21 22:00 UTC: dark in Bristol.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);

/// One request with a bearer token: (status, JSON body or null).
fn request(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let (status, text) = http_bearer(port, method, path, token, body.as_deref());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_and_zone_settings_outlive_a_restart_and_move_out_of_the_accounts_file() {
    let _system = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("bath").unwrap();
    let nodes = provision_town(dir.path(), &tenant, 30, 7);
    let zones: Vec<ZoneId> = {
        let mut z: Vec<ZoneId> = nodes.iter().map(|n| n.node.zone).collect();
        z.sort();
        z.dedup();
        z
    };
    assert!(zones.len() >= 3, "{zones:?}");
    let (held, tuned, earlier) = (zones[0], zones[1], zones[2]);
    let token = Accounts::open(dir.path())
        .unwrap()
        .add_token(Role::Admin, None, "test", 0)
        .unwrap();
    // What an earlier version kept in the accounts file: an override on a third zone and
    // that zone's settings.
    {
        let conn = rusqlite::Connection::open(
            dir.path()
                .join(lamplighter_dashboards::accounts::ACCOUNTS_FILE),
        )
        .unwrap();
        let target = serde_json::json!({"scope": "zone", "tenant": "bath", "zone": earlier.0});
        conn.execute(
            "INSERT INTO overrides VALUES (?1, '', 40, 0, ?2, ?3, 'ada', 'earlier version')",
            rusqlite::params![
                target.to_string(),
                NIGHT.0 as i64,
                (NIGHT.0 + 7_200_000) as i64
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO zone_settings VALUES ('bath', ?1, ?2, 0, 'ada')",
            rusqlite::params![
                earlier.0,
                serde_json::json!({"policy": "part-night", "design_class": "M5",
                    "min_level_pct": 15, "ramp_up_ms": 1000, "ramp_down_ms": 20000})
                .to_string()
            ],
        )
        .unwrap();
    }
    let config = system_config();
    let (system, _) = system::start(&config, dir.path(), ScaledClock::starting_at(NIGHT, 1.0))
        .await
        .unwrap();
    let port = system.http_addr.port();
    let (status, body) = request(
        port,
        "POST",
        "/api/v1/overrides",
        &token,
        Some(
            &serde_json::json!({"scope": "zone", "tenant": "bath", "zone": held.0,
            "level_pct": 100, "duration_s": 3600, "reason": "gas leak"}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let path = format!("/api/v1/zones/bath/{}/settings", tuned.0);
    let (status, body) = request(
        port,
        "PUT",
        &path,
        &token,
        Some(&serde_json::json!({"policy": "full", "design_class": "M3",
            "min_level_pct": 30, "ramp_up_ms": 1000, "ramp_down_ms": 20000,
            "reason": "residents asked"})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, listed) = request(port, "GET", "/api/v1/overrides", &token, None);
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 2, "{listed}");
    system.shutdown().await;

    // The accounts file no longer holds them: the store does.
    let conn = rusqlite::Connection::open(
        dir.path()
            .join(lamplighter_dashboards::accounts::ACCOUNTS_FILE),
    )
    .unwrap();
    for table in ["overrides", "zone_settings"] {
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table} left in the accounts file");
    }
    drop(conn);

    // Ten minutes later, a new process on the same data directory.
    let later = NIGHT.plus_ms(600_000);
    let (system, _) = system::start(&config, dir.path(), ScaledClock::starting_at(later, 1.0))
        .await
        .unwrap();
    let port = system.http_addr.port();
    let (_, listed) = request(port, "GET", "/api/v1/overrides", &token, None);
    let mut got: Vec<(u64, u64, String)> = listed["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["target"]["zone"].as_u64().unwrap(),
                o["level_pct"].as_u64().unwrap(),
                o["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (held.0 as u64, 100, "gas leak".to_string()),
        (earlier.0 as u64, 40, "earlier version".to_string()),
    ];
    want.sort();
    assert_eq!(got, want, "{listed}");
    // Applied to the lamps again, and only to theirs.
    let overridden = system.controller.with_core(|core, now| {
        nodes
            .iter()
            .filter(|n| core.override_active(n.node.lamp, now))
            .map(|n| n.node.zone)
            .collect::<Vec<_>>()
    });
    let expected = nodes
        .iter()
        .filter(|n| n.node.zone == held || n.node.zone == earlier)
        .count();
    assert_eq!(overridden.len(), expected, "{overridden:?}");
    assert!(overridden.iter().all(|z| *z == held || *z == earlier));
    // Zone settings: the one set before the restart, and the one handed over.
    for (zone, policy, min) in [(tuned, "full", 30), (earlier, "part-night", 15)] {
        let (status, s) = request(
            port,
            "GET",
            &format!("/api/v1/zones/bath/{}/settings", zone.0),
            &token,
            None,
        );
        assert_eq!(status, 200, "{s}");
        assert_eq!(
            (s["policy"].as_str(), s["min_level_pct"].as_u64()),
            (Some(policy), Some(min))
        );
    }
    // A cleared override stays cleared across the next restart.
    let (status, body) = request(
        port,
        "POST",
        "/api/v1/overrides/clear",
        &token,
        Some(
            &serde_json::json!({"scope": "zone", "tenant": "bath", "zone": held.0,
            "reason": "made safe"}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    system.shutdown().await;
    let (system, _) = system::start(
        &config,
        dir.path(),
        ScaledClock::starting_at(later.plus_ms(60_000), 1.0),
    )
    .await
    .unwrap();
    let (_, listed) = request(
        system.http_addr.port(),
        "GET",
        "/api/v1/overrides",
        &token,
        None,
    );
    let zones_left: Vec<u64> = listed["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["target"]["zone"].as_u64().unwrap())
        .collect();
    assert_eq!(zones_left, vec![earlier.0 as u64], "{listed}");
    system.shutdown().await;
}
