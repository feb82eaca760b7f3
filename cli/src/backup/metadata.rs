//! The `<coll>.metadata.json` file: what a collection needs besides its documents (options,
//! indexes, shard key), in canonical Extended JSON so every BSON type survives the round trip
//! (an index on `{a: NumberLong(1)}` stays an int64, compound key order stays as written).
//!
//! The layout is mongodump's (`indexes`, `options`, `collectionName`, `type`) plus `shardKey`
//! and `shardKeyUnique`, which MongoDB's tools ignore and `shoal restore` uses to shard the
//! restored collection the same way.

use bson::{Bson, Document, doc};

use super::FormatError;

/// The name of the `_id` index, which every collection gets on creation.
const ID_INDEX_NAME: &str = "_id_";

/// One collection's metadata; see the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionMetadata {
    /// The collection's name (without the database).
    pub collection_name: String,
    /// `listIndexes` output, `_id_` included.
    pub indexes: Vec<Document>,
    /// `listCollections` options (validator, validationLevel, ...).
    pub options: Document,
    /// The shard key pattern from `config.collections`, if the collection is sharded.
    pub shard_key: Option<Document>,
    /// Whether the shard key was declared unique.
    pub shard_key_unique: bool,
}

impl CollectionMetadata {
    /// The metadata as a BSON document, in the file's field order.
    pub fn to_document(&self) -> Document {
        let indexes: Vec<Bson> = self.indexes.iter().cloned().map(Bson::Document).collect();
        let mut document = doc! {
            "indexes": indexes,
            "options": self.options.clone(),
            "collectionName": self.collection_name.clone(),
            "type": "collection",
        };
        if let Some(key) = &self.shard_key {
            document.insert("shardKey", key.clone());
        }
        document.insert("shardKeyUnique", self.shard_key_unique);
        document
    }

    /// The file's text: canonical Extended JSON.
    pub fn to_json(&self) -> String {
        Bson::Document(self.to_document())
            .into_canonical_extjson()
            .to_string()
    }

    /// Parses a metadata file written by `shoal dump` or mongodump (canonical or relaxed
    /// Extended JSON). Unknown fields (mongodump's `uuid`) are ignored.
    pub fn from_json(text: &str) -> Result<CollectionMetadata, FormatError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|error| FormatError::Metadata(format!("not JSON: {error}")))?;
        let bson = Bson::try_from(value)
            .map_err(|error| FormatError::Metadata(format!("not Extended JSON: {error}")))?;
        let Bson::Document(document) = bson else {
            return Err(FormatError::Metadata("not a JSON object".to_owned()));
        };
        CollectionMetadata::from_document(&document)
    }

    /// Reads the metadata from its BSON form; see [`CollectionMetadata::from_json`].
    pub fn from_document(document: &Document) -> Result<CollectionMetadata, FormatError> {
        let bad = |field: &str, expected: &str| {
            FormatError::Metadata(format!("field '{field}' must be {expected}"))
        };
        match document.get("type") {
            None => {}
            Some(Bson::String(kind)) if kind == "collection" => {}
            Some(other) => {
                return Err(FormatError::Metadata(format!(
                    "only collections can be restored, not type {other}"
                )));
            }
        }
        let collection_name = match document.get("collectionName") {
            Some(Bson::String(name)) => name.clone(),
            _ => return Err(bad("collectionName", "a string")),
        };
        let indexes = match document.get("indexes") {
            None => Vec::new(),
            Some(Bson::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Bson::Document(index) => Ok(index.clone()),
                    _ => Err(bad("indexes", "an array of objects")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("indexes", "an array")),
        };
        let options = match document.get("options") {
            None => Document::new(),
            Some(Bson::Document(options)) => options.clone(),
            Some(_) => return Err(bad("options", "an object")),
        };
        let shard_key = match document.get("shardKey") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(key)) if !key.is_empty() => Some(key.clone()),
            Some(_) => return Err(bad("shardKey", "a non-empty object")),
        };
        let shard_key_unique = match document.get("shardKeyUnique") {
            None => false,
            Some(Bson::Boolean(unique)) => *unique,
            Some(_) => return Err(bad("shardKeyUnique", "a boolean")),
        };
        Ok(CollectionMetadata {
            collection_name,
            indexes,
            options,
            shard_key,
            shard_key_unique,
        })
    }

    /// The index specifications to create on restore: every index but `_id_` (which `create`
    /// makes), without the legacy `ns` field that names the source namespace.
    pub fn indexes_to_create(&self) -> Vec<Document> {
        self.indexes
            .iter()
            .filter(|index| index.get_str("name").ok() != Some(ID_INDEX_NAME))
            .map(|index| {
                let mut index = index.clone();
                index.remove("ns");
                index
            })
            .collect()
    }

    /// The `create` command for collection `coll` with the dumped options.
    pub fn create_command(&self, coll: &str) -> Document {
        let mut command = doc! {"create": coll};
        for (name, value) in &self.options {
            // A dump from MongoDB may carry the source collection's uuid; a new collection
            // gets its own.
            if name != "uuid" {
                command.insert(name.clone(), value.clone());
            }
        }
        command
    }

    /// The `shardCollection` command for namespace `ns`, if the collection was sharded.
    pub fn shard_collection_command(&self, ns: &str) -> Option<Document> {
        let key = self.shard_key.as_ref()?;
        Some(doc! {"shardCollection": ns, "key": key.clone(), "unique": self.shard_key_unique})
    }
}

/// The shard key and its uniqueness from a `config.collections` entry (`None` for an
/// unsharded collection, no entry, or an entry marked dropped).
pub fn shard_key_of(entry: Option<&Document>) -> (Option<Document>, bool) {
    let Some(entry) = entry else {
        return (None, false);
    };
    if matches!(entry.get("dropped"), Some(Bson::Boolean(true))) {
        return (None, false);
    }
    match entry.get("key") {
        Some(Bson::Document(key)) if !key.is_empty() => (
            Some(key.clone()),
            matches!(entry.get("unique"), Some(Bson::Boolean(true))),
        ),
        _ => (None, false),
    }
}

#[cfg(test)]
mod tests {
    use bson::{Decimal128, Regex, oid::ObjectId};

    use super::*;

    fn sample() -> CollectionMetadata {
        CollectionMetadata {
            collection_name: "users".to_owned(),
            indexes: vec![
                doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                doc! {"v": 2, "key": {"z": 1, "a": -1_i64}, "name": "z_1_a_-1", "unique": true},
                doc! {"v": 2, "key": {"p": 1.0}, "name": "p", "ns": "old.users",
                "partialFilterExpression": {"p": {"$gt": Decimal128::from_bytes([1; 16])}}},
            ],
            options: doc! {"validator": {"s": {"$regex": Regex {pattern: "^a".into(), options: "i".into()}},
            "o": ObjectId::from_bytes([7; 12])}, "validationLevel": "strict"},
            shard_key: Some(doc! {"z": 1, "a": 1}),
            shard_key_unique: true,
        }
    }

    #[test]
    fn json_round_trip_keeps_types_and_order() {
        let metadata = sample();
        let json = metadata.to_json();
        assert!(json.contains(r#""$numberLong":"-1""#), "{json}");
        assert!(json.contains(r#""shardKeyUnique":true"#), "{json}");
        let back = CollectionMetadata::from_json(&json).unwrap();
        assert_eq!(back, metadata);
        let keys: Vec<&String> = back.indexes[1]
            .get_document("key")
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["z", "a"]);
    }

    #[test]
    fn field_order_follows_mongodump() {
        let json = sample().to_json();
        let at = |field: &str| json.find(&format!("\"{field}\"")).unwrap();
        assert!(at("indexes") < at("options"));
        assert!(at("options") < at("collectionName"));
        assert!(at("collectionName") < at("type"));
        assert!(at("type") < at("shardKey"));
    }

    #[test]
    fn unsharded_metadata_has_no_shard_key() {
        let metadata = CollectionMetadata {
            shard_key: None,
            shard_key_unique: false,
            ..sample()
        };
        let json = metadata.to_json();
        assert!(!json.contains("\"shardKey\""), "{json}");
        assert_eq!(CollectionMetadata::from_json(&json).unwrap(), metadata);
        assert_eq!(metadata.shard_collection_command("d.users"), None);
    }

    #[test]
    fn reads_mongodump_metadata() {
        let json = r#"{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],"uuid":"0123456789abcdef0123456789abcdef","collectionName":"c","type":"collection"}"#;
        let metadata = CollectionMetadata::from_json(json).unwrap();
        assert_eq!(metadata.collection_name, "c");
        assert_eq!(metadata.options, Document::new());
        assert_eq!(metadata.shard_key, None);
        assert!(metadata.indexes_to_create().is_empty());
        // Relaxed Extended JSON works too.
        let relaxed = r#"{"indexes":[{"key":{"a":1},"name":"a_1"}],"collectionName":"c"}"#;
        let metadata = CollectionMetadata::from_json(relaxed).unwrap();
        assert_eq!(
            metadata.indexes_to_create(),
            [doc! {"key": {"a": 1}, "name": "a_1"}]
        );
    }

    #[test]
    fn bad_metadata_is_an_error() {
        for text in [
            "",
            "[1]",
            "{\"collectionName\": 5}",
            "{}",
            r#"{"collectionName": "c", "type": "view"}"#,
            r#"{"collectionName": "c", "indexes": [1]}"#,
            r#"{"collectionName": "c", "options": []}"#,
            r#"{"collectionName": "c", "shardKey": {}}"#,
            r#"{"collectionName": "c", "shardKeyUnique": "yes"}"#,
            r#"{"collectionName": "c", "x": {"$numberInt": "nope"}}"#,
        ] {
            assert!(
                matches!(
                    CollectionMetadata::from_json(text),
                    Err(FormatError::Metadata(_))
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn restore_commands() {
        let metadata = sample();
        let indexes = metadata.indexes_to_create();
        let names: Vec<&str> = indexes
            .iter()
            .map(|index| index.get_str("name").unwrap())
            .collect();
        assert_eq!(names, ["z_1_a_-1", "p"]);
        assert!(
            metadata
                .indexes_to_create()
                .iter()
                .all(|index| !index.contains_key("ns"))
        );
        let create = metadata.create_command("users");
        assert_eq!(create.get_str("create").unwrap(), "users");
        assert_eq!(create.get_str("validationLevel").unwrap(), "strict");
        let shard = metadata.shard_collection_command("d.users").unwrap();
        assert_eq!(
            shard,
            doc! {"shardCollection": "d.users", "key": {"z": 1, "a": 1}, "unique": true}
        );
    }

    #[test]
    fn shard_key_from_config_collections() {
        assert_eq!(shard_key_of(None), (None, false));
        let entry = doc! {"_id": "d.c", "key": {"k": 1}, "unique": true};
        assert_eq!(shard_key_of(Some(&entry)), (Some(doc! {"k": 1}), true));
        let entry = doc! {"_id": "d.c", "key": {"k": "hashed"}};
        assert_eq!(
            shard_key_of(Some(&entry)),
            (Some(doc! {"k": "hashed"}), false)
        );
        let dropped = doc! {"_id": "d.c", "key": {"k": 1}, "dropped": true};
        assert_eq!(shard_key_of(Some(&dropped)), (None, false));
    }
}
