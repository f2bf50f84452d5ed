//! Refusing to serve an unsafe configuration beyond loopback: the secrets of
//! `whereabouts.example.toml` are published, and a household without a token
//! is open to anyone who can reach the port.
//!
//! On loopback everything stays allowed (tests, `scripts/run.sh`, a look at
//! the example). Beyond it a service refuses to start when
//! - the config was not given (the built-in household is public and meant for
//!   this machine only),
//! - any secret equals one of the example file's, or still says `change-me`,
//! - a household has no token and is not marked `public = true`.

use std::net::{IpAddr, SocketAddr};

use anyhow::bail;

use crate::config::Config;

/// Whether `addr` (`host:port`, as given to bind) listens on loopback only.
fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every secret the config holds: household tokens, HTTP-mode passwords,
/// encryption secrets, and the sinks' keys (`config::SINK_SECRET_KEYS`).
fn secrets(config: &Config) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    out.extend(
        config
            .households
            .values()
            .filter_map(|h| h.token.as_deref()),
    );
    for device in &config.ingest.devices {
        out.extend(device.password.as_deref());
        out.extend(device.secret.as_deref());
    }
    for sink in &config.notifier.sinks {
        out.extend(sink.secrets());
    }
    out
}

/// The secrets published in `whereabouts.example.toml`.
fn example_secrets() -> Vec<String> {
    let example = include_str!("../../whereabouts.example.toml");
    let config = Config::from_toml(example).expect("the example config parses (unit-tested)");
    secrets(&config).into_iter().map(str::to_string).collect()
}

/// Refuses `config` for a service bound to `addr` when that is unsafe (see
/// the module's doc). `from_file`: the config came from `WHEREABOUTS_CONFIG`.
pub fn check(config: &Config, from_file: bool, addr: &str) -> anyhow::Result<()> {
    if is_loopback(addr) {
        return Ok(());
    }
    const HOW: &str = "run scripts/first-run.sh for a config with fresh secrets, \
                       or bind to 127.0.0.1";
    if !from_file {
        bail!(
            "no WHEREABOUTS_CONFIG: the built-in household is public and served on loopback \
             only, but the listen address is {addr}; {HOW}"
        );
    }
    let published = example_secrets();
    for secret in secrets(config) {
        if published.iter().any(|p| p == secret) || secret.contains("change-me") {
            bail!(
                "the config holds a secret of whereabouts.example.toml (or one still saying \
                 change-me) and the listen address {addr} is beyond loopback; {HOW}"
            );
        }
    }
    for (name, household) in &config.households {
        if household.token.is_none() && !household.public {
            bail!(
                "households.{name} has no token and the listen address {addr} is beyond \
                 loopback: set a token, or `public = true` to serve it to anyone"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for addr in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "0.0.0.0:8080",
            "[::]:8080",
            "192.168.1.2:8080",
            "example.org:80",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn the_example_is_refused_beyond_loopback_only() {
        let example = include_str!("../../whereabouts.example.toml");
        let config = Config::from_toml(example).unwrap();
        assert!(!example_secrets().is_empty());
        check(&config, true, "127.0.0.1:8080").unwrap();
        let err = check(&config, true, "0.0.0.0:8080").unwrap_err();
        assert!(err.to_string().contains("example"), "{err}");
    }

    #[test]
    fn the_builtin_default_is_loopback_only() {
        let config = Config::default();
        check(&config, false, "127.0.0.1:8080").unwrap();
        assert!(check(&config, false, "0.0.0.0:8080").is_err());
    }

    #[test]
    fn households_need_a_token_or_public_beyond_loopback() {
        let open = Config::from_toml("[households.home]\n").unwrap();
        check(&open, true, "127.0.0.1:8080").unwrap();
        let err = check(&open, true, "0.0.0.0:8080").unwrap_err();
        assert!(err.to_string().contains("public = true"), "{err}");
        let public = Config::from_toml("[households.home]\npublic = true\n").unwrap();
        check(&public, true, "0.0.0.0:8080").unwrap();
        let fresh =
            Config::from_toml("[households.home]\ntoken = \"0123456789abcdef0123456789abcdef\"\n")
                .unwrap();
        check(&fresh, true, "0.0.0.0:8080").unwrap();
        assert!(
            Config::from_toml("[households.home]\npublic = true\ntoken = \"0123456789abcdef0\"\n")
                .is_err(),
            "a token and public = true contradict each other"
        );
    }
}
