//! Publishing verdicts to JetStream, retrying until acknowledged: a message
//! is acknowledged to its sender (MQTT broker, HTTP client) only after this.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use shared::envelope::Transport;
use shared::subjects::{OWNTRACKS_STREAM, REASON_HEADER, REJECTED_STREAM};

use crate::classify::Verdict;
use crate::metrics::Metrics;

/// A verdict serialised and ready to send.
#[derive(Debug, Clone)]
pub struct Publication {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    stream: &'static str,
}

impl Publication {
    /// `None` for verdicts that publish nothing (cleared payloads).
    pub fn from_verdict(verdict: &Verdict) -> Option<Publication> {
        match verdict {
            Verdict::Accepted {
                subject,
                msg_id,
                envelope,
                ..
            } => {
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
                let payload = serde_json::to_vec(envelope).expect("envelope serialises");
                Some(Publication {
                    subject: subject.clone(),
                    headers,
                    payload: payload.into(),
                    stream: OWNTRACKS_STREAM,
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
                    stream: REJECTED_STREAM,
                })
            }
            Verdict::Cleared => None,
        }
    }
}

/// Counts a verdict once it is stored (or, for `Cleared`, accepted).
pub fn count(metrics: &Metrics, verdict: &Verdict, transport: Transport) {
    match verdict {
        Verdict::Accepted { kind, .. } => metrics
            .messages
            .with_label_values(&[kind, transport.as_str()])
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

/// Publishes and waits for the JetStream ack, retrying with jittered
/// exponential backoff for as long as it takes. Retrying is safe: the
/// `Nats-Msg-Id` makes JetStream drop the copies.
pub async fn publish_until_stored(js: &jetstream::Context, p: Publication, metrics: &Metrics) {
    let mut delay = FIRST_RETRY;
    loop {
        let started = Instant::now();
        let result = match js
            .publish_with_headers(p.subject.clone(), p.headers.clone(), p.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                metrics
                    .publish_seconds
                    .with_label_values(&[p.stream])
                    .observe(started.elapsed().as_secs_f64());
                return;
            }
            Err(e) => {
                metrics.publish_retries.with_label_values(&[p.stream]).inc();
                let permanent = matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded);
                tracing::warn!(subject = %p.subject, error = %e, retry_in_ms = delay.as_millis() as u64, "JetStream publish failed");
                if permanent {
                    // Cannot happen for our sizes; never spin on it.
                    tracing::error!(subject = %p.subject, "payload exceeds NATS max_payload: dropped");
                    return;
                }
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// A delay between half and all of `d`, so that retries spread out.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}
