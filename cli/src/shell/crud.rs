//! Collection helpers (`insertOne`, `find`, `updateMany`, `aggregate`, `createIndex`, ...) and
//! the cursor modifiers chained on `find`/`aggregate`.
//!
//! CRUD goes through the driver's typed `Collection<Document>` API, so `_id` generation and
//! update/replacement validation behave exactly as for any driver user; index helpers send
//! the raw commands so router-style replies (`raw: {shard: ..}`) pass through untouched.

use bson::{Bson, Document, doc};
use mongodb::{
    Cursor,
    options::{
        AggregateOptions, DeleteOptions, ReplaceOptions, UpdateModifications, UpdateOptions,
    },
};
use serde::de::DeserializeOwned;

use super::{
    args::{Args, ShellError, ShellResult, count_bson},
    eval::{AggregateSpec, CollectionRef, FindSpec, MATERIALIZED_DOCS_MAX, Shell, Value},
    format::inspect_document,
};

impl Shell {
    pub(super) async fn collection_method(
        &mut self,
        reference: CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        match method {
            "find" => {
                let filter = args.optional_document("filter")?.unwrap_or_default();
                let projection = args.optional_document("projection")?;
                args.finish()?;
                Ok(Value::Find(FindSpec {
                    collection: reference,
                    filter,
                    projection,
                    sort: None,
                    limit: None,
                    skip: None,
                    batch_size: None,
                }))
            }
            "aggregate" => aggregate_spec(reference, args),
            "insertOne" | "insertMany" => self.insert(&reference, method, args).await,
            "findOne" => self.find_one(&reference, args).await,
            "updateOne" | "updateMany" => self.update(&reference, method, args).await,
            "replaceOne" => self.replace_one(&reference, args).await,
            "deleteOne" | "deleteMany" => self.delete(&reference, method, args).await,
            _ => self.collection_admin_method(reference, method, args).await,
        }
    }

    async fn collection_admin_method(
        &mut self,
        reference: CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let collection = self.collection(&reference);
        let value = match method {
            "countDocuments" => {
                let filter = args.optional_document("filter")?.unwrap_or_default();
                args.finish()?;
                count_bson(collection.count_documents(filter).await?)
            }
            "estimatedDocumentCount" => {
                args.finish()?;
                count_bson(collection.estimated_document_count().await?)
            }
            "count" => {
                let filter = args.optional_document("filter")?.unwrap_or_default();
                args.finish()?;
                self.count_command(&reference, filter).await?
            }
            "distinct" => {
                let field = args.string("field")?;
                let filter = args.optional_document("filter")?.unwrap_or_default();
                args.finish()?;
                Bson::Array(collection.distinct(field, filter).await?)
            }
            "drop" => {
                args.finish()?;
                collection.drop().await?;
                Bson::Boolean(true)
            }
            "getName" => {
                args.finish()?;
                Bson::String(reference.name.clone())
            }
            _ => return self.index_method(&reference, method, args).await,
        };
        Ok(Value::Bson(value))
    }

    async fn index_method(
        &mut self,
        reference: &CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let db = self.database(&reference.db);
        match method {
            "createIndex" => {
                let keys = args.document("keys")?;
                let options = args.optional_document("options")?.unwrap_or_default();
                args.finish()?;
                let mut index = doc! { "key": keys.clone() };
                if !options.contains_key("name") {
                    index.insert("name", index_name(&keys));
                }
                index.extend(options);
                let name = index.get("name").cloned().unwrap_or(Bson::Null);
                let command = doc! { "createIndexes": &reference.name, "indexes": [index] };
                db.run_command(command).await?;
                Ok(Value::Bson(name))
            }
            "getIndexes" => {
                args.finish()?;
                let reply = db
                    .run_command(doc! { "listIndexes": &reference.name })
                    .await?;
                let batch = reply
                    .get_document("cursor")
                    .and_then(|cursor| cursor.get_array("firstBatch"))
                    .cloned()
                    .unwrap_or_default();
                Ok(Value::Bson(Bson::Array(batch)))
            }
            "dropIndex" | "dropIndexes" => {
                let index = args
                    .optional_any()
                    .unwrap_or_else(|| Bson::String("*".into()));
                args.finish()?;
                let command = doc! { "dropIndexes": &reference.name, "index": index };
                Ok(Value::Bson(Bson::Document(db.run_command(command).await?)))
            }
            _ => Err(ShellError::Type(format!(
                "db.{}.{method} is not a function",
                reference.name
            ))),
        }
    }

    async fn count_command(
        &self,
        reference: &CollectionRef,
        filter: Document,
    ) -> ShellResult<Bson> {
        let command = doc! { "count": &reference.name, "query": filter };
        let reply = self.database(&reference.db).run_command(command).await?;
        Ok(reply.get("n").cloned().unwrap_or(Bson::Int32(0)))
    }

    async fn insert(
        &mut self,
        reference: &CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let collection = self.collection(reference);
        let mut reply = doc! { "acknowledged": true };
        if method == "insertOne" {
            let document = args.document("document")?;
            let _options = args.optional_document("options")?;
            args.finish()?;
            let result = collection.insert_one(document).await?;
            reply.insert("insertedId", result.inserted_id);
        } else {
            let documents = args.documents("documents")?;
            let _options = args.optional_document("options")?;
            args.finish()?;
            let result = collection.insert_many(documents).await?;
            let mut ids: Vec<(usize, Bson)> = result.inserted_ids.into_iter().collect();
            ids.sort_by_key(|(index, _)| *index);
            let ids: Document = ids
                .into_iter()
                .map(|(index, id)| (index.to_string(), id))
                .collect();
            reply.insert("insertedIds", ids);
        }
        Ok(Value::Bson(Bson::Document(reply)))
    }

    async fn find_one(&mut self, reference: &CollectionRef, mut args: Args) -> ShellResult<Value> {
        let filter = args.optional_document("filter")?.unwrap_or_default();
        let projection = args.optional_document("projection")?;
        args.finish()?;
        let collection = self.collection(reference);
        let mut action = collection.find_one(filter);
        if let Some(projection) = projection {
            action = action.projection(projection);
        }
        Ok(Value::Bson(
            action.await?.map(Bson::Document).unwrap_or(Bson::Null),
        ))
    }

    async fn update(
        &mut self,
        reference: &CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let filter = args.document("filter")?;
        let update = match args.any("update")? {
            Bson::Document(doc) => UpdateModifications::Document(doc),
            Bson::Array(stages) => UpdateModifications::Pipeline(documents_of(&stages)?),
            _ => {
                return Err(ShellError::Type(format!(
                    "{method}(): update must be an object"
                )));
            }
        };
        let options: Option<UpdateOptions> = options_arg(&mut args, method)?;
        args.finish()?;
        let collection = self.collection(reference);
        let action = if method == "updateOne" {
            collection.update_one(filter, update)
        } else {
            collection.update_many(filter, update)
        };
        let result = action.with_options(options).await?;
        Ok(update_reply(
            result.matched_count,
            result.modified_count,
            result.upserted_id,
        ))
    }

    async fn replace_one(
        &mut self,
        reference: &CollectionRef,
        mut args: Args,
    ) -> ShellResult<Value> {
        let filter = args.document("filter")?;
        let replacement = args.document("replacement")?;
        let options: Option<ReplaceOptions> = options_arg(&mut args, "replaceOne")?;
        args.finish()?;
        let collection = self.collection(reference);
        let result = collection
            .replace_one(filter, replacement)
            .with_options(options)
            .await?;
        Ok(update_reply(
            result.matched_count,
            result.modified_count,
            result.upserted_id,
        ))
    }

    async fn delete(
        &mut self,
        reference: &CollectionRef,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let filter = args.document("filter")?;
        let options: Option<DeleteOptions> = options_arg(&mut args, method)?;
        args.finish()?;
        let collection = self.collection(reference);
        let action = if method == "deleteOne" {
            collection.delete_one(filter)
        } else {
            collection.delete_many(filter)
        };
        let result = action.with_options(options).await?;
        let reply = doc! { "acknowledged": true, "deletedCount": count_bson(result.deleted_count) };
        Ok(Value::Bson(Bson::Document(reply)))
    }

    pub(super) async fn find_method(
        &mut self,
        mut spec: FindSpec,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        match method {
            "sort" => spec.sort = Some(args.document("sort")?),
            "projection" => spec.projection = Some(args.document("projection")?),
            "limit" => spec.limit = Some(args.integer("limit")?),
            "skip" => {
                let skip = args.integer("skip")?;
                let skip = u64::try_from(skip)
                    .map_err(|_| ShellError::Type("skip(): must not be negative".into()))?;
                spec.skip = Some(skip);
            }
            "batchSize" => {
                let size = args.integer("batch size")?;
                let size = u32::try_from(size)
                    .map_err(|_| ShellError::Type("batchSize(): out of range".into()))?;
                spec.batch_size = Some(size);
            }
            "pretty" => {}
            "toArray" => {
                args.finish()?;
                return Ok(Value::Bson(Bson::Array(self.find_to_array(&spec).await?)));
            }
            "count" => {
                args.finish()?;
                let count = self.count_command(&spec.collection, spec.filter).await?;
                return Ok(Value::Bson(count));
            }
            "itcount" => {
                args.finish()?;
                let count = self.find_to_array(&spec).await?.len();
                return Ok(Value::Bson(count_bson(count as u64)));
            }
            _ => {
                return Err(ShellError::Type(format!(
                    "cursor.{method} is not a function"
                )));
            }
        }
        args.finish()?;
        Ok(Value::Find(spec))
    }

    pub(super) async fn aggregate_method(
        &mut self,
        spec: AggregateSpec,
        method: &str,
        args: Args,
    ) -> ShellResult<Value> {
        args.finish()?;
        match method {
            "toArray" => Ok(Value::Bson(Bson::Array(
                self.aggregate_to_array(&spec).await?,
            ))),
            "pretty" => Ok(Value::Aggregate(spec)),
            _ => Err(ShellError::Type(format!(
                "cursor.{method} is not a function"
            ))),
        }
    }

    async fn open_find(&self, spec: &FindSpec) -> ShellResult<Cursor<Document>> {
        let collection = self.collection(&spec.collection);
        let mut action = collection.find(spec.filter.clone());
        if let Some(projection) = &spec.projection {
            action = action.projection(projection.clone());
        }
        if let Some(sort) = &spec.sort {
            action = action.sort(sort.clone());
        }
        if let Some(limit) = spec.limit {
            action = action.limit(limit);
        }
        if let Some(skip) = spec.skip {
            action = action.skip(skip);
        }
        if let Some(batch_size) = spec.batch_size {
            action = action.batch_size(batch_size);
        }
        Ok(action.await?)
    }

    async fn open_aggregate(&self, spec: &AggregateSpec) -> ShellResult<Cursor<Document>> {
        let options: Option<AggregateOptions> = match &spec.options {
            Some(options) => Some(deserialize_options(options.clone(), "aggregate")?),
            None => None,
        };
        let collection = self.collection(&spec.collection);
        Ok(collection
            .aggregate(spec.pipeline.clone())
            .with_options(options)
            .await?)
    }

    pub(super) async fn find_to_array(&self, spec: &FindSpec) -> ShellResult<Vec<Bson>> {
        collect(self.open_find(spec).await?).await
    }

    pub(super) async fn aggregate_to_array(&self, spec: &AggregateSpec) -> ShellResult<Vec<Bson>> {
        collect(self.open_aggregate(spec).await?).await
    }

    pub(super) async fn print_find(&self, spec: &FindSpec) -> ShellResult<()> {
        print_cursor(self.open_find(spec).await?).await
    }

    pub(super) async fn print_aggregate(&self, spec: &AggregateSpec) -> ShellResult<()> {
        print_cursor(self.open_aggregate(spec).await?).await
    }
}

/// `aggregate([stages], options?)` or mongosh's variadic `aggregate(stage1, stage2, ..)`.
fn aggregate_spec(collection: CollectionRef, mut args: Args) -> ShellResult<Value> {
    let values = args.rest();
    let (pipeline, options) = match values.as_slice() {
        [Bson::Array(stages), rest @ ..] if rest.len() <= 1 => {
            let options = match rest.first() {
                Some(Bson::Document(options)) => Some(options.clone()),
                None | Some(Bson::Null) => None,
                Some(_) => {
                    return Err(ShellError::Type(
                        "aggregate(): options must be an object".into(),
                    ));
                }
            };
            (documents_of(stages)?, options)
        }
        stages => (documents_of(stages)?, None),
    };
    Ok(Value::Aggregate(AggregateSpec {
        collection,
        pipeline,
        options,
    }))
}

fn documents_of(values: &[Bson]) -> ShellResult<Vec<Document>> {
    values
        .iter()
        .map(|value| match value {
            Bson::Document(doc) => Ok(doc.clone()),
            _ => Err(ShellError::Type(
                "each pipeline stage must be an object".into(),
            )),
        })
        .collect()
}

fn options_arg<T: DeserializeOwned>(args: &mut Args, method: &str) -> ShellResult<Option<T>> {
    match args.optional_document("options")? {
        Some(options) => Ok(Some(deserialize_options(options, method)?)),
        None => Ok(None),
    }
}

fn deserialize_options<T: DeserializeOwned>(options: Document, method: &str) -> ShellResult<T> {
    bson::from_document(options)
        .map_err(|error| ShellError::Type(format!("{method}(): invalid options: {error}")))
}

fn update_reply(matched: u64, modified: u64, upserted_id: Option<Bson>) -> Value {
    Value::Bson(Bson::Document(doc! {
        "acknowledged": true,
        "matchedCount": count_bson(matched),
        "modifiedCount": count_bson(modified),
        "upsertedId": upserted_id.unwrap_or(Bson::Null),
    }))
}

/// mongosh's default index name: `field_direction` pairs joined by `_`.
pub fn index_name(keys: &Document) -> String {
    keys.iter()
        .map(|(field, direction)| {
            let direction = match direction {
                Bson::String(kind) => kind.clone(),
                Bson::Double(number) => super::format::js_number(*number),
                other => other.to_string(),
            };
            format!("{field}_{direction}")
        })
        .collect::<Vec<_>>()
        .join("_")
}

async fn collect(mut cursor: Cursor<Document>) -> ShellResult<Vec<Bson>> {
    let mut documents = Vec::new();
    while cursor.advance().await? {
        if documents.len() == MATERIALIZED_DOCS_MAX {
            return Err(ShellError::Type(format!(
                "more than {MATERIALIZED_DOCS_MAX} documents; add .limit(..)"
            )));
        }
        documents.push(Bson::Document(cursor.deserialize_current()?));
    }
    Ok(documents)
}

async fn print_cursor(mut cursor: Cursor<Document>) -> ShellResult<()> {
    while cursor.advance().await? {
        println!("{}", inspect_document(&cursor.deserialize_current()?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_mongosh() {
        assert_eq!(index_name(&doc! { "k": 1 }), "k_1");
        assert_eq!(index_name(&doc! { "a": 1, "b": -1 }), "a_1_b_-1");
        assert_eq!(index_name(&doc! { "h": "hashed" }), "h_hashed");
        assert_eq!(index_name(&doc! { "l": 1_i64 << 40 }), "l_1099511627776");
        assert_eq!(index_name(&doc! { "d": 1.0 }), "d_1");
    }

    #[test]
    fn aggregate_accepts_array_or_variadic_stages() {
        let collection = CollectionRef {
            db: "d".into(),
            name: "c".into(),
        };
        let stage = Bson::Document(doc! { "$match": {} });
        let args = Args::new("aggregate", vec![Bson::Array(vec![stage.clone()])]);
        let Value::Aggregate(spec) = aggregate_spec(collection.clone(), args).unwrap() else {
            panic!("not an aggregate");
        };
        assert_eq!(spec.pipeline, vec![doc! { "$match": {} }]);
        let args = Args::new("aggregate", vec![stage.clone(), stage]);
        let Value::Aggregate(spec) = aggregate_spec(collection.clone(), args).unwrap() else {
            panic!("not an aggregate");
        };
        assert_eq!(spec.pipeline.len(), 2);
        let args = Args::new("aggregate", vec![Bson::Int32(1)]);
        assert!(aggregate_spec(collection, args).is_err());
    }

    #[test]
    fn options_documents_map_to_driver_options() {
        let mut args = Args::new("updateOne", vec![Bson::Document(doc! { "upsert": true })]);
        let options: Option<UpdateOptions> = options_arg(&mut args, "updateOne").unwrap();
        assert_eq!(options.and_then(|o| o.upsert), Some(true));
        let mut args = Args::new("updateOne", vec![Bson::Document(doc! { "upsert": "yes" })]);
        let error = options_arg::<UpdateOptions>(&mut args, "updateOne").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("TypeError: updateOne(): invalid options"),
            "{error}"
        );
    }
}
