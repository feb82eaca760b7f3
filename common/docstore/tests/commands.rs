//! Command-level tests of the document engine over `MemKv`: reply shapes, error codes, batch
//! semantics, cursors, persistence across a reopen.

mod common;

use std::sync::Arc;

use bson::{Bson, Document, doc, oid::ObjectId};
use common::{batch, cursor, cursor_id, engine, fails, find_all, ids, ok, seed};
use shoal_docstore::{DOCUMENT_BYTES_MAX, Engine, Kv};

// ---------------------------------------------------------------------------------------------
// insert

#[test]
fn insert_generates_an_object_id_first() {
    let (_, engine) = engine();
    let reply = ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"a": 1}, {"b": 2, "_id": 7}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 2);
    assert!(reply.get("writeErrors").is_none());
    let docs = find_all(&engine, "db", "c", doc! {});
    assert_eq!(docs.len(), 2);
    for document in &docs {
        assert_eq!(document.keys().next().map(String::as_str), Some("_id"));
    }
    assert!(
        docs.iter()
            .any(|d| matches!(d.get("_id"), Some(Bson::ObjectId(_))))
    );
    assert!(docs.iter().any(|d| d == &doc! {"_id": 7, "b": 2}));
}

#[test]
fn ordered_insert_stops_at_a_duplicate() {
    let (_, engine) = engine();
    let reply = ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 2);
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors.len(), 1);
    let error = errors[0].as_document().unwrap();
    assert_eq!(error.get_i32("index").unwrap(), 2);
    assert_eq!(error.get_i32("code").unwrap(), 11000);
    assert_eq!(error.get_str("codeName").unwrap(), "DuplicateKey");
    assert!(
        error
            .get_str("errmsg")
            .unwrap()
            .starts_with("E11000 duplicate key error collection: db.c index: _id_")
    );
    assert_eq!(error.get_document("keyPattern").unwrap(), &doc! {"_id": 1});
    assert_eq!(error.get_document("keyValue").unwrap(), &doc! {"_id": 1});
    assert_eq!(ids(&find_all(&engine, "db", "c", doc! {})), vec![1, 2]);
}

#[test]
fn unordered_insert_goes_on_after_a_duplicate() {
    let (_, engine) = engine();
    let reply = ok(
        &engine,
        "db",
        doc! {"insert": "c", "ordered": false, "documents": [{"_id": 1}, {"_id": 1.0}, {"_id": 3}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 2);
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].as_document().unwrap().get_i32("index").unwrap(),
        1
    );
    assert_eq!(ids(&find_all(&engine, "db", "c", doc! {})), vec![1, 3]);
    // A later command hits the stored duplicate too.
    let reply = ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 3_i64}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 0);
    assert_eq!(reply.get_array("writeErrors").unwrap().len(), 1);
}

#[test]
fn insert_refuses_bad_documents_per_statement() {
    let (_, engine) = engine();
    let big = "x".repeat(DOCUMENT_BYTES_MAX);
    let reply = ok(
        &engine,
        "db",
        doc! {"insert": "c", "ordered": false, "documents": [
            {"_id": [1, 2]},
            {"_id": Bson::RegularExpression(bson::Regex { pattern: "a".into(), options: String::new() })},
            {"$bad": 1},
            {"_id": 4, "big": big},
            {"_id": 5, "nested": {"$ok": 1}},
        ]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 1);
    let codes: Vec<(i32, i32)> = reply
        .get_array("writeErrors")
        .unwrap()
        .iter()
        .map(|e| {
            let e = e.as_document().unwrap();
            (e.get_i32("index").unwrap(), e.get_i32("code").unwrap())
        })
        .collect();
    assert_eq!(codes, vec![(0, 53), (1, 53), (2, 52), (3, 10334)]);
}

#[test]
fn malformed_write_commands_fail_whole() {
    let (_, engine) = engine();
    assert_eq!(
        fails(&engine, "db", doc! {"insert": "c", "documents": 1}),
        14
    );
    assert_eq!(
        fails(&engine, "db", doc! {"insert": "c", "documents": [1]}),
        14
    );
    assert_eq!(
        fails(&engine, "db", doc! {"insert": "c", "documents": []}),
        16
    );
    assert_eq!(fails(&engine, "db", doc! {"insert": "c"}), 40414);
    assert_eq!(
        fails(&engine, "db", doc! {"insert": 5, "documents": [{}]}),
        73
    );
    assert_eq!(
        fails(&engine, "db", doc! {"insert": "", "documents": [{}]}),
        73
    );
    assert_eq!(
        fails(&engine, "bad.db", doc! {"insert": "c", "documents": [{}]}),
        73
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"insert": "c", "documents": [{}], "ordered": "yes"}
        ),
        14
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"update": "c", "updates": [{"q": 1, "u": {}}]}
        ),
        14
    );
    assert_eq!(
        fails(&engine, "db", doc! {"update": "c", "updates": [{"q": {}}]}),
        40414
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"delete": "c", "deletes": [{"q": {}, "limit": 2}]}
        ),
        9
    );
    assert_eq!(
        fails(&engine, "db", doc! {"delete": "c", "deletes": [{"q": {}}]}),
        40414
    );
    assert_eq!(fails(&engine, "db", doc! {"frobnicate": 1}), 59);
    let reply = engine.execute("db", &doc! {"frobnicate": 1});
    assert_eq!(
        reply.get_str("errmsg").unwrap(),
        "no such command: 'frobnicate'"
    );
    // Generic fields are accepted and ignored.
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{}], "$db": "db", "lsid": {"id": 1}, "txnNumber": 1_i64,
        "writeConcern": {"w": "majority"}, "comment": "hi", "maxTimeMS": 100},
    );
}

// ---------------------------------------------------------------------------------------------
// update / delete

#[test]
fn update_single_multi_and_no_op() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..6);
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {"x": 1}, "u": {"$set": {"y": 1}}}]},
    );
    assert_eq!(
        (
            reply.get_i32("n").unwrap(),
            reply.get_i32("nModified").unwrap()
        ),
        (1, 1)
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {"x": 1}, "u": {"$set": {"y": 1}}, "multi": true}]},
    );
    assert_eq!(
        (
            reply.get_i32("n").unwrap(),
            reply.get_i32("nModified").unwrap()
        ),
        (2, 1)
    );
    let docs = find_all(&engine, "db", "c", doc! {"filter": {"y": 1}});
    assert_eq!(ids(&docs), vec![1, 4]);
    // Later statements see earlier ones of the same command.
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [
            {"q": {"_id": 0}, "u": {"$set": {"z": 1}}},
            {"q": {"z": 1}, "u": {"$set": {"z": 2}}},
        ]},
    );
    assert_eq!(reply.get_i32("nModified").unwrap(), 2);
    assert_eq!(
        find_all(&engine, "db", "c", doc! {"filter": {"_id": 0}})[0]
            .get_i32("z")
            .unwrap(),
        2
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {"_id": 99}, "u": {"$set": {"a": 1}}}]},
    );
    assert_eq!(
        (
            reply.get_i32("n").unwrap(),
            reply.get_i32("nModified").unwrap()
        ),
        (0, 0)
    );
}

#[test]
fn update_upserts() {
    let (_, engine) = engine();
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [
            {"q": {"_id": 5}, "u": {"$set": {"a": 1}}, "upsert": true},
            {"q": {"k": "x"}, "u": {"$inc": {"n": 1}}, "upsert": true},
            {"q": {"k": "x"}, "u": {"$inc": {"n": 1}}, "upsert": true},
        ]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 3);
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
    let upserted = reply.get_array("upserted").unwrap();
    assert_eq!(upserted.len(), 2);
    assert_eq!(
        upserted[0].as_document().unwrap(),
        &doc! {"index": 0, "_id": 5}
    );
    let second = upserted[1].as_document().unwrap();
    assert_eq!(second.get_i32("index").unwrap(), 1);
    assert!(matches!(second.get("_id"), Some(Bson::ObjectId(_))));
    let docs = find_all(&engine, "db", "c", doc! {"filter": {"k": "x"}});
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_i32("n").unwrap(), 2);
    assert_eq!(docs[0].keys().next().map(String::as_str), Some("_id"));
    let five = find_all(&engine, "db", "c", doc! {"filter": {"_id": 5}});
    assert_eq!(five, vec![doc! {"_id": 5, "a": 1}]);
}

#[test]
fn update_write_errors() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..3);
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "ordered": false, "updates": [
            {"q": {}, "u": {"x": 9}, "multi": true},
            {"q": {"_id": 1}, "u": {"$set": {"_id": 2}}},
            {"q": {"_id": 2}, "u": {"_id": 3, "x": 1}},
            {"q": {"_id": 0}, "u": {"y": 1}},
        ]},
    );
    let codes: Vec<i32> = reply
        .get_array("writeErrors")
        .unwrap()
        .iter()
        .map(|e| e.as_document().unwrap().get_i32("code").unwrap())
        .collect();
    assert_eq!(codes, vec![9, 66, 66]);
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
    // The replacement kept `_id` and dropped the other fields.
    assert_eq!(
        find_all(&engine, "db", "c", doc! {"filter": {"_id": 0}}),
        vec![doc! {"_id": 0, "y": 1}]
    );
    // Ordered: stops at the first error.
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [
            {"q": {"_id": 1}, "u": {"$set": {"_id": 7}}},
            {"q": {"_id": 2}, "u": {"$set": {"seen": true}}},
        ]},
    );
    assert_eq!(reply.get_array("writeErrors").unwrap().len(), 1);
    assert_eq!(reply.get_i32("n").unwrap(), 0);
}

#[test]
fn delete_one_and_many() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..9);
    let reply = ok(
        &engine,
        "db",
        doc! {"delete": "c", "deletes": [{"q": {"x": 0}, "limit": 1}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 1);
    let reply = ok(
        &engine,
        "db",
        doc! {"delete": "c", "deletes": [{"q": {"x": 0}, "limit": 0}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 2);
    let reply = ok(
        &engine,
        "db",
        doc! {"delete": "missing", "deletes": [{"q": {}, "limit": 0}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 0);
    let reply = ok(&engine, "db", doc! {"count": "c"});
    assert_eq!(reply.get_i32("n").unwrap(), 6);
}

#[test]
fn find_and_modify_variants() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..5);
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "c", "query": {"x": 1}, "sort": {"_id": -1}, "update": {"$set": {"t": 1}}},
    );
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 4, "x": 1}
    );
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1, "updatedExisting": true}
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"findandmodify": "c", "query": {"_id": 1}, "update": {"$inc": {"x": 10}}, "new": true, "fields": {"x": 1, "_id": 0}},
    );
    assert_eq!(reply.get_document("value").unwrap(), &doc! {"x": 11});
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "c", "query": {"_id": 2}, "remove": true},
    );
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 2, "x": 2}
    );
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1}
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "c", "query": {"_id": 2}, "remove": true},
    );
    assert_eq!(reply.get("value"), Some(&Bson::Null));
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 0}
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "c", "query": {"_id": 42}, "update": {"$set": {"u": 1}}, "upsert": true, "new": true},
    );
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 42, "u": 1}
    );
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1, "updatedExisting": false, "upserted": 42}
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "c", "query": {"_id": 77}, "update": {"$set": {"u": 1}}},
    );
    assert_eq!(reply.get("value"), Some(&Bson::Null));
    assert_eq!(
        fails(&engine, "db", doc! {"findAndModify": "c", "query": {}}),
        9
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"findAndModify": "c", "remove": true, "update": {}}
        ),
        9
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"findAndModify": "c", "query": 3, "remove": true}
        ),
        14
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"findAndModify": "c", "query": {"_id": 0}, "update": {"$set": {"_id": 9}}}
        ),
        66
    );
}

// ---------------------------------------------------------------------------------------------
// find / cursors

#[test]
fn find_sorts_skips_limits_and_batches() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..30);
    let reply = ok(
        &engine,
        "db",
        doc! {"find": "c", "filter": {"x": {"$ne": 2}}, "sort": {"_id": -1}, "skip": 2, "limit": 12, "batchSize": 5},
    );
    assert_eq!(cursor(&reply).get_str("ns").unwrap(), "db.c");
    let mut all = batch(&reply);
    assert_eq!(all.len(), 5);
    let mut id = cursor_id(&reply);
    let mut rounds = 0;
    while id != 0 {
        let more = ok(
            &engine,
            "db",
            doc! {"getMore": id, "collection": "c", "batchSize": 5},
        );
        assert!(cursor(&more).get_array("nextBatch").is_ok());
        all.extend(batch(&more));
        id = cursor_id(&more);
        rounds += 1;
    }
    assert_eq!(rounds, 2);
    let expected: Vec<i32> = (0..30)
        .rev()
        .filter(|i| i % 3 != 2)
        .skip(2)
        .take(12)
        .collect();
    assert_eq!(ids(&all), expected);
    // The cursor is gone once exhausted.
    assert_eq!(
        fails(&engine, "db", doc! {"getMore": id, "collection": "c"}),
        43
    );
}

#[test]
fn unsorted_find_pages_by_key() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..250);
    let reply = ok(&engine, "db", doc! {"find": "c", "projection": {"x": 0}});
    assert_eq!(batch(&reply).len(), 101);
    assert_eq!(batch(&reply)[0], doc! {"_id": 0});
    let id = cursor_id(&reply);
    assert_ne!(id, 0);
    let more = ok(&engine, "db", doc! {"getMore": id, "collection": "c"});
    assert_eq!(batch(&more).len(), 149);
    assert_eq!(cursor_id(&more), 0);
    let docs = find_all(
        &engine,
        "db",
        "c",
        doc! {"filter": {"x": 1}, "skip": 10, "limit": 50, "batchSize": 7},
    );
    let expected: Vec<i32> = (0..250).filter(|i| i % 3 == 1).skip(10).take(50).collect();
    assert_eq!(ids(&docs), expected);
    let single = ok(
        &engine,
        "db",
        doc! {"find": "c", "batchSize": 3, "singleBatch": true},
    );
    assert_eq!((batch(&single).len(), cursor_id(&single)), (3, 0));
    let empty_first = ok(&engine, "db", doc! {"find": "c", "batchSize": 0});
    assert!(batch(&empty_first).is_empty());
    assert_ne!(cursor_id(&empty_first), 0);
    let by_id = ok(&engine, "db", doc! {"find": "c", "filter": {"_id": 17.0}});
    assert_eq!(batch(&by_id), vec![doc! {"_id": 17, "x": 2}]);
    assert_eq!(cursor_id(&by_id), 0);
}

#[test]
fn cursor_resumes_after_concurrent_inserts() {
    let (_, engine) = engine();
    let docs: Vec<Document> = (0..10).map(|i| doc! {"_id": i * 10}).collect();
    ok(&engine, "db", doc! {"insert": "c", "documents": docs});
    let reply = ok(&engine, "db", doc! {"find": "c", "batchSize": 4});
    assert_eq!(ids(&batch(&reply)), vec![0, 10, 20, 30]);
    // One insert behind the cursor, one ahead of it.
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 5}, {"_id": 55}]},
    );
    ok(
        &engine,
        "db",
        doc! {"delete": "c", "deletes": [{"q": {"_id": 60}, "limit": 1}]},
    );
    let mut rest = Vec::new();
    let mut id = cursor_id(&reply);
    while id != 0 {
        let more = ok(
            &engine,
            "db",
            doc! {"getMore": id, "collection": "c", "batchSize": 3},
        );
        rest.extend(batch(&more));
        id = cursor_id(&more);
    }
    assert_eq!(ids(&rest), vec![40, 50, 55, 70, 80, 90]);
}

#[test]
fn cursor_commands_check_ids_and_namespaces() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..10);
    let reply = ok(&engine, "db", doc! {"find": "c", "batchSize": 2});
    let id = cursor_id(&reply);
    assert_eq!(
        fails(&engine, "db", doc! {"getMore": id, "collection": "other"}),
        13
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"getMore": 12345_i64, "collection": "c"}
        ),
        43
    );
    assert_eq!(
        fails(&engine, "db", doc! {"getMore": "x", "collection": "c"}),
        14
    );
    // Still usable after the namespace mismatch.
    ok(
        &engine,
        "db",
        doc! {"getMore": id, "collection": "c", "batchSize": 1},
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"killCursors": "c", "cursors": [id, 777_i64]},
    );
    assert_eq!(
        reply.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        reply.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(777)]
    );
    assert!(reply.get_array("cursorsAlive").unwrap().is_empty());
    assert!(reply.get_array("cursorsUnknown").unwrap().is_empty());
    assert_eq!(
        fails(&engine, "db", doc! {"getMore": id, "collection": "c"}),
        43
    );
    assert_eq!(engine.stats().cursors_open, 0);
}

#[test]
fn find_validates_arguments() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..3);
    assert_eq!(fails(&engine, "db", doc! {"find": "c", "filter": 1}), 14);
    assert_eq!(fails(&engine, "db", doc! {"find": "c", "sort": "x"}), 14);
    assert_eq!(fails(&engine, "db", doc! {"find": "c", "limit": -1}), 2);
    assert_eq!(fails(&engine, "db", doc! {"find": "c", "skip": "1"}), 14);
    let missing = ok(&engine, "db", doc! {"find": "nope"});
    assert_eq!(cursor_id(&missing), 0);
    assert!(batch(&missing).is_empty());
    assert_eq!(cursor(&missing).get_str("ns").unwrap(), "db.nope");
}

// ---------------------------------------------------------------------------------------------
// count / distinct / aggregate

#[test]
fn count_and_distinct() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..10);
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 100, "x": 1.0}, {"_id": 101, "x": [5, 1]}]},
    );
    let n = |command: Document| ok(&engine, "db", command).get_i32("n").unwrap();
    assert_eq!(n(doc! {"count": "c"}), 12);
    assert_eq!(n(doc! {"count": "c", "query": {"x": 0}}), 4);
    assert_eq!(n(doc! {"count": "c", "skip": 3, "limit": 4}), 4);
    assert_eq!(n(doc! {"count": "c", "skip": 11}), 1);
    assert_eq!(n(doc! {"count": "c", "query": {"x": 1}, "limit": -2}), 2);
    assert_eq!(n(doc! {"count": "missing"}), 0);
    let reply = ok(&engine, "db", doc! {"distinct": "c", "key": "x"});
    let values = reply.get_array("values").unwrap();
    assert_eq!(values.len(), 4, "{values:?}");
    assert_eq!(values[0], Bson::Int32(0));
    let reply = ok(
        &engine,
        "db",
        doc! {"distinct": "c", "key": "x", "query": {"_id": {"$lt": 3}}},
    );
    assert_eq!(
        reply.get_array("values").unwrap(),
        &vec![Bson::Int32(0), Bson::Int32(1), Bson::Int32(2)]
    );
    assert_eq!(fails(&engine, "db", doc! {"distinct": "c", "key": 1}), 14);
}

#[test]
fn aggregate_runs_pipelines() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..20);
    let reply = ok(
        &engine,
        "db",
        doc! {"aggregate": "c", "pipeline": [{"$match": {"x": 2}}, {"$sort": {"_id": -1}}, {"$limit": 3}], "cursor": {}},
    );
    assert_eq!(ids(&batch(&reply)), vec![17, 14, 11]);
    assert_eq!(cursor(&reply).get_str("ns").unwrap(), "db.c");
    let count = ok(
        &engine,
        "db",
        doc! {"aggregate": "c", "pipeline": [{"$match": {"x": 1}}, {"$skip": 1}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], "cursor": {}},
    );
    assert_eq!(batch(&count), vec![doc! {"_id": 1, "n": 6}]);
    let none = ok(
        &engine,
        "db",
        doc! {"aggregate": "c", "pipeline": [{"$match": {"x": 7}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], "cursor": {}},
    );
    assert!(batch(&none).is_empty());
    let paged = ok(
        &engine,
        "db",
        doc! {"aggregate": "c", "pipeline": [], "cursor": {"batchSize": 5}},
    );
    assert_eq!(batch(&paged).len(), 5);
    let more = ok(
        &engine,
        "db",
        doc! {"getMore": cursor_id(&paged), "collection": "c"},
    );
    assert_eq!(batch(&more).len(), 15);
    let db_level = ok(
        &engine,
        "db",
        doc! {"aggregate": 1, "pipeline": [], "cursor": {}},
    );
    assert_eq!(
        cursor(&db_level).get_str("ns").unwrap(),
        "db.$cmd.aggregate"
    );
    assert_eq!(
        fails(&engine, "db", doc! {"aggregate": "c", "pipeline": []}),
        9
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"aggregate": "c", "pipeline": {}, "cursor": {}}
        ),
        14
    );
}

// ---------------------------------------------------------------------------------------------
// catalog

#[test]
fn create_drop_and_list() {
    let (_, engine) = engine();
    ok(&engine, "db", doc! {"create": "a"});
    assert_eq!(fails(&engine, "db", doc! {"create": "a"}), 48);
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"create": "v", "viewOn": "a", "pipeline": []}
        ),
        238
    );
    seed(&engine, "db", "b", 0..3);
    seed(&engine, "other", "z", 0..1);
    let reply = ok(&engine, "db", doc! {"listCollections": 1});
    assert_eq!(
        cursor(&reply).get_str("ns").unwrap(),
        "db.$cmd.listCollections"
    );
    let listed = batch(&reply);
    let names: Vec<&str> = listed.iter().map(|c| c.get_str("name").unwrap()).collect();
    assert_eq!(names, vec!["a", "b"]);
    let first = &listed[0];
    assert_eq!(first.get_str("type").unwrap(), "collection");
    assert!(first.get_document("options").unwrap().is_empty());
    assert!(
        !first
            .get_document("info")
            .unwrap()
            .get_bool("readOnly")
            .unwrap()
    );
    assert!(first.get_document("info").unwrap().get("uuid").is_some());
    assert_eq!(
        first
            .get_document("idIndex")
            .unwrap()
            .get_str("name")
            .unwrap(),
        "_id_"
    );
    let filtered = ok(
        &engine,
        "db",
        doc! {"listCollections": 1, "filter": {"name": "b"}, "nameOnly": true},
    );
    assert_eq!(
        batch(&filtered),
        vec![doc! {"name": "b", "type": "collection"}]
    );
    let indexes = ok(&engine, "db", doc! {"listIndexes": "b"});
    assert_eq!(
        batch(&indexes),
        vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}]
    );
    assert_eq!(fails(&engine, "db", doc! {"listIndexes": "nope"}), 26);

    let databases = ok(&engine, "admin", doc! {"listDatabases": 1});
    let entries = databases.get_array("databases").unwrap();
    assert_eq!(entries.len(), 2);
    let db_entry = entries[0].as_document().unwrap();
    assert_eq!(db_entry.get_str("name").unwrap(), "db");
    assert!(db_entry.get_i64("sizeOnDisk").unwrap() > 0);
    assert!(!db_entry.get_bool("empty").unwrap());
    assert!(databases.get_i64("totalSize").unwrap() > 0);
    let names_only = ok(
        &engine,
        "admin",
        doc! {"listDatabases": 1, "nameOnly": true},
    );
    assert_eq!(
        names_only.get_array("databases").unwrap()[1]
            .as_document()
            .unwrap(),
        &doc! {"name": "other"}
    );
    assert_eq!(fails(&engine, "db", doc! {"listDatabases": 1}), 13);

    let dropped = ok(&engine, "db", doc! {"drop": "b"});
    assert_eq!(dropped.get_str("ns").unwrap(), "db.b");
    assert_eq!(dropped.get_i32("nIndexesWas").unwrap(), 1);
    assert_eq!(fails(&engine, "db", doc! {"drop": "b"}), 26);
    assert!(find_all(&engine, "db", "b", doc! {}).is_empty());
    // A recreated collection starts empty.
    ok(
        &engine,
        "db",
        doc! {"insert": "b", "documents": [{"_id": 1}]},
    );
    assert_eq!(ids(&find_all(&engine, "db", "b", doc! {})), vec![1]);

    let reply = ok(&engine, "db", doc! {"dropDatabase": 1});
    assert_eq!(reply.get_str("dropped").unwrap(), "db");
    assert!(batch(&ok(&engine, "db", doc! {"listCollections": 1})).is_empty());
    assert_eq!(ids(&find_all(&engine, "other", "z", doc! {})), vec![0]);
}

#[test]
fn coll_stats_track_writes() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..10);
    ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"pad": "xxxxxxxx"}}, "multi": true}]},
    );
    ok(
        &engine,
        "db",
        doc! {"delete": "c", "deletes": [{"q": {"_id": {"$lt": 4}}, "limit": 0}]},
    );
    let stats = ok(&engine, "db", doc! {"collStats": "c"});
    assert_eq!(stats.get_i64("count").unwrap(), 6);
    let per_doc = doc! {"_id": 5, "x": 2, "pad": "xxxxxxxx"};
    let mut bytes = Vec::new();
    per_doc.to_writer(&mut bytes).unwrap();
    assert_eq!(stats.get_i64("size").unwrap(), 6 * bytes.len() as i64);
    let size = ok(&engine, "db", doc! {"dataSize": "db.c"});
    assert_eq!(size.get_i64("numObjects").unwrap(), 6);
    let ranged = ok(
        &engine,
        "db",
        doc! {"dataSize": "db.c", "keyPattern": {"_id": 1}, "min": {"_id": 5}, "max": {"_id": 8}},
    );
    assert_eq!(ranged.get_i64("numObjects").unwrap(), 3);
    assert_eq!(fails(&engine, "db", doc! {"collStats": "nope"}), 26);
}

#[test]
fn db_hash_follows_content() {
    let (_, one) = engine();
    let (_, two) = engine();
    for engine in [&one, &two] {
        seed(engine, "db", "c", 0..50);
        ok(engine, "db", doc! {"create": "empty"});
    }
    let hash = |engine: &Engine| ok(engine, "db", doc! {"dbHash": 1});
    let (a, b) = (hash(&one), hash(&two));
    assert_eq!(
        a.get_document("collections").unwrap(),
        b.get_document("collections").unwrap()
    );
    assert_eq!(a.get_str("md5").unwrap(), b.get_str("md5").unwrap());
    ok(
        &two,
        "db",
        doc! {"update": "c", "updates": [{"q": {"_id": 49}, "u": {"$set": {"x": 100}}}]},
    );
    let changed = hash(&two);
    assert_ne!(a.get_str("md5").unwrap(), changed.get_str("md5").unwrap());
    let coll_a = a.get_document("collections").unwrap();
    let coll_b = changed.get_document("collections").unwrap();
    assert_ne!(coll_a.get_str("c").unwrap(), coll_b.get_str("c").unwrap());
    assert_eq!(
        coll_a.get_str("empty").unwrap(),
        coll_b.get_str("empty").unwrap()
    );
    let only = ok(&one, "db", doc! {"dbHash": 1, "collections": ["empty"]});
    assert_eq!(only.get_document("collections").unwrap().len(), 1);
}

#[test]
fn data_survives_reopening_the_engine() {
    let (kv, engine) = engine();
    seed(&engine, "db", "c", 0..5);
    ok(&engine, "db", doc! {"create": "d"});
    let before = ok(&engine, "db", doc! {"dbHash": 1});
    drop(engine);
    let reopened = Engine::with_kv(kv.clone() as Arc<dyn Kv>).unwrap();
    assert_eq!(
        ids(&find_all(&reopened, "db", "c", doc! {})),
        vec![0, 1, 2, 3, 4]
    );
    let after = ok(&reopened, "db", doc! {"dbHash": 1});
    assert_eq!(
        before.get_str("md5").unwrap(),
        after.get_str("md5").unwrap()
    );
    // The id counter survived: a new collection does not see another's documents.
    ok(
        &reopened,
        "db",
        doc! {"insert": "e", "documents": [{"_id": "new"}]},
    );
    assert_eq!(find_all(&reopened, "db", "e", doc! {}).len(), 1);
    assert_eq!(find_all(&reopened, "db", "c", doc! {}).len(), 5);
    assert_eq!(
        ok(&reopened, "db", doc! {"count": "d"})
            .get_i32("n")
            .unwrap(),
        0
    );
    assert_eq!(
        ok(&reopened, "db", doc! {"count": "c"})
            .get_i32("n")
            .unwrap(),
        5
    );
}

#[test]
fn count_range_uses_the_shard_key() {
    let (_, engine) = engine();
    let docs: Vec<Document> = (0..20)
        .map(|i| doc! {"_id": ObjectId::new(), "k": i})
        .collect();
    ok(&engine, "db", doc! {"insert": "c", "documents": docs});
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    );
    let count = |min: Bson, max: Bson| {
        ok(
            &engine,
            "admin",
            doc! {"_shoalCountRange": 1, "ns": "db.c", "keyPattern": {"k": 1}, "min": {"k": min}, "max": {"k": max}},
        )
        .get_i64("n")
        .unwrap()
    };
    assert_eq!(count(Bson::Int32(5), Bson::Int32(10)), 5);
    assert_eq!(count(Bson::MinKey, Bson::MaxKey), 21);
    assert_eq!(count(Bson::MinKey, Bson::Int32(0)), 1);
    let bad = doc! {"_shoalCountRange": 1, "ns": "db.c", "keyPattern": {"k": 1}, "min": {"j": 1}, "max": {"k": 2}};
    assert_eq!(fails(&engine, "admin", bad), 2);
}

#[test]
fn stats_count_operations() {
    let (_, engine) = engine();
    seed(&engine, "db", "c", 0..3);
    ok(&engine, "db", doc! {"find": "c"});
    ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}, {"q": {}, "u": {"$set": {"b": 1}}}]},
    );
    ok(
        &engine,
        "db",
        doc! {"delete": "c", "deletes": [{"q": {}, "limit": 1}]},
    );
    ok(&engine, "db", doc! {"ping": 1});
    let stats = engine.stats();
    assert_eq!(stats.inserts, 3);
    assert_eq!(stats.queries, 1);
    assert_eq!(stats.updates, 2);
    assert_eq!(stats.deletes, 1);
    assert_eq!(stats.commands, 1);
}

#[test]
fn engine_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    let (_, engine) = engine();
    let engine = Arc::new(engine);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let reply = engine.execute(
                        "db",
                        &doc! {"insert": "c", "documents": [{"_id": t * 100 + i}]},
                    );
                    assert_eq!(reply.get_i32("n").unwrap(), 1);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(
        ok(&engine, "db", doc! {"count": "c"}).get_i32("n").unwrap(),
        100
    );
    assert_eq!(
        ok(&engine, "db", doc! {"collStats": "c"})
            .get_i64("count")
            .unwrap(),
        100
    );
}

#[test]
fn batches_stop_before_sixteen_megabytes() {
    let (_, engine) = engine();
    let chunk = "y".repeat(5 * 1024 * 1024);
    for i in 0..5 {
        ok(
            &engine,
            "db",
            doc! {"insert": "big", "documents": [{"_id": i, "s": chunk.clone()}]},
        );
    }
    let reply = ok(&engine, "db", doc! {"find": "big"});
    assert_eq!(batch(&reply).len(), 3);
    let more = ok(
        &engine,
        "db",
        doc! {"getMore": cursor_id(&reply), "collection": "big"},
    );
    assert_eq!(batch(&more).len(), 2);
    assert_eq!(cursor_id(&more), 0);
    let sorted = ok(&engine, "db", doc! {"find": "big", "sort": {"_id": -1}});
    assert_eq!(ids(&batch(&sorted)), vec![4, 3, 2]);
}

#[test]
fn replacement_upsert_takes_the_query_id() {
    let (_, engine) = engine();
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {"_id": 9}, "u": {"a": 1}, "upsert": true}]},
    );
    assert_eq!(reply.get_array("upserted").unwrap().len(), 1);
    assert_eq!(
        find_all(&engine, "db", "c", doc! {}),
        vec![doc! {"_id": 9, "a": 1}]
    );
}
