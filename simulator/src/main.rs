//! `whereabouts-sim`: plays simulated OwnTracks phones against a running
//! Whereabouts (see the crate doc of `simulator`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::Config;
use simulator::world::{Generate, World, generate_config};
use simulator::{Pace, RunOptions};

#[derive(Parser)]
#[command(
    name = "whereabouts-sim",
    version,
    about = "Simulated OwnTracks phones"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: shared::telemetry::LogFormat,
}

#[derive(clap::Args)]
struct WorldArgs {
    /// Whereabouts config whose households, people and regions to play;
    /// without it a world is generated (--households, --people, --devices).
    #[arg(long, env = "WHEREABOUTS_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    households: usize,
    #[arg(long, default_value_t = 4)]
    people: usize,
    /// Devices per person (the first moves with them, others stay home).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl WorldArgs {
    fn config(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(path) => Config::load(Some(path)),
            None => Ok(generate_config(Generate {
                households: self.households,
                people: self.people,
                devices_per_person: self.devices,
                seed: self.seed,
            })),
        }
    }
}

#[derive(clap::Args)]
struct EndpointArgs {
    #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// ingest's HTTP address (HTTP-mode devices post to `<url>/pub`).
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:8081")]
    http_url: String,
    #[arg(long, default_value = "whereabouts-sim")]
    client_id: String,
}

impl EndpointArgs {
    fn endpoints(&self) -> simulator::send::Endpoints {
        simulator::send::Endpoints {
            mqtt_url: self.mqtt_url.clone(),
            http_url: self.http_url.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Play the world's days against the broker and ingest.
    Run {
        #[command(flatten)]
        world: WorldArgs,
        #[command(flatten)]
        endpoints: EndpointArgs,
        /// How long a simulated day lasts in real time ("10m": a day in ten
        /// minutes). Ignored with --rate.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        day: Duration,
        /// Messages per second, sustained, instead of the compressed clock.
        #[arg(long)]
        rate: Option<f64>,
        /// Simulated time of day to start at, HH:MM.
        #[arg(long, default_value = "06:00")]
        start: String,
        /// Stop after this much real time.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Stop after this many simulated days (default: one, or forever with --loop).
        #[arg(long)]
        days: Option<u32>,
        /// Keep playing day after day.
        #[arg(long = "loop")]
        looping: bool,
        /// Record every message sent (JSON lines) for `replay`.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Print the generated world's config (TOML) for the services.
    Config {
        #[command(flatten)]
        world: WorldArgs,
    },
    /// Send a recording again, times shifted to now.
    Replay {
        file: PathBuf,
        /// Shift the recorded times (`tst`, `created_at`) by this many
        /// seconds (0: exactly as recorded, so two replays feed identical
        /// input) instead of to now.
        #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
        shift_times: Option<i64>,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
}

fn parse_hhmm(s: &str) -> anyhow::Result<f64> {
    let (h, m) = s.split_once(':').context("--start wants HH:MM")?;
    let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
    anyhow::ensure!(h < 24 && m < 60, "--start {s:?} is not a time of day");
    Ok(f64::from(h * 3600 + m * 60))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::telemetry::init_logging(cli.log_format);
    match cli.command {
        Command::Config { world } => {
            print!(
                "{}",
                toml::to_string(&world.config()?).context("config as TOML")?
            );
        }
        Command::Run {
            world,
            endpoints,
            day,
            rate,
            start,
            duration,
            days,
            looping,
            record,
        } => {
            let config = world.config()?;
            let sim = World::from_config(&config, world.seed)?;
            let pace = match rate {
                Some(r) => Pace::Rate(r),
                None => Pace::Compressed(simulator::plan::DAY / day.as_secs_f64().max(1.0)),
            };
            let options = RunOptions {
                pace,
                start_at: parse_hhmm(&start)?,
                duration,
                days: if looping || duration.is_some() {
                    days
                } else {
                    days.or(Some(1))
                },
                record,
            };
            tracing::info!(
                households = sim.households.len(),
                devices = sim.devices.len(),
                seed = world.seed,
                "simulation starting"
            );
            let shutdown = shared::server::shutdown_on_signals();
            let endpoints = endpoints.endpoints();
            tokio::select! {
                sent = simulator::run(&sim, &endpoints, &options) => {
                    let sent = sent?;
                    tracing::info!(mqtt = sent.mqtt, http = sent.http, http_failed = sent.http_failed, "simulation done");
                }
                _ = shutdown.cancelled() => tracing::info!("stopped by signal"),
            }
        }
        Command::Replay {
            file,
            shift_times,
            endpoints,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let times =
                shift_times.map_or(simulator::ReplayTimes::Now, simulator::ReplayTimes::Shift);
            let sent = simulator::replay_with(&text, &endpoints.endpoints(), times).await?;
            tracing::info!(mqtt = sent.mqtt, http = sent.http, "replay done");
        }
    }
    Ok(())
}
