//! The query planner: picks the access path of a query (a collection scan, `_id` ranges, or a
//! secondary index's ranges) from the filter's top-level conditions and the requested sort.
//!
//! Correctness does not depend on the plan: the chosen ranges always include every document
//! the filter can match, and callers apply the full filter to each document fetched. Bounds are
//! therefore built only from conditions whose matches are sure to have an index key inside them
//! (equality and `$in` on values other than arrays and regexes, and type-bracketed ranges), and
//! ranges on the same field are intersected only for indexes that never saw an array (in a
//! multikey index, `{$gt: 1, $lt: 5}` may be met by two different elements).
//!
//! Choice: equality beats range beats sort-only; then more bounded leading fields, a unique
//! index fixed on every field, providing the sort, and fewer key fields. Hidden indexes are not
//! considered, sparse ones only when the bounds exclude null, partial ones only when the filter
//! implies their filter expression. `hint` forces an index (or `$natural`, a collection scan).

use std::{collections::BTreeMap, sync::Arc};

use bson::{Bson, Document, doc};
use shoal_common::CommandError;
use shoal_query::keycode;

use crate::{
    index::{IndexField, IndexSpec, encode_field, same_key},
    keys::{CollectionEntry, CollectionId, collection_prefix, collection_range, prefix_after},
    scan::{RangeScan, Target},
    sharding::ShardingState,
};

/// Most ranges one plan scans (the product of the `$in` lists of a compound key); beyond it
/// the remaining fields are left unbounded.
pub const PLAN_RANGES_MAX: usize = 4_096;

/// Key ranges `[start, end)`.
type KeyRanges = Vec<(Vec<u8>, Vec<u8>)>;

/// What the planner needs to know about a query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueryShape<'a> {
    /// The filter.
    pub filter: &'a Document,
    /// The requested sort, if any.
    pub sort: Option<&'a Document>,
    /// `hint`, if any.
    pub hint: Option<&'a Bson>,
}

impl<'a> QueryShape<'a> {
    /// A query with neither sort nor hint.
    pub fn filter(filter: &'a Document) -> QueryShape<'a> {
        QueryShape {
            filter,
            sort: None,
            hint: None,
        }
    }
}

/// The index a plan scans.
#[derive(Clone, Debug)]
pub(crate) struct PlanIndex {
    name: String,
    key: Document,
    unique: bool,
    sparse: bool,
    partial: bool,
    multikey: bool,
    /// `indexBounds` for explain.
    bounds: Document,
    /// Whether the ranges are document keys (`_id_`) rather than index entries.
    is_id: bool,
}

/// A chosen access path.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    coll: CollectionId,
    /// `None`: a collection scan.
    index: Option<PlanIndex>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    reverse: bool,
    /// Whether the scan yields documents in the requested sort order (always, with no sort).
    pub sorted: bool,
    /// The shard's ownership: scans skip orphans.
    owner: Option<Arc<ShardingState>>,
}

impl Plan {
    /// A fresh scan of the plan's ranges.
    pub fn scan(&self) -> RangeScan {
        let target = match &self.index {
            None => Target::Docs { counts_keys: false },
            Some(index) if index.is_id => Target::Docs { counts_keys: true },
            Some(index) => Target::Index {
                coll: self.coll,
                multikey: index.multikey,
            },
        };
        RangeScan::new(self.ranges.clone(), self.reverse, target).owned_by(self.owner.clone())
    }

    /// The index the plan scans, if any.
    #[cfg(test)]
    pub fn index_name(&self) -> Option<&str> {
        self.index.as_ref().map(|index| index.name.as_str())
    }

    /// `winningPlan` for explain.
    pub fn winning_plan(&self, filter: &Document) -> Document {
        let direction = if self.reverse { "backward" } else { "forward" };
        let Some(index) = &self.index else {
            return doc! {"stage": "COLLSCAN", "filter": filter.clone(), "direction": direction};
        };
        let scan = doc! {
            "stage": "IXSCAN",
            "keyPattern": index.key.clone(),
            "indexName": index.name.clone(),
            "isMultiKey": index.multikey,
            "isUnique": index.unique,
            "isSparse": index.sparse,
            "isPartial": index.partial,
            "direction": direction,
            "indexBounds": index.bounds.clone(),
        };
        let mut fetch = doc! {"stage": "FETCH"};
        if !filter.is_empty() {
            fetch.insert("filter", filter.clone());
        }
        fetch.insert("inputStage", scan);
        fetch
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// One condition on one field that bounds can be built from.
#[derive(Clone, Debug)]
enum Cond {
    Eq(Bson),
    In(Vec<Bson>),
    Cmp(Op, Bson),
}

/// The top-level `field: condition` pairs of a filter, with `$and` flattened: each must hold
/// for a document to match.
fn conjuncts(filter: &Document, out: &mut Vec<(String, Bson)>) {
    for (key, value) in filter {
        if key == "$and" {
            if let Bson::Array(items) = value {
                for item in items {
                    if let Bson::Document(inner) = item {
                        conjuncts(inner, out);
                    }
                }
            }
        } else if !key.starts_with('$') {
            out.push((key.clone(), value.clone()));
        }
    }
}

fn is_operator_document(value: &Bson) -> bool {
    matches!(value, Bson::Document(inner) if inner.keys().next().is_some_and(|k| k.starts_with('$')))
}

/// The usable conditions of one conjunct; with `strict`, `None` when some operator is not
/// understood (a partial filter must be understood whole to be implied).
fn conds_of(value: &Bson, strict: bool) -> Option<Vec<Cond>> {
    let Bson::Document(operators) = value else {
        return match value {
            Bson::RegularExpression(_) if strict => None,
            Bson::RegularExpression(_) => Some(Vec::new()),
            other => Some(vec![Cond::Eq(other.clone())]),
        };
    };
    if !is_operator_document(value) {
        return Some(vec![Cond::Eq(value.clone())]);
    }
    let mut out = Vec::new();
    for (operator, argument) in operators {
        let cond = match (operator.as_str(), argument) {
            ("$eq", argument) => Cond::Eq(argument.clone()),
            ("$in", Bson::Array(items)) => Cond::In(items.clone()),
            ("$gt", argument) => Cond::Cmp(Op::Gt, argument.clone()),
            ("$gte", argument) => Cond::Cmp(Op::Gte, argument.clone()),
            ("$lt", argument) => Cond::Cmp(Op::Lt, argument.clone()),
            ("$lte", argument) => Cond::Cmp(Op::Lte, argument.clone()),
            _ if strict => return None,
            _ => continue,
        };
        out.push(cond);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Bounds of one field, in keycode space (ascending encodings)

/// One end of an interval.
#[derive(Clone, Debug)]
enum Edge {
    /// A value's encoding.
    Value {
        code: Vec<u8>,
        inclusive: bool,
        value: Bson,
    },
    /// The edge of a type bracket: every value of the type whose encodings start with this
    /// byte (lower: from the smallest, upper: to the largest).
    Type(u8),
}

#[derive(Clone, Debug)]
struct Interval {
    lower: Edge,
    upper: Edge,
}

/// The first key at or above a lower edge.
fn lower_position(edge: &Edge) -> Vec<u8> {
    match edge {
        Edge::Value {
            code, inclusive, ..
        } => {
            if *inclusive {
                code.clone()
            } else {
                prefix_after(code)
            }
        }
        Edge::Type(tag) => vec![*tag],
    }
}

/// The first key above an upper edge.
fn upper_position(edge: &Edge) -> Vec<u8> {
    match edge {
        Edge::Value {
            code, inclusive, ..
        } => {
            if *inclusive {
                prefix_after(code)
            } else {
                code.clone()
            }
        }
        Edge::Type(tag) => vec![tag.saturating_add(1)],
    }
}

impl Interval {
    fn contains(&self, code: &[u8]) -> bool {
        lower_position(&self.lower).as_slice() <= code
            && code < upper_position(&self.upper).as_slice()
    }

    fn intersect(self, other: Interval) -> Interval {
        let lower = if lower_position(&other.lower) > lower_position(&self.lower) {
            other.lower
        } else {
            self.lower
        };
        let upper = if upper_position(&other.upper) < upper_position(&self.upper) {
            other.upper
        } else {
            self.upper
        };
        Interval { lower, upper }
    }

    fn within(&self, outer: &Interval) -> bool {
        lower_position(&self.lower) >= lower_position(&outer.lower)
            && upper_position(&self.upper) <= upper_position(&outer.upper)
    }
}

/// The values a field may take for a query to match.
#[derive(Clone, Debug)]
enum FieldBounds {
    /// These values (encoding -> value).
    Points(BTreeMap<Vec<u8>, Bson>),
    Range(Interval),
    All,
}

/// Point encodings for an equality on `value`; `None` when an index cannot bound it (an array
/// matches by whole-array equality, which element keys do not capture).
fn points(value: &Bson, out: &mut BTreeMap<Vec<u8>, Bson>) -> Option<()> {
    match value {
        Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined => None,
        // Null matches missing fields (indexed as null) and empty arrays' neighbour undefined.
        Bson::Null => {
            out.insert(keycode::encode_to_vec(&Bson::Null), Bson::Null);
            out.insert(keycode::encode_to_vec(&Bson::Undefined), Bson::Undefined);
            Some(())
        }
        other => {
            out.insert(keycode::encode_to_vec(other), other.clone());
            Some(())
        }
    }
}

/// Whether a range on `value` stays within `value`'s type (MongoDB's type bracketing).
fn range_operand(value: &Bson) -> bool {
    matches!(
        value,
        Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Double(_)
            | Bson::Decimal128(_)
            | Bson::String(_)
            | Bson::Symbol(_)
            | Bson::ObjectId(_)
            | Bson::DateTime(_)
            | Bson::Timestamp(_)
            | Bson::Boolean(_)
            | Bson::Binary(_)
    )
}

fn cond_bounds(cond: &Cond) -> Option<FieldBounds> {
    match cond {
        Cond::Eq(value) => {
            let mut out = BTreeMap::new();
            points(value, &mut out)?;
            Some(FieldBounds::Points(out))
        }
        Cond::In(values) => {
            let mut out = BTreeMap::new();
            for value in values {
                points(value, &mut out)?;
            }
            Some(FieldBounds::Points(out))
        }
        Cond::Cmp(op, value) => {
            if !range_operand(value) {
                return None;
            }
            let code = keycode::encode_to_vec(value);
            let tag = *code.first()?;
            let edge = |inclusive: bool| Edge::Value {
                code: code.clone(),
                inclusive,
                value: value.clone(),
            };
            let interval = match op {
                Op::Gt => Interval {
                    lower: edge(false),
                    upper: Edge::Type(tag),
                },
                Op::Gte => Interval {
                    lower: edge(true),
                    upper: Edge::Type(tag),
                },
                Op::Lt => Interval {
                    lower: Edge::Type(tag),
                    upper: edge(false),
                },
                Op::Lte => Interval {
                    lower: Edge::Type(tag),
                    upper: edge(true),
                },
            };
            Some(FieldBounds::Range(interval))
        }
    }
}

fn intersect(a: FieldBounds, b: FieldBounds) -> FieldBounds {
    match (a, b) {
        (FieldBounds::All, other) | (other, FieldBounds::All) => other,
        (FieldBounds::Points(mut p), FieldBounds::Points(q)) => {
            p.retain(|code, _| q.contains_key(code));
            FieldBounds::Points(p)
        }
        (FieldBounds::Points(mut p), FieldBounds::Range(r))
        | (FieldBounds::Range(r), FieldBounds::Points(mut p)) => {
            p.retain(|code, _| r.contains(code));
            FieldBounds::Points(p)
        }
        (FieldBounds::Range(r), FieldBounds::Range(s)) => FieldBounds::Range(r.intersect(s)),
    }
}

/// The bounds of one field under all of the query's conditions on it.
fn field_bounds(query: &[(String, Bson)], path: &str, multikey: bool) -> FieldBounds {
    let all: Vec<FieldBounds> = query
        .iter()
        .filter(|(field, _)| field == path)
        .filter_map(|(_, value)| conds_of(value, false))
        .flatten()
        .filter_map(|cond| cond_bounds(&cond))
        .collect();
    if multikey {
        // Each condition may be met by another element: use one of them only.
        let first_points = all
            .iter()
            .find(|b| matches!(b, FieldBounds::Points(_)))
            .cloned();
        return first_points
            .or_else(|| all.into_iter().next())
            .unwrap_or(FieldBounds::All);
    }
    all.into_iter().fold(FieldBounds::All, intersect)
}

fn excludes_null(bounds: &FieldBounds) -> bool {
    match bounds {
        FieldBounds::Points(points) => {
            !points.contains_key(&keycode::encode_to_vec(&Bson::Null))
                && !points.contains_key(&keycode::encode_to_vec(&Bson::Undefined))
        }
        FieldBounds::Range(_) => true,
        FieldBounds::All => false,
    }
}

fn subset(inner: &FieldBounds, outer: &FieldBounds) -> bool {
    match (inner, outer) {
        (_, FieldBounds::All) => true,
        (FieldBounds::Points(p), FieldBounds::Points(q)) => p.keys().all(|k| q.contains_key(k)),
        (FieldBounds::Points(p), FieldBounds::Range(r)) => p.keys().all(|k| r.contains(k)),
        (FieldBounds::Range(a), FieldBounds::Range(b)) => a.within(b),
        _ => false,
    }
}

/// Whether every document matching `query` matches the partial filter `partial`.
fn implies(query: &[(String, Bson)], partial: &Document) -> bool {
    let mut needed = Vec::new();
    conjuncts(partial, &mut needed);
    let has_other_operators = partial
        .keys()
        .any(|key| key.starts_with('$') && key != "$and");
    !has_other_operators
        && needed
            .iter()
            .all(|(field, cond)| implied(query, field, cond))
}

fn implied(query: &[(String, Bson)], field: &str, cond: &Bson) -> bool {
    if query.iter().any(|(f, c)| f == field && c == cond) {
        return true;
    }
    let query_bounds: Vec<FieldBounds> = query
        .iter()
        .filter(|(f, _)| f == field)
        .filter_map(|(_, value)| conds_of(value, false))
        .flatten()
        .filter_map(|cond| cond_bounds(&cond))
        .collect();
    if let Bson::Document(operators) = cond
        && operators.len() == 1
        && operators.get("$exists").is_some_and(truthy)
    {
        return query_bounds.iter().any(excludes_null);
    }
    let Some(conds) = conds_of(cond, true) else {
        return false;
    };
    let mut partial_bounds = FieldBounds::All;
    for cond in &conds {
        let Some(bounds) = cond_bounds(cond) else {
            return false;
        };
        partial_bounds = intersect(partial_bounds, bounds);
    }
    !conds.is_empty() && query_bounds.iter().any(|b| subset(b, &partial_bounds))
}

fn truthy(value: &Bson) -> bool {
    match value {
        Bson::Boolean(flag) => *flag,
        Bson::Int32(n) => *n != 0,
        Bson::Int64(n) => *n != 0,
        Bson::Double(n) => *n != 0.0,
        Bson::Null | Bson::Undefined => false,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Key ranges

/// The key range of `interval` on a field after `prefix`.
fn interval_keys(prefix: &[u8], interval: &Interval, descending: bool) -> (Vec<u8>, Vec<u8>) {
    let join = |tail: &[u8]| {
        let mut key = prefix.to_vec();
        key.extend_from_slice(tail);
        key
    };
    let invert = |code: &[u8]| code.iter().map(|b| !b).collect::<Vec<u8>>();
    if !descending {
        let start = match &interval.lower {
            Edge::Value {
                code, inclusive, ..
            } if *inclusive => join(code),
            Edge::Value { code, .. } => prefix_after(&join(code)),
            Edge::Type(tag) => join(&[*tag]),
        };
        let end = match &interval.upper {
            Edge::Value {
                code, inclusive, ..
            } if *inclusive => prefix_after(&join(code)),
            Edge::Value { code, .. } => join(code),
            Edge::Type(tag) => join(&[tag.saturating_add(1)]),
        };
        return (start, end);
    }
    // Inverted bytes: the value's upper edge is the key's lower edge and vice versa.
    let start = match &interval.upper {
        Edge::Value {
            code, inclusive, ..
        } if *inclusive => join(&invert(code)),
        Edge::Value { code, .. } => prefix_after(&join(&invert(code))),
        Edge::Type(tag) => join(&[!*tag]),
    };
    let end = match &interval.lower {
        Edge::Value {
            code, inclusive, ..
        } if *inclusive => prefix_after(&join(&invert(code))),
        Edge::Value { code, .. } => join(&invert(code)),
        Edge::Type(tag) => join(&[(!*tag).saturating_add(1)]),
    };
    (start, end)
}

/// The key ranges of an index under per-field bounds, ascending and disjoint, and the bounds
/// actually used (fields after the first range, or past the range budget, are unbounded).
fn key_ranges(
    prefix: &[u8],
    fields: &[IndexField],
    bounds: &[FieldBounds],
) -> (KeyRanges, Vec<FieldBounds>) {
    let mut prefixes = vec![prefix.to_vec()];
    let mut used = vec![FieldBounds::All; fields.len()];
    let mut ranges = None;
    for (position, (field, bounds)) in fields.iter().zip(bounds).enumerate() {
        match bounds {
            FieldBounds::Points(points)
                if prefixes.len().saturating_mul(points.len()) <= PLAN_RANGES_MAX =>
            {
                let mut next = Vec::with_capacity(prefixes.len() * points.len());
                for base in &prefixes {
                    for value in points.values() {
                        let mut key = base.clone();
                        encode_field(value, field.descending, &mut key);
                        next.push(key);
                    }
                }
                prefixes = next;
                used[position] = bounds.clone();
            }
            FieldBounds::Range(interval) => {
                used[position] = bounds.clone();
                ranges = Some(
                    prefixes
                        .iter()
                        .map(|base| interval_keys(base, interval, field.descending))
                        .collect::<Vec<_>>(),
                );
                break;
            }
            _ => break,
        }
    }
    let ranges = ranges.unwrap_or_else(|| {
        prefixes
            .iter()
            .map(|base| (base.clone(), prefix_after(base)))
            .collect()
    });
    (normalize(ranges), used)
}

/// Sorts ranges, drops empty ones and merges overlapping ones.
fn normalize(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges.retain(|(start, end)| start < end);
    ranges.sort();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Explain bounds

fn type_edge_text(tag: u8, upper: bool) -> String {
    let number = keycode::encode_to_vec(&Bson::Int32(0)).first().copied();
    let string = keycode::encode_to_vec(&Bson::String(String::new()))
        .first()
        .copied();
    match (Some(tag) == number, Some(tag) == string, upper) {
        (true, _, false) => "-inf.0".to_owned(),
        (true, _, true) => "inf.0".to_owned(),
        (_, true, false) => "\"\"".to_owned(),
        (_, true, true) => "{}".to_owned(),
        (_, _, false) => "MinKey".to_owned(),
        (_, _, true) => "MaxKey".to_owned(),
    }
}

fn edge_text(edge: &Edge, upper: bool) -> (String, bool) {
    match edge {
        Edge::Value {
            value, inclusive, ..
        } => (value.to_string(), *inclusive),
        Edge::Type(tag) => (type_edge_text(*tag, upper), !upper || *tag != string_tag()),
    }
}

fn string_tag() -> u8 {
    keycode::encode_to_vec(&Bson::String(String::new()))
        .first()
        .copied()
        .unwrap_or_default()
}

fn interval_text(low: (String, bool), high: (String, bool), reversed: bool) -> String {
    let ((low, low_in), (high, high_in)) = if reversed { (high, low) } else { (low, high) };
    format!(
        "{}{low}, {high}{}",
        if low_in { "[" } else { "(" },
        if high_in { "]" } else { ")" }
    )
}

fn bounds_text(bounds: &FieldBounds, reversed: bool) -> Vec<Bson> {
    let mut out: Vec<Bson> = match bounds {
        FieldBounds::All => vec![Bson::String(interval_text(
            ("MinKey".into(), true),
            ("MaxKey".into(), true),
            reversed,
        ))],
        FieldBounds::Points(points) => points
            .values()
            .map(|value| {
                let text = value.to_string();
                Bson::String(interval_text((text.clone(), true), (text, true), reversed))
            })
            .collect(),
        FieldBounds::Range(interval) => vec![Bson::String(interval_text(
            edge_text(&interval.lower, false),
            edge_text(&interval.upper, true),
            reversed,
        ))],
    };
    if reversed {
        out.reverse();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Choosing

/// An index the planner may use: `_id_` or a secondary index.
struct Candidate<'a> {
    spec: Option<&'a IndexSpec>,
    name: &'a str,
    fields: Vec<IndexField>,
    unique: bool,
    multikey: bool,
}

fn id_fields() -> Vec<IndexField> {
    vec![IndexField {
        path: "_id".into(),
        parts: vec!["_id".into()],
        descending: false,
    }]
}

/// A candidate's plan with its rank.
struct Scored {
    rank: (u8, usize, bool, bool, std::cmp::Reverse<usize>, bool),
    plan: Plan,
}

/// The sort fields as `(path, ascending)`, or `None` when the sort is not a plain key pattern.
fn sort_fields(sort: &Document) -> Option<Vec<(String, bool)>> {
    sort.iter()
        .map(|(path, direction)| {
            let ascending = match direction {
                Bson::Int32(n) => *n > 0,
                Bson::Int64(n) => *n > 0,
                Bson::Double(n) => *n > 0.0,
                _ => return None,
            };
            Some((path.clone(), ascending))
        })
        .collect()
}

/// Whether scanning `fields` under `used` yields the sort order: `Some(reverse)`.
fn sort_order(
    fields: &[IndexField],
    used: &[FieldBounds],
    sort: &[(String, bool)],
) -> Option<bool> {
    for skip in 0..=fields.len() {
        if skip > 0 && !matches!(&used[skip - 1], FieldBounds::Points(p) if p.len() == 1) {
            break;
        }
        let rest = &fields[skip..];
        if sort.len() > rest.len()
            || !sort
                .iter()
                .zip(rest)
                .all(|((path, _), field)| *path == field.path)
        {
            continue;
        }
        let pairs = || sort.iter().zip(rest);
        if pairs().all(|((_, asc), field)| *asc != field.descending) {
            return Some(false);
        }
        if pairs().all(|((_, asc), field)| *asc == field.descending) {
            return Some(true);
        }
    }
    None
}

fn score(
    entry: &CollectionEntry,
    candidate: &Candidate<'_>,
    query: &[(String, Bson)],
    sort: Option<&[(String, bool)]>,
    forced: bool,
) -> Option<Scored> {
    let bounds: Vec<FieldBounds> = candidate
        .fields
        .iter()
        .map(|field| field_bounds(query, &field.path, candidate.multikey))
        .collect();
    let prefix = match candidate.spec {
        Some(spec) => crate::index::index_prefix(entry.id, spec.id),
        None => collection_prefix(entry.id),
    };
    let (ranges, used) = key_ranges(&prefix, &candidate.fields, &bounds);
    if !forced && !usable(candidate.spec, &used, query) {
        return None;
    }
    let order = match sort {
        Some(sort) if !sort.is_empty() && !candidate.multikey => {
            sort_order(&candidate.fields, &used, sort)
        }
        _ => None,
    };
    let tier = match (&used[0], order) {
        (FieldBounds::Points(_), _) => 3,
        (FieldBounds::Range(_), _) => 2,
        (FieldBounds::All, Some(_)) => 1,
        (FieldBounds::All, None) => 0,
    };
    let bounded = used
        .iter()
        .take_while(|b| !matches!(b, FieldBounds::All))
        .count();
    let exact = candidate.unique && used.iter().all(|b| matches!(b, FieldBounds::Points(_)));
    let reverse = order.unwrap_or(false);
    let plan = Plan {
        coll: entry.id,
        index: Some(plan_index(candidate, &used, reverse)),
        ranges,
        reverse,
        sorted: sort.is_none_or(|sort| sort.is_empty()) || order.is_some(),
        owner: None,
    };
    Some(Scored {
        rank: (
            tier,
            bounded,
            exact,
            order.is_some(),
            std::cmp::Reverse(candidate.fields.len()),
            candidate.spec.is_none(),
        ),
        plan,
    })
}

/// Whether a sparse or partial index holds every document the query can match.
fn usable(spec: Option<&IndexSpec>, used: &[FieldBounds], query: &[(String, Bson)]) -> bool {
    let Some(spec) = spec else {
        return true;
    };
    if spec.sparse && !used.first().is_some_and(excludes_null) {
        return false;
    }
    spec.partial
        .as_ref()
        .is_none_or(|partial| implies(query, &partial.doc))
}

/// What explain reports about the scanned index.
fn plan_index(candidate: &Candidate<'_>, used: &[FieldBounds], reverse: bool) -> PlanIndex {
    let bounds = candidate
        .fields
        .iter()
        .zip(used)
        .map(|(field, b)| {
            (
                field.path.clone(),
                Bson::Array(bounds_text(b, field.descending != reverse)),
            )
        })
        .collect();
    PlanIndex {
        name: candidate.name.to_owned(),
        key: candidate
            .spec
            .map_or_else(|| doc! {"_id": 1}, |s| s.key.clone()),
        unique: candidate.unique,
        sparse: candidate.spec.is_some_and(|s| s.sparse),
        partial: candidate.spec.is_some_and(|s| s.partial.is_some()),
        multikey: candidate.multikey,
        bounds,
        is_id: candidate.spec.is_none(),
    }
}

fn collection_scan(entry: &CollectionEntry, reverse: bool, sort_empty: bool) -> Plan {
    let (start, end) = collection_range(entry.id);
    Plan {
        coll: entry.id,
        index: None,
        ranges: vec![(start, end)],
        reverse,
        sorted: sort_empty,
        owner: None,
    }
}

fn candidates(entry: &CollectionEntry) -> Vec<Candidate<'_>> {
    let mut out = vec![Candidate {
        spec: None,
        name: "_id_",
        fields: id_fields(),
        unique: true,
        multikey: false,
    }];
    for spec in &entry.indexes {
        out.push(Candidate {
            spec: Some(spec),
            name: &spec.name,
            fields: spec.fields.clone(),
            unique: spec.unique,
            multikey: spec.multikey,
        });
    }
    out
}

fn bad_hint() -> CommandError {
    CommandError::bad_value("hint provided does not correspond to an existing index")
}

/// The candidate `hint` names; `Ok(None)` for `$natural`.
fn hinted<'a>(
    entry: &'a CollectionEntry,
    hint: &Bson,
) -> Result<Option<Candidate<'a>>, CommandError> {
    let mut all = candidates(entry);
    let position = match hint {
        Bson::String(name) => all.iter().position(|c| c.name == name.as_str()),
        Bson::Document(key) if key.keys().next().map(String::as_str) == Some("$natural") => {
            return Ok(None);
        }
        Bson::Document(key) => all.iter().position(|c| match c.spec {
            Some(spec) => same_key(&spec.key, key),
            None => same_key(&doc! {"_id": 1}, key),
        }),
        _ => None,
    };
    match position {
        Some(position) if all[position].spec.is_none_or(|spec| !spec.hidden) => {
            Ok(Some(all.swap_remove(position)))
        }
        _ => Err(bad_hint()),
    }
}

/// Picks the access path for `shape` over `entry`'s collection. Its scans skip documents the
/// shard does not own when the collection is sharded.
pub(crate) fn choose(entry: &CollectionEntry, shape: QueryShape<'_>) -> Result<Plan, CommandError> {
    let mut plan = choose_path(entry, shape)?;
    plan.owner.clone_from(&entry.sharding);
    Ok(plan)
}

fn choose_path(entry: &CollectionEntry, shape: QueryShape<'_>) -> Result<Plan, CommandError> {
    let mut query = Vec::new();
    conjuncts(shape.filter, &mut query);
    // A sort that is not a plain key pattern cannot come from an index: an empty path never
    // names an index field, so such a sort stays unprovided.
    let sort = shape
        .sort
        .filter(|sort| !sort.is_empty())
        .map(|sort| sort_fields(sort).unwrap_or_else(|| vec![(String::new(), true)]));
    let sort_empty = shape.sort.is_none_or(Document::is_empty);
    if let Some(hint) = shape.hint {
        return match hinted(entry, hint)? {
            Some(candidate) => score(entry, &candidate, &query, sort.as_deref(), true)
                .map(|scored| scored.plan)
                .ok_or_else(bad_hint),
            None => {
                let reverse = matches!(hint, Bson::Document(d) if d.values().next().is_some_and(|v| matches!(v, Bson::Int32(n) if *n < 0)));
                Ok(collection_scan(entry, reverse, sort_empty))
            }
        };
    }
    let best = candidates(entry)
        .iter()
        .filter(|candidate| candidate.spec.is_none_or(|spec| !spec.hidden))
        .filter_map(|candidate| score(entry, candidate, &query, sort.as_deref(), false))
        .filter(|scored| scored.rank.0 > 0)
        .max_by(|a, b| a.rank.cmp(&b.rank));
    Ok(match best {
        Some(scored) => scored.plan,
        None => collection_scan(entry, false, sort_empty),
    })
}

#[cfg(test)]
mod tests {
    use bson::bson;

    use super::*;
    use crate::index::fields_of;

    fn entry(indexes: Vec<IndexSpec>) -> CollectionEntry {
        CollectionEntry {
            ns: "db.c".into(),
            uuid: shoal_common::CollectionUuid::random(),
            id: CollectionId(1),
            created: bson::DateTime::from_millis(0),
            indexes,
            next_index_id: 10,
            validation: crate::validation::Validation::default(),
            sharding: None,
        }
    }

    fn index(id: u64, key: Document) -> IndexSpec {
        IndexSpec {
            id,
            name: crate::index::default_name(&key),
            fields: fields_of(&key),
            key,
            unique: false,
            sparse: false,
            partial: None,
            hidden: false,
            multikey: false,
        }
    }

    fn chosen(entry: &CollectionEntry, filter: Document, sort: Document) -> Option<String> {
        let plan = choose(
            entry,
            QueryShape {
                filter: &filter,
                sort: Some(&sort),
                hint: None,
            },
        )
        .unwrap();
        plan.index_name().map(str::to_owned)
    }

    #[test]
    fn equality_beats_range_beats_sort() {
        let e = entry(vec![
            index(1, doc! {"a": 1}),
            index(2, doc! {"b": 1}),
            index(3, doc! {"c": 1}),
        ]);
        assert_eq!(
            chosen(&e, doc! {"a": {"$gt": 1}, "b": 2}, doc! {"c": 1}).as_deref(),
            Some("b_1")
        );
        assert_eq!(
            chosen(&e, doc! {"a": {"$gt": 1}}, doc! {"c": 1}).as_deref(),
            Some("a_1")
        );
        assert_eq!(
            chosen(&e, doc! {"z": 1}, doc! {"c": -1}).as_deref(),
            Some("c_1")
        );
        assert_eq!(chosen(&e, doc! {"z": 1}, doc! {}), None);
        assert_eq!(
            chosen(&e, doc! {"_id": 5, "a": 1}, doc! {}).as_deref(),
            Some("_id_")
        );
        assert_eq!(chosen(&e, doc! {"a": [1, 2]}, doc! {}), None);
        assert_eq!(chosen(&e, doc! {"$or": [{"a": 1}]}, doc! {}), None);
    }

    #[test]
    fn more_bounded_fields_then_fewer_key_fields_win() {
        let e = entry(vec![
            index(1, doc! {"a": 1, "b": 1}),
            index(2, doc! {"a": 1}),
            index(3, doc! {"a": 1, "c": 1}),
        ]);
        assert_eq!(
            chosen(&e, doc! {"a": 1, "b": 2}, doc! {}).as_deref(),
            Some("a_1_b_1")
        );
        assert_eq!(chosen(&e, doc! {"a": 1}, doc! {}).as_deref(), Some("a_1"));
        assert_eq!(
            chosen(&e, doc! {"a": 1}, doc! {"c": 1}).as_deref(),
            Some("a_1_c_1")
        );
    }

    #[test]
    fn sparse_partial_and_hidden_indexes_are_used_only_when_safe() {
        let mut sparse = index(1, doc! {"a": 1});
        sparse.sparse = true;
        let mut partial = index(2, doc! {"b": 1});
        let filter = doc! {"b": {"$gt": 5}};
        partial.partial = Some(crate::index::PartialFilter {
            filter: shoal_query::Filter::parse(&filter).unwrap(),
            doc: filter,
        });
        let mut hidden = index(3, doc! {"c": 1});
        hidden.hidden = true;
        let e = entry(vec![sparse, partial, hidden]);
        assert_eq!(chosen(&e, doc! {"a": 1}, doc! {}).as_deref(), Some("a_1"));
        assert_eq!(chosen(&e, doc! {"a": null}, doc! {}), None);
        assert_eq!(chosen(&e, doc! {}, doc! {"a": 1}), None);
        assert_eq!(chosen(&e, doc! {"b": 7}, doc! {}).as_deref(), Some("b_1"));
        assert_eq!(
            chosen(&e, doc! {"b": {"$gte": 6}}, doc! {}).as_deref(),
            Some("b_1")
        );
        assert_eq!(chosen(&e, doc! {"b": {"$gte": 5}}, doc! {}), None);
        assert_eq!(chosen(&e, doc! {"b": 3}, doc! {}), None);
        assert_eq!(chosen(&e, doc! {"c": 1}, doc! {}), None);
    }

    #[test]
    fn ranges_intersect_unless_multikey() {
        let mut multi = index(1, doc! {"a": 1});
        let e = entry(vec![multi.clone()]);
        let filter = doc! {"a": {"$gt": 5, "$lt": 3}};
        let plan = choose(&e, QueryShape::filter(&filter)).unwrap();
        assert!(plan.ranges.is_empty());
        multi.multikey = true;
        let e = entry(vec![multi]);
        let plan = choose(&e, QueryShape::filter(&filter)).unwrap();
        assert_eq!(plan.ranges.len(), 1);
    }

    #[test]
    fn descending_ranges_cover_the_right_keys() {
        for key in [doc! {"a": 1}, doc! {"a": -1}] {
            let spec = index(1, key);
            let e = entry(vec![spec.clone()]);
            for (filter, inside, outside) in [
                (doc! {"a": {"$gt": 5}}, bson!(6), bson!(5)),
                (doc! {"a": {"$gte": 5}}, bson!(5), bson!(4.5)),
                (doc! {"a": {"$lt": 5}}, bson!(-100), bson!(5)),
                (doc! {"a": {"$lte": 5, "$gt": 1}}, bson!(5), bson!(1)),
                (doc! {"a": {"$lte": "m"}}, bson!("a"), bson!(1)),
                (doc! {"a": {"$in": [2, "x"]}}, bson!("x"), bson!(3)),
            ] {
                let plan = choose(&e, QueryShape::filter(&filter)).unwrap();
                let key_of = |value: &Bson| {
                    let keys =
                        crate::index::document_keys(&spec, &doc! {"a": value.clone()}).unwrap();
                    let key = keys.keys.keys().next().unwrap().clone();
                    crate::index::entry_key(e.id, &spec, &key, &[7])
                };
                let hit = |value: &Bson| {
                    let key = key_of(value);
                    plan.ranges.iter().any(|(s, t)| *s <= key && key < *t)
                };
                assert!(hit(&inside), "{filter} {inside} {:?}", spec.key);
                assert!(!hit(&outside), "{filter} {outside} {:?}", spec.key);
            }
        }
    }

    #[test]
    fn sort_order_uses_equality_prefixes_and_direction() {
        let e = entry(vec![index(1, doc! {"a": 1, "b": -1})]);
        let plan = |filter: Document, sort: Document| {
            choose(
                &e,
                QueryShape {
                    filter: &filter,
                    sort: Some(&sort),
                    hint: None,
                },
            )
            .unwrap()
        };
        assert!(plan(doc! {"a": 1}, doc! {"b": -1}).sorted);
        assert!(plan(doc! {"a": 1}, doc! {"b": 1}).reverse);
        assert!(plan(doc! {}, doc! {"a": -1, "b": 1}).reverse);
        assert!(!plan(doc! {"a": {"$in": [1, 2]}}, doc! {"b": 1}).sorted);
        assert!(!plan(doc! {}, doc! {"a": 1, "b": 1}).sorted);
        let hinted = choose(
            &e,
            QueryShape {
                filter: &doc! {"a": 1},
                sort: None,
                hint: Some(&Bson::Document(doc! {"$natural": 1})),
            },
        )
        .unwrap();
        assert!(hinted.index_name().is_none());
    }
}
