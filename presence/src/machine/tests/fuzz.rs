//! Property tests of the pure machine. The fuzz plays arbitrary input
//! sequences (names of any size and script, fix times in any order, LWTs,
//! redeliveries, timers) and checks the machine stays sound and its timers
//! agree with `next_deadline`. The case count comes from `PROPTEST_CASES`
//! (default 32; see README for a long run).

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Send {
        device: usize,
        advance: i64,
        input: Input,
        source: Option<String>,
    },
    Redeliver {
        back: usize,
        advance: i64,
    },
    Tick {
        advance: i64,
    },
}

const DEVICES: [&str; 4] = ["harry/phone", "harry/tablet", "ron/phone", "ron/é\u{0}."];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["Home", "-home", "WORK", "School", "", " ", "-"])
            .prop_map(str::to_string),
        3 => "\\PC{0,40}",
        1 => ".{0,12}",
        1 => (0..200_000usize, prop::char::any()).prop_map(|(n, c)| c.to_string().repeat(n / c.len_utf8().max(1))),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let coord = prop_oneof![Just(HOME), Just(WORK), (-89.0..89.0f64, -179.0..179.0f64),];
    let times = -20_000i64..20_000;
    prop_oneof![
        4 => (times.clone(), coord, proptest::option::of(0.0..5_000.0f64),
              proptest::option::of(0.0..300.0f64),
              proptest::option::of(proptest::collection::vec(name(), 0..8)),
              proptest::option::of(name()))
            .prop_map(|(at, p, acc, vel, inregions, tid)| Input::Location {
                tst: tst(at), tid, lat: p.0, lon: p.1, acc, vel, batt: None, inregions,
            }),
        2 => (times, any::<bool>(), name()).prop_map(|(at, enter, region)| Input::Transition {
            tst: tst(at),
            event: if enter { RegionEvent::Enter } else { RegionEvent::Leave },
            region,
            acc: None,
        }),
        1 => proptest::option::of(any::<i64>()).prop_map(|tst| Input::Lwt { tst }),
        1 => proptest::collection::vec((name(), 1.0..5_000.0f64), 0..6).prop_map(|w| Input::Waypoints {
            regions: w.into_iter().map(|(name, radius)| RegionDef { name, lat: WORK.0, lon: WORK.1, radius }).collect(),
        }),
        1 => proptest::option::of(name()).prop_map(|name| Input::Card { name }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..DEVICES.len(), 0..4_000i64, input(), proptest::option::of("\\PC{0,100}"))
            .prop_map(|(device, advance, input, source)| Step::Send { device, advance, input, source }),
        1 => (0..50usize, 0..100i64).prop_map(|(back, advance)| Step::Redeliver { back, advance }),
        1 => (0..30_000i64).prop_map(|advance| Step::Tick { advance }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// A household where one person has three of the fuzzed devices.
fn fuzz_sim(debounce: u64, dwell: u64) -> Sim {
    let mut h = household();
    h.people[0].devices.push("ron/phone".into());
    Sim::with(
        h,
        PresenceConfig {
            debounce: Duration::from_secs(debounce),
            geofence_dwell: Duration::from_secs(dwell),
            lwt_grace: Duration::from_secs(600),
            ..cfg()
        },
    )
}

/// Plays steps on a [`Sim`], the clock moving forward.
struct Player {
    sim: Sim,
    now: i64,
    sent: Vec<DeviceInput>,
}

impl Player {
    fn new(sim: Sim) -> Self {
        Player {
            sim,
            now: 0,
            sent: Vec::new(),
        }
    }

    fn play(&mut self, step: Step) {
        let sim = &mut self.sim;
        match step {
            Step::Send {
                device,
                advance,
                input,
                source,
            } => {
                self.now += advance;
                let mut msg = sim.msg(DEVICES[device], self.now, input);
                if let Some(source) = source {
                    msg.source_id = source;
                }
                sim.deliver(&msg, self.now);
                self.sent.push(msg);
            }
            Step::Redeliver { back, advance } => {
                self.now += advance;
                if let Some(msg) = self.sent.iter().rev().nth(back).cloned() {
                    sim.deliver(&msg, self.now);
                }
            }
            Step::Tick { advance } => {
                self.now += advance;
                if sim.person.is_some() {
                    sim.tick(self.now);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_sequences_keep_the_machine_sound(
        steps in proptest::collection::vec(step(), 1..60),
        debounce in prop::sample::select(vec![0u64, 60]),
    ) {
        let mut player = Player::new(fuzz_sim(debounce, 0));
        let mut newest: BTreeMap<String, i64> = BTreeMap::new();
        for step in steps {
            player.play(step);
            let sim = &player.sim;
            for person in sim.person.iter() {
                let size = serde_json::to_vec(person).unwrap().len();
                prop_assert!(size <= MAX_PERSON_STATE_BYTES, "state of {} bytes", size);
                // Stored state always loads again.
                let back: Result<PersonState, _> = serde_json::from_slice(&serde_json::to_vec(person).unwrap());
                prop_assert!(back.is_ok());
            }
            for (key, dev) in &sim.devices {
                if let Some(fix) = &dev.last_fix {
                    let before = newest.insert(key.clone(), fix.tst);
                    prop_assert!(before.is_none_or(|b| b <= fix.tst),
                        "{}: fix of {} after one of {:?}", key, fix.tst, before);
                    prop_assert!(dev.tracking.last_tst.is_some_and(|t| fix.tst <= t));
                    prop_assert!(fix.tid.as_ref().is_none_or(|t| t.len() <= MAX_TID_BYTES));
                }
                prop_assert!(dev.regions.len() <= MAX_REGIONS_PER_DEVICE);
                prop_assert!(dev.regions.iter().all(|r| r.len() <= MAX_REGION_NAME_BYTES));
                prop_assert!(dev.tracking.recent_sources.len() <= RECENT_SOURCES);
            }
        }
    }

    /// `next_deadline` and `tick` read one list of timers; this checks
    /// that they agree. Before the deadline a tick changes nothing at
    /// all: no event, no device, and the whole person state (devices,
    /// pending timers, `last_event_id` and every other field) equal. At
    /// the deadline (or at `now`, when it passed already) a tick fires
    /// what is due, so the next deadline lies after it.
    #[test]
    fn a_tick_before_the_next_deadline_changes_nothing(
        steps in proptest::collection::vec(step(), 1..40),
        debounce in prop::sample::select(vec![0u64, 60]),
        dwell in prop::sample::select(vec![0u64, 120]),
        early in 0.0..1.0f64,
    ) {
        let mut player = Player::new(fuzz_sim(debounce, dwell));
        for step in steps {
            player.play(step);
            let sim = &player.sim;
            let (Some(person), Some(deadline)) = (sim.person.clone(), sim.person.as_ref().and_then(|_| sim.deadline())) else {
                continue;
            };
            let now = t(player.now);
            if deadline > now {
                let at = (now + (deadline - now) * early).min(deadline - time::Duration::NANOSECOND);
                let out = tick(person.clone(), at, &sim.household, &sim.cfg);
                prop_assert!(out.events.is_empty(), "tick at {} before {}: {:?}", at, deadline, brief(&out.events));
                prop_assert!(out.devices.is_empty(), "tick at {} before {} changed devices", at, deadline);
                prop_assert_eq!(out.person.as_ref(), Some(&person), "tick at {} before {}", at, deadline);
            }
            let at = deadline.max(now);
            let out = tick(person, at, &sim.household, &sim.cfg);
            let after = out.person.as_ref().expect("a ticked person stays");
            let next = next_deadline(after, &sim.household, &sim.cfg);
            prop_assert!(next.is_none_or(|n| n > at), "tick at {}: next deadline {:?}", at, next);
        }
    }
}

// ---------------------------------------------------------------------------

proptest! {
    /// Fixes in any order: the newest one ends up as the last fix, and the
    /// device's place is what the newest fix alone would give.
    #[test]
    fn order_never_goes_back(order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
                             spots in proptest::collection::vec(0..3usize, 8)) {
        let points = [HOME, WORK, north(HOME, 4_000.0)];
        let snapshot: [&[&str]; 3] = [&["Home"], &["Work"], &[]];
        let mut sim = Sim::new();
        for (n, i) in order.iter().enumerate() {
            // An hour apart: never fast enough to count as Traveling.
            let at = 3_600 * *i as i64;
            sim.send("harry/phone", 30_000 + n as i64, loc_in(at, points[spots[*i]], snapshot[spots[*i]]));
        }
        let newest = order.iter().copied().max().unwrap();
        let dev = sim.device("harry/phone");
        prop_assert_eq!(dev.last_fix.as_ref().unwrap().tst, tst(3_600 * newest as i64));
        prop_assert_eq!(dev.tracking.last_tst, Some(tst(3_600 * newest as i64)));
        let want = ["Home", "Work", "Away"][spots[newest]];
        prop_assert_eq!(sim.place(), want);
    }
}
