//! Phones on nats-server's own MQTT listener (`deploy/nats-server-mqtt.conf`,
//! `[ingest.nats_mqtt]`): the same envelopes, rejects and ids as the
//! mosquitto bridge, `cmd`s back to a phone's persistent session, topics
//! nats-server refuses, QoS 0, phones on two cluster nodes with one killed,
//! and nothing PUBACKed lost when the server is SIGKILLed mid-burst.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, MqttSubscriber, NatsCluster, NatsServer, Service, deploy_password,
    envelopes, eventually, phone_password, stream_messages, wait_place,
};

const CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[ingest.nats_mqtt]

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120
"#;

const WAIT: Duration = Duration::from_secs(30);

fn location(tst: i64) -> String {
    json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":12,"vel":0,"batt":80,"tst":tst,
        "inregions":["Home"]})
    .to_string()
}

/// The envelopes on `filter` once there are `n` of them (within [`WAIT`]).
async fn wait_envelopes(
    js: &async_nats::jetstream::Context,
    filter: &str,
    n: usize,
) -> Vec<(String, Value)> {
    eventually(&format!("{n} envelopes on {filter}"), WAIT, async || {
        let got = envelopes(js, filter).await;
        (got.len() == n).then_some(got)
    })
    .await
}

/// The `Whereabouts-Reason` of each REJECTED message on `filter`.
async fn reasons(js: &async_nats::jetstream::Context, filter: &str) -> Vec<String> {
    stream_messages(js, "REJECTED", filter)
        .await
        .iter()
        .filter_map(|m| {
            m.headers
                .as_ref()?
                .get("Whereabouts-Reason")
                .map(|v| v.to_string())
        })
        .collect()
}

/// Publishes one QoS 1 message on a fresh connection as `client_id` and
/// reports whether a PUBACK came back before the server refused the
/// connection or closed it.
async fn publish_raw(
    port: u16,
    user: &str,
    client_id: &str,
    topic: &str,
    payload: &str,
) -> Result<(), String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_credentials(user, phone_password(user));
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|_| Err("neither a PUBACK nor a disconnect".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_on_the_nats_listener_take_the_mosquitto_path() {
    let nats = NatsServer::start_phones().await;
    let mosquitto = Mosquitto::start().await;
    let url = |user: &str| nats.url_as(user, deploy_password(user));
    let ingest = Service::start("ingest", &url("ingest"), &mosquitto.url(), CONFIG).await;
    let _presence = Service::start("presence", &url("presence"), &mosquitto.url(), CONFIG).await;
    let js = nats.jetstream().await;

    // The same phone on each broker: one envelope each, alike but for the fix.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let on_mosquitto = MqttPublisher::connect(&mosquitto.url(), "bob-phone").await;
    let on_nats = MqttPublisher::connect(&nats.mqtt_url("bob"), "bob-phone").await;
    on_mosquitto
        .publish("owntracks/bob/phone", location(now - 10))
        .await;
    on_nats
        .publish("owntracks/bob/phone", location(now - 5))
        .await;
    let bob = wait_envelopes(&js, "owntracks.weasleys.bob.phone.location", 2).await;
    let (mut a, mut b) = (bob[0].1.clone(), bob[1].1.clone());
    for e in [&mut a, &mut b] {
        let map = e.as_object_mut().unwrap();
        map.remove("received_at");
        map["message"].as_object_mut().unwrap().remove("tst");
    }
    assert_eq!(a, b, "the two paths' envelopes differ beyond the fix");
    assert_eq!(a["topic"], "owntracks/bob/phone");
    assert_eq!(a["transport"], "mqtt");

    // A phone that moved brokers sends a message again: the same id, one copy.
    on_nats
        .publish("owntracks/bob/phone", location(now - 10))
        .await;
    eventually("ingest took the resent message", WAIT, async || {
        ingest
            .metric("ingest_nats_mqtt_messages_total", "qos=\"1\"")
            .await
            >= 2.0
    })
    .await;
    let resent = eventually("the resent message stored or dropped", WAIT, async || {
        (ingest.metric("ingest_inflight_messages", "").await == 0.0).then_some(())
    });
    resent.await;
    assert_eq!(
        envelopes(&js, "owntracks.weasleys.bob.phone.location")
            .await
            .len(),
        2,
        "a message resent through the other broker was stored twice"
    );

    // QoS 0, which nats-server does not store, passes the import: stored
    // once, and no QoS 1 message went that way too.
    on_nats
        .publish_qos0("owntracks/bob/phone", location(now - 2))
        .await;
    wait_envelopes(&js, "owntracks.weasleys.bob.phone.location", 3).await;
    assert_eq!(
        ingest
            .metric("ingest_nats_mqtt_messages_total", "qos=\"0\"")
            .await,
        1.0
    );

    // A `.` inside a level travels as `//` and comes back as a `.`; presence
    // sees the phone like any other.
    let jane = MqttPublisher::connect(&nats.mqtt_url("jane"), "jane-my_phone").await;
    jane.publish("owntracks/jane/my.phone", location(now)).await;
    let stored = eventually("jane's envelope", WAIT, async || {
        envelopes(&js, "owntracks.weasleys.jane.my_2Ephone.location")
            .await
            .pop()
    })
    .await;
    assert_eq!(stored.1["topic"], "owntracks/jane/my.phone");
    assert_eq!(stored.1["device"], "my.phone");
    wait_place(&js, "jane", "Home", 1).await;

    // Bad input: the same reason code on both paths.
    on_mosquitto
        .publish("owntracks/bob/phone", "{not json")
        .await;
    on_nats.publish("owntracks/bob/tablet", "{not json").await;
    let got = eventually("both rejects", WAIT, async || {
        let got = reasons(&js, "rejected.weasleys.bob.>").await;
        (got.len() == 2).then_some(got)
    })
    .await;
    assert_eq!(got, ["invalid_json", "invalid_json"]);
    // Nothing raw reached the contract's stream.
    assert!(
        stream_messages(&js, "OWNTRACKS", ">")
            .await
            .iter()
            .all(|m| serde_json::from_slice::<Value>(&m.payload)
                .is_ok_and(|v| v["schema_version"] == 1)),
        "OWNTRACKS holds something other than envelopes"
    );

    // A space in a topic: nats-server drops the phone's connection, no PUBACK.
    let port = nats.mqtt_port();
    let refused = publish_raw(port, "jane", "jane-raw", "owntracks/jane/My Phone", "{}").await;
    let error = refused.expect_err("nats-server acknowledged a topic with a space");
    println!("a topic with a space: {error}");
    // So is a client id with a `.` or a space, at CONNECT.
    for id in ["jane-my.phone", "jane my phone"] {
        let refused = publish_raw(port, "jane", id, "owntracks/jane/phone", "{}").await;
        let error = refused.expect_err("nats-server took a client id with a '.' or a space");
        assert!(error.contains("BadClientId"), "{id}: {error}");
    }

    // A cmd reaches the phone's persistent session while it is offline.
    let phone = MqttSubscriber::connect(
        &nats.mqtt_url("jane"),
        "jane-cmd",
        false,
        &["owntracks/jane/my.phone/cmd"],
    )
    .await;
    phone.disconnect().await;
    let answer = nats
        .client()
        .await
        .request(
            "whereabouts.commands.report-location",
            json!({"household":"weasleys","user":"jane","device":"my.phone"})
                .to_string()
                .into(),
        )
        .await
        .expect("the commands service answers");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["nats_mqtt"], true, "{answer}");
    assert_eq!(answer["mqtt"], true, "{answer}");
    let mut phone = MqttSubscriber::connect(
        &nats.mqtt_url("jane"),
        "jane-cmd",
        false,
        &["owntracks/jane/my.phone/cmd"],
    )
    .await;
    let cmd = phone.recv(WAIT).await.expect("the cmd, kept for the phone");
    assert_eq!(cmd.topic, "owntracks/jane/my.phone/cmd");
    let cmd: Value = serde_json::from_slice(&cmd.payload).unwrap();
    assert_eq!(cmd["action"], "reportLocation");
}

/// nats-server stores a phone's QoS 1 message in `$MQTT_msgs` before the
/// PUBACK, and ingest's durable holds it there until OWNTRACKS has it: a
/// burst of publishes, SIGKILL at the 1,500th PUBACK, a restart, and every
/// PUBACKed message reaches OWNTRACKS. Prints the measurement
/// (docs/deploy.md quotes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_pubacked_is_lost_to_a_sigkill() {
    const BURST: usize = 3000;
    const KILL_AT: usize = 1500;
    let mut nats = NatsServer::start_phones().await;
    let ingest_url = nats.url_as("ingest", deploy_password("ingest"));
    let _ingest = Service::start_with(
        "ingest",
        &ingest_url,
        "mqtt://127.0.0.1:1",
        CONFIG,
        &[("INGEST_NO_MQTT", "true")],
    )
    .await;
    let base = time::OffsetDateTime::now_utc().unix_timestamp() - 10 * BURST as i64;

    let mut options = MqttOptions::new("jane-burst", "127.0.0.1", nats.mqtt_port());
    options.set_credentials("jane", phone_password("jane"));
    options.set_keep_alive(Duration::from_secs(5));
    options.set_inflight(1000);
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, BURST);
    for i in 0..BURST {
        client
            .publish(
                "owntracks/jane/phone",
                QoS::AtLeastOnce,
                false,
                location(base + i as i64),
            )
            .await
            .unwrap();
    }
    // The n-th outgoing PUBLISH is message n: its packet id names it until acked.
    let mut sent = 0usize;
    let mut by_pkid = BTreeMap::new();
    let mut acked = BTreeSet::new();
    let killed = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match eventloop.poll().await.expect("the burst's connection") {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    by_pkid.insert(pkid, sent);
                    sent += 1;
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    acked.insert(by_pkid[&ack.pkid] as i64);
                    if acked.len() == KILL_AT {
                        nats.kill().await;
                        return;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    killed.expect("1,500 PUBACKs within 120 s");
    drop(eventloop);
    nats.restart().await;
    let js = nats.jetstream().await;
    let filter = "owntracks.weasleys.jane.phone.location";
    let stored = async || -> BTreeSet<i64> {
        envelopes(&js, filter)
            .await
            .iter()
            .map(|(_, e)| e["message"]["tst"].as_i64().unwrap() - base)
            .collect()
    };
    // Everything PUBACKed, then a quiet second for what may still come.
    eventually(
        "every PUBACKed fix on OWNTRACKS",
        Duration::from_secs(60),
        async || acked.is_subset(&stored().await).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = stored().await;
    println!(
        "SIGKILL at the {KILL_AT}th PUBACK: {} PUBACKed, {} on OWNTRACKS, {} of them without a PUBACK seen",
        acked.len(),
        stored.len(),
        stored.difference(&acked).count()
    );
    assert_eq!(
        envelopes(&js, filter).await.len(),
        stored.len(),
        "a fix stored twice"
    );
}

/// Phones on two nodes of a three-node cluster, two ingests (each its own
/// durable); a phone's node is killed and restarted mid-way. Everything
/// PUBACKed is on OWNTRACKS once. (Not always in each phone's order: what
/// ingest publishes while an OWNTRACKS leader is elected is retried, and
/// the retries land in any order, as through mosquitto; docs/deploy.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_on_two_nodes_with_one_killed() {
    const N: i64 = 20;
    let mut cluster = NatsCluster::start_phones().await;
    let config = format!("{CONFIG}\n[streams]\nreplicas = 3\n");
    let start = async |instance: &str| {
        Service::start_with(
            "ingest",
            &cluster.urls_as("ingest"),
            "mqtt://127.0.0.1:1",
            &config,
            &[
                ("INGEST_NO_MQTT", "true"),
                ("WHEREABOUTS_INSTANCE", instance),
            ],
        )
        .await
    };
    let _a = start("a").await;
    let _b = start("b").await;
    let js = cluster.jetstream().await;

    let base = time::OffsetDateTime::now_utc().unix_timestamp() - 1000;
    let jane = MqttPublisher::connect(&cluster.mqtt_url(0, "jane"), "jane-phone").await;
    let bob = MqttPublisher::connect(&cluster.mqtt_url(1, "bob"), "bob-phone").await;
    for i in 0..N / 2 {
        jane.publish("owntracks/jane/phone", location(base + i))
            .await;
        bob.publish("owntracks/bob/phone", location(base + i)).await;
    }
    // Bob's node dies; jane carries on through hers, bob after the restart
    // (his persistent session lives in JetStream).
    cluster.kill(1);
    for i in N / 2..N {
        jane.publish("owntracks/jane/phone", location(base + i))
            .await;
    }
    cluster.restart(1).await;
    for i in N / 2..N {
        bob.publish("owntracks/bob/phone", location(base + i)).await;
    }
    // Counted from the stream's info: polling with a consumer each time
    // would pile up ephemeral consumers on a loaded cluster. While the
    // cluster elects leaders the info request may time out: that counts as
    // not there yet.
    let stored = async || match js.get_stream("OWNTRACKS").await {
        Ok(stream) => stream.get_info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored().await < 2 * N as u64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let want: BTreeSet<i64> = (0..N).map(|i| base + i).collect();
    for user in ["jane", "bob"] {
        let filter = format!("owntracks.weasleys.{user}.phone.location");
        let fixes: Vec<i64> = envelopes(&js, &filter)
            .await
            .iter()
            .map(|(_, e)| e["message"]["tst"].as_i64().unwrap())
            .collect();
        let stored: BTreeSet<i64> = fixes.iter().copied().collect();
        let missing: Vec<i64> = want.difference(&stored).map(|t| t - base).collect();
        println!(
            "{user}: stored in the order {:?}; missing {missing:?}",
            fixes.iter().map(|t| t - base).collect::<Vec<_>>()
        );
        assert_eq!(
            fixes.len(),
            stored.len(),
            "{user}: a fix stored twice: {fixes:?}"
        );
        assert!(
            missing.is_empty(),
            "{user}: PUBACKed fixes missing from OWNTRACKS: {missing:?}"
        );
    }
}

/// `whereabouts nats-phones` makes the phones' users from the config: a
/// phone logs in with its password (stored as a bcrypt hash) and its own
/// topics are stored; another user's topic is dropped by the server; a
/// wrong password is refused; a user without a password is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_phone_users_write_only_their_own_topics() {
    let config = format!(
        "{CONFIG}
[[households.weasleys.people]]
name = \"Jane\"
devices = [\"jane/phone\"]
[[households.weasleys.people]]
name = \"Bob\"
devices = [\"bob/phone\"]
[[households.weasleys.people]]
name = \"Ron\"
devices = [\"ron/phone\"]
"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("whereabouts.toml");
    std::fs::write(&file, &config).unwrap();
    let bin = whereabouts_tests::cargo_build(&["whereabouts-admin"]).join("whereabouts");
    let mut child = std::process::Command::new(bin)
        .args(["nats-phones", "--cost", "4"])
        .env("WHEREABOUTS_CONFIG", &file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run whereabouts nats-phones");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        for user in ["jane", "bob"] {
            writeln!(stdin, "{user} {}", phone_password(user)).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ron"), "{stderr}");
    let phones = String::from_utf8(output.stdout).unwrap();
    assert!(
        !phones.contains(&phone_password("jane")),
        "a plain password"
    );

    let nats = NatsServer::start_phones_with(&phones).await;
    let _ingest = Service::start_with(
        "ingest",
        &nats.url_as("ingest", deploy_password("ingest")),
        "mqtt://127.0.0.1:1",
        &config,
        &[("INGEST_NO_MQTT", "true")],
    )
    .await;
    let js = nats.jetstream().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let jane = MqttPublisher::connect(&nats.mqtt_url("jane"), "jane-phone").await;
    jane.publish("owntracks/jane/phone", location(now - 3))
        .await;
    // PUBACKed (MQTT 3.1.1 cannot refuse it) but dropped by the server.
    jane.publish("owntracks/bob/phone", location(now - 2)).await;
    jane.publish("owntracks/jane/phone", location(now - 1))
        .await;
    wait_envelopes(&js, "owntracks.weasleys.jane.phone.location", 2).await;
    assert!(
        envelopes(&js, "owntracks.weasleys.bob.>").await.is_empty(),
        "jane wrote bob's topic"
    );

    for (user, password) in [("jane", "wrong"), ("ron", "ron-mqtt-password")] {
        let mut options = MqttOptions::new(format!("{user}-x"), "127.0.0.1", nats.mqtt_port());
        options.set_credentials(user, password);
        let (_client, mut eventloop) = AsyncClient::new(options, 10);
        let refused = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .expect("an answer to CONNECT");
        assert!(refused.is_err(), "{user} logged in with {password:?}");
    }
}
