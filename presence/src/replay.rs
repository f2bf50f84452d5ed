//! The machine run offline over recorded envelopes, as the service would
//! have run it live: each input applied at its receive time, the timers
//! (debounced leaves, dwell, LWT grace, stale, lost) fired at their
//! deadlines in between. No NATS, no clock: `whereabouts what-if` replays
//! a household's exported history under a candidate configuration.

use std::collections::BTreeMap;

use shared::config::Config;
use shared::envelope::Envelope;
use shared::state::{PersonState, PresenceEvent};
use time::OffsetDateTime;

use crate::input::from_envelope;
use crate::machine::{self, DeviceInput, Input, Outcome};

/// One person's replayed history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replayed {
    /// Every event, in order (place, status and region).
    pub events: Vec<PresenceEvent>,
    /// Leave + re-enter pairs the debounce swallowed.
    pub flaps_suppressed: u32,
    /// Fixes older than `max_fix_age` when they arrived: they update the
    /// state but are flagged `late`, not news.
    pub late_fixes: u32,
}

/// Replays `trace` (envelopes with their ids, in stream order) under
/// `config`. Timers run on until `until`, by default until what the last
/// input left pending has settled (a debounced leave, a dwell, an LWT's
/// grace) but not into stale or lost, which would say more about the end
/// of the trace than about the person.
/// Keyed by (household, person). Envelopes presence could not use (or
/// would ignore) are skipped, as the service terminates or acks them.
pub fn replay(
    config: &Config,
    trace: impl IntoIterator<Item = (String, Envelope)>,
    until: Option<OffsetDateTime>,
) -> BTreeMap<(String, String), Replayed> {
    let mut people: BTreeMap<(String, String), PersonState> = BTreeMap::new();
    let mut out: BTreeMap<(String, String), Replayed> = BTreeMap::new();
    let mut last = None;
    for (id, envelope) in trace {
        let Ok(Some(input)) = from_envelope(envelope, id) else {
            continue;
        };
        let Some(household) = config.households.get(&input.household) else {
            continue;
        };
        let Some(person) = household.person_for(&input.user, &input.device) else {
            continue;
        };
        let now = input.received_at;
        fire_timers(config, &mut people, &mut out, now);
        let key = (input.household.clone(), person);
        let outcome = machine::apply(
            None,
            people.get(&key).cloned(),
            &input,
            now,
            household,
            &config.presence,
        );
        let entry = out.entry(key.clone()).or_default();
        if is_late_fix(&input, config) && outcome.ignored.is_none() {
            entry.late_fixes += 1;
        }
        record(entry, &mut people, key, outcome);
        last = Some(last.map_or(now, |l: OffsetDateTime| l.max(now)));
    }
    let p = &config.presence;
    let settle = p.debounce.max(p.geofence_dwell).max(p.lwt_grace);
    let settled = last.and_then(|l: OffsetDateTime| l.checked_add(settle.try_into().ok()?));
    if let Some(end) = until.or(settled) {
        fire_timers(config, &mut people, &mut out, end);
    }
    out
}

/// Fires every timer due by `now`, each at its own deadline, in order.
fn fire_timers(
    config: &Config,
    people: &mut BTreeMap<(String, String), PersonState>,
    out: &mut BTreeMap<(String, String), Replayed>,
    now: OffsetDateTime,
) {
    // People whose due deadline changed nothing: it would come round forever.
    let mut idle = std::collections::BTreeSet::new();
    loop {
        let due = people
            .iter()
            .filter(|(key, _)| !idle.contains(*key))
            .filter_map(|(key, state)| {
                let household = config.households.get(&key.0)?;
                let at = machine::next_deadline(state, household, &config.presence)?;
                (at <= now).then(|| (at, key.clone()))
            })
            .min();
        let Some((at, key)) = due else {
            return;
        };
        let household = &config.households[&key.0];
        let state = &people[&key];
        let outcome = machine::tick(state.clone(), at, household, &config.presence);
        if outcome.person.as_ref() == Some(state) {
            idle.insert(key);
            continue;
        }
        record(out.entry(key.clone()).or_default(), people, key, outcome);
    }
}

fn record(
    entry: &mut Replayed,
    people: &mut BTreeMap<(String, String), PersonState>,
    key: (String, String),
    outcome: Outcome,
) {
    entry.events.extend(outcome.events);
    entry.flaps_suppressed += outcome.flaps_suppressed;
    if let Some(mut person) = outcome.person {
        // The outbox is the service's delivery concern, not history.
        person.outbox.clear();
        people.insert(key, person);
    }
}

fn is_late_fix(input: &DeviceInput, config: &Config) -> bool {
    let Input::Location { tst, .. } = input.input else {
        return false;
    };
    let max_age = i64::try_from(config.presence.max_fix_age.as_secs()).unwrap_or(i64::MAX);
    input.received_at.unix_timestamp().saturating_sub(tst) > max_age
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::Transport;
    use shared::state::EventKind;

    const T0: i64 = 1_780_000_000;

    fn transition(at: i64, event: &str) -> (String, Envelope) {
        let message = serde_json::json!({"_type": "transition", "event": event, "desc": "Home",
            "tst": at, "acc": 0, "lat": 51.5, "lon": -0.12, "t": "c"});
        let envelope = Envelope {
            schema_version: 1,
            household: "home".into(),
            user: "harry".into(),
            device: "phone".into(),
            topic: "owntracks/harry/phone/event".into(),
            received_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            retained: false,
            transport: Transport::Mqtt,
            encrypted: false,
            message: message.as_object().unwrap().clone(),
        };
        (format!("{at}-{event}"), envelope)
    }

    fn places(replayed: &Replayed) -> Vec<(String, i64)> {
        replayed
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Place)
            .map(|e| (e.place.clone().unwrap(), e.at.unix_timestamp()))
            .collect()
    }

    #[test]
    fn debounced_leaves_fire_at_their_deadline_between_inputs_and_after_the_last() {
        let config = Config::from_toml("[presence]\ndebounce = \"60s\"").unwrap();
        let key = ("home".to_string(), "harry".to_string());
        // A flap (back within 60 s), then a real leave an hour later.
        let trace = [
            transition(T0, "enter"),
            transition(T0 + 100, "leave"),
            transition(T0 + 130, "enter"),
            transition(T0 + 3600, "leave"),
        ];
        let out = replay(&config, trace.clone(), None);
        let harry = &out[&key];
        assert_eq!(harry.flaps_suppressed, 1);
        assert_eq!(
            places(harry),
            [("Home".to_string(), T0), ("Away".to_string(), T0 + 3600)],
            "the last leave commits after the trace, at the leave's own time"
        );
        // Under a shorter debounce the flap is two changes.
        let quick = Config::from_toml("[presence]\ndebounce = \"10s\"").unwrap();
        let out = replay(&quick, trace, None);
        assert_eq!(places(&out[&key]).len(), 4);
        assert_eq!(out[&key].flaps_suppressed, 0);
    }
}
