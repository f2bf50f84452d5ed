//! The Grafana dashboard (deploy/grafana/) against the real services: no
//! Grafana needed.
//!
//! - the dashboard JSON is valid, its panel ids are unique and every query
//!   names the datasource uid that deploy/grafana/datasource.yml provisions;
//!   compose.yaml mounts the provisioning files where Grafana reads them;
//! - every metric a query uses is in the running services' `/metrics` from
//!   their start, with every value of its closed label set (registered up
//!   front: a labelled counter would otherwise appear at its first
//!   increment);
//! - every query parses and returns series in a real Prometheus scraping the
//!   three services, with the labels its legend names (skipped without
//!   Debian's `prometheus`, like tests/prometheus.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shared::owntracks::{MessageType, Reason};
use whereabouts_tests::{Pipeline, Prometheus, eventually, read_repo_file as read};

const DASHBOARD: &str = "deploy/grafana/whereabouts.json";
const DATASOURCE: &str = "deploy/grafana/datasource.yml";
const PROVIDER: &str = "deploy/grafana/dashboards.yml";

/// One sink (its receiver is down: deliveries are retried), so that the
/// per-sink series exist.
const CONFIG: &str = r#"
[ingest]
client_id = "ingest-under-grafana"
default_household = "weasleys"

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5014
lon = -0.1419
radius = 100

[[notifier.sinks]]
type = "webhook"
name = "family-hub"
url = "http://127.0.0.1:9/hooks/presence"
"#;

fn yaml(path: &str) -> serde_norway::Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// One query of the dashboard.
struct Query {
    panel: String,
    expr: String,
    legend: String,
}

/// Every panel (rows included, nested panels of collapsed rows too).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels array") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn queries(dashboard: &Value) -> Vec<Query> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Query {
                    panel: title.clone(),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                    legend: t["legendFormat"].as_str().unwrap_or_default().to_string(),
                })
        })
        .collect()
}

/// A query as Grafana sends it: its global variables replaced by the values
/// a 15 s scrape interval gives them.
fn as_sent(expr: &str) -> String {
    let sent = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    assert!(
        !sent.contains('$'),
        "{expr}: a variable the dashboard does not define"
    );
    sent
}

/// PromQL keywords, which read like metric names.
const KEYWORDS: [&str; 13] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions (followed by `(`), aggregations (`sum by (…)`), keywords, label names (`{…}`, `by (…)`),
/// strings, durations or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut labels_follow = false;
    let mut i = 0;
    // Index just past the first `close` at or after `from`, quotes skipped.
    let past = |from: usize, close: char| {
        let mut j = from;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, c @ ('"' | '\'' | '`')) => quote = Some(c),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: find its end by treating the quote as the closer.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = past(i + 1, '}');
        } else if c == '[' {
            i = past(i + 1, ']');
        } else if c == '(' && labels_follow {
            labels_follow = false;
            i = past(i + 1, ')');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest: String = chars[i..].iter().collect();
            let rest = rest.trim_start();
            // `sum by (…) (…)`: an aggregation, with its grouping first.
            let grouping_follows = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            if KEYWORDS.contains(&word.to_lowercase().as_str()) {
                labels_follow = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            } else if !rest.starts_with('(') && !grouping_follows {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The `{{label}}` names of a legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, sink) (rate(notifier_delivery_seconds_bucket{outcome="x{y}"}[5m])))"#
        ),
        ["notifier_delivery_seconds_bucket"]
    );
    assert_eq!(
        names(r#"up{job=~"ingest|presence"} or on (job) max without (instance) (a_b) * 1e3"#),
        ["a_b", "up"]
    );
    assert_eq!(
        legend_labels("{{sink}} {{ outcome }} x"),
        ["sink", "outcome"]
    );
}

#[test]
fn dashboard_is_valid_and_provisioned() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));

    let datasource = yaml(DATASOURCE);
    let provisioned = &datasource["datasources"][0];
    let uid = provisioned["uid"].as_str().expect("datasource uid");
    assert_eq!(provisioned["type"].as_str(), Some("prometheus"));

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"].as_str(), Some(uid), "{title}");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty query"
            );
            let ref_id = target["refId"].as_str().expect("refId");
            assert!(ref_ids.insert(ref_id), "{title}: refId {ref_id} twice");
        }
    }
    for query in queries(&dashboard) {
        as_sent(&query.expr);
        assert!(
            !metric_names(&query.expr).is_empty(),
            "{}: {} selects no metric",
            query.panel,
            query.expr
        );
    }

    // The datasource is compose's Prometheus, on the port it listens on.
    let compose = yaml("compose.yaml");
    let url = provisioned["url"].as_str().expect("datasource url");
    let host_port = url.trim_start_matches("http://");
    let (host, port) = host_port.split_once(':').expect("host:port");
    assert!(
        compose["services"][host].is_mapping(),
        "{DATASOURCE}: {url} is no compose service"
    );
    assert_eq!(port, "9090", "Prometheus listens on 9090");
    // Grafana's $__rate_interval assumes this scrape interval.
    let scrape = yaml("deploy/prometheus.yml")["global"]["scrape_interval"].clone();
    assert_eq!(
        provisioned["jsonData"]["timeInterval"], scrape,
        "the datasource's timeInterval must be Prometheus' scrape_interval"
    );

    // Grafana in compose: pinned, loopback only, reading our files.
    let grafana = &compose["services"]["grafana"];
    let image = grafana["image"].as_str().expect("grafana image");
    let (name, tag) = image.split_once(':').expect("a pinned image tag");
    assert_eq!(name, "grafana/grafana-oss");
    assert!(
        tag.split('.').count() == 3 && tag.split('.').all(|p| p.parse::<u32>().is_ok()),
        "pin an exact version, not {tag}"
    );
    for port in grafana["ports"].as_sequence().expect("grafana ports") {
        let port = port.as_str().expect("port string");
        assert!(port.starts_with("127.0.0.1:"), "{port} is not loopback");
    }
    let mounts: BTreeMap<String, String> = grafana["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| {
            let mut parts = v.as_str()?.split(':');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect();
    let target = |file: &str| {
        mounts
            .get(&format!("./{file}"))
            .unwrap_or_else(|| panic!("compose does not mount {file} into grafana"))
            .clone()
    };
    assert!(target(DATASOURCE).starts_with("/etc/grafana/provisioning/datasources/"));
    assert!(target(PROVIDER).starts_with("/etc/grafana/provisioning/dashboards/"));
    let provider = yaml(PROVIDER);
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert_eq!(
        Path::new(&target(DASHBOARD)).parent(),
        Some(Path::new(path)),
        "the dashboard must be mounted in the provider's path"
    );
}

/// Sample names (`foo_bucket`, `foo_sum`, …) in a /metrics text.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_against_the_services() {
    let queries = queries(&dashboard());
    let pipeline = Pipeline::start(CONFIG).await;
    let services = [
        ("ingest", &pipeline.ingest),
        ("presence", &pipeline.presence),
        ("notifier", &pipeline.notifier),
    ];

    // Before any traffic: every queried metric is already exposed.
    let mut exposed = BTreeSet::from(["up".to_string()]); // Prometheus' own
    for (_, service) in services {
        exposed.extend(sample_names(&service.metrics_text().await));
    }
    let mut checked = 0;
    for query in &queries {
        for name in metric_names(&query.expr) {
            assert!(
                exposed.contains(&name),
                "panel {:?}: {name} is in no service's /metrics",
                query.panel
            );
            checked += 1;
        }
    }
    eprintln!(
        "{} queries, {checked} metric names, all exposed",
        queries.len()
    );

    // …with every value of their closed label sets, at 0.
    let mut expected = Vec::new();
    for transport in ["mqtt", "http"] {
        for kind in MessageType::ALL {
            expected.push(format!(
                r#"ingest_messages_total{{transport="{transport}",type="{}"}} 0"#,
                kind.as_str()
            ));
        }
        for reason in Reason::ALL {
            expected.push(format!(
                r#"ingest_rejected_total{{reason="{}",transport="{transport}"}} 0"#,
                reason.as_str()
            ));
        }
    }
    for kind in ["place", "status", "region"] {
        expected.push(format!(r#"presence_events_total{{kind="{kind}"}} 0"#));
    }
    for status in ["online", "stale", "offline"] {
        expected.push(format!(r#"presence_devices{{status="{status}"}} 0"#));
    }
    for outcome in ["delivered", "retried", "failed", "filtered", "invalid"] {
        expected.push(format!(
            r#"notifier_deliveries_total{{outcome="{outcome}",sink="family-hub"}}"#
        ));
    }
    let mut all_text = String::new();
    for (_, service) in services {
        all_text.push_str(&service.metrics_text().await);
    }
    for series in &expected {
        assert!(
            all_text.contains(series.as_str()),
            "no {series} in /metrics"
        );
    }
    eprintln!("{} label-set series present at start", expected.len());

    let Some(prometheus) = Prometheus::start(&Prometheus::scrape_config(&services)) else {
        eprintln!("{}", Prometheus::skip_message());
        return;
    };
    eventually(
        "all three services up in Prometheus",
        Duration::from_secs(60),
        async || -> Result<(), String> {
            let up = prometheus.query("up").await?;
            let values: Vec<&str> = up.iter().filter_map(|s| s["value"][1].as_str()).collect();
            if values == ["1", "1", "1"] {
                Ok(())
            } else {
                Err(format!("up: {values:?}; log:\n{}", prometheus.log()))
            }
        },
    )
    .await;

    for query in &queries {
        let sent = as_sent(&query.expr);
        // A parse error fails at once; an empty answer waits for the rate
        // windows to hold two samples.
        let series = eventually(
            &format!("panel {:?}: {sent} returns series", query.panel),
            Duration::from_secs(60),
            async || -> Result<Vec<Value>, String> {
                let result = prometheus.query(&sent).await;
                if let Err(e) = &result
                    && e.starts_with("bad_data")
                {
                    panic!("panel {:?}: {sent}: {e}", query.panel);
                }
                result.and_then(|r| {
                    if r.is_empty() {
                        Err("no series".into())
                    } else {
                        Ok(r)
                    }
                })
            },
        )
        .await;
        for label in legend_labels(&query.legend) {
            assert!(
                series.iter().all(|s| s["metric"][&label].is_string()),
                "panel {:?}: legend {{{{{label}}}}} but {sent} gives {series:?}",
                query.panel
            );
        }
    }
    eprintln!("{} queries evaluated in Prometheus", queries.len());
}
