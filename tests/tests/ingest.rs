//! ingest end to end: real mosquitto, real nats-server, the real ingest
//! process. What goes in over MQTT or HTTP comes out on JetStream, once,
//! whatever the brokers or ingest itself do meanwhile.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine;
use serde_json::{Value, json};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, NatsServer, Service, envelopes, eventually, stream_count,
    stream_messages,
};

const CONFIG: &str = r#"
[ingest]
client_id = "ingest-under-test"

[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"
"#;

fn location(tst: i64) -> String {
    json!({"_type": "location", "lat": 51.5, "lon": -0.12, "tst": tst, "acc": 10, "tid": "jd"})
        .to_string()
}

struct Stack {
    nats: NatsServer,
    mosquitto: Mosquitto,
    ingest: Service,
    js: jetstream::Context,
}

async fn stack() -> Stack {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), CONFIG).await;
    let js = nats.jetstream().await;
    Stack {
        nats,
        mosquitto,
        ingest,
        js,
    }
}

/// Waits for `n` messages in `stream` and checks that there are no more.
async fn expect_count(js: &jetstream::Context, stream: &str, n: u64, timeout: Duration) {
    eventually(&format!("{n} messages in {stream}"), timeout, async || {
        stream_count(js, stream).await >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_count(js, stream).await, n, "exactly {n} in {stream}");
}

/// The distinct `tst`s among the stream's locations: each message once.
async fn distinct_tsts(js: &jetstream::Context) -> HashSet<i64> {
    envelopes(js, "owntracks.>")
        .await
        .iter()
        .filter_map(|(_, e)| e["message"]["tst"].as_i64())
        .collect()
}

#[tokio::test]
async fn every_kind_arrives_on_its_subject_with_its_envelope() {
    let s = stack().await;
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "jane-phone").await;
    let base = "owntracks/jane.doe/Jörg's Phone";
    let cases: Vec<(String, Value, &str)> = vec![
        (
            base.into(),
            json!({"_type":"location","lat":"51.5","lon":-0.12,"tst":1700000000,"batt":"80","SSID":"home"}),
            "location",
        ),
        (
            format!("{base}/event"),
            json!({"_type":"transition","event":"enter","desc":"Home","tst":1700000001,"acc":0,"lat":51.5,"lon":-0.12,"wtst":1600000000}),
            "transition",
        ),
        (base.into(), json!({"_type":"lwt","tst":1700000002}), "lwt"),
        (
            format!("{base}/info"),
            json!({"_type":"card","name":"Jane Doe","tid":"jd"}),
            "card",
        ),
        (
            base.into(),
            json!({"_type":"card","name":"Jane on base","tid":"jd"}),
            "card",
        ),
        (
            format!("{base}/waypoint"),
            json!({"_type":"waypoint","desc":"Work","lat":51.6,"lon":-0.1,"rad":100,"tst":1700000003}),
            "waypoint",
        ),
        (
            format!("{base}/waypoints"),
            json!({"_type":"waypoints","waypoints":[{"_type":"waypoint","desc":"Home","lat":51.5,"lon":-0.12,"rad":50,"tst":1}]}),
            "waypoints",
        ),
        (
            format!("{base}/status"),
            json!({"_type":"status","android":{"hib":1}}),
            "status",
        ),
    ];
    for (topic, payload, _) in &cases {
        phone.publish(topic, payload.to_string()).await;
    }
    expect_count(
        &s.js,
        "OWNTRACKS",
        cases.len() as u64,
        Duration::from_secs(10),
    )
    .await;
    let got = envelopes(&s.js, "owntracks.>").await;
    for ((topic, payload, kind), (subject, envelope)) in cases.iter().zip(&got) {
        assert_eq!(
            subject,
            &format!("owntracks.home.jane_2Edoe.J_C3_B6rg_27s_20Phone.{kind}")
        );
        assert_eq!(envelope["household"], "home");
        assert_eq!(envelope["user"], "jane.doe");
        assert_eq!(envelope["device"], "Jörg's Phone");
        assert_eq!(envelope["topic"], topic.as_str());
        assert_eq!(envelope["transport"], "mqtt");
        assert_eq!(envelope["retained"], false);
        assert_eq!(envelope["encrypted"], false);
        assert_eq!(envelope["message"]["_type"], payload["_type"]);
        assert!(
            time::OffsetDateTime::parse(
                envelope["received_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
    }
    // Normalised: numbers that came as strings are numbers; SSID lower-case.
    assert_eq!(got[0].1["message"]["lat"], json!(51.5));
    assert_eq!(got[0].1["message"]["batt"], json!(80));
    assert_eq!(got[0].1["message"]["ssid"], json!("home"));
    assert_eq!(got[1].1["message"]["acc"], json!(0), "acc 0 is kept");
    assert_eq!(
        s.ingest
            .metric("ingest_messages_total", "type=\"card\"")
            .await,
        2.0
    );
}

#[tokio::test]
async fn retained_and_encrypted_messages_are_marked() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let config = format!("{CONFIG}\n[[ingest.devices]]\nuser = \"bob\"\nsecret = \"123\"\n");
    // Retained before ingest subscribes: the broker hands it over marked
    // retained (to an existing subscriber it would come unmarked).
    let phone = MqttPublisher::connect(&mosquitto.url(), "bob-phone").await;
    phone
        .publish_retained("owntracks/jane/phone", location(1700000100))
        .await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), &config).await;
    let js = nats.jetstream().await;
    let data = shared::crypto::encrypt(location(1700000200).as_bytes(), "123");
    phone
        .publish(
            "owntracks/bob/tablet",
            json!({"_type":"encrypted","data":data}).to_string(),
        )
        .await;
    expect_count(&js, "OWNTRACKS", 2, Duration::from_secs(10)).await;
    let got = envelopes(&js, "owntracks.>").await;
    let jane = got.iter().find(|(s, _)| s.contains(".jane.")).unwrap();
    assert_eq!(jane.1["retained"], true);
    let bob = got.iter().find(|(s, _)| s.contains(".bob.")).unwrap();
    assert_eq!(bob.0, "owntracks.home.bob.tablet.location");
    assert_eq!(bob.1["encrypted"], true);
    assert_eq!(bob.1["message"]["tst"], 1700000200);
}

#[tokio::test]
async fn garbage_is_rejected_with_a_reason_and_valid_messages_keep_flowing() {
    let s = stack().await;
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "messy-phone").await;
    let junk = vec![b'#'; 1 << 20];
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "owntracks/jane/phone",
            b"not json at all".to_vec(),
            "invalid_json",
        ),
        (
            "owntracks/jane/phone",
            br#"{"_type":"location","lat":51.5,"lon""#.to_vec(),
            "invalid_json",
        ),
        ("owntracks/jane/phone", junk, "too_large"),
        (
            "owntracks/jane/phone",
            br#"{"_type":"location","lat":"north","lon":-0.1,"tst":1700000000}"#.to_vec(),
            "invalid_field",
        ),
        (
            "owntracks/jane/phone",
            br#"{"_type":"location","lon":-0.1,"tst":1700000000}"#.to_vec(),
            "missing_field",
        ),
        (
            "owntracks/jane/phone",
            br#"{"_type":"teleport","tst":1}"#.to_vec(),
            "unknown_type",
        ),
        (
            "owntracks/jane/phone",
            br#"[1,2,3]"#.to_vec(),
            "unknown_type",
        ),
        (
            "owntracks/jane/phone/cmd",
            location(1).into_bytes(),
            "topic_mismatch",
        ),
        (
            "owntracks/jane/phone",
            br#"{"_type":"encrypted","data":"bm9wZQ=="}"#.to_vec(),
            "decrypt_failed",
        ),
    ];
    for (i, (topic, payload, _)) in bad.iter().enumerate() {
        phone.publish(topic, payload.clone()).await;
        // A valid message after each bad one must still arrive.
        phone
            .publish("owntracks/jane/phone", location(1700001000 + i as i64))
            .await;
    }
    expect_count(
        &s.js,
        "OWNTRACKS",
        bad.len() as u64,
        Duration::from_secs(15),
    )
    .await;
    expect_count(&s.js, "REJECTED", bad.len() as u64, Duration::from_secs(5)).await;
    let rejected = stream_messages(&s.js, "REJECTED", ">").await;
    for ((_, payload, reason), message) in bad.iter().zip(&rejected) {
        assert_eq!(message.subject.as_str(), "rejected.home.jane.phone");
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Whereabouts-Reason"))
            .map(|v| v.to_string());
        assert_eq!(header.as_deref(), Some(*reason));
        if *reason == "too_large" {
            assert_eq!(
                message.payload.len(),
                4096,
                "only the head of an oversized payload is kept"
            );
        } else {
            assert_eq!(&message.payload[..], &payload[..]);
        }
    }
    assert_eq!(
        s.ingest
            .metric("ingest_rejected_total", "reason=\"invalid_json\"")
            .await,
        2.0
    );
    assert_eq!(distinct_tsts(&s.js).await.len(), bad.len());
}

#[tokio::test]
async fn mosquitto_restart_reconnects_and_subscribes_again() {
    let mut s = stack().await;
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "phone-a").await;
    phone
        .publish("owntracks/jane/phone", location(1700000000))
        .await;
    expect_count(&s.js, "OWNTRACKS", 1, Duration::from_secs(10)).await;
    phone.disconnect().await;

    // A crash loses unsaved state, subscriptions included: only a new
    // SUBSCRIBE brings messages back.
    s.mosquitto.kill().await;
    let _ = std::fs::remove_file(s.mosquitto.dir().join("mosquitto.db"));
    s.mosquitto.restart().await;
    eventually("ingest reconnected", Duration::from_secs(20), async || {
        s.ingest.metric("ingest_mqtt_connected", "").await == 1.0
    })
    .await;
    assert!(s.ingest.metric("ingest_mqtt_reconnects_total", "").await >= 1.0);
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "phone-b").await;
    // The subscription may land a moment after the ConnAck: keep publishing.
    let mut tst = 1700000001;
    eventually(
        "a message after the restart",
        Duration::from_secs(20),
        async || {
            phone.publish("owntracks/jane/phone", location(tst)).await;
            tst += 1;
            stream_count(&s.js, "OWNTRACKS").await >= 2
        },
    )
    .await;
}

#[tokio::test]
async fn nats_down_for_10s_while_1000_are_published_loses_nothing() {
    let mut s = stack().await;
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "phone").await;
    phone
        .publish("owntracks/jane/phone", location(1700000000))
        .await;
    expect_count(&s.js, "OWNTRACKS", 1, Duration::from_secs(10)).await;

    s.nats.stop().await;
    let started = std::time::Instant::now();
    phone
        .publish_many(
            (1..=1000).map(|i| ("owntracks/jane/phone".to_string(), location(1700000000 + i))),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    s.nats.restart().await;
    let js = s.nats.jetstream().await;
    expect_count(&js, "OWNTRACKS", 1001, Duration::from_secs(60)).await;
    assert_eq!(distinct_tsts(&js).await.len(), 1001, "each message once");
}

#[tokio::test]
async fn a_backlog_of_20000_for_the_persistent_session_arrives_once_without_stalling() {
    let mut s = stack().await;
    // ingest has subscribed with its persistent session; now it goes away.
    assert!(s.ingest.stop().await, "ingest stops cleanly on SIGTERM");
    let phone = MqttPublisher::connect(&s.mosquitto.url(), "phone").await;
    phone
        .publish_many(
            (0..20_000).map(|i| ("owntracks/jane/phone".to_string(), location(1700000000 + i))),
        )
        .await;
    s.ingest.restart().await;
    expect_count(&s.js, "OWNTRACKS", 20_000, Duration::from_secs(120)).await;
    assert_eq!(distinct_tsts(&s.js).await.len(), 20_000);
    // Not stalled: later messages still flow.
    phone
        .publish("owntracks/jane/phone", location(1800000000))
        .await;
    expect_count(&s.js, "OWNTRACKS", 20_001, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn ingest_killed_mid_stream_loses_nothing_published_before() {
    let mut s = stack().await;
    let url = s.mosquitto.url();
    let total = 5_000;
    let publisher = tokio::spawn(async move {
        let phone = MqttPublisher::connect(&url, "phone").await;
        for start in (0..total).step_by(250) {
            let batch: Vec<(String, String)> = (start..start + 250)
                .map(|i| ("owntracks/jane/phone".to_string(), location(1700000000 + i)))
                .collect();
            phone.publish_many(batch).await;
        }
    });
    eventually(
        "the stream is filling",
        Duration::from_secs(20),
        async || stream_count(&s.js, "OWNTRACKS").await >= 500,
    )
    .await;
    s.ingest.kill();
    let at_kill = stream_count(&s.js, "OWNTRACKS").await;
    publisher.await.unwrap();
    s.ingest.restart().await;
    expect_count(&s.js, "OWNTRACKS", total as u64, Duration::from_secs(60)).await;
    assert_eq!(distinct_tsts(&s.js).await.len(), total as usize);
    assert!(
        at_kill < total as u64,
        "the kill happened mid-stream ({at_kill})"
    );
}

#[tokio::test]
async fn http_mode_posts_like_the_android_app() {
    let s = stack().await;
    let client = reqwest::Client::new();
    let post = |password: &str, body: String| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("jane:{password}"));
        client
            .post(format!("{}/pub", s.ingest.url()))
            .header("Authorization", format!("Basic {auth}"))
            .header("X-Limit-U", "jane")
            .header("X-Limit-D", "phone")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let response = post("s3cret", location(1700000000)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));

    let wrong = post("guess", location(1700000001)).await.unwrap();
    assert_eq!(wrong.status(), 401);
    let bad = post("s3cret", "{\"_type\":\"location\"".into())
        .await
        .unwrap();
    // Kept on REJECTED and answered 2xx: Android would retry a 4xx for ever.
    assert_eq!(bad.status(), 200);
    assert_eq!(bad.headers()["whereabouts-reason"], "invalid_json");
    let anonymous = client
        .post(format!("{}/pub", s.ingest.url()))
        .body(location(1))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    expect_count(&s.js, "OWNTRACKS", 1, Duration::from_secs(5)).await;
    expect_count(&s.js, "REJECTED", 1, Duration::from_secs(5)).await;
    let got = envelopes(&s.js, "owntracks.>").await;
    assert_eq!(got[0].0, "owntracks.home.jane.phone.location");
    assert_eq!(got[0].1["transport"], "http");
    assert_eq!(got[0].1["topic"], "owntracks/jane/phone");
    assert_eq!(got[0].1["message"]["tst"], 1700000000);
}

#[tokio::test]
async fn mqtts_with_a_private_ca() {
    // A CA and a server certificate for 127.0.0.1, made with openssl.
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "openssl {args:?}");
    };
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not found: skipping the TLS test");
        return;
    }
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=whereabouts-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);

    let tls_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = dir.display();
    let mosquitto = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
    ))
    .await;
    let nats = NatsServer::start().await;
    let ca = format!("{d}/ca.pem");
    let _ingest = Service::start_with(
        "ingest",
        &nats.url(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        CONFIG,
        &[("MQTT_CA_FILE", ca.as_str())],
    )
    .await;
    let js = nats.jetstream().await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "phone").await;
    phone
        .publish("owntracks/jane/phone", location(1700000000))
        .await;
    expect_count(&js, "OWNTRACKS", 1, Duration::from_secs(10)).await;
}
