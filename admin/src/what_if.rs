//! `what-if`: an exported trace replayed offline (`presence::replay`)
//! under the configuration it was recorded with and under a candidate,
//! each person's timeline and counts side by side, so radius, margin,
//! dwell and debounce can be tuned on real history before a change.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use shared::config::Config;
use shared::envelope::{Envelope, content_id};
use shared::state::EventKind;

use crate::history::{Span, timeline};
use crate::{print_json, rfc3339};

/// One person under one configuration.
#[derive(Debug, Serialize)]
struct Run {
    place_changes: usize,
    flaps_suppressed: u32,
    late_fixes: u32,
    timeline: Vec<Span>,
}

#[derive(Debug, Serialize)]
struct Person {
    household: String,
    person: String,
    current: Run,
    candidate: Run,
}

/// The trace's envelopes, each with the id the stream gave it: a hash of
/// its line, as ingest derives one from content.
fn read_trace(path: &Path) -> anyhow::Result<Vec<(String, Envelope)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let envelope = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an envelope", path.display(), n + 1))?;
            Ok((content_id(&[line.as_bytes()]), envelope))
        })
        .collect()
}

fn run_of(replayed: Option<&presence::replay::Replayed>) -> Run {
    let Some(r) = replayed else {
        return Run {
            place_changes: 0,
            flaps_suppressed: 0,
            late_fixes: 0,
            timeline: Vec::new(),
        };
    };
    Run {
        place_changes: r
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Place)
            .count(),
        flaps_suppressed: r.flaps_suppressed,
        late_fixes: r.late_fixes,
        timeline: timeline(&r.events),
    }
}

pub(crate) fn run(
    trace: &Path,
    current: &Config,
    candidate: &Config,
    json: bool,
) -> anyhow::Result<()> {
    let trace = read_trace(trace)?;
    let before = presence::replay::replay(current, trace.clone(), None);
    let after = presence::replay::replay(candidate, trace, None);
    let keys: BTreeSet<_> = before.keys().chain(after.keys()).cloned().collect();
    let people: Vec<Person> = keys
        .into_iter()
        .map(|key| Person {
            current: run_of(before.get(&key)),
            candidate: run_of(after.get(&key)),
            household: key.0,
            person: key.1,
        })
        .collect();
    if json {
        return print_json(&people);
    }
    for p in &people {
        println!("{}/{}", p.household, p.person);
        let counts = |r: &Run| {
            format!(
                "{} place changes, {} flaps suppressed, {} late fixes",
                r.place_changes, r.flaps_suppressed, r.late_fixes
            )
        };
        println!("  current:   {}", counts(&p.current));
        println!("  candidate: {}", counts(&p.candidate));
        let stay = |s: Option<&Span>| {
            s.map(|s| format!("{} {}", rfc3339(s.from), s.place))
                .unwrap_or_default()
        };
        let rows = p.current.timeline.len().max(p.candidate.timeline.len());
        let width = (0..rows)
            .map(|i| stay(p.current.timeline.get(i)).chars().count())
            .max()
            .unwrap_or(0)
            .max("current".len());
        println!("  {:<width$}  candidate", "current");
        for i in 0..rows {
            println!(
                "  {:<width$}  {}",
                stay(p.current.timeline.get(i)),
                stay(p.candidate.timeline.get(i))
            );
        }
    }
    Ok(())
}
