//! Values a worker thread keeps for reuse (header maps, buffers, pipes): taken by the next
//! message or connection on that thread instead of being freed and made again. Thread-local, so
//! no lock; bounded by the caller; after the thread's locals are gone (its exit) a value given
//! is dropped and a take finds none.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's kept values of one kind, for `thread_local!`: `RefCell::new(Vec::new())`.
pub type Kept<T> = RefCell<Vec<T>>;

/// The last value kept, if any.
pub fn take<T: 'static>(kept: &'static LocalKey<Kept<T>>) -> Option<T> {
    kept.try_with(|k| k.borrow_mut().pop()).ok().flatten()
}

/// Keeps `value` unless `max` are kept already (then it is dropped).
pub fn give<T: 'static>(kept: &'static LocalKey<Kept<T>>, value: T, max: usize) {
    let _ = kept.try_with(|k| {
        let mut k = k.borrow_mut();
        if k.len() < max {
            k.push(value);
        }
    });
}

/// The read and write buffers of HTTP/1 connections at rest, downstream (weft's HTTP/1.1 server)
/// and upstream (weft's HTTP/1.1 client), kept by the worker thread for the next connection that
/// reads or writes. A keep-alive connection is at rest between every two requests, and its
/// buffers are given up then (an idle connection holds none): without these every request
/// allocated both again, and the allocator's page for them often emptied and was retired in
/// between (~400 instructions of an HTTP/1.1 keep-alive request, `bench/instructions`). One pool
/// for both sides, last in first out: a response is read into a buffer an exchange just used
/// rather than into the one its upstream connection held since its last request, and an idle
/// pooled upstream connection holds no buffer. (Its effect on CPU per request was not cleanly
/// measured: within the noise of paired runs; docs/benchmarks.md, session 32.) At most [`bufs::KEEP`] of each, of ordinary
/// sizes.
pub mod bufs {
    use super::Kept;
    use bytes::BytesMut;

    /// The ordinary read size and buffer (a head larger than this grows its buffer).
    pub const READ_SIZE: usize = 8 * 1024;
    /// As many as a busy worker has exchanges in flight, so that buffers go round between them
    /// instead of being freed and allocated again: with 8, a one-worker proxy under 50 keep-alive
    /// clients made 10.9 allocator calls per request, with 64 4.1 (and ~4 % fewer instructions;
    /// callgrind under `wrk -c50`, docs/benchmarks.md). What they can hold is bounded by the
    /// sizes below: 64 × (16 + 24) KiB per worker at most; ordinarily a few KiB of each is ever
    /// touched.
    pub const KEEP: usize = 64;
    /// Larger buffers (after a large head or a large response piece) are freed, not kept.
    pub const MAX_READ: usize = 2 * READ_SIZE;
    /// The largest write buffer kept: a response head with a 16 KiB body copied behind it.
    pub const MAX_WRITE: usize = 24 * 1024;

    thread_local! {
        static READ: Kept<BytesMut> = const { Kept::new(Vec::new()) };
        static WRITE: Kept<Vec<u8>> = const { Kept::new(Vec::new()) };
    }

    /// A read buffer: a kept one, or none yet (the caller reserves).
    pub fn take_read() -> BytesMut {
        super::take(&READ).unwrap_or_default()
    }

    pub fn take_write() -> Vec<u8> {
        super::take(&WRITE).unwrap_or_default()
    }

    /// Keeps an empty read buffer (one holding bytes is dropped: they are not anyone's now).
    pub fn give_read(mut b: BytesMut) {
        if b.capacity() == 0 || !b.is_empty() {
            return;
        }
        // Kept at its allocation's start, if the last message's head is gone; the capacity is
        // checked after, when it spans the whole allocation again.
        crate::h1::rewind(&mut b, READ_SIZE);
        if b.capacity() > MAX_READ {
            return;
        }
        super::give(&READ, b, KEEP);
    }

    pub fn give_write(mut b: Vec<u8>) {
        if b.capacity() == 0 || b.capacity() > MAX_WRITE {
            return;
        }
        b.clear();
        super::give(&WRITE, b, KEEP);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn buffers_are_kept_empty_bounded_and_ordinary() {
            let mut r = BytesMut::with_capacity(8192);
            r.extend_from_slice(b"GET");
            give_read(r.clone());
            assert_eq!(READ.with(|k| k.borrow().len()), 0, "a buffer holding bytes is not kept");
            r.clear();
            give_read(r);
            let r = take_read();
            assert!(r.is_empty() && r.capacity() >= 8192);
            let mut w = Vec::with_capacity(1024);
            w.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            give_write(w);
            let w = take_write();
            assert!(w.is_empty() && w.capacity() >= 1024);
            for _ in 0..KEEP + 3 {
                give_write(Vec::with_capacity(100));
                give_read(BytesMut::with_capacity(100));
            }
            assert_eq!(WRITE.with(|k| k.borrow().len()), KEEP);
            assert_eq!(READ.with(|k| k.borrow().len()), KEEP);
            give_write(Vec::with_capacity(MAX_WRITE + 1));
            WRITE.with(|k| assert!(k.borrow().iter().all(|b| b.capacity() <= MAX_WRITE)));
        }

        #[test]
        fn a_read_buffer_in_a_large_allocation_is_not_kept() {
            // Most of a 64 KiB allocation consumed: 4 KiB of capacity left, but rewinding it gives
            // the whole allocation back, so it is too large to keep.
            let mut b = BytesMut::with_capacity(64 * 1024);
            b.extend_from_slice(&[0u8; 60 * 1024]);
            drop(b.split_to(60 * 1024));
            assert!(b.capacity() <= MAX_READ);
            give_read(b);
            assert_eq!(READ.with(|k| k.borrow().len()), 0);
        }
    }
}
