//! Splitting a pipeline between shards and router.
//!
//! Invariant: for any partition of the input into ordered parts, running the shard half on each
//! part, concatenating the outputs in part order and running the router half equals running the
//! whole pipeline on the concatenated input. The cut keeps that true:
//! - leading per-document stages run on shards only (they look at one document at a time);
//! - `$sort` + `$skip`/`$limit` sends each shard `$sort` + `$limit skip+limit`, and the router
//!   repeats the sort (stable, so ties keep part order) and applies `$skip`/`$limit`;
//! - a leading `$skip`/`$limit` run does the same without the sort;
//! - a `$group` whose accumulators decompose runs as a partial group on shards and a merging
//!   group on the router, followed by a stage that finishes `$avg`, `$push` and `$addToSet`;
//!   groups keep first-arrival order, so the merged order matches the unsplit one;
//! - `$count` and `$sortByCount` are `$group`s and split the same way.
//!
//! Everything from the first stage that cannot be split onwards runs on the router.

use bson::{Bson, Document, bson, doc};

use super::group::{AccOp, parse_accumulator};
use crate::error::Result;
use crate::expr::Num;

/// Stages that transform one document at a time.
const PER_DOCUMENT_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$unwind",
    "$replaceRoot",
    "$replaceWith",
];

/// Prefix of the partial fields a split `$avg` adds; users cannot name fields with a leading `$`,
/// but they can use this prefix, so it is long and specific.
const PARTIAL_PREFIX: &str = "__shoal_partial_";

fn stage_name(stage: &Document) -> &str {
    stage.keys().next().map_or("", String::as_str)
}

pub(super) fn split(stages: &[Bson]) -> Result<(Vec<Document>, Vec<Document>)> {
    let docs: Vec<Document> = stages
        .iter()
        .filter_map(|s| match s {
            Bson::Document(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    let mut shard = Vec::new();
    let mut router = Vec::new();
    let mut next = 0;
    while next < docs.len() && PER_DOCUMENT_STAGES.contains(&stage_name(&docs[next])) {
        shard.push(docs[next].clone());
        next += 1;
    }
    if next < docs.len() {
        next += split_boundary(&docs[next..], &mut shard, &mut router)?;
    }
    router.extend(docs[next..].iter().cloned());
    Ok((shard, router))
}

/// Splits the stage(s) at the start of `rest`; returns how many stages it consumed.
fn split_boundary(
    rest: &[Document],
    shard: &mut Vec<Document>,
    router: &mut Vec<Document>,
) -> Result<usize> {
    let first = &rest[0];
    match stage_name(first) {
        "$sort" => {
            let Some((skip, limit, consumed)) = skip_limit_run(&rest[1..]) else {
                return Ok(0);
            };
            shard.push(first.clone());
            shard.push(doc! {"$limit": count_bson(skip.saturating_add(limit))});
            router.push(first.clone());
            push_skip_limit(router, skip, limit);
            Ok(1 + consumed)
        }
        "$skip" | "$limit" => {
            let Some((skip, limit, consumed)) = skip_limit_run(rest) else {
                return Ok(0);
            };
            shard.push(doc! {"$limit": count_bson(skip.saturating_add(limit))});
            push_skip_limit(router, skip, limit);
            Ok(consumed)
        }
        "$group" => {
            let Some(Bson::Document(spec)) = first.get("$group") else {
                return Ok(0);
            };
            Ok(usize::from(split_group(spec, shard, router)?))
        }
        "$count" => {
            let Some(Bson::String(field)) = first.get("$count") else {
                return Ok(0);
            };
            let partial = format!("{PARTIAL_PREFIX}count");
            shard.push(doc! {"$group": {"_id": null, partial.clone(): {"$sum": 1}}});
            router.push(
                doc! {"$group": {"_id": null, partial.clone(): {"$sum": format!("${partial}")}}},
            );
            router.push(doc! {"$project": {"_id": 0, field.clone(): format!("${partial}")}});
            Ok(1)
        }
        "$sortByCount" => {
            let Some(expression) = first.get("$sortByCount") else {
                return Ok(0);
            };
            shard.push(doc! {"$group": {"_id": expression.clone(), "count": {"$sum": 1}}});
            router.push(doc! {"$group": {"_id": "$_id", "count": {"$sum": "$count"}}});
            router.push(doc! {"$sort": {"count": -1}});
            Ok(1)
        }
        _ => Ok(0),
    }
}

fn count_bson(n: u64) -> Bson {
    i64::try_from(n).map_or(Bson::Int64(i64::MAX), Bson::Int64)
}

fn push_skip_limit(router: &mut Vec<Document>, skip: u64, limit: u64) {
    if skip > 0 {
        router.push(doc! {"$skip": count_bson(skip)});
    }
    router.push(doc! {"$limit": count_bson(limit)});
}

/// Folds a run of `$skip`/`$limit` stages into (skip, limit, stages consumed). `None` when the
/// run has no limit (nothing to push down) or limits to zero documents.
fn skip_limit_run(stages: &[Document]) -> Option<(u64, u64, usize)> {
    let mut skip: u64 = 0;
    let mut limit: Option<u64> = None;
    let mut consumed = 0;
    for stage in stages {
        let amount = |name: &str| {
            stage
                .get(name)
                .and_then(Num::of)
                .and_then(Num::as_whole)
                .and_then(|n| u64::try_from(n).ok())
        };
        match stage_name(stage) {
            "$skip" => {
                let n = amount("$skip")?;
                skip = skip.saturating_add(n);
                limit = limit.map(|l| l.saturating_sub(n));
            }
            "$limit" => {
                let n = amount("$limit")?;
                limit = Some(limit.map_or(n, |l| l.min(n)));
            }
            _ => break,
        }
        consumed += 1;
    }
    match limit {
        Some(limit) if limit > 0 => Some((skip, limit, consumed)),
        _ => None,
    }
}

/// The partial (shard) and merging (router) forms of one accumulator, and how to finish it.
struct Parts {
    partial: Vec<(String, Bson)>,
    merge: Vec<(String, Bson)>,
    finish: Option<Bson>,
}

fn field_ref(name: &str) -> String {
    format!("${name}")
}

fn decompose(name: &str, op: AccOp, argument: &Bson) -> Option<Parts> {
    let simple = |acc: &str, merge_acc: &str| Parts {
        partial: vec![(
            name.to_owned(),
            Bson::Document(doc! {acc: argument.clone()}),
        )],
        merge: vec![(
            name.to_owned(),
            Bson::Document(doc! {merge_acc: field_ref(name)}),
        )],
        finish: None,
    };
    match op {
        AccOp::Sum => Some(simple("$sum", "$sum")),
        AccOp::Min => Some(simple("$min", "$min")),
        AccOp::Max => Some(simple("$max", "$max")),
        AccOp::First => Some(simple("$first", "$first")),
        AccOp::Last => Some(simple("$last", "$last")),
        AccOp::Count => Some(Parts {
            partial: vec![(name.to_owned(), Bson::Document(doc! {"$sum": 1}))],
            merge: vec![(
                name.to_owned(),
                Bson::Document(doc! {"$sum": field_ref(name)}),
            )],
            finish: None,
        }),
        AccOp::Push => Some(list_parts(
            name,
            "$push",
            bson!({"$concatArrays": ["$$value", "$$this"]}),
            argument,
        )),
        // Appends each shard's values not seen yet, keeping first-seen order as `$addToSet`
        // does on one node (`$setUnion` would return the values sorted).
        AccOp::AddToSet => Some(list_parts(
            name,
            "$addToSet",
            bson!({"$reduce": {
                "input": "$$this",
                "initialValue": "$$value",
                "in": {"$cond": [
                    {"$in": ["$$this", "$$value"]},
                    "$$value",
                    {"$concatArrays": ["$$value", ["$$this"]]},
                ]},
            }}),
            argument,
        )),
        AccOp::Avg => Some(avg_parts(name, argument)),
        AccOp::MergeObjects | AccOp::StdDevPop | AccOp::StdDevSamp => None,
    }
}

/// `$push`/`$addToSet`: shards build lists, the router collects them and combines them in
/// shard order.
fn list_parts(name: &str, accumulator: &str, combine: Bson, argument: &Bson) -> Parts {
    Parts {
        partial: vec![(
            name.to_owned(),
            Bson::Document(doc! {accumulator: argument.clone()}),
        )],
        merge: vec![(
            name.to_owned(),
            Bson::Document(doc! {"$push": field_ref(name)}),
        )],
        finish: Some(Bson::Document(doc! {"$reduce": {
            "input": field_ref(name),
            "initialValue": [],
            "in": combine,
        }})),
    }
}

/// `$avg`: shards report the sum and the count of numeric values; the router divides.
fn avg_parts(name: &str, argument: &Bson) -> Parts {
    let sum = format!("{PARTIAL_PREFIX}sum_{name}");
    let count = format!("{PARTIAL_PREFIX}count_{name}");
    let is_number = doc! {"$cond": [{"$isNumber": [argument.clone()]}, 1, 0]};
    Parts {
        partial: vec![
            (sum.clone(), Bson::Document(doc! {"$sum": argument.clone()})),
            (count.clone(), Bson::Document(doc! {"$sum": is_number})),
        ],
        merge: vec![
            (sum.clone(), Bson::Document(doc! {"$sum": field_ref(&sum)})),
            (
                count.clone(),
                Bson::Document(doc! {"$sum": field_ref(&count)}),
            ),
        ],
        finish: Some(Bson::Document(doc! {"$cond": [
            {"$eq": [field_ref(&count), 0]},
            null,
            {"$divide": [field_ref(&sum), field_ref(&count)]},
        ]})),
    }
}

/// Splits a `$group`; returns false (and adds nothing) when an accumulator does not decompose.
fn split_group(
    spec: &Document,
    shard: &mut Vec<Document>,
    router: &mut Vec<Document>,
) -> Result<bool> {
    let id = spec.get("_id").cloned().unwrap_or(Bson::Null);
    let mut partial = doc! {"_id": id};
    let mut merge = doc! {"_id": "$_id"};
    let mut finish = doc! {"_id": "$_id"};
    let mut needs_finish = false;
    for (name, value) in spec {
        if name == "_id" {
            continue;
        }
        let (op, argument) = parse_accumulator(name, value)?;
        let Some(parts) = decompose(name, op, argument) else {
            return Ok(false);
        };
        partial.extend(parts.partial);
        merge.extend(parts.merge);
        match parts.finish {
            Some(expression) => {
                needs_finish = true;
                finish.insert(name.clone(), expression);
            }
            None => {
                finish.insert(name.clone(), field_ref(name));
            }
        }
    }
    shard.push(doc! {"$group": partial});
    router.push(doc! {"$group": merge});
    if needs_finish {
        router.push(doc! {"$replaceWith": finish});
    }
    Ok(true)
}
