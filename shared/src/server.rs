//! The operational HTTP endpoints every service serves (`/metrics`,
//! `/healthz`, `/readyz`), the HTTP server every service runs them on (with
//! timeouts and a connection cap), and shutdown on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;

/// Named readiness flags.
type Checks = Vec<(&'static str, Arc<AtomicBool>)>;

/// Whether a service is connected to what it needs; set by the service.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::Mutex<Checks>>,
}

impl Readiness {
    /// A named check, initially not ready.
    pub fn check(&self, name: &'static str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks.lock().unwrap().push((name, flag.clone()));
        ReadyFlag(flag)
    }

    /// The names of the checks that are not ready.
    fn failing(&self) -> Vec<&'static str> {
        let checks = self.checks.lock().unwrap();
        checks
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Relaxed))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[derive(Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: Readiness,
}

/// `/metrics`, `/healthz` and `/readyz`, to merge into a service's router.
pub fn ops_router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(OpsState {
            registry,
            readiness,
        })
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            buf,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            e.to_string().into_bytes(),
        ),
    }
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let failing = state.readiness.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
    }
}

/// A client that has not sent a whole request head in this time is cut off
/// (slowloris). hyper starts the same timer when a kept-alive connection
/// waits for its next request, so it is also the idle timeout.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request whose response has not started after this gets a 408. Only the
/// time to the response head counts: a long-lived body (SSE) is not cut, as
/// long as its handler returns the response at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Open connections per service; beyond it new ones wait in the listen
/// backlog until one closes.
const MAX_CONNECTIONS: usize = 512;

/// How long open connections get to finish their request on shutdown.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// An HTTP server's timeouts and connection cap.
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    header_read_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, with the
/// default [`ServerLimits`] (HTTP/1.1 only). Handlers can read the client's
/// address with `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, ServerLimits::default()).await
}

/// [`serve`] with room for `extra` long-lived connections (SSE clients)
/// beyond the default cap, so that they cannot crowd out other requests.
pub async fn serve_with_extra_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    extra: usize,
) -> std::io::Result<()> {
    let mut limits = ServerLimits::default();
    limits.max_connections = limits.max_connections.saturating_add(extra);
    serve_with(listener, router, shutdown, limits).await
}

/// [`serve`] with explicit limits.
async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let max = limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Connections are told to finish with this, a child of `shutdown`.
    let closing = shutdown.child_token();
    let mut at_cap = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                at_cap = false;
                permit
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(max, "HTTP connection cap reached; new connections wait");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    if !crate::retry::sleep_unless_cancelled(Duration::from_secs(1), &shutdown).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let closing = closing.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = result {
                // Timeouts and resets are the client's business: debug only.
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.cancel();
    // Every permit back means every connection closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(CONNECTION_DRAIN, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = max - permits.available_permits(),
            "HTTP connections still open after the shutdown grace; dropping them"
        );
    }
    Ok(())
}

/// Errors of one connection attempt, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// How long a service may take to stop after SIGTERM or Ctrl-C before the
/// process exits anyway (a retry loop, a NATS that is gone, a stuck task).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// A token cancelled on SIGTERM or Ctrl-C. The process exits anyway
/// [`SHUTDOWN_GRACE`] after the signal, or at once on a second signal.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::spawn(async move {
        let signalled = async {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        };
        signalled.await;
        // Cancel first: nothing after this (a log line) may keep it from happening.
        t.cancel();
        // A plain thread, so that it fires even if the runtime is stuck.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_GRACE);
            tracing::error!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "shutdown did not finish in time; exiting"
            );
            std::process::exit(1);
        });
        tracing::info!("shutdown requested");
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
    });
    token
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::{Body, Bytes};
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::*;

    const LIMITS: ServerLimits = ServerLimits {
        header_read_timeout: Duration::from_millis(800),
        request_timeout: Duration::from_millis(1500),
        max_connections: 4,
    };

    /// A server with a slow handler (`/slow`), a body that streams for
    /// longer than both timeouts (`/stream`, like SSE) and `/fast`.
    async fn start() -> (std::net::SocketAddr, CancellationToken) {
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/stream",
                get(|| async { Body::from_stream(ticks(6, Duration::from_millis(500))) }),
            )
            .route("/fast", post(|| async { "ok" }).get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_with(listener, router, shutdown.clone(), LIMITS));
        (addr, shutdown)
    }

    /// `n` chunks `tick`, `every` apart.
    fn ticks(n: usize, every: Duration) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
        futures::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from_static(b"tick\n")), i + 1))
        })
    }

    /// Reads until the peer closes (or `limit`); returns what came and when.
    async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("still open after {limit:?}"),
            }
        }
        (
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        )
    }

    #[tokio::test]
    async fn a_slow_header_sender_is_cut_after_the_header_timeout() {
        let (addr, _shutdown) = start().await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // One header byte at a time, never finishing the head.
        let trickle = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"X").await.is_err() {
                    break;
                }
            }
        };
        trickle.await;
        let (_, elapsed) = read_until_closed(&mut slow, Duration::from_secs(3)).await;
        assert!(elapsed < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let (addr, _shutdown) = start().await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, elapsed) = read_until_closed(&mut idle, Duration::from_secs(3)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(elapsed >= LIMITS.header_read_timeout / 2, "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_slow_handler_gets_408_but_a_long_stream_is_not_cut() {
        let (addr, _shutdown) = start().await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_until_closed(&mut slow, Duration::from_secs(4)).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");

        // 6 ticks, 500 ms apart: 3 s, past both timeouts.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, elapsed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert_eq!(got.matches("tick").count(), 6, "{got}");
        assert!(elapsed > LIMITS.request_timeout, "{elapsed:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_one() {
        let (addr, _shutdown) = start().await;
        let mut held = Vec::new();
        for _ in 0..LIMITS.max_connections {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            assert!(c.read(&mut buf).await.unwrap() > 0);
            held.push(c);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        extra
            .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let early = tokio::time::timeout(Duration::from_millis(300), extra.read(&mut buf)).await;
        assert!(early.is_err(), "served beyond the cap");
        drop(held);
        let (got, _) = read_until_closed(&mut extra, Duration::from_secs(3)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
}
