//! Fuzzing the boundary that takes untrusted bytes: the OwnTracks parser and
//! ingest's classifier, with arbitrary topics and payloads (raw bytes, and
//! JSON shaped like the apps' messages with hostile values, plaintext or
//! encrypted, whole or truncated). Properties: no panic; every payload
//! becomes an envelope, a rejection with a reason, or (empty) a clear; every
//! subject is a valid NATS subject far under nats-server's 4 KiB control
//! line; names that become state are bounded.
//!
//! A short run is part of `cargo test`; a long campaign:
//! `PROPTEST_CASES=100000 cargo test --release -p ingest --test fuzz`.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use shared::config::Config;
use shared::envelope::Transport;
use shared::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES,
};
use shared::owntracks::{self, MessageType, Reason};
use time::OffsetDateTime;

use ingest::classify::{Classifier, Incoming, MAX_REJECTED_BYTES, Verdict};

const SECRET: &str = "fuzz secret";
const MAX_PAYLOAD: usize = 65536;

static CLASSIFIERS: LazyLock<Vec<Classifier>> = LazyLock::new(|| {
    let configs = [
        // Default pattern; one user's devices must encrypt.
        format!(
            "[ingest]\nmax_payload_bytes = {MAX_PAYLOAD}\n[[ingest.devices]]\nuser = \"enc\"\nsecret = \"{SECRET}\""
        ),
        // Households from the topic, two configured.
        "[ingest]\ntopic_pattern = \"owntracks/{household}/{user}/{device}\"\n[households.a]\n[households.b]"
            .to_string(),
        // Households from the topic, any allowed.
        "[ingest]\ntopic_pattern = \"x/{household}/{device}/{user}\"\nallow_unknown_households = true"
            .to_string(),
    ];
    configs
        .iter()
        .map(|c| Classifier::new(Config::from_toml(c).expect("config")).expect("classifier"))
        .collect()
});

/// A topic level: short or long, ASCII or not, sometimes empty or wild.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("enc".to_string()),
        Just("a".to_string()),
        ".{0,40}",
        "[é€ .*>_#+]{0,200}",
        (1usize..3000).prop_map(|n| "é".repeat(n)),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        (level(), level(), prop::option::of("[a-z]{1,9}")).prop_map(|(u, d, s)| match s {
            Some(s) => format!("owntracks/{u}/{d}/{s}"),
            None => format!("owntracks/{u}/{d}"),
        }),
        (level(), level(), level()).prop_map(|(h, u, d)| format!("owntracks/{h}/{u}/{d}")),
        (level(), level(), level()).prop_map(|(h, d, u)| format!("x/{h}/{d}/{u}")),
        ".{0,64}",
    ]
}

/// A JSON value of any shape, strings sometimes huge.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        "[0-9]{1,14}".prop_map(Value::String),
        Just(Value::String("2021-03-22T11:11:03Z".into())),
        (1usize..15_000).prop_map(|n| Value::String("Wörk".repeat(n))),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 24] = [
    "lat",
    "lon",
    "tst",
    "acc",
    "vel",
    "batt",
    "tid",
    "desc",
    "event",
    "inregions",
    "inrids",
    "name",
    "face",
    "rid",
    "wtst",
    "waypoints",
    "action",
    "configuration",
    "request",
    "uuid",
    "steps",
    "from",
    "to",
    "data",
];

/// An object shaped like an OwnTracks message: a real or bogus `_type`, a
/// usable location core, then known fields with arbitrary values.
fn message() -> impl Strategy<Value = Map<String, Value>> {
    let kind = prop_oneof![
        prop::sample::select(MessageType::ALL.map(MessageType::as_str).to_vec())
            .prop_map(String::from),
        ".{0,10}",
    ];
    (
        kind,
        prop::collection::vec((prop::sample::select(FIELDS.to_vec()), value()), 0..10),
    )
        .prop_map(|(kind, fields)| {
            let mut m = Map::new();
            m.insert("_type".into(), Value::String(kind));
            m.insert("lat".into(), json!(51.5));
            m.insert("lon".into(), json!(-0.1));
            m.insert("tst".into(), json!(1_700_000_000));
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            m
        })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        message().prop_map(|m| Value::Object(m).to_string().into_bytes()),
        message().prop_map(|m| {
            let data = shared::crypto::encrypt(Value::Object(m).to_string().as_bytes(), SECRET);
            json!({"_type": "encrypted", "data": data})
                .to_string()
                .into_bytes()
        }),
        // Over the limit.
        (MAX_PAYLOAD + 1..MAX_PAYLOAD * 2).prop_map(|n| vec![b'{'; n]),
        // A message cut anywhere.
        (message(), any::<prop::sample::Index>()).prop_map(|(m, i)| {
            let bytes = Value::Object(m).to_string().into_bytes();
            bytes[..i.index(bytes.len() + 1)].to_vec()
        }),
    ]
}

/// What nats-server accepts as a publish subject, and far shorter than its
/// 4 KiB control line.
fn assert_subject(subject: &str) {
    assert!(subject.len() < 2048, "subject of {} bytes", subject.len());
    let tokens: Vec<&str> = subject.split('.').collect();
    assert!(tokens.len() >= 4, "{subject}");
    for t in &tokens {
        assert!(!t.is_empty(), "empty token in {subject}");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad token {t:?} in {subject}"
        );
    }
}

fn str_len(v: Option<&Value>) -> usize {
    v.and_then(Value::as_str).map_or(0, str::len)
}

fn assert_bounded(message: &Map<String, Value>) {
    assert!(str_len(message.get("tid")) <= MAX_TID_BYTES);
    let kind = message.get("_type").and_then(Value::as_str).unwrap_or("");
    if kind == "card" {
        assert!(str_len(message.get("name")) <= MAX_CARD_NAME_BYTES);
    }
    if matches!(kind, "transition" | "waypoint") {
        assert!(str_len(message.get("desc")) <= MAX_REGION_NAME_BYTES);
    }
    if kind == "location" {
        for list in ["inregions", "inrids"] {
            if let Some(items) = message.get(list).and_then(Value::as_array) {
                assert!(items.len() <= MAX_REGIONS_PER_DEVICE);
                assert!(
                    items
                        .iter()
                        .all(|i| i.as_str().is_some_and(|s| s.len() <= MAX_REGION_NAME_BYTES))
                );
            }
        }
    }
}

fn check(classifier: &Classifier, topic: &str, payload: &[u8]) {
    let verdict = classifier.classify(&Incoming {
        topic,
        payload,
        retained: false,
        transport: Transport::Mqtt,
        received_at: OffsetDateTime::UNIX_EPOCH,
    });
    match verdict {
        Verdict::Cleared => assert!(payload.is_empty()),
        Verdict::Accepted {
            subject,
            msg_id,
            kind,
            envelope,
        } => {
            assert_subject(&subject);
            assert!(subject.starts_with("owntracks.") && subject.ends_with(kind.as_str()));
            assert_eq!(msg_id.len(), 32);
            assert_eq!(envelope.kind(), kind.as_str());
            assert_bounded(&envelope.message);
            serde_json::to_vec(&envelope).expect("envelope serialises");
        }
        Verdict::Rejected {
            subject,
            msg_id,
            payload: kept,
            reason,
            ..
        } => {
            assert_subject(&subject);
            assert!(subject.starts_with("rejected."));
            assert_eq!(msg_id.len(), 32);
            assert!(kept.len() <= payload.len());
            if reason == Reason::TooLarge {
                assert!(payload.len() > MAX_PAYLOAD);
                assert_eq!(kept.len(), MAX_REJECTED_BYTES);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `PROPTEST_CASES` sets the number for a long campaign.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        .. ProptestConfig::default()
    })]

    #[test]
    fn the_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = owntracks::parse(&bytes).and_then(|m| owntracks::decrypt(m, Some(SECRET)));
    }

    #[test]
    fn every_payload_becomes_an_envelope_or_a_reason(topic in topic(), payload in payload()) {
        for classifier in CLASSIFIERS.iter() {
            check(classifier, &topic, &payload);
        }
    }
}
