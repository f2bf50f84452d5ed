//! The HTTP API: snapshot, SSE and a person's day per household, behind a
//! per-household bearer token (`?token=` for EventSource), plus the web board.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use shared::config::{Config, Household};
use shared::reload::LiveConfig;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::history;
use crate::live::{Feed, Live, LiveEvent, sse_frame};
use crate::metrics::Metrics;
use crate::people::People;
use crate::tasks::Tasks;

#[derive(Clone)]
pub(crate) struct ApiState {
    /// The config in force: each request reads one snapshot.
    pub(crate) config: LiveConfig,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) people: People,
    pub(crate) live: Live,
    pub(crate) metrics: Metrics,
    pub(crate) sse_slots: SseSlots,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: Tasks,
}

/// Open SSE streams per household, held against
/// `notifier.max_sse_clients_per_household`: one household's clients
/// (a reload loop, a leaked token) cannot take every connection.
#[derive(Clone, Default)]
pub(crate) struct SseSlots(Arc<Mutex<HashMap<String, usize>>>);

impl SseSlots {
    /// A slot for one more stream of `household`, if it has fewer than `max`.
    fn take(&self, household: &str, max: usize) -> Option<SseSlot> {
        let mut open = self.0.lock().unwrap();
        let count = open.entry(household.to_string()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SseSlot {
            slots: self.clone(),
            household: household.to_string(),
        })
    }
}

/// One open SSE stream; gives its slot back when the stream's task ends.
struct SseSlot {
    slots: SseSlots,
    household: String,
}

impl Drop for SseSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap();
        if let Some(count) = open.get_mut(&self.household) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.household);
            }
        }
    }
}

pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/households/{household}/people", get(people))
        .route("/v1/households/{household}/events", get(events))
        .route(
            "/v1/households/{household}/people/{person}/history",
            get(history),
        )
        .merge(crate::board::router())
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn error(code: StatusCode, reason: &str) -> Response {
    (code, axum::Json(json!({ "error": reason }))).into_response()
}

/// A refused request: status and reason code.
struct Denied(StatusCode, &'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Lets the request through only for the household its token grants;
/// returns that household's config.
fn authorise<'a>(
    config: &'a Config,
    household: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<&'a Household, Denied> {
    let Some(h) = config.households.get(household) else {
        return Err(Denied(StatusCode::NOT_FOUND, "unknown_household"));
    };
    let Some(expected) = h.token.as_deref() else {
        return Ok(h); // An open household (no token configured): local use.
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query.token.as_deref());
    match presented {
        None => Err(Denied(StatusCode::UNAUTHORIZED, "token_required")),
        Some(t) if shared::config::constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(h),
        Some(t) if config.household_for_token(t).is_some() => {
            Err(Denied(StatusCode::FORBIDDEN, "token_for_another_household"))
        }
        Some(_) => Err(Denied(StatusCode::UNAUTHORIZED, "invalid_token")),
    }
}

/// The snapshot body: the household's dial and every person's state. A
/// configured person without state yet (their phone has not spoken) is
/// listed as `{"household", "person", "name", "status": "unknown",
/// "devices": []}`, with no place, so that a board shows the household
/// from the first second.
fn snapshot(state: &ApiState, household: &str) -> serde_json::Value {
    let config = state.config.get();
    let Some(config) = config.households.get(household) else {
        // Removed by a reload since the request was let in.
        return json!({"household": household, "places": [], "labels": {}, "colors": {}, "people": []});
    };
    let colors: serde_json::Map<String, serde_json::Value> = config
        .people
        .iter()
        .filter_map(|p| Some((p.id().to_string(), json!(p.color.clone()?))))
        .collect();
    let states = state.people.household(household);
    let mut people: Vec<serde_json::Value> = states.iter().map(|s| json!(s)).collect();
    for person in &config.people {
        if !states.iter().any(|s| s.person == person.id()) {
            people.push(json!({
                "household": household,
                "person": person.id(),
                "name": person.name,
                "status": "unknown",
                "devices": [],
            }));
        }
    }
    json!({
        "household": household,
        "places": config.places,
        "labels": config.labels,
        "colors": colors,
        "people": people,
    })
}

async fn people(
    State(state): State<ApiState>,
    Path(household): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authorise(&state.config.get(), &household, &headers, &query) {
        return denied.into_response();
    }
    axum::Json(snapshot(&state, &household)).into_response()
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    token: Option<String>,
    /// RFC 3339; default: the start of today (`history::day_start`).
    since: Option<String>,
}

/// A person's places since `since` (at most a day back), from PRESENCE.
async fn history(
    State(state): State<ApiState>,
    Path((household, person)): Path<(String, String)>,
    Query(query): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Response {
    let token = TokenQuery {
        token: query.token.clone(),
    };
    let config = state.config.get();
    let household_config = match authorise(&config, &household, &headers, &token) {
        Ok(h) => h,
        Err(denied) => return denied.into_response(),
    };
    let current = state
        .people
        .household(&household)
        .into_iter()
        .find(|s| s.person == person);
    let configured = household_config.person(&person).is_some();
    if current.is_none() && !configured {
        return error(StatusCode::NOT_FOUND, "unknown_person");
    }
    let now = time::OffsetDateTime::now_utc();
    let since = match query.since.as_deref() {
        None => household_config.day_start(now),
        Some(s) => {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t,
                Err(_) => return error(StatusCode::BAD_REQUEST, "bad_since"),
            }
        }
    };
    let since = since
        .max(now - history::MAX_WINDOW)
        .to_offset(time::UtcOffset::UTC);
    let (events, more) = match history::read(&state.js, &household, &person, since).await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(%household, %person, error = format!("{e:#}"), "cannot read a person's history");
            return error(StatusCode::SERVICE_UNAVAILABLE, "history_unavailable");
        }
    };
    let mut timeline = history::stays(&events, current.as_ref());
    let cut = history::bound(&mut timeline);
    axum::Json(history::History {
        household,
        person,
        since,
        timeline,
        truncated: more || cut,
    })
    .into_response()
}

async fn events(
    State(state): State<ApiState>,
    Path(household): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let config = state.config.get();
    if let Err(denied) = authorise(&config, &household, &headers, &query) {
        return denied.into_response();
    }
    let max = config.notifier.max_sse_clients_per_household;
    let Some(slot) = state.sse_slots.take(&household, max) else {
        state.metrics.sse_refused.inc();
        tracing::warn!(%household, max, "SSE client refused: the household has too many streams open");
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "too_many_sse_clients");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
        return response;
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (tx, rx) = mpsc::channel(64);
    let rx_live = state.live.subscribe();
    let shutdown = state.shutdown.clone();
    state.tasks.clone().spawn(async move {
        stream_events(state, household, last_event_id, rx_live, tx).await;
        drop(slot);
    });
    // Streams end when shutdown starts, or the server would never stop.
    let stream = ReceiverStream::new(rx)
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// SSE frames, written to the client as they are: a live event's frame is
/// the one [`LiveEvent`] shares with every client.
type Tx = mpsc::Sender<Bytes>;

/// What is sent after `heartbeat` without an event: an SSE comment.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

fn presence_event(e: &LiveEvent) -> Bytes {
    e.frame.clone()
}

/// Feeds one SSE client: snapshot or replay, then the live broadcast.
async fn stream_events(
    state: ApiState,
    household: String,
    last_event_id: Option<u64>,
    mut live: broadcast::Receiver<Arc<Feed>>,
    tx: Tx,
) {
    state.metrics.sse_clients.inc();
    let _gauge = scopeguard(state.metrics.sse_clients.clone());
    let first = match last_event_id {
        Some(id) => resume(&state, &household, id, &tx).await,
        None => send_snapshot(&state, &household, state.live.last_seq(), &tx).await,
    };
    let Some(mut last_sent) = first else { return };
    let mut config = state.config.clone();
    let token = household_token(&config.get(), &household);
    let heartbeat = config.get().notifier.heartbeat;
    let idle = tokio::time::sleep(heartbeat);
    tokio::pin!(idle);
    loop {
        let next = tokio::select! {
            // Gone: give the slot back now, not at the household's next event.
            _ = tx.closed() => return,
            reloaded = config.changed() => {
                // A rotated token (or a household removed) ends the streams
                // it let in: the client must come back with the new one.
                if household_token(&reloaded, &household) != token {
                    tracing::info!(%household, "SSE stream closed: the household's token changed");
                    return;
                }
                continue;
            }
            () = &mut idle => {
                if tx.send(Bytes::from_static(HEARTBEAT)).await.is_err() {
                    return;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                continue;
            }
            next = live.recv() => next,
        };
        let sent = match next {
            Ok(feed) => match &*feed {
                Feed::Event(e) => {
                    if e.household != household || e.seq <= last_sent {
                        continue;
                    }
                    if tx.send(presence_event(e)).await.is_err() {
                        return;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                    Some(e.seq)
                }
                // The stream went back: the client's position means nothing now.
                Feed::Reset { seq } => send_snapshot(&state, &household, *seq, &tx).await,
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Too slow for the broadcast: catch up from the stream.
                state.metrics.sse_lagged.inc_by(n);
                resume(&state, &household, last_sent, &tx).await
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match sent {
            Some(seq) => last_sent = seq,
            None => return,
        }
    }
}

/// The household's token, `None` for an open one, `Some(None)` when gone.
fn household_token(config: &Config, household: &str) -> Option<Option<String>> {
    config.households.get(household).map(|h| h.token.clone())
}

/// Sends what the client missed after `after`: the events from the stream
/// when it still holds them all, else a snapshot — also when `after` is
/// beyond the stream's end (a recreated stream, a restored volume), where
/// a replay would send nothing until the sequence passed it. Returns the
/// last sequence sent, or `None` once the client is gone.
async fn resume(state: &ApiState, household: &str, after: u64, tx: &Tx) -> Option<u64> {
    match state.live.stream_bounds().await {
        Ok(b) if after.saturating_add(1) >= b.first && after <= b.last => {
            replay(state, household, after, tx).await
        }
        Ok(_) => send_snapshot(state, household, state.live.last_seq(), tx).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read PRESENCE to resume; sending a snapshot");
            send_snapshot(state, household, state.live.last_seq(), tx).await
        }
    }
}

/// A `snapshot` event with id `seq`; returns `seq`, or `None` once the
/// client is gone. The caller reads `seq` before the state: the state is
/// at least as new, and events after `seq` are applied on top.
async fn send_snapshot(state: &ApiState, household: &str, seq: u64, tx: &Tx) -> Option<u64> {
    let body = snapshot(state, household).to_string();
    let (frame, _) = sse_frame("snapshot", seq, &body);
    tx.send(frame).await.ok()?;
    Some(seq)
}

/// Sends the household's events after `after` from the stream; returns the
/// last sequence sent, or `None` once the client is gone.
async fn replay(state: &ApiState, household: &str, after: u64, tx: &Tx) -> Option<u64> {
    let mut last = after;
    let pending = match state.live.pending(household, after).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot replay; continuing live");
            return Some(after);
        }
    };
    if pending == 0 {
        return Some(after);
    }
    let events = match state.live.ordered(household, after + 1).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot replay; continuing live");
            return Some(after);
        }
    };
    let mut events = std::pin::pin!(events.take(pending as usize));
    while let Some(event) = events.next().await {
        let Ok(event) = event else { break };
        if tx.send(presence_event(&event)).await.is_err() {
            return None;
        }
        last = event.seq;
    }
    Some(last)
}

/// Decrements the SSE client gauge when the client's task ends.
fn scopeguard(gauge: prometheus::IntGauge) -> impl Drop {
    struct Guard(prometheus::IntGauge);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Guard(gauge)
}
