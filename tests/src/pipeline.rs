//! The whole pipeline for end-to-end tests: nats-server, mosquitto, and
//! ingest, presence and notifier as real processes sharing one config.

use async_nats::jetstream;

use crate::{Mosquitto, NatsServer, Service, deploy_password};

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
        Self::start_with_nats_urls(config, &[]).await
    }

    /// Like [`Pipeline::start`], with nats-server run from
    /// `deploy/nats-server.conf` ([`NatsServer::start_deployed`]) and each
    /// service connecting as its own user, as deployed.
    pub async fn start_deployed(config: &str) -> Pipeline {
        let nats = NatsServer::start_deployed().await;
        let mosquitto = Mosquitto::start().await;
        let start = async |kind: &str| {
            let url = nats.url_as(kind, deploy_password(kind));
            Service::start(kind, &url, &mosquitto.url(), config).await
        };
        let ingest = start("ingest").await;
        let presence = start("presence").await;
        let notifier = start("notifier").await;
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

    /// Like [`Pipeline::start`], with the services' `NATS_URL` a
    /// comma-separated list: `extra_nats_urls` (e.g. other cluster nodes,
    /// or an address nobody listens on) before this pipeline's own server.
    pub async fn start_with_nats_urls(config: &str, extra_nats_urls: &[String]) -> Pipeline {
        let nats = NatsServer::start().await;
        let mosquitto = Mosquitto::start().await;
        let mut urls = extra_nats_urls.to_vec();
        urls.push(nats.url());
        let nats_url = urls.join(",");
        let ingest = Service::start("ingest", &nats_url, &mosquitto.url(), config).await;
        let presence = Service::start("presence", &nats_url, &mosquitto.url(), config).await;
        let notifier = Service::start("notifier", &nats_url, &mosquitto.url(), config).await;
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
