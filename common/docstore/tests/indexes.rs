//! Secondary indexes through the command layer over `MemKv`: index DDL replies and errors,
//! uniqueness on every write path, multikey/sparse/partial indexes, the planner's choice as
//! `explain` shows it, collMod/renameCollection, `$lookup`, and persistence across a reopen; also
//! schema validators (`create`/`collMod`), which are checked on the same write path.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::sync::Arc;

use bson::{Bson, Document, doc};
use common::{batch, engine, fails, find_all, ids, ok};
use shoal_docstore::{Engine, Kv, Space};

fn create_index(engine: &Engine, coll: &str, spec: Document) -> Document {
    ok(
        engine,
        "db",
        doc! {"createIndexes": coll, "indexes": [spec]},
    )
}

fn index_names(engine: &Engine, coll: &str) -> Vec<String> {
    let reply = ok(engine, "db", doc! {"listIndexes": coll});
    batch(&reply)
        .iter()
        .map(|index| index.get_str("name").unwrap().to_owned())
        .collect()
}

fn insert(engine: &Engine, coll: &str, docs: Vec<Document>) -> Document {
    ok(engine, "db", doc! {"insert": coll, "documents": docs})
}

/// `(winning stage, input stage or "", index name or "", keys examined, docs examined,
/// returned)` of an explain.
fn explain(engine: &Engine, command: Document) -> (String, String, String, i64, i64, i64) {
    let reply = ok(
        engine,
        "db",
        doc! {"explain": command, "verbosity": "executionStats"},
    );
    plan_summary(&reply)
}

fn plan_summary(reply: &Document) -> (String, String, String, i64, i64, i64) {
    let winning = reply
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    let input = winning.get_document("inputStage").ok();
    let stats = reply.get_document("executionStats").unwrap();
    let number = |field: &str| match stats.get(field).unwrap() {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        other => panic!("{field} is {other}"),
    };
    (
        winning.get_str("stage").unwrap().to_owned(),
        input.map_or(String::new(), |s| s.get_str("stage").unwrap().to_owned()),
        input.map_or(String::new(), |s| {
            s.get_str("indexName").unwrap().to_owned()
        }),
        number("totalKeysExamined"),
        number("totalDocsExamined"),
        number("nReturned"),
    )
}

fn write_error(reply: &Document) -> Document {
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors.len(), 1, "{reply}");
    errors[0].as_document().unwrap().clone()
}

fn seed_people(engine: &Engine, n: i32) {
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! {"_id": i, "age": i % 50, "name": format!("p{i:04}"), "tags": [i % 3, i % 5]})
        .collect();
    insert(engine, "people", docs);
}

// ---------------------------------------------------------------------------------------------
// createIndexes / listIndexes / dropIndexes

#[test]
fn create_indexes_replies_like_mongodb() {
    let (_, engine) = engine();
    let reply = create_index(&engine, "c", doc! {"key": {"a": 1, "b": -1}});
    assert_eq!(reply.get_i32("numIndexesBefore").unwrap(), 1);
    assert_eq!(reply.get_i32("numIndexesAfter").unwrap(), 2);
    assert!(reply.get_bool("createdCollectionAutomatically").unwrap());
    assert!(reply.get("note").is_none());
    assert_eq!(index_names(&engine, "c"), vec!["_id_", "a_1_b_-1"]);
    // The same index again (by default name or explicitly) is a no-op.
    let again = create_index(
        &engine,
        "c",
        doc! {"key": {"a": 1, "b": -1}, "name": "a_1_b_-1"},
    );
    assert_eq!(again.get_i32("numIndexesAfter").unwrap(), 2);
    assert_eq!(again.get_str("note").unwrap(), "all indexes already exist");
    assert!(!again.get_bool("createdCollectionAutomatically").unwrap());
    // 1.0 is the same direction as 1.
    let doubles = create_index(&engine, "c", doc! {"key": {"a": 1.0, "b": -1_i64}});
    assert_eq!(
        doubles.get_str("note").unwrap(),
        "all indexes already exist"
    );
    let id_again = create_index(&engine, "c", doc! {"key": {"_id": 1}, "name": "_id_"});
    assert_eq!(
        id_again.get_str("note").unwrap(),
        "all indexes already exist"
    );
    let two = ok(
        &engine,
        "db",
        doc! {"createIndexes": "c", "indexes": [
            {"key": {"u": 1}, "name": "u", "unique": true},
            {"key": {"s": 1}, "name": "s", "sparse": true},
            {"key": {"p": 1}, "name": "p", "partialFilterExpression": {"p": {"$gt": 5}}},
            {"key": {"h": 1}, "name": "h", "hidden": true},
        ]},
    );
    assert_eq!(two.get_i32("numIndexesAfter").unwrap(), 6);
    let listed = batch(&ok(&engine, "db", doc! {"listIndexes": "c"}));
    assert_eq!(listed[0], doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
    assert_eq!(
        listed[1],
        doc! {"v": 2, "key": {"a": 1, "b": -1}, "name": "a_1_b_-1"}
    );
    assert_eq!(
        listed[2],
        doc! {"v": 2, "key": {"u": 1}, "name": "u", "unique": true}
    );
    assert_eq!(
        listed[3],
        doc! {"v": 2, "key": {"s": 1}, "name": "s", "sparse": true}
    );
    assert_eq!(
        listed[4],
        doc! {"v": 2, "key": {"p": 1}, "name": "p", "partialFilterExpression": {"p": {"$gt": 5}}}
    );
    assert_eq!(
        listed[5],
        doc! {"v": 2, "key": {"h": 1}, "name": "h", "hidden": true}
    );
    let reply = ok(&engine, "db", doc! {"listIndexes": "c"});
    assert_eq!(
        reply.get_document("cursor").unwrap().get_str("ns").unwrap(),
        "db.c"
    );
}

#[test]
fn create_indexes_refuses_conflicts_and_bad_specs() {
    let (_, engine) = engine();
    create_index(&engine, "c", doc! {"key": {"a": 1}, "name": "a"});
    let conflict = |spec: Document| {
        let reply = engine.execute("db", &doc! {"createIndexes": "c", "indexes": [spec]});
        (
            reply.get_i32("code").unwrap_or(0),
            reply.get_str("codeName").unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        conflict(doc! {"key": {"b": 1}, "name": "a"}),
        (86, "IndexKeySpecsConflict".to_owned())
    );
    assert_eq!(
        conflict(doc! {"key": {"a": 1}, "name": "a", "unique": true}),
        (85, "IndexOptionsConflict".to_owned())
    );
    assert_eq!(
        conflict(doc! {"key": {"a": 1}, "name": "other"}),
        (85, "IndexOptionsConflict".to_owned())
    );
    assert_eq!(conflict(doc! {"key": {"a": "text"}}).0, 67);
    assert_eq!(conflict(doc! {"key": {"a": "2dsphere"}}).0, 67);
    assert_eq!(conflict(doc! {"key": {"a": "hashed"}}).0, 67);
    assert_eq!(conflict(doc! {"key": {}}).0, 67);
    assert_eq!(conflict(doc! {"key": {"a": 1}, "name": "*"}).0, 2);
    assert_eq!(conflict(doc! {"key": {"z": 1}, "bogus": true}).0, 197);
    assert_eq!(conflict(doc! {"key": {"z": 1}, "unique": "yes"}).0, 14);
    assert_eq!(
        conflict(doc! {"key": {"z": 1}, "sparse": true, "partialFilterExpression": {"z": 1}}).0,
        67
    );
    let reply = engine.execute(
        "db",
        &doc! {"createIndexes": "c", "indexes": [{"key": {"a": "text"}}]},
    );
    assert!(
        reply.get_str("errmsg").unwrap().contains("not supported"),
        "{reply}"
    );
    assert_eq!(
        fails(&engine, "db", doc! {"createIndexes": "c", "indexes": []}),
        2
    );
    assert_eq!(fails(&engine, "db", doc! {"createIndexes": "c"}), 40414);
    assert_eq!(
        fails(&engine, "db", doc! {"createIndexes": "c", "indexes": [1]}),
        14
    );
    // Failed requests created nothing.
    assert_eq!(index_names(&engine, "c"), vec!["_id_", "a"]);
    // Too many indexes.
    let many: Vec<Document> = (0..63)
        .map(|i| doc! {"key": {format!("f{i}"): 1}})
        .collect();
    assert_eq!(
        fails(&engine, "db", doc! {"createIndexes": "c", "indexes": many}),
        67
    );
    assert_eq!(index_names(&engine, "c").len(), 2);
}

#[test]
fn drop_indexes_by_name_key_list_and_star() {
    let (_, engine) = engine();
    ok(
        &engine,
        "db",
        doc! {"createIndexes": "c", "indexes": [
            {"key": {"a": 1}}, {"key": {"b": 1}}, {"key": {"c": 1}}, {"key": {"d": -1}}
        ]},
    );
    insert(
        &engine,
        "c",
        vec![doc! {"_id": 1, "a": 1, "b": 1, "c": 1, "d": 1}],
    );
    let reply = ok(&engine, "db", doc! {"dropIndexes": "c", "index": "a_1"});
    assert_eq!(reply.get_i32("nIndexesWas").unwrap(), 5);
    let reply = ok(&engine, "db", doc! {"dropIndexes": "c", "index": {"d": -1}});
    assert_eq!(reply.get_i32("nIndexesWas").unwrap(), 4);
    assert_eq!(index_names(&engine, "c"), vec!["_id_", "b_1", "c_1"]);
    assert_eq!(
        fails(&engine, "db", doc! {"dropIndexes": "c", "index": "_id_"}),
        72
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"dropIndexes": "c", "index": {"_id": 1}}
        ),
        72
    );
    assert_eq!(
        fails(&engine, "db", doc! {"dropIndexes": "c", "index": "nope"}),
        27
    );
    assert_eq!(
        fails(&engine, "db", doc! {"dropIndexes": "c", "index": {"zz": 1}}),
        27
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"dropIndexes": "c", "index": ["b_1", "nope"]}
        ),
        27
    );
    assert_eq!(
        fails(&engine, "db", doc! {"dropIndexes": "missing", "index": "*"}),
        26
    );
    assert_eq!(
        fails(&engine, "db", doc! {"dropIndexes": "c", "index": 5}),
        14
    );
    assert_eq!(index_names(&engine, "c").len(), 3);
    let reply = ok(
        &engine,
        "db",
        doc! {"dropIndexes": "c", "index": ["b_1", "c_1"]},
    );
    assert_eq!(reply.get_i32("nIndexesWas").unwrap(), 3);
    ok(
        &engine,
        "db",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}}]},
    );
    let reply = ok(&engine, "db", doc! {"dropIndexes": "c", "index": "*"});
    assert_eq!(reply.get_i32("nIndexesWas").unwrap(), 2);
    assert_eq!(index_names(&engine, "c"), vec!["_id_"]);
    assert_eq!(
        find_all(&engine, "db", "c", doc! {"filter": {"a": 1}}).len(),
        1
    );
}

/// Every index entry of every collection (the `x` range of the docs space).
fn index_entries(kv: &dyn Kv) -> usize {
    kv.scan(Space::Docs, b"x", b"y", 1_000_000).unwrap().len()
}

#[test]
fn dropping_indexes_collections_and_databases_removes_entries() {
    let (kv, engine) = engine();
    seed_people(&engine, 20);
    create_index(&engine, "people", doc! {"key": {"age": 1}});
    create_index(&engine, "people", doc! {"key": {"tags": 1}});
    // 20 age entries, and tags [i%3, i%5] has one or two distinct values per document.
    let tags: usize = (0..20).map(|i| if i % 3 == i % 5 { 1 } else { 2 }).sum();
    assert_eq!(index_entries(kv.as_ref()), 20 + tags);
    ok(
        &engine,
        "db",
        doc! {"dropIndexes": "people", "index": "tags_1"},
    );
    assert_eq!(index_entries(kv.as_ref()), 20);
    let reply = ok(&engine, "db", doc! {"drop": "people"});
    assert_eq!(reply.get_i32("nIndexesWas").unwrap(), 2);
    assert_eq!(index_entries(kv.as_ref()), 0);
    seed_people(&engine, 5);
    create_index(&engine, "people", doc! {"key": {"age": 1}});
    assert_eq!(index_entries(kv.as_ref()), 5);
    ok(&engine, "db", doc! {"dropDatabase": 1});
    assert_eq!(index_entries(kv.as_ref()), 0);
}

// ---------------------------------------------------------------------------------------------
// Uniqueness

#[test]
fn unique_indexes_refuse_duplicates_on_every_write_path() {
    let (_, engine) = engine();
    insert(
        &engine,
        "u",
        vec![doc! {"_id": 1, "e": "a@x"}, doc! {"_id": 2, "e": "b@x"}],
    );
    create_index(
        &engine,
        "u",
        doc! {"key": {"e": 1}, "name": "e_1", "unique": true},
    );
    // insert
    let reply = insert(&engine, "u", vec![doc! {"_id": 3, "e": "a@x"}]);
    let error = write_error(&reply);
    assert_eq!(error.get_i32("code").unwrap(), 11000);
    assert_eq!(
        error.get_str("errmsg").unwrap(),
        "E11000 duplicate key error collection: db.u index: e_1 dup key: { e: \"a@x\" }"
    );
    assert_eq!(error.get_document("keyPattern").unwrap(), &doc! {"e": 1});
    assert_eq!(error.get_document("keyValue").unwrap(), &doc! {"e": "a@x"});
    // update
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "u", "updates": [{"q": {"_id": 2}, "u": {"$set": {"e": "a@x"}}}]},
    );
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 11000);
    // upsert
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "u", "updates": [{"q": {"_id": 9}, "u": {"$set": {"e": "b@x"}}, "upsert": true}]},
    );
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 11000);
    // findAndModify, update and upsert
    let reply = engine.execute(
        "db",
        &doc! {"findAndModify": "u", "query": {"_id": 1}, "update": {"$set": {"e": "b@x"}}},
    );
    assert_eq!(reply.get_i32("code").unwrap(), 11000, "{reply}");
    assert_eq!(reply.get_document("keyValue").unwrap(), &doc! {"e": "b@x"});
    let reply = engine.execute(
        "db",
        &doc! {"findAndModify": "u", "query": {"_id": 8}, "update": {"$set": {"e": "b@x"}}, "upsert": true},
    );
    assert_eq!(reply.get_i32("code").unwrap(), 11000, "{reply}");
    // Changing one's own key, freeing a key and reusing it are fine.
    ok(
        &engine,
        "db",
        doc! {"update": "u", "updates": [{"q": {"_id": 1}, "u": {"$set": {"e": "c@x", "n": 1}}}]},
    );
    let reply = insert(&engine, "u", vec![doc! {"_id": 4, "e": "a@x"}]);
    assert!(reply.get("writeErrors").is_none(), "{reply}");
    ok(
        &engine,
        "db",
        doc! {"delete": "u", "deletes": [{"q": {"_id": 4}, "limit": 1}]},
    );
    let reply = insert(&engine, "u", vec![doc! {"_id": 5, "e": "a@x"}]);
    assert!(reply.get("writeErrors").is_none(), "{reply}");
    // Two documents missing the field share the null key.
    insert(&engine, "u", vec![doc! {"_id": 6}]);
    let reply = insert(&engine, "u", vec![doc! {"_id": 7}]);
    assert_eq!(
        write_error(&reply).get_document("keyValue").unwrap(),
        &doc! {"e": Bson::Null}
    );
    let emails: Vec<i32> = ids(&find_all(&engine, "db", "u", doc! {"sort": {"_id": 1}}));
    assert_eq!(emails, vec![1, 2, 5, 6]);
}

#[test]
fn a_failing_multi_update_statement_leaves_no_trace() {
    let (_, engine) = engine();
    insert(
        &engine,
        "u",
        vec![
            doc! {"_id": 1, "k": 1, "g": 1},
            doc! {"_id": 2, "k": 2, "g": 1},
            doc! {"_id": 3, "k": 10, "g": 2},
        ],
    );
    create_index(&engine, "u", doc! {"key": {"k": 1}, "unique": true});
    // _id 1 moves to k 2 while _id 2 still holds it: the statement fails as a whole, the next
    // statement of the unordered batch still runs.
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "u", "ordered": false, "updates": [
            {"q": {"g": 1}, "u": {"$inc": {"k": 1}}, "multi": true},
            {"q": {"g": 2}, "u": {"$inc": {"k": 1}}},
        ]},
    );
    assert_eq!(write_error(&reply).get_i32("index").unwrap(), 0);
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
    let docs = find_all(&engine, "db", "u", doc! {"sort": {"_id": 1}});
    let keys: Vec<i32> = docs.iter().map(|d| d.get_i32("k").unwrap()).collect();
    assert_eq!(keys, vec![1, 2, 11]);
    // The index still has exactly the right entries: k = 11 is found, 10 is gone.
    assert_eq!(
        ids(&find_all(&engine, "db", "u", doc! {"filter": {"k": 11}})),
        vec![3]
    );
    assert!(find_all(&engine, "db", "u", doc! {"filter": {"k": 10}}).is_empty());
    let reply = insert(&engine, "u", vec![doc! {"_id": 4, "k": 10}]);
    assert!(reply.get("writeErrors").is_none(), "{reply}");
}

#[test]
fn building_a_unique_index_over_duplicates_creates_nothing() {
    let (kv, engine) = engine();
    insert(
        &engine,
        "d",
        vec![
            doc! {"_id": 1, "e": 1},
            doc! {"_id": 2, "e": 2},
            doc! {"_id": 3, "e": 1.0},
        ],
    );
    let reply = engine.execute(
        "db",
        &doc! {"createIndexes": "d", "indexes": [{"key": {"x": 1}}, {"key": {"e": 1}, "unique": true}]},
    );
    assert_eq!(reply.get_i32("code").unwrap(), 11000, "{reply}");
    assert_eq!(reply.get_str("codeName").unwrap(), "DuplicateKey");
    let dup = reply.get_document("keyValue").unwrap().get("e").cloned();
    assert!(
        matches!(dup, Some(Bson::Double(1.0)) | Some(Bson::Int32(1))),
        "{reply}"
    );
    assert_eq!(index_names(&engine, "d"), vec!["_id_"]);
    assert_eq!(index_entries(kv.as_ref()), 0);
    // A multikey unique index: two documents sharing one element conflict, one document may
    // repeat an element.
    insert(&engine, "m", vec![doc! {"_id": 1, "t": [1, 1, 2]}]);
    create_index(&engine, "m", doc! {"key": {"t": 1}, "unique": true});
    let reply = insert(&engine, "m", vec![doc! {"_id": 2, "t": [3, 2]}]);
    assert_eq!(
        write_error(&reply).get_document("keyValue").unwrap(),
        &doc! {"t": 2}
    );
}

// ---------------------------------------------------------------------------------------------
// Multikey, sparse, partial

#[test]
fn multikey_indexes_find_array_elements_and_refuse_parallel_arrays() {
    let (_, engine) = engine();
    insert(
        &engine,
        "m",
        vec![
            doc! {"_id": 1, "t": ["a", "b"], "n": [{"v": 1}, {"v": 5}]},
            doc! {"_id": 2, "t": "b", "n": {"v": 5}},
            doc! {"_id": 3, "t": [], "n": []},
        ],
    );
    create_index(&engine, "m", doc! {"key": {"t": 1}});
    create_index(&engine, "m", doc! {"key": {"n.v": 1}});
    let found = |filter: Document| {
        ids(&find_all(
            &engine,
            "db",
            "m",
            doc! {"filter": filter, "sort": {"_id": 1}},
        ))
    };
    assert_eq!(found(doc! {"t": "b"}), vec![1, 2]);
    assert_eq!(found(doc! {"t": {"$in": ["a", "z"]}}), vec![1]);
    assert_eq!(found(doc! {"n.v": 5}), vec![1, 2]);
    assert_eq!(found(doc! {"n.v": {"$gt": 0, "$lt": 2}}), vec![1]);
    // Each bound met by another element still matches on a multikey index.
    assert_eq!(found(doc! {"n.v": {"$gt": 2, "$lt": 4}}), vec![1]);
    assert_eq!(found(doc! {"t": []}), vec![3]);
    let (_, input, index, keys, docs, returned) =
        explain(&engine, doc! {"find": "m", "filter": {"t": "b"}});
    assert_eq!((input.as_str(), index.as_str()), ("IXSCAN", "t_1"));
    assert_eq!((keys, docs, returned), (2, 2, 2));
    // Documents 1 and 3 already hold two arrays.
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"createIndexes": "m", "indexes": [{"key": {"t": 1, "n.v": 1}}]}
        ),
        171
    );
    create_index(&engine, "pair", doc! {"key": {"t": 1, "n.v": 1}});
    insert(
        &engine,
        "pair",
        vec![doc! {"_id": 1, "t": [1, 2], "n": {"v": 1}}],
    );
    let reply = insert(
        &engine,
        "pair",
        vec![doc! {"_id": 4, "t": [1, 2], "n": [{"v": 1}]}],
    );
    let error = write_error(&reply);
    assert_eq!(error.get_i32("code").unwrap(), 171);
    assert_eq!(
        error.get_str("codeName").unwrap(),
        "CannotIndexParallelArrays"
    );
}

#[test]
fn sparse_and_partial_indexes_keep_results_exact() {
    let (_, engine) = engine();
    insert(
        &engine,
        "s",
        vec![
            doc! {"_id": 1, "a": 1, "b": 1},
            doc! {"_id": 2, "b": 7},
            doc! {"_id": 3, "a": null, "b": 9},
            doc! {"_id": 4, "a": 5},
        ],
    );
    create_index(&engine, "s", doc! {"key": {"a": 1}, "sparse": true});
    create_index(
        &engine,
        "s",
        doc! {"key": {"b": 1}, "partialFilterExpression": {"b": {"$gt": 5}}},
    );
    let found = |filter: Document| {
        ids(&find_all(
            &engine,
            "db",
            "s",
            doc! {"filter": filter, "sort": {"_id": 1}},
        ))
    };
    let plan = |filter: Document| explain(&engine, doc! {"find": "s", "filter": filter}).2;
    assert_eq!(found(doc! {"a": null}), vec![2, 3]);
    assert_eq!(plan(doc! {"a": null}), "");
    assert_eq!(found(doc! {"a": {"$gte": 1}}), vec![1, 4]);
    assert_eq!(plan(doc! {"a": {"$gte": 1}}), "a_1");
    assert_eq!(found(doc! {"b": 9}), vec![3]);
    assert_eq!(plan(doc! {"b": 9}), "b_1");
    assert_eq!(found(doc! {"b": 1}), vec![1]);
    assert_eq!(plan(doc! {"b": 1}), "");
    assert_eq!(found(doc! {"b": {"$gt": 6}}), vec![2, 3]);
    assert_eq!(plan(doc! {"b": {"$gt": 6}}), "b_1");
    // A sort alone never uses a sparse index (it would lose documents).
    let sorted = find_all(&engine, "db", "s", doc! {"sort": {"a": 1}});
    assert_eq!(sorted.len(), 4);
    // Updates move documents in and out of the partial index.
    ok(
        &engine,
        "db",
        doc! {"update": "s", "updates": [{"q": {"_id": 1}, "u": {"$set": {"b": 8}}}, {"q": {"_id": 3}, "u": {"$set": {"b": 0}}}]},
    );
    assert_eq!(found(doc! {"b": {"$gt": 6}}), vec![1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Planner and explain

#[test]
fn explain_shows_the_chosen_plan_and_what_it_examined() {
    let (_, engine) = engine();
    seed_people(&engine, 200);
    let scan = explain(
        &engine,
        doc! {"find": "people", "filter": {"name": "p0042"}},
    );
    assert_eq!(
        scan,
        ("COLLSCAN".into(), String::new(), String::new(), 0, 200, 1)
    );
    create_index(&engine, "people", doc! {"key": {"name": 1}});
    create_index(&engine, "people", doc! {"key": {"age": 1, "name": -1}});
    let point = explain(
        &engine,
        doc! {"find": "people", "filter": {"name": "p0042"}},
    );
    assert_eq!(
        point,
        ("FETCH".into(), "IXSCAN".into(), "name_1".into(), 1, 1, 1)
    );
    let range = explain(
        &engine,
        doc! {"find": "people", "filter": {"age": {"$gte": 10, "$lt": 12}}},
    );
    assert_eq!(
        range,
        (
            "FETCH".into(),
            "IXSCAN".into(),
            "age_1_name_-1".into(),
            8,
            8,
            8
        )
    );
    let listed = explain(
        &engine,
        doc! {"find": "people", "filter": {"age": {"$in": [3, 7, 99]}}, "limit": 5},
    );
    assert_eq!(listed.2, "age_1_name_-1");
    assert_eq!(listed.5, 5);
    assert!(listed.3 <= 5, "{listed:?}");
    // The sort comes from the index: only limit entries are read.
    let sorted = explain(
        &engine,
        doc! {"find": "people", "sort": {"name": -1}, "limit": 3},
    );
    assert_eq!((sorted.2.as_str(), sorted.3, sorted.5), ("name_1", 3, 3));
    let docs = find_all(
        &engine,
        "db",
        "people",
        doc! {"sort": {"name": -1}, "limit": 3},
    );
    assert_eq!(ids(&docs), vec![199, 198, 197]);
    let by_age = find_all(
        &engine,
        "db",
        "people",
        doc! {"filter": {"age": 7}, "sort": {"name": 1}},
    );
    assert_eq!(ids(&by_age), vec![7, 57, 107, 157]);
    // Equality on a field beats a sort-only index; _id point lookups stay point lookups.
    let mixed = explain(
        &engine,
        doc! {"find": "people", "filter": {"age": 5}, "sort": {"name": 1}},
    );
    assert_eq!(mixed.2, "age_1_name_-1");
    let by_id = explain(
        &engine,
        doc! {"find": "people", "filter": {"_id": 5, "age": 5}},
    );
    assert_eq!(
        by_id,
        ("FETCH".into(), "IXSCAN".into(), "_id_".into(), 1, 1, 1)
    );
    // hint forces a plan.
    let natural = explain(
        &engine,
        doc! {"find": "people", "filter": {"name": "p0001"}, "hint": {"$natural": 1}},
    );
    assert_eq!(natural.0, "COLLSCAN");
    let hinted = explain(
        &engine,
        doc! {"find": "people", "filter": {"name": "p0001"}, "hint": "age_1_name_-1"},
    );
    assert_eq!((hinted.2.as_str(), hinted.5), ("age_1_name_-1", 1));
    assert_eq!(
        fails(&engine, "db", doc! {"find": "people", "hint": "nope"}),
        2
    );
    // count, distinct, aggregate, update, delete, findAndModify.
    let count = explain(&engine, doc! {"count": "people", "query": {"age": 9}});
    assert_eq!(
        (count.2.as_str(), count.4, count.5),
        ("age_1_name_-1", 4, 4)
    );
    let distinct = explain(
        &engine,
        doc! {"distinct": "people", "key": "name", "query": {"age": {"$lt": 2}}},
    );
    assert_eq!((distinct.2.as_str(), distinct.5), ("age_1_name_-1", 8));
    let reply = ok(
        &engine,
        "db",
        doc! {"aggregate": "people", "pipeline": [{"$match": {"name": {"$gt": "p0190"}}}, {"$count": "n"}], "explain": true},
    );
    let aggregate = plan_summary(&reply);
    assert_eq!(
        (aggregate.2.as_str(), aggregate.4, aggregate.5),
        ("name_1", 9, 1)
    );
    let update = explain(
        &engine,
        doc! {"update": "people", "updates": [{"q": {"name": "p0003"}, "u": {"$set": {"x": 1}}}]},
    );
    assert_eq!((update.2.as_str(), update.5), ("name_1", 1));
    let delete = explain(
        &engine,
        doc! {"delete": "people", "deletes": [{"q": {"age": 1}, "limit": 0}]},
    );
    assert_eq!((delete.2.as_str(), delete.5), ("age_1_name_-1", 4));
    let fam = explain(
        &engine,
        doc! {"findAndModify": "people", "query": {"age": 1}, "sort": {"name": -1}, "remove": true},
    );
    assert_eq!((fam.2.as_str(), fam.4), ("age_1_name_-1", 1));
    // Explain writes nothing.
    assert_eq!(find_all(&engine, "db", "people", doc! {}).len(), 200);
    let reply = ok(
        &engine,
        "db",
        doc! {"explain": {"find": "people", "filter": {"age": {"$gt": 47}}}},
    );
    let bounds = reply
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap()
        .get_document("inputStage")
        .unwrap()
        .get_document("indexBounds")
        .unwrap()
        .clone();
    assert_eq!(
        bounds,
        doc! {"age": ["(47, inf.0]"], "name": ["[MaxKey, MinKey]"]}
    );
    assert_eq!(
        fails(&engine, "db", doc! {"explain": {"insert": "people"}}),
        59
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"explain": {"find": "people"}, "verbosity": "loud"}
        ),
        2
    );
    let missing = explain(&engine, doc! {"find": "nothing", "filter": {"a": 1}});
    assert_eq!(missing.0, "EOF");
}

#[test]
fn writes_and_find_and_modify_use_indexes() {
    let (_, engine) = engine();
    seed_people(&engine, 100);
    create_index(&engine, "people", doc! {"key": {"age": 1}});
    create_index(&engine, "people", doc! {"key": {"name": 1}});
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "people", "updates": [{"q": {"age": 3}, "u": {"$set": {"age": 103}}, "multi": true}]},
    );
    assert_eq!(reply.get_i32("nModified").unwrap(), 2);
    assert_eq!(
        ids(&find_all(
            &engine,
            "db",
            "people",
            doc! {"filter": {"age": 103}}
        )),
        vec![3, 53]
    );
    assert!(find_all(&engine, "db", "people", doc! {"filter": {"age": 3}}).is_empty());
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "people", "query": {"age": {"$gte": 40}}, "sort": {"name": -1}, "update": {"$set": {"top": true}}, "new": true},
    );
    assert_eq!(
        reply.get_document("value").unwrap().get_i32("_id").unwrap(),
        99
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"delete": "people", "deletes": [{"q": {"age": {"$in": [1, 2]}}, "limit": 0}]},
    );
    assert_eq!(reply.get_i32("n").unwrap(), 4);
    let count = ok(
        &engine,
        "db",
        doc! {"count": "people", "query": {"age": {"$lt": 5}}},
    );
    assert_eq!(count.get_i32("n").unwrap(), 4);
}

#[test]
fn positional_updates_use_the_query() {
    let (_, engine) = engine();
    insert(&engine, "g", vec![doc! {"_id": 1, "grades": [85, 80, 80]}]);
    ok(
        &engine,
        "db",
        doc! {"update": "g", "updates": [{"q": {"_id": 1, "grades": 80}, "u": {"$set": {"grades.$": 82}}}]},
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"findAndModify": "g", "query": {"grades": 85}, "update": {"$inc": {"grades.$": 1}}, "new": true},
    );
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 1, "grades": [86, 82, 80]}
    );
    let projected = find_all(
        &engine,
        "db",
        "g",
        doc! {"filter": {"grades": 82}, "projection": {"grades.$": 1}},
    );
    assert_eq!(projected, vec![doc! {"_id": 1, "grades": [82]}]);
}

// ---------------------------------------------------------------------------------------------
// collMod, renameCollection

#[test]
fn hidden_indexes_are_maintained_but_not_used() {
    let (_, engine) = engine();
    seed_people(&engine, 50);
    create_index(&engine, "people", doc! {"key": {"age": 1}});
    let reply = ok(
        &engine,
        "db",
        doc! {"collMod": "people", "index": {"name": "age_1", "hidden": true}},
    );
    assert_eq!(
        reply,
        doc! {"hidden_old": false, "hidden_new": true, "ok": 1.0}
    );
    assert_eq!(
        explain(&engine, doc! {"find": "people", "filter": {"age": 4}}).0,
        "COLLSCAN"
    );
    let listed = batch(&ok(&engine, "db", doc! {"listIndexes": "people"}));
    assert!(listed[1].get_bool("hidden").unwrap());
    insert(&engine, "people", vec![doc! {"_id": 1000, "age": 4}]);
    ok(
        &engine,
        "db",
        doc! {"collMod": "people", "index": {"keyPattern": {"age": 1}, "hidden": false}},
    );
    let shown = explain(&engine, doc! {"find": "people", "filter": {"age": 4}});
    assert_eq!((shown.2.as_str(), shown.5), ("age_1", 2));
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "changeStreamPreAndPostImages": {"enabled": true}}
        ),
        72
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "index": {"name": "age_1", "expireAfterSeconds": 5}}
        ),
        72
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "index": {"name": "age_1"}}
        ),
        72
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "index": {"name": "zz", "hidden": true}}
        ),
        27
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "index": {"name": "_id_", "hidden": true}}
        ),
        2
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "nope", "index": {"name": "age_1", "hidden": true}}
        ),
        26
    );
    assert_eq!(
        ok(&engine, "db", doc! {"collMod": "people"}),
        doc! {"ok": 1.0}
    );
}

#[test]
fn rename_collection_keeps_documents_and_indexes() {
    let (_, engine) = engine();
    seed_people(&engine, 30);
    create_index(&engine, "people", doc! {"key": {"name": 1}, "unique": true});
    insert(&engine, "other", vec![doc! {"_id": "x"}]);
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"renameCollection": "db.people", "to": "db.folk"}
        ),
        13
    );
    assert_eq!(
        fails(
            &engine,
            "admin",
            doc! {"renameCollection": "db.nope", "to": "db.folk"}
        ),
        26
    );
    assert_eq!(
        fails(
            &engine,
            "admin",
            doc! {"renameCollection": "db.people", "to": "db.other"}
        ),
        48
    );
    assert_eq!(
        fails(
            &engine,
            "admin",
            doc! {"renameCollection": "db.people", "to": "db.people"}
        ),
        20
    );
    ok(
        &engine,
        "admin",
        doc! {"renameCollection": "db.people", "to": "db.folk"},
    );
    assert!(find_all(&engine, "db", "people", doc! {}).is_empty());
    assert_eq!(find_all(&engine, "db", "folk", doc! {}).len(), 30);
    assert_eq!(index_names(&engine, "folk"), vec!["_id_", "name_1"]);
    let used = explain(&engine, doc! {"find": "folk", "filter": {"name": "p0007"}});
    assert_eq!((used.2.as_str(), used.5), ("name_1", 1));
    let reply = insert(&engine, "folk", vec![doc! {"name": "p0007"}]);
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 11000);
    ok(
        &engine,
        "admin",
        doc! {"renameCollection": "db.folk", "to": "db.other", "dropTarget": true},
    );
    assert_eq!(find_all(&engine, "db", "other", doc! {}).len(), 30);
    let names: Vec<String> = batch(&ok(&engine, "db", doc! {"listCollections": 1}))
        .iter()
        .map(|c| c.get_str("name").unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["other"]);
}

// ---------------------------------------------------------------------------------------------
// $lookup, persistence

#[test]
fn lookup_reads_the_other_collection() {
    let (_, engine) = engine();
    insert(
        &engine,
        "orders",
        vec![
            doc! {"_id": 1, "item": "almonds"},
            doc! {"_id": 2, "item": "pecans"},
        ],
    );
    insert(
        &engine,
        "inventory",
        vec![
            doc! {"_id": 1, "sku": "almonds", "n": 120},
            doc! {"_id": 2, "sku": "bread", "n": 80},
        ],
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"aggregate": "orders", "pipeline": [
            {"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "stock"}},
            {"$project": {"n": {"$size": "$stock"}}},
        ], "cursor": {}},
    );
    assert_eq!(
        batch(&reply),
        vec![doc! {"_id": 1, "n": 1}, doc! {"_id": 2, "n": 0}]
    );
}

#[test]
fn indexes_survive_reopening_the_engine() {
    let (kv, engine) = engine();
    seed_people(&engine, 40);
    create_index(&engine, "people", doc! {"key": {"name": 1}, "unique": true});
    create_index(&engine, "people", doc! {"key": {"tags": 1}});
    drop(engine);
    let engine = Engine::with_kv(kv.clone() as Arc<dyn Kv>).unwrap();
    assert_eq!(
        index_names(&engine, "people"),
        vec!["_id_", "name_1", "tags_1"]
    );
    let reply = insert(&engine, "people", vec![doc! {"name": "p0001"}]);
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 11000);
    let tags = explain(&engine, doc! {"find": "people", "filter": {"tags": 4}});
    assert_eq!((tags.2.as_str(), tags.5), ("tags_1", 8));
    // The multikey flag survived: no sort from the multikey index.
    let sorted = explain(&engine, doc! {"find": "people", "sort": {"tags": 1}});
    assert_eq!(sorted.0, "COLLSCAN");
}

// ---------------------------------------------------------------------------------------------
// Validators

#[test]
fn validators_refuse_invalid_documents() {
    let (kv, engine) = engine();
    ok(
        &engine,
        "db",
        doc! {"create": "v", "validator": {"qty": {"$type": "int"}}},
    );
    let listed = batch(&ok(
        &engine,
        "db",
        doc! {"listCollections": 1, "filter": {"name": "v"}},
    ));
    assert_eq!(
        listed[0].get_document("options").unwrap(),
        &doc! {"validator": {"qty": {"$type": "int"}}, "validationLevel": "strict", "validationAction": "error"}
    );
    let reply = insert(
        &engine,
        "v",
        vec![doc! {"_id": 1, "qty": 5}, doc! {"_id": 2, "qty": "x"}],
    );
    let error = write_error(&reply);
    assert_eq!(error.get_i32("code").unwrap(), 121);
    assert_eq!(
        error.get_str("codeName").unwrap(),
        "DocumentValidationFailure"
    );
    assert_eq!(
        error
            .get_document("errInfo")
            .unwrap()
            .get_i32("failingDocumentId")
            .unwrap(),
        2
    );
    let reply = ok(
        &engine,
        "db",
        doc! {"update": "v", "updates": [{"q": {"_id": 1}, "u": {"$set": {"qty": "y"}}}]},
    );
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 121);
    // collMod on an existing collection; warn lets the write through.
    seed_people(&engine, 3);
    ok(
        &engine,
        "db",
        doc! {"collMod": "people", "validator": {"age": {"$lt": 10}}},
    );
    assert_eq!(
        write_error(&insert(&engine, "people", vec![doc! {"age": 20}]))
            .get_i32("code")
            .unwrap(),
        121
    );
    ok(
        &engine,
        "db",
        doc! {"collMod": "people", "validationAction": "warn"},
    );
    assert!(
        insert(&engine, "people", vec![doc! {"age": 20}])
            .get("writeErrors")
            .is_none()
    );
    ok(
        &engine,
        "db",
        doc! {"collMod": "people", "validationAction": "error", "validationLevel": "off"},
    );
    assert!(
        insert(&engine, "people", vec![doc! {"age": 30}])
            .get("writeErrors")
            .is_none()
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "nope", "validator": {"a": 1}}
        ),
        26
    );
    assert_eq!(
        fails(
            &engine,
            "db",
            doc! {"collMod": "people", "validationLevel": "maybe"}
        ),
        2
    );
    // The validator survives a reopen.
    drop(engine);
    let engine = Engine::with_kv(kv.clone() as Arc<dyn Kv>).unwrap();
    let reply = insert(&engine, "v", vec![doc! {"_id": 3, "qty": 1.5}]);
    assert_eq!(write_error(&reply).get_i32("code").unwrap(), 121);
}
