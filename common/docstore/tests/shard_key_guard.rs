//! Command-level tests of the shard-key guard: `update` and `findAndModify` carrying the
//! router's `shardKeyPattern` / `upsertShardKey` must never change a document's shard key nor
//! upsert a document under another key, and must write nothing of a refused statement.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use bson::{Document, doc};
use common::{engine, fails, find_all, ok};
use shoal_docstore::Engine;

/// An engine holding `{_id: 1, k: 10, x: 1}` and `{_id: 2, k: 20, x: 1}`.
fn seeded() -> Engine {
    let (_, engine) = engine();
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 1, "k": 10, "x": 1}, {"_id": 2, "k": 20, "x": 1}]},
    );
    engine
}

/// Runs one update statement with the shard key `{k: 1}` (plus `extra` command fields) and
/// returns the reply.
fn update(engine: &Engine, statement: Document, extra: Document) -> Document {
    let mut command = doc! {"update": "c", "updates": [statement], "shardKeyPattern": {"k": 1}};
    command.extend(extra);
    ok(engine, "db", command)
}

/// The single write error of a reply: (code, errmsg).
fn write_error(reply: &Document) -> (i32, String) {
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors.len(), 1, "{reply}");
    let error = errors[0].as_document().unwrap();
    let errmsg = error.get_str("errmsg").unwrap().to_owned();
    (error.get_i32("code").unwrap(), errmsg)
}

fn all(engine: &Engine) -> Vec<Document> {
    find_all(engine, "db", "c", doc! {})
}

fn initial() -> Vec<Document> {
    vec![
        doc! {"_id": 1, "k": 10, "x": 1},
        doc! {"_id": 2, "k": 20, "x": 1},
    ]
}

/// Asserts that a statement is refused with ImmutableField and changes nothing.
fn refused(statement: Document) {
    let engine = seeded();
    let reply = update(&engine, statement.clone(), doc! {});
    let (code, errmsg) = write_error(&reply);
    assert_eq!(code, 66, "{statement}: {errmsg}");
    assert_eq!(reply.get_i32("nModified").unwrap(), 0);
    assert_eq!(all(&engine), initial());
}

/// Asserts that a statement succeeds and modifies one document.
fn accepted(statement: Document, expected: Document) {
    let engine = seeded();
    let reply = update(&engine, statement.clone(), doc! {});
    assert!(reply.get("writeErrors").is_none(), "{statement}: {reply}");
    assert_eq!(all(&engine)[0], expected);
}

#[test]
fn setting_the_key_to_a_new_value_is_refused_with_mongodb_s_message() {
    let engine = seeded();
    let reply = update(
        &engine,
        doc! {"q": {"_id": 1}, "u": {"$set": {"k": 90}}},
        doc! {},
    );
    let (code, errmsg) = write_error(&reply);
    assert_eq!(code, 66);
    assert_eq!(
        errmsg,
        "After applying the update, the (immutable) shard key field 'k' was found to have been \
         altered to 90"
    );
    assert_eq!(all(&engine), initial());
}

#[test]
fn updates_that_keep_the_key_are_accepted() {
    accepted(
        doc! {"q": {"_id": 1}, "u": {"$set": {"k": 10.0, "y": 1}}},
        doc! {"_id": 1, "k": 10.0, "x": 1, "y": 1},
    );
    accepted(
        doc! {"q": {"_id": 1}, "u": {"k": 10, "z": 3}},
        doc! {"_id": 1, "k": 10, "z": 3},
    );
    accepted(
        doc! {"q": {"_id": 1}, "u": [{"$set": {"x": 5}}]},
        doc! {"_id": 1, "k": 10, "x": 5},
    );
}

#[test]
fn every_way_of_changing_the_key_is_refused() {
    refused(doc! {"q": {"_id": 1}, "u": {"k": 11, "x": 1}});
    refused(doc! {"q": {"_id": 1}, "u": {"x": 1}});
    refused(doc! {"q": {"_id": 1}, "u": {"$unset": {"k": ""}}});
    refused(doc! {"q": {"_id": 1}, "u": {"$rename": {"x": "k"}}});
    refused(doc! {"q": {"_id": 1}, "u": {"$inc": {"k": 1}}});
    refused(doc! {"q": {"_id": 1}, "u": [{"$set": {"k": "$x"}}]});
}

#[test]
fn a_multi_update_changing_one_key_writes_none_of_its_documents() {
    let engine = seeded();
    let statement = doc! {
        "q": {}, "u": [{"$set": {"x": 9, "k": {"$cond": [{"$eq": ["$_id", 2]}, 99, "$k"]}}}],
        "multi": true,
    };
    let reply = update(&engine, statement, doc! {});
    let (code, errmsg) = write_error(&reply);
    assert_eq!(code, 66);
    assert!(errmsg.ends_with("altered to 99"), "{errmsg}");
    assert_eq!(all(&engine), initial());
}

#[test]
fn a_later_statement_of_an_unordered_batch_still_runs() {
    let engine = seeded();
    let command = doc! {
        "update": "c", "ordered": false, "shardKeyPattern": {"k": 1},
        "updates": [
            {"q": {"_id": 1}, "u": {"$set": {"k": 1}}},
            {"q": {"_id": 2}, "u": {"$set": {"x": 7}}},
        ],
    };
    let reply = ok(&engine, "db", command);
    assert_eq!(write_error(&reply).0, 66);
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
    assert_eq!(all(&engine)[1], doc! {"_id": 2, "k": 20, "x": 7});
}

#[test]
fn a_dotted_key_changed_through_its_parent_is_refused() {
    let (_, engine) = engine();
    ok(
        &engine,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 1, "a": {"b": 1, "c": 1}}]},
    );
    let command = doc! {
        "update": "c", "shardKeyPattern": {"a.b": 1},
        "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": {"b": 2}}}}],
    };
    let (code, errmsg) = write_error(&ok(&engine, "db", command));
    assert_eq!(code, 66);
    assert!(errmsg.contains("field 'a.b' was found"), "{errmsg}");
    let same = doc! {
        "update": "c", "shardKeyPattern": {"a.b": 1},
        "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": {"b": 1}}}}],
    };
    assert!(ok(&engine, "db", same).get("writeErrors").is_none());
    assert_eq!(all(&engine), vec![doc! {"_id": 1, "a": {"b": 1}}]);
}

#[test]
fn an_array_in_the_new_key_fails_the_statement() {
    let engine = seeded();
    let reply = update(
        &engine,
        doc! {"q": {"_id": 1}, "u": {"$set": {"k": [10]}}},
        doc! {},
    );
    assert_eq!(write_error(&reply).0, 2);
    assert_eq!(all(&engine), initial());
}

#[test]
fn find_and_modify_refuses_a_key_change() {
    let engine = seeded();
    let command = doc! {
        "findAndModify": "c", "query": {"_id": 2}, "update": {"$set": {"k": 90}},
        "shardKeyPattern": {"k": 1},
    };
    assert_eq!(fails(&engine, "db", command), 66);
    assert_eq!(all(&engine), initial());
    let keep = doc! {
        "findAndModify": "c", "query": {"_id": 2}, "update": {"$set": {"x": 4}}, "new": true,
        "shardKeyPattern": {"k": 1},
    };
    let reply = ok(&engine, "db", keep);
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 2, "k": 20, "x": 4}
    );
}

#[test]
fn an_upsert_must_insert_the_routed_key() {
    let engine = seeded();
    let statement = doc! {
        "q": {"k": -5}, "u": {"$setOnInsert": {"k": 95.5}}, "upsert": true,
    };
    let reply = update(
        &engine,
        statement.clone(),
        doc! {"upsertShardKey": {"k": -5}},
    );
    let (code, errmsg) = write_error(&reply);
    assert_eq!(code, 66);
    assert!(errmsg.starts_with("Upsert would insert a document whose shard key"));
    assert!(reply.get("upserted").is_none());
    assert_eq!(all(&engine), initial());
    let fine = doc! {"q": {"k": -5}, "u": {"$set": {"x": 3}}, "upsert": true};
    let reply = update(&engine, fine, doc! {"upsertShardKey": {"k": -5}});
    assert_eq!(reply.get_array("upserted").unwrap().len(), 1);
    assert_eq!(
        find_all(&engine, "db", "c", doc! {"filter": {"k": -5}}).len(),
        1
    );
}

#[test]
fn find_and_modify_upsert_must_insert_the_routed_key() {
    let engine = seeded();
    let command = doc! {
        "findAndModify": "c", "query": {"k": -5}, "update": {"$setOnInsert": {"k": 95.5}},
        "upsert": true, "shardKeyPattern": {"k": 1}, "upsertShardKey": {"k": -5},
    };
    assert_eq!(fails(&engine, "db", command), 66);
    assert_eq!(all(&engine), initial());
}

#[test]
fn without_the_fields_the_old_behaviour_holds() {
    let engine = seeded();
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"k": 90}}}]},
    );
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
    let command = doc! {
        "findAndModify": "c", "query": {"k": -5}, "update": {"$setOnInsert": {"k": 95.5}},
        "upsert": true,
    };
    ok(&engine, "db", command);
    assert_eq!(all(&engine).len(), 3);
}

#[test]
fn malformed_fields_are_command_errors() {
    let engine = seeded();
    let statement = doc! {"q": {"_id": 1}, "u": {"$set": {"y": 1}}};
    let wrong_type = doc! {"update": "c", "updates": [statement.clone()], "shardKeyPattern": 1};
    assert_eq!(fails(&engine, "db", wrong_type), 14);
    let bad_pattern =
        doc! {"update": "c", "updates": [statement.clone()], "shardKeyPattern": {"k": -1}};
    assert_eq!(fails(&engine, "db", bad_pattern), 2);
    let key_type = doc! {
        "findAndModify": "c", "query": {}, "update": {"$set": {"y": 1}},
        "shardKeyPattern": {"k": 1}, "upsertShardKey": "k",
    };
    assert_eq!(fails(&engine, "db", key_type), 14);
    assert_eq!(all(&engine), initial());
}
