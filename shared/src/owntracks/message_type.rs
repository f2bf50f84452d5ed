//! The `_type` table: every message type the apps send, and which of its
//! fields are numbers or times (normalised before anything reads them).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Location,
    Transition,
    Lwt,
    Waypoint,
    Waypoints,
    Card,
    Status,
    Steps,
    Beacon,
    Cmd,
    Dump,
    Request,
    Configuration,
    Encrypted,
}

impl MessageType {
    pub const ALL: [MessageType; 14] = [
        MessageType::Location,
        MessageType::Transition,
        MessageType::Lwt,
        MessageType::Waypoint,
        MessageType::Waypoints,
        MessageType::Card,
        MessageType::Status,
        MessageType::Steps,
        MessageType::Beacon,
        MessageType::Cmd,
        MessageType::Dump,
        MessageType::Request,
        MessageType::Configuration,
        MessageType::Encrypted,
    ];

    /// The type a `_type` value names (exact, case-sensitive, as the apps).
    pub(crate) fn from_type(value: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Location => "location",
            MessageType::Transition => "transition",
            MessageType::Lwt => "lwt",
            MessageType::Waypoint => "waypoint",
            MessageType::Waypoints => "waypoints",
            MessageType::Card => "card",
            MessageType::Status => "status",
            MessageType::Steps => "steps",
            MessageType::Beacon => "beacon",
            MessageType::Cmd => "cmd",
            MessageType::Dump => "dump",
            MessageType::Request => "request",
            MessageType::Configuration => "configuration",
            MessageType::Encrypted => "encrypted",
        }
    }

    /// Fields that are numbers (a numeric string is converted).
    pub(super) fn number_fields(self) -> &'static [&'static str] {
        match self {
            MessageType::Location => &LOCATION_NUMBERS,
            MessageType::Transition => &TRANSITION_NUMBERS,
            MessageType::Waypoint => &WAYPOINT_NUMBERS,
            MessageType::Steps => &STEPS_NUMBERS,
            MessageType::Beacon => &BEACON_NUMBERS,
            _ => &[],
        }
    }

    /// Fields that are times (integer epoch seconds after normalisation).
    pub(super) fn time_fields(self) -> &'static [&'static str] {
        match self {
            MessageType::Steps | MessageType::Cmd => &TIMES_WITH_PERIOD,
            _ => &TIMES,
        }
    }
}

/// Time fields on every type: integer epoch seconds after normalisation.
const TIMES: [&str; 3] = ["tst", "wtst", "created_at"];
/// Steps and `cmd reportSteps` also carry a period.
const TIMES_WITH_PERIOD: [&str; 5] = ["tst", "wtst", "created_at", "from", "to"];

const LOCATION_NUMBERS: [&str; 11] = [
    "lat", "lon", "acc", "alt", "batt", "bs", "cog", "vac", "vel", "p", "m",
];
const TRANSITION_NUMBERS: [&str; 3] = ["lat", "lon", "acc"];
const WAYPOINT_NUMBERS: [&str; 5] = ["lat", "lon", "rad", "major", "minor"];
const STEPS_NUMBERS: [&str; 4] = ["steps", "distance", "floorsup", "floorsdown"];
const BEACON_NUMBERS: [&str; 5] = ["acc", "prox", "rssi", "major", "minor"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_type(t.as_str()), Some(t));
        }
    }
}
