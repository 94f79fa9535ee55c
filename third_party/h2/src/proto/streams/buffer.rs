use slab::Slab;

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
    released: Released,
}

/// weft patch: the most entries a frame buffer or stream store reserves again
/// after a rest. Enough for the streams a busy connection usually has open at
/// once; a rare larger burst grows past it by doubling as before, and is not
/// reserved again for every later stream.
pub(super) const REUSE_MAX: usize = 128;

/// weft patch: the capacity a slab had when it was freed at rest (at most
/// `REUSE_MAX`), reserved again in one step by its next insertion instead of
/// regrowing by doubling (a reallocation and a copy of every entry per step).
#[derive(Debug, Default)]
pub(super) struct Released(usize);

impl Released {
    /// Frees `slab` if it is empty, remembering its capacity.
    pub(super) fn free<T>(&mut self, slab: &mut Slab<T>) {
        if slab.is_empty() && slab.capacity() > 0 {
            // Up to 4 entries, the first insertion allocates as much anyway.
            if slab.capacity() > 4 {
                self.0 = slab.capacity().min(REUSE_MAX);
            }
            *slab = Slab::new();
        }
    }

    /// Inserts into `slab`, first reserving the capacity remembered at rest.
    pub(super) fn insert<T>(&mut self, slab: &mut Slab<T>, value: T) -> usize {
        if self.0 > 0 && slab.capacity() == 0 {
            slab.reserve(std::mem::take(&mut self.0));
        }
        slab.insert(value)
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
}
