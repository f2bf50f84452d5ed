//! Publishing verdicts to JetStream, retrying transient errors until
//! acknowledged: a message is acknowledged to its sender (MQTT broker, HTTP
//! client) only after this. Permanent errors are never retried, so one bad
//! message cannot hold up the others.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::subject::SubjectError;
use bytes::Bytes;
use shared::envelope::Transport;
use shared::owntracks::Reason;
use shared::subjects::{self, REASON_HEADER};

use crate::classify::{MAX_REJECTED_BYTES, Verdict};
use crate::metrics::{Metrics, Refusal, Stream};

/// A verdict serialised and ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    stream: Stream,
    /// Where an accepted message goes if JetStream refuses it for good.
    fallback: Option<Box<Publication>>,
}

impl Publication {
    /// `None` for verdicts that publish nothing (cleared payloads).
    pub(crate) fn from_verdict(verdict: &Verdict) -> Option<Publication> {
        match verdict {
            Verdict::Accepted {
                subject,
                msg_id,
                envelope,
                ..
            } => {
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
                let payload =
                    Bytes::from(serde_json::to_vec(envelope).expect("envelope serialises"));
                let kept = payload.slice(..MAX_REJECTED_BYTES.min(payload.len()));
                let fallback = Verdict::Rejected {
                    subject: subjects::rejected(
                        Some(&envelope.household),
                        Some(&envelope.user),
                        Some(&envelope.device),
                    ),
                    msg_id: format!("refused-{msg_id}"),
                    reason: Reason::StoreRefused,
                    detail: String::new(),
                    payload: kept,
                };
                Some(Publication {
                    subject: subject.clone(),
                    headers,
                    payload,
                    stream: Stream::Owntracks,
                    fallback: Publication::from_verdict(&fallback).map(Box::new),
                })
            }
            Verdict::Rejected {
                subject,
                msg_id,
                reason,
                payload,
                ..
            } => {
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
                headers.insert(REASON_HEADER, reason.as_str());
                Some(Publication {
                    subject: subject.clone(),
                    headers,
                    payload: payload.clone(),
                    stream: Stream::Rejected,
                    fallback: None,
                })
            }
            Verdict::Cleared => None,
        }
    }
}

/// What became of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stored where it was meant to go.
    Stored,
    /// Refused for good on OWNTRACKS, kept on REJECTED as `store_refused`.
    Diverted,
    /// Refused for good, and nowhere to keep it: counted, logged, dropped.
    Dropped,
}

/// Why a publish failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// NATS unreachable, a timeout, no stream answering: retry.
    Transient,
    /// Retrying cannot help; the label of `ingest_publish_failures_total`.
    Permanent(Refusal),
}

/// Sorts a JetStream publish error into transient and permanent.
pub(crate) fn classify_error(error: &PublishError) -> Failure {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => return Failure::Permanent(Refusal::MaxPayload),
        PublishErrorKind::Other => {}
        // Timeouts, broken pipes, no responders (JetStream not up yet, or the
        // stream being recreated), ack backpressure: all pass.
        _ => return Failure::Transient,
    }
    let source = std::error::Error::source(error);
    if source.is_some_and(|s| s.is::<SubjectError>()) {
        return Failure::Permanent(Refusal::InvalidSubject);
    }
    match source.and_then(|s| s.downcast_ref::<jetstream::Error>()) {
        // The server answered and said no; only a shortage may pass.
        Some(api) => {
            let code = api.error_code();
            let shortage = [
                ErrorCode::INSUFFICIENT_RESOURCES,
                ErrorCode::STORAGE_RESOURCES_EXCEEDED,
                ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
                ErrorCode::TEMP_STORAGE_FAILED,
                ErrorCode::JETSTREAM_NOT_ENABLED,
                ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
                ErrorCode::CLUSTER_NOT_AVAILABLE,
                ErrorCode::CLUSTER_NO_PEERS,
                ErrorCode::CLUSTER_INCOMPLETE,
                ErrorCode::RAFT_GENERAL,
            ];
            // "duplicate message id is in process": on a cluster another
            // ingest is storing the same message; a retry gets its ack.
            if shortage.contains(&code) || code == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT {
                Failure::Transient
            } else {
                Failure::Permanent(Refusal::Refused)
            }
        }
        // The client's channel closed, an unreadable ack: connection trouble.
        None => Failure::Transient,
    }
}

/// Counts a verdict once it is stored (or, for `Cleared`, accepted).
pub(crate) fn count(metrics: &Metrics, verdict: &Verdict, transport: Transport) {
    match verdict {
        Verdict::Accepted { kind, .. } => metrics
            .messages
            .with_label_values(&[kind.as_str(), transport.as_str()])
            .inc(),
        Verdict::Rejected { reason, .. } => metrics
            .rejected
            .with_label_values(&[reason.as_str(), transport.as_str()])
            .inc(),
        Verdict::Cleared => metrics
            .cleared
            .with_label_values(&[transport.as_str()])
            .inc(),
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Counts a message by where it ended: its verdict when stored as meant, a
/// `store_refused` reject when diverted to REJECTED; a dropped one is
/// already counted in `ingest_publish_failures_total`.
pub(crate) fn count_stored(
    metrics: &Metrics,
    verdict: &Verdict,
    stored: Outcome,
    transport: Transport,
) {
    match stored {
        Outcome::Stored => count(metrics, verdict, transport),
        Outcome::Diverted => metrics
            .rejected
            .with_label_values(&[Reason::StoreRefused.as_str(), transport.as_str()])
            .inc(),
        Outcome::Dropped => {}
    }
}

/// Publishes and waits for the JetStream ack, retrying transient errors
/// with jittered exponential backoff for as long as it takes. Retrying is
/// safe: the `Nats-Msg-Id` makes JetStream drop the copies. A permanent
/// error is never retried: it is counted and logged once, and an accepted
/// message goes to its REJECTED fallback instead.
pub(crate) async fn publish_until_stored(
    js: &jetstream::Context,
    p: Publication,
    metrics: &Metrics,
) -> Outcome {
    let mut p = p;
    let mut diverted = false;
    loop {
        match publish_once_stored(js, &p, metrics).await {
            Ok(()) if diverted => return Outcome::Diverted,
            Ok(()) => return Outcome::Stored,
            Err(refusal) => {
                metrics
                    .publish_failures
                    .with_label_values(&[p.stream.as_str(), refusal.as_str()])
                    .inc();
                let Some(fallback) = p.fallback.take() else {
                    tracing::error!(subject = %p.subject, stream = p.stream.as_str(), error = refusal.as_str(), bytes = p.payload.len(), "JetStream refused the message for good: dropped");
                    return Outcome::Dropped;
                };
                tracing::error!(subject = %p.subject, stream = p.stream.as_str(), error = refusal.as_str(), bytes = p.payload.len(), "JetStream refused the message for good: kept on REJECTED as store_refused");
                p = *fallback;
                diverted = true;
            }
        }
    }
}

/// Retries `p` until stored (`Ok`) or refused for good (`Err`).
async fn publish_once_stored(
    js: &jetstream::Context,
    p: &Publication,
    metrics: &Metrics,
) -> Result<(), Refusal> {
    let mut backoff = shared::retry::Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let started = Instant::now();
        let result = match js
            .publish_with_headers(p.subject.clone(), p.headers.clone(), p.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(()) => {
                metrics
                    .publish_seconds
                    .with_label_values(&[p.stream.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(e) => e,
        };
        if let Failure::Permanent(refusal) = classify_error(&error) {
            tracing::debug!(subject = %p.subject, error = %error, "permanent publish error");
            return Err(refusal);
        }
        metrics
            .publish_retries
            .with_label_values(&[p.stream.as_str()])
            .inc();
        let delay = backoff.next_delay();
        tracing::warn!(subject = %p.subject, error = %error, retry_in_ms = delay.as_millis() as u64, "JetStream publish failed");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(err_code: u64) -> PublishError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": err_code, "description": "test"
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn only_transient_errors_are_retried() {
        use Failure::*;
        let cases = [
            (PublishError::new(PublishErrorKind::TimedOut), Transient),
            (PublishError::new(PublishErrorKind::BrokenPipe), Transient),
            (
                PublishError::new(PublishErrorKind::StreamNotFound),
                Transient,
            ),
            (
                PublishError::new(PublishErrorKind::MaxAckPending),
                Transient,
            ),
            (PublishError::new(PublishErrorKind::Other), Transient),
            (
                PublishError::new(PublishErrorKind::MaxPayloadExceeded),
                Permanent(Refusal::MaxPayload),
            ),
            (
                PublishError::with_source(PublishErrorKind::Other, SubjectError::InvalidFormat),
                Permanent(Refusal::InvalidSubject),
            ),
            // "message size exceeds maximum allowed" (a stream's max_msg_size)
            (api_error(10054), Permanent(Refusal::Refused)),
            (api_error(10003), Permanent(Refusal::Refused)),
            // "insufficient resources": the server may recover.
            (api_error(10023), Transient),
            // The same message being stored by another ingest.
            (api_error(10158), Transient),
        ];
        for (error, want) in cases {
            assert_eq!(classify_error(&error), want, "{error}");
        }
    }
}
