//! The `whereabouts-sim` binary's commands that need no broker.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_whereabouts-sim"))
        .args(args)
        .env_remove("WHEREABOUTS_CONFIG")
        .output()
        .expect("run whereabouts-sim")
}

#[test]
fn config_prints_a_valid_generated_config() {
    let out = sim(&[
        "config",
        "--households",
        "2",
        "--people",
        "3",
        "--seed",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let config = shared::config::Config::from_toml(&text).expect("valid config");
    assert_eq!(config.households.len(), 2);
    assert!(config.households.values().all(|h| h.people.len() == 3));
    // Deterministic: the same seed prints the same file.
    let again = sim(&[
        "config",
        "--households",
        "2",
        "--people",
        "3",
        "--seed",
        "4",
    ]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}

#[test]
fn a_bad_start_time_is_a_clear_error() {
    let out = sim(&[
        "run",
        "--start",
        "25:00",
        "--mqtt-url",
        "mqtt://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a time of day"), "{err}");
}
