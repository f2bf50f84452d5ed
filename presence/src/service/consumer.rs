//! The OWNTRACKS consumer: one durable pull consumer shared by all
//! instances; each message is decoded, routed to its person's queue, or
//! acked (or terminated) on the spot when no person needs it.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use shared::config::Config;
use shared::envelope::Envelope;
use shared::subjects::OWNTRACKS_STREAM;
use tokio_util::sync::CancellationToken;

use super::queues::Queues;
use super::{ACK_WAIT, CONSUMER, Engine, MAX_ACK_PENDING, Work, household};
use crate::input::{Poison, from_envelope};
use crate::machine::DeviceInput;
use crate::metrics::MessageOutcome;

impl Engine {
    /// Consumes OWNTRACKS until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queues = Queues::new(self.clone(), shutdown.clone());
        let timers = {
            let (engine, queues, stop) = (self.clone(), queues.clone(), shutdown.clone());
            tokio::spawn(async move { engine.timers(stop, queues).await })
        };

        // NATS may go away at any point, here too: the consumer is made
        // (and, should its message stream end, made again) with retries,
        // never the end of the service.
        'open: while !shutdown.is_cancelled() {
            let open = shared::jetstream::retry_setup("the OWNTRACKS consumer", &shutdown, || {
                self.open_consumer()
            });
            let Some(mut messages) = open.await else {
                break;
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break 'open,
                    next = messages.next() => next,
                };
                let mut message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "OWNTRACKS consumer error");
                        continue;
                    }
                    None => {
                        tracing::warn!("OWNTRACKS consumer ended; opening it again");
                        let pause = Duration::from_secs(1);
                        if !shared::retry::sleep_unless_cancelled(pause, &shutdown).await {
                            break 'open;
                        }
                        continue 'open;
                    }
                };
                let received = Instant::now();
                let config = self.config.get();
                let Some((input, person)) = self.route(&message, &config).await else {
                    continue;
                };
                // Only the ack is needed from here on: queued messages hold no payload.
                message.message.payload = bytes::Bytes::new();
                let household = input.household.clone();
                let work = Work::Message {
                    message: Box::new(message),
                    input: Box::new(input),
                    received,
                    config,
                };
                queues.push(&household, &person, work);
            }
        }
        timers.abort();
        // Tasks finish the batch in hand; the rest is redelivered.
        queues.idle(Duration::from_secs(5)).await;
        Ok(())
    }

    /// The shared durable on OWNTRACKS, created or updated (so that a new
    /// version's settings apply), and its message stream.
    async fn open_consumer(&self) -> anyhow::Result<consumer::pull::Stream> {
        let stream = self.js.get_stream(OWNTRACKS_STREAM).await?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                // No subject filter: with thousands of devices a filtered
                // consumer costs the server a scan per delivery (measured:
                // nats-server saturated at ~2,000 msg/s). The few other
                // kinds are acked and skipped by `route`.
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .context("creating the presence consumer")?;
        consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .context("consuming OWNTRACKS")
    }

    /// Decodes a message into an input and its person; handles (acks or
    /// terminates) the ones that need no worker.
    async fn route(
        &self,
        message: &jetstream::Message,
        config: &Config,
    ) -> Option<(DeviceInput, String)> {
        let source_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string())
            .or_else(|| {
                message
                    .info()
                    .ok()
                    .map(|i| format!("seq-{}", i.stream_sequence))
            })
            .unwrap_or_default();
        let decoded = serde_json::from_slice::<Envelope>(&message.payload)
            .map_err(|e| Poison(e.to_string()))
            .and_then(|envelope| from_envelope(envelope, source_id));
        let input = match decoded {
            Ok(Some(input)) => input,
            Ok(None) => {
                self.metrics.message(MessageOutcome::Ignored).inc();
                let _ = message.ack().await;
                return None;
            }
            Err(poison) => {
                // Retrying cannot help: terminate, count, go on.
                tracing::warn!(subject = %message.subject, error = %poison, "poison message terminated");
                self.metrics.message(MessageOutcome::Poison).inc();
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let household = household(config, &input.household);
        match household.person_for(&input.user, &input.device) {
            Some(person) => Some((input, person)),
            None => {
                self.metrics.message(MessageOutcome::Unmapped).inc();
                let _ = message.ack().await;
                None
            }
        }
    }
}
