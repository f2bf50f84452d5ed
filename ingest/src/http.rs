//! OwnTracks HTTP mode: `POST /pub`, as the apps send it (Basic auth per
//! device, `X-Limit-U`/`X-Limit-D`), into the same pipeline as MQTT. Bad
//! input gets a 4xx with a reason, never a 5xx.

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::constant_time_eq;
use shared::envelope::Transport;
use time::OffsetDateTime;

use crate::classify::{Classifier, Incoming, Verdict};
use crate::metrics::Metrics;
use crate::publish::{Publication, count, publish_until_stored};

#[derive(Clone)]
pub struct HttpState {
    pub classifier: Arc<Classifier>,
    pub js: jetstream::Context,
    pub metrics: Metrics,
}

pub fn router(state: HttpState) -> Router {
    // Twice the payload limit, so that a slightly larger body still gets a
    // `too_large` verdict (and lands on REJECTED) instead of a bare 413.
    let limit = state.classifier.config().ingest.max_payload_bytes * 2;
    Router::new()
        .route("/pub", post(publish))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The Recorder's query-string alternative to the headers.
#[derive(Debug, Deserialize)]
struct PubQuery {
    u: Option<String>,
    d: Option<String>,
}

async fn publish(
    State(state): State<HttpState>,
    Query(query): Query<PubQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = handle(&state, query, &headers, &body).await;
    let code = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[code.as_str()])
        .inc();
    response
}

fn error(code: StatusCode, reason: &str, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    (
        code,
        axum::Json(json!({ "error": reason, "detail": detail })),
    )
        .into_response()
}

async fn handle(state: &HttpState, query: PubQuery, headers: &HeaderMap, body: &[u8]) -> Response {
    let basic = match basic_auth(headers) {
        Some(creds) => creds,
        None => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"whereabouts\"")],
                axum::Json(json!({"error": "unauthorized", "detail": "Basic auth required"})),
            )
                .into_response();
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let user = header("x-limit-u")
        .or(query.u)
        .unwrap_or_else(|| basic.0.clone());
    let Some(device) = header("x-limit-d").or(query.d) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_device",
            "set X-Limit-D (the app's Device ID)",
        );
    };
    if user.is_empty() || device.is_empty() || user.contains('/') || device.contains('/') {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_device",
            "user and device must be non-empty, without '/'",
        );
    }
    let config = state.classifier.config();
    let household = config
        .ingest
        .devices
        .iter()
        .find(|e| e.user == user && e.device.as_deref().is_none_or(|d| d == device))
        .and_then(|e| e.household.clone())
        .unwrap_or_else(|| config.household_of_user(&user).to_string());
    let authorised = basic.0 == user
        && config
            .device_entry(&household, &user, &device)
            .and_then(|e| e.password.as_deref())
            .is_some_and(|p| constant_time_eq(p.as_bytes(), basic.1.as_bytes()));
    if !authorised {
        tracing::info!(%user, %device, "HTTP mode: authentication failed");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown device or wrong password",
        );
    }

    let topic = state
        .classifier
        .pattern()
        .topic_for(&household, &user, &device);
    let verdict = state.classifier.classify(&Incoming {
        topic: &topic,
        payload: body,
        retained: false,
        transport: Transport::Http,
        received_at: OffsetDateTime::now_utc(),
    });
    if let Some(publication) = Publication::from_verdict(&verdict) {
        // Answer only once stored: the app resends on an error, never twice
        // after a success.
        let stored = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            publish_until_stored(&state.js, publication, &state.metrics),
        )
        .await;
        if stored.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "message store unreachable; retry",
            );
        }
    }
    count(&state.metrics, &verdict, Transport::Http);
    match verdict {
        Verdict::Accepted { .. } | Verdict::Cleared => {
            let pattern = state.classifier.pattern();
            // Queued commands first (the apps act on them), then the family.
            let mut answer =
                crate::commands::take_pending(&state.js, &household, &user, &device).await;
            answer.extend(
                crate::friends::friends(&state.js, pattern, &household, &user, &device).await,
            );
            axum::Json(Value::Array(answer)).into_response()
        }
        Verdict::Rejected { reason, detail, .. } => {
            tracing::info!(%user, %device, reason = reason.as_str(), %detail, "HTTP payload rejected");
            let code = if reason == shared::owntracks::Reason::TooLarge {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            error(code, reason.as_str(), detail)
        }
    }
}

/// `(user, password)` from an `Authorization: Basic` header.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}
