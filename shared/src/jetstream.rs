//! Idempotent creation of the streams and the KV bucket of the contract.

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};

use crate::config::StreamsConfig;
use crate::subjects::{OWNTRACKS_STREAM, PRESENCE_BUCKET, PRESENCE_STREAM, REJECTED_STREAM};

fn file_stream(
    name: &str,
    subjects: &str,
    max_age: std::time::Duration,
    max_bytes: i64,
    c: &StreamsConfig,
) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age,
        max_bytes,
        duplicate_window: c.duplicate_window,
        num_replicas: c.replicas,
        ..Default::default()
    }
}

/// Creates or updates a stream so that its limits follow the config.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> anyhow::Result<()> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(_) => {
            js.update_stream(config)
                .await
                .with_context(|| format!("updating stream {name}"))?;
        }
        Err(_) => {
            js.get_or_create_stream(config)
                .await
                .with_context(|| format!("creating stream {name}"))?;
        }
    }
    Ok(())
}

/// `OWNTRACKS` and `REJECTED`: what ingest writes.
pub async fn ensure_ingest_streams(
    js: &jetstream::Context,
    c: &StreamsConfig,
) -> anyhow::Result<()> {
    ensure_stream(
        js,
        file_stream(
            OWNTRACKS_STREAM,
            "owntracks.>",
            c.owntracks_max_age,
            c.owntracks_max_bytes,
            c,
        ),
    )
    .await?;
    ensure_stream(
        js,
        file_stream(
            REJECTED_STREAM,
            "rejected.>",
            c.rejected_max_age,
            c.rejected_max_bytes,
            c,
        ),
    )
    .await
}

/// `PRESENCE`: what presence writes.
pub async fn ensure_presence_stream(
    js: &jetstream::Context,
    c: &StreamsConfig,
) -> anyhow::Result<()> {
    ensure_stream(
        js,
        file_stream(
            PRESENCE_STREAM,
            "presence.>",
            c.presence_max_age,
            c.presence_max_bytes,
            c,
        ),
    )
    .await
}

/// The `presence` KV bucket (latest value per key, a little history).
pub async fn ensure_presence_bucket(
    js: &jetstream::Context,
    c: &StreamsConfig,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(PRESENCE_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: PRESENCE_BUCKET.into(),
        history: 5,
        storage: stream::StorageType::File,
        num_replicas: c.replicas,
        ..Default::default()
    })
    .await
    .context("creating KV bucket presence")
}

/// Connects to NATS, retrying the first connection too, and keeps `ready`
/// in step with the connection state.
pub async fn connect(
    url: &str,
    name: &str,
    ready: crate::server::ReadyFlag,
) -> anyhow::Result<async_nats::Client> {
    let flag = ready.clone();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let flag = flag.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        flag.set(true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected");
                        flag.set(false);
                    }
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {}",
                crate::telemetry::redact_url(url)
            )
        })?;
    Ok(client)
}

/// Runs `setup` until it succeeds, with jittered backoff between attempts
/// (NATS may start after the service); `None` if `shutdown` comes first.
pub async fn retry_setup<T, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut setup: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = crate::mqtt::Backoff::default();
    loop {
        match setup().await {
            Ok(value) => return Some(value),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot set up {what} yet"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
