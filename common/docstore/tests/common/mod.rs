//! Helpers shared by the command tests: an engine over `MemKv` and reply assertions.

#![allow(dead_code, reason = "each test binary uses a subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::sync::Arc;

use bson::{Bson, Document};
use shoal_docstore::{Engine, Kv, MemKv};

/// A fresh engine and the storage under it (to reopen over it).
pub fn engine() -> (Arc<MemKv>, Engine) {
    let kv = Arc::new(MemKv::new());
    let engine = Engine::with_kv(kv.clone() as Arc<dyn Kv>).unwrap();
    (kv, engine)
}

/// Runs a command and asserts it succeeded.
pub fn ok(engine: &Engine, db: &str, command: Document) -> Document {
    let reply = engine.execute(db, &command);
    assert_eq!(
        reply.get("ok"),
        Some(&Bson::Double(1.0)),
        "command {command} failed: {reply}"
    );
    reply
}

/// Runs a command, asserts it failed, and returns the code.
pub fn fails(engine: &Engine, db: &str, command: Document) -> i32 {
    let reply = engine.execute(db, &command);
    assert_eq!(
        reply.get("ok"),
        Some(&Bson::Double(0.0)),
        "command {command} succeeded: {reply}"
    );
    assert!(reply.get_str("codeName").is_ok(), "no codeName in {reply}");
    reply.get_i32("code").unwrap()
}

/// The cursor sub-document of a reply.
pub fn cursor(reply: &Document) -> &Document {
    reply.get_document("cursor").unwrap()
}

/// The first or next batch of a cursor reply.
pub fn batch(reply: &Document) -> Vec<Document> {
    let cursor = cursor(reply);
    let batch = cursor
        .get_array("firstBatch")
        .or_else(|_| cursor.get_array("nextBatch"))
        .unwrap();
    batch
        .iter()
        .map(|doc| doc.as_document().unwrap().clone())
        .collect()
}

/// The cursor id of a cursor reply.
pub fn cursor_id(reply: &Document) -> i64 {
    cursor(reply).get_i64("id").unwrap()
}

/// Every document of a find, following getMores.
pub fn find_all(engine: &Engine, db: &str, coll: &str, options: Document) -> Vec<Document> {
    let mut find = bson::doc! {"find": coll};
    find.extend(options);
    let mut reply = ok(engine, db, find);
    let mut docs = batch(&reply);
    while cursor_id(&reply) != 0 {
        reply = ok(
            engine,
            db,
            bson::doc! {"getMore": cursor_id(&reply), "collection": coll},
        );
        docs.extend(batch(&reply));
    }
    docs
}

/// The `_id`s of documents, as i32.
pub fn ids(docs: &[Document]) -> Vec<i32> {
    docs.iter().map(|doc| doc.get_i32("_id").unwrap()).collect()
}

/// Inserts `{_id: i, x: i % 3}` for each `i`.
pub fn seed(engine: &Engine, db: &str, coll: &str, range: std::ops::Range<i32>) {
    let docs: Vec<Document> = range.map(|i| bson::doc! {"_id": i, "x": i % 3}).collect();
    let reply = ok(
        engine,
        db,
        bson::doc! {"insert": coll, "documents": docs.clone()},
    );
    assert_eq!(reply.get_i32("n").unwrap() as usize, docs.len());
}
