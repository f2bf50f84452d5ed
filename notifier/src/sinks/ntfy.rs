//! `ntfy`: a push notification when chosen people reach chosen places
//! ("Harry arrived at School"). Late events (flushed offline queues) are
//! history, not news: they are not pushed.

use futures::future::BoxFuture;
use serde::Deserialize;
use shared::state::{EventKind, PresenceEvent};

use super::webhook::classify;
use super::{Build, Context, DeliveryError, Sink};

/// `type = "ntfy"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Topic URL, e.g. `https://ntfy.sh/weasleys`.
    url: String,
    token: Option<String>,
    /// `{person}`, `{place}`, `{previous_place}`, `{household}` are replaced.
    #[serde(default = "default_template")]
    template: String,
    /// Only these places (empty: all).
    #[serde(default)]
    places: Vec<String>,
}

fn default_template() -> String {
    "{person} arrived at {place}".into()
}

impl Build for Settings {
    fn build(self, _: &str, _: &Context<'_>) -> anyhow::Result<Box<dyn Sink>> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Box::new(Ntfy {
            client,
            url: self.url,
            token: self.token,
            template: self.template,
            places: self.places,
        }))
    }
}

struct Ntfy {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    template: String,
    places: Vec<String>,
}

impl Sink for Ntfy {
    fn wants(&self, event: &PresenceEvent) -> bool {
        let place = event.place.as_deref().unwrap_or_default();
        event.kind == EventKind::Place
            && !event.late
            && (self.places.is_empty() || self.places.iter().any(|p| p.eq_ignore_ascii_case(place)))
    }

    fn deliver<'a>(
        &'a self,
        event: &'a PresenceEvent,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(event))
    }
}

impl Ntfy {
    fn message(&self, event: &PresenceEvent) -> String {
        self.template
            .replace("{person}", &event.state.name)
            .replace("{place}", event.place.as_deref().unwrap_or_default())
            .replace(
                "{previous_place}",
                event.previous_place.as_deref().unwrap_or_default(),
            )
            .replace("{household}", &event.household)
    }

    async fn post(&self, event: &PresenceEvent) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(&self.url)
            .header("Title", "Whereabouts")
            .header("Tags", "round_pushpin")
            .body(self.message(event));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        classify(request.send().await)
    }
}
