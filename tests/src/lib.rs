//! The real-broker test harness: every test starts its own nats-server and
//! mosquitto on free ports, and waits with deadlines instead of sleeps.
//!
//! # Layout
//! - `nats` — [`NatsServer`] (nats-server with JetStream per test: start,
//!   stop, kill, restart on the same port and store; or run from
//!   `deploy/nats-server.conf` with [`DEPLOY_PASSWORDS`], see
//!   [`deploy_password`]) and the JetStream
//!   readers [`stream_messages`] and [`stream_count`]; or from
//!   `deploy/nats-server-mqtt.conf` with phones on its MQTT listener
//!   ([`NatsServer::start_phones`], or [`NatsServer::start_phones_with`]
//!   other phone users; [`phone_password`]).
//! - `cluster` — [`NatsCluster`]: three nats-servers with JetStream routed
//!   into one cluster (the comma-separated URL list, kill and restart a
//!   node on its ports and store), optionally each with an MQTT listener
//!   for phones ([`NatsCluster::start_phones`]).
//! - `traffic` — seeded simulator traffic and what it left:
//!   `traffic::world_config`, recorded runs, `traffic::distinct_messages`,
//!   `traffic::settle`, and KV states, events and event ids in a form two
//!   runs of the same input compare by.
//! - `mosquitto` — [`Mosquitto`] (broker per test, configured from
//!   `deploy/mosquitto.conf`: start, stop, kill, restart with persistence).
//! - `mqtt` — [`MqttPublisher`] (QoS 1, waits for PUBACKs) and
//!   [`MqttSubscriber`] (QoS 1, optionally a persistent session);
//!   [`parse_mqtt_url`].
//! - `eventually` — [`eventually`]: poll a condition until a deadline.
//! - `phone` — [`Phone`]: a scripted OwnTracks phone (transitions, fixes).
//! - `pipeline` — [`Pipeline`]: brokers plus ingest, presence and notifier
//!   with one config, for end-to-end tests of the whole chain; the services
//!   take `NATS_URL` as given, so a comma-separated list of servers (a
//!   cluster) works too ([`Pipeline::start_with_nats_urls`]); or each
//!   service as its own NATS user ([`Pipeline::start_deployed`]).
//! - `service` — [`Service`]: a Whereabouts service as a real process
//!   (start with a config, stop, kill, restart, reload a new config with
//!   SIGHUP, read a metric or the whole `/metrics` text);
//!   [`service_binary`] and [`service_help`] (a service's `--help` text).
//! - `sse` — [`SseClient`]: the notifier's event stream, parsed into
//!   [`SseItem`]s (resumable with `Last-Event-ID`).
//! - `published` — what the services stored, read back: [`envelopes`]
//!   (OWNTRACKS), [`presence_events`] (PRESENCE, with stream sequences),
//!   [`quiet_presence_events`], [`kv_state`] (the presence KV); and
//!   [`wait_place`], [`wait_place_event`].
//! - `http_stand_in` — [`Recorder`] (stands in for ntfy or
//!   MMM-Remote-Control: records every request) and [`Receiver`] (a webhook
//!   receiver that fails on demand).
//! - `prometheus` — [`Prometheus`] (Debian's prometheus scraping the
//!   services every second, PromQL queries; `None` where not installed).
//! - [`free_port`]: a free TCP port on 127.0.0.1 (for extra processes).
//! - `browser` — [`Chromium`] (headless, driven over the DevTools protocol:
//!   navigate, evaluate, poll the live DOM, screenshot) and [`MagicMirror`]
//!   (2.30 server-only, installed once under `target/`); [`skip`] for
//!   machines without them; [`repo_dir`] and [`read_repo_file`] for the
//!   repository's own files.
//! - `cargo` — [`cargo_build`]: workspace binaries built from a test (the
//!   demo's services, the example consumers).
//! - `process` (private) — spawning, signalling and reaping broker processes.
//!
//! Binaries: `NATS_SERVER_BIN` or `nats-server` (>= 2.11) on PATH;
//! `MOSQUITTO_BIN`, `/usr/sbin/mosquitto` or `mosquitto` on PATH.
//! `CHROMIUM_BIN` or `/usr/bin/chromium`; `node` and `npm` for MagicMirror².
//! `scripts/setup.sh` installs the brokers on a fresh Debian machine
//! (`--browser`: Chromium too).

mod browser;
mod cargo;
mod cluster;
mod eventually;
mod http_stand_in;
mod mosquitto;
mod mqtt;
mod nats;
mod phone;
mod pipeline;
mod process;
mod prometheus;
mod published;
mod service;
mod sse;
pub mod traffic;

pub use browser::{
    Chromium, MAGICMIRROR_VERSION, MagicMirror, chromium_binary, read_repo_file, repo_dir, skip,
    target_dir,
};
pub use cargo::cargo_build;
pub use cluster::NatsCluster;
pub use eventually::{Outcome, eventually};
pub use http_stand_in::{Delivery, Receiver, Recorder, Request};
pub use mosquitto::Mosquitto;
pub use mqtt::{MAX_PACKET_SIZE, MqttPublisher, MqttSubscriber, Received, parse_mqtt_url};
pub use nats::{
    DEPLOY_PASSWORDS, NatsServer, deploy_password, phone_password, phones_config_files,
    stream_count, stream_messages,
};
pub use phone::Phone;
pub use pipeline::Pipeline;
pub use process::free_port;
pub use prometheus::Prometheus;
pub use published::{
    envelopes, kv_state, presence_events, quiet_presence_events, wait_place, wait_place_event,
};
pub use service::{Service, service_binary, service_help};
pub use sse::{SseClient, SseItem};
