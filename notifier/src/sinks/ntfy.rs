//! `ntfy`: a push notification when chosen people reach chosen places
//! ("Harry arrived at School"). Late events (flushed offline queues) are
//! history, not news: they are not pushed.

use shared::state::{EventKind, PresenceEvent};

use super::DeliveryError;
use super::webhook::classify;

pub struct Ntfy {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    template: String,
    places: Vec<String>,
}

impl Ntfy {
    pub fn new(
        url: &str,
        token: Option<String>,
        template: &str,
        places: Vec<String>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Ntfy {
            client,
            url: url.to_string(),
            token,
            template: template.to_string(),
            places,
        })
    }

    pub fn wants(&self, event: &PresenceEvent) -> bool {
        let place = event.place.as_deref().unwrap_or_default();
        event.kind == EventKind::Place
            && !event.late
            && (self.places.is_empty() || self.places.iter().any(|p| p.eq_ignore_ascii_case(place)))
    }

    pub fn message(&self, event: &PresenceEvent) -> String {
        self.template
            .replace("{person}", &event.state.name)
            .replace("{place}", event.place.as_deref().unwrap_or_default())
            .replace(
                "{previous_place}",
                event.previous_place.as_deref().unwrap_or_default(),
            )
            .replace("{household}", &event.household)
    }

    pub async fn deliver(&self, event: &PresenceEvent) -> Result<(), DeliveryError> {
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
