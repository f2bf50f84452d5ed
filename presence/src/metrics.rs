//! presence's Prometheus metrics. Label values come from closed sets only:
//! each labelled metric is read through a method that takes its label as
//! an enum, so a misspelt label cannot compile.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use shared::state::{EventKind, Status};
use shared::telemetry::{LATENCY_BUCKETS, counter_vec, gauge_vec};

use crate::machine::{self, Ignored};

/// The `outcome` of a message (`presence_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageOutcome {
    Applied,
    /// A kind that does not affect presence.
    Ignored,
    Duplicate,
    OutOfOrder,
    TooManyDevices,
    StateTooLarge,
    /// A device no person claims, in a household that makes none.
    Unmapped,
    /// An envelope that cannot be used: terminated.
    Poison,
    /// Storing failed for now and is retried (counted per attempt).
    Retried,
}

impl MessageOutcome {
    const ALL: [MessageOutcome; 9] = [
        MessageOutcome::Applied,
        MessageOutcome::Ignored,
        MessageOutcome::Duplicate,
        MessageOutcome::OutOfOrder,
        MessageOutcome::TooManyDevices,
        MessageOutcome::StateTooLarge,
        MessageOutcome::Unmapped,
        MessageOutcome::Poison,
        MessageOutcome::Retried,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Applied => "applied",
            MessageOutcome::Ignored => "ignored",
            MessageOutcome::Duplicate => "duplicate",
            MessageOutcome::OutOfOrder => "out_of_order",
            MessageOutcome::TooManyDevices => "too_many_devices",
            MessageOutcome::StateTooLarge => "state_too_large",
            MessageOutcome::Unmapped => "unmapped",
            MessageOutcome::Poison => "poison",
            MessageOutcome::Retried => "retried",
        }
    }
}

impl From<Ignored> for MessageOutcome {
    fn from(ignored: Ignored) -> Self {
        match ignored {
            Ignored::OutOfOrder => MessageOutcome::OutOfOrder,
            Ignored::Duplicate => MessageOutcome::Duplicate,
            Ignored::TooManyDevices => MessageOutcome::TooManyDevices,
            Ignored::StateTooLarge => MessageOutcome::StateTooLarge,
        }
    }
}

/// Why storing failed for good (`presence_permanent_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// Over NATS's or the stream's size limit.
    TooLarge,
    /// A KV key NATS refuses.
    InvalidKey,
    /// A state that cannot be serialised.
    InvalidState,
}

impl FailureReason {
    const ALL: [FailureReason; 3] = [
        FailureReason::TooLarge,
        FailureReason::InvalidKey,
        FailureReason::InvalidState,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::TooLarge => "too_large",
            FailureReason::InvalidKey => "invalid_key",
            FailureReason::InvalidState => "invalid_state",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    /// Messages by [`MessageOutcome`].
    messages: IntCounterVec,
    /// Messages (or timer ticks) terminated because storing them failed for
    /// good, by [`FailureReason`].
    permanent_failures: IntCounterVec,
    /// Events published by `kind` (place, status, region).
    events: IntCounterVec,
    /// Compare-and-set conflicts on the KV (another instance wrote first).
    pub(crate) kv_conflicts: IntCounter,
    /// Fixes older than `max_fix_age` on arrival.
    pub(crate) late_fixes: IntCounter,
    /// Leave + re-enter pairs swallowed by the debounce.
    pub(crate) flaps_suppressed: IntCounter,
    /// From fetching a message to acking it.
    pub(crate) processing_seconds: Histogram,
    /// Devices by `status` (online, stale, offline), from the KV.
    devices: IntGaugeVec,
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

    pub(crate) fn message(&self, outcome: MessageOutcome) -> IntCounter {
        self.messages.with_label_values(&[outcome.as_str()])
    }

    pub(crate) fn permanent_failure(&self, reason: FailureReason) -> IntCounter {
        self.permanent_failures
            .with_label_values(&[reason.as_str()])
    }

    pub(crate) fn event(&self, kind: EventKind) -> IntCounter {
        self.events
            .with_label_values(&[machine::event_kind_name(kind)])
    }

    pub(crate) fn devices(&self, status: Status) -> IntGauge {
        self.devices.with_label_values(&[status.as_str()])
    }

    /// Creates every series of the closed label sets at 0, so that
    /// dashboards and alerts see them before their first increment.
    fn register_label_sets(&self) {
        for outcome in MessageOutcome::ALL {
            self.message(outcome);
        }
        for reason in FailureReason::ALL {
            self.permanent_failure(reason);
        }
        for kind in [EventKind::Place, EventKind::Status, EventKind::Region] {
            self.event(kind);
        }
        for status in [Status::Online, Status::Stale, Status::Offline] {
            self.devices(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn every_label_of_the_closed_sets_is_exported_at_zero() {
        let registry = Registry::new();
        Metrics::new(&registry);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut want: Vec<String> = MessageOutcome::ALL
            .iter()
            .map(|o| format!("presence_messages_total{{outcome=\"{}\"}} 0", o.as_str()))
            .collect();
        want.extend(FailureReason::ALL.iter().map(|r| {
            format!(
                "presence_permanent_failures_total{{reason=\"{}\"}} 0",
                r.as_str()
            )
        }));
        want.push("presence_events_total{kind=\"region\"} 0".into());
        want.push("presence_devices{status=\"stale\"} 0".into());
        for line in &want {
            assert!(text.contains(line.as_str()), "{line} missing");
        }
    }
}
