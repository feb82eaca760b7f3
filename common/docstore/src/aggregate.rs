//! `aggregate`: runs a pipeline over a collection's documents (or over nothing, for
//! `aggregate: 1`) with the query crate, and returns a cursor over the results.
//!
//! The input is materialized, so two shapes are specialised to keep memory bounded: a leading
//! `$match` filters during the (planned, possibly indexed) scan, and the shape drivers send for
//! `countDocuments` (`[$match?, $skip?, $limit?, $group {_id: <constant>, n: {$sum: 1}}]`)
//! counts without holding any document. `$lookup` reads the other collections of the same
//! database, each bounded like the input.

use std::collections::VecDeque;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace};
use shoal_query::{CollectionSource, Filter, Pipeline, QueryError, error::LocationCode};

use crate::{
    args::{Fields, as_i64},
    catalog,
    cursor::Source,
    engine::Engine,
    matching::{collect_matching, count_matching},
    plan::{self, Plan, QueryShape},
    read::{CursorSpec, FIRST_BATCH_DOCS_DEFAULT, hint_field, number},
    scan::ExecStats,
    txn::Direct,
};

/// The `countDocuments` pipeline, recognised.
#[derive(Debug, PartialEq)]
struct CountShape {
    filter: Document,
    skip: u64,
    limit: u64,
    group_id: Bson,
    field: String,
}

fn single_stage(stage: &Bson) -> Option<(&str, &Bson)> {
    match stage {
        Bson::Document(stage) if stage.len() == 1 => {
            stage.iter().next().map(|(k, v)| (k.as_str(), v))
        }
        _ => None,
    }
}

fn is_constant(value: &Bson) -> bool {
    match value {
        Bson::String(text) => !text.starts_with('$'),
        Bson::Null | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Boolean(_) => true,
        _ => false,
    }
}

/// Recognises `[$match?, $skip?, $limit?, $group: {_id: constant, <f>: {$sum: 1}}]`.
fn count_shape(pipeline: &[Bson]) -> Option<CountShape> {
    let (group, prefix) = pipeline.split_last()?;
    let mut shape = CountShape {
        filter: Document::new(),
        skip: 0,
        limit: 0,
        group_id: Bson::Null,
        field: String::new(),
    };
    let mut rank = 0;
    for stage in prefix {
        let (name, value) = single_stage(stage)?;
        let stage_rank = match name {
            "$match" => 1,
            "$skip" => 2,
            "$limit" => 3,
            _ => return None,
        };
        if stage_rank <= rank {
            return None;
        }
        rank = stage_rank;
        match (name, value) {
            ("$match", Bson::Document(filter)) => shape.filter = filter.clone(),
            ("$skip", value) => shape.skip = u64::try_from(as_i64(value)?).ok()?,
            ("$limit", value) => {
                shape.limit = u64::try_from(as_i64(value)?).ok().filter(|l| *l > 0)?
            }
            _ => return None,
        }
    }
    let ("$group", Bson::Document(group)) = single_stage(group)? else {
        return None;
    };
    if group.len() != 2 {
        return None;
    }
    let group_id = group.get("_id").filter(|id| is_constant(id))?;
    let (field, accumulator) = group.iter().find(|(key, _)| key.as_str() != "_id")?;
    let Some(("$sum", sum)) = (match accumulator {
        Bson::Document(acc) if acc.len() == 1 => acc.iter().next().map(|(k, v)| (k.as_str(), v)),
        _ => None,
    }) else {
        return None;
    };
    if as_i64(sum) != Some(1) {
        return None;
    }
    shape.group_id = group_id.clone();
    shape.field = field.clone();
    Some(shape)
}

/// The result of a counting `$group` over `n` documents (none for an empty input).
fn count_result(shape: &CountShape, n: u64) -> Vec<Document> {
    if n == 0 {
        return Vec::new();
    }
    let mut out = doc! {"_id": shape.group_id.clone()};
    out.insert(shape.field.clone(), number(n));
    vec![out]
}

/// What an `aggregate` runs over.
enum Target {
    Collection(Namespace),
    Database,
}

fn parse_target(db: &str, command: &Document) -> Result<Target, CommandError> {
    match command.get("aggregate") {
        Some(Bson::String(coll)) => Ok(Target::Collection(Namespace::new(db, coll)?)),
        Some(value) if as_i64(value) == Some(1) => Ok(Target::Database),
        Some(other) => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            format!("{other} is not a valid aggregate target; use a collection name or 1"),
        )),
        None => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            "missing collection name",
        )),
    }
}

/// The other collections of the aggregated database, for `$lookup`.
struct LocalCollections<'a> {
    engine: &'a Engine,
    db: &'a str,
}

impl CollectionSource for LocalCollections<'_> {
    fn collection_documents(&self, coll: &str) -> Result<Vec<Document>, QueryError> {
        // The command error's code (InvalidNamespace, QueryExceededMemoryLimit...) is kept.
        let keep_code =
            |err: CommandError| QueryError::location(LocationCode(err.code.0), err.errmsg);
        let ns = Namespace::new(self.db, coll).map_err(keep_code)?;
        self.engine
            .all_documents(&ns.to_string())
            .map_err(keep_code)
    }
}

/// The plan of an aggregation's leading `$match`, with what it examined.
pub(crate) type Planned = Option<(Plan, ExecStats)>;

/// A pipeline split into the part the planner runs (a leading `$match`) and the rest.
pub(crate) struct AggregateRequest<'a> {
    pub filter: Document,
    pub rest: &'a [Bson],
    pub hint: Option<Bson>,
}

impl<'a> AggregateRequest<'a> {
    pub fn new(stages: &'a [Bson], hint: Option<Bson>) -> AggregateRequest<'a> {
        // A leading $match becomes the scan filter so only matching documents are held.
        let leading = stages
            .split_first()
            .and_then(|(first, rest)| match single_stage(first) {
                Some(("$match", Bson::Document(filter))) => Some((filter.clone(), rest)),
                _ => None,
            });
        let (filter, rest) = leading.unwrap_or((Document::new(), stages));
        AggregateRequest { filter, rest, hint }
    }

    pub fn shape(&self) -> QueryShape<'_> {
        QueryShape {
            filter: &self.filter,
            sort: None,
            hint: self.hint.as_ref(),
        }
    }
}

impl Engine {
    /// `aggregate`.
    pub(crate) fn aggregate(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let target = parse_target(db, command)?;
        let fields = Fields::new(command, "aggregate");
        let stages = fields
            .array("pipeline")?
            .ok_or_else(|| fields.missing("pipeline"))?;
        if fields.flag("explain", false)? {
            return self.explain_aggregate(db, command);
        }
        let cursor_options = fields.doc("cursor")?.ok_or_else(|| {
            CommandError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            )
        })?;
        let batch_docs = Fields::new(cursor_options, "aggregate.cursor")
            .non_negative("batchSize")?
            .unwrap_or(FIRST_BATCH_DOCS_DEFAULT);
        let hint = hint_field(command, "aggregate")?;
        let (ns, coll, results) = match target {
            Target::Collection(ns) => {
                let (results, _) = self.aggregate_collection(&ns, stages, hint)?;
                (ns.to_string(), ns.coll, results)
            }
            Target::Database => {
                let source = LocalCollections { engine: self, db };
                let results = Pipeline::parse(stages)?.run_with_source(Vec::new(), &source)?;
                (
                    format!("{db}.$cmd.aggregate"),
                    "$cmd.aggregate".to_owned(),
                    results,
                )
            }
        };
        self.open_cursor(CursorSpec {
            ns,
            db: db.to_owned(),
            coll,
            source: Source::Buffered(VecDeque::from(results)),
            batch_docs,
            single_batch: false,
        })
    }

    /// Runs a pipeline over a collection; returns the results and, when the collection exists,
    /// the plan of its leading `$match` with what it examined.
    pub(crate) fn aggregate_collection(
        &self,
        ns: &Namespace,
        stages: &[Bson],
        hint: Option<Bson>,
    ) -> Result<(Vec<Document>, Planned), CommandError> {
        let reader = Direct(self.kv.as_ref());
        let entry = catalog::lookup(&reader, &ns.to_string())?;
        if let Some(shape) = count_shape(stages) {
            Filter::parse(&shape.filter)?;
            let query = QueryShape {
                filter: &shape.filter,
                sort: None,
                hint: hint.as_ref(),
            };
            let Some(entry) = entry else {
                return Ok((count_result(&shape, 0), None));
            };
            let plan = plan::choose(&entry, query)?;
            let (n, stats) = count_matching(
                &reader,
                &entry,
                &shape.filter,
                Some(&plan),
                shape.skip,
                shape.limit,
            )?;
            return Ok((count_result(&shape, n), Some((plan, stats))));
        }
        let request = AggregateRequest::new(stages, hint);
        let filter = Filter::parse(&request.filter)?;
        let pipeline = Pipeline::parse(request.rest)?;
        let (input, planned) = match &entry {
            Some(entry) => {
                let plan = plan::choose(entry, request.shape())?;
                let mut stats = ExecStats::default();
                let input = collect_matching(&reader, &plan, &filter, &mut stats)?;
                (input, Some((plan, stats)))
            }
            None => (Vec::new(), None),
        };
        let source = LocalCollections {
            engine: self,
            db: &ns.db,
        };
        Ok((pipeline.run_with_source(input, &source)?, planned))
    }

    /// Every document of `ns` (none when it does not exist), refusing to hold more than
    /// [`crate::MATERIALIZE_BYTES_MAX`] bytes.
    pub(crate) fn all_documents(&self, ns: &str) -> Result<Vec<Document>, CommandError> {
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, ns)? else {
            return Ok(Vec::new());
        };
        let plan = plan::choose(&entry, QueryShape::filter(&Document::new()))?;
        let mut stats = ExecStats::default();
        collect_matching(&reader, &plan, &Filter::match_all(), &mut stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_count_documents_shape() {
        let pipeline = vec![
            Bson::Document(doc! {"$match": {"x": 1}}),
            Bson::Document(doc! {"$skip": 2}),
            Bson::Document(doc! {"$limit": 5_i64}),
            Bson::Document(doc! {"$group": {"_id": 1, "n": {"$sum": 1}}}),
        ];
        let shape = count_shape(&pipeline).unwrap();
        assert_eq!(shape.skip, 2);
        assert_eq!(shape.limit, 5);
        assert_eq!(shape.field, "n");
        assert_eq!(count_result(&shape, 3), vec![doc! {"_id": 1, "n": 3}]);
        assert!(count_result(&shape, 0).is_empty());
        let by_field = vec![Bson::Document(
            doc! {"$group": {"_id": "$x", "n": {"$sum": 1}}},
        )];
        assert!(count_shape(&by_field).is_none());
        let out_of_order = vec![
            Bson::Document(doc! {"$limit": 5}),
            Bson::Document(doc! {"$match": {}}),
            Bson::Document(doc! {"$group": {"_id": 1, "n": {"$sum": 1}}}),
        ];
        assert!(count_shape(&out_of_order).is_none());
    }
}
