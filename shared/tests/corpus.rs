//! Every payload of the OwnTracks corpus (real app, Recorder, booklet and
//! schema-test payloads, some invalid on purpose) against a hand-written
//! expectation: the parser must never panic and must accept or reject each
//! one for the reason the table gives.
//!
//! The corpus lives outside the crate; set `OWNTRACKS_CORPUS` to point at it.

use std::collections::BTreeMap;
use std::panic::catch_unwind;
use std::path::PathBuf;

use shared::owntracks::{self, MessageType as T, Reason as R};

type Expected = Result<T, R>;

/// The Android test vector's secret.
const SECRET: &str = "123";

/// What each file should give after `parse` (+ `decrypt` with "123").
/// Written by reading each file, not from the parser's output.
const EXPECTED: &[(&str, Expected)] = &[
    // Top-level arrays are HTTP response bodies, not messages.
    ("array-android-fixture-1.json", Err(R::UnknownType)),
    ("array-recorder-readme-1.json", Err(R::UnknownType)),
    ("array-recorder-readme-2.json", Err(R::UnknownType)),
    ("array-schema-test-1.json", Err(R::UnknownType)),
    ("array-schema-test-2.json", Err(R::UnknownType)),
    // Cards need nothing; an undecodable face is dropped, the card kept.
    ("card-android-fixture-1.json", Ok(T::Card)),
    ("card-android-fixture-2.json", Ok(T::Card)),
    ("card-android-fixture-3.json", Ok(T::Card)),
    ("card-booklet-1.json", Ok(T::Card)),
    ("card-schema-test-1.json", Ok(T::Card)),
    ("card-schema-test-2.json", Ok(T::Card)),
    ("card-schema-test-3.json", Ok(T::Card)),
    ("card-schema-test-4.json", Ok(T::Card)),
    ("card-schema-test-5.json", Ok(T::Card)),
    ("card-schema-test-6.json", Ok(T::Card)),
    ("cmd-android-fixture-1.json", Err(R::InvalidField)), // action "nope"
    ("cmd-android-fixture-2.json", Ok(T::Cmd)),
    ("cmd-android-fixture-3.json", Ok(T::Cmd)),
    ("cmd-android-fixture-4.json", Ok(T::Cmd)), // empty setWaypoints
    ("cmd-android-fixture-5.json", Ok(T::Cmd)),
    ("cmd-booklet-1.json", Ok(T::Cmd)),
    ("cmd-booklet-2.json", Ok(T::Cmd)),
    ("cmd-booklet-3.json", Ok(T::Cmd)),
    ("cmd-booklet-4.json", Err(R::InvalidJson)), // missing closing brace
    ("cmd-booklet-5.json", Ok(T::Cmd)),
    ("cmd-schema-test-1.json", Ok(T::Cmd)),
    ("cmd-schema-test-10.json", Err(R::MissingField)), // no configuration
    ("cmd-schema-test-11.json", Ok(T::Cmd)),
    ("cmd-schema-test-12.json", Ok(T::Cmd)), // out-of-range = iOS delete marker
    ("cmd-schema-test-13.json", Err(R::InvalidJson)), // "tst": 010
    ("cmd-schema-test-14.json", Ok(T::Cmd)),
    ("cmd-schema-test-15.json", Ok(T::Cmd)),
    ("cmd-schema-test-16.json", Ok(T::Cmd)),
    ("cmd-schema-test-17.json", Ok(T::Cmd)),
    ("cmd-schema-test-18.json", Err(R::MissingField)), // no action
    ("cmd-schema-test-19.json", Ok(T::Cmd)),
    ("cmd-schema-test-2.json", Ok(T::Cmd)),
    ("cmd-schema-test-20.json", Ok(T::Cmd)),
    ("cmd-schema-test-3.json", Err(R::InvalidField)), // action "something"
    ("cmd-schema-test-4.json", Ok(T::Cmd)),
    ("cmd-schema-test-5.json", Ok(T::Cmd)),
    ("cmd-schema-test-6.json", Err(R::InvalidField)), // configuration null
    ("cmd-schema-test-7.json", Err(R::InvalidField)), // configuration without _type
    ("cmd-schema-test-8.json", Err(R::InvalidField)), // configuration _type "something"
    ("cmd-schema-test-9.json", Ok(T::Cmd)),
    ("configuration-android-fixture-1.json", Ok(T::Configuration)),
    ("configuration-booklet-1.json", Ok(T::Configuration)),
    ("configuration-booklet-2.json", Err(R::InvalidJson)), // missing comma
    ("configuration-booklet-3.json", Ok(T::Configuration)),
    ("empty-ios-test-1.json", Err(R::InvalidJson)),
    ("empty-schema-test-1.json", Err(R::InvalidJson)),
    ("encrypted-android-fixture-1.json", Err(R::DecryptFailed)), // "TestCipherText"
    ("encrypted-android-test-1.json", Ok(T::Location)),          // the real vector
    ("encrypted-booklet-1.json", Err(R::DecryptFailed)),         // elided " ... "
    ("encrypted-schema-test-1.json", Err(R::DecryptFailed)),     // 6 bytes
    ("encrypted-schema-test-2.json", Err(R::DecryptFailed)),     // not base64
    ("encrypted-schema-test-3.json", Err(R::MissingField)),      // no data
    ("location-android-fixture-1.json", Ok(T::Location)),
    ("location-android-fixture-2.json", Ok(T::Location)),
    ("location-android-fixture-3.json", Ok(T::Location)),
    ("location-android-fixture-4.json", Ok(T::Location)),
    ("location-android-fixture-5.json", Ok(T::Location)),
    ("location-android-fixture-6.json", Ok(T::Location)), // 0,0 is a coordinate
    ("location-android-fixture-7.json", Ok(T::Location)),
    // Android wants tid or topic; here the MQTT topic names the device.
    ("location-android-fixture-invalid-1.json", Ok(T::Location)),
    (
        "location-android-fixture-invalid-2.json",
        Err(R::InvalidField),
    ), // tst 0
    (
        "location-android-fixture-invalid-3.json",
        Err(R::MissingField),
    ),
    ("location-android-test-decrypted-1.json", Ok(T::Location)),
    ("location-booklet-1.json", Ok(T::Location)),
    ("location-booklet-2.json", Ok(T::Location)),
    ("location-ios-issue-1.json", Ok(T::Location)),
    ("location-ios-issue-2.json", Err(R::InvalidJson)), // truncated
    ("location-ios-test-1.json", Ok(T::Location)),
    ("location-ios-test-10.json", Err(R::InvalidField)), // tst null
    ("location-ios-test-2.json", Ok(T::Location)),       // batt null: dropped
    ("location-ios-test-3.json", Ok(T::Location)),       // batt true: dropped
    ("location-ios-test-4.json", Ok(T::Location)),       // batt "75": 75
    ("location-ios-test-5.json", Ok(T::Location)),       // batt {}: dropped
    ("location-ios-test-6.json", Ok(T::Location)),       // batt []: dropped
    ("location-ios-test-7.json", Ok(T::Location)),       // vel null: dropped
    ("location-ios-test-8.json", Err(R::InvalidField)),  // lat null
    ("location-ios-test-9.json", Err(R::InvalidField)),  // lon null
    ("location-recorder-demo-1.json", Ok(T::Location)),
    ("location-recorder-demo-2.json", Ok(T::Location)),
    ("location-recorder-demo-3.json", Ok(T::Location)),
    ("location-recorder-doc-1.json", Ok(T::Location)),
    ("location-recorder-doc-2.json", Ok(T::Location)),
    ("location-recorder-doc-3.json", Ok(T::Location)),
    ("location-recorder-issue-1.json", Err(R::MissingField)), // fragment
    ("location-recorder-issue-2.json", Ok(T::Location)),      // ISO tst
    ("location-schema-test-1.json", Ok(T::Location)),
    ("location-schema-test-2.json", Ok(T::Location)),
    ("location-schema-test-3.json", Ok(T::Location)),
    ("location-schema-test-4.json", Ok(T::Location)),
    ("location-schema-test-5.json", Err(R::MissingField)), // no lat
    ("location-schema-test-6.json", Ok(T::Location)),
    ("location-schema-test-7.json", Ok(T::Location)),
    // LWTs need nothing: Android's has no tst.
    ("lwt-android-issue-1.json", Ok(T::Lwt)),
    ("lwt-recorder-demo-1.json", Ok(T::Lwt)),
    ("lwt-schema-test-1.json", Ok(T::Lwt)),
    ("lwt-schema-test-2.json", Ok(T::Lwt)),
    ("lwt-schema-test-3.json", Ok(T::Lwt)),
    ("lwt-schema-test-4.json", Ok(T::Lwt)),
    ("request-booklet-1.json", Ok(T::Request)),
    ("request-booklet-2.json", Ok(T::Request)),
    ("request-booklet-3.json", Ok(T::Request)),
    ("request-schema-test-1.json", Err(R::InvalidField)), // "tour1"
    ("request-schema-test-2.json", Ok(T::Request)),
    ("request-schema-test-3.json", Ok(T::Request)),
    ("request-schema-test-4.json", Err(R::InvalidField)), // uuid not a UUID
    ("request-schema-test-5.json", Ok(T::Request)),
    ("status-ios-issue-1.json", Ok(T::Status)),
    ("status-schema-test-1.json", Ok(T::Status)),
    ("steps-booklet-1.json", Ok(T::Steps)),
    ("steps-schema-test-1.json", Err(R::MissingField)), // only tst
    ("steps-schema-test-2.json", Ok(T::Steps)),         // from as string: coerced
    ("steps-schema-test-3.json", Ok(T::Steps)),
    ("steps-schema-test-4.json", Ok(T::Steps)), // steps -1 sentinel
    ("steps-schema-test-5.json", Ok(T::Steps)),
    ("transition-android-fixture-1.json", Ok(T::Transition)),
    ("transition-android-issue-1.json", Ok(T::Transition)), // legacy "trigger"
    ("transition-android-issue-2.json", Err(R::InvalidJson)), // lat XXX
    ("transition-booklet-1.json", Ok(T::Transition)),
    ("transition-booklet-2.json", Ok(T::Transition)),
    ("transition-schema-test-1.json", Ok(T::Transition)), // lat as string: coerced
    ("transition-schema-test-2.json", Ok(T::Transition)),
    ("unknown-android-fixture-1.json", Err(R::UnknownType)),
    ("unknown-ios-test-1.json", Err(R::UnknownType)),
    ("unknown-ios-test-2.json", Err(R::UnknownType)),
    ("unknown-ios-test-3.json", Err(R::UnknownType)),
    ("unknown-ios-test-4.json", Err(R::UnknownType)),
    ("unknown-schema-test-1.json", Err(R::UnknownType)),
    ("waypoint-android-fixture-1.json", Ok(T::Waypoint)),
    ("waypoint-booklet-1.json", Ok(T::Waypoint)), // rad/tst strings
    ("waypoint-schema-test-1.json", Err(R::MissingField)), // no desc
    ("waypoint-schema-test-2.json", Ok(T::Waypoint)),
    ("waypoints-android-test-1.json", Ok(T::Waypoints)),
    ("waypoints-booklet-1.json", Ok(T::Waypoints)),
    ("waypoints-ios-issue-1.json", Ok(T::Waypoints)),
    ("waypoints-recorder-doc-1.json", Ok(T::Waypoints)),
    ("waypoints-schema-test-1.json", Ok(T::Waypoints)),
];

fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("OWNTRACKS_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/owntracks-corpus")
        });
    if dir.join("INDEX.tsv").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "corpus not found at {}, skipping (set OWNTRACKS_CORPUS)",
            dir.display()
        );
        None
    }
}

fn index(dir: &std::path::Path) -> Vec<String> {
    let tsv = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("read INDEX.tsv");
    tsv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn parse_and_decrypt(
    payload: &[u8],
    secret: &str,
) -> Result<owntracks::Message, owntracks::Rejection> {
    owntracks::decrypt(owntracks::parse(payload)?, Some(secret))
}

#[test]
fn every_corpus_file_gives_its_expected_result() {
    let Some(dir) = corpus_dir() else { return };
    let files = index(&dir);
    assert_eq!(files.len(), 141, "INDEX.tsv should list 141 files");

    let table: BTreeMap<&str, Expected> = EXPECTED.iter().copied().collect();
    assert_eq!(table.len(), EXPECTED.len(), "duplicate names in EXPECTED");
    assert_eq!(table.len(), 141, "EXPECTED should cover 141 files");

    let mut failures = Vec::new();
    for name in &files {
        let Some(expected) = table.get(name.as_str()) else {
            failures.push(format!("{name}: not in the expectation table"));
            continue;
        };
        let payload = read(&dir, name);
        let got = catch_unwind(|| parse_and_decrypt(&payload, SECRET));
        let got = match got {
            Ok(r) => r.map(|m| m.kind).map_err(|r| (r.reason, r.detail)),
            Err(_) => {
                failures.push(format!("{name}: PANICKED"));
                continue;
            }
        };
        let same = match (&got, expected) {
            (Ok(kind), Ok(want)) => kind == want,
            (Err((reason, _)), Err(want)) => reason == want,
            _ => false,
        };
        if !same {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn android_vector_decrypts_to_its_plaintext() {
    let Some(dir) = corpus_dir() else { return };
    let encrypted = owntracks::parse(&read(&dir, "encrypted-android-test-1.json")).unwrap();
    assert_eq!(encrypted.kind, T::Encrypted);

    let message = owntracks::decrypt(encrypted.clone(), Some(SECRET)).unwrap();
    let location = message.location().expect("a location");
    assert_eq!(location.lat, 50.1182933);
    assert_eq!(location.lon, -5.5407733);
    assert_eq!(location.acc, Some(5.0));
    assert_eq!(location.tid.as_deref(), Some("xa"));

    // Exactly the derived plaintext, normalised the same way.
    let plain = owntracks::parse(&read(&dir, "location-android-test-decrypted-1.json")).unwrap();
    assert_eq!(message, plain);

    let wrong = owntracks::decrypt(encrypted.clone(), Some("wrong")).unwrap_err();
    assert_eq!(wrong.reason, R::DecryptFailed);
    let none = owntracks::decrypt(encrypted, None).unwrap_err();
    assert_eq!(none.reason, R::DecryptFailed);
}

#[test]
fn encrypt_then_decrypt_round_trips_a_corpus_message() {
    let Some(dir) = corpus_dir() else { return };
    let plain = read(&dir, "location-android-fixture-5.json");
    let data = shared::crypto::encrypt(&plain, "s3cret");
    let envelope = serde_json::json!({"_type": "encrypted", "data": data}).to_string();
    let message = parse_and_decrypt(envelope.as_bytes(), "s3cret").unwrap();
    assert_eq!(message, owntracks::parse(&plain).unwrap());
    assert_eq!(
        parse_and_decrypt(envelope.as_bytes(), "wrong")
            .unwrap_err()
            .reason,
        R::DecryptFailed
    );
}

#[test]
fn normalised_corpus_values() {
    let Some(dir) = corpus_dir() else { return };
    let parse = |name: &str| owntracks::parse(&read(&dir, name)).unwrap();

    // ISO 8601 tst (2021-03-22T11:11:03.690Z) becomes epoch seconds.
    assert_eq!(
        parse("location-recorder-issue-2.json").tst(),
        Some(1_616_411_463)
    );
    // Strings as numbers.
    let lwt = parse("lwt-recorder-demo-1.json");
    assert_eq!(lwt.lwt().unwrap().tst, Some(1_440_363_922));
    let wp = parse("waypoint-booklet-1.json").waypoint().unwrap();
    assert_eq!((wp.rad, wp.tst), (Some(50.0), 1_385_997_757));
    // Android Jackson-era SSID/BSSID become ssid/bssid.
    let loc = parse("location-android-fixture-5.json");
    assert_eq!(loc.body["ssid"], "AndroidWifi");
    assert!(!loc.body.contains_key("SSID") && !loc.body.contains_key("BSSID"));
    assert_eq!(loc.body["randomId"], 9302);
    // Millisecond waypoint tst inside a configuration.
    let wps = parse("configuration-android-fixture-1.json")
        .waypoints()
        .unwrap();
    assert_eq!(
        wps.iter().map(|w| w.tst).collect::<Vec<_>>(),
        [1_505_910_709, 1_558_351_273]
    );
    // -1 sentinels read as unknown.
    let loc = parse("location-recorder-doc-1.json").location().unwrap();
    assert_eq!((loc.vel, loc.batt, loc.cog), (None, None, None));
    // An undecodable face is dropped, the card kept.
    assert_eq!(parse("card-booklet-1.json").card().unwrap().face, None);
    assert!(
        parse("card-schema-test-3.json")
            .card()
            .unwrap()
            .face
            .is_some()
    );
    // Legacy "trigger" read as t.
    let tr = parse("transition-android-issue-1.json")
        .transition()
        .unwrap();
    assert_eq!(tr.t.as_deref(), Some("c"));
    // iOS delete markers are not regions.
    assert!(
        parse("cmd-schema-test-12.json")
            .waypoints()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        parse("cmd-schema-test-15.json").waypoints().unwrap().len(),
        3
    );
}
