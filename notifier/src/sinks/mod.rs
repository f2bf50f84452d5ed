//! Sinks and their one shared driver. A sink knows only its own settings,
//! how to deliver one event and which errors are worth retrying; the driver
//! owns its durable consumer, filtering, ordered delivery, retries with
//! jittered capped backoff, and metrics. Each sink has its own consumer, so
//! a dead webhook never delays the mirror, and a restart resumes where it
//! stopped.
//!
//! - `webhook`: JSON POST, optional HMAC-SHA256 signature.
//! - `mqtt`: retained per-person state and Home Assistant discovery.
//! - `magicmirror`: MMM-Remote-Control's notification API.
//! - `ntfy`: push notifications from a message template.
//! - `running`: the sinks running now, started, stopped and restarted as
//!   config reloads add, remove or change them.
//!
//! A new sink is its own file here (its `Settings` with [`Build`], and a
//! [`Sink`]) with its `mod` line, one line in [`Kind`] with its arm in
//! [`Kind::build`], and an example in `whereabouts.example.toml`. A secret setting takes one of the
//! names in `shared::config::SINK_SECRET_KEYS`.

mod magicmirror;
mod mqtt;
mod ntfy;
mod running;
pub mod webhook;

pub(crate) use running::Running;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use shared::config::{Config, Household, SinkConfig, SinkFilter};
use shared::state::PresenceEvent;
use shared::subjects::{PRESENCE_STREAM, presence_household};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Outcome};
use crate::tasks::Tasks;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What a running sink does; the driver does the rest.
pub(crate) trait Sink: Send + Sync {
    /// Whether the sink wants the event at all, beyond the common filter.
    fn wants(&self, _event: &PresenceEvent) -> bool {
        true
    }

    /// Delivers one event; `raw` is its JSON as the stream holds it.
    fn deliver<'a>(
        &'a self,
        event: &'a PresenceEvent,
        raw: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// A kind's settings, made into a running sink.
pub(crate) trait Build {
    /// `name`: the sink's (unique: see `shared::config`).
    fn build(self, name: &str, context: &Context<'_>) -> anyhow::Result<Box<dyn Sink>>;
}

/// What building a sink may need besides its own settings.
pub(crate) struct Context<'a> {
    /// The broker of `mqtt` sinks that name none.
    pub(crate) mqtt_url: &'a str,
    pub(crate) mqtt_ca_file: Option<&'a Path>,
    /// This instance's name, if set: `mqtt` sinks append it to their client id.
    pub(crate) instance: Option<&'a str>,
    pub(crate) households: &'a BTreeMap<String, Household>,
    /// What the sink stops on: its own token, a child of the shutdown.
    pub(crate) shutdown: &'a CancellationToken,
    /// Where a sink spawns its own tasks (a connection), awaited on shutdown.
    pub(crate) tasks: &'a Tasks,
}

/// The kinds of sink, by their `type`, each with its own settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Kind {
    Webhook(webhook::Settings),
    Mqtt(mqtt::Settings),
    Magicmirror(magicmirror::Settings),
    Ntfy(ntfy::Settings),
}

impl Kind {
    fn build(self, name: &str, context: &Context<'_>) -> anyhow::Result<Box<dyn Sink>> {
        match self {
            Kind::Webhook(s) => s.build(name, context),
            Kind::Mqtt(s) => s.build(name, context),
            Kind::Magicmirror(s) => s.build(name, context),
            Kind::Ntfy(s) => s.build(name, context),
        }
    }
}

/// One configured sink, its settings parsed and checked.
pub(crate) struct Configured {
    pub(crate) name: String,
    pub(crate) filter: SinkFilter,
    pub(crate) kind: Kind,
}

/// Parses every sink's own settings; an error names the sink.
pub(crate) fn parse(config: &Config) -> anyhow::Result<Vec<Configured>> {
    config
        .notifier
        .sinks
        .iter()
        .enumerate()
        .map(|(index, sink)| {
            let name = sink.name(index);
            let kind = parse_kind(sink)
                .with_context(|| format!("notifier.sinks[{index}] (sink {name:?})"))?;
            Ok(Configured {
                name,
                filter: sink.filter.clone(),
                kind,
            })
        })
        .collect()
}

/// Checks every sink's own settings, as the notifier does at start and on
/// a reload (for `whereabouts check-config`).
pub fn check(config: &Config) -> anyhow::Result<()> {
    parse(config).map(drop)
}

fn parse_kind(sink: &SinkConfig) -> anyhow::Result<Kind> {
    let mut table = sink.settings.clone();
    table.insert("type".into(), sink.kind.clone().into());
    Ok(Kind::deserialize(toml::Value::Table(table))?)
}

impl Configured {
    /// Starts the sink: builds it and spawns its driver on `tasks`, to run
    /// until `context.shutdown`; the handle tells when it has stopped.
    pub(crate) async fn start(
        self,
        js: &jetstream::Context,
        context: &Context<'_>,
        metrics: &Metrics,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let sink = self
            .kind
            .build(&self.name, context)
            .with_context(|| format!("sink {:?}", self.name))?;
        metrics.register_sink(&self.name);
        // The durable consumer first, so that every event published once the
        // notifier says it is ready is the sink's (it starts at the stream's
        // end). A failure here is retried by the driver.
        if let Err(e) = sink_consumer(js, &self.name, &self.filter).await {
            tracing::warn!(sink = %self.name, error = format!("{e:#}"), "sink consumer not created yet; retrying");
        }
        tracing::info!(sink = %self.name, "sink started");
        Ok(context.tasks.spawn_until(
            format!("sink {}", self.name),
            context.shutdown.clone(),
            drive(
                js.clone(),
                self.name,
                self.filter,
                sink,
                metrics.clone(),
                context.shutdown.clone(),
            ),
        ))
    }
}

fn passes(filter: &SinkFilter, event: &PresenceEvent) -> bool {
    (filter.people.is_empty() || filter.people.contains(&event.person))
        && (filter.kinds.is_empty() || filter.kinds.contains(&event.kind))
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long an event stays ours without a word from us. Short, so that the
/// event a crashed notifier had in hand is redelivered soon after a restart
/// (the consumer holds one event at a time: until then the sink is stuck);
/// while we work on an event, progress acks every [`PROGRESS_EVERY`] renew it.
const ACK_WAIT: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(1500);

/// Runs one sink until `shutdown`: one event at a time, in stream order.
async fn drive(
    js: jetstream::Context,
    name: String,
    filter: SinkFilter,
    sink: Box<dyn Sink>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = shared::retry::Backoff::default();
    while !shutdown.is_cancelled() {
        match consume(&js, &name, &filter, sink.as_ref(), &metrics, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "sink consumer failed");
                if !shared::retry::sleep_unless_cancelled(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// The sink's durable consumer `sink-<name>` on PRESENCE, created or
/// brought to these settings (one made by an older version, or with other
/// households, gets them).
async fn sink_consumer(
    js: &jetstream::Context,
    name: &str,
    filter: &SinkFilter,
) -> anyhow::Result<consumer::PullConsumer> {
    let durable = format!("sink-{}", shared::token::encode(name));
    let filter_subjects = if filter.households.is_empty() {
        vec!["presence.>".to_string()]
    } else {
        filter
            .households
            .iter()
            .map(|h| presence_household(h))
            .collect()
    };
    let stream = js.get_stream(PRESENCE_STREAM).await?;
    // Create or update: a durable made by an older version (or with other
    // households) gets this config.
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subjects,
            // One at a time: order per person holds, and a failing
            // delivery holds back only this sink.
            max_ack_pending: 1,
            ack_wait: ACK_WAIT,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(consumer)
}

async fn consume(
    js: &jetstream::Context,
    name: &str,
    filter: &SinkFilter,
    sink: &dyn Sink,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = sink_consumer(js, name, filter).await?;
    let depth = metrics.queue_depth.with_label_values(&[name]);
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let Some(message) = message else {
            anyhow::bail!("consumer ended");
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(info) = message.info() {
            depth.set(info.pending as i64);
        }
        let event: PresenceEvent = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "unreadable presence event: skipped");
                metrics.delivery(name, Outcome::Invalid);
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            }
        };
        if !passes(filter, &event) || !sink.wants(&event) {
            metrics.delivery(name, Outcome::Filtered);
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            continue;
        }
        let finished = keep_in_progress(
            &message,
            deliver_with_retries(name, sink, &event, &message, metrics, shutdown),
        )
        .await;
        match finished {
            Finished::Delivered => {
                let lag = OffsetDateTime::now_utc() - event.emitted_at;
                metrics
                    .delivery_seconds
                    .with_label_values(&[name])
                    .observe(lag.as_seconds_f64().max(0.0));
                metrics.delivery(name, Outcome::Delivered);
                message
                    .double_ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Finished::GaveUp => {
                metrics.delivery(name, Outcome::Failed);
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            // Not acked: redelivered after a restart.
            Finished::Stopped => return Ok(()),
        }
    }
}

/// Runs `work` on `message`, telling the server every [`PROGRESS_EVERY`]
/// that the message is still being worked on (slow receivers, retry pauses).
async fn keep_in_progress<T>(
    message: &jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.tick().await; // the first tick is now
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// How the work on one event ended.
enum Finished {
    Delivered,
    GaveUp,
    Stopped,
}

async fn deliver_with_retries(
    name: &str,
    sink: &dyn Sink,
    event: &PresenceEvent,
    message: &jetstream::Message,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Finished {
    let mut backoff = shared::retry::Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        // Stopping drops a delivery in flight: the event is not acked, so it
        // is delivered again after the restart (at least once).
        let delivered = tokio::select! {
            _ = shutdown.cancelled() => return Finished::Stopped,
            delivered = sink.deliver(event, &message.payload) => delivered,
        };
        match delivered {
            Ok(()) => return Finished::Delivered,
            Err(DeliveryError::Permanent(why)) => {
                tracing::warn!(sink = %name, event = %event.id, %why, "delivery refused: giving up on this event");
                return Finished::GaveUp;
            }
            Err(DeliveryError::Retryable(why)) => {
                metrics.delivery(name, Outcome::Retried);
                let wait = backoff.next_delay();
                tracing::info!(sink = %name, event = %event.id, %why, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                if !shared::retry::sleep_unless_cancelled(wait, shutdown).await {
                    return Finished::Stopped;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_toml(text: &str) -> anyhow::Result<Vec<Configured>> {
        parse(&Config::from_toml(text)?)
    }

    #[test]
    fn the_example_sinks_parse() {
        let text = include_str!("../../../whereabouts.example.toml");
        let sinks = parse_toml(text).unwrap();
        let kinds: Vec<_> = sinks
            .iter()
            .map(|s| match s.kind {
                Kind::Webhook(_) => "webhook",
                Kind::Mqtt(_) => "mqtt",
                Kind::Magicmirror(_) => "magicmirror",
                Kind::Ntfy(_) => "ntfy",
            })
            .collect();
        assert_eq!(
            kinds,
            ["webhook", "mqtt", "magicmirror", "ntfy"],
            "one of each"
        );
    }

    #[test]
    fn a_bad_sink_is_refused_by_name() {
        let bad = [
            (
                "type = \"webhok\"\nname = \"hooks\"\nurl = \"http://x/\"",
                "unknown variant `webhok`",
            ),
            (
                "type = \"webhook\"\nname = \"hooks\"\nurl = \"http://x/\"\nsecrit = \"s\"",
                "unknown field `secrit`",
            ),
            (
                "type = \"webhook\"\nname = \"hooks\"",
                "missing field `url`",
            ),
            (
                "type = \"webhook\"\nname = \"hooks\"\nurl = \"http://x/\"\ntimeout = \"soon\"",
                "soon",
            ),
        ];
        for (sink, want) in bad {
            let text = format!("[[notifier.sinks]]\n{sink}\n");
            // Ingest and presence accept it: only the notifier reads a kind's keys.
            Config::from_toml(&text).unwrap();
            let Err(e) = parse_toml(&text) else {
                panic!("accepted: {sink}");
            };
            let e = format!("{e:#}");
            assert!(e.contains("sink \"hooks\"") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn the_filter_takes_people_and_event_kinds() {
        let sinks = parse_toml(
            "[[notifier.sinks]]\ntype = \"ntfy\"\nurl = \"http://x/\"\npeople = [\"Harry\"]\nkinds = [\"place\"]\n",
        )
        .unwrap();
        let event = |person: &str, kind: &str| -> PresenceEvent {
            let mut value: serde_json::Value = serde_json::from_str(EVENT).unwrap();
            value["person"] = person.into();
            value["kind"] = kind.into();
            serde_json::from_value(value).unwrap()
        };
        let filter = &sinks[0].filter;
        assert!(passes(filter, &event("Harry", "place")));
        assert!(!passes(filter, &event("Harry", "status")));
        assert!(!passes(filter, &event("Ron", "place")));
    }

    const EVENT: &str = r#"{
        "id": "e1", "household": "home", "person": "Harry", "kind": "place",
        "at": "2026-01-01T08:00:00Z", "emitted_at": "2026-01-01T08:00:00Z",
        "cause": {"kind": "location"}, "place": "Home",
        "state": {
            "household": "home", "person": "Harry", "name": "Harry", "place": "Home",
            "place_since": "2026-01-01T08:00:00Z", "status": "online", "devices": []
        }
    }"#;
}
