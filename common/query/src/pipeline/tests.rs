//! Pipeline cases (stage examples from the MongoDB manual) and the shard/router split
//! equivalence property on random data.

use bson::{Bson, bson, doc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn stages(value: Bson) -> Vec<Bson> {
    match value {
        Bson::Array(items) => items,
        other => panic!("not a pipeline: {other}"),
    }
}

fn run(pipeline: Bson, input: Vec<Document>) -> Vec<Document> {
    let parsed =
        Pipeline::parse(&stages(pipeline.clone())).unwrap_or_else(|e| panic!("{pipeline}: {e}"));
    parsed
        .run(input)
        .unwrap_or_else(|e| panic!("{pipeline}: {e}"))
}

fn parse_code(pipeline: Bson) -> i32 {
    match Pipeline::parse(&stages(pipeline.clone())) {
        Err(err) => err.code().0,
        Ok(_) => panic!("{pipeline} parsed"),
    }
}

fn sales() -> Vec<Document> {
    vec![
        doc! {"_id": 1, "item": "abc", "price": 10, "quantity": 2, "date": bson::DateTime::from_millis(1_393_632_000_000)},
        doc! {"_id": 2, "item": "jkl", "price": 20, "quantity": 1, "date": bson::DateTime::from_millis(1_393_635_600_000)},
        doc! {"_id": 3, "item": "xyz", "price": 5, "quantity": 10, "date": bson::DateTime::from_millis(1_394_870_400_000)},
        doc! {"_id": 4, "item": "xyz", "price": 5, "quantity": 20, "date": bson::DateTime::from_millis(1_396_310_400_000)},
        doc! {"_id": 5, "item": "abc", "price": 10, "quantity": 10, "date": bson::DateTime::from_millis(1_396_396_800_000)},
    ]
}

#[test]
fn match_project_sort_skip_limit() {
    let out = run(
        bson!([
            {"$match": {"price": {"$gte": 10}}},
            {"$project": {"item": 1, "total": {"$multiply": ["$price", "$quantity"]}}},
            {"$sort": {"total": -1, "_id": 1}},
            {"$skip": 1},
            {"$limit": 2},
        ]),
        sales(),
    );
    assert_eq!(
        out,
        vec![
            doc! {"_id": 1, "item": "abc", "total": 20},
            doc! {"_id": 2, "item": "jkl", "total": 20}
        ]
    );
}

#[test]
fn group_accumulators() {
    let out = run(
        bson!([
            {"$group": {
                "_id": "$item",
                "total": {"$sum": {"$multiply": ["$price", "$quantity"]}},
                "avgQty": {"$avg": "$quantity"},
                "minQ": {"$min": "$quantity"},
                "maxQ": {"$max": "$quantity"},
                "first": {"$first": "$_id"},
                "last": {"$last": "$_id"},
                "ids": {"$push": "$_id"},
                "prices": {"$addToSet": "$price"},
                "n": {"$count": {}},
                "missing": {"$max": "$nope"},
            }},
        ]),
        sales(),
    );
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0],
        doc! {"_id": "abc", "total": 120, "avgQty": 6.0, "minQ": 2, "maxQ": 10, "first": 1, "last": 5, "ids": [1, 5], "prices": [10], "n": 2, "missing": null}
    );
    assert_eq!(out[1].get("_id"), Some(&bson!("jkl")));
    assert_eq!(out[2].get("total"), Some(&bson!(150)));
    let all = run(
        bson!([{"$group": {"_id": null, "count": {"$sum": 1}, "avg": {"$avg": "$nope"}}}]),
        sales(),
    );
    assert_eq!(all, vec![doc! {"_id": null, "count": 5, "avg": null}]);
    let numeric_keys = run(
        bson!([{"$group": {"_id": "$k", "n": {"$sum": 1}}}]),
        vec![
            doc! {"k": 1},
            doc! {"k": 1.0},
            doc! {"k": Bson::Int64(1)},
            doc! {"k": 2},
        ],
    );
    assert_eq!(
        numeric_keys,
        vec![doc! {"_id": 1, "n": 3}, doc! {"_id": 2, "n": 1}]
    );
    let by_date = run(
        bson!([{"$group": {"_id": {"month": {"$month": "$date"}, "year": {"$year": "$date"}}, "n": {"$sum": 1}}}]),
        sales(),
    );
    assert_eq!(by_date[0], doc! {"_id": {"month": 3, "year": 2014}, "n": 3});
    let std = run(
        bson!([{"$group": {"_id": null, "s": {"$stdDevPop": "$price"}}}]),
        vec![doc! {"price": 2}, doc! {"price": 4}],
    );
    assert_eq!(std, vec![doc! {"_id": null, "s": 1.0}]);
}

#[test]
fn count_unwind_replace_root() {
    assert_eq!(run(bson!([{"$count": "n"}]), sales()), vec![doc! {"n": 5}]);
    assert!(run(bson!([{"$count": "n"}]), Vec::new()).is_empty());
    let input = vec![
        doc! {"_id": 1, "sizes": ["S", "M"]},
        doc! {"_id": 2, "sizes": []},
        doc! {"_id": 3, "sizes": null},
        doc! {"_id": 4},
        doc! {"_id": 5, "sizes": "L"},
    ];
    let plain = run(bson!([{"$unwind": "$sizes"}]), input.clone());
    assert_eq!(
        plain,
        vec![
            doc! {"_id": 1, "sizes": "S"},
            doc! {"_id": 1, "sizes": "M"},
            doc! {"_id": 5, "sizes": "L"}
        ]
    );
    let preserved = run(
        bson!([{"$unwind": {"path": "$sizes", "includeArrayIndex": "idx", "preserveNullAndEmptyArrays": true}}]),
        input,
    );
    assert_eq!(
        preserved,
        vec![
            doc! {"_id": 1, "sizes": "S", "idx": Bson::Int64(0)},
            doc! {"_id": 1, "sizes": "M", "idx": Bson::Int64(1)},
            doc! {"_id": 2, "idx": null},
            doc! {"_id": 3, "sizes": null, "idx": null},
            doc! {"_id": 4, "idx": null},
            doc! {"_id": 5, "sizes": "L", "idx": null},
        ]
    );
    let nested = run(
        bson!([{"$unwind": "$a.b"}]),
        vec![doc! {"a": {"b": [1, 2], "c": 0}}],
    );
    assert_eq!(
        nested,
        vec![doc! {"a": {"b": 1, "c": 0}}, doc! {"a": {"b": 2, "c": 0}}]
    );
    let replaced = run(
        bson!([{"$replaceRoot": {"newRoot": {"$mergeObjects": [{"x": 0}, "$in"]}}}]),
        vec![doc! {"in": {"y": 1}}],
    );
    assert_eq!(replaced, vec![doc! {"x": 0, "y": 1}]);
    let with = run(
        bson!([{"$replaceWith": "$in"}]),
        vec![doc! {"in": {"y": 1}}],
    );
    assert_eq!(with, vec![doc! {"y": 1}]);
    let err = Pipeline::parse(&stages(bson!([{"$replaceWith": "$in"}])))
        .unwrap()
        .run(vec![doc! {"in": 1}])
        .unwrap_err();
    assert_eq!(err.code().0, 40228);
}

#[test]
fn sort_by_count_facet_sample_add_fields() {
    let out = run(bson!([{"$sortByCount": "$item"}]), sales());
    assert_eq!(
        out,
        vec![
            doc! {"_id": "abc", "count": 2},
            doc! {"_id": "xyz", "count": 2},
            doc! {"_id": "jkl", "count": 1}
        ]
    );
    let facets = run(
        bson!([{"$facet": {"cheap": [{"$match": {"price": {"$lt": 10}}}, {"$count": "n"}], "items": [{"$group": {"_id": "$item"}}, {"$sort": {"_id": 1}}]}}]),
        sales(),
    );
    assert_eq!(
        facets,
        vec![doc! {"cheap": [{"n": 2}], "items": [{"_id": "abc"}, {"_id": "jkl"}, {"_id": "xyz"}]}]
    );
    let sample = run(bson!([{"$sample": {"size": 3}}]), sales());
    assert_eq!(sample.len(), 3);
    let mut ids: Vec<i32> = sample.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    let added = run(
        bson!([{"$set": {"t": {"$multiply": ["$price", 2]}}}, {"$unset": ["date", "item"]}, {"$limit": 1}]),
        sales(),
    );
    assert_eq!(
        added,
        vec![doc! {"_id": 1, "price": 10, "quantity": 2, "t": 20}]
    );
}

#[test]
fn expression_operators_in_project() {
    let d = doc! {"_id": 1, "a": 7, "b": 2, "s": " Hello World ", "arr": [1, 2, 3, 4], "n": null, "x": 2.5};
    let out = run(
        bson!([{"$project": {
            "_id": 0,
            "add": {"$add": ["$a", "$b", 1]},
            "sub": {"$subtract": ["$a", "$b"]},
            "div": {"$divide": ["$a", "$b"]},
            "mod": {"$mod": ["$a", "$b"]},
            "abs": {"$abs": -3},
            "ceil": {"$ceil": "$x"},
            "floor": {"$floor": "$x"},
            "round": {"$round": ["$x", 0]},
            "trunc": {"$trunc": 2.79},
            "cmp": {"$cmp": ["$a", "$b"]},
            "gt": {"$gt": ["$a", "$b"]},
            "and": {"$and": [true, "$a"]},
            "or": {"$or": [false, "$n"]},
            "not": {"$not": ["$n"]},
            "cond": {"$cond": {"if": {"$gte": ["$a", 5]}, "then": "big", "else": "small"}},
            "cond2": {"$cond": [false, 1, 2]},
            "ifNull": {"$ifNull": ["$n", "$missing", "dflt"]},
            "switch": {"$switch": {"branches": [{"case": {"$eq": ["$a", 1]}, "then": "one"}, {"case": {"$eq": ["$a", 7]}, "then": "seven"}], "default": "other"}},
            "concat": {"$concat": ["a", "-", "b"]},
            "lower": {"$toLower": "ABC"},
            "upper": {"$toUpper": "abc"},
            "substr": {"$substr": ["abcdef", 1, 3]},
            "substrCP": {"$substrCP": ["héllo", 1, 2]},
            "len": {"$strLenCP": "héllo"},
            "split": {"$split": ["a,b,c", ","]},
            "trim": {"$trim": {"input": "$s"}},
            "size": {"$size": "$arr"},
            "elem": {"$arrayElemAt": ["$arr", -1]},
            "in": {"$in": [2, "$arr"]},
            "concatArrays": {"$concatArrays": ["$arr", [5]]},
            "filter": {"$filter": {"input": "$arr", "as": "v", "cond": {"$gt": ["$$v", 2]}}},
            "map": {"$map": {"input": "$arr", "in": {"$multiply": ["$$this", 10]}}},
            "reduce": {"$reduce": {"input": "$arr", "initialValue": 0, "in": {"$add": ["$$value", "$$this"]}}},
            "slice": {"$slice": ["$arr", 1, 2]},
            "isArray": {"$isArray": "$arr"},
            "type": {"$type": "$missing"},
            "toString": {"$toString": 5},
            "toInt": {"$toInt": "42"},
            "toLong": {"$toLong": 3.9},
            "toDouble": {"$toDouble": "1.5"},
            "toBool": {"$toBool": 0},
            "let": {"$let": {"vars": {"z": 3}, "in": {"$multiply": ["$$z", "$a"]}}},
            "max": {"$max": "$arr"},
            "sum": {"$sum": ["$a", "$b"]},
        }}]),
        vec![d],
    );
    let expected = doc! {
        "add": 10, "sub": 5, "div": 3.5, "mod": 1, "abs": 3, "ceil": 3.0, "floor": 2.0, "round": 2.0,
        "trunc": 2.0, "cmp": 1, "gt": true, "and": true, "or": false, "not": true, "cond": "big", "cond2": 2,
        "ifNull": "dflt", "switch": "seven", "concat": "a-b", "lower": "abc", "upper": "ABC", "substr": "bcd",
        "substrCP": "él", "len": 5, "split": ["a", "b", "c"], "trim": "Hello World", "size": 4, "elem": 4,
        "in": true, "concatArrays": [1, 2, 3, 4, 5], "filter": [3, 4], "map": [10, 20, 30, 40], "reduce": 10,
        "slice": [2, 3], "isArray": true, "type": "missing", "toString": "5", "toInt": 42,
        "toLong": Bson::Int64(3), "toDouble": 1.5, "toBool": false, "let": 21, "max": 4, "sum": 9,
    };
    assert_eq!(out, vec![expected]);
}

#[test]
fn expression_errors() {
    let fails = |expr: Bson| -> i32 {
        let pipeline = Pipeline::parse(&[bson!({"$project": {"v": expr}})]);
        match pipeline.and_then(|p| p.run(vec![doc! {"s": "x", "a": [1]}])) {
            Err(err) => err.code().0,
            Ok(out) => panic!("evaluated to {out:?}"),
        }
    };
    assert_eq!(fails(bson!({"$divide": [1, 0]})), 2);
    assert_eq!(fails(bson!({"$divide": ["$s", 2]})), 14);
    assert_eq!(fails(bson!({"$mod": [1, 0]})), 16610);
    assert_eq!(fails(bson!({"$add": ["$s", 1]})), 14);
    assert_eq!(fails(bson!({"$multiply": ["$s", 1]})), 14);
    assert_eq!(fails(bson!({"$subtract": ["$s", 1]})), 14);
    assert_eq!(fails(bson!({"$mod": ["$s", 1]})), 16611);
    assert_eq!(fails(bson!({"$concat": ["a", 1]})), 16702);
    assert_eq!(fails(bson!({"$size": "$s"})), 17124);
    assert_eq!(fails(bson!({"$in": [1, "$s"]})), 40081);
    assert_eq!(fails(bson!({"$toInt": "abc"})), 241);
    assert_eq!(
        fails(bson!({"$switch": {"branches": [{"case": false, "then": 1}]}})),
        40066
    );
    assert_eq!(fails(bson!({"$abs": [1, 2]})), 16020);
    assert_eq!(fails(bson!({"$nope": 1})), 168);
}

#[test]
fn stage_errors() {
    assert_eq!(parse_code(bson!([{"$foo": {}}])), 40324);
    assert_eq!(
        parse_code(bson!([{"$match": {}, "$sort": {"a": 1}}])),
        40323
    );
    assert_eq!(parse_code(bson!([5])), 14);
    assert_eq!(parse_code(bson!([{"$group": {"n": {"$sum": 1}}}])), 15955);
    assert_eq!(
        parse_code(bson!([{"$group": {"_id": null, "n": {"$foo": 1}}}])),
        15952
    );
    assert_eq!(
        parse_code(bson!([{"$group": {"_id": null, "a.b": {"$sum": 1}}}])),
        40235
    );
    assert_eq!(
        parse_code(bson!([{"$group": {"_id": null, "n": 1}}])),
        40234
    );
    assert_eq!(parse_code(bson!([{"$limit": 0}])), 15958);
    assert_eq!(parse_code(bson!([{"$skip": -1}])), 15956);
    assert_eq!(parse_code(bson!([{"$sort": {}}])), 15976);
    assert_eq!(parse_code(bson!([{"$sort": {"a": 2}}])), 15975);
    assert_eq!(parse_code(bson!([{"$match": 1}])), 15959);
    assert_eq!(parse_code(bson!([{"$count": ""}])), 40156);
    assert_eq!(parse_code(bson!([{"$count": "a.b"}])), 40160);
    assert_eq!(parse_code(bson!([{"$unwind": "a"}])), 28818);
    assert_eq!(
        parse_code(bson!([{"$unwind": {"includeArrayIndex": "i"}}])),
        28812
    );
    assert_eq!(
        parse_code(bson!([{"$facet": {"a": [{"$facet": {}}]}}])),
        40600
    );
    assert_eq!(parse_code(bson!([{"$project": {}}])), 51272);
    assert_eq!(parse_code(bson!([{"$lookup": {}}])), 9);
    assert_eq!(parse_code(bson!([{"$graphLookup": {}}])), 2);
}

// ---------------------------------------------------------------------------------------------
// Split equivalence
// ---------------------------------------------------------------------------------------------

fn random_docs(rng: &mut StdRng, n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| {
            let mut d = doc! {"_id": i32::try_from(i).unwrap_or(0)};
            if rng.random_range(0..10) > 0 {
                d.insert("a", rng.random_range(-5..20));
            }
            d.insert("b", f64::from(rng.random_range(0..8)) / 2.0);
            let groups = ["x", "y", "z"];
            if rng.random_range(0..8) > 0 {
                d.insert("g", groups[rng.random_range(0..groups.len())]);
            }
            let arr: Vec<Bson> = (0..rng.random_range(0..4))
                .map(|_| Bson::Int32(rng.random_range(0..4)))
                .collect();
            d.insert("arr", arr);
            d
        })
        .collect()
}

fn split_pipelines() -> Vec<Bson> {
    vec![
        bson!([{"$match": {"a": {"$gte": 0}}}, {"$group": {
            "_id": "$g", "s": {"$sum": "$a"}, "c": {"$count": {}}, "mn": {"$min": "$a"}, "mx": {"$max": "$b"},
            "av": {"$avg": "$a"}, "p": {"$push": "$a"}, "u": {"$addToSet": "$arr"}, "f": {"$first": "$a"},
            "l": {"$last": "$b"}, "sb": {"$sum": "$b"}, "ab": {"$avg": "$b"},
        }}]),
        bson!([{"$sort": {"a": 1}}, {"$skip": 2}, {"$limit": 5}]),
        bson!([{"$project": {"a": 1, "g": 1}}, {"$sort": {"a": -1}}, {"$limit": 3}]),
        bson!([{"$unwind": "$arr"}, {"$group": {"_id": "$arr", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]),
        bson!([{"$unwind": {"path": "$arr", "includeArrayIndex": "i"}}, {"$count": "n"}]),
        bson!([{"$sortByCount": "$g"}]),
        bson!([{"$limit": 4}]),
        bson!([{"$skip": 3}, {"$limit": 2}, {"$project": {"_id": 1}}]),
        bson!([{"$match": {"g": "x"}}, {"$sort": {"b": -1}}, {"$group": {"_id": "$g", "top": {"$first": "$_id"}}}]),
        bson!([{"$group": {"_id": null, "avg": {"$avg": "$missing"}, "m": {"$max": "$missing"}}}]),
        bson!([{"$addFields": {"x": {"$multiply": ["$a", 2]}}}, {"$sort": {"x": 1}}, {"$limit": 2}, {"$project": {"_id": 0, "x": 1}}]),
        bson!([{"$group": {"_id": {"g": "$g", "odd": {"$mod": ["$a", 2]}}, "m": {"$mergeObjects": {"k": "$a"}}}}]),
        bson!([{"$set": {"k": {"$cond": [{"$gt": ["$a", 5]}, "hi", "lo"]}}}, {"$group": {"_id": "$k", "ids": {"$push": "$_id"}}}, {"$skip": 1}]),
        bson!([{"$skip": 2}, {"$sort": {"_id": -1}}]),
        bson!([{"$limit": 3}, {"$skip": 5}]),
    ]
}

fn random_parts(rng: &mut StdRng, docs: &[Document]) -> Vec<Vec<Document>> {
    let n_parts = rng.random_range(1..5);
    let mut cuts: Vec<usize> = (0..n_parts - 1)
        .map(|_| rng.random_range(0..=docs.len()))
        .collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(docs.len())) {
        parts.push(docs[start..cut].to_vec());
        start = cut;
    }
    parts
}

#[test]
fn split_for_shards_equals_whole_pipeline_on_random_data() {
    let seed = 0x51_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    for pipeline in split_pipelines() {
        let stages = stages(pipeline.clone());
        let (shard, router) = Pipeline::split_for_shards(&stages).unwrap();
        let shard_pipeline = Pipeline::parse(
            &shard
                .iter()
                .cloned()
                .map(Bson::Document)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let router_pipeline = Pipeline::parse(
            &router
                .iter()
                .cloned()
                .map(Bson::Document)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let whole = Pipeline::parse(&stages).unwrap();
        for round in 0..60 {
            let n = rng.random_range(0..25);
            let docs = random_docs(&mut rng, n);
            let expected = whole.run(docs.clone()).unwrap();
            let mut merged = Vec::new();
            for part in random_parts(&mut rng, &docs) {
                merged.extend(shard_pipeline.run(part).unwrap());
            }
            let actual = router_pipeline.run(merged).unwrap();
            assert_eq!(
                actual, expected,
                "seed {seed} round {round} pipeline {pipeline}\nshard {shard:?}\nrouter {router:?}"
            );
        }
    }
}

#[test]
fn split_shapes() {
    let (shard, router) = Pipeline::split_for_shards(&stages(bson!([
        {"$match": {"a": 1}}, {"$project": {"a": 1}}, {"$sort": {"a": 1}}, {"$skip": 5}, {"$limit": 10}, {"$project": {"b": 1}}
    ])))
    .unwrap();
    assert_eq!(
        shard,
        vec![
            doc! {"$match": {"a": 1}},
            doc! {"$project": {"a": 1}},
            doc! {"$sort": {"a": 1}},
            doc! {"$limit": Bson::Int64(15)}
        ]
    );
    assert_eq!(
        router,
        vec![
            doc! {"$sort": {"a": 1}},
            doc! {"$skip": Bson::Int64(5)},
            doc! {"$limit": Bson::Int64(10)},
            doc! {"$project": {"b": 1}}
        ]
    );
    let (shard, router) =
        Pipeline::split_for_shards(&stages(bson!([{"$match": {"a": 1}}]))).unwrap();
    assert_eq!(shard.len(), 1);
    assert!(router.is_empty());
    let (shard, router) =
        Pipeline::split_for_shards(&stages(bson!([{"$sample": {"size": 1}}, {"$match": {}}])))
            .unwrap();
    assert!(shard.is_empty());
    assert_eq!(router.len(), 2);
    let (shard, router) = Pipeline::split_for_shards(&stages(
        bson!([{"$group": {"_id": null, "s": {"$stdDevPop": "$a"}}}]),
    ))
    .unwrap();
    assert!(shard.is_empty());
    assert_eq!(router.len(), 1);
    assert!(Pipeline::split_for_shards(&stages(bson!([{"$nope": 1}]))).is_err());
    let (shard, router) = Pipeline::split_for_shards(&stages(bson!([
        {"$group": {"_id": "$g", "s": {"$sum": "$a"}, "av": {"$avg": "$a"}}}, {"$sort": {"s": 1}}
    ])))
    .unwrap();
    assert_eq!(shard.len(), 1);
    assert_eq!(
        router
            .iter()
            .map(|s| s.keys().next().unwrap().as_str())
            .collect::<Vec<_>>(),
        ["$group", "$replaceWith", "$sort"]
    );
    let (shard, router) = Pipeline::split_for_shards(&stages(bson!([{"$count": "n"}]))).unwrap();
    assert_eq!(shard.len(), 1);
    assert_eq!(router.len(), 2);
}
