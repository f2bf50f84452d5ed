//! Prints "<name> arrived at <place>" for each place event on PRESENCE,
//! typed with the project's own `shared::state::PresenceEvent`.
//!
//! A durable pull consumer: it resumes where it stopped, acks each event once
//! printed, and skips an event whose id it has already handled in this run
//! (a redelivery, or a copy presence published again after JetStream's
//! duplicate window). Late events are history, not news: acked, not
//! printed.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 NATS_USER=reader NATS_PASSWORD=… \
//!     cargo run -p arrivals -- weasleys
//! ```
//!
//! Environment: `NATS_URL`, `NATS_USER`/`NATS_PASSWORD`, `ARRIVALS_DURABLE`
//! (the consumer's name, default `arrivals-rs`), `ARRIVALS_SINCE` (RFC 3339:
//! a new consumer starts there instead of at the stream's first event),
//! `ARRIVALS_MAX` (stop after this many lines).

use std::collections::{HashSet, VecDeque};

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use shared::state::{EVENT_SCHEMA_VERSION, EventKind, PresenceEvent};
use shared::subjects::{PRESENCE_STREAM, presence_household};

/// Ids remembered for deduplication (oldest forgotten first).
const SEEN_MAX: usize = 10_000;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let household = std::env::args().nth(1);
    let url = env("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let durable = env("ARRIVALS_DURABLE").unwrap_or_else(|| "arrivals-rs".into());
    let limit: usize = env("ARRIVALS_MAX").map_or(Ok(0), |v| v.parse())?;
    let deliver_policy = match env("ARRIVALS_SINCE") {
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::parse(
                &since,
                &time::format_description::well_known::Rfc3339,
            )
            .context("ARRIVALS_SINCE is not RFC 3339")?,
        },
        None => consumer::DeliverPolicy::All,
    };

    let mut options = async_nats::ConnectOptions::new();
    if let Some(user) = env("NATS_USER") {
        options = options.user_and_password(user, env("NATS_PASSWORD").unwrap_or_default());
    }
    let client = options
        .connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(PRESENCE_STREAM)
        .await
        .context("reading the PRESENCE stream")?;
    // `presence.<household>.>` (every person of one household) or all.
    let filter_subject = household.map_or_else(|| "presence.>".into(), |h| presence_household(&h));
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject,
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the durable consumer {durable}"))?;

    let mut messages = consumer.messages().await?;
    let mut seen = (HashSet::new(), VecDeque::new());
    let mut printed = 0;
    while limit == 0 || printed < limit {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let event: PresenceEvent =
            serde_json::from_slice(&message.payload).context("reading a presence event")?;
        // A new version may mean what this program reads differently.
        anyhow::ensure!(
            event.schema_version == EVENT_SCHEMA_VERSION,
            "event {}: schema_version {}, this program reads {EVENT_SCHEMA_VERSION}",
            event.id,
            event.schema_version
        );
        let new = seen.0.insert(event.id.clone());
        if new {
            seen.1.push_back(event.id.clone());
            if seen.1.len() > SEEN_MAX {
                let oldest = seen.1.pop_front().expect("not empty");
                seen.0.remove(&oldest);
            }
        }
        if new
            && event.kind == EventKind::Place
            && !event.late
            && let Some(place) = &event.place
        {
            println!("{} arrived at {place}", event.state.name);
            printed += 1;
        }
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
