//! The live feed of presence events: one ordered consumer on `PRESENCE`
//! fanned out to every SSE client through a broadcast channel, and replay
//! from the stream for clients that resume with `Last-Event-ID`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use shared::state::PresenceEvent;
use shared::subjects::{PRESENCE_STREAM, presence_household};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::people::People;

/// One presence event as the stream holds it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The PRESENCE stream sequence: the SSE `id:`.
    pub seq: u64,
    pub household: String,
    /// The event's JSON, sent to clients as it is.
    pub json: Arc<str>,
}

#[derive(Clone)]
pub struct Live {
    js: jetstream::Context,
    tx: broadcast::Sender<Arc<LiveEvent>>,
    /// The last sequence broadcast (or, before any, the stream's last at start).
    last_seq: Arc<AtomicU64>,
}

/// Events buffered for slow clients before they lag.
const BROADCAST_CAPACITY: usize = 8192;

impl Live {
    pub fn new(js: jetstream::Context) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Live {
            js,
            tx,
            last_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// The stream's last sequence now.
    pub async fn stream_last_seq(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(PRESENCE_STREAM).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// The first sequence the stream still holds.
    pub async fn stream_first_seq(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(PRESENCE_STREAM).await?;
        Ok(stream.info().await?.state.first_sequence)
    }

    /// Follows the stream from `after + 1`, keeping `people` current and
    /// broadcasting each event, until `shutdown`.
    pub async fn follow(self, after: u64, people: People, shutdown: CancellationToken) {
        self.last_seq.store(after, Ordering::Release);
        let mut backoff = shared::mqtt::Backoff::default();
        while !shutdown.is_cancelled() {
            let start = self.last_seq() + 1;
            let messages = match self.ordered(">", start).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow PRESENCE; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            let mut messages = std::pin::pin!(messages);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        if let Ok(state) = serde_json::from_str::<PresenceEvent>(&event.json) {
                            people.set(state.state);
                        }
                        self.last_seq.store(event.seq, Ordering::Release);
                        // No receivers is fine: nobody is listening yet.
                        let _ = self.tx.send(Arc::new(event));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "PRESENCE feed error; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// An ordered consumer over `presence.<household>.>` (or all with `>`)
    /// from `start`, as a stream of events.
    pub async fn ordered(
        &self,
        household_filter: &str,
        start: u64,
    ) -> anyhow::Result<impl futures::Stream<Item = anyhow::Result<LiveEvent>> + use<>> {
        let filter = if household_filter == ">" {
            "presence.>".to_string()
        } else {
            presence_household(household_filter)
        };
        let stream = self.js.get_stream(PRESENCE_STREAM).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        Ok(messages.map(|m| {
            let m = m?;
            let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let seq = info.stream_sequence;
            let household = m
                .subject
                .split('.')
                .nth(1)
                .and_then(shared::token::decode)
                .unwrap_or_default();
            let json: Arc<str> = String::from_utf8_lossy(&m.payload).into();
            Ok(LiveEvent {
                seq,
                household,
                json,
            })
        }))
    }

    /// How many events of a household are pending after `after`: used to
    /// know when a replay has caught up.
    pub async fn pending(&self, household: &str, after: u64) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(PRESENCE_STREAM).await?;
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: presence_household(household),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                inactive_threshold: std::time::Duration::from_secs(5),
                ..Default::default()
            })
            .await?;
        let pending = consumer.info().await?.num_pending;
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        Ok(pending)
    }
}
