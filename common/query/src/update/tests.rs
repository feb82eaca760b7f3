//! Update operator cases, mostly the examples of the MongoDB manual's operator pages.

use bson::{Bson, bson, doc};

use super::*;

fn parse(u: Bson) -> Update {
    Update::parse(&u, None).unwrap_or_else(|e| panic!("{u}: {e}"))
}

fn apply(u: Bson, doc: Document) -> Document {
    parse(u.clone())
        .apply(&doc, false)
        .unwrap_or_else(|e| panic!("{u} on {doc}: {e}"))
}

fn apply_code(u: Bson, doc: Document) -> i32 {
    match parse(u.clone()).apply(&doc, false) {
        Err(err) => err.code().0,
        Ok(out) => panic!("{u} on {doc} gave {out}"),
    }
}

fn parse_code(u: Bson) -> i32 {
    match Update::parse(&u, None) {
        Err(err) => err.code().0,
        Ok(_) => panic!("{u} parsed"),
    }
}

fn with_filters(u: Bson, filters: Vec<Bson>, doc: Document) -> Document {
    Update::parse(&u, Some(&filters))
        .unwrap()
        .apply(&doc, false)
        .unwrap()
}

#[test]
fn set_and_unset() {
    let d = doc! {"_id": 100, "quantity": 250, "details": {"model": "14QQ", "make": "Xyz"}, "tags": ["coats", "outerwear"]};
    let out = apply(
        bson!({"$set": {"quantity": 500, "details.make": "Kustom", "tags.1": "clothing", "new.deep": 1}}),
        d.clone(),
    );
    assert_eq!(
        out,
        doc! {"_id": 100, "quantity": 500, "details": {"model": "14QQ", "make": "Kustom"}, "tags": ["coats", "clothing"], "new": {"deep": 1}}
    );
    let out = apply(
        bson!({"$unset": {"quantity": "", "details.model": 1, "tags.0": 1, "missing": 1}}),
        d,
    );
    assert_eq!(
        out,
        doc! {"_id": 100, "details": {"make": "Xyz"}, "tags": [null, "outerwear"]}
    );
    let padded = apply(bson!({"$set": {"a.3": 1}}), doc! {"_id": 1, "a": [0]});
    assert_eq!(padded, doc! {"_id": 1, "a": [0, null, null, 1]});
    let numeric_field = apply(bson!({"$set": {"a.0.b": 1}}), doc! {"_id": 1});
    assert_eq!(numeric_field, doc! {"_id": 1, "a": {"0": {"b": 1}}});
    let ordered = apply(bson!({"$set": {"b": 1, "a": 1}}), doc! {"_id": 1});
    assert_eq!(ordered, doc! {"_id": 1, "a": 1, "b": 1});
}

#[test]
fn set_through_scalar_is_path_not_viable() {
    assert_eq!(
        apply_code(bson!({"$set": {"a.b": 1}}), doc! {"_id": 1, "a": 5}),
        28
    );
    assert_eq!(
        apply_code(bson!({"$set": {"a.b": 1}}), doc! {"_id": 1, "a": [1]}),
        28
    );
}

#[test]
fn inc_mul_min_max() {
    let d = doc! {"_id": 1, "quantity": 10, "metrics": {"orders": 2, "ratings": 3.5}, "s": "x"};
    let out = apply(
        bson!({"$inc": {"quantity": -2, "metrics.orders": 1, "fresh": Bson::Int64(5)}}),
        d.clone(),
    );
    assert_eq!(out.get("quantity"), Some(&bson!(8)));
    assert_eq!(
        out.get_document("metrics").unwrap().get("orders"),
        Some(&bson!(3))
    );
    assert_eq!(out.get("fresh"), Some(&Bson::Int64(5)));
    let overflow = apply(bson!({"$inc": {"quantity": i32::MAX}}), d.clone());
    assert_eq!(
        overflow.get("quantity"),
        Some(&Bson::Int64(i64::from(i32::MAX) + 10))
    );
    assert_eq!(apply_code(bson!({"$inc": {"s": 1}}), d.clone()), 14);
    assert_eq!(parse_code(bson!({"$inc": {"quantity": "1"}})), 14);
    let out = apply(
        bson!({"$mul": {"metrics.ratings": 2, "missing": 2.5}}),
        d.clone(),
    );
    assert_eq!(
        out.get_document("metrics").unwrap().get("ratings"),
        Some(&bson!(7.0))
    );
    assert_eq!(out.get("missing"), Some(&bson!(0.0)));
    let out = apply(
        bson!({"$min": {"quantity": 5, "new": 1}, "$max": {"metrics.orders": 1}}),
        d.clone(),
    );
    assert_eq!(out.get("quantity"), Some(&bson!(5)));
    assert_eq!(out.get("new"), Some(&bson!(1)));
    assert_eq!(
        out.get_document("metrics").unwrap().get("orders"),
        Some(&bson!(2))
    );
    let out = apply(bson!({"$max": {"quantity": "str"}}), d);
    assert_eq!(out.get("quantity"), Some(&bson!("str")));
}

#[test]
fn rename() {
    let d = doc! {"_id": 1, "nickname": "The American", "name": {"first": "george", "last": "washington"}};
    let out = apply(
        bson!({"$rename": {"nickname": "alias", "name.first": "fname", "nope": "x"}}),
        d,
    );
    assert_eq!(
        out,
        doc! {"_id": 1, "name": {"last": "washington"}, "fname": "george", "alias": "The American"}
    );
    assert_eq!(parse_code(bson!({"$rename": {"a": "a"}})), 2);
    assert_eq!(parse_code(bson!({"$rename": {"a": "a.b"}})), 2);
    assert_eq!(parse_code(bson!({"$rename": {"a": 1}})), 2);
    assert_eq!(
        apply_code(
            bson!({"$rename": {"a.0.b": "c"}}),
            doc! {"_id": 1, "a": [{"b": 1}]}
        ),
        2
    );
}

#[test]
fn set_on_insert_and_current_date() {
    let u = parse(bson!({"$set": {"a": 1}, "$setOnInsert": {"b": 2}}));
    assert_eq!(
        u.apply(&doc! {"_id": 1}, false).unwrap(),
        doc! {"_id": 1, "a": 1}
    );
    assert_eq!(
        u.apply(&doc! {"_id": 1}, true).unwrap(),
        doc! {"_id": 1, "a": 1, "b": 2}
    );
    let out = apply(
        bson!({"$currentDate": {"d": true, "t": {"$type": "timestamp"}}}),
        doc! {"_id": 1},
    );
    assert!(matches!(out.get("d"), Some(Bson::DateTime(_))));
    assert!(matches!(out.get("t"), Some(Bson::Timestamp(_))));
    assert_eq!(
        parse_code(bson!({"$currentDate": {"d": {"$type": "x"}}})),
        2
    );
}

#[test]
fn push_with_modifiers() {
    let d = doc! {"_id": 1, "scores": [44, 78, 38, 80]};
    assert_eq!(
        apply(bson!({"$push": {"scores": 89}}), d.clone()).get("scores"),
        Some(&bson!([44, 78, 38, 80, 89]))
    );
    assert_eq!(
        apply(bson!({"$push": {"new": 1}}), d.clone()).get("new"),
        Some(&bson!([1]))
    );
    let each = apply(bson!({"$push": {"scores": {"$each": [90, 92]}}}), d.clone());
    assert_eq!(each.get("scores"), Some(&bson!([44, 78, 38, 80, 90, 92])));
    let position = apply(
        bson!({"$push": {"scores": {"$each": [50, 60], "$position": 0}}}),
        d.clone(),
    );
    assert_eq!(
        position.get("scores"),
        Some(&bson!([50, 60, 44, 78, 38, 80]))
    );
    let negative_position = apply(
        bson!({"$push": {"scores": {"$each": [1], "$position": -1}}}),
        d.clone(),
    );
    assert_eq!(
        negative_position.get("scores"),
        Some(&bson!([44, 78, 38, 1, 80]))
    );
    let sorted = apply(
        bson!({"$push": {"scores": {"$each": [100, 20], "$sort": -1, "$slice": 3}}}),
        d.clone(),
    );
    assert_eq!(sorted.get("scores"), Some(&bson!([100, 80, 78])));
    let last = apply(
        bson!({"$push": {"scores": {"$each": [], "$slice": -2}}}),
        d.clone(),
    );
    assert_eq!(last.get("scores"), Some(&bson!([38, 80])));
    let quizzes = doc! {"_id": 5, "quizzes": [{"wk": 1, "score": 10}, {"wk": 2, "score": 8}]};
    let by_field = apply(
        bson!({"$push": {"quizzes": {"$each": [{"wk": 5, "score": 8}], "$sort": {"score": 1}}}}),
        quizzes,
    );
    assert_eq!(
        by_field.get("quizzes"),
        Some(&bson!([{"wk": 2, "score": 8}, {"wk": 5, "score": 8}, {"wk": 1, "score": 10}]))
    );
    assert_eq!(
        apply_code(
            bson!({"$push": {"scores": 1}}),
            doc! {"_id": 1, "scores": 5}
        ),
        2
    );
    assert_eq!(parse_code(bson!({"$push": {"scores": {"$each": 1}}})), 2);
    assert_eq!(
        parse_code(bson!({"$push": {"scores": {"$each": [1], "$bad": 1}}})),
        2
    );
}

#[test]
fn add_to_set_pop_pull() {
    let d = doc! {"_id": 1, "letters": ["a", "b"], "n": [1, 2, 3, 4, 5, 6], "v": [{"s": 8, "i": "A"}, {"s": 7, "i": "B"}]};
    let out = apply(bson!({"$addToSet": {"letters": "c"}}), d.clone());
    assert_eq!(out.get("letters"), Some(&bson!(["a", "b", "c"])));
    let out = apply(
        bson!({"$addToSet": {"letters": {"$each": ["a", "d", "d"]}}}),
        d.clone(),
    );
    assert_eq!(out.get("letters"), Some(&bson!(["a", "b", "d"])));
    let out = apply(bson!({"$addToSet": {"n": 1.0}}), d.clone());
    assert_eq!(out.get("n"), Some(&bson!([1, 2, 3, 4, 5, 6])));
    let out = apply(bson!({"$pop": {"letters": -1, "n": 1}}), d.clone());
    assert_eq!(out.get("letters"), Some(&bson!(["b"])));
    assert_eq!(out.get("n"), Some(&bson!([1, 2, 3, 4, 5])));
    assert_eq!(parse_code(bson!({"$pop": {"n": 2}})), 9);
    assert_eq!(apply_code(bson!({"$pop": {"_id": 1}}), d.clone()), 14);
    let out = apply(
        bson!({"$pull": {"n": {"$gte": 4}, "letters": "a"}}),
        d.clone(),
    );
    assert_eq!(out.get("n"), Some(&bson!([1, 2, 3])));
    assert_eq!(out.get("letters"), Some(&bson!(["b"])));
    let out = apply(bson!({"$pull": {"v": {"s": 8, "i": "A"}}}), d.clone());
    assert_eq!(out.get("v"), Some(&bson!([{"s": 7, "i": "B"}])));
    let out = apply(bson!({"$pull": {"v": {"s": {"$lt": 8}}}}), d.clone());
    assert_eq!(out.get("v"), Some(&bson!([{"s": 8, "i": "A"}])));
    let out = apply(bson!({"$pullAll": {"n": [1, 6, 9]}}), d.clone());
    assert_eq!(out.get("n"), Some(&bson!([2, 3, 4, 5])));
    assert_eq!(apply_code(bson!({"$pull": {"_id": 1}}), d), 2);
}

#[test]
fn positional_operators() {
    let d = doc! {"_id": 1, "grades": [85, 80, 80], "items": [{"g": 80, "m": 75}, {"g": 85, "m": 90}, {"g": 85, "m": 85}]};
    let u = parse(bson!({"$set": {"grades.$": 82}}))
        .with_query(Filter::parse(&doc! {"grades": 80}).unwrap());
    assert_eq!(
        u.apply(&d, false).unwrap().get("grades"),
        Some(&bson!([85, 82, 80]))
    );
    let u = parse(bson!({"$set": {"items.$.m": 100}}))
        .with_query(Filter::parse(&doc! {"items.g": 85}).unwrap());
    let out = u.apply(&d, false).unwrap();
    assert_eq!(
        out.get("items"),
        Some(&bson!([{"g": 80, "m": 75}, {"g": 85, "m": 100}, {"g": 85, "m": 85}]))
    );
    assert_eq!(apply_code(bson!({"$set": {"grades.$": 1}}), d.clone()), 2);
    let all = apply(bson!({"$inc": {"grades.$[]": 10}}), d.clone());
    assert_eq!(all.get("grades"), Some(&bson!([95, 90, 90])));
    let nested = apply(bson!({"$inc": {"items.$[].m": 1}}), d.clone());
    assert_eq!(
        nested.get("items"),
        Some(&bson!([{"g": 80, "m": 76}, {"g": 85, "m": 91}, {"g": 85, "m": 86}]))
    );
    let filtered = with_filters(
        bson!({"$set": {"grades.$[e]": 100}}),
        vec![bson!({"e": {"$gte": 85}})],
        d.clone(),
    );
    assert_eq!(filtered.get("grades"), Some(&bson!([100, 80, 80])));
    let filtered = with_filters(
        bson!({"$set": {"items.$[e].m": 0}}),
        vec![bson!({"e.g": {"$gte": 85}, "e.m": {"$gt": 88}})],
        d.clone(),
    );
    assert_eq!(
        filtered.get("items"),
        Some(&bson!([{"g": 80, "m": 75}, {"g": 85, "m": 0}, {"g": 85, "m": 85}]))
    );
    assert_eq!(apply_code(bson!({"$set": {"missing.$[]": 1}}), d), 2);
}

#[test]
fn array_filter_errors() {
    let unused = Update::parse(&bson!({"$set": {"a": 1}}), Some(&[bson!({"x": 1})])).unwrap_err();
    assert_eq!(unused.code().0, 9);
    let missing = Update::parse(&bson!({"$set": {"a.$[x]": 1}}), Some(&[])).unwrap_err();
    assert_eq!(missing.code().0, 2);
    let duplicate = Update::parse(
        &bson!({"$set": {"a.$[x]": 1}}),
        Some(&[bson!({"x": 1}), bson!({"x": 2})]),
    )
    .unwrap_err();
    assert_eq!(duplicate.code().0, 9);
    let bad_name =
        Update::parse(&bson!({"$set": {"a.$[X]": 1}}), Some(&[bson!({"X": 1})])).unwrap_err();
    assert_eq!(bad_name.code().0, 2);
}

#[test]
fn parse_errors() {
    assert_eq!(parse_code(bson!({"$set": {}})), 9);
    assert_eq!(parse_code(bson!({"$foo": {"a": 1}})), 9);
    assert!(
        Update::parse(&bson!({"$foo": {"a": 1}}), None)
            .unwrap_err()
            .to_string()
            .starts_with("Unknown modifier: $foo")
    );
    assert_eq!(parse_code(bson!({"$set": 1})), 9);
    assert_eq!(parse_code(bson!({"$set": {"a": 1}, "b": 2})), 9);
    assert_eq!(parse_code(bson!({"$set": {"a": 1}, "$inc": {"a": 1}})), 40);
    assert_eq!(
        parse_code(bson!({"$set": {"a.b": 1}, "$unset": {"a": 1}})),
        40
    );
    assert_eq!(
        parse_code(bson!({"$set": {"a": 1}, "$rename": {"b": "a"}})),
        40
    );
    assert!(Update::parse(&bson!({"$set": {"ab": 1, "a": 1}}), None).is_ok());
    assert_eq!(parse_code(bson!({"a": 1, "$set": {"b": 1}})), 52);
    assert_eq!(parse_code(bson!({"$set": {"a..b": 1}})), 56);
    assert_eq!(parse_code(bson!(5)), 14);
    assert_eq!(parse_code(bson!([{"$group": {"_id": null}}])), 72);
}

#[test]
fn id_is_immutable() {
    assert_eq!(apply_code(bson!({"$set": {"_id": 2}}), doc! {"_id": 1}), 66);
    assert_eq!(
        apply_code(bson!({"$unset": {"_id": 1}}), doc! {"_id": 1}),
        66
    );
    assert_eq!(
        apply(bson!({"$set": {"_id": 1, "a": 1}}), doc! {"_id": 1}),
        doc! {"_id": 1, "a": 1}
    );
    assert_eq!(apply_code(bson!({"_id": 2, "a": 1}), doc! {"_id": 1}), 66);
    assert_eq!(
        apply_code(bson!([{"$set": {"_id": 3}}]), doc! {"_id": 1}),
        66
    );
}

#[test]
fn replacement_keeps_id_first() {
    let u = parse(bson!({"b": 2, "_id": 1}));
    assert!(u.is_replacement());
    assert_eq!(
        u.apply(&doc! {"_id": 1, "a": 1}, false).unwrap(),
        doc! {"_id": 1, "b": 2}
    );
    assert_eq!(
        parse(bson!({"b": 2}))
            .apply(&doc! {"a": 0, "_id": 7}, false)
            .unwrap(),
        doc! {"_id": 7, "b": 2}
    );
    assert_eq!(
        parse(bson!({}))
            .apply(&doc! {"_id": 7, "a": 1}, false)
            .unwrap(),
        doc! {"_id": 7}
    );
}

#[test]
fn pipeline_updates() {
    let d = doc! {"_id": 1, "a": 2, "b": 3, "c": {"x": 1}};
    let out = apply(
        bson!([{"$set": {"sum": {"$add": ["$a", "$b"]}}}, {"$unset": ["a", "c.x"]}]),
        d.clone(),
    );
    assert_eq!(out, doc! {"_id": 1, "b": 3, "c": {}, "sum": 5});
    let out = apply(bson!([{"$replaceWith": {"n": "$a"}}]), d.clone());
    assert_eq!(out, doc! {"_id": 1, "n": 2});
    let out = apply(bson!([{"$project": {"a": 1}}]), d);
    assert_eq!(out, doc! {"_id": 1, "a": 2});
}

#[test]
fn upsert_documents() {
    let u = parse(bson!({"$set": {"c": 1}, "$setOnInsert": {"d": 2}}));
    let inserted = u
        .upsert_document(&doc! {"a.b": 5, "_id": 9, "x": {"$gt": 1}, "$and": [{"y": {"$eq": 3}}]})
        .unwrap();
    assert_eq!(
        inserted,
        doc! {"_id": 9, "a": {"b": 5}, "y": 3, "c": 1, "d": 2}
    );
    let replacement = parse(bson!({"z": 1}));
    assert_eq!(
        replacement
            .upsert_document(&doc! {"_id": 4, "q": 1})
            .unwrap(),
        doc! {"_id": 4, "z": 1}
    );
    assert_eq!(
        replacement.upsert_document(&doc! {"q": 1}).unwrap(),
        doc! {"z": 1}
    );
    let pipeline = parse(bson!([{"$set": {"n": {"$add": ["$q", 1]}}}]));
    assert_eq!(
        pipeline.upsert_document(&doc! {"q": 1}).unwrap(),
        doc! {"q": 1, "n": 2}
    );
    assert_eq!(
        u.upsert_document(&doc! {"a": 1, "a.b": 1})
            .unwrap_err()
            .code()
            .0,
        2
    );
    let changes_id = parse(bson!({"$set": {"_id": 2}}));
    assert_eq!(
        changes_id
            .upsert_document(&doc! {"_id": 1})
            .unwrap_err()
            .code()
            .0,
        66
    );
    assert_eq!(
        changes_id.upsert_document(&doc! {"a": 1}).unwrap(),
        doc! {"a": 1, "_id": 2}
    );
}
