//! The envelope ingest publishes on `owntracks.>` around each OwnTracks message.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mqtt,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
        }
    }
}

/// The envelope's schema version: raised on an incompatible change only
/// (docs/contract.md says which changes are compatible).
pub const ENVELOPE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`ENVELOPE_SCHEMA_VERSION`] when published.
    #[serde(default = "version_one")]
    pub schema_version: u32,
    pub household: String,
    pub user: String,
    pub device: String,
    /// The MQTT topic (or, in HTTP mode, the topic the app would have used).
    pub topic: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub retained: bool,
    pub transport: Transport,
    /// Whether the payload arrived encrypted and was decrypted by ingest.
    pub encrypted: bool,
    /// The OwnTracks message, normalised; unknown keys kept.
    pub message: Map<String, Value>,
}

fn version_one() -> u32 {
    1
}

impl Envelope {
    /// The message's `_type`.
    pub fn kind(&self) -> &str {
        self.message
            .get("_type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// A `Nats-Msg-Id` derived from content, so JetStream drops the duplicates
/// at-least-once delivery produces: the same parts give the same id.
pub fn content_id(parts: &[&[u8]]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hash = hasher.finalize();
    hash.to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_is_stable_and_framed() {
        assert_eq!(content_id(&[b"a", b"b"]), content_id(&[b"a", b"b"]));
        assert_ne!(content_id(&[b"ab", b"c"]), content_id(&[b"a", b"bc"]));
        assert_eq!(content_id(&[b"x"]).len(), 32);
    }
}
