//! `_shoalOplogRead`: applied log entries after a given index, for the oplog archive that makes
//! point-in-time recovery possible (`shoal backup archive`).
//!
//! Any member answers, primary or not: only applied entries are returned, and an applied entry
//! is committed and the same on every member (see `shoal_repl::archive`). The reply also says
//! the member's applied index and the first index its log still holds, so the archiver knows
//! when it has everything up to now and when log purging outran it.
//!
//! An entry larger than a page's part size is not in a page: the page is empty and names it
//! (`large: {i, bytes}`), and `{_shoalOplogRead: 1, entry: i, offset: n}` returns its bytes in
//! parts (`part`, `total`), since no reply may pass 16 MB.

use std::sync::Arc;

use bson::{Bson, Document, doc, spec::BinarySubtype};
use shoal_common::CommandError;
use shoal_docstore::Kv;
use shoal_repl::archive::{
    OPLOG_PART_BYTES, OPLOG_READ_BYTES_MAX, OPLOG_READ_ENTRIES_MAX, read_applied, read_entry_part,
};

/// The command's arguments: `after` (the last index the caller has, 0 for none) and an
/// optional `limit` of entries.
fn arguments(command: &Document) -> Result<(u64, usize), CommandError> {
    let after = match command.get("after") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(other) => return Err(CommandError::type_mismatch("after", "long", other)),
        None => return Err(CommandError::missing_field("_shoalOplogRead", "after")),
    };
    let after = u64::try_from(after)
        .map_err(|_| CommandError::bad_value(format!("after must not be negative, got {after}")))?;
    let limit = match command.get("limit") {
        None => OPLOG_READ_ENTRIES_MAX,
        Some(Bson::Int32(v)) if *v > 0 => usize::try_from(*v)
            .unwrap_or(OPLOG_READ_ENTRIES_MAX)
            .min(OPLOG_READ_ENTRIES_MAX),
        Some(Bson::Int64(v)) if *v > 0 => usize::try_from(*v)
            .unwrap_or(OPLOG_READ_ENTRIES_MAX)
            .min(OPLOG_READ_ENTRIES_MAX),
        Some(other) => {
            return Err(CommandError::bad_value(format!(
                "limit must be a positive integer, got {other}"
            )));
        }
    };
    Ok((after, limit))
}

fn long(value: u64) -> Bson {
    Bson::Int64(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A non-negative integer argument, if present.
fn optional_index(command: &Document, field: &str) -> Result<Option<u64>, CommandError> {
    let value = match command.get(field) {
        None => return Ok(None),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(other) => return Err(CommandError::type_mismatch(field, "long", other)),
    };
    u64::try_from(value)
        .map(Some)
        .map_err(|_| CommandError::bad_value(format!("{field} must not be negative, got {value}")))
}

/// `{entry: i, offset: n}`: part of one large entry.
fn read_part(
    kv: &Arc<dyn Kv>,
    set: &str,
    index: u64,
    command: &Document,
) -> Result<Document, CommandError> {
    let offset = optional_index(command, "offset")?.unwrap_or(0);
    let part = read_entry_part(kv.as_ref(), index, offset, OPLOG_PART_BYTES).map_err(|error| {
        tracing::error!(%error, index, "reading a log entry for the archive failed");
        CommandError::internal(format!("cannot read the log: {error}"))
    })?;
    let part = part.ok_or_else(|| {
        CommandError::new(
            shoal_common::ErrorCode::NO_SUCH_KEY,
            format!("log entry {index} is not applied or no longer held"),
        )
    })?;
    Ok(doc! {
        "set": set,
        "entry": long(index),
        "offset": long(offset),
        "total": long(part.total),
        "part": Bson::Binary(bson::Binary { subtype: BinarySubtype::Generic, bytes: part.bytes }),
        "ok": 1.0,
    })
}

/// Runs `_shoalOplogRead` against the member's storage `kv` (blocking: RocksDB reads).
pub fn read(kv: &Arc<dyn Kv>, set: &str, command: &Document) -> Result<Document, CommandError> {
    if let Some(index) = optional_index(command, "entry")? {
        return read_part(kv, set, index, command);
    }
    let (after, limit) = arguments(command)?;
    let page = read_applied(kv.as_ref(), after, limit, OPLOG_READ_BYTES_MAX).map_err(|error| {
        tracing::error!(%error, after, "reading the log for the archive failed");
        CommandError::internal(format!("cannot read the log: {error}"))
    })?;
    let entries: Vec<Bson> = page
        .entries
        .into_iter()
        .map(|entry| {
            Bson::Document(doc! {
                "i": long(entry.index),
                "t": entry.time_millis.map_or(Bson::Null, |t| Bson::DateTime(bson::DateTime::from_millis(t))),
                "e": Bson::Binary(bson::Binary { subtype: BinarySubtype::Generic, bytes: entry.bytes }),
            })
        })
        .collect();
    Ok(doc! {
        "set": set,
        "entries": entries,
        "applied": long(page.applied),
        "firstHeld": page.first_held.map_or(Bson::Null, long),
        "large": page.large.map_or(Bson::Null, |large| {
            Bson::Document(doc! {"i": long(large.index), "bytes": long(large.bytes)})
        }),
        "ok": 1.0,
    })
}

#[cfg(test)]
mod tests {
    use shoal_docstore::MemKv;

    use super::*;

    #[test]
    fn bad_arguments_are_refused_with_codes() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let missing = read(&kv, "rs", &doc! {"_shoalOplogRead": 1}).unwrap_err();
        assert_eq!(missing.code, shoal_common::ErrorCode(40414));
        let wrong = read(&kv, "rs", &doc! {"_shoalOplogRead": 1, "after": "x"}).unwrap_err();
        assert_eq!(wrong.code, shoal_common::ErrorCode::TYPE_MISMATCH);
        let negative = read(&kv, "rs", &doc! {"_shoalOplogRead": 1, "after": -1}).unwrap_err();
        assert_eq!(negative.code, shoal_common::ErrorCode::BAD_VALUE);
        let unknown = read(&kv, "rs", &doc! {"_shoalOplogRead": 1, "entry": 3}).unwrap_err();
        assert_eq!(unknown.code, shoal_common::ErrorCode::NO_SUCH_KEY);
        let bad_offset = read(
            &kv,
            "rs",
            &doc! {"_shoalOplogRead": 1, "entry": 3, "offset": -2},
        )
        .unwrap_err();
        assert_eq!(bad_offset.code, shoal_common::ErrorCode::BAD_VALUE);
        let empty = read(&kv, "rs", &doc! {"_shoalOplogRead": 1, "after": 0}).unwrap();
        assert_eq!(empty.get_i64("applied").unwrap(), 0);
        assert_eq!(empty.get("firstHeld"), Some(&Bson::Null));
    }
}
