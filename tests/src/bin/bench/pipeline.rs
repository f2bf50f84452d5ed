//! `bench pipeline`: the whole pipeline (phones' MQTT broker → ingest →
//! presence → notifier) against the raw baselines measured in the same run.
//!
//! The phones' broker is the [`Source`]: mosquitto, bridged by ingest, or
//! nats-server's own MQTT listener (`deploy/nats-server-mqtt.conf`, ingest
//! with `[ingest.nats_mqtt]` and no mosquitto, every service as its own
//! NATS user). Both run the same code below; `--source both` measures
//! them in one run.
//!
//! The world is the simulator's (`generate_config`: households of five
//! people with two devices each, places Home, Work, School), its messages
//! rendered by the simulator as the apps send them. Two workloads:
//! realistic (a fix changes its device's place once in 20) and worst case
//! (every fix changes it). Each fix carries a unique longitude offset (a
//! fraction of a millimetre), which the event's state echoes: that is how
//! an SSE event is matched to the publish that caused it.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use simulator::plan::{Fix, Step, What};
use simulator::render::{Clock, render};
use simulator::world::{Generate, World, generate_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whereabouts_tests::{
    Mosquitto, NatsServer, Service, deploy_password, phone_password, stream_count,
};

use super::{now_ns, options, peak_rss_mib, percentile, raw_rate, raw_rate_at};

/// The phones' MQTT broker.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Source {
    /// mosquitto, bridged by ingest.
    Mosquitto,
    /// nats-server's own MQTT listener; ingest reads its `$MQTT_msgs`.
    NatsMqtt,
}

impl Source {
    /// `--source`'s value (absent: mosquitto); `None` if unknown.
    pub(crate) fn parse(arg: Option<&str>) -> Option<Vec<Source>> {
        match arg {
            None | Some("mosquitto") => Some(vec![Source::Mosquitto]),
            Some("nats-mqtt") => Some(vec![Source::NatsMqtt]),
            Some("both") => Some(vec![Source::Mosquitto, Source::NatsMqtt]),
            Some(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Source::Mosquitto => "mosquitto",
            Source::NatsMqtt => "nats-mqtt",
        }
    }
}

/// The load generator's user in the PHONES account: one MQTT connection
/// publishes for every simulated phone, so it may publish every user's
/// topics (a real phone may publish only its own; see
/// `deploy/nats-phones.example.conf`). `subscribe` is for the raw
/// baseline's `owntracks/#`, which is `owntracks` and `owntracks.>`.
const BENCH_PHONE: &str = "bench";

/// nats-server with the phones' MQTT listener and [`BENCH_PHONE`] as the
/// only phone user.
async fn phones_server() -> NatsServer {
    let phones = format!(
        "users = [{{ user: {BENCH_PHONE}, password: \"{}\", \
         permissions: {{ publish: [\"owntracks.>\"], subscribe: [\"owntracks\", \"owntracks.>\"] }} }}]\n",
        phone_password(BENCH_PHONE)
    );
    NatsServer::start_phones_with(&phones).await
}

/// How long and how big: `--quick` makes a run of about two minutes.
#[derive(Clone, Copy)]
pub(crate) struct Scale {
    /// Messages of each baseline and of the sustained run.
    messages: usize,
    /// Seconds of each paced latency run.
    seconds: u64,
    /// Devices of the world (people × 2).
    devices: usize,
    sse_clients: usize,
    rates: &'static [u64],
}

impl Scale {
    pub(crate) fn new(quick: bool) -> Scale {
        let devices = env_usize("BENCH_DEVICES").unwrap_or(10_000);
        let sse_clients = env_usize("BENCH_SSE_CLIENTS").unwrap_or(1_000);
        if quick {
            Scale {
                messages: 20_000,
                seconds: 3,
                devices,
                sse_clients,
                rates: &[1_000, 5_000],
            }
        } else {
            Scale {
                messages: 100_000,
                seconds: 10,
                devices,
                sse_clients,
                rates: &[1_000, 5_000, 20_000],
            }
        }
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// A device's place changes on one fix in 20.
    Realistic,
    /// Every fix changes its device's place.
    WorstCase,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Realistic => "realistic",
            Workload::WorstCase => "worst case",
        }
    }
}

/// The simulator's world and the messages its phones send.
struct Traffic {
    world: World,
    config: String,
    workload: Workload,
    /// Fixes sent so far (each has its own longitude offset).
    sent: u64,
    /// Per (household, person index): how often the person moved so far.
    moves: HashMap<(String, usize), usize>,
}

impl Traffic {
    fn new(devices: usize, workload: Workload, source: Source) -> Traffic {
        let people = 5;
        let households = devices.div_ceil(people * 2).max(1);
        let mut config = generate_config(Generate {
            households,
            people,
            devices_per_person: 2,
            seed: 7,
        });
        // Plain MQTT phones, open households: the benchmark measures the
        // pipeline, not encryption or token checks.
        config.ingest.devices.clear();
        for household in config.households.values_mut() {
            household.token = None;
        }
        config.presence.debounce = Duration::ZERO;
        config.notifier.max_sse_clients_per_household = 100_000;
        if source == Source::NatsMqtt {
            config.ingest.nats_mqtt = Some(Default::default());
        }
        let world = World::from_config(&config, 7).expect("world from config");
        let config = toml::to_string(&config).expect("config as TOML");
        Traffic {
            world,
            config,
            workload,
            sent: 0,
            moves: HashMap::new(),
        }
    }

    /// The next message: (topic, payload, the key its events echo).
    fn next(&mut self) -> (String, Vec<u8>, u64) {
        let i = self.sent;
        self.sent += 1;
        let devices = self.world.devices.len() as u64;
        let index = (i % devices) as usize;
        let device = &self.world.devices[index];
        let household = self
            .world
            .households
            .iter()
            .find(|h| h.name == device.household)
            .expect("device's household");
        let every: u64 = match self.workload {
            Workload::Realistic => 20,
            Workload::WorstCase => 1,
        };
        // A person's devices agree on the place, or every fix of the other
        // one would move the person.
        let person = household
            .people
            .iter()
            .position(|p| p.devices.contains(&index))
            .unwrap_or(0);
        // One fix in `every` moves its person (the first of each device
        // only places it); the person's other device follows on its next.
        let key_person = (household.name.clone(), person);
        let first = self.sent <= devices;
        let moves = self.moves.entry(key_person).or_insert(0);
        if !first && i.is_multiple_of(every) {
            *moves += 1;
        }
        let place = &household.places[(*moves + person) % household.places.len()];
        let key = i % 1_000_000;
        let lon = place.lon + key as f64 * 1e-10;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let step = Step {
            at: 0.0,
            device: index,
            what: What::Location(Fix {
                at: 0.0,
                lat: place.lat,
                lon,
                vel: 0.0,
                acc: 10.0,
                alt: 30.0,
                cog: 0.0,
                batt: 80,
                bs: 1,
                conn: 'w',
                regions: vec![place.name.clone()],
                trigger: 'p',
            }),
        };
        let clock = Clock {
            start_unix: now,
            factor: 1.0,
        };
        let out = render(&self.world, &step, &clock, i);
        (
            out.topic,
            out.message.to_string().into_bytes(),
            lon.to_bits(),
        )
    }
}

/// CPU seconds (user + system) of a process so far.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => f64::NAN,
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// One MQTT publisher with a window of 1,000 unacknowledged messages.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    published: u64,
}

impl Publisher {
    async fn connect(url: &str, id: &str) -> Publisher {
        let (client, mut eventloop) = AsyncClient::new(options(url, id), 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        Publisher {
            client,
            acked,
            published: 0,
        }
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        self.published += 1;
    }

    async fn all_acked(&self) {
        while self.acked.load(Ordering::Relaxed) < self.published {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// JetStream acknowledged publishes, 1,024 in flight, file storage.
async fn jetstream_rate(n: usize) -> f64 {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (js, payload) = (js.clone(), payload.clone());
            async move {
                js.publish(format!("bench.{}", i % 1000), payload)
                    .await
                    .expect("publish")
                    .await
                    .expect("ack")
            }
        })
        .buffer_unordered(1024)
        .count()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// KV puts, 512 in flight, over 10,000 keys.
async fn kv_rate(n: usize) -> f64 {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let value = bytes::Bytes::from(vec![b'x'; 1500]);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (kv, value) = (kv.clone(), value.clone());
            async move {
                kv.put(format!("k{}", i % 10_000), value)
                    .await
                    .expect("put")
            }
        })
        .buffer_unordered(512)
        .count()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// The three services and their brokers.
struct Pipeline {
    nats: NatsServer,
    /// With [`Source::Mosquitto`].
    mosquitto: Option<Mosquitto>,
    services: Vec<Service>,
    /// Where the load generator publishes (`mqtt://[user:password@]…`).
    phones_url: String,
}

/// The services, in `Pipeline::services`' order.
const SERVICES: [&str; 3] = ["ingest", "presence", "notifier"];

impl Pipeline {
    async fn start(config: &str, source: Source) -> Pipeline {
        let mut services = Vec::new();
        match source {
            Source::Mosquitto => {
                let nats = NatsServer::start().await;
                let mosquitto = Mosquitto::start().await;
                for kind in SERVICES {
                    services
                        .push(Service::start(kind, &nats.url(), &mosquitto.url(), config).await);
                }
                Pipeline {
                    phones_url: mosquitto.url(),
                    nats,
                    mosquitto: Some(mosquitto),
                    services,
                }
            }
            Source::NatsMqtt => {
                // Two accounts: the services must be WHEREABOUTS users to
                // see the phones' import, so each connects as deployed.
                let nats = phones_server().await;
                for kind in SERVICES {
                    let url = nats.url_as(kind, deploy_password(kind));
                    let no_mqtt: &[(&str, &str)] = match kind {
                        "ingest" => &[("INGEST_NO_MQTT", "true")],
                        _ => &[],
                    };
                    services.push(
                        Service::start_with(kind, &url, "mqtt://127.0.0.1:1", config, no_mqtt)
                            .await,
                    );
                }
                Pipeline {
                    phones_url: nats.mqtt_url(BENCH_PHONE),
                    nats,
                    mosquitto: None,
                    services,
                }
            }
        }
    }

    /// Every process of the pipeline: (name, pid).
    fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut all: Vec<(&'static str, u32)> = SERVICES
            .iter()
            .zip(&self.services)
            .map(|(kind, s)| (*kind, s.pid().expect("running")))
            .collect();
        all.push(("nats-server", self.nats.pid().expect("running")));
        if let Some(mosquitto) = &self.mosquitto {
            all.push(("mosquitto", mosquitto.pid().expect("running")));
        }
        all
    }

    /// CPU seconds of each of [`Pipeline::processes`].
    fn cpu(&self) -> Vec<f64> {
        self.processes()
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect()
    }

    /// Stream sequence of the last OWNTRACKS message presence acked.
    async fn presence_done(&self, js: &jetstream::Context) -> u64 {
        match js.get_consumer_from_stream("presence", "OWNTRACKS").await {
            Ok(mut c) => {
                let c: &mut jetstream::consumer::PullConsumer = &mut c;
                c.info()
                    .await
                    .map(|i| i.ack_floor.stream_sequence)
                    .unwrap_or(0)
            }
            Err(_) => 0,
        }
    }

    /// Waits until OWNTRACKS holds `expected` messages and presence handled
    /// them all; `false` once neither moved for 30 s (a message lost on the
    /// way never arrives) or after 300 s.
    async fn drain(&self, js: &jetstream::Context, expected: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(300);
        let (mut last, mut moved) = ((0, 0), Instant::now());
        while Instant::now() < deadline && moved.elapsed() < Duration::from_secs(30) {
            let now = (
                stream_count(js, "OWNTRACKS").await,
                self.presence_done(js).await,
            );
            if now.0 >= expected && now.1 >= expected {
                return true;
            }
            if now != last {
                (last, moved) = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// SSE clients on raw TCP, one task each; one in `sample` parses its
/// events and notes when each arrived, by the key of the fix that caused it.
struct SseClients {
    connected: Arc<AtomicU64>,
    arrivals: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl SseClients {
    async fn open(base: &str, households: &[String], clients: usize, sample: usize) -> SseClients {
        let addr = base.trim_start_matches("http://").to_string();
        let connected = Arc::new(AtomicU64::new(0));
        let arrivals: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        for c in 0..clients {
            let household = households[c % households.len()].clone();
            let (addr, connected, arrivals) = (addr.clone(), connected.clone(), arrivals.clone());
            tokio::spawn(async move {
                // A thousand connects at once can overflow the listen backlog.
                let mut tcp = None;
                for _ in 0..100 {
                    match tokio::net::TcpStream::connect(&addr).await {
                        Ok(t) => {
                            tcp = Some(t);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                let Some(mut tcp) = tcp else { return };
                let request = format!(
                    "GET /v1/households/{household}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                );
                if tcp.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                connected.fetch_add(1, Ordering::Relaxed);
                let parse = c % sample == 0;
                let mut buffer = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let Ok(read) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    if !parse {
                        continue;
                    }
                    let arrived = now_ns();
                    buffer.extend_from_slice(&chunk[..read]);
                    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                        let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                        if let Some(key) = place_event_key(&frame) {
                            arrivals.lock().unwrap().push((key, arrived));
                        }
                    }
                }
            });
        }
        SseClients {
            connected,
            arrivals,
        }
    }

    /// Waits (at most 60 s) for the clients to connect; returns how many did.
    async fn wait_connected(&self, clients: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.connected.load(Ordering::Relaxed) as usize) < clients
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The request is written; give the notifier time to answer them all.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.connected.load(Ordering::Relaxed)
    }
}

/// The fix key of a `place` event: the longitude of the causing device's
/// last fix, as bits.
fn place_event_key(frame: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(frame).ok()?;
    // Chunked transfer encoding puts sizes between frames: find the data line.
    let data = text.lines().find_map(|l| l.strip_prefix("data:"))?;
    let v: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    if v["kind"] != "place" {
        return None;
    }
    let device = v["cause"]["device"].as_str()?;
    let (user, name) = device.split_once('/')?;
    v["state"]["devices"]
        .as_array()?
        .iter()
        .find(|d| d["user"] == user && d["device"] == name)?["last_fix"]["lon"]
        .as_f64()
        .map(f64::to_bits)
}

/// One row of the printed table.
fn row(what: &str, value: String) {
    println!("| {what:<70} | {value:>28} |");
}

/// The raw baselines the pipeline's rates are compared with.
struct Baselines {
    /// QoS 1 pub→sub through each source's broker.
    mqtt: HashMap<&'static str, f64>,
    kv: f64,
}

pub(crate) async fn bench(scale: Scale, sources: &[Source]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# pipeline benchmark: {} devices, {} SSE clients; load average {}",
        scale.devices,
        scale.sse_clients,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| {:<70} | {:>28} |", "what", "figure");
    println!("|{:-<72}|{:->30}|", "", "");
    let mut mqtt = HashMap::new();
    for &source in sources {
        let (what, rate) = match source {
            Source::Mosquitto => ("mosquitto QoS 1 pub→sub", raw_rate(scale.messages).await),
            Source::NatsMqtt => {
                let nats = phones_server().await;
                let rate = raw_rate_at(&nats.mqtt_url(BENCH_PHONE), scale.messages).await;
                ("nats-server MQTT QoS 1 pub→sub", rate)
            }
        };
        row(what, format!("{rate:.0} msg/s"));
        mqtt.insert(source.name(), rate);
    }
    let js = jetstream_rate(scale.messages).await;
    row(
        "JetStream acked publish, 1,024 in flight",
        format!("{js:.0} msg/s"),
    );
    let kv = kv_rate(scale.messages).await;
    row("KV put, 512 in flight", format!("{kv:.0} puts/s"));
    let baselines = Baselines { mqtt, kv };
    // Workload by workload, so that the sources' runs are close in time.
    for workload in [Workload::Realistic, Workload::WorstCase] {
        for &source in sources {
            run_workload(scale, workload, source, &baselines).await;
        }
    }
}

async fn run_workload(scale: Scale, workload: Workload, source: Source, baselines: &Baselines) {
    let name = &format!("{}, {}", workload.name(), source.name());
    let mut traffic = Traffic::new(scale.devices, workload, source);
    let pipeline = Pipeline::start(&traffic.config, source).await;
    let js = pipeline.nats.jetstream().await;
    let mut publisher = Publisher::connect(&pipeline.phones_url, "bench-phones").await;

    // Warm up: every device once, so that the runs see known devices.
    for _ in 0..traffic.world.devices.len() {
        let (topic, payload, _) = traffic.next();
        publisher.publish(topic, payload).await;
    }
    publisher.all_acked().await;
    assert!(
        pipeline.drain(&js, traffic.sent).await,
        "presence did not catch up with the warm-up"
    );

    // Sustained: as fast as the MQTT window allows, until presence is done.
    let cpu_before = pipeline.cpu();
    let events_before = stream_count(&js, "PRESENCE").await;
    let started = Instant::now();
    for _ in 0..scale.messages {
        let (topic, payload, _) = traffic.next();
        publisher.publish(topic, payload).await;
    }
    publisher.all_acked().await;
    let drained = pipeline.drain(&js, traffic.sent).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pipeline.cpu();
    let stored = stream_count(&js, "OWNTRACKS").await;
    let lost = traffic.sent.saturating_sub(stored);
    let rate = scale.messages as f64 / elapsed;
    let events = stream_count(&js, "PRESENCE").await - events_before;
    row(
        &format!("{name}: MQTT publish → presence done, sustained"),
        format!(
            "{rate:.0} msg/s, {lost} lost{}",
            if drained { "" } else { ", NOT DRAINED" }
        ),
    );
    row(
        &format!("{name}: ratio to its broker's QoS 1 pub→sub"),
        format!("{:.2}", rate / baselines.mqtt[source.name()]),
    );
    row(
        &format!("{name}: presence rate / KV put rate"),
        format!("{:.2}", rate / baselines.kv),
    );
    row(
        &format!("{name}: PRESENCE events per message"),
        format!("{:.2}", events as f64 / scale.messages as f64),
    );
    for ((kind, _), (before, after)) in pipeline
        .processes()
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
    {
        row(
            &format!("{name}: {kind} CPU per message"),
            format!(
                "{:.0} µs ({:.1} s)",
                (after - before) / scale.messages as f64 * 1e6,
                after - before
            ),
        );
    }

    // Latency with SSE clients, at paced rates.
    let households: Vec<String> = traffic
        .world
        .households
        .iter()
        .map(|h| h.name.clone())
        .collect();
    let notifier_url = pipeline.services[2].url();
    let sample = 10;
    let clients = SseClients::open(&notifier_url, &households, scale.sse_clients, sample).await;
    let connected = clients.wait_connected(scale.sse_clients).await;
    row(
        &format!(
            "{name}: notifier RSS with {connected} of {} SSE clients",
            scale.sse_clients
        ),
        format!(
            "{:.1} MiB",
            super::rss_mib(pipeline.services[2].pid().expect("running"))
        ),
    );
    for &rate in scale.rates {
        clients.arrivals.lock().unwrap().clear();
        let mut sent_at: HashMap<u64, u64> = HashMap::new();
        let total = rate * scale.seconds;
        let started = Instant::now();
        let before = traffic.sent;
        for i in 0..total {
            let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (topic, payload, key) = traffic.next();
            sent_at.insert(key, now_ns());
            publisher.publish(topic, payload).await;
        }
        let behind = started.elapsed().as_secs_f64() - scale.seconds as f64;
        publisher.all_acked().await;
        let drained = pipeline.drain(&js, traffic.sent).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies: Vec<f64> = clients
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(key, arrived)| {
                let sent = sent_at.get(key)?;
                Some(arrived.saturating_sub(*sent) as f64 / 1e6)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        row(
            &format!("{name}: paced {rate}/s, MQTT → SSE p50 / p99 / p99.9"),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                percentile(&latencies, 0.999)
            ),
        );
        row(
            &format!("{name}: paced {rate}/s, samples; publisher behind"),
            format!(
                "{} of {}; {behind:.1} s{}",
                latencies.len(),
                traffic.sent - before,
                if drained { "" } else { "; NOT DRAINED" }
            ),
        );
    }
    for (kind, pid) in pipeline.processes() {
        row(
            &format!("{name}: {kind} peak RSS, CPU total"),
            format!("{:.1} MiB, {:.1} s", peak_rss_mib(pid), cpu_seconds(pid)),
        );
    }
    let _ = std::io::stdout().flush();
}
