//! Live state: the summary, lamps, zones and roads, and the event stream that pushes the
//! summary and the zones every [`STREAM_INTERVAL`].

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::IntervalStream;

use crate::auth::Viewer;
use crate::json::Live;
use crate::state::AppState;
use crate::{LampView, Road, Summary, ZoneView};

/// How often the event stream sends the summary and the zones.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting a dropped stream.
const CLIENT_RETRY: Duration = Duration::from_secs(2);

pub(crate) async fn summary(State(state): State<AppState>, auth: Viewer) -> Live<Summary> {
    Live(state.source.summary(auth.tenant()))
}

pub(crate) async fn lamps(State(state): State<AppState>, auth: Viewer) -> Live<Vec<LampView>> {
    Live(state.source.lamps(auth.tenant()))
}

pub(crate) async fn zones(State(state): State<AppState>, auth: Viewer) -> Live<Vec<ZoneView>> {
    Live(state.source.zones(auth.tenant()))
}

pub(crate) async fn roads(State(state): State<AppState>, auth: Viewer) -> Live<Vec<Road>> {
    Live(state.source.roads(auth.tenant()))
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    Viewer(auth): Viewer,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watch = state.clone();
    let source = state.source;
    let tenant = auth.tenant().cloned();
    let mut interval = tokio::time::interval(STREAM_INTERVAL);
    // A slow client gets the latest state, not a burst of stale ones.
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut first = true;
    // The stream ends once its session does (a logout, expiry) or its token goes: the
    // page then finds it logged out, and a revoked credential watches nothing.
    let credential = auth.credential().clone();
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
