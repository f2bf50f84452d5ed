//! `webhook`: the event's JSON POSTed to a URL, optionally signed.

use std::time::Duration;

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use shared::state::PresenceEvent;

use super::{Build, Context, DeliveryError, Sink};

/// `type = "webhook"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    url: String,
    /// HMAC-SHA256 key for the `X-Whereabouts-Signature` header.
    secret: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Build for Settings {
    fn build(self, _: &str, _: &Context<'_>) -> anyhow::Result<Box<dyn Sink>> {
        let client = reqwest::Client::builder().timeout(self.timeout).build()?;
        Ok(Box::new(Webhook {
            client,
            url: self.url,
            secret: self.secret,
        }))
    }
}

struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
}

/// `X-Whereabouts-Signature: sha256=<hex HMAC-SHA256 of the body>`.
const SIGNATURE_HEADER: &str = "X-Whereabouts-Signature";

impl Sink for Webhook {
    fn deliver<'a>(
        &'a self,
        event: &'a PresenceEvent,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(event, body))
    }
}

impl Webhook {
    async fn post(&self, event: &PresenceEvent, body: &[u8]) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Whereabouts-Event-Id", &event.id)
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, body));
        }
        classify(request.send().await)
    }
}

/// The signature header's value for `body` (tests check deliveries with it).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// 2xx delivered; 408, 429 and 5xx, timeouts and connection errors are
/// worth retrying; any other status is the receiver refusing the event.
pub(crate) fn classify(result: reqwest::Result<reqwest::Response>) -> Result<(), DeliveryError> {
    match result {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Err(DeliveryError::Retryable(format!("HTTP {status}")))
            } else {
                Err(DeliveryError::Permanent(format!("HTTP {status}")))
            }
        }
        Err(e) => Err(DeliveryError::Retryable(error_text(e))),
    }
}

/// A request error as text, its URL redacted (an `apiKey` or a password in
/// it must not reach the logs).
fn error_text(e: reqwest::Error) -> String {
    let url = e.url().map(|u| shared::telemetry::redact_url(u.as_str()));
    let e = e.without_url();
    // The causes say why (refused, timed out): reqwest's own text does not.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if let Some(url) = url {
        text.push_str(&format!(" (url {url})"));
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
