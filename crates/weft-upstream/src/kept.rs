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

    /// A read buffer: a kept one, or none yet (the caller reserves). A kept buffer is moved back
    /// to its allocation's start here too ([`crate::h1::rewind`]): given back while a head or body
    /// cut out of it was still alive (a response's head is, until the server has written its
    /// body), it could not move then, and the next message would be read after the last.
    pub fn take_read() -> BytesMut {
        match super::take(&READ) {
            Some(mut b) => {
                crate::h1::rewind(&mut b, READ_SIZE);
                b
            }
            None => BytesMut::new(),
        }
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
        fn a_read_buffer_given_back_under_a_live_head_is_rewound_when_taken() {
            READ.with(|k| k.borrow_mut().clear());
            let mut b = BytesMut::with_capacity(READ_SIZE);
            let start = b.as_ptr();
            b.extend_from_slice(&[b'x'; 3000]);
            let head = b.split_to(3000).freeze();
            // The head still shares the allocation: the buffer cannot move yet.
            give_read(b);
            assert_eq!(READ.with(|k| k.borrow().len()), 1);
            drop(head);
            let r = take_read();
            assert_eq!(r.as_ptr(), start, "the next read lands at the allocation's start");
            assert!(r.is_empty() && r.capacity() >= READ_SIZE);
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

/// Memory blocks for the state of exchanges (a request's whole future: ~7 KB for an HTTP/1.1
/// exchange) and their responses, kept by the worker thread and handed out last in first out.
///
/// Boxed from the global allocator, each new exchange got whichever block the allocator's free
/// list held next: mimalloc takes a page's blocks in turn before reusing freed ones, so under
/// 50 keep-alive clients the exchanges went round dozens of blocks (~0.5 MB), each cold by the
/// time it came back (callgrind's cache simulation, `bench/instructions --clients 50`: the moves
/// of the request and response within that state missed the last-level cache ~6 times per
/// request). HAProxy's pools, which it takes its streams from, are last in first out: so is this.
/// Written here because the allocator crates offer no per-thread LIFO cache of one block size.
pub mod blocks {
    use std::alloc::Layout;
    use std::cell::RefCell;
    use std::future::Future;
    use std::marker::PhantomData;
    use std::mem::MaybeUninit;
    use std::pin::Pin;
    use std::ptr::NonNull;
    use std::task::{Context, Poll};

    /// Blocks kept per size, per thread: as many as a busy worker has exchanges in flight
    /// (see [`super::bufs::KEEP`]).
    pub const KEEP: usize = 64;
    /// Distinct block layouts kept per thread (one per kind of HTTP/1 exchange: over TCP, over
    /// TLS; and the responses); blocks of others go back to the allocator. The first layouts to
    /// reach a thread keep their place.
    const LAYOUTS: usize = 6;

    struct Stack {
        layout: Layout,
        blocks: Vec<NonNull<u8>>,
    }

    /// A thread's kept blocks; given back to the allocator when the thread ends.
    struct Kept(RefCell<Vec<Stack>>);

    impl Drop for Kept {
        fn drop(&mut self) {
            for s in self.0.get_mut().drain(..) {
                for b in s.blocks {
                    // SAFETY: every kept block was allocated by the global allocator with this
                    // layout (`alloc` below) and is owned by the stack alone.
                    unsafe { std::alloc::dealloc(b.as_ptr(), s.layout) };
                }
            }
        }
    }

    thread_local! {
        static KEPT: Kept = const { Kept(RefCell::new(Vec::new())) };
    }

    /// A block for `layout` (non-zero size): the thread's most recently kept one, else a new one.
    fn alloc(layout: Layout) -> NonNull<u8> {
        let kept = KEPT
            .try_with(|k| {
                let mut k = k.0.borrow_mut();
                k.iter_mut().find(|s| s.layout == layout).and_then(|s| s.blocks.pop())
            })
            .ok()
            .flatten();
        kept.unwrap_or_else(|| {
            // SAFETY: the layout has a non-zero size (checked by the caller).
            let p = unsafe { std::alloc::alloc(layout) };
            NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        })
    }

    /// Takes a block back: kept for the next exchange, or given back to the allocator.
    ///
    /// # Safety
    /// `block` was allocated by [`alloc`] (the global allocator) with `layout`, holds no live
    /// value, and is not used after this.
    unsafe fn free(block: NonNull<u8>, layout: Layout) {
        let rest = KEPT
            .try_with(|k| {
                let mut k = k.0.borrow_mut();
                let i = match k.iter().position(|s| s.layout == layout) {
                    Some(i) => i,
                    None if k.len() < LAYOUTS => {
                        k.push(Stack {
                            layout,
                            blocks: Vec::with_capacity(KEEP),
                        });
                        k.len() - 1
                    }
                    None => return Some(block),
                };
                let s = &mut k[i].blocks;
                if s.len() < KEEP {
                    s.push(block);
                    return None;
                }
                Some(block)
            })
            .unwrap_or(Some(block));
        if let Some(b) = rest {
            // SAFETY: the caller's contract: allocated with this layout, no longer used.
            unsafe { std::alloc::dealloc(b.as_ptr(), layout) };
        }
    }

    /// A kept block not yet holding its future. Taken before the future is built, so that the
    /// compiler can build it in the block (built first, it would be copied in: ~7 KB).
    pub struct Slot<F> {
        block: NonNull<MaybeUninit<F>>,
    }

    impl<F> Slot<F> {
        #[inline(always)]
        pub fn new() -> Slot<F> {
            let layout = Layout::new::<F>();
            const { assert!(std::mem::size_of::<F>() > 0, "a value with a size") };
            Slot {
                block: alloc(layout).cast(),
            }
        }

        /// Moves `value` into the block.
        #[inline(always)]
        pub fn write(self, value: F) -> Pooled<F> {
            let block = self.block;
            std::mem::forget(self);
            // SAFETY: the block is allocated for an `F` and unused (a new slot's).
            unsafe { (*block.as_ptr()).write(value) };
            Pooled(KeptBox {
                value: block.cast(),
                _owns: PhantomData,
            })
        }
    }

    impl<F> Default for Slot<F> {
        fn default() -> Slot<F> {
            Slot::new()
        }
    }

    impl<F> Drop for Slot<F> {
        fn drop(&mut self) {
            // SAFETY: from `alloc` with this layout; it never held a value.
            unsafe { free(self.block.cast(), Layout::new::<F>()) };
        }
    }

    /// A future in a kept block, polled in place: its `KeptBox` is never moved out of nor
    /// given out, so the future stays where it was written (pinned) until it is dropped.
    pub struct Pooled<F>(KeptBox<F>);

    impl<F: Future> Future for Pooled<F> {
        type Output = F::Output;

        #[inline(always)]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            // SAFETY: the future lives in its block until the box drops it, and `Pooled` never
            // moves it (no method gives the box or the future by value or by `&mut`).
            unsafe { self.map_unchecked_mut(|p| &mut *p.0) }.poll(cx)
        }
    }

    /// Frees a block when dropped: after its value's drop, even one that panics (as `Box`).
    struct FreeOnDrop(NonNull<u8>, Layout);

    impl Drop for FreeOnDrop {
        fn drop(&mut self) {
            // SAFETY: made only by `KeptBox`'s drop, for its block and layout, after which the
            // block is not used.
            unsafe { free(self.0, self.1) };
        }
    }

    /// A value in a kept block, as a `Box` (the response of an exchange: moved between the
    /// pipeline's layers as a pointer, not ~260 bytes each time).
    pub struct KeptBox<T> {
        value: NonNull<T>,
        _owns: PhantomData<T>,
    }

    // SAFETY: owned as a `Box` owns, in memory of the global allocator (which any thread may
    // keep or free).
    unsafe impl<T: Send> Send for KeptBox<T> {}
    // SAFETY: as above.
    unsafe impl<T: Sync> Sync for KeptBox<T> {}

    impl<T> KeptBox<T> {
        /// `value`, moved into a kept block (as [`Slot::write`] does for a future).
        #[inline(always)]
        pub fn new(value: T) -> KeptBox<T> {
            Slot::new().write(value).0
        }

        /// The value, out of its block (which is kept).
        pub fn into_inner(self) -> T {
            let this = std::mem::ManuallyDrop::new(self);
            // SAFETY: the block holds a live `T`, read once here; `this` is never dropped, so the
            // value is not dropped twice, and the block (allocated for a `T`) is not used again.
            unsafe {
                let value = this.value.as_ptr().read();
                free(this.value.cast(), Layout::new::<T>());
                value
            }
        }
    }

    impl<T> std::ops::Deref for KeptBox<T> {
        type Target = T;
        #[inline(always)]
        fn deref(&self) -> &T {
            // SAFETY: the block holds a live `T` for as long as `self`.
            unsafe { self.value.as_ref() }
        }
    }

    impl<T> std::ops::DerefMut for KeptBox<T> {
        #[inline(always)]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as above, and `&mut self` is the only access.
            unsafe { self.value.as_mut() }
        }
    }

    impl<T> Drop for KeptBox<T> {
        fn drop(&mut self) {
            let _block = FreeOnDrop(self.value.cast(), Layout::new::<T>());
            // SAFETY: the block holds a live `T`, dropped once here; then the block is not used
            // (`_block` frees it, also when the value's drop panics).
            unsafe { std::ptr::drop_in_place(self.value.as_ptr()) };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::rc::Rc;

        fn kept<F>() -> usize {
            KEPT.with(|k| {
                k.0.borrow()
                    .iter()
                    .find(|s| s.layout == Layout::new::<F>())
                    .map_or(0, |s| s.blocks.len())
            })
        }

        #[test]
        fn blocks_are_reused_last_in_first_out_and_values_dropped() {
            let dropped = Rc::new(());
            let a = Slot::new().write((Rc::clone(&dropped), [1u8; 500]));
            let b = Slot::new().write((Rc::clone(&dropped), [2u8; 500]));
            let (pa, pb) = (a.0.value.as_ptr() as usize, b.0.value.as_ptr() as usize);
            assert_eq!(Rc::strong_count(&dropped), 3);
            drop(a);
            drop(b);
            assert_eq!(Rc::strong_count(&dropped), 1, "both values dropped");
            assert_eq!(kept::<(Rc<()>, [u8; 500])>(), 2);
            // The last block given back is the first taken.
            let c = Slot::new().write((Rc::clone(&dropped), [3u8; 500]));
            assert_eq!(c.0.value.as_ptr() as usize, pb);
            let d = Slot::<(Rc<()>, [u8; 500])>::new();
            assert_eq!(d.block.as_ptr() as usize, pa);
            drop(d);
            drop(c);
            assert_eq!(kept::<(Rc<()>, [u8; 500])>(), 2);
        }

        #[test]
        fn a_kept_box_owns_its_value() {
            let dropped = Rc::new(());
            let mut b = KeptBox::new((Rc::clone(&dropped), vec![1u8, 2, 3]));
            b.1.push(4);
            assert_eq!(b.1, [1, 2, 3, 4]);
            let p = b.value.as_ptr() as usize;
            let (rc, v) = b.into_inner();
            assert_eq!(v, [1, 2, 3, 4]);
            assert_eq!(Rc::strong_count(&dropped), 2);
            drop(rc);
            // Its block is the next one of that layout handed out.
            let c = KeptBox::new((Rc::clone(&dropped), Vec::<u8>::new()));
            assert_eq!(c.value.as_ptr() as usize, p);
            drop(c);
            assert_eq!(Rc::strong_count(&dropped), 1, "dropped with its box");
        }

        #[test]
        fn a_block_is_kept_even_when_its_value_panics_in_drop() {
            struct Bomb([u8; 72]);
            impl Drop for Bomb {
                fn drop(&mut self) {
                    panic!("dropped with {} bytes", self.0.len());
                }
            }
            let before = kept::<Bomb>();
            let b = KeptBox::new(Bomb([0; 72]));
            assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(b))).is_err());
            assert_eq!(kept::<Bomb>(), before + 1, "the block came back");
        }

        #[test]
        fn at_most_keep_blocks_are_kept() {
            let all: Vec<_> = (0..KEEP + 5).map(|i| Slot::new().write([i as u64; 40])).collect();
            drop(all);
            assert_eq!(kept::<[u64; 40]>(), KEEP);
        }

        #[test]
        fn a_future_is_polled_in_its_block() {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let out = rt.block_on(async {
                let big = [7u8; 1000];
                Slot::new()
                    .write(async move {
                        tokio::task::yield_now().await;
                        big.iter().map(|b| u32::from(*b)).sum::<u32>()
                    })
                    .await
            });
            assert_eq!(out, 7000);
        }
    }
}
