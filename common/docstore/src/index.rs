//! Secondary indexes: their catalog form, the keys a document produces, and keeping the
//! entries in step with every document write.
//!
//! Layout (docs space, next to the documents so one batch writes both): an entry's key is
//! `x<collection id: u64 BE><index id: u64 BE><key>` where `<key>` concatenates the keycode
//! encodings of the indexed values (bytes inverted for descending fields, so byte order is the
//! index order), followed by keycode(`_id`) for non-unique indexes so equal keys stay distinct.
//! The value is keycode(`_id`), which completes the document's key.
//!
//! Keys follow MongoDB's rules: a missing field indexes as null, an array at the end of a path
//! contributes one key per element (an empty array indexes as undefined), arrays in the middle
//! are walked element by element, and at most one array may feed a compound key (parallel arrays
//! are refused). The keys of a document are a superset of the values a query on the field can
//! compare against, which is what makes an index scan followed by the full filter exact.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_query::{Filter, keycode};

use crate::{
    keys::{CollectionEntry, CollectionId, catalog_key, collection_prefix, prefix_after},
    kv::Space,
    txn::{Reader, Txn},
    write::StmtError,
};

/// The tag byte of index entries in the docs space.
const INDEX_TAG: u8 = b'x';
/// Most indexes on one collection, `_id_` included (MongoDB's limit).
pub const INDEXES_PER_COLLECTION_MAX: usize = 64;
/// Most entries one document may add to one index: a compound key over two fields of the same
/// array of arrays multiplies out, and an unbounded product would exhaust memory.
pub const INDEX_KEYS_PER_DOCUMENT_MAX: usize = 200_000;

/// MongoDB's `CannotIndexParallelArrays`.
const CANNOT_INDEX_PARALLEL_ARRAYS: ErrorCode = ErrorCode(171);

/// An error whose code this crate's shared table does not name: the reply carries MongoDB's
/// `codeName` explicitly (extra fields overwrite the generated one).
pub(crate) fn named_error(code: i32, name: &str, errmsg: impl Into<String>) -> CommandError {
    let mut err = CommandError::new(ErrorCode(code), errmsg);
    err.extra.insert("codeName", name);
    err
}

/// One field of an index key pattern.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexField {
    /// The dotted path.
    pub path: String,
    /// Its components.
    pub parts: Vec<String>,
    /// Whether the field sorts descending (a negative value in the key pattern).
    pub descending: bool,
}

/// A partial index's filter, kept in both forms.
#[derive(Clone, Debug)]
pub(crate) struct PartialFilter {
    /// As the user gave it (listed, compared).
    pub doc: Document,
    /// Parsed, to test documents.
    pub filter: Filter,
}

impl PartialEq for PartialFilter {
    fn eq(&self, other: &PartialFilter) -> bool {
        self.doc == other.doc
    }
}

/// A secondary index as the catalog records it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexSpec {
    /// The key prefix of its entries (unique within the collection, never reused).
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The key pattern as given.
    pub key: Document,
    /// The key pattern, parsed.
    pub fields: Vec<IndexField>,
    /// Whether two documents may not share a key.
    pub unique: bool,
    /// Whether documents missing every key field are left out.
    pub sparse: bool,
    /// Only documents matching this filter are indexed.
    pub partial: Option<PartialFilter>,
    /// Kept up to date but not used by the planner.
    pub hidden: bool,
    /// Whether some document ever produced an array on a key path (never reset, as MongoDB).
    pub multikey: bool,
}

/// The fields of a validated key pattern.
pub(crate) fn fields_of(key: &Document) -> Vec<IndexField> {
    key.iter()
        .map(|(path, direction)| IndexField {
            path: path.clone(),
            parts: path.split('.').map(str::to_owned).collect(),
            descending: direction_is_descending(direction),
        })
        .collect()
}

fn direction_is_descending(direction: &Bson) -> bool {
    match direction {
        Bson::Int32(n) => *n < 0,
        Bson::Int64(n) => *n < 0,
        Bson::Double(n) => *n < 0.0,
        _ => false,
    }
}

/// Whether two key patterns are the same: same fields in order with equal values (`1` and
/// `1.0` are the same direction, as MongoDB compares them).
pub(crate) fn same_key(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((fa, va), (fb, vb))| {
            fa == fb && shoal_common::bsonorder::compare(va, vb).is_eq()
        })
}

/// The name MongoDB generates for a key pattern: `a_1_b_-1`.
pub(crate) fn default_name(key: &Document) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|(field, value)| match value {
            Bson::String(text) => format!("{field}_{text}"),
            Bson::Double(n) if n.fract() == 0.0 => format!("{field}_{}", *n as i64),
            other => format!("{field}_{other}"),
        })
        .collect();
    parts.join("_")
}

impl IndexSpec {
    /// The catalog form.
    pub fn to_record(&self) -> Document {
        let mut record = doc! {
            "id": i64::try_from(self.id).unwrap_or(i64::MAX),
            "name": self.name.clone(),
            "key": self.key.clone(),
            "unique": self.unique,
            "sparse": self.sparse,
            "hidden": self.hidden,
            "multikey": self.multikey,
        };
        if let Some(partial) = &self.partial {
            record.insert("partialFilterExpression", partial.doc.clone());
        }
        record
    }

    /// Reads the catalog form; the error says which field is wrong.
    pub fn from_record(record: &Document) -> Result<IndexSpec, String> {
        let id = record.get_i64("id").map_err(|_| "index id".to_owned())?;
        let name = record
            .get_str("name")
            .map_err(|_| "index name".to_owned())?;
        let key = record
            .get_document("key")
            .map_err(|_| "index key".to_owned())?;
        let flag = |field: &str| record.get_bool(field).unwrap_or(false);
        let partial = match record.get_document("partialFilterExpression") {
            Ok(doc) => {
                let filter = Filter::parse(doc).map_err(|err| format!("partial filter: {err}"))?;
                Some(PartialFilter {
                    doc: doc.clone(),
                    filter,
                })
            }
            Err(_) => None,
        };
        Ok(IndexSpec {
            id: u64::try_from(id).map_err(|_| "negative index id".to_owned())?,
            name: name.to_owned(),
            key: key.clone(),
            fields: fields_of(key),
            unique: flag("unique"),
            sparse: flag("sparse"),
            partial,
            hidden: flag("hidden"),
            multikey: flag("multikey"),
        })
    }

    /// The `listIndexes` form.
    pub fn list_entry(&self) -> Document {
        let mut entry = doc! {"v": 2, "key": self.key.clone(), "name": self.name.clone()};
        if self.unique {
            entry.insert("unique", true);
        }
        if self.sparse {
            entry.insert("sparse", true);
        }
        if let Some(partial) = &self.partial {
            entry.insert("partialFilterExpression", partial.doc.clone());
        }
        if self.hidden {
            entry.insert("hidden", true);
        }
        entry
    }

    /// Whether `other` asks for the same index (name aside): same key and options.
    pub fn same_definition(&self, other: &IndexSpec) -> bool {
        same_key(&self.key, &other.key)
            && self.unique == other.unique
            && self.sparse == other.sparse
            && self.partial == other.partial
    }
}

/// The prefix of every entry of index `index` of collection `coll`.
pub(crate) fn index_prefix(coll: CollectionId, index: u64) -> Vec<u8> {
    let mut key = collection_index_prefix(coll);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn collection_index_prefix(coll: CollectionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(INDEX_TAG);
    key.extend_from_slice(&coll.0.to_be_bytes());
    key
}

/// `[start, end)` covering every entry of one index.
pub(crate) fn index_range(coll: CollectionId, index: u64) -> (Vec<u8>, Vec<u8>) {
    let start = index_prefix(coll, index);
    let end = prefix_after(&start);
    (start, end)
}

/// `[start, end)` covering every index entry of a collection.
pub(crate) fn collection_indexes_range(coll: CollectionId) -> (Vec<u8>, Vec<u8>) {
    let start = collection_index_prefix(coll);
    let end = prefix_after(&start);
    (start, end)
}

/// The keys one document produces for one index.
#[derive(Debug, Default)]
pub(crate) struct DocKeys {
    /// Encoded key (without index prefix and `_id`) -> the values, for error messages.
    pub keys: BTreeMap<Vec<u8>, Vec<Bson>>,
    /// Whether an array was met on some key path.
    pub multikey: bool,
}

/// The values one path reaches, MongoDB style.
#[derive(Default)]
struct FieldValues {
    /// Encoded value -> value (equal values collapse).
    values: BTreeMap<Vec<u8>, Bson>,
    /// Whether the path reached some value (sparse indexes skip documents where none does).
    present: bool,
    /// How many components lead to the shallowest array met, if any.
    array_depth: Option<usize>,
}

impl FieldValues {
    fn push(&mut self, value: Bson) {
        self.values
            .entry(keycode::encode_to_vec(&value))
            .or_insert(value);
    }

    fn note_array(&mut self, depth: usize) {
        self.array_depth = Some(self.array_depth.map_or(depth, |d| d.min(depth)));
    }
}

/// Walks `parts` from `value` (reached after `depth` components); see the module doc.
fn collect(value: Option<&Bson>, parts: &[String], depth: usize, out: &mut FieldValues) {
    let Some((head, rest)) = parts.split_first() else {
        match value {
            None => out.push(Bson::Null),
            Some(Bson::Array(items)) => {
                out.present = true;
                out.note_array(depth);
                if items.is_empty() {
                    out.push(Bson::Undefined);
                }
                for item in items {
                    out.push(item.clone());
                }
            }
            Some(other) => {
                out.present = true;
                out.push(other.clone());
            }
        }
        return;
    };
    match value {
        Some(Bson::Document(inner)) => collect(inner.get(head), rest, depth + 1, out),
        Some(Bson::Array(items)) => {
            out.note_array(depth);
            let mut reached = false;
            if let Some(index) = array_position(head) {
                reached = true;
                collect(items.get(index), rest, depth + 1, out);
            }
            for item in items {
                if let Bson::Document(inner) = item {
                    reached = true;
                    collect(inner.get(head), rest, depth + 1, out);
                }
            }
            if !reached {
                out.push(Bson::Null);
            }
        }
        _ => out.push(Bson::Null),
    }
}

/// A path component read as an array position (plain decimal digits, as queries read them).
fn array_position(component: &str) -> Option<usize> {
    let canonical = !component.is_empty()
        && component.bytes().all(|b| b.is_ascii_digit())
        && (component.len() == 1 || !component.starts_with('0'));
    if canonical {
        component.parse().ok()
    } else {
        None
    }
}

fn field_values(document: &Document, field: &IndexField) -> FieldValues {
    let mut out = FieldValues::default();
    if let Some((head, rest)) = field.parts.split_first() {
        collect(document.get(head), rest, 1, &mut out);
    }
    out
}

/// Appends `value`'s encoding for an index field.
pub(crate) fn encode_field(value: &Bson, descending: bool, out: &mut Vec<u8>) {
    let start = out.len();
    keycode::encode(value, out);
    if descending {
        for byte in &mut out[start..] {
            *byte = !*byte;
        }
    }
}

/// The keys `document` produces for `index` (none when sparse or partial leave it out).
pub(crate) fn document_keys(
    index: &IndexSpec,
    document: &Document,
) -> Result<DocKeys, CommandError> {
    if let Some(partial) = &index.partial
        && !partial.filter.matches(document)
    {
        return Ok(DocKeys::default());
    }
    let per_field: Vec<FieldValues> = index
        .fields
        .iter()
        .map(|field| field_values(document, field))
        .collect();
    if index.sparse && !per_field.iter().any(|values| values.present) {
        return Ok(DocKeys::default());
    }
    check_parallel_arrays(index, &per_field)?;
    let mut combos: Vec<(Vec<u8>, Vec<Bson>)> = vec![(Vec::new(), Vec::new())];
    for (field, values) in index.fields.iter().zip(&per_field) {
        if combos.len().saturating_mul(values.values.len()) > INDEX_KEYS_PER_DOCUMENT_MAX {
            return Err(CommandError::bad_value(format!(
                "a document would add more than {INDEX_KEYS_PER_DOCUMENT_MAX} keys to index {}",
                index.name
            )));
        }
        let mut next = Vec::with_capacity(combos.len() * values.values.len());
        for (bytes, combo) in &combos {
            for value in values.values.values() {
                let mut key = bytes.clone();
                encode_field(value, field.descending, &mut key);
                let mut with = combo.clone();
                with.push(value.clone());
                next.push((key, with));
            }
        }
        combos = next;
    }
    Ok(DocKeys {
        keys: combos.into_iter().collect(),
        multikey: per_field.iter().any(|values| values.array_depth.is_some()),
    })
}

/// At most one array may feed a compound key: fields whose arrays are the same array (same
/// path to it) are fine, different arrays are MongoDB's parallel arrays.
fn check_parallel_arrays(index: &IndexSpec, per_field: &[FieldValues]) -> Result<(), CommandError> {
    let mut first: Option<(&IndexField, &[String])> = None;
    for (field, values) in index.fields.iter().zip(per_field) {
        let Some(depth) = values.array_depth else {
            continue;
        };
        let array_path = &field.parts[..depth.min(field.parts.len())];
        match first {
            None => first = Some((field, array_path)),
            Some((other, other_path)) if other_path != array_path => {
                return Err(named_error(
                    CANNOT_INDEX_PARALLEL_ARRAYS.0,
                    "CannotIndexParallelArrays",
                    format!(
                        "cannot index parallel arrays [{}] [{}]",
                        field.path, other.path
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// DuplicateKey for `index`, with the fields drivers read.
pub(crate) fn duplicate_key(ns: &str, index: &IndexSpec, values: &[Bson]) -> CommandError {
    let mut key_value = Document::new();
    let mut shown = Vec::new();
    for (field, value) in index.fields.iter().zip(values) {
        key_value.insert(field.path.clone(), value.clone());
        shown.push(format!("{}: {value}", field.path));
    }
    let mut err = CommandError::new(
        ErrorCode::DUPLICATE_KEY,
        format!(
            "E11000 duplicate key error collection: {ns} index: {} dup key: {{ {} }}",
            index.name,
            shown.join(", ")
        ),
    );
    err.extra = doc! {"keyPattern": index.key.clone(), "keyValue": key_value};
    err
}

/// The full storage key of an entry.
pub(crate) fn entry_key(
    coll: CollectionId,
    index: &IndexSpec,
    key: &[u8],
    id_code: &[u8],
) -> Vec<u8> {
    let mut full = index_prefix(coll, index.id);
    full.extend_from_slice(key);
    if !index.unique {
        full.extend_from_slice(id_code);
    }
    full
}

/// The keycode(`_id`) part of a document key.
pub(crate) fn id_code(coll: CollectionId, doc_key: &[u8]) -> Vec<u8> {
    doc_key
        .get(collection_prefix(coll).len()..)
        .unwrap_or_default()
        .to_vec()
}

/// The entry changes one document write makes to one index.
struct IndexChange {
    remove: Vec<Vec<u8>>,
    add: Vec<Vec<u8>>,
    became_multikey: bool,
}

/// Computes (and checks, for unique indexes) the entry changes of replacing `old` by `new`.
fn index_change(
    reader: &dyn Reader,
    entry: &CollectionEntry,
    index: &IndexSpec,
    id_code: &[u8],
    old: Option<&Document>,
    new: Option<&Document>,
) -> Result<IndexChange, StmtError> {
    let old_keys = match old {
        // A stored document produced keys when it was written; if it cannot now, its
        // entries cannot exist either.
        Some(old) => document_keys(index, old).unwrap_or_default(),
        None => DocKeys::default(),
    };
    let new_keys = match new {
        Some(new) => document_keys(index, new)?,
        None => DocKeys::default(),
    };
    let mut change = IndexChange {
        remove: Vec::new(),
        add: Vec::new(),
        became_multikey: new_keys.multikey && !index.multikey,
    };
    for key in old_keys.keys.keys() {
        if !new_keys.keys.contains_key(key) {
            change.remove.push(entry_key(entry.id, index, key, id_code));
        }
    }
    for (key, values) in &new_keys.keys {
        if old_keys.keys.contains_key(key) {
            continue;
        }
        let full = entry_key(entry.id, index, key, id_code);
        if index.unique
            && let Some(owner) = reader.get(Space::Docs, &full)?
            && owner != id_code
        {
            return Err(StmtError::Write(duplicate_key(&entry.ns, index, values)));
        }
        change.add.push(full);
    }
    Ok(change)
}

/// Stages a document write (insert when `old` is `None`, else replacement of `old`) with its
/// index entries, after schema validation. Every index is checked before anything is staged, so a DuplicateKey stages
/// nothing. Marks indexes multikey in the catalog entry (and stages it) when needed.
pub(crate) fn stage_document(
    txn: &mut Txn<'_>,
    entry: &mut CollectionEntry,
    doc_key: Vec<u8>,
    old: Option<&Document>,
    new: &Document,
    bytes: Vec<u8>,
) -> Result<(), StmtError> {
    entry.validation.check(old, new)?;
    check_ownership(txn, entry, new)?;
    let id_code = id_code(entry.id, &doc_key);
    let mut changes = Vec::with_capacity(entry.indexes.len());
    for index in &entry.indexes {
        changes.push(index_change(txn, entry, index, &id_code, old, Some(new))?);
    }
    apply_changes(txn, entry, changes, &id_code);
    txn.put_doc(entry.id, doc_key, bytes)?;
    Ok(())
}

/// Refuses to write a document this shard does not own, or one under a migration's critical
/// section (StaleConfig: the router re-targets the statement).
fn check_ownership(
    txn: &Txn<'_>,
    entry: &CollectionEntry,
    document: &Document,
) -> Result<(), StmtError> {
    match &entry.sharding {
        Some(sharding) if txn.ownership_checks => sharding
            .check_write(&entry.ns, document)
            .map_err(StmtError::Write),
        _ => Ok(()),
    }
}

/// Stages the removal of a document and its index entries.
pub(crate) fn unstage_document(
    txn: &mut Txn<'_>,
    entry: &mut CollectionEntry,
    doc_key: Vec<u8>,
    old: &Document,
) -> Result<(), StmtError> {
    check_ownership(txn, entry, old)?;
    let id_code = id_code(entry.id, &doc_key);
    let mut changes = Vec::with_capacity(entry.indexes.len());
    for index in &entry.indexes {
        changes.push(index_change(txn, entry, index, &id_code, Some(old), None)?);
    }
    apply_changes(txn, entry, changes, &id_code);
    txn.delete_doc(entry.id, doc_key)?;
    Ok(())
}

fn apply_changes(
    txn: &mut Txn<'_>,
    entry: &mut CollectionEntry,
    changes: Vec<IndexChange>,
    id_code: &[u8],
) {
    let mut catalog_changed = false;
    for (index, change) in entry.indexes.iter_mut().zip(changes) {
        for key in change.remove {
            txn.delete(Space::Docs, key);
        }
        for key in change.add {
            txn.put(Space::Docs, key, id_code.to_vec());
        }
        if change.became_multikey {
            index.multikey = true;
            catalog_changed = true;
        }
    }
    if catalog_changed {
        txn.put(Space::Catalog, catalog_key(&entry.ns), entry.encode());
    }
}

#[cfg(test)]
mod tests {
    use bson::bson;

    use super::*;

    fn spec(key: Document) -> IndexSpec {
        IndexSpec {
            id: 1,
            name: default_name(&key),
            fields: fields_of(&key),
            key,
            unique: false,
            sparse: false,
            partial: None,
            hidden: false,
            multikey: false,
        }
    }

    fn values(index: &IndexSpec, document: Document) -> Vec<Vec<Bson>> {
        document_keys(index, &document)
            .unwrap()
            .keys
            .into_values()
            .collect()
    }

    #[test]
    fn keys_follow_mongodb_rules() {
        let a = spec(doc! {"a": 1});
        assert_eq!(values(&a, doc! {}), vec![vec![Bson::Null]]);
        assert_eq!(values(&a, doc! {"a": []}), vec![vec![Bson::Undefined]]);
        assert_eq!(
            values(&a, doc! {"a": [2, 1, 2.0, [3]]}),
            vec![vec![bson!(1)], vec![bson!(2)], vec![bson!([3])]]
        );
        let ab = spec(doc! {"a.b": 1});
        assert_eq!(
            values(&ab, doc! {"a": [{"b": 1}, {"c": 2}, 7]}),
            vec![vec![Bson::Null], vec![bson!(1)]]
        );
        assert_eq!(values(&ab, doc! {"a": [1, 2]}), vec![vec![Bson::Null]]);
        let keys = document_keys(&ab, &doc! {"a": [{"b": 1}]}).unwrap();
        assert!(keys.multikey);
        assert!(!document_keys(&a, &doc! {"a": 1}).unwrap().multikey);
    }

    #[test]
    fn descending_fields_invert_the_order() {
        let index = spec(doc! {"a": -1});
        let one = document_keys(&index, &doc! {"a": 1}).unwrap();
        let two = document_keys(&index, &doc! {"a": 2}).unwrap();
        assert!(one.keys.keys().next() > two.keys.keys().next());
        assert_eq!(default_name(&doc! {"a": 1, "b.c": -1}), "a_1_b.c_-1");
    }

    #[test]
    fn parallel_arrays_are_refused_but_one_array_is_fine() {
        let index = spec(doc! {"a": 1, "b": 1});
        let err = document_keys(&index, &doc! {"a": [1, 2], "b": [3]}).unwrap_err();
        assert_eq!(err.code.0, 171);
        assert_eq!(
            document_keys(&index, &doc! {"a": [1, 2], "b": 3})
                .unwrap()
                .keys
                .len(),
            2
        );
        let shared = spec(doc! {"a.x": 1, "a.y": 1});
        let keys = document_keys(&shared, &doc! {"a": [{"x": 1, "y": 2}]}).unwrap();
        assert_eq!(keys.keys.len(), 1);
    }

    #[test]
    fn sparse_and_partial_leave_documents_out() {
        let mut sparse = spec(doc! {"a": 1, "b": 1});
        sparse.sparse = true;
        assert!(
            document_keys(&sparse, &doc! {"c": 1})
                .unwrap()
                .keys
                .is_empty()
        );
        assert_eq!(
            document_keys(&sparse, &doc! {"b": 1}).unwrap().keys.len(),
            1
        );
        assert_eq!(
            document_keys(&sparse, &doc! {"a": null})
                .unwrap()
                .keys
                .len(),
            1
        );
        let mut partial = spec(doc! {"a": 1});
        let filter = doc! {"a": {"$gt": 5}};
        partial.partial = Some(PartialFilter {
            filter: Filter::parse(&filter).unwrap(),
            doc: filter,
        });
        assert!(
            document_keys(&partial, &doc! {"a": 1})
                .unwrap()
                .keys
                .is_empty()
        );
        assert_eq!(
            document_keys(&partial, &doc! {"a": 6}).unwrap().keys.len(),
            1
        );
    }

    #[test]
    fn records_round_trip() {
        let mut index = spec(doc! {"a": 1});
        index.unique = true;
        index.hidden = true;
        let filter = doc! {"a": {"$exists": true}};
        index.partial = Some(PartialFilter {
            filter: Filter::parse(&filter).unwrap(),
            doc: filter,
        });
        let back = IndexSpec::from_record(&index.to_record()).unwrap();
        assert_eq!(back, index);
        let listed = back.list_entry();
        assert!(listed.get_bool("unique").unwrap());
        assert!(listed.get("sparse").is_none());
    }
}
