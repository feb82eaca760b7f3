//! Golden tests of the mongosh-style formatter.

use bson::{
    Binary, DateTime, Decimal128, Regex, Timestamp, doc, oid::ObjectId, spec::BinarySubtype,
};

use std::str::FromStr as _;

use super::*;

fn oid() -> ObjectId {
    ObjectId::parse_str("65a1b2c3d4e5f6a7b8c9d0e1").unwrap()
}

#[test]
fn scalars_use_shell_helper_notation() {
    let date = DateTime::parse_rfc3339_str("2024-01-02T03:04:05Z").unwrap();
    let cases: Vec<(Bson, &str)> = vec![
        (Bson::Int32(5), "5"),
        (Bson::Int64(5), "Long('5')"),
        (Bson::Double(1.5), "1.5"),
        (Bson::Double(2.0), "2"),
        (Bson::Double(-0.0), "-0"),
        (Bson::Double(1e21), "1e+21"),
        (Bson::Double(1.5e-7), "1.5e-7"),
        (Bson::Double(f64::INFINITY), "Infinity"),
        (Bson::Double(f64::NAN), "NaN"),
        (Bson::String("it's".into()), "\"it's\""),
        (Bson::String("a\nb".into()), "'a\\nb'"),
        (Bson::Boolean(true), "true"),
        (Bson::Null, "null"),
        (
            Bson::ObjectId(oid()),
            "ObjectId('65a1b2c3d4e5f6a7b8c9d0e1')",
        ),
        (Bson::DateTime(date), "ISODate('2024-01-02T03:04:05.000Z')"),
        (
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 2,
            }),
            "Timestamp({ t: 1, i: 2 })",
        ),
        (
            Bson::Decimal128(Decimal128::from_str("1.10").unwrap()),
            "Decimal128('1.10')",
        ),
        (
            Bson::RegularExpression(Regex {
                pattern: "^a".into(),
                options: "i".into(),
            }),
            "/^a/i",
        ),
        (Bson::MinKey, "MinKey()"),
        (Bson::MaxKey, "MaxKey()"),
        (
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![1, 2, 3],
            }),
            "Binary.createFromBase64('AQID', 0)",
        ),
        (
            Bson::Binary(Binary {
                subtype: BinarySubtype::Uuid,
                bytes: (0..16).collect(),
            }),
            "UUID('00010203-0405-0607-0809-0a0b0c0d0e0f')",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(inspect(&value), expected, "{value:?}");
    }
}

#[test]
fn top_level_strings_print_raw() {
    assert_eq!(format_result(&Bson::String("k_1".into())), "k_1");
    assert_eq!(
        format_result(&Bson::Array(vec![Bson::String("a".into())])),
        "[ 'a' ]"
    );
}

#[test]
fn small_documents_fit_on_one_line() {
    let value = doc! { "_id": 1, "name": "a", "tags": ["x", "y"], "sub": { "k": Bson::MinKey } };
    assert_eq!(
        inspect_document(&value),
        "{ _id: 1, name: 'a', tags: [ 'x', 'y' ], sub: { k: MinKey() } }"
    );
    assert_eq!(inspect_document(&doc! {}), "{}");
    assert_eq!(
        inspect_document(&doc! { "a": [], "b": {} }),
        "{ a: [], b: {} }"
    );
    assert_eq!(
        inspect_document(&doc! { "$set": 1, "a.b": 2, "0": 3 }),
        "{ '$set': 1, 'a.b': 2, '0': 3 }"
    );
}

#[test]
fn insert_result_breaks_like_mongosh() {
    let value = doc! { "acknowledged": true, "insertedId": oid() };
    let expected = "\
{
  acknowledged: true,
  insertedId: ObjectId('65a1b2c3d4e5f6a7b8c9d0e1')
}";
    assert_eq!(inspect_document(&value), expected);
}

#[test]
fn long_documents_break_and_indent_nested_values() {
    let value = doc! {
        "_id": oid(),
        "name": "a fairly long name to force a break",
        "address": { "street": "1 Main Street", "city": "Springfield", "zip": "12345-6789" },
        "scores": [1, 2],
    };
    let expected = "\
{
  _id: ObjectId('65a1b2c3d4e5f6a7b8c9d0e1'),
  name: 'a fairly long name to force a break',
  address: { street: '1 Main Street', city: 'Springfield', zip: '12345-6789' },
  scores: [ 1, 2 ]
}";
    assert_eq!(inspect_document(&value), expected);
}

#[test]
fn more_than_three_nested_levels_break_the_outer_object() {
    let value = doc! { "a": { "b": { "c": { "d": 1 } } } };
    let expected = "\
{
  a: { b: { c: { d: 1 } } }
}";
    assert_eq!(inspect_document(&value), expected);
}

#[test]
fn long_number_arrays_are_grouped_in_columns() {
    let value = Bson::Array((1..=30).map(Bson::Int32).collect());
    let expected = "\
[
   1,  2,  3,  4,  5,  6,  7,  8,  9,
  10, 11, 12, 13, 14, 15, 16, 17, 18,
  19, 20, 21, 22, 23, 24, 25, 26, 27,
  28, 29, 30
]";
    assert_eq!(inspect(&value), expected);
}

#[test]
fn long_string_arrays_are_grouped_left_aligned() {
    let names = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let value = Bson::Array(names.iter().map(|n| Bson::String((*n).into())).collect());
    let expected = "\
[
  'alpha',   'beta',
  'gamma',   'delta',
  'epsilon', 'zeta',
  'eta',     'theta'
]";
    assert_eq!(inspect(&value), expected);
}

#[test]
fn database_table_aligns_columns() {
    let rows = vec![
        ("admin".to_string(), 40_960),
        ("config".to_string(), 110_592),
        ("x".to_string(), 12),
    ];
    let expected = "\
admin    40.00 KiB
config  108.00 KiB
x             12 B";
    assert_eq!(format_database_table(&rows), expected);
}

#[test]
fn sharding_status_summary() {
    let status = ShardingStatus {
        shards: vec![
            doc! { "_id": "shard0", "host": "shard0/127.0.0.1:27019", "state": 1, "topologyTime": Timestamp { time: 1, increment: 0 } },
            doc! { "_id": "shard1", "host": "shard1/127.0.0.1:27020", "state": 1 },
        ],
        balancer: Some(doc! { "mode": "full", "inBalancerRound": false, "ok": 1 }),
        databases: vec![
            doc! { "_id": "test", "primary": "shard0", "version": { "lastMod": 1 } },
            doc! { "_id": "other", "primary": "shard1" },
        ],
        collections: vec![CollectionStatus {
            collection: doc! { "_id": "test.users", "key": { "k": 1 }, "unique": false },
            chunks: vec![
                doc! { "min": { "k": Bson::MinKey }, "max": { "k": 5 }, "shard": "shard0", "lastmod": Timestamp { time: 2, increment: 0 } },
                doc! { "min": { "k": 5 }, "max": { "k": Bson::MaxKey }, "shard": "shard1", "lastmod": Timestamp { time: 2, increment: 1 } },
            ],
            zones: vec![],
        }],
        ..ShardingStatus::default()
    };
    let expected = "\
--- Sharding Status ---
shards:
  { _id: 'shard0', host: 'shard0/127.0.0.1:27019', state: 1 }
  { _id: 'shard1', host: 'shard1/127.0.0.1:27020', state: 1 }
balancer:
  Currently enabled: yes
  Currently running: no
  Failed balancer rounds in last 5 attempts: 0
  Migration Results for the last 24 hours:
    No recent migrations
databases:
  { _id: 'test', primary: 'shard0' }
    test.users
      shard key: { k: 1 }
      unique: false
      balancing: true
      chunks:
        shard0  1
        shard1  1
        { k: MinKey() } -->> { k: 5 } on: shard0 Timestamp({ t: 2, i: 0 })
        { k: 5 } -->> { k: MaxKey() } on: shard1 Timestamp({ t: 2, i: 1 })
  { _id: 'other', primary: 'shard1' }";
    assert_eq!(format_sharding_status(&status), expected);
}

#[test]
fn sharding_status_truncates_long_chunk_lists_and_unknown_balancer() {
    let chunks: Vec<Document> = (0..25)
        .map(|idx| doc! { "min": { "k": idx }, "max": { "k": idx + 1 }, "shard": "s" })
        .collect();
    let status = ShardingStatus {
        databases: vec![doc! { "_id": "d", "primary": "s" }],
        collections: vec![CollectionStatus {
            collection: doc! { "_id": "d.c", "key": { "k": 1 } },
            chunks,
            zones: vec![],
        }],
        ..ShardingStatus::default()
    };
    let text = format_sharding_status(&status);
    assert!(text.contains("Currently running: unknown"), "{text}");
    assert!(text.contains("        s  25\n"), "{text}");
    assert!(text.ends_with("        ... 5 more chunks"), "{text}");
    assert_eq!(text.matches("-->>").count(), STATUS_CHUNKS_SHOWN_MAX);
}

#[test]
fn sharding_status_shows_zones_draining_and_balancer_history() {
    let time = DateTime::parse_rfc3339_str("2024-01-02T03:04:05Z").unwrap();
    let status = ShardingStatus {
        shards: vec![
            doc! { "_id": "shard0", "host": "shard0/h:1", "state": 1, "tags": ["NYC"] },
            doc! { "_id": "shard1", "host": "shard1/h:2", "state": 1, "draining": true },
        ],
        balancer: Some(doc! { "mode": "full", "inBalancerRound": true, "ok": 1 }),
        balancer_settings: Some(doc! {
            "_id": "balancer", "stopped": false, "mode": "full",
            "activeWindow": { "start": "01:00", "stop": "05:00" },
        }),
        balancer_rounds: vec![
            doc! { "what": "balancer.round", "time": time, "details": { "errorOccurred": true, "errmsg": "boom" } },
            doc! { "what": "balancer.round", "details": { "errorOccurred": false } },
            doc! { "what": "balancer.round", "details": { "errorOccured": true } },
        ],
        migrations: vec![
            doc! { "what": "moveChunk.commit", "details": { "from": "shard0", "to": "shard1" } },
            doc! { "what": "moveChunk.commit", "details": { "from": "shard1", "to": "shard0" } },
            doc! { "what": "moveChunk.error", "details": { "from": "shard0", "to": "shard1", "errmsg": "busy" } },
        ],
        databases: vec![doc! { "_id": "test", "primary": "shard0" }],
        collections: vec![CollectionStatus {
            collection: doc! { "_id": "test.users", "key": { "k": 1 }, "noBalance": true },
            chunks: vec![
                doc! { "min": { "k": Bson::MinKey }, "max": { "k": Bson::MaxKey }, "shard": "shard0" },
            ],
            zones: vec![
                doc! { "ns": "test.users", "min": { "k": 1 }, "max": { "k": 10 }, "tag": "NYC" },
            ],
        }],
    };
    let expected = "\
--- Sharding Status ---
shards:
  { _id: 'shard0', host: 'shard0/h:1', state: 1, tags: [ 'NYC' ] }
  { _id: 'shard1', host: 'shard1/h:2', state: 1, draining: true }
balancer:
  Currently enabled: yes
  Currently running: yes
  Balancer active window is set between 01:00 and 05:00 server local time
  Failed balancer rounds in last 5 attempts: 2
  Last reported error: boom
  Time of Reported error: ISODate('2024-01-02T03:04:05.000Z')
  Migration Results for the last 24 hours:
    2 : Success
    1 : Failed with error 'busy', from shard0 to shard1
databases:
  { _id: 'test', primary: 'shard0' }
    test.users
      shard key: { k: 1 }
      unique: false
      balancing: false
      chunks:
        shard0  1
        { k: MinKey() } -->> { k: MaxKey() } on: shard0
        tag: NYC  { k: 1 } -->> { k: 10 }";
    assert_eq!(format_sharding_status(&status), expected);
}

#[test]
fn a_stopped_balancer_is_not_enabled() {
    for settings in [
        doc! { "_id": "balancer", "stopped": true },
        doc! { "_id": "balancer", "mode": "off" },
    ] {
        let status = ShardingStatus {
            balancer_settings: Some(settings),
            ..ShardingStatus::default()
        };
        let text = format_sharding_status(&status);
        assert!(text.contains("Currently enabled: no"), "{text}");
    }
    let absent = format_sharding_status(&ShardingStatus::default());
    assert!(absent.contains("Currently enabled: yes"), "{absent}");
}
