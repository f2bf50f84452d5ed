//! `eventually`: poll a condition with a deadline instead of sleeping.

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] polls.
const INTERVAL: Duration = Duration::from_millis(20);

/// What an [`eventually`] probe may return: `bool`, `Option<T>` or
/// `Result<T, E>` (the last error goes into the panic message).
pub trait Outcome {
    /// The value [`eventually`] returns once the probe succeeds.
    type Value;
    /// `Ok(value)` when done, `Err(why_not)` to try again.
    fn into_outcome(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn into_outcome(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_outcome(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Calls `probe` every 20 ms until it returns `true`, `Some(value)` or
/// `Ok(value)`, and returns that value. Panics with `what` (and the last
/// error, if the probe returns `Result`) when `timeout` passes first. A probe
/// that hangs is cut off at the deadline too.
///
/// `probe` is an async closure (`async || ...`, which may borrow mutably from
/// the test, e.g. a subscriber) or a closure returning a future (`|| async`).
///
/// Uses tokio's clock, so it also works under `tokio::time::pause()`.
///
/// ```no_run
/// # async fn f(js: async_nats::jetstream::Context) {
/// use std::time::Duration;
/// use whereabouts_tests::{eventually, stream_count};
/// eventually("10 messages in INGEST", Duration::from_secs(5), async || {
///     stream_count(&js, "INGEST").await == 10
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, O>(what: &str, timeout: Duration, mut probe: F) -> O::Value
where
    F: AsyncFnMut() -> O,
    O: Outcome,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(result) => match result.into_outcome() {
                Ok(value) => return value,
                Err(Some(error)) => last_error = Some(error),
                Err(None) => {}
            },
            Err(_) => last_error = Some("the probe was still running at the deadline".into()),
        }
        if Instant::now() + INTERVAL > deadline {
            match last_error {
                Some(error) => panic!(
                    "timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last error: {error}"
                ),
                None => {
                    panic!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}")
                }
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
