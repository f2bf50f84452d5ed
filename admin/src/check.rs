//! `check-config`: what the services would refuse (errors) and what they
//! accept but is likely a mistake (warnings).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use shared::config::Config;

use crate::print_json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// A place no server-side region names: only phones' own regions can
    /// put someone there.
    PlaceWithoutRegion,
    /// Two regions of a household whose circles intersect.
    OverlappingRegions,
    /// A configured person no device can move.
    PersonWithoutDevices,
    /// A device claimed by two people (the first one wins).
    DeviceInTwoPeople,
    /// A token or password that is short, repetitive or the example's.
    WeakSecret,
}

#[derive(Debug, Serialize)]
struct Warning {
    kind: Kind,
    message: String,
}

/// The shortest secret not reported as weak, and the fewest distinct
/// characters.
const STRONG_LEN: usize = 24;
const STRONG_DISTINCT: usize = 10;

/// Why `secret` is weak, if it is.
fn weakness(secret: &str) -> Option<&'static str> {
    let distinct = secret
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if secret.to_ascii_lowercase().contains("change-me") {
        Some("is the example's placeholder")
    } else if secret.chars().count() < STRONG_LEN {
        Some("is shorter than 24 characters")
    } else if distinct < STRONG_DISTINCT {
        Some("has fewer than 10 distinct characters")
    } else {
        None
    }
}

/// Great-circle distance in metres.
fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

fn warnings(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |kind, message: String| out.push(Warning { kind, message });
    let mut owners: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, h) in &config.households {
        for place in &h.places {
            if !h.regions.iter().any(|r| r.name.eq_ignore_ascii_case(place)) {
                warn(
                    Kind::PlaceWithoutRegion,
                    format!(
                        "households.{name}: place {place:?} has no region: only the phones' own regions can reach it"
                    ),
                );
            }
        }
        for (i, a) in h.regions.iter().enumerate() {
            for b in &h.regions[i + 1..] {
                let d = distance_m((a.lat, a.lon), (b.lat, b.lon));
                if d < a.radius + b.radius {
                    warn(
                        Kind::OverlappingRegions,
                        format!(
                            "households.{name}: regions {:?} and {:?} overlap (centres {d:.0} m apart, radii {} + {} m)",
                            a.name, b.name, a.radius, b.radius
                        ),
                    );
                }
            }
        }
        for person in &h.people {
            if person.devices.is_empty() {
                warn(
                    Kind::PersonWithoutDevices,
                    format!("households.{name}: {:?} has no devices", person.id()),
                );
            }
            for device in &person.devices {
                owners
                    .entry(device)
                    .or_default()
                    .push(format!("{name}/{}", person.id()));
            }
        }
        if let Some(token) = &h.token
            && let Some(why) = weakness(token)
        {
            warn(Kind::WeakSecret, format!("households.{name}.token {why}"));
        }
    }
    for (device, people) in owners {
        if people.len() > 1 {
            warn(
                Kind::DeviceInTwoPeople,
                format!("device {device:?} belongs to {}", people.join(" and ")),
            );
        }
    }
    for entry in &config.ingest.devices {
        let who = match &entry.device {
            Some(d) => format!("{}/{d}", entry.user),
            None => entry.user.clone(),
        };
        for (what, secret) in [("password", &entry.password), ("secret", &entry.secret)] {
            if let Some(why) = secret.as_deref().and_then(weakness) {
                warn(
                    Kind::WeakSecret,
                    format!("ingest.devices {who:?}: the {what} {why}"),
                );
            }
        }
    }
    out
}

/// Checks the file; the exit code fails on errors only.
pub(crate) fn run(path: &Path, json: bool) -> ExitCode {
    let (errors, warnings) = match Config::load(Some(path)) {
        // The notifier refuses (at start and on a reload) sinks whose own
        // settings are wrong, which `Config` leaves to it.
        Ok(config) => match notifier::sinks::check(&config) {
            Ok(()) => (Vec::new(), warnings(&config)),
            Err(e) => (vec![format!("{e:#}")], warnings(&config)),
        },
        Err(e) => (vec![format!("{e:#}")], Vec::new()),
    };
    if json {
        let report = serde_json::json!({"errors": errors, "warnings": warnings});
        if let Err(e) = print_json(&report) {
            eprintln!("whereabouts: {e:#}");
            return ExitCode::FAILURE;
        }
    } else {
        for e in &errors {
            println!("error: {e}");
        }
        for w in &warnings {
            println!("warning: {}", w.message);
        }
        if errors.is_empty() && warnings.is_empty() {
            println!("{}: no problems found", path.display());
        }
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_warning_is_found() {
        let config = Config::from_toml(
            r#"
            [ingest]
            default_household = "a"
            [households.a]
            token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            places = ["Home", "Work"]
            [[households.a.people]]
            name = "Ann"
            devices = ["ann/phone"]
            [[households.a.people]]
            name = "Bob"
            devices = ["ann/phone"]
            [[households.a.people]]
            name = "Cat"
            [[households.a.regions]]
            name = "Home"
            lat = 51.5
            lon = -0.12
            radius = 100
            [[households.a.regions]]
            name = "Shop"
            lat = 51.5005
            lon = -0.12
            radius = 50
            "#,
        )
        .unwrap();
        let kinds: Vec<Kind> = warnings(&config).iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::PlaceWithoutRegion,
                Kind::OverlappingRegions,
                Kind::PersonWithoutDevices,
                Kind::WeakSecret,
                Kind::DeviceInTwoPeople,
            ]
        );
        assert!(weakness("d3Kq9-x7LmP2vR8sT4wY6zB1").is_none());
    }
}
