//! The way back to the phones: the `whereabouts-commands` NATS service sends
//! `cmd`s over MQTT (encrypted where the device has a secret) and queues
//! them for HTTP-mode devices.

use std::time::Duration;

use serde_json::{Value, json};
use whereabouts_tests::{
    Mosquitto, MqttSubscriber, NatsServer, Service, eventually, stream_messages,
};

const CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "harry"
device = "phone"
secret = "expelliarmus"

[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120
"#;

async fn request(client: &async_nats::Client, endpoint: &str, body: Value) -> async_nats::Message {
    client
        .request(
            format!("whereabouts.commands.{endpoint}"),
            body.to_string().into(),
        )
        .await
        .expect("the commands service answers")
}

#[tokio::test]
async fn commands_reach_mqtt_and_http_mode_devices() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), CONFIG).await;
    let client = nats.client().await;
    let mut phone = MqttSubscriber::connect(
        &mosquitto.url(),
        "harry-phone",
        true,
        &["owntracks/+/+/cmd"],
    )
    .await;

    // MQTT: encrypted with the device's secret, on the device's cmd topic.
    let answer = request(
        &client,
        "report-location",
        json!({"household":"weasleys","user":"harry","device":"phone"}),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["topic"], "owntracks/harry/phone/cmd");
    assert_eq!(answer["encrypted"], true);
    let received = phone
        .recv(Duration::from_secs(5))
        .await
        .expect("a cmd for harry");
    assert_eq!(received.topic, "owntracks/harry/phone/cmd");
    let outer: Value = serde_json::from_slice(&received.payload).unwrap();
    assert_eq!(outer["_type"], "encrypted");
    let plain = shared::crypto::decrypt(outer["data"].as_str().unwrap(), "expelliarmus").unwrap();
    let cmd: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(cmd, json!({"_type":"cmd","action":"reportLocation"}));

    // The cmd also passes through ingest like any message, decrypted.
    let js = nats.jetstream().await;
    eventually(
        "the cmd on OWNTRACKS",
        Duration::from_secs(10),
        async || {
            let got = stream_messages(&js, "OWNTRACKS", "owntracks.weasleys.harry.phone.cmd").await;
            got.first()
                .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        },
    )
    .await;

    // HTTP mode: the household's regions, queued for jane's next POST.
    let answer = request(
        &client,
        "set-waypoints",
        json!({"household":"weasleys","user":"jane","device":"phone"}),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["queued_for_http"], true);
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/pub", ingest.url()))
            .basic_auth("jane", Some("s3cret"))
            .header("X-Limit-U", "jane")
            .header("X-Limit-D", "phone")
            .body(
                json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":1_700_000_000}).to_string(),
            )
            .send()
    };
    let body: Vec<Value> = post().await.unwrap().json().await.unwrap();
    let cmd = body
        .iter()
        .find(|m| m["_type"] == "cmd")
        .expect("the queued command");
    assert_eq!(cmd["action"], "setWaypoints");
    let waypoints = cmd["waypoints"]["waypoints"].as_array().unwrap();
    assert_eq!(waypoints.len(), 1);
    assert_eq!(waypoints[0]["desc"], "Home");
    assert_eq!(waypoints[0]["rad"], 120);
    // Taken once: the next POST has no command.
    let again: Vec<Value> = post().await.unwrap().json().await.unwrap();
    assert!(again.iter().all(|m| m["_type"] != "cmd"));

    // Bad requests get an error, and the service keeps serving.
    for (endpoint, body) in [
        (
            "send",
            json!({"household":"weasleys","user":"harry","device":"phone","command":{"_type":"cmd","action":"selfDestruct"}}),
        ),
        ("send", json!({"household":"weasleys","user":"harry"})),
        (
            "set-waypoints",
            json!({"household":"nobody","user":"x","device":"y"}),
        ),
    ] {
        let reply = request(&client, endpoint, body).await;
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.to_string());
        assert_eq!(
            code.as_deref(),
            Some("400"),
            "{endpoint}: {:?}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    let reply = request(&client, "send", json!({"household":"weasleys","user":"harry","device":"phone","command":{"_type":"cmd","action":"dump"}})).await;
    assert!(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .is_none()
    );
}

/// A request may reach only a device of the household it names: a client
/// allowed to command one household cannot make another's phones run a
/// `cmd` by naming its own household with a stranger's device.
#[tokio::test]
async fn a_request_for_a_device_of_another_household_is_refused() {
    const TWO: &str = r#"
[ingest]
default_household = "weasleys"
user_households = { hermione = "grangers" }

[households.weasleys]
places = ["Home"]

[households.grangers]
places = ["Home"]
"#;
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), TWO).await;
    let client = nats.client().await;
    let mut phones = MqttSubscriber::connect(
        &mosquitto.url(),
        "cmd-watcher",
        true,
        &["owntracks/+/+/cmd"],
    )
    .await;
    let error_code = |reply: &async_nats::Message| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.to_string())
    };

    for body in [
        // hermione's phone, asked for as if it were a Weasley device …
        json!({"household":"weasleys","user":"hermione","device":"phone"}),
        // … harry's, as if it were a Granger one …
        json!({"household":"grangers","user":"harry","device":"phone"}),
        // … and a household that does not exist.
        json!({"household":"malfoys","user":"harry","device":"phone"}),
    ] {
        let reply = request(&client, "report-location", body.clone()).await;
        assert_eq!(
            error_code(&reply).as_deref(),
            Some("400"),
            "{body}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    assert!(
        phones.recv(Duration::from_secs(1)).await.is_none(),
        "a refused request sent nothing to any phone"
    );
    assert!(
        ingest.log().contains("command request refused"),
        "each refusal is logged"
    );

    // The right household for the same device is served.
    let reply = request(
        &client,
        "report-location",
        json!({"household":"grangers","user":"hermione","device":"phone"}),
    )
    .await;
    assert_eq!(error_code(&reply), None);
    let sent = phones
        .recv(Duration::from_secs(5))
        .await
        .expect("hermione's phone gets the command");
    assert_eq!(sent.topic, "owntracks/hermione/phone/cmd");
}
