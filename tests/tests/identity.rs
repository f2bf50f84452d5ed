//! Identity and bounds end to end (real mosquitto, nats-server and ingest):
//! over-long names cost one message and hold up nobody, long fields are cut,
//! households and people cannot be invented from a topic, devices with a
//! secret must encrypt, and a QoS 0 flood cannot grow ingest without bound.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, NatsServer, Pipeline, Service, envelopes, eventually, stream_count,
    stream_messages,
};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn location(tst: i64) -> String {
    json!({"_type": "location", "lat": 51.5, "lon": -0.12, "tst": tst, "acc": 10, "tid": "jd"})
        .to_string()
}

/// The REJECTED messages: (subject, reason header).
async fn rejected(js: &jetstream::Context) -> Vec<(String, String)> {
    stream_messages(js, "REJECTED", ">")
        .await
        .into_iter()
        .map(|m| {
            let reason = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Whereabouts-Reason"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            (m.subject.to_string(), reason)
        })
        .collect()
}

async fn stack(config: &str) -> (NatsServer, Mosquitto, Service, jetstream::Context) {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
    let js = nats.jetstream().await;
    (nats, mosquitto, ingest, js)
}

/// A 2 kB user level (1,000 `é`, 6 kB once encoded into a subject) used to
/// make nats-server drop ingest's connection, stalling every device for
/// 10–20 s, and the message never reached a stream. Now it costs one
/// message, kept on REJECTED, and the devices after it flow at once.
#[tokio::test]
async fn a_two_kilobyte_topic_level_costs_one_message_and_nobody_waits() {
    let (_nats, mosquitto, ingest, js) = stack("").await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "long-and-others").await;
    let long = "é".repeat(1000);
    let tst = now();
    phone
        .publish(&format!("owntracks/{long}/phone"), location(tst))
        .await;
    let started = Instant::now();
    for i in 0..5 {
        phone
            .publish(&format!("owntracks/user{i}/phone"), location(tst + i))
            .await;
    }
    // The old stall was 10–20 s; 3 s leaves room for a loaded machine.
    eventually(
        "the five other devices stored",
        Duration::from_secs(3),
        async || stream_count(&js, "OWNTRACKS").await == 5,
    )
    .await;
    // Acknowledged to the broker too (acks go out in order: a message
    // stuck in retries would hold back every ack after it).
    eventually(
        "every message acknowledged",
        Duration::from_secs(3),
        async || ingest.metric("ingest_inflight_messages", "").await == 0.0,
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "other devices waited {waited:?}"
    );

    eventually(
        "the long one on REJECTED",
        Duration::from_secs(5),
        async || stream_count(&js, "REJECTED").await == 1,
    )
    .await;
    assert_eq!(
        rejected(&js).await,
        vec![(
            "rejected.home._.phone".to_string(),
            "name_too_long".to_string()
        )]
    );
    assert_eq!(
        ingest
            .metric_matching("ingest_rejected_total", &["reason=\"name_too_long\""])
            .await,
        1.0
    );
    assert_eq!(
        ingest
            .metric("ingest_jetstream_publish_retries_total", "")
            .await,
        0.0,
        "nothing was retried"
    );
    assert_eq!(
        ingest.metric("ingest_publish_failures_total", "").await,
        0.0
    );
}

/// A 300 kB region name (under `max_payload_bytes`) arrives cut to 128
/// bytes; the transition is kept.
#[tokio::test]
async fn a_300_kb_region_name_arrives_cut_to_the_limit() {
    let (_nats, mosquitto, _ingest, js) = stack("").await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "jane-phone").await;
    let desc = "Wörk".repeat(60_000); // 300 kB
    // Three 100 kB region names: 300 kB, under max_payload_bytes too.
    let regions: Vec<String> = (0..3).map(|i| format!("{i}{}", &desc[..100_000])).collect();
    let tst = now();
    phone
        .publish(
            "owntracks/jane/phone/event",
            json!({"_type":"transition","event":"enter","desc":desc,"tst":tst,"acc":0}).to_string(),
        )
        .await;
    phone
        .publish(
            "owntracks/jane/phone",
            json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":tst + 1,"inregions":regions})
                .to_string(),
        )
        .await;
    eventually("both stored", Duration::from_secs(5), async || {
        stream_count(&js, "OWNTRACKS").await == 2
    })
    .await;
    let stored = envelopes(&js, ">").await;
    let cut = stored[0].1["message"]["desc"].as_str().unwrap();
    assert_eq!(
        cut.len(),
        128,
        "cut to the limit (a character boundary here)"
    );
    assert!(desc.starts_with(cut));
    let inregions = stored[1].1["message"]["inregions"].as_array().unwrap();
    assert_eq!(inregions.len(), 3);
    assert!(
        inregions
            .iter()
            .all(|r| r.as_str().is_some_and(|r| r.len() <= 128))
    );
    assert_eq!(stream_count(&js, "REJECTED").await, 0);
}

/// With `{household}` in the pattern, a household nobody configured is
/// refused; a configured one is not.
#[tokio::test]
async fn households_cannot_be_invented_from_a_topic() {
    let config = r#"
[ingest]
topic_pattern = "owntracks/{household}/{user}/{device}"
[households.weasleys]
"#;
    let (_nats, mosquitto, ingest, js) = stack(config).await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "stranger").await;
    phone
        .publish("owntracks/strangers/eve/phone", location(now()))
        .await;
    phone
        .publish("owntracks/weasleys/ron/phone", location(now()))
        .await;
    eventually(
        "one accepted, one rejected",
        Duration::from_secs(5),
        async || {
            stream_count(&js, "OWNTRACKS").await == 1 && stream_count(&js, "REJECTED").await == 1
        },
    )
    .await;
    assert_eq!(
        rejected(&js).await,
        vec![(
            "rejected.strangers.eve.phone".to_string(),
            "unknown_household".to_string()
        )]
    );
    assert_eq!(envelopes(&js, ">").await[0].1["household"], "weasleys");
    assert_eq!(
        ingest
            .metric("ingest_rejected_total", "unknown_household")
            .await,
        1.0
    );
}

/// A device with a secret must encrypt; its plaintext LWT (the apps send it
/// unencrypted) is still taken.
#[tokio::test]
async fn a_device_with_a_secret_must_encrypt_all_but_its_lwt() {
    let config = r#"
[[ingest.devices]]
user = "harry"
device = "phone"
secret = "a shared secret"
"#;
    let (_nats, mosquitto, _ingest, js) = stack(config).await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
    let tst = now();
    phone.publish("owntracks/harry/phone", location(tst)).await;
    phone
        .publish(
            "owntracks/harry/phone",
            json!({"_type":"lwt","tst":tst}).to_string(),
        )
        .await;
    let sealed = json!({
        "_type": "encrypted",
        "data": shared::crypto::encrypt(location(tst + 1).as_bytes(), "a shared secret"),
    });
    phone
        .publish("owntracks/harry/phone", sealed.to_string())
        .await;
    eventually(
        "two accepted, one rejected",
        Duration::from_secs(5),
        async || {
            stream_count(&js, "OWNTRACKS").await == 2 && stream_count(&js, "REJECTED").await == 1
        },
    )
    .await;
    assert_eq!(
        rejected(&js).await,
        vec![(
            "rejected.home.harry.phone".to_string(),
            "plaintext_refused".to_string()
        )]
    );
    let kinds: Vec<(Value, Value)> = envelopes(&js, ">")
        .await
        .into_iter()
        .map(|(_, e)| (e["message"]["_type"].clone(), e["encrypted"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (json!("lwt"), json!(false)),
            (json!("location"), json!(true))
        ]
    );
}

/// The KV state of a person, when there is one.
async fn person_state(kv: &jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// A stranger whose user name is a configured person's id used to merge
/// into that person (their fixes moved Ron). Now they get a person of their
/// own, `~ron`.
#[tokio::test]
async fn a_user_name_cannot_claim_a_configured_person() {
    let config = r#"
[[households.home.people]]
name = "ron"
devices = ["rw/phone"]
"#;
    let p = Pipeline::start(config).await;
    let ron = MqttPublisher::connect(&p.mosquitto.url(), "rw-phone").await;
    let stranger = MqttPublisher::connect(&p.mosquitto.url(), "ron-laptop").await;
    ron.publish("owntracks/rw/phone", location(now())).await;
    stranger
        .publish("owntracks/ron/laptop", location(now()))
        .await;
    let kv =
        p.js.get_key_value("presence")
            .await
            .expect("presence bucket");
    // `~ron`, encoded: `_7Eron`.
    let stranger_state = eventually(
        "the stranger's own state",
        Duration::from_secs(10),
        async || person_state(&kv, "home.person._7Eron").await,
    )
    .await;
    assert_eq!(stranger_state["person"], "~ron");
    assert_eq!(stranger_state["devices"][0]["device"], "laptop");
    let ron_state = person_state(&kv, "home.person.ron")
        .await
        .expect("Ron's state");
    let devices: Vec<&str> = ron_state["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["user"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["rw"], "the stranger's laptop is not Ron's");
}

/// A person's subject and key follow their `id`; the display `name` rides
/// along in the state and can change without moving them.
#[tokio::test]
async fn a_person_is_keyed_by_id_and_shown_by_name() {
    let config = r#"
[[households.home.people]]
id = "harry"
name = "Harry Potter"
devices = ["hp/phone"]
"#;
    let p = Pipeline::start(config).await;
    let harry = MqttPublisher::connect(&p.mosquitto.url(), "hp-phone").await;
    harry.publish("owntracks/hp/phone", location(now())).await;
    let kv =
        p.js.get_key_value("presence")
            .await
            .expect("presence bucket");
    let state = eventually("Harry's state", Duration::from_secs(10), async || {
        person_state(&kv, "home.person.harry").await
    })
    .await;
    assert_eq!(state["person"], "harry");
    assert_eq!(state["name"], "Harry Potter");
    // The state is stored before its events are published, so wait for them.
    eventually(
        "events on the id's subject",
        Duration::from_secs(10),
        async || {
            !stream_messages(&p.js, "PRESENCE", "presence.home.harry")
                .await
                .is_empty()
        },
    )
    .await;
}

/// QoS 0 needs no ack, so nothing but ingest's budget bounds what it holds
/// while NATS is down: beyond 16 MiB pending, QoS 0 messages are dropped
/// and counted, ingest stays up, and QoS 1 messages still get through once
/// NATS is back.
#[tokio::test]
async fn a_qos0_flood_with_nats_down_is_bounded_and_counted() {
    let (mut nats, mosquitto, ingest, _js) = stack("").await;
    nats.stop().await;
    let mut options = MqttOptions::new("flooder", "127.0.0.1", mosquitto.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // 2,000 × 16 KiB = 31 MiB of QoS 0, twice the budget.
    let filler = "x".repeat(16 << 10);
    for i in 0..2000 {
        let payload =
            json!({"_type":"location","lat":1,"lon":2,"tst":1_700_000_000 + i,"pad":filler});
        client
            .publish(
                format!("owntracks/flood{}/phone", i % 10),
                QoS::AtMostOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }
    eventually("QoS 0 drops counted", Duration::from_secs(20), async || {
        ingest.metric("ingest_mqtt_dropped_total", "").await >= 500.0
    })
    .await;
    let held = ingest.metric("ingest_inflight_messages", "").await;
    assert!(
        held * 16.0 * 1024.0 <= 16.0 * 1024.0 * 1024.0,
        "ingest holds {held} QoS 0 messages, over its 16 MiB budget"
    );
    poller.abort();

    nats.restart().await;
    let js = nats.jetstream().await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "after-flood").await;
    phone.publish("owntracks/jane/phone", location(now())).await;
    eventually(
        "the QoS 1 fix after the flood",
        Duration::from_secs(30),
        async || envelopes(&js, "owntracks.home.jane.>").await.len() == 1,
    )
    .await;
}
