//! Sort specifications (`{a: 1, "b.c": -1}`) and MongoDB's sort-key rule: a path reaching an
//! array sorts by its smallest element ascending and its largest descending, a missing field
//! sorts as null, and an empty array sorts just below null. Ties compare equal; callers use a
//! stable sort so that equal documents keep their input order.

use std::cmp::Ordering;

use bson::{Bson, Document};
use shoal_common::bsonorder;

use crate::error::{LocationCode, QueryError, Result};
use crate::expr::Num;
use crate::path;

/// One sort key.
#[derive(Clone, Debug, PartialEq)]
struct SortKey {
    path: String,
    parts: Vec<String>,
    ascending: bool,
}

/// A parsed sort specification.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SortSpec {
    keys: Vec<SortKey>,
}

impl SortSpec {
    /// Parses `{field: 1 | -1, ...}`; directions may be int, long or double. A number other
    /// than 1/-1 is MongoDB's 15975, a non-number 15974; `{$meta: ...}` keys need metadata
    /// (text scores) that no document here carries, so they fail as MongoDB does without it.
    pub fn parse(spec: &Document) -> Result<SortSpec> {
        let mut keys = Vec::with_capacity(spec.len());
        for (field, direction) in spec {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(QueryError::bad_value(format!(
                    "Invalid sort key: '{field}'"
                )));
            }
            keys.push(SortKey {
                path: field.clone(),
                parts: path::split(field),
                ascending: parse_direction(field, direction)?,
            });
        }
        Ok(SortSpec { keys })
    }

    /// Whether the spec has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The sort spec as a document again (`{a: 1, b: -1}`).
    pub fn to_document(&self) -> Document {
        let mut out = Document::new();
        for key in &self.keys {
            out.insert(key.path.clone(), if key.ascending { 1 } else { -1 });
        }
        out
    }

    /// The values `doc` sorts by, one per key; compare two with [`SortSpec::compare_keys`].
    /// Computing them once per document keeps sorting cheap.
    pub fn key(&self, doc: &Document) -> Vec<Bson> {
        self.keys.iter().map(|key| sort_value(doc, key)).collect()
    }

    /// Compares two keys produced by [`SortSpec::key`].
    pub fn compare_keys(&self, a: &[Bson], b: &[Bson]) -> Ordering {
        for ((key, left), right) in self.keys.iter().zip(a).zip(b) {
            let order = bsonorder::compare(left, right);
            let order = if key.ascending {
                order
            } else {
                order.reverse()
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }

    /// Compares two documents in this sort order.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        self.compare_keys(&self.key(a), &self.key(b))
    }

    /// Stable-sorts documents in place.
    pub fn sort(&self, docs: &mut Vec<Document>) {
        if self.is_empty() {
            return;
        }
        let mut keyed: Vec<(Vec<Bson>, Document)> =
            docs.drain(..).map(|d| (self.key(&d), d)).collect();
        keyed.sort_by(|(a, _), (b, _)| self.compare_keys(a, b));
        docs.extend(keyed.into_iter().map(|(_, d)| d));
    }
}

/// One key's direction, with MongoDB's error for each malformed kind.
fn parse_direction(field: &str, direction: &Bson) -> Result<bool> {
    if let Some(ascending) = sort_direction(direction) {
        return Ok(ascending);
    }
    match direction {
        Bson::Document(meta) => Err(meta_sort_error(meta)),
        other if Num::of(other).is_some() => Err(QueryError::location(
            LocationCode(15975),
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
        )),
        other => Err(QueryError::location(
            LocationCode(15974),
            format!("Illegal key in $sort specification: {field}: {other}"),
        )),
    }
}

/// `{$meta: ...}` sort keys: valid syntax, but the metadata they sort by is never available.
fn meta_sort_error(meta: &Document) -> QueryError {
    let Some((key, value)) = meta.iter().next() else {
        return QueryError::location(
            LocationCode(17312),
            "$meta is the only expression supported by $sort right now",
        );
    };
    if key != "$meta" {
        return QueryError::location(
            LocationCode(17312),
            "$meta is the only expression supported by $sort right now",
        );
    }
    if meta.len() > 1 {
        return QueryError::FailedToParse(
            "Cannot have additional keys in a $meta sort specification".to_owned(),
        );
    }
    match value {
        Bson::String(name) if name == "textScore" => QueryError::location(
            LocationCode(40218),
            "query requires text score metadata, but it is not available",
        ),
        Bson::String(name) => QueryError::location(
            LocationCode(17308),
            format!("Unsupported argument to $meta: {name}"),
        ),
        _ => QueryError::location(LocationCode(17307), "$meta only supports string arguments"),
    }
}

/// Reads a sort direction: 1 (ascending) or -1 (descending) as int, long or double.
pub(crate) fn sort_direction(value: &Bson) -> Option<bool> {
    match Num::of(value).map(Num::as_f64) {
        Some(1.0) => Some(true),
        Some(-1.0) => Some(false),
        _ => None,
    }
}

fn sort_value(doc: &Document, key: &SortKey) -> Bson {
    let values = path::sort_values(doc, &key.parts);
    let chosen = if key.ascending {
        values.into_iter().min_by(bsonorder::compare)
    } else {
        values.into_iter().max_by(bsonorder::compare)
    };
    chosen.unwrap_or(Bson::Null)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn sorted_ids(spec: Document, docs: Vec<Document>) -> Vec<i32> {
        let spec = SortSpec::parse(&spec).unwrap();
        let mut docs = docs;
        spec.sort(&mut docs);
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    }

    #[test]
    fn parse_accepts_numeric_directions_only() {
        assert!(SortSpec::parse(&doc! {"a": 1, "b": -1.0, "c": Bson::Int64(1)}).is_ok());
        for (bad, code) in [
            (doc! {"a": 2}, 15975),
            (doc! {"a": 0}, 15975),
            (doc! {"a": "asc"}, 15974),
            (doc! {"a": {"$meta": "textScore"}}, 40218),
            (doc! {"a": {"$meta": 1}}, 17307),
            (doc! {"a": {"$foo": 1}}, 17312),
            (doc! {"": 1}, 2),
        ] {
            let err = SortSpec::parse(&bad).unwrap_err();
            assert_eq!(err.code().0, code, "{bad}");
        }
        let message = SortSpec::parse(&doc! {"a": 2}).unwrap_err().to_string();
        assert_eq!(
            message,
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)"
        );
        assert!(SortSpec::parse(&doc! {}).unwrap().is_empty());
        assert_eq!(
            SortSpec::parse(&doc! {"a": 1.0, "b": -1})
                .unwrap()
                .to_document(),
            doc! {"a": 1, "b": -1}
        );
    }

    #[test]
    fn multiple_keys_and_mixed_types() {
        let docs = vec![
            doc! {"_id": 1, "a": 2, "b": 1},
            doc! {"_id": 2, "a": 1, "b": 5},
            doc! {"_id": 3, "a": 2, "b": 9},
            doc! {"_id": 4, "a": "x"},
            doc! {"_id": 5},
        ];
        assert_eq!(
            sorted_ids(doc! {"a": 1, "b": -1}, docs.clone()),
            vec![5, 2, 3, 1, 4]
        );
        assert_eq!(sorted_ids(doc! {"a": -1}, docs), vec![4, 1, 3, 2, 5]);
    }

    #[test]
    fn arrays_sort_by_min_ascending_and_max_descending() {
        let docs = vec![
            doc! {"_id": 1, "a": [5, 1]},
            doc! {"_id": 2, "a": 3},
            doc! {"_id": 3, "a": [2, 9]},
            doc! {"_id": 4, "a": []},
            doc! {"_id": 5, "a": null},
        ];
        assert_eq!(sorted_ids(doc! {"a": 1}, docs.clone()), vec![4, 5, 1, 3, 2]);
        assert_eq!(sorted_ids(doc! {"a": -1}, docs), vec![3, 1, 2, 5, 4]);
    }

    #[test]
    fn dotted_paths_and_ties_keep_input_order() {
        let docs = vec![
            doc! {"_id": 1, "a": {"b": 2}},
            doc! {"_id": 2, "a": [{"b": 1}, {"b": 7}]},
            doc! {"_id": 3, "a": {"b": 2}},
            doc! {"_id": 4, "a": {"c": 1}},
        ];
        assert_eq!(sorted_ids(doc! {"a.b": 1}, docs.clone()), vec![4, 2, 1, 3]);
        assert_eq!(sorted_ids(doc! {"a.b": -1}, docs), vec![2, 1, 3, 4]);
    }
}
