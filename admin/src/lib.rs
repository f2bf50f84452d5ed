//! The admin CLI `whereabouts`: what the system knows, read from NATS with
//! the admin credentials (the same `NATS_*` settings as the services), and
//! the tools around it. Every command prints JSON with `--json`.
//!
//! Layout:
//! - `nats`: connecting once (an unreachable server is an error naming the
//!   redacted URL) and reading a stream up to its end.
//! - `state`: `status` and `devices`, from the `presence` KV bucket.
//! - `history`: `history` (a person's timeline, "today" in the household's
//!   time zone) and `tail`, from the PRESENCE stream.
//! - `export`: `export`, OWNTRACKS envelopes of a time range as JSON lines.
//! - `what_if`: `what-if`, an exported trace replayed offline
//!   (`presence::replay`) under the current and a candidate configuration.
//! - `check`: `check-config`, errors and warnings of a config file.
//! - `acl`: `mosquitto-acl` and `nats-phones`, the phones' broker
//!   permissions that follow from a config.
//! - `commands`: `push-regions`, `locate`, `configure`, through the
//!   `whereabouts-commands` NATS service.
//! - `forget`: `forget`, a person's or device's keys, stream subjects and
//!   retained MQTT topics removed.
//! - `table`: human output as aligned columns.
//!
//! `simulate` runs the simulator's binary, `whereabouts-sim`.

mod acl;
mod check;
mod commands;
mod export;
mod forget;
mod history;
mod nats;
mod state;
mod table;
mod what_if;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::cli::CommonArgs;
use shared::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "whereabouts",
    version,
    about = "Whereabouts admin: status, devices, history, exports, what-if, config checks, commands to phones, forgetting"
)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Print JSON (one document, or one line per item for streams).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Each person's place, since when, status and battery.
    Status { household: Option<String> },
    /// Each device: last seen, last fix, battery.
    Devices { household: Option<String> },
    /// Presence events as they happen.
    Tail {
        household: Option<String>,
        /// Start this long ago (`10m`, `2h`) instead of now.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// A person's timeline: place, from, to.
    History {
        person: String,
        #[arg(long)]
        household: Option<String>,
        /// `today`, `yesterday` or `YYYY-MM-DD`, in the household's time zone.
        #[arg(long)]
        day: Option<String>,
    },
    /// A person's or a household's OWNTRACKS envelopes, as JSON lines.
    Export {
        #[arg(long)]
        household: String,
        /// Only this person's devices (by the config), or this user's.
        #[arg(long)]
        person: Option<String>,
        /// RFC 3339 time, or a duration ago (`24h`); default: everything.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, or a duration ago; default: now.
        #[arg(long)]
        until: Option<String>,
    },
    /// Replays an exported trace under a candidate config beside the
    /// current one.
    WhatIf {
        /// JSON lines from `whereabouts export`.
        trace: PathBuf,
        /// The candidate configuration.
        #[arg(long = "config")]
        candidate: PathBuf,
        /// The configuration the trace was recorded with (default: the
        /// global WHEREABOUTS_CONFIG, else the built-in default).
        #[arg(long)]
        current: Option<PathBuf>,
    },
    /// Errors and warnings of a configuration file.
    CheckConfig { file: PathBuf },
    /// Prints the mosquitto ACL for the config's users and households (a
    /// phone writes its own user's topics and reads its household's).
    MosquittoAcl,
    /// Prints the phones' users for nats-server's MQTT listener
    /// (`nats-phones.conf`): the same grants on subjects. Reads
    /// `<user> <password>` lines on stdin; the passwords are stored as
    /// bcrypt hashes, and users without one are left out.
    NatsPhones {
        /// bcrypt's cost (4–31): 11 as `nats server passwd`.
        #[arg(long, default_value_t = 11)]
        cost: u32,
    },
    /// Sends the household's regions to each of its devices.
    PushRegions { household: String },
    /// Asks each device of a person for a location now.
    Locate {
        person: String,
        #[arg(long)]
        household: Option<String>,
    },
    /// Moves a device to the household topic namespace
    /// (`owntracks/<household>/<user>/<device>`).
    Configure {
        /// `user/device`.
        device: String,
        #[arg(long)]
        household: String,
    },
    /// Removes a person (or a `user/device`): their state, positions,
    /// history, raw messages and retained MQTT/Home Assistant topics.
    Forget {
        /// A person id, or `user/device`.
        target: String,
        #[arg(long)]
        household: Option<String>,
        /// Broker of the `mqtt` sinks that name none.
        #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
        mqtt_url: String,
        /// Broker user (the notifier's account may clear its topics).
        #[arg(long, env = "MQTT_USERNAME")]
        mqtt_username: Option<String>,
        #[arg(long, env = "MQTT_PASSWORD", hide_env_values = true)]
        mqtt_password: Option<String>,
        /// PEM CA for an `mqtts://` broker with a private CA.
        #[arg(long, env = "MQTT_CA_FILE")]
        mqtt_ca_file: Option<PathBuf>,
    },
    /// Runs the simulator (`whereabouts-sim`) with these arguments.
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs one command; the exit code says whether it found problems.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let common = &cli.common;
    let config = || Config::load(common.config.as_deref());
    match cli.command {
        Command::CheckConfig { file } => return Ok(check::run(&file, json)),
        Command::MosquittoAcl => print!("{}", acl::mosquitto_acl(&config()?)?),
        Command::NatsPhones { cost } => {
            let passwords = read_passwords(std::io::stdin().lock())?;
            let (file, skipped) = acl::nats_phones(&config()?, &passwords, cost)?;
            if !skipped.is_empty() {
                eprintln!(
                    "no password on stdin for {}: left out (HTTP-mode phones need none)",
                    skipped.join(", ")
                );
            }
            print!("{file}");
        }
        Command::WhatIf {
            trace,
            candidate,
            current,
        } => {
            let current = Config::load(current.as_deref().or(common.config.as_deref()))
                .context("the current config")?;
            let candidate = Config::load(Some(&candidate)).context("the candidate config")?;
            what_if::run(&trace, &current, &candidate, json)?;
        }
        Command::Simulate { args } => return simulate(&args),
        command => {
            let nats = nats::Nats::connect(common).await?;
            match command {
                Command::Status { household } => state::status(&nats, household, json).await?,
                Command::Devices { household } => state::devices(&nats, household, json).await?,
                Command::Tail {
                    household,
                    since,
                    count,
                } => history::tail(&nats, household, since, count, json).await?,
                Command::History {
                    person,
                    household,
                    day,
                } => history::history(&nats, &config()?, &person, household, day, json).await?,
                Command::Export {
                    household,
                    person,
                    since,
                    until,
                } => {
                    let range = export::Range::parse(since.as_deref(), until.as_deref())?;
                    export::run(&nats, &config()?, &household, person.as_deref(), range).await?
                }
                Command::PushRegions { household } => {
                    return commands::push_regions(&nats, &household, json).await;
                }
                Command::Locate { person, household } => {
                    return commands::locate(&nats, &config()?, &person, household, json).await;
                }
                Command::Configure { device, household } => {
                    return commands::configure(&nats, &device, &household, json).await;
                }
                Command::Forget {
                    target,
                    household,
                    mqtt_url,
                    mqtt_username,
                    mqtt_password,
                    mqtt_ca_file,
                } => {
                    let mqtt = forget::MqttArgs {
                        url: mqtt_url,
                        username: mqtt_username,
                        password: mqtt_password,
                        ca_file: mqtt_ca_file,
                    };
                    forget::run(&nats, &config()?, &target, household, &mqtt, json).await?
                }
                Command::CheckConfig { .. }
                | Command::MosquittoAcl
                | Command::NatsPhones { .. }
                | Command::WhatIf { .. }
                | Command::Simulate { .. } => {
                    unreachable!("handled without NATS")
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `whereabouts-sim` beside this binary, else on PATH.
fn simulate(args: &[String]) -> anyhow::Result<ExitCode> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("whereabouts-sim")))
        .filter(|path| path.exists());
    let program = beside.unwrap_or_else(|| "whereabouts-sim".into());
    let status = std::process::Command::new(&program)
        .args(args)
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Prints `value` as JSON.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// RFC 3339, as the contract writes times.
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// `<user> <password>` lines (blank lines and `#` comments skipped).
fn read_passwords(input: impl std::io::BufRead) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading passwords from stdin")?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, password)) = line.split_once(char::is_whitespace) else {
            anyhow::bail!("stdin line {}: expected `<user> <password>`", n + 1);
        };
        out.insert(user.to_string(), password.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::read_passwords;

    #[test]
    fn passwords_are_read_per_line_and_a_bad_line_is_named() {
        let read = read_passwords("# phones\n\njane  s3cret pass\nbob x\n".as_bytes()).unwrap();
        assert_eq!(read["jane"], "s3cret pass");
        assert_eq!(read["bob"], "x");
        let error = read_passwords("jane x\nbob\n".as_bytes()).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
