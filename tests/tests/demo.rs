//! The README's first command, `scripts/run.sh --demo`, as a new user runs
//! it: from a clean copy of the repository (its tracked files, no `.run/`,
//! no `target/`), on free ports so that it runs next to the other tests,
//! with the debug binaries of this build (`WHEREABOUTS_BIN_DIR`) instead of
//! a release build. Headless Chromium opens the board run.sh prints and must
//! see the demo people at two different places within a minute (screenshots
//! `target/screenshots/demo-1.png` and `demo-2.png`). Then Ctrl-C (SIGINT to
//! the process group, as a terminal sends it) and, in a second run, SIGTERM
//! to run.sh alone must stop every process it started and free every port.
//!
//! Without Chromium the test prints why and passes;
//! `WHEREABOUTS_REQUIRE_BROWSER=1` makes that a failure.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use whereabouts_tests::{
    Chromium, cargo_build, chromium_binary, free_port, repo_dir, skip, target_dir,
};

const NO_CHROMIUM: &str = "chromium not found, skipping (scripts/setup.sh --browser installs it)";

/// The demo household's people (deploy/demo.toml).
const PEOPLE: [&str; 4] = ["Molly", "Arthur", "Ginny", "Ron"];

/// The processes run.sh starts, by their command name (`/proc/<pid>/comm`,
/// at most 15 characters).
const EXPECTED: [&str; 6] = [
    "nats-server",
    "mosquitto",
    "ingest",
    "presence",
    "notifier",
    "whereabouts-sim",
];

/// run.sh checks the brokers are installed, then waits for ingest to be
/// ready before it prints the board's address.
const START: Duration = Duration::from_secs(120);
/// The brief's promise: two different places within a minute of opening
/// the board (the day starts at 07:00 at Home; at a day in six minutes
/// people leave home about 8 s in).
const TWO_PLACES: Duration = Duration::from_secs(60);
/// run.sh's services and brokers shut down gracefully; this is generous.
const STOP: Duration = Duration::from_secs(30);

/// How the demo is told to stop.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGINT to the whole process group, as Ctrl-C in a terminal does.
    CtrlC,
    /// SIGTERM to run.sh alone, as a service manager or `kill` does.
    Term,
}

/// The tracked files of the working tree, copied into a fresh directory: a
/// clean checkout (no `.run/`, no `target/`, nothing untracked) that still
/// includes uncommitted edits, so the test checks what is being changed.
fn clean_checkout() -> tempfile::TempDir {
    let repo = repo_dir();
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&repo)
        .output()
        .expect("run git ls-files (the demo test needs a git checkout)");
    assert!(
        output.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for name in output.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).expect("UTF-8 file name");
        let from = repo.join(name);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("create dir");
        // fs::copy keeps the mode: scripts stay executable.
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    dir
}

/// One `scripts/run.sh --demo` in its own process group.
struct Demo {
    child: Child,
    /// Its output (run.sh's and the services').
    log: PathBuf,
    /// NATS, MQTT, ingest, presence, notifier.
    ports: [u16; 5],
    _state: tempfile::TempDir,
}

impl Demo {
    fn start(checkout: &Path, bin_dir: &Path) -> Demo {
        let state = tempfile::tempdir().expect("temp dir");
        let log = state.path().join("run.log");
        let ports = [(); 5].map(|()| free_port());
        let [nats, mqtt, ingest, presence, notifier] = ports;
        let out = std::fs::File::create(&log).expect("create run.log");
        let err = out.try_clone().expect("clone run.log");
        let child = Command::new(checkout.join("scripts/run.sh"))
            .arg("--demo")
            .current_dir(checkout)
            .env("WHEREABOUTS_RUN_DIR", state.path().join("run"))
            .env("WHEREABOUTS_BIN_DIR", bin_dir)
            .env("NATS_PORT", nats.to_string())
            .env("MQTT_PORT", mqtt.to_string())
            .env("INGEST_HTTP_ADDR", format!("127.0.0.1:{ingest}"))
            .env("PRESENCE_HTTP_ADDR", format!("127.0.0.1:{presence}"))
            .env("NOTIFIER_HTTP_ADDR", format!("127.0.0.1:{notifier}"))
            .env_remove("WHEREABOUTS_CONFIG")
            .env_remove("NATS_URL")
            .env_remove("MQTT_URL")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group, like a job in a terminal: Ctrl-C goes to the group.
            .process_group(0)
            .spawn()
            .expect("start scripts/run.sh --demo");
        Demo {
            child,
            log,
            ports,
            _state: state,
        }
    }

    fn pgid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid")
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The board's address as run.sh prints it, once it has.
    async fn board_url(&mut self) -> String {
        let deadline = Instant::now() + START;
        loop {
            let output = self.output();
            let url = output
                .lines()
                .filter_map(|l| l.trim().strip_prefix("board"))
                .map(str::trim)
                .find(|u| u.starts_with("http://"));
            if let Some(url) = url {
                return url.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("run.sh exited ({status}) before printing the board:\n{output}");
            }
            assert!(
                Instant::now() < deadline,
                "run.sh printed no board address in {START:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `how`, waits for run.sh to exit; the processes that were in its
    /// group must be gone and its ports closed.
    async fn stop_and_check(&mut self, how: Stop, started: &[(libc::pid_t, String)]) {
        let signal_result = match how {
            // SAFETY: killpg(2)/kill(2) on the group and process of our own
            // unreaped child.
            Stop::CtrlC => unsafe { libc::killpg(self.pgid(), libc::SIGINT) },
            Stop::Term => unsafe { libc::kill(self.pgid(), libc::SIGTERM) },
        };
        assert_eq!(signal_result, 0, "{how:?}: signal not sent");
        let deadline = Instant::now() + STOP;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for run.sh") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{how:?}: run.sh still running after {STOP:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Children that run.sh does not wait for (its log pipes) may end a
        // moment after it; a generous second look before calling it a leak.
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = loop {
            let left: Vec<_> = started
                .iter()
                .filter(|(pid, _)| alive(*pid))
                .chain(group(self.pgid()).iter().filter(|(pid, _)| alive(*pid)))
                .cloned()
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            left.is_empty(),
            "{how:?} (run.sh exited {status}) left processes behind: {left:?}\n{}",
            self.output()
        );
        let open: Vec<u16> = self.ports.into_iter().filter(|&p| accepts(p)).collect();
        assert!(
            open.is_empty(),
            "{how:?}: ports {open:?} still accept connections"
        );
        assert!(
            self.output().contains("stopping"),
            "{how:?}: run.sh's cleanup did not run:\n{}",
            self.output()
        );
    }
}

impl Drop for Demo {
    /// A failed test must not leave the demo running either.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: the group of our own unreaped child.
            unsafe {
                libc::killpg(self.pgid(), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        for (pid, _) in group(self.pgid()) {
            // SAFETY: a process still in the group the demo led.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The processes in process group `pgid`, with their command names
/// (`/proc/<pid>/stat`: `pid (comm) state ppid pgrp …`).
fn group(pgid: libc::pid_t) -> Vec<(libc::pid_t, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let pgrp = stat[close + 1..].split_whitespace().nth(2);
        if pgrp.and_then(|g| g.parse::<libc::pid_t>().ok()) == Some(pgid) {
            found.push((pid, comm));
        }
    }
    found
}

/// Whether `pid` still runs. A zombie (exited, waiting for a parent that
/// is gone to reap it) runs nothing and holds no port: it counts as gone.
fn alive(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Every process run.sh should have started, in its group (polls: the
/// simulator starts once ingest is ready, about when the board is printed).
async fn started_processes(demo: &Demo) -> Vec<(libc::pid_t, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let processes = group(demo.pgid());
        let missing: Vec<_> = EXPECTED
            .iter()
            .filter(|name| !processes.iter().any(|(_, comm)| comm == *name))
            .collect();
        if missing.is_empty() {
            return processes;
        }
        assert!(
            Instant::now() < deadline,
            "run.sh's group lacks {missing:?}: {processes:?}\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `{person: place}` of the board's table (`null` until the board is live).
const ROWS: &str = r#"(() => {
  if (document.body.dataset.state !== "live") return null;
  const rows = {};
  for (const tr of document.querySelectorAll("tr[data-person]")) {
    const td = tr.querySelector("td.place");
    rows[tr.dataset.person] = td ? td.textContent.trim() : null;
  }
  return rows;
})()"#;

/// The places the board shows (people not heard from yet have none).
fn places(rows: &Value) -> BTreeSet<String> {
    PEOPLE
        .iter()
        .filter_map(|p| rows[p].as_str())
        .filter(|place| !place.is_empty() && *place != "not heard from yet")
        .map(str::to_string)
        .collect()
}

/// One run of the demo: the board shows two places, then `how` stops it all.
async fn run_demo(checkout: &Path, bin_dir: &Path, how: Stop, shots: bool) {
    let mut demo = Demo::start(checkout, bin_dir);
    let board = demo.board_url().await;
    assert!(
        board.contains(&format!("127.0.0.1:{}/", demo.ports[4])),
        "the printed board is on the notifier's port: {board}"
    );
    let started = started_processes(&demo).await;
    let chromium = Chromium::launch(1000, 900)
        .await
        .expect("chromium (checked before)");
    chromium.goto(&board).await.expect("open the board");
    let opened = Instant::now();
    // From the first second: every configured person, never "Nobody here yet".
    let first = chromium
        .wait_for("the board to list the demo people", TWO_PLACES, ROWS, |v| {
            PEOPLE.iter().all(|p| v[p].is_string())
        })
        .await;
    let text = chromium.evaluate("document.body.innerText").await.unwrap();
    assert!(
        !text
            .as_str()
            .unwrap_or_default()
            .contains("Nobody here yet"),
        "{text}"
    );
    // The first places, then a different picture with two places at once.
    let one = chromium
        .wait_for(
            "the board to show a place",
            TWO_PLACES.saturating_sub(opened.elapsed()),
            ROWS,
            |v| !places(v).is_empty(),
        )
        .await;
    if shots {
        chromium.settle(Duration::from_secs(10)).await;
        let shot = target_dir().join("screenshots").join("demo-1.png");
        chromium.screenshot(&shot).await.expect("demo-1 screenshot");
        let shown = chromium.evaluate(ROWS).await.unwrap_or_default();
        eprintln!("demo screenshot 1 ({shown}): {}", shot.display());
    }
    let two = chromium
        .wait_for(
            "the board to show the demo people at two different places",
            TWO_PLACES.saturating_sub(opened.elapsed()),
            ROWS,
            |v| places(v).len() >= 2 && *v != one,
        )
        .await;
    eprintln!(
        "{how:?}: two places {:?} {:.1} s after opening the board (first rows {first})",
        places(&two),
        opened.elapsed().as_secs_f64()
    );
    if shots {
        chromium.settle(Duration::from_secs(10)).await;
        let shot = target_dir().join("screenshots").join("demo-2.png");
        chromium.screenshot(&shot).await.expect("demo-2 screenshot");
        // The demo moves on while the hands settle: what the picture shows.
        let shown = chromium.evaluate(ROWS).await.unwrap_or_default();
        eprintln!("demo screenshot 2 ({shown}): {}", shot.display());
    }
    drop(chromium);
    demo.stop_and_check(how, &started).await;
    eprintln!(
        "{how:?}: stopped; none of {} processes left, {} ports closed",
        started.len(),
        demo.ports.len()
    );
}

#[tokio::test]
async fn readme_demo_shows_two_places_and_stops_on_ctrl_c_and_sigterm() {
    const TEST: &str = "readme_demo_shows_two_places_and_stops_on_ctrl_c_and_sigterm";
    if chromium_binary().is_none() {
        return skip(TEST, NO_CHROMIUM);
    }
    let bin_dir = cargo_build(&["ingest", "presence", "notifier", "simulator"]);
    let checkout = clean_checkout();
    run_demo(checkout.path(), &bin_dir, Stop::CtrlC, true).await;
    // A second run from the same checkout: the demo starts afresh again.
    run_demo(checkout.path(), &bin_dir, Stop::Term, false).await;
}
