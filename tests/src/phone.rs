//! A scripted OwnTracks phone over MQTT: transitions on `<base>/event`,
//! locations on the base topic, fix times that never go back.

use serde_json::json;

use crate::MqttPublisher;

pub struct Phone {
    mqtt: MqttPublisher,
    /// `owntracks/<user>/<device>`.
    topic: String,
    tst: i64,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Phone {
    pub async fn connect(mqtt_url: &str, user: &str, device: &str) -> Phone {
        Phone {
            mqtt: MqttPublisher::connect(mqtt_url, &format!("{user}-{device}")).await,
            topic: format!("owntracks/{user}/{device}"),
            tst: 0,
        }
    }

    /// Now, or one second after the last fix if that is later.
    fn next_tst(&mut self) -> i64 {
        self.tst = now().max(self.tst + 1);
        self.tst
    }

    /// `enter` or `leave` a region, as the apps report it (`acc: 0` too).
    pub async fn transition(&mut self, event: &str, desc: &str) {
        let payload = json!({"_type":"transition","event":event,"desc":desc,"tst":self.next_tst(),
            "acc":0,"lat":51.5,"lon":-0.12,"t":"c"});
        self.mqtt
            .publish(&format!("{}/event", self.topic), payload.to_string())
            .await;
    }

    /// A fix at `lat`/`lon`, standing still, in `inregions`.
    pub async fn location(&mut self, lat: f64, lon: f64, inregions: &[&str]) {
        let payload = json!({"_type":"location","lat":lat,"lon":lon,"acc":12,"vel":0,"batt":80,
            "tst":self.next_tst(),"inregions":inregions});
        self.mqtt.publish(&self.topic, payload.to_string()).await;
    }

    /// A fix `age_s` seconds old (a queued message flushed late).
    pub async fn old_location(&mut self, age_s: i64, inregions: &[&str]) {
        let payload = json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":12,"vel":0,
            "batt":80,"tst":now() - age_s,"inregions":inregions});
        self.mqtt.publish(&self.topic, payload.to_string()).await;
    }
}
