//! Why a payload is rejected: a closed set of reasons (the
//! `Whereabouts-Reason` header and the metric label) with a detail.

/// Why a payload was rejected: the `Whereabouts-Reason` header's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidJson,
    UnknownType,
    MissingField,
    InvalidField,
    DecryptFailed,
    TopicMismatch,
    TooLarge,
    /// A topic level (household, user, device) longer than
    /// [`crate::limits::MAX_TOPIC_LEVEL_BYTES`]: cutting it could merge two identities.
    NameTooLong,
    /// A household the config does not know (and does not allow).
    UnknownHousehold,
    /// Plaintext from a device that must encrypt (it has a `secret`).
    PlaintextRefused,
    /// Accepted, but JetStream refused to store it for good (e.g. over the
    /// server's `max_payload`); kept on `rejected.>` instead.
    StoreRefused,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::InvalidJson,
        Reason::UnknownType,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::DecryptFailed,
        Reason::TopicMismatch,
        Reason::TooLarge,
        Reason::NameTooLong,
        Reason::UnknownHousehold,
        Reason::PlaintextRefused,
        Reason::StoreRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownType => "unknown_type",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::DecryptFailed => "decrypt_failed",
            Reason::TopicMismatch => "topic_mismatch",
            Reason::TooLarge => "too_large",
            Reason::NameTooLong => "name_too_long",
            Reason::UnknownHousehold => "unknown_household",
            Reason::PlaintextRefused => "plaintext_refused",
            Reason::StoreRefused => "store_refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid_json",
                "unknown_type",
                "missing_field",
                "invalid_field",
                "decrypt_failed",
                "topic_mismatch",
                "too_large",
                "name_too_long",
                "unknown_household",
                "plaintext_refused",
                "store_refused"
            ]
        );
    }
}
