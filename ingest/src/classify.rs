//! Turning one raw payload into what goes to JetStream: an envelope on
//! `owntracks.>` or the raw bytes on `rejected.>` with a reason. Pure: no I/O.

use std::sync::Arc;

use bytes::Bytes;
use shared::config::Config;
use shared::envelope::{Envelope, Transport, content_id};
use shared::limits::MAX_TOPIC_LEVEL_BYTES;
use shared::owntracks::{self, MessageType, Reason, Rejection};
use shared::reload::LiveConfig;
use shared::subjects;
use shared::topic::{TopicMatch, TopicPattern, TopicPatterns};
use time::OffsetDateTime;

/// A payload as it arrived, before any judgement.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub retained: bool,
    pub transport: Transport,
    pub received_at: OffsetDateTime,
}

/// What to publish for one incoming payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted {
        subject: String,
        msg_id: String,
        kind: MessageType,
        envelope: Box<Envelope>,
    },
    Rejected {
        subject: String,
        msg_id: String,
        reason: Reason,
        detail: String,
        /// The raw payload, cut to [`MAX_REJECTED_BYTES`] for `too_large`.
        payload: Bytes,
    },
    /// A zero-length payload: the apps mean "clear" (a retained message
    /// removed, a friend deleted). Nothing to publish.
    Cleared,
}

/// How much of an oversized payload is kept on `rejected.>` for diagnosis.
pub const MAX_REJECTED_BYTES: usize = 4096;

/// Classifies payloads by the configured topic patterns, keys and limits.
/// The patterns are those of the start (the MQTT subscriptions follow
/// them); everything else follows the config in force, one snapshot per
/// message.
#[derive(Debug, Clone)]
pub struct Classifier {
    patterns: TopicPatterns,
    config: LiveConfig,
}

impl Classifier {
    /// A classifier of a config that does not change.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::live(LiveConfig::fixed(config))
    }

    /// A classifier following the config in force (reloads).
    pub fn live(config: LiveConfig) -> anyhow::Result<Self> {
        let patterns = TopicPatterns::parse(&config.get().ingest.topic_patterns())?;
        Ok(Classifier { patterns, config })
    }

    /// The first configured pattern: HTTP mode's topics are built with it.
    pub(crate) fn pattern(&self) -> &TopicPattern {
        self.patterns.primary()
    }

    pub(crate) fn patterns(&self) -> &TopicPatterns {
        &self.patterns
    }

    /// The config in force: a snapshot to hold for one message or request.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// The household, user and device a topic names, if it fits a pattern.
    fn identify(&self, config: &Config, topic: &str) -> Option<(String, TopicMatch)> {
        let (_, m) = self
            .patterns
            .match_topic(topic, |h| config.accepts_household(h))?;
        let household = m
            .household
            .clone()
            .unwrap_or_else(|| config.household_of_user(&m.user).to_string());
        Some((household, m))
    }

    pub fn classify(&self, input: &Incoming<'_>) -> Verdict {
        let config = self.config.get();
        let who = self.identify(&config, input.topic);
        // The names a REJECTED subject may carry: `_` where unknown or over
        // the limit (an over-long level would make an unusable subject).
        fn usable(name: &str) -> Option<&str> {
            (name.len() <= MAX_TOPIC_LEVEL_BYTES).then_some(name)
        }
        let names = match &who {
            Some((h, m)) => [usable(h), usable(&m.user), usable(&m.device)],
            None => [None; 3],
        };
        let reject = |rejection: Rejection| {
            let payload = if rejection.reason == Reason::TooLarge {
                Bytes::copy_from_slice(
                    &input.payload[..MAX_REJECTED_BYTES.min(input.payload.len())],
                )
            } else {
                Bytes::copy_from_slice(input.payload)
            };
            Verdict::Rejected {
                subject: subjects::rejected(names[0], names[1], names[2]),
                msg_id: content_id(&[b"rejected", input.topic.as_bytes(), input.payload]),
                reason: rejection.reason,
                detail: rejection.detail,
                payload,
            }
        };

        if input.payload.is_empty() {
            return Verdict::Cleared;
        }
        let Some((household, m)) = who.clone() else {
            return reject(Rejection {
                reason: Reason::TopicMismatch,
                detail: format!(
                    "topic does not fit {}",
                    config
                        .ingest
                        .topic_patterns()
                        .iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            });
        };
        // Rejected, never cut: a cut name could be someone else's.
        for (level, name) in [
            ("household", &household),
            ("user", &m.user),
            ("device", &m.device),
        ] {
            if name.len() > MAX_TOPIC_LEVEL_BYTES {
                return reject(Rejection {
                    reason: Reason::NameTooLong,
                    detail: format!(
                        "{level} level is {} bytes, limit {MAX_TOPIC_LEVEL_BYTES}",
                        name.len()
                    ),
                });
            }
        }
        if !config.accepts_household(&household) {
            return reject(Rejection {
                reason: Reason::UnknownHousehold,
                detail: format!("household {household:?} is not configured"),
            });
        }
        if input.payload.len() > config.ingest.max_payload_bytes {
            return reject(Rejection {
                reason: Reason::TooLarge,
                detail: format!(
                    "{} bytes, limit {}",
                    input.payload.len(),
                    config.ingest.max_payload_bytes
                ),
            });
        }
        let entry = config.device_entry(&household, &m.user, &m.device);
        let secret = entry.and_then(|e| e.secret.as_deref());
        let parsed = owntracks::parse(input.payload).and_then(|msg| {
            let encrypted = msg.kind == MessageType::Encrypted;
            owntracks::decrypt(msg, secret).map(|msg| (msg, encrypted))
        });
        let (message, encrypted) = match parsed {
            Ok(ok) => ok,
            Err(rejection) => return reject(rejection),
        };
        // LWTs are exempt: the apps fix them at connect time, unencrypted.
        if !encrypted
            && message.kind != MessageType::Lwt
            && entry.is_some_and(|e| e.requires_encryption())
        {
            return reject(Rejection {
                reason: Reason::PlaintextRefused,
                detail: format!(
                    "plaintext {} from a device with a secret",
                    message.kind.as_str()
                ),
            });
        }
        if !shared::topic::fits_suffix(m.suffix.as_deref(), message.kind) {
            return reject(Rejection {
                reason: Reason::TopicMismatch,
                detail: format!(
                    "a {} does not belong on suffix {:?}",
                    message.kind.as_str(),
                    m.suffix.as_deref().unwrap_or("")
                ),
            });
        }
        let kind = message.kind;
        let envelope = Envelope {
            schema_version: shared::envelope::ENVELOPE_SCHEMA_VERSION,
            household: household.clone(),
            user: m.user.clone(),
            device: m.device.clone(),
            topic: input.topic.to_string(),
            received_at: input.received_at,
            retained: input.retained,
            transport: input.transport,
            encrypted,
            message: message.body,
        };
        Verdict::Accepted {
            subject: subjects::owntracks(&household, &m.user, &m.device, kind.as_str()),
            // Topic and bytes, not the receive time: a redelivery is a duplicate.
            msg_id: content_id(&[input.topic.as_bytes(), input.payload]),
            kind,
            envelope: Box::new(envelope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(toml: &str) -> Classifier {
        Classifier::new(Config::from_toml(toml).unwrap()).unwrap()
    }

    fn incoming<'a>(topic: &'a str, payload: &'a [u8]) -> Incoming<'a> {
        Incoming {
            topic,
            payload,
            retained: false,
            transport: Transport::Mqtt,
            received_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    const LOCATION: &[u8] =
        br#"{"_type":"location","lat":51.5,"lon":-0.1,"tst":1700000000,"tid":"jd"}"#;

    #[test]
    fn location_becomes_an_envelope_on_its_subject() {
        let c = classifier("");
        let Verdict::Accepted {
            subject,
            envelope,
            kind,
            ..
        } = c.classify(&incoming("owntracks/jane.doe/My Phone", LOCATION))
        else {
            panic!("expected accepted")
        };
        assert_eq!(kind, MessageType::Location);
        assert_eq!(subject, "owntracks.home.jane_2Edoe.My_20Phone.location");
        assert_eq!(envelope.household, "home");
        assert_eq!(envelope.user, "jane.doe");
        assert!(!envelope.encrypted);
    }

    #[test]
    fn household_from_topic_or_user_map() {
        let c = classifier(
            "[ingest]\ntopic_pattern = \"owntracks/{household}/{user}/{device}\"\n[households.w]",
        );
        let Verdict::Accepted { subject, .. } = c.classify(&incoming("owntracks/w/u/d", LOCATION))
        else {
            panic!()
        };
        assert_eq!(subject, "owntracks.w.u.d.location");

        let c = classifier(
            "[ingest]\ndefault_household = \"a\"\nuser_households = { bob = \"b\" }\n[households.a]\n[households.b]",
        );
        let Verdict::Accepted { subject, .. } = c.classify(&incoming("owntracks/bob/d", LOCATION))
        else {
            panic!()
        };
        assert_eq!(subject, "owntracks.b.bob.d.location");
    }

    #[test]
    fn old_and_household_topics_side_by_side() {
        let c = classifier(
            r#"
            [ingest]
            topic_patterns = ["owntracks/{user}/{device}", "owntracks/{household}/{user}/{device}"]
            default_household = "a"
            [households.a]
            [households.b]
            "#,
        );
        let subject = |topic: &str, payload: &[u8]| match c.classify(&incoming(topic, payload)) {
            Verdict::Accepted { subject, .. } => subject,
            other => panic!("{topic}: {other:?}"),
        };
        assert_eq!(
            subject("owntracks/bob/d", LOCATION),
            "owntracks.a.bob.d.location"
        );
        assert_eq!(
            subject("owntracks/b/bob/d", LOCATION),
            "owntracks.b.bob.d.location"
        );
        let event = br#"{"_type":"transition","event":"enter","desc":"Home","tst":1700000000,"lat":1,"lon":2,"acc":5,"tid":"bd","wtst":1}"#;
        assert_eq!(
            subject("owntracks/bob/d/event", event),
            "owntracks.a.bob.d.transition"
        );
        assert_eq!(
            subject("owntracks/b/bob/d/event", event),
            "owntracks.b.bob.d.transition"
        );
        // Neither fits plausibly (no household x, no suffix z): read by the
        // first pattern, as with that pattern alone.
        assert_eq!(
            subject("owntracks/x/y/z", LOCATION),
            "owntracks.a.x.y.location"
        );
    }

    fn rejection(c: &Classifier, topic: &str, payload: &[u8]) -> (Reason, String) {
        match c.classify(&incoming(topic, payload)) {
            Verdict::Rejected {
                reason, subject, ..
            } => (reason, subject),
            other => panic!("{topic}: expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn over_long_topic_levels_are_rejected_under_a_usable_subject() {
        let c = classifier(
            "[ingest]\ntopic_pattern = \"owntracks/{household}/{user}/{device}\"\n[households.w]\n[households.home]",
        );
        let long = "é".repeat(1000);
        let (reason, subject) = rejection(&c, &format!("owntracks/w/{long}/phone"), LOCATION);
        assert_eq!(reason, Reason::NameTooLong);
        assert_eq!(subject, "rejected.w._.phone");
        let (reason, subject) = rejection(&c, &format!("owntracks/{long}/u/{long}"), LOCATION);
        assert_eq!(reason, Reason::NameTooLong);
        assert_eq!(subject, "rejected._.u._");
        // The limit itself is fine.
        let at_limit = "x".repeat(MAX_TOPIC_LEVEL_BYTES);
        let topic = format!("owntracks/home/{at_limit}/d");
        assert!(matches!(
            c.classify(&incoming(&topic, LOCATION)),
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn unknown_households_are_rejected_unless_allowed() {
        let pattern = "[ingest]\ntopic_pattern = \"owntracks/{household}/{user}/{device}\"";
        let c = classifier(&format!("{pattern}\n[households.w]"));
        let (reason, subject) = rejection(&c, "owntracks/strangers/u/d", LOCATION);
        assert_eq!(reason, Reason::UnknownHousehold);
        assert_eq!(subject, "rejected.strangers.u.d");
        let c = classifier(&format!(
            "{pattern}\nallow_unknown_households = true\n[households.w]"
        ));
        assert!(matches!(
            c.classify(&incoming("owntracks/strangers/u/d", LOCATION)),
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn plaintext_from_a_device_with_a_secret_is_refused_but_its_lwt_is_not() {
        let c = classifier(
            "[[ingest.devices]]\nuser = \"u\"\nsecret = \"k\"\n[[ingest.devices]]\nuser = \"v\"\nsecret = \"k\"\nrequire_encryption = false",
        );
        let (reason, _) = rejection(&c, "owntracks/u/d", LOCATION);
        assert_eq!(reason, Reason::PlaintextRefused);
        let lwt = br#"{"_type":"lwt","tst":1700000000}"#;
        assert!(matches!(
            c.classify(&incoming("owntracks/u/d", lwt)),
            Verdict::Accepted {
                kind: MessageType::Lwt,
                ..
            }
        ));
        let sealed = serde_json::json!({
            "_type": "encrypted",
            "data": shared::crypto::encrypt(LOCATION, "k"),
        })
        .to_string();
        let Verdict::Accepted { envelope, .. } =
            c.classify(&incoming("owntracks/u/d", sealed.as_bytes()))
        else {
            panic!("encrypted location refused")
        };
        assert!(envelope.encrypted);
        // Opted out: plaintext accepted.
        assert!(matches!(
            c.classify(&incoming("owntracks/v/d", LOCATION)),
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let c = classifier("[ingest]\nmax_payload_bytes = 100");
        let cases: &[(&str, &[u8], Reason, &str)] = &[
            (
                "owntracks/u/d",
                b"not json",
                Reason::InvalidJson,
                "rejected.home.u.d",
            ),
            (
                "owntracks/u/d",
                br#"{"_type":"locat"#,
                Reason::InvalidJson,
                "rejected.home.u.d",
            ),
            (
                "owntracks/u/d",
                br#"{"_type":"nope"}"#,
                Reason::UnknownType,
                "rejected.home.u.d",
            ),
            (
                "owntracks/u",
                LOCATION,
                Reason::TopicMismatch,
                "rejected._._._",
            ),
            (
                "owntracks/u/d/cmd",
                LOCATION,
                Reason::TopicMismatch,
                "rejected.home.u.d",
            ),
            (
                "owntracks/u/d",
                &[b'x'; 101],
                Reason::TooLarge,
                "rejected.home.u.d",
            ),
        ];
        for (topic, payload, want, want_subject) in cases {
            match c.classify(&incoming(topic, payload)) {
                Verdict::Rejected {
                    reason, subject, ..
                } => {
                    assert_eq!(reason, *want, "{topic}");
                    assert_eq!(&subject, want_subject, "{topic}");
                }
                other => panic!("{topic}: expected rejection, got {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_payloads_are_kept_only_in_part() {
        let c = classifier("");
        let junk = vec![b'j'; 1 << 20];
        let Verdict::Rejected {
            payload, reason, ..
        } = c.classify(&incoming("owntracks/u/d", &junk))
        else {
            panic!()
        };
        assert_eq!(reason, Reason::TooLarge);
        assert_eq!(payload.len(), MAX_REJECTED_BYTES);
    }

    #[test]
    fn empty_payload_means_clear() {
        assert_eq!(
            classifier("").classify(&incoming("owntracks/u/d", b"")),
            Verdict::Cleared
        );
    }

    #[test]
    fn same_bytes_same_id_whatever_the_time() {
        let c = classifier("");
        let mut a = incoming("owntracks/u/d", LOCATION);
        let id = |i: &Incoming<'_>| match c.classify(i) {
            Verdict::Accepted { msg_id, .. } => msg_id,
            _ => panic!(),
        };
        let first = id(&a);
        a.received_at = OffsetDateTime::now_utc();
        assert_eq!(first, id(&a));
        assert_ne!(first, id(&incoming("owntracks/u/e", LOCATION)));
    }
}
