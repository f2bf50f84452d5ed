//! Connecting once with the admin credentials, and reading streams.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use shared::cli::CommonArgs;
use time::OffsetDateTime;

/// How long connecting, and each read, may take before giving up.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
}

/// Where to start reading a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum From {
    Start,
    Time(OffsetDateTime),
    New,
}

impl Nats {
    pub(crate) async fn connect(args: &CommonArgs) -> anyhow::Result<Nats> {
        let auth = args.nats_auth();
        let connect =
            shared::jetstream::connect_once(&args.nats_url, &auth, "whereabouts-admin", WAIT);
        let client = tokio::time::timeout(WAIT, connect)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {WAIT:?}"))
            .and_then(|r| r)
            .with_context(|| {
                format!(
                    "cannot reach NATS at {} (set NATS_URL and the admin credentials)",
                    shared::telemetry::redact_url(&args.nats_url)
                )
            })?;
        Ok(Nats {
            js: jetstream::new(client.clone()),
            client,
        })
    }

    /// An ordered consumer on `stream` over `filters` (none: all subjects).
    pub(crate) async fn consumer(
        &self,
        stream: &str,
        filters: Vec<String>,
        from: From,
    ) -> anyhow::Result<jetstream::consumer::Consumer<OrderedConfig>> {
        let handle = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| format!("stream {stream} (have the services run?)"))?;
        let deliver_policy = match from {
            From::Start => DeliverPolicy::All,
            From::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
            From::New => DeliverPolicy::New,
        };
        handle
            .create_consumer(OrderedConfig {
                filter_subjects: filters,
                deliver_policy,
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading stream {stream}"))
    }

    /// The messages of `stream` on `filters` from `from` up to its current
    /// end, oldest first; `keep` stops early when it says no.
    pub(crate) async fn read_stream(
        &self,
        stream: &str,
        filters: Vec<String>,
        from: From,
        mut keep: impl FnMut(&jetstream::Message) -> bool,
    ) -> anyhow::Result<Vec<jetstream::Message>> {
        let consumer = self.consumer(stream, filters, from).await?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .with_context(|| format!("reading stream {stream}"))?;
        loop {
            let Some(next) = tokio::time::timeout(WAIT, messages.next())
                .await
                .with_context(|| format!("stream {stream}: nothing within {WAIT:?}"))?
            else {
                bail!("stream {stream}: the consumer ended");
            };
            let message = next.with_context(|| format!("reading stream {stream}"))?;
            let pending = message.info().map_err(anyhow::Error::msg)?.pending;
            if !keep(&message) {
                return Ok(out);
            }
            out.push(message);
            if pending == 0 {
                return Ok(out);
            }
        }
    }

    /// The `presence` KV bucket.
    pub(crate) async fn presence_kv(&self) -> anyhow::Result<jetstream::kv::Store> {
        self.js
            .get_key_value(shared::subjects::PRESENCE_BUCKET)
            .await
            .context("KV bucket presence (has presence run?)")
    }
}
