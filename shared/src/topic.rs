//! MQTT topic patterns: `owntracks/{user}/{device}` (default) or
//! `owntracks/{household}/{user}/{device}`, one or several at once (so a
//! household can move its phones to its own namespace one by one). Levels
//! after the pattern are the suffix (`event`, `info`, `cmd`, …), and which
//! message type each suffix takes. Also the NATS subject nats-server's
//! MQTT listener gives a topic ([`nats_subject`]).

use thiserror::Error;

use crate::owntracks::MessageType;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Household,
    User,
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("the pattern must contain {{user}} and {{device}} once each")]
    MissingPlaceholder,
    #[error("level {0:?} is neither a literal nor a single placeholder")]
    BadLevel(String),
    #[error("no topic pattern")]
    Empty,
}

/// The names a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMatch {
    pub household: Option<String>,
    pub user: String,
    pub device: String,
    /// Levels after the pattern joined by `/`; `None` on the base topic.
    pub suffix: Option<String>,
}

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let mut levels = Vec::new();
        for level in pattern.split('/') {
            levels.push(match level {
                "{household}" => Level::Household,
                "{user}" => Level::User,
                "{device}" => Level::Device,
                l if l.is_empty() || l.contains(['{', '}', '+', '#']) => {
                    return Err(PatternError::BadLevel(l.to_string()));
                }
                l => Level::Literal(l.to_string()),
            });
        }
        let count = |want: &Level| levels.iter().filter(|l| *l == want).count();
        if count(&Level::User) != 1 || count(&Level::Device) != 1 || count(&Level::Household) > 1 {
            return Err(PatternError::MissingPlaceholder);
        }
        Ok(TopicPattern { levels })
    }

    pub fn has_household(&self) -> bool {
        self.levels.contains(&Level::Household)
    }

    /// The MQTT subscription that covers the base topics and every suffix.
    /// (`a/+/+/#` matches `a/x/y` too.)
    pub fn subscription(&self) -> String {
        let mut parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                _ => "+",
            })
            .collect();
        parts.push("#");
        parts.join("/")
    }

    /// Splits a topic into its names; `None` when it does not fit the pattern.
    pub fn match_topic(&self, topic: &str) -> Option<TopicMatch> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() < self.levels.len() {
            return None;
        }
        let (mut household, mut user, mut device) = (None, None, None);
        for (level, part) in self.levels.iter().zip(&parts) {
            match level {
                Level::Literal(s) if s == part => {}
                Level::Literal(_) => return None,
                _ if part.is_empty() => return None,
                Level::Household => household = Some(part.to_string()),
                Level::User => user = Some(part.to_string()),
                Level::Device => device = Some(part.to_string()),
            }
        }
        let rest = &parts[self.levels.len()..];
        Some(TopicMatch {
            household,
            user: user?,
            device: device?,
            suffix: (!rest.is_empty()).then(|| rest.join("/")),
        })
    }

    /// The base topic of a device, e.g. to publish a `cmd` to it.
    pub fn topic_for(&self, household: &str, user: &str, device: &str) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Household => household,
                Level::User => user,
                Level::Device => device,
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Several patterns accepted at once, in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPatterns {
    patterns: Vec<TopicPattern>,
}

impl TopicPatterns {
    /// Parses a non-empty list of patterns.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, PatternError> {
        let patterns = list
            .iter()
            .map(|p| TopicPattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err(PatternError::Empty);
        }
        Ok(TopicPatterns { patterns })
    }

    pub fn iter(&self) -> impl Iterator<Item = &TopicPattern> {
        self.patterns.iter()
    }

    /// The first pattern: the one HTTP mode builds its topics with, and
    /// where a device not seen yet gets its commands.
    pub fn primary(&self) -> &TopicPattern {
        &self.patterns[0]
    }

    /// The first pattern with a `{household}` level.
    pub fn household_pattern(&self) -> Option<&TopicPattern> {
        self.patterns.iter().find(|p| p.has_household())
    }

    /// Whether every pattern names the household.
    pub fn all_have_household(&self) -> bool {
        self.patterns.iter().all(TopicPattern::has_household)
    }

    /// The MQTT subscriptions covering every pattern, without one that
    /// another covers (`owntracks/+/+/#` covers `owntracks/+/+/+/#`): with
    /// overlapping subscriptions a broker may deliver a message twice.
    pub fn subscriptions(&self) -> Vec<String> {
        let all: Vec<String> = self
            .patterns
            .iter()
            .map(TopicPattern::subscription)
            .collect();
        let mut out: Vec<String> = Vec::new();
        for (i, filter) in all.iter().enumerate() {
            let covered = all.iter().enumerate().any(|(j, other)| {
                j != i && filter_covers(other, filter) && (!filter_covers(filter, other) || j < i)
            });
            if !covered && !out.contains(filter) {
                out.push(filter.clone());
            }
        }
        out
    }

    /// Splits a topic by the first pattern that fits it plausibly: its
    /// household (if the topic names one) is accepted by `accepts_household`
    /// and its suffix is none or a known one. Without a plausible fit, the
    /// first pattern that fits at all (the classifier then says what is
    /// wrong). Returns the pattern too.
    pub fn match_topic(
        &self,
        topic: &str,
        accepts_household: impl Fn(&str) -> bool,
    ) -> Option<(&TopicPattern, TopicMatch)> {
        let mut fits = self
            .patterns
            .iter()
            .filter_map(|p| p.match_topic(topic).map(|m| (p, m)));
        let first = fits.next()?;
        let plausible = |m: &TopicMatch| {
            m.household.as_deref().is_none_or(&accepts_household)
                && m.suffix.as_deref().is_none_or(is_known_suffix)
        };
        if plausible(&first.1) {
            return Some(first);
        }
        Some(fits.find(|(_, m)| plausible(m)).unwrap_or(first))
    }
}

/// Whether MQTT filter `a` matches every topic filter `b` matches.
fn filter_covers(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// The suffixes the apps publish on (see [`fits_suffix`]).
pub fn is_known_suffix(suffix: &str) -> bool {
    expected_kind(suffix).is_some()
}

fn expected_kind(suffix: &str) -> Option<MessageType> {
    Some(match suffix {
        "event" => MessageType::Transition,
        "info" => MessageType::Card,
        "waypoint" => MessageType::Waypoint,
        "waypoints" => MessageType::Waypoints,
        "status" => MessageType::Status,
        "cmd" => MessageType::Cmd,
        "dump" => MessageType::Dump,
        "step" => MessageType::Steps,
        "beacon" => MessageType::Beacon,
        "request" => MessageType::Request,
        _ => return None,
    })
}

/// Whether a message of `kind` belongs on a topic with `suffix` (`None`: the
/// base topic). Known suffixes take one type; the base topic takes anything
/// but `cmd` (iOS publishes cards there too); unknown suffixes take anything.
/// `Encrypted` fits everywhere: check again after decryption.
pub fn fits_suffix(suffix: Option<&str>, kind: MessageType) -> bool {
    if kind == MessageType::Encrypted {
        return true;
    }
    let Some(suffix) = suffix else {
        return kind != MessageType::Cmd;
    };
    expected_kind(suffix).is_none_or(|expected| kind == expected)
}

/// The NATS subject nats-server's MQTT listener gives an MQTT topic or
/// filter: each level a token, a `.` inside a level `//`, an empty level
/// `/`, and the wildcards `+` and `#` as `*` and `>`.
pub fn nats_subject(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| match level {
            "" => "/".to_string(),
            "+" => "*".to_string(),
            "#" => ">".to_string(),
            level => level.replace('.', "//"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern() {
        let p = TopicPattern::parse("owntracks/{user}/{device}").unwrap();
        assert_eq!(p.subscription(), "owntracks/+/+/#");
        let m = p.match_topic("owntracks/jane/phone/event").unwrap();
        assert_eq!((m.user.as_str(), m.device.as_str()), ("jane", "phone"));
        assert_eq!(m.suffix.as_deref(), Some("event"));
        assert_eq!(m.household, None);
        assert_eq!(p.match_topic("owntracks/jane/phone").unwrap().suffix, None);
        assert_eq!(p.match_topic("owntracks/jane"), None);
        assert_eq!(p.match_topic("other/jane/phone"), None);
        assert_eq!(p.match_topic("owntracks//phone"), None);
        assert_eq!(p.topic_for("h", "jane", "phone"), "owntracks/jane/phone");
    }

    #[test]
    fn household_pattern() {
        let p = TopicPattern::parse("owntracks/{household}/{user}/{device}").unwrap();
        assert!(p.has_household());
        let m = p
            .match_topic("owntracks/weasleys/ron/Ron's phone/info")
            .unwrap();
        assert_eq!(m.household.as_deref(), Some("weasleys"));
        assert_eq!(m.device, "Ron's phone");
        assert_eq!(m.suffix.as_deref(), Some("info"));
    }

    #[test]
    fn bad_patterns() {
        assert!(TopicPattern::parse("owntracks/{user}").is_err());
        assert!(TopicPattern::parse("owntracks/{user}/{user}/{device}").is_err());
        assert!(TopicPattern::parse("owntracks/+/{user}/{device}").is_err());
        assert!(TopicPattern::parse("owntracks/x{user}/{device}").is_err());
    }

    #[test]
    fn several_patterns_old_and_household() {
        let p = TopicPatterns::parse(&[
            "owntracks/{user}/{device}",
            "owntracks/{household}/{user}/{device}",
        ])
        .unwrap();
        // One subscription covers both: no duplicate deliveries.
        assert_eq!(p.subscriptions(), ["owntracks/+/+/#"]);
        let known = |h: &str| h == "weasleys";
        let (pattern, m) = p.match_topic("owntracks/harry/phone", known).unwrap();
        assert!(!pattern.has_household());
        assert_eq!((m.user.as_str(), m.device.as_str()), ("harry", "phone"));
        let (_, m) = p.match_topic("owntracks/harry/phone/event", known).unwrap();
        assert_eq!(m.suffix.as_deref(), Some("event"));
        // A household's namespace: the old pattern would read an unknown
        // suffix, so the household pattern wins.
        let (pattern, m) = p
            .match_topic("owntracks/weasleys/harry/phone", known)
            .unwrap();
        assert!(pattern.has_household());
        assert_eq!(m.household.as_deref(), Some("weasleys"));
        assert_eq!((m.user.as_str(), m.device.as_str()), ("harry", "phone"));
        let (_, m) = p
            .match_topic("owntracks/weasleys/harry/phone/event", known)
            .unwrap();
        assert_eq!(m.suffix.as_deref(), Some("event"));
        // Neither fits plausibly: the first fit, as with one pattern.
        let (pattern, m) = p.match_topic("owntracks/nobody/x/y", known).unwrap();
        assert!(!pattern.has_household());
        assert_eq!(m.suffix.as_deref(), Some("y"));
        assert!(p.match_topic("elsewhere/a/b", known).is_none());
        assert!(TopicPatterns::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn disjoint_patterns_keep_their_subscriptions() {
        let p =
            TopicPatterns::parse(&["a/{user}/{device}", "b/{household}/{user}/{device}"]).unwrap();
        assert_eq!(p.subscriptions(), ["a/+/+/#", "b/+/+/+/#"]);
        let p =
            TopicPatterns::parse(&["a/{household}/{user}/{device}", "a/{user}/{device}"]).unwrap();
        assert_eq!(p.subscriptions(), ["a/+/+/#"]);
        assert!(filter_covers("a/+/#", "a/b/c/#"));
        assert!(!filter_covers("a/b/#", "a/+/#"));
    }

    #[test]
    fn suffixes() {
        use MessageType::*;
        let cases: &[(Option<&str>, MessageType, bool)] = &[
            (None, Location, true),
            (None, Card, true),
            (None, Lwt, true),
            (None, Cmd, false),
            (None, Encrypted, true),
            (Some("event"), Transition, true),
            (Some("event"), Location, false),
            (Some("event"), Encrypted, true),
            (Some("info"), Card, true),
            (Some("info"), Location, false),
            (Some("waypoint"), Waypoint, true),
            (Some("waypoints"), Waypoints, true),
            (Some("waypoints"), Waypoint, false),
            (Some("status"), Status, true),
            (Some("cmd"), Cmd, true),
            (Some("cmd"), Location, false),
            (Some("dump"), Dump, true),
            (Some("step"), Steps, true),
            (Some("beacon"), Beacon, true),
            (Some("request"), Request, true),
            (Some("request"), Cmd, false),
            (Some("whatever/else"), Location, true),
        ];
        for (suffix, kind, fits) in cases {
            assert_eq!(fits_suffix(*suffix, *kind), *fits, "{suffix:?} {kind:?}");
        }
    }
}
