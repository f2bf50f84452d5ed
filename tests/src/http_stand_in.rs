//! Local HTTP servers standing in for what the notifier's sinks call:
//! [`Recorder`] (ntfy, MMM-Remote-Control: answers 200 to anything and
//! records every request) and [`Receiver`] (a webhook receiver that fails
//! on demand and records what it accepts and refuses).

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use shared::state::PresenceEvent;

/// One request as the stand-in server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A local HTTP server standing in for ntfy or MMM-Remote-Control: answers
/// 200 to anything, and records every request, whatever its path.
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = Recorder {
            url: format!("http://{}", listener.local_addr().unwrap()),
            requests: Arc::default(),
        };
        let requests = recorder.requests.clone();
        let app = axum::Router::new().fallback(
            async move |method: Method, uri: Uri, headers: HeaderMap, body: bytes::Bytes| {
                requests.lock().unwrap().push(Request {
                    method,
                    path: uri.path().to_string(),
                    query: uri.query().map(String::from),
                    headers,
                    body,
                });
                StatusCode::OK
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        recorder
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: Option<String>,
    pub event_id: Option<String>,
    pub body: bytes::Bytes,
}

impl Delivery {
    pub fn event(&self) -> PresenceEvent {
        serde_json::from_slice(&self.body).expect("webhook body is a presence event")
    }
}

/// A local HTTP server standing in for a webhook receiver: answers
/// `fail_status` to the first `fail_first` requests, then `status`. Records
/// what it accepts (2xx) and what it refuses with a 4xx.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    fail_first: Arc<AtomicUsize>,
    fail_status: u16,
    /// The status answered once the first failures are spent.
    pub status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Delivery>>>,
    refused: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub async fn start(fail_first: usize, fail_status: u16, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            fail_status,
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::default(),
            accepted: Arc::default(),
            refused: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                async move |headers: HeaderMap, body: bytes::Bytes| -> StatusCode {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    let failing = state
                        .fail_first
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    let delivery = Delivery {
                        signature: header("x-whereabouts-signature"),
                        event_id: header("x-whereabouts-event-id"),
                        body,
                    };
                    let status = if failing {
                        state.fail_status
                    } else {
                        state.status.load(Ordering::SeqCst)
                    };
                    let status = StatusCode::from_u16(status).expect("a status code");
                    if status.is_success() {
                        state.accepted.lock().unwrap().push(delivery);
                    } else if status.is_client_error() {
                        state.refused.lock().unwrap().push(delivery);
                    }
                    status
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    pub fn accepted(&self) -> Vec<Delivery> {
        self.accepted.lock().unwrap().clone()
    }

    pub fn refused(&self) -> Vec<Delivery> {
        self.refused.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
