//! Aggregation pipelines: stages parsed once, then run over an in-memory list of documents.
//! The shard runs the part of a pipeline it can run on its own documents and the router runs
//! the rest on the concatenated shard outputs; [`Pipeline::split_for_shards`] decides the cut so
//! that the two-step result equals running the whole pipeline on all documents.
//!
//! Stages hold their whole input in memory; callers bound the input size (a shard's batch, the
//! router's merge buffer).

use bson::{Bson, Document};
use rand::seq::SliceRandom;
use shoal_common::error::type_name;

use crate::error::{LocationCode, QueryError, Result};
use crate::expr::{Expression, Num};
use crate::filter::Filter;
use crate::projection::{AddFields, Projection};
use crate::sort::SortSpec;

mod group;
mod split;

use group::Group;

/// Stages an update pipeline may use.
const UPDATE_STAGES: &[&str] = &[
    "$addFields",
    "$set",
    "$project",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

/// Real MongoDB stages this crate does not run (they need other collections or the server).
const UNSUPPORTED_STAGES: &[&str] = &[
    "$graphLookup",
    "$unionWith",
    "$out",
    "$merge",
    "$geoNear",
    "$setWindowFields",
    "$densify",
    "$fill",
    "$redact",
    "$bucket",
    "$bucketAuto",
    "$collStats",
    "$indexStats",
    "$currentOp",
    "$listSessions",
    "$planCacheStats",
    "$search",
    "$changeStream",
    "$documents",
];

/// A parsed aggregation pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

#[derive(Clone, Debug)]
enum Stage {
    Match(Filter),
    Project(Projection),
    AddFields(AddFields),
    Group(Group),
    Sort(SortSpec),
    Skip(u64),
    Limit(u64),
    Count(String),
    Unwind(Unwind),
    ReplaceRoot(Expression),
    Facet(Vec<(String, Pipeline)>),
    Sample(usize),
    Lookup(crate::lookup::Lookup),
}

#[derive(Clone, Debug)]
struct Unwind {
    parts: Vec<String>,
    include_index: Option<Vec<String>>,
    preserve_null_and_empty: bool,
}

impl Pipeline {
    /// Parses a pipeline (an array of one-field stage documents).
    pub fn parse(stages: &[Bson]) -> Result<Pipeline> {
        let mut parsed = Vec::with_capacity(stages.len());
        for stage in stages {
            crate::nesting::check_value(stage)?;
            let (name, argument) = stage_parts(stage)?;
            parse_stage(name, argument, &mut parsed)?;
        }
        Ok(Pipeline { stages: parsed })
    }

    /// Parses the pipeline of a pipeline-style update, which allows only
    /// $addFields/$set/$project/$unset/$replaceRoot/$replaceWith (InvalidOptions 72 otherwise).
    pub fn parse_for_update(stages: &[Bson]) -> Result<Pipeline> {
        for stage in stages {
            let (name, _) = stage_parts(stage)?;
            if !UPDATE_STAGES.contains(&name) {
                return Err(QueryError::InvalidOptions(format!(
                    "{name} is not allowed to be used within an update"
                )));
            }
        }
        Pipeline::parse(stages)
    }

    /// Runs the pipeline over `input`, in order.
    pub fn run(&self, input: Vec<Document>) -> Result<Vec<Document>> {
        self.run_stages(input, None)
    }

    /// Runs the pipeline over `input`, reading other collections (for `$lookup`) from `source`.
    pub fn run_with_source(
        &self,
        input: Vec<Document>,
        source: &dyn crate::lookup::CollectionSource,
    ) -> Result<Vec<Document>> {
        self.run_stages(input, Some(source))
    }

    fn run_stages(
        &self,
        input: Vec<Document>,
        source: Option<&dyn crate::lookup::CollectionSource>,
    ) -> Result<Vec<Document>> {
        let mut docs = input;
        for stage in &self.stages {
            docs = run_stage(stage, docs, source)?;
        }
        Ok(docs)
    }

    /// The collections this pipeline's `$lookup` stages read.
    pub fn foreign_collections(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .stages
            .iter()
            .filter_map(|stage| match stage {
                Stage::Lookup(lookup) => Some(lookup.from().to_owned()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// For a sharded collection: (stages every shard runs, stages the router runs on the
    /// concatenated shard outputs); running the first on each part and then the second on the
    /// union must equal running the whole pipeline on all documents.
    pub fn split_for_shards(stages: &[Bson]) -> Result<(Vec<Document>, Vec<Document>)> {
        Pipeline::parse(stages)?;
        split::split(stages)
    }
}

fn stage_parts(stage: &Bson) -> Result<(&str, &Bson)> {
    let Bson::Document(spec) = stage else {
        return Err(QueryError::TypeMismatch(
            "Each element of the 'pipeline' array must be an object".to_owned(),
        ));
    };
    let mut entries = spec.iter();
    match (entries.next(), entries.next()) {
        (Some((name, argument)), None) => Ok((name.as_str(), argument)),
        _ => Err(QueryError::location(
            LocationCode::STAGE_ONE_FIELD,
            "A pipeline stage specification object must contain exactly one field.",
        )),
    }
}

fn parse_stage(name: &str, argument: &Bson, out: &mut Vec<Stage>) -> Result<()> {
    let stage = match name {
        "$match" => match argument {
            Bson::Document(filter) => Stage::Match(Filter::parse(filter)?),
            _ => {
                return Err(QueryError::location(
                    LocationCode::MATCH_STAGE,
                    "the match filter must be an expression in an object",
                ));
            }
        },
        "$project" => Stage::Project(Projection::parse_aggregation(document_arg(
            name, argument,
        )?)?),
        "$addFields" | "$set" => Stage::AddFields(AddFields::parse(document_arg(name, argument)?)?),
        "$unset" => Stage::Project(Projection::exclusion(&unset_fields(argument)?)?),
        "$group" => Stage::Group(Group::parse(argument)?),
        "$sort" => Stage::Sort(parse_sort_stage(argument)?),
        "$skip" => Stage::Skip(parse_count_arg(
            argument,
            true,
            LocationCode::SKIP,
            "invalid argument to $skip stage",
        )?),
        "$limit" => Stage::Limit(parse_count_arg(
            argument,
            false,
            LocationCode::LIMIT,
            "the limit must be positive",
        )?),
        "$count" => Stage::Count(parse_count_stage(argument)?),
        "$unwind" => Stage::Unwind(parse_unwind(argument)?),
        "$replaceRoot" => Stage::ReplaceRoot(parse_replace_root(argument)?),
        "$replaceWith" => Stage::ReplaceRoot(Expression::parse(argument)?),
        "$sortByCount" => {
            out.push(Stage::Group(Group::sort_by_count(argument)?));
            Stage::Sort(SortSpec::parse(&bson::doc! {"count": -1})?)
        }
        "$facet" => Stage::Facet(parse_facet(argument)?),
        "$sample" => Stage::Sample(parse_sample(argument)?),
        "$lookup" => Stage::Lookup(crate::lookup::Lookup::parse(argument)?),
        other if UNSUPPORTED_STAGES.contains(&other) => {
            return Err(QueryError::bad_value(format!(
                "{other} is not supported by this server"
            )));
        }
        other => {
            return Err(QueryError::location(
                LocationCode::UNKNOWN_STAGE,
                format!("Unrecognized pipeline stage name: '{other}'"),
            ));
        }
    };
    out.push(stage);
    Ok(())
}

fn document_arg<'a>(name: &str, argument: &'a Bson) -> Result<&'a Document> {
    match argument {
        Bson::Document(doc) => Ok(doc),
        other => Err(QueryError::location(
            LocationCode::PROJECT_STAGE,
            format!(
                "{name} specification must be an object, found {}",
                type_name(other)
            ),
        )),
    }
}

fn unset_fields(argument: &Bson) -> Result<Vec<String>> {
    match argument {
        Bson::String(field) => Ok(vec![field.clone()]),
        Bson::Array(items) if items.is_empty() => Err(QueryError::location(
            LocationCode(31119),
            "$unset specification must be a string or an array with at least one field",
        )),
        Bson::Array(items) => items
            .iter()
            .map(|item| match item {
                Bson::String(field) => Ok(field.clone()),
                _ => Err(QueryError::location(
                    LocationCode(31120),
                    "$unset specification must be a string or an array containing only string values",
                )),
            })
            .collect(),
        _ => Err(QueryError::location(LocationCode(31002), "$unset specification must be a string or an array")),
    }
}

fn parse_sort_stage(argument: &Bson) -> Result<SortSpec> {
    let Bson::Document(spec) = argument else {
        return Err(QueryError::location(
            LocationCode(15973),
            "the $sort key specification must be an object",
        ));
    };
    if spec.is_empty() {
        return Err(QueryError::location(
            LocationCode::SORT_STAGE,
            "$sort stage must have at least one sort key",
        ));
    }
    SortSpec::parse(spec)
}

fn parse_count_arg(
    argument: &Bson,
    zero_allowed: bool,
    code: LocationCode,
    message: &str,
) -> Result<u64> {
    let whole = Num::of(argument).and_then(Num::as_whole);
    match whole {
        Some(n) if n > 0 || (zero_allowed && n == 0) => Ok(u64::try_from(n).unwrap_or(0)),
        _ => Err(QueryError::location(code, format!("{message}: {argument}"))),
    }
}

fn parse_count_stage(argument: &Bson) -> Result<String> {
    let Bson::String(field) = argument else {
        return Err(QueryError::location(
            LocationCode::COUNT_STAGE,
            "the count field must be a non-empty string",
        ));
    };
    if field.is_empty() {
        return Err(QueryError::location(
            LocationCode::COUNT_STAGE,
            "the count field must be a non-empty string",
        ));
    }
    if field.starts_with('$') {
        return Err(QueryError::location(
            LocationCode(40158),
            "the count field cannot be a $-prefixed path",
        ));
    }
    if field.contains('.') {
        return Err(QueryError::location(
            LocationCode(40160),
            "the count field cannot contain '.'",
        ));
    }
    Ok(field.clone())
}

fn unwind_path(path: &str) -> Result<Vec<String>> {
    let Some(stripped) = path.strip_prefix('$') else {
        return Err(QueryError::location(
            LocationCode::UNWIND_PATH,
            format!("path option to $unwind stage should be prefixed with a '$': {path}"),
        ));
    };
    let parts: Vec<String> = stripped.split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty() || p.starts_with('$')) {
        return Err(QueryError::location(
            LocationCode::FIELD_PATH,
            format!("invalid $unwind path: {path}"),
        ));
    }
    Ok(parts)
}

fn parse_unwind(argument: &Bson) -> Result<Unwind> {
    let spec = match argument {
        Bson::String(path) => {
            return Ok(Unwind {
                parts: unwind_path(path)?,
                include_index: None,
                preserve_null_and_empty: false,
            });
        }
        Bson::Document(spec) => spec,
        other => {
            return Err(QueryError::location(
                LocationCode(15981),
                format!(
                    "expected either a string or an object as specification for $unwind stage, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut unwind = Unwind {
        parts: Vec::new(),
        include_index: None,
        preserve_null_and_empty: false,
    };
    for (key, value) in spec {
        match (key.as_str(), value) {
            ("path", Bson::String(path)) => unwind.parts = unwind_path(path)?,
            ("includeArrayIndex", Bson::String(field))
                if !field.is_empty() && !field.starts_with('$') =>
            {
                unwind.include_index = Some(field.split('.').map(str::to_owned).collect());
            }
            ("preserveNullAndEmptyArrays", Bson::Boolean(preserve)) => {
                unwind.preserve_null_and_empty = *preserve
            }
            _ => {
                return Err(QueryError::location(
                    LocationCode(28811),
                    format!("unrecognized or invalid option to $unwind stage: {key}: {value}"),
                ));
            }
        }
    }
    if unwind.parts.is_empty() {
        return Err(QueryError::location(
            LocationCode::UNWIND_STAGE,
            "no path specified to $unwind stage",
        ));
    }
    Ok(unwind)
}

fn parse_replace_root(argument: &Bson) -> Result<Expression> {
    let Bson::Document(spec) = argument else {
        return Err(QueryError::location(
            LocationCode(40229),
            "expected an object as specification for $replaceRoot stage",
        ));
    };
    for key in spec.keys() {
        if key != "newRoot" {
            return Err(QueryError::location(
                LocationCode(40230),
                format!("unrecognized option to $replaceRoot stage: {key}"),
            ));
        }
    }
    match spec.get("newRoot") {
        Some(root) => Expression::parse(root),
        None => Err(QueryError::location(
            LocationCode(40231),
            "no newRoot specified for the $replaceRoot stage",
        )),
    }
}

fn parse_facet(argument: &Bson) -> Result<Vec<(String, Pipeline)>> {
    let Bson::Document(spec) = argument else {
        return Err(QueryError::location(
            LocationCode::FACET_STAGE,
            "the $facet specification must be a non-empty object",
        ));
    };
    if spec.is_empty() {
        return Err(QueryError::location(
            LocationCode::FACET_STAGE,
            "the $facet specification must be a non-empty object",
        ));
    }
    let mut facets = Vec::with_capacity(spec.len());
    for (name, value) in spec {
        let Bson::Array(stages) = value else {
            return Err(QueryError::location(
                LocationCode(40170),
                format!(
                    "arguments to $facet must be arrays, {name} is type {}",
                    type_name(value)
                ),
            ));
        };
        for stage in stages {
            let (stage_name, _) = stage_parts(stage)?;
            if matches!(stage_name, "$facet" | "$out" | "$merge") {
                return Err(QueryError::location(
                    LocationCode(40600),
                    format!("{stage_name} is not allowed to be used within a $facet stage"),
                ));
            }
        }
        facets.push((name.clone(), Pipeline::parse(stages)?));
    }
    Ok(facets)
}

fn parse_sample(argument: &Bson) -> Result<usize> {
    let size = match argument {
        Bson::Document(spec) if spec.len() == 1 => spec.get("size"),
        _ => None,
    };
    let Some(size) = size else {
        return Err(QueryError::location(
            LocationCode::SAMPLE_STAGE,
            "$sample stage must specify a size",
        ));
    };
    match Num::of(size).and_then(Num::as_whole) {
        Some(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(_) => Err(QueryError::location(
            LocationCode(28747),
            "size argument to $sample must not be negative",
        )),
        None => Err(QueryError::location(
            LocationCode(28746),
            "size argument to $sample must be a number",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

fn run_stage(
    stage: &Stage,
    docs: Vec<Document>,
    source: Option<&dyn crate::lookup::CollectionSource>,
) -> Result<Vec<Document>> {
    match stage {
        Stage::Match(filter) => {
            let mut kept = Vec::with_capacity(docs.len());
            for doc in docs {
                if filter.try_matches(&doc)? {
                    kept.push(doc);
                }
            }
            Ok(kept)
        }
        Stage::Project(projection) => docs.iter().map(|doc| projection.apply(doc)).collect(),
        Stage::AddFields(fields) => docs.iter().map(|doc| fields.apply(doc)).collect(),
        Stage::Group(group) => group.run(&docs),
        Stage::Sort(spec) => {
            let mut docs = docs;
            spec.sort(&mut docs);
            Ok(docs)
        }
        Stage::Skip(n) => Ok(docs
            .into_iter()
            .skip(usize::try_from(*n).unwrap_or(usize::MAX))
            .collect()),
        Stage::Limit(n) => Ok(docs
            .into_iter()
            .take(usize::try_from(*n).unwrap_or(usize::MAX))
            .collect()),
        Stage::Count(field) => Ok(if docs.is_empty() {
            Vec::new()
        } else {
            let count = i32::try_from(docs.len())
                .map(Bson::Int32)
                .unwrap_or_else(|_| Bson::Int64(i64::try_from(docs.len()).unwrap_or(i64::MAX)));
            vec![bson::doc! {field.clone(): count}]
        }),
        Stage::Unwind(unwind) => Ok(docs.into_iter().flat_map(|doc| unwind.apply(doc)).collect()),
        Stage::ReplaceRoot(expression) => docs
            .iter()
            .map(|doc| replace_root(expression, doc))
            .collect(),
        Stage::Facet(facets) => {
            let mut out = Document::new();
            for (name, pipeline) in facets {
                let results = pipeline.run_stages(docs.clone(), source)?;
                out.insert(
                    name.clone(),
                    results.into_iter().map(Bson::Document).collect::<Vec<_>>(),
                );
            }
            Ok(vec![out])
        }
        Stage::Sample(size) => {
            let mut docs = docs;
            let mut rng = rand::rng();
            let amount = (*size).min(docs.len());
            let (chosen, _) = docs.partial_shuffle(&mut rng, amount);
            Ok(chosen.to_vec())
        }
        Stage::Lookup(lookup) => lookup.run(docs, source),
    }
}

fn replace_root(expression: &Expression, doc: &Document) -> Result<Document> {
    match expression.evaluate(doc)? {
        Some(Bson::Document(root)) => Ok(root),
        other => {
            let shown = other
                .as_ref()
                .map_or_else(|| "missing".to_owned(), ToString::to_string);
            Err(QueryError::location(
                LocationCode::REPLACE_ROOT,
                format!(
                    "'newRoot' expression must evaluate to an object, but resulting value was: {shown}. Type of resulting value: '{}'. Input document: {doc}",
                    crate::expr::type_label(&other)
                ),
            ))
        }
    }
}

impl Unwind {
    fn apply(&self, doc: Document) -> Vec<Document> {
        let value = lookup_documents(&doc, &self.parts).cloned();
        match value {
            Some(Bson::Array(items)) if !items.is_empty() => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    let mut out = doc.clone();
                    set_documents(&mut out, &self.parts, item);
                    self.set_index(
                        &mut out,
                        Bson::Int64(i64::try_from(index).unwrap_or(i64::MAX)),
                    );
                    out
                })
                .collect(),
            Some(Bson::Array(_)) | Some(Bson::Null) | None => {
                if !self.preserve_null_and_empty {
                    return Vec::new();
                }
                let mut out = doc;
                if matches!(value, Some(Bson::Array(_))) {
                    remove_documents(&mut out, &self.parts);
                }
                self.set_index(&mut out, Bson::Null);
                vec![out]
            }
            Some(_) => {
                let mut out = doc;
                self.set_index(&mut out, Bson::Null);
                vec![out]
            }
        }
    }

    fn set_index(&self, doc: &mut Document, index: Bson) {
        if let Some(parts) = &self.include_index {
            set_documents(doc, parts, index);
        }
    }
}

/// The value at `parts`, through embedded documents only.
fn lookup_documents<'a>(doc: &'a Document, parts: &[String]) -> Option<&'a Bson> {
    let (head, rest) = parts.split_first()?;
    let value = doc.get(head)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Bson::Document(inner) => lookup_documents(inner, rest),
        _ => None,
    }
}

/// Sets the value at `parts`, replacing non-documents in the way with documents.
fn set_documents(doc: &mut Document, parts: &[String], value: Bson) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.insert(head.clone(), value);
        return;
    }
    if !matches!(doc.get(head), Some(Bson::Document(_))) {
        doc.insert(head.clone(), Document::new());
    }
    if let Some(Bson::Document(inner)) = doc.get_mut(head) {
        set_documents(inner, rest, value);
    }
}

fn remove_documents(doc: &mut Document, parts: &[String]) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.remove(head);
        return;
    }
    if let Some(Bson::Document(inner)) = doc.get_mut(head) {
        remove_documents(inner, rest);
    }
}

#[cfg(test)]
mod tests;
