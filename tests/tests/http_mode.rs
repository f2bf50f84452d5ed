//! OwnTracks HTTP mode end to end: real nats-server, the real ingest (and,
//! where state matters, presence) processes, requests shaped like the
//! Android app's. A phone is never blocked by one bad message, friends are
//! paired by `tid`, and the server holds up against slow and guessing
//! clients.

use std::net::IpAddr;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine;
use serde_json::{Value, json};
use shared::state::{DeviceState, PersonState};
use shared::subjects::{REASON_HEADER, device_key, person_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use whereabouts_tests::{NatsServer, Service, eventually, kv_state, stream_count, stream_messages};

const SECRET: &str = "a-secret-for-the-payloads";

fn config() -> String {
    format!(
        r#"
[ingest]
trusted_proxies = ["127.0.0.3"]

[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"
secret = "{SECRET}"

[[ingest.devices]]
user = "ann"
device = "phone"
password = "ann-pw"

[[ingest.devices]]
user = "bob"
device = "phone"
password = "bob-pw"
"#
    )
}

/// nats-server plus ingest in HTTP mode only (and presence when asked).
struct Stack {
    nats: NatsServer,
    ingest: Service,
    presence: Option<Service>,
    js: jetstream::Context,
}

async fn stack(with_presence: bool) -> Stack {
    let nats = NatsServer::start().await;
    let config = config();
    let no_mqtt = [("INGEST_NO_MQTT", "true")];
    // No broker: the MQTT URL is never dialled.
    let unused = "mqtt://127.0.0.1:9";
    let ingest = Service::start_with("ingest", &nats.url(), unused, &config, &no_mqtt).await;
    let presence = if with_presence {
        Some(Service::start("presence", &nats.url(), unused, &config).await)
    } else {
        None
    };
    let js = nats.jetstream().await;
    Stack {
        nats,
        ingest,
        presence,
        js,
    }
}

/// A POST as the Android app makes it; `device` None leaves out `X-Limit-D`.
async fn post(
    client: &reqwest::Client,
    ingest: &Service,
    who: (&str, &str, Option<&str>),
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    post_via(client, ingest, who, body, &[]).await
}

/// [`post`] with extra headers (a proxy's `X-Forwarded-For`).
async fn post_via(
    client: &reqwest::Client,
    ingest: &Service,
    (user, password, device): (&str, &str, Option<&str>),
    body: impl Into<reqwest::Body>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut request = client
        .post(format!("{}/pub", ingest.url()))
        .header("Authorization", format!("Basic {auth}"))
        .header("X-Limit-U", user)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(device) = device {
        request = request.header("X-Limit-D", device);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST /pub")
}

fn location(tst: i64, tid: &str) -> Value {
    json!({"_type": "location", "lat": 51.5, "lon": -0.12, "tst": tst, "acc": 10, "tid": tid})
}

/// `payload` as the app sends it for a device with a secret.
fn encrypted(payload: &Value) -> String {
    let data = shared::crypto::encrypt(payload.to_string().as_bytes(), SECRET);
    json!({"_type": "encrypted", "data": data}).to_string()
}

#[tokio::test]
async fn bad_messages_get_2xx_land_on_rejected_and_the_next_fix_applies() {
    let s = stack(true).await;
    let client = reqwest::Client::new();
    let jane = ("jane", "s3cret", Some("phone"));

    let first = post(
        &client,
        &s.ingest,
        jane,
        encrypted(&location(1_700_000_000, "jd")),
    )
    .await;
    assert_eq!(first.status(), 200);

    // (body, expected reason): each would have blocked Android's queue.
    let oversize = format!(
        "{{\"_type\":\"location\",\"pad\":\"{}\"}}",
        "x".repeat(600 * 1024)
    );
    let cases: Vec<(String, &str)> = vec![
        (
            encrypted(&json!({"_type": "bogus", "tst": 1})),
            "unknown_type",
        ),
        (
            r#"{"_type":"location","lat":51.5,"lo"#.to_string(),
            "invalid_json",
        ),
        (
            encrypted(&json!({"_type": "location", "lon": -0.1, "tst": 1_700_000_001})),
            "missing_field",
        ),
        (
            json!({"_type": "encrypted", "data": "bm90IGNpcGhlcnRleHQ="}).to_string(),
            "decrypt_failed",
        ),
        (oversize, "too_large"),
    ];
    for (body, reason) in &cases {
        let response = post(&client, &s.ingest, jane, body.clone()).await;
        assert_eq!(response.status(), 200, "{reason}");
        assert_eq!(
            response.headers()["whereabouts-reason"].to_str().unwrap(),
            *reason
        );
        assert!(
            response.json::<Value>().await.unwrap().is_array(),
            "{reason}"
        );
    }
    // A zero-length body is the apps' "clear": nothing to keep, still 2xx.
    let empty = post(&client, &s.ingest, jane, "").await;
    assert_eq!(empty.status(), 200);
    // No X-Limit-D: the device is unknown, the payload is kept under `_`.
    let anonymous = post(
        &client,
        &s.ingest,
        ("jane", "s3cret", None),
        location(1_700_000_002, "jd").to_string(),
    )
    .await;
    assert_eq!(anonymous.status(), 200);
    assert_eq!(anonymous.headers()["whereabouts-reason"], "topic_mismatch");

    let next = post(
        &client,
        &s.ingest,
        jane,
        encrypted(&location(1_700_000_100, "jd")),
    )
    .await;
    assert_eq!(next.status(), 200);
    assert!(next.headers().get("whereabouts-reason").is_none());

    eventually(
        "the next fix in jane's state",
        Duration::from_secs(10),
        async || {
            kv_state::<DeviceState>(&s.js, &device_key("home", "jane", "phone"))
                .await
                .and_then(|d| d.last_fix)
                .is_some_and(|f| f.tst == 1_700_000_100 && f.tid.as_deref() == Some("jd"))
        },
    )
    .await;
    let person =
        s.js.get_key_value("presence")
            .await
            .unwrap()
            .get(person_key("home", "jane"))
            .await
            .unwrap()
            .expect("jane's person state");
    let person: PersonState = serde_json::from_slice(&person).unwrap();
    assert_eq!(
        person.devices[0].last_fix.as_ref().map(|f| f.tst),
        Some(1_700_000_100),
        "the person moved on"
    );
    assert_eq!(stream_count(&s.js, "OWNTRACKS").await, 2);
    let rejected = stream_messages(&s.js, "REJECTED", ">").await;
    let mut got: Vec<(String, String, usize)> = rejected
        .iter()
        .map(|m| {
            let reason = m
                .headers
                .as_ref()
                .and_then(|h| h.get(REASON_HEADER))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            (m.subject.to_string(), reason, m.payload.len())
        })
        .collect();
    got.sort();
    let mut want: Vec<(&str, &str)> = cases
        .iter()
        .map(|(_, r)| ("rejected.home.jane.phone", *r))
        .collect();
    want.push(("rejected._._._", "topic_mismatch"));
    want.sort();
    assert_eq!(
        got.iter()
            .map(|(s, r, _)| (s.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        want
    );
    let too_large = got.iter().find(|(_, r, _)| r == "too_large").unwrap();
    assert_eq!(
        too_large.2, 4096,
        "only the head of an oversized body is kept"
    );
    for (_, reason) in &cases {
        let counted = s
            .ingest
            .metric_matching(
                "ingest_rejected_total",
                &[&format!("reason=\"{reason}\""), "transport=\"http\""],
            )
            .await;
        assert_eq!(counted, 1.0, "{reason}");
    }
    assert!(s.presence.is_some());
}

#[tokio::test]
async fn friends_are_paired_under_their_own_distinct_tids() {
    let s = stack(true).await;
    let client = reqwest::Client::new();
    // Three phones called "phone": the apps' default tid is "ne" for all.
    let ann = ("ann", "ann-pw", Some("phone"));
    let bob = ("bob", "bob-pw", Some("phone"));
    let jane = ("jane", "s3cret", Some("phone"));
    for (who, name, user) in [(ann, "Ann", "ann"), (bob, "Bob", "bob")] {
        let card = json!({"_type": "card", "name": name}).to_string();
        assert_eq!(post(&client, &s.ingest, who, card).await.status(), 200);
        let fix = location(1_700_000_000, "ne").to_string();
        assert_eq!(post(&client, &s.ingest, who, fix).await.status(), 200);
        // Ann first: she is the device seen first.
        eventually(
            &format!("{user}'s fix stored"),
            Duration::from_secs(10),
            async || {
                kv_state::<DeviceState>(&s.js, &device_key("home", user, "phone"))
                    .await
                    .and_then(|d| d.last_fix)
                    .is_some_and(|f| f.tid.as_deref() == Some("ne"))
            },
        )
        .await;
    }

    // (topic → tid) of cards and of locations in an answer.
    let pairs = |answer: &Value, kind: &str| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = answer
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["_type"] == kind)
            .map(|m| {
                (
                    m["topic"].as_str().unwrap().to_string(),
                    m["tid"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    };

    // The asking phone uses "ne" too: no friend may get it.
    let answer: Value = post(
        &client,
        &s.ingest,
        jane,
        encrypted(&location(1_700_000_050, "ne")),
    )
    .await
    .json()
    .await
    .unwrap();
    let locations = pairs(&answer, "location");
    let cards = pairs(&answer, "card");
    assert_eq!(locations.len(), 2, "{answer}");
    assert_eq!(
        cards, locations,
        "each card shares its location's tid: {answer}"
    );
    assert_eq!(locations[0].0, "owntracks/ann/phone");
    assert_eq!(locations[1].0, "owntracks/bob/phone");
    assert!(locations.iter().all(|(_, tid)| tid != "ne"), "{answer}");
    assert_ne!(locations[0].1, locations[1].1);
    let bob_suffixed = locations[1].1.clone();

    // With another tid of its own, the first-seen friend keeps "ne" and the
    // later one keeps the same suffixed tid as before.
    let answer: Value = post(
        &client,
        &s.ingest,
        jane,
        encrypted(&location(1_700_000_060, "JD")),
    )
    .await
    .json()
    .await
    .unwrap();
    let locations = pairs(&answer, "location");
    assert_eq!(pairs(&answer, "card"), locations, "{answer}");
    assert_eq!(
        locations,
        vec![
            ("owntracks/ann/phone".to_string(), "ne".to_string()),
            ("owntracks/bob/phone".to_string(), bob_suffixed),
        ]
    );
    let names: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"Ann") && names.contains(&"Bob"), "{answer}");
}

/// Reads a raw HTTP response until the server closes or `limit` passes.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(String::from_utf8_lossy(&got).into_owned());
                }
            }
            Err(_) => return None,
        }
    }
}

fn host_port(service: &Service) -> String {
    service.url().trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn wrong_credentials_are_refused_before_the_body_is_read() {
    let s = stack(false).await;
    let auth = base64::engine::general_purpose::STANDARD.encode("jane:guess");
    let mut stream = TcpStream::connect(host_port(&s.ingest)).await.unwrap();
    let head = format!(
        "POST /pub HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nX-Limit-U: jane\r\nX-Limit-D: phone\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // 1 KiB of the announced 1 MiB, then nothing: the answer must come anyway.
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let answer = read_response(&mut stream, Duration::from_secs(3))
        .await
        .expect("an answer without the rest of the body");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(stream_count(&s.js, "REJECTED").await, 0);
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off_and_others_are_served_meanwhile() {
    let s = stack(false).await;
    let mut slow = TcpStream::connect(host_port(&s.ingest)).await.unwrap();
    slow.write_all(b"POST /pub HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let client = reqwest::Client::new();
    let mut closed = None;
    let mut buf = [0u8; 64];
    while started.elapsed() < Duration::from_secs(20) {
        // A header byte a second (slowloris), and a normal client alongside.
        let _ = slow.write_all(b"X").await;
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            _ => {}
        }
        let health = client
            .get(format!("{}/healthz", s.ingest.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    let closed = closed.expect("the slow sender was never cut off");
    assert!(
        closed >= Duration::from_secs(9) && closed < Duration::from_secs(13),
        "cut after {closed:?}, the header timeout is 10 s"
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_out_that_address_only() {
    let s = stack(false).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let guesser = from("127.0.0.1");
    let family = from("127.0.0.2");
    let jane_guess = ("jane", "guess", Some("phone"));
    let jane = ("jane", "s3cret", Some("phone"));
    let fix = || encrypted(&location(1_700_000_000, "jd"));
    for attempt in 1..=10 {
        let r = post(&guesser, &s.ingest, jane_guess, fix()).await;
        assert_eq!(r.status(), 401, "attempt {attempt}");
    }
    let locked = post(&guesser, &s.ingest, jane_guess, fix()).await;
    assert_eq!(locked.status(), 429);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Even the right password is refused from the locked address...
    let right_but_locked = post(&guesser, &s.ingest, jane, fix()).await;
    assert_eq!(right_but_locked.status(), 429);
    // ...and accepted from another one.
    let ok = post(&family, &s.ingest, jane, fix()).await;
    assert_eq!(ok.status(), 200);

    // Behind a trusted proxy the forwarded address is the one locked out:
    // the guesser, not everyone coming through the proxy.
    let proxy = from("127.0.0.3");
    let stranger = [("X-Forwarded-For", "192.0.2.66")];
    let member = [("X-Forwarded-For", "192.0.2.7")];
    for attempt in 1..=10 {
        let r = post_via(&proxy, &s.ingest, jane_guess, fix(), &stranger).await;
        assert_eq!(r.status(), 401, "proxied attempt {attempt}");
    }
    let locked = post_via(&proxy, &s.ingest, jane, fix(), &stranger).await;
    assert_eq!(locked.status(), 429);
    let ok = post_via(&proxy, &s.ingest, jane, fix(), &member).await;
    assert_eq!(ok.status(), 200);

    assert_eq!(
        s.ingest.metric("ingest_http_auth_lockouts_total", "").await,
        2.0
    );
    assert_eq!(
        s.ingest
            .metric("ingest_http_requests_total", "code=\"429\"")
            .await,
        3.0
    );
}

#[tokio::test]
async fn only_a_message_that_could_not_be_stored_gets_a_5xx() {
    let mut s = stack(false).await;
    // A fresh connection per request, as the apps make them: a pooled one
    // may be one the server has just closed (after the 503, or idle), and
    // the request would fail before reaching ingest.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let jane = ("jane", "s3cret", Some("phone"));
    let body = encrypted(&location(1_700_000_000, "jd"));
    s.nats.stop().await;
    let started = std::time::Instant::now();
    let refused = post(&client, &s.ingest, jane, body.clone()).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The app retries the same message once NATS is back: it is kept, once.
    s.nats.restart().await;
    let js = s.nats.jetstream().await;
    eventually("the retry is stored", Duration::from_secs(30), async || {
        post(&client, &s.ingest, jane, body.clone()).await.status() == 200
    })
    .await;
    assert_eq!(stream_count(&js, "OWNTRACKS").await, 1);
}

#[tokio::test]
async fn a_message_nats_refuses_for_good_gets_a_2xx_and_says_why() {
    // Resending the same bytes cannot help once JetStream refuses them for
    // good (here: OWNTRACKS takes no message over 64 bytes), so the phone
    // gets its 2xx — else its queue would stall — with the reason, and the
    // message is kept on REJECTED as `store_refused`.
    let s = stack(false).await;
    let mut owntracks = s.js.get_stream("OWNTRACKS").await.unwrap();
    let mut config = owntracks.info().await.unwrap().config.clone();
    config.max_message_size = 64;
    s.js.update_stream(config).await.unwrap();

    let client = reqwest::Client::new();
    let jane = ("jane", "s3cret", Some("phone"));
    let answer = post(
        &client,
        &s.ingest,
        jane,
        encrypted(&location(1_700_000_000, "jd")),
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("store_refused")
    );
    let kept = stream_messages(&s.js, "REJECTED", "rejected.home.jane.phone").await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0]
            .headers
            .as_ref()
            .and_then(|h| h.get(REASON_HEADER))
            .map(|v| v.as_str()),
        Some("store_refused")
    );
    assert_eq!(stream_count(&s.js, "OWNTRACKS").await, 0);
    let counted = s
        .ingest
        .metric_matching(
            "ingest_rejected_total",
            &[r#"reason="store_refused""#, r#"transport="http""#],
        )
        .await;
    assert_eq!(counted, 1.0);
}
