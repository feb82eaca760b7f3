//! The clock and the ObjectId source of the document engine, overridable per thread.
//!
//! A replicated write is re-executed by every member when it applies the log entry, so anything
//! the engine invents while executing it (an `_id` for a document without one, the time for
//! `$currentDate`) must come out the same on every member. The state machine sets a
//! [`Deterministic`] context (the entry's proposal time and log position) around each apply;
//! outside one, the real clock and random ObjectIds are used.

use std::cell::RefCell;

use bson::oid::ObjectId;

/// What an apply fixes: the proposal time and a per-entry seed for ObjectIds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deterministic {
    /// Milliseconds since the epoch, chosen by the primary when it proposed the entry.
    pub now_millis: i64,
    /// Unique per log entry (its index); fills the ObjectId's process-unique bytes.
    pub seed: u64,
}

struct Context {
    fixed: Deterministic,
    counter: u32,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Runs `f` with the clock and ObjectIds fixed by `fixed` on this thread.
pub fn with_context<T>(fixed: Deterministic, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CONTEXT.with(|c| *c.borrow_mut() = None);
        }
    }
    CONTEXT.with(|c| *c.borrow_mut() = Some(Context { fixed, counter: 0 }));
    let _reset = Reset;
    f()
}

/// The current time: the entry's proposal time inside an apply, the wall clock otherwise.
pub fn now() -> bson::DateTime {
    CONTEXT.with(|c| match &*c.borrow() {
        Some(context) => bson::DateTime::from_millis(context.fixed.now_millis),
        None => bson::DateTime::now(),
    })
}

/// A new ObjectId: derived from the entry inside an apply (so every member invents the same
/// one), random otherwise.
pub fn new_object_id() -> ObjectId {
    CONTEXT.with(|c| match &mut *c.borrow_mut() {
        Some(context) => {
            context.counter = context.counter.wrapping_add(1);
            let seconds = u32::try_from(context.fixed.now_millis.max(0) / 1000).unwrap_or(u32::MAX);
            let mut bytes = [0u8; 12];
            bytes[..4].copy_from_slice(&seconds.to_be_bytes());
            // Five bytes of the index, then a 3-byte counter: unique for 2^40 entries of up to
            // 2^24 generated ids each, which bounds (WRITE_BATCH_STATEMENTS_MAX) already ensure.
            bytes[4..9].copy_from_slice(&context.fixed.seed.to_be_bytes()[3..]);
            bytes[9..].copy_from_slice(&context.counter.to_be_bytes()[1..]);
            ObjectId::from_bytes(bytes)
        }
        None => ObjectId::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_context_repeats_and_resets() {
        let fixed = Deterministic {
            now_millis: 1_700_000_000_123,
            seed: 42,
        };
        let first = with_context(fixed, || (now(), new_object_id(), new_object_id()));
        let second = with_context(fixed, || (now(), new_object_id(), new_object_id()));
        assert_eq!(first, second);
        assert_ne!(first.1, first.2);
        assert_eq!(first.0.timestamp_millis(), 1_700_000_000_123);
        assert_ne!(new_object_id(), first.1);
    }
}
