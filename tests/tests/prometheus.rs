//! A real Prometheus scrapes the three real services: every target is `up`,
//! the key metrics are there, and the metrics follow the conventions
//! (counters end in `_total`, no user or device name in any label).
//!
//! Needs Debian's `prometheus` (`apt-get install prometheus`, or
//! `scripts/setup.sh --prometheus`; `PROMETHEUS_BIN` overrides the path).
//! Without it the scrape test is skipped with a message; the /metrics checks
//! run anyway.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use whereabouts_tests::{Mosquitto, MqttPublisher, NatsServer, Prometheus, Service, eventually};

/// Distinctive names, so finding them in /metrics cannot be a coincidence.
const USER: &str = "jane";
const DEVICE: &str = "pixel7";

const CONFIG: &str = r#"
[ingest]
client_id = "ingest-under-prometheus"
default_household = "weasleys"

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5014
lon = -0.1419
radius = 100
"#;

struct Stack {
    _nats: NatsServer,
    mosquitto: Mosquitto,
    services: Vec<Service>,
}

impl Stack {
    async fn start() -> Stack {
        let nats = NatsServer::start().await;
        let mosquitto = Mosquitto::start().await;
        let mut services = Vec::new();
        for kind in ["ingest", "presence", "notifier"] {
            services.push(Service::start(kind, &nats.url(), &mosquitto.url(), CONFIG).await);
        }
        Stack {
            _nats: nats,
            mosquitto,
            services,
        }
    }

    fn service(&self, kind: &str) -> &Service {
        let index = ["ingest", "presence", "notifier"]
            .iter()
            .position(|k| *k == kind)
            .expect("a service kind");
        &self.services[index]
    }

    /// Jane's phone reports a fix at Home; waits until presence has emitted
    /// an event for her.
    async fn publish_location(&self) {
        let phone = MqttPublisher::connect(&self.mosquitto.url(), "prometheus-test-phone").await;
        let tst = time_now();
        let message = json!({
            "_type": "location", "lat": 51.5014, "lon": -0.1419, "acc": 10,
            "tst": tst, "tid": "jd", "inregions": ["Home"],
        });
        phone
            .publish(&format!("owntracks/{USER}/{DEVICE}"), message.to_string())
            .await;
        let ingest = self.service("ingest");
        eventually(
            "ingest counts the message",
            Duration::from_secs(20),
            async || ingest.metric("ingest_messages_total", "").await >= 1.0,
        )
        .await;
        let presence = self.service("presence");
        eventually(
            "presence emits an event",
            Duration::from_secs(20),
            async || presence.metric("presence_events_total", "").await >= 1.0,
        )
        .await;
        phone.disconnect().await;
    }
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `# TYPE <name> <type>` lines.
fn metric_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_conventions_and_name_no_one() {
    let stack = Stack::start().await;
    stack.publish_location().await;

    let key_metrics = [
        ("ingest", "ingest_messages_total"),
        ("presence", "presence_events_total"),
        ("notifier", "notifier_sse_clients"),
    ];
    for (kind, key) in key_metrics {
        let text = stack.service(kind).metrics_text().await;
        let types = metric_types(&text);
        assert!(
            types.contains_key(key),
            "{kind} /metrics lacks {key}:\n{text}"
        );
        for (name, kind_of) in &types {
            assert!(
                name.starts_with(&format!("{kind}_")) || name.starts_with("process_"),
                "{kind}: metric {name} is not prefixed with the service name"
            );
            if kind_of == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "{kind}: counter {name} must end in _total"
                );
            } else {
                assert!(
                    !name.ends_with("_total"),
                    "{kind}: {name} is a {kind_of} but ends in _total (reserved for counters)"
                );
            }
        }
        // No user or device name anywhere: not in a label (unbounded
        // cardinality, and a privacy leak to whoever reads the metrics).
        let lower = text.to_lowercase();
        for name in [USER, DEVICE] {
            assert!(
                !lower.contains(name),
                "{kind} /metrics mentions {name:?}:\n{}",
                text.lines()
                    .filter(|l| l.to_lowercase().contains(name))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        stack
            .service("ingest")
            .metric("ingest_messages_total", r#"type="location""#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service() {
    let stack = Stack::start().await;
    // Jobs named like deploy/prometheus.yml's, targets on the real ports.
    let jobs = ["ingest", "presence", "notifier"].map(|kind| (kind, stack.service(kind)));
    let Some(prometheus) = Prometheus::start(&Prometheus::scrape_config(&jobs)) else {
        eprintln!("{}", Prometheus::skip_message());
        return;
    };
    stack.publish_location().await;

    let client = reqwest::Client::new();
    let targets_url = format!("{}/api/v1/targets", prometheus.url());
    let health: BTreeMap<String, String> = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(
            "all three targets up in Prometheus",
            Duration::from_secs(60),
            async || -> Result<BTreeMap<String, String>, String> {
                let body: Value = client
                    .get(&targets_url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let health: BTreeMap<String, String> = body["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        (
                            t["labels"]["job"].as_str().unwrap_or("?").to_string(),
                            format!(
                                "{} {}",
                                t["health"].as_str().unwrap_or("?"),
                                t["lastError"].as_str().unwrap_or("")
                            )
                            .trim()
                            .to_string(),
                        )
                    })
                    .collect();
                if health.len() == 3 && health.values().all(|h| h == "up") {
                    Ok(health)
                } else {
                    Err(format!("targets: {health:?}"))
                }
            },
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("Prometheus did not answer; log:\n{}", prometheus.log()));
    assert_eq!(
        health.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ingest", "notifier", "presence"]
    );

    // Prometheus parsed the samples: the key metrics are queryable.
    let query_url = format!("{}/api/v1/query", prometheus.url());
    for (query, at_least) in [
        ("sum(ingest_messages_total)", 1.0),
        ("sum(presence_events_total)", 1.0),
        ("notifier_sse_clients", 0.0),
    ] {
        let value = eventually(
            &format!("{query} in Prometheus"),
            Duration::from_secs(30),
            async || -> Option<f64> {
                let body: Value = client
                    .get(&query_url)
                    .query(&[("query", query)])
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let value = body["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()?;
                (value >= at_least).then_some(value)
            },
        )
        .await;
        assert!(value >= at_least, "{query} = {value}");
    }
}
