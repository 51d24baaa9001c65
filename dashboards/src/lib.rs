//! The engineers' web dashboard: one page and the JSON API behind it, served by axum.
//!
//! # Design
//!
//! The dashboard owns no state. Everything it shows comes from a [`LiveSource`], which the
//! controller service implements over its shared handle on the core; each request (and each
//! tick of each live stream) asks the source afresh, so there is no second copy of the truth
//! to drift. The source's methods are synchronous and are called straight from the request
//! handlers: implementations should take a snapshot under a short lock and return, never
//! wait on I/O.
//!
//! Routes ([`router`]):
//!
//! | route                  | what                                                          |
//! |------------------------|---------------------------------------------------------------|
//! | `GET /`                | the page (`assets/index.html`)                                |
//! | `GET /assets/app.js`   | its script (`assets/app.js`)                                  |
//! | `GET /assets/app.css`  | its style sheet (`assets/app.css`)                            |
//! | `GET /api/v1/summary`  | [`Summary`] as JSON, exactly its fields                       |
//! | `GET /api/v1/lamps`    | every [`LampView`] as a JSON array                            |
//! | `GET /api/v1/zones`    | every [`ZoneView`] as a JSON array                            |
//! | `GET /api/v1/stream`   | Server-Sent Events: `summary` then `zones`, every second       |
//! | `GET /metrics`         | Prometheus text exposition from [`LiveSource::metrics`]       |
//! | `GET /healthz`         | `ok`                                                          |
//!
//! Anything else answers 404 (or 405 for a known path with the wrong method) with a JSON body
//! `{"error": ..., "path": ...}`, so API clients never have to parse an HTML error page.
//!
//! The page, its script and its style sheet are plain files compiled into the binary with
//! `include_str!`: no build step, no framework, nothing fetched from the internet, so the
//! dashboard works on a council network with no way out. The page is served with a strict
//! Content-Security-Policy (`'self'` only, no inline script), and the script writes every
//! value with `textContent`, so a tenant or zone name can never become markup.
//!
//! On the page: the header shows the summary figures and a connection badge; a canvas map
//! draws every lamp at its latitude and longitude (equirectangular, scaled to fit, no tiles),
//! coloured by level, next to a level histogram in plain HTML; a zone table follows. The
//! header and the table are updated from the event stream without reloading; the map and
//! the histogram re-read `/api/v1/lamps` every five seconds, since the lamp list is the one
//! large answer. `EventSource` reconnects by itself when the stream drops; while it does,
//! the badge says "reconnecting", and if the browser gives up the script opens a new one.
//!
//! [`serve`] runs the router on a listener until its future is dropped. Event streams never
//! end on their own, so dropping the future also ends every open stream: connections then
//! finish their last response and close, instead of outliving the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::IntervalStream;

pub use lamplighter_controller::core::{LampView, Summary, ZoneView};

/// How often the event stream sends the summary and the zones.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting a dropped stream.
const CLIENT_RETRY: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The page may load only its own script and style sheet and talk only to its own origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The content type Prometheus expects for its text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the dashboard reads live state; the controller service implements it.
pub trait LiveSource: Send + Sync + 'static {
    fn summary(&self) -> Summary;
    fn lamps(&self) -> Vec<LampView>;
    fn zones(&self) -> Vec<ZoneView>;
    /// Prometheus text exposition of the system's counters (the lead's implementation fills it).
    fn metrics(&self) -> String;
}

#[derive(Clone)]
struct AppState {
    source: Arc<dyn LiveSource>,
    /// Closed (its sender dropped) when [`serve`] stops; event streams end then.
    /// `None` for a bare [`router`], whose streams end only when the client leaves.
    shutdown: Option<watch::Receiver<()>>,
}

/// The dashboard's routes over `source`, ready to serve or to nest in a larger router.
pub fn router(source: Arc<dyn LiveSource>) -> Router {
    build_router(AppState {
        source,
        shutdown: None,
    })
}

fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/lamps", get(lamps))
        .route("/api/v1/zones", get(zones))
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves until the future is dropped.
///
/// Dropping the future stops accepting connections and ends every open event stream, so the
/// connections it accepted close too.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn LiveSource>,
) -> std::io::Result<()> {
    // Held by this future: when it is dropped, every receiver sees the channel close.
    let (_shutdown_tx, shutdown_rx) = watch::channel(());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "dashboard listening");
    }
    let app = build_router(AppState {
        source,
        shutdown: Some(shutdown_rx),
    });
    axum::serve(listener, app).await
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// JSON that must not be cached: it is live state.
fn live_json<T: serde::Serialize>(value: T) -> Response {
    let mut res = Json(value).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn summary(State(state): State<AppState>) -> Response {
    live_json(state.source.summary())
}

async fn lamps(State(state): State<AppState>) -> Response {
    live_json(state.source.lamps())
}

async fn zones(State(state): State<AppState>) -> Response {
    live_json(state.source.zones())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, METRICS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.source.metrics(),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "ok\n",
    )
}

async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let source = state.source;
    let mut interval = tokio::time::interval(STREAM_INTERVAL);
    // A slow client gets the latest state, not a burst of stale ones.
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut first = true;
    let events = IntervalStream::new(interval).flat_map(move |_| {
        let mut summary = json_event("summary", &source.summary());
        if std::mem::take(&mut first) {
            summary = summary.map(|e| e.retry(CLIENT_RETRY));
        }
        let zones = json_event("zones", &source.zones());
        stream::iter(summary.into_iter().chain(zones).map(Ok))
    });
    let shutdown = async move {
        match state.shutdown {
            // Err once the sender (held by `serve`) is gone; nothing is ever sent.
            Some(mut rx) => while rx.changed().await.is_ok() {},
            None => std::future::pending().await,
        }
    };
    Sse::new(events.take_until(shutdown)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
}

/// An event named `name` whose data is `value` as JSON; `None` (logged) if it cannot be
/// serialised, so one bad value skips one event instead of ending the stream.
fn json_event<T: serde::Serialize>(name: &'static str, value: &T) -> Option<Event> {
    match serde_json::to_string(value) {
        Ok(data) => Some(Event::default().event(name).data(data)),
        Err(err) => {
            tracing::warn!(event = name, %err, "cannot serialise event; skipped");
            None
        }
    }
}

fn json_error(status: StatusCode, error: &str, uri: &Uri) -> Response {
    let body = serde_json::json!({ "error": error, "path": uri.path() });
    (status, Json(body)).into_response()
}

async fn not_found(uri: Uri) -> Response {
    json_error(StatusCode::NOT_FOUND, "not found", &uri)
}

async fn method_not_allowed(uri: Uri) -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", &uri)
}
