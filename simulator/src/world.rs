//! Who is simulated: households, their places (with coordinates), people and
//! their devices — taken from a Whereabouts config file, or generated.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use shared::config::{Config, DeviceEntry, Household, Person, Region};
use shared::topic::TopicPattern;

use crate::rng::{Rng, hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Android,
    Ios,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mqtt,
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// The name as the household's `places` spell it.
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Metres.
    pub radius: f64,
}

/// One simulated phone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    pub household: String,
    pub user: String,
    pub device: String,
    /// The base MQTT topic (`owntracks/<user>/<device>` or as the pattern says).
    pub topic: String,
    pub platform: Platform,
    pub transport: Transport,
    /// Payload encryption secret (from `[[ingest.devices]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// HTTP-mode password (from `[[ingest.devices]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The two-character tracker id the app shows.
    pub tid: String,
    /// How this phone spells region names: as configured, lower case,
    /// upper case, or with the app's `-` delayed-leave marker.
    pub naming: u8,
    /// The person's main device moves with them; others stay at home.
    pub primary: bool,
}

impl Device {
    pub fn id(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }

    /// A region name as this phone spells it.
    pub(crate) fn region_name(&self, place: &str) -> String {
        match self.naming % 4 {
            0 => place.to_string(),
            1 => place.to_lowercase(),
            2 => place.to_uppercase(),
            _ => format!("-{place}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimPerson {
    pub name: String,
    /// Indexes into [`World::devices`].
    pub devices: Vec<usize>,
    /// Where this person spends the working day (a place name).
    pub day_place: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimHousehold {
    pub name: String,
    /// `places[0]` is home.
    pub places: Vec<Place>,
    pub people: Vec<SimPerson>,
}

impl SimHousehold {
    pub fn place(&self, name: &str) -> Option<&Place> {
        self.places
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct World {
    pub seed: u64,
    pub households: Vec<SimHousehold>,
    pub devices: Vec<Device>,
}

/// Where generated households live (around Exeter); each gets its own spot.
const BASE: (f64, f64) = (50.72, -3.53);

/// Metres to degrees at the base latitude, for small offsets.
fn offset(lat: f64, lon: f64, north_m: f64, east_m: f64) -> (f64, f64) {
    let dlat = north_m / 111_320.0;
    let dlon = east_m / (111_320.0 * lat.to_radians().cos());
    (lat + dlat, lon + dlon)
}

impl World {
    /// The world a config describes: every configured person with devices.
    /// Places take their coordinates from the household's `regions`; a place
    /// without one is put a few kilometres from home (the phones define it
    /// themselves then, as the apps do).
    pub fn from_config(config: &Config, seed: u64) -> anyhow::Result<World> {
        // The first pattern: where a phone not moved yet publishes.
        let pattern = TopicPattern::parse(config.ingest.topic_patterns()[0])
            .context("ingest.topic_patterns")?;
        let mut world = World {
            seed,
            households: Vec::new(),
            devices: Vec::new(),
        };
        for (hi, (name, household)) in config.households.iter().enumerate() {
            if household.people.iter().all(|p| p.devices.is_empty()) {
                continue;
            }
            let mut rng = Rng::derive(seed, &[hash(name)]);
            let home_guess = offset(BASE.0, BASE.1, hi as f64 * 3_000.0, hi as f64 * 2_000.0);
            let home = household
                .regions
                .first()
                .map(|r| (r.lat, r.lon))
                .unwrap_or(home_guess);
            let mut places = Vec::new();
            for (pi, place) in household.places.iter().enumerate() {
                let region = household
                    .regions
                    .iter()
                    .find(|r| r.name.eq_ignore_ascii_case(place));
                let p = match region {
                    Some(r) => Place {
                        name: place.clone(),
                        lat: r.lat,
                        lon: r.lon,
                        radius: r.radius,
                    },
                    None => {
                        let (lat, lon) = if pi == 0 && household.regions.is_empty() {
                            home
                        } else {
                            let angle = rng.range(0.0, std::f64::consts::TAU);
                            let dist = rng.range(3_000.0, 9_000.0);
                            offset(home.0, home.1, dist * angle.cos(), dist * angle.sin())
                        };
                        Place {
                            name: place.clone(),
                            lat,
                            lon,
                            radius: 150.0,
                        }
                    }
                };
                places.push(p);
            }
            if places.is_empty() {
                bail!("households.{name}: no places to simulate");
            }
            let mut people = Vec::new();
            for (person_index, person) in household.people.iter().enumerate() {
                let mut indexes = Vec::new();
                for (di, id) in person.devices.iter().enumerate() {
                    let Some((user, device)) = id.split_once('/') else {
                        bail!("households.{name}: device {id:?} is not user/device");
                    };
                    let entry = device_entry(&config.ingest.devices, name, user, device);
                    let mut drng = Rng::derive(seed, &[hash(name), hash(id)]);
                    let platform = if drng.below(3) == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    };
                    let password = entry.and_then(|e| e.password.clone());
                    world.devices.push(Device {
                        household: name.clone(),
                        user: user.to_string(),
                        device: device.to_string(),
                        topic: pattern.topic_for(name, user, device),
                        platform,
                        transport: if password.is_some() {
                            Transport::Http
                        } else {
                            Transport::Mqtt
                        },
                        secret: entry.and_then(|e| e.secret.clone()),
                        password,
                        tid: tid(world.devices.len()),
                        naming: drng.below(4) as u8,
                        primary: di == 0,
                    });
                    indexes.push(world.devices.len() - 1);
                }
                // Adults work, children go to school: the second place for
                // the first two people, the third (if any) for the rest.
                let day_place = match places.len() {
                    1 => None,
                    2 => Some(places[1].name.clone()),
                    _ if person_index < 2 => Some(places[1].name.clone()),
                    _ => Some(places[2].name.clone()),
                };
                people.push(SimPerson {
                    name: person.name.clone(),
                    devices: indexes,
                    day_place,
                });
            }
            world.households.push(SimHousehold {
                name: name.clone(),
                places,
                people,
            });
        }
        if world.devices.is_empty() {
            bail!("the config names no people with devices: nothing to simulate");
        }
        Ok(world)
    }

    pub fn device(&self, index: usize) -> &Device {
        &self.devices[index]
    }
}

/// The `[[ingest.devices]]` entry for a device: an exact one first, then
/// one for all of the user's devices.
fn device_entry<'a>(
    entries: &'a [DeviceEntry],
    household: &str,
    user: &str,
    device: &str,
) -> Option<&'a DeviceEntry> {
    let fits =
        |e: &&DeviceEntry| e.user == user && e.household.as_deref().is_none_or(|h| h == household);
    entries
        .iter()
        .filter(fits)
        .find(|e| e.device.as_deref() == Some(device))
        .or_else(|| entries.iter().filter(fits).find(|e| e.device.is_none()))
}

/// Two characters from the device's index: unique in a world (the apps'
/// friends are keyed by `tid`, so two devices must never share one).
fn tid(index: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let n = ALPHABET.len();
    if index < n * n {
        format!(
            "{}{}",
            ALPHABET[index / n] as char,
            ALPHABET[index % n] as char
        )
    } else {
        format!("{index:x}")
    }
}

/// Options for a generated world.
#[derive(Debug, Clone, Copy)]
pub struct Generate {
    pub households: usize,
    pub people: usize,
    pub devices_per_person: usize,
    pub seed: u64,
}

/// A config for `households` × `people` × devices: places Home, Work,
/// School with server-side regions; every fifth device in HTTP mode (with a
/// password), every seventh encrypted. Deterministic from the seed.
pub fn generate_config(g: Generate) -> Config {
    let mut config = Config {
        households: BTreeMap::new(),
        ..Config::default()
    };
    let first = format!("family-{:03}", 1);
    config.ingest.default_household = first;
    let mut device_count = 0usize;
    for h in 1..=g.households.max(1) {
        let name = format!("family-{h:03}");
        let mut rng = Rng::derive(g.seed, &[hash(&name)]);
        // Spread households over ~30 km so their places do not overlap.
        let (lat, lon) = offset(
            BASE.0,
            BASE.1,
            rng.range(-15_000.0, 15_000.0),
            rng.range(-15_000.0, 15_000.0),
        );
        let mut regions = vec![Region {
            name: "Home".into(),
            lat,
            lon,
            radius: 100.0,
        }];
        for place in ["Work", "School"] {
            let angle = rng.range(0.0, std::f64::consts::TAU);
            let dist = rng.range(3_000.0, 9_000.0);
            let (plat, plon) = offset(lat, lon, dist * angle.cos(), dist * angle.sin());
            regions.push(Region {
                name: place.into(),
                lat: plat,
                lon: plon,
                radius: 200.0,
            });
        }
        let mut people = Vec::new();
        for p in 1..=g.people.max(1) {
            let user = format!("h{h:03}p{p:02}");
            let devices: Vec<String> = (1..=g.devices_per_person.max(1))
                .map(|d| {
                    if d == 1 {
                        format!("{user}/phone")
                    } else {
                        format!("{user}/device{d}")
                    }
                })
                .collect();
            for id in &devices {
                device_count += 1;
                let (u, d) = id.split_once('/').expect("user/device");
                let password = device_count
                    .is_multiple_of(5)
                    .then(|| format!("pw-{:016x}", hash(id) ^ g.seed));
                let secret = device_count
                    .is_multiple_of(7)
                    .then(|| format!("secret-{:016x}", hash(id).rotate_left(7) ^ g.seed));
                if password.is_some() || secret.is_some() {
                    config.ingest.devices.push(DeviceEntry {
                        household: Some(name.clone()),
                        user: u.into(),
                        device: Some(d.into()),
                        password,
                        secret,
                        require_encryption: None,
                    });
                }
            }
            config
                .ingest
                .user_households
                .insert(user.clone(), name.clone());
            people.push(Person {
                id: None,
                name: format!("Person {h}.{p}"),
                devices,
                color: None,
                share: Default::default(),
                friends: true,
            });
        }
        config.households.insert(
            name.clone(),
            Household {
                token: Some(format!("{name}-token-{:016x}", g.seed)),
                places: vec!["Home".into(), "Work".into(), "School".into()],
                people,
                regions,
                ..Household::default()
            },
        );
    }
    config
}
