//! The live feed of presence events: one ordered consumer on `PRESENCE`
//! fanned out to every SSE client through a broadcast channel, and replay
//! from the stream for clients that resume with `Last-Event-ID`. Each event
//! is framed for SSE once, here; every client writes the same bytes.
//!
//! A stream that goes back (deleted and recreated, or restored from an
//! older volume) restarts its sequences below what clients have seen: the
//! feed then goes on from the stream's end and tells clients to take a
//! fresh snapshot ([`Feed::Reset`]), or they would wait for the sequence
//! to pass their last id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, consumer};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::StreamExt;
use shared::state::PresenceEvent;
use shared::subjects::{PRESENCE_STREAM, presence_household};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::people::People;

/// One presence event as the stream holds it.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    /// The PRESENCE stream sequence: the SSE `id:`.
    pub(crate) seq: u64,
    pub(crate) household: String,
    /// The SSE frame (`event: presence`, `id:`, `data:`), shared by every
    /// client: an event is framed once, however many clients read it.
    pub(crate) frame: Bytes,
    /// The event's JSON: a view into `frame` (no second copy).
    pub(crate) json: Bytes,
}

/// An SSE frame with `event`, `id` and `data` (one `data:` line per line
/// of it), and the range of `frame` that holds `data` when it is one line.
pub(crate) fn sse_frame(
    event: &str,
    id: u64,
    data: &str,
) -> (Bytes, Option<std::ops::Range<usize>>) {
    let mut frame = BytesMut::with_capacity(data.len() + event.len() + 40);
    frame.put_slice(b"event: ");
    frame.put_slice(event.as_bytes());
    frame.put_slice(b"\nid: ");
    frame.put_slice(id.to_string().as_bytes());
    frame.put_slice(b"\n");
    let start = frame.len() + b"data: ".len();
    for line in data.split('\n') {
        frame.put_slice(b"data: ");
        frame.put_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        frame.put_u8(b'\n');
    }
    let one_line = !data.contains('\n');
    let range = one_line.then(|| start..start + data.len());
    frame.put_u8(b'\n');
    (frame.freeze(), range)
}

/// What the live broadcast carries.
#[derive(Debug)]
pub(crate) enum Feed {
    Event(LiveEvent),
    /// The stream went back: what clients hold is no base for its new
    /// sequences. `seq` is the stream's last sequence then.
    Reset {
        seq: u64,
    },
}

/// How often the follower checks that the stream did not go back.
const RESET_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// A stream's identity and extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// When the stream was created: a recreated stream has a new one.
    pub(crate) created: time::OffsetDateTime,
}

#[derive(Clone)]
pub(crate) struct Live {
    js: jetstream::Context,
    tx: broadcast::Sender<Arc<Feed>>,
    /// The last sequence broadcast (or, before any, the stream's last at start).
    last_seq: Arc<AtomicU64>,
}

/// Events buffered for slow clients before they lag.
const BROADCAST_CAPACITY: usize = 8192;

impl Live {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Live {
            js,
            tx,
            last_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Feed>> {
        self.tx.subscribe()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// The stream's last sequence now.
    pub(crate) async fn stream_last_seq(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(PRESENCE_STREAM).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// The stream's first and last sequences and creation time now.
    pub(crate) async fn stream_bounds(&self) -> anyhow::Result<Bounds> {
        let mut stream = self.js.get_stream(PRESENCE_STREAM).await?;
        let info = stream.info().await?;
        Ok(Bounds {
            first: info.state.first_sequence,
            last: info.state.last_sequence,
            created: info.created,
        })
    }

    /// Follows the stream from `after + 1`, keeping `people` current and
    /// broadcasting each event, until `shutdown`.
    pub(crate) async fn follow(self, after: u64, people: People, shutdown: CancellationToken) {
        self.last_seq.store(after, Ordering::Release);
        let mut backoff = shared::retry::Backoff::default();
        let mut created = None;
        while !shutdown.is_cancelled() {
            if let Err(e) = self.check_reset(&mut created).await {
                tracing::warn!(error = %e, "cannot read PRESENCE; retrying");
                if !shared::retry::sleep_unless_cancelled(backoff.next_delay(), &shutdown).await {
                    return;
                }
                continue;
            }
            let start = self.last_seq() + 1;
            let messages = match self.ordered(">", start).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow PRESENCE; retrying");
                    if !shared::retry::sleep_unless_cancelled(backoff.next_delay(), &shutdown).await
                    {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let mut messages = std::pin::pin!(messages);
            let mut checks = tokio::time::interval(RESET_CHECK);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            checks.tick().await; // the first tick is now: just checked
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = checks.tick() => match self.check_reset(&mut created).await {
                        Ok(false) => continue,
                        // Reset (or unreadable): subscribe again from the new position.
                        Ok(true) | Err(_) => break,
                    },
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        if let Ok(state) = serde_json::from_slice::<PresenceEvent>(&event.json) {
                            people.set(state.state);
                        }
                        self.last_seq.store(event.seq, Ordering::Release);
                        // No receivers is fine: nobody is listening yet.
                        let _ = self.tx.send(Arc::new(Feed::Event(event)));
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

    /// Whether the stream went back since `created` was noted (another
    /// creation time, or a last sequence below what was broadcast); if so,
    /// moves the feed to the stream's end and broadcasts [`Feed::Reset`].
    async fn check_reset(
        &self,
        created: &mut Option<time::OffsetDateTime>,
    ) -> anyhow::Result<bool> {
        let bounds = self.stream_bounds().await?;
        let seen = self.last_seq();
        let recreated = created.is_some_and(|c| c != bounds.created);
        *created = Some(bounds.created);
        if !recreated && bounds.last >= seen {
            return Ok(false);
        }
        tracing::warn!(
            stream_last = bounds.last,
            seen,
            recreated,
            "PRESENCE went back (recreated or restored): going on from its end; SSE clients get a snapshot"
        );
        self.last_seq.store(bounds.last, Ordering::Release);
        let _ = self.tx.send(Arc::new(Feed::Reset { seq: bounds.last }));
        Ok(true)
    }

    /// An ordered consumer over `presence.<household>.>` (or all with `>`)
    /// from `start`, as a stream of events.
    pub(crate) async fn ordered(
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
            let text = String::from_utf8_lossy(&m.payload);
            let (frame, range) = sse_frame("presence", seq, &text);
            let json = match range {
                Some(range) => frame.slice(range),
                None => Bytes::copy_from_slice(text.as_bytes()),
            };
            Ok(LiveEvent {
                seq,
                household,
                frame,
                json,
            })
        }))
    }

    /// How many events of a household are pending after `after`: used to
    /// know when a replay has caught up.
    pub(crate) async fn pending(&self, household: &str, after: u64) -> anyhow::Result<u64> {
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
