//! `$lookup`: joins each input document with the documents of another collection of the same
//! database. The pipeline itself has no storage, so whoever runs it provides the other
//! collections through [`CollectionSource`]: the engine reads them locally, the router fetches
//! them from their shard before merging.
//!
//! Both MongoDB forms are supported: equality (`localField`/`foreignField`, with arrays matching
//! element-wise and a missing local field matching null or missing foreign fields, as in the
//! manual) and `pipeline` (run on the matched foreign documents, or on all of them when no
//! fields are given), with `let` variables. A `let` variable is a constant for each input
//! document, so it is evaluated there and substituted as a `$literal` into the sub-pipeline's
//! expressions (in `$match`, only under `$expr`, the one place MongoDB expands variables in a
//! query) before that pipeline is parsed for the document. An inner `$let`/`$map` variable of
//! the same name would be shadowed by the substitution; give inner variables other names.

use bson::{Bson, Document};

use crate::{
    Filter, Pipeline,
    error::{QueryError, Result},
    path,
};

/// Gives a running pipeline the documents of other collections of the same database.
pub trait CollectionSource {
    /// Every document of collection `coll` (empty when it does not exist).
    fn collection_documents(&self, coll: &str) -> Result<Vec<Document>>;
}

/// A parsed `$lookup` stage.
#[derive(Clone, Debug)]
pub(crate) struct Lookup {
    from: String,
    fields: Option<(String, String)>,
    as_field: String,
    pipeline: Option<Pipeline>,
    /// `let`: variable names with their expressions, and the raw sub-pipeline they are
    /// substituted into per input document.
    variables: Option<LetBinding>,
}

/// A `$lookup`'s `let` variables (names and expressions) and its raw sub-pipeline.
type LetBinding = (Vec<(String, crate::Expression)>, Vec<Bson>);

/// The most distinct documents' worth of sub-pipelines a `let` lookup parses per run: each input
/// document gets its own, so the bound keeps a huge input from parsing without end.
const LET_PIPELINES_MAX: usize = 1_000_000;

fn string_option(spec: &Document, name: &str) -> Result<Option<String>> {
    match spec.get(name) {
        None => Ok(None),
        Some(Bson::String(value)) => Ok(Some(value.clone())),
        Some(other) => Err(QueryError::FailedToParse(format!(
            "$lookup argument '{name}: {other}' must be a string"
        ))),
    }
}

impl Lookup {
    pub(crate) fn parse(argument: &Bson) -> Result<Lookup> {
        let Bson::Document(spec) = argument else {
            return Err(QueryError::FailedToParse(
                "the $lookup specification must be an object".to_owned(),
            ));
        };
        for key in spec.keys() {
            match key.as_str() {
                "from" | "localField" | "foreignField" | "as" | "pipeline" | "let" => {}
                other => {
                    return Err(QueryError::FailedToParse(format!(
                        "unknown argument to $lookup: {other}"
                    )));
                }
            }
        }
        let from = string_option(spec, "from")?.ok_or_else(|| {
            QueryError::FailedToParse("$lookup needs a 'from' collection".to_owned())
        })?;
        let as_field = string_option(spec, "as")?.ok_or_else(|| {
            QueryError::FailedToParse("must specify 'as' field for a $lookup".to_owned())
        })?;
        let fields = match (
            string_option(spec, "localField")?,
            string_option(spec, "foreignField")?,
        ) {
            (Some(local), Some(foreign)) => Some((local, foreign)),
            (None, None) => None,
            _ => {
                return Err(QueryError::FailedToParse(
                    "$lookup requires both or neither of 'localField' and 'foreignField'"
                        .to_owned(),
                ));
            }
        };
        let pipeline = match spec.get("pipeline") {
            None => None,
            // With `let`, the sub-pipeline only parses once variables are substituted.
            Some(Bson::Array(_)) if spec.contains_key("let") => None,
            Some(Bson::Array(stages)) => Some(Pipeline::parse(stages)?),
            Some(other) => {
                return Err(QueryError::FailedToParse(format!(
                    "'pipeline' option must be specified as an array, got {other}"
                )));
            }
        };
        let variables = match spec.get("let") {
            None => None,
            Some(Bson::Document(lets)) => {
                let Some(Bson::Array(stages)) = spec.get("pipeline") else {
                    return Err(QueryError::FailedToParse(
                        "$lookup with 'let' needs a 'pipeline'".to_owned(),
                    ));
                };
                let mut parsed = Vec::with_capacity(lets.len());
                for (name, expression) in lets {
                    check_variable_name(name)?;
                    parsed.push((name.clone(), crate::Expression::parse(expression)?));
                }
                Some((parsed, stages.clone()))
            }
            Some(other) => {
                return Err(QueryError::FailedToParse(format!(
                    "$lookup argument 'let: {other}' must be an object"
                )));
            }
        };
        if fields.is_none() && pipeline.is_none() && variables.is_none() {
            return Err(QueryError::FailedToParse(
                "$lookup requires either 'pipeline' or both 'localField' and 'foreignField'"
                    .to_owned(),
            ));
        }
        Ok(Lookup {
            from,
            fields,
            as_field,
            pipeline,
            variables,
        })
    }

    /// The collection this stage reads.
    pub(crate) fn from(&self) -> &str {
        &self.from
    }

    pub(crate) fn run(
        &self,
        docs: Vec<Document>,
        source: Option<&dyn CollectionSource>,
    ) -> Result<Vec<Document>> {
        let source = source.ok_or_else(|| {
            QueryError::bad_value("$lookup cannot run here: no access to other collections")
        })?;
        let foreign = source.collection_documents(&self.from)?;
        if let Some((variables, stages)) = &self.variables {
            return self.run_with_variables(docs, &foreign, variables, stages, source);
        }
        // Without join fields every input document joins the same documents: compute once.
        let uncorrelated = match (&self.fields, &self.pipeline) {
            (None, Some(pipeline)) => Some(pipeline.run_with_source(foreign.clone(), source)?),
            _ => None,
        };
        let mut out = Vec::with_capacity(docs.len());
        for mut doc in docs {
            let joined = match (&uncorrelated, &self.fields) {
                (Some(joined), _) => joined.clone(),
                (None, Some((local, foreign_field))) => {
                    let matched = matching(&doc, local, foreign_field, &foreign)?;
                    match &self.pipeline {
                        Some(pipeline) => pipeline.run_with_source(matched, source)?,
                        None => matched,
                    }
                }
                (None, None) => Vec::new(),
            };
            set_path(
                &mut doc,
                &self.as_field,
                Bson::Array(joined.into_iter().map(Bson::Document).collect()),
            );
            out.push(doc);
        }
        Ok(out)
    }
}

impl Lookup {
    /// The `let` form: per input document, bind the variables, substitute them into the
    /// sub-pipeline, and run it over the (field-matched, if fields are given) foreign documents.
    fn run_with_variables(
        &self,
        docs: Vec<Document>,
        foreign: &[Document],
        variables: &[(String, crate::Expression)],
        stages: &[Bson],
        source: &dyn CollectionSource,
    ) -> Result<Vec<Document>> {
        if docs.len() > LET_PIPELINES_MAX {
            return Err(QueryError::bad_value(format!(
                "$lookup with 'let' runs at most {LET_PIPELINES_MAX} sub-pipelines per batch"
            )));
        }
        let mut out = Vec::with_capacity(docs.len());
        for mut doc in docs {
            let mut values = Vec::with_capacity(variables.len());
            for (name, expression) in variables {
                values.push((name.as_str(), expression.evaluate(&doc)?));
            }
            let bound: Vec<Bson> = stages
                .iter()
                .map(|stage| substitute_stage(stage, &values))
                .collect();
            let pipeline = Pipeline::parse(&bound)?;
            let candidates = match &self.fields {
                Some((local, foreign_field)) => matching(&doc, local, foreign_field, foreign)?,
                None => foreign.to_vec(),
            };
            let joined = pipeline.run_with_source(candidates, source)?;
            set_path(
                &mut doc,
                &self.as_field,
                Bson::Array(joined.into_iter().map(Bson::Document).collect()),
            );
            out.push(doc);
        }
        Ok(out)
    }
}

/// `let` names follow MongoDB's rule: a lowercase letter or non-ASCII first, then letters,
/// digits and `_`.
fn check_variable_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || !c.is_ascii());
    if first_ok && chars.all(|c| c.is_alphanumeric() || c == '_') {
        return Ok(());
    }
    Err(QueryError::FailedToParse(format!(
        "'{name}' starts with an invalid character for a user variable name"
    )))
}

/// Substitutes variables in one stage: everywhere except in a `$match`, where only `$expr`
/// subtrees are expressions.
fn substitute_stage(stage: &Bson, values: &[(&str, Option<Bson>)]) -> Bson {
    let Bson::Document(spec) = stage else {
        return stage.clone();
    };
    match spec.get("$match") {
        Some(Bson::Document(filter)) => {
            Bson::Document(bson::doc! {"$match": substitute_match(filter, values)})
        }
        _ => substitute(stage, values),
    }
}

fn substitute_match(filter: &Document, values: &[(&str, Option<Bson>)]) -> Document {
    let mut out = Document::new();
    for (key, value) in filter {
        let value = match (key.as_str(), value) {
            ("$expr", expression) => substitute(expression, values),
            ("$and" | "$or" | "$nor", Bson::Array(clauses)) => Bson::Array(
                clauses
                    .iter()
                    .map(|clause| match clause {
                        Bson::Document(clause) => Bson::Document(substitute_match(clause, values)),
                        other => other.clone(),
                    })
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    out
}

/// Replaces `"$$name"` and `"$$name.path"` strings with the variable's value as a `$literal`
/// (`"$$REMOVE"` when it is missing), leaving `$literal` subtrees alone.
fn substitute(value: &Bson, values: &[(&str, Option<Bson>)]) -> Bson {
    match value {
        Bson::String(text) if text.starts_with("$$") => {
            let (name, rest) = match text[2..].split_once('.') {
                Some((name, rest)) => (name, Some(rest)),
                None => (&text[2..], None),
            };
            let Some((_, bound)) = values.iter().find(|(variable, _)| *variable == name) else {
                return value.clone();
            };
            let resolved = match (bound, rest) {
                (Some(Bson::Document(doc)), Some(rest)) => path::lookup(doc, rest).cloned(),
                (_, Some(_)) => None,
                (bound, None) => bound.clone(),
            };
            match resolved {
                Some(resolved) => Bson::Document(bson::doc! {"$literal": resolved}),
                None => Bson::String("$$REMOVE".to_owned()),
            }
        }
        Bson::Document(doc) if doc.contains_key("$literal") => value.clone(),
        Bson::Document(doc) => Bson::Document(
            doc.iter()
                .map(|(k, v)| (k.clone(), substitute(v, values)))
                .collect(),
        ),
        Bson::Array(items) => {
            Bson::Array(items.iter().map(|item| substitute(item, values)).collect())
        }
        other => other.clone(),
    }
}

/// The foreign documents whose `foreign_field` equals a value of `local` in `doc` (any element
/// on either side when they are arrays; a missing local field matches null and missing).
fn matching(
    doc: &Document,
    local: &str,
    foreign_field: &str,
    foreign: &[Document],
) -> Result<Vec<Document>> {
    let mut values = path::distinct_values(doc, local);
    if values.is_empty() {
        values.push(Bson::Null);
    }
    // Regexes in the local field are compared as values, not applied as patterns.
    let conditions: Vec<Bson> = values
        .into_iter()
        .map(|value| match value {
            Bson::RegularExpression(_) => {
                Bson::Document(bson::doc! {foreign_field: {"$eq": value}})
            }
            other => Bson::Document(bson::doc! {foreign_field: other}),
        })
        .collect();
    let filter = Filter::parse(&bson::doc! {"$or": conditions})?;
    Ok(foreign
        .iter()
        .filter(|candidate| filter.matches(candidate))
        .cloned()
        .collect())
}

/// Sets a dotted path, creating (or replacing non-document values with) embedded documents.
fn set_path(doc: &mut Document, dotted: &str, value: Bson) {
    match dotted.split_once('.') {
        None => {
            doc.insert(dotted, value);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(Bson::Document(inner)) = doc.get_mut(head) {
                set_path(inner, rest, value);
            }
        }
    }
}

/// The collections the `$lookup` stages of `stages` read, including those nested in `$facet`
/// and in `$lookup` pipelines; a router fetches them before running a merge.
pub fn lookup_collections(stages: &[Bson]) -> Vec<String> {
    let mut names = Vec::new();
    for stage in stages.iter().filter_map(Bson::as_document) {
        if let Ok(lookup) = stage.get_document("$lookup") {
            if let Ok(from) = lookup.get_str("from") {
                names.push(from.to_owned());
            }
            if let Ok(inner) = lookup.get_array("pipeline") {
                names.extend(lookup_collections(inner));
            }
        }
        if let Ok(facets) = stage.get_document("$facet") {
            for inner in facets.values().filter_map(Bson::as_array) {
                names.extend(lookup_collections(inner));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bson::doc;

    use super::*;

    struct Collections(HashMap<String, Vec<Document>>);

    impl CollectionSource for Collections {
        fn collection_documents(&self, coll: &str) -> Result<Vec<Document>> {
            Ok(self.0.get(coll).cloned().unwrap_or_default())
        }
    }

    fn inventory() -> Collections {
        // The manual's $lookup example (orders / inventory), plus a document without sku.
        let inventory = vec![
            doc! {"_id": 1, "sku": "almonds", "instock": 120},
            doc! {"_id": 2, "sku": "bread", "instock": 80},
            doc! {"_id": 3, "sku": "cashews", "instock": 60},
            doc! {"_id": 4, "sku": "pecans", "instock": 70},
            doc! {"_id": 5, "sku": Bson::Null},
            doc! {"_id": 6},
        ];
        Collections(HashMap::from([("inventory".to_owned(), inventory)]))
    }

    fn run(stages: Vec<Bson>, input: Vec<Document>) -> Result<Vec<Document>> {
        Pipeline::parse(&stages)?.run_with_source(input, &inventory())
    }

    #[test]
    fn equality_lookup_follows_the_manual_example() {
        let orders = vec![
            doc! {"_id": 1, "item": "almonds", "price": 12},
            doc! {"_id": 2, "item": "pecans", "price": 20},
            doc! {"_id": 3},
        ];
        let stage = doc! {"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "inventory_docs"}};
        let out = run(vec![Bson::Document(stage)], orders).unwrap();
        let ids = |doc: &Document| -> Vec<i32> {
            doc.get_array("inventory_docs")
                .unwrap()
                .iter()
                .map(|d| d.as_document().unwrap().get_i32("_id").unwrap())
                .collect()
        };
        assert_eq!(ids(&out[0]), vec![1]);
        assert_eq!(ids(&out[1]), vec![4]);
        // A missing local field matches null and missing foreign fields.
        assert_eq!(ids(&out[2]), vec![5, 6]);
    }

    #[test]
    fn arrays_match_elementwise_and_pipelines_refine() {
        let input = vec![doc! {"_id": 1, "items": ["bread", "cashews", "nope"]}];
        let stage = doc! {"$lookup": {
            "from": "inventory", "localField": "items", "foreignField": "sku", "as": "found",
            "pipeline": [{"$match": {"instock": {"$gt": 70}}}, {"$project": {"_id": 0, "sku": 1}}],
        }};
        let out = run(vec![Bson::Document(stage)], input).unwrap();
        assert_eq!(
            out[0].get_array("found").unwrap(),
            &vec![Bson::Document(doc! {"sku": "bread"})]
        );
    }

    #[test]
    fn let_variables_reach_the_sub_pipeline() {
        // The manual's "join conditions and subqueries" example, reduced.
        let stage = doc! {"$lookup": {
            "from": "inventory",
            "let": {"wanted": "$item", "minimum": "$min"},
            "pipeline": [
                {"$match": {"$expr": {"$and": [{"$eq": ["$sku", "$$wanted"]}, {"$gte": ["$instock", "$$minimum"]}]}}},
                {"$project": {"_id": 0, "instock": 1, "asked": "$$wanted"}},
            ],
            "as": "stock",
        }};
        let input = vec![
            doc! {"_id": 1, "item": "almonds", "min": 100},
            doc! {"_id": 2, "item": "pecans", "min": 100},
        ];
        let out = run(vec![Bson::Document(stage)], input).unwrap();
        assert_eq!(
            out[0].get_array("stock").unwrap(),
            &vec![Bson::Document(doc! {"instock": 120, "asked": "almonds"})]
        );
        assert!(out[1].get_array("stock").unwrap().is_empty());
        // Outside $expr a "$$name" string in $match is a plain value, as in MongoDB.
        let literal = doc! {"$lookup": {"from": "inventory", "let": {"wanted": "$item"}, "pipeline": [{"$match": {"sku": "$$wanted"}}], "as": "s"}};
        let out = run(
            vec![Bson::Document(literal)],
            vec![doc! {"_id": 1, "item": "almonds"}],
        )
        .unwrap();
        assert!(out[0].get_array("s").unwrap().is_empty());
    }

    #[test]
    fn uncorrelated_pipelines_and_errors() {
        let stage = doc! {"$lookup": {"from": "inventory", "pipeline": [{"$count": "n"}], "as": "stats.all"}};
        let out = run(vec![Bson::Document(stage)], vec![doc! {"_id": 1}]).unwrap();
        assert_eq!(out[0], doc! {"_id": 1, "stats": {"all": [{"n": 6}]}});
        for bad in [
            doc! {"$lookup": {"from": "inventory", "localField": "a", "as": "x"}},
            doc! {"$lookup": {"from": "inventory", "localField": "a", "foreignField": "b"}},
            doc! {"$lookup": {"localField": "a", "foreignField": "b", "as": "x"}},
            doc! {"$lookup": {"from": "inventory", "let": {"Bad": 1}, "pipeline": [], "as": "x"}},
            doc! {"$lookup": {"from": "inventory", "let": {"a": 1}, "as": "x"}},
        ] {
            assert!(
                Pipeline::parse(&[Bson::Document(bad.clone())]).is_err(),
                "{bad}"
            );
        }
        let plain = Pipeline::parse(&[Bson::Document(doc! {"$lookup": {"from": "inventory", "localField": "a", "foreignField": "b", "as": "x"}})]).unwrap();
        assert!(plain.run(vec![doc! {}]).is_err());
        let nested = vec![Bson::Document(
            doc! {"$facet": {"a": [{"$lookup": {"from": "x", "pipeline": [{"$lookup": {"from": "y", "pipeline": [], "as": "z"}}], "as": "q"}}]}},
        )];
        assert_eq!(
            lookup_collections(&nested),
            vec!["x".to_owned(), "y".to_owned()]
        );
    }
}
