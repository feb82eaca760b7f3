//! `removeShard`: MongoDB's draining protocol. The first call marks the shard `draining: true`
//! in `config.shards` and answers `state: "started"`; from then on the balancer moves the
//! shard's chunks to other shards and new databases never get it as their primary. Later calls
//! answer `state: "ongoing"` with what is left (`remaining: {chunks, dbs, jumboChunks}` and
//! `dbsToMove`, the databases whose primary it still is: those need `movePrimary` or a drop).
//! The call that finds the shard owning no chunk and primary for no database removes its
//! `config.shards` document (its zone membership goes with it) and answers
//! `state: "completed"`.
//!
//! Every call refuses to remove the last shard, and to remove the only shard of a zone that
//! still has ranges (`ZoneStillInUse`), as MongoDB does. Which step a call takes is decided by
//! [`drain_step`], a pure function of the documents read under the metadata lock.

use std::sync::Arc;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, ShardId, failpoint};
use shoal_docstore::AtomicOp;
use shoal_member::MemberCore;

use crate::{
    catalog::coll,
    server::{ConfigServer, put, string_field},
    store, zones,
};

/// MongoDB's note next to `dbsToMove`.
const DBS_TO_MOVE_NOTE: &str = "you need to drop or movePrimary these databases";

/// What one `removeShard` call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// Mark the shard draining.
    Start,
    /// The shard drains; this much is left.
    Ongoing {
        /// Chunks the shard still owns.
        chunks: usize,
    },
    /// Nothing is left: remove the shard.
    Complete,
}

/// What the shard being removed still holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardUsage {
    /// How many chunks (of every collection) it owns.
    pub chunks: usize,
    /// The databases whose primary it is, sorted.
    pub dbs_to_move: Vec<String>,
}

/// Decides the step of a `removeShard` call for `shard`, given every `config.shards` document,
/// every `config.tags` document and what the shard still holds.
pub fn drain_step(
    shards: &[Document],
    tags: &[Document],
    shard: &ShardId,
    usage: &ShardUsage,
) -> Result<DrainStep, CommandError> {
    let Some(shard_doc) = shards
        .iter()
        .find(|doc| doc.get_str("_id") == Ok(shard.as_str()))
    else {
        return Err(CommandError::new(
            ErrorCode::SHARD_NOT_FOUND,
            format!("Shard {shard} does not exist"),
        ));
    };
    let draining = is_draining(shard_doc);
    let others_accepting = shards
        .iter()
        .filter(|doc| doc.get_str("_id") != Ok(shard.as_str()))
        .filter(|doc| !is_draining(doc))
        .count();
    // A shard already draining may finish even when the others drain too: it holds nothing
    // by then. Starting needs somewhere for its data to go.
    if others_accepting == 0 && (!draining || shards.len() == 1) {
        return Err(CommandError::new(
            ErrorCode::ILLEGAL_OPERATION,
            "Operation not allowed because it would remove the last shard",
        ));
    }
    for zone in zones::shard_zones(shard_doc) {
        if zones::shard_required_by_zone(shards, tags, shard, &zone) {
            return Err(CommandError::new(
                ErrorCode::ZONE_STILL_IN_USE,
                format!(
                    "Operation not allowed because it would remove the only shard for zone \
                     {zone} which has a chunk range"
                ),
            ));
        }
    }
    if !draining {
        return Ok(DrainStep::Start);
    }
    if usage.chunks == 0 && usage.dbs_to_move.is_empty() {
        return Ok(DrainStep::Complete);
    }
    Ok(DrainStep::Ongoing {
        chunks: usage.chunks,
    })
}

/// Whether a `config.shards` document is marked draining.
pub fn is_draining(shard: &Document) -> bool {
    matches!(shard.get("draining"), Some(Bson::Boolean(true)))
}

/// The reply MongoDB gives for `step`.
pub fn drain_reply(step: &DrainStep, shard: &ShardId, usage: &ShardUsage) -> Document {
    let dbs_to_move: Vec<Bson> = usage
        .dbs_to_move
        .iter()
        .map(|db| Bson::String(db.clone()))
        .collect();
    match step {
        DrainStep::Start => doc! {
            "msg": "draining started successfully", "state": "started", "shard": shard.as_str(),
            "note": DBS_TO_MOVE_NOTE, "dbsToMove": dbs_to_move, "ok": 1.0,
        },
        DrainStep::Ongoing { chunks } => doc! {
            "msg": "draining ongoing", "state": "ongoing",
            "remaining": {
                "chunks": count(*chunks), "dbs": count(usage.dbs_to_move.len()),
                "jumboChunks": 0_i64,
            },
            "note": DBS_TO_MOVE_NOTE, "dbsToMove": dbs_to_move, "ok": 1.0,
        },
        DrainStep::Complete => doc! {
            "msg": "removeshard completed successfully", "state": "completed",
            "shard": shard.as_str(), "ok": 1.0,
        },
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ConfigServer {
    /// `removeShard: shard` (the caller holds the metadata lock).
    pub(crate) async fn remove_shard(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let shard = ShardId::new(string_field(command, "removeShard")?)?;
        let shards = store::find_all(core, coll::SHARDS, doc! {}).await?;
        let tags = store::find_all(core, coll::TAGS, doc! {}).await?;
        let usage = self.shard_usage(core, &shard).await?;
        let step = drain_step(&shards, &tags, &shard, &usage)?;
        match step {
            DrainStep::Start => self.start_draining(core, &shards, &shard).await?,
            DrainStep::Ongoing { .. } => {}
            DrainStep::Complete => {
                failpoint::hit("removeShard.beforeCommit");
                let delete = AtomicOp::Delete {
                    coll: coll::SHARDS.into(),
                    id: shard.as_str().into(),
                };
                self.commit(core, vec![delete]).await?;
                tracing::info!(shard = %shard, "shard removed");
            }
        }
        Ok(drain_reply(&step, &shard, &usage))
    }

    async fn shard_usage(
        &self,
        core: &Arc<MemberCore>,
        shard: &ShardId,
    ) -> Result<ShardUsage, CommandError> {
        let chunks = store::find_all(core, coll::CHUNKS, doc! {"shard": shard.as_str()}).await?;
        let databases =
            store::find_all(core, coll::DATABASES, doc! {"primary": shard.as_str()}).await?;
        let mut dbs_to_move: Vec<String> = databases
            .iter()
            .filter_map(|db| db.get_str("_id").ok())
            .map(str::to_owned)
            .collect();
        dbs_to_move.sort();
        Ok(ShardUsage {
            chunks: chunks.len(),
            dbs_to_move,
        })
    }

    async fn start_draining(
        &self,
        core: &Arc<MemberCore>,
        shards: &[Document],
        shard: &ShardId,
    ) -> Result<(), CommandError> {
        let Some(mut shard_doc) = shards
            .iter()
            .find(|doc| doc.get_str("_id") == Ok(shard.as_str()))
            .cloned()
        else {
            return Err(CommandError::internal("draining a shard that was not read"));
        };
        shard_doc.insert("draining", true);
        self.commit(core, vec![put(coll::SHARDS, shard_doc)])
            .await?;
        tracing::info!(shard = %shard, "shard draining started");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str) -> ShardId {
        ShardId::new(name).unwrap()
    }

    fn two_shards(draining: bool) -> Vec<Document> {
        vec![
            doc! {"_id": "s0", "host": "s0/h:1", "draining": draining},
            doc! {"_id": "s1", "host": "s1/h:2"},
        ]
    }

    #[test]
    fn first_call_starts_then_ongoing_then_complete() {
        let usage = ShardUsage {
            chunks: 2,
            dbs_to_move: vec!["d".into()],
        };
        let s0 = shard("s0");
        assert_eq!(
            drain_step(&two_shards(false), &[], &s0, &usage).unwrap(),
            DrainStep::Start
        );
        // Even an empty shard first only starts draining, as in MongoDB.
        let empty = ShardUsage::default();
        assert_eq!(
            drain_step(&two_shards(false), &[], &s0, &empty).unwrap(),
            DrainStep::Start
        );
        assert_eq!(
            drain_step(&two_shards(true), &[], &s0, &usage).unwrap(),
            DrainStep::Ongoing { chunks: 2 }
        );
        let only_db = ShardUsage {
            chunks: 0,
            dbs_to_move: vec!["d".into()],
        };
        assert_eq!(
            drain_step(&two_shards(true), &[], &s0, &only_db).unwrap(),
            DrainStep::Ongoing { chunks: 0 }
        );
        assert_eq!(
            drain_step(&two_shards(true), &[], &s0, &empty).unwrap(),
            DrainStep::Complete
        );
    }

    #[test]
    fn the_last_shard_is_never_removed() {
        let one = vec![doc! {"_id": "s0", "host": "s0/h:1"}];
        let error = drain_step(&one, &[], &shard("s0"), &ShardUsage::default()).unwrap_err();
        assert_eq!(error.code, ErrorCode::ILLEGAL_OPERATION);
        let one_draining = vec![doc! {"_id": "s0", "host": "s0/h:1", "draining": true}];
        let result = drain_step(&one_draining, &[], &shard("s0"), &ShardUsage::default());
        assert!(result.is_err());
        // Starting to drain s1 while s0 drains would leave nowhere for its data.
        let error = drain_step(&two_shards(true), &[], &shard("s1"), &ShardUsage::default());
        assert_eq!(error.unwrap_err().code, ErrorCode::ILLEGAL_OPERATION);
    }

    #[test]
    fn unknown_shards_and_zone_holders_are_refused() {
        let usage = ShardUsage::default();
        let error = drain_step(&two_shards(false), &[], &shard("nope"), &usage).unwrap_err();
        assert_eq!(error.code, ErrorCode::SHARD_NOT_FOUND);
        let mut shards = two_shards(false);
        shards[0].insert("tags", vec!["z"]);
        let tags = vec![doc! {"ns": "d.c", "tag": "z", "min": {"k": 0}, "max": {"k": 1}}];
        let error = drain_step(&shards, &tags, &shard("s0"), &usage).unwrap_err();
        assert_eq!(error.code, ErrorCode::ZONE_STILL_IN_USE);
        assert_eq!(
            drain_step(&shards, &[], &shard("s0"), &usage).unwrap(),
            DrainStep::Start
        );
    }

    #[test]
    fn replies_have_mongodb_fields() {
        let s0 = shard("s0");
        let usage = ShardUsage {
            chunks: 3,
            dbs_to_move: vec!["a".into(), "b".into()],
        };
        let started = drain_reply(&DrainStep::Start, &s0, &usage);
        assert_eq!(started.get_str("state").unwrap(), "started");
        assert_eq!(started.get_str("shard").unwrap(), "s0");
        assert_eq!(started.get_array("dbsToMove").unwrap().len(), 2);
        let ongoing = drain_reply(&DrainStep::Ongoing { chunks: 3 }, &s0, &usage);
        assert_eq!(ongoing.get_str("msg").unwrap(), "draining ongoing");
        let remaining = ongoing.get_document("remaining").unwrap();
        assert_eq!(remaining.get_i64("chunks").unwrap(), 3);
        assert_eq!(remaining.get_i64("dbs").unwrap(), 2);
        assert_eq!(remaining.get_i64("jumboChunks").unwrap(), 0);
        let done = drain_reply(&DrainStep::Complete, &s0, &usage);
        assert_eq!(done.get_str("state").unwrap(), "completed");
        assert!(!done.contains_key("dbsToMove"));
    }
}
