//! `Mosquitto`: a mosquitto broker per test, configured from the project's
//! `deploy/mosquitto.conf`, on a free port, with its own persistence dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::{self, STARTUP_TIMEOUT};

/// The configuration the project ships; the harness appends its instance lines.
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mosquitto.conf");

/// How often to try a new port when another process takes the one we picked.
const PORT_ATTEMPTS: usize = 5;

const INSTALL_HINT: &str = "install mosquitto with `apt-get install mosquitto` \
     (or run scripts/setup.sh), or point MOSQUITTO_BIN at a mosquitto 2 binary";

/// A mosquitto broker on 127.0.0.1:<free port>, with persistence in a temp
/// dir. Killed, and the dir removed, on drop.
///
/// ```no_run
/// # async fn f() {
/// let mqtt = whereabouts_tests::Mosquitto::start().await;
/// let publisher = whereabouts_tests::MqttPublisher::connect(&mqtt.url(), "phone").await;
/// # }
/// ```
pub struct Mosquitto {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// Config lines appended after the harness's own (e.g. a TLS listener).
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Picks a free port, writes `<tmp>/mosquitto.conf` (the shipped config
    /// plus listener, persistence_location, log file), starts mosquitto
    /// (`MOSQUITTO_BIN`, else `/usr/sbin/mosquitto`, else `mosquitto` on PATH)
    /// and waits until it accepts TCP connections.
    pub async fn start() -> Mosquitto {
        Self::start_with("").await
    }

    /// Like [`Mosquitto::start`], with `extra` appended to the config (more
    /// listeners, TLS files…).
    pub async fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("whereabouts-mosquitto-")
            .tempdir()
            .expect("create a temp dir for mosquitto");
        let mut broker = Mosquitto {
            bin: mosquitto_bin(),
            dir,
            port: 0,
            extra: extra.to_string(),
            child: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            broker.port = process::free_port();
            match broker.spawn_and_wait().await {
                Ok(()) => return broker,
                Err(why) if attempt < PORT_ATTEMPTS && why.contains("in use") => continue,
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The port the broker listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id while it runs (for its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding `mosquitto.conf`, `mosquitto.db`, `mosquitto.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop: SIGTERM (mosquitto saves its persistence file on a
    /// clean exit) and wait for the exit (SIGKILL after 15 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child).await;
        }
    }

    /// Crash: SIGKILL; what was not autosaved yet is lost.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
    }

    /// Starts the broker again on the same port with the same persistence
    /// dir. Stops it gracefully first if it is still running.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Err(why) = self.spawn_and_wait().await {
            panic!("restart mosquitto on port {}: {why}", self.port);
        }
    }

    fn log_paths(&self) -> [PathBuf; 2] {
        [
            self.dir.path().join("mosquitto.stderr"),
            self.dir.path().join("mosquitto.log"),
        ]
    }

    fn logs(&self) -> String {
        self.log_paths()
            .iter()
            .map(|p| process::log_tail(p))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn write_config(&self) -> PathBuf {
        let shipped = std::fs::read_to_string(SHIPPED_CONFIG)
            .unwrap_or_else(|e| panic!("read {SHIPPED_CONFIG}: {e}"));
        let dir = self.dir.path().display();
        let mut config = format!(
            "{shipped}\n\
             # --- appended by whereabouts-tests (tests/src/mosquitto.rs) ---\n\
             listener {port} 127.0.0.1\n\
             persistence_location {dir}/\n\
             allow_anonymous true\n\
             log_dest file {dir}/mosquitto.log\n",
            port = self.port,
        );
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // As root mosquitto switches to the user `mosquitto`, which cannot
            // write our temp dir. "root" tells it to stay.
            config.push_str("user root\n");
        }
        config.push_str(&self.extra);
        let path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Starts mosquitto on `self.port`; `Err` carries the reason and logs.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.write_config();
        let [stderr_log, _] = self.log_paths();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&config);
        let child = process::spawn(&mut cmd, &stderr_log)
            .map_err(|e| format!("spawn {}: {e}; {INSTALL_HINT}", self.bin.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let logs = self.logs();
                let in_use = if logs.contains("Address already in use") {
                    " (address in use)"
                } else {
                    ""
                };
                return Err(format!(
                    "mosquitto exited during startup on port {}{in_use} ({status})\n{logs}",
                    self.port
                ));
            }
            if process::accepts(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "mosquitto did not accept connections on port {} within {STARTUP_TIMEOUT:?}\n{}",
                    self.port,
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
    }
}

fn mosquitto_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MOSQUITTO_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let debian = Path::new("/usr/sbin/mosquitto");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("mosquitto")
    }
}
