//! Logging (text or JSON, filtered by `RUST_LOG`) and Prometheus helpers.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber. Safe to call more than once (tests).
///
/// Logs go to stdout through [`Lossy`]: once stdout is gone (its reader
/// died), log lines are dropped instead of failing. The default writer
/// reports a failed write with `eprintln!`, which panics when stderr is
/// closed too, killing whichever task logged (the signal handler, once).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Lossy(std::io::stdout()))
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A writer that never fails: write errors (EPIPE from a closed stdout)
/// drop the bytes, so logging can never stop or panic a task.
struct Lossy<W>(W);

impl<W: std::io::Write> std::io::Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// What replaces a secret in [`redact_url`]'s output.
const REDACTED: &str = "***";

/// Query parameters whose value is a secret (matched case-insensitively as
/// part of the name: `apiKey`, `access_token`, `password`, …).
const SECRET_PARAMS: &[&str] = &["key", "token", "secret", "pass", "auth", "sig", "cred"];

/// `url` fit for a log line or an error message: the password of
/// `scheme://user:password@host` (or a lone `scheme://token@host`, as NATS
/// takes tokens) and secret query parameters become `***`. A
/// comma-separated list of URLs (NATS) is redacted URL by URL; text that
/// is not a URL passes unchanged.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => authority.to_string(),
    };
    let (path, query_and_fragment) = match tail.split_once('?') {
        Some((path, q)) => (path, Some(q)),
        None => (tail, None),
    };
    let mut out = format!("{scheme}{authority}{path}");
    if let Some(qf) = query_and_fragment {
        let (query, fragment) = match qf.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (qf, None),
        };
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// Registers a counter vector; names are static, so failure is a bug.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique counter");
    c
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("unique gauge");
    g
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("unique gauge");
    g
}

/// Latency buckets from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique histogram");
    h
}

/// A registry with the process collector (RSS, CPU, fds) where supported.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(pc));
    }
    registry
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{Lossy, redact_url};

    #[test]
    fn redacts_passwords_tokens_and_secret_parameters() {
        for (url, want) in [
            (
                "mqtt://ingest:s3cret@broker:1883",
                "mqtt://ingest:***@broker:1883",
            ),
            (
                "mqtts://u:p%40ss@broker/x?client_id=a",
                "mqtts://u:***@broker/x?client_id=a",
            ),
            ("nats://tok3n@nats:4222", "nats://***@nats:4222"),
            (
                "nats://a:b@n1:4222,nats://c:d@n2:4222",
                "nats://a:***@n1:4222,nats://c:***@n2:4222",
            ),
            (
                "http://mirror:8080/api/notification/X?apiKey=abc123&x=1",
                "http://mirror:8080/api/notification/X?apiKey=***&x=1",
            ),
            (
                "https://h/p?access_token=t&Password=p#frag",
                "https://h/p?access_token=***&Password=***#frag",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("not a url", "not a url"),
        ] {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            for secret in ["s3cret", "p%40ss", "tok3n", "abc123"] {
                assert!(!got.contains(secret), "{got}");
            }
        }
    }

    /// A writer whose reader is gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn lossy_writer_swallows_broken_pipes() {
        assert!(ClosedPipe.write_all(b"line\n").is_err());
        let mut w = Lossy(ClosedPipe);
        assert!(w.write_all(b"line\n").is_ok());
        assert!(w.flush().is_ok());
    }

    #[test]
    fn lossy_writer_passes_bytes_through() {
        let mut w = Lossy(Vec::new());
        w.write_all(b"line\n").unwrap();
        assert_eq!(w.0, b"line\n");
    }
}
