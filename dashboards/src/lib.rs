//! The engineers' web dashboard: one page and the JSON API behind it, served by axum.
//!
//! # Design
//!
//! The dashboard keeps no copy of the live state. Everything it shows comes from a
//! [`LiveSource`] (`source.rs`), which the controller service implements over its shared
//! handle on the core; each request (and each tick of each live stream) asks the source
//! afresh, so there is no second copy of the truth to drift. The source's methods are
//! synchronous and are called straight from the request handlers: implementations should
//! take a snapshot under a short lock and return, never wait on I/O. The dashboard owns no
//! operational state: overrides in force and zones' settings are kept by the source (the
//! controller's store, `controller::overrides`), and the accounts file holds only accounts,
//! sessions, tokens and the audit log.
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
//! # Where things are
//!
//! - This file: the route table ([`router`]) and [`serve`].
//! - `routes/`: the handlers, one file per resource: `session` (login, logout, me, own
//!   password), `page` (the page and its assets), `live` (summary, lamps, zones, roads,
//!   stream), `history`, `faults`, `energy`, `zones` (settings), `overrides`, `audit`,
//!   `users` (users and tokens), `ops` (metrics, healthz).
//! - `auth.rs`: who is calling. `Auth` checks the session cookie (with its CSRF token on a
//!   state-changing request) or the bearer token; `Viewer`, `Operator` and `Admin` add the
//!   least role a route needs. A handler that takes one serves that caller, limited to
//!   their tenant, and says nothing more about access.
//! - `error.rs`: `ApiError`, each kind with its status once. Its message waits in a
//!   response extension, and one layer writes every error body with the request's path, so
//!   handlers return `Result<_, ApiError>` and never see the URI.
//! - `json.rs`: `AppJson`, the request body extractor (415 without
//!   `Content-Type: application/json`, 400 with serde's words), and `Live`, a JSON answer
//!   marked `no-store`.
//! - `audit.rs`: writing one audit line for an action; `state.rs`: what handlers share.
//! - [`accounts`]: users, tokens, sessions, the audit log and saved settings in SQLite;
//!   [`throttle`]: failed-login backoff.
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

pub mod accounts;
mod audit;
mod auth;
mod error;
mod json;
mod routes;
mod source;
mod state;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::{get, post, put};
use axum::Router;
use tokio::sync::watch;

pub use accounts::{Accounts, AccountsError, Principal, Role};
pub use lamplighter_controller::core::{LampView, Summary, ZoneSettings, ZoneView};
pub use lamplighter_controller::faults::{Fault, FaultCounts, FaultId};
pub use lamplighter_controller::store::{EnergySummary, HistoryPoint};
pub use routes::energy::MAX_HALF_HOURLY_S;
pub use routes::live::STREAM_INTERVAL;
pub use source::{
    ActiveOverride, CommandRecord, LampHistory, LiveSource, OverrideTarget, Road, SourceError,
};
pub use state::DashboardOptions;

use state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ll_session";
/// The header a browser session echoes its CSRF token in on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The longest override: a week.
pub const MAX_OVERRIDE_S: u64 = 7 * 86_400;
/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// The content type Prometheus expects for its text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Unix ms on the wall clock (sessions and audit lines use it).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The dashboard's routes over `source`, ready to serve or to nest in a larger router.
/// Login throttling by address needs [`axum::extract::ConnectInfo`]; without it all
/// clients share one key.
pub fn router(
    source: Arc<dyn LiveSource>,
    accounts: Accounts,
    options: DashboardOptions,
) -> Router {
    build_router(AppState::new(source, accounts, options, None))
}

fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(routes::page::index))
        .route("/assets/app.js", get(routes::page::app_js))
        .route("/assets/app.css", get(routes::page::app_css))
        .route("/api/v1/login", post(routes::session::login))
        .route("/api/v1/logout", post(routes::session::logout))
        .route("/api/v1/me", get(routes::session::me))
        .route(
            "/api/v1/me/password",
            post(routes::session::change_own_password),
        )
        .route("/api/v1/summary", get(routes::live::summary))
        .route("/api/v1/lamps", get(routes::live::lamps))
        .route("/api/v1/zones", get(routes::live::zones))
        .route("/api/v1/roads", get(routes::live::roads))
        .route("/api/v1/stream", get(routes::live::stream))
        .route(
            "/api/v1/lamps/{lamp}/history",
            get(routes::history::lamp_history),
        )
        .route(
            "/api/v1/zones/{tenant}/{zone}/history",
            get(routes::history::zone_history),
        )
        .route(
            "/api/v1/zones/{tenant}/{zone}/settings",
            get(routes::zones::zone_settings).put(routes::zones::set_zone_settings),
        )
        .route("/api/v1/faults", get(routes::faults::faults))
        .route(
            "/api/v1/faults/{id}/acknowledge",
            post(routes::faults::acknowledge_fault),
        )
        .route(
            "/api/v1/faults/{id}/clear",
            post(routes::faults::clear_fault),
        )
        .route("/api/v1/energy", get(routes::energy::energy))
        .route(
            "/api/v1/energy/half-hourly.csv",
            get(routes::energy::half_hourly),
        )
        .route(
            "/api/v1/overrides",
            get(routes::overrides::list_overrides).post(routes::overrides::set_override),
        )
        .route(
            "/api/v1/overrides/clear",
            post(routes::overrides::clear_override),
        )
        .route("/api/v1/audit", get(routes::audit::audit))
        .route("/api/v1/audit.csv", get(routes::audit::audit_csv))
        .route(
            "/api/v1/users",
            get(routes::users::users).post(routes::users::add_user),
        )
        .route(
            "/api/v1/users/{username}",
            put(routes::users::update_user).delete(routes::users::remove_user),
        )
        .route("/api/v1/tokens", post(routes::users::add_token))
        .route("/metrics", get(routes::ops::metrics))
        .route("/healthz", get(routes::ops::healthz))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Last, so that it sees every answer above, fallbacks and rejections included.
        .layer(axum::middleware::map_response(error::render_error_bodies))
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
    let app = build_router(AppState::new(source, accounts, options, Some(shutdown_rx)));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
