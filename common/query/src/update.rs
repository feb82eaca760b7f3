//! Updates (`update`/`findAndModify`'s `u`): operator documents (`$set`, `$inc`, `$push`, ...
//! with positional `$`, `$[]` and `$[<id>]` paths), replacement documents, and pipeline-style
//! updates. Parsing validates everything MongoDB rejects up front (unknown modifiers, paths that
//! conflict, malformed arguments), so applying can only fail on the document's own data.
//!
//! Positional `$` needs the query that selected the document: attach it with
//! [`Update::with_query`]. Without a query, a `$` path fails with MongoDB's "The positional
//! operator did not find the match needed from the query." (BadValue 2).

use std::cmp::Ordering;

use bson::{Bson, Document, Timestamp};
use shoal_common::bsonorder;
use shoal_common::error::type_name;

use crate::error::{QueryError, Result};
use crate::expr::Num;
use crate::filter::{Filter, ValueNode, parse_operators};
use crate::path::{self, array_index};
use crate::pipeline::Pipeline;
use crate::projection::first_matching_element;
use crate::sort::{SortSpec, sort_direction};

/// The most null elements an update may add to reach an array index, as in MongoDB.
const ARRAY_PAD_ELEMENTS_MAX: usize = 1_500_000;

/// A parsed update.
#[derive(Clone, Debug)]
pub struct Update {
    kind: Kind,
    query: Option<Filter>,
}

#[derive(Clone, Debug)]
enum Kind {
    Replacement(Document),
    Operators {
        ops: Vec<UpdateOp>,
        array_filters: Vec<ArrayFilter>,
    },
    Pipeline(Pipeline),
}

#[derive(Clone, Debug)]
struct UpdateOp {
    operator: &'static str,
    path: String,
    parts: Vec<String>,
    action: Action,
}

#[derive(Clone, Debug)]
enum Action {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Num),
    Mul(Num),
    Min(Bson),
    Max(Bson),
    Rename { to: Vec<String> },
    CurrentDate { timestamp: bool },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pop { first: bool },
    Pull(PullCondition),
    PullAll(Vec<Bson>),
}

#[derive(Clone, Debug)]
struct PushSpec {
    each: Vec<Bson>,
    slice: Option<i64>,
    sort: Option<PushSort>,
    position: Option<i64>,
}

#[derive(Clone, Debug)]
enum PushSort {
    Whole { ascending: bool },
    Fields(SortSpec),
}

#[derive(Clone, Debug)]
enum PullCondition {
    /// An operator document or a scalar: tested against each element as a field value.
    Value(ValueNode),
    /// A document without operators: elements that are documents matching it as a query.
    Query(Filter),
}

#[derive(Clone, Debug)]
struct ArrayFilter {
    identifier: String,
    filter: Filter,
}

/// The result of an operator on one field.
enum Change {
    Keep,
    Set(Bson),
    Remove,
}

const OPERATORS: &[&str] = &[
    "$set",
    "$setOnInsert",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$currentDate",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$pullAll",
];

impl Update {
    /// `u` is an operator document (all keys start with `$`), a replacement document (no `$`
    /// keys), or a pipeline (array of stages: $set/$addFields/$unset/$project/$replaceRoot/
    /// $replaceWith).
    pub fn parse(u: &Bson, array_filters: Option<&[Bson]>) -> Result<Update> {
        let filters = array_filters.unwrap_or_default();
        crate::nesting::check_value(u)?;
        for filter in filters {
            crate::nesting::check_value(filter)?;
        }
        let kind = match u {
            Bson::Array(stages) => {
                if !filters.is_empty() {
                    return Err(QueryError::FailedToParse(
                        "arrayFilters may not be specified for pipeline-style updates".to_owned(),
                    ));
                }
                Kind::Pipeline(Pipeline::parse_for_update(stages)?)
            }
            Bson::Document(doc) if doc.keys().next().is_some_and(|k| k.starts_with('$')) => {
                parse_operator_update(doc, filters)?
            }
            Bson::Document(doc) => {
                if !filters.is_empty() {
                    return Err(QueryError::FailedToParse(
                        "arrayFilters may not be specified for replacement-style updates"
                            .to_owned(),
                    ));
                }
                Kind::Replacement(parse_replacement(doc)?)
            }
            other => {
                return Err(QueryError::TypeMismatch(format!(
                    "Update argument must be either an object or an array, found {}",
                    type_name(other)
                )));
            }
        };
        Ok(Update { kind, query: None })
    }

    /// Attaches the query that selected the documents, for positional `$` paths.
    pub fn with_query(mut self, query: Filter) -> Update {
        self.query = Some(query);
        self
    }

    /// Whether this is a replacement-style update.
    pub fn is_replacement(&self) -> bool {
        matches!(self.kind, Kind::Replacement(_))
    }

    /// Returns the updated document. `_id` may not change (ImmutableField 66). `$setOnInsert`
    /// applies only when `is_insert`.
    pub fn apply(&self, doc: &Document, is_insert: bool) -> Result<Document> {
        match &self.kind {
            Kind::Replacement(replacement) => apply_replacement(replacement, doc),
            Kind::Operators { ops, array_filters } => {
                self.apply_operators(ops, array_filters, doc, is_insert)
            }
            Kind::Pipeline(pipeline) => apply_pipeline(pipeline, doc),
        }
    }

    /// The document an upsert inserts: the filter's equality fields (top-level `f: v`,
    /// `f: {$eq: v}`, inside `$and`; dotted paths create nested docs; `_id` first), then the
    /// update applied with is_insert = true (a replacement keeps the filter's `_id` if the
    /// replacement has none). The result has no `_id` when neither the filter nor the update
    /// sets one: the caller generates it (this crate does not read the clock).
    pub fn upsert_document(&self, filter: &Document) -> Result<Document> {
        let seed = equality_seed(filter)?;
        match &self.kind {
            Kind::Replacement(replacement) => {
                let mut out = Document::new();
                if let Some(id) = replacement.get("_id").or_else(|| seed.get("_id")) {
                    out.insert("_id", id.clone());
                }
                for (key, value) in replacement {
                    if key != "_id" {
                        out.insert(key.clone(), value.clone());
                    }
                }
                Ok(out)
            }
            _ => self.apply(&seed, true),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn parse_replacement(doc: &Document) -> Result<Document> {
    for key in doc.keys() {
        if key.starts_with('$') {
            return Err(QueryError::DollarPrefixedFieldName(format!(
                "The dollar ($) prefixed field '{key}' in '{key}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
            )));
        }
    }
    Ok(doc.clone())
}

fn parse_operator_update(doc: &Document, filters: &[Bson]) -> Result<Kind> {
    let mut ops = Vec::new();
    for (operator, argument) in doc {
        let Some(name) = OPERATORS.iter().find(|o| **o == operator) else {
            return Err(QueryError::FailedToParse(format!(
                "Unknown modifier: {operator}. Expected a valid update modifier or pipeline-style update specified as an array"
            )));
        };
        let Bson::Document(fields) = argument else {
            return Err(QueryError::FailedToParse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{operator}: {argument}}}",
                type_name(argument)
            )));
        };
        if fields.is_empty() {
            return Err(QueryError::FailedToParse(format!(
                "'{operator}' is empty. You must specify a field like so: {{{operator}: {{<field>: ...}}}}"
            )));
        }
        for (field, value) in fields {
            let parts = parse_update_path(field)?;
            let action = parse_action(name, field, value)?;
            ops.push(UpdateOp {
                operator: name,
                path: field.clone(),
                parts,
                action,
            });
        }
    }
    check_conflicts(&ops)?;
    let array_filters = parse_array_filters(filters, &ops, doc)?;
    ops.sort_by(|a, b| compare_paths(&a.parts, &b.parts));
    Ok(Kind::Operators { ops, array_filters })
}

fn is_positional(component: &str) -> bool {
    component == "$" || (component.starts_with("$[") && component.ends_with(']'))
}

fn parse_update_path(field: &str) -> Result<Vec<String>> {
    let parts = path::split(field);
    if parts.iter().any(String::is_empty) {
        return Err(QueryError::EmptyFieldName(format!(
            "The update path '{field}' contains an empty field name, which is not allowed."
        )));
    }
    if parts.first().is_some_and(|p| is_positional(p)) {
        return Err(QueryError::bad_value(format!(
            "Cannot have array filter identifier (i.e. '$[<id>]') or positional operator in the first position in path '{field}'"
        )));
    }
    if parts.iter().filter(|p| *p == "$").count() > 1 {
        return Err(QueryError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{field}'"
        )));
    }
    Ok(parts)
}

fn number_of(operator: &str, field: &str, value: &Bson) -> Result<Num> {
    Num::of(value).ok_or_else(|| {
        let verb = if operator == "$inc" {
            "increment"
        } else {
            "multiply"
        };
        QueryError::TypeMismatch(format!(
            "Cannot {verb} with non-numeric argument: {{{field}: {value}}}"
        ))
    })
}

fn parse_action(operator: &str, field: &str, value: &Bson) -> Result<Action> {
    Ok(match operator {
        "$set" => Action::Set(value.clone()),
        "$setOnInsert" => Action::SetOnInsert(value.clone()),
        "$unset" => Action::Unset,
        "$inc" => Action::Inc(number_of(operator, field, value)?),
        "$mul" => Action::Mul(number_of(operator, field, value)?),
        "$min" => Action::Min(value.clone()),
        "$max" => Action::Max(value.clone()),
        "$rename" => parse_rename(field, value)?,
        "$currentDate" => parse_current_date(field, value)?,
        "$push" => Action::Push(parse_push(value)?),
        "$addToSet" => Action::AddToSet(parse_add_to_set(value)?),
        "$pop" => match sort_direction(value) {
            Some(ascending) => Action::Pop { first: !ascending },
            _ => {
                return Err(QueryError::FailedToParse(format!(
                    "$pop expects 1 or -1, found: {value}"
                )));
            }
        },
        "$pull" => Action::Pull(parse_pull(value)?),
        _ => match value {
            Bson::Array(items) => Action::PullAll(items.clone()),
            other => {
                return Err(QueryError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(other)
                )));
            }
        },
    })
}

fn parse_rename(field: &str, value: &Bson) -> Result<Action> {
    let Bson::String(target) = value else {
        return Err(QueryError::bad_value(format!(
            "The 'to' field for $rename must be a string: {field}: {value}"
        )));
    };
    let from = path::split(field);
    let to = parse_update_path(target)?;
    if from.iter().chain(&to).any(|p| is_positional(p)) {
        return Err(QueryError::bad_value(format!(
            "The source field for $rename may not be dynamic: {field}"
        )));
    }
    if from == to {
        return Err(QueryError::bad_value(format!(
            "The source and target field for $rename must differ: {field}: \"{target}\""
        )));
    }
    if from.starts_with(&to) || to.starts_with(&from) {
        return Err(QueryError::bad_value(format!(
            "The source and target field for $rename must not be on the same path: {field}: \"{target}\""
        )));
    }
    Ok(Action::Rename { to })
}

fn parse_current_date(field: &str, value: &Bson) -> Result<Action> {
    let timestamp = match value {
        Bson::Boolean(_) => false,
        Bson::Document(spec) if spec.len() == 1 => match spec.get("$type") {
            Some(Bson::String(t)) if t == "date" => false,
            Some(Bson::String(t)) if t == "timestamp" => true,
            _ => {
                return Err(QueryError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
                ));
            }
        },
        _ => {
            return Err(QueryError::bad_value(format!(
                "{field}: {value} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}})."
            )));
        }
    };
    Ok(Action::CurrentDate { timestamp })
}

fn whole_modifier(name: &str, value: &Bson) -> Result<i64> {
    Num::of(value).and_then(Num::as_whole).ok_or_else(|| {
        QueryError::bad_value(format!(
            "The value for {name} must be an integer value but was given type: {}",
            type_name(value)
        ))
    })
}

fn parse_push(value: &Bson) -> Result<PushSpec> {
    let plain = PushSpec {
        each: vec![value.clone()],
        slice: None,
        sort: None,
        position: None,
    };
    let Bson::Document(spec) = value else {
        return Ok(plain);
    };
    let Some(each) = spec.get("$each") else {
        return Ok(plain);
    };
    let Bson::Array(each) = each else {
        return Err(QueryError::bad_value(format!(
            "The argument to $each in $push must be an array but it was of type: {}",
            type_name(each)
        )));
    };
    let mut push = PushSpec {
        each: each.clone(),
        slice: None,
        sort: None,
        position: None,
    };
    for (key, modifier) in spec {
        match key.as_str() {
            "$each" => {}
            "$slice" => push.slice = Some(whole_modifier("$slice", modifier)?),
            "$position" => push.position = Some(whole_modifier("$position", modifier)?),
            "$sort" => push.sort = Some(parse_push_sort(modifier)?),
            other => {
                return Err(QueryError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )));
            }
        }
    }
    Ok(push)
}

fn parse_push_sort(value: &Bson) -> Result<PushSort> {
    let invalid = || {
        QueryError::bad_value(
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )
    };
    match value {
        Bson::Document(spec) if !spec.is_empty() => SortSpec::parse(spec)
            .map(PushSort::Fields)
            .map_err(|_| invalid()),
        other => match sort_direction(other) {
            Some(ascending) => Ok(PushSort::Whole { ascending }),
            None => Err(invalid()),
        },
    }
}

fn parse_add_to_set(value: &Bson) -> Result<Vec<Bson>> {
    match value {
        Bson::Document(spec) => match spec.get("$each") {
            Some(Bson::Array(items)) if spec.len() == 1 => Ok(items.clone()),
            Some(other) if spec.len() == 1 => Err(QueryError::bad_value(format!(
                "The argument to $each in $addToSet must be an array but it was of type {}",
                type_name(other)
            ))),
            _ => Ok(vec![value.clone()]),
        },
        other => Ok(vec![other.clone()]),
    }
}

fn parse_pull(value: &Bson) -> Result<PullCondition> {
    match value {
        Bson::Document(spec) if spec.keys().next().is_some_and(|k| k.starts_with('$')) => {
            Ok(PullCondition::Value(parse_operators(spec)?))
        }
        Bson::Document(spec) => Ok(PullCondition::Query(Filter::parse(spec)?)),
        Bson::RegularExpression(regex) => Ok(PullCondition::Value(parse_operators(
            &bson::doc! {"$regex": Bson::RegularExpression(regex.clone())},
        )?)),
        other => Ok(PullCondition::Value(parse_operators(
            &bson::doc! {"$eq": other.clone()},
        )?)),
    }
}

/// Orders paths as MongoDB applies them: component by component, numbers numerically.
fn compare_paths(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (array_index(x), array_index(y)) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn check_conflicts(ops: &[UpdateOp]) -> Result<()> {
    let mut paths: Vec<(&[String], &str)> = Vec::new();
    for op in ops {
        paths.push((&op.parts, &op.path));
        if let Action::Rename { to } = &op.action {
            paths.push((to, &op.path));
        }
    }
    paths.sort_by(|a, b| a.0.cmp(b.0));
    for pair in paths.windows(2) {
        let (shorter, longer) = (pair[0].0, pair[1].0);
        if longer.starts_with(shorter) {
            return Err(QueryError::ConflictingUpdateOperators(format!(
                "Updating the path '{}' would create a conflict at '{}'",
                longer.join("."),
                shorter.join(".")
            )));
        }
    }
    Ok(())
}

fn parse_array_filters(
    filters: &[Bson],
    ops: &[UpdateOp],
    update: &Document,
) -> Result<Vec<ArrayFilter>> {
    let mut parsed: Vec<ArrayFilter> = Vec::with_capacity(filters.len());
    for filter in filters {
        let Bson::Document(spec) = filter else {
            return Err(QueryError::FailedToParse(
                "Each array filter must be an object".to_owned(),
            ));
        };
        let identifier = array_filter_identifier(spec)?;
        if parsed.iter().any(|f| f.identifier == identifier) {
            return Err(QueryError::FailedToParse(format!(
                "Found multiple array filters with the same top-level field name {identifier}"
            )));
        }
        parsed.push(ArrayFilter {
            identifier,
            filter: Filter::parse(spec)?,
        });
    }
    let used: Vec<&str> = ops
        .iter()
        .flat_map(|op| op.parts.iter())
        .filter_map(|p| p.strip_prefix("$[").and_then(|r| r.strip_suffix(']')))
        .filter(|id| !id.is_empty())
        .collect();
    for op in ops {
        for id in op
            .parts
            .iter()
            .filter_map(|p| p.strip_prefix("$[").and_then(|r| r.strip_suffix(']')))
        {
            if !id.is_empty() && !parsed.iter().any(|f| f.identifier == id) {
                return Err(QueryError::bad_value(format!(
                    "No array filter found for identifier '{id}' in path '{}'",
                    op.path
                )));
            }
        }
    }
    if let Some(unused) = parsed
        .iter()
        .find(|f| !used.contains(&f.identifier.as_str()))
    {
        return Err(QueryError::FailedToParse(format!(
            "The array filter for identifier '{}' was not used in the update {update}",
            unused.identifier
        )));
    }
    Ok(parsed)
}

fn array_filter_identifier(spec: &Document) -> Result<String> {
    let mut found: Option<String> = None;
    collect_identifiers(spec, &mut found)?;
    let Some(identifier) = found else {
        return Err(QueryError::bad_value(
            "Cannot use an expression without a top-level field name in arrayFilters",
        ));
    };
    let valid = identifier
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && identifier.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(QueryError::bad_value(format!(
            "Error parsing array filter :: caused by :: The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{identifier}'"
        )));
    }
    Ok(identifier)
}

fn collect_identifiers(spec: &Document, found: &mut Option<String>) -> Result<()> {
    for (key, value) in spec {
        if matches!(key.as_str(), "$and" | "$or" | "$nor") {
            if let Bson::Array(items) = value {
                for item in items {
                    if let Bson::Document(inner) = item {
                        collect_identifiers(inner, found)?;
                    }
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let head = key.split('.').next().unwrap_or_default().to_owned();
        match found {
            Some(existing) if *existing != head => {
                return Err(QueryError::FailedToParse(format!(
                    "Error parsing array filter :: caused by :: Expected a single top-level field name, found '{existing}' and '{head}'"
                )));
            }
            _ => *found = Some(head),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------------

fn apply_replacement(replacement: &Document, doc: &Document) -> Result<Document> {
    let mut out = Document::new();
    match (doc.get("_id"), replacement.get("_id")) {
        (Some(old), Some(new)) if old != new => {
            return Err(QueryError::ImmutableField(format!(
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new}"
            )));
        }
        (Some(id), _) | (None, Some(id)) => {
            out.insert("_id", id.clone());
        }
        (None, None) => {}
    }
    for (key, value) in replacement {
        if key != "_id" {
            out.insert(key.clone(), value.clone());
        }
    }
    Ok(out)
}

fn apply_pipeline(pipeline: &Pipeline, doc: &Document) -> Result<Document> {
    let mut results = pipeline.run(vec![doc.clone()])?;
    let Some(mut out) = results.pop() else {
        return Err(QueryError::bad_value(
            "Update pipeline produced no document",
        ));
    };
    if let Some(id) = doc.get("_id") {
        match out.get("_id") {
            None => {
                let mut with_id = bson::doc! {"_id": id.clone()};
                with_id.extend(out);
                out = with_id;
            }
            Some(new) if new != id => return Err(immutable_id()),
            Some(_) => {}
        }
    }
    Ok(out)
}

fn immutable_id() -> QueryError {
    QueryError::ImmutableField(
        "Performing an update on the path '_id' would modify the immutable field '_id'".to_owned(),
    )
}

fn check_id(before: &Document, after: &Document) -> Result<()> {
    match (before.get("_id"), after.get("_id")) {
        (Some(old), Some(new)) if old == new => Ok(()),
        (Some(_), _) => Err(immutable_id()),
        (None, _) => Ok(()),
    }
}

/// What an operator needs to know about the document besides the field.
struct ApplyCtx<'a> {
    id: String,
    path: &'a str,
}

impl Update {
    fn apply_operators(
        &self,
        ops: &[UpdateOp],
        array_filters: &[ArrayFilter],
        doc: &Document,
        is_insert: bool,
    ) -> Result<Document> {
        let mut out = doc.clone();
        let id = doc
            .get("_id")
            .map_or_else(|| "{}".to_owned(), |id| format!("{{_id: {id}}}"));
        for op in ops {
            if matches!(op.action, Action::SetOnInsert(_)) && !is_insert {
                continue;
            }
            let concrete = self.resolve(doc, &op.parts, array_filters)?;
            for parts in concrete {
                let path = parts.join(".");
                let ctx = ApplyCtx {
                    id: id.clone(),
                    path: &path,
                };
                apply_op(&mut out, op, &parts, &ctx)?;
            }
        }
        check_id(doc, &out)?;
        Ok(out)
    }

    /// Expands `$`, `$[]` and `$[<id>]` into concrete paths against the original document.
    fn resolve(
        &self,
        doc: &Document,
        parts: &[String],
        array_filters: &[ArrayFilter],
    ) -> Result<Vec<Vec<String>>> {
        if !parts.iter().any(|p| is_positional(p)) {
            return Ok(vec![parts.to_vec()]);
        }
        let mut out = Vec::new();
        let root = Bson::Document(doc.clone());
        self.resolve_from(doc, Some(&root), parts, Vec::new(), array_filters, &mut out)?;
        Ok(out)
    }

    fn resolve_from(
        &self,
        doc: &Document,
        value: Option<&Bson>,
        parts: &[String],
        prefix: Vec<String>,
        array_filters: &[ArrayFilter],
        out: &mut Vec<Vec<String>>,
    ) -> Result<()> {
        let Some((head, rest)) = parts.split_first() else {
            out.push(prefix);
            return Ok(());
        };
        if !is_positional(head) {
            let child = match value {
                Some(Bson::Document(inner)) => inner.get(head),
                Some(Bson::Array(items)) => array_index(head).and_then(|i| items.get(i)),
                _ => None,
            };
            let mut next = prefix;
            next.push(head.clone());
            return self.resolve_from(doc, child, rest, next, array_filters, out);
        }
        let Some(Bson::Array(items)) = value else {
            return Err(QueryError::bad_value(format!(
                "The path '{}' must exist in the document in order to apply array updates.",
                prefix.join(".")
            )));
        };
        for index in self.positional_indexes(doc, head, &prefix, items, array_filters)? {
            let mut next = prefix.clone();
            next.push(index.to_string());
            self.resolve_from(doc, items.get(index), rest, next, array_filters, out)?;
        }
        Ok(())
    }

    fn positional_indexes(
        &self,
        doc: &Document,
        component: &str,
        prefix: &[String],
        items: &[Bson],
        array_filters: &[ArrayFilter],
    ) -> Result<Vec<usize>> {
        if component == "$" {
            let not_found = || {
                QueryError::bad_value(
                    "The positional operator did not find the match needed from the query.",
                )
            };
            let query = self.query.as_ref().ok_or_else(not_found)?;
            let index = first_matching_element(query, doc, prefix, items).ok_or_else(not_found)?;
            return Ok(vec![index]);
        }
        let identifier = component.trim_start_matches("$[").trim_end_matches(']');
        if identifier.is_empty() {
            return Ok((0..items.len()).collect());
        }
        let Some(array_filter) = array_filters.iter().find(|f| f.identifier == identifier) else {
            return Err(QueryError::bad_value(format!(
                "No array filter found for identifier '{identifier}'"
            )));
        };
        Ok((0..items.len())
            .filter(|i| {
                let wrapped = bson::doc! {identifier: items[*i].clone()};
                array_filter.filter.matches(&wrapped)
            })
            .collect())
    }
}

fn apply_op(doc: &mut Document, op: &UpdateOp, parts: &[String], ctx: &ApplyCtx<'_>) -> Result<()> {
    match &op.action {
        Action::Rename { to } => rename(doc, parts, to),
        Action::Unset | Action::Pop { .. } | Action::Pull(_) | Action::PullAll(_) => {
            modify(doc, parts, false, &mut |current| {
                change_for(op, current, ctx)
            })
        }
        _ => modify(doc, parts, true, &mut |current| {
            change_for(op, current, ctx)
        }),
    }
}

fn change_for(op: &UpdateOp, current: Option<&Bson>, ctx: &ApplyCtx<'_>) -> Result<Change> {
    match &op.action {
        Action::Set(value) | Action::SetOnInsert(value) => Ok(Change::Set(value.clone())),
        Action::Unset => Ok(if current.is_some() {
            Change::Remove
        } else {
            Change::Keep
        }),
        Action::Inc(amount) => arithmetic(op.operator, current, *amount, ctx, Num::add, *amount),
        Action::Mul(factor) => arithmetic(
            op.operator,
            current,
            *factor,
            ctx,
            Num::mul,
            factor.zero_like(),
        ),
        Action::Min(value) => Ok(min_max(current, value, Ordering::Less)),
        Action::Max(value) => Ok(min_max(current, value, Ordering::Greater)),
        Action::CurrentDate { timestamp } => Ok(Change::Set(current_date(*timestamp))),
        Action::Push(spec) => push(current, spec, ctx),
        Action::AddToSet(values) => add_to_set(current, values, ctx),
        Action::Pop { first } => pop(current, *first, ctx),
        Action::Pull(condition) => pull(current, |item| pull_matches(condition, item)),
        Action::PullAll(values) => pull(current, |item| {
            values
                .iter()
                .any(|v| bsonorder::compare(v, item) == Ordering::Equal)
        }),
        Action::Rename { .. } => Ok(Change::Keep),
    }
}

fn arithmetic(
    operator: &str,
    current: Option<&Bson>,
    operand: Num,
    ctx: &ApplyCtx<'_>,
    combine: fn(Num, Num) -> Num,
    when_missing: Num,
) -> Result<Change> {
    let Some(current) = current else {
        return Ok(Change::Set(when_missing.to_bson()));
    };
    let Some(number) = Num::of(current) else {
        return Err(QueryError::TypeMismatch(format!(
            "Cannot apply {operator} to a value of non-numeric type. {} has the field '{}' of non-numeric type {}",
            ctx.id,
            ctx.path,
            type_name(current)
        )));
    };
    Ok(Change::Set(combine(number, operand).to_bson()))
}

fn min_max(current: Option<&Bson>, value: &Bson, wanted: Ordering) -> Change {
    match current {
        Some(current) if bsonorder::compare(value, current) != wanted => Change::Keep,
        _ => Change::Set(value.clone()),
    }
}

fn current_date(timestamp: bool) -> Bson {
    let now = shoal_common::determinism::now();
    if timestamp {
        let seconds = u32::try_from(now.timestamp_millis() / 1000).unwrap_or(u32::MAX);
        Bson::Timestamp(Timestamp {
            time: seconds,
            increment: 1,
        })
    } else {
        Bson::DateTime(now)
    }
}

fn existing_array(current: Option<&Bson>, operator: &str, ctx: &ApplyCtx<'_>) -> Result<Vec<Bson>> {
    match current {
        None => Ok(Vec::new()),
        Some(Bson::Array(items)) => Ok(items.clone()),
        Some(other) => Err(QueryError::bad_value(format!(
            "The field '{}' must be an array but is of type {} in document {} ({operator})",
            ctx.path,
            type_name(other),
            ctx.id
        ))),
    }
}

fn push(current: Option<&Bson>, spec: &PushSpec, ctx: &ApplyCtx<'_>) -> Result<Change> {
    let mut items = existing_array(current, "$push", ctx)?;
    let position = match spec.position {
        None => items.len(),
        Some(p) if p < 0 => items
            .len()
            .saturating_sub(usize::try_from(p.unsigned_abs()).unwrap_or(usize::MAX)),
        Some(p) => usize::try_from(p).unwrap_or(usize::MAX).min(items.len()),
    };
    let tail = items.split_off(position);
    items.extend(spec.each.iter().cloned());
    items.extend(tail);
    match &spec.sort {
        Some(PushSort::Whole { ascending }) => {
            items.sort_by(|a, b| {
                let order = bsonorder::compare(a, b);
                if *ascending { order } else { order.reverse() }
            });
        }
        Some(PushSort::Fields(sort)) => {
            let empty = Document::new();
            items.sort_by(|a, b| {
                let left = if let Bson::Document(d) = a { d } else { &empty };
                let right = if let Bson::Document(d) = b { d } else { &empty };
                sort.compare(left, right)
            });
        }
        None => {}
    }
    if let Some(slice) = spec.slice {
        items = crate::expr::slice_count(&items, slice);
    }
    Ok(Change::Set(Bson::Array(items)))
}

fn add_to_set(current: Option<&Bson>, values: &[Bson], ctx: &ApplyCtx<'_>) -> Result<Change> {
    let mut items = existing_array(current, "$addToSet", ctx)?;
    for value in values {
        if !items
            .iter()
            .any(|item| bsonorder::compare(item, value) == Ordering::Equal)
        {
            items.push(value.clone());
        }
    }
    Ok(Change::Set(Bson::Array(items)))
}

fn pop(current: Option<&Bson>, first: bool, ctx: &ApplyCtx<'_>) -> Result<Change> {
    match current {
        None => Ok(Change::Keep),
        Some(Bson::Array(items)) if items.is_empty() => Ok(Change::Keep),
        Some(Bson::Array(items)) => {
            let kept = if first {
                items[1..].to_vec()
            } else {
                items[..items.len() - 1].to_vec()
            };
            Ok(Change::Set(Bson::Array(kept)))
        }
        Some(other) => Err(QueryError::TypeMismatch(format!(
            "Path '{}' contains an element of non-array type '{}'",
            ctx.path,
            type_name(other)
        ))),
    }
}

fn pull(current: Option<&Bson>, remove: impl Fn(&Bson) -> bool) -> Result<Change> {
    match current {
        None => Ok(Change::Keep),
        Some(Bson::Array(items)) => Ok(Change::Set(Bson::Array(
            items.iter().filter(|i| !remove(i)).cloned().collect(),
        ))),
        Some(_) => Err(QueryError::bad_value(
            "Cannot apply $pull to a non-array value",
        )),
    }
}

fn pull_matches(condition: &PullCondition, item: &Bson) -> bool {
    match condition {
        PullCondition::Value(node) => node.matches_as_field(Some(item)),
        PullCondition::Query(filter) => matches!(item, Bson::Document(d) if filter.matches(d)),
    }
}

fn rename(doc: &mut Document, from: &[String], to: &[String]) -> Result<()> {
    let Some(value) = lookup_through_documents(doc, from, "source")? else {
        return Ok(());
    };
    lookup_through_documents(doc, to, "destination")?;
    modify(doc, from, false, &mut |_| Ok(Change::Remove))?;
    modify(doc, to, true, &mut |_| Ok(Change::Set(value.clone())))
}

/// A value reached through embedded documents only ($rename may not touch array elements).
fn lookup_through_documents(doc: &Document, parts: &[String], which: &str) -> Result<Option<Bson>> {
    let mut current = doc;
    for (depth, part) in parts.iter().enumerate() {
        match current.get(part) {
            None => return Ok(None),
            Some(Bson::Array(_)) if depth + 1 < parts.len() => {
                return Err(QueryError::bad_value(format!(
                    "The {which} field cannot be an array element, '{}' in doc with {} has an array field called '{part}'",
                    parts.join("."),
                    if doc.contains_key("_id") {
                        "_id"
                    } else {
                        "no _id"
                    },
                )));
            }
            Some(Bson::Document(inner)) if depth + 1 < parts.len() => current = inner,
            Some(_) if depth + 1 < parts.len() => return Ok(None),
            Some(value) => return Ok(Some(value.clone())),
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Field modification
// ---------------------------------------------------------------------------------------------

type Modifier<'a> = dyn FnMut(Option<&Bson>) -> Result<Change> + 'a;

/// Applies `change` to the field at `parts`. With `create`, missing intermediate documents are
/// created when the change sets a value; a scalar in the way is PathNotViable (28).
fn modify(
    doc: &mut Document,
    parts: &[String],
    create: bool,
    change: &mut Modifier<'_>,
) -> Result<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Ok(());
    };
    if rest.is_empty() {
        match change(doc.get(head))? {
            Change::Keep => {}
            Change::Set(value) => {
                doc.insert(head.clone(), value);
            }
            Change::Remove => {
                doc.remove(head);
            }
        }
        return Ok(());
    }
    match doc.get_mut(head) {
        Some(child) => modify_value(child, head, rest, create, change),
        None if create => {
            if let Change::Set(value) = change(None)? {
                doc.insert(head.clone(), nested(rest, value));
            }
            Ok(())
        }
        None => Ok(()),
    }
}

fn modify_value(
    value: &mut Bson,
    key: &str,
    parts: &[String],
    create: bool,
    change: &mut Modifier<'_>,
) -> Result<()> {
    match value {
        Bson::Document(inner) => modify(inner, parts, create, change),
        Bson::Array(items) => modify_array(items, key, parts, create, change),
        other if create => {
            if let Change::Set(_) = change(None)? {
                return Err(QueryError::PathNotViable(format!(
                    "Cannot create field '{}' in element {{{key}: {other}}}",
                    parts[0]
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn modify_array(
    items: &mut Vec<Bson>,
    key: &str,
    parts: &[String],
    create: bool,
    change: &mut Modifier<'_>,
) -> Result<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Ok(());
    };
    let Some(index) = array_index(head) else {
        if create && let Change::Set(_) = change(None)? {
            return Err(QueryError::PathNotViable(format!(
                "Cannot create field '{head}' in element {{{key}: {}}}",
                Bson::Array(items.clone())
            )));
        }
        return Ok(());
    };
    if index < items.len() {
        if !rest.is_empty() {
            return modify_value(&mut items[index], head, rest, create, change);
        }
        match change(items.get(index))? {
            Change::Keep => {}
            Change::Set(value) => items[index] = value,
            Change::Remove => items[index] = Bson::Null,
        }
        return Ok(());
    }
    if !create {
        return Ok(());
    }
    if let Change::Set(value) = change(None)? {
        if index - items.len() > ARRAY_PAD_ELEMENTS_MAX {
            return Err(QueryError::bad_value(format!(
                "can't backfill array to larger than {ARRAY_PAD_ELEMENTS_MAX} elements"
            )));
        }
        items.resize(index, Bson::Null);
        items.push(if rest.is_empty() {
            value
        } else {
            nested(rest, value)
        });
    }
    Ok(())
}

/// `{a: {b: value}}` for parts `["a", "b"]`.
fn nested(parts: &[String], value: Bson) -> Bson {
    parts.iter().rev().fold(value, |inner, part| {
        Bson::Document(bson::doc! {part.clone(): inner})
    })
}

// ---------------------------------------------------------------------------------------------
// Upsert seed
// ---------------------------------------------------------------------------------------------

fn equality_seed(filter: &Document) -> Result<Document> {
    let mut fields = Vec::new();
    collect_equalities(filter, &mut fields);
    fields.sort_by_key(|(path, _)| path.split('.').next() != Some("_id"));
    let mut seed = Document::new();
    for (field, value) in fields {
        let parts = path::split(&field);
        let mut duplicate = false;
        modify(&mut seed, &parts, true, &mut |current| {
            duplicate = current.is_some();
            Ok(Change::Set(value.clone()))
        })
        .map_err(|_| not_single_value(&field))?;
        if duplicate {
            return Err(not_single_value(&field));
        }
    }
    Ok(seed)
}

fn not_single_value(field: &str) -> QueryError {
    QueryError::bad_value(format!(
        "cannot infer query fields to set, path '{field}' is matched twice"
    ))
}

fn collect_equalities(filter: &Document, out: &mut Vec<(String, Bson)>) {
    for (key, value) in filter {
        if key == "$and" {
            if let Bson::Array(items) = value {
                for item in items {
                    if let Bson::Document(inner) = item {
                        collect_equalities(inner, out);
                    }
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
                if let Some(eq) = ops.get("$eq") {
                    out.push((key.clone(), eq.clone()));
                } else if let Some(Bson::Array(single)) = ops.get("$in")
                    && single.len() == 1
                    && !matches!(single[0], Bson::RegularExpression(_))
                {
                    out.push((key.clone(), single[0].clone()));
                }
            }
            Bson::RegularExpression(_) => {}
            other => out.push((key.clone(), other.clone())),
        }
    }
}

#[cfg(test)]
mod tests;
