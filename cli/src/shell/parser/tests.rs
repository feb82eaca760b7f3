//! Tests of the literal and statement parser.

use std::str::FromStr as _;

use bson::{Binary, DateTime, Decimal128, Timestamp, doc, oid::ObjectId, spec::BinarySubtype};

use super::*;

fn literal(source: &str) -> Bson {
    parse_literal(source).unwrap_or_else(|error| panic!("{source}: {error}"))
}

fn literal_error(source: &str) -> ParseError {
    match parse_literal(source) {
        Ok(value) => panic!("{source} parsed as {value:?}"),
        Err(error) => error,
    }
}

fn script(source: &str) -> Vec<Statement> {
    parse_script(source).unwrap_or_else(|error| panic!("{source}: {error}"))
}

fn single(source: &str) -> Statement {
    let mut statements = script(source);
    assert_eq!(statements.len(), 1, "{source}");
    statements.remove(0)
}

fn chain(source: &str) -> Chain {
    match single(source) {
        Statement::Expr(Expr::Chain(chain)) => chain,
        other => panic!("{source} is not a chain: {other:?}"),
    }
}

fn member(name: &str) -> Step {
    Step::Member(name.to_string())
}

fn call(args: Vec<Bson>) -> Step {
    Step::Call(args.into_iter().map(Expr::Literal).collect())
}

#[test]
fn numbers_follow_mongosh_literal_types() {
    assert_eq!(literal("1"), Bson::Int32(1));
    assert_eq!(literal("-7"), Bson::Int32(-7));
    assert_eq!(literal("2147483647"), Bson::Int32(i32::MAX));
    assert_eq!(literal("2147483648"), Bson::Int64(2_147_483_648));
    assert_eq!(literal("-2147483649"), Bson::Int64(-2_147_483_649));
    assert_eq!(literal("1.5"), Bson::Double(1.5));
    assert_eq!(literal("-.25"), Bson::Double(-0.25));
    assert_eq!(literal("1e3"), Bson::Int32(1000));
    assert_eq!(literal("2.5e-3"), Bson::Double(0.0025));
    assert_eq!(literal("1.0"), Bson::Int32(1));
    assert_eq!(literal("0x1F"), Bson::Int32(31));
    assert_eq!(literal("1e30"), Bson::Double(1e30));
    assert_eq!(literal("Infinity"), Bson::Double(f64::INFINITY));
    assert_eq!(literal("-Infinity"), Bson::Double(f64::NEG_INFINITY));
    assert!(matches!(literal("NaN"), Bson::Double(value) if value.is_nan()));
}

#[test]
fn strings_keywords_and_escapes() {
    assert_eq!(literal("'single'"), Bson::String("single".into()));
    assert_eq!(literal("\"double\""), Bson::String("double".into()));
    assert_eq!(literal(r#"'it\'s'"#), Bson::String("it's".into()));
    assert_eq!(
        literal(r#""a\nb\t\u00e9\x41\u{1F600}""#),
        Bson::String("a\nb\téA😀".into())
    );
    assert_eq!(literal("true"), Bson::Boolean(true));
    assert_eq!(literal("false"), Bson::Boolean(false));
    assert_eq!(literal("null"), Bson::Null);
    assert_eq!(literal("undefined"), Bson::Null);
}

#[test]
fn objects_accept_relaxed_syntax() {
    let value = literal("{a: 1, 'b c': \"x\", $set: {d: [1, 2,],}, 3: true, _id: -1,}");
    let expected = doc! {
        "a": 1,
        "b c": "x",
        "$set": { "d": [1, 2] },
        "3": true,
        "_id": -1,
    };
    assert_eq!(value, Bson::Document(expected));
    assert_eq!(literal("{}"), Bson::Document(Document::new()));
    assert_eq!(literal("[]"), Bson::Array(Vec::new()));
    let nested = literal("{a: {b: {c: [{d: [[1], {e: null}]}]}}}");
    assert_eq!(
        nested,
        Bson::Document(doc! { "a": { "b": { "c": [{ "d": [[1], { "e": null }] }] } } })
    );
    let commented = literal("{ // first\n a: 1, /* inline */ b: 2\n}");
    assert_eq!(commented, Bson::Document(doc! { "a": 1, "b": 2 }));
}

#[test]
fn shell_helpers_build_typed_values() {
    let hex = "65a1b2c3d4e5f6a7b8c9d0e1";
    let oid = ObjectId::parse_str(hex).unwrap();
    assert_eq!(literal(&format!("ObjectId('{hex}')")), Bson::ObjectId(oid));
    assert_eq!(
        literal(&format!("new ObjectId(\"{hex}\")")),
        Bson::ObjectId(oid)
    );
    assert!(matches!(literal("ObjectId()"), Bson::ObjectId(_)));
    let date = DateTime::parse_rfc3339_str("2024-01-02T03:04:05.678Z").unwrap();
    assert_eq!(
        literal("ISODate('2024-01-02T03:04:05.678Z')"),
        Bson::DateTime(date)
    );
    assert_eq!(
        literal("new Date('2024-01-02T03:04:05.678Z')"),
        Bson::DateTime(date)
    );
    let midnight = DateTime::parse_rfc3339_str("2024-01-02T00:00:00Z").unwrap();
    assert_eq!(literal("ISODate('2024-01-02')"), Bson::DateTime(midnight));
    assert_eq!(
        literal("new Date(0)"),
        Bson::DateTime(DateTime::from_millis(0))
    );
    assert_eq!(literal("NumberLong(5)"), Bson::Int64(5));
    assert_eq!(
        literal("NumberLong('9007199254740993')"),
        Bson::Int64(9_007_199_254_740_993)
    );
    assert_eq!(literal("Long('-3')"), Bson::Int64(-3));
    assert_eq!(literal("NumberInt('42')"), Bson::Int32(42));
    assert_eq!(literal("NumberInt(7)"), Bson::Int32(7));
    assert_eq!(literal("Double(2)"), Bson::Double(2.0));
    let decimal = Decimal128::from_str("1.10").unwrap();
    assert_eq!(literal("NumberDecimal('1.10')"), Bson::Decimal128(decimal));
    assert_eq!(literal("Decimal128('1.10')"), Bson::Decimal128(decimal));
    assert_eq!(
        literal("Timestamp(1, 2)"),
        Bson::Timestamp(Timestamp {
            time: 1,
            increment: 2
        })
    );
    assert_eq!(
        literal("Timestamp({ t: 3, i: 4 })"),
        Bson::Timestamp(Timestamp {
            time: 3,
            increment: 4
        })
    );
    assert_eq!(literal("MinKey"), Bson::MinKey);
    assert_eq!(literal("MaxKey()"), Bson::MaxKey);
}

#[test]
fn binary_helpers_and_regexes() {
    let uuid = literal("UUID('0123456789abcdef0123456789abcdef')");
    let dashed = literal("UUID('01234567-89ab-cdef-0123-456789abcdef')");
    assert_eq!(uuid, dashed);
    let Bson::Binary(binary) = uuid else {
        panic!("not binary")
    };
    assert_eq!(binary.subtype, BinarySubtype::Uuid);
    assert_eq!(binary.bytes[..3], [0x01, 0x23, 0x45]);
    let bin = literal("BinData(0, 'AQID')");
    assert_eq!(
        bin,
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![1, 2, 3]
        })
    );
    assert_eq!(literal("Binary.createFromBase64('AQID', 0)"), bin);
    let regex = literal(r"/^a\/b[/]c/mi");
    assert_eq!(
        regex,
        Bson::RegularExpression(Regex {
            pattern: r"^a\/b[/]c".into(),
            options: "im".into()
        })
    );
    assert_eq!(
        literal("/x/g"),
        Bson::RegularExpression(Regex {
            pattern: "x".into(),
            options: String::new()
        })
    );
}

#[test]
fn extended_json_wrappers_are_converted() {
    let hex = "65a1b2c3d4e5f6a7b8c9d0e1";
    let value = literal(&format!(
        "{{ id: {{$oid: '{hex}'}}, d: {{$date: '2024-01-02T00:00:00Z'}}, \
         dl: {{$date: {{$numberLong: '1000'}}}}, l: {{$numberLong: '12'}}, i: {{$numberInt: '3'}}, \
         f: {{$numberDouble: '-Infinity'}}, m: {{$numberDecimal: '2.5'}}, \
         b: {{$binary: {{base64: 'AQID', subType: '05'}}}}, lb: {{$binary: 'AQID', $type: '00'}}, \
         t: {{$timestamp: {{t: 5, i: 6}}}}, r: {{$regularExpression: {{pattern: 'p', options: 'xi'}}}}, \
         lo: {{$minKey: 1}}, hi: {{$maxKey: 1}}, u: {{$uuid: '0123456789abcdef0123456789abcdef'}} }}"
    ));
    let Bson::Document(doc) = value else {
        panic!("not a document")
    };
    assert_eq!(
        doc.get("id"),
        Some(&Bson::ObjectId(ObjectId::parse_str(hex).unwrap()))
    );
    let date = DateTime::parse_rfc3339_str("2024-01-02T00:00:00Z").unwrap();
    assert_eq!(doc.get("d"), Some(&Bson::DateTime(date)));
    assert_eq!(
        doc.get("dl"),
        Some(&Bson::DateTime(DateTime::from_millis(1000)))
    );
    assert_eq!(doc.get("l"), Some(&Bson::Int64(12)));
    assert_eq!(doc.get("i"), Some(&Bson::Int32(3)));
    assert_eq!(doc.get("f"), Some(&Bson::Double(f64::NEG_INFINITY)));
    assert_eq!(
        doc.get("m"),
        Some(&Bson::Decimal128(Decimal128::from_str("2.5").unwrap()))
    );
    let md5 = Binary {
        subtype: BinarySubtype::Md5,
        bytes: vec![1, 2, 3],
    };
    assert_eq!(doc.get("b"), Some(&Bson::Binary(md5)));
    let generic = Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![1, 2, 3],
    };
    assert_eq!(doc.get("lb"), Some(&Bson::Binary(generic)));
    assert_eq!(
        doc.get("t"),
        Some(&Bson::Timestamp(Timestamp {
            time: 5,
            increment: 6
        }))
    );
    let regex = Regex {
        pattern: "p".into(),
        options: "ix".into(),
    };
    assert_eq!(doc.get("r"), Some(&Bson::RegularExpression(regex)));
    assert_eq!(doc.get("lo"), Some(&Bson::MinKey));
    assert_eq!(doc.get("hi"), Some(&Bson::MaxKey));
    assert!(matches!(doc.get("u"), Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Uuid));
}

#[test]
fn query_operators_are_not_mistaken_for_extended_json() {
    let value =
        literal("{name: {$regex: '^a', $options: 'i'}, n: {$gt: 1}, o: {$oid: 'x', extra: 1}}");
    let expected = doc! {
        "name": { "$regex": "^a", "$options": "i" },
        "n": { "$gt": 1 },
        "o": { "$oid": "x", "extra": 1 },
    };
    assert_eq!(value, Bson::Document(expected));
}

#[test]
fn literal_errors_name_the_position() {
    let error = literal_error("{a: 1,\n  b: }");
    assert_eq!((error.line, error.column), (2, 6));
    assert_eq!(
        error.to_string(),
        "SyntaxError: expected a value but found '}' (2:6)"
    );
    let error = literal_error("{a 1}");
    assert_eq!(error.message, "expected ':' but found '1'");
    assert_eq!((error.line, error.column), (1, 4));
    let error = literal_error("'open");
    assert_eq!(
        (error.message.as_str(), error.column),
        ("unterminated string", 1)
    );
    let error = literal_error("[1, 2");
    assert_eq!(error.message, "expected ']' but found end of input");
    let error = literal_error("ObjectId('xyz')");
    assert_eq!(
        error.message,
        "invalid ObjectId 'xyz': expected 24 hex characters"
    );
    assert_eq!(error.column, 1);
    assert_eq!(literal_error("{d: ISODate('not a date')}").column, 5);
    assert_eq!(
        literal_error("NumberLong('1.5')").message,
        "invalid NumberLong '1.5'"
    );
    assert_eq!(
        literal_error("{x: {$oid: 5}}").message,
        "invalid Extended JSON $oid: ObjectId() takes a hex string"
    );
    assert_eq!(literal_error("/abc/q").message, "invalid regex flag 'q'");
    assert_eq!(literal_error("12abc").message, "unexpected 'a' in number");
    assert_eq!(
        literal_error("{a: 1} x").message,
        "unexpected text after the value"
    );
    assert_eq!(
        literal_error("Timestamp('a')").message,
        "Timestamp() takes (t, i) or ({t, i})"
    );
    assert_eq!(literal_error("UUID('12')").message, "invalid UUID '12'");
    assert_eq!(
        literal_error("MinKey(1)").message,
        "unexpected arguments to MinKey()"
    );
    assert_eq!(literal_error("foo").message, "foo is not a value");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let source = "[".repeat(NESTING_DEPTH_MAX + 10);
    assert!(literal_error(&source).message.contains("nesting deeper"));
}

#[test]
fn keyword_statements() {
    assert_eq!(single("use test"), Statement::Use("test".into()));
    assert_eq!(single("  use my-db ; "), Statement::Use("my-db".into()));
    assert_eq!(single("show dbs"), Statement::Show("dbs".into()));
    assert_eq!(
        single("show collections"),
        Statement::Show("collections".into())
    );
    assert_eq!(single("exit"), Statement::Exit);
    assert_eq!(single("quit()"), Statement::Exit);
    assert_eq!(single("help"), Statement::Help);
    let error = parse_script("use ").unwrap_err();
    assert_eq!(error.message, "'use' needs an argument");
}

#[test]
fn db_and_collection_chains() {
    assert_eq!(
        chain("db"),
        Chain {
            root: "db".into(),
            steps: vec![]
        }
    );
    let insert = chain("db.users.insertOne({name: 'a', n: 1})");
    assert_eq!(insert.root, "db");
    assert_eq!(
        insert.steps,
        vec![
            member("users"),
            member("insertOne"),
            call(vec![Bson::Document(doc! { "name": "a", "n": 1 })]),
        ]
    );
    let sibling = chain("db.getSiblingDB('config').chunks.find({}, {min: 1})");
    assert_eq!(
        sibling.steps,
        vec![
            member("getSiblingDB"),
            call(vec![Bson::String("config".into())]),
            member("chunks"),
            member("find"),
            call(vec![
                Bson::Document(doc! {}),
                Bson::Document(doc! { "min": 1 })
            ]),
        ]
    );
    let bracket = chain("db['my-coll'].drop()");
    assert_eq!(
        bracket.steps,
        vec![member("my-coll"), member("drop"), call(vec![])]
    );
    let get_collection = chain("db.getCollection(\"x.y\").countDocuments()");
    assert_eq!(
        get_collection.steps[..2],
        [
            member("getCollection"),
            call(vec![Bson::String("x.y".into())])
        ]
    );
}

#[test]
fn chained_find_modifiers_across_lines() {
    let find = chain("db.c.find({a: {$gt: 1}})\n  .sort({a: -1})\n  .skip(2).limit(5).toArray()");
    assert_eq!(
        find.steps,
        vec![
            member("c"),
            member("find"),
            call(vec![Bson::Document(doc! { "a": { "$gt": 1 } })]),
            member("sort"),
            call(vec![Bson::Document(doc! { "a": -1 })]),
            member("skip"),
            call(vec![Bson::Int32(2)]),
            member("limit"),
            call(vec![Bson::Int32(5)]),
            member("toArray"),
            call(vec![]),
        ]
    );
    let indexed = chain("db.c.find().toArray()[0]");
    assert_eq!(indexed.steps.last(), Some(&Step::Index(0)));
}

#[test]
fn admin_helpers_and_nested_calls() {
    let split = chain("sh.splitAt('test.users', {k: 5})");
    assert_eq!(split.root, "sh");
    assert_eq!(
        split.steps,
        vec![
            member("splitAt"),
            call(vec![
                Bson::String("test.users".into()),
                Bson::Document(doc! { "k": 5 })
            ]),
        ]
    );
    let move_chunk = chain("sh.moveChunk('test.users', {k: MinKey}, 'shard1')");
    assert_eq!(
        move_chunk.steps[1],
        call(vec![
            Bson::String("test.users".into()),
            Bson::Document(doc! { "k": Bson::MinKey }),
            Bson::String("shard1".into()),
        ])
    );
    let printjson = chain("printjson(db.c.findOne())");
    assert_eq!(printjson.root, "printjson");
    let Step::Call(args) = &printjson.steps[0] else {
        panic!("not a call")
    };
    let Expr::Chain(inner) = &args[0] else {
        panic!("not a chain")
    };
    assert_eq!(
        inner.steps,
        vec![member("c"), member("findOne"), call(vec![])]
    );
    assert_eq!(
        chain("rs.status()").steps,
        vec![member("status"), call(vec![])]
    );
}

#[test]
fn scripts_split_on_semicolons_and_newlines() {
    let statements = script("use a; db.c.insertOne({x: 1})\n// comment only\n\nshow collections;;");
    assert_eq!(statements.len(), 3);
    assert_eq!(statements[0], Statement::Use("a".into()));
    assert_eq!(statements[2], Statement::Show("collections".into()));
    let multi_line = script("db.c.insertMany([\n  {a: 1},\n  {a: 2},\n])\ndb.c.find()");
    assert_eq!(multi_line.len(), 2);
    assert_eq!(script("ObjectId('65a1b2c3d4e5f6a7b8c9d0e1')").len(), 1);
    assert!(script("  // nothing\n").is_empty());
}

#[test]
fn statement_errors_name_the_position() {
    let error = parse_script("db.c.find({a: 1)").unwrap_err();
    assert_eq!(error.message, "expected '}' but found ')'");
    assert_eq!((error.line, error.column), (1, 16));
    let error = parse_script("db.c.find() extra").unwrap_err();
    assert_eq!(
        error.message,
        "expected ';' or a new line after the statement"
    );
    let error = parse_script("db.)").unwrap_err();
    assert_eq!(error.message, "expected a property name after '.'");
    let error = parse_script("db.c.insertOne({a: 1},\n  {b: })").unwrap_err();
    assert_eq!((error.line, error.column), (2, 7));
}

#[test]
fn incomplete_input_detection() {
    assert!(is_incomplete("db.c.insertOne({"));
    assert!(is_incomplete("db.c.find({a: [1,"));
    assert!(is_incomplete("db.c.find({a: 'x"));
    assert!(is_incomplete("/* open comment"));
    assert!(!is_incomplete("db.c.find({a: '{'})"));
    assert!(!is_incomplete("db.c.find({a: /[(]/})"));
    assert!(!is_incomplete("db.c.find() // {"));
    assert!(!is_incomplete("db.c.find())"));
    assert!(!is_incomplete("db.c.find({a: 1)"));
    assert!(is_incomplete("db.c.find({a: [1], b: {"));
    assert!(!is_incomplete(""));
}
