//! The balancer: on the config server's primary, a loop that keeps every sharded collection's
//! data spread evenly over its shards, empties draining shards and keeps zone ranges on their
//! zones' shards, as MongoDB's balancer does.
//!
//! Every [`BALANCER_ROUND_INTERVAL`], when `config.settings {_id: "balancer"}` lets it run (not
//! `stopped`, `mode` not `"off"`, the server's local time inside `activeWindow` if one is set),
//! a round takes each sharded collection without `noBalance: true`, measures its chunks
//! (`_shoalRangeSizes`), reads its zones (`config.tags`) and the shards (`config.shards` `tags`
//! and `draining`), and asks the pure policy in `shoal_common::balancer` for the next action.
//! It performs it (a split through the same code as `split`, a move through
//! [`ConfigServer::migrate_range`]) and asks again, until the collection is balanced or
//! [`ROUND_ACTIONS_MAX`] actions were taken. Rounds that did something are recorded in
//! `config.actionlog`; idle rounds are not, so that an idle cluster writes nothing.
//!
//! Only this loop starts migrations on its own, one at a time; `migration_lock` also keeps it
//! from overlapping a migration started by `moveChunk`. A chunk whose median split is refused
//! (it holds one shard-key value) is remembered in memory, together with its size, so it is
//! not retried every round; nothing is ever flagged in the metadata, so a restart, a failover
//! or a change of the chunk's size clears the mark.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use chrono::Timelike;
use shoal_common::{
    CommandError, ErrorCode, Namespace, ShardId,
    balancer::{
        self, Action, BalancerInput, BalancerSettings, MinuteOfDay, ShardInfo, Tolerance, ZoneRange,
    },
    chunks::ChunkMap,
};
use shoal_member::MemberCore;

use crate::{
    catalog::{ShardedCollection, coll},
    drain, measure,
    server::{ConfigServer, put, string_field},
    store, zones,
};

/// How often the primary starts a balancer round.
pub const BALANCER_ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// Actions (splits and moves) one round takes at most per collection; the next round goes on.
pub const ROUND_ACTIONS_MAX: usize = 16;
/// How long `balancerStop` waits for the round in progress to end.
pub const BALANCER_STOP_WAIT: Duration = Duration::from_secs(60);
/// How often `balancerStop` looks whether the round ended.
const BALANCER_STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Chunks remembered as unsplittable; the memory is forgotten whole when it fills up.
const UNSPLITTABLE_MAX: usize = 100_000;

/// The balancer's in-memory state, shared by the clones of [`ConfigServer`]. Nothing here is
/// persisted: a new primary starts with a fresh one.
#[derive(Debug, Default)]
pub(crate) struct BalancerState {
    /// Whether this process started the loop (once per process; it acts only while primary).
    started: AtomicBool,
    /// Whether a round is running now (`balancerStatus.inBalancerRound`).
    in_round: AtomicBool,
    /// Rounds run since this process started (`numBalancerRounds`).
    rounds: AtomicI64,
    /// Chunks whose median split was refused, by `chunk_mark`, with their bytes then.
    unsplittable: Mutex<HashMap<String, u64>>,
    /// Namespaces whose last attempt failed: their next failure is not logged again.
    failing: Mutex<BTreeSet<Namespace>>,
}

/// What one round did, for `config.actionlog`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RoundReport {
    candidate_chunks: i64,
    chunks_moved: i64,
    error_occurred: bool,
}

impl RoundReport {
    fn details(&self, elapsed: Duration) -> Document {
        doc! {
            "executionTimeMillis": i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            "errorOccurred": self.error_occurred,
            "candidateChunks": self.candidate_chunks,
            "chunksMoved": self.chunks_moved,
        }
    }
}

/// The server's local time of day: `activeWindow` is in local time, as in MongoDB.
fn local_minute_of_day() -> MinuteOfDay {
    let now = chrono::Local::now();
    MinuteOfDay::wrapping(now.hour() * 60 + now.minute())
}

/// The in-memory key of a chunk: its namespace and bounds.
fn chunk_mark(ns: &Namespace, min: &Document, max: &Document) -> String {
    format!("{ns}\u{0}{min}\u{0}{max}")
}

/// Reads the policy's view of a shard from its `config.shards` document.
fn shard_info(shard: &Document) -> Result<ShardInfo, CommandError> {
    let id = shard.get_str("_id").map_err(|_| {
        CommandError::internal(format!("config.shards document {shard} has no _id"))
    })?;
    Ok(ShardInfo {
        id: ShardId::new(id)?,
        draining: drain::is_draining(shard),
        zones: zones::shard_zones(shard).into_iter().collect(),
    })
}

/// Reads a `config.tags` document as a zone range for the policy.
fn zone_range(tag: &Document) -> Result<ZoneRange, CommandError> {
    let range = zones::ZoneRange::from_document(tag)?;
    Ok(ZoneRange {
        min: range.min,
        max: range.max,
        zone: range.zone,
    })
}

/// The settings document with the balancer switched on or off (`balancerStart`/`Stop`),
/// keeping its other fields (the active window).
fn switched_settings(existing: Option<Document>, on: bool) -> Document {
    let mut settings = existing.unwrap_or_else(|| doc! {"_id": "balancer"});
    settings.insert("stopped", !on);
    settings.insert("mode", if on { "full" } else { "off" });
    settings
}

impl ConfigServer {
    /// Starts the loop once per process.
    pub(crate) fn start_balancer(&self, core: &Arc<MemberCore>) {
        if !self.balancer.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().balancer_loop(Arc::clone(core)));
        }
    }

    /// Runs forever; acts only while this member is primary and the settings allow.
    async fn balancer_loop(self, core: Arc<MemberCore>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(BALANCER_ROUND_INTERVAL).await;
            if !core.repl.is_primary() {
                continue;
            }
            // Marked before the settings are read, so that `balancerStop` (which writes them,
            // then waits for this flag) never misses a round that read them too early.
            self.balancer.in_round.store(true, Ordering::SeqCst);
            let outcome = self.balancer_round(&core).await;
            self.balancer.in_round.store(false, Ordering::SeqCst);
            match outcome {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "balancer round failed");
                }
                Err(_) => {}
            }
        }
    }

    /// Whether the settings let a round (or its next action) run now.
    async fn balancer_enabled(&self, core: &Arc<MemberCore>) -> Result<bool, CommandError> {
        let settings = store::find_one(core, coll::SETTINGS, "balancer").await?;
        let settings = BalancerSettings::from_document(settings.as_ref())?;
        Ok(settings.runs_at(local_minute_of_day()))
    }

    /// One round over every collection. Returns `None` when the settings kept it from running.
    async fn balancer_round(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<Option<RoundReport>, CommandError> {
        if !self.balancer_enabled(core).await? {
            return Ok(None);
        }
        let started = Instant::now();
        self.balancer.rounds.fetch_add(1, Ordering::SeqCst);
        let shards = self.policy_shards(core).await?;
        let mut report = RoundReport::default();
        for collection in store::find_all(core, coll::COLLECTIONS, doc! {}).await? {
            if matches!(collection.get("noBalance"), Some(Bson::Boolean(true))) {
                continue;
            }
            let Ok(ns) = collection.get_str("_id").map(Namespace::parse) else {
                continue;
            };
            let ns = ns?;
            let outcome = self
                .balance_collection(core, &ns, &shards, &mut report)
                .await;
            self.note_outcome(&ns, outcome.as_ref().err());
            report.error_occurred |= outcome.is_err();
        }
        if report != RoundReport::default() {
            let details = report.details(started.elapsed());
            self.log_action(core, "balancer.round", None, details)
                .await?;
        }
        Ok(Some(report))
    }

    /// Logs a collection's failure once, and its recovery.
    fn note_outcome(&self, ns: &Namespace, error: Option<&CommandError>) {
        let Ok(mut failing) = self.balancer.failing.lock() else {
            return;
        };
        match error {
            Some(error) if failing.insert(ns.clone()) => {
                tracing::warn!(ns = %ns, %error, "balancing collection failed");
            }
            Some(_) => {}
            None if failing.remove(ns) => {
                tracing::info!(ns = %ns, "balancing collection recovered")
            }
            None => {}
        }
    }

    async fn policy_shards(&self, core: &Arc<MemberCore>) -> Result<Vec<ShardInfo>, CommandError> {
        let documents = store::find_all(core, coll::SHARDS, doc! {}).await?;
        documents.iter().map(shard_info).collect()
    }

    async fn policy_zones(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
    ) -> Result<Vec<ZoneRange>, CommandError> {
        let tags = store::find_all(core, coll::TAGS, doc! {"ns": ns.to_string()}).await?;
        tags.iter().map(zone_range).collect()
    }

    /// Asks the policy and acts until the collection is balanced or the action budget is spent.
    async fn balance_collection(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        shards: &[ShardInfo],
        report: &mut RoundReport,
    ) -> Result<(), CommandError> {
        let zones = self.policy_zones(core, ns).await?;
        let mut sizes = SizeCache::default();
        for _ in 0..ROUND_ACTIONS_MAX {
            if !self.balancer_enabled(core).await? {
                return Ok(());
            }
            let collection = self.load_collection(core, ns).await?;
            let bytes = sizes.bytes(self, core, &collection).await?;
            let unsplittable = self.unsplittable_indexes(ns, &collection.map, &bytes);
            let input = BalancerInput {
                map: &collection.map,
                chunk_bytes: &bytes,
                shards,
                zones: &zones,
                unsplittable: &unsplittable,
                tolerance: Tolerance::default(),
            };
            let action = balancer::next_action(&input);
            if action == Action::Balanced {
                return Ok(());
            }
            report.candidate_chunks += 1;
            self.perform(core, &collection, action, &bytes, report)
                .await?;
        }
        Ok(())
    }

    /// Performs one action of the policy on `collection` (as it was when the policy decided).
    async fn perform(
        &self,
        core: &Arc<MemberCore>,
        collection: &ShardedCollection,
        action: Action,
        bytes: &[u64],
        report: &mut RoundReport,
    ) -> Result<(), CommandError> {
        let ns = &collection.ns;
        let bounds = |chunk: usize| {
            let chunk = &collection.map.chunks[chunk];
            (chunk.min.clone(), chunk.max.clone())
        };
        match action {
            Action::Balanced => Ok(()),
            Action::SplitAt { chunk, at } => {
                let (min, max) = bounds(chunk);
                self.balancer_split(core, ns, &min, &max, Some(&at)).await
            }
            Action::SplitMedian { chunk } => {
                let (min, max) = bounds(chunk);
                let split = self.balancer_split(core, ns, &min, &max, None).await;
                match split {
                    Err(error) if error.code == ErrorCode::ILLEGAL_OPERATION => {
                        let chunk_bytes = bytes.get(chunk).copied().unwrap_or(0);
                        self.mark_unsplittable(ns, &min, &max, chunk_bytes);
                        Ok(())
                    }
                    other => other,
                }
            }
            Action::Move { chunk, to } => {
                let (min, max) = bounds(chunk);
                self.migrate_range(core, ns, &min, &max, &to).await?;
                report.chunks_moved += 1;
                Ok(())
            }
        }
    }

    /// Splits the chunk `[min, max)` at `at`, or at its median when `at` is `None`, if the
    /// chunk still exists; a chunk changed meanwhile is left for the policy to look at again.
    async fn balancer_split(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        min: &Document,
        max: &Document,
        at: Option<&Document>,
    ) -> Result<(), CommandError> {
        let _guard = self.metadata_lock.lock().await;
        let collection = self.load_collection(core, ns).await?;
        let current = &collection.map.chunks[collection.map.chunk_index_for_key(min)];
        if current.min != *min || current.max != *max {
            return Ok(());
        }
        let at = match at {
            Some(at) => at.clone(),
            None => {
                let command = doc! {"bounds": [min.clone(), max.clone()]};
                self.median_of_chunk(core, ns, &collection, &command)
                    .await?
            }
        };
        self.split_at(core, ns, collection, &at).await
    }

    fn mark_unsplittable(&self, ns: &Namespace, min: &Document, max: &Document, bytes: u64) {
        let Ok(mut marks) = self.balancer.unsplittable.lock() else {
            return;
        };
        if marks.len() >= UNSPLITTABLE_MAX {
            marks.clear();
        }
        marks.insert(chunk_mark(ns, min, max), bytes);
        tracing::info!(ns = %ns, min = %min, max = %max, bytes, "chunk holds one shard-key value and cannot be split");
    }

    /// The chunks of `map` marked unsplittable while they had the bytes they have now.
    fn unsplittable_indexes(
        &self,
        ns: &Namespace,
        map: &ChunkMap,
        bytes: &[u64],
    ) -> BTreeSet<usize> {
        let Ok(marks) = self.balancer.unsplittable.lock() else {
            return BTreeSet::new();
        };
        (0..map.chunks.len())
            .filter(|&index| {
                let chunk = &map.chunks[index];
                let marked = marks.get(&chunk_mark(ns, &chunk.min, &chunk.max));
                marked.is_some_and(|&then| Some(&then) == bytes.get(index))
            })
            .collect()
    }

    /// `balancerStart` and `balancerStop`. Stopping waits for the round in progress to end
    /// (at most [`BALANCER_STOP_WAIT`]); the settings are written first, so no action starts
    /// after the wait began.
    pub(crate) async fn balancer_switch(
        &self,
        core: &Arc<MemberCore>,
        on: bool,
    ) -> Result<Document, CommandError> {
        {
            let _guard = self.metadata_lock.lock().await;
            let existing = store::find_one(core, coll::SETTINGS, "balancer").await?;
            let settings = switched_settings(existing, on);
            store::apply(core, vec![put(coll::SETTINGS, settings)]).await?;
        }
        if on {
            return Ok(doc! {"ok": 1.0});
        }
        let deadline = Instant::now() + BALANCER_STOP_WAIT;
        while self.balancer.in_round.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return Err(CommandError::new(
                    ErrorCode::EXCEEDED_TIME_LIMIT,
                    "the balancer is stopped, but the round in progress did not end within 60 seconds",
                ));
            }
            tokio::time::sleep(BALANCER_STOP_POLL_INTERVAL).await;
        }
        Ok(doc! {"ok": 1.0})
    }

    /// `balancerStatus`: whether the settings let the balancer run, and what this primary did.
    pub(crate) async fn balancer_status(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<Document, CommandError> {
        let settings = store::find_one(core, coll::SETTINGS, "balancer").await?;
        let settings = BalancerSettings::from_document(settings.as_ref())?;
        Ok(doc! {
            "mode": if settings.off { "off" } else { "full" },
            "inBalancerRound": self.balancer.in_round.load(Ordering::SeqCst),
            "numBalancerRounds": self.balancer.rounds.load(Ordering::SeqCst),
            "ok": 1.0,
        })
    }

    /// `balancerCollectionStatus: ns`: whether the collection meets the balancer's goal, and
    /// if not the first reason (MongoDB's `firstComplianceViolation`).
    pub(crate) async fn balancer_collection_status(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "balancerCollectionStatus")?)?;
        let collection = self.load_collection(core, &ns).await?;
        let shards = self.policy_shards(core).await?;
        let zones = self.policy_zones(core, &ns).await?;
        let sizes = self.chunk_sizes(core, &collection).await?;
        let bytes: Vec<u64> = sizes.iter().map(|size| size.bytes).collect();
        let unsplittable = self.unsplittable_indexes(&ns, &collection.map, &bytes);
        let input = BalancerInput {
            map: &collection.map,
            chunk_bytes: &bytes,
            shards: &shards,
            zones: &zones,
            unsplittable: &unsplittable,
            tolerance: Tolerance::default(),
        };
        let mut reply = doc! {"balancerCompliant": true};
        if let Some(violation) = balancer::first_violation(&input) {
            reply.insert("balancerCompliant", false);
            reply.insert("firstComplianceViolation", violation.as_str());
        }
        reply.insert("ok", 1.0);
        Ok(reply)
    }
}

/// The bytes of chunks measured earlier in a round, by bounds. A move keeps a chunk's bounds
/// and bytes, so only a split (new bounds) makes the next decision measure again: one
/// collection scan per shard per split rather than per action.
#[derive(Debug, Default)]
struct SizeCache {
    bytes: BTreeMap<(String, String), u64>,
}

impl SizeCache {
    async fn bytes(
        &mut self,
        server: &ConfigServer,
        core: &Arc<MemberCore>,
        collection: &ShardedCollection,
    ) -> Result<Vec<u64>, CommandError> {
        let key = |min: &Document, max: &Document| (min.to_string(), max.to_string());
        let known: Option<Vec<u64>> = collection
            .map
            .chunks
            .iter()
            .map(|chunk| self.bytes.get(&key(&chunk.min, &chunk.max)).copied())
            .collect();
        if let Some(known) = known {
            return Ok(known);
        }
        let sizes: Vec<measure::ChunkSize> = server.chunk_sizes(core, collection).await?;
        self.bytes.clear();
        for (chunk, size) in collection.map.chunks.iter().zip(&sizes) {
            self.bytes.insert(key(&chunk.min, &chunk.max), size.bytes);
        }
        Ok(sizes.into_iter().map(|size| size.bytes).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_keeps_the_window() {
        let window = doc! {"start": "1:00", "stop": "3:00"};
        let existing = doc! {"_id": "balancer", "mode": "full", "activeWindow": window.clone()};
        let stopped = switched_settings(Some(existing), false);
        assert_eq!(stopped.get_bool("stopped"), Ok(true));
        assert_eq!(stopped.get_str("mode"), Ok("off"));
        assert_eq!(stopped.get_document("activeWindow"), Ok(&window));
        let started = switched_settings(None, true);
        assert_eq!(
            started,
            doc! {"_id": "balancer", "stopped": false, "mode": "full"}
        );
        let read = BalancerSettings::from_document(Some(&started)).unwrap();
        assert!(!read.off);
        let read = BalancerSettings::from_document(Some(&stopped)).unwrap();
        assert!(read.off);
    }

    #[test]
    fn shard_documents_give_zones_and_draining() {
        let shard =
            doc! {"_id": "s1", "host": "s1/h:1", "tags": ["east", "west"], "draining": true};
        let info = shard_info(&shard).unwrap();
        assert_eq!(info.id.as_str(), "s1");
        assert!(info.draining);
        assert_eq!(info.zones.len(), 2);
        let plain = shard_info(&doc! {"_id": "s2"}).unwrap();
        assert!(!plain.draining);
        assert!(plain.zones.is_empty());
        assert!(shard_info(&doc! {"host": "x"}).is_err());
    }

    #[test]
    fn tag_documents_give_zone_ranges() {
        let tag = doc! {"_id": 1, "ns": "d.c", "min": {"k": 1}, "max": {"k": 5}, "tag": "east"};
        let range = zone_range(&tag).unwrap();
        assert_eq!(range.zone, "east");
        assert_eq!(range.min, doc! {"k": 1});
        assert!(zone_range(&doc! {"ns": "d.c"}).is_err());
    }

    #[test]
    fn round_details_have_mongodbs_fields() {
        let report = RoundReport {
            candidate_chunks: 3,
            chunks_moved: 1,
            error_occurred: false,
        };
        let details = report.details(Duration::from_millis(12));
        assert_eq!(details.get_i64("executionTimeMillis"), Ok(12));
        assert_eq!(details.get_bool("errorOccurred"), Ok(false));
        assert_eq!(details.get_i64("candidateChunks"), Ok(3));
        assert_eq!(details.get_i64("chunksMoved"), Ok(1));
    }

    #[test]
    fn chunk_marks_tell_namespaces_and_bounds_apart() {
        let ns = Namespace::parse("d.c").unwrap();
        let other = Namespace::parse("d.e").unwrap();
        let (a, b) = (doc! {"k": 1}, doc! {"k": 2});
        assert_ne!(chunk_mark(&ns, &a, &b), chunk_mark(&other, &a, &b));
        assert_ne!(chunk_mark(&ns, &a, &b), chunk_mark(&ns, &b, &a));
        assert!(local_minute_of_day().get() < 24 * 60);
    }
}
