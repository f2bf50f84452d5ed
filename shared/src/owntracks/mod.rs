//! The OwnTracks message model, parsed tolerantly the way the apps and the
//! Recorder do.
//!
//! [`parse`] turns one payload into a [`Message`] whose `body` is normalised
//! (see `normalise`) so that consumers need not repeat the apps' leniency;
//! [`decrypt`] opens an `encrypted` one. The typed views
//! (`Message::location()` and friends) read the normalised body for the
//! presence engine. Which `_type` may arrive on which topic suffix is a
//! topic rule: `crate::topic::fits_suffix`.
//!
//! Layout:
//! - `app`: which app (Android, iOS) a message shows, and the commands it obeys.
//! - `message_type`: the `_type` table and which fields are numbers or times.
//! - `normalise`: coercion, cutting and the per-type required fields.
//! - `reason`: why a payload is rejected.
//! - `views`: typed reads of a normalised body.

mod app;
mod message_type;
mod normalise;
mod reason;
mod views;

use serde_json::{Map, Value};

use crate::crypto;
pub use app::App;
pub use message_type::MessageType;
use normalise::{json_kind, normalise};
pub use reason::{Reason, Rejection};
pub use views::{Card, Location, Lwt, Transition, Waypoint};

/// A parsed, normalised message; `body` keeps every key, `_type` included.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageType,
    pub body: Map<String, Value>,
}

/// Parses one payload. Encrypted payloads come back as `Encrypted`; pass
/// them to [`decrypt`].
pub fn parse(payload: &[u8]) -> Result<Message, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(Reason::InvalidJson, "empty payload"));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(Reason::InvalidJson, e.to_string()))?;
    let mut body = match value {
        Value::Object(body) => body,
        other => {
            return Err(Rejection::new(
                Reason::UnknownType,
                format!("top level is {}, not an object", json_kind(&other)),
            ));
        }
    };
    let kind = match body.get("_type") {
        Some(Value::String(s)) => MessageType::from_type(s)
            .ok_or_else(|| Rejection::new(Reason::UnknownType, format!("unknown _type {s:?}")))?,
        None => return Err(Rejection::new(Reason::UnknownType, "no _type")),
        Some(other) => {
            return Err(Rejection::new(
                Reason::UnknownType,
                format!("_type is {}, not a string", json_kind(other)),
            ));
        }
    };
    normalise(kind, &mut body)?;
    Ok(Message { kind, body })
}

/// Decrypts an `Encrypted` message with the device's secret and parses the
/// plaintext; any other message is returned as it is.
///
/// A plaintext that decrypts but is not a valid message is rejected with the
/// inner reason (the phone sent it so), detail prefixed "decrypted payload".
pub fn decrypt(message: Message, secret: Option<&str>) -> Result<Message, Rejection> {
    if message.kind != MessageType::Encrypted {
        return Ok(message);
    }
    let failed = |detail: String| Rejection::new(Reason::DecryptFailed, detail);
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        failed("encrypted payload but no secret configured for the device".into())
    })?;
    let data = message
        .body
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("no data string in encrypted payload".into()))?;
    let plaintext = crypto::decrypt(data, secret).map_err(|e| failed(e.to_string()))?;
    let inner = parse(&plaintext)
        .map_err(|r| Rejection::new(r.reason, format!("decrypted payload: {}", r.detail)))?;
    if inner.kind == MessageType::Encrypted {
        return Err(failed("decrypted payload is itself encrypted".into()));
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decrypt_paths() {
        let lwt = br#"{"_type":"lwt","tst":"7"}"#;
        let wrap = |data: String| {
            parse(
                json!({"_type":"encrypted","data":data})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap()
        };
        let m = decrypt(wrap(crypto::encrypt(lwt, "k")), Some("k")).unwrap();
        assert_eq!(m.lwt().unwrap().tst, Some(7));

        let err = |m: Message, s: Option<&str>| decrypt(m, s).unwrap_err();
        let e = err(wrap(crypto::encrypt(lwt, "k")), None);
        assert_eq!(e.reason, Reason::DecryptFailed);
        assert!(e.detail.contains("no secret"), "{}", e.detail);
        let e = err(wrap(crypto::encrypt(lwt, "k")), Some("nope"));
        assert_eq!(e.reason, Reason::DecryptFailed);
        assert!(e.detail.contains("authentication"), "{}", e.detail);

        // Nested encryption is refused.
        let inner = json!({"_type":"encrypted","data":crypto::encrypt(lwt, "k")}).to_string();
        let e = err(wrap(crypto::encrypt(inner.as_bytes(), "k")), Some("k"));
        assert_eq!(e.reason, Reason::DecryptFailed);

        // A decrypted but invalid message keeps its own reason.
        let e = err(
            wrap(crypto::encrypt(br#"{"_type":"location"}"#, "k")),
            Some("k"),
        );
        assert_eq!(e.reason, Reason::MissingField);
        assert!(e.detail.starts_with("decrypted payload"), "{}", e.detail);

        // Non-encrypted messages pass through.
        let plain = parse(lwt).unwrap();
        assert_eq!(decrypt(plain.clone(), None).unwrap(), plain);
    }
}
