//! The dashboard over real HTTP: a fake [`LiveSource`] stands in for the controller, the
//! server runs via [`serve`] on an ephemeral loopback port, and requests are plain HTTP/1.1
//! written by hand over a `TcpStream`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lamplighter_controller::core::policy::Reason;
use lamplighter_dashboards::{serve, LampView, LiveSource, Summary, ZoneView};
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
    fn summary(&self) -> Summary {
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

    fn lamps(&self) -> Vec<LampView> {
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

    fn zones(&self) -> Vec<ZoneView> {
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
    let task = tokio::spawn(serve(listener, source));
    Server { addr, task }
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

async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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

async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path).await
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
    async fn open(addr: SocketAddr) -> EventStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
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
    let res = get(server.addr, "/api/v1/summary").await;
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
    let res = get(server.addr, "/api/v1/lamps").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("application/json"));
    let v = res.json();
    let fake = FakeSource {
        summary_calls: AtomicU64::new(0),
    };
    assert_eq!(v, serde_json::to_value(fake.lamps()).unwrap());
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
    let res = get(server.addr, "/api/v1/zones").await;
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
    let page = get(server.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .contains("script-src 'self'"));
    assert!(page.body.contains(r#"src="assets/app.js""#));
    assert!(page.body.contains(r#"href="assets/app.css""#));

    let js = get(server.addr, "/assets/app.js").await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    let css = get(server.addr, "/assets/app.css").await;
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
        assert!(!body.contains("http://") && !body.contains("https://"));
    }
}

#[tokio::test]
async fn stream_sends_summary_and_zones_within_3_s_and_keeps_reading_the_source() {
    let server = start().await;
    let mut events = EventStream::open(server.addr).await;
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
    let mut events = EventStream::open(server.addr).await;
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
    let res = get(server.addr, "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").starts_with("text/plain"));
    assert!(res.header("content-type").contains("version=0.0.4"));
    assert_eq!(res.body, METRICS);
}

#[tokio::test]
async fn healthz_says_ok() {
    let server = start().await;
    let res = get(server.addr, "/healthz").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.trim(), "ok");
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let server = start().await;
    for path in ["/nope", "/api/v1/lamp", "/api/v2/summary", "/favicon.ico"] {
        let res = get(server.addr, path).await;
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
    let res = request(server.addr, "POST", "/api/v1/summary").await;
    assert_eq!(res.status, 405);
    assert!(res.header("content-type").starts_with("application/json"));
    assert_eq!(res.json()["error"], "method not allowed");
}
