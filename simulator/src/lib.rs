//! whereabouts-sim: simulated OwnTracks phones for the demo, the benchmarks
//! and the tests. N households × M people × devices, deterministic from a
//! seed, sending through the real MQTT broker (and HTTP mode for some
//! devices) what the real apps send.
//!
//! Layout:
//! - `world`: households, places, people and devices — from a Whereabouts
//!   config file or generated (`generate_config`).
//! - `plan`: the day each person lives, as steps in simulated time (pure).
//! - `render`: steps into Android- or iOS-shaped JSON, `tst` on the wall
//!   clock (`Clock`).
//! - `send`: MQTT (one persistent QoS 1 session) and HTTP mode, encryption,
//!   the JSON-lines recording.
//! - `rng`: the seeded generator (private; the others are used by the
//!   binary and the tests).
//!
//! Time: a run maps simulated time onto the wall clock by a compression
//! factor (1440: a day in a minute), so `tst` is always the current time
//! (queued fixes are older by the simulated delay divided by the factor).
//! In rate mode messages go out at a fixed rate instead, in the same order.
//!
//! Connections: all MQTT phones share one persistent session (QoS 1), so a
//! 200-device run is one client. What the pipeline would see of a phone's
//! own connection is reproduced instead: an Android LWT is published by the
//! simulator on the phone's topic, exactly as the broker publishes the will
//! (`{"_type":"lwt","tst":<connect time>}`); an iOS clean disconnect is a
//! silence with no LWT.

pub mod plan;
pub mod render;
mod rng;
pub mod send;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::render::Clock;
use crate::send::{Endpoints, RecordHeader, RecordLine, Sender, Sent};
use crate::world::World;

/// How fast a run goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Simulated seconds per real second.
    Compressed(f64),
    /// Messages per second, sustained; `tst` stays current.
    Rate(f64),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pace: Pace,
    /// Simulated time of day the run starts at (seconds after midnight).
    pub start_at: f64,
    /// Stop after this much real time (None: see `days`).
    pub duration: Option<Duration>,
    /// Stop after this many simulated days (None with no duration: forever).
    pub days: Option<u32>,
    pub record: Option<PathBuf>,
}

/// Deadlines for a fixed rate: message `i` is due `i / rate` seconds after
/// the start, so a slow send is caught up rather than lost from the rate.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate: rate.max(0.001),
        }
    }

    pub fn deadline(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

fn now_unix() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

/// Plays `world` until the duration or day count is reached (or forever).
pub async fn run(
    world: &World,
    endpoints: &Endpoints,
    options: &RunOptions,
) -> anyhow::Result<Sent> {
    let started_unix = now_unix();
    let header = RecordHeader {
        whereabouts_sim: 1,
        seed: world.seed,
        started_unix: started_unix as i64,
        devices: world.devices.clone(),
    };
    let mut sender = Sender::connect(
        endpoints,
        &world.devices,
        options.record.as_deref().map(|p| (p, header)),
    )
    .await?;
    let start = Instant::now();
    let end = options.duration.map(|d| start + d);
    // In rate mode tst still follows the plan's spacing, at the factor that
    // makes one simulated day last as long as its messages take to send.
    let (factor, pacer) = match options.pace {
        Pace::Compressed(f) => (f, None),
        Pace::Rate(rate) => {
            let per_day = plan::day(world, 0).len().max(1) as f64;
            (rate * plan::DAY / per_day, Some(Pacer::new(rate)))
        }
    };
    let clock = Clock {
        start_unix: started_unix - options.start_at / factor,
        factor,
    };
    let mut seq = 0u64;
    let mut day = 0u32;
    'days: loop {
        if options.days.is_some_and(|n| day >= n) {
            break;
        }
        for step in plan::day(world, day) {
            if step.at < options.start_at {
                continue;
            }
            let step_clock = match &pacer {
                None => {
                    let due =
                        start + Duration::from_secs_f64((step.at - options.start_at) / factor);
                    if end.is_some_and(|e| due > e) {
                        break 'days;
                    }
                    tokio::time::sleep_until(due).await;
                    clock
                }
                Some(p) => {
                    let due = p.deadline(seq);
                    if end.is_some_and(|e| due > e) {
                        break 'days;
                    }
                    tokio::time::sleep_until(due).await;
                    // The step is sent now: its own time maps to now.
                    Clock {
                        start_unix: now_unix() - step.at / factor,
                        factor,
                    }
                }
            };
            let out = render::render(world, &step, &step_clock, seq);
            sender
                .send(world.device(step.device), &out)
                .await
                .with_context(|| format!("sending to {}", out.topic))?;
            seq += 1;
            if seq.is_multiple_of(1_000) {
                tracing::info!(sent = seq, "progress");
            }
        }
        day += 1;
    }
    sender.finish(Duration::from_secs(60)).await
}

/// Shifts the time fields of a recorded message by `delta` seconds, so a
/// replay sends current times.
pub fn shift_times(message: &mut serde_json::Value, delta: i64) {
    if let Some(m) = message.as_object_mut() {
        for key in ["tst", "created_at"] {
            if let Some(t) = m.get(key).and_then(serde_json::Value::as_i64) {
                m.insert(key.into(), (t + delta).into());
            }
        }
    }
}

/// Reads a recording: its header and lines.
pub fn read_recording(text: &str) -> anyhow::Result<(RecordHeader, Vec<RecordLine>)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).enumerate();
    let (_, first) = lines.next().context("an empty recording")?;
    let header: RecordHeader = serde_json::from_str(first).context("recording header")?;
    let mut out = Vec::new();
    for (i, line) in lines {
        out.push(serde_json::from_str(line).with_context(|| format!("recording line {}", i + 1))?);
    }
    Ok((header, out))
}

/// What a replay does with the recorded times (`tst`, `created_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTimes {
    /// Shifted so the run starts now: the pipeline sees current fixes.
    Now,
    /// Shifted by a fixed number of seconds (0: exactly as recorded), so two
    /// replays of one recording feed the pipeline identical input.
    Shift(i64),
}

/// Sends a recording again with its original spacing, times shifted to now
/// (encrypted devices are encrypted afresh).
pub async fn replay(text: &str, endpoints: &Endpoints) -> anyhow::Result<Sent> {
    replay_with(text, endpoints, ReplayTimes::Now).await
}

/// Like [`replay`], with the recorded times treated as `times` says.
pub async fn replay_with(
    text: &str,
    endpoints: &Endpoints,
    times: ReplayTimes,
) -> anyhow::Result<Sent> {
    let (header, lines) = read_recording(text)?;
    let delta = match times {
        ReplayTimes::Now => now_unix() as i64 - header.started_unix,
        ReplayTimes::Shift(seconds) => seconds,
    };
    let mut sender = Sender::connect(endpoints, &header.devices, None).await?;
    let start = Instant::now();
    for line in lines {
        let device = header.devices.get(line.outgoing.device).with_context(|| {
            format!(
                "recorded device {} is not in the header",
                line.outgoing.device
            )
        })?;
        tokio::time::sleep_until(start + Duration::from_millis(line.ms)).await;
        let mut out = line.outgoing;
        shift_times(&mut out.message, delta);
        sender.send(device, &out).await?;
    }
    sender.finish(Duration::from_secs(60)).await
}

/// The seed `scripts/run.sh --demo` plays `deploy/demo.toml` with (its
/// devices come out as a mix of Android and iOS).
pub const DEMO_SEED: u64 = 1;
