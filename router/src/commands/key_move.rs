//! Moving a document whose shard key an update changes, as MongoDB does inside a retryable
//! write. MongoDB uses an internal cross-shard transaction; Shoal has none, so the move is a
//! recoverable three-step protocol whose every step is atomic on one shard:
//!
//! 1. On the donor, in one batch: delete the pre-image (only if it is still exactly what the
//!    router read, else WriteConflict and the router starts over) and write a move record
//!    `admin.shoalKeyMoves {_id, ns, pre, post, recipient, created}`.
//! 2. On the recipient: insert the post-image. Idempotent: an identical document already there
//!    counts as done. A different document with the same `_id` (or another unique-key clash)
//!    rolls the move back: the donor puts the pre-image back and drops the record, in one batch.
//! 3. On the donor: drop the record.
//!
//! A crash after step 1 leaves the document only in the record: it is never lost, and any
//! router finishes the move (steps 2–3) once the record is older than
//! [`KEY_MOVE_RECOVERY_GRACE`]. Until then readers do not see the document; that window is the
//! price of having no distributed transactions. Named failpoints sit between the steps.

use std::time::Duration;

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId, ShardVersion, failpoint};
use shoal_query::{Filter, Update};

use super::stale::{StaleRetry, is_stale, is_stale_write_error, with_shard_version};
use crate::{cluster::Cluster, topology::CollectionRouting, topology::RoutingCache};

/// The donor-side collection (in `admin`) holding moves in progress.
pub const KEY_MOVES_COLL: &str = "shoalKeyMoves";
/// How often the router restarts a move whose document changed under it.
pub const KEY_MOVE_ATTEMPTS_MAX: usize = 3;
/// A move record younger than this belongs to a router still working on it.
pub const KEY_MOVE_RECOVERY_GRACE: Duration = Duration::from_secs(10);
/// Records one recovery pass completes per shard at most.
pub const KEY_MOVE_RECOVERY_BATCH: i64 = 100;

/// What a completed move changed.
#[derive(Debug)]
pub struct KeyMove {
    /// The document before the update.
    pub pre: Document,
    /// The document after the update, now on its new owner.
    pub post: Document,
}

/// The update a move applies.
pub struct KeyChange<'a> {
    /// Which document (`q` of an update, `query` of findAndModify).
    pub filter: &'a Document,
    /// Which one first, when several match.
    pub sort: Option<&'a Document>,
    /// The update document or pipeline.
    pub update: &'a Bson,
    /// `arrayFilters`, if any.
    pub array_filters: Option<&'a [Bson]>,
}

/// Moves the first document matching `change.filter` on `donor` to the owner of its updated
/// shard key. `None` when no document matches any more.
pub async fn move_for_key_change(
    cluster: &Cluster,
    ns: &Namespace,
    donor: &ShardId,
    change: &KeyChange<'_>,
    collection: &CollectionRouting,
    routing: &RoutingCache,
) -> Result<Option<KeyMove>, CommandError> {
    let donor_host = routing.shard_host(donor)?;
    for _ in 0..KEY_MOVE_ATTEMPTS_MAX {
        let mut probe = doc! {"find": ns.coll.clone(), "filter": change.filter.clone(), "limit": 1, "singleBatch": true};
        if let Some(sort) = change.sort {
            probe.insert("sort", sort.clone());
        }
        let probe = with_shard_version(probe, routing.shard_version(ns, donor));
        let reply = cluster.call_ok(donor_host, &ns.db, probe).await?;
        let (_, _, mut batch) = crate::cursors::parse_cursor(&reply, "firstBatch")?;
        let Some(pre) = batch.pop_front() else {
            return Ok(None);
        };
        let update = Update::parse(change.update, change.array_filters)
            .and_then(|update| Ok(update.with_query(Filter::parse(change.filter)?)))
            .map_err(CommandError::from)?;
        let post = update.apply(&pre, false).map_err(CommandError::from)?;
        let key = collection.map.key.extract(&post)?;
        let recipient = collection.map.chunk_for_key(&key).shard.clone();
        let record = doc! {
            "_id": ObjectId::new(), "ns": ns.to_string(), "pre": pre.clone(), "post": post.clone(),
            "recipient": recipient.as_str(), "created": bson::DateTime::now(),
        };
        let begin = doc! {"_shoalApplyAtomic": 1, "ops": [
            {"db": ns.db.clone(), "deleteIfUnchanged": ns.coll.clone(), "expect": pre.clone()},
            {"db": "admin", "put": KEY_MOVES_COLL, "doc": record.clone()},
        ]};
        match cluster.call_ok(donor_host, "admin", begin).await {
            Ok(_) => {}
            Err(error) if error.code.0 == 112 => continue,
            Err(error) => return Err(error),
        }
        failpoint::hit("keyMove.afterDonorCommit");
        finish_move(cluster, donor_host, &record).await?;
        return Ok(Some(KeyMove { pre, post }));
    }
    Err(CommandError::new(
        ErrorCode(112),
        "the document kept changing while its shard key update was being applied",
    ))
}

/// A move record (`admin.shoalKeyMoves`), parsed.
struct MoveRecord<'a> {
    id: Bson,
    ns: Namespace,
    pre: &'a Document,
    post: &'a Document,
    /// The owner of the post-image's key when the move began.
    recipient: ShardId,
}

impl MoveRecord<'_> {
    fn parse(record: &Document) -> Result<MoveRecord<'_>, CommandError> {
        let broken = || CommandError::internal(format!("malformed key-move record {record}"));
        Ok(MoveRecord {
            id: record.get("_id").cloned().ok_or_else(broken)?,
            ns: Namespace::parse(record.get_str("ns").map_err(|_| broken())?)?,
            pre: record.get_document("pre").map_err(|_| broken())?,
            post: record.get_document("post").map_err(|_| broken())?,
            recipient: ShardId::new(record.get_str("recipient").map_err(|_| broken())?)?,
        })
    }

    /// The shard that must receive the post-image by `routing`, with the version to send: the
    /// current owner of its key (chunks may have moved since the record was written), or the
    /// recorded recipient when the collection is no longer sharded.
    fn recipient_in(
        &self,
        routing: &RoutingCache,
    ) -> Result<(ShardId, Option<ShardVersion>), CommandError> {
        let Some(collection) = routing.collection(&self.ns) else {
            return Ok((self.recipient.clone(), None));
        };
        let key = collection.map.key.extract(self.post)?;
        let owner = collection.map.chunk_for_key(&key).shard.clone();
        let version = collection.map.shard_version(&owner);
        Ok((owner, Some(version)))
    }
}

/// Steps 2 and 3 for a recorded move; used by the router that began it and by recovery.
async fn finish_move(
    cluster: &Cluster,
    donor_host: &str,
    record: &Document,
) -> Result<(), CommandError> {
    let record = MoveRecord::parse(record)?;
    let mut retry = StaleRetry::default();
    loop {
        match insert_post_image(cluster, &record).await {
            Ok(None) => break,
            Ok(Some(write_error)) => {
                return roll_back(cluster, donor_host, &record, &write_error).await;
            }
            Err(error) if retry.after(cluster, &record.ns, &error).await => {}
            Err(error) if is_stale(&error) => {
                // Not StaleConfig: the caller must not retry the statement, whose document now
                // lives in the move record until recovery finishes the move.
                return Err(CommandError::new(
                    ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
                    format!(
                        "the new owner of a moved document kept refusing it ({}); recovery will finish the move",
                        error.errmsg
                    ),
                ));
            }
            Err(error) => return Err(error),
        }
    }
    failpoint::hit("keyMove.afterRecipientInsert");
    let end = doc! {"_shoalApplyAtomic": 1, "ops": [{"db": "admin", "delete": KEY_MOVES_COLL, "id": record.id.clone()}]};
    cluster.call_ok(donor_host, "admin", end).await?;
    Ok(())
}

/// Step 2 by the current routing snapshot: `Ok(None)` once the recipient holds the
/// post-image, `Ok(Some(write error))` when it refused it for good, and a StaleConfig error
/// (command-level or per-document) when the routing must be refreshed first.
async fn insert_post_image(
    cluster: &Cluster,
    record: &MoveRecord<'_>,
) -> Result<Option<Document>, CommandError> {
    let routing = cluster.routing().await?;
    let (recipient, version) = record.recipient_in(&routing)?;
    let recipient_host = routing.shard_host(&recipient)?;
    let insert = doc! {"insert": record.ns.coll.clone(), "documents": [record.post.clone()]};
    let insert = with_shard_version(insert, version);
    let reply = cluster
        .call_ok(recipient_host, &record.ns.db, insert)
        .await?;
    let write_error = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|errors| errors.first())
        .and_then(Bson::as_document);
    let Some(write_error) = write_error else {
        return Ok(None);
    };
    if is_stale_write_error(write_error) {
        return Err(CommandError::new(
            ErrorCode::STALE_CONFIG,
            write_error.get_str("errmsg").unwrap_or("stale routing"),
        ));
    }
    let probe = Probe {
        host: recipient_host,
        ns: &record.ns,
        version,
    };
    if already_inserted(cluster, &probe, record.post).await? {
        return Ok(None);
    }
    Ok(Some(write_error.clone()))
}

/// Undoes step 1 after the recipient refused the post-image (a unique-key clash): the donor
/// puts the pre-image back and drops the record, in one batch. Returns the recipient's error.
async fn roll_back(
    cluster: &Cluster,
    donor_host: &str,
    record: &MoveRecord<'_>,
    write_error: &Document,
) -> Result<(), CommandError> {
    let rollback = doc! {"_shoalApplyAtomic": 1, "ops": [
        {"db": record.ns.db.clone(), "put": record.ns.coll.clone(), "doc": record.pre.clone()},
        {"db": "admin", "delete": KEY_MOVES_COLL, "id": record.id.clone()},
    ]};
    cluster.call_ok(donor_host, "admin", rollback).await?;
    let code = write_error
        .get_i32("code")
        .unwrap_or(ErrorCode::INTERNAL_ERROR.0);
    let mut error = CommandError::new(
        ErrorCode(code),
        write_error.get_str("errmsg").unwrap_or("insert failed"),
    );
    for (key, value) in write_error {
        if key == "keyPattern" || key == "keyValue" {
            error.extra.insert(key.clone(), value.clone());
        }
    }
    Err(error)
}

/// Where [`already_inserted`] looks.
struct Probe<'a> {
    host: &'a str,
    ns: &'a Namespace,
    version: Option<ShardVersion>,
}

/// Whether the recipient already holds exactly the post-image (a repeated step 2).
async fn already_inserted(
    cluster: &Cluster,
    probe: &Probe<'_>,
    post: &Document,
) -> Result<bool, CommandError> {
    let id = post.get("_id").cloned().unwrap_or(Bson::Null);
    let request = doc! {"find": probe.ns.coll.clone(), "filter": {"_id": id}, "limit": 1, "singleBatch": true};
    let request = with_shard_version(request, probe.version);
    let reply = cluster.call_ok(probe.host, &probe.ns.db, request).await?;
    let (_, _, batch) = crate::cursors::parse_cursor(&reply, "firstBatch")?;
    Ok(batch.front() == Some(post))
}

/// Finishes moves whose router stopped after step 1 (records older than the grace period), on
/// every shard. Returns how many it finished.
pub async fn recover_key_moves(cluster: &Cluster) -> Result<usize, CommandError> {
    let routing = cluster.routing().await?;
    let cutoff = bson::DateTime::from_millis(
        bson::DateTime::now().timestamp_millis()
            - i64::try_from(KEY_MOVE_RECOVERY_GRACE.as_millis()).unwrap_or(i64::MAX),
    );
    let mut finished = 0;
    for shard in routing.shard_ids() {
        let host = routing.shard_host(&shard)?;
        let probe = doc! {
            "find": KEY_MOVES_COLL, "filter": {"created": {"$lt": cutoff}},
            "limit": KEY_MOVE_RECOVERY_BATCH, "singleBatch": true,
        };
        let reply = cluster.call_ok(host, "admin", probe).await?;
        let (_, _, records) = crate::cursors::parse_cursor(&reply, "firstBatch")?;
        for record in records {
            match finish_move(cluster, host, &record).await {
                Ok(()) => finished += 1,
                Err(error) => {
                    tracing::warn!(error = %error, record = %record.get("_id").cloned().unwrap_or(Bson::Null), "cannot finish a shard-key move yet");
                }
            }
        }
    }
    Ok(finished)
}
