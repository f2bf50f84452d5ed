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
/// `config`; timers run on until `until` (at least the last receive time).
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
    if let Some(end) = until.max(last) {
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
