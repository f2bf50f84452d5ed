//! Benchmarks that print rates and ratios (not timed tests):
//!
//! - `bench ingest`: (a) raw QoS 1 MQTT pub→sub through mosquitto, (b) the
//!   same publisher through mosquitto → ingest → JetStream (acknowledged,
//!   file storage), the ratio b/a, p50/p99 latency at a paced rate, and
//!   ingest's RSS.
//! - `bench ingest-flood`: ingest's peak RSS while 100,000 QoS 0 messages
//!   arrive with NATS stopped (nothing can be stored): the QoS 0 budget, not
//!   the flood, must set the memory.
//! - `bench presence`: presence alone over a pre-loaded OWNTRACKS stream,
//!   against the KV's concurrent put rate measured in the same run.
//! - `bench notifier`: MQTT publish → SSE event latency with many SSE clients.
//! - `bench pipeline [--quick] [--source mosquitto|nats-mqtt|both]`: the
//!   raw baselines, then the whole pipeline on the simulator's world, two
//!   workloads, with the phones on mosquitto (the default), on
//!   nats-server's own MQTT listener, or both in one run; a table
//!   (`pipeline.rs`).
//!
//! Build everything first, release:
//! `scripts/bench.sh ingest|ingest-flood|presence|notifier|pipeline|all`.

mod pipeline;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use whereabouts_tests::{Mosquitto, NatsServer, Service, parse_mqtt_url, stream_count};

const TOPICS: usize = 1000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A ~250-byte OwnTracks location, with the send time for latency.
fn payload(i: usize, sent_ns: u64) -> Vec<u8> {
    json!({
        "_type": "location", "tid": "jd", "lat": 51.5 + (i % 100) as f64 * 1e-4, "lon": -0.1276,
        "acc": 12, "alt": 35, "batt": 81, "bs": 1, "conn": "w", "vel": 0, "vac": 3,
        "tst": 1_700_000_000 + i as i64, "created_at": 1_700_000_000 + i as i64,
        "m": 1, "t": "u", "inregions": ["Home"], "sent_ns": sent_ns,
    })
    .to_string()
    .into_bytes()
}

fn topic(i: usize) -> String {
    format!("owntracks/user{}/phone", i % TOPICS)
}

fn options(url: &str, id: &str) -> MqttOptions {
    let (credentials, host, port) = parse_mqtt_url(url);
    let mut o = MqttOptions::new(id, host, port);
    if let Some((user, password)) = credentials {
        o.set_credentials(user, password);
    }
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Publishes `n` QoS 1 messages as fast as the window allows (or paced at
/// `rate`/s); returns when all are acknowledged.
async fn publish(url: &str, n: usize, rate: Option<u64>) -> Duration {
    let (client, mut eventloop) = AsyncClient::new(options(url, "bench-pub"), 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let poller = tokio::spawn(async move {
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
    let started = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            let due = started + Duration::from_nanos(i as u64 * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        client
            .publish(topic(i), QoS::AtLeastOnce, false, payload(i, now_ns()))
            .await
            .unwrap();
    }
    while acked.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = client.disconnect().await;
    poller.abort();
    elapsed
}

/// (a) One publisher to one subscriber, QoS 1, through mosquitto.
async fn raw_rate(n: usize) -> f64 {
    let mosquitto = Mosquitto::start().await;
    raw_rate_at(&mosquitto.url(), n).await
}

/// One publisher to one subscriber, QoS 1, through the broker at `url`
/// (`mqtt://[user:password@]host:port`).
async fn raw_rate_at(url: &str, n: usize) -> f64 {
    let (sub, mut eventloop) = AsyncClient::new(options(url, "bench-sub"), 10_000);
    sub.subscribe("owntracks/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let (counter, subscribed) = (received.clone(), Arc::new(tokio::sync::Notify::new()));
    let ready = subscribed.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => ready.notify_one(),
                Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    subscribed.notified().await;
    let started = Instant::now();
    publish(url, n, None).await;
    while received.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Peak resident set (`VmHWM`) of a process, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench_ingest() {
    let n = 100_000;
    println!("# ingest benchmark: {n} QoS 1 OwnTracks locations (~250 B) over {TOPICS} topics");
    let raw = raw_rate(n).await;
    println!("(a) mosquitto pub→sub, QoS 1:            {raw:>9.0} msg/s");

    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), "").await;
    let js = nats.jetstream().await;
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let url = format!("{}/metrics", ingest.url());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(r) = reqwest::get(&url).await else {
                    break;
                };
                let text = r.text().await.unwrap_or_default();
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ingest_inflight_messages "))
                {
                    samples.push(v.trim().parse::<f64>().unwrap_or(0.0));
                }
            }
            samples
        })
    };
    publish(&mosquitto.url(), n, None).await;
    while (stream_count(&js, "OWNTRACKS").await as usize) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    let max = samples.iter().cloned().fold(0.0, f64::max);
    println!("    messages held by ingest (unacked): mean {mean:.0}, max {max:.0}");
    let sum = ingest
        .metric("ingest_jetstream_publish_seconds_sum", "OWNTRACKS")
        .await;
    let count = ingest
        .metric("ingest_jetstream_publish_seconds_count", "OWNTRACKS")
        .await;
    println!(
        "    JetStream publish→ack, mean:           {:>9.2} ms",
        sum / count * 1000.0
    );
    let bridged = n as f64 / started.elapsed().as_secs_f64();
    let stored = stream_count(&js, "OWNTRACKS").await;
    println!(
        "(b) mosquitto → ingest → JetStream:       {bridged:>9.0} msg/s ({stored} stored, {} lost)",
        n as u64 - stored.min(n as u64)
    );
    println!(
        "    ratio b/a:                            {:>9.2}",
        bridged / raw
    );
    println!(
        "    ingest RSS after the burst:           {:>9.1} MiB",
        rss_mib(ingest.pid().unwrap())
    );

    // Latency at a paced rate, measured on the stream.
    for rate in [1_000u64, 5_000] {
        let count = (rate * 10) as usize;
        let before = stream_count(&js, "OWNTRACKS").await;
        let consumer = js
            .get_stream("OWNTRACKS")
            .await
            .unwrap()
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: before + 1,
                },
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            while latencies.len() < count {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(30), messages.next()).await
                else {
                    break;
                };
                let arrived = now_ns();
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                if let Some(sent) = v["message"]["sent_ns"].as_u64() {
                    latencies.push((arrived.saturating_sub(sent)) as f64 / 1e6);
                }
            }
            latencies
        });
        publish(&mosquitto.url(), count, Some(rate)).await;
        let mut latencies = reader.await.unwrap();
        latencies.sort_by(f64::total_cmp);
        println!(
            "    paced {rate:>5}/s, publish→stored+read: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len()
        );
    }
    println!(
        "    ingest RSS at the end:                 {:>9.1} MiB",
        rss_mib(ingest.pid().unwrap())
    );
}

/// 100,000 QoS 0 locations at full speed into an ingest whose NATS is down.
async fn bench_ingest_flood() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!("# ingest QoS 0 flood: {n} locations (~250 B) with NATS stopped");
    let mut nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), "").await;
    let pid = ingest.pid().unwrap();
    println!(
        "    ingest RSS before (NATS up):           {:>9.1} MiB",
        rss_mib(pid)
    );
    nats.stop().await;
    let (client, mut eventloop) =
        AsyncClient::new(options(&mosquitto.url(), "bench-flood"), 10_000);
    let poller = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
                break;
            }
        }
    });
    let started = Instant::now();
    for i in 0..n {
        client
            .publish(topic(i), QoS::AtMostOnce, false, payload(i, now_ns()))
            .await
            .unwrap();
    }
    let sent = started.elapsed();
    // Let ingest read everything the broker forwards.
    let mut last = -1.0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = ingest.metric("ingest_mqtt_dropped_total", "").await
            + ingest.metric("ingest_inflight_messages", "").await;
        if seen == last {
            break;
        }
        last = seen;
    }
    let dropped = ingest.metric("ingest_mqtt_dropped_total", "").await;
    let held = ingest.metric("ingest_inflight_messages", "").await;
    let _ = client.disconnect().await;
    poller.abort();
    println!(
        "    published in {:.1} s; ingest holds {held:.0}, dropped {dropped:.0}, {:.0} not seen",
        sent.as_secs_f64(),
        n as f64 - held - dropped
    );
    println!(
        "    ingest RSS now / peak:                 {:>9.1} / {:.1} MiB",
        rss_mib(pid),
        peak_rss_mib(pid)
    );
}

async fn bench_presence() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let devices = (messages / 10).max(1);
    println!(
        "# presence benchmark: {messages} location envelopes from {devices} devices, pre-loaded"
    );
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    shared::jetstream::ensure_ingest_streams(&js, &Default::default())
        .await
        .unwrap();

    // The KV's concurrent put rate, measured here for the ratio.
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let puts = 100_000;
    futures::stream::iter(0..puts)
        .map(|i| {
            let kv = kv.clone();
            async move {
                kv.put(format!("k{}", i % devices), payload(i, 0).into())
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(512)
        .count()
        .await;
    let kv_rate = puts as f64 / started.elapsed().as_secs_f64();
    println!("KV put, 512 in flight:                    {kv_rate:>9.0} puts/s");

    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let base = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    let loading = Instant::now();
    futures::stream::iter(0..messages)
        .map(|i| {
            let js = js.clone();
            let user = format!("user{}", i % devices);
            let step = i / devices;
            let place = ["Home", "Work", "School", "Away"][(step + i) % 4];
            let inregions: Vec<&str> = if place == "Away" { vec![] } else { vec![place] };
            let message = json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"vel":0,"tst":base + step as i64 * 30,"inregions":inregions});
            let envelope = json!({"household":"home","user":user,"device":"phone","topic":format!("owntracks/{user}/phone"),
                "received_at":received_at,"retained":false,"transport":"mqtt","encrypted":false,"message":message});
            async move {
                let subject = shared::subjects::owntracks("home", &user, "phone", "location");
                js.publish(subject, envelope.to_string().into()).await.unwrap().await.unwrap();
            }
        })
        .buffer_unordered(1024)
        .count()
        .await;
    println!(
        "pre-loaded OWNTRACKS in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let presence = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", "").await;
    let mut peak_rss: f64 = 0.0;
    loop {
        let mut consumer: jetstream::consumer::PullConsumer =
            match js.get_consumer_from_stream("presence", "OWNTRACKS").await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        let info = consumer.info().await.unwrap();
        peak_rss = peak_rss.max(rss_mib(presence.pid().unwrap()));
        if info.ack_floor.stream_sequence as usize >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let cpu = pipeline::cpu_seconds(presence.pid().unwrap());
    println!("presence (start, consume, store, ack):    {rate:>9.0} msg/s");
    println!(
        "presence CPU per message:                 {:>9.0} µs",
        cpu * 1e6 / messages as f64
    );
    println!(
        "ratio to the KV's concurrent put rate:    {:>9.2}",
        rate / kv_rate
    );
    println!(
        "presence events published:                {:>9}",
        stream_count(&js, "PRESENCE").await
    );
    println!("presence peak RSS:                        {peak_rss:>9.1} MiB");
}

async fn bench_notifier() {
    let clients = 1000usize;
    let config = r#"
[households.bench]
places = ["Home", "Work"]
[households.load]
places = ["Home"]
[ingest]
default_household = "load"
user_households = { probe = "bench" }
[presence]
debounce = "0s"
"#;
    println!("# notifier benchmark: MQTT publish → SSE event, {clients} SSE clients");
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
    let _presence = Service::start("presence", &nats.url(), &mosquitto.url(), config).await;
    let notifier = Service::start("notifier", &nats.url(), &mosquitto.url(), config).await;
    let url = format!("{}/v1/households/bench/events", notifier.url());

    // Each client records when it saw each place event (by its `at`).
    let seen: Arc<std::sync::Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let connected = Arc::new(AtomicU64::new(0));
    for c in 0..clients {
        let (url, seen, connected) = (url.clone(), seen.clone(), connected.clone());
        tokio::spawn(async move {
            let response = reqwest::get(&url).await.unwrap();
            connected.fetch_add(1, Ordering::Relaxed);
            let mut body = response.bytes_stream();
            let mut buffer = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                let arrived = now_ns();
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                    // Only a sample of clients parse: the rest just read.
                    if c % 100 != 0 {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&frame);
                    if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:"))
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
                        && v["kind"] == "place"
                        && let Some(lat) = v["state"]["devices"][0]["last_fix"]["lat"].as_f64()
                    {
                        seen.lock()
                            .unwrap()
                            .entry(format!("{lat:.5}"))
                            .or_default()
                            .push(arrived);
                    }
                }
            }
        });
    }
    while (connected.load(Ordering::Relaxed) as usize) < clients {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{clients} SSE clients connected; notifier RSS {:.1} MiB",
        rss_mib(notifier.pid().unwrap())
    );

    for rate in [1_000u64, 5_000] {
        seen.lock().unwrap().clear();
        let (client, mut eventloop) = AsyncClient::new(
            options(&mosquitto.url(), &format!("bench-load-{rate}")),
            10_000,
        );
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let seconds = 10u64;
        let total = rate * seconds;
        let mut sent: HashMap<String, u64> = HashMap::new();
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
            // Every 50th message is the probe changing place; the rest is load.
            if i % 50 == 0 {
                // The probe's fix carries its number in `lat`, which the
                // event's state echoes; the place alternates.
                let probe = i / 50;
                let lat = 51.5 + (rate as f64) * 1e-3 + probe as f64 * 1e-5;
                let place = if probe % 2 == 0 { "Home" } else { "Work" };
                let tst = time::OffsetDateTime::now_utc().unix_timestamp();
                let msg = json!({"_type":"location","lat":lat,"lon":-0.12,"acc":5,"vel":0,"tst":tst,"inregions":[place]});
                sent.insert(format!("{lat:.5}"), now_ns());
                client
                    .publish(
                        "owntracks/probe/phone",
                        QoS::AtLeastOnce,
                        false,
                        msg.to_string(),
                    )
                    .await
                    .unwrap();
            } else {
                client
                    .publish(
                        topic(i as usize),
                        QoS::AtLeastOnce,
                        false,
                        payload(i as usize, 0),
                    )
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen = seen.lock().unwrap().clone();
        let mut latencies: Vec<f64> = seen
            .iter()
            .filter_map(|(tst, arrivals)| {
                let sent = *sent.get(tst)?;
                Some(
                    arrivals
                        .iter()
                        .map(move |a| a.saturating_sub(sent) as f64 / 1e6),
                )
            })
            .flatten()
            .collect();
        latencies.sort_by(f64::total_cmp);
        println!(
            "paced {rate:>5} msg/s: MQTT publish → SSE place event p50 {:.1} ms, p99 {:.1} ms ({} samples from {} probes); notifier RSS {:.1} MiB",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len(),
            seen.len(),
            rss_mib(notifier.pid().unwrap())
        );
        let _ = client.disconnect().await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // The command: the first word that is neither a flag nor `--source`'s value.
    let which = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--source"))
        .map(|(_, a)| a.clone());
    let scale = pipeline::Scale::new(quick);
    let source = args
        .iter()
        .position(|a| a == "--source")
        .map(|i| args.get(i + 1).map_or("", String::as_str));
    let Some(sources) = pipeline::Source::parse(source) else {
        eprintln!("--source takes mosquitto, nats-mqtt or both");
        std::process::exit(2);
    };
    match which.as_deref().unwrap_or_default() {
        "ingest" => bench_ingest().await,
        "ingest-flood" => bench_ingest_flood().await,
        "presence" => bench_presence().await,
        "notifier" => bench_notifier().await,
        "pipeline" => pipeline::bench(scale, &sources).await,
        _ => {
            eprintln!(
                "usage: bench ingest|ingest-flood|presence|notifier|pipeline [--quick] \
                 [--source mosquitto|nats-mqtt|both]"
            );
            std::process::exit(2);
        }
    }
}
