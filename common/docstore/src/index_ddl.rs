//! Index and collection-definition commands: `createIndexes`, `listIndexes`, `dropIndexes`,
//! `collMod` (hiding indexes) and `renameCollection`.
//!
//! Each is one atomic batch under the writer lock: an index build writes the catalog change and
//! every entry together (a unique violation found while building creates nothing), a drop
//! removes the definition and range-deletes the entries, and a rename moves the catalog entry
//! (documents and entries are keyed by the collection's id, which does not change).

use std::collections::VecDeque;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace};
use shoal_query::Filter;

use crate::{
    args::{Fields, collection_ns, documents},
    catalog,
    cursor::Source,
    engine::{Engine, GENERIC_FIELDS},
    index::{
        INDEXES_PER_COLLECTION_MAX, IndexSpec, PartialFilter, default_name, document_keys,
        duplicate_key, entry_key, fields_of, id_code, index_range, named_error, same_key,
    },
    keys::{CollectionEntry, catalog_key, collection_range},
    kv::{Space, WriteBatch},
    read::{CursorSpec, FIRST_BATCH_DOCS_DEFAULT},
    txn::{Direct, Step, Txn, scan_documents},
};

/// Most bytes of entries one index build stages in memory before its single batch.
pub const INDEX_BUILD_BYTES_MAX: usize = 1024 * 1024 * 1024;

const INDEX_OPTIONS_CONFLICT: (i32, &str) = (85, "IndexOptionsConflict");
const INDEX_KEY_SPECS_CONFLICT: (i32, &str) = (86, "IndexKeySpecsConflict");
const INVALID_INDEX_SPECIFICATION_OPTION: (i32, &str) = (197, "InvalidIndexSpecificationOption");

/// Index types MongoDB has that this engine does not build.
const UNSUPPORTED_TYPES: &[&str] = &["text", "2d", "2dsphere", "geoHaystack", "hashed"];
/// Spec fields that only make sense for unsupported index kinds or features.
const UNSUPPORTED_OPTIONS: &[&str] = &[
    "expireAfterSeconds",
    "weights",
    "default_language",
    "language_override",
    "textIndexVersion",
    "2dsphereIndexVersion",
    "bits",
    "min",
    "max",
    "bucketSize",
    "wildcardProjection",
    "clustered",
    "prepareUnique",
];
/// Spec fields accepted and ignored (they change nothing here).
const IGNORED_OPTIONS: &[&str] = &["v", "background", "ns", "storageEngine"];
/// Operators MongoDB allows in a partial filter expression.
const PARTIAL_OPERATORS: &[&str] = &[
    "$eq", "$exists", "$gt", "$gte", "$lt", "$lte", "$type", "$in",
];

fn cannot_create(errmsg: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::CANNOT_CREATE_INDEX, errmsg)
}

fn namespace_not_found(ns: &str) -> CommandError {
    CommandError::new(
        ErrorCode::NAMESPACE_NOT_FOUND,
        format!("ns does not exist: {ns}"),
    )
}

fn id_index() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

/// Whether a key pattern is `{_id: 1}` (any positive number).
fn is_id_key(key: &Document) -> bool {
    key.len() == 1
        && matches!(key.get("_id"), Some(direction) if number(direction).is_some_and(|n| n > 0.0))
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

fn validate_key(key: &Document) -> Result<(), CommandError> {
    if key.is_empty() {
        return Err(cannot_create("Index keys cannot be empty."));
    }
    for (field, direction) in key {
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(cannot_create(format!(
                "Index key contains an illegal field name: '{field}'"
            )));
        }
        if field.split('.').any(|part| part.starts_with('$')) {
            return Err(cannot_create(format!(
                "index type for field '{field}' is not supported: wildcard and '$' fields cannot be indexed"
            )));
        }
        match direction {
            Bson::String(kind) if UNSUPPORTED_TYPES.contains(&kind.as_str()) => {
                return Err(cannot_create(format!(
                    "'{kind}' indexes are not supported; only ascending (1) and descending (-1) keys are"
                )));
            }
            Bson::String(kind) => {
                return Err(cannot_create(format!("Unknown index plugin '{kind}'")));
            }
            other => match number(other) {
                Some(n) if n != 0.0 && !n.is_nan() => {}
                Some(_) => {
                    return Err(cannot_create("Values in the index key pattern can't be 0."));
                }
                None => {
                    return Err(cannot_create(format!(
                        "Values in v:2 index key pattern cannot be of type {}. Only numbers > 0, numbers < 0, and strings are allowed.",
                        shoal_common::error::type_name(other)
                    )));
                }
            },
        }
    }
    Ok(())
}

/// Checks a partial filter against the operators MongoDB allows there.
fn validate_partial(filter: &Document, top: bool) -> Result<(), CommandError> {
    for (key, value) in filter {
        match key.as_str() {
            "$and" | "$or" if top || key == "$and" => {
                let Bson::Array(items) = value else {
                    return Err(CommandError::bad_value(format!("{key} must be an array")));
                };
                for item in items {
                    let Bson::Document(inner) = item else {
                        return Err(CommandError::bad_value(format!(
                            "{key} entries must be objects"
                        )));
                    };
                    validate_partial(inner, false)?;
                }
            }
            operator if operator.starts_with('$') => {
                return Err(cannot_create(format!(
                    "Expression not supported in partial index: {operator}"
                )));
            }
            _ => validate_partial_condition(value)?,
        }
    }
    Ok(())
}

fn validate_partial_condition(condition: &Bson) -> Result<(), CommandError> {
    match condition {
        Bson::Document(operators)
            if operators.keys().next().is_some_and(|k| k.starts_with('$')) =>
        {
            for (operator, argument) in operators {
                if !PARTIAL_OPERATORS.contains(&operator.as_str()) {
                    return Err(cannot_create(format!(
                        "Expression not supported in partial index: {operator}"
                    )));
                }
                if operator == "$exists"
                    && !matches!(argument, Bson::Boolean(true) | Bson::Int32(1))
                {
                    return Err(cannot_create(
                        "Expression not supported in partial index: $exists: false",
                    ));
                }
            }
            Ok(())
        }
        Bson::RegularExpression(_) => Err(cannot_create(
            "Expression not supported in partial index: $regex",
        )),
        _ => Ok(()),
    }
}

fn check_spec_fields(spec: &Document) -> Result<(), CommandError> {
    for field in spec.keys() {
        let known = matches!(
            field.as_str(),
            "key"
                | "name"
                | "unique"
                | "sparse"
                | "partialFilterExpression"
                | "hidden"
                | "collation"
        );
        if known || IGNORED_OPTIONS.contains(&field.as_str()) {
            continue;
        }
        if UNSUPPORTED_OPTIONS.contains(&field.as_str()) {
            return Err(cannot_create(format!(
                "index option '{field}' is not supported"
            )));
        }
        return Err(named_error(
            INVALID_INDEX_SPECIFICATION_OPTION.0,
            INVALID_INDEX_SPECIFICATION_OPTION.1,
            format!(
                "The field '{field}' is not valid for an index specification. Specification: {spec}"
            ),
        ));
    }
    if let Some(collation) = spec.get("collation") {
        let simple = matches!(collation, Bson::Document(c) if c.get_str("locale").is_ok_and(|l| l == "simple"));
        if !simple {
            return Err(cannot_create("index collations are not supported"));
        }
    }
    Ok(())
}

/// One requested index: its definition, or the `_id` index.
enum Requested {
    Id,
    Secondary(IndexSpec),
}

fn parse_partial(fields: &Fields<'_>) -> Result<Option<PartialFilter>, CommandError> {
    let Some(doc) = fields.doc("partialFilterExpression")? else {
        return Ok(None);
    };
    validate_partial(doc, true)?;
    Ok(Some(PartialFilter {
        filter: Filter::parse(doc)?,
        doc: doc.clone(),
    }))
}

/// Validates one entry of `createIndexes.indexes`.
fn parse_index_spec(spec: &Document) -> Result<Requested, CommandError> {
    let fields = Fields::new(spec, "createIndexes.indexes");
    check_spec_fields(spec)?;
    let key = match spec.get("key") {
        Some(Bson::Document(key)) => key,
        Some(other) => {
            return Err(CommandError::type_mismatch(
                "createIndexes.indexes.key",
                "object",
                other,
            ));
        }
        None => {
            return Err(CommandError::failed_to_parse(
                "The 'key' field is a required property of an index specification",
            ));
        }
    };
    validate_key(key)?;
    let name = match fields.str("name")? {
        Some("") => return Err(cannot_create("The index name cannot be empty")),
        Some("*") => return Err(CommandError::bad_value("The index name '*' is not valid.")),
        Some(name) => name.to_owned(),
        None => default_name(key),
    };
    let unique = fields.flag("unique", false)?;
    let sparse = fields.flag("sparse", false)?;
    let hidden = fields.flag("hidden", false)?;
    let partial = parse_partial(&fields)?;
    if is_id_key(key) {
        return id_spec(&name, unique || sparse || partial.is_some(), hidden);
    }
    if name == "_id_" {
        return Err(CommandError::bad_value(format!(
            "The index name '_id_' is reserved for the _id index, which must have key pattern {{_id: 1}}, found key: {key}"
        )));
    }
    if sparse && partial.is_some() {
        return Err(cannot_create(
            "cannot mix \"partialFilterExpression\" and \"sparse\" options",
        ));
    }
    Ok(Requested::Secondary(IndexSpec {
        id: 0,
        name,
        key: key.clone(),
        fields: fields_of(key),
        unique,
        sparse,
        partial,
        hidden,
        multikey: false,
    }))
}

fn id_spec(name: &str, options: bool, hidden: bool) -> Result<Requested, CommandError> {
    if options {
        return Err(named_error(
            INVALID_INDEX_SPECIFICATION_OPTION.0,
            INVALID_INDEX_SPECIFICATION_OPTION.1,
            "The fields 'unique', 'sparse' and 'partialFilterExpression' are not valid for an _id index specification.",
        ));
    }
    if hidden {
        return Err(CommandError::bad_value("can't hide _id index"));
    }
    if name != "_id_" && name != "_id_1" {
        return Err(named_error(
            INDEX_OPTIONS_CONFLICT.0,
            INDEX_OPTIONS_CONFLICT.1,
            format!("Index already exists with a different name: _id_ (requested {name})"),
        ));
    }
    Ok(Requested::Id)
}

/// Whether `requested` already exists among `existing` (`Ok(true)`), is new (`Ok(false)`), or
/// conflicts with an index there.
fn already_exists(existing: &[IndexSpec], requested: &IndexSpec) -> Result<bool, CommandError> {
    for index in existing {
        if index.name == requested.name {
            if !same_key(&index.key, &requested.key) {
                return Err(named_error(
                    INDEX_KEY_SPECS_CONFLICT.0,
                    INDEX_KEY_SPECS_CONFLICT.1,
                    format!(
                        "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                        requested.list_entry(),
                        index.list_entry()
                    ),
                ));
            }
            if index.same_definition(requested) {
                return Ok(true);
            }
            return Err(named_error(
                INDEX_OPTIONS_CONFLICT.0,
                INDEX_OPTIONS_CONFLICT.1,
                format!(
                    "An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}",
                    requested.list_entry(),
                    index.list_entry()
                ),
            ));
        }
        if same_key(&index.key, &requested.key) && index.partial == requested.partial {
            return Err(named_error(
                INDEX_OPTIONS_CONFLICT.0,
                INDEX_OPTIONS_CONFLICT.1,
                format!("Index already exists with a different name: {}", index.name),
            ));
        }
    }
    Ok(false)
}

/// Stages the entries of new indexes over the collection's existing documents into `txn`,
/// checking uniqueness among them (a new index id has no entries in storage yet, so only the
/// staged entries can collide). On a duplicate or an unindexable document the caller drops
/// the overlay, so nothing is created.
fn build_indexes(
    engine: &Engine,
    txn: &mut Txn<'_>,
    entry: &mut CollectionEntry,
    mut new: Vec<IndexSpec>,
) -> Result<(), CommandError> {
    let (start, end) = collection_range(entry.id);
    let (coll, ns) = (entry.id, entry.ns.clone());
    let mut bytes = 0usize;
    scan_documents(
        &Direct(engine.kv.as_ref()),
        &start,
        &end,
        |key, document, _| {
            let id = id_code(coll, key);
            for index in &mut new {
                let keys = document_keys(index, &document)?;
                index.multikey |= keys.multikey;
                for (code, values) in keys.keys {
                    let full = entry_key(coll, index, &code, &id);
                    if let Some(Some(owner)) = txn.staged(Space::Docs, &full) {
                        if *owner != id {
                            return Err(duplicate_key(&ns, index, &values));
                        }
                        continue;
                    }
                    bytes += full.len() + id.len();
                    if bytes > INDEX_BUILD_BYTES_MAX {
                        return Err(cannot_create(format!(
                            "index build needs more than {INDEX_BUILD_BYTES_MAX} bytes of memory"
                        )));
                    }
                    txn.put(Space::Docs, full, id.clone());
                }
            }
            Ok::<_, CommandError>(Step::Next)
        },
    )?;
    for index in new {
        tracing::info!(ns, index = %index.name, "built index");
        entry.indexes.push(index);
    }
    Ok(())
}

/// The reply of a `createIndexes`.
fn created_reply(before: usize, after: usize, created_collection: bool) -> Document {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let mut reply = doc! {
        "numIndexesBefore": count(before),
        "numIndexesAfter": count(after),
        "createdCollectionAutomatically": created_collection,
    };
    if before == after {
        reply.insert("note", "all indexes already exist");
    }
    reply
}

impl Engine {
    /// `createIndexes`.
    pub(crate) fn create_indexes(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "createIndexes")?.to_string();
        let fields = Fields::new(command, "createIndexes");
        let items = fields
            .array("indexes")?
            .ok_or_else(|| fields.missing("indexes"))?;
        if items.is_empty() {
            return Err(CommandError::bad_value(
                "Must specify at least one index to create",
            ));
        }
        let requested = documents(items, "createIndexes.indexes")?
            .into_iter()
            .map(parse_index_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        let created_collection = catalog::lookup(&txn, &ns)?.is_none();
        let mut entry = catalog::ensure(&mut txn, &ns)?;
        let before = entry.indexes.len() + 1;
        let mut new: Vec<IndexSpec> = Vec::new();
        for request in requested {
            let Requested::Secondary(mut spec) = request else {
                continue;
            };
            if already_exists(&entry.indexes, &spec)? || already_exists(&new, &spec)? {
                continue;
            }
            spec.id = entry.next_index_id;
            entry.next_index_id += 1;
            new.push(spec);
        }
        let after = before + new.len();
        if after > INDEXES_PER_COLLECTION_MAX {
            return Err(cannot_create(format!(
                "add index fails, too many indexes for {ns}: at most {INDEXES_PER_COLLECTION_MAX}"
            )));
        }
        if !new.is_empty() {
            build_indexes(self, &mut txn, &mut entry, new)?;
            txn.put(Space::Catalog, catalog_key(&ns), entry.encode());
        }
        txn.commit()?;
        Ok(created_reply(before, after, created_collection))
    }

    /// `listIndexes`: `_id_` first, then the secondary indexes in creation order.
    pub(crate) fn list_indexes(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "listIndexes")?;
        let ns_str = ns.to_string();
        let fields = Fields::new(command, "listIndexes");
        let batch_docs = match fields.doc("cursor")? {
            Some(options) => Fields::new(options, "listIndexes.cursor")
                .non_negative("batchSize")?
                .unwrap_or(FIRST_BATCH_DOCS_DEFAULT),
            None => FIRST_BATCH_DOCS_DEFAULT,
        };
        let entry = catalog::lookup(&Direct(self.kv.as_ref()), &ns_str)?
            .ok_or_else(|| namespace_not_found(&ns_str))?;
        let mut listed = VecDeque::from([id_index()]);
        listed.extend(entry.indexes.iter().map(IndexSpec::list_entry));
        self.open_cursor(CursorSpec {
            ns: ns_str,
            db: db.to_owned(),
            coll: ns.coll,
            source: Source::Buffered(listed),
            batch_docs,
            single_batch: false,
        })
    }

    /// `dropIndexes` (also spelled `deleteIndexes`).
    pub(crate) fn drop_indexes(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, name)?.to_string();
        let target = command
            .get("index")
            .ok_or_else(|| Fields::new(command, name).missing("index"))?;
        let _writer = self.lock_writer();
        let mut entry = catalog::lookup(&Direct(self.kv.as_ref()), &ns)?.ok_or_else(|| {
            CommandError::new(ErrorCode::NAMESPACE_NOT_FOUND, format!("ns not found {ns}"))
        })?;
        let was = entry.indexes.len() + 1;
        let doomed = indexes_to_drop(&entry, target, name)?;
        let mut batch = WriteBatch::new();
        let mut kept = Vec::new();
        for index in std::mem::take(&mut entry.indexes) {
            if doomed.contains(&index.id) {
                let (start, end) = index_range(entry.id, index.id);
                batch.delete_range(Space::Docs, start, end);
                tracing::info!(ns, index = %index.name, "dropped index");
            } else {
                kept.push(index);
            }
        }
        entry.indexes = kept;
        batch.put(Space::Catalog, catalog_key(&ns), entry.encode());
        self.kv.write(batch, true)?;
        let mut reply = doc! {"nIndexesWas": i32::try_from(was).unwrap_or(i32::MAX)};
        if matches!(target, Bson::String(all) if all == "*") {
            reply.insert("msg", "non-_id indexes dropped for collection");
        }
        Ok(reply)
    }

    /// `collMod`: `index: {name | keyPattern, hidden}` and the validation options.
    pub(crate) fn coll_mod(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "collMod")?.to_string();
        let mut change = None;
        for (key, value) in command.iter().skip(1) {
            match key.as_str() {
                "index" => change = Some(parse_hidden_change(value)?),
                "validator" | "validationLevel" | "validationAction" => {}
                generic if GENERIC_FIELDS.contains(&generic) => {}
                other => {
                    return Err(CommandError::new(
                        ErrorCode::INVALID_OPTIONS,
                        format!("collMod option '{other}' is not supported"),
                    ));
                }
            }
        }
        let _writer = self.lock_writer();
        let mut entry = catalog::lookup(&Direct(self.kv.as_ref()), &ns)?
            .ok_or_else(|| namespace_not_found(&ns))?;
        let before = entry.clone();
        entry.validation.update_from(command, "collMod")?;
        let mut reply = Document::new();
        if let Some((selector, hidden)) = change {
            let position = find_index(&entry, &selector)?;
            let index = &mut entry.indexes[position];
            if index.hidden != hidden {
                reply = doc! {"hidden_old": index.hidden, "hidden_new": hidden};
                index.hidden = hidden;
            }
        }
        if entry != before {
            let mut batch = WriteBatch::new();
            batch.put(Space::Catalog, catalog_key(&ns), entry.encode());
            self.kv.write(batch, true)?;
        }
        Ok(reply)
    }

    /// `renameCollection` (on `admin`), within or across databases of this engine.
    pub(crate) fn rename_collection(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if db != "admin" {
            return Err(CommandError::admin_only("renameCollection"));
        }
        let fields = Fields::new(command, "renameCollection");
        let source = fields
            .str("renameCollection")?
            .ok_or_else(|| fields.missing("renameCollection"))?;
        let target = fields.str("to")?.ok_or_else(|| fields.missing("to"))?;
        let (source, target) = (Namespace::parse(source)?, Namespace::parse(target)?);
        let drop_target = fields.flag("dropTarget", false)?;
        let (source, target) = (source.to_string(), target.to_string());
        if source == target {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                "Can't rename a collection to itself",
            ));
        }
        let _writer = self.lock_writer();
        let reader = Direct(self.kv.as_ref());
        let mut entry = catalog::lookup(&reader, &source)?.ok_or_else(|| {
            CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("Source collection {source} does not exist"),
            )
        })?;
        let mut batch = WriteBatch::new();
        if let Some(existing) = catalog::lookup(&reader, &target)? {
            if !drop_target {
                return Err(CommandError::new(
                    ErrorCode::NAMESPACE_EXISTS,
                    "target namespace exists",
                ));
            }
            catalog::drop_into(&mut batch, &existing);
        }
        batch.delete(Space::Catalog, catalog_key(&source));
        entry.ns = target.clone();
        batch.put(Space::Catalog, catalog_key(&target), entry.encode());
        self.kv.write(batch, true)?;
        tracing::info!(from = source, to = target, "renamed collection");
        Ok(Document::new())
    }
}

/// How `dropIndexes` or `collMod` names an index.
enum Selector {
    Name(String),
    Key(Document),
}

fn id_index_refused(command: &str) -> CommandError {
    CommandError::new(
        ErrorCode::INVALID_OPTIONS,
        format!("{command}: cannot drop _id index"),
    )
}

fn find_index(entry: &CollectionEntry, selector: &Selector) -> Result<usize, CommandError> {
    let not_found = |what: String| CommandError::new(ErrorCode::INDEX_NOT_FOUND, what);
    match selector {
        Selector::Name(name) if name == "_id_" => {
            Err(CommandError::bad_value("can't hide _id index"))
        }
        Selector::Key(key) if is_id_key(key) => {
            Err(CommandError::bad_value("can't hide _id index"))
        }
        Selector::Name(name) => entry
            .indexes
            .iter()
            .position(|index| index.name == *name)
            .ok_or_else(|| not_found(format!("cannot find index {name} for ns {}", entry.ns))),
        Selector::Key(key) => {
            let matching: Vec<usize> = (0..entry.indexes.len())
                .filter(|i| same_key(&entry.indexes[*i].key, key))
                .collect();
            match matching.as_slice() {
                [one] => Ok(*one),
                [] => Err(not_found(format!(
                    "cannot find index {key} for ns {}",
                    entry.ns
                ))),
                _ => Err(CommandError::bad_value(format!(
                    "{} indexes found for key: {key}, identify by name instead.",
                    matching.len()
                ))),
            }
        }
    }
}

/// Reads `collMod.index`.
fn parse_hidden_change(value: &Bson) -> Result<(Selector, bool), CommandError> {
    let Bson::Document(spec) = value else {
        return Err(CommandError::type_mismatch(
            "collMod.index",
            "object",
            value,
        ));
    };
    let fields = Fields::new(spec, "collMod.index");
    for key in spec.keys() {
        if !matches!(key.as_str(), "name" | "keyPattern" | "hidden") {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                format!("collMod index option '{key}' is not supported"),
            ));
        }
    }
    let selector = match (fields.str("name")?, fields.doc("keyPattern")?) {
        (Some(name), None) => Selector::Name(name.to_owned()),
        (None, Some(key)) => Selector::Key(key.clone()),
        (Some(_), Some(_)) => {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                "Cannot specify both key pattern and name.",
            ));
        }
        (None, None) => {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                "Must specify either index name or key pattern.",
            ));
        }
    };
    let hidden = fields.bool("hidden")?.ok_or_else(|| {
        CommandError::new(ErrorCode::INVALID_OPTIONS, "no hidden field to change")
    })?;
    Ok((selector, hidden))
}

/// The ids of the indexes a `dropIndexes` names.
fn indexes_to_drop(
    entry: &CollectionEntry,
    target: &Bson,
    command: &str,
) -> Result<Vec<u64>, CommandError> {
    let by_name = |name: &str| -> Result<u64, CommandError> {
        if name == "_id_" {
            return Err(id_index_refused(command));
        }
        entry
            .indexes
            .iter()
            .find(|index| index.name == name)
            .map(|index| index.id)
            .ok_or_else(|| {
                CommandError::new(
                    ErrorCode::INDEX_NOT_FOUND,
                    format!("index not found with name [{name}]"),
                )
            })
    };
    match target {
        Bson::String(all) if all == "*" => Ok(entry.indexes.iter().map(|index| index.id).collect()),
        Bson::String(name) => Ok(vec![by_name(name)?]),
        Bson::Document(key) if is_id_key(key) => Err(id_index_refused(command)),
        Bson::Document(key) => {
            let matching: Vec<u64> = entry
                .indexes
                .iter()
                .filter(|index| same_key(&index.key, key))
                .map(|index| index.id)
                .collect();
            match matching.len() {
                0 => Err(CommandError::new(
                    ErrorCode::INDEX_NOT_FOUND,
                    format!("can't find index with key: {key}"),
                )),
                1 => Ok(matching),
                n => Err(CommandError::bad_value(format!(
                    "{n} indexes found for key: {key}, identify by name instead."
                ))),
            }
        }
        Bson::Array(names) => names
            .iter()
            .enumerate()
            .map(|(position, name)| match name {
                Bson::String(name) if name != "*" => by_name(name),
                Bson::String(_) => Err(CommandError::bad_value(
                    "'*' cannot be used in a list of index names",
                )),
                other => Err(CommandError::type_mismatch(
                    &format!("{command}.index.{position}"),
                    "string",
                    other,
                )),
            })
            .collect(),
        other => Err(CommandError::type_mismatch(
            &format!("{command}.index"),
            "string or object",
            other,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_patterns_are_validated_like_mongodb() {
        let code = |key: Document| match parse_index_spec(&doc! {"key": key, "name": "x"}) {
            Ok(_) => 0,
            Err(err) => err.code.0,
        };
        assert_eq!(code(doc! {"a": 1, "b": -1.5}), 0);
        assert_eq!(code(doc! {}), 67);
        assert_eq!(code(doc! {"a": "text"}), 67);
        assert_eq!(code(doc! {"a": "2dsphere"}), 67);
        assert_eq!(code(doc! {"a": "nope"}), 67);
        assert_eq!(code(doc! {"a": 0}), 67);
        assert_eq!(code(doc! {"a": true}), 67);
        assert_eq!(code(doc! {"$a": 1}), 67);
        assert_eq!(code(doc! {"a..b": 1}), 67);
        let spec_code = |spec: Document| match parse_index_spec(&spec) {
            Ok(_) => 0,
            Err(err) => err.code.0,
        };
        assert_eq!(spec_code(doc! {"name": "x"}), 9);
        assert_eq!(spec_code(doc! {"key": 1}), 14);
        assert_eq!(spec_code(doc! {"key": {"a": 1}, "name": 3}), 14);
        assert_eq!(spec_code(doc! {"key": {"a": 1}, "bogus": 1}), 197);
        assert_eq!(
            spec_code(doc! {"key": {"a": 1}, "expireAfterSeconds": 5}),
            67
        );
        assert_eq!(spec_code(doc! {"key": {"a": 1}, "name": "*"}), 2);
        assert_eq!(spec_code(doc! {"key": {"a": 1}, "name": "_id_"}), 2);
        assert_eq!(
            spec_code(doc! {"key": {"a": 1}, "sparse": true, "partialFilterExpression": {"a": 1}}),
            67
        );
        assert_eq!(
            spec_code(doc! {"key": {"a": 1}, "partialFilterExpression": {"a": {"$ne": 1}}}),
            67
        );
        assert_eq!(
            spec_code(
                doc! {"key": {"a": 1}, "partialFilterExpression": {"$or": [{"a": {"$gt": 1}}, {"b": 2}]}}
            ),
            0
        );
        assert_eq!(spec_code(doc! {"key": {"_id": 1}, "unique": true}), 197);
        assert!(matches!(
            parse_index_spec(&doc! {"key": {"_id": 1}}),
            Ok(Requested::Id)
        ));
    }
}
