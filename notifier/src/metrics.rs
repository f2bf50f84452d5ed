//! notifier's Prometheus metrics. Label values come from closed sets only
//! (sink names come from the operator's config, not from users).

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use shared::telemetry::{counter_vec, gauge, gauge_vec, histogram_vec};

#[derive(Clone)]
pub struct Metrics {
    pub sse_clients: IntGauge,
    /// Events a slow SSE client missed from the broadcast (then replayed).
    pub sse_lagged: IntCounter,
    /// SSE clients refused: their household had its maximum open.
    pub sse_refused: IntCounter,
    /// Deliveries by `sink` and `outcome` (`delivered`, `retried`, `failed`,
    /// `filtered`, `invalid`).
    pub deliveries: IntCounterVec,
    /// From the event's emission to its delivery, by `sink`.
    pub delivery_seconds: HistogramVec,
    /// Events waiting for a sink, by `sink`.
    pub queue_depth: IntGaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Self {
        let sse_lagged = IntCounter::new(
            "notifier_sse_lagged_events_total",
            "Events slow SSE clients missed from the live broadcast and got by replay.",
        )
        .expect("valid counter");
        registry
            .register(Box::new(sse_lagged.clone()))
            .expect("unique counter");
        let sse_refused = IntCounter::new(
            "notifier_sse_refused_total",
            "SSE clients refused with 503: their household had notifier.max_sse_clients_per_household open.",
        )
        .expect("valid counter");
        registry
            .register(Box::new(sse_refused.clone()))
            .expect("unique counter");
        Metrics {
            sse_clients: gauge(registry, "notifier_sse_clients", "Connected SSE clients."),
            sse_lagged,
            sse_refused,
            deliveries: counter_vec(
                registry,
                "notifier_deliveries_total",
                "Sink delivery attempts by sink and outcome.",
                &["sink", "outcome"],
            ),
            delivery_seconds: histogram_vec(
                registry,
                "notifier_delivery_seconds",
                "Time from an event's emission to its delivery by a sink.",
                &["sink"],
            ),
            queue_depth: gauge_vec(
                registry,
                "notifier_sink_queue_depth",
                "Events pending for a sink in its durable consumer.",
                &["sink"],
            ),
        }
    }

    /// Creates a configured sink's series at 0, so that dashboards and
    /// alerts see them before its first delivery.
    pub fn register_sink(&self, sink: &str) {
        for outcome in ["delivered", "retried", "failed", "filtered", "invalid"] {
            self.deliveries.with_label_values(&[sink, outcome]);
        }
        self.delivery_seconds.with_label_values(&[sink]);
        self.queue_depth.with_label_values(&[sink]);
    }
}
