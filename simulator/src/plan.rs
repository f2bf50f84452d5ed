//! The day each simulated person lives, as a list of steps in simulated
//! time. Pure: the same world, seed and day give the same steps.
//!
//! A day (times jittered per person and day): at home overnight (pings every
//! 30 min) → leaves home at ~07:30 and drives to work or school (fixes every
//! 5 min, realistic speed) → there until ~16:30, with a spurious LWT burst of
//! the Android phones at noon (most reconnect within a minute, one after
//! 40 min) and the iOS phones disconnecting cleanly (no LWT) for 90 min →
//! drives somewhere that is none of the places (Traveling, then Away) →
//! drives home at ~19:00. Every other person loses signal from 18:00 to
//! 21:00 and their phone then flushes the fixes it queued meanwhile.

use crate::rng::{Rng, hash};
use crate::world::{Platform, Transport, World};

pub const DAY: f64 = 86_400.0;
const PING: f64 = 1_800.0;
const MOVE: f64 = 300.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Enter,
    Leave,
}

/// A position as the phone measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// Fix time, simulated seconds since the start of the run.
    pub at: f64,
    pub lat: f64,
    pub lon: f64,
    /// km/h.
    pub vel: f64,
    /// Metres.
    pub acc: f64,
    pub alt: f64,
    /// Course over ground, degrees.
    pub cog: f64,
    pub batt: u8,
    /// 1 unplugged, 2 charging, 3 full.
    pub bs: u8,
    /// `w` wifi, `m` mobile.
    pub conn: char,
    /// Configured place names the phone is in.
    pub regions: Vec<String>,
    /// Trigger: `p` ping, `c` region, `t` move-mode timer, `u` user.
    pub trigger: char,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Location(Fix),
    Transition {
        event: Event,
        /// The configured place name (the phone may spell it otherwise).
        place: String,
        fix: Fix,
    },
    /// The device's card (name and face) on `<topic>/info`.
    Card {
        name: String,
    },
    /// What the broker publishes for a connection that died without a
    /// DISCONNECT: the will the phone set, with its connect time.
    Lwt {
        connected_at: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it is sent, simulated seconds since the start of the run.
    pub at: f64,
    /// Index into [`World::devices`].
    pub device: usize,
    pub what: What,
}

impl Step {
    /// The simulated time the content is about (older than `at` when queued).
    pub fn content_at(&self) -> f64 {
        match &self.what {
            What::Location(fix) | What::Transition { fix, .. } => fix.at,
            What::Lwt { .. } | What::Card { .. } => self.at,
        }
    }
}

/// Where a device is between two points of its day.
#[derive(Debug, Clone, Copy)]
struct Leg {
    from: (f64, f64),
    to: (f64, f64),
    start: f64,
    end: f64,
}

/// A silent stretch: nothing is sent; with `queued`, what happened meanwhile
/// is sent when it ends (the app's queue flushed on reconnect).
#[derive(Debug, Clone, Copy)]
struct Gap {
    from: f64,
    to: f64,
    queued: bool,
}

fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * h.sqrt().asin()
}

fn bearing(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dlo = (b.1 - a.1).to_radians();
    let y = dlo.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlo.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

/// Battery by time of day: charging overnight, draining by day.
fn battery(day_seconds: f64) -> (u8, u8) {
    let h = day_seconds / 3600.0;
    if !(7.0..22.0).contains(&h) {
        let charged = if h >= 22.0 { h - 22.0 } else { h + 2.0 };
        let b = (40.0 + charged * 15.0).min(100.0) as u8;
        (b, if b >= 100 { 3 } else { 2 })
    } else {
        ((100.0 - (h - 7.0) * 4.0).max(15.0) as u8, 1)
    }
}

/// Every step of day `day` (0-based) of the run, sorted by send time.
pub fn day(world: &World, day: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    let base = f64::from(day) * DAY;
    for household in &world.households {
        let hh = hash(&household.name);
        let mut hrng = Rng::derive(world.seed, &[hh, u64::from(day)]);
        let noon = base + 12.0 * 3600.0 + hrng.range(0.0, 600.0);
        let home = &household.places[0];
        let home_pos = (home.lat, home.lon);
        for (pi, person) in household.people.iter().enumerate() {
            let mut rng = Rng::derive(world.seed, &[hh, pi as u64, u64::from(day)]);
            let jitter = rng.range(0.0, 1_800.0);
            for (k, &device) in person.devices.iter().enumerate() {
                let d = world.device(device);
                let mut drng = Rng::derive(world.seed, &[hh, hash(&d.id()), u64::from(day)]);
                let mut legs = Vec::new();
                let mut transitions = Vec::new();
                if d.primary {
                    plan_person(
                        household,
                        person.day_place.as_deref(),
                        base,
                        jitter,
                        &mut rng,
                        &mut legs,
                        &mut transitions,
                    );
                } else {
                    legs.push(Leg {
                        from: home_pos,
                        to: home_pos,
                        start: base,
                        end: base + DAY,
                    });
                }
                let mut gaps = Vec::new();
                let mut lwt_at = None;
                if d.transport == Transport::Mqtt && d.platform == Platform::Android {
                    // A spurious LWT burst: the broker gives up on many
                    // phones at once (a mobile network hiccup).
                    let back = if pi % 3 == 1 { 2_400.0 } else { 60.0 };
                    gaps.push(Gap {
                        from: noon,
                        to: noon + back,
                        queued: false,
                    });
                    lwt_at = Some(noon);
                }
                if d.platform == Platform::Ios {
                    // Significant-change mode: a clean disconnect, no LWT.
                    gaps.push(Gap {
                        from: noon,
                        to: noon + 5_400.0,
                        queued: false,
                    });
                }
                if d.primary && pi % 2 == 0 {
                    // Lost signal; the app queues and flushes on return.
                    gaps.push(Gap {
                        from: base + 18.0 * 3600.0,
                        to: base + 21.0 * 3600.0,
                        queued: true,
                    });
                }
                let interval = if d.primary { PING } else { 4.0 * PING };
                let raw = raw_items(household, &legs, &transitions, interval, base, &mut drng);
                let mut device_steps = apply_gaps(raw, &gaps, device);
                if let Some(at) = lwt_at {
                    device_steps.push(Step {
                        at,
                        device,
                        what: What::Lwt {
                            connected_at: base + 60.0 + k as f64,
                        },
                    });
                }
                device_steps.push(Step {
                    at: base + 30.0 + k as f64,
                    device,
                    what: What::Card {
                        name: person.name.clone(),
                    },
                });
                steps.extend(device_steps);
            }
        }
    }
    // Stable: per device, the order built above is the order sent.
    steps.sort_by(|a, b| a.at.total_cmp(&b.at));
    steps
}

/// The legs and transitions of a person's main device.
fn plan_person(
    household: &crate::world::SimHousehold,
    day_place: Option<&str>,
    base: f64,
    jitter: f64,
    rng: &mut Rng,
    legs: &mut Vec<Leg>,
    transitions: &mut Vec<(f64, Event, String)>,
) {
    let home = &household.places[0];
    let home_pos = (home.lat, home.lon);
    let kmh = rng.range(30.0, 50.0);
    let drive = |from: (f64, f64), to: (f64, f64), speed: f64| {
        (distance_m(from, to) / (speed / 3.6)).max(600.0)
    };
    let mut t = base;
    let mut here = home_pos;
    let mut at_place = Some(home.name.clone());
    let mut go = |to: (f64, f64),
                  place: Option<&str>,
                  depart: f64,
                  speed: f64,
                  legs: &mut Vec<Leg>,
                  transitions: &mut Vec<(f64, Event, String)>| {
        legs.push(Leg {
            from: here,
            to: here,
            start: t,
            end: depart,
        });
        if let Some(p) = at_place.take() {
            transitions.push((depart, Event::Leave, p));
        }
        let arrive = depart + drive(here, to, speed);
        legs.push(Leg {
            from: here,
            to,
            start: depart,
            end: arrive,
        });
        if let Some(p) = place {
            transitions.push((arrive, Event::Enter, p.to_string()));
            at_place = Some(p.to_string());
        }
        here = to;
        t = arrive;
    };
    if let Some(place) = day_place.and_then(|p| household.place(p)) {
        go(
            (place.lat, place.lon),
            Some(&place.name),
            base + 7.5 * 3600.0 + jitter,
            kmh,
            legs,
            transitions,
        );
    }
    // Somewhere that is none of the places, 10–20 km out: Traveling there,
    // Away while there.
    let angle = rng.range(0.0, std::f64::consts::TAU);
    let dist = rng.range(10_000.0, 20_000.0);
    let out = (
        home_pos.0 + dist * angle.cos() / 111_320.0,
        home_pos.1 + dist * angle.sin() / (111_320.0 * home_pos.0.to_radians().cos()),
    );
    let fast = rng.range(60.0, 90.0);
    go(
        out,
        None,
        base + 16.5 * 3600.0 + jitter,
        fast,
        legs,
        transitions,
    );
    go(
        home_pos,
        Some(&home.name),
        base + 19.0 * 3600.0 + jitter,
        fast,
        legs,
        transitions,
    );
    legs.push(Leg {
        from: home_pos,
        to: home_pos,
        start: t,
        end: base + DAY,
    });
}

/// Locations (pings while still, move-mode fixes while driving) and
/// transitions, in time order.
fn raw_items(
    household: &crate::world::SimHousehold,
    legs: &[Leg],
    transitions: &[(f64, Event, String)],
    ping: f64,
    base: f64,
    rng: &mut Rng,
) -> Vec<(f64, What)> {
    let mut items = Vec::new();
    let fix_at = |rng: &mut Rng, leg: &Leg, at: f64, trigger: char| -> Fix {
        let moving = leg.from != leg.to;
        let f = if leg.end > leg.start {
            ((at - leg.start) / (leg.end - leg.start)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        // A little wobble off the straight line while driving.
        let wobble = if moving {
            rng.range(-0.0004, 0.0004)
        } else {
            0.0
        };
        let lat = leg.from.0 + (leg.to.0 - leg.from.0) * f + wobble;
        let lon = leg.from.1 + (leg.to.1 - leg.from.1) * f - wobble;
        let speed = if moving {
            distance_m(leg.from, leg.to) / (leg.end - leg.start) * 3.6
        } else {
            0.0
        };
        let regions: Vec<String> = household
            .places
            .iter()
            .filter(|p| !moving && distance_m((p.lat, p.lon), (lat, lon)) <= p.radius)
            .map(|p| p.name.clone())
            .collect();
        let (batt, bs) = battery((at - base).rem_euclid(DAY));
        Fix {
            at,
            lat: (lat * 1e7).round() / 1e7,
            lon: (lon * 1e7).round() / 1e7,
            vel: if moving {
                (speed * rng.range(0.8, 1.2)).round()
            } else {
                0.0
            },
            acc: if moving {
                rng.range(4.0, 15.0).round()
            } else {
                rng.range(5.0, 35.0).round()
            },
            alt: rng.range(20.0, 80.0).round(),
            cog: if moving {
                bearing(leg.from, leg.to).round()
            } else {
                0.0
            },
            batt,
            bs,
            conn: if regions.is_empty() { 'm' } else { 'w' },
            regions,
            trigger,
        }
    };
    for leg in legs {
        let moving = leg.from != leg.to;
        let step = if moving { MOVE } else { ping };
        let mut at = leg.start + if moving { 60.0 } else { rng.range(30.0, 300.0) };
        while at < leg.end {
            let trigger = if moving { 't' } else { 'p' };
            items.push((at, What::Location(fix_at(rng, leg, at, trigger))));
            at += step + rng.range(-20.0, 20.0);
        }
    }
    for (at, event, place) in transitions {
        let leg = legs
            .iter()
            .find(|l| l.start <= *at && *at <= l.end && l.from == l.to)
            .or_else(|| legs.iter().find(|l| l.start <= *at && *at <= l.end))
            .expect("a transition happens during a leg");
        let mut fix = fix_at(rng, leg, *at, 'c');
        fix.vel = 0.0;
        items.push((
            *at,
            What::Transition {
                event: *event,
                place: place.clone(),
                fix: fix.clone(),
            },
        ));
        if *event == Event::Enter {
            // The app follows a region event with a location (`t: c`).
            fix.at = at + 20.0;
            fix.regions = vec![place.clone()];
            fix.conn = 'w';
            items.push((fix.at, What::Location(fix)));
        }
    }
    items.sort_by(|a, b| a.0.total_cmp(&b.0));
    items
}

/// Drops what a gap silences, or delays it to the gap's end when queued; a
/// fresh fix follows the end of every gap (the phone speaks on reconnect).
fn apply_gaps(raw: Vec<(f64, What)>, gaps: &[Gap], device: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut last_fix: Option<Fix> = None;
    let mut gap_done = vec![false; gaps.len()];
    for (at, what) in raw {
        for (g, gap) in gaps.iter().enumerate() {
            if !gap_done[g] && at >= gap.to {
                gap_done[g] = true;
                if let Some(mut fix) = last_fix.clone() {
                    fix.at = gap.to;
                    fix.trigger = 'p';
                    steps.push(Step {
                        at: gap.to,
                        device,
                        what: What::Location(fix),
                    });
                }
            }
        }
        if let What::Location(fix) | What::Transition { fix, .. } = &what {
            last_fix = Some(fix.clone());
        }
        match gaps.iter().find(|g| g.from <= at && at < g.to) {
            None => steps.push(Step { at, device, what }),
            Some(gap) if gap.queued => steps.push(Step {
                at: gap.to,
                device,
                what,
            }),
            Some(_) => {}
        }
    }
    steps
}
