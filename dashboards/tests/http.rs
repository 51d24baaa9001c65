//! The dashboard over real HTTP: a fake [`LiveSource`] stands in for the controller, the
//! server runs via [`serve`] on an ephemeral loopback port, and requests are plain HTTP/1.1
//! written by hand over a `TcpStream`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lamplighter_controller::core::policy::Reason;
use lamplighter_dashboards::{
    serve, Accounts, DashboardOptions, LampView, LiveSource, Role, Summary, ZoneView,
};
use lamplighter_protocol::payload::NodeMode;
use lamplighter_protocol::{DevEui, LampId, TenantId, ZoneId};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const METRICS: &str = "# TYPE lamplighter_uplinks_total counter\nlamplighter_uplinks_total 42\n";

/// Fixed lamps and zones; the summary's `uplinks` counts calls, so successive stream events
/// show that the server re-reads the source every tick.
struct FakeSource {
    summary_calls: AtomicU64,
}

fn tenant() -> TenantId {
    TenantId::new("borough").unwrap()
}

impl LiveSource for FakeSource {
    fn summary(&self, _tenant: Option<&TenantId>) -> Summary {
        let n = self.summary_calls.fetch_add(1, Ordering::SeqCst) + 1;
        Summary {
            lamps: 2,
            lamps_online: 1,
            uplinks: n,
            commands: 7,
            rejected: 3,
            rejected_by_reason: BTreeMap::from([("bad-mic", 2), ("replay", 1)]),
            energy_wh: 1234.5,
            power_w: 56.0,
            mean_level_pct: 37.5,
            lamps_with_faults: 1,
            now_ms: 1_700_000_000_000,
        }
    }

    fn lamps(&self, _tenant: Option<&TenantId>) -> Vec<LampView> {
        vec![
            LampView {
                lamp: LampId(1),
                tenant: tenant(),
                dev_eui: DevEui(0x70b3_d57e_d000_0001),
                zone: ZoneId(10),
                lat: 51.5,
                lon: -0.12,
                online: true,
                level_pct: Some(75),
                target_level_pct: Some(75),
                power_w: Some(56.0),
                mode: Some(NodeMode::Commanded),
                faults: 0,
                last_seen_ms: Some(1_699_999_999_000),
                commanded_level_pct: Some(75),
                reason: Some(Reason::Presence),
                energy_wh: 1000.0,
            },
            LampView {
                lamp: LampId(2),
                tenant: tenant(),
                dev_eui: DevEui(0x70b3_d57e_d000_0002),
                zone: ZoneId(10),
                lat: 51.501,
                lon: -0.121,
                online: false,
                level_pct: None,
                target_level_pct: None,
                power_w: None,
                mode: None,
                faults: 4,
                last_seen_ms: None,
                commanded_level_pct: None,
                reason: None,
                energy_wh: 234.5,
            },
        ]
    }

    fn zones(&self, _tenant: Option<&TenantId>) -> Vec<ZoneView> {
        vec![ZoneView {
            tenant: tenant(),
            zone: ZoneId(10),
            lamps: 2,
            lamps_online: 1,
            mean_level_pct: 37.5,
            power_w: 56.0,
            energy_wh: 1234.5,
            presence_total: 9,
            reasons: BTreeMap::from([("presence", 1)]),
            demand: Default::default(),
        }]
    }

    fn metrics(&self) -> String {
        METRICS.to_string()
    }
}

struct Server {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
    /// An admin token for every tenant.
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let source = Arc::new(FakeSource {
        summary_calls: AtomicU64::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::open(dir.path()).unwrap();
    let token = accounts.add_token(Role::Admin, None, "tests", 0).unwrap();
    let task = tokio::spawn(serve(
        listener,
        source,
        accounts,
        DashboardOptions::default(),
    ));
    Server {
        addr,
        task,
        token,
        _dir: dir,
    }
}

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Splits a response head into its status and headers (names lower-cased).
fn parse_head(head: &str) -> (u16, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers)
}

/// Decodes as much of a chunked body as `raw` holds; returns the data and whether the last
/// chunk was seen.
fn dechunk(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_line = std::str::from_utf8(&rest[..eol]).unwrap();
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16).unwrap();
        if size == 0 {
            return (out, true);
        }
        let start = eol + 2;
        if rest.len() < start + size + 2 {
            return (out, false);
        }
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// A request with extra header lines (`"Name: value"`) and an optional JSON body.
async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    json: Option<&str>,
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    match json {
        Some(body) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => req.push_str("\r\n"),
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response within 5 s")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let (status, headers) = parse_head(head);
    let body_raw = &raw[split + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let (data, complete) = dechunk(body_raw);
        assert!(complete, "chunked body ends with its last chunk");
        data
    } else {
        if let Some(len) = headers.get("content-length") {
            assert_eq!(body_raw.len(), len.parse::<usize>().unwrap());
        }
        body_raw.to_vec()
    };
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

async fn request(server: &Server, method: &str, path: &str) -> Response {
    let auth = format!("Authorization: Bearer {}", server.token);
    request_with(server.addr, method, path, &[auth], None).await
}

async fn get(server: &Server, path: &str) -> Response {
    request(server, "GET", path).await
}

/// An open event stream, read event by event.
struct EventStream {
    stream: TcpStream,
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    /// Bytes of decoded body already returned as events.
    consumed: usize,
}

#[derive(Debug)]
struct SseEvent {
    name: String,
    data: String,
}

impl EventStream {
    async fn open(server: &Server) -> EventStream {
        let auth = format!("Authorization: Bearer {}", server.token);
        EventStream::open_with(server.addr, &auth).await
    }

    /// A stream opened with this credential header line (a bearer token or a cookie).
    async fn open_with(addr: SocketAddr, auth: &str) -> EventStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let split = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream closed before its head");
            raw.extend_from_slice(&buf[..n]);
        };
        let (status, headers) = parse_head(std::str::from_utf8(&raw[..split]).unwrap());
        assert_eq!(status, 200);
        assert!(headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked")));
        EventStream {
            stream,
            headers,
            raw: raw[split + 4..].to_vec(),
            consumed: 0,
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let (body, complete) = dechunk(&self.raw);
            let pending = std::str::from_utf8(&body[self.consumed..]).unwrap();
            if let Some(end) = pending.find("\n\n") {
                let block = &pending[..end];
                self.consumed += end + 2;
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a comment or a retry-only block
                }
                return Some(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
            if complete {
                return None;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    async fn next_named(&mut self, name: &str) -> SseEvent {
        loop {
            let ev = self.next().await.expect("stream ended");
            if ev.name == name {
                return ev;
            }
        }
    }
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn summary_is_json_with_exactly_the_summary_fields() {
    let server = start().await;
    let res = get(&server, "/api/v1/summary").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("application/json"));
    assert_eq!(res.header("cache-control"), "no-store");
    let v = res.json();
    let expected: BTreeSet<&str> = [
        "lamps",
        "lamps_online",
        "uplinks",
        "commands",
        "rejected",
        "rejected_by_reason",
        "energy_wh",
        "power_w",
        "mean_level_pct",
        "lamps_with_faults",
        "now_ms",
    ]
    .into();
    assert_eq!(keys(&v), expected);
    assert_eq!(v["lamps"], 2);
    assert_eq!(v["lamps_online"], 1);
    assert_eq!(v["commands"], 7);
    assert_eq!(v["rejected"], 3);
    assert_eq!(v["rejected_by_reason"]["bad-mic"], 2);
    assert_eq!(v["energy_wh"], 1234.5);
    assert_eq!(v["mean_level_pct"], 37.5);
    assert_eq!(v["now_ms"], 1_700_000_000_000u64);
}

#[tokio::test]
async fn lamps_are_the_sources_lamp_views() {
    let server = start().await;
    let res = get(&server, "/api/v1/lamps").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("application/json"));
    let v = res.json();
    let fake = FakeSource {
        summary_calls: AtomicU64::new(0),
    };
    assert_eq!(v, serde_json::to_value(fake.lamps(None)).unwrap());
    let lamps = v.as_array().unwrap();
    assert_eq!(lamps.len(), 2);
    // The fields the page reads.
    for field in ["lamp", "zone", "lat", "lon", "online", "level_pct"] {
        assert!(lamps[0].get(field).is_some(), "lamp has {field}");
    }
    assert_eq!(lamps[0]["level_pct"], 75);
    assert_eq!(lamps[0]["reason"], "presence");
    assert_eq!(lamps[1]["online"], false);
    assert!(lamps[1]["level_pct"].is_null());
}

#[tokio::test]
async fn zones_are_the_sources_zone_views() {
    let server = start().await;
    let res = get(&server, "/api/v1/zones").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("application/json"));
    let v = res.json();
    let zones = v.as_array().unwrap();
    assert_eq!(zones.len(), 1);
    let expected: BTreeSet<&str> = [
        "tenant",
        "zone",
        "lamps",
        "lamps_online",
        "mean_level_pct",
        "power_w",
        "energy_wh",
        "presence_total",
        "reasons",
        // The zone's demand, class and forecast, flattened in.
        "design_class",
        "class",
        "class_reason",
        "capacity_per_h",
        "demand_per_h",
        "forecast_per_h",
        "forecast_q10_per_h",
        "forecast_q90_per_h",
    ]
    .into();
    let got = keys(&zones[0]);
    assert!(
        got.is_superset(&expected),
        "missing: {:?}",
        expected.difference(&got).collect::<Vec<_>>()
    );
    assert_eq!(zones[0]["tenant"], "borough");
    assert_eq!(zones[0]["zone"], 10);
    assert_eq!(zones[0]["presence_total"], 9);
    assert_eq!(zones[0]["reasons"]["presence"], 1);
}

/// Every `$("id")` the script looks up must exist in the page.
#[tokio::test]
async fn page_is_html_and_has_every_element_the_script_uses() {
    let server = start().await;
    let page = get(&server, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .contains("script-src 'self'"));
    assert!(page.body.contains(r#"src="assets/app.js""#));
    assert!(page.body.contains(r#"href="assets/app.css""#));

    let js = get(&server, "/assets/app.js").await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    let css = get(&server, "/assets/app.css").await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));

    let mut ids = BTreeSet::new();
    for quote in ['"', '\''] {
        let opener = format!("$({quote}");
        for part in js.body.split(opener.as_str()).skip(1) {
            ids.insert(part.split(quote).next().unwrap().to_string());
        }
        let opener = format!("setText({quote}");
        for part in js.body.split(opener.as_str()).skip(1) {
            ids.insert(part.split(quote).next().unwrap().to_string());
        }
    }
    for id in [
        "conn",
        "map",
        "zones-body",
        "hist-body",
        "s-lamps",
        "s-online",
        "s-uplinks",
        "s-commands",
        "s-rejected",
        "s-energy",
        "s-power",
        "s-level",
    ] {
        assert!(ids.contains(id), "the script uses #{id}");
    }
    for id in &ids {
        assert!(
            page.body.contains(&format!(r#"id="{id}""#)),
            "the page has an element #{id} for the script"
        );
    }
    // The script reads the API by the routes served here.
    assert!(js.body.contains(r#""api/v1/stream""#));
    assert!(js.body.contains(r#""api/v1/lamps""#));
    // Nothing from elsewhere.
    for body in [&page.body, &js.body, &css.body] {
        // The SVG namespace is a name, not an address anything is fetched from.
        let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!body.contains("http://") && !body.contains("https://"));
    }
}

#[tokio::test]
async fn stream_sends_summary_and_zones_within_3_s_and_keeps_reading_the_source() {
    let server = start().await;
    let mut events = EventStream::open(&server).await;
    assert!(events.headers["content-type"].starts_with("text/event-stream"));

    let first = timeout(Duration::from_secs(3), events.next_named("summary"))
        .await
        .expect("a summary event within 3 s");
    let first: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(first["lamps"], 2);
    assert_eq!(first["rejected_by_reason"]["replay"], 1);

    let zones = timeout(Duration::from_secs(3), events.next_named("zones"))
        .await
        .expect("a zones event within 3 s");
    let zones: Value = serde_json::from_str(&zones.data).unwrap();
    assert_eq!(zones[0]["zone"], 10);

    let second = timeout(Duration::from_secs(3), events.next_named("summary"))
        .await
        .expect("a second summary event within 3 s");
    let second: Value = serde_json::from_str(&second.data).unwrap();
    assert!(
        second["uplinks"].as_u64() > first["uplinks"].as_u64(),
        "each tick reads the source afresh"
    );
}

#[tokio::test]
async fn dropping_serve_ends_open_streams() {
    let server = start().await;
    let mut events = EventStream::open(&server).await;
    timeout(Duration::from_secs(3), events.next_named("summary"))
        .await
        .expect("a summary event within 3 s");
    server.task.abort();
    let end = timeout(Duration::from_secs(3), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends once serve is dropped");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = start().await;
    let res = get(&server, "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("text/plain"));
    assert!(res.header("content-type").contains("version=0.0.4"));
    assert_eq!(res.body, METRICS);
}

#[tokio::test]
async fn healthz_says_ok() {
    let server = start().await;
    let res = get(&server, "/healthz").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.trim(), "ok");
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let server = start().await;
    for path in ["/nope", "/api/v1/lamp", "/api/v2/summary", "/favicon.ico"] {
        let res = get(&server, path).await;
        assert_eq!(res.status, 404, "{path}");
        assert!(res.header("content-type").starts_with("application/json"));
        let v = res.json();
        assert_eq!(v["error"], "not found");
        assert_eq!(v["path"], path);
    }
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let server = start().await;
    let res = request(&server, "POST", "/api/v1/summary").await;
    assert_eq!(res.status, 405);
    assert!(res.header("content-type").starts_with("application/json"));
    assert_eq!(res.json()["error"], "method not allowed");
}

// ---------------------------------------------------------------------------------------
// Accounts, roles, tenants, CSRF, throttling, overrides and the audit log.
//
// `TenantSource` stands in for the controller: two tenants' lamps, filtered by the tenant
// the server passes; overrides are recorded so a test can see what reached the source.

/// (tenant limit, target, level, until_ms) of each override that reached the source.
type Recorded = (Option<TenantId>, String, Option<u8>, u64);

#[derive(Default)]
struct TenantSource {
    overrides: std::sync::Mutex<Vec<Recorded>>,
    /// The overrides kept, as the controller keeps them (in memory here).
    kept: std::sync::Mutex<lamplighter_controller::store::Overrides>,
    settings: std::sync::Mutex<Vec<(TenantId, ZoneId, lamplighter_dashboards::ZoneSettings)>>,
    /// (tenant, zone, username) of each zone's settings kept.
    kept_settings: std::sync::Mutex<Vec<(TenantId, ZoneId, String)>>,
}

fn default_settings() -> lamplighter_dashboards::ZoneSettings {
    lamplighter_dashboards::ZoneSettings {
        policy: "part-night".into(),
        design_class: "M4".parse().unwrap(),
        min_level_pct: 20,
        ramp_up_ms: 1000,
        ramp_down_ms: 20000,
        time_zone: None,
    }
}

fn lamp_of(id: u32, tenant: &str, zone: u32) -> LampView {
    LampView {
        lamp: LampId(id),
        tenant: TenantId::new(tenant).unwrap(),
        dev_eui: DevEui(0x70b3_d57e_d000_0000 + id as u64),
        zone: ZoneId(zone),
        lat: 51.5,
        lon: -0.12,
        online: true,
        level_pct: Some(50),
        target_level_pct: Some(50),
        power_w: Some(20.0),
        mode: Some(NodeMode::Commanded),
        faults: 0,
        last_seen_ms: Some(1),
        commanded_level_pct: Some(50),
        reason: Some(Reason::Schedule),
        energy_wh: 1.0,
    }
}

impl LiveSource for TenantSource {
    fn summary(&self, tenant: Option<&TenantId>) -> Summary {
        let lamps = self.lamps(tenant).len();
        Summary {
            lamps,
            lamps_online: lamps,
            uplinks: 0,
            commands: 0,
            rejected: 0,
            rejected_by_reason: BTreeMap::new(),
            energy_wh: 0.0,
            power_w: 0.0,
            mean_level_pct: 0.0,
            lamps_with_faults: 0,
            now_ms: 1_000_000,
        }
    }
    fn lamps(&self, tenant: Option<&TenantId>) -> Vec<LampView> {
        [
            lamp_of(1, "north", 1),
            lamp_of(2, "north", 2),
            lamp_of(3, "south", 1),
        ]
        .into_iter()
        .filter(|l| tenant.is_none_or(|t| &l.tenant == t))
        .collect()
    }
    fn zones(&self, _tenant: Option<&TenantId>) -> Vec<ZoneView> {
        Vec::new()
    }
    fn metrics(&self) -> String {
        METRICS.to_string()
    }
    fn now_ms(&self) -> u64 {
        1_000_000
    }
    fn set_override(
        &self,
        tenant: Option<&TenantId>,
        target: &lamplighter_dashboards::OverrideTarget,
        level_pct: Option<u8>,
        until_ms: u64,
    ) -> Result<usize, lamplighter_dashboards::SourceError> {
        use lamplighter_dashboards::OverrideTarget as T;
        let n = self
            .lamps(tenant)
            .iter()
            .filter(|l| match target {
                T::Lamp { lamp } => &l.lamp == lamp,
                T::Zone { tenant, zone } => &l.tenant == tenant && &l.zone == zone,
                T::Town => true,
            })
            .count();
        if n == 0 {
            return Err(lamplighter_dashboards::SourceError::NotFound(
                target.to_string(),
            ));
        }
        self.overrides.lock().unwrap().push((
            tenant.cloned(),
            target.to_string(),
            level_pct,
            until_ms,
        ));
        Ok(n)
    }
    fn zone_settings(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
    ) -> Result<lamplighter_dashboards::ZoneSettings, lamplighter_dashboards::SourceError> {
        if !self.lamps(Some(tenant)).iter().any(|l| l.zone == zone) {
            return Err(lamplighter_dashboards::SourceError::NotFound("zone".into()));
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
        settings: &lamplighter_dashboards::ZoneSettings,
    ) -> Result<usize, lamplighter_dashboards::SourceError> {
        self.zone_settings(tenant, zone)?;
        // The controller validates; the fake knows one rule, to see its error passed on.
        if settings.min_level_pct > 100 {
            return Err(lamplighter_dashboards::SourceError::Invalid(
                "min_level_pct must be 0 to 100".into(),
            ));
        }
        self.settings
            .lock()
            .unwrap()
            .push((tenant.clone(), zone, settings.clone()));
        Ok(1)
    }
    fn keep_zone_settings(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        _settings: &lamplighter_dashboards::ZoneSettings,
        username: &str,
    ) -> Result<(), lamplighter_dashboards::SourceError> {
        self.kept_settings
            .lock()
            .unwrap()
            .push((tenant.clone(), zone, username.to_string()));
        Ok(())
    }
    fn keep_override(
        &self,
        o: &lamplighter_dashboards::ActiveOverride,
    ) -> Result<(), lamplighter_dashboards::SourceError> {
        self.kept
            .lock()
            .unwrap()
            .record(o.clone())
            .map_err(|e| lamplighter_dashboards::SourceError::Internal(e.to_string()))
    }
    fn forget_override(
        &self,
        target: &lamplighter_dashboards::OverrideTarget,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<(), lamplighter_dashboards::SourceError> {
        self.kept
            .lock()
            .unwrap()
            .forget(target, tenant, now_ms)
            .map_err(|e| lamplighter_dashboards::SourceError::Internal(e.to_string()))
    }
    fn overrides(&self, tenant: Option<&TenantId>) -> Vec<lamplighter_dashboards::ActiveOverride> {
        self.kept.lock().unwrap().in_force(self.now_ms(), tenant)
    }
}

struct AuthServer {
    addr: SocketAddr,
    source: Arc<TenantSource>,
    dir: tempfile::TempDir,
    _task: JoinHandle<std::io::Result<()>>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}

const PASSWORD: &str = "correct horse battery staple";

async fn start_accounts(options: DashboardOptions) -> AuthServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::open(dir.path()).unwrap();
    let north = TenantId::new("north").unwrap();
    for (name, role, tenant) in [
        ("ada", Role::Admin, None),
        ("olga", Role::Operator, Some(&north)),
        ("vic", Role::Viewer, Some(&north)),
    ] {
        accounts.add_user(name, PASSWORD, role, tenant, 0).unwrap();
    }
    let source = Arc::new(TenantSource::default());
    let task = tokio::spawn(serve(listener, source.clone(), accounts, options));
    AuthServer {
        addr,
        source,
        dir,
        _task: task,
    }
}

/// Logs in; returns the `Cookie:` header line and the CSRF header line.
async fn login(addr: SocketAddr, user: &str) -> (String, String) {
    let body = serde_json::json!({ "username": user, "password": PASSWORD }).to_string();
    let res = request_with(addr, "POST", "/api/v1/login", &[], Some(&body)).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let set = res.header("set-cookie").to_string();
    let pair = set.split(';').next().unwrap().to_string();
    let csrf = res.json()["csrf_token"].as_str().unwrap().to_string();
    (format!("Cookie: {pair}"), format!("X-CSRF-Token: {csrf}"))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[tokio::test]
async fn without_credentials_every_api_route_but_login_answers_401() {
    let s = start_accounts(DashboardOptions::default()).await;
    for (method, path) in [
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/summary"),
        ("GET", "/api/v1/lamps"),
        ("GET", "/api/v1/zones"),
        ("GET", "/api/v1/roads"),
        ("GET", "/api/v1/stream"),
        ("GET", "/api/v1/lamps/1/history"),
        ("GET", "/api/v1/zones/north/1/history"),
        ("GET", "/api/v1/overrides"),
        ("POST", "/api/v1/overrides"),
        ("POST", "/api/v1/overrides/clear"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/audit.csv"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("PUT", "/api/v1/users/vic"),
        ("DELETE", "/api/v1/users/vic"),
        ("POST", "/api/v1/me/password"),
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/logout"),
        ("GET", "/metrics"),
    ] {
        let res = request_with(s.addr, method, path, &[], None).await;
        assert_eq!(res.status, 401, "{method} {path}: {}", res.body);
        assert!(res.header("www-authenticate").starts_with("Bearer"));
        // A wrong token or a forged session is no better.
        let res = request_with(s.addr, method, path, &[bearer("llt_forged")], None).await;
        assert_eq!(res.status, 401, "{method} {path} with a forged token");
        let cookie = format!("Cookie: ll_session={}", "a".repeat(64));
        let res = request_with(s.addr, method, path, &[cookie], None).await;
        assert_eq!(res.status, 401, "{method} {path} with a forged session");
    }
    // The page shell (with its login form) and the liveness probe need no login.
    assert_eq!(
        request_with(s.addr, "GET", "/", &[], None).await.status,
        200
    );
    assert_eq!(
        request_with(s.addr, "GET", "/healthz", &[], None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn login_sets_an_httponly_samesite_cookie_and_the_session_needs_csrf_to_change_state() {
    let s = start_accounts(DashboardOptions::default()).await;
    let wrong = serde_json::json!({ "username": "olga", "password": "not her password" });
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/login",
        &[],
        Some(&wrong.to_string()),
    )
    .await;
    assert_eq!(res.status, 401);
    assert!(res.header("set-cookie").is_empty());

    let body = serde_json::json!({ "username": "olga", "password": PASSWORD }).to_string();
    let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&body)).await;
    assert_eq!(res.status, 200);
    let set = res.header("set-cookie");
    assert!(set.starts_with("ll_session="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "not over plain HTTP unless configured: {set}"
    );
    assert_eq!(res.json()["role"], "operator");
    assert_eq!(res.json()["tenant"], "north");

    let (cookie, csrf) = login(s.addr, "olga").await;
    let me = request_with(
        s.addr,
        "GET",
        "/api/v1/me",
        std::slice::from_ref(&cookie),
        None,
    )
    .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "olga");

    let ov = serde_json::json!({
        "scope": "lamp", "lamp": 1, "level_pct": 100, "duration_s": 600, "reason": "burst main"
    })
    .to_string();
    // No CSRF token, then a wrong one: refused, and nothing reached the controller.
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        std::slice::from_ref(&cookie),
        Some(&ov),
    )
    .await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert!(res.body.contains("CSRF"));
    let wrong_csrf = format!("X-CSRF-Token: {}", "0".repeat(64));
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[cookie.clone(), wrong_csrf],
        Some(&ov),
    )
    .await;
    assert_eq!(res.status, 403);
    assert!(s.source.overrides.lock().unwrap().is_empty());
    // A form post (not JSON) is refused even with the token.
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/logout",
        std::slice::from_ref(&cookie),
        None,
    )
    .await;
    assert_eq!(res.status, 403, "logout changes state: CSRF needed too");

    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[cookie.clone(), csrf.clone()],
        Some(&ov),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(s.source.overrides.lock().unwrap().len(), 1);

    // Logout ends the session on the server, not only in the browser.
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/logout",
        &[cookie.clone(), csrf],
        None,
    )
    .await;
    assert_eq!(res.status, 204);
    assert!(res.header("set-cookie").contains("Max-Age=0"));
    let me = request_with(s.addr, "GET", "/api/v1/me", &[cookie], None).await;
    assert_eq!(me.status, 401);
}

#[tokio::test]
async fn an_event_stream_ends_with_its_session() {
    let s = start_accounts(DashboardOptions::default()).await;
    let (cookie, csrf) = login(s.addr, "vic").await;
    let mut events = EventStream::open_with(s.addr, &cookie).await;
    events.next_named("summary").await;
    events.next_named("summary").await;
    let res = request_with(s.addr, "POST", "/api/v1/logout", &[cookie, csrf], None).await;
    assert_eq!(res.status, 204);
    // A stream that outlived its session would go on sending a summary every second.
    let ended = timeout(Duration::from_secs(5), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream went on after logout");
}

#[tokio::test]
async fn secure_cookies_when_configured() {
    let s = start_accounts(DashboardOptions {
        secure_cookies: true,
        ..DashboardOptions::default()
    })
    .await;
    let body = serde_json::json!({ "username": "ada", "password": PASSWORD }).to_string();
    let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&body)).await;
    assert!(
        res.header("set-cookie").contains("; Secure"),
        "{}",
        res.header("set-cookie")
    );
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_429_even_for_the_right_password() {
    let s = start_accounts(DashboardOptions::default()).await;
    let wrong =
        serde_json::json!({ "username": "vic", "password": "guess guess guess" }).to_string();
    for i in 0..lamplighter_dashboards::throttle::FREE_FAILURES_PER_USER {
        let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&wrong)).await;
        assert_eq!(res.status, 401, "failure {i}");
    }
    // The sixth failure locks the username for a second, doubling after.
    let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&wrong)).await;
    assert_eq!(res.status, 401);
    let right = serde_json::json!({ "username": "vic", "password": PASSWORD }).to_string();
    let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&right)).await;
    assert_eq!(res.status, 429, "{}", res.body);
    assert!(res.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Another user is not locked out by vic's attacker.
    let (_cookie, _csrf) = login(s.addr, "ada").await;
    // After the wait, the right password works again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = request_with(s.addr, "POST", "/api/v1/login", &[], Some(&right)).await;
    assert_eq!(res.status, 200, "{}", res.body);
}

#[tokio::test]
async fn viewers_cannot_override_and_tenants_see_only_their_lamps() {
    let s = start_accounts(DashboardOptions::default()).await;
    let north = TenantId::new("north").unwrap();
    let south = TenantId::new("south").unwrap();
    // Tokens added by another handle on the file (as the CLI does) work at once.
    let mut cli = Accounts::open(s.dir.path()).unwrap();
    let viewer = cli
        .add_token(Role::Viewer, Some(&north), "wall", 0)
        .unwrap();
    let operator = cli.add_token(Role::Operator, Some(&south), "", 0).unwrap();

    let lamps = request_with(s.addr, "GET", "/api/v1/lamps", &[bearer(&viewer)], None).await;
    assert_eq!(lamps.status, 200);
    let ids: Vec<u64> = lamps
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lamp"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2], "north sees its two lamps only");
    let summary = request_with(s.addr, "GET", "/api/v1/summary", &[bearer(&operator)], None).await;
    assert_eq!(
        summary.json()["lamps"],
        1,
        "south's summary counts south's lamp"
    );

    let ov = |scope: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "scope": scope, "level_pct": 80, "duration_s": 60, "reason": "event"
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v.to_string()
    };
    // A viewer: 403, by session and by token.
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[bearer(&viewer)],
        Some(&ov("lamp", serde_json::json!({"lamp": 1}))),
    )
    .await;
    assert_eq!(res.status, 403, "{}", res.body);
    let (cookie, csrf) = login(s.addr, "vic").await;
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[cookie, csrf],
        Some(&ov("lamp", serde_json::json!({"lamp": 1}))),
    )
    .await;
    assert_eq!(res.status, 403);

    // South's operator cannot reach north's lamp or zone: they do not exist for it.
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[bearer(&operator)],
        Some(&ov("lamp", serde_json::json!({"lamp": 1}))),
    )
    .await;
    assert_eq!(res.status, 404, "{}", res.body);
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[bearer(&operator)],
        Some(&ov(
            "zone",
            serde_json::json!({"zone": 1, "tenant": "north"}),
        )),
    )
    .await;
    assert_eq!(res.status, 404);
    let res = request_with(
        s.addr,
        "GET",
        "/api/v1/zones/north/1/history",
        &[bearer(&operator)],
        None,
    )
    .await;
    assert_eq!(res.status, 404);
    assert!(s.source.overrides.lock().unwrap().is_empty());

    // Its town override reaches its own lamps only (the source is told the tenant).
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[bearer(&operator)],
        Some(&ov("town", serde_json::json!({}))),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(res.json()["lamps"], 1);
    let recorded = s.source.overrides.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![(Some(south.clone()), "town".to_string(), Some(80), 1_060_000)]
    );

    // Bad input: clear 400s, nothing applied.
    for bad in [
        serde_json::json!({"scope": "lamp", "lamp": 3, "level_pct": 101, "duration_s": 60, "reason": "x"}),
        serde_json::json!({"scope": "lamp", "lamp": 3, "level_pct": 50, "duration_s": 0, "reason": "x"}),
        serde_json::json!({"scope": "lamp", "lamp": 3, "level_pct": 50, "duration_s": 60, "reason": " "}),
        serde_json::json!({"scope": "lamp", "level_pct": 50, "duration_s": 60, "reason": "x"}),
        serde_json::json!({"scope": "street", "level_pct": 50, "duration_s": 60, "reason": "x"}),
        serde_json::json!({"scope": "lamp", "lamp": 3, "level_pct": 50, "duration_s": 60, "reason": "x", "extra": 1}),
    ] {
        let res = request_with(
            s.addr,
            "POST",
            "/api/v1/overrides",
            &[bearer(&operator)],
            Some(&bad.to_string()),
        )
        .await;
        assert_eq!(res.status, 400, "{bad}: {}", res.body);
    }
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[bearer(&operator)],
        Some("{not json"),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(s.source.overrides.lock().unwrap().len(), 1);

    // Only accounts without a tenant may read the town-wide metrics.
    let res = request_with(s.addr, "GET", "/metrics", &[bearer(&viewer)], None).await;
    assert_eq!(res.status, 403);
    // Admin routes: 403 for an operator.
    let res = request_with(s.addr, "GET", "/api/v1/users", &[bearer(&operator)], None).await;
    assert_eq!(res.status, 403);
}

#[tokio::test]
async fn overrides_are_audited_with_who_what_when_why_per_tenant_and_as_csv() {
    let s = start_accounts(DashboardOptions::default()).await;
    let (cookie, csrf) = login(s.addr, "olga").await;
    let ov = serde_json::json!({
        "scope": "zone", "zone": 2, "level_pct": 100, "duration_s": 900,
        "reason": "burst water main, \"crew\" on site"
    })
    .to_string();
    let before = lamplighter_dashboards::wall_ms();
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides",
        &[cookie.clone(), csrf.clone()],
        Some(&ov),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(res.json()["until_ms"], 1_000_000 + 900_000);
    let active = request_with(
        s.addr,
        "GET",
        "/api/v1/overrides",
        std::slice::from_ref(&cookie),
        None,
    )
    .await;
    assert_eq!(active.json()["overrides"][0]["target"]["zone"], 2);
    let clear = serde_json::json!({"scope": "zone", "zone": 2, "reason": "crew left"}).to_string();
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/overrides/clear",
        &[cookie.clone(), csrf],
        Some(&clear),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        s.source.overrides.lock().unwrap().last().unwrap().2,
        None,
        "clear reached the controller"
    );
    let active = request_with(
        s.addr,
        "GET",
        "/api/v1/overrides",
        std::slice::from_ref(&cookie),
        None,
    )
    .await;
    assert_eq!(active.json()["overrides"].as_array().unwrap().len(), 0);

    let audit = request_with(
        s.addr,
        "GET",
        "/api/v1/audit",
        std::slice::from_ref(&cookie),
        None,
    )
    .await;
    assert_eq!(audit.status, 200);
    let lines = audit.json();
    let lines = lines.as_array().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let set = &lines[1];
    assert_eq!(set["username"], "olga");
    assert_eq!(set["tenant"], "north");
    assert_eq!(set["action"], "override");
    assert_eq!(set["target"], "zone north/2");
    assert_eq!(set["reason"], "burst water main, \"crew\" on site");
    assert!(set["at_ms"].as_i64().unwrap() >= before);
    assert!(set["detail"]
        .as_str()
        .unwrap()
        .contains("\"level_pct\":100"));
    assert_eq!(lines[0]["action"], "override-clear");

    let csv = request_with(s.addr, "GET", "/api/v1/audit.csv", &[cookie], None).await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").starts_with("text/csv"));
    assert!(csv.header("content-disposition").contains("attachment"));
    let rows: Vec<&str> = csv.body.lines().collect();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[1].contains(",olga,north,override,zone north/2,"),
        "{}",
        rows[1]
    );
    assert!(
        rows[1].ends_with(",\"burst water main, \"\"crew\"\" on site\""),
        "{}",
        rows[1]
    );

    // Another tenant's operator sees none of it; the admin of every tenant sees all.
    let mut cli = Accounts::open(s.dir.path()).unwrap();
    let south = cli
        .add_token(
            Role::Operator,
            Some(&TenantId::new("south").unwrap()),
            "",
            0,
        )
        .unwrap();
    let other = request_with(s.addr, "GET", "/api/v1/audit", &[bearer(&south)], None).await;
    assert_eq!(other.json().as_array().unwrap().len(), 0);
    let (admin, _) = login(s.addr, "ada").await;
    let all = request_with(s.addr, "GET", "/api/v1/audit", &[admin], None).await;
    assert_eq!(all.json().as_array().unwrap().len(), 2);
}

async fn login_status(addr: SocketAddr, user: &str, password: &str) -> u16 {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    request_with(addr, "POST", "/api/v1/login", &[], Some(&body))
        .await
        .status
}

/// A request with these header lines and, if given, this JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&String],
    body: Option<serde_json::Value>,
) -> Response {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let body = body.map(|b| b.to_string());
    request_with(addr, method, path, &headers, body.as_deref()).await
}

#[tokio::test]
async fn admins_change_roles_reset_passwords_and_remove_users_in_their_reach() {
    use serde_json::json;
    let s = start_accounts(DashboardOptions::default()).await;
    let mut cli = Accounts::open(s.dir.path()).unwrap();
    let south = TenantId::new("south").unwrap();
    cli.add_user("sam", PASSWORD, Role::Viewer, Some(&south), 0)
        .unwrap();
    let north = TenantId::new("north").unwrap();
    let admin = bearer(&cli.add_token(Role::Admin, Some(&north), "", 0).unwrap());
    drop(cli);
    let (vic, _) = login(s.addr, "vic").await;
    let a = s.addr;

    // Another tenant's user does not exist for a tenant's admin.
    let res = call(
        a,
        "PUT",
        "/api/v1/users/sam",
        &[&admin],
        Some(json!({ "role": "admin" })),
    )
    .await;
    assert_eq!(res.status, 404);
    let res = call(a, "DELETE", "/api/v1/users/sam", &[&admin], None).await;
    assert_eq!(res.status, 404);

    // vic becomes an operator: the session in hand has the new role at once.
    let res = call(
        a,
        "PUT",
        "/api/v1/users/vic",
        &[&admin],
        Some(json!({ "role": "operator" })),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let me = call(a, "GET", "/api/v1/me", &[&vic], None).await;
    assert_eq!(me.json()["role"], "operator");

    // A password reset ends vic's sessions; only the new password logs in.
    let new_password = "a much longer new password";
    let reset = json!({ "password": new_password });
    let res = call(a, "PUT", "/api/v1/users/vic", &[&admin], Some(reset)).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let me = call(a, "GET", "/api/v1/me", &[&vic], None).await;
    assert_eq!(me.status, 401, "the old session ended");
    assert_eq!(login_status(a, "vic", PASSWORD).await, 401);
    assert_eq!(login_status(a, "vic", new_password).await, 200);
    let weak = json!({ "password": "short" });
    let res = call(a, "PUT", "/api/v1/users/vic", &[&admin], Some(weak)).await;
    assert_eq!(res.status, 400, "a weak password is refused");

    // An admin cannot remove themselves or change their own role; removing vic ends vic.
    let (ada, csrf) = login(a, "ada").await;
    let res = call(a, "DELETE", "/api/v1/users/ada", &[&ada, &csrf], None).await;
    assert_eq!(res.status, 409);
    let demote = json!({ "role": "viewer" });
    let res = call(a, "PUT", "/api/v1/users/ada", &[&ada, &csrf], Some(demote)).await;
    assert_eq!(res.status, 409);
    let res = call(a, "DELETE", "/api/v1/users/vic", &[&ada, &csrf], None).await;
    assert_eq!(res.status, 204, "{}", res.body);
    assert_eq!(login_status(a, "vic", new_password).await, 401);

    let audit = call(a, "GET", "/api/v1/audit", &[&ada], None).await;
    let actions: Vec<String> = audit
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    for want in ["user-update user vic", "user-remove user vic"] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} not in {actions:?}"
        );
    }
}

#[tokio::test]
async fn users_change_their_own_password_with_the_current_one() {
    let s = start_accounts(DashboardOptions::default()).await;
    let (olga, csrf) = login(s.addr, "olga").await;
    let change = |current: &str, new: &str| {
        serde_json::json!({ "current_password": current, "new_password": new }).to_string()
    };
    let new_password = "olga's brand new passphrase";
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/me/password",
        &[olga.clone(), csrf.clone()],
        Some(&change("not my password", new_password)),
    )
    .await;
    assert_eq!(res.status, 403);
    assert_eq!(login_status(s.addr, "olga", new_password).await, 401);
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/me/password",
        &[olga.clone(), csrf],
        Some(&change(PASSWORD, new_password)),
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.body);
    let me = request_with(s.addr, "GET", "/api/v1/me", &[olga], None).await;
    assert_eq!(me.status, 401, "every session ends, this one too");
    assert_eq!(login_status(s.addr, "olga", PASSWORD).await, 401);
    assert_eq!(login_status(s.addr, "olga", new_password).await, 200);
}

#[tokio::test]
async fn admins_add_users_in_their_reach_and_it_is_audited() {
    let s = start_accounts(DashboardOptions::default()).await;
    let mut cli = Accounts::open(s.dir.path()).unwrap();
    let north = TenantId::new("north").unwrap();
    let north_admin = cli.add_token(Role::Admin, Some(&north), "", 0).unwrap();
    let add = |tenant: Option<&str>| {
        serde_json::json!({"username": "newbie", "password": PASSWORD, "role": "operator", "tenant": tenant})
            .to_string()
    };
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/users",
        &[bearer(&north_admin)],
        Some(&add(Some("south"))),
    )
    .await;
    assert_eq!(
        res.status, 403,
        "a tenant's admin cannot make another tenant's accounts"
    );
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/users",
        &[bearer(&north_admin)],
        Some(&add(None)),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(
        res.json()["tenant"],
        "north",
        "forced to the admin's tenant"
    );
    let res = request_with(
        s.addr,
        "POST",
        "/api/v1/users",
        &[bearer(&north_admin)],
        Some(&add(None)),
    )
    .await;
    assert_eq!(res.status, 409);
    let (cookie, _) = login(s.addr, "newbie").await;
    let me = request_with(s.addr, "GET", "/api/v1/me", &[cookie], None).await;
    assert_eq!(me.json()["role"], "operator");
    let users = request_with(
        s.addr,
        "GET",
        "/api/v1/users",
        &[bearer(&north_admin)],
        None,
    )
    .await;
    let names: Vec<&str> = users
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    assert_eq!(
        names,
        vec!["newbie", "olga", "vic"],
        "north's users only, no hashes"
    );
    assert!(!users.body.contains("argon2"));
    let audit = request_with(
        s.addr,
        "GET",
        "/api/v1/audit",
        &[bearer(&north_admin)],
        None,
    )
    .await;
    assert_eq!(audit.json()[0]["action"], "user-add");
}

#[tokio::test]
async fn zone_settings_are_admin_only_validated_audited_and_saved() {
    let s = start_accounts(DashboardOptions::default()).await;
    let mut cli = Accounts::open(s.dir.path()).unwrap();
    let north = TenantId::new("north").unwrap();
    let viewer = cli.add_token(Role::Viewer, Some(&north), "", 0).unwrap();
    let operator = cli.add_token(Role::Operator, Some(&north), "", 0).unwrap();
    let north_admin = cli.add_token(Role::Admin, Some(&north), "", 0).unwrap();
    let path = "/api/v1/zones/north/2/settings";

    let got = request_with(s.addr, "GET", path, &[bearer(&viewer)], None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["policy"], "part-night");
    assert_eq!(got.json()["design_class"], "M4");

    let body = |policy: &str, class: &str, min: i64| {
        serde_json::json!({
            "policy": policy, "design_class": class, "min_level_pct": min,
            "ramp_up_ms": 2000, "ramp_down_ms": 30000, "reason": "residents asked"
        })
        .to_string()
    };
    let res = request_with(
        s.addr,
        "PUT",
        path,
        &[bearer(&operator)],
        Some(&body("full", "M3", 30)),
    )
    .await;
    assert_eq!(res.status, 403, "operators cannot change settings");
    for (bad, why) in [
        (body("full", "M9", 30), "class"),
        (body("full", "M3", 300), "min level out of u8"),
        (
            body("full", "M3", 101),
            "min level above 100 (the controller says)",
        ),
        (
            serde_json::json!({"policy": "full", "design_class": "M3", "min_level_pct": 3,
                "ramp_up_ms": 1, "ramp_down_ms": 1, "reason": "x", "colour": "red"})
            .to_string(),
            "unknown field",
        ),
        (
            body("full", "M3", 30).replace("residents asked", ""),
            "no reason",
        ),
    ] {
        let res = request_with(s.addr, "PUT", path, &[bearer(&north_admin)], Some(&bad)).await;
        assert_eq!(res.status, 400, "{why}: {}", res.body);
    }
    assert!(s.source.settings.lock().unwrap().is_empty());
    let res = request_with(
        s.addr,
        "PUT",
        "/api/v1/zones/south/1/settings",
        &[bearer(&north_admin)],
        Some(&body("full", "M3", 30)),
    )
    .await;
    assert_eq!(res.status, 404, "another tenant's zone");

    let res = request_with(
        s.addr,
        "PUT",
        path,
        &[bearer(&north_admin)],
        Some(&body("full", "M3", 30)),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got = request_with(s.addr, "GET", path, &[bearer(&viewer)], None).await;
    assert_eq!(got.json()["policy"], "full");
    assert_eq!(got.json()["min_level_pct"], 30);
    let audit = request_with(s.addr, "GET", "/api/v1/audit", &[bearer(&viewer)], None).await;
    let line = &audit.json()[0];
    assert_eq!(line["action"], "zone-settings");
    assert_eq!(line["target"], "zone north/2");
    assert_eq!(line["reason"], "residents asked");
    let detail: Value = serde_json::from_str(line["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["from"]["policy"], "part-night");
    assert_eq!(detail["to"]["policy"], "full");
    // Kept by the source for the next start, with who set them.
    let kept = s.source.kept_settings.lock().unwrap().clone();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0].0.as_str(), kept[0].1), ("north", ZoneId(2)));
    assert!(!kept[0].2.is_empty());
}
