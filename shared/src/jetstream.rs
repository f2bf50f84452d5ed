//! Idempotent creation of the streams and the KV buckets of the contract
//! (replicas from the config), and the NATS connection.

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};

use crate::config::StreamsConfig;
use crate::subjects::{
    OWNTRACKS_STREAM, POSITIONS_BUCKET, PRESENCE_BUCKET, PRESENCE_STREAM, REJECTED_STREAM,
};

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
    ensure_bucket(js, file_bucket(PRESENCE_BUCKET, 5, c)).await
}

/// The `positions` KV bucket: the last fix and phone-defined regions of
/// each device of a `share = "place"` person, which only presence reads.
/// One value per key; bounded by the devices presence keeps.
pub async fn ensure_positions_bucket(
    js: &jetstream::Context,
    c: &StreamsConfig,
) -> anyhow::Result<kv::Store> {
    ensure_bucket(js, file_bucket(POSITIONS_BUCKET, 1, c)).await
}

/// A bucket on disk with `history` values a key, replicated as configured.
fn file_bucket(name: &str, history: i64, c: &StreamsConfig) -> kv::Config {
    kv::Config {
        bucket: name.into(),
        history,
        storage: stream::StorageType::File,
        num_replicas: c.replicas,
        ..Default::default()
    }
}

/// Creates a KV bucket, or opens it and brings its replica count to
/// `config`'s (its other settings are left as they are).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> anyhow::Result<kv::Store> {
    let bucket = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&bucket).await {
        let current = store.stream.cached_info().config.clone();
        if current.num_replicas != config.num_replicas {
            set_replicas(js, current, config.num_replicas).await?;
        }
        return Ok(store);
    }
    js.create_key_value(config)
        .await
        .with_context(|| format!("creating KV bucket {bucket}"))
}

/// Updates a stream's replica count: JetStream copies the data to the new
/// peers (a single server refuses more than one replica, and says so).
async fn set_replicas(
    js: &jetstream::Context,
    mut config: stream::Config,
    replicas: usize,
) -> anyhow::Result<()> {
    let name = config.name.clone();
    config.num_replicas = replicas;
    js.update_stream(config)
        .await
        .with_context(|| format!("setting the replicas of stream {name} to {replicas}"))?;
    tracing::info!(stream = %name, replicas, "stream replicas updated");
    Ok(())
}

/// NATS credentials besides those a URL may carry (`nats://user:pass@host`,
/// `nats://token@host`). At most one kind is used: a creds file, else a
/// token, else user and password; with none, the URL's own (if any).
#[derive(Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed, decentralised auth).
    pub creds_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    // Never print a secret, not even in a debug dump of the settings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .finish()
    }
}

impl NatsAuth {
    async fn apply(
        &self,
        url: &str,
        options: async_nats::ConnectOptions,
    ) -> anyhow::Result<async_nats::ConnectOptions> {
        if let Some(path) = &self.creds_file {
            return options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials file {}", path.display()));
        }
        if let Some(token) = &self.token {
            return Ok(options.token(token.clone()));
        }
        if let Some(user) = &self.user {
            let password = self.password.clone().unwrap_or_default();
            return Ok(options.user_and_password(user.clone(), password));
        }
        anyhow::ensure!(
            self.password.is_none(),
            "NATS_PASSWORD is set without NATS_USER"
        );
        // async-nats ignores credentials in the URL: take them from there.
        Ok(match url_credentials(url) {
            Some((user, Some(password))) => options.user_and_password(user, password),
            Some((token, None)) => options.token(token),
            None => options,
        })
    }
}

/// `user:password` (or a lone token) of the first server in `url`,
/// percent-decoded.
fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    let first = url.split(',').next()?;
    let rest = &first[first.find("://")? + 3..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    let (userinfo, _) = rest[..host_start].rsplit_once('@')?;
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (percent_decode(user), Some(percent_decode(password))),
        None => (percent_decode(userinfo), None),
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox prefix of a service's client: its own, so that NATS
/// authorization can let it subscribe to its replies and nobody else's
/// (`deploy/nats-server.conf`).
fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}

/// Connects to NATS, retrying the first connection too, and keeps `ready`
/// in step with the connection state.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    name: &str,
    ready: crate::server::ReadyFlag,
) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(url)?;
    let redacted = crate::telemetry::redact_url(url);
    let flag = ready.clone();
    let named = redacted.clone();
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(inbox_prefix(name))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let (flag, servers) = (flag.clone(), named.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        flag.set(true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%servers, "NATS disconnected");
                        flag.set(false);
                    }
                    // async-nats reports a failed attempt by its kind only
                    // ("IO error"): the servers say where to look.
                    other => tracing::warn!(event = %other, %servers, "NATS event"),
                }
            }
        });
    let client = auth
        .apply(url, options)
        .await?
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {redacted}"))?;
    Ok(client)
}

/// Connects once, without retrying, for a command-line tool: an
/// unreachable server is an error naming the (redacted) URL, within `wait`.
pub async fn connect_once(
    url: &str,
    auth: &NatsAuth,
    name: &str,
    wait: std::time::Duration,
) -> anyhow::Result<async_nats::Client> {
    let shown = crate::telemetry::redact_url(url);
    let servers = server_addrs(url)?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(inbox_prefix(name))
        .connection_timeout(wait);
    auth.apply(url, options)
        .await?
        .connect(servers)
        .await
        .with_context(|| format!("cannot reach NATS at {shown}"))
}

/// The servers of `NATS_URL`, a comma-separated list (a cluster): the client
/// picks among them and fails over. async-nats parses one address per
/// string, so the list is split here, and a bad entry is named.
fn server_addrs(url: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let entries: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    anyhow::ensure!(!entries.is_empty(), "NATS_URL names no server");
    entries
        .iter()
        .map(|entry| {
            entry.parse::<async_nats::ServerAddr>().with_context(|| {
                format!(
                    "parsing NATS_URL entry {}",
                    crate::telemetry::redact_url(entry)
                )
            })
        })
        .collect()
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
    let mut backoff = crate::retry::Backoff::default();
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
                if !crate::retry::sleep_unless_cancelled(delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{server_addrs, url_credentials};
    use crate::telemetry::redact_url;

    #[test]
    fn credentials_come_from_the_url() {
        assert_eq!(
            url_credentials("nats://ingest:p%40ss@nats:4222"),
            Some(("ingest".into(), Some("p@ss".into())))
        );
        assert_eq!(
            url_credentials("nats://tok@nats:4222,nats://n2:4222"),
            Some(("tok".into(), None))
        );
        assert_eq!(url_credentials("nats://nats:4222"), None);
    }

    #[test]
    fn a_list_is_split_and_a_bad_entry_named() {
        let servers = server_addrs("nats://n1:4222, nats://u:p@n2:4222,n3:4222,").unwrap();
        let hosts: Vec<String> = servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(hosts, ["n1:4222", "n2:4222", "n3:4222"]);
        let error = server_addrs("nats://n1:4222,nats://u:secret@n2:x").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("entry nats://u:***@n2:x"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(!message.trim_end().ends_with(':'), "{message}");
        assert!(server_addrs(" , ").is_err());
    }

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact_url("nats://ingest:s3cret@nats:4222"),
            "nats://ingest:***@nats:4222"
        );
        assert_eq!(redact_url("nats://tok3n@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("nats://a:b@n1:4222,nats://a:b@n2:4222"),
            "nats://a:***@n1:4222,nats://a:***@n2:4222"
        );
    }
}
