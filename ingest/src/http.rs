//! OwnTracks HTTP mode: `POST /pub`, as the apps send it (Basic auth per
//! device, `X-Limit-U`/`X-Limit-D`), into the same pipeline as MQTT.
//!
//! Android retries a message that gets any non-2xx answer at the head of
//! its queue, for a week: one bad message would block every later one. So
//! whatever is received and kept (on OWNTRACKS, or on REJECTED with its
//! reason) is answered 200 with the usual array (queued commands, friends);
//! 401 only for bad credentials, 429 while a client address is locked out
//! after repeated failures, 503 only when the message could not be stored.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::{Config, constant_time_eq};
use shared::envelope::Transport;
use shared::limits::{MAX_TOPIC_LEVEL_BYTES, truncate_utf8};
use shared::owntracks::Reason;
use shared::subjects::REASON_HEADER;
use time::OffsetDateTime;

use crate::classify::{Classifier, Incoming, Verdict};
use crate::metrics::Metrics;
use crate::publish::{Outcome, Publication, count_stored, publish_until_stored};

/// Wrong credentials from one client address within [`FAILURE_WINDOW`]
/// that lock the address out for [`LOCKOUT`].
pub(crate) const MAX_AUTH_FAILURES: u32 = 10;
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const LOCKOUT: Duration = Duration::from_secs(60);

/// Client addresses tracked at once; beyond it the oldest windows are
/// forgotten (memory stays bounded under a spray of addresses).
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Bytes of an oversized body read (and discarded) so that the phone gets
/// its answer; beyond it the connection is closed after the answer.
const MAX_DRAIN_BYTES: usize = 16 << 20;

/// How long storing one message may take before the phone gets a 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) js: jetstream::Context,
    pub(crate) metrics: Metrics,
    pub(crate) failures: Arc<AuthFailures>,
}

pub(crate) fn router(state: HttpState) -> Router {
    // The body is read by the handler itself, after the credentials are
    // checked and with its own bound: no extractor limit applies.
    Router::new().route("/pub", post(publish)).with_state(state)
}

/// The Recorder's query-string alternative to the headers.
#[derive(Debug, Default, Deserialize)]
struct PubQuery {
    u: Option<String>,
    d: Option<String>,
}

async fn publish(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<PubQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| {
        client_address(
            addr.ip(),
            &headers,
            &state.classifier.config().ingest.trusted_proxies,
        )
    });
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let response = handle(&state, peer, query, &headers, body).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

fn error(code: StatusCode, reason: &str, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    (code, Json(json!({ "error": reason, "detail": detail }))).into_response()
}

fn unauthorized(detail: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"whereabouts\"")],
        Json(json!({"error": "unauthorized", "detail": detail})),
    )
        .into_response()
}

async fn handle(
    state: &HttpState,
    peer: Option<IpAddr>,
    query: PubQuery,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // Everything up to the password check uses the headers only: a client
    // without valid credentials never gets its body read.
    let Some((basic_user, password)) = basic_auth(headers) else {
        return unauthorized("Basic auth required");
    };
    if let Some(retry_after) = peer.and_then(|ip| state.failures.locked(ip)) {
        let seconds = retry_after.as_secs().max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from(seconds))],
            Json(json!({"error": "too_many_failures", "detail": "too many wrong credentials; retry later"})),
        )
            .into_response();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let user = header("x-limit-u")
        .or(query.u)
        .unwrap_or_else(|| basic_user.clone());
    let device = header("x-limit-d").or(query.d).filter(|d| !d.is_empty());
    let config = state.classifier.config();
    let household = household_of(&config, &user, device.as_deref());
    if basic_user != user || !authenticate(&config, &household, &user, device.as_deref(), &password)
    {
        tracing::info!(
            user = truncate_utf8(&user, MAX_TOPIC_LEVEL_BYTES),
            device = truncate_utf8(device.as_deref().unwrap_or(""), MAX_TOPIC_LEVEL_BYTES),
            peer = ?peer,
            "HTTP mode: authentication failed"
        );
        if let Some(ip) = peer
            && state.failures.fail(ip)
        {
            state.metrics.http_lockouts.inc();
            tracing::warn!(%ip, failures = MAX_AUTH_FAILURES, lockout_s = LOCKOUT.as_secs(), "HTTP mode: client address locked out after repeated wrong credentials");
        }
        return unauthorized("unknown device or wrong password");
    }

    let limit = config.ingest.max_payload_bytes;
    let (payload, total) = match read_body(body, limit + 1).await {
        Ok(read) => read,
        // The client went away (or stalled past the request timeout):
        // nothing was received, so nothing is kept.
        Err(e) => {
            tracing::info!(error = %e, "HTTP mode: body not received");
            return error(StatusCode::BAD_REQUEST, "incomplete_body", e.to_string());
        }
    };

    // A name that cannot be a topic level (missing, empty, `/`, wildcards)
    // becomes an empty level: the classifier rejects the topic, and the
    // payload is kept on REJECTED under `_`.
    let level = |name: &str| {
        if name.is_empty() || name.contains(['/', '+', '#']) {
            String::new()
        } else {
            name.to_string()
        }
    };
    let identified = device.as_deref().map(level).filter(|d| !d.is_empty());
    let topic = state.classifier.pattern().topic_for(
        &household,
        &level(&user),
        identified.as_deref().unwrap_or(""),
    );
    let verdict = state.classifier.classify(&Incoming {
        topic: &topic,
        payload: &payload,
        retained: false,
        transport: Transport::Http,
        received_at: OffsetDateTime::now_utc(),
    });
    let mut stored = Outcome::Stored;
    if let Some(publication) = Publication::from_verdict(&verdict) {
        // Answer only once stored: the app resends on an error, never twice
        // after a success.
        let outcome = tokio::time::timeout(
            STORE_TIMEOUT,
            publish_until_stored(&state.js, publication, &state.metrics),
        )
        .await;
        match outcome {
            Ok(outcome) => stored = outcome,
            Err(_) => {
                tracing::warn!("HTTP mode: message not stored in time; answered 503");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, HeaderValue::from(10))],
                    Json(json!({"error": "unavailable", "detail": "message store unreachable; retry"})),
                )
                    .into_response();
            }
        }
    }
    count_stored(&state.metrics, &verdict, stored, Transport::Http);

    let mut reason = None;
    let mut own_tid = None;
    match &verdict {
        Verdict::Accepted { envelope, .. } => {
            own_tid = envelope
                .message
                .get("tid")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        Verdict::Rejected {
            reason: r, detail, ..
        } => {
            tracing::info!(
                user = truncate_utf8(&user, MAX_TOPIC_LEVEL_BYTES),
                device = truncate_utf8(device.as_deref().unwrap_or(""), MAX_TOPIC_LEVEL_BYTES),
                reason = r.as_str(),
                %detail,
                bytes = total,
                "HTTP payload rejected; kept on REJECTED"
            );
            reason = Some(r.as_str());
        }
        Verdict::Cleared => {}
    }
    // Refused for good by NATS (diverted to REJECTED, or dropped): a 2xx all
    // the same, since resending the same bytes cannot help; the header says
    // why.
    if stored != Outcome::Stored {
        reason = Some(Reason::StoreRefused.as_str());
    }

    // The usual answer, for a rejected message too: the phone must not
    // miss its commands and friends because one message was bad.
    let mut answer = Vec::new();
    if let Some(device) = &identified {
        let pattern = state.classifier.pattern();
        // Queued commands first (the apps act on them), then the family.
        answer = crate::commands::queue::take_pending(&state.js, &household, &user, device).await;
        answer.extend(
            crate::friends::friends(
                &state.js,
                pattern,
                state.classifier.config().households.get(&household),
                &household,
                &user,
                device,
                own_tid.as_deref(),
            )
            .await,
        );
    }
    let mut response = Json(Value::Array(answer)).into_response();
    if let Some(reason) = reason {
        response
            .headers_mut()
            .insert(REASON_HEADER, HeaderValue::from_static(reason));
    }
    response
}

/// The household of an HTTP-mode device: its credentials entry's, else the
/// user's.
fn household_of(config: &Config, user: &str, device: Option<&str>) -> String {
    config
        .ingest
        .devices
        .iter()
        .find(|e| e.user == user && e.device.as_deref().is_none_or(|d| Some(d) == device))
        .and_then(|e| e.household.clone())
        .unwrap_or_else(|| config.household_of_user(user).to_string())
}

/// Whether `password` is the device's (or, with no device named, one of the
/// user's devices': the message then lands on REJECTED, unidentified).
fn authenticate(
    config: &Config,
    household: &str,
    user: &str,
    device: Option<&str>,
    password: &str,
) -> bool {
    let matches =
        |p: Option<&str>| p.is_some_and(|p| constant_time_eq(p.as_bytes(), password.as_bytes()));
    match device {
        Some(device) => matches(
            config
                .device_entry(household, user, device)
                .and_then(|e| e.password.as_deref()),
        ),
        None => config.ingest.devices.iter().any(|e| {
            e.user == user
                && e.household.as_deref().is_none_or(|h| h == household)
                && matches(e.password.as_deref())
        }),
    }
}

/// The first `keep` bytes of the body and its whole length. At most
/// [`MAX_DRAIN_BYTES`] are read; the rest is left unread.
async fn read_body(body: Body, keep: usize) -> Result<(Vec<u8>, usize), axum::Error> {
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len();
        if kept.len() < keep {
            let take = chunk.len().min(keep - kept.len());
            kept.extend_from_slice(&chunk[..take]);
        }
        if total > MAX_DRAIN_BYTES {
            break;
        }
    }
    Ok((kept, total))
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the nearest `X-Forwarded-For` hop that is not one.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|hop| !trusted.contains(hop))
        .unwrap_or(peer)
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

/// Wrong-credential counts per client address, for the lockout.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    window_start: Instant,
    count: u32,
    locked_until: Option<Instant>,
}

impl AuthFailures {
    /// How long `ip` stays locked out, if it is.
    pub(crate) fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.by_address.lock().expect("failure map lock");
        let until = map.get(&ip)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; true when it starts a lockout (log and count it
    /// once).
    pub(crate) fn fail(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.by_address.lock().expect("failure map lock");
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(f.window_start) < FAILURE_WINDOW
            });
            if map.len() >= MAX_TRACKED_ADDRESSES {
                // All recent: forget an arbitrary one rather than grow.
                if let Some(any) = map.keys().next().copied() {
                    map.remove(&any);
                }
            }
        }
        let entry = map.entry(ip).or_insert(Failures {
            window_start: now,
            count: 0,
            locked_until: None,
        });
        if now.duration_since(entry.window_start) >= FAILURE_WINDOW
            || entry.locked_until.is_some_and(|u| u <= now)
        {
            *entry = Failures {
                window_start: now,
                count: 0,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= MAX_AUTH_FAILURES && entry.locked_until.is_none() {
            entry.locked_until = Some(now + LOCKOUT);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_after_the_tenth_failure_per_address() {
        let failures = AuthFailures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 1..MAX_AUTH_FAILURES {
            assert!(!failures.fail(a));
            assert!(failures.locked(a).is_none());
        }
        assert!(failures.fail(a), "the tenth failure starts the lockout");
        assert!(failures.locked(a).unwrap() > LOCKOUT - Duration::from_secs(1));
        assert!(!failures.fail(a), "a lockout is reported once");
        assert!(
            failures.locked(b).is_none(),
            "other addresses are not affected"
        );
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
        assert_eq!(
            client_address(proxy, &headers, &[proxy]),
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "the hop the proxy saw, not what the client claims before it"
        );
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn authentication_needs_the_devices_password() {
        let config = Config::from_toml(
            r#"
[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"
"#,
        )
        .unwrap();
        assert!(authenticate(
            &config,
            "home",
            "jane",
            Some("phone"),
            "s3cret"
        ));
        assert!(!authenticate(
            &config,
            "home",
            "jane",
            Some("phone"),
            "guess"
        ));
        assert!(!authenticate(
            &config,
            "home",
            "jane",
            Some("tablet"),
            "s3cret"
        ));
        assert!(authenticate(&config, "home", "jane", None, "s3cret"));
        assert!(!authenticate(&config, "home", "bob", None, "s3cret"));
    }
}
