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
//! Routes ([`router`]). Every `/api/v1/*` route but login needs a session cookie or an API
//! token ([`accounts`]) and answers 401 without; state-changing requests with a session also
//! need its CSRF token in `X-CSRF-Token`. Each answer is limited to the caller's tenant.
//!
//! | route                                        | who      | what                          |
//! |----------------------------------------------|----------|-------------------------------|
//! | `GET /`, `/assets/app.js`, `/assets/app.css` | anyone   | the page (login form first)   |
//! | `POST /api/v1/login`, `POST /api/v1/logout`  | anyone   | session cookie (throttled)    |
//! | `GET /api/v1/me`                             | viewer   | who, role, tenant, CSRF token |
//! | `GET /api/v1/summary`, `/lamps`, `/zones`    | viewer   | live state as JSON            |
//! | `GET /api/v1/roads`                          | viewer   | road centre lines for the map |
//! | `GET /api/v1/lamps/{id}/history`             | viewer   | readings and commands         |
//! | `GET /api/v1/zones/{t}/{z}/history`          | viewer   | 15-minute zone history        |
//! | `GET\|PUT /api/v1/zones/{t}/{z}/settings`    | admin    | zone policy settings (PUT)    |
//! | `GET\|POST /api/v1/overrides`, `/clear`      | operator | overrides (POST), audited     |
//! | `GET /api/v1/faults`, `POST .../acknowledge` | operator | faults (POST), audited        |
//! | `GET /api/v1/energy`, `/half-hourly.csv`     | viewer   | kWh, GBP, CO2e, savings; CSV  |
//! | `GET /api/v1/audit`, `/audit.csv`            | viewer   | who did what, when and why    |
//! | `GET\|POST /api/v1/users`, `POST /tokens`    | admin    | accounts, audited             |
//! | `PUT\|DELETE /api/v1/users/{name}`           | admin    | role, password reset, remove  |
//! | `POST /api/v1/me/password`                   | viewer   | own password (session only)   |
//! | `GET /api/v1/stream`                         | viewer   | SSE: `summary`, `zones` each s|
//! | `GET /metrics`                               | no tenant| Prometheus text               |
//! | `GET /healthz`                               | anyone   | `ok` (liveness, no data)      |
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
//! On the page: a login form, then the summary figures (with open faults and today's energy)
//! and a connection badge; a canvas map draws every lamp at its latitude and longitude
//! (equirectangular, no tiles) over its roads, coloured by level, overrides and faults marked,
//! with pan and zoom; a lamp's details and 24-hour chart; overrides, faults, energy, the level
//! histogram, the zone table with a zone's chart and settings, and the audit log. The header
//! and the zone table follow the event stream without reloading; the map re-reads
//! `/api/v1/lamps` every five seconds, since the lamp list is the one large answer.
//! `EventSource` reconnects by itself when the stream drops; while it does, the badge says
//! "reconnecting", and if the browser gives up the script opens a new one.
//!
//! [`serve`] runs the router on a listener until its future is dropped. Event streams never
//! end on their own, so dropping the future also ends every open stream: connections then
//! finish their last response and close, instead of outliving the server.

// Handler helpers return the error response itself; it is built once per failed request.
#![allow(clippy::result_large_err)]

pub mod accounts;
mod source;
pub mod throttle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use lamplighter_protocol::{LampId, TenantId, ZoneId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::IntervalStream;

pub use accounts::{Accounts, AccountsError, Principal, Role};
pub use lamplighter_controller::core::{LampView, Summary, ZoneSettings, ZoneView};
pub use lamplighter_controller::faults::{Fault, FaultCounts, FaultId};
pub use lamplighter_controller::store::{EnergySummary, HistoryPoint};
pub use source::{
    ActiveOverride, CommandRecord, LampHistory, LiveSource, OverrideTarget, Road, SourceError,
};

/// The longest span of one half-hourly export: 31 days.
pub const MAX_HALF_HOURLY_S: i64 = 31 * 86_400;

/// How often the event stream sends the summary and the zones.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting a dropped stream.
const CLIENT_RETRY: Duration = Duration::from_secs(2);

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ll_session";
/// The header a browser session echoes its CSRF token in on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The longest override: a week.
pub const MAX_OVERRIDE_S: u64 = 7 * 86_400;
/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The page may load only its own script and style sheet and talk only to its own origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The content type Prometheus expects for its text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How the dashboard serves.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Mark the session cookie `Secure` (set when served over TLS, directly or behind a
    /// proxy that terminates it).
    pub secure_cookies: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            secure_cookies: false,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Clone)]
struct AppState {
    source: Arc<dyn LiveSource>,
    accounts: Arc<Mutex<Accounts>>,
    throttle: Arc<throttle::Throttle>,
    overrides: Arc<Mutex<Vec<ActiveOverride>>>,
    options: DashboardOptions,
    /// Closed (its sender dropped) when [`serve`] stops; event streams end then.
    /// `None` for a bare [`router`], whose streams end only when the client leaves.
    shutdown: Option<watch::Receiver<()>>,
}

impl AppState {
    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Unix ms on the wall clock (sessions and audit lines use it).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The dashboard's routes over `source`, ready to serve or to nest in a larger router.
/// Login throttling by address needs [`ConnectInfo`]; without it all clients share one key.
pub fn router(
    source: Arc<dyn LiveSource>,
    accounts: Accounts,
    options: DashboardOptions,
) -> Router {
    build_router(new_state(source, accounts, options, None))
}

fn new_state(
    source: Arc<dyn LiveSource>,
    accounts: Accounts,
    options: DashboardOptions,
    shutdown: Option<watch::Receiver<()>>,
) -> AppState {
    let state = AppState {
        source,
        accounts: Arc::new(Mutex::new(accounts)),
        throttle: Arc::new(throttle::Throttle::new()),
        overrides: Arc::new(Mutex::new(Vec::new())),
        options,
        shutdown,
    };
    restore_overrides(&state);
    state
}

/// Overrides still in force when the dashboard last stopped apply again: an operator's
/// incident override does not end with a restart.
fn restore_overrides(state: &AppState) {
    let now_ms = state.source.now_ms();
    let saved = match state.accounts().saved_overrides(now_ms) {
        Ok(saved) => saved,
        Err(e) => {
            tracing::error!(error = %e, "saved overrides not read");
            return;
        }
    };
    let mut list = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
    for o in saved {
        match state
            .source
            .set_override(o.tenant.as_ref(), &o.target, Some(o.level_pct), o.until_ms)
        {
            Ok(lamps) => {
                tracing::info!(target = %o.target, level_pct = o.level_pct, lamps, until_ms = o.until_ms, "override restored");
                list.push(ActiveOverride { lamps, ..o });
            }
            Err(e) => tracing::warn!(target = %o.target, error = %e, "saved override not applied"),
        }
    }
}

fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/lamps", get(lamps))
        .route("/api/v1/lamps/{lamp}/history", get(lamp_history))
        .route("/api/v1/zones", get(zones))
        .route("/api/v1/zones/{tenant}/{zone}/history", get(zone_history))
        .route(
            "/api/v1/zones/{tenant}/{zone}/settings",
            get(zone_settings).put(set_zone_settings),
        )
        .route("/api/v1/roads", get(roads))
        .route("/api/v1/faults", get(faults))
        .route("/api/v1/faults/{id}/acknowledge", post(acknowledge_fault))
        .route("/api/v1/faults/{id}/clear", post(clear_fault))
        .route("/api/v1/energy", get(energy))
        .route("/api/v1/energy/half-hourly.csv", get(half_hourly))
        .route("/api/v1/overrides", get(list_overrides).post(set_override))
        .route("/api/v1/overrides/clear", post(clear_override))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit.csv", get(audit_csv))
        .route("/api/v1/users", get(users).post(add_user))
        .route(
            "/api/v1/users/{username}",
            put(update_user).delete(remove_user),
        )
        .route("/api/v1/me/password", post(change_own_password))
        .route("/api/v1/tokens", post(add_token))
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
    accounts: Accounts,
    options: DashboardOptions,
) -> std::io::Result<()> {
    // Held by this future: when it is dropped, every receiver sees the channel close.
    let (_shutdown_tx, shutdown_rx) = watch::channel(());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "dashboard listening");
    }
    let app = build_router(new_state(source, accounts, options, Some(shutdown_rx)));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Authentication

/// The caller, authenticated by session cookie or bearer token. As an extractor it answers
/// 401 without credentials, and 403 for a session request that changes state without the
/// session's CSRF token.
struct Auth(Principal, Credential);

/// What the caller authenticated with, so that a long request (an event stream) can check
/// that it still holds.
#[derive(Clone)]
enum Credential {
    Session(String),
    Token(String),
}

impl Credential {
    /// Whether the session or token still authenticates (a logout or expiry ends a session;
    /// an unreadable accounts file counts as not).
    fn still_valid(&self, state: &AppState) -> bool {
        let accounts = state.accounts();
        match self {
            Credential::Session(s) => accounts.session_principal(s, wall_ms()),
            Credential::Token(t) => accounts.token_principal(t),
        }
        .is_ok_and(|p| p.is_some())
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let unauthorized = |msg: &str| {
            let mut res = json_error(StatusCode::UNAUTHORIZED, msg, &parts.uri);
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lamplighter\""),
            );
            res
        };
        let internal = |e: AccountsError| {
            tracing::error!(error = %e, "cannot read accounts");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read accounts",
                &parts.uri,
            )
        };
        if let Some(token) = bearer(&parts.headers) {
            let found = state.accounts().token_principal(token).map_err(internal)?;
            return match found {
                Some(p) => Ok(Auth(p, Credential::Token(token.to_string()))),
                None => Err(unauthorized("invalid token")),
            };
        }
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(unauthorized("login required"));
        };
        let found = state
            .accounts()
            .session_principal(session, wall_ms())
            .map_err(internal)?;
        let Some(p) = found else {
            return Err(unauthorized("session expired; log in again"));
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let expected = p.csrf_token.as_deref().unwrap_or("");
            if expected.is_empty() || !ct_eq(sent, expected) {
                return Err(json_error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token",
                    &parts.uri,
                ));
            }
        }
        Ok(Auth(p, Credential::Session(session.to_string())))
    }
}

/// The client's address, when the server was started with connect info.
struct ClientIp(Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl Auth {
    /// 403 unless the caller has at least `role`.
    fn require(&self, role: Role, uri: &Uri) -> Result<(), Response> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(json_error(
                StatusCode::FORBIDDEN,
                &format!("needs the {role} role; you are {}", self.0.role),
                uri,
            ))
        }
    }
    fn tenant(&self) -> Option<&TenantId> {
        self.0.tenant.as_ref()
    }
}

/// A JSON body: `Content-Type: application/json` (which a cross-site form cannot send
/// without a CORS preflight we never grant), parsed with a clear 400 on error.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    uri: &Uri,
) -> Result<T, Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
            uri,
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}"), uri))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct MeResponse<'a> {
    username: &'a str,
    role: Role,
    tenant: Option<&'a TenantId>,
    csrf_token: Option<&'a str>,
}

fn me_json(p: &Principal) -> serde_json::Value {
    serde_json::to_value(MeResponse {
        username: &p.username,
        role: p.role,
        tenant: p.tenant.as_ref(),
        csrf_token: p.csrf_token.as_deref(),
    })
    .unwrap_or_default()
}

fn retry_after(uri: &Uri, wait: Duration) -> Response {
    let mut res = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins; wait and try again",
        uri,
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

async fn login(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: LoginRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let user_key = format!("user:{}", req.username.to_lowercase());
    let ip_key = format!(
        "ip:{}",
        client_ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
    );
    let now = Instant::now();
    for key in [&user_key, &ip_key] {
        if let Err(wait) = state.throttle.check(key, now) {
            return retry_after(&uri, wait);
        }
    }
    let accounts = state.accounts.clone();
    let (username, password) = (req.username, req.password);
    // argon2 is deliberately slow: off the async workers.
    let checked = tokio::task::spawn_blocking(move || {
        let a = accounts.lock().unwrap_or_else(|p| p.into_inner());
        a.check_password(&username, &password)
    })
    .await;
    let checked = match checked {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot check a login");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot check login",
                &uri,
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "login check panicked");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot check login",
                &uri,
            );
        }
    };
    let Some((user_id, mut principal)) = checked else {
        let now = Instant::now();
        state
            .throttle
            .fail(&user_key, throttle::FREE_FAILURES_PER_USER, now);
        state
            .throttle
            .fail(&ip_key, throttle::FREE_FAILURES_PER_IP, now);
        return json_error(StatusCode::UNAUTHORIZED, "wrong username or password", &uri);
    };
    state.throttle.succeed(&user_key);
    let created = state
        .accounts()
        .create_session(user_id, wall_ms(), state.options.session_ttl);
    let (session, csrf) = match created {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a session");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot log in", &uri);
        }
    };
    principal.csrf_token = Some(csrf);
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.options.session_ttl.as_secs(),
        if state.options.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut res = live_json(me_json(&principal));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn logout(State(state): State<AppState>, auth: Auth, headers: HeaderMap) -> Response {
    let _ = auth;
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.accounts().delete_session(session) {
            tracing::error!(error = %e, "cannot delete a session");
        }
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if state.options.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn me(auth: Auth) -> Response {
    live_json(me_json(&auth.0))
}

// ---------------------------------------------------------------------------------------
// Pages and live state

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

async fn summary(State(state): State<AppState>, auth: Auth) -> Response {
    live_json(state.source.summary(auth.tenant()))
}

async fn lamps(State(state): State<AppState>, auth: Auth) -> Response {
    live_json(state.source.lamps(auth.tenant()))
}

async fn zones(State(state): State<AppState>, auth: Auth) -> Response {
    live_json(state.source.zones(auth.tenant()))
}

async fn roads(State(state): State<AppState>, auth: Auth) -> Response {
    live_json(state.source.roads(auth.tenant()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Span {
    /// Unix seconds; default: 24 hours before `to_s`.
    from_s: Option<i64>,
    /// Unix seconds; default: now on the controller's clock.
    to_s: Option<i64>,
}

impl Span {
    fn resolve(&self, now_ms: u64, uri: &Uri) -> Result<(i64, i64), Response> {
        let to_s = self.to_s.unwrap_or((now_ms / 1000) as i64 + 1);
        let from_s = self.from_s.unwrap_or(to_s - 86_400);
        if from_s >= to_s || to_s - from_s > 400 * 86_400 {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "from_s must be before to_s, at most 400 days apart",
                uri,
            ));
        }
        Ok((from_s, to_s))
    }
}

fn source_error(e: SourceError, uri: &Uri) -> Response {
    let status = match e {
        SourceError::NotFound(_) => StatusCode::NOT_FOUND,
        SourceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SourceError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        SourceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "dashboard source failed");
    }
    json_error(status, &e.to_string(), uri)
}

async fn lamp_history(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(lamp): Path<String>,
    Query(span): Query<Span>,
) -> Response {
    let Ok(lamp) = lamp.parse::<u32>() else {
        return json_error(StatusCode::BAD_REQUEST, "a lamp id is a number", &uri);
    };
    let (from_s, to_s) = match span.resolve(state.source.now_ms(), &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let source = state.source.clone();
    let tenant = auth.0.tenant.clone();
    let result = tokio::task::spawn_blocking(move || {
        source.lamp_history(tenant.as_ref(), LampId(lamp), from_s, to_s)
    })
    .await
    .unwrap_or_else(|e| Err(SourceError::Internal(e.to_string())));
    match result {
        Ok(h) => live_json(h),
        Err(e) => source_error(e, &uri),
    }
}

async fn zone_history(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((tenant, zone)): Path<(String, String)>,
    Query(span): Query<Span>,
) -> Response {
    let (Ok(tenant), Ok(zone)) = (TenantId::new(&tenant), zone.parse::<u32>()) else {
        return json_error(StatusCode::BAD_REQUEST, "bad tenant or zone", &uri);
    };
    // Another tenant's zone does not exist for this caller.
    if auth.tenant().is_some_and(|t| t != &tenant) {
        return json_error(StatusCode::NOT_FOUND, "zone not found", &uri);
    }
    let (from_s, to_s) = match span.resolve(state.source.now_ms(), &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let source = state.source.clone();
    let result = tokio::task::spawn_blocking(move || {
        source.zone_history(&tenant, ZoneId(zone), from_s, to_s)
    })
    .await
    .unwrap_or_else(|e| Err(SourceError::Internal(e.to_string())));
    match result {
        Ok(h) => live_json(h),
        Err(e) => source_error(e, &uri),
    }
}

// ---------------------------------------------------------------------------------------
// Faults and energy

async fn faults(State(state): State<AppState>, auth: Auth, uri: Uri) -> Response {
    match state.source.faults(auth.tenant()) {
        Ok((counts, faults)) => {
            live_json(serde_json::json!({ "counts": counts, "faults": faults }))
        }
        Err(e) => source_error(e, &uri),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultNote {
    note: String,
}

async fn fault_action(
    state: AppState,
    auth: Auth,
    uri: Uri,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    clear: bool,
) -> Response {
    if let Err(r) = auth.require(Role::Operator, &uri) {
        return r;
    }
    let Ok(id) = id.parse::<u64>() else {
        return json_error(StatusCode::BAD_REQUEST, "a fault id is a number", &uri);
    };
    let req: FaultNote = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let note = match valid_reason(&req.note, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let fault =
        match state
            .source
            .fault_action(auth.tenant(), FaultId(id), clear, &auth.0.username, &note)
        {
            Ok(f) => f,
            Err(e) => return source_error(e, &uri),
        };
    let action = if clear {
        "fault-clear"
    } else {
        "fault-acknowledge"
    };
    let detail = serde_json::json!({ "kind": fault.kind, "lamp": fault.lamp });
    let target = format!("fault {} (lamp {})", fault.id, fault.lamp.0);
    if let Err(r) = write_audit(
        &state,
        &auth,
        Some(&fault.tenant),
        action,
        &target,
        &detail,
        &note,
        &uri,
    ) {
        return r;
    }
    live_json(fault)
}

async fn acknowledge_fault(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fault_action(state, auth, uri, id, headers, body, false).await
}

async fn clear_fault(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fault_action(state, auth, uri, id, headers, body, true).await
}

async fn energy(State(state): State<AppState>, auth: Auth, uri: Uri) -> Response {
    let source = state.source.clone();
    let tenant = auth.0.tenant.clone();
    let result = tokio::task::spawn_blocking(move || source.energy(tenant.as_ref()))
        .await
        .unwrap_or_else(|e| Err(SourceError::Internal(e.to_string())));
    match result {
        Ok(e) => live_json(e),
        Err(e) => source_error(e, &uri),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvSpan {
    from_s: i64,
    to_s: i64,
}

async fn half_hourly(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Query(span): Query<CsvSpan>,
) -> Response {
    if span.from_s >= span.to_s || span.to_s - span.from_s > MAX_HALF_HOURLY_S {
        return json_error(
            StatusCode::BAD_REQUEST,
            "from_s must be before to_s, at most 31 days apart",
            &uri,
        );
    }
    let source = state.source.clone();
    let tenant = auth.0.tenant.clone();
    let result = tokio::task::spawn_blocking(move || {
        source.half_hourly_csv(tenant.as_ref(), span.from_s, span.to_s)
    })
    .await
    .unwrap_or_else(|e| Err(SourceError::Internal(e.to_string())));
    match result {
        Ok(csv) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"lamplighter-half-hourly.csv\"",
                ),
            ],
            csv,
        )
            .into_response(),
        Err(e) => source_error(e, &uri),
    }
}

// ---------------------------------------------------------------------------------------
// Zone settings

/// A zone named in a path, if the caller may see it.
fn path_zone(
    auth: &Auth,
    tenant: &str,
    zone: &str,
    uri: &Uri,
) -> Result<(TenantId, ZoneId), Response> {
    let (Ok(tenant), Ok(zone)) = (TenantId::new(tenant), zone.parse::<u32>()) else {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "bad tenant or zone",
            uri,
        ));
    };
    if auth.tenant().is_some_and(|t| t != &tenant) {
        return Err(json_error(StatusCode::NOT_FOUND, "zone not found", uri));
    }
    Ok((tenant, ZoneId(zone)))
}

async fn zone_settings(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((tenant, zone)): Path<(String, String)>,
) -> Response {
    let (tenant, zone) = match path_zone(&auth, &tenant, &zone, &uri) {
        Ok(z) => z,
        Err(r) => return r,
    };
    match state.source.zone_settings(&tenant, zone) {
        Ok(s) => live_json(s),
        Err(e) => source_error(e, &uri),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    policy: String,
    design_class: lamplighter_protocol::LightingClass,
    min_level_pct: u8,
    ramp_up_ms: u32,
    ramp_down_ms: u32,
    /// An IANA name; left out, the zone keeps its time zone.
    #[serde(default)]
    time_zone: Option<lamplighter_protocol::local_time::TimeZone>,
    reason: String,
}

async fn set_zone_settings(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((tenant, zone)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    let (tenant, zone) = match path_zone(&auth, &tenant, &zone, &uri) {
        Ok(z) => z,
        Err(r) => return r,
    };
    let req: SettingsRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let reason = match valid_reason(&req.reason, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let settings = ZoneSettings {
        policy: req.policy,
        design_class: req.design_class,
        min_level_pct: req.min_level_pct,
        ramp_up_ms: req.ramp_up_ms,
        ramp_down_ms: req.ramp_down_ms,
        time_zone: req.time_zone,
    };
    let before = match state.source.zone_settings(&tenant, zone) {
        Ok(s) => s,
        Err(e) => return source_error(e, &uri),
    };
    let lamps = match state.source.set_zone_settings(&tenant, zone, &settings) {
        Ok(n) => n,
        Err(e) => return source_error(e, &uri),
    };
    let detail = serde_json::json!({ "from": before, "to": settings, "lamps": lamps });
    let target = format!("zone {tenant}/{}", zone.0);
    if let Err(r) = write_audit(
        &state,
        &auth,
        Some(&tenant),
        "zone-settings",
        &target,
        &detail,
        &reason,
        &uri,
    ) {
        return r;
    }
    let json = serde_json::to_string(&settings).unwrap_or_default();
    if let Err(e) =
        state
            .accounts()
            .save_zone_settings(&tenant, zone.0, &json, &auth.0.username, wall_ms())
    {
        return accounts_error(e, &uri);
    }
    live_json(settings)
}

// ---------------------------------------------------------------------------------------
// Overrides and the audit log

/// The target as a request names it: `scope` is `lamp` (with `lamp`), `zone` (with `zone`,
/// and `tenant` unless the caller has one) or `town`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRequest {
    scope: String,
    lamp: Option<u32>,
    zone: Option<u32>,
    tenant: Option<TenantId>,
    level_pct: Option<u8>,
    duration_s: Option<u64>,
    #[serde(default)]
    reason: String,
}

impl TargetRequest {
    fn target(&self, auth: &Auth, uri: &Uri) -> Result<OverrideTarget, Response> {
        let bad = |msg: &str| json_error(StatusCode::BAD_REQUEST, msg, uri);
        match (self.scope.as_str(), self.lamp, self.zone) {
            ("lamp", Some(lamp), None) => Ok(OverrideTarget::Lamp { lamp: LampId(lamp) }),
            ("zone", None, Some(zone)) => {
                let tenant = match (&self.tenant, auth.tenant()) {
                    (Some(t), _) => t.clone(),
                    (None, Some(mine)) => mine.clone(),
                    (None, None) => return Err(bad("a zone override needs its tenant")),
                };
                Ok(OverrideTarget::Zone {
                    tenant,
                    zone: ZoneId(zone),
                })
            }
            ("town", None, None) => Ok(OverrideTarget::Town),
            _ => Err(bad(
                "scope must be lamp (with lamp), zone (with zone) or town (with neither)",
            )),
        }
    }
}

fn valid_reason(reason: &str, uri: &Uri) -> Result<String, Response> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("a reason is required: 1 to {MAX_REASON_CHARS} characters on one line"),
            uri,
        ));
    }
    Ok(r.to_string())
}

/// A tenant's caller may only name their own tenant's zones.
fn check_target(auth: &Auth, target: &OverrideTarget, uri: &Uri) -> Result<(), Response> {
    if let (OverrideTarget::Zone { tenant, .. }, Some(mine)) = (target, auth.tenant()) {
        if tenant != mine {
            return Err(json_error(StatusCode::NOT_FOUND, "zone not found", uri));
        }
    }
    Ok(())
}

/// Writes one audit line; if it cannot be written, the answer to give (500, logged), since
/// an action that cannot be audited must not pass as done.
#[allow(clippy::too_many_arguments)]
fn write_audit(
    state: &AppState,
    auth: &Auth,
    tenant: Option<&TenantId>,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
    reason: &str,
    uri: &Uri,
) -> Result<(), Response> {
    state
        .accounts()
        .audit(&accounts::NewAudit {
            at_ms: wall_ms(),
            username: &auth.0.username,
            tenant,
            action,
            target,
            detail: &detail.to_string(),
            reason,
        })
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the audit log",
                uri,
            )
        })
}

/// The tenant an audit line belongs to: the zone's, else the caller's.
fn audit_tenant<'a>(auth: &'a Auth, target: &'a OverrideTarget) -> Option<&'a TenantId> {
    match target {
        OverrideTarget::Zone { tenant, .. } => Some(tenant),
        _ => auth.tenant(),
    }
}

async fn set_override(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Operator, &uri) {
        return r;
    }
    let req: TargetRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let target = match req.target(&auth, &uri) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (Some(level_pct), Some(duration_s)) = (req.level_pct, req.duration_s) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "level_pct and duration_s are required",
            &uri,
        );
    };
    if level_pct > 100 {
        return json_error(StatusCode::BAD_REQUEST, "level_pct must be 0 to 100", &uri);
    }
    if duration_s == 0 || duration_s > MAX_OVERRIDE_S {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("duration_s must be 1 to {MAX_OVERRIDE_S}"),
            &uri,
        );
    }
    let reason = match valid_reason(&req.reason, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    if let Err(r) = check_target(&auth, &target, &uri) {
        return r;
    }
    let from_ms = state.source.now_ms();
    let until_ms = from_ms + duration_s * 1000;
    let lamps = match state
        .source
        .set_override(auth.tenant(), &target, Some(level_pct), until_ms)
    {
        Ok(n) => n,
        Err(e) => return source_error(e, &uri),
    };
    let detail = serde_json::json!({
        "level_pct": level_pct, "duration_s": duration_s,
        "until_ms": until_ms, "lamps": lamps,
    });
    if let Err(r) = write_audit(
        &state,
        &auth,
        audit_tenant(&auth, &target),
        "override",
        &target.to_string(),
        &detail,
        &reason,
        &uri,
    ) {
        return r;
    }
    let active = ActiveOverride {
        target,
        tenant: auth.0.tenant.clone(),
        level_pct,
        lamps,
        from_ms,
        until_ms,
        username: auth.0.username.clone(),
        reason,
    };
    {
        let mut list = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|o| {
            o.until_ms > from_ms && !(o.target == active.target && o.tenant == active.tenant)
        });
        list.push(active.clone());
    }
    if let Err(e) = state.accounts().save_override(&active) {
        tracing::error!(error = %e, "override not saved");
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the override is in force but could not be saved: a restart would end it",
            &uri,
        );
    }
    (StatusCode::CREATED, live_json(active)).into_response()
}

async fn clear_override(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Operator, &uri) {
        return r;
    }
    let req: TargetRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let target = match req.target(&auth, &uri) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let reason = match valid_reason(&req.reason, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    if let Err(r) = check_target(&auth, &target, &uri) {
        return r;
    }
    let now_ms = state.source.now_ms();
    let lamps = match state
        .source
        .set_override(auth.tenant(), &target, None, now_ms)
    {
        Ok(n) => n,
        Err(e) => return source_error(e, &uri),
    };
    let detail = serde_json::json!({ "lamps": lamps });
    if let Err(r) = write_audit(
        &state,
        &auth,
        audit_tenant(&auth, &target),
        "override-clear",
        &target.to_string(),
        &detail,
        &reason,
        &uri,
    ) {
        return r;
    }
    {
        let mut list = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|o| o.until_ms > now_ms && !(o.target == target && o.tenant == auth.0.tenant));
    }
    if let Err(e) = state.accounts().delete_override(&target, auth.tenant()) {
        tracing::error!(error = %e, "cleared override not forgotten");
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the override is cleared but could not be forgotten: a restart would apply it again",
            &uri,
        );
    }
    live_json(serde_json::json!({ "cleared": lamps }))
}

/// Overrides still in force that the caller may see.
async fn list_overrides(State(state): State<AppState>, auth: Auth) -> Response {
    let now_ms = state.source.now_ms();
    let mut list = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|o| o.until_ms > now_ms);
    let visible: Vec<ActiveOverride> = list
        .iter()
        .filter(|o| match auth.tenant() {
            None => true,
            Some(t) => {
                o.tenant.as_ref() == Some(t)
                    || matches!(&o.target, OverrideTarget::Zone { tenant, .. } if tenant == t)
            }
        })
        .cloned()
        .collect();
    live_json(serde_json::json!({ "now_ms": now_ms, "overrides": visible }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<u32>,
}

fn audit_entries(
    state: &AppState,
    auth: &Auth,
    q: &AuditQuery,
    default_limit: u32,
    uri: &Uri,
) -> Result<Vec<accounts::AuditEntry>, Response> {
    let limit = q.limit.unwrap_or(default_limit).clamp(1, 100_000);
    state
        .accounts()
        .audit_entries(
            auth.tenant(),
            q.from_ms.unwrap_or(0),
            q.to_ms.unwrap_or(i64::MAX),
            limit,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read the audit log");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the audit log",
                uri,
            )
        })
}

async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Query(q): Query<AuditQuery>,
) -> Response {
    match audit_entries(&state, &auth, &q, 200, &uri) {
        Ok(entries) => live_json(entries),
        Err(r) => r,
    }
}

async fn audit_csv(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Query(q): Query<AuditQuery>,
) -> Response {
    match audit_entries(&state, &auth, &q, 100_000, &uri) {
        Ok(entries) => match accounts::audit_csv(&entries) {
            Ok(csv) => (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"lamplighter-audit.csv\"",
                    ),
                ],
                csv,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "audit CSV");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot write the audit log as CSV",
                    &uri,
                )
            }
        },
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------
// Administration

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserRequest {
    username: String,
    password: String,
    role: Role,
    tenant: Option<TenantId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenRequest {
    role: Role,
    tenant: Option<TenantId>,
    #[serde(default)]
    label: String,
}

/// The tenant a new account gets: a tenant's admin can only make accounts of their tenant.
fn new_account_tenant(
    auth: &Auth,
    asked: Option<TenantId>,
    uri: &Uri,
) -> Result<Option<TenantId>, Response> {
    match (auth.tenant(), asked) {
        (None, asked) => Ok(asked),
        (Some(mine), None) => Ok(Some(mine.clone())),
        (Some(mine), Some(asked)) if &asked == mine => Ok(Some(asked)),
        (Some(_), Some(_)) => Err(json_error(
            StatusCode::FORBIDDEN,
            "you may only create accounts in your own tenant",
            uri,
        )),
    }
}

fn accounts_error(e: AccountsError, uri: &Uri) -> Response {
    match e {
        AccountsError::BadUsername(_)
        | AccountsError::BadPassword
        | AccountsError::BadRole(_)
        | AccountsError::BadLabel => json_error(StatusCode::BAD_REQUEST, &e.to_string(), uri),
        AccountsError::UserExists(_) => json_error(StatusCode::CONFLICT, &e.to_string(), uri),
        e => {
            tracing::error!(error = %e, "accounts");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "accounts database error",
                uri,
            )
        }
    }
}

async fn users(State(state): State<AppState>, auth: Auth, uri: Uri) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    match state.accounts().users(auth.tenant()) {
        Ok(u) => live_json(u),
        Err(e) => accounts_error(e, &uri),
    }
}

/// Runs `f` on the accounts off the async workers (argon2 is deliberately slow); its error,
/// or a panic, becomes the error response.
async fn accounts_blocking<T: Send + 'static>(
    state: &AppState,
    uri: &Uri,
    f: impl FnOnce(&mut Accounts) -> Result<T, AccountsError> + Send + 'static,
) -> Result<T, Response> {
    let accounts = state.accounts.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut a = accounts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut a)
    })
    .await;
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(accounts_error(e, uri)),
        Err(e) => Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
            uri,
        )),
    }
}

async fn add_user(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    let req: NewUserRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let tenant = match new_account_tenant(&auth, req.tenant, &uri) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (username, password, role, t) = (req.username, req.password, req.role, tenant.clone());
    let added = accounts_blocking(&state, &uri, move |a| {
        a.add_user(&username, &password, role, t.as_ref(), wall_ms())
            .map(|id| (id, username))
    })
    .await;
    let (id, username) = match added {
        Ok(v) => v,
        Err(r) => return r,
    };
    let detail = serde_json::json!({ "role": role, "tenant": tenant });
    if let Err(r) = write_audit(
        &state,
        &auth,
        tenant.as_ref(),
        "user-add",
        &format!("user {username}"),
        &detail,
        "",
        &uri,
    ) {
        return r;
    }
    (
        StatusCode::CREATED,
        live_json(
            serde_json::json!({ "id": id, "username": username, "role": role, "tenant": tenant }),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUserRequest {
    role: Option<Role>,
    /// A new password: the user's sessions end.
    password: Option<String>,
}

fn no_user(username: &str, uri: &Uri) -> Response {
    json_error(StatusCode::NOT_FOUND, &format!("no user {username:?}"), uri)
}

/// The user `username` if the calling admin may manage them: a tenant's admin manages only
/// that tenant's users. Anyone else is "not found", so an admin cannot probe other tenants'
/// names.
fn managed_user(
    state: &AppState,
    auth: &Auth,
    username: &str,
    uri: &Uri,
) -> Result<accounts::UserInfo, Response> {
    match state.accounts().user(username) {
        Ok(Some(u)) if auth.tenant().is_none() || u.tenant.as_ref() == auth.tenant() => Ok(u),
        Ok(_) => Err(no_user(username, uri)),
        Err(e) => Err(accounts_error(e, uri)),
    }
}

/// An admin changes a user's role or resets their password (or both).
async fn update_user(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(username): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    let req: UpdateUserRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    if req.role.is_none() && req.password.is_none() {
        return json_error(StatusCode::BAD_REQUEST, "give a role or a password", &uri);
    }
    let user = match managed_user(&state, &auth, &username, &uri) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if username == auth.0.username && req.role.is_some_and(|r| r != user.role) {
        // The last admin demoting themselves would leave nobody to undo it.
        return json_error(
            StatusCode::CONFLICT,
            "you cannot change your own role; ask another admin",
            &uri,
        );
    }
    let (name, role, password) = (username.clone(), req.role, req.password.clone());
    let updated = accounts_blocking(&state, &uri, move |a| {
        a.update_user(&name, role, password.as_deref())
    })
    .await;
    match updated {
        Ok(true) => {}
        Ok(false) => return no_user(&username, &uri),
        Err(r) => return r,
    }
    let detail = serde_json::json!({
        "role": req.role.unwrap_or(user.role),
        "password_reset": req.password.is_some(),
    });
    if let Err(r) = write_audit(
        &state,
        &auth,
        user.tenant.as_ref(),
        "user-update",
        &format!("user {username}"),
        &detail,
        "",
        &uri,
    ) {
        return r;
    }
    live_json(serde_json::json!({
        "username": username,
        "role": req.role.unwrap_or(user.role),
        "tenant": user.tenant,
    }))
}

/// An admin removes a user; their sessions end with them.
async fn remove_user(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(username): Path<String>,
) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    let user = match managed_user(&state, &auth, &username, &uri) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if username == auth.0.username {
        return json_error(
            StatusCode::CONFLICT,
            "you cannot remove yourself; ask another admin",
            &uri,
        );
    }
    match state.accounts().remove_user(&username) {
        Ok(true) => {}
        Ok(false) => return no_user(&username, &uri),
        Err(e) => return accounts_error(e, &uri),
    }
    let detail = serde_json::json!({ "role": user.role });
    if let Err(r) = write_audit(
        &state,
        &auth,
        user.tenant.as_ref(),
        "user-remove",
        &format!("user {username}"),
        &detail,
        "",
        &uri,
    ) {
        return r;
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// A logged-in user changes their own password, giving the current one. Every session of
/// theirs ends, this one too: they log in again with the new password.
async fn change_own_password(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !matches!(auth.1, Credential::Session(_)) {
        return json_error(
            StatusCode::FORBIDDEN,
            "an API token has no password; log in to change yours",
            &uri,
        );
    }
    let req: PasswordChange = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    // The same throttle as logins: a stolen session cannot guess the password here either.
    let user_key = format!("user:{}", auth.0.username.to_lowercase());
    if let Err(wait) = state.throttle.check(&user_key, Instant::now()) {
        return retry_after(&uri, wait);
    }
    let username = auth.0.username.clone();
    let changed = accounts_blocking(&state, &uri, move |a| {
        match a.check_password(&username, &req.current_password)? {
            None => Ok(false),
            Some(_) => a.update_user(&username, None, Some(&req.new_password)),
        }
    })
    .await;
    match changed {
        Ok(true) => {}
        Ok(false) => {
            state
                .throttle
                .fail(&user_key, throttle::FREE_FAILURES_PER_USER, Instant::now());
            return json_error(StatusCode::FORBIDDEN, "the current password is wrong", &uri);
        }
        Err(r) => return r,
    }
    let detail = serde_json::json!({});
    if let Err(r) = write_audit(
        &state,
        &auth,
        auth.tenant(),
        "password-change",
        &format!("user {}", auth.0.username),
        &detail,
        "",
        &uri,
    ) {
        return r;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn add_token(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth.require(Role::Admin, &uri) {
        return r;
    }
    let req: NewTokenRequest = match json_body(&headers, &body, &uri) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let tenant = match new_account_tenant(&auth, req.tenant, &uri) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let token = match state
        .accounts()
        .add_token(req.role, tenant.as_ref(), &req.label, wall_ms())
    {
        Ok(t) => t,
        Err(e) => return accounts_error(e, &uri),
    };
    let detail = serde_json::json!({ "role": req.role, "tenant": tenant, "label": req.label });
    if let Err(r) = write_audit(
        &state,
        &auth,
        tenant.as_ref(),
        "token-add",
        "token",
        &detail,
        "",
        &uri,
    ) {
        return r;
    }
    (
        StatusCode::CREATED,
        live_json(serde_json::json!({ "token": token, "role": req.role, "tenant": tenant })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Metrics, health, streams, errors

/// Town-wide counters: any account or token without a tenant; 403 for a tenant's.
async fn metrics(State(state): State<AppState>, auth: Auth, uri: Uri) -> Response {
    if auth.tenant().is_some() {
        return json_error(
            StatusCode::FORBIDDEN,
            "metrics cover every tenant; use an account or token without a tenant",
            &uri,
        );
    }
    (
        [
            (header::CONTENT_TYPE, METRICS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.source.metrics(),
    )
        .into_response()
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
    auth: Auth,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watch = state.clone();
    let source = state.source;
    let tenant = auth.0.tenant;
    let mut interval = tokio::time::interval(STREAM_INTERVAL);
    // A slow client gets the latest state, not a burst of stale ones.
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut first = true;
    // The stream ends once its session does (a logout, expiry) or its token goes: the
    // page then finds it logged out, and a revoked credential watches nothing.
    let credential = auth.1;
    let still_valid = move |_: &_| std::future::ready(credential.still_valid(&watch));
    let events = IntervalStream::new(interval)
        .take_while(still_valid)
        .flat_map(move |_| {
            let mut summary = json_event("summary", &source.summary(tenant.as_ref()));
            if std::mem::take(&mut first) {
                summary = summary.map(|e| e.retry(CLIENT_RETRY));
            }
            let zones = json_event("zones", &source.zones(tenant.as_ref()));
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
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn not_found(uri: Uri) -> Response {
    json_error(StatusCode::NOT_FOUND, "not found", &uri)
}

async fn method_not_allowed(uri: Uri) -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", &uri)
}
