//! `magicmirror`: a POST to MMM-Remote-Control's
//! `/api/notification/<NAME>`, for mirrors that run it; every module on
//! the mirror receives the notification with the event as its payload.

use futures::future::BoxFuture;
use serde::Deserialize;
use shared::state::PresenceEvent;

use super::webhook::classify;
use super::{Build, Context, DeliveryError, Sink};

/// `type = "magicmirror"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// MMM-Remote-Control base URL, e.g. `http://mirror:8080`.
    url: String,
    api_key: Option<String>,
    #[serde(default = "default_notification")]
    notification: String,
}

fn default_notification() -> String {
    "WHEREABOUTS_PRESENCE".into()
}

impl Build for Settings {
    fn build(self, _: &str, _: &Context<'_>) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(MagicMirror::new(
            &self.url,
            self.api_key,
            &self.notification,
        )?))
    }
}

struct MagicMirror {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
}

impl Sink for MagicMirror {
    fn deliver<'a>(
        &'a self,
        _: &'a PresenceEvent,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(body))
    }
}

impl MagicMirror {
    fn new(url: &str, api_key: Option<String>, notification: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let endpoint = format!(
            "{}/api/notification/{notification}",
            url.trim_end_matches('/')
        );
        Ok(MagicMirror {
            client,
            endpoint,
            api_key,
        })
    }

    async fn post(&self, body: &[u8]) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.api_key {
            // MMM-Remote-Control accepts the key as a query parameter or header.
            request = request
                .query(&[("apiKey", key)])
                .header(reqwest::header::AUTHORIZATION, format!("apikey {key}"));
        }
        classify(request.send().await)
    }
}

#[cfg(test)]
mod tests {
    use super::MagicMirror;
    use crate::sinks::DeliveryError;

    #[tokio::test]
    async fn a_failed_delivery_names_the_url_without_the_api_key() {
        // Nothing listens on port 1 of loopback: the request fails at once.
        let mirror = MagicMirror::new(
            "http://127.0.0.1:1",
            Some("mirror-api-key-42".into()),
            "WHEREABOUTS",
        )
        .unwrap();
        let Err(DeliveryError::Retryable(text)) = mirror.post(b"{}").await else {
            panic!("a refused connection is retryable");
        };
        assert!(
            text.contains("127.0.0.1:1/api/notification/WHEREABOUTS"),
            "{text}"
        );
        assert!(text.contains("apiKey=***"), "{text}");
        assert!(!text.contains("mirror-api-key-42"), "{text}");
    }
}
