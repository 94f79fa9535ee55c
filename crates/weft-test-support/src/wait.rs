//! Waiting for an observable signal, bounded in time, instead of sleeping.
//!
//! A test that proves something *did not* happen first waits for a signal that the thing would
//! have happened by now (a counter moved, a request was answered, a socket closed), then checks.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// The default bound for waits in tests: long enough for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(5);

/// The pause between polls: 5 ms at first, doubling up to 50 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((5u64 << attempt.min(4)).min(50))
}

/// Polls `f` until it returns `Some`, for at most `timeout`; panics with `what` (and the time
/// waited) if it never does.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what} ({attempt} polls)");
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Polls `f` until it returns `Ok`, for at most `timeout`; panics with `what` and the last
/// `Err` (what was seen instead) if it never does.
pub async fn eventually_ok<T, E, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Polls `f` until it returns true, for at most `timeout`; returns whether it did (for tests
/// that assert with their own message).
pub async fn within<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// [`eventually`] for blocking code (tests that drive child processes from a plain thread).
pub fn eventually_blocking<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    within_blocking(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` until it returns a value, for at most `timeout` (blocking); `None` if it never did,
/// for tests that act on a timeout themselves.
pub fn within_blocking<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_value_once_ready() {
        let mut n = 0;
        let v = eventually("n to reach 3", WAIT, || {
            n += 1;
            let r = (n >= 3).then_some(n);
            async move { r }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    async fn eventually_names_what_never_happened() {
        eventually("the impossible", Duration::from_millis(50), || async { None::<()> }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "last seen: 7")]
    async fn eventually_ok_shows_the_last_value() {
        eventually_ok("8", Duration::from_millis(30), || async { Err::<(), _>(7) }).await;
    }

    #[tokio::test]
    async fn within_reports_false_on_timeout() {
        assert!(!within(Duration::from_millis(20), || async { false }).await);
        assert!(within(Duration::from_millis(20), || async { true }).await);
    }

    #[test]
    fn blocking_variant_polls() {
        let mut n = 0;
        assert_eq!(
            eventually_blocking("n", WAIT, || {
                n += 1;
                (n == 2).then_some(n)
            }),
            2
        );
    }
}
