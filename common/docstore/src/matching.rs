//! Finding the documents a filter selects. There are no secondary indexes yet, so a query is a
//! scan of the collection's key range in `_id` order, narrowed to a single key when the filter
//! fixes `_id` by plain equality (the common `updateOne({_id: x})` / router-targeted case).

use bson::{Bson, Document};
use shoal_common::CommandError;
use shoal_query::Filter;

use crate::{
    error::StoreError,
    keys::{CollectionId, collection_range, doc_key},
    kv::key_successor,
    txn::{Reader, Step, scan_documents},
};

/// Most bytes of documents a query may hold in memory at once (a sort, an aggregation's
/// input), as MongoDB's 100 MB limit for blocking stages without `allowDiskUse`.
pub const MATERIALIZE_BYTES_MAX: usize = 100 * 1024 * 1024;

/// MongoDB's `QueryExceededMemoryLimitNoDiskUseAllowed`.
const QUERY_EXCEEDED_MEMORY_LIMIT: shoal_common::ErrorCode = shoal_common::ErrorCode(292);

/// The `_id` value a filter pins by plain equality, if any. Operators, regexes, arrays and null
/// can match more than one stored `_id` form, so they fall back to a scan.
fn pinned_id(filter: &Document) -> Option<&Bson> {
    match filter.get("_id")? {
        Bson::Document(inner) if inner.keys().next().is_some_and(|k| k.starts_with('$')) => None,
        Bson::RegularExpression(_)
        | Bson::Array(_)
        | Bson::Null
        | Bson::Undefined
        | Bson::MinKey
        | Bson::MaxKey => None,
        value => Some(value),
    }
}

/// The key range `filter` can match in collection `coll`.
pub(crate) fn filter_range(coll: CollectionId, filter: &Document) -> (Vec<u8>, Vec<u8>) {
    match pinned_id(filter) {
        Some(id) => {
            let key = doc_key(coll, id);
            let end = key_successor(&key);
            (key, end)
        }
        None => collection_range(coll),
    }
}

/// The documents of `coll` matching `filter` (parsed from `filter_doc`), in `_id` order, with
/// their keys; at most `limit` when given.
pub(crate) fn find_matching<E: From<StoreError>>(
    reader: &dyn Reader,
    coll: CollectionId,
    filter_doc: &Document,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Vec<(Vec<u8>, Document)>, E> {
    let (start, end) = filter_range(coll, filter_doc);
    let mut found = Vec::new();
    scan_documents(reader, &start, &end, |key, document, _| {
        if !filter.matches(&document) {
            return Ok(Step::Next);
        }
        found.push((key.to_vec(), document));
        if limit.is_some_and(|limit| found.len() >= limit) {
            return Ok(Step::StopAfter);
        }
        Ok(Step::Next)
    })?;
    Ok(found)
}

/// Every document of `coll` matching `filter`, refusing to hold more than
/// [`MATERIALIZE_BYTES_MAX`] bytes.
pub(crate) fn collect_matching(
    reader: &dyn Reader,
    coll: CollectionId,
    filter_doc: &Document,
    filter: &Filter,
) -> Result<Vec<Document>, CommandError> {
    let (start, end) = filter_range(coll, filter_doc);
    let mut found = Vec::new();
    let mut bytes = 0usize;
    scan_documents(reader, &start, &end, |_, document, size| {
        if !filter.matches(&document) {
            return Ok::<_, CommandError>(Step::Next);
        }
        bytes += size;
        if bytes > MATERIALIZE_BYTES_MAX {
            return Err(CommandError::new(
                QUERY_EXCEEDED_MEMORY_LIMIT,
                format!(
                    "query needs more than {MATERIALIZE_BYTES_MAX} bytes of memory to sort or \
                     aggregate; add a more selective filter"
                ),
            ));
        }
        found.push(document);
        Ok(Step::Next)
    })?;
    Ok(found)
}

/// How many documents of `coll` match, after `skip` and up to `limit` (0 = no limit).
pub(crate) fn count_matching(
    reader: &dyn Reader,
    coll: CollectionId,
    filter_doc: &Document,
    skip: u64,
    limit: u64,
) -> Result<u64, CommandError> {
    let total = if filter_doc.is_empty() {
        // The statistics record is maintained in every write batch, so it is exact.
        let stats = crate::catalog::stats(reader, coll)?;
        u64::try_from(stats.count).unwrap_or(0)
    } else {
        let filter = Filter::parse(filter_doc)?;
        let (start, end) = filter_range(coll, filter_doc);
        // No need to count beyond what skip + limit can return.
        let needed = if limit == 0 {
            u64::MAX
        } else {
            skip.saturating_add(limit)
        };
        let mut n = 0u64;
        scan_documents(reader, &start, &end, |_, document, _| {
            if filter.matches(&document) {
                n += 1;
                if n >= needed {
                    return Ok::<_, CommandError>(Step::StopAfter);
                }
            }
            Ok(Step::Next)
        })?;
        n
    };
    let after_skip = total.saturating_sub(skip);
    Ok(if limit == 0 {
        after_skip
    } else {
        after_skip.min(limit)
    })
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn equality_on_id_narrows_to_one_key() {
        let coll = CollectionId(3);
        let (start, end) = filter_range(coll, &doc! {"_id": 5, "x": 1});
        assert_eq!(end, key_successor(&start));
        let (start, end) = filter_range(coll, &doc! {"_id": {"$gt": 5}});
        assert_eq!((start, end), collection_range(coll));
        let (start, _) = filter_range(coll, &doc! {"_id": {"a": 1}});
        assert_eq!(start, doc_key(coll, &Bson::Document(doc! {"a": 1})));
    }
}
