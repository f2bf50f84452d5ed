//! What the Whereabouts services share: the message model, the names of the
//! NATS contract, configuration and telemetry. No business logic lives here.
//!
//! Layout:
//! - `owntracks`: OwnTracks payloads parsed tolerantly, with reject reasons.
//! - `crypto`: decryption (and encryption) of `encrypted` payloads.
//! - `topic`: MQTT topic patterns (`owntracks/{user}/{device}`, one or
//!   several at once), and which message type each suffix takes.
//! - `token`: the reversible encoding of names into subject tokens.
//! - `limits`: size limits on names that become subjects, keys or state.
//! - `subjects`: stream, subject, bucket and key names of the contract.
//! - `envelope`: what ingest publishes around each message.
//! - `state`: person and device state, presence events.
//! - `config`: the TOML file shared by the three services.
//! - `reload`: the config in force ([`reload::LiveConfig`]), read again
//!   on SIGHUP, with its metrics.
//! - `exposure`: refusing published secrets and open households beyond loopback.
//! - `cli`: command-line and environment settings common to the binaries.
//! - `jetstream`: connecting to NATS; idempotent creation of streams and KV.
//! - `mqtt`: MQTT connection options.
//! - `retry`: the one backoff and cancellable sleep every retry loop uses.
//! - `telemetry`: logging and Prometheus helpers.
//! - `server`: `/metrics`, `/healthz`, `/readyz` and signal handling.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod envelope;
pub mod exposure;
pub mod jetstream;
pub mod limits;
pub mod mqtt;
pub mod owntracks;
pub mod reload;
pub mod retry;
pub mod server;
pub mod state;
pub mod subjects;
pub mod telemetry;
pub mod token;
pub mod topic;
