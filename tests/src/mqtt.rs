//! MQTT test clients on rumqttc: `MqttPublisher` (QoS 1, waits for PUBACKs)
//! and `MqttSubscriber` (QoS 1, optionally a persistent session).
//!
//! Each client runs its event loop in a spawned task that reconnects with
//! backoff and subscribes again on every ConnAck, so a broker restart in the
//! middle of a test is survived.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

/// Largest MQTT packet the test clients send or accept; matches
/// `max_packet_size` in `deploy/mosquitto.conf` (rumqttc's default is 10 KiB,
/// smaller than some OwnTracks cards).
pub const MAX_PACKET_SIZE: usize = 2 * 1024 * 1024;

/// How long `connect` and `publish*` wait before they panic.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Requests rumqttc buffers between the client handle and its event loop.
const REQUEST_CAPACITY: usize = 1024;

/// What the event loop task has seen so far.
#[derive(Debug, Default)]
struct LoopState {
    connacks: u64,
    pubacks: u64,
    subacks: u64,
    last_error: Option<String>,
}

/// A message an [`MqttSubscriber`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
}

impl Received {
    /// The payload as UTF-8 (lossy), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Publishes QoS 1 messages and waits until the broker has acknowledged them.
///
/// ```no_run
/// # async fn f(url: &str) {
/// let phone = whereabouts_tests::MqttPublisher::connect(url, "alice-phone").await;
/// phone.publish("owntracks/alice/phone", r#"{"_type":"location"}"#).await;
/// # }
/// ```
pub struct MqttPublisher {
    client: AsyncClient,
    state: watch::Receiver<LoopState>,
    /// PUBACKs expected so far; held for a whole `publish_many` so calls
    /// from several tasks do not mix up their counts.
    sent: Mutex<u64>,
    task: JoinHandle<()>,
}

impl MqttPublisher {
    /// Connects to `url` (`mqtt://host:port`) as `client_id` and waits for
    /// the ConnAck. Uses a persistent session (like OwnTracks phones), so
    /// unacknowledged publishes are sent again after a broker restart.
    pub async fn connect(url: &str, client_id: &str) -> MqttPublisher {
        let options = options(url, client_id, false);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (tx, state) = watch::channel(LoopState::default());
        let task = tokio::spawn(drive(eventloop, client.clone(), Vec::new(), tx, None));
        let publisher = MqttPublisher {
            client,
            state,
            sent: Mutex::new(0),
            task,
        };
        wait_state(
            &publisher.state,
            &format!("ConnAck for {client_id} from {url}"),
            |s| s.connacks >= 1,
        )
        .await;
        publisher
    }

    /// Publishes one QoS 1 message (not retained) and waits for its PUBACK.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_many([(topic.to_string(), payload.into())])
            .await;
    }

    /// Publishes one QoS 0 message (not retained): queued, nothing to wait
    /// for.
    pub async fn publish_qos0(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload.into())
            .await
            .unwrap_or_else(|e| panic!("queue a publish to {topic}: {e}"));
    }

    /// Publishes one retained QoS 1 message and waits for its PUBACK.
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, true).await;
    }

    /// Publishes one QoS 1 message with the given retain flag and waits for
    /// its PUBACK.
    pub async fn publish_with(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.send_all([(topic.to_string(), payload.into(), retain)])
            .await;
    }

    /// Publishes every `(topic, payload)` as QoS 1, not retained, pipelined,
    /// and returns when all of them are acknowledged (panics after 30 s).
    ///
    /// Acks are counted, not matched by packet id: if a broker restart makes
    /// rumqttc resend a message the broker had already acknowledged, a later
    /// call may return one ack early. Assert on what subscribers or streams
    /// received, not on this call alone, around restarts.
    pub async fn publish_many<I, T, P>(&self, messages: I)
    where
        I: IntoIterator<Item = (T, P)>,
        T: Into<String>,
        P: Into<Vec<u8>>,
    {
        self.send_all(
            messages
                .into_iter()
                .map(|(topic, payload)| (topic.into(), payload.into(), false)),
        )
        .await;
    }

    async fn send_all(&self, messages: impl IntoIterator<Item = (String, Vec<u8>, bool)>) {
        let mut sent = self.sent.lock().await;
        for (topic, payload, retain) in messages {
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, retain, payload)
                .await
                .unwrap_or_else(|e| panic!("queue a publish to {topic}: {e}"));
            *sent += 1;
        }
        let target = *sent;
        wait_state(
            &self.state,
            &format!("PUBACKs for {target} messages"),
            |s| s.pubacks >= target,
        )
        .await;
    }

    /// Sends DISCONNECT and stops the event loop.
    pub async fn disconnect(self) {
        disconnect(&self.client, &self.task).await;
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes with QoS 1 and collects what arrives.
///
/// ```no_run
/// # async fn f(url: &str) {
/// use std::time::Duration;
/// let mut sub =
///     whereabouts_tests::MqttSubscriber::connect(url, "ingest", false, &["owntracks/#"]).await;
/// let first = sub.recv(Duration::from_secs(5)).await;
/// # }
/// ```
pub struct MqttSubscriber {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl MqttSubscriber {
    /// Connects as `client_id` (`clean_session = false` keeps the session
    /// and its queue in the broker while disconnected), subscribes to
    /// `filters` with QoS 1 and waits for the SubAck. Subscribes again after
    /// every reconnect.
    pub async fn connect(
        url: &str,
        client_id: &str,
        clean_session: bool,
        filters: &[&str],
    ) -> MqttSubscriber {
        assert!(!filters.is_empty(), "subscribe to at least one filter");
        let options = options(url, client_id, clean_session);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (tx, state) = watch::channel(LoopState::default());
        let (received_tx, received) = mpsc::unbounded_channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            filters.clone(),
            tx,
            Some(received_tx),
        ));
        wait_state(
            &state,
            &format!("SubAck for {filters:?} as {client_id} from {url}"),
            |s| s.subacks >= 1,
        )
        .await;
        MqttSubscriber {
            client,
            received,
            task,
        }
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Exactly the next `n` messages; panics if fewer arrive within `timeout`.
    pub async fn recv_n(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(message)) => out.push(message),
                _ => panic!(
                    "received {} of {n} messages within {timeout:?}: {:?}",
                    out.len(),
                    out.iter().map(|m| &m.topic).collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Sends DISCONNECT and stops the event loop; with `clean_session = false`
    /// the broker keeps the session and queues QoS 1 messages for it.
    pub async fn disconnect(self) {
        disconnect(&self.client, &self.task).await;
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options(url: &str, client_id: &str, clean_session: bool) -> MqttOptions {
    let (credentials, host, port) = parse_mqtt_url(url);
    let mut options = MqttOptions::new(client_id, host, port);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    options
        .set_clean_session(clean_session)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_inflight(1000);
    options
}

/// `mqtt://[user:password@]host:port` (or `tcp://`, or bare `host:port`)
/// → `(credentials, host, port)`.
#[allow(clippy::type_complexity)]
pub fn parse_mqtt_url(url: &str) -> (Option<(String, String)>, String, u16) {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (Some((user.to_string(), password.to_string())), host)
        }
        None => (None, rest),
    };
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("MQTT URL without a port: {url}"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("bad port in MQTT URL {url}"));
    (credentials, host.to_string(), port)
}

async fn wait_state(
    state: &watch::Receiver<LoopState>,
    what: &str,
    done: impl Fn(&LoopState) -> bool,
) {
    let mut watching = state.clone();
    // Map to plain values at once: the `Ok(Ok(_))` value borrows the state.
    let waited = match tokio::time::timeout(TIMEOUT, watching.wait_for(|s| done(s))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(true),
        Err(_) => Err(false),
    };
    match waited {
        Ok(()) => {}
        Err(true) => panic!("waiting for {what}: the MQTT event loop ended"),
        Err(false) => panic!(
            "no {what} within {TIMEOUT:?}; last connection error: {:?}",
            state.borrow().last_error
        ),
    }
}

async fn disconnect(client: &AsyncClient, task: &JoinHandle<()>) {
    if client.disconnect().await.is_ok() {
        // The loop ends once DISCONNECT is flushed.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    task.abort();
}

/// The event loop task: never awaits slow work, reconnects with backoff,
/// subscribes again on every ConnAck.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    state: watch::Sender<LoopState>,
    received: Option<mpsc::UnboundedSender<Received>>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = MIN_BACKOFF;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = MIN_BACKOFF;
                for filter in &filters {
                    if let Err(e) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                        tracing::warn!(%filter, error = %e, "could not queue a subscribe");
                    }
                }
                state.send_modify(|s| s.connacks += 1);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => state.send_modify(|s| s.pubacks += 1),
            Ok(Event::Incoming(Packet::SubAck(_))) => state.send_modify(|s| s.subacks += 1),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(tx) = &received {
                    let _ = tx.send(Received {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                        retain: publish.retain,
                    });
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "MQTT connection error; reconnecting");
                state.send_modify(|s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mqtt_url;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1883"),
            (None, "127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("tcp://localhost:9/"),
            (None, "localhost".into(), 9)
        );
        assert_eq!(parse_mqtt_url("host:42"), (None, "host".into(), 42));
        assert_eq!(
            parse_mqtt_url("mqtt://jane:pw@host:42"),
            (Some(("jane".into(), "pw".into())), "host".into(), 42)
        );
    }
}
