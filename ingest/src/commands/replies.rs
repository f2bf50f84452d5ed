//! What phones publish in answer to commands — `waypoints` (their regions),
//! `status`, `dump` (their configuration) — kept per device in the `phones`
//! KV bucket under `<household>.<user>.<device>.<kind>`, the envelope as it
//! is on OWNTRACKS. An ordered consumer on OWNTRACKS starting with the last
//! message of each such subject fills it, so a restart (or a bucket created
//! late) catches up, and any number of ingest instances write the same.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use shared::retry::{Backoff, sleep_unless_cancelled};
use shared::subjects::{OWNTRACKS_STREAM, PHONES_BUCKET};
use tokio_util::sync::CancellationToken;

/// The message types a phone publishes when asked.
const KINDS: [&str; 3] = ["waypoints", "status", "dump"];

pub(crate) async fn bucket(
    js: &jetstream::Context,
    streams: &shared::config::StreamsConfig,
) -> anyhow::Result<kv::Store> {
    shared::jetstream::ensure_bucket(
        js,
        kv::Config {
            bucket: PHONES_BUCKET.into(),
            history: 1,
            num_replicas: streams.replicas,
            ..Default::default()
        },
    )
    .await
}

/// Copies replies into the bucket until `shutdown`, reconnecting on errors.
pub(crate) async fn keep(js: jetstream::Context, store: kv::Store, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        match copy(&js, &store, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "keeping phones' replies failed"
                );
                if !sleep_unless_cancelled(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn copy(
    js: &jetstream::Context,
    store: &kv::Store,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = js
        .get_stream(OWNTRACKS_STREAM)
        .await
        .context("OWNTRACKS stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: KINDS
                .iter()
                .map(|k| format!("owntracks.*.*.*.{k}"))
                .collect(),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .context("creating the replies consumer")?;
    let mut messages = consumer.messages().await.context("replies consumer")?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(m) => m.context("replies consumer")?,
                None => anyhow::bail!("replies consumer ended"),
            },
        };
        // The subject's tokens after `owntracks.` are the key.
        let Some(key) = message.subject.strip_prefix("owntracks.") else {
            continue;
        };
        store
            .put(key, message.payload.clone())
            .await
            .with_context(|| format!("storing {key}"))?;
        tracing::debug!(%key, "phone reply kept");
    }
}
