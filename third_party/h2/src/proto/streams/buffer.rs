use slab::Slab;

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
    released: Released,
}

/// weft patch: the most entries a frame buffer or stream store reserves again
/// after a rest: the streams weft lets a connection have open at once (a frame
/// queue can hold more entries; past this it regrows by doubling as before).
pub(super) const REUSE_MAX: usize = 1024;

/// weft patch: what a slab needs again after a rest, reserved in one step by
/// its next insertion instead of regrowing by doubling (a reallocation and a
/// copy of every entry per step). It is the most entries the slab held during
/// its last busy period (rounded up to a power of two, at most `REUSE_MAX`):
/// a busy period like the last one never regrows, and one burst is reserved
/// again only for the next period, not for every later one. (Remembering the
/// capacity instead, capped at 128, made a connection with 128 streams in
/// flight regrow its frame queue past 128 entries in every busy period.)
#[derive(Debug, Default)]
pub(super) struct Released {
    /// Reserved by the first insertion after a rest.
    reserve: usize,
    /// The most entries held since the last rest.
    peak: usize,
}

impl Released {
    /// Frees `slab` if it is empty, remembering what its busy period needed.
    pub(super) fn free<T>(&mut self, slab: &mut Slab<T>) {
        if slab.is_empty() && slab.capacity() > 0 {
            // Up to 4 entries, the first insertion allocates as much anyway.
            self.reserve = match self.peak {
                0..=4 => 0,
                n => n.next_power_of_two().min(REUSE_MAX),
            };
            self.peak = 0;
            *slab = Slab::new();
        }
    }

    /// Inserts into `slab`, first reserving what the last busy period needed.
    pub(super) fn insert<T>(&mut self, slab: &mut Slab<T>, value: T) -> usize {
        if self.reserve > 0 && slab.capacity() == 0 {
            slab.reserve(std::mem::take(&mut self.reserve));
        }
        let key = slab.insert(value);
        self.peak = self.peak.max(slab.len());
        key
    }
}

/// A sequence of frames in a `Buffer`
#[derive(Debug)]
pub struct Deque {
    indices: Option<Indices>,
}

/// Tracks the head & tail for a sequence of frames in a `Buffer`.
#[derive(Debug, Default, Copy, Clone)]
struct Indices {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    next: Option<usize>,
}

impl<T> Buffer<T> {
    pub fn new() -> Self {
        Buffer {
            slab: Slab::new(),
            released: Released::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// weft patch: frees the slab's storage when it holds no frame (it keeps its
    /// capacity otherwise, for the connection's whole life).
    pub fn release_if_empty(&mut self) {
        self.released.free(&mut self.slab);
    }

    fn insert(&mut self, slot: Slot<T>) -> usize {
        self.released.insert(&mut self.slab, slot)
    }
}

impl Deque {
    pub fn new() -> Self {
        Deque { indices: None }
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_none()
    }

    pub fn push_back<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[idxs.tail].next = Some(key);
                idxs.tail = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn push_front<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[key].next = Some(idxs.head);
                idxs.head = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn pop_front<T>(&mut self, buf: &mut Buffer<T>) -> Option<T> {
        match self.indices {
            Some(mut idxs) => {
                let mut slot = buf.slab.remove(idxs.head);

                if idxs.head == idxs.tail {
                    assert!(slot.next.is_none());
                    self.indices = None;
                } else {
                    idxs.head = slot.next.take().unwrap();
                    self.indices = Some(idxs);
                }

                Some(slot.value)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// weft patch: an idle connection frees the frame slab; its first frame after
    /// that reserves the earlier capacity in one step.
    #[test]
    fn released_capacity_is_reserved_again_at_once() {
        let mut buf = Buffer::new();
        let mut queue = Deque::new();
        for i in 0..100 {
            queue.push_back(&mut buf, i);
        }
        let busy = buf.slab.capacity();
        while queue.pop_front(&mut buf).is_some() {}
        buf.release_if_empty();
        assert_eq!(buf.slab.capacity(), 0, "an empty buffer keeps no storage");
        buf.release_if_empty();
        queue.push_back(&mut buf, 1);
        assert!(buf.slab.capacity() >= busy, "{} < {busy}", buf.slab.capacity());
        assert_eq!(queue.pop_front(&mut buf), Some(1));
    }

    /// weft patch: what is reserved again follows the last busy period: a
    /// period like the last one never regrows, a burst is reserved again only
    /// for the next period.
    #[test]
    fn reserved_capacity_follows_the_last_busy_period() {
        let mut buf = Buffer::new();
        let mut queue = Deque::new();
        let mut busy = |buf: &mut Buffer<usize>, n: usize| {
            for i in 0..n {
                queue.push_back(buf, i);
            }
            let cap = buf.slab.capacity();
            while queue.pop_front(buf).is_some() {}
            buf.release_if_empty();
            cap
        };
        // 200 frames in flight: the first period grows by doubling, the next
        // ones find the room reserved at their first frame.
        busy(&mut buf, 200);
        let first = busy(&mut buf, 200);
        assert!((200..=256).contains(&first), "{first}");
        assert_eq!(busy(&mut buf, 200), first, "no regrowth in a period like the last");
        // A burst of 900, then quiet periods of 10: the burst is reserved for
        // the period after it only.
        busy(&mut buf, 900);
        assert!(busy(&mut buf, 10) >= 900);
        assert!(busy(&mut buf, 10) <= 16, "a burst is not reserved for every later period");
    }
}
