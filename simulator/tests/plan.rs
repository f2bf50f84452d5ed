//! The pure parts of the simulator: determinism, the shapes of what it
//! sends (checked with the pipeline's own parser), the day's behaviours,
//! pacing and recordings.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use shared::owntracks::{self, MessageType};
use simulator::plan::{self, What};
use simulator::render::{Clock, Outgoing, render};
use simulator::world::{Generate, Platform, Transport, World, generate_config};

fn world(households: usize, people: usize, seed: u64) -> World {
    let config = generate_config(Generate {
        households,
        people,
        devices_per_person: 2,
        seed,
    });
    World::from_config(&config, seed).expect("a generated config is playable")
}

const CLOCK: Clock = Clock {
    start_unix: 1_800_000_000.0,
    factor: 1440.0,
};

fn rendered(world: &World, day: u32) -> Vec<Outgoing> {
    plan::day(world, day)
        .iter()
        .enumerate()
        .map(|(i, s)| render(world, s, &CLOCK, i as u64))
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_traffic() {
    let a = world(3, 4, 7);
    let b = world(3, 4, 7);
    assert_eq!(a, b);
    for day in 0..2 {
        let (ra, rb) = (rendered(&a, day), rendered(&b, day));
        assert!(ra.len() > 100, "day {day}: only {} messages", ra.len());
        assert_eq!(ra, rb, "day {day}");
    }
    let other = world(3, 4, 8);
    assert_ne!(rendered(&a, 0), rendered(&other, 0));
    // Days differ from each other too (jitter per day).
    assert_ne!(plan::day(&a, 0).len() as f64, 0.0);
    let d0: Vec<f64> = plan::day(&a, 0).iter().map(|s| s.at).collect();
    let d1: Vec<f64> = plan::day(&a, 1).iter().map(|s| s.at - plan::DAY).collect();
    assert_ne!(d0, d1);
}

/// What `Sender::send` puts on the wire, parsed as ingest parses it.
#[test]
fn every_message_parses_and_decrypts_as_an_app_message() {
    let w = world(4, 5, 42);
    let encrypted = w.devices.iter().filter(|d| d.secret.is_some()).count();
    let http = w
        .devices
        .iter()
        .filter(|d| d.transport == Transport::Http)
        .count();
    assert!(
        encrypted > 0 && http > 0,
        "{encrypted} encrypted, {http} HTTP devices"
    );
    let mut kinds = BTreeSet::new();
    for out in rendered(&w, 0) {
        let device = w.device(out.device);
        let plain = out.message.to_string();
        let wire = match &device.secret {
            Some(s) => serde_json::json!({"_type":"encrypted","data": shared::crypto::encrypt(plain.as_bytes(), s)}).to_string(),
            None => plain,
        };
        let parsed = owntracks::parse(wire.as_bytes()).unwrap_or_else(|r| panic!("{r}: {wire}"));
        let message = owntracks::decrypt(parsed, device.secret.as_deref())
            .unwrap_or_else(|r| panic!("{r}: {}", out.message));
        let suffix = out
            .topic
            .strip_prefix(&device.topic)
            .expect("under the base topic");
        let suffix = suffix.strip_prefix('/');
        assert!(
            shared::topic::fits_suffix(suffix, message.kind),
            "{:?} on {}",
            message.kind,
            out.topic
        );
        kinds.insert(message.kind.as_str());
        let body = &out.message;
        match message.kind {
            MessageType::Location => {
                let loc = message.location().expect("a usable location");
                assert!(loc.acc.is_none_or(|a| a > 0.0));
                // Never an empty inregions: the key is left out instead.
                assert_ne!(body.get("inregions"), Some(&Value::Array(vec![])), "{body}");
                assert_eq!(body["tid"], Value::from(device.tid.clone()));
                match device.platform {
                    Platform::Android => {
                        assert!(
                            body.get("_id").is_some() && body.get("created_at").is_some(),
                            "{body}"
                        );
                        for key in ["conn", "batt", "bs", "t", "vel", "acc"] {
                            assert!(body.get(key).is_some(), "Android {key}: {body}");
                        }
                    }
                    Platform::Ios => {
                        assert!(body.get("_id").is_none(), "{body}");
                        assert_ne!(
                            body.get("vel"),
                            Some(&Value::from(0)),
                            "iOS omits zero vel: {body}"
                        );
                    }
                }
            }
            MessageType::Transition => {
                message.transition().expect("a usable transition");
                if device.platform == Platform::Android {
                    assert!(body.get("rid").is_none(), "Android transitions have no rid");
                }
            }
            MessageType::Card => {
                let card = message.card().expect("a card");
                assert!(
                    card.face.is_some(),
                    "the face survived normalisation: {body}"
                );
            }
            MessageType::Lwt => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["card", "location", "lwt", "transition"]),
        "every kind is sent"
    );
}

#[test]
fn a_day_has_every_behaviour_the_issue_lists() {
    let w = world(2, 4, 3);
    let steps = plan::day(&w, 0);
    let outs: Vec<Outgoing> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| render(&w, s, &CLOCK, i as u64))
        .collect();
    let descs: BTreeSet<String> = outs
        .iter()
        .filter(|o| o.message["_type"] == "transition")
        .map(|o| o.message["desc"].as_str().unwrap().to_string())
        .collect();
    assert!(descs.iter().any(|d| d.starts_with('-')), "{descs:?}");
    assert!(
        descs.iter().any(|d| d.chars().all(|c| !c.is_lowercase())),
        "{descs:?}"
    );
    assert!(
        descs.iter().any(|d| d.chars().all(|c| !c.is_uppercase())),
        "{descs:?}"
    );
    let events: BTreeSet<&str> = outs
        .iter()
        .filter_map(|o| o.message.get("event").and_then(Value::as_str))
        .collect();
    assert_eq!(events, BTreeSet::from(["enter", "leave"]));
    // Traveling: fast fixes outside every region.
    assert!(outs.iter().any(|o| o.message["_type"] == "location"
        && o.message["vel"].as_i64().unwrap_or(0) > 30
        && o.message.get("inregions").is_none()));
    // The LWT burst: several Android phones within a few seconds.
    let lwts: Vec<f64> = steps
        .iter()
        .filter(|s| matches!(s.what, What::Lwt { .. }))
        .map(|s| s.at)
        .collect();
    assert!(lwts.len() >= 3, "{lwts:?}");
    // Lost signal: an hour or more of queued fixes flushed at once.
    let queued = steps
        .iter()
        .filter(|s| s.at - s.content_at() >= 600.0)
        .count();
    let oldest = steps
        .iter()
        .map(|s| s.at - s.content_at())
        .fold(0.0, f64::max);
    assert!(
        queued >= 10 && oldest >= 3600.0,
        "{queued} queued, oldest {oldest} s"
    );
    // Every person reaches home and the place of their day.
    for household in &w.households {
        for person in &household.people {
            let primary = person.devices[0];
            let entered: BTreeSet<String> = steps
                .iter()
                .filter(|s| s.device == primary)
                .filter_map(|s| match &s.what {
                    What::Transition {
                        event: plan::Event::Enter,
                        place,
                        ..
                    } => Some(place.clone()),
                    _ => None,
                })
                .collect();
            assert!(entered.contains("Home"), "{}: {entered:?}", person.name);
            if let Some(p) = &person.day_place {
                assert!(entered.contains(p), "{}: {entered:?}", person.name);
            }
        }
    }
    // Sent in time order, per device too.
    assert!(steps.windows(2).all(|p| p[0].at <= p[1].at));
}

#[test]
fn tst_is_the_wall_clock_and_queued_fixes_are_older() {
    let w = world(1, 4, 5);
    for (i, step) in plan::day(&w, 0).iter().enumerate() {
        let out = render(&w, step, &CLOCK, i as u64);
        let Some(tst) = out.message.get("tst").and_then(Value::as_i64) else {
            continue;
        };
        if out.message["_type"] == "lwt" {
            continue; // the connect time, earlier by design
        }
        assert_eq!(tst, CLOCK.unix(step.content_at()), "{}", out.message);
        assert!(tst <= CLOCK.unix(step.at));
    }
    assert_eq!(CLOCK.unix(1440.0 * 60.0), 1_800_000_060);
}

#[test]
fn a_config_file_gives_its_people_places_and_credentials() {
    let config = shared::config::Config::from_toml(include_str!("../../whereabouts.example.toml"))
        .expect("the example config");
    let w = World::from_config(&config, 1).unwrap();
    let harry = w.devices.iter().find(|d| d.id() == "harry/phone").unwrap();
    assert_eq!(
        harry.transport,
        Transport::Http,
        "harry/phone has a password"
    );
    assert!(harry.secret.is_some());
    let ron = w.devices.iter().find(|d| d.id() == "ron/phone").unwrap();
    assert_eq!(
        ron.transport,
        Transport::Http,
        "a password for all of ron's devices"
    );
    let weasleys = &w.households[0];
    let school = weasleys.place("School").unwrap();
    assert_eq!(
        (school.lat, school.lon, school.radius),
        (56.8198, -4.1866, 400.0)
    );
    // Work has no region: placed near home, not at 0/0.
    assert!(weasleys.place("Work").unwrap().lat > 40.0);
    let tids: BTreeSet<&str> = w.devices.iter().map(|d| d.tid.as_str()).collect();
    assert_eq!(tids.len(), w.devices.len(), "tids are unique");
}

#[tokio::test]
async fn the_pacer_sustains_its_rate() {
    let pacer = simulator::Pacer::new(200.0);
    assert_eq!(
        pacer.deadline(100) - pacer.deadline(0),
        Duration::from_millis(500)
    );
    let start = tokio::time::Instant::now();
    for i in 0..100 {
        tokio::time::sleep_until(pacer.deadline(i)).await;
    }
    let took = start.elapsed();
    // 99 intervals of 5 ms; generous upper bound for a loaded machine.
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[test]
fn a_recording_reads_back_and_shifts_to_now() {
    let w = world(1, 2, 9);
    let header = simulator::send::RecordHeader {
        whereabouts_sim: 1,
        seed: 9,
        started_unix: 1_800_000_000,
        devices: w.devices.clone(),
    };
    let lines: Vec<String> = rendered(&w, 0)
        .into_iter()
        .take(20)
        .enumerate()
        .map(|(i, o)| {
            serde_json::to_string(&simulator::send::RecordLine {
                ms: i as u64 * 10,
                outgoing: o,
            })
            .unwrap()
        })
        .collect();
    let text = format!(
        "{}\n{}\n",
        serde_json::to_string(&header).unwrap(),
        lines.join("\n")
    );
    let (back, recorded) = simulator::read_recording(&text).unwrap();
    assert_eq!(back.devices, w.devices);
    assert_eq!(recorded.len(), 20);
    let line = recorded
        .iter()
        .find(|l| l.outgoing.message.get("tst").is_some())
        .expect("a message with tst");
    let mut message = line.outgoing.message.clone();
    let before = message["tst"].as_i64().unwrap();
    simulator::shift_times(&mut message, 100);
    assert_eq!(message["tst"].as_i64().unwrap(), before + 100);
    assert!(simulator::read_recording("not json\n").is_err());
}

/// Not a check: `cargo test -p simulator --test plan -- --ignored --nocapture dump`
/// prints a day to read.
#[test]
#[ignore]
fn dump() {
    let config =
        shared::config::Config::from_toml(include_str!("../../whereabouts.example.toml")).unwrap();
    let w = World::from_config(&config, 1).unwrap();
    for (i, s) in plan::day(&w, 0).iter().enumerate() {
        let o = render(&w, s, &CLOCK, i as u64);
        println!(
            "{:>6.0} {:>6.0} {} {}",
            s.at,
            s.at - s.content_at(),
            o.topic,
            o.message
        );
    }
}

#[test]
fn a_generated_config_is_a_valid_config_file() {
    let config = generate_config(Generate {
        households: 10,
        people: 5,
        devices_per_person: 4,
        seed: 1,
    });
    let text = toml::to_string(&config).unwrap();
    let back = shared::config::Config::from_toml(&text).expect("validates");
    let w = World::from_config(&back, 1).unwrap();
    assert_eq!(w.devices.len(), 200);
    assert_eq!(w.households.len(), 10);
    // Every device maps to its household's person.
    for d in &w.devices {
        let h = &back.households[&d.household];
        assert!(
            h.person_for(&d.user, &d.device)
                .is_some_and(|p| p.starts_with("Person"))
        );
        assert_eq!(back.ingest.user_households[&d.user], d.household);
    }
}

/// The demo's household has each kind of phone the issue asks for.
#[test]
fn the_demo_config_plays_every_kind_of_phone() {
    let config = shared::config::Config::from_toml(include_str!("../../deploy/demo.toml"))
        .expect("deploy/demo.toml is valid");
    let w = World::from_config(&config, simulator::DEMO_SEED).unwrap();
    let kinds: Vec<(String, Platform, Transport, bool)> = w
        .devices
        .iter()
        .map(|d| (d.user.clone(), d.platform, d.transport, d.secret.is_some()))
        .collect();
    assert!(kinds.iter().any(|k| k.1 == Platform::Ios), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .any(|k| k.1 == Platform::Android && k.2 == Transport::Mqtt),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.2 == Transport::Http), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.3), "{kinds:?}");
    // Arthur's is the Android phone whose LWT shows (back after 40 min).
    let arthur = w.devices.iter().find(|d| d.user == "arthur").unwrap();
    assert_eq!(
        (arthur.platform, arthur.transport),
        (Platform::Android, Transport::Mqtt)
    );
    let day = plan::day(&w, 0);
    assert!(
        day.iter()
            .any(|s| matches!(s.what, What::Lwt { .. }) && w.device(s.device).user == "arthur")
    );
}
