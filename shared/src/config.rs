//! Configuration: one TOML file (`WHEREABOUTS_CONFIG`) for all three services.
//! Without a file, a one-household default serves. See
//! `whereabouts.example.toml` for every key, commented.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::limits::MAX_TOPIC_LEVEL_BYTES;
use crate::state::EventKind;
use crate::topic::TopicPatterns;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default = "default_households")]
    pub households: BTreeMap<String, Household>,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub notifier: NotifierConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ingest: IngestConfig::default(),
            households: default_households(),
            presence: PresenceConfig::default(),
            notifier: NotifierConfig::default(),
            streams: StreamsConfig::default(),
        }
    }
}

pub const DEFAULT_HOUSEHOLD: &str = "home";

fn default_households() -> BTreeMap<String, Household> {
    // The built-in household has no token: public, and served on loopback
    // only (`crate::exposure`).
    let home = Household {
        public: true,
        ..Household::default()
    };
    BTreeMap::from([(DEFAULT_HOUSEHOLD.to_string(), home)])
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `owntracks/{user}/{device}` or `owntracks/{household}/{user}/{device}`.
    pub topic_pattern: String,
    /// Several patterns at once, instead of `topic_pattern`: a household
    /// moves its phones to `owntracks/{household}/{user}/{device}` one by
    /// one while the others keep the old topics. Empty: `topic_pattern`.
    pub topic_patterns: Vec<String>,
    /// The household of every user when the pattern has no `{household}`.
    pub default_household: String,
    /// Per-user households, overriding `default_household`.
    pub user_households: BTreeMap<String, String>,
    /// MQTT client id; stable so the broker keeps the session across restarts.
    pub client_id: String,
    /// Payloads above this size are rejected as `too_large`.
    pub max_payload_bytes: usize,
    /// Reverse proxies in front of HTTP mode: from these addresses the
    /// client address (for the wrong-password lockout) is taken from
    /// `X-Forwarded-For`, so one stranger cannot lock out everyone.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// HTTP-mode credentials and encryption secrets.
    pub devices: Vec<DeviceEntry>,
    /// Whether a household named by a `{household}` topic level but absent
    /// from `[households]` is accepted. Off: such messages are rejected as
    /// `unknown_household` (anyone able to publish could otherwise invent
    /// households, people and events).
    pub allow_unknown_households: bool,
    /// Phones on nats-server's own MQTT listener, a second source beside
    /// the mosquitto bridge (`[ingest.nats_mqtt]`; absent: off).
    pub nats_mqtt: Option<NatsMqttConfig>,
}

/// The phones' account on nats-server's MQTT listener, as the application
/// account sees it (`deploy/nats-server-mqtt.conf` makes both sides).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsMqttConfig {
    /// The phones' `owntracks.>` is imported as `<prefix>.owntracks.>`:
    /// ingest reads their QoS 0 publishes there.
    pub prefix: String,
    /// `cmd`s are published on `<cmd_prefix>.<topic as a subject>`, which
    /// the phones' account maps onto its MQTT QoS 1 store.
    pub cmd_prefix: String,
    /// The phones' account's JetStream API, as imported into ours: ingest
    /// reads their QoS 1 publishes from its `$MQTT_msgs` stream.
    pub api_prefix: String,
    /// How long the phones' QoS 1 messages wait for an ingest instance
    /// that stopped reading; its durable is then removed.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for NatsMqttConfig {
    fn default() -> Self {
        NatsMqttConfig {
            prefix: "phones".into(),
            cmd_prefix: "phonecmd".into(),
            api_prefix: "$JS.phones.API".into(),
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

impl NatsMqttConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let token = |name: &str, value: &str| {
            let bad = value.is_empty()
                || value
                    .chars()
                    .any(|c| matches!(c, '.' | '*' | '>' | '$') || c.is_whitespace());
            if bad {
                bail!(
                    "ingest.nats_mqtt.{name} {value:?} must be one subject token (no '.', '*', '>', '$', spaces)"
                );
            }
            // The contract's own subjects would carry the phones' raw payloads.
            if ["owntracks", "rejected", "presence", "whereabouts"].contains(&value) {
                bail!("ingest.nats_mqtt.{name} {value:?} is one of the contract's subject roots");
            }
            Ok(())
        };
        token("prefix", &self.prefix)?;
        token("cmd_prefix", &self.cmd_prefix)?;
        if self.prefix == self.cmd_prefix {
            bail!("ingest.nats_mqtt: prefix and cmd_prefix must differ");
        }
        let api = &self.api_prefix;
        if api.is_empty()
            || api.contains(['*', '>'])
            || api.chars().any(char::is_whitespace)
            || api.split('.').any(str::is_empty)
            || api == "$JS.API"
        {
            bail!(
                "ingest.nats_mqtt.api_prefix {api:?} must be a subject without wildcards, and not our own \"$JS.API\""
            );
        }
        if self.max_age < Duration::from_secs(60) {
            bail!("ingest.nats_mqtt.max_age must be at least a minute");
        }
        Ok(())
    }
}

const DEFAULT_TOPIC_PATTERN: &str = "owntracks/{user}/{device}";

impl IngestConfig {
    /// The accepted topic patterns: `topic_patterns`, else `topic_pattern`.
    pub fn topic_patterns(&self) -> Vec<&str> {
        if self.topic_patterns.is_empty() {
            vec![self.topic_pattern.as_str()]
        } else {
            self.topic_patterns.iter().map(String::as_str).collect()
        }
    }

    /// The accepted topic patterns, parsed (checked when the config loads).
    pub fn patterns(&self) -> TopicPatterns {
        TopicPatterns::parse(&self.topic_patterns()).expect("validated with the config")
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            topic_pattern: DEFAULT_TOPIC_PATTERN.into(),
            topic_patterns: Vec::new(),
            default_household: DEFAULT_HOUSEHOLD.into(),
            user_households: BTreeMap::new(),
            client_id: "whereabouts-ingest".into(),
            max_payload_bytes: 512 * 1024,
            trusted_proxies: Vec::new(),
            devices: Vec::new(),
            allow_unknown_households: false,
            nats_mqtt: None,
        }
    }
}

/// One device's (or, without `device`, every device of a user's) credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    #[serde(default)]
    pub household: Option<String>,
    pub user: String,
    #[serde(default)]
    pub device: Option<String>,
    /// HTTP mode Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// OwnTracks payload encryption secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Whether plaintext from this device is refused (`plaintext_refused`).
    /// Default: on when the entry has a `secret`. LWTs are exempt: the apps
    /// fix them at connect time, unencrypted.
    #[serde(default)]
    pub require_encryption: Option<bool>,
}

impl DeviceEntry {
    /// Whether this device's plaintext messages (other than LWTs) are refused.
    pub fn requires_encryption(&self) -> bool {
        self.require_encryption
            .unwrap_or_else(|| self.secret.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Household {
    /// Bearer token granting this household only. None: open, which a
    /// service bound beyond loopback accepts only with `public = true`.
    pub token: Option<String>,
    /// Served without a token, deliberately (see `crate::exposure`).
    pub public: bool,
    /// Places in priority order; matched to region names case-insensitively.
    pub places: Vec<String>,
    pub labels: Labels,
    pub people: Vec<Person>,
    pub regions: Vec<Region>,
    /// Whether a device no person claims becomes a person named after its user.
    pub unmapped_devices_are_people: bool,
    /// IANA time zone (`Europe/London`) in which "today" is read, e.g. by
    /// `whereabouts history --day`. Default: UTC.
    pub time_zone: Option<String>,
}

impl Default for Household {
    fn default() -> Self {
        Household {
            token: None,
            public: false,
            places: vec!["Home".into(), "Work".into(), "School".into()],
            labels: Labels::default(),
            people: Vec::new(),
            regions: Vec::new(),
            unmapped_devices_are_people: true,
            time_zone: None,
        }
    }
}

/// Marks the id of an unmapped device's person whose user name is taken
/// (by a configured person's id) or itself starts with the mark.
pub const UNMAPPED_ID_MARK: char = '~';

impl Household {
    /// The id of the person a `user/device` belongs to: a configured person
    /// claiming the device, else (unless the household says otherwise) a
    /// person for the user. That id is the user name itself, unless a
    /// configured person has that id or the name starts with `~`: then it is
    /// `~` + the user name. Configured ids never start with `~`, so an
    /// unmapped device can never merge into a configured person, and two
    /// users never share an id.
    pub fn person_for(&self, user: &str, device: &str) -> Option<String> {
        let id = format!("{user}/{device}");
        self.people
            .iter()
            .find(|p| p.devices.iter().any(|d| d == &id))
            .map(|p| p.id().to_string())
            .or_else(|| {
                self.unmapped_devices_are_people
                    .then(|| self.unmapped_person_id(user))
            })
    }

    /// The person id of an unmapped device of `user` (see [`Self::person_for`]).
    pub fn unmapped_person_id(&self, user: &str) -> String {
        if user.starts_with(UNMAPPED_ID_MARK) || self.person(user).is_some() {
            format!("{UNMAPPED_ID_MARK}{user}")
        } else {
            user.to_string()
        }
    }

    /// The configured person with this id.
    pub fn person(&self, id: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.id() == id)
    }

    /// What a person shares: their configured `share`; an unconfigured
    /// person (an unmapped device) shares their position, as before.
    pub fn share(&self, id: &str) -> Share {
        self.person(id).map_or(Share::Position, |p| p.share)
    }

    /// The household's time zone (`time_zone`, checked at load), else UTC.
    pub fn tz(&self) -> jiff::tz::TimeZone {
        self.time_zone
            .as_deref()
            .and_then(|name| jiff::tz::TimeZone::get(name).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// The start of the household's day (midnight in its time zone) that
    /// contains `t`: where "today" begins for its timeline.
    pub fn day_start(&self, t: time::OffsetDateTime) -> time::OffsetDateTime {
        jiff::Timestamp::from_second(t.unix_timestamp())
            .and_then(|ts| ts.to_zoned(self.tz()).start_of_day())
            .ok()
            .and_then(|start| {
                time::OffsetDateTime::from_unix_timestamp(start.timestamp().as_second()).ok()
            })
            .unwrap_or(t)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Labels {
    pub traveling: String,
    pub away: String,
    pub lost: String,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            traveling: "Traveling".into(),
            away: "Away".into(),
            lost: "Lost".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Stable id: names the person's subject and KV key, so it must not
    /// change. Defaults to `name` (what the id was before ids existed, so
    /// stored state keeps working). Set it before renaming someone.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name; may change freely once `id` is set.
    pub name: String,
    /// `user/device` pairs.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Hand colour on the clock (CSS colour).
    #[serde(default)]
    pub color: Option<String>,
    /// What of this person leaves presence: their place and status only,
    /// or their position too (the default).
    #[serde(default)]
    pub share: Share,
    /// Whether HTTP-mode phones of the household get this person as a
    /// friend (their card and last location). A `place` person is never one.
    #[serde(default = "yes")]
    pub friends: bool,
}

fn yes() -> bool {
    true
}

impl Person {
    /// The stable id: `id`, else `name`.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// Whether HTTP-mode friends may see this person: `friends` and a
    /// shared position (a friend without a location cannot be drawn).
    pub fn visible_to_friends(&self) -> bool {
        self.friends && self.share == Share::Position
    }
}

/// What of a person leaves presence (docs/contract.md, "Privacy").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    /// Place, status and coordinates (`last_fix`) in events, state, sinks
    /// and HTTP-mode friends.
    #[default]
    Position,
    /// Place and status only: no coordinates leave presence.
    Place,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Metres.
    pub radius: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub traveling_kmh: f64,
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
    #[serde(with = "humantime_serde")]
    pub lwt_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub max_fix_age: Duration,
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// Server-side geofences: hysteresis margin in metres.
    pub geofence_margin: f64,
    /// Server-side geofences: how long a fix must stay inside before enter.
    #[serde(with = "humantime_serde")]
    pub geofence_dwell: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            traveling_kmh: 10.0,
            stale_after: Duration::from_secs(2 * 3600),
            lost_after: Duration::from_secs(6 * 3600),
            lwt_grace: Duration::from_secs(15 * 60),
            max_fix_age: Duration::from_secs(15 * 60),
            debounce: Duration::from_secs(60),
            geofence_margin: 25.0,
            geofence_dwell: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Origins allowed by CORS on the API; empty: same origin only; `*`: any.
    pub cors_origins: Vec<String>,
    /// Interval of SSE heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// SSE clients one household may hold open at once; more get 503.
    pub max_sse_clients_per_household: usize,
    /// Checked here for what all sinks share (unique names, event kinds);
    /// each kind's own settings by the notifier.
    pub sinks: Vec<SinkConfig>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            cors_origins: Vec::new(),
            heartbeat: Duration::from_secs(15),
            max_sse_clients_per_household: 100,
            sinks: Vec::new(),
        }
    }
}

/// One `[[notifier.sinks]]` entry. Only what every sink has lives here: its
/// `type`, its `name` and the filter. The other keys are the kind's own:
/// the notifier parses and checks them beside each sink's code, so that a
/// new sink needs no change here. Ingest and presence ignore sinks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "toml::Table", into = "toml::Table")]
pub struct SinkConfig {
    /// The sink's `type`: `webhook`, `mqtt`, … (the notifier knows them).
    pub kind: String,
    /// Unique among sinks: names the durable consumer. See [`Self::name`].
    pub name: Option<String>,
    pub filter: SinkFilter,
    /// The kind's own keys, as written.
    pub settings: toml::Table,
}

/// Which events a sink receives. Empty lists mean all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkFilter {
    pub households: Vec<String>,
    pub people: Vec<String>,
    pub kinds: Vec<EventKind>,
}

/// The setting names under which a sink keeps secrets, whatever its kind:
/// `crate::exposure` refuses published ones beyond loopback, so a sink's
/// secret must be named one of these.
pub const SINK_SECRET_KEYS: [&str; 4] = ["secret", "api_key", "token", "password"];

impl SinkConfig {
    /// The sink's name: `name`, else `<type>-<index>` (`index`: its place
    /// among the sinks).
    pub fn name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", self.kind))
    }

    /// The secrets among its settings (see [`SINK_SECRET_KEYS`]).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        SINK_SECRET_KEYS
            .iter()
            .filter_map(|key| self.settings.get(*key)?.as_str())
    }
}

impl TryFrom<toml::Table> for SinkConfig {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let mut string = |key: &str| match table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "`{key}` must be a string, not {}",
                other.type_str()
            )),
        };
        let kind = string("type")?.ok_or("a sink needs a `type`")?;
        let name = string("name")?;
        let sink = match &name {
            Some(name) => format!("sink {name:?}"),
            None => format!("a {kind} sink"),
        };
        let filter = SinkFilter {
            households: take_list(&mut table, "households", &sink)?,
            people: take_list(&mut table, "people", &sink)?,
            kinds: take_list(&mut table, "kinds", &sink)?,
        };
        Ok(SinkConfig {
            kind,
            name,
            filter,
            settings: table,
        })
    }
}

/// Removes the list `key` from a sink's table (empty if absent). Errors name
/// the sink: toml's own would point at the whole table.
fn take_list<T: serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    key: &str,
    sink: &str,
) -> Result<Vec<T>, String> {
    match table.remove(key) {
        None => Ok(Vec::new()),
        Some(value) => value
            .try_into()
            .map_err(|e: toml::de::Error| format!("{sink}: `{key}`: {}", e.message())),
    }
}

impl From<SinkConfig> for toml::Table {
    fn from(sink: SinkConfig) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("type".into(), sink.kind.into());
        if let Some(name) = sink.name {
            table.insert("name".into(), name.into());
        }
        let SinkFilter {
            households,
            people,
            kinds,
        } = sink.filter;
        let lists = [
            ("households", toml::Value::try_from(households)),
            ("people", toml::Value::try_from(people)),
            ("kinds", toml::Value::try_from(kinds)),
        ];
        for (key, value) in lists {
            match value.expect("lists of strings are TOML") {
                toml::Value::Array(items) if items.is_empty() => {}
                value => {
                    table.insert(key.into(), value);
                }
            }
        }
        table.extend(sink.settings);
        table
    }
}

/// Stream and bucket limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    #[serde(with = "humantime_serde")]
    pub owntracks_max_age: Duration,
    pub owntracks_max_bytes: i64,
    #[serde(with = "humantime_serde")]
    pub rejected_max_age: Duration,
    pub rejected_max_bytes: i64,
    #[serde(with = "humantime_serde")]
    pub presence_max_age: Duration,
    pub presence_max_bytes: i64,
    /// JetStream duplicate window for `Nats-Msg-Id`.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        StreamsConfig {
            owntracks_max_age: Duration::from_secs(30 * DAY),
            // JetStream reserves max_bytes up front: keep the defaults small
            // enough for a Raspberry Pi's SD card (1.6 GiB in all).
            owntracks_max_bytes: 1 << 30,
            rejected_max_age: Duration::from_secs(7 * DAY),
            rejected_max_bytes: 128 << 20,
            presence_max_age: Duration::from_secs(30 * DAY),
            presence_max_bytes: 512 << 20,
            duplicate_window: Duration::from_secs(10 * 60),
            replicas: 1,
        }
    }
}

impl Config {
    /// Reads and validates the TOML file at `path`, or the default without one.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                Config::from_toml(&text).with_context(|| format!("in config {}", path.display()))?
            }
        };
        Ok(config)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self.ingest.topic_patterns.is_empty()
            && self.ingest.topic_pattern != DEFAULT_TOPIC_PATTERN
            && !self
                .ingest
                .topic_patterns
                .contains(&self.ingest.topic_pattern)
        {
            bail!(
                "ingest.topic_pattern and ingest.topic_patterns disagree: set topic_patterns only"
            );
        }
        let patterns =
            TopicPatterns::parse(&self.ingest.topic_patterns()).context("ingest.topic_patterns")?;
        if !patterns.all_have_household()
            && !self.households.contains_key(&self.ingest.default_household)
        {
            bail!(
                "ingest.default_household {:?} is not among [households]",
                self.ingest.default_household
            );
        }
        // NATS refuses messages over 1 MiB by default; the envelope needs room.
        if let Some(n) = &self.ingest.nats_mqtt {
            n.validate()?;
        }
        if self.ingest.max_payload_bytes > 900 * 1024 {
            bail!("ingest.max_payload_bytes is over 900 KiB: NATS could not store such messages");
        }
        let known = |h: &str| self.households.contains_key(h);
        for (user, household) in &self.ingest.user_households {
            if !known(household) {
                bail!("ingest.user_households: {user:?} maps to unknown household {household:?}");
            }
        }
        for entry in &self.ingest.devices {
            if let Some(h) = &entry.household
                && !known(h)
                && !self.ingest.allow_unknown_households
            {
                bail!(
                    "ingest.devices: {:?} names unknown household {h:?}",
                    entry.user
                );
            }
            if entry.require_encryption == Some(true) && entry.secret.is_none() {
                bail!(
                    "ingest.devices: {:?} requires encryption but has no secret",
                    entry.user
                );
            }
        }
        let mut sinks = BTreeMap::new();
        for (index, sink) in self.notifier.sinks.iter().enumerate() {
            let name = sink.name(index);
            if let Some(first) = sinks.insert(name.clone(), index) {
                // They would share one durable consumer: each would get
                // about half of the events.
                bail!(
                    "notifier.sinks[{first}] and notifier.sinks[{index}] are both named {name:?}: sink names must be unique"
                );
            }
        }
        let mut tokens = BTreeMap::new();
        for (name, household) in &self.households {
            if name.len() > MAX_TOPIC_LEVEL_BYTES {
                bail!("households.{name}: the name is over {MAX_TOPIC_LEVEL_BYTES} bytes");
            }
            if let Some(zone) = &household.time_zone {
                jiff::tz::TimeZone::get(zone).with_context(|| {
                    format!("households.{name}.time_zone {zone:?} is not an IANA time zone")
                })?;
            }
            if household.public && household.token.is_some() {
                bail!("households.{name} has a token and public = true: choose one");
            }
            if let Some(token) = &household.token {
                if token.len() < 16 {
                    bail!("households.{name}.token is shorter than 16 characters");
                }
                if let Some(other) = tokens.insert(token.clone(), name) {
                    bail!("households {other} and {name} share a token");
                }
            }
            let mut ids = BTreeMap::new();
            for person in &household.people {
                let id = person.id();
                if id.is_empty() || id.len() > MAX_TOPIC_LEVEL_BYTES {
                    bail!(
                        "households.{name}: person id {id:?} is empty or over {MAX_TOPIC_LEVEL_BYTES} bytes"
                    );
                }
                if id.starts_with(UNMAPPED_ID_MARK) {
                    bail!(
                        "households.{name}: person id {id:?} starts with {UNMAPPED_ID_MARK:?}, reserved for unmapped devices"
                    );
                }
                if ids.insert(id, ()).is_some() {
                    bail!("households.{name}: two people have the id {id:?}");
                }
                for device in &person.devices {
                    if device.split('/').count() != 2 {
                        bail!(
                            "households.{name}: device {device:?} of {} is not user/device",
                            person.name
                        );
                    }
                }
            }
            for region in &household.regions {
                // `!(x > 0.0)` on purpose: NaN must fail too.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if !(region.radius > 0.0)
                    || !(-90.0..=90.0).contains(&region.lat)
                    || !(-180.0..=180.0).contains(&region.lon)
                {
                    bail!(
                        "households.{name}: region {:?} has an invalid centre or radius",
                        region.name
                    );
                }
            }
        }
        Ok(())
    }

    /// The household of `user` when the topic does not name one.
    pub fn household_of_user(&self, user: &str) -> &str {
        self.ingest
            .user_households
            .get(user)
            .unwrap_or(&self.ingest.default_household)
    }

    /// Whether messages for `household` are accepted: configured, or unknown
    /// households allowed.
    pub fn accepts_household(&self, household: &str) -> bool {
        self.ingest.allow_unknown_households || self.households.contains_key(household)
    }

    /// The credentials entry of a device: an exact one, else the user's.
    pub fn device_entry(&self, household: &str, user: &str, device: &str) -> Option<&DeviceEntry> {
        let matches = |e: &&DeviceEntry| {
            e.user == user && e.household.as_deref().is_none_or(|h| h == household)
        };
        let entries = || self.ingest.devices.iter().filter(matches);
        entries()
            .find(|e| e.device.as_deref() == Some(device))
            .or_else(|| entries().find(|e| e.device.is_none()))
    }

    /// The household a bearer token grants, if any.
    pub fn household_for_token(&self, token: &str) -> Option<&str> {
        self.households.iter().find_map(|(name, h)| {
            let t = h.token.as_deref()?;
            constant_time_eq(t.as_bytes(), token.as_bytes()).then_some(name.as_str())
        })
    }
}

/// Compares secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../whereabouts.example.toml");
        let config = Config::from_toml(text).expect("example config");
        assert!(config.households.contains_key("weasleys"));
        assert!(!config.notifier.sinks.is_empty());
        assert_eq!(
            config.households["weasleys"].tz().iana_name(),
            Some("Europe/London")
        );
    }

    #[test]
    fn nats_mqtt_names_are_checked() {
        let with = |table: &str| Config::from_toml(&format!("[ingest.nats_mqtt]\n{table}"));
        let defaults = with("").expect("the defaults");
        assert_eq!(
            defaults.ingest.nats_mqtt.unwrap().api_prefix,
            "$JS.phones.API"
        );
        for bad in [
            "prefix = \"owntracks\"",
            "prefix = \"a.b\"",
            "cmd_prefix = \"phones\"",
            "api_prefix = \"$JS.API\"",
            "api_prefix = \"$JS.*.API\"",
            "api_prefix = \"$JS..API\"",
            "max_age = \"1s\"",
            "max_bytes = 1",
        ] {
            assert!(with(bad).is_err(), "{bad} was taken");
        }
        assert!(with("api_prefix = \"$JS.tracker-phones.API\"").is_ok());
    }

    #[test]
    fn a_household_day_starts_at_its_own_midnight() {
        use time::macros::datetime;
        let utc = Household::default();
        assert_eq!(
            utc.day_start(datetime!(2026-12-01 23:59:59 +02:00)),
            datetime!(2026-12-01 00:00 UTC)
        );
        let tokyo = Household {
            time_zone: Some("Asia/Tokyo".into()),
            ..Household::default()
        };
        // 20:00 UTC is already the next day in Tokyo, which began at 15:00 UTC.
        assert_eq!(
            tokyo.day_start(datetime!(2026-12-01 20:00 UTC)),
            datetime!(2026-12-01 15:00 UTC)
        );
        let london = Household {
            time_zone: Some("Europe/London".into()),
            ..Household::default()
        };
        // Summer time: midnight in London is 23:00 UTC the day before.
        assert_eq!(
            london.day_start(datetime!(2026-07-01 12:00 UTC)),
            datetime!(2026-06-30 23:00 UTC)
        );
    }

    #[test]
    fn default_serves_one_household() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.household_of_user("anyone"), DEFAULT_HOUSEHOLD);
        let h = &config.households[DEFAULT_HOUSEHOLD];
        assert_eq!(h.person_for("jane", "phone").as_deref(), Some("jane"));
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(Config::from_toml("[presence]\nstale_afer = \"1h\"").is_err());
        assert!(Config::from_toml("[ingest]\ntopic_pattern = \"owntracks/{device}\"").is_err());
        assert!(
            Config::from_toml("[ingest]\ntopic_patterns = []\ntopic_pattern = \"x/{device}\"")
                .is_err()
        );
        assert!(Config::from_toml("[ingest]\ntopic_patterns = [\"owntracks/{user}\"]").is_err());
        assert!(
            Config::from_toml("[ingest]\ntopic_pattern = \"a/{user}/{device}\"\ntopic_patterns = [\"b/{user}/{device}\"]")
                .is_err(),
            "two keys that disagree"
        );
        let both = Config::from_toml(
            "[ingest]\ntopic_patterns = [\"owntracks/{user}/{device}\", \"owntracks/{household}/{user}/{device}\"]",
        )
        .unwrap();
        assert_eq!(both.ingest.patterns().iter().count(), 2);
        assert!(
            Config::from_toml("[households.a]\ntoken = \"short\"").is_err(),
            "short tokens are refused"
        );
    }

    #[test]
    fn sinks_keep_their_own_keys_and_are_checked_for_what_all_share() {
        let text = r#"
            [[notifier.sinks]]
            type = "webhook"
            name = "hooks"
            url = "http://example.org/"
            secret = "s3cret"
            kinds = ["place", "status"]
            [[notifier.sinks]]
            type = "ntfy"
            url = "https://ntfy.sh/x"
            "#;
        let config = Config::from_toml(text).unwrap();
        let [hooks, ntfy] = &config.notifier.sinks[..] else {
            panic!("two sinks")
        };
        assert_eq!(hooks.name(0), "hooks");
        assert_eq!(ntfy.name(1), "ntfy-1", "unnamed: the kind and its place");
        assert_eq!(hooks.filter.kinds, [EventKind::Place, EventKind::Status]);
        assert_eq!(hooks.settings["url"].as_str(), Some("http://example.org/"));
        assert!(
            !hooks.settings.contains_key("kinds"),
            "the filter is taken out"
        );
        assert_eq!(hooks.secrets().collect::<Vec<_>>(), ["s3cret"]);
        // Written out and read back, a sink is the same.
        let again = Config::from_toml(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again.notifier.sinks, config.notifier.sinks);

        let typo = Config::from_toml(&text.replace("\"status\"", "\"staus\"")).unwrap_err();
        let typo = format!("{typo:#}");
        assert!(
            typo.contains("sink \"hooks\": `kinds`") && typo.contains("staus"),
            "{typo}"
        );
        let twice = format!("{text}\n[[notifier.sinks]]\ntype = \"mqtt\"\nname = \"hooks\"\n");
        let twice = format!("{:#}", Config::from_toml(&twice).unwrap_err());
        assert!(twice.contains("both named \"hooks\""), "{twice}");
        let untyped = Config::from_toml("[[notifier.sinks]]\nname = \"x\"").unwrap_err();
        assert!(
            format!("{untyped:#}").contains("needs a `type`"),
            "{untyped:#}"
        );
    }

    #[test]
    fn person_ids_are_stable_and_never_shared_with_unmapped_devices() {
        let config = Config::from_toml(
            r#"
            [[households.home.people]]
            id = "harry"
            name = "Harry Potter"
            devices = ["hp/phone"]
            [[households.home.people]]
            name = "Ron"
            devices = ["ron/phone"]
            "#,
        )
        .unwrap();
        let h = &config.households["home"];
        // Configured: the id, not the display name; the id defaults to the name.
        assert_eq!(h.person_for("hp", "phone").as_deref(), Some("harry"));
        assert_eq!(h.person("harry").unwrap().name, "Harry Potter");
        assert_eq!(h.person_for("ron", "phone").as_deref(), Some("Ron"));
        // An unmapped device whose user is a configured id gets its own person.
        assert_eq!(h.person_for("harry", "laptop").as_deref(), Some("~harry"));
        assert_eq!(h.person_for("Ron", "tablet").as_deref(), Some("~Ron"));
        // A user name starting with the mark is marked too: no two users meet.
        assert_eq!(h.person_for("~harry", "x").as_deref(), Some("~~harry"));
        assert_eq!(h.person_for("hp", "tablet").as_deref(), Some("hp"));
    }

    #[test]
    fn identity_settings_are_validated() {
        let bad = [
            "[[households.home.people]]\nid = \"~x\"\nname = \"X\"",
            "[[households.home.people]]\nname = \"A\"\n[[households.home.people]]\nid = \"A\"\nname = \"B\"",
            &format!("[[households.home.people]]\nname = \"{}\"", "x".repeat(129)),
            "[ingest]\nuser_households = { bob = \"nowhere\" }",
            "[[ingest.devices]]\nuser = \"u\"\nhousehold = \"nowhere\"",
            "[[ingest.devices]]\nuser = \"u\"\nrequire_encryption = true",
            "[households.home]\ntime_zone = \"Mars/Olympus_Mons\"",
        ];
        for text in bad {
            assert!(Config::from_toml(text).is_err(), "accepted: {text}");
        }
        let config = Config::from_toml(
            "[[ingest.devices]]\nuser = \"a\"\nsecret = \"s\"\n[[ingest.devices]]\nuser = \"b\"\nsecret = \"s\"\nrequire_encryption = false\n[[ingest.devices]]\nuser = \"c\"",
        )
        .unwrap();
        let requires = |u| {
            config
                .device_entry("home", u, "d")
                .unwrap()
                .requires_encryption()
        };
        assert!(requires("a"), "on by default with a secret");
        assert!(!requires("b"));
        assert!(!requires("c"));
        assert!(config.accepts_household("home"));
        assert!(!config.accepts_household("elsewhere"));
    }

    #[test]
    fn device_entries_fall_back_to_the_user() {
        let config = Config::from_toml(
            r#"
            [[ingest.devices]]
            user = "jane"
            secret = "user-wide"
            [[ingest.devices]]
            user = "jane"
            device = "tablet"
            secret = "tablet-only"
            "#,
        )
        .unwrap();
        let secret = |d| {
            config
                .device_entry("home", "jane", d)
                .and_then(|e| e.secret.clone())
        };
        assert_eq!(secret("tablet").as_deref(), Some("tablet-only"));
        assert_eq!(secret("phone").as_deref(), Some("user-wide"));
        assert!(config.device_entry("home", "bob", "phone").is_none());
    }
}
