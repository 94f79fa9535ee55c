//! Per-thread shards for the counts the request path keeps: counters and histograms that a
//! worker updates without a locked instruction, summed when they are read (a scrape).
//!
//! An atomic add (`lock xadd`) costs a few times a plain add, and more when the core's store
//! buffer holds writes still waiting for their cache lines (it must drain first), as it often does
//! in the middle of a request. A proxied HTTP/1.1 request made 138 locked instructions (callgrind's
//! per-instruction counts of a one-worker proxy under `wrk -c50`, matched against the binary's
//! `lock`-prefixed instructions); 22 of them were counts of this kind: three atomics per histogram
//! (bucket, count, sum by compare-and-swap), six histograms per request, and four counters.
//!
//! Each sharded metric holds one slot per shard. Slot 0 is shared: updated with atomic adds, by any
//! thread. Slots 1.. each belong to at most one thread at a time (a worker, [`register_thread`]),
//! which updates its slot with a plain load and store (still `Relaxed` atomics, so that a scrape
//! on another thread reads whole values, but with no `lock` prefix). A reader sums the slots. A
//! thread gives its slot back when it exits, for the next thread that registers; the free list's
//! lock orders the old owner's last update before the new owner's first. A metric made before
//! [`configure`] raised the shard count, or a thread without a slot, uses slot 0: always
//! correct, only slower. prometheus-client has no sharded metrics; these implement its encoding
//! traits and live in its registries and families like its own.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// At most this many owned slots per metric (threads beyond share slot 0). Each slot is memory
/// per metric: a cluster's request-time histogram takes 192 bytes a slot, so a proxy with 10,000
/// clusters and 8 or more workers holds ~15 MiB more than with one shared slot.
const MAX_OWNED: usize = 8;

/// Slots per metric made from now on: 1 (the shared slot) + owned slots.
static SLOTS: AtomicUsize = AtomicUsize::new(1);
/// Owned slots no thread holds.
static FREE: parking_lot::Mutex<Vec<usize>> = parking_lot::Mutex::new(Vec::new());

/// Makes metrics created from now on hold an owned slot for each of `threads` threads (the
/// proxy's workers), up to [`MAX_OWNED`]. Slots are only ever added.
pub fn configure(threads: usize) {
    let want = threads.min(MAX_OWNED) + 1;
    let mut free = FREE.lock();
    let have = SLOTS.load(Relaxed);
    if want > have {
        free.extend(have..want);
        SLOTS.store(want, Relaxed);
    }
}

/// Gives the calling thread an owned slot, if one is free, until it exits.
pub fn register_thread() {
    SLOT.with(|s| {
        if s.get() == 0 {
            if let Some(i) = FREE.lock().pop() {
                s.set(i);
                RELEASE.with(|r| r.0.set(i));
            }
        }
    });
}

thread_local! {
    /// The thread's owned slot; 0: none (the shared one).
    static SLOT: Cell<usize> = const { Cell::new(0) };
    /// Gives the slot back when the thread exits.
    static RELEASE: Release = const { Release(Cell::new(0)) };
}

struct Release(Cell<usize>);

impl Drop for Release {
    fn drop(&mut self) {
        let i = self.0.get();
        if i != 0 {
            // A count made by a later thread-local destructor goes to the shared slot: this one
            // may belong to another thread from now on.
            SLOT.with(|s| s.set(0));
            FREE.lock().push(i);
        }
    }
}

/// The calling thread's slot for a metric of `slots` slots: owned (`true`) or the shared one.
#[inline]
pub(crate) fn slot(slots: usize) -> (usize, bool) {
    let i = SLOT.with(Cell::get);
    match i != 0 && i < slots {
        true => (i, true),
        false => (0, false),
    }
}

/// Adds `n` to the value at `cell`: a plain load and store in an owned slot, an atomic add in the
/// shared one.
#[inline]
pub(crate) fn add(cell: &AtomicU64, n: u64, owned: bool) {
    match owned {
        true => cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed),
        false => {
            cell.fetch_add(n, Relaxed);
        }
    }
}

/// A monotonic counter (Prometheus `counter`). Clones share their counts. [`Counter::default`]
/// has the shared slot only (one atomic, as prometheus-client's); [`Counter::sharded`] a slot per
/// worker too, for the counts made for every request. The slots are not padded to cache lines
/// (several workers' slots may share one, as they all shared the one atomic before): that keeps
/// a sharded counter at 8 bytes a slot.
#[derive(Clone, Debug)]
pub struct Counter {
    slots: Arc<[AtomicU64]>,
}

impl Default for Counter {
    fn default() -> Counter {
        Counter {
            slots: Arc::new([AtomicU64::new(0)]),
        }
    }
}

impl Counter {
    /// A counter with a slot per worker ([`configure`]).
    pub fn sharded() -> Counter {
        Counter {
            slots: (0..SLOTS.load(Relaxed)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    #[inline]
    pub fn inc_by(&self, n: u64) {
        let (i, owned) = slot(self.slots.len());
        add(&self.slots[i], n, owned);
    }

    /// The count: the sum of the slots.
    pub fn get(&self) -> u64 {
        self.slots.iter().fold(0u64, |s, c| s.wrapping_add(c.load(Relaxed)))
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Slots per metric made now (for [`crate::hist::Histogram`]).
pub(crate) fn slots() -> usize {
    SLOTS.load(Relaxed)
}

/// Serialises the tests that hand out slots (the free list is the process's).
#[cfg(test)]
pub(crate) static TEST_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    // One test: the slots and their free list are the process's.
    #[test]
    fn owned_and_shared_slots_add_up_and_slots_are_given_back() {
        let _serial = TEST_LOCK.lock();
        configure(4);
        assert_eq!(Counter::default().slots.len(), 1);
        let c = Counter::sharded();
        assert!(c.slots.len() >= 5);
        // Unregistered threads share slot 0; registered ones own one each.
        let threads: Vec<_> = (0..6)
            .map(|k| {
                let c = c.clone();
                std::thread::spawn(move || {
                    if k % 2 == 0 {
                        register_thread();
                    }
                    for _ in 0..10_000 {
                        c.inc();
                    }
                    c.inc_by(5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 6 * 10_005);
        let mut r = Registry::default();
        r.register("t", "test", c.clone());
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        assert!(out.contains("t_total 60030"), "{out}");

        // A thread's slot goes back to the free list when it exits, for the next thread.
        let held = |tx: std::sync::mpsc::Sender<usize>| {
            register_thread();
            tx.send(SLOT.with(Cell::get)).unwrap();
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let tx = tx.clone();
            move || held(tx)
        })
        .join()
        .unwrap();
        let first = rx.recv().unwrap();
        assert_ne!(first, 0, "a slot was free");
        assert!(FREE.lock().contains(&first), "given back at exit");
        std::thread::spawn(move || held(tx)).join().unwrap();
        assert_ne!(rx.recv().unwrap(), 0);
    }
}
