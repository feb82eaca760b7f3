//! Open cursors between `find`/`aggregate` and their `getMore`s.
//!
//! A cursor over a find whose order the scan provides (no sort, or a sort an index gives) keeps
//! only its resumable range scan and re-scans from there, so an open cursor costs a few hundred
//! bytes however large the collection. Sorted finds and aggregations keep their materialized
//! results. The table is bounded ([`CURSORS_MAX`]) and idle cursors
//! expire after [`CURSOR_IDLE_TIMEOUT`]; expiry is checked lazily whenever the table is touched,
//! so no background task is needed.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use bson::Document;

use crate::scan::RangeScan;

/// Most cursors open at once; beyond it the longest-idle cursor is closed to make room, so a
/// client that leaks cursors degrades itself rather than blocking every new query.
pub const CURSORS_MAX: usize = 10_000;
/// A cursor not used for this long is closed (MongoDB's default `cursorTimeoutMillis`).
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Where a cursor's remaining documents come from.
pub(crate) enum Source {
    /// A scan in result order, resumed by key.
    Scan(ScanState),
    /// Results computed up front (sorted find, aggregate, listings), already projected.
    Buffered(VecDeque<Document>),
}

/// The state of a resumable scan.
pub(crate) struct ScanState {
    /// Where the scan stands.
    pub scan: RangeScan,
    /// The query filter, re-parsed on each batch so the stored state is plain data.
    pub filter: Document,
    /// The projection, if any.
    pub projection: Option<Document>,
    /// Matching documents still to skip.
    pub skip_left: u64,
    /// Documents still to return, `None` for no limit.
    pub limit_left: Option<u64>,
}

/// One open cursor.
pub(crate) struct Cursor {
    /// The namespace reported in replies (`db.coll` or `db.$cmd.aggregate`).
    pub ns: String,
    /// The database the cursor belongs to; `getMore` must come from the same one.
    pub db: String,
    /// The collection part of `ns`, checked against `getMore.collection`.
    pub coll: String,
    /// The remaining results.
    pub source: Source,
    last_used: Instant,
    /// When the cursor was opened (range deletion waits for cursors older than a migration).
    opened: Instant,
}

impl Cursor {
    /// A cursor used just now.
    pub fn new(ns: String, db: String, coll: String, source: Source) -> Cursor {
        Cursor {
            ns,
            db,
            coll,
            source,
            last_used: Instant::now(),
            opened: Instant::now(),
        }
    }
}

/// The cursor table.
#[derive(Default)]
pub(crate) struct CursorTable {
    cursors: HashMap<i64, Cursor>,
}

impl CursorTable {
    /// Closes cursors idle for longer than [`CURSOR_IDLE_TIMEOUT`].
    fn expire(&mut self, now: Instant) {
        let before = self.cursors.len();
        self.cursors
            .retain(|_, cursor| now.duration_since(cursor.last_used) < CURSOR_IDLE_TIMEOUT);
        let expired = before - self.cursors.len();
        if expired > 0 {
            tracing::debug!(expired, "closed idle cursors");
        }
    }

    /// Stores `cursor` and returns its new id (non-zero, positive, unused).
    pub fn insert(&mut self, cursor: Cursor) -> i64 {
        self.insert_at(cursor, Instant::now())
    }

    fn insert_at(&mut self, mut cursor: Cursor, now: Instant) -> i64 {
        self.expire(now);
        while self.cursors.len() >= CURSORS_MAX {
            let oldest = self
                .cursors
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else { break };
            tracing::warn!(
                cursor_id = oldest,
                limit = CURSORS_MAX,
                "cursor table full; closing the longest idle cursor"
            );
            self.cursors.remove(&oldest);
        }
        cursor.last_used = now;
        let id = loop {
            // Positive and non-zero: 0 means "exhausted" on the wire.
            let candidate = (rand::random::<u64>() >> 1) as i64;
            if candidate != 0 && !self.cursors.contains_key(&candidate) {
                break candidate;
            }
        };
        self.cursors.insert(id, cursor);
        id
    }

    /// Puts a cursor back under its id after a `getMore`.
    pub fn restore(&mut self, id: i64, mut cursor: Cursor) {
        cursor.last_used = Instant::now();
        if self.cursors.len() >= CURSORS_MAX {
            self.expire(cursor.last_used);
        }
        if self.cursors.len() < CURSORS_MAX {
            self.cursors.insert(id, cursor);
        } else {
            tracing::warn!(
                cursor_id = id,
                limit = CURSORS_MAX,
                "cursor table full; closing cursor"
            );
        }
    }

    /// Takes cursor `id` out of the table (a `getMore` owns it while it runs).
    pub fn take(&mut self, id: i64) -> Option<Cursor> {
        self.take_at(id, Instant::now())
    }

    fn take_at(&mut self, id: i64, now: Instant) -> Option<Cursor> {
        self.expire(now);
        self.cursors.remove(&id)
    }

    /// The namespace of cursor `id`, if open.
    pub fn ns_of(&self, id: i64) -> Option<&str> {
        self.cursors.get(&id).map(|cursor| cursor.ns.as_str())
    }

    /// Closes cursor `id`; whether it was open.
    pub fn remove(&mut self, id: i64) -> bool {
        self.cursors.remove(&id).is_some()
    }

    /// How many cursors read collection `ns` (`db.coll`), and how long ago the oldest opened.
    pub fn open_on(&self, ns: &str) -> (usize, std::time::Duration) {
        let now = Instant::now();
        self.cursors
            .values()
            .filter(|cursor| {
                ns.strip_prefix(cursor.db.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|coll| coll == cursor.coll)
            })
            .fold((0, std::time::Duration::ZERO), |(n, oldest), cursor| {
                (
                    n + 1,
                    oldest.max(now.saturating_duration_since(cursor.opened)),
                )
            })
    }

    /// Number of open cursors.
    pub fn len(&self) -> usize {
        self.cursors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor::new(
            "db.c".into(),
            "db".into(),
            "c".into(),
            Source::Buffered(VecDeque::new()),
        )
    }

    #[test]
    fn idle_cursors_expire_on_access() {
        let mut table = CursorTable::default();
        let start = Instant::now();
        let id = table.insert_at(cursor(), start);
        assert!(id > 0);
        let later = start + CURSOR_IDLE_TIMEOUT + Duration::from_secs(1);
        let fresh = table.insert_at(cursor(), later);
        assert!(table.take_at(id, later).is_none());
        assert!(table.take_at(fresh, later).is_some());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_full_table_closes_the_longest_idle_cursor() {
        let mut table = CursorTable::default();
        let start = Instant::now();
        let oldest = table.insert_at(cursor(), start);
        let now = start + Duration::from_secs(1);
        for _ in 1..CURSORS_MAX {
            table.insert_at(cursor(), now);
        }
        assert_eq!(table.len(), CURSORS_MAX);
        let newest = table.insert_at(cursor(), now);
        assert_eq!(table.len(), CURSORS_MAX);
        assert!(table.take_at(oldest, now).is_none());
        assert!(table.take_at(newest, now).is_some());
    }
}
