//! Reads and atomic writes of `config.*` through the member's document engine.

use std::sync::Arc;

use bson::{Bson, Document, doc};
use shoal_common::CommandError;
use shoal_docstore::AtomicOp;
use shoal_member::MemberCore;

/// The most documents one metadata read returns: a guard against a runaway cursor loop.
const METADATA_READ_DOCS_MAX: usize = 10_000_000;
/// Documents per metadata read batch.
const METADATA_READ_BATCH_DOCS: i32 = 10_000;

/// Reads every document of `config.<coll>` matching `filter`, following the cursor to its end.
pub async fn find_all(
    core: &Arc<MemberCore>,
    coll: &str,
    filter: Document,
) -> Result<Vec<Document>, CommandError> {
    if core.repl.is_primary() {
        // A new primary may not have applied every committed change yet; metadata decisions
        // must start from the latest.
        core.barrier().await?;
    }
    let first = core
        .execute(
            "config",
            doc! {"find": coll, "filter": filter, "batchSize": METADATA_READ_BATCH_DOCS},
        )
        .await;
    let (mut docs, mut cursor_id) = read_batch(&first, "firstBatch")?;
    while cursor_id != 0 {
        if docs.len() > METADATA_READ_DOCS_MAX {
            return Err(CommandError::internal(format!(
                "config.{coll} has too many documents"
            )));
        }
        let next = core
            .execute(
                "config",
                doc! {"getMore": cursor_id, "collection": coll, "batchSize": METADATA_READ_BATCH_DOCS},
            )
            .await;
        let (more, id) = read_batch(&next, "nextBatch")?;
        docs.extend(more);
        cursor_id = id;
    }
    Ok(docs)
}

/// Reads the one document of `config.<coll>` with this `_id`.
pub async fn find_one(
    core: &Arc<MemberCore>,
    coll: &str,
    id: impl Into<Bson>,
) -> Result<Option<Document>, CommandError> {
    Ok(find_all(core, coll, doc! {"_id": id.into()})
        .await?
        .into_iter()
        .next())
}

fn read_batch(reply: &Document, field: &str) -> Result<(Vec<Document>, i64), CommandError> {
    if let Some(error) = CommandError::from_reply(reply) {
        return Err(error);
    }
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| CommandError::internal("engine find reply without cursor"))?;
    let batch = cursor
        .get_array(field)
        .map_err(|_| CommandError::internal("engine cursor reply without batch"))?;
    let docs = batch
        .iter()
        .filter_map(|d| d.as_document().cloned())
        .collect();
    let id = cursor.get_i64("id").unwrap_or(0);
    Ok((docs, id))
}

/// Applies metadata writes in one atomic batch, replicated to a majority of the config
/// servers before it returns.
pub async fn apply(core: &Arc<MemberCore>, ops: Vec<AtomicOp>) -> Result<(), CommandError> {
    let ops: Vec<Bson> = ops
        .iter()
        .map(|op| Bson::Document(op.to_document("config")))
        .collect();
    let reply = core
        .replicate("admin", doc! {"_shoalApplyAtomic": 1, "ops": ops})
        .await;
    if let Some(error) = CommandError::from_reply(&reply) {
        return Err(error);
    }
    if let Ok(concern) = reply.get_document("writeConcernError") {
        return Err(CommandError::new(
            shoal_common::ErrorCode::WRITE_CONCERN_TIMEOUT,
            format!("metadata write not replicated in time: {concern}"),
        ));
    }
    Ok(())
}
