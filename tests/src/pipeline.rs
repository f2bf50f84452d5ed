//! The whole pipeline for end-to-end tests: nats-server, mosquitto, and
//! ingest, presence and notifier as real processes sharing one config.

use async_nats::jetstream;

use crate::{Mosquitto, NatsServer, Service};

pub struct Pipeline {
    pub nats: NatsServer,
    pub mosquitto: Mosquitto,
    pub ingest: Service,
    pub presence: Service,
    pub notifier: Service,
    pub js: jetstream::Context,
}

impl Pipeline {
    /// Starts everything with `config` (TOML) and waits until each service
    /// is ready.
    pub async fn start(config: &str) -> Pipeline {
        let nats = NatsServer::start().await;
        let mosquitto = Mosquitto::start().await;
        let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
        let presence = Service::start("presence", &nats.url(), &mosquitto.url(), config).await;
        let notifier = Service::start("notifier", &nats.url(), &mosquitto.url(), config).await;
        let js = nats.jetstream().await;
        Pipeline {
            nats,
            mosquitto,
            ingest,
            presence,
            notifier,
            js,
        }
    }
}
