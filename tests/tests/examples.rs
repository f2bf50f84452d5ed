//! The example consumers of `examples/`, each run as a user would run it
//! against the real pipeline, reading as the read-only `reader` user of
//! deploy/nats-server.conf (the services each as their own user): the
//! Python one (nats-py), the Rust one (async-nats and the project's types)
//! and the shell one (curl and jq on the notifier's SSE feed). Each must
//! print the arrivals of a scripted trace, in order, once.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use whereabouts_tests::{
    Phone, Pipeline, cargo_build, deploy_password, eventually, repo_dir, skip, stream_messages,
};

const TOKEN: &str = "weasleys-token-0123456789";

const CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[households.weasleys]
token = "weasleys-token-0123456789"
places = ["Home", "Work"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]

[presence]
debounce = "0s"
"#;

const ARRIVALS: [&str; 3] = [
    "Harry arrived at Home",
    "Harry arrived at Work",
    "Harry arrived at Home",
];

/// Home, Work, Home: one place event each (the region changes within one
/// fix), and waits until presence published all three.
async fn trace(stack: &Pipeline) -> Phone {
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    harry.location(51.5, -0.12, &["Home"]).await;
    harry.location(51.52, -0.1, &["Work"]).await;
    harry.location(51.5, -0.12, &["Home"]).await;
    wait_places(stack, 3).await;
    harry
}

async fn wait_places(stack: &Pipeline, n: usize) {
    eventually(
        &format!("{n} place events on PRESENCE"),
        Duration::from_secs(20),
        async || {
            let places = stream_messages(&stack.js, "PRESENCE", ">")
                .await
                .iter()
                .filter(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["kind"] == "place")
                .count();
            (places >= n).then_some(())
        },
    )
    .await;
}

/// Runs `cmd` in its own process group until it has printed `want` lines
/// (or 60 s passed), then ends the group; returns stdout's lines.
fn lines_of(mut cmd: Command, want: usize) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lines.len() < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    // A moment more: a line too many would show here.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    // SAFETY: signalling the group this test started.
    unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    lines
}

/// The Python to run the example with: `WHEREABOUTS_PYTHON`, else the
/// repository's `.venv` (scripts/test.sh makes it), else `python3`.
fn python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("WHEREABOUTS_PYTHON") {
        return Some(python.into());
    }
    let venv = repo_dir().join(".venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let found = Command::new("python3").arg("--version").output();
    found
        .is_ok_and(|o| o.status.success())
        .then(|| "python3".into())
}

#[tokio::test]
async fn python_consumer_prints_each_arrival_once_and_resumes() {
    let Some(python) = python() else {
        skip("python_consumer", "no python3 on this machine");
        return;
    };
    let has_nats = Command::new(&python).args(["-c", "import nats"]).output();
    assert!(
        has_nats.is_ok_and(|o| o.status.success()),
        "{} cannot import nats: run scripts/test.sh (it makes .venv with nats-py), \
         or set WHEREABOUTS_PYTHON to a Python that has nats-py",
        python.display()
    );
    let stack = Pipeline::start_deployed(CONFIG).await;
    let mut harry = trace(&stack).await;
    let run = |max: usize| {
        let mut cmd = Command::new(&python);
        cmd.arg(repo_dir().join("examples/python/arrivals.py"))
            .arg("weasleys")
            .env(
                "NATS_URL",
                stack.nats.url_as("reader", deploy_password("reader")),
            )
            .env("ARRIVALS_MAX", max.to_string());
        lines_of(cmd, max)
    };
    assert_eq!(run(3), ARRIVALS);
    // The durable consumer resumes after what was acked: only the new one.
    harry.location(51.52, -0.1, &["Work"]).await;
    wait_places(&stack, 4).await;
    assert_eq!(run(1), ["Harry arrived at Work"]);
}

#[tokio::test]
async fn rust_consumer_prints_each_arrival_once() {
    let bin = cargo_build(&["arrivals"]).join("arrivals");
    let stack = Pipeline::start_deployed(CONFIG).await;
    let mut harry = trace(&stack).await;
    let mut cmd = Command::new(&bin);
    cmd.arg("weasleys")
        .env("NATS_URL", stack.nats.url())
        .env("NATS_USER", "reader")
        .env("NATS_PASSWORD", deploy_password("reader"))
        .env("ARRIVALS_MAX", "3");
    assert_eq!(lines_of(cmd, 3), ARRIVALS);
    // Replay from a time: a new consumer that starts after the trace
    // prints only what comes after.
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("weasleys")
        .env("NATS_URL", stack.nats.url())
        .env("NATS_USER", "reader")
        .env("NATS_PASSWORD", deploy_password("reader"))
        .env("ARRIVALS_DURABLE", "arrivals-since")
        .env("ARRIVALS_SINCE", since)
        .env("ARRIVALS_MAX", "1");
    let since_run = tokio::task::spawn_blocking(move || lines_of(cmd, 1));
    harry.location(51.52, -0.1, &["Work"]).await;
    assert_eq!(since_run.await.unwrap(), ["Harry arrived at Work"]);
}

#[tokio::test]
async fn shell_consumer_follows_the_sse_feed() {
    for tool in ["curl", "jq"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip("shell_consumer", &format!("no {tool} on this machine"));
            return;
        }
    }
    let stack = Pipeline::start_deployed(CONFIG).await;
    trace(&stack).await;
    let mut cmd = Command::new(repo_dir().join("examples/sse.sh"));
    cmd.arg("weasleys")
        .env("NOTIFIER_URL", stack.notifier.url())
        .env("TOKEN", TOKEN)
        // From the stream's start: the trace is history by now.
        .env("LAST_EVENT_ID", "0");
    assert_eq!(lines_of(cmd, 3), ARRIVALS);
}
