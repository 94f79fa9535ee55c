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
