//! Finding the documents a filter selects: the planner picks the ranges to scan (a collection
//! scan, `_id` ranges or an index's ranges), and every document the scan yields is tested
//! against the full filter, so the result never depends on the plan.

use bson::Document;
use shoal_common::{CommandError, ErrorCode};
use shoal_query::{Filter, SortSpec};

use crate::{
    error::StoreError,
    keys::{CollectionEntry, doc_key},
    plan::{self, Plan, QueryShape},
    scan::ExecStats,
    txn::{Reader, Step},
};

/// Most bytes of documents a query may hold in memory at once (a sort, an aggregation's
/// input), as MongoDB's 100 MB limit for blocking stages without `allowDiskUse`.
pub const MATERIALIZE_BYTES_MAX: usize = 100 * 1024 * 1024;

/// The error of a query that would hold more than [`MATERIALIZE_BYTES_MAX`].
pub(crate) fn memory_limit_error() -> CommandError {
    CommandError::new(
        ErrorCode::QUERY_EXCEEDED_MEMORY_LIMIT,
        format!(
            "query needs more than {MATERIALIZE_BYTES_MAX} bytes of memory to sort or \
             aggregate; add a more selective filter"
        ),
    )
}

/// The documents of `entry`'s collection matching `filter` (parsed from `filter_doc`), with
/// their keys, in plan order; at most `limit` when given.
pub(crate) fn find_matching<E: From<StoreError> + From<CommandError>>(
    reader: &dyn Reader,
    entry: &CollectionEntry,
    filter_doc: &Document,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Vec<(Vec<u8>, Document)>, E> {
    let plan = plan::choose(entry, QueryShape::filter(filter_doc))?;
    let mut found = Vec::new();
    plan.scan().run(reader, |key, document, _| {
        if !filter.matches(&document) {
            return Ok::<_, E>(Step::Next);
        }
        found.push((key.to_vec(), document));
        if limit.is_some_and(|limit| found.len() >= limit) {
            return Ok(Step::StopAfter);
        }
        Ok(Step::Next)
    })?;
    Ok(found)
}

/// The first matching document in `sort` order (ties: the first in `_id` order), with its
/// key: straight from the index when one provides the order, else by comparing every match.
pub(crate) fn first_by_sort(
    reader: &dyn Reader,
    entry: &CollectionEntry,
    filter_doc: &Document,
    filter: &Filter,
    sort_doc: &Document,
    sort: &SortSpec,
) -> Result<Option<(Vec<u8>, Document)>, CommandError> {
    let plan = plan::choose(
        entry,
        QueryShape {
            filter: filter_doc,
            sort: Some(sort_doc),
            hint: None,
        },
    )?;
    if plan.sorted {
        let mut found = None;
        plan.scan().run(reader, |key, document, _| {
            if !filter.matches(&document) {
                return Ok::<_, CommandError>(Step::Next);
            }
            found = Some((key.to_vec(), document));
            Ok(Step::StopAfter)
        })?;
        return Ok(found);
    }
    let mut stats = ExecStats::default();
    let matches = collect_matching(reader, &plan, filter, &mut stats)?;
    let best = matches.into_iter().reduce(|best, candidate| {
        if sort.compare(&candidate, &best) == std::cmp::Ordering::Less {
            candidate
        } else {
            best
        }
    });
    Ok(best.map(|document| {
        let id = document.get("_id").cloned().unwrap_or(bson::Bson::Null);
        (doc_key(entry.id, &id), document)
    }))
}

/// Every document `plan` yields that matches `filter`, refusing to hold more than
/// [`MATERIALIZE_BYTES_MAX`] bytes; adds what it examined to `stats`.
pub(crate) fn collect_matching(
    reader: &dyn Reader,
    plan: &Plan,
    filter: &Filter,
    stats: &mut ExecStats,
) -> Result<Vec<Document>, CommandError> {
    let mut found = Vec::new();
    let mut bytes = 0usize;
    let mut scan = plan.scan();
    let result = scan.run(reader, |_, document, size| {
        if !filter.matches(&document) {
            return Ok::<_, CommandError>(Step::Next);
        }
        bytes += size;
        if bytes > MATERIALIZE_BYTES_MAX {
            return Err(memory_limit_error());
        }
        found.push(document);
        Ok(Step::Next)
    });
    stats.keys_examined += scan.stats.keys_examined;
    stats.docs_examined += scan.stats.docs_examined;
    result?;
    Ok(found)
}

/// How many documents match, after `skip` and up to `limit` (0 = no limit), with what was
/// examined. `plan` is `None` for the empty filter, answered from the statistics record.
pub(crate) fn count_matching(
    reader: &dyn Reader,
    entry: &CollectionEntry,
    filter_doc: &Document,
    plan: Option<&Plan>,
    skip: u64,
    limit: u64,
) -> Result<(u64, ExecStats), CommandError> {
    // A sharded collection may hold orphans, which the statistics count: scan then.
    let Some(plan) = plan.filter(|_| !filter_doc.is_empty() || entry.sharding.is_some()) else {
        // The statistics record is maintained in every write batch, so it is exact.
        let stats = crate::catalog::stats(reader, entry.id)?;
        let total = u64::try_from(stats.count).unwrap_or(0);
        return Ok((apply_skip_limit(total, skip, limit), ExecStats::default()));
    };
    let filter = Filter::parse(filter_doc)?;
    // No need to count beyond what skip + limit can return.
    let needed = if limit == 0 {
        u64::MAX
    } else {
        skip.saturating_add(limit)
    };
    let mut n = 0u64;
    let mut scan = plan.scan();
    scan.run(reader, |_, document, _| {
        if filter.matches(&document) {
            n += 1;
            if n >= needed {
                return Ok::<_, CommandError>(Step::StopAfter);
            }
        }
        Ok(Step::Next)
    })?;
    Ok((apply_skip_limit(n, skip, limit), scan.stats))
}

fn apply_skip_limit(total: u64, skip: u64, limit: u64) -> u64 {
    let after_skip = total.saturating_sub(skip);
    if limit == 0 {
        after_skip
    } else {
        after_skip.min(limit)
    }
}
