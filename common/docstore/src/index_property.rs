//! Property test: on a random data set with random writes, every query returns the same
//! results with indexes as without, and every index holds exactly the entries its documents
//! produce. Two engines get the same commands; only one has indexes.

use std::collections::BTreeSet;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_query::SortSpec;

use crate::{
    Engine, catalog,
    index::{document_keys, entry_key, id_code, index_range},
    keys::{collection_range, decode_document},
    kv::{Kv, MemKv, Space},
    txn::Direct,
};

const DOCS: i32 = 300;
const ROUNDS: usize = 60;
const QUERIES_PER_ROUND: usize = 12;
const SEEDS: u64 = 3;

fn random_scalar(rng: &mut StdRng) -> Bson {
    match rng.random_range(0..8) {
        0 => Bson::Null,
        1 | 2 => Bson::Int32(rng.random_range(-3..10)),
        3 => Bson::Double(f64::from(rng.random_range(-3..10)) + 0.5),
        4 => Bson::Int64(rng.random_range(0..6)),
        5 => Bson::String(["a", "b", "c", "d", "e", "f"][rng.random_range(0..6)].to_owned()),
        6 => Bson::Boolean(rng.random()),
        _ => Bson::Int32(rng.random_range(0..4)),
    }
}

fn random_a(rng: &mut StdRng) -> Option<Bson> {
    match rng.random_range(0..10) {
        0 => None,
        1 | 2 => {
            let len = rng.random_range(0..4);
            Some(Bson::Array(
                (0..len)
                    .map(|_| Bson::Int32(rng.random_range(-3..10)))
                    .collect(),
            ))
        }
        _ => Some(random_scalar(rng)),
    }
}

fn random_document(rng: &mut StdRng, id: i32) -> Document {
    let mut document = doc! {"_id": id};
    if let Some(a) = random_a(rng) {
        document.insert("a", a);
    }
    if rng.random_bool(0.8) {
        document.insert("b", rng.random_range(0..7));
    }
    match rng.random_range(0..5) {
        0 => {}
        1 | 2 => {
            document.insert("c", doc! {"d": rng.random_range(0..5)});
        }
        3 => {
            document.insert(
                "c",
                vec![
                    Bson::Document(doc! {"d": rng.random_range(0..5)}),
                    Bson::Document(doc! {"d": rng.random_range(0..5)}),
                ],
            );
        }
        _ => {
            document.insert("c", doc! {"e": 1});
        }
    }
    if rng.random_bool(0.6) {
        let letter = char::from(b'a' + rng.random_range(0..26u8));
        document.insert("s", format!("{letter}{}", rng.random_range(0..100)));
    }
    document
}

fn random_filter(rng: &mut StdRng) -> Document {
    let int = |rng: &mut StdRng| Bson::Int32(rng.random_range(-2..9));
    match rng.random_range(0..22) {
        0 => doc! {"a": random_scalar(rng)},
        1 => doc! {"a": {"$gt": int(rng)}},
        2 => doc! {"a": {"$gte": int(rng), "$lt": int(rng)}},
        3 => doc! {"a": {"$in": [int(rng), random_scalar(rng), "c"]}},
        4 => doc! {"a": null},
        5 => doc! {"b": int(rng), "a": {"$lt": int(rng)}},
        6 => doc! {"c.d": int(rng)},
        7 => doc! {"c.d": {"$lte": int(rng)}},
        8 => doc! {"s": {"$gt": "m"}},
        9 => doc! {"b": {"$gt": 3}},
        10 => doc! {"b": rng.random_range(3..7)},
        11 => doc! {"$and": [{"a": {"$gt": int(rng)}}, {"a": {"$lt": int(rng)}}]},
        12 => doc! {"a": {"$exists": true}, "b": {"$lte": int(rng)}},
        13 => doc! {"a": {"$lte": "c"}},
        14 => doc! {"a": {"$gt": false}},
        15 => doc! {"s": {"$lt": "f"}, "b": {"$in": [1, 5]}},
        16 => doc! {"_id": {"$in": [int(rng), int(rng), 300]}},
        17 => doc! {"_id": {"$gte": rng.random_range(0..DOCS)}},
        18 => doc! {"a": [int(rng)]},
        19 => doc! {"b": {"$gte": 5}, "a": {"$ne": 3}},
        20 => doc! {"$or": [{"a": 1}, {"b": 2}]},
        _ => doc! {},
    }
}

fn random_sort(rng: &mut StdRng) -> Document {
    match rng.random_range(0..8) {
        0 => doc! {"a": 1},
        1 => doc! {"a": -1},
        2 => doc! {"b": 1, "a": -1},
        3 => doc! {"b": -1, "a": 1},
        4 => doc! {"s": -1},
        5 => doc! {"_id": -1},
        6 => doc! {"c.d": 1},
        _ => doc! {},
    }
}

fn run(engine: &Engine, command: Document) -> Document {
    let reply = engine.execute("db", &command);
    assert_eq!(
        reply.get_f64("ok").unwrap_or(0.0),
        1.0,
        "{command}: {reply}"
    );
    reply
}

fn find_all(engine: &Engine, options: Document) -> Vec<Document> {
    let mut command = doc! {"find": "c", "batchSize": 7};
    command.extend(options);
    let mut reply = run(engine, command);
    let mut out = Vec::new();
    loop {
        let cursor = reply.get_document("cursor").unwrap().clone();
        let batch = cursor
            .get_array("firstBatch")
            .or_else(|_| cursor.get_array("nextBatch"))
            .unwrap();
        out.extend(batch.iter().map(|d| d.as_document().unwrap().clone()));
        let id = cursor.get_i64("id").unwrap();
        if id == 0 {
            return out;
        }
        reply = run(
            engine,
            doc! {"getMore": id, "collection": "c", "batchSize": 5},
        );
    }
}

fn id_set(docs: &[Document]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d.get("_id").unwrap().to_string())
        .collect()
}

/// Every index entry equals what the stored documents produce, and nothing else is there.
fn check_index_consistency(engine: &Engine) {
    let kv = engine.kv.as_ref();
    let entry = catalog::lookup(&Direct(kv), "db.c").unwrap().unwrap();
    let (start, end) = collection_range(entry.id);
    let docs = kv.scan(Space::Docs, &start, &end, usize::MAX).unwrap();
    for index in &entry.indexes {
        let mut expected = BTreeSet::new();
        for (key, value) in &docs {
            let document = decode_document(key, value).unwrap();
            let keys = document_keys(index, &document).unwrap();
            assert!(
                !keys.multikey || index.multikey,
                "{} not multikey",
                index.name
            );
            let id = id_code(entry.id, key);
            for code in keys.keys.keys() {
                expected.insert((entry_key(entry.id, index, code, &id), id.clone()));
            }
        }
        let (start, end) = index_range(entry.id, index.id);
        let actual: BTreeSet<(Vec<u8>, Vec<u8>)> = kv
            .scan(Space::Docs, &start, &end, usize::MAX)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(actual, expected, "index {}", index.name);
    }
}

fn compare_queries(plain: &Engine, indexed: &Engine, rng: &mut StdRng) {
    for _ in 0..QUERIES_PER_ROUND {
        let filter = random_filter(rng);
        let sort = random_sort(rng);
        let mut options = doc! {"filter": filter.clone()};
        if sort.is_empty() {
            let a = find_all(plain, options.clone());
            let b = find_all(indexed, options.clone());
            assert_eq!(id_set(&a), id_set(&b), "filter {filter}");
            assert_eq!(a.len(), b.len(), "duplicates for {filter}");
        } else {
            options.insert("sort", sort.clone());
            if rng.random_bool(0.5) {
                options.insert("skip", rng.random_range(0..5));
                options.insert("limit", rng.random_range(1..20));
            }
            let a = find_all(plain, options.clone());
            let b = find_all(indexed, options.clone());
            let spec = SortSpec::parse(&sort).unwrap();
            let keys = |docs: &[Document]| docs.iter().map(|d| spec.key(d)).collect::<Vec<_>>();
            let (ka, kb) = (keys(&a), keys(&b));
            assert_eq!(ka.len(), kb.len(), "{options}");
            for (x, y) in ka.iter().zip(&kb) {
                assert!(spec.compare_keys(x, y).is_eq(), "{options}: {x:?} vs {y:?}");
            }
            if !options.contains_key("limit") {
                assert_eq!(id_set(&a), id_set(&b), "{options}");
            }
        }
        for command in [
            doc! {"count": "c", "query": filter.clone()},
            doc! {"distinct": "c", "key": "a", "query": filter.clone()},
            doc! {"aggregate": "c", "pipeline": [{"$match": filter.clone()}, {"$group": {"_id": "$b", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}], "cursor": {}},
        ] {
            let mut a = run(plain, command.clone());
            let mut b = run(indexed, command.clone());
            if let Ok(cursor) = a.get_document_mut("cursor") {
                cursor.remove("id");
            }
            if let Ok(cursor) = b.get_document_mut("cursor") {
                cursor.remove("id");
            }
            // Equal values of different types (2 and 2L) may come first in either scan order.
            for reply in [&mut a, &mut b] {
                if let Ok(values) = reply.get_array_mut("values") {
                    for value in values.iter_mut() {
                        *value = Bson::Binary(bson::Binary {
                            subtype: bson::spec::BinarySubtype::Generic,
                            bytes: shoal_query::keycode::encode_to_vec(value),
                        });
                    }
                }
            }
            assert_eq!(a, b, "{command}");
        }
        run(
            indexed,
            doc! {"explain": {"find": "c", "filter": filter, "sort": sort}},
        );
    }
}

fn random_write(rng: &mut StdRng, next_id: &mut i32) -> Document {
    let filter = random_filter(rng);
    match rng.random_range(0..6) {
        0 => {
            *next_id += 1;
            doc! {"insert": "c", "documents": [random_document(rng, *next_id)]}
        }
        1 => {
            let value = random_a(rng).unwrap_or(Bson::Null);
            doc! {"update": "c", "updates": [{"q": filter, "u": {"$set": {"a": value}}, "multi": true}]}
        }
        2 => {
            doc! {"update": "c", "updates": [{"q": filter, "u": {"$inc": {"b": 1}, "$unset": {"s": 1}}, "multi": true}]}
        }
        3 => doc! {"delete": "c", "deletes": [{"q": filter, "limit": 0}]},
        4 => {
            let id = rng.random_range(0..*next_id);
            let replacement = random_document(rng, id);
            doc! {"update": "c", "updates": [{"q": {"_id": id}, "u": replacement, "upsert": true}]}
        }
        _ => {
            let id = rng.random_range(0..*next_id);
            doc! {"findAndModify": "c", "query": {"_id": id}, "update": {"$push": {"c": {"d": 3}}}}
        }
    }
}

#[test]
fn indexed_and_unindexed_results_agree() {
    for seed in 0..SEEDS {
        agree_with_seed(seed);
    }
}

fn agree_with_seed(seed: u64) {
    let plain = Engine::with_kv(Arc::new(MemKv::new()) as Arc<dyn Kv>).unwrap();
    let indexed = Engine::with_kv(Arc::new(MemKv::new()) as Arc<dyn Kv>).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let docs: Vec<Document> = (0..DOCS).map(|id| random_document(&mut rng, id)).collect();
    for engine in [&plain, &indexed] {
        run(engine, doc! {"insert": "c", "documents": docs.clone()});
    }
    run(
        &indexed,
        doc! {"createIndexes": "c", "indexes": [
            {"key": {"a": 1}},
            {"key": {"b": 1, "a": -1}},
            {"key": {"c.d": 1}},
            {"key": {"s": -1}, "sparse": true},
            {"key": {"b": 1}, "name": "b_partial", "partialFilterExpression": {"b": {"$gt": 3}}},
            {"key": {"s": 1, "b": 1}},
        ]},
    );
    check_index_consistency(&indexed);
    let mut next_id = DOCS;
    for _ in 0..ROUNDS {
        compare_queries(&plain, &indexed, &mut rng);
        let write = random_write(&mut rng, &mut next_id);
        let a = plain.execute("db", &write);
        let b = indexed.execute("db", &write);
        assert_eq!(a, b, "{write}");
        check_index_consistency(&indexed);
        assert_eq!(
            find_all(&plain, doc! {"sort": {"_id": 1}}),
            find_all(&indexed, doc! {"sort": {"_id": 1}}),
            "after {write}"
        );
    }
}
