//! An SSE client for the notifier's `/v1/households/<h>/events`: reads
//! `text/event-stream` with `bytes_stream()` and parses it into items.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Service;

#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Event {
        event: String,
        id: Option<String>,
        data: String,
    },
    /// A `:` line (heartbeats).
    Comment(String),
    /// The server ended the stream.
    End,
}

/// Reads a `text/event-stream` with `bytes_stream()` and parses it.
pub struct SseClient {
    items: mpsc::UnboundedReceiver<SseItem>,
    task: JoinHandle<()>,
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits SSE text into items: fields up to a blank line make an event;
/// comments are reported at once.
#[derive(Default)]
struct SseParser {
    buffer: String,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &str, out: &mut Vec<SseItem>) {
        self.buffer.push_str(chunk);
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.event.is_some() || self.data.is_some() || self.id.is_some() {
                    out.push(SseItem::Event {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        id: self.id.take(),
                        data: self.data.take().unwrap_or_default(),
                    });
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                out.push(SseItem::Comment(comment.trim().to_string()));
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "event" => self.event = Some(value),
                "id" => self.id = Some(value),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.data = Some(value),
                },
                _ => {}
            }
        }
    }
}

impl SseClient {
    /// Opens `/v1/households/<household>/events` (plus `query`), with a
    /// bearer token and `Last-Event-ID` if given; panics unless 200 SSE.
    pub async fn connect(
        notifier: &Service,
        household: &str,
        bearer: Option<&str>,
        query: &str,
        last_event_id: Option<u64>,
    ) -> SseClient {
        let url = format!("{}/v1/households/{household}/events{query}", notifier.url());
        Self::open(&url, bearer, last_event_id)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`SseClient::connect`] for a whole URL; `Err` instead of a
    /// panic (for clients that reconnect while the notifier restarts).
    pub async fn open(
        url: &str,
        bearer: Option<&str>,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<SseClient> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "GET {url}: {}",
            response.status()
        );
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            content_type.starts_with("text/event-stream"),
            "GET {url}: content type {content_type:?}"
        );
        let (tx, items) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut parser = SseParser::default();
            while let Some(Ok(chunk)) = body.next().await {
                let mut out = Vec::new();
                parser.feed(&String::from_utf8_lossy(&chunk), &mut out);
                for item in out {
                    let _ = tx.send(item);
                }
            }
            let _ = tx.send(SseItem::End);
        });
        Ok(SseClient { items, task })
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<SseItem> {
        tokio::time::timeout(timeout, self.items.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event (not comment); panics on a timeout or the end.
    pub async fn next_event(&mut self, timeout: Duration) -> (String, Option<u64>, Value) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(SseItem::Event { event, id, data }) => {
                    let id = id.map(|i| i.parse().expect("numeric SSE id"));
                    let data = serde_json::from_str(&data).expect("SSE data is JSON");
                    return (event, id, data);
                }
                Some(SseItem::Comment(_)) => continue,
                Some(SseItem::End) => panic!("the SSE stream ended"),
                None => panic!("no SSE event within {timeout:?}"),
            }
        }
    }

    /// Everything that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<SseItem> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next(left).await {
                Some(item) => out.push(item),
                None => return out,
            }
        }
    }
}
