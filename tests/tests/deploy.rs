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
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;
use whereabouts_tests::service_help;

/// The Whereabouts services and the port each one listens on in compose.
const SERVICES: [(&str, u16); 3] = [("ingest", 8081), ("presence", 8082), ("notifier", 8080)];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let full = repo().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

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
    // Published ports: the board/API and HTTP mode.
    for (kind, port) in [("notifier", 8080), ("ingest", 8081)] {
        let ports: Vec<String> = service(&compose, kind)["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{kind} publishes no port"))
            .iter()
            .map(str_of)
            .collect();
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{kind} must publish {port}: {ports:?}"
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
        // …and it is a valid configuration.
        shared::config::Config::load(Some(&repo().join(&source)))
            .unwrap_or_else(|e| panic!("{source}: {e:#}"));
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
    // The image's default config path is where compose mounts the config.
    assert!(
        lines
            .iter()
            .any(|l| l == "COPY whereabouts.example.toml /etc/whereabouts/whereabouts.toml"),
        "the example config must be the image's /etc/whereabouts/whereabouts.toml"
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

/// Passwords for deploy/nats-server.conf's include, as first-run writes them.
const NATS_PASSWORDS: &str = r#"
INGEST_PASSWORD: "ingest-pw-0123456789"
PRESENCE_PASSWORD: "presence-pw-0123456789"
NOTIFIER_PASSWORD: "notifier-pw-0123456789"
ADMIN_PASSWORD: "admin-pw-0123456789"
READER_PASSWORD: "reader-pw-0123456789"
"#;

async fn authorized_nats() -> whereabouts_tests::NatsServer {
    whereabouts_tests::NatsServer::start_with_config(
        &[
            ("nats-server.conf", &read("deploy/nats-server.conf")),
            ("nats-passwords.conf", NATS_PASSWORDS),
        ],
        Some(("admin", "admin-pw-0123456789")),
    )
    .await
}

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

    let nats = authorized_nats().await;
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
    // The read-only sample user cannot publish presence either.
    let (reader, errors) = watched_client(&nats, "reader", "reader-pw-0123456789").await;
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
