//! presence's Prometheus metrics. Label values come from closed sets only.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Registry};
use shared::state::Status;
use shared::telemetry::{LATENCY_BUCKETS, counter_vec, gauge_vec};

#[derive(Clone)]
pub(crate) struct Metrics {
    /// Messages by `outcome`: applied, ignored, duplicate, out_of_order,
    /// too_many_devices, state_too_large, unmapped, poison, retried.
    pub(crate) messages: IntCounterVec,
    /// Messages (or timer ticks) terminated because storing them failed for
    /// good, by `reason` (too_large, invalid_key, invalid_state).
    pub(crate) permanent_failures: IntCounterVec,
    /// Events published by `kind` (place, status, region).
    pub(crate) events: IntCounterVec,
    /// Compare-and-set conflicts on the KV (another instance wrote first).
    pub(crate) kv_conflicts: IntCounter,
    /// Fixes older than `max_fix_age` on arrival.
    pub(crate) late_fixes: IntCounter,
    /// Leave + re-enter pairs swallowed by the debounce.
    pub(crate) flaps_suppressed: IntCounter,
    /// From fetching a message to acking it.
    pub(crate) processing_seconds: Histogram,
    /// Devices by `status` (online, stale, offline), from the KV.
    pub(crate) devices: IntGaugeVec,
    /// Timer ticks processed.
    pub(crate) ticks: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique counter");
    c
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let processing_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "presence_processing_seconds",
                "Time from receiving a message to acknowledging it, state and events stored.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(processing_seconds.clone()))
            .expect("unique histogram");
        let metrics = Metrics {
            messages: counter_vec(
                registry,
                "presence_messages_total",
                "OWNTRACKS messages handled, by outcome.",
                &["outcome"],
            ),
            permanent_failures: counter_vec(
                registry,
                "presence_permanent_failures_total",
                "Messages terminated because their state could never be stored, by reason.",
                &["reason"],
            ),
            events: counter_vec(
                registry,
                "presence_events_total",
                "Presence events published, by kind.",
                &["kind"],
            ),
            kv_conflicts: counter(
                registry,
                "presence_kv_conflicts_total",
                "KV compare-and-set conflicts, retried.",
            ),
            late_fixes: counter(
                registry,
                "presence_late_fixes_total",
                "Fixes older than max_fix_age on arrival.",
            ),
            flaps_suppressed: counter(
                registry,
                "presence_flaps_suppressed_total",
                "Leave and re-enter pairs within the debounce, not emitted.",
            ),
            processing_seconds,
            devices: gauge_vec(
                registry,
                "presence_devices",
                "Devices by status.",
                &["status"],
            ),
            ticks: counter(
                registry,
                "presence_timer_ticks_total",
                "Timer deadlines processed.",
            ),
        };
        metrics.register_label_sets();
        metrics
    }

    /// Creates every series of the closed label sets at 0, so that
    /// dashboards and alerts see them before their first increment.
    fn register_label_sets(&self) {
        for outcome in [
            "applied",
            "ignored",
            "duplicate",
            "out_of_order",
            "unmapped",
            "poison",
            "retried",
        ] {
            self.messages.with_label_values(&[outcome]);
        }
        for kind in ["place", "status", "region"] {
            self.events.with_label_values(&[kind]);
        }
        for status in [Status::Online, Status::Stale, Status::Offline] {
            self.devices.with_label_values(&[status.as_str()]);
        }
    }
}
