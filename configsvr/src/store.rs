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

/// Applies metadata writes in one atomic, synced batch.
pub async fn apply(core: &Arc<MemberCore>, ops: Vec<AtomicOp>) -> Result<(), CommandError> {
    let engine = Arc::clone(&core.engine);
    tokio::task::spawn_blocking(move || engine.apply_atomic("config", &ops))
        .await
        .map_err(|e| CommandError::internal(format!("metadata write task failed: {e}")))?
}
