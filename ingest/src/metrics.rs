//! ingest's Prometheus metrics. Label values come from closed sets only:
//! the enums here, `Transport`, `MessageType` and `Reason`.

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use shared::envelope::Transport;
use shared::owntracks::{MessageType, Reason};
use shared::subjects::{OWNTRACKS_STREAM, REJECTED_STREAM};
use shared::telemetry::{counter_vec, gauge, histogram_vec};

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique counter");
    c
}

/// The `stream` label: where a publication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Owntracks,
    Rejected,
}

impl Stream {
    const ALL: [Stream; 2] = [Stream::Owntracks, Stream::Rejected];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Owntracks => OWNTRACKS_STREAM,
            Stream::Rejected => REJECTED_STREAM,
        }
    }
}

/// The `error` label of `ingest_publish_failures_total`: why JetStream
/// refused a publish for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the server's `max_payload`.
    MaxPayload,
    /// Not a valid subject.
    InvalidSubject,
    /// The server answered with an error that is not a shortage.
    Refused,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxPayload => "max_payload",
            Refusal::InvalidSubject => "invalid_subject",
            Refusal::Refused => "refused",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    /// Accepted messages by `type` and `transport`.
    pub(crate) messages: IntCounterVec,
    /// Rejected payloads by `reason` and `transport`.
    pub(crate) rejected: IntCounterVec,
    /// Zero-length ("clear") payloads by `transport`.
    pub(crate) cleared: IntCounterVec,
    /// JetStream publish-to-ack latency by `stream`.
    pub(crate) publish_seconds: HistogramVec,
    /// JetStream publishes retried after an error, by `stream`.
    pub(crate) publish_retries: IntCounterVec,
    /// Publishes JetStream refused for good, by `stream` and `error`.
    pub(crate) publish_failures: IntCounterVec,
    pub(crate) mqtt_connected: IntGauge,
    pub(crate) mqtt_reconnects: IntCounter,
    /// QoS 0 messages dropped because the QoS 0 budget was full.
    pub(crate) mqtt_dropped: IntCounter,
    /// MQTT messages received but not yet acknowledged to the broker (or,
    /// from nats-server's MQTT listener, to `$MQTT_msgs`).
    pub(crate) inflight: IntGauge,
    /// Messages from phones on nats-server's MQTT listener, by `qos`.
    pub(crate) nats_mqtt_received: IntCounterVec,
    /// Of those, deliveries JetStream made again (after a restart or an
    /// unacked wait).
    pub(crate) nats_mqtt_redelivered: IntCounter,
    /// HTTP-mode requests by status `code`.
    pub(crate) http_requests: IntCounterVec,
    /// Client addresses locked out of HTTP mode after wrong credentials.
    pub(crate) http_lockouts: IntCounter,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let metrics = Metrics {
            messages: counter_vec(
                registry,
                "ingest_messages_total",
                "OwnTracks messages accepted and stored, by type and transport.",
                &["type", "transport"],
            ),
            rejected: counter_vec(
                registry,
                "ingest_rejected_total",
                "Payloads rejected to the REJECTED stream, by reason and transport.",
                &["reason", "transport"],
            ),
            cleared: counter_vec(
                registry,
                "ingest_cleared_total",
                "Zero-length payloads (the apps' 'clear'), by transport.",
                &["transport"],
            ),
            publish_seconds: histogram_vec(
                registry,
                "ingest_jetstream_publish_seconds",
                "Time from JetStream publish to its acknowledgement.",
                &["stream"],
            ),
            publish_retries: counter_vec(
                registry,
                "ingest_jetstream_publish_retries_total",
                "JetStream publishes retried after an error or timeout.",
                &["stream"],
            ),
            publish_failures: counter_vec(
                registry,
                "ingest_publish_failures_total",
                "JetStream publishes refused for good (not retried), by stream and error (max_payload, invalid_subject, refused).",
                &["stream", "error"],
            ),
            mqtt_connected: gauge(
                registry,
                "ingest_mqtt_connected",
                "1 while connected to the MQTT broker.",
            ),
            mqtt_reconnects: {
                let c = IntCounter::new(
                    "ingest_mqtt_reconnects_total",
                    "MQTT connection losses followed by a reconnect attempt.",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique counter");
                c
            },
            mqtt_dropped: {
                let c = IntCounter::new(
                    "ingest_mqtt_dropped_total",
                    "QoS 0 MQTT messages dropped because the QoS 0 budget (16 MiB pending) was full.",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique counter");
                c
            },
            inflight: gauge(
                registry,
                "ingest_inflight_messages",
                "MQTT messages received and not yet acknowledged to the broker or to $MQTT_msgs.",
            ),
            nats_mqtt_received: counter_vec(
                registry,
                "ingest_nats_mqtt_messages_total",
                "Messages from phones on nats-server's MQTT listener by qos (1: from $MQTT_msgs, redeliveries included; 0: from the import).",
                &["qos"],
            ),
            nats_mqtt_redelivered: counter(
                registry,
                "ingest_nats_mqtt_redeliveries_total",
                "$MQTT_msgs messages delivered again (after a restart, or unacked past the ack wait).",
            ),
            http_requests: counter_vec(
                registry,
                "ingest_http_requests_total",
                "HTTP-mode POST /pub requests by status code.",
                &["code"],
            ),
            http_lockouts: {
                let c = IntCounter::new(
                    "ingest_http_auth_lockouts_total",
                    "Client addresses locked out of HTTP mode after repeated wrong credentials.",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique counter");
                c
            },
        };
        metrics.register_label_sets();
        metrics
    }

    /// Creates every series of the closed label sets at 0, so that
    /// dashboards and alerts see them before their first increment.
    fn register_label_sets(&self) {
        for transport in [Transport::Mqtt, Transport::Http] {
            let transport = transport.as_str();
            for kind in MessageType::ALL {
                self.messages.with_label_values(&[kind.as_str(), transport]);
            }
            for reason in Reason::ALL {
                self.rejected
                    .with_label_values(&[reason.as_str(), transport]);
            }
            self.cleared.with_label_values(&[transport]);
        }
        for stream in Stream::ALL {
            let stream = stream.as_str();
            self.publish_seconds.with_label_values(&[stream]);
            self.publish_retries.with_label_values(&[stream]);
        }
    }
}
