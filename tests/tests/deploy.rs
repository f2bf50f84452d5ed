//! Static checks of the deployment files (compose.yaml, Dockerfile,
//! deploy/prometheus.yml, deploy/alerts.yml, deploy/mosquitto.compose.conf)
//! against each other and against the real services: no Docker needed.
//!
//! - the services exist, listen on 0.0.0.0 at the port Prometheus scrapes;
//! - every environment variable compose sets is one the service's `--help`
//!   lists (so a typo or a variable of another service cannot pass);
//! - every file compose mounts exists, and the paths inside the containers
//!   agree (config file, mosquitto's include_dir, Prometheus' rule files);
//! - the Dockerfile builds and installs the binaries compose runs;
//! - `promtool check config` accepts deploy/prometheus.yml (when installed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_norway::Value;
use whereabouts_tests::{read_repo_file as read, repo_dir as repo, service_help};

/// Where compose takes every secret from: the first-run directory.
const SECRETS: &str = "./secrets/";

/// The Whereabouts services and the port each one listens on in compose.
const SERVICES: [(&str, u16); 3] = [("ingest", 8081), ("presence", 8082), ("notifier", 8080)];

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn compose() -> Value {
    yaml("compose.yaml")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "compose.yaml has no service {name:?}");
    service
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, in either compose form (map or `KEY=value` list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let item = str_of(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// `${VAR:-default}` → `default` (compose's interpolation when VAR is unset).
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("{text:?}: ${{{inner}}} needs a default (:-)"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Bind mounts of a service: (host path relative to the repo, container path).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    let Value::Sequence(volumes) = &service["volumes"] else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| {
            let spec = interpolate_defaults(&str_of(v));
            let mut parts = spec.split(':');
            let source = parts.next()?.to_string();
            let target = parts.next()?.to_string();
            (source.starts_with("./") || source.starts_with('/')).then_some((source, target))
        })
        .collect()
}

/// Prometheus' scrape targets by job name.
fn prometheus_targets() -> BTreeMap<String, Vec<String>> {
    let config = yaml("deploy/prometheus.yml");
    let Value::Sequence(jobs) = &config["scrape_configs"] else {
        panic!("deploy/prometheus.yml has no scrape_configs");
    };
    jobs.iter()
        .map(|job| {
            let name = str_of(&job["job_name"]);
            let path = job["metrics_path"].as_str().unwrap_or("/metrics");
            assert_eq!(path, "/metrics", "job {name} scrapes {path}");
            let targets = job["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|c| c["targets"].as_sequence().cloned().unwrap_or_default())
                .map(|t| str_of(&t))
                .collect();
            (name, targets)
        })
        .collect()
}

/// The environment variables a service's `--help` names: `[env: NAME=…]`
/// for its flags, plus any other upper-case name the text mentions
/// (RUST_LOG is named in the help of `--log-format`).
fn help_variables(help: &str) -> BTreeSet<String> {
    // Drop the `<VALUE>` placeholders of flags: they name no variable.
    let mut prose = String::new();
    let mut in_placeholder = false;
    for c in help.chars() {
        match c {
            '<' => in_placeholder = true,
            '>' => in_placeholder = false,
            c if !in_placeholder => prose.push(c),
            _ => {}
        }
    }
    prose
        .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| {
            w.len() > 2 && w.contains('_') && w.starts_with(|c: char| c.is_ascii_uppercase())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn compose_has_every_service() {
    let compose = compose();
    for name in [
        "nats",
        "mosquitto",
        "ingest",
        "presence",
        "notifier",
        "prometheus",
    ] {
        let service = service(&compose, name);
        assert!(
            service["image"].is_string() || service["build"].is_string(),
            "{name}: no image or build"
        );
    }
    // The JetStream server keeps its store on a volume.
    let nats = service(&compose, "nats");
    let command: Vec<String> = nats["command"]
        .as_sequence()
        .expect("nats command list")
        .iter()
        .map(str_of)
        .collect();
    assert!(
        command.iter().any(|a| a == "-js"),
        "nats without JetStream: {command:?}"
    );
    let sd = command
        .iter()
        .position(|a| a == "-sd")
        .expect("nats -sd DIR");
    let store = &command[sd + 1];
    let volumes: Vec<String> = nats["volumes"]
        .as_sequence()
        .expect("nats volumes")
        .iter()
        .map(str_of)
        .collect();
    assert!(
        volumes.iter().any(|v| v.ends_with(&format!(":{store}"))),
        "nats store {store} is not on a volume: {volumes:?}"
    );
}

#[test]
fn services_listen_where_prometheus_scrapes() {
    let compose = compose();
    let targets = prometheus_targets();
    for (kind, port) in SERVICES {
        let svc = service(&compose, kind);
        let env = environment(svc);
        assert_eq!(
            env.get("NATS_URL").map(String::as_str),
            Some("nats://nats:4222"),
            "{kind}: NATS_URL"
        );
        let addr_var = format!("{}_HTTP_ADDR", kind.to_uppercase());
        assert_eq!(
            env.get(&addr_var).map(String::as_str),
            Some(format!("0.0.0.0:{port}").as_str()),
            "{kind}: {addr_var} must listen on all interfaces at {port}"
        );
        assert_eq!(
            targets.get(kind),
            Some(&vec![format!("{kind}:{port}")]),
            "deploy/prometheus.yml: job {kind} must scrape {kind}:{port}"
        );
        assert_eq!(
            svc["command"]
                .as_sequence()
                .map(|c| c.iter().map(str_of).collect::<Vec<_>>()),
            Some(vec![kind.to_string()]),
            "{kind}: command"
        );
        assert_eq!(str_of(&svc["restart"]), "unless-stopped", "{kind}: restart");
        assert!(
            svc["depends_on"]["nats"].is_mapping() || svc["depends_on"].is_sequence(),
            "{kind}: depends_on nats"
        );
        if let Some(url) = env.get("MQTT_URL") {
            assert_eq!(url, "mqtt://mosquitto:1883", "{kind}: MQTT_URL");
        }
        assert_eq!(env.get("LOG_FORMAT").map(String::as_str), Some("json"));
    }
    // Every job scrapes a compose service on its HTTP port, and nothing else.
    for (job, job_targets) in &targets {
        for target in job_targets {
            let (host, port) = target.split_once(':').expect("host:port target");
            let svc = service(&compose, host);
            let addr = environment(svc)
                .into_iter()
                .find(|(k, _)| k.ends_with("_HTTP_ADDR"))
                .map(|(_, v)| v);
            assert_eq!(
                addr,
                Some(format!("0.0.0.0:{port}")),
                "job {job} scrapes {target}, where {host} does not listen"
            );
        }
    }
    // The services publish nothing: phones and browsers come through caddy
    // (HTTPS) and mosquitto's TLS listener.
    for (kind, _) in SERVICES {
        assert!(
            service(&compose, kind)["ports"].is_null(),
            "{kind} publishes a plain-HTTP port; it must be reached through caddy"
        );
    }
}

#[test]
fn compose_sets_only_variables_each_service_reads() {
    let compose = compose();
    for (kind, _) in SERVICES {
        let help = service_help(kind);
        let known = help_variables(&help);
        assert!(known.contains("NATS_URL"), "{kind} --help:\n{help}");
        for var in environment(service(&compose, kind)).keys() {
            assert!(
                known.contains(var),
                "compose sets {var} for {kind}, but `{kind} --help` does not list it \
                 (it knows {known:?})"
            );
        }
    }
}

#[test]
fn mounted_files_exist_and_paths_agree() {
    let compose = compose();
    let Value::Mapping(services) = &compose["services"] else {
        panic!("no services");
    };
    for (name, svc) in services {
        let name = str_of(name);
        for (source, target) in bind_mounts(svc) {
            if source.starts_with(SECRETS) {
                // Written by scripts/first-run.sh (first_run_generates_…).
                continue;
            }
            let path = repo().join(&source);
            assert!(
                path.is_file(),
                "{name}: mounts {source} (→ {target}), which is not a file in the repo"
            );
        }
    }
    // The services read the config file compose mounts.
    for (kind, _) in SERVICES {
        let svc = service(&compose, kind);
        let config = environment(svc)
            .remove("WHEREABOUTS_CONFIG")
            .unwrap_or_else(|| panic!("{kind}: no WHEREABOUTS_CONFIG"));
        let (source, _) = bind_mounts(svc)
            .into_iter()
            .find(|(_, t)| *t == config)
            .unwrap_or_else(|| panic!("{kind}: nothing is mounted at {config}"));
        // …generated by the first-run step (checked there), never the example.
        assert_eq!(
            source,
            format!("{SECRETS}whereabouts.toml"),
            "{kind}: the config must come from the first-run directory"
        );
    }
    // mosquitto: the image starts /mosquitto/config/mosquitto.conf, our
    // instance file, whose include_dir holds the project's shared config.
    let mosquitto = bind_mounts(service(&compose, "mosquitto"));
    let main = mosquitto
        .iter()
        .find(|(_, t)| t == "/mosquitto/config/mosquitto.conf")
        .expect("a file mounted at /mosquitto/config/mosquitto.conf");
    let instance = read(main.0.trim_start_matches("./"));
    let directive = |name: &str| {
        instance
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(str::to_string)
    };
    let include = directive("include_dir").expect("include_dir in the instance config");
    assert!(
        mosquitto.iter().any(|(s, t)| s == "./deploy/mosquitto.conf"
            && t.ends_with(".conf")
            && Path::new(t).parent() == Some(Path::new(&include))),
        "deploy/mosquitto.conf must be mounted as a .conf file in {include}: {mosquitto:?}"
    );
    assert_eq!(directive("listener").as_deref(), Some("1883"));
    let persistence = directive("persistence_location").expect("persistence_location");
    assert!(
        persistence.ends_with('/'),
        "persistence_location needs a trailing slash"
    );
    let volumes: Vec<String> = service(&compose, "mosquitto")["volumes"]
        .as_sequence()
        .expect("mosquitto volumes")
        .iter()
        .map(str_of)
        .collect();
    assert!(
        volumes.iter().any(|v| !v.starts_with('.')
            && v.ends_with(&format!(":{}", persistence.trim_end_matches('/')))),
        "mosquitto's {persistence} is not on a named volume: {volumes:?}"
    );
    // Prometheus: its rule files sit beside prometheus.yml, in the repo and
    // in the container.
    let prometheus = bind_mounts(service(&compose, "prometheus"));
    let config_target = prometheus
        .iter()
        .find(|(s, _)| s == "./deploy/prometheus.yml")
        .map(|(_, t)| t.clone())
        .expect("deploy/prometheus.yml mounted into prometheus");
    let config_dir = Path::new(&config_target).parent().expect("config dir");
    let Value::Sequence(rule_files) = &yaml("deploy/prometheus.yml")["rule_files"] else {
        panic!("deploy/prometheus.yml has no rule_files");
    };
    for rule_file in rule_files.iter().map(str_of) {
        let in_repo = format!("./deploy/{rule_file}");
        let in_container = config_dir.join(&rule_file);
        assert!(
            prometheus
                .iter()
                .any(|(s, t)| *s == in_repo && Path::new(t) == in_container),
            "rule file {rule_file}: {in_repo} must be mounted at {}",
            in_container.display()
        );
    }
}

#[test]
fn dockerfile_builds_what_compose_runs() {
    let dockerfile = read("Dockerfile");
    let compose = compose();
    let dockerignore = read(".dockerignore");
    for ignored in ["target/", ".git", ".run", "node_modules"] {
        assert!(
            dockerignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == ignored.trim_end_matches('/')),
            ".dockerignore must exclude {ignored}"
        );
    }
    // The dependency stage copies every workspace member's manifest, or
    // cargo cannot load the workspace there.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    for member in manifest["workspace"]["members"]
        .as_array()
        .expect("members")
    {
        let member = member.as_str().expect("a member path");
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the Dockerfile's dependency stage must copy {member}/Cargo.toml"
        );
    }
    // Logical lines (continuations joined).
    let lines: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let build = lines
        .iter()
        .find(|l| l.contains("cargo build") && l.contains("--bin"))
        .expect("a `cargo build … --bin …` line");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    let runtime_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    assert!(lines[runtime_from].contains("debian:bookworm-slim"));
    let install = lines[runtime_from..]
        .iter()
        .find(|l| l.starts_with("COPY --from=") && l.ends_with("/usr/local/bin/"))
        .expect("COPY --from=builder … /usr/local/bin/");
    assert!(
        lines[runtime_from..]
            .iter()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "the runtime image must run as a non-root user"
    );
    let expose = lines
        .iter()
        .find(|l| l.starts_with("EXPOSE"))
        .expect("EXPOSE");
    for (kind, port) in SERVICES {
        assert!(
            build
                .split(|c: char| c.is_whitespace() || c == ';')
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["--bin", kind]),
            "the Dockerfile does not build --bin {kind}: {build}"
        );
        assert!(
            install.contains(&format!("/{kind} ")),
            "the Dockerfile does not install {kind}: {install}"
        );
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "EXPOSE lacks {port}"
        );
        // The binary is the package's own: <kind>/src/main.rs.
        assert!(repo().join(kind).join("src/main.rs").is_file());
        // compose builds this Dockerfile for the service.
        let svc = service(&compose, kind);
        assert_eq!(str_of(&svc["build"]), ".", "{kind}: build context");
        assert_eq!(
            str_of(&svc["command"][0]),
            kind,
            "{kind}: compose runs another binary"
        );
    }
    // The admin CLI (and the simulator it runs) ship in the same image.
    for tool in ["whereabouts", "whereabouts-sim"] {
        assert!(
            build
                .split(|c: char| c.is_whitespace() || c == ';')
                .any(|w| w == tool)
                && install.contains(&format!("/{tool} ")),
            "the Dockerfile does not build and install {tool}"
        );
    }
    // The image carries no config and so none of the example's secrets.
    assert!(
        !dockerfile.contains("whereabouts.example.toml"),
        "the image must not hold the example config"
    );
    assert!(
        read(".dockerignore")
            .lines()
            .any(|l| l.trim() == "secrets/"),
        ".dockerignore must keep the first-run secrets out of the build context"
    );
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let promtool = std::env::var("PROMTOOL_BIN").unwrap_or_else(|_| "promtool".into());
    let config = repo().join("deploy/prometheus.yml");
    let output = match Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: {promtool} not found (apt-get install prometheus, or \
                 scripts/setup.sh --prometheus); deploy/prometheus.yml not checked"
            );
            return;
        }
        Err(e) => panic!("run {promtool}: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check config failed:\n{text}"
    );
    // It checks the rule files too; make sure they were found.
    assert!(text.contains("rule files found"), "{text}");
    assert!(!text.contains(" 0 rule files found"), "{text}");
}

// --- NATS authorization (deploy/nats-server.conf), through a real server ---

/// A client as `user` that records the server's error messages
/// (permission violations arrive as `-ERR`, asynchronously).
async fn watched_client(
    nats: &whereabouts_tests::NatsServer,
    user: &str,
    password: &str,
) -> (
    async_nats::Client,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(event.to_string());
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, errors)
}

const AUTH_CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "jane"
password = "jane-http-password"

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120

[[notifier.sinks]]
type = "webhook"
name = "hub"
url = "http://127.0.0.1:9/unreachable"
"#;

/// The three services, each with its own NATS user (credentials in the URL
/// and in NATS_USER/NATS_PASSWORD), run the whole pipeline against
/// deploy/nats-server.conf; the server logs no permission violation for
/// them, and a service user cannot act outside its permissions.
#[tokio::test]
async fn services_run_with_their_own_nats_users() {
    use std::time::Duration;
    use whereabouts_tests::{Mosquitto, MqttPublisher, MqttSubscriber, Service, eventually};

    let nats = whereabouts_tests::NatsServer::start_deployed().await;
    let mosquitto = Mosquitto::start().await;
    let mqtt = mosquitto.url();
    let ingest = Service::start(
        "ingest",
        &nats.url_as("ingest", "ingest-pw-0123456789"),
        &mqtt,
        AUTH_CONFIG,
    )
    .await;
    let presence = Service::start_with(
        "presence",
        &nats.url(),
        &mqtt,
        AUTH_CONFIG,
        &[
            ("NATS_USER", "presence"),
            ("NATS_PASSWORD", "presence-pw-0123456789"),
        ],
    )
    .await;
    let notifier = Service::start(
        "notifier",
        &nats.url_as("notifier", "notifier-pw-0123456789"),
        &mqtt,
        AUTH_CONFIG,
    )
    .await;

    // MQTT → ingest → presence → notifier, end to end.
    let phone = MqttPublisher::connect(&mqtt, "jane-phone").await;
    phone
        .publish(
            "owntracks/jane/phone",
            r#"{"_type":"location","lat":51.5,"lon":-0.12,"tst":1764600000,"tid":"jp","inregions":["Home"]}"#,
        )
        .await;
    let people_url = format!("{}/v1/households/weasleys/people", notifier.url());
    eventually(
        "jane at Home on the notifier",
        Duration::from_secs(15),
        async || {
            let body: serde_json::Value =
                reqwest::get(&people_url).await.ok()?.json().await.ok()?;
            let people = body["people"].as_array()?;
            people
                .iter()
                .any(|p| p["person"] == "jane" && p["place"] == "Home")
                .then_some(())
        },
    )
    .await;
    // SSE resumed with Last-Event-ID replays PRESENCE through an ordered
    // consumer of the notifier's user.
    // The state is stored before its events are published: wait for them.
    let js = nats.jetstream().await;
    eventually(
        "presence's events on PRESENCE",
        Duration::from_secs(15),
        async || {
            let n = whereabouts_tests::stream_count(&js, "PRESENCE").await;
            (n >= 1).then_some(n)
        },
    )
    .await;
    let mut sse = reqwest::Client::new()
        .get(format!("{}/v1/households/weasleys/events", notifier.url()))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("GET events");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("event: presence") {
        let chunk = tokio::time::timeout_at(deadline, sse.chunk())
            .await
            .unwrap_or_else(|_| panic!("no replayed presence event; got {text:?}"))
            .expect("SSE body")
            .expect("SSE still open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(sse);
    // HTTP mode reads presence's KV and OWNTRACKS with ingest's user.
    let answer: Vec<serde_json::Value> = reqwest::Client::new()
        .post(format!("{}/pub", ingest.url()))
        .basic_auth("jane", Some("jane-http-password"))
        .header("X-Limit-U", "jane")
        .header("X-Limit-D", "tablet")
        .body(r#"{"_type":"location","lat":51.5,"lon":-0.12,"tst":1764600100}"#)
        .send()
        .await
        .expect("POST /pub")
        .json()
        .await
        .expect("a JSON array");
    assert!(
        answer
            .iter()
            .any(|m| m["_type"] == "location" && m["topic"] == "owntracks/jane/phone"),
        "the friends' answer holds jane's phone: {answer:?}"
    );
    // The commands service answers the admin user.
    let admin = nats.client().await;
    let mut cmds =
        MqttSubscriber::connect(&mqtt, "cmd-watcher", true, &["owntracks/+/+/cmd"]).await;
    let reply = admin
        .request(
            "whereabouts.commands.report-location",
            r#"{"household":"weasleys","user":"jane","device":"phone"}"#.into(),
        )
        .await
        .expect("the commands service answers the admin");
    assert!(
        reply
            .headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none()),
        "{:?}",
        String::from_utf8_lossy(&reply.payload)
    );
    cmds.recv(Duration::from_secs(5))
        .await
        .expect("the command reaches the phone");
    // What a phone publishes when asked is kept in the `phones` bucket by
    // ingest's user (an ordered consumer on OWNTRACKS).
    phone
        .publish(
            "owntracks/jane/phone/status",
            r#"{"_type":"status","android":{"hib":1}}"#,
        )
        .await;
    let phones = nats
        .jetstream()
        .await
        .get_key_value("phones")
        .await
        .expect("ingest created the phones bucket");
    eventually(
        "jane's status in the phones bucket",
        Duration::from_secs(10),
        async || {
            phones
                .get("weasleys.jane.phone.status")
                .await
                .ok()
                .flatten()
        },
    )
    .await;

    // The notifier's user can neither write to OWNTRACKS nor command phones.
    let js = nats.jetstream().await;
    let before = whereabouts_tests::stream_count(&js, "OWNTRACKS").await;
    let (intruder, errors) = watched_client(&nats, "notifier", "notifier-pw-0123456789").await;
    intruder
        .publish(
            "owntracks.weasleys.jane.phone.location",
            r#"{"forged":true}"#.into(),
        )
        .await
        .unwrap();
    intruder.flush().await.unwrap();
    let forged_cmd = tokio::time::timeout(
        Duration::from_secs(2),
        intruder.request(
            "whereabouts.commands.send",
            r#"{"household":"weasleys","user":"jane","device":"phone","command":{"_type":"cmd","action":"setConfiguration","configuration":{"_type":"configuration","mode":0}}}"#.into(),
        ),
    )
    .await;
    assert!(
        !matches!(forged_cmd, Ok(Ok(_))),
        "the notifier's user got an answer from the commands service"
    );
    eventually(
        "permission violations reported to the notifier's user",
        Duration::from_secs(5),
        async || {
            let errors = errors.lock().unwrap();
            let violations = errors
                .iter()
                .filter(|e| e.to_lowercase().contains("permissions violation"))
                .count();
            (violations >= 2).then_some(())
        },
    )
    .await;
    assert!(
        cmds.recv(Duration::from_secs(1)).await.is_none(),
        "no command reached a phone"
    );
    assert_eq!(
        whereabouts_tests::stream_count(&js, "OWNTRACKS").await,
        before,
        "nothing forged reached OWNTRACKS"
    );
    // The read-only sample user reads the presence KV …
    let (reader, errors) = watched_client(&nats, "reader", "reader-pw-0123456789").await;
    let kv = async_nats::jetstream::new(reader.clone())
        .get_key_value("presence")
        .await
        .expect("the reader opens the presence bucket");
    let jane = kv
        .get("weasleys.person.jane")
        .await
        .expect("the reader reads a person")
        .expect("jane's state");
    assert!(String::from_utf8_lossy(&jane).contains("Home"));
    // … but cannot publish presence.
    reader
        .publish("presence.weasleys.jane", "{}".into())
        .await
        .unwrap();
    reader.flush().await.unwrap();
    eventually(
        "a violation for the reader",
        Duration::from_secs(5),
        async || {
            let errors = errors.lock().unwrap();
            errors
                .iter()
                .any(|e| e.to_lowercase().contains("permissions violation"))
                .then_some(())
        },
    )
    .await;
    // Wrong or missing credentials are refused.
    assert!(nats.try_client_as("ingest", "wrong").await.is_err());
    assert!(async_nats::connect(nats.url()).await.is_err());

    // The services themselves caused no violation.
    for (name, service) in [
        ("ingest", &ingest),
        ("presence", &presence),
        ("notifier", &notifier),
    ] {
        assert!(
            !service
                .log()
                .to_lowercase()
                .contains("permissions violation"),
            "{name} hit a permission violation:\n{}",
            service.log()
        );
    }
}

/// Beyond loopback the services refuse the example config (its secrets are
/// published) and running without a config; on loopback both still serve.
#[tokio::test]
async fn services_refuse_the_example_secrets_beyond_loopback() {
    let example = repo().join("whereabouts.example.toml");
    for kind in ["ingest", "presence", "notifier"] {
        let addr_var = format!("{}_HTTP_ADDR", kind.to_uppercase());
        let port = whereabouts_tests::free_port();
        for config in [Some(&example), None] {
            let mut cmd = Command::new(whereabouts_tests::service_binary());
            cmd.arg(kind)
                .env(&addr_var, format!("0.0.0.0:{port}"))
                .env("NATS_URL", "nats://127.0.0.1:1")
                .env_remove("WHEREABOUTS_CONFIG");
            if let Some(config) = config {
                cmd.env("WHEREABOUTS_CONFIG", config);
            }
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::process::Command::from(cmd).output(),
            )
            .await
            .unwrap_or_else(|_| panic!("{kind} kept running beyond loopback with {config:?}"))
            .expect("run the service");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{kind} started with {config:?}");
            assert!(
                stderr.contains("beyond loopback") || stderr.contains("loopback only"),
                "{kind} with {config:?}: {stderr}"
            );
        }
    }
}

/// A token in NATS_TOKEN is enough for a service on a server with token auth.
#[tokio::test]
async fn a_service_connects_with_a_nats_token() {
    let nats = whereabouts_tests::NatsServer::start_with_config(
        &[(
            "nats-server.conf",
            "authorization { token: \"t0ken-for-the-test\" }\n",
        )],
        None,
    )
    .await;
    let presence = whereabouts_tests::Service::start_with(
        "presence",
        &nats.url(),
        "mqtt://127.0.0.1:1",
        "",
        &[("NATS_TOKEN", "t0ken-for-the-test")],
    )
    .await;
    assert!(
        presence.log().contains("NATS connected"),
        "{}",
        presence.log()
    );
}

// --- secure by default (compose) and the first-run step -------------------

/// The directives of a mosquitto config, in order: (name, rest of line).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_string(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn compose_is_secure_by_default() {
    let compose = compose();
    let Value::Mapping(services) = &compose["services"] else {
        panic!("no services");
    };
    // No service mounts the example config (its secrets are published).
    for (name, svc) in services {
        for (source, _) in bind_mounts(svc) {
            assert!(
                !source.contains("example"),
                "{}: mounts {source}",
                str_of(name)
            );
        }
    }
    // Each Whereabouts service takes its credentials from the first-run
    // directory, and none is set inline.
    for (kind, _) in SERVICES {
        let svc = service(&compose, kind);
        let env_file = str_of(&svc["env_file"]);
        assert_eq!(env_file, format!("{SECRETS}{kind}.env"), "{kind}: env_file");
        let env = environment(svc);
        for secret in ["NATS_PASSWORD", "NATS_TOKEN", "MQTT_PASSWORD"] {
            assert!(!env.contains_key(secret), "{kind}: {secret} inline");
        }
        assert!(
            env.values().all(|v| !v.contains('@')),
            "{kind}: credentials in a URL inline"
        );
    }

    // mosquitto: no anonymous access, a password file and an ACL from the
    // first-run directory, a TLS listener for phones, only that published.
    let mosquitto = service(&compose, "mosquitto");
    let mounts = bind_mounts(mosquitto);
    let mounted_at = |target: &str| {
        mounts
            .iter()
            .find(|(_, t)| t == target)
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| panic!("mosquitto: nothing mounted at {target}"))
    };
    let instance = read("deploy/mosquitto.compose.conf");
    let settings = directives(&instance);
    let last = |name: &str| {
        settings
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    // The instance lines come after include_dir (deploy/mosquitto.conf's
    // `allow_anonymous true`), so the last word is theirs.
    assert_eq!(settings[0].0, "include_dir");
    assert_eq!(last("allow_anonymous").as_deref(), Some("false"));
    for (directive, file) in [("password_file", "passwd"), ("acl_file", "acl")] {
        let path = last(directive).unwrap_or_else(|| panic!("no {directive}"));
        assert_eq!(
            mounted_at(&path),
            format!("{SECRETS}mosquitto/{file}"),
            "{directive}"
        );
    }
    let listeners: Vec<String> = settings
        .iter()
        .filter(|(n, _)| n == "listener")
        .map(|(_, v)| v.clone())
        .collect();
    assert!(listeners.contains(&"8883".to_string()), "{listeners:?}");
    let tls_at = settings
        .iter()
        .position(|(n, v)| n == "listener" && v == "8883")
        .unwrap();
    for directive in ["certfile", "keyfile"] {
        let (_, path) = settings[tls_at..]
            .iter()
            .find(|(n, _)| n == directive)
            .unwrap_or_else(|| panic!("the 8883 listener has no {directive}"));
        assert!(mounted_at(path).starts_with(&format!("{SECRETS}tls/")));
    }
    let ports: Vec<String> = mosquitto["ports"]
        .as_sequence()
        .expect("mosquitto publishes the TLS port")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(ports, ["8883:8883"], "only the TLS listener is published");

    // NATS: the accounts of deploy/nats-server.conf, passwords from first-run.
    let nats = service(&compose, "nats");
    let command: Vec<String> = nats["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let config = &command[command.iter().position(|a| a == "-c").expect("-c") + 1];
    let nats_mounts = bind_mounts(nats);
    let (source, _) = nats_mounts
        .iter()
        .find(|(_, t)| t == config)
        .expect("nats-server.conf mounted");
    assert_eq!(source, "./deploy/nats-server.conf");
    assert!(
        nats_mounts
            .iter()
            .any(|(s, t)| *s == format!("{SECRETS}nats-passwords.conf")
                && Path::new(t).parent() == Path::new(config).parent()),
        "the NATS passwords must sit beside nats-server.conf: {nats_mounts:?}"
    );
    assert!(
        nats_mounts
            .iter()
            .any(|(s, t)| s == "./deploy/nats-users.conf"
                && Path::new(t).parent() == Path::new(config).parent()),
        "the NATS users must sit beside nats-server.conf: {nats_mounts:?}"
    );
    assert!(nats["ports"].is_null(), "NATS is not published");

    // HTTPS: caddy on 443 with the first-run certificate, proxying /pub and
    // the board to the services.
    let caddy = service(&compose, "caddy");
    let caddy_mounts = bind_mounts(caddy);
    let caddyfile = caddy_mounts
        .iter()
        .find(|(s, _)| s == "./deploy/Caddyfile")
        .expect("deploy/Caddyfile mounted");
    assert_eq!(caddyfile.1, "/etc/caddy/Caddyfile");
    let text = read("deploy/Caddyfile");
    let tls = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("tls "))
        .expect("a tls line");
    for file in tls.split_whitespace() {
        assert!(
            caddy_mounts
                .iter()
                .any(|(s, t)| t == file && s.starts_with(&format!("{SECRETS}tls/"))),
            "{file} is not the first-run certificate"
        );
    }
    assert!(text.contains("reverse_proxy ingest:8081"));
    assert!(text.contains("reverse_proxy notifier:8080"));
    let ports: Vec<String> = caddy["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(ports, ["443:443"]);
}

/// The compose bind mounts under the first-run directory, relative to it.
fn secret_mounts() -> BTreeSet<String> {
    let compose = compose();
    let Value::Mapping(services) = &compose["services"] else {
        panic!("no services");
    };
    let mut out = BTreeSet::new();
    for svc in services.values() {
        for (source, _) in bind_mounts(svc) {
            if let Some(rest) = source.strip_prefix(SECRETS) {
                out.insert(rest.to_string());
            }
        }
        if let Some(rest) = svc["env_file"]
            .as_str()
            .and_then(|f| f.strip_prefix(SECRETS))
        {
            out.insert(rest.to_string());
        }
    }
    out
}

/// `KEY=value` lines.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs scripts/first-run.sh into a temp dir, then: everything compose
/// mounts from it exists; the config is valid and accepted beyond loopback;
/// the env files set only variables the services read; mosquitto with the
/// generated password file and ACL enforces them; nats-server accepts the
/// generated passwords.
#[tokio::test]
async fn first_run_generates_a_working_secure_setup() {
    use std::time::Duration;
    use whereabouts_tests::{Mosquitto, MqttPublisher, MqttSubscriber, NatsServer};

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secrets");
    // The ACL comes from the admin CLI.
    let cli = whereabouts_tests::cargo_build(&["whereabouts-admin"]).join("whereabouts");
    let run = Command::new(repo().join("scripts/first-run.sh"))
        .args(["--dir", out.to_str().unwrap()])
        .args([
            "--host",
            "whereabouts.example.org",
            "--household",
            "weasleys",
        ])
        .args(["harry", "ron"])
        .env("WHEREABOUTS_CLI", &cli)
        .output()
        .expect("run scripts/first-run.sh");
    assert!(
        run.status.success(),
        "first-run failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    for file in secret_mounts() {
        assert!(out.join(&file).is_file(), "first-run did not write {file}");
    }
    // A second run overwrites nothing.
    let again = Command::new(repo().join("scripts/first-run.sh"))
        .args(["--dir", out.to_str().unwrap()])
        .env("WHEREABOUTS_CLI", &cli)
        .output()
        .unwrap();
    assert!(!again.status.success(), "a second run must refuse");

    // The config: valid, with a token, accepted on 0.0.0.0 (no example secret).
    let config_path = out.join("whereabouts.toml");
    let config = shared::config::Config::load(Some(&config_path)).expect("a valid config");
    assert!(config.households["weasleys"].token.is_some());
    shared::exposure::check(&config, true, "0.0.0.0:8080").expect("safe beyond loopback");
    // ingest trusts X-Forwarded-For from Caddy's fixed address alone, so a
    // lockout after wrong passwords hits one phone, not all behind Caddy.
    let caddy_address =
        str_of(&compose()["services"]["caddy"]["networks"]["default"]["ipv4_address"]);
    assert_eq!(
        config.ingest.trusted_proxies,
        vec![
            caddy_address
                .parse::<std::net::IpAddr>()
                .expect("an IP address")
        ]
    );
    let password = |user: &str| {
        config
            .ingest
            .devices
            .iter()
            .find(|d| d.user == user)
            .and_then(|d| d.password.clone())
            .unwrap_or_else(|| panic!("no password for {user}"))
    };
    assert_ne!(password("harry"), password("ron"));

    // nats-server's MQTT listener takes the same phones with the same
    // passwords, stored as hashes.
    let phones = std::fs::read_to_string(out.join("nats-phones.conf")).unwrap();
    assert!(
        !phones.contains(&password("harry")),
        "a plain password in nats-phones.conf"
    );
    let nats = NatsServer::start_phones_with(&phones).await;
    let on_nats = format!(
        "mqtt://harry:{}@127.0.0.1:{}",
        password("harry"),
        nats.mqtt_port()
    );
    MqttPublisher::connect(&on_nats, "harry-phone")
        .await
        .publish("owntracks/harry/phone", "{}")
        .await;
    drop(nats);

    // The env files name only variables the services read.
    for (kind, _) in SERVICES {
        let known = help_variables(&service_help(kind));
        for var in env_file(&out.join(format!("{kind}.env"))).keys() {
            assert!(
                known.contains(var),
                "{kind}.env sets {var}, unknown to {kind}"
            );
        }
    }

    // mosquitto with the generated password file and ACL.
    // … and a TLS listener with the generated certificate, as in compose.
    let tls_port = whereabouts_tests::free_port();
    let extra = format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n\
         listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        out.join("mosquitto/passwd").display(),
        out.join("mosquitto/acl").display(),
        out.join("tls/cert.pem").display(),
        out.join("tls/key.pem").display(),
    );
    let mut broker = Mosquitto::start_with(&extra).await;
    let port = broker.port();
    let url_as =
        move |user: &str, password: &str| format!("mqtt://{user}:{password}@127.0.0.1:{port}");
    let ingest_env = env_file(&out.join("ingest.env"));
    let mut ingest = MqttSubscriber::connect(
        &url_as(&ingest_env["MQTT_USERNAME"], &ingest_env["MQTT_PASSWORD"]),
        "whereabouts-ingest",
        true,
        &["owntracks/+/+/#"],
    )
    .await;
    // hermione is of another household: added to the config, ACL
    // regenerated, given a broker password.
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text = text.replace(
        "[ingest]\n",
        "[ingest]\nuser_households = { hermione = \"grangers\" }\n",
    );
    text.push_str("\n[households.grangers]\ntoken = \"grangers-0123456789abcdef\"\n");
    std::fs::write(&config_path, text).unwrap();
    let acl = Command::new(repo().join("scripts/first-run.sh"))
        .args(["--dir", out.to_str().unwrap(), "--acl"])
        .env("WHEREABOUTS_CLI", &cli)
        .output()
        .unwrap();
    assert!(
        acl.status.success(),
        "{}",
        String::from_utf8_lossy(&acl.stderr)
    );
    let status = Command::new("mosquitto_passwd")
        .args(["-b", out.join("mosquitto/passwd").to_str().unwrap()])
        .args(["hermione", "hermione-pw"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    drop(ingest);
    broker.restart().await; // reloads the password file and the ACL
    ingest = MqttSubscriber::connect(
        &url_as(&ingest_env["MQTT_USERNAME"], &ingest_env["MQTT_PASSWORD"]),
        "whereabouts-ingest",
        true,
        &["owntracks/+/+/#"],
    )
    .await;

    let harry = MqttPublisher::connect(&url_as("harry", &password("harry")), "harry-phone").await;
    let mut harry_sees = MqttSubscriber::connect(
        &url_as("harry", &password("harry")),
        "harry-sub",
        true,
        &["owntracks/+/+", "owntracks/+/+/#"],
    )
    .await;
    let ron = MqttPublisher::connect(&url_as("ron", &password("ron")), "ron-phone").await;
    let hermione =
        MqttPublisher::connect(&url_as("hermione", "hermione-pw"), "hermione-phone").await;

    ron.publish("owntracks/ron/phone", "ron-1").await;
    hermione
        .publish("owntracks/hermione/phone", "hermione-1")
        .await;
    // Under another user's topic: the broker drops it.
    harry
        .publish("owntracks/ron/phone", "forged-by-harry")
        .await;
    harry.publish("owntracks/harry/phone", "harry-1").await;

    let got = ingest.recv_n(3, Duration::from_secs(5)).await;
    let mut payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        ["harry-1", "hermione-1", "ron-1"],
        "ingest's account reads every household, and nothing forged"
    );
    assert!(ingest.recv(Duration::from_millis(500)).await.is_none());
    // harry reads his household (ron, himself), not the grangers'.
    let seen = harry_sees.recv_n(2, Duration::from_secs(5)).await;
    let mut seen: Vec<String> = seen
        .iter()
        .map(|m| format!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["owntracks/harry/phone harry-1", "owntracks/ron/phone ron-1"]
    );
    assert!(
        harry_sees.recv(Duration::from_millis(500)).await.is_none(),
        "harry saw another household's or a forged message"
    );
    // Without a password, or with a wrong one, nobody gets in.
    for url in [
        format!("mqtt://127.0.0.1:{}", broker.port()),
        url_as("harry", "wrong"),
    ] {
        assert!(!mqtt_connects(&url).await, "{url} was let in");
    }

    // A phone over TLS, verifying the broker against the generated CA.
    let options = shared::mqtt::options(
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "harry-tls",
        Some("harry"),
        Some(&password("harry")),
        Some(&out.join("tls/ca.pem")),
    )
    .unwrap();
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let polled = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    assert!(
        matches!(
            &polled,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))))
                if ack.code == rumqttc::ConnectReturnCode::Success
        ),
        "TLS connection with the generated certificate: {polled:?}"
    );

    // nats-server with deploy/nats-server.conf and the generated passwords.
    let nats = NatsServer::start_with_config(
        &[
            ("nats-server.conf", &read("deploy/nats-server.conf")),
            ("nats-users.conf", &read("deploy/nats-users.conf")),
            (
                "nats-passwords.conf",
                &std::fs::read_to_string(out.join("nats-passwords.conf")).unwrap(),
            ),
        ],
        None,
    )
    .await;
    for (kind, _) in SERVICES {
        let env = env_file(&out.join(format!("{kind}.env")));
        assert_eq!(env["NATS_USER"], kind);
        nats.try_client_as(kind, &env["NATS_PASSWORD"])
            .await
            .unwrap_or_else(|e| panic!("{kind} cannot log in to NATS: {e}"));
        assert!(nats.try_client_as(kind, "wrong").await.is_err());
    }
    let admin = env_file(&out.join("admin.env"))["NATS_URL"].clone();
    let admin_password = admin
        .split_once("admin:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(p, _)| p.to_string())
        .expect("admin.env: nats://admin:<password>@…");
    nats.try_client_as("admin", &admin_password)
        .await
        .expect("the admin user logs in");
}

/// Whether an MQTT client gets a successful ConnAck from `url`.
async fn mqtt_connects(url: &str) -> bool {
    let rest = url.trim_start_matches("mqtt://");
    let (credentials, host) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c.split_once(':').unwrap()), h),
        None => (None, rest),
    };
    let (host, port) = host.rsplit_once(':').unwrap();
    let mut options = rumqttc::MqttOptions::new("probe", host, port.parse().unwrap());
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let polled = tokio::time::timeout(std::time::Duration::from_secs(5), eventloop.poll()).await;
    matches!(
        polled,
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))))
            if ack.code == rumqttc::ConnectReturnCode::Success
    )
}

/// deploy/Caddyfile with the first-run certificate, when Caddy is installed:
/// HTTPS verified against the generated CA, `/pub` to ingest, the rest to
/// the notifier, the operational endpoints hidden. (The upstreams are two
/// small servers standing in for ingest and the notifier.)
#[tokio::test]
async fn caddy_serves_https_with_the_first_run_certificate() {
    use axum::routing::{get, post};
    let caddy = std::env::var("CADDY_BIN").unwrap_or_else(|_| "caddy".into());
    if Command::new(&caddy).arg("version").output().is_err() {
        eprintln!("caddy not found (CADDY_BIN): skipping the HTTPS test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secrets");
    let run = Command::new(repo().join("scripts/first-run.sh"))
        .args(["--dir", out.to_str().unwrap(), "harry"])
        .env(
            "WHEREABOUTS_CLI",
            whereabouts_tests::cargo_build(&["whereabouts-admin"]).join("whereabouts"),
        )
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let upstream = |name: &'static str| async move {
        let app = axum::Router::new()
            .route("/pub", post(move || async move { name }))
            .route("/", get(move || async move { name }))
            .route("/metrics", get(move || async move { name }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    };
    let ingest = upstream("ingest").await;
    let notifier = upstream("notifier").await;
    let port = whereabouts_tests::free_port();
    let caddyfile = format!(
        "{{\n\tadmin off\n\tauto_https disable_redirects\n}}\n{}",
        read("deploy/Caddyfile")
            .replace(":443", &format!(":{port}"))
            .replace("ingest:8081", &format!("127.0.0.1:{ingest}"))
            .replace("notifier:8080", &format!("127.0.0.1:{notifier}"))
            .replace("/certs/", &format!("{}/", out.join("tls").display()))
    );
    let config = dir.path().join("Caddyfile");
    std::fs::write(&config, caddyfile).unwrap();
    let mut child = tokio::process::Command::new(&caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start caddy");

    let ca = std::fs::read(out.join("tls/ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let body = whereabouts_tests::eventually(
        "caddy answers over HTTPS",
        std::time::Duration::from_secs(15),
        async || {
            let r = client.post(format!("{base}/pub")).send().await.ok()?;
            r.text().await.ok()
        },
    )
    .await;
    assert_eq!(body, "ingest");
    let board = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(board.text().await.unwrap(), "notifier");
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 404, "/metrics must stay inside");
    // Without the CA the certificate is not trusted.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(true)
        .build()
        .unwrap();
    assert!(stranger.post(format!("{base}/pub")).send().await.is_err());
    let _ = child.kill().await;
}
