//! Sending: one persistent MQTT session (QoS 1) for the MQTT phones, HTTP
//! mode (`POST /pub`, Basic auth, `X-Limit-U/D`) for the others; payloads of
//! devices with a secret are encrypted as the apps do it. Optionally every
//! message sent is recorded as a JSON line.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::render::Outgoing;
use crate::world::{Device, Transport};

#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `mqtt://host:port`.
    pub mqtt_url: String,
    /// ingest's HTTP base, e.g. `http://127.0.0.1:8081`.
    pub http_url: String,
    /// MQTT client id of the simulator's session.
    pub client_id: String,
}

/// What was sent, counted by transport.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sent {
    pub mqtt: u64,
    pub http: u64,
    /// HTTP posts that got no 2xx after retries (never expected).
    pub http_failed: u64,
}

pub(crate) struct Sender {
    mqtt: Option<(AsyncClient, JoinHandle<()>)>,
    acked: Arc<AtomicU64>,
    http: reqwest::Client,
    http_url: String,
    record: Option<std::io::BufWriter<std::fs::File>>,
    started: tokio::time::Instant,
    sent: Sent,
}

/// A header line first, then one line per message sent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordHeader {
    pub whereabouts_sim: u32,
    pub seed: u64,
    /// Unix seconds when the run started; replays shift times by the
    /// difference to their own start.
    pub started_unix: i64,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordLine {
    /// Milliseconds after the start of the run.
    pub ms: u64,
    #[serde(flatten)]
    pub outgoing: Outgoing,
}

impl Sender {
    /// Connects the MQTT session (when any device uses MQTT) and opens the
    /// recording.
    pub(crate) async fn connect(
        endpoints: &Endpoints,
        devices: &[Device],
        record: Option<(&std::path::Path, RecordHeader)>,
    ) -> anyhow::Result<Sender> {
        let acked = Arc::new(AtomicU64::new(0));
        let mqtt = if devices.iter().any(|d| d.transport == Transport::Mqtt) {
            let mut options =
                shared::mqtt::options(&endpoints.mqtt_url, &endpoints.client_id, None, None, None)?;
            // Like the phones: a persistent session, so QoS 1 messages
            // survive a broker restart.
            options.set_clean_session(false);
            options.set_inflight(100);
            options.set_last_will(LastWill::new(
                format!("whereabouts-sim/{}", endpoints.client_id),
                "gone",
                QoS::AtMostOnce,
                false,
            ));
            let (client, mut eventloop) = AsyncClient::new(options, 1_000);
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let counter = acked.clone();
            let task = tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let mut backoff = shared::retry::Backoff::default();
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff.reset();
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                    }
                }
            });
            tokio::time::timeout(Duration::from_secs(30), ready_rx)
                .await
                .map_err(|_| anyhow::anyhow!("no CONNACK from {} in 30 s", endpoints.mqtt_url))?
                .ok();
            Some((client, task))
        } else {
            None
        };
        let record = match record {
            None => None,
            Some((path, header)) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating the recording {}", path.display()))?;
                let mut w = std::io::BufWriter::new(file);
                serde_json::to_writer(&mut w, &header)?;
                w.write_all(b"\n")?;
                Some(w)
            }
        };
        Ok(Sender {
            mqtt,
            acked,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("HTTP client")?,
            http_url: endpoints.http_url.trim_end_matches('/').to_string(),
            record,
            started: tokio::time::Instant::now(),
            sent: Sent::default(),
        })
    }

    /// Sends one message as `device` would.
    pub(crate) async fn send(&mut self, device: &Device, out: &Outgoing) -> anyhow::Result<()> {
        let plain = out.message.to_string();
        let wire = match &device.secret {
            Some(secret) => {
                json!({"_type": "encrypted", "data": shared::crypto::encrypt(plain.as_bytes(), secret)})
                    .to_string()
            }
            None => plain,
        };
        match device.transport {
            Transport::Mqtt => {
                let Some((client, _)) = &self.mqtt else {
                    bail!("no MQTT session for {}", device.id());
                };
                client
                    .publish(out.topic.as_str(), QoS::AtLeastOnce, false, wire)
                    .await
                    .with_context(|| format!("queueing a publish to {}", out.topic))?;
                self.sent.mqtt += 1;
            }
            Transport::Http => {
                if self.post(device, out, wire).await {
                    self.sent.http += 1;
                } else {
                    self.sent.http_failed += 1;
                }
            }
        }
        if let Some(w) = &mut self.record {
            let line = RecordLine {
                ms: self.started.elapsed().as_millis() as u64,
                outgoing: out.clone(),
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// One HTTP-mode POST, retried like the app retries (any non-2xx
    /// answer but 4xx, with backoff) for up to a minute.
    async fn post(&self, device: &Device, out: &Outgoing, wire: String) -> bool {
        // The app's HTTP body carries the topic it would have used.
        let body = match serde_json::from_str::<Value>(&wire) {
            Ok(Value::Object(mut m)) if device.secret.is_none() => {
                m.insert("topic".into(), json!(out.topic));
                Value::Object(m).to_string()
            }
            _ => wire,
        };
        let url = format!("{}/pub", self.http_url);
        let mut backoff = shared::retry::Backoff::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self
                .http
                .post(&url)
                .basic_auth(&device.user, device.password.as_deref())
                .header("X-Limit-U", &device.user)
                .header("X-Limit-D", &device.device)
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(device = %device.id(), status = %r.status(), "HTTP mode post refused");
                    return false;
                }
                Ok(r) => {
                    tracing::warn!(device = %device.id(), status = %r.status(), "HTTP mode post failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(device = %device.id(), error = %e, "HTTP mode post failed; retrying")
                }
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Waits until the broker acknowledged every MQTT message sent, flushes
    /// the recording and disconnects.
    pub(crate) async fn finish(mut self, timeout: Duration) -> anyhow::Result<Sent> {
        if let Some(w) = &mut self.record {
            w.flush().context("writing the recording")?;
        }
        if let Some((client, task)) = self.mqtt.take() {
            let deadline = tokio::time::Instant::now() + timeout;
            while self.acked.load(Ordering::Relaxed) < self.sent.mqtt {
                if tokio::time::Instant::now() > deadline {
                    task.abort();
                    bail!(
                        "only {} of {} MQTT messages acknowledged after {timeout:?}",
                        self.acked.load(Ordering::Relaxed),
                        self.sent.mqtt
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = client.disconnect().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            task.abort();
        }
        Ok(self.sent)
    }
}
