//! SIGTERM stops every service within 10 s, whatever state it is in: with
//! its stdout and stderr gone (the reader of its pipe died, as when
//! `kill -TERM -- -PGID` takes out the `sed` of `scripts/run.sh`), and
//! with NATS gone (its connection in a retry loop). And NATS gone the
//! moment a service is ready ends no service.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use whereabouts_tests::{Mosquitto, NatsServer, free_port, service_binary};

const CONFIG: &str = r#"
[households.home]
places = ["Home", "Work"]

[[households.home.people]]
name = "Harry"
devices = ["harry/phone"]
"#;

/// The bound the issue sets: every service is gone 10 s after SIGTERM.
const BOUND: Duration = Duration::from_secs(10);

/// A service process whose stdout and stderr are pipes we can close.
struct Running {
    kind: &'static str,
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kind` with piped output (debug logs, so that it keeps writing)
/// and waits for `/readyz`.
async fn start(kind: &'static str, nats: &NatsServer, mqtt: &Mosquitto) -> Running {
    let (mut running, _) = spawn(kind, &nats.url(), &mqtt.url());
    running.wait_ready().await;
    running
}

/// Spawns `kind` with piped output; returns it and its HTTP port.
fn spawn(kind: &'static str, nats_url: &str, mqtt_url: &str) -> (Running, u16) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("whereabouts.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let port = free_port();
    let child = Command::new(service_binary())
        .arg(kind)
        .env("NATS_URL", nats_url)
        .env("MQTT_URL", mqtt_url)
        .env("WHEREABOUTS_CONFIG", &config)
        .env(
            format!("{}_HTTP_ADDR", kind.to_uppercase()),
            format!("127.0.0.1:{port}"),
        )
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn whereabouts-service");
    let running = Running {
        kind,
        child,
        port,
        _dir: dir,
    };
    (running, port)
}

impl Running {
    /// Waits for `/readyz`; panics if the process exits first.
    async fn wait_ready(&mut self) {
        let (kind, url) = (self.kind, format!("http://127.0.0.1:{}/readyz", self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{kind} exited before ready: {status}");
            }
            assert!(Instant::now() < deadline, "{kind} not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes our ends of its stdout and stderr: its next writes fail (EPIPE).
    fn close_output(&mut self) {
        drop(self.child.stdout.take());
        drop(self.child.stderr.take());
    }

    /// SIGTERM, then how long it took to exit (`None`: not within `BOUND`
    /// plus a margin for a slow machine to notice).
    async fn terminate(&mut self) -> Option<Duration> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        while sent.elapsed() < BOUND + Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(sent.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    async fn assert_stops(&mut self, state: &str) {
        let took = self.terminate().await;
        let kind = self.kind;
        match took {
            Some(t) => {
                println!("{kind} ({state}): exited {t:?} after SIGTERM");
                assert!(
                    t < BOUND,
                    "{kind} ({state}) took {t:?} to exit after SIGTERM"
                );
            }
            None => panic!("{kind} ({state}) still running 15 s after SIGTERM"),
        }
    }
}

#[tokio::test]
async fn sigterm_with_stdout_and_stderr_closed_stops_every_service() {
    let nats = NatsServer::start().await;
    let mqtt = Mosquitto::start().await;
    for kind in ["ingest", "presence", "notifier"] {
        let mut service = start(kind, &nats, &mqtt).await;
        service.close_output();
        // The signal handler's own log line is then the first write to fail.
        tokio::time::sleep(Duration::from_millis(300)).await;
        service.assert_stops("stdout and stderr closed").await;
    }
}

#[tokio::test]
async fn sigterm_with_nats_gone_stops_every_service() {
    let mut nats = NatsServer::start().await;
    let mqtt = Mosquitto::start().await;
    let mut services = Vec::new();
    for kind in ["ingest", "presence", "notifier"] {
        services.push(start(kind, &nats, &mqtt).await);
    }
    nats.stop().await;
    // Into their reconnect loops, with the output closed too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for service in &mut services {
        service.close_output();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for service in &mut services {
        service.assert_stops("NATS gone, output closed").await;
    }
}

#[tokio::test]
async fn sigterm_while_nats_was_never_reachable_stops_every_service() {
    // Still connecting for the first time (retried without end), which
    // does not watch for the shutdown: the grace period ends it.
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let mqtt = format!("mqtt://127.0.0.1:{}", free_port());
    let mut services: Vec<Running> = ["ingest", "presence", "notifier"]
        .into_iter()
        .map(|kind| spawn(kind, &nowhere, &mqtt).0)
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for service in &mut services {
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!("{} exited before the signal: {status}", service.kind);
        }
    }
    // Signal all three at once: each may take up to the grace period.
    let stops = services
        .iter_mut()
        .map(|s| s.assert_stops("NATS never reachable"));
    futures::future::join_all(stops).await;
}

/// NATS stopped the moment each service reports ready: set-up it still
/// had to do (ingest's buckets, the notifier's sinks, presence's consumer)
/// is retried, so it keeps running and is ready again once NATS is back.
/// (CI once saw ingest exit here: its buckets came after readiness.)
#[tokio::test]
async fn nats_gone_right_after_ready_ends_no_service() {
    let mut nats = NatsServer::start().await;
    let mqtt = Mosquitto::start().await;
    for kind in ["ingest", "presence", "notifier"] {
        let mut service = start(kind, &nats, &mqtt).await;
        // Its logs in the reconnect loop would fill an unread pipe.
        service.close_output();
        nats.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = service.child.try_wait().unwrap();
        assert!(status.is_none(), "{kind} exited with NATS gone: {status:?}");
        nats.restart().await;
        service.wait_ready().await;
        service.assert_stops("NATS back").await;
    }
}
