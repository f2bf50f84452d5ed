//! notifier's Prometheus metrics. Label values come from closed sets only
//! (sink names come from the operator's config, not from users).

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use shared::telemetry::{counter_vec, gauge, gauge_vec, histogram_vec};

/// How one delivery attempt ended: the `outcome` label of
/// `notifier_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// A retryable failure; the event is tried again.
    Retried,
    /// A permanent failure; the event is given up.
    Failed,
    /// Not for this sink (its filter, or the sink's own choice).
    Filtered,
    /// Not a readable presence event.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Delivered,
        Outcome::Retried,
        Outcome::Failed,
        Outcome::Filtered,
        Outcome::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Filtered => "filtered",
            Outcome::Invalid => "invalid",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) sse_clients: IntGauge,
    /// Events a slow SSE client missed from the broadcast (then replayed).
    pub(crate) sse_lagged: IntCounter,
    /// SSE clients refused: their household had its maximum open.
    pub(crate) sse_refused: IntCounter,
    /// Deliveries by `sink` and [`Outcome`].
    deliveries: IntCounterVec,
    /// From the event's emission to its delivery, by `sink`.
    pub(crate) delivery_seconds: HistogramVec,
    /// Events waiting for a sink, by `sink`.
    pub(crate) queue_depth: IntGaugeVec,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
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
    pub(crate) fn register_sink(&self, sink: &str) {
        for outcome in Outcome::ALL {
            self.deliveries.with_label_values(&[sink, outcome.as_str()]);
        }
        self.delivery_seconds.with_label_values(&[sink]);
        self.queue_depth.with_label_values(&[sink]);
    }

    /// Drops the gauge of a sink removed by a config reload (its counters
    /// stay: they only ever grow).
    pub(crate) fn forget_sink(&self, sink: &str) {
        let _ = self.queue_depth.remove_label_values(&[sink]);
    }

    /// Counts one delivery attempt of `sink`.
    pub(crate) fn delivery(&self, sink: &str, outcome: Outcome) {
        self.deliveries
            .with_label_values(&[sink, outcome.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_sink_has_every_outcome_at_zero() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry);
        metrics.register_sink("hooks");
        metrics.delivery("hooks", Outcome::Retried);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for outcome in Outcome::ALL {
            let n = u64::from(outcome == Outcome::Retried);
            let line = format!(
                "notifier_deliveries_total{{outcome=\"{}\",sink=\"hooks\"}} {n}",
                outcome.as_str()
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}
