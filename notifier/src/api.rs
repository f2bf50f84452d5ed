//! The HTTP API: snapshot and SSE per household, behind a per-household
//! bearer token (`?token=` for EventSource), plus the web board.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use shared::config::Config;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::live::{Live, LiveEvent};
use crate::metrics::Metrics;
use crate::people::People;

#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub people: People,
    pub live: Live,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/households/{household}/people", get(people))
        .route("/v1/households/{household}/events", get(events))
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

/// Lets the request through only for the household its token grants.
fn authorise(
    state: &ApiState,
    household: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<(), Denied> {
    let Some(config) = state.config.households.get(household) else {
        return Err(Denied(StatusCode::NOT_FOUND, "unknown_household"));
    };
    let Some(expected) = config.token.as_deref() else {
        return Ok(()); // An open household (no token configured): local use.
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query.token.as_deref());
    match presented {
        None => Err(Denied(StatusCode::UNAUTHORIZED, "token_required")),
        Some(t) if shared::config::constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(t) if state.config.household_for_token(t).is_some() => {
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
    let config = &state.config.households[household];
    let colors: serde_json::Map<String, serde_json::Value> = config
        .people
        .iter()
        .filter_map(|p| Some((p.name.clone(), json!(p.color.clone()?))))
        .collect();
    let states = state.people.household(household);
    let mut people: Vec<serde_json::Value> = states.iter().map(|s| json!(s)).collect();
    for person in &config.people {
        if !states.iter().any(|s| s.person == person.name) {
            people.push(json!({
                "household": household,
                "person": person.name,
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
    if let Err(denied) = authorise(&state, &household, &headers, &query) {
        return denied.into_response();
    }
    axum::Json(snapshot(&state, &household)).into_response()
}

async fn events(
    State(state): State<ApiState>,
    Path(household): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authorise(&state, &household, &headers, &query) {
        return denied.into_response();
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (tx, rx) = mpsc::channel(64);
    let rx_live = state.live.subscribe();
    let heartbeat = state.config.notifier.heartbeat;
    let shutdown = state.shutdown.clone();
    tokio::spawn(stream_events(state, household, last_event_id, rx_live, tx));
    // Streams end when shutdown starts, or the server would never stop.
    let stream = ReceiverStream::new(rx).take_until(shutdown.cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response()
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

fn presence_event(e: &LiveEvent) -> Event {
    Event::default()
        .event("presence")
        .id(e.seq.to_string())
        .data(&*e.json)
}

/// Feeds one SSE client: snapshot or replay, then the live broadcast.
async fn stream_events(
    state: ApiState,
    household: String,
    last_event_id: Option<u64>,
    mut live: broadcast::Receiver<Arc<LiveEvent>>,
    tx: Tx,
) {
    state.metrics.sse_clients.inc();
    let _gauge = scopeguard(state.metrics.sse_clients.clone());
    let resumable = match last_event_id {
        Some(id) => match state.live.stream_first_seq().await {
            Ok(first) => id + 1 >= first,
            Err(_) => false,
        },
        None => false,
    };
    let mut last_sent = match last_event_id {
        Some(id) if resumable => match replay(&state, &household, id, &tx).await {
            Some(seq) => seq,
            None => return,
        },
        _ => {
            // The sequence first, then the state: the state is at least as
            // new, and events after the sequence are applied on top.
            let seq = state.live.last_seq();
            let body = snapshot(&state, &household).to_string();
            let event = Event::default()
                .event("snapshot")
                .id(seq.to_string())
                .data(body);
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
            seq
        }
    };
    loop {
        match live.recv().await {
            Ok(e) => {
                if e.household != household || e.seq <= last_sent {
                    continue;
                }
                if tx.send(Ok(presence_event(&e))).await.is_err() {
                    return;
                }
                last_sent = e.seq;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Too slow for the broadcast: catch up from the stream.
                state.metrics.sse_lagged.inc_by(n);
                match replay(&state, &household, last_sent, &tx).await {
                    Some(seq) => last_sent = seq,
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
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
        if tx.send(Ok(presence_event(&event))).await.is_err() {
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
