//! Replay: a fixed list of requests, good and bad, against the router in-process, each
//! answer (status, headers, body) compared with the one recorded in `tests/replay/
//! requests.txt`. The recording was made before the web layer was reorganised, so a pass
//! here says every route still answers byte for byte as it did.
//!
//! `LAMPLIGHTER_RECORD_REPLAY=1 cargo test -p lamplighter-dashboards --test replay`
//! records the file afresh instead of comparing; review its diff before committing it.
//!
//! What cannot be the same twice is masked before recording and comparing:
//! - `<session:NAME>` and `<csrf:NAME>`: NAME's session cookie and CSRF token,
//! - `<token:LABEL>`: a token made in the set-up, `<new-token:N>`: the Nth made by the API,
//! - `<wall-ms>`: any integer within an hour of the test's run on the wall clock (audit
//!   lines and accounts are stamped with it; the fake source's clock is fixed in 2023),
//! - `<wall-time>`: any `YYYY-MM-DDTHH:MM:SSZ` (only the audit CSV's times have that form).
//!
//! Bodies of the page and its assets are recorded as their length and SHA-256: they are
//! `include_str!` files, and their text is not the web layer's behaviour.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use futures::StreamExt;
use lamplighter_controller::core::policy::Reason;
use lamplighter_controller::faults::{Action, FaultKind};
use lamplighter_dashboards::{
    router, wall_ms, Accounts, ActiveOverride, CommandRecord, DashboardOptions, Fault, FaultCounts,
    FaultId, HistoryPoint, LampHistory, LampView, LiveSource, OverrideTarget, Road, Role,
    SourceError, Summary, ZoneSettings, ZoneView,
};
use lamplighter_protocol::payload::NodeMode;
use lamplighter_protocol::{DevEui, LampId, TenantId, UnixMs, ZoneId};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replay/requests.txt");
const NOW_MS: u64 = 1_700_000_000_000;
const PASSWORD: &str = "correct horse battery staple";

fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Two tenants: north has lamps 1 and 2 (zones 1 and 2), south has lamp 3 (zone 1). Fault 7
/// is on lamp 2, fault 8 on lamp 3. The clock stands still at [`NOW_MS`].
#[derive(Default)]
struct ReplaySource {
    settings: Mutex<Vec<(TenantId, ZoneId, ZoneSettings)>>,
    /// The overrides kept, as the controller keeps them (in memory here).
    kept: Mutex<lamplighter_controller::store::Overrides>,
}

fn lamp(id: u32, tenant: &str, zone: u32) -> LampView {
    LampView {
        lamp: LampId(id),
        tenant: t(tenant),
        dev_eui: DevEui(0x70b3_d57e_d000_0000 + id as u64),
        zone: ZoneId(zone),
        lat: 51.5 + id as f64 / 1000.0,
        lon: -0.12,
        online: id != 2,
        level_pct: Some(50),
        target_level_pct: Some(50),
        power_w: Some(20.5),
        mode: Some(NodeMode::Commanded),
        faults: if id == 1 { 0 } else { 1 },
        last_seen_ms: Some(NOW_MS - 5_000),
        commanded_level_pct: Some(50),
        reason: Some(Reason::Schedule),
        energy_wh: 12.25,
    }
}

fn fault(id: u64, lamp_id: u32, tenant: &str) -> Fault {
    Fault {
        id: FaultId(id),
        tenant: t(tenant),
        lamp: LampId(lamp_id),
        dev_eui: DevEui(0x70b3_d57e_d000_0000 + lamp_id as u64),
        kind: FaultKind::LampFailure,
        raised_at: UnixMs(NOW_MS - 60_000),
        detail: "level 100 % but 0.5 W".into(),
        acknowledged: None,
        cleared: None,
    }
}

fn point(t_s: i64) -> HistoryPoint {
    HistoryPoint {
        t_s,
        readings: 3,
        level_pct_mean: 42.5,
        level_pct_min: 20,
        level_pct_max: 60,
        power_w: 18.0,
        energy_wh: 4.5,
        pedestrians: 2,
        cyclists: 1,
        vehicles: 5,
        fault_readings: 0,
    }
}

fn default_settings() -> ZoneSettings {
    ZoneSettings {
        policy: "part-night".into(),
        design_class: "M4".parse().unwrap(),
        min_level_pct: 20,
        ramp_up_ms: 1000,
        ramp_down_ms: 20000,
        time_zone: None,
    }
}

impl LiveSource for ReplaySource {
    fn summary(&self, tenant: Option<&TenantId>) -> Summary {
        let lamps = self.lamps(tenant).len();
        Summary {
            lamps,
            lamps_online: lamps,
            uplinks: 11,
            commands: 4,
            rejected: 1,
            rejected_by_reason: BTreeMap::from([("replay", 1)]),
            energy_wh: 36.75,
            power_w: 61.5,
            mean_level_pct: 50.0,
            lamps_with_faults: 1,
            now_ms: NOW_MS,
        }
    }
    fn lamps(&self, tenant: Option<&TenantId>) -> Vec<LampView> {
        [
            lamp(1, "north", 1),
            lamp(2, "north", 2),
            lamp(3, "south", 1),
        ]
        .into_iter()
        .filter(|l| tenant.is_none_or(|t| &l.tenant == t))
        .collect()
    }
    fn zones(&self, tenant: Option<&TenantId>) -> Vec<ZoneView> {
        self.lamps(tenant)
            .iter()
            .map(|l| ZoneView {
                tenant: l.tenant.clone(),
                zone: l.zone,
                lamps: 1,
                lamps_online: 1,
                mean_level_pct: 50.0,
                power_w: 20.5,
                energy_wh: 12.25,
                presence_total: 3,
                reasons: BTreeMap::from([("schedule", 1)]),
                demand: Default::default(),
            })
            .collect()
    }
    fn metrics(&self) -> String {
        "# TYPE lamplighter_uplinks_total counter\nlamplighter_uplinks_total 11\n".into()
    }
    fn now_ms(&self) -> u64 {
        NOW_MS
    }
    fn set_override(
        &self,
        tenant: Option<&TenantId>,
        target: &OverrideTarget,
        _level_pct: Option<u8>,
        _until_ms: u64,
    ) -> Result<usize, SourceError> {
        let n = self
            .lamps(tenant)
            .iter()
            .filter(|l| match target {
                OverrideTarget::Lamp { lamp } => &l.lamp == lamp,
                OverrideTarget::Zone { tenant, zone } => &l.tenant == tenant && &l.zone == zone,
                OverrideTarget::Town => true,
            })
            .count();
        if n == 0 {
            return Err(SourceError::NotFound(target.to_string()));
        }
        Ok(n)
    }
    fn keep_override(&self, o: &ActiveOverride) -> Result<(), SourceError> {
        self.kept
            .lock()
            .unwrap()
            .record(o.clone())
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn forget_override(
        &self,
        target: &OverrideTarget,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<(), SourceError> {
        self.kept
            .lock()
            .unwrap()
            .forget(target, tenant, now_ms)
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn overrides(&self, tenant: Option<&TenantId>) -> Vec<ActiveOverride> {
        self.kept.lock().unwrap().in_force(self.now_ms(), tenant)
    }
    fn keep_zone_settings(
        &self,
        _tenant: &TenantId,
        _zone: ZoneId,
        _settings: &ZoneSettings,
        _username: &str,
    ) -> Result<(), SourceError> {
        Ok(())
    }
    fn lamp_history(
        &self,
        tenant: Option<&TenantId>,
        lamp: LampId,
        from_s: i64,
        to_s: i64,
    ) -> Result<LampHistory, SourceError> {
        if !self.lamps(tenant).iter().any(|l| l.lamp == lamp) {
            return Err(SourceError::NotFound(format!("lamp {}", lamp.0)));
        }
        Ok(LampHistory {
            lamp,
            points: vec![point(from_s), point(to_s - 900)],
            commands: vec![CommandRecord {
                sent_ms: from_s * 1000 + 1,
                level_pct: 60,
                ramp_ms: 1000,
                reason: "schedule".into(),
            }],
        })
    }
    fn zone_history(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        from_s: i64,
        _to_s: i64,
    ) -> Result<Vec<HistoryPoint>, SourceError> {
        if !self.lamps(Some(tenant)).iter().any(|l| l.zone == zone) {
            return Err(SourceError::NotFound(format!("zone {tenant}/{}", zone.0)));
        }
        Ok(vec![point(from_s)])
    }
    fn zone_settings(&self, tenant: &TenantId, zone: ZoneId) -> Result<ZoneSettings, SourceError> {
        if !self.lamps(Some(tenant)).iter().any(|l| l.zone == zone) {
            return Err(SourceError::NotFound("zone".into()));
        }
        Ok(self
            .settings
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, z, _)| t == tenant && *z == zone)
            .map_or_else(default_settings, |(_, _, s)| s.clone()))
    }
    fn set_zone_settings(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        settings: &ZoneSettings,
    ) -> Result<usize, SourceError> {
        self.zone_settings(tenant, zone)?;
        if settings.min_level_pct > 100 {
            return Err(SourceError::Invalid(
                "min_level_pct must be 0 to 100".into(),
            ));
        }
        self.settings
            .lock()
            .unwrap()
            .push((tenant.clone(), zone, settings.clone()));
        Ok(1)
    }
    fn faults(&self, tenant: Option<&TenantId>) -> Result<(FaultCounts, Vec<Fault>), SourceError> {
        let faults: Vec<Fault> = [fault(7, 2, "north"), fault(8, 3, "south")]
            .into_iter()
            .filter(|f| tenant.is_none_or(|t| &f.tenant == t))
            .collect();
        let counts = FaultCounts {
            open: faults.len(),
            acknowledged: 0,
            lamps: faults.len(),
            by_kind: BTreeMap::new(),
        };
        Ok((counts, faults))
    }
    fn fault_action(
        &self,
        tenant: Option<&TenantId>,
        id: FaultId,
        clear: bool,
        user: &str,
        note: &str,
    ) -> Result<Fault, SourceError> {
        let (_, faults) = self.faults(tenant)?;
        let mut f = faults
            .into_iter()
            .find(|f| f.id == id)
            .ok_or_else(|| SourceError::NotFound(format!("fault {id}")))?;
        let action = Some(Action {
            by: Some(user.to_string()),
            at: UnixMs(NOW_MS),
            note: note.to_string(),
        });
        if clear {
            f.cleared = action;
        } else {
            f.acknowledged = action;
        }
        Ok(f)
    }
    fn energy(
        &self,
        _tenant: Option<&TenantId>,
    ) -> Result<Vec<lamplighter_dashboards::EnergySummary>, SourceError> {
        Ok(Vec::new())
    }
    fn half_hourly_csv(
        &self,
        tenant: Option<&TenantId>,
        from_s: i64,
        to_s: i64,
    ) -> Result<String, SourceError> {
        let who = tenant.map_or("all", TenantId::as_str);
        Ok(format!("tenant,from_s,to_s\n{who},{from_s},{to_s}\n"))
    }
    fn roads(&self, _tenant: Option<&TenantId>) -> Vec<Road> {
        vec![Road {
            class: Some("M3".into()),
            points: vec![[51.5, -0.12], [51.503, -0.12]],
        }]
    }
}

/// Who a request comes from.
#[derive(Clone, Copy)]
enum Who {
    Nobody,
    /// A token made in the set-up, by label.
    Token(&'static str),
    /// The Nth (from 1) token the API made.
    NewToken(usize),
    /// A logged-in user's cookie and CSRF header.
    Session(&'static str),
    /// The cookie without the CSRF header.
    SessionNoCsrf(&'static str),
    ForgedToken,
    ForgedSession,
}

enum Payload {
    Empty,
    Json(String),
    /// A body with this content type.
    Typed(&'static str, String),
}

struct Step {
    who: Who,
    method: &'static str,
    path: String,
    payload: Payload,
}

fn step(who: Who, method: &'static str, path: &str) -> Step {
    Step {
        who,
        method,
        path: path.to_string(),
        payload: Payload::Empty,
    }
}

fn json(who: Who, method: &'static str, path: &str, body: serde_json::Value) -> Step {
    raw_json(who, method, path, &body.to_string())
}

fn raw_json(who: Who, method: &'static str, path: &str, body: &str) -> Step {
    Step {
        payload: Payload::Json(body.to_string()),
        ..step(who, method, path)
    }
}

fn typed(who: Who, method: &'static str, path: &str, ct: &'static str, body: &str) -> Step {
    Step {
        payload: Payload::Typed(ct, body.to_string()),
        ..step(who, method, path)
    }
}

fn login(user: &str, password: &str) -> Step {
    json(
        Who::Nobody,
        "POST",
        "/api/v1/login",
        serde_json::json!({ "username": user, "password": password }),
    )
}

fn settings_body(min: i64, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "policy": "full", "design_class": "M3", "min_level_pct": min,
        "ramp_up_ms": 2000, "ramp_down_ms": 30000, "reason": reason
    })
}

fn steps() -> Vec<Step> {
    use serde_json::json as j;
    use Who::*;
    let ov = "/api/v1/overrides";
    let set = "/api/v1/zones/north/1/settings";
    vec![
        // The page, health and errors outside the API.
        step(Nobody, "GET", "/"),
        step(Nobody, "GET", "/assets/app.js"),
        step(Nobody, "GET", "/assets/app.css"),
        step(Nobody, "GET", "/healthz"),
        step(Nobody, "POST", "/healthz"),
        step(Nobody, "DELETE", "/"),
        step(Nobody, "GET", "/nope"),
        step(Nobody, "GET", "/favicon.ico"),
        step(Token("all-admin"), "GET", "/api/v2/summary"),
        step(Token("all-admin"), "POST", "/api/v1/summary"),
        step(Nobody, "GET", "/metrics"),
        step(Token("all-admin"), "GET", "/metrics"),
        step(Token("north-viewer"), "GET", "/metrics"),
        // Authentication.
        step(Nobody, "GET", "/api/v1/summary"),
        step(ForgedToken, "GET", "/api/v1/summary"),
        step(ForgedSession, "GET", "/api/v1/summary"),
        step(Nobody, "POST", ov),
        step(Nobody, "GET", "/api/v1/stream"),
        typed(Nobody, "POST", "/api/v1/login", "text/plain", "{}"),
        raw_json(Nobody, "POST", "/api/v1/login", "{"),
        json(
            Nobody,
            "POST",
            "/api/v1/login",
            j!({"username": "ada", "password": PASSWORD, "otp": 1}),
        ),
        login("ada", "wrong password!"),
        login("nobody", PASSWORD),
        login("ada", PASSWORD),
        login("nora", PASSWORD),
        login("olga", PASSWORD),
        login("vic", PASSWORD),
        login("tess", PASSWORD),
        step(Session("ada"), "GET", "/api/v1/me"),
        step(Token("north-viewer"), "GET", "/api/v1/me"),
        step(Token("all-admin"), "GET", "/api/v1/me"),
        // Live state.
        step(Session("vic"), "GET", "/api/v1/summary"),
        step(Token("all-admin"), "GET", "/api/v1/summary"),
        step(Session("vic"), "GET", "/api/v1/lamps"),
        step(Token("all-admin"), "GET", "/api/v1/lamps"),
        step(Token("south-viewer"), "GET", "/api/v1/zones"),
        step(Session("vic"), "GET", "/api/v1/roads"),
        step(Session("vic"), "GET", "/api/v1/stream"),
        // History.
        step(
            Session("vic"),
            "GET",
            "/api/v1/lamps/1/history?from_s=1699990000&to_s=1700000000",
        ),
        step(Session("vic"), "GET", "/api/v1/lamps/1/history"),
        step(Session("vic"), "GET", "/api/v1/lamps/abc/history"),
        step(Session("vic"), "GET", "/api/v1/lamps/3/history"),
        step(
            Session("vic"),
            "GET",
            "/api/v1/lamps/1/history?from_s=10&to_s=5",
        ),
        step(
            Session("vic"),
            "GET",
            "/api/v1/lamps/1/history?from_s=0&to_s=99999999",
        ),
        step(Session("vic"), "GET", "/api/v1/lamps/1/history?bogus=1"),
        step(Session("vic"), "GET", "/api/v1/zones/north/1/history"),
        step(Session("vic"), "GET", "/api/v1/zones/south/1/history"),
        step(Session("vic"), "GET", "/api/v1/zones/Bad!/1/history"),
        step(Session("vic"), "GET", "/api/v1/zones/north/x/history"),
        step(Token("all-admin"), "GET", "/api/v1/zones/north/9/history"),
        // Zone settings.
        step(Session("vic"), "GET", set),
        step(Session("vic"), "GET", "/api/v1/zones/south/1/settings"),
        json(Session("vic"), "PUT", set, settings_body(30, "brighter")),
        json(
            SessionNoCsrf("nora"),
            "PUT",
            set,
            settings_body(30, "brighter"),
        ),
        json(
            Session("nora"),
            "PUT",
            set,
            settings_body(30, "residents asked"),
        ),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/zones/south/1/settings",
            settings_body(30, "x"),
        ),
        step(Session("nora"), "PUT", "/api/v1/zones/Bad!/1/settings"),
        raw_json(Session("nora"), "PUT", set, "[1,2"),
        json(Session("nora"), "PUT", set, j!({"policy": "full"})),
        json(Session("nora"), "PUT", set, settings_body(30, "  ")),
        json(
            Session("nora"),
            "PUT",
            set,
            settings_body(101, "too bright"),
        ),
        typed(Session("nora"), "PUT", set, "text/plain", "hello"),
        json(
            Token("all-admin"),
            "PUT",
            "/api/v1/zones/south/1/settings",
            settings_body(25, "south asked"),
        ),
        step(Session("vic"), "GET", set),
        // Overrides.
        step(Session("vic"), "GET", ov),
        json(
            Session("vic"),
            "POST",
            ov,
            j!({"scope": "town", "level_pct": 100, "duration_s": 60, "reason": "x"}),
        ),
        json(
            SessionNoCsrf("olga"),
            "POST",
            ov,
            j!({"scope": "town", "level_pct": 100, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 30, "duration_s": 600, "reason": "works on the pavement"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "zone", "zone": 1, "level_pct": 80, "duration_s": 3600, "reason": "event"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "zone", "zone": 1, "tenant": "south", "level_pct": 80, "duration_s": 3600, "reason": "event"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "town", "level_pct": 100, "duration_s": 7200, "reason": "incident"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "street", "level_pct": 100, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "zone": 1, "level_pct": 100, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Token("all-admin"),
            "POST",
            ov,
            j!({"scope": "zone", "zone": 1, "level_pct": 80, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 101, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 10, "duration_s": 0, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 10, "duration_s": 604801, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 10, "duration_s": 60, "reason": "r".repeat(501)}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 10, "duration_s": 60, "reason": "two\nlines"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 10, "duration_s": 60}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 3, "level_pct": 10, "duration_s": 60, "reason": "x"}),
        ),
        json(
            Session("olga"),
            "POST",
            ov,
            j!({"scope": "lamp", "lamp": 1, "level_pct": 300, "duration_s": 60, "reason": "x"}),
        ),
        raw_json(
            Session("olga"),
            "POST",
            ov,
            &"x".repeat(2 * 1024 * 1024 + 1),
        ),
        json(
            Token("south-viewer"),
            "POST",
            ov,
            j!({"scope": "town", "level_pct": 100, "duration_s": 60, "reason": "x"}),
        ),
        step(Session("vic"), "GET", ov),
        step(Token("south-viewer"), "GET", ov),
        step(Token("all-admin"), "GET", ov),
        json(
            Session("olga"),
            "POST",
            "/api/v1/overrides/clear",
            j!({"scope": "lamp", "lamp": 1, "reason": "works done"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/overrides/clear",
            j!({"scope": "lamp", "lamp": 1}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/overrides/clear",
            j!({"scope": "town", "reason": "x"}),
        ),
        step(Session("olga"), "GET", "/api/v1/overrides/clear"),
        step(Session("vic"), "GET", ov),
        // Faults and energy.
        step(Session("vic"), "GET", "/api/v1/faults"),
        step(Token("all-admin"), "GET", "/api/v1/faults"),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/7/acknowledge",
            j!({"note": "crew sent"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/7/clear",
            j!({"note": "lamp replaced"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/8/acknowledge",
            j!({"note": "not mine"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/x/acknowledge",
            j!({"note": "n"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/faults/7/acknowledge",
            j!({"note": "n"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/7/acknowledge",
            j!({}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/faults/7/acknowledge",
            j!({"note": ""}),
        ),
        step(Session("olga"), "GET", "/api/v1/faults/7/acknowledge"),
        step(Session("vic"), "GET", "/api/v1/energy"),
        step(
            Session("vic"),
            "GET",
            "/api/v1/energy/half-hourly.csv?from_s=0&to_s=86400",
        ),
        step(
            Token("all-admin"),
            "GET",
            "/api/v1/energy/half-hourly.csv?from_s=0&to_s=2678400",
        ),
        step(
            Session("vic"),
            "GET",
            "/api/v1/energy/half-hourly.csv?from_s=0&to_s=2678401",
        ),
        step(Session("vic"), "GET", "/api/v1/energy/half-hourly.csv"),
        // Users and tokens.
        step(Session("vic"), "GET", "/api/v1/users"),
        step(Session("nora"), "GET", "/api/v1/users"),
        step(Session("ada"), "GET", "/api/v1/users"),
        json(
            Session("nora"),
            "POST",
            "/api/v1/users",
            j!({"username": "nina", "password": PASSWORD, "role": "viewer"}),
        ),
        json(
            Session("nora"),
            "POST",
            "/api/v1/users",
            j!({"username": "sue", "password": PASSWORD, "role": "viewer", "tenant": "south"}),
        ),
        json(
            Session("nora"),
            "POST",
            "/api/v1/users",
            j!({"username": "vic", "password": PASSWORD, "role": "viewer"}),
        ),
        json(
            Session("nora"),
            "POST",
            "/api/v1/users",
            j!({"username": "pat", "password": "short", "role": "viewer"}),
        ),
        json(
            Session("nora"),
            "POST",
            "/api/v1/users",
            j!({"username": "Bad Name", "password": PASSWORD, "role": "viewer"}),
        ),
        json(
            Session("ada"),
            "POST",
            "/api/v1/users",
            j!({"username": "pat", "password": PASSWORD, "role": "king"}),
        ),
        json(
            Session("olga"),
            "POST",
            "/api/v1/users",
            j!({"username": "pat", "password": PASSWORD, "role": "viewer"}),
        ),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/users/nina",
            j!({"role": "operator"}),
        ),
        json(Session("nora"), "PUT", "/api/v1/users/nina", j!({})),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/users/ada",
            j!({"role": "viewer"}),
        ),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/users/nora",
            j!({"role": "viewer"}),
        ),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/users/nina",
            j!({"password": "a new password 2"}),
        ),
        json(
            Session("nora"),
            "PUT",
            "/api/v1/users/nina",
            j!({"password": "short"}),
        ),
        step(Session("nora"), "DELETE", "/api/v1/users/nina"),
        step(Session("nora"), "DELETE", "/api/v1/users/nina"),
        step(Session("nora"), "DELETE", "/api/v1/users/nora"),
        step(Session("vic"), "DELETE", "/api/v1/users/olga"),
        step(Session("nora"), "GET", "/api/v1/users/olga"),
        json(
            Session("nora"),
            "POST",
            "/api/v1/tokens",
            j!({"role": "viewer", "label": "wall screen"}),
        ),
        step(NewToken(1), "GET", "/api/v1/me"),
        step(NewToken(1), "GET", "/api/v1/lamps"),
        json(
            Session("nora"),
            "POST",
            "/api/v1/tokens",
            j!({"role": "viewer", "tenant": "south"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/tokens",
            j!({"role": "viewer"}),
        ),
        json(
            Token("all-admin"),
            "POST",
            "/api/v1/tokens",
            j!({"role": "admin", "tenant": "south", "label": "south admin"}),
        ),
        // The audit log.
        step(Session("vic"), "GET", "/api/v1/audit"),
        step(Session("ada"), "GET", "/api/v1/audit?limit=3"),
        step(Token("south-viewer"), "GET", "/api/v1/audit"),
        step(Session("ada"), "GET", "/api/v1/audit.csv"),
        step(Session("vic"), "GET", "/api/v1/audit.csv?from_ms=0&limit=2"),
        step(Session("vic"), "GET", "/api/v1/audit?bogus=1"),
        // Own password, throttling and logout.
        json(
            Token("north-viewer"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD, "new_password": "another password"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": "wrong password", "new_password": "another password"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD, "new_password": "short"}),
        ),
        json(
            SessionNoCsrf("vic"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD, "new_password": "another password"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD}),
        ),
        login("tess", "wrong password 1"),
        login("tess", "wrong password 2"),
        login("tess", "wrong password 3"),
        login("tess", "wrong password 4"),
        login("tess", "wrong password 5"),
        login("tess", "wrong password 6"),
        login("tess", PASSWORD),
        json(
            Session("tess"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD, "new_password": "another password"}),
        ),
        json(
            Session("vic"),
            "POST",
            "/api/v1/me/password",
            j!({"current_password": PASSWORD, "new_password": "another password"}),
        ),
        step(Session("vic"), "GET", "/api/v1/me"),
        login("vic", "another password"),
        step(SessionNoCsrf("ada"), "POST", "/api/v1/logout"),
        step(Session("ada"), "POST", "/api/v1/logout"),
        step(Session("ada"), "GET", "/api/v1/me"),
        step(Token("north-viewer"), "POST", "/api/v1/logout"),
        step(Nobody, "POST", "/api/v1/logout"),
        step(Session("ada"), "GET", "/api/v1/logout"),
    ]
}

/// What is known of the run so far: the credentials to send and the secrets to mask.
struct Run {
    tokens: HashMap<&'static str, String>,
    new_tokens: Vec<String>,
    /// username -> (session, CSRF token)
    sessions: HashMap<String, (String, String)>,
    masks: Vec<(String, String)>,
    wall_from: i64,
}

impl Run {
    fn request(&self, s: &Step) -> Request<Body> {
        let mut b = Request::builder().method(s.method).uri(&s.path);
        let session = |name: &str| self.sessions.get(name).cloned().unwrap_or_default();
        match s.who {
            Who::Nobody => {}
            Who::Token(label) => {
                b = b.header("authorization", format!("Bearer {}", self.tokens[label]))
            }
            Who::NewToken(n) => {
                b = b.header(
                    "authorization",
                    format!("Bearer {}", self.new_tokens[n - 1]),
                )
            }
            Who::Session(name) => {
                let (cookie, csrf) = session(name);
                b = b
                    .header("cookie", format!("ll_session={cookie}"))
                    .header("x-csrf-token", csrf);
            }
            Who::SessionNoCsrf(name) => {
                b = b.header("cookie", format!("ll_session={}", session(name).0))
            }
            Who::ForgedToken => b = b.header("authorization", "Bearer llt_forged"),
            Who::ForgedSession => b = b.header("cookie", format!("ll_session={}", "a".repeat(64))),
        }
        let body = match &s.payload {
            Payload::Empty => Body::empty(),
            Payload::Json(j) => {
                b = b.header("content-type", "application/json");
                Body::from(j.clone())
            }
            Payload::Typed(ct, text) => {
                b = b.header("content-type", *ct);
                Body::from(text.clone())
            }
        };
        b.body(body).unwrap()
    }

    /// Learns the credentials an answer hands out, so later steps can use them and the
    /// record masks them.
    fn learn(&mut self, headers: &axum::http::HeaderMap, body: &str) {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let cookie = headers
            .get("set-cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.strip_prefix("ll_session="))
            .and_then(|c| c.split(';').next())
            .filter(|c| !c.is_empty());
        if let (Some(cookie), Some(user), Some(csrf)) =
            (cookie, v["username"].as_str(), v["csrf_token"].as_str())
        {
            self.masks
                .push((cookie.to_string(), format!("<session:{user}>")));
            self.masks
                .push((csrf.to_string(), format!("<csrf:{user}>")));
            self.sessions
                .insert(user.to_string(), (cookie.to_string(), csrf.to_string()));
        }
        if let Some(token) = v["token"].as_str() {
            self.new_tokens.push(token.to_string());
            let n = self.new_tokens.len();
            self.masks
                .push((token.to_string(), format!("<new-token:{n}>")));
        }
    }

    fn mask(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (secret, placeholder) in &self.masks {
            out = out.replace(secret, placeholder);
        }
        mask_wall_clock(&out, self.wall_from - 3_600_000, wall_ms() + 3_600_000)
    }
}

/// Integers in `[lo, hi]` become `<wall-ms>`; ISO 8601 UTC times become `<wall-time>`.
fn mask_wall_clock(s: &str, lo: i64, hi: i64) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if is_iso_time(&b[i..]) {
            out.push_str("<wall-time>");
            i += 20;
            continue;
        }
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let end = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let n: Option<i64> = s[i..end].parse().ok();
            if n.is_some_and(|n| (lo..=hi).contains(&n)) {
                out.push_str("<wall-ms>");
            } else {
                out.push_str(&s[i..end]);
            }
            i = end;
            continue;
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_iso_time(b: &[u8]) -> bool {
    const FORM: &[u8] = b"dddd-dd-ddTdd:dd:ddZ";
    b.len() >= FORM.len()
        && FORM.iter().zip(b).all(|(f, c)| {
            if *f == b'd' {
                c.is_ascii_digit()
            } else {
                f == c
            }
        })
}

async fn record(run: &mut Run, app: &Router, n: usize, s: &Step) -> String {
    let res: Response<Body> = app.clone().oneshot(run.request(s)).await.unwrap();
    let (parts, body) = res.into_parts();
    let is_stream = parts
        .headers
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"));
    let bytes = if is_stream {
        // An event stream never ends: its first event is what is recorded.
        let mut data = body.into_data_stream();
        data.next()
            .await
            .map(|c| c.unwrap().to_vec())
            .unwrap_or_default()
    } else {
        axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap()
            .to_vec()
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    run.learn(&parts.headers, &text);
    let who = match s.who {
        Who::Nobody => "nobody".to_string(),
        Who::Token(l) => format!("token {l}"),
        Who::NewToken(n) => format!("new token {n}"),
        Who::Session(u) => format!("session {u}"),
        Who::SessionNoCsrf(u) => format!("session {u} without CSRF"),
        Who::ForgedToken => "forged token".into(),
        Who::ForgedSession => "forged session".into(),
    };
    let sent = match &s.payload {
        Payload::Empty => String::new(),
        Payload::Json(j) if j.len() > 300 => format!(" json ({} bytes)", j.len()),
        Payload::Json(j) => format!(" json {j}"),
        Payload::Typed(ct, text) => format!(" {ct} {text}"),
    };
    let mut out = format!("=== {n:03} {} {} as {who}{sent}\n", s.method, s.path);
    out.push_str(&format!("status: {}\n", parts.status.as_u16()));
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    for (k, v) in headers {
        out.push_str(&format!("{k}: {}\n", run.mask(&v)));
    }
    let asset = parts.headers.get("content-type").is_some_and(|c| {
        let c = c.to_str().unwrap_or("");
        c.starts_with("text/html") || c.starts_with("text/javascript") || c.starts_with("text/css")
    });
    if asset {
        let digest = hex::encode(Sha256::digest(&bytes));
        out.push_str(&format!("body: {} bytes, sha256 {digest}\n", bytes.len()));
    } else {
        let masked = run.mask(&text);
        out.push_str(&format!(
            "body ({} bytes as sent):\n{masked}\n",
            bytes.len()
        ));
    }
    out
}

#[tokio::test]
async fn every_route_answers_as_recorded() {
    let wall_from = wall_ms();
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::open(dir.path()).unwrap();
    let north = t("north");
    for (name, role, tenant) in [
        ("ada", Role::Admin, None),
        ("nora", Role::Admin, Some(&north)),
        ("olga", Role::Operator, Some(&north)),
        ("vic", Role::Viewer, Some(&north)),
        ("tess", Role::Viewer, Some(&north)),
    ] {
        accounts.add_user(name, PASSWORD, role, tenant, 0).unwrap();
    }
    let mut run = Run {
        tokens: HashMap::new(),
        new_tokens: Vec::new(),
        sessions: HashMap::new(),
        masks: Vec::new(),
        wall_from,
    };
    for (label, role, tenant) in [
        ("all-admin", Role::Admin, None),
        ("north-viewer", Role::Viewer, Some(north.clone())),
        ("south-viewer", Role::Viewer, Some(t("south"))),
    ] {
        let token = accounts.add_token(role, tenant.as_ref(), label, 0).unwrap();
        run.masks.push((token.clone(), format!("<token:{label}>")));
        run.tokens.insert(label, token);
    }
    let app = router(
        Arc::new(ReplaySource::default()),
        accounts,
        DashboardOptions::default(),
    );

    let mut got = Vec::new();
    for (i, s) in steps().iter().enumerate() {
        got.push(record(&mut run, &app, i + 1, s).await);
    }
    let got_text = got.concat();

    if std::env::var_os("LAMPLIGHTER_RECORD_REPLAY").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(std::path::Path::new(FIXTURE).parent().unwrap()).unwrap();
        std::fs::write(FIXTURE, &got_text).unwrap();
        eprintln!("recorded {} requests in {FIXTURE}", got.len());
        return;
    }
    let want_text = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("{FIXTURE}: {e}; record it with LAMPLIGHTER_RECORD_REPLAY=1"));
    let want: Vec<String> =
        want_text
            .split_inclusive('\n')
            .fold(Vec::<String>::new(), |mut blocks, line| {
                if line.starts_with("=== ") || blocks.is_empty() {
                    blocks.push(String::new());
                }
                blocks.last_mut().unwrap().push_str(line);
                blocks
            });
    for (i, g) in got.iter().enumerate() {
        match want.get(i) {
            Some(w) if w == g => {}
            Some(w) => panic!(
                "request {} answers differently.\n--- recorded:\n{w}\n--- now:\n{g}",
                i + 1
            ),
            None => panic!("request {} is not in the recording:\n{g}", i + 1),
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "the recording has more requests than the test"
    );
}
