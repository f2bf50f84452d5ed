//! Commands waiting for HTTP-mode devices: the `commands` KV bucket, one key
//! per device holding a JSON array, taken whole by the device's next
//! `POST /pub`. Kept until delivered (no age limit), across restarts.

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde_json::Value;

/// Pending commands of HTTP-mode devices.
pub(crate) const COMMANDS_BUCKET: &str = "commands";

/// Commands one device may have waiting: a phone that never comes back
/// must not grow its entry without bound.
pub(crate) const MAX_QUEUED: usize = 32;

pub(crate) async fn bucket(
    js: &jetstream::Context,
    streams: &shared::config::StreamsConfig,
) -> anyhow::Result<kv::Store> {
    let store = shared::jetstream::ensure_bucket(
        js,
        kv::Config {
            bucket: COMMANDS_BUCKET.into(),
            history: 1,
            num_replicas: streams.replicas,
            ..Default::default()
        },
    )
    .await?;
    // Buckets created by earlier versions dropped commands after 7 days.
    if let Err(e) = lift_age_limit(js).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "queued commands keep their age limit"
        );
    }
    Ok(store)
}

async fn lift_age_limit(js: &jetstream::Context) -> anyhow::Result<()> {
    let mut stream = js
        .get_stream(format!("KV_{COMMANDS_BUCKET}"))
        .await
        .context("the commands bucket's stream")?;
    let config = stream.info().await?.config.clone();
    if !config.max_age.is_zero() {
        js.update_stream(jetstream::stream::Config {
            max_age: std::time::Duration::ZERO,
            ..config
        })
        .await
        .context("lifting the commands bucket's age limit")?;
        tracing::info!("queued commands now kept until delivered");
    }
    Ok(())
}

pub(crate) fn key(household: &str, user: &str, device: &str) -> String {
    use shared::token::encode;
    format!("{}.{}.{}", encode(household), encode(user), encode(device))
}

/// Appends `payload` to the device's queue (compare-and-set, retried on a
/// concurrent writer).
pub(crate) async fn push(queue: &kv::Store, key: &str, payload: &Value) -> anyhow::Result<()> {
    for _ in 0..10 {
        let (mut list, revision) = read(queue, key).await?;
        anyhow::ensure!(
            list.len() < MAX_QUEUED,
            "{MAX_QUEUED} commands already wait for this device"
        );
        list.push(payload.clone());
        let bytes = Bytes::from(Value::Array(list).to_string());
        let written = match revision {
            0 => queue
                .create(key, bytes)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::new),
            r => queue
                .update(key, bytes, r)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::new),
        };
        if written.is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!("could not queue the command (concurrent writers)")
}

async fn read(queue: &kv::Store, key: &str) -> anyhow::Result<(Vec<Value>, u64)> {
    Ok(match queue.entry(key).await? {
        Some(e) if e.operation == kv::Operation::Put => (
            serde_json::from_slice(&e.value).unwrap_or_default(),
            e.revision,
        ),
        Some(e) => (Vec::new(), e.revision),
        None => (Vec::new(), 0),
    })
}

/// Takes the commands queued for an HTTP-mode device (empty on any error:
/// they stay queued for the next request).
pub(crate) async fn take_pending(
    js: &jetstream::Context,
    household: &str,
    user: &str,
    device: &str,
) -> Vec<Value> {
    let Ok(queue) = js.get_key_value(COMMANDS_BUCKET).await else {
        return Vec::new();
    };
    let key = key(household, user, device);
    for _ in 0..5 {
        let Ok((list, revision)) = read(&queue, &key).await else {
            return Vec::new();
        };
        if list.is_empty() {
            return list;
        }
        if queue
            .update(&key, Bytes::from_static(b"[]"), revision)
            .await
            .is_ok()
        {
            return list;
        }
    }
    Vec::new()
}
