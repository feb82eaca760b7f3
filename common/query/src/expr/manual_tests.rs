//! Examples from the MongoDB 7.0 manual pages of the string, array, set, date, conversion and
//! field operators: each table row or collection example is checked against the result the
//! manual prints, plus the error codes MongoDB 7.0 gives for the malformed forms.

use bson::{Bson, Decimal128, Document, bson, doc};

use crate::expr::Expression;

fn run(expr: &Bson, doc: &Document) -> crate::Result<Option<Bson>> {
    Expression::parse(expr)?.evaluate(doc)
}

/// The value `expr` evaluates to on `doc` ("<missing>" for missing).
fn on(doc: &Document, expr: Bson) -> Bson {
    match run(&expr, doc) {
        Ok(Some(value)) => value,
        Ok(None) => Bson::String("<missing>".into()),
        Err(err) => panic!("{expr}: {err}"),
    }
}

fn ok(expr: Bson) -> Bson {
    on(&Document::new(), expr)
}

fn code_on(doc: &Document, expr: Bson) -> i32 {
    match run(&expr, doc) {
        Err(err) => err.code().0,
        Ok(value) => panic!("{expr} evaluated to {value:?}"),
    }
}

fn code(expr: Bson) -> i32 {
    code_on(&Document::new(), expr)
}

fn date(text: &str) -> Bson {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    Bson::DateTime(bson::DateTime::from_millis(parsed.timestamp_millis()))
}

fn decimal(text: &str) -> Bson {
    Bson::Decimal128(text.parse::<Decimal128>().unwrap())
}

#[test]
fn index_of_bytes_and_code_points() {
    let table = [
        (bson!(["cafeteria", "e"]), 3, 3),
        (bson!(["cafétéria", "é"]), 3, 3),
        (bson!(["cafétéria", "e"]), -1, -1),
        (bson!(["cafétéria", "t"]), 5, 4),
        (bson!(["foo.bar.fi", ".", 5]), 7, 7),
        (bson!(["vanilla", "ll", 0, 2]), -1, -1),
        (bson!(["vanilla", "ll", 12]), -1, -1),
        (bson!(["vanilla", "ll", 5, 2]), -1, -1),
        (bson!(["vanilla", "nilla", 3]), -1, -1),
        (bson!(["abc", "", 1]), 1, 1),
    ];
    for (args, bytes, code_points) in table {
        assert_eq!(
            ok(bson!({"$indexOfBytes": args.clone()})),
            bson!(bytes),
            "{args}"
        );
        assert_eq!(
            ok(bson!({"$indexOfCP": args.clone()})),
            bson!(code_points),
            "{args}"
        );
    }
    // The manual's inventory example: multi-byte characters shift byte offsets only.
    for (item, bytes, code_points) in [
        (bson!("foo"), bson!(0), bson!(0)),
        (bson!("fóofoo"), bson!(4), bson!(3)),
        (bson!("the foo bar"), bson!(4), bson!(4)),
        (bson!("hello world fóo"), bson!(-1), bson!(-1)),
        (Bson::Null, Bson::Null, Bson::Null),
    ] {
        let d = doc! {"item": item};
        assert_eq!(on(&d, bson!({"$indexOfBytes": ["$item", "foo"]})), bytes);
        assert_eq!(on(&d, bson!({"$indexOfCP": ["$item", "foo"]})), code_points);
    }
    assert_eq!(ok(bson!({"$indexOfBytes": ["$nope", "foo"]})), Bson::Null);
    assert_eq!(code(bson!({"$indexOfBytes": ["vanilla", "ll", -1]})), 40097);
    assert_eq!(code(bson!({"$indexOfCP": ["vanilla", "ll", 1.5]})), 40096);
    assert_eq!(code(bson!({"$indexOfBytes": [1, "ll"]})), 40091);
    assert_eq!(code(bson!({"$indexOfCP": ["a", 1]})), 40094);
    assert_eq!(code(bson!({"$indexOfCP": ["a"]})), 28667);
}

#[test]
fn regex_find_find_all_and_match() {
    let products = [
        "Single LINE description.",
        "First lines\nsecond line",
        "Many spaces before     line",
        "Multiple\nline descriptions",
        "anchors, links and hyperlinks",
        "métier work vocation",
    ];
    let find = |text: &str, regex: Bson| {
        on(
            &doc! {"description": text},
            bson!({"$regexFind": {"input": "$description", "regex": regex}}),
        )
    };
    let found =
        |m: &str, idx: i32, captures: Bson| bson!({"match": m, "idx": idx, "captures": captures});
    let line = bson::Regex {
        pattern: "line".into(),
        options: String::new(),
    };
    assert_eq!(
        find(products[0], Bson::RegularExpression(line.clone())),
        Bson::Null
    );
    assert_eq!(
        find(products[1], bson!("line")),
        found("line", 6, bson!([]))
    );
    assert_eq!(
        find(products[2], bson!("line")),
        found("line", 23, bson!([]))
    );
    assert_eq!(
        find(products[3], bson!("line")),
        found("line", 9, bson!([]))
    );
    let insensitive = Bson::RegularExpression(bson::Regex {
        pattern: "line".into(),
        options: "i".into(),
    });
    assert_eq!(find(products[0], insensitive), found("LINE", 7, bson!([])));
    assert_eq!(
        find(products[4], bson!("lin(e|k)")),
        found("link", 9, bson!(["k"]))
    );
    // idx counts code points: "é" is one.
    assert_eq!(
        find(products[5], bson!("tier")),
        found("tier", 2, bson!([]))
    );
    assert_eq!(
        ok(bson!({"$regexFind": {"input": "ab", "regex": "(a)|(b)"}})),
        found("a", 0, bson!(["a", null]))
    );
    let all = on(
        &doc! {"description": products[1]},
        bson!({"$regexFindAll": {"input": "$description", "regex": "line"}}),
    );
    assert_eq!(
        all,
        bson!([
            {"match": "line", "idx": 6, "captures": []},
            {"match": "line", "idx": 19, "captures": []},
        ])
    );
    assert_eq!(
        ok(bson!({"$regexFindAll": {"input": "ab", "regex": "x*"}})),
        bson!([
            {"match": "", "idx": 0, "captures": []},
            {"match": "", "idx": 1, "captures": []},
        ])
    );
    assert_eq!(
        ok(bson!({"$regexFindAll": {"input": null, "regex": "a"}})),
        bson!([])
    );
    assert_eq!(
        ok(bson!({"$regexFind": {"input": "$nope", "regex": "a"}})),
        Bson::Null
    );
    let matches = |text: &str, regex: Bson, options: Bson| {
        on(
            &doc! {"d": text},
            bson!({"$regexMatch": {"input": "$d", "regex": regex, "options": options}}),
        )
    };
    assert_eq!(
        matches(products[0], bson!("line"), Bson::Null),
        bson!(false)
    );
    assert_eq!(matches(products[0], bson!("line"), bson!("i")), bson!(true));
    assert_eq!(
        matches(products[3], bson!("^line"), bson!("m")),
        bson!(true)
    );
    assert_eq!(
        ok(bson!({"$regexMatch": {"input": null, "regex": "a"}})),
        bson!(false)
    );
    let both = Bson::RegularExpression(bson::Regex {
        pattern: "a".into(),
        options: "i".into(),
    });
    assert_eq!(
        code(bson!({"$regexMatch": {"input": "a", "regex": both, "options": "m"}})),
        51107
    );
    assert_eq!(
        code(bson!({"$regexFind": {"input": 1, "regex": "a"}})),
        51104
    );
    assert_eq!(
        code(bson!({"$regexFind": {"input": "a", "regex": 1}})),
        51105
    );
    assert_eq!(
        code(bson!({"$regexFind": {"input": "a", "regex": "a", "options": 1}})),
        51106
    );
    assert_eq!(
        code(bson!({"$regexFind": {"input": "a", "regex": "a", "options": "z"}})),
        51108
    );
    assert_eq!(
        code(bson!({"$regexFind": {"input": null, "regex": "("}})),
        51111
    );
    assert_eq!(code(bson!({"$regexFind": {"regex": "a"}})), 31022);
    assert_eq!(code(bson!({"$regexFind": {"input": "a"}})), 31023);
    assert_eq!(
        code(bson!({"$regexFind": {"input": "a", "regex": "a", "x": 1}})),
        31024
    );
    assert_eq!(code(bson!({"$regexFind": "a"})), 51103);
}

#[test]
fn replace_one_and_replace_all() {
    let items = [
        ("blue paint", "red paint", "red paint"),
        (
            "blue and green paint",
            "blue and green paint",
            "blue and green paint",
        ),
        (
            "blue paint with blue paintbrush",
            "red paint with blue paintbrush",
            "red paint with red paintbrush",
        ),
        (
            "blue paint with green paintbrush",
            "red paint with green paintbrush",
            "red paint with green paintbrush",
        ),
    ];
    for (item, one, all) in items {
        let d = doc! {"item": item};
        let spec = bson!({"input": "$item", "find": "blue paint", "replacement": "red paint"});
        assert_eq!(on(&d, bson!({"$replaceOne": spec.clone()})), bson!(one));
        assert_eq!(on(&d, bson!({"$replaceAll": spec})), bson!(all));
    }
    assert_eq!(
        ok(bson!({"$replaceAll": {"input": "abc", "find": "", "replacement": "-"}})),
        bson!("-a-b-c-")
    );
    assert_eq!(
        ok(bson!({"$replaceOne": {"input": "abc", "find": "", "replacement": "-"}})),
        bson!("-abc")
    );
    assert_eq!(
        ok(bson!({"$replaceOne": {"input": null, "find": "a", "replacement": "b"}})),
        Bson::Null
    );
    assert_eq!(
        ok(bson!({"$replaceAll": {"input": "$nope", "find": "a", "replacement": "b"}})),
        Bson::Null
    );
    // A wrong type fails even when another argument is null.
    assert_eq!(
        code(bson!({"$replaceOne": {"input": null, "find": 1, "replacement": "b"}})),
        51745
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"input": 1, "find": "a", "replacement": "b"}})),
        51746
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"input": "a", "find": "a", "replacement": 2}})),
        51744
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"input": "a", "find": "a"}})),
        51747
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"input": "a", "replacement": "a"}})),
        51748
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"find": "a", "replacement": "a"}})),
        51749
    );
    assert_eq!(
        code(bson!({"$replaceAll": {"input": "a", "find": "a", "replacement": "a", "x": 1}})),
        51750
    );
    assert_eq!(code(bson!({"$replaceAll": "a"})), 51751);
}

#[test]
fn index_of_array_and_zip() {
    let table = [
        (bson!([["a", "abc"], "a"]), bson!(0)),
        (bson!([["a", "abc", "de", ["de"]], ["de"]]), bson!(3)),
        (bson!([[1, 2], 2.0]), bson!(1)),
        (bson!([[1, 2, 3], [1, 2]]), bson!(-1)),
        (bson!([[10, 9, 9, 8, 9], 9, 3]), bson!(4)),
        (bson!([["a", "abc", "b"], "b", 0, 1]), bson!(-1)),
        (bson!([["a", "abc", "b"], "b", 1, 0]), bson!(-1)),
        (bson!([["a", "abc", "b"], "b", 20]), bson!(-1)),
        (bson!([[null, null, null], null]), bson!(0)),
        (bson!([null, "a"]), Bson::Null),
    ];
    for (args, expected) in table {
        assert_eq!(
            ok(bson!({"$indexOfArray": args.clone()})),
            expected,
            "{args}"
        );
    }
    assert_eq!(ok(bson!({"$indexOfArray": ["$nope", "a"]})), Bson::Null);
    assert_eq!(code(bson!({"$indexOfArray": [["a"], "a", -1]})), 40097);
    assert_eq!(code(bson!({"$indexOfArray": ["a", "a"]})), 40090);

    let zips = [
        (
            bson!({"inputs": [["a"], ["b"], ["c"]]}),
            bson!([["a", "b", "c"]]),
        ),
        (bson!({"inputs": [["a"], ["b", "c"]]}), bson!([["a", "b"]])),
        (
            bson!({"inputs": [[1], [2, 3]], "useLongestLength": true}),
            bson!([[1, 2], [null, 3]]),
        ),
        (
            bson!({"inputs": [[1], [2, 3], [4]], "useLongestLength": true, "defaults": ["a", "b", "c"]}),
            bson!([[1, 2, 4], ["a", 3, "c"]]),
        ),
        (bson!({"inputs": [[1], null]}), Bson::Null),
    ];
    for (spec, expected) in zips {
        assert_eq!(ok(bson!({"$zip": spec.clone()})), expected, "{spec}");
    }
    // The manual's matrix transposition.
    let matrix = doc! {"matrix": [[1, 2], [2, 3], [3, 4]]};
    let transposed = on(
        &matrix,
        bson!({"$zip": {"inputs": [
            {"$arrayElemAt": ["$matrix", 0]},
            {"$arrayElemAt": ["$matrix", 1]},
            {"$arrayElemAt": ["$matrix", 2]},
        ]}}),
    );
    assert_eq!(transposed, bson!([[1, 2, 3], [2, 3, 4]]));
    assert_eq!(code(bson!({"$zip": {"inputs": [[1], "a"]}})), 34468);
    assert_eq!(
        code(bson!({"$zip": {"inputs": [[1]], "defaults": [1]}})),
        34466
    );
    assert_eq!(
        code(bson!({"$zip": {"inputs": [[1]], "useLongestLength": true, "defaults": [1, 2]}})),
        34467
    );
    assert_eq!(code(bson!({"$zip": {"inputs": []}})), 34465);
    assert_eq!(code(bson!({"$zip": {"inputs": "a"}})), 34461);
    assert_eq!(
        code(bson!({"$zip": {"inputs": [[1]], "useLongestLength": 1}})),
        34463
    );
    assert_eq!(code(bson!({"$zip": {"inputs": [[1]], "x": 1}})), 34464);
    assert_eq!(code(bson!({"$zip": [[1]]})), 34460);
}

#[test]
fn set_operators() {
    let flowers = [
        (
            bson!(["rose", "orchid"]),
            bson!(["rose", "orchid", "jasmine"]),
        ),
        (bson!(["rose", "orchid"]), bson!([])),
        (bson!(["rose", "orchid"]), bson!([["rose"], ["orchid"]])),
    ];
    let expected_intersection = [bson!(["orchid", "rose"]), bson!([]), bson!([])];
    let expected_union = [
        bson!(["jasmine", "orchid", "rose"]),
        bson!(["orchid", "rose"]),
        bson!(["orchid", "rose", ["orchid"], ["rose"]]),
    ];
    let expected_b_only = [bson!(["jasmine"]), bson!([]), bson!([["rose"], ["orchid"]])];
    for (i, (a, b)) in flowers.into_iter().enumerate() {
        let d = doc! {"A": a, "B": b};
        assert_eq!(
            on(&d, bson!({"$setIntersection": ["$A", "$B"]})),
            expected_intersection[i]
        );
        assert_eq!(
            on(&d, bson!({"$setUnion": ["$A", "$B"]})),
            expected_union[i]
        );
        assert_eq!(
            on(&d, bson!({"$setDifference": ["$B", "$A"]})),
            expected_b_only[i]
        );
    }
    assert_eq!(
        ok(bson!({"$setEquals": [["a", "b", "a"], ["b", "a"]]})),
        bson!(true)
    );
    assert_eq!(
        ok(bson!({"$setEquals": [["a", "b"], [["a", "b"]]]})),
        bson!(false)
    );
    assert_eq!(ok(bson!({"$setEquals": [[1], [1.0], [1, 1]]})), bson!(true));
    assert_eq!(
        ok(bson!({"$setIsSubset": [["a", "b", "a"], ["b", "a"]]})),
        bson!(true)
    );
    assert_eq!(
        ok(bson!({"$setIsSubset": [["a", "b"], [["a", "b"]]]})),
        bson!(false)
    );
    assert_eq!(
        ok(bson!({"$setDifference": [["a", "b", "a"], ["b", "a"]]})),
        bson!([])
    );
    assert_eq!(
        ok(bson!({"$setDifference": [["a", "b"], [["a", "b"]]]})),
        bson!(["a", "b"])
    );
    assert_eq!(
        ok(bson!({"$setDifference": [[3, 1, 3, 2], [2]]})),
        bson!([3, 1])
    );
    assert_eq!(ok(bson!({"$setDifference": [null, [1]]})), Bson::Null);
    assert_eq!(
        ok(bson!({"$setIntersection": [[1, 2], "$nope"]})),
        Bson::Null
    );
    assert_eq!(ok(bson!({"$setIntersection": []})), bson!([]));
    assert_eq!(code(bson!({"$setEquals": [[1], null]})), 17044);
    assert_eq!(code(bson!({"$setEquals": [[1]]})), 17045);
    assert_eq!(code(bson!({"$setIsSubset": [null, [1]]})), 17046);
    assert_eq!(code(bson!({"$setIsSubset": [[1], 1]})), 17042);
    assert_eq!(code(bson!({"$setDifference": [1, [1]]})), 17048);
    assert_eq!(code(bson!({"$setDifference": [[1], "a"]})), 17049);
    assert_eq!(code(bson!({"$setIntersection": [[1], "a"]})), 17047);
}

#[test]
fn any_and_all_elements_true() {
    let survey = [
        (bson!([true]), true, true),
        (bson!([true, false]), true, false),
        (bson!([]), false, true),
        (bson!([1, true, "seven"]), true, true),
        (bson!([0]), false, false),
        (bson!([[]]), true, true),
        (bson!([[0]]), true, true),
        (bson!([[false]]), true, true),
        (bson!([null, false, 0]), false, false),
    ];
    for (responses, any, all) in survey {
        let d = doc! {"responses": responses.clone()};
        assert_eq!(
            on(&d, bson!({"$anyElementTrue": ["$responses"]})),
            bson!(any),
            "{responses}"
        );
        assert_eq!(
            on(&d, bson!({"$allElementsTrue": ["$responses"]})),
            bson!(all),
            "{responses}"
        );
    }
    assert_eq!(code(bson!({"$anyElementTrue": [null]})), 17041);
    assert_eq!(code(bson!({"$allElementsTrue": ["$nope"]})), 17040);
}

#[test]
fn sort_array() {
    let team = bson!([
        {"name": "pat", "age": 30, "address": {"street": "12 Baker St", "city": "London"}},
        {"name": "dallas", "age": 36, "address": {"street": "12 Cowper St", "city": "Palo Alto"}},
        {"name": "charlie", "age": 42, "address": {"street": "12 French St", "city": "New Brunswick"}},
    ]);
    let d = doc! {"team": team};
    let names = |sort_by: Bson| -> Vec<String> {
        let sorted = on(
            &d,
            bson!({"$sortArray": {"input": "$team", "sortBy": sort_by}}),
        );
        let Bson::Array(items) = sorted else {
            panic!("not an array: {sorted}");
        };
        items
            .iter()
            .map(|m| m.as_document().unwrap().get_str("name").unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(bson!({"name": 1})), ["charlie", "dallas", "pat"]);
    assert_eq!(
        names(bson!({"address.city": -1})),
        ["dallas", "charlie", "pat"]
    );
    assert_eq!(
        names(bson!({"age": -1, "name": 1})),
        ["charlie", "dallas", "pat"]
    );
    assert_eq!(
        ok(bson!({"$sortArray": {"input": [1, 4, 1, 6, 12, 5], "sortBy": 1}})),
        bson!([1, 1, 4, 5, 6, 12])
    );
    assert_eq!(
        ok(bson!({"$sortArray": {"input": [1, 4, 1, 6, 12, 5], "sortBy": -1}})),
        bson!([12, 6, 5, 4, 1, 1])
    );
    let mixed = bson!([
        20, 4, {"a": "Free"}, 6, 21, 5, "Gratis", {"a": null}, {"a": {"sale": true, "price": 19}},
        (decimal("10.23")), {"a": "On sale"}
    ]);
    assert_eq!(
        ok(bson!({"$sortArray": {"input": mixed, "sortBy": 1}})),
        bson!([
            4, 5, 6, (decimal("10.23")), 20, 21, "Gratis", {"a": null}, {"a": "Free"},
            {"a": "On sale"}, {"a": {"sale": true, "price": 19}}
        ])
    );
    assert_eq!(
        ok(bson!({"$sortArray": {"input": null, "sortBy": 1}})),
        Bson::Null
    );
    assert_eq!(
        code(bson!({"$sortArray": {"input": 1, "sortBy": 1}})),
        2942504
    );
    assert_eq!(
        code(bson!({"$sortArray": {"input": [], "sortBy": 2}})),
        2942506
    );
    assert_eq!(
        code(bson!({"$sortArray": {"input": [], "sortBy": {"a": 2}}})),
        2942505
    );
    assert_eq!(
        code(bson!({"$sortArray": {"input": [], "sortBy": "a"}})),
        2942507
    );
    assert_eq!(code(bson!({"$sortArray": {"sortBy": 1}})), 2942502);
    assert_eq!(code(bson!({"$sortArray": {"input": []}})), 2942503);
    assert_eq!(
        code(bson!({"$sortArray": {"input": [], "sortBy": 1, "x": 1}})),
        2942501
    );
    assert_eq!(code(bson!({"$sortArray": []})), 2942500);
}

#[test]
fn date_from_parts_and_to_parts() {
    let from = |spec: Bson| ok(bson!({"$dateFromParts": spec}));
    assert_eq!(
        from(bson!({"year": 2017, "month": 2, "day": 8, "hour": 12})),
        date("2017-02-08T12:00:00Z")
    );
    assert_eq!(
        from(bson!({"isoWeekYear": 2017, "isoWeek": 6, "isoDayOfWeek": 3, "hour": 12})),
        date("2017-02-08T12:00:00Z")
    );
    assert_eq!(
        from(
            bson!({"year": 2016, "month": 12, "day": 31, "hour": 23, "minute": 46, "second": 12, "timezone": "America/New_York"})
        ),
        date("2017-01-01T04:46:12Z")
    );
    // Values outside a part's range carry into the next larger part.
    assert_eq!(
        from(bson!({"year": 2017, "month": 14, "day": 1, "hour": 12})),
        date("2018-02-01T12:00:00Z")
    );
    assert_eq!(
        from(bson!({"year": 2017, "month": 0, "day": 1, "hour": 12})),
        date("2016-12-01T12:00:00Z")
    );
    assert_eq!(
        from(bson!({"year": 2017, "month": 2, "day": 0})),
        date("2017-01-31T00:00:00Z")
    );
    assert_eq!(
        from(bson!({"year": 2017, "month": 1, "day": 31, "hour": 25})),
        date("2017-02-01T01:00:00Z")
    );
    assert_eq!(
        from(bson!({"year": 2017, "millisecond": -1})),
        date("2016-12-31T23:59:59.999Z")
    );
    assert_eq!(
        from(bson!({"year": 2017, "timezone": "+05:30"})),
        date("2016-12-31T18:30:00Z")
    );
    assert_eq!(from(bson!({"year": 2017, "month": null})), Bson::Null);
    assert_eq!(from(bson!({"year": 2017, "timezone": null})), Bson::Null);
    assert_eq!(code(bson!({"$dateFromParts": {"month": 1}})), 40516);
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "isoWeek": 1}})),
        40489
    );
    assert_eq!(
        code(bson!({"$dateFromParts": {"isoWeekYear": 2017, "month": 1}})),
        40525
    );
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "x": 1}})),
        40518
    );
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "month": 1.5}})),
        40515
    );
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "month": 40000}})),
        31034
    );
    assert_eq!(code(bson!({"$dateFromParts": {"year": 10000}})), 40523);
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "timezone": 5}})),
        40517
    );
    assert_eq!(
        code(bson!({"$dateFromParts": {"year": 2017, "timezone": "Nowhere/City"}})),
        40485
    );

    let d = doc! {"date": date("2017-01-01T01:29:09.123Z")};
    assert_eq!(
        on(&d, bson!({"$dateToParts": {"date": "$date"}})),
        bson!({"year": 2017, "month": 1, "day": 1, "hour": 1, "minute": 29, "second": 9, "millisecond": 123})
    );
    assert_eq!(
        on(
            &d,
            bson!({"$dateToParts": {"date": "$date", "iso8601": true}})
        ),
        bson!({"isoWeekYear": 2016, "isoWeek": 52, "isoDayOfWeek": 7, "hour": 1, "minute": 29, "second": 9, "millisecond": 123})
    );
    assert_eq!(
        on(
            &d,
            bson!({"$dateToParts": {"date": "$date", "timezone": "America/New_York"}})
        ),
        bson!({"year": 2016, "month": 12, "day": 31, "hour": 20, "minute": 29, "second": 9, "millisecond": 123})
    );
    assert_eq!(
        on(&d, bson!({"$dateToParts": {"date": "$nope"}})),
        Bson::Null
    );
    assert_eq!(
        on(
            &d,
            bson!({"$dateToParts": {"date": "$date", "iso8601": null}})
        ),
        Bson::Null
    );
    assert_eq!(
        code_on(&d, bson!({"$dateToParts": {"date": "$date", "iso8601": 1}})),
        40521
    );
    assert_eq!(code_on(&d, bson!({"$dateToParts": {"date": "x"}})), 16006);
    assert_eq!(
        code_on(&d, bson!({"$dateToParts": {"timezone": "UTC"}})),
        40522
    );
    assert_eq!(
        code_on(&d, bson!({"$dateToParts": {"date": "$date", "x": 1}})),
        40520
    );
    assert_eq!(code_on(&d, bson!({"$dateToParts": "$date"})), 40524);
}

#[test]
fn date_from_string() {
    let from = |spec: Bson| ok(bson!({"$dateFromString": spec}));
    assert_eq!(
        from(bson!({"dateString": "2017-02-08T12:10:40.787", "timezone": "America/New_York"})),
        date("2017-02-08T17:10:40.787Z")
    );
    assert_eq!(
        from(bson!({"dateString": "2017-02-08"})),
        date("2017-02-08T00:00:00Z")
    );
    assert_eq!(
        from(bson!({"dateString": "2017-02-08T12:10:40.787Z"})),
        date("2017-02-08T12:10:40.787Z")
    );
    assert_eq!(
        from(bson!({"dateString": "2017-02-08T12:10:40+02:00"})),
        date("2017-02-08T10:10:40Z")
    );
    assert_eq!(
        from(bson!({"dateString": "2017-02-08 12:10"})),
        date("2017-02-08T12:10:00Z")
    );
    assert_eq!(
        from(bson!({"dateString": "2017-07-08T12:10:40", "timezone": "Europe/London"})),
        date("2017-07-08T11:10:40Z")
    );
    assert_eq!(
        from(bson!({"dateString": "15-06-2018", "format": "%d-%m-%Y"})),
        date("2018-06-15T00:00:00Z")
    );
    assert_eq!(
        from(bson!({"dateString": "06-15-2018", "format": "%m-%d-%Y"})),
        date("2018-06-15T00:00:00Z")
    );
    assert_eq!(
        from(
            bson!({"dateString": "2018/06/15 14:05:09.500 +0100", "format": "%Y/%m/%d %H:%M:%S.%L %z"})
        ),
        date("2018-06-15T13:05:09.500Z")
    );
    assert_eq!(
        from(bson!({"dateString": "Jun 15 2018", "format": "%b %d %Y"})),
        date("2018-06-15T00:00:00Z")
    );
    // onError catches unparsable strings, onNull null input.
    assert_eq!(
        from(bson!({"dateString": "20177-02-09T03:35:02.055", "onError": "bad"})),
        bson!("bad")
    );
    assert_eq!(
        from(bson!({"dateString": "$nope", "onNull": "none"})),
        bson!("none")
    );
    assert_eq!(from(bson!({"dateString": null})), Bson::Null);
    assert_eq!(from(bson!({"dateString": 5, "onError": 0})), bson!(0));
    assert_eq!(
        code(bson!({"$dateFromString": {"dateString": "2017-13-45"}})),
        241
    );
    assert_eq!(
        code(bson!({"$dateFromString": {"dateString": "12:10:40"}})),
        241
    );
    assert_eq!(
        code(
            bson!({"$dateFromString": {"dateString": "2017-02-08T12:10:40Z", "timezone": "Europe/Paris"}})
        ),
        241
    );
    assert_eq!(
        code(bson!({"$dateFromString": {"dateString": "2017-02-08", "format": "%Y-%m-%d %q"}})),
        18536
    );
    assert_eq!(
        code(bson!({"$dateFromString": {"dateString": "2017-02-08", "format": 1, "onError": 0}})),
        40684
    );
    assert_eq!(code(bson!({"$dateFromString": {"format": "%Y"}})), 40542);
    assert_eq!(
        code(bson!({"$dateFromString": {"dateString": "x", "y": 1}})),
        40541
    );
    assert_eq!(code(bson!({"$dateFromString": "x"})), 40540);
}

#[test]
fn date_add_and_subtract() {
    let add = |start: &str, unit: &str, amount: i64, tz: Bson| {
        ok(
            bson!({"$dateAdd": {"startDate": date(start), "unit": unit, "amount": amount, "timezone": tz}}),
        )
    };
    let utc = bson!("UTC");
    assert_eq!(
        add("2020-10-31T12:10:05Z", "day", 3, utc.clone()),
        date("2020-11-03T12:10:05Z")
    );
    // Month ends clamp to the shorter month.
    assert_eq!(
        add("2020-10-31T12:10:05Z", "month", 1, utc.clone()),
        date("2020-11-30T12:10:05Z")
    );
    assert_eq!(
        add("2020-01-31T00:00:00Z", "quarter", 1, utc.clone()),
        date("2020-04-30T00:00:00Z")
    );
    assert_eq!(
        add("2020-02-29T00:00:00Z", "year", 1, utc.clone()),
        date("2021-02-28T00:00:00Z")
    );
    assert_eq!(
        add("2021-01-01T00:00:00Z", "week", 2, utc.clone()),
        date("2021-01-15T00:00:00Z")
    );
    assert_eq!(
        add("2021-01-01T00:00:00Z", "millisecond", 1500, utc),
        date("2021-01-01T00:00:01.500Z")
    );
    // Across New York's spring-forward: a day keeps the wall-clock time, 24 hours do not.
    let new_york = bson!("America/New_York");
    assert_eq!(
        add("2021-03-13T12:00:00Z", "day", 1, new_york.clone()),
        date("2021-03-14T11:00:00Z")
    );
    assert_eq!(
        add("2021-03-13T12:00:00Z", "hour", 24, new_york),
        date("2021-03-14T12:00:00Z")
    );
    assert_eq!(
        ok(
            bson!({"$dateSubtract": {"startDate": date("2021-03-31T08:00:00Z"), "unit": "month", "amount": 1}})
        ),
        date("2021-02-28T08:00:00Z")
    );
    assert_eq!(
        ok(
            bson!({"$dateSubtract": {"startDate": date("2021-01-01T00:00:00Z"), "unit": "hour", "amount": 3}})
        ),
        date("2020-12-31T21:00:00Z")
    );
    assert_eq!(
        ok(bson!({"$dateAdd": {"startDate": null, "unit": "day", "amount": 1}})),
        Bson::Null
    );
    assert_eq!(
        ok(
            bson!({"$dateAdd": {"startDate": date("2021-01-01T00:00:00Z"), "unit": "day", "amount": "$nope"}})
        ),
        Bson::Null
    );
    let start = date("2021-01-01T00:00:00Z");
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": "x", "unit": "day", "amount": 1}})),
        5166403
    );
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": start.clone(), "unit": 1, "amount": 1}})),
        5166404
    );
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": start.clone(), "unit": "days", "amount": 1}})),
        9
    );
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": start.clone(), "unit": "day", "amount": 1.5}})),
        5166405
    );
    assert_eq!(
        code(
            bson!({"$dateAdd": {"startDate": start.clone(), "unit": "year", "amount": Bson::Int64(i64::MAX / 2)}})
        ),
        5976500
    );
    assert_eq!(
        code(
            bson!({"$dateSubtract": {"startDate": start.clone(), "unit": "day", "amount": Bson::Int64(i64::MIN)}})
        ),
        6045000
    );
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": start.clone(), "unit": "day"}})),
        5166402
    );
    assert_eq!(
        code(bson!({"$dateAdd": {"startDate": start, "unit": "day", "amount": 1, "x": 1}})),
        5166401
    );
    assert_eq!(code(bson!({"$dateAdd": 1})), 5166400);
}

#[test]
fn date_diff() {
    let diff = |start: &str, end: &str, unit: &str, extra: Document| {
        let mut spec = doc! {"startDate": date(start), "endDate": date(end), "unit": unit};
        spec.extend(extra);
        ok(bson!({"$dateDiff": spec}))
    };
    let none = Document::new;
    assert_eq!(
        diff(
            "2021-01-01T00:00:00Z",
            "2021-03-15T13:45:30.500Z",
            "day",
            none()
        ),
        Bson::Int64(73)
    );
    // Boundaries crossed, not elapsed periods.
    assert_eq!(
        diff(
            "2020-12-31T23:59:59Z",
            "2021-01-01T00:00:00Z",
            "year",
            none()
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        diff(
            "2021-01-31T00:00:00Z",
            "2021-02-01T00:00:00Z",
            "month",
            none()
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        diff(
            "2021-03-31T00:00:00Z",
            "2021-04-01T00:00:00Z",
            "quarter",
            none()
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        diff(
            "2021-04-01T00:00:00Z",
            "2021-01-01T00:00:00Z",
            "month",
            none()
        ),
        Bson::Int64(-3)
    );
    // 2022-01-01 is a Saturday: one week boundary by default (Sunday), none for Monday weeks.
    assert_eq!(
        diff(
            "2022-01-01T00:00:00Z",
            "2022-01-02T00:00:00Z",
            "week",
            none()
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        diff(
            "2022-01-01T00:00:00Z",
            "2022-01-02T00:00:00Z",
            "week",
            doc! {"startOfWeek": "Monday"}
        ),
        Bson::Int64(0)
    );
    assert_eq!(
        diff(
            "2021-01-01T00:59:00Z",
            "2021-01-01T01:00:00Z",
            "hour",
            none()
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        diff(
            "2021-01-01T00:00:00Z",
            "2021-01-01T00:00:01.999Z",
            "millisecond",
            none()
        ),
        Bson::Int64(1999)
    );
    // Two real hours across New York's spring-forward, though the clocks moved three.
    assert_eq!(
        diff(
            "2021-03-14T06:00:00Z",
            "2021-03-14T08:00:00Z",
            "hour",
            doc! {"timezone": "America/New_York"}
        ),
        Bson::Int64(2)
    );
    // Days count local midnights: in Tokyo (+09:00) 14:59Z and 15:00Z are different days.
    assert_eq!(
        diff(
            "2021-01-01T14:59:00Z",
            "2021-01-01T15:00:00Z",
            "day",
            doc! {"timezone": "Asia/Tokyo"}
        ),
        Bson::Int64(1)
    );
    assert_eq!(
        ok(
            bson!({"$dateDiff": {"startDate": null, "endDate": date("2021-01-01T00:00:00Z"), "unit": "day"}})
        ),
        Bson::Null
    );
    let start = date("2021-01-01T00:00:00Z");
    assert_eq!(
        code(bson!({"$dateDiff": {"startDate": 1, "endDate": start.clone(), "unit": "day"}})),
        5166307
    );
    assert_eq!(
        code(
            bson!({"$dateDiff": {"startDate": start.clone(), "endDate": start.clone(), "unit": 1}})
        ),
        5439013
    );
    assert_eq!(
        code(
            bson!({"$dateDiff": {"startDate": start.clone(), "endDate": start.clone(), "unit": "days"}})
        ),
        5439014
    );
    assert_eq!(
        code(
            bson!({"$dateDiff": {"startDate": start.clone(), "endDate": start.clone(), "unit": "week", "startOfWeek": "someday"}})
        ),
        5439016
    );
    assert_eq!(
        code(bson!({"$dateDiff": {"startDate": start.clone(), "unit": "day"}})),
        5166304
    );
    assert_eq!(
        code(bson!({"$dateDiff": {"endDate": start.clone(), "unit": "day"}})),
        5166303
    );
    assert_eq!(
        code(bson!({"$dateDiff": {"startDate": start.clone(), "endDate": start}})),
        5166305
    );
}

#[test]
fn date_trunc() {
    let trunc = |at: &str, spec: Document| {
        let mut full = doc! {"date": date(at)};
        full.extend(spec);
        ok(bson!({"$dateTrunc": full}))
    };
    assert_eq!(
        trunc("2021-03-15T13:45:30.500Z", doc! {"unit": "month"}),
        date("2021-03-01T00:00:00Z")
    );
    // The manual's pizza orders: six-month bins, and two-week bins from Monday in Los Angeles.
    assert_eq!(
        trunc("2021-03-13T08:14:30Z", doc! {"unit": "month", "binSize": 6}),
        date("2021-01-01T00:00:00Z")
    );
    assert_eq!(
        trunc(
            "2022-01-12T21:23:13.331Z",
            doc! {"unit": "month", "binSize": 6}
        ),
        date("2022-01-01T00:00:00Z")
    );
    assert_eq!(
        trunc(
            "2021-03-13T08:14:30Z",
            doc! {"unit": "week", "binSize": 2, "timezone": "America/Los_Angeles", "startOfWeek": "Monday"}
        ),
        date("2021-03-01T08:00:00Z")
    );
    assert_eq!(
        trunc("2021-03-15T13:45:30.500Z", doc! {"unit": "hour"}),
        date("2021-03-15T13:00:00Z")
    );
    assert_eq!(
        trunc(
            "2021-03-15T13:45:30.500Z",
            doc! {"unit": "minute", "binSize": 15}
        ),
        date("2021-03-15T13:45:00Z")
    );
    assert_eq!(
        trunc("2021-03-15T13:45:30.500Z", doc! {"unit": "year"}),
        date("2021-01-01T00:00:00Z")
    );
    assert_eq!(
        trunc("2021-08-15T13:45:30Z", doc! {"unit": "quarter"}),
        date("2021-07-01T00:00:00Z")
    );
    assert_eq!(
        trunc(
            "2021-03-15T03:45:30Z",
            doc! {"unit": "day", "timezone": "America/New_York"}
        ),
        // Local midnight of March 14th was still standard time (-05:00).
        date("2021-03-14T05:00:00Z")
    );
    assert_eq!(
        trunc(
            "2021-03-15T13:45:30Z",
            doc! {"unit": "day", "binSize": null}
        ),
        Bson::Null
    );
    assert_eq!(
        code(bson!({"$dateTrunc": {"date": 1, "unit": "day"}})),
        5439012
    );
    assert_eq!(
        code(
            bson!({"$dateTrunc": {"date": date("2021-01-01T00:00:00Z"), "unit": "day", "binSize": 0}})
        ),
        5439018
    );
    assert_eq!(
        code(
            bson!({"$dateTrunc": {"date": date("2021-01-01T00:00:00Z"), "unit": "day", "binSize": 1.5}})
        ),
        5439017
    );
    assert_eq!(code(bson!({"$dateTrunc": {"unit": "day"}})), 5439009);
    assert_eq!(
        code(bson!({"$dateTrunc": {"date": date("2021-01-01T00:00:00Z")}})),
        5439010
    );
    assert_eq!(code(bson!({"$dateTrunc": "x"})), 5439007);
}

#[test]
fn named_time_zones_in_date_parts() {
    let d =
        doc! {"d": date("2021-03-15T13:45:30.500Z"), "winter": date("2014-01-01T08:15:39.736Z")};
    assert_eq!(
        on(
            &d,
            bson!({"$hour": {"date": "$d", "timezone": "America/New_York"}})
        ),
        bson!(9)
    );
    assert_eq!(
        on(
            &d,
            bson!({"$hour": {"date": "$winter", "timezone": "America/New_York"}})
        ),
        bson!(3)
    );
    assert_eq!(
        on(&d, bson!({"$hour": {"date": "$d", "timezone": "+0530"}})),
        bson!(19)
    );
    assert_eq!(
        on(&d, bson!({"$hour": {"date": "$d", "timezone": "-03"}})),
        bson!(10)
    );
    assert_eq!(
        on(
            &d,
            bson!({"$dateToString": {"format": "%H:%M:%S:%L%z", "date": "$winter", "timezone": "America/New_York"}})
        ),
        bson!("03:15:39:736-0500")
    );
    assert_eq!(
        on(
            &d,
            bson!({"$dateToString": {"format": "%Z %b %B", "date": "$winter", "timezone": "America/New_York"}})
        ),
        bson!("-300 Jan January")
    );
    assert_eq!(
        on(&d, bson!({"$hour": {"date": "$d", "timezone": null}})),
        Bson::Null
    );
    assert_eq!(
        code_on(&d, bson!({"$hour": {"date": "$d", "timezone": "Z"}})),
        40485
    );
    assert_eq!(
        code_on(&d, bson!({"$hour": {"date": "$d", "timezone": 1}})),
        40517
    );
    assert_eq!(code_on(&d, bson!({"$hour": {"timezone": "UTC"}})), 40539);
    assert_eq!(
        code_on(&d, bson!({"$hour": {"date": "$d", "tz": "UTC"}})),
        40535
    );
    assert_eq!(code_on(&d, bson!({"$hour": ["$d", "$d"]})), 40536);
}

#[test]
fn convert_with_on_error_and_on_null() {
    let inventory = [
        (doc! {"qty": 5, "price": 10}, bson!(5), (decimal("10"))),
        (
            doc! {"qty": 10, "price": (decimal("20.0"))},
            bson!(10),
            (decimal("20.0")),
        ),
        (
            doc! {"qty": 2, "price": "4.99"},
            bson!(2),
            (decimal("4.99")),
        ),
        (doc! {}, bson!(0), (decimal("0"))),
        (
            doc! {"qty": Bson::Int64(5_000_000_000), "price": (decimal("1.25"))},
            bson!("Could not convert 5000000000 to type integer."),
            (decimal("1.25")),
        ),
    ];
    for (d, qty, price) in inventory {
        let converted_qty = on(
            &d,
            bson!({"$convert": {
                "input": "$qty", "to": "int",
                "onError": {"$concat": ["Could not convert ", {"$toString": "$qty"}, " to type integer."]},
                "onNull": 0,
            }}),
        );
        assert_eq!(converted_qty, qty, "{d}");
        let converted_price = on(
            &d,
            bson!({"$convert": {"input": "$price", "to": "decimal", "onError": "Error", "onNull": (decimal("0"))}}),
        );
        assert_eq!(converted_price, price, "{d}");
    }
    let table = [
        (bson!(true), bson!("bool"), bson!(true)),
        (bson!("false"), bson!("bool"), bson!(true)),
        (bson!(""), bson!("bool"), bson!(true)),
        (bson!(0), bson!("bool"), bson!(false)),
        (bson!(1.99999), bson!("int"), bson!(1)),
        (bson!("5"), bson!("int"), bson!(5)),
        (bson!(5.5), bson!("long"), Bson::Int64(5)),
        (bson!("1.3"), bson!("double"), bson!(1.3)),
        (
            date("2018-03-26T04:38:28.044Z"),
            bson!("long"),
            Bson::Int64(1_522_039_108_044),
        ),
        (
            bson!("2018-03-03"),
            bson!("date"),
            date("2018-03-03T00:00:00Z"),
        ),
        (
            bson!(120_000_000_000.5),
            bson!("date"),
            date("1973-10-20T21:20:00Z"),
        ),
        (bson!(2.5), bson!("string"), bson!("2.5")),
        (bson!(true), bson!("string"), bson!("true")),
        (bson!(2.5), bson!("decimal"), (decimal("2.50000000000000"))),
        (bson!(1), bson!(16), bson!(1)),
        (
            bson!("5ab9cbfa31c2ab715d42129e"),
            bson!("objectId"),
            Bson::ObjectId(bson::oid::ObjectId::parse_str("5ab9cbfa31c2ab715d42129e").unwrap()),
        ),
    ];
    for (input, to, expected) in table {
        let result = ok(bson!({"$convert": {"input": input.clone(), "to": to.clone()}}));
        assert_eq!(result, expected, "{input} to {to}");
    }
    assert_eq!(
        ok(bson!({"$convert": {"input": "abc", "to": "int", "onError": -1}})),
        bson!(-1)
    );
    assert_eq!(
        ok(bson!({"$convert": {"input": "$nosuch", "to": "int", "onNull": 0}})),
        bson!(0)
    );
    assert_eq!(
        ok(bson!({"$convert": {"input": "$nosuch", "to": "int"}})),
        Bson::Null
    );
    assert_eq!(
        ok(bson!({"$convert": {"input": 1, "to": null}})),
        Bson::Null
    );
    assert_eq!(
        ok(bson!({"$convert": {"input": [1], "to": "int", "onError": "e"}})),
        bson!("e")
    );
    assert_eq!(
        code(bson!({"$convert": {"input": "abc", "to": "int"}})),
        241
    );
    assert_eq!(
        code(bson!({"$convert": {"input": 3_000_000_000.0, "to": "int"}})),
        241
    );
    assert_eq!(ok(bson!({"$convert": {"input": 1, "to": 1}})), bson!(1.0));
    assert_eq!(code(bson!({"$convert": {"input": 1, "to": "object"}})), 241);
    // A bad 'to' is not a conversion failure: onError does not catch it.
    assert_eq!(
        code(bson!({"$convert": {"input": 1, "to": "integer", "onError": 0}})),
        2
    );
    assert_eq!(
        code(bson!({"$convert": {"input": 1, "to": 99, "onError": 0}})),
        9
    );
    assert_eq!(code(bson!({"$convert": {"input": 1, "to": true}})), 9);
    assert_eq!(code(bson!({"$convert": {"input": 1}})), 9);
    assert_eq!(
        code(bson!({"$convert": {"input": 1, "to": "int", "x": 1}})),
        9
    );
    assert_eq!(code(bson!({"$toInt": ["a", "b"]})), 50723);
    assert_eq!(ok(bson!({"$toInt": "$nope"})), Bson::Null);
    assert_eq!(code(bson!({"$toDate": 5})), 241);
    assert_eq!(ok(bson!({"$toDecimal": 1})), decimal("1"));
    assert_eq!(ok(bson!({"$toString": -0.0})), bson!("-0"));
}

#[test]
fn get_field_and_set_field() {
    let d = doc! {"_id": 1, "item": "sweatshirt", "price.usd": 45.99, "$price": 5, "qty": 300};
    assert_eq!(on(&d, bson!({"$getField": "price.usd"})), bson!(45.99));
    assert_eq!(
        on(&d, bson!({"$getField": {"$literal": "$price"}})),
        bson!(5)
    );
    assert_eq!(
        on(
            &d,
            bson!({"$getField": {"field": {"$literal": "$price"}, "input": "$$CURRENT"}})
        ),
        bson!(5)
    );
    assert_eq!(
        on(
            &d,
            bson!({"$getField": {"field": "qty", "input": {"qty": 1}}})
        ),
        bson!(1)
    );
    assert_eq!(
        on(&d, bson!({"$getField": {"field": "x", "input": null}})),
        Bson::Null
    );
    assert_eq!(
        on(&d, bson!({"$getField": {"field": "x", "input": "$nope"}})),
        bson!("<missing>")
    );
    assert_eq!(
        on(&d, bson!({"$getField": {"field": "x", "input": 5}})),
        bson!("<missing>")
    );
    assert_eq!(code_on(&d, bson!({"$getField": "$price"})), 5654600);
    assert_eq!(
        code_on(&d, bson!({"$getField": {"$concat": ["a", "b"]}})),
        5654601
    );
    assert_eq!(code_on(&d, bson!({"$getField": 5})), 5654602);
    assert_eq!(
        code_on(&d, bson!({"$getField": {"input": "$$ROOT"}})),
        3041702
    );
    assert_eq!(
        code_on(&d, bson!({"$getField": {"field": "a", "x": 1}})),
        3041701
    );

    let set = on(
        &d,
        bson!({"$setField": {"field": "price.usd", "input": "$$ROOT", "value": 49.99}}),
    );
    assert_eq!(
        set,
        bson!({"_id": 1, "item": "sweatshirt", "price.usd": 49.99, "$price": 5, "qty": 300})
    );
    let added = on(
        &d,
        bson!({"$setField": {"field": "new", "input": {"a": 1}, "value": "$qty"}}),
    );
    assert_eq!(added, bson!({"a": 1, "new": 300}));
    let removed = on(
        &d,
        bson!({"$setField": {"field": "a", "input": {"a": 1, "b": 2}, "value": "$$REMOVE"}}),
    );
    assert_eq!(removed, bson!({"b": 2}));
    let unset = on(
        &d,
        bson!({"$unsetField": {"field": {"$literal": "$price"}, "input": "$$ROOT"}}),
    );
    assert_eq!(
        unset,
        bson!({"_id": 1, "item": "sweatshirt", "price.usd": 45.99, "qty": 300})
    );
    assert_eq!(
        on(
            &d,
            bson!({"$setField": {"field": "a", "input": null, "value": 1}})
        ),
        Bson::Null
    );
    assert_eq!(
        code_on(
            &d,
            bson!({"$setField": {"field": "a", "input": 1, "value": 1}})
        ),
        4161105
    );
    assert_eq!(
        code_on(&d, bson!({"$setField": {"field": "a", "input": {}}})),
        4161103
    );
    assert_eq!(
        code_on(
            &d,
            bson!({"$unsetField": {"field": "a", "input": {}, "value": 1}})
        ),
        4161101
    );
    assert_eq!(
        code_on(
            &d,
            bson!({"$setField": {"field": "$a", "input": {}, "value": 1}})
        ),
        4161108
    );
    assert_eq!(code_on(&d, bson!({"$setField": "a"})), 4161100);
}

#[test]
fn arithmetic_errors_are_mongodb_7() {
    assert_eq!(code(bson!({"$divide": [1, 0]})), 2);
    assert_eq!(code(bson!({"$divide": [1, 0.0]})), 2);
    assert_eq!(ok(bson!({"$divide": [null, "a"]})), Bson::Null);
    assert_eq!(code(bson!({"$divide": ["a", 1]})), 14);
    assert_eq!(code(bson!({"$add": ["a", null]})), 14);
    assert_eq!(ok(bson!({"$add": [null, "a"]})), Bson::Null);
    assert_eq!(code(bson!({"$mod": [1, 0]})), 16610);
    assert_eq!(ok(bson!({"$mod": [5, 2.0]})), bson!(1));
    assert_eq!(ok(bson!({"$mod": [5, 2.5]})), bson!(0.0));
    assert_eq!(ok(bson!({"$log": [100, 10]})), bson!(2.0));
    assert_eq!(code(bson!({"$log": [100, 1]})), 28759);
    assert_eq!(
        ok(bson!({"$subtract": [date("2021-01-01T00:00:01Z"), 1.9]})),
        date("2021-01-01T00:00:00.999Z")
    );
}
