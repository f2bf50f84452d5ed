//! Self-tests of the broker harness: each asserts something that would fail
//! if the harness (or deploy/mosquitto.conf) were wrong.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, MqttSubscriber, NatsServer, eventually, stream_count, stream_messages,
};

const WAIT: Duration = Duration::from_secs(10);

async fn create_stream(js: &jetstream::Context) {
    js.create_stream(stream::Config {
        name: "HARNESS".into(),
        subjects: vec!["harness.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
}

async fn publish_acked(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_string(), payload.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("JetStream ack");
}

#[tokio::test]
async fn nats_jetstream_data_survives_a_restart_on_the_same_port() {
    let mut nats = NatsServer::start().await;
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let js = nats.jetstream().await;
    create_stream(&js).await;
    for i in 0..3 {
        publish_acked(&js, "harness.a", &format!("a{i}")).await;
    }
    publish_acked(&js, "harness.b", "b0").await;

    let only_a = stream_messages(&js, "HARNESS", "harness.a").await;
    let payloads: Vec<_> = only_a.iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(payloads, [b"a0".to_vec(), b"a1".to_vec(), b"a2".to_vec()]);
    assert_eq!(stream_messages(&js, "HARNESS", ">").await.len(), 4);
    assert!(
        stream_messages(&js, "HARNESS", "harness.none")
            .await
            .is_empty()
    );

    nats.restart().await;
    assert_eq!(nats.port(), port, "restart keeps the port");

    // The old client reconnects by itself to the same URL.
    eventually("the old client to reconnect and publish", WAIT, || {
        let js = js.clone();
        async move { js.publish("harness.b", "b1".into()).await?.await }
    })
    .await;
    let js2 = nats.jetstream().await;
    assert_eq!(stream_count(&js2, "HARNESS").await, 5);
    let all = stream_messages(&js2, "HARNESS", "").await;
    let subjects: Vec<_> = all.iter().map(|m| m.subject.to_string()).collect();
    assert_eq!(
        subjects,
        [
            "harness.a",
            "harness.a",
            "harness.a",
            "harness.b",
            "harness.b"
        ]
    );

    // After a crash the server comes back on the same port with its streams.
    nats.kill().await;
    nats.restart().await;
    let js3 = nats.jetstream().await;
    assert!(js3.get_stream("HARNESS").await.is_ok());
}

#[tokio::test]
async fn mosquitto_carries_qos1_messages_including_a_1_mib_payload() {
    let mqtt = Mosquitto::start().await;
    assert_eq!(mqtt.url(), format!("mqtt://127.0.0.1:{}", mqtt.port()));
    let mut sub = MqttSubscriber::connect(&mqtt.url(), "sub", true, &["owntracks/#"]).await;
    let phone = MqttPublisher::connect(&mqtt.url(), "phone").await;

    phone
        .publish_many((0..100).map(|i| (format!("owntracks/alice/{i}"), format!("m{i}"))))
        .await;
    let junk = vec![b'x'; 1024 * 1024];
    phone.publish("owntracks/alice/card", junk.clone()).await;

    let got = sub.recv_n(101, WAIT).await;
    for (i, m) in got[..100].iter().enumerate() {
        assert_eq!(m.topic, format!("owntracks/alice/{i}"));
        assert_eq!(m.text(), format!("m{i}"));
    }
    assert_eq!(got[100].topic, "owntracks/alice/card");
    assert_eq!(
        got[100].payload.len(),
        junk.len(),
        "1 MiB passes the broker"
    );

    // Retained messages reach later subscribers, flagged as retained.
    phone
        .publish_retained("owntracks/bob/phone/info", r#"{"_type":"card"}"#)
        .await;
    let mut late = MqttSubscriber::connect(&mqtt.url(), "late", true, &["owntracks/bob/#"]).await;
    let card = late.recv(WAIT).await.expect("the retained card");
    assert!(card.retain);
    assert_eq!(card.text(), r#"{"_type":"card"}"#);
}

#[tokio::test]
async fn mosquitto_restart_keeps_a_persistent_sessions_queue() {
    let mut mqtt = Mosquitto::start().await;
    let port = mqtt.port();
    let sub = MqttSubscriber::connect(&mqtt.url(), "ingest", false, &["owntracks/#"]).await;
    sub.disconnect().await;

    let phone = MqttPublisher::connect(&mqtt.url(), "phone").await;
    phone
        .publish_many((0..10).map(|i| ("owntracks/alice/phone", format!("{i}"))))
        .await;
    phone.disconnect().await;

    mqtt.stop().await;
    assert!(
        mqtt.dir().join("mosquitto.db").exists(),
        "a graceful stop saves the persistence file"
    );
    mqtt.restart().await;
    assert_eq!(mqtt.port(), port, "restart keeps the port");

    let mut sub = MqttSubscriber::connect(&mqtt.url(), "ingest", false, &["owntracks/#"]).await;
    let got = sub.recv_n(10, WAIT).await;
    let payloads: Vec<_> = got.iter().map(|m| m.text()).collect();
    let expected: Vec<_> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
}

#[tokio::test]
async fn mosquitto_queues_more_than_its_default_1000_for_an_offline_session() {
    // Mosquitto's default max_queued_messages (1000) would drop the rest
    // silently; deploy/mosquitto.conf raises it.
    const N: usize = 2500;
    let mqtt = Mosquitto::start().await;
    let sub = MqttSubscriber::connect(&mqtt.url(), "ingest", false, &["owntracks/#"]).await;
    sub.disconnect().await;

    let phone = MqttPublisher::connect(&mqtt.url(), "phone").await;
    phone
        .publish_many((0..N).map(|i| ("owntracks/alice/phone", format!("{i}"))))
        .await;

    let mut sub = MqttSubscriber::connect(&mqtt.url(), "ingest", false, &["owntracks/#"]).await;
    let got = sub.recv_n(N, WAIT).await;
    assert_eq!(got.last().map(|m| m.text()), Some((N - 1).to_string()));
}

#[tokio::test]
async fn mqtt_clients_reconnect_and_resubscribe_after_a_broker_crash() {
    let mut mqtt = Mosquitto::start().await;
    // Clean session: the broker forgets the subscription, so the subscriber
    // must subscribe again on its own after reconnecting.
    let mut sub = MqttSubscriber::connect(&mqtt.url(), "sub", true, &["t/#"]).await;

    mqtt.kill().await;
    mqtt.restart().await;
    // A publisher connected after the crash: one that published while the
    // broker was down may wait forever for an ack the lost session dropped.
    let phone = MqttPublisher::connect(&mqtt.url(), "phone").await;

    // Until the subscriber has resubscribed, publishes go nowhere; keep
    // publishing until one arrives.
    let got = eventually("a message through the restarted broker", WAIT, async || {
        phone.publish("t/x", "after").await;
        sub.recv(Duration::from_millis(100)).await
    })
    .await;
    assert_eq!(got.text(), "after");
}

#[tokio::test(start_paused = true)]
async fn eventually_returns_the_value_once_ready() {
    let mut calls = 0;
    let value = eventually("the third call", Duration::from_secs(5), || {
        calls += 1;
        let ready = calls >= 3;
        async move { ready.then_some(calls) }
    })
    .await;
    assert_eq!(value, 3);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "waiting for never; last error: \"nope\"")]
async fn eventually_panics_at_the_deadline_with_the_last_error() {
    eventually("never", Duration::from_secs(1), || async {
        Err::<(), _>("nope")
    })
    .await;
}
