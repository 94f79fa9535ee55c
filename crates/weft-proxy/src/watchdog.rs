//! The timeouts that protect a downstream HTTP connection from clients that stall: the request
//! headers timeout (slowloris heads, HTTP/2 prefaces and header blocks, connections that never
//! send a request), the stream idle timeout (a request or response in progress that moves no
//! bytes, e.g. a client that stops reading a download) and the connection idle timeout.
//!
//! They are checked by one watchdog per connection that wakes a few times per timeout period and
//! compares counters the connection's I/O keeps ([`Activity`]), so the request path arms no timer
//! and reads no clock. HTTP/2 streams each get their own stream idle timer ([`IdleTimed`]), since
//! one stalled stream must not close the connection's other streams.

use crate::h1_framing::Activity;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use weft_core::shard::Counter;

/// The limits one connection enforces (`None`: off).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub request_headers: Option<Duration>,
    pub stream_idle: Option<Duration>,
}

/// Why the watchdog ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// A request head (or an HTTP/2 preface, header block or first request) took too long.
    /// `graceful`: an HTTP/2 connection with no stream open yet can be sent GOAWAY.
    HeaderTimeout { graceful: bool },
    /// An HTTP/1 exchange moved no bytes for the stream idle timeout.
    StreamIdle,
}

/// What the connection's request handling reports to the watchdog.
#[derive(Default)]
pub struct Exchanges {
    /// Requests whose response has not ended yet.
    pub in_flight: Arc<AtomicU32>,
    /// Requests started on this connection.
    pub started: AtomicU64,
}

/// Watches one connection until a limit is hit; pending forever if all limits are off.
pub async fn watch(limits: Limits, activity: &Activity, ex: &Exchanges) -> Verdict {
    let Some(tick) = [limits.idle, limits.request_headers, limits.stream_idle]
        .into_iter()
        .flatten()
        .min()
        .map(|t| (t / 4).clamp(Duration::from_millis(20), Duration::from_secs(5)))
    else {
        return std::future::pending().await;
    };
    let accepted = Instant::now();
    let mut events = activity.events();
    let mut quiet_since = accepted;
    let mut started = 0u64;
    let mut reads_at_boundary = 0u64;
    let mut idle_since = accepted;
    // The first request's head is due within the headers timeout of the connection's start.
    let mut head_wait: Option<Instant> = Some(accepted);
    let mut block_open_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let ev = activity.events();
        if ev != events {
            events = ev;
            quiet_since = now;
        }
        let busy = ex.in_flight.load(Ordering::Relaxed) > 0;
        let s = ex.started.load(Ordering::Relaxed);
        let reads = activity.reads();
        if busy || s != started {
            started = s;
            idle_since = now;
            head_wait = None;
            reads_at_boundary = reads;
        } else if head_wait.is_none() && reads != reads_at_boundary {
            // Bytes of a next request arrived on an idle connection: its head is now due.
            head_wait = Some(now);
        }
        let h2 = activity.is_h2();
        if let Some(t) = limits.request_headers {
            if activity.header_block_open() {
                if now.duration_since(*block_open_since.get_or_insert(now)) >= t {
                    return Verdict::HeaderTimeout { graceful: false };
                }
            } else {
                block_open_since = None;
            }
            // HTTP/2 keeps a connection open between requests (and may ping meanwhile): only its
            // first request is due; HTTP/1 owes a whole head once any of it arrived.
            let waiting = if h2 {
                head_wait.filter(|_| started == 0)
            } else {
                head_wait
            };
            if waiting.is_some_and(|w| now.duration_since(w) >= t) {
                return Verdict::HeaderTimeout { graceful: h2 };
            }
        }
        if let Some(t) = limits.stream_idle {
            // HTTP/2 streams have their own timers (IdleTimed).
            if !h2 && busy && now.duration_since(quiet_since) >= t {
                return Verdict::StreamIdle;
            }
        }
        if let Some(t) = limits.idle {
            if !busy && now.duration_since(idle_since) >= t {
                return Verdict::Idle;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream's future (`crate::h2_server`) that ends when it has not been woken for
    /// `idle`: dropping it resets the stream (RST_STREAM CANCEL) and releases its upstream. One
    /// stalled stream must not close the connection's other streams. Every poll pushes the
    /// deadline out (extending a tokio timer is an atomic store, not a timer-wheel move).
    pub struct IdleTimed<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
        timeouts: Counter,
    }
}

impl<F> IdleTimed<F> {
    pub fn new(inner: F, idle: Duration, timeouts: Counter) -> IdleTimed<F> {
        IdleTimed {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            timeouts,
        }
    }
}

impl<F: Future<Output = ()>> Future for IdleTimed<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut me = self.project();
        if me.sleep.as_mut().poll(cx).is_ready() {
            me.timeouts.inc();
            return Poll::Ready(());
        }
        if me.inner.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        me.sleep.as_mut().reset(tokio::time::Instant::now() + *me.idle);
        Poll::Pending
    }
}

/// Drives a connection's future together with the futures that watch it (the drain signal and
/// the [`watch`]dog): `Ok` when the connection ends, `Err` with the watchers' output when they
/// end first. The connection is polled at every wake-up of the task; the watchers only when one
/// of them was woken. An HTTP/1.1 connection's task is woken once or twice per request by its
/// sockets, and polling the watchers each time (as `select!` does: a watch channel's `changed`
/// and a timer) cost ~700 instructions per keep-alive request (`bench/instructions`).
pub struct Watched<C, W> {
    conn: C,
    watchers: W,
    wake: Arc<WatcherWake>,
    waker: std::task::Waker,
}

struct WatcherWake {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for WatcherWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<C: Future + Unpin, W: Future + Unpin> Watched<C, W> {
    pub fn new(conn: C, watchers: W) -> Watched<C, W> {
        let wake = Arc::new(WatcherWake {
            // The watchers' first poll starts them.
            woken: std::sync::atomic::AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        });
        let waker = std::task::Waker::from(wake.clone());
        Watched {
            conn,
            watchers,
            wake,
            waker,
        }
    }
}

impl<C: Future + Unpin, W: Future + Unpin> Future for Watched<C, W> {
    type Output = Result<C::Output, W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        if let Poll::Ready(v) = Pin::new(&mut me.conn).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        // Registered before the flag is read: a watcher woken after the read wakes this task.
        me.wake.task.register(cx.waker());
        if me.wake.woken.swap(false, Ordering::AcqRel) {
            let mut wcx = Context::from_waker(&me.waker);
            if let Poll::Ready(v) = Pin::new(&mut me.watchers).poll(&mut wcx) {
                return Poll::Ready(Err(v));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod watched_tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set.
    struct Probe<'a> {
        polls: &'a AtomicUsize,
        ready: &'a std::sync::atomic::AtomicBool,
    }

    impl Future for Probe<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            match self.ready.load(Ordering::Relaxed) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn watchers_are_polled_only_when_woken_and_win_when_they_end() {
        let (polls, never) = (AtomicUsize::new(0), std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::watch::channel(0u8);
        let conn = Probe {
            polls: &polls,
            ready: &never,
        };
        let watchers = Box::pin(async {
            rx.changed().await.ok();
            7u8
        });
        let mut w = Watched::new(conn, watchers);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 5);
        // Only the first poll reached the watchers: nothing woke them since.
        assert!(!w.wake.woken.load(Ordering::Relaxed));
        tx.send(1).unwrap();
        assert!(w.wake.woken.load(Ordering::Relaxed));
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Ready(Err(7)));
    }

    #[tokio::test]
    async fn the_connection_ending_wins() {
        let (polls, ready) = (AtomicUsize::new(0), std::sync::atomic::AtomicBool::new(true));
        let conn = Probe {
            polls: &polls,
            ready: &ready,
        };
        let mut w = Watched::new(conn, Box::pin(std::future::pending::<()>()));
        assert_eq!((&mut w).await, Ok(()));
    }
}

#[cfg(test)]
mod idle_timed_tests {
    use super::*;
    use std::time::Instant;

    /// Woken every `every` until `until`, then never again (and never done).
    struct Busy {
        until: Instant,
        every: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Future for Busy {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if Instant::now() >= self.until {
                self.sleep = None;
                return Poll::Pending;
            }
            let every = self.every;
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if sleep.as_mut().poll(cx).is_ready() {
                sleep.as_mut().reset(tokio::time::Instant::now() + every);
                let _ = sleep.as_mut().poll(cx);
            }
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stream_ends_an_idle_timeout_after_its_last_wake_up_and_not_before() {
        let idle = Duration::from_millis(800);
        let start = Instant::now();
        let busy_for = Duration::from_millis(2000);
        let timeouts = Counter::default();
        let busy = Busy {
            until: start + busy_for,
            every: Duration::from_millis(40),
            sleep: None,
        };
        IdleTimed::new(busy, idle, timeouts.clone()).await;
        let took = start.elapsed();
        assert_eq!(timeouts.get(), 1);
        // Woken for 2 s, far longer than the timeout: it ends only once it goes quiet, and not
        // before the timeout (nor much after it: the scheduler's delays only).
        assert!(took >= busy_for + idle, "ended after {took:?}");
        assert!(took < busy_for + idle * 3, "ended after {took:?}");

        // A stream that ends by itself is not counted.
        let timeouts = Counter::default();
        IdleTimed::new(std::future::ready(()), idle, timeouts.clone()).await;
        assert_eq!(timeouts.get(), 0);
    }
}
