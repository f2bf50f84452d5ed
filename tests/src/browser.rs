//! Browsers for the web tests: headless Chromium driven over the DevTools
//! protocol ([`Chromium`]: navigate, evaluate, poll the live DOM, screenshot)
//! and MagicMirror² 2.30 in server-only mode ([`MagicMirror`]), installed once
//! into a cache directory under `target/`.
//!
//! Both run as their own process group and are killed, with every child,
//! when dropped. A missing Chromium, node/npm or npm registry is a skip
//! (`None`/`Err(reason)`), unless `WHEREABOUTS_REQUIRE_BROWSER=1`, which
//! turns a skip into a failure (see [`skip`]).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process::{accepts, free_port, log_tail, spawn};

/// The MagicMirror² release these tests run (2.31+ want Node 22).
pub const MAGICMIRROR_VERSION: &str = "2.30.0";

/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Chromium::wait_for`] polls the page.
const POLL: Duration = Duration::from_millis(50);
/// Console lines kept for failure messages.
const CONSOLE_LINES: usize = 200;

/// Reports why a browser test cannot run (`reason` says "…, skipping"). Returns normally (the test then
/// returns early and passes) unless `WHEREABOUTS_REQUIRE_BROWSER=1`, in which
/// case it panics: for machines that must run the browser tests.
pub fn skip(test: &str, reason: &str) {
    let message = format!("{test}: {reason}");
    if std::env::var("WHEREABOUTS_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("{message} (but WHEREABOUTS_REQUIRE_BROWSER=1)");
    }
    eprintln!("{message}");
}

/// The cargo target directory these tests were built into
/// (`target/<profile>/deps/<test>` → `target`); honours `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test executable")
        .to_path_buf()
}

/// The repository's root (the workspace).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A file of the repository (`deploy/…`, `compose.yaml`) as text; panics
/// with the path when it cannot be read.
pub fn read_repo_file(path: &str) -> String {
    let full = repo_dir().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// `CHROMIUM_BIN`, else `/usr/bin/chromium`, else `chromium` or
/// `chromium-browser` on PATH.
pub fn chromium_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROMIUM_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.exists() {
            Some(bin)
        } else {
            on_path(&bin)
        };
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.exists() {
        return Some(debian);
    }
    on_path(Path::new("chromium")).or_else(|| on_path(Path::new("chromium-browser")))
}

fn on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// SIGKILL a whole process group (a browser and its helpers) and reap the leader.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id())
        && matches!(child.try_wait(), Ok(None))
    {
        // SAFETY: killpg(2) on the group our unreaped child leads (spawned with
        // process_group(0)), so the id cannot belong to anyone else.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Headless Chromium with one page, driven over the DevTools protocol.
pub struct Chromium {
    child: Child,
    dir: tempfile::TempDir,
    sink: tokio::sync::Mutex<WsSink>,
    pending: Pending,
    next_id: AtomicU64,
    console: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Chromium {
    /// Starts Chromium (flags of docs: headless, no sandbox, fresh profile)
    /// with a `width`×`height` viewport on `about:blank`. `None` when there
    /// is no Chromium binary; panics when one is there but does not start.
    pub async fn launch(width: u32, height: u32) -> Option<Chromium> {
        let bin = chromium_binary()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            // Chromium picks the port and writes it to DevToolsActivePort.
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("about:blank")
        .process_group(0);
        let log = dir.path().join("chromium.log");
        let mut child =
            spawn(&mut cmd, &log).unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        // Port from DevToolsActivePort, then the page's WebSocket from /json/list.
        let deadline = Instant::now() + Duration::from_secs(30);
        let port_file = profile.join("DevToolsActivePort");
        let ws_url = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited ({status}) at start; {}", log_tail(&log));
            }
            if let Some(url) = page_ws_url(&port_file).await {
                break url;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!("chromium's DevTools did not come up; {}", log_tail(&log));
            }
            tokio::time::sleep(POLL).await;
        };
        let (ws, _) = match tokio_tungstenite::connect_async(ws_url.as_str()).await {
            Ok(ws) => ws,
            Err(e) => {
                kill_group(&mut child);
                panic!("DevTools WebSocket {ws_url}: {e}; {}", log_tail(&log));
            }
        };
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let reader = {
            let pending = pending.clone();
            let console = console.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = value.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let _ = tx.send(value);
                        }
                    } else if let Some(line) = console_line(&value) {
                        let mut console = console.lock().unwrap();
                        if console.len() >= CONSOLE_LINES {
                            console.remove(0);
                        }
                        console.push(line);
                    }
                }
                // Connection gone: fail every waiting call at once.
                pending.lock().unwrap().clear();
            })
        };
        let chromium = Chromium {
            child,
            dir,
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next_id: AtomicU64::new(0),
            console,
            reader,
        };
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Runtime.enable", json!({})),
            (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            ),
        ] {
            if let Err(e) = chromium.call(method, params).await {
                panic!("{method}: {e:#}; {}", chromium.log());
            }
        }
        Some(chromium)
    }

    /// One DevTools command on the page; its `result`.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.sink
            .lock()
            .await
            .send(Message::text(request))
            .await
            .with_context(|| format!("sending {method}"))?;
        let reply = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => bail!("{method}: the DevTools connection closed"),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                bail!("{method}: no answer in {CALL_TIMEOUT:?}");
            }
        };
        if let Some(error) = reply.get("error") {
            bail!("{method}: {error}");
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Loads `url` (returns once navigation has started; poll with
    /// [`wait_for`](Self::wait_for) for what the page should show).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let result = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = result.get("errorText").and_then(Value::as_str) {
            bail!("navigating to {url}: {error}");
        }
        Ok(())
    }

    /// Reloads the page, bypassing the cache.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.call("Page.reload", json!({"ignoreCache": true}))
            .await
            .map(drop)
    }

    /// The JSON value of a JavaScript expression in the page (awaits
    /// promises); an exception in the page is an error.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            let description = details
                .pointer("/exception/description")
                .or_else(|| details.get("text"))
                .cloned()
                .unwrap_or_default();
            bail!("page threw: {description}");
        }
        Ok(result
            .pointer("/result/value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Evaluates `expression` every 50 ms until `accept` takes its value,
    /// and returns that value. Panics at the deadline with the last value (or
    /// error) and the page's console.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        expression: &str,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(nothing yet)");
        loop {
            match tokio::time::timeout_at(deadline, self.evaluate(expression)).await {
                Ok(Ok(value)) if accept(&value) => return value,
                Ok(Ok(value)) => last = value.to_string(),
                Ok(Err(e)) => last = format!("error: {e:#}"),
                Err(_) => last = format!("{last} (then an evaluation hung)"),
            }
            if Instant::now() + POLL > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the page last showed: {last}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no CSS transition runs (clock hands take 1.6 s to turn),
    /// so that a screenshot shows where things ended up.
    pub async fn settle(&self, timeout: Duration) {
        self.wait_for(
            "CSS transitions to finish",
            timeout,
            "document.getAnimations().filter((a) => a instanceof CSSTransition && a.playState === 'running').length",
            |v| v == 0,
        )
        .await;
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = result
            .get("data")
            .and_then(Value::as_str)
            .context("screenshot without data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Saves a PNG of the whole page, below the fold too, to `path`: a
    /// phone-sized viewport holds only part of a ten-person board.
    pub async fn screenshot_full_page(&self, path: &Path) -> anyhow::Result<()> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = metrics
            .get("cssContentSize")
            .context("layout metrics without cssContentSize")?;
        let (width, height) = (size["width"].as_f64(), size["height"].as_f64());
        let (Some(width), Some(height)) = (width, height) else {
            bail!("layout metrics without a content size: {size}");
        };
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await?;
        let data = result
            .get("data")
            .and_then(Value::as_str)
            .context("screenshot without data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The page's console and uncaught exceptions, and Chromium's own log.
    pub fn log(&self) -> String {
        let console = self.console.lock().unwrap().join("\n");
        format!(
            "--- page console ---\n{console}\n{}",
            log_tail(&self.dir.path().join("chromium.log"))
        )
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.reader.abort();
        kill_group(&mut self.child);
    }
}

/// The first page target's DevTools WebSocket URL, once Chromium listens.
async fn page_ws_url(port_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(port_file).ok()?;
    let port: u16 = text.lines().next()?.trim().parse().ok()?;
    let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    targets
        .as_array()?
        .iter()
        .find(|t| t.get("type").and_then(Value::as_str) == Some("page"))?
        .get("webSocketDebuggerUrl")?
        .as_str()
        .map(str::to_string)
}

/// A console call or an uncaught exception, as one line.
fn console_line(event: &Value) -> Option<String> {
    let params = event.get("params")?;
    match event.get("method")?.as_str()? {
        "Runtime.consoleAPICalled" => {
            let kind = params.get("type").and_then(Value::as_str).unwrap_or("log");
            let args: Vec<String> = params
                .get("args")
                .and_then(Value::as_array)
                .map(|args| {
                    args.iter()
                        .map(|a| match a.get("value") {
                            Some(Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => a
                                .get("description")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                                .to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(format!("console.{kind}: {}", args.join(" ")))
        }
        "Runtime.exceptionThrown" => {
            let details = params.get("exceptionDetails")?;
            let text = details
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| details.get("text").and_then(Value::as_str))
                .unwrap_or("?");
            Some(format!("exception: {text}"))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- MagicMirror

/// MagicMirror² in server-only mode (`node serveronly`) on a free port, with
/// its own config file; killed (with its process group) when dropped.
pub struct MagicMirror {
    child: Option<Child>,
    port: u16,
    config_path: PathBuf,
    dir: tempfile::TempDir,
}

/// Runs `program args` in `cwd` with a deadline; `Err` carries its output.
async fn run(cwd: &Path, program: &str, args: &[&str], timeout: Duration) -> Result<(), String> {
    let what = format!("`{program} {}`", args.join(" "));
    let output = tokio::time::timeout(
        timeout,
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{what} took longer than {timeout:?}"))?
    .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stderr);
    // The first lines say what went wrong (npm: "npm error code ECONNREFUSED").
    let head = text.lines().take(8).collect::<Vec<_>>().join("\n");
    Err(format!("{what} failed ({}):\n{head}", output.status))
}

impl MagicMirror {
    /// MagicMirror² 2.30 installed once into `target/magicmirror-2.30.0`
    /// (`npm pack`, unpack, `npm install --ignore-scripts --omit=dev`: about
    /// 40 s the first time), reused afterwards. `Err(reason)` when node/npm
    /// are missing or the registry cannot be reached.
    pub async fn install() -> Result<PathBuf, String> {
        let target = target_dir();
        let root = target.join(format!("magicmirror-{MAGICMIRROR_VERSION}"));
        let marker = root.join(".whereabouts-installed");
        if marker.exists() {
            return Ok(root);
        }
        for tool in ["node", "npm"] {
            run(&target, tool, &["--version"], Duration::from_secs(30))
                .await
                .map_err(|e| format!("{tool} not usable ({e})"))?;
        }
        eprintln!(
            "installing MagicMirror² {MAGICMIRROR_VERSION} into {} (once)",
            root.display()
        );
        let staging = target.join(format!(
            "magicmirror-{MAGICMIRROR_VERSION}.partial-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let result = async {
            let spec = format!("magicmirror@{MAGICMIRROR_VERSION}");
            run(
                &staging,
                "npm",
                // Few retries: an unreachable registry is a quick skip, not 70 s.
                &[
                    "pack",
                    "--fetch-retries=1",
                    "--fetch-retry-mintimeout=2000",
                    &spec,
                ],
                Duration::from_secs(180),
            )
            .await
            .map_err(|e| format!("npm registry unreachable? {e}"))?;
            let tarball = format!("magicmirror-{MAGICMIRROR_VERSION}.tgz");
            run(&staging, "tar", &["xzf", &tarball], Duration::from_secs(60)).await?;
            let package = staging.join("package");
            run(
                &package,
                "npm",
                &[
                    "install",
                    "--ignore-scripts",
                    "--omit=dev",
                    "--no-audit",
                    "--no-fund",
                ],
                Duration::from_secs(600),
            )
            .await
            .map_err(|e| format!("npm registry unreachable? {e}"))?;
            std::fs::write(package.join(".whereabouts-installed"), MAGICMIRROR_VERSION)
                .map_err(|e| e.to_string())?;
            if root.exists() && !marker.exists() {
                let _ = std::fs::remove_dir_all(&root); // an interrupted old attempt
            }
            match std::fs::rename(&package, &root) {
                Ok(()) => Ok(()),
                Err(_) if marker.exists() => Ok(()), // another run finished first
                Err(e) => Err(format!("moving {} into place: {e}", package.display())),
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&staging);
        result.map(|()| root)
    }

    /// Starts `node serveronly` in the install `root` with the given
    /// modules linked into `modules/` (name → directory) and the config
    /// `config_js(port)` (a `config/config.js` body), and waits until it
    /// serves its page.
    pub async fn start(
        root: &Path,
        modules: &[(&str, &Path)],
        config_js: impl FnOnce(u16) -> String,
    ) -> MagicMirror {
        for (name, dir) in modules {
            let link = root.join("modules").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(dir, &link)
                .unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
        }
        // 2.30 asks for css/custom.css; an empty one keeps the console clean.
        let custom_css = root.join("css").join("custom.css");
        if !custom_css.exists() {
            let _ = std::fs::write(&custom_css, "");
        }
        let port = free_port();
        // Inside the install: the page loads its config from /config/.
        let config_path = root
            .join("config")
            .join(format!("whereabouts-test-{}-{port}.js", std::process::id()));
        std::fs::write(&config_path, config_js(port)).expect("write MagicMirror config");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("node");
        cmd.arg("serveronly")
            .current_dir(root)
            .env("MM_CONFIG_FILE", &config_path)
            .env("MM_PORT", port.to_string())
            .process_group(0);
        let child =
            spawn(&mut cmd, &dir.path().join("magicmirror.log")).expect("spawn node serveronly");
        let mut mirror = MagicMirror {
            child: Some(child),
            port,
            config_path,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                mirror.is_running(),
                "MagicMirror exited at start; {}",
                mirror.log()
            );
            if accepts(port)
                && matches!(reqwest::get(mirror.url()).await, Ok(r) if r.status().is_success())
            {
                return mirror;
            }
            assert!(
                Instant::now() < deadline,
                "MagicMirror did not serve its page in time; {}",
                mirror.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Whether `node serveronly` is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The tail of MagicMirror's output.
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("magicmirror.log"))
    }
}

impl Drop for MagicMirror {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}
