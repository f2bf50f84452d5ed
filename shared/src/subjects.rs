//! Names of the public NATS contract: streams, subjects, KV bucket and keys.
//! Every name part goes through [`crate::token::encode`].

use crate::token::encode;

pub const OWNTRACKS_STREAM: &str = "OWNTRACKS";
pub const REJECTED_STREAM: &str = "REJECTED";
pub const PRESENCE_STREAM: &str = "PRESENCE";
pub const PRESENCE_BUCKET: &str = "presence";
/// Coordinates presence keeps to itself (`share = "place"` people).
pub const POSITIONS_BUCKET: &str = "positions";
pub const COMMANDS_SERVICE: &str = "whereabouts-commands";
/// What phones published when asked (`waypoints`, `status`, `dump`).
pub const PHONES_BUCKET: &str = "phones";
/// nats-server's store of the QoS 1 messages its MQTT listener received, in
/// the phones' account (`[ingest.nats_mqtt]`; raw payloads, not part of
/// the contract's data, only its names). A message is in it before the
/// phone gets its PUBACK.
pub const MQTT_MSGS_STREAM: &str = "$MQTT_msgs";
/// The subjects of `$MQTT_msgs`: `$MQTT.msgs.<topic as a subject>`.
pub const MQTT_MSGS_PREFIX: &str = "$MQTT.msgs";
/// ingest's durable consumer on `$MQTT_msgs`; `-<instance>` appended with
/// `WHEREABOUTS_INSTANCE`. Reserved: every `ingest-nats-mqtt*` name.
pub const NATS_MQTT_DURABLE: &str = "ingest-nats-mqtt";

/// Header carrying the short reason code on `rejected.>`.
pub const REASON_HEADER: &str = "Whereabouts-Reason";
/// Placeholder token where a name is unknown (only on `rejected.>`).
const UNKNOWN: &str = "_";

/// `owntracks.<household>.<user>.<device>.<type>`
pub fn owntracks(household: &str, user: &str, device: &str, kind: &str) -> String {
    format!(
        "owntracks.{}.{}.{}.{}",
        encode(household),
        encode(user),
        encode(device),
        kind
    )
}

/// `rejected.<household>.<user>.<device>`, `_` for the parts not known.
pub fn rejected(household: Option<&str>, user: Option<&str>, device: Option<&str>) -> String {
    let part = |p: Option<&str>| p.map(encode).unwrap_or_else(|| UNKNOWN.to_string());
    format!(
        "rejected.{}.{}.{}",
        part(household),
        part(user),
        part(device)
    )
}

/// `presence.<household>.<person>`
pub fn presence(household: &str, person: &str) -> String {
    format!("presence.{}.{}", encode(household), encode(person))
}

/// `presence.<household>.>`: every person of one household.
pub fn presence_household(household: &str) -> String {
    format!("presence.{}.>", encode(household))
}

/// KV key of a person: `<household>.person.<person>`.
pub fn person_key(household: &str, person: &str) -> String {
    format!("{}.person.{}", encode(household), encode(person))
}

/// KV key of a device: `<household>.device.<user>.<device>`.
pub fn device_key(household: &str, user: &str, device: &str) -> String {
    format!(
        "{}.device.{}.{}",
        encode(household),
        encode(user),
        encode(device)
    )
}

/// `phones` KV key of a device's last reply of `kind` (`waypoints`,
/// `status`, `dump`): `<household>.<user>.<device>.<kind>`.
pub fn phone_reply_key(household: &str, user: &str, device: &str, kind: &str) -> String {
    format!(
        "{}.{}.{}.{kind}",
        encode(household),
        encode(user),
        encode(device)
    )
}

/// Key of a device in the `positions` bucket: `<household>.<user>.<device>`.
pub fn positions_key(household: &str, user: &str, device: &str) -> String {
    format!("{}.{}.{}", encode(household), encode(user), encode(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_encode_every_name() {
        assert_eq!(
            owntracks("weasleys", "jane.doe", "My Phone", "location"),
            "owntracks.weasleys.jane_2Edoe.My_20Phone.location"
        );
        assert_eq!(rejected(None, Some("a"), None), "rejected._.a._");
        assert_eq!(presence("w", "Jörg"), "presence.w.J_C3_B6rg");
        assert_eq!(device_key("w", "u.x", "d"), "w.device.u_2Ex.d");
        assert_eq!(person_key("w", "Harry Potter"), "w.person.Harry_20Potter");
    }
}
