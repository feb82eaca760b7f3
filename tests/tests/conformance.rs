//! The conformance suite: hundreds of data-driven cases (`tests/conformance/*.json`), each a raw
//! command document with the result MongoDB's manual documents for it, run through the official
//! Rust driver against one 2-shard cluster, once on an unsharded collection and once on a
//! collection sharded on `{k: 1}` (split in the middle of its documents, upper chunk on the other
//! shard) holding the same documents.
//!
//! Why data files and raw commands: the expected results are written by hand from the manual, not
//! recorded from Shoal, and a case is exactly the command a driver would send, so a reader can
//! check it against the manual page cited by its group without reading Rust. Why both layouts: the
//! router must give the same answer whether one shard or two hold the data.
//!
//! Case format (one file per area, cases in groups, each group citing its manual page):
//! `{name, fixture?: "name", seed?: [docs], split?: key, setup?: [commands], db?: "admin",
//! variants?: ["unsharded"|"sharded"], command, expect, expect_sharded?, after_coll?}`. Fixtures
//! live in `fixtures.json`; a read-only case on a fixture shares one pre-loaded copy of it, any
//! other case gets fresh collections seeded with its fixture or `seed`. `setup` commands run
//! first, in the test database (`{$admin: command}` runs one on admin), and must succeed; `db`
//! names the database of `command` itself.
//! `expect` holds any of: `docs` (results of the cursor, order-sensitive when the command sorts
//! or `ordered` says so, each compared whole or, with `subset: true`, as a subset), `n`,
//! `values` (distinct, as a multiset), `reply_subset` (fields that must match; numbers compare by
//! value), `error_code` (the command's error or its first write error), `after` (the whole
//! collection afterwards, as a multiset) and `explain` (`{include: [stages], exclude: [stages]}`
//! searched anywhere in the explain output). In commands and expectations the strings `@coll`,
//! `@coll2`, `@ns`, `@ns2`, `@db`, `@missing`, `@cursor` (the cursor id of the last setup reply)
//! and `@fixture:NAME` (the unsharded copy of a fixture) are replaced; in expectations `@any`
//! matches any present value and `@type:NAME` any value of that BSON type.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bson::{Bson, Document, doc};
use mongodb::{Client, ClientSession, error::ErrorKind};
use serde_json::Value;
use shoal_tests::{
    TestCluster,
    mongo::is_ok,
    sharding::{admin, shard_split_move},
};

/// The database every case runs in.
const DB: &str = "conformance";
/// The shard key of every sharded collection.
const SHARD_KEY: &str = "k";
/// The split point of a collection whose documents give none.
const SPLIT_DEFAULT: i32 = 3;
/// How long one command may take before the case fails as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The most getMore round trips one result may take (bounds a server that never ends a cursor).
const GET_MORES_MAX: usize = 1_000;
/// How many characters of a command, expectation or result a failure report shows.
const SHOW_CHARS_MAX: usize = 600;
/// The least number of cases the suite must hold (issue 4's acceptance).
const CASES_MIN: usize = 300;
/// Commands that only read, whose cases share one pre-loaded copy of their fixture.
const READ_COMMANDS: [&str; 7] = [
    "find",
    "aggregate",
    "count",
    "distinct",
    "explain",
    "listIndexes",
    "listCollections",
];
/// The keys an expectation may hold; any other is a typo in a case file.
const EXPECT_KEYS: [&str; 10] = [
    "docs",
    "ordered",
    "subset",
    "n",
    "values",
    "reply_subset",
    "error_code",
    "after",
    "explain",
    "note",
];
/// The expectation keys that check something (a case needs at least one).
const CHECK_KEYS: [&str; 7] = [
    "docs",
    "n",
    "values",
    "reply_subset",
    "error_code",
    "after",
    "explain",
];
/// The keys a case may hold.
const CASE_KEYS: [&str; 13] = [
    "name",
    "fixture",
    "seed",
    "split",
    "setup",
    "db",
    "variants",
    "command",
    "expect",
    "expect_sharded",
    "after_coll",
    "note",
    "manual",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Unsharded,
    Sharded,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Unsharded => "unsharded",
            Variant::Sharded => "sharded",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Variant::Unsharded => "u",
            Variant::Sharded => "s",
        }
    }
}

#[derive(Debug)]
struct Fixture {
    docs: Vec<Document>,
    split: Bson,
    unsharded_only: bool,
}

#[derive(Debug)]
struct Case {
    area: String,
    name: String,
    fixture: Option<String>,
    seed: Option<Vec<Document>>,
    split: Option<Bson>,
    setup: Vec<Document>,
    db: String,
    variants: Vec<Variant>,
    command: Document,
    expect: Document,
    expect_sharded: Option<Document>,
    after_coll: Option<String>,
}

/// Names and ids one run of a case substitutes into its documents.
#[derive(Debug, Clone)]
struct Names {
    coll: String,
    missing: String,
    cursor: Option<i64>,
}

/// What a command answered: a reply (possibly carrying write errors) or an error code.
#[derive(Debug)]
enum Outcome {
    Reply(Document),
    Error { code: i32, message: String },
}

struct Runner {
    client: Client,
    session: ClientSession,
    fixtures: BTreeMap<String, Fixture>,
    fresh: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let cases = load_cases()?;
    let fixtures = load_fixtures()?;
    assert!(
        cases.len() >= CASES_MIN,
        "only {} conformance cases",
        cases.len()
    );
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    admin(&client, doc! { "enableSharding": DB }).await?;
    let session = client.start_session().await?;
    let mut runner = Runner {
        client: client.clone(),
        session,
        fixtures,
        fresh: 0,
    };
    runner.load_shared_fixtures().await?;
    let failures = runner.run_all(&cases).await;
    println!("conformance: took {:.1?}", started.elapsed());
    drop(runner);
    drop(client);
    // The report above says what failed; the servers' log tails would only bury it.
    cluster.finish();
    if !failures.is_empty() {
        anyhow::bail!(
            "{} conformance case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

impl Runner {
    async fn load_shared_fixtures(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.fixtures.keys().cloned().collect();
        for name in names {
            for variant in [Variant::Unsharded, Variant::Sharded] {
                let fixture = &self.fixtures[&name];
                if variant == Variant::Sharded && fixture.unsharded_only {
                    continue;
                }
                let coll = shared_name(&name, variant);
                let docs = fixture.docs.clone();
                let split = fixture.split.clone();
                self.create(&coll, variant, &docs, split)
                    .await
                    .map_err(|err| anyhow::anyhow!("fixture {name}: {err}"))?;
            }
        }
        Ok(())
    }

    /// Creates `coll` in the layout of `variant` holding `docs`.
    async fn create(
        &mut self,
        coll: &str,
        variant: Variant,
        docs: &[Document],
        split: Bson,
    ) -> anyhow::Result<()> {
        if variant == Variant::Sharded {
            shard_split_move(&self.client, DB, coll, SHARD_KEY, split).await?;
        }
        if docs.is_empty() {
            return Ok(());
        }
        let command = doc! { "insert": coll, "documents": docs.to_vec(), "ordered": true };
        match self.run(DB, command).await {
            Outcome::Reply(reply) if is_ok(&reply) && !reply.contains_key("writeErrors") => Ok(()),
            other => anyhow::bail!("seeding {coll}: {other:?}"),
        }
    }

    async fn run_all(&mut self, cases: &[Case]) -> Vec<String> {
        let mut failures = Vec::new();
        let mut per_area: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for case in cases {
            let mut case_failures = Vec::new();
            for variant in &case.variants {
                if let Err(why) = self.run_case(case, *variant).await {
                    case_failures.push(format!(
                        "- [{}] {} ({}): {why}",
                        case.area,
                        case.name,
                        variant.name()
                    ));
                }
            }
            let counts = per_area.entry(case.area.clone()).or_default();
            if case_failures.is_empty() {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            failures.extend(case_failures);
        }
        let (mut passed, mut failed) = (0, 0);
        for (area, (p, f)) in &per_area {
            println!("conformance {area}: {p} passed, {f} failed");
            passed += p;
            failed += f;
        }
        println!(
            "conformance: {passed} passed, {failed} failed ({} cases, each on an unsharded and a \
             sharded collection unless restricted; {} failing runs)",
            cases.len(),
            failures.len()
        );
        failures
    }

    async fn run_case(&mut self, case: &Case, variant: Variant) -> Result<(), String> {
        let names = self.prepare(case, variant).await?;
        let mut names = names;
        for (i, setup) in case.setup.iter().enumerate() {
            // `{$admin: command}` runs on the admin database (renameCollection); the rest on DB.
            let (db, setup) = match setup.get_document("$admin") {
                Ok(command) => ("admin", command),
                Err(_) => (DB, setup),
            };
            let command = substitute_doc(setup, &names);
            match self.run(db, command.clone()).await {
                Outcome::Reply(reply) if reply_clean(&reply) => {
                    names.cursor = cursor_id(&reply).or(names.cursor);
                }
                other => {
                    return Err(format!(
                        "setup[{i}] {} failed: {}",
                        show_doc(&command),
                        show_outcome(&other)
                    ));
                }
            }
        }
        let command = substitute_doc(&case.command, &names);
        let expect = match (variant, &case.expect_sharded) {
            (Variant::Sharded, Some(sharded)) => sharded,
            _ => &case.expect,
        };
        let expect = substitute_doc(expect, &names);
        let outcome = self.run(&case.db, command.clone()).await;
        self.check(case, &names, &command, &expect, outcome)
            .await
            .map_err(|why| {
                format!(
                    "{why}\n    command:  {}\n    expected: {}",
                    show_doc(&command),
                    show_doc(&expect)
                )
            })
    }

    /// The collection a case runs on: the shared copy of its fixture for a read-only case, else
    /// a fresh collection seeded with the fixture or the case's own documents.
    async fn prepare(&mut self, case: &Case, variant: Variant) -> Result<Names, String> {
        self.fresh += 1;
        let missing = format!("missing_{}", self.fresh);
        if let Some(fixture) = case.fixture.as_ref().filter(|_| shares_fixture(case)) {
            return Ok(Names {
                coll: shared_name(fixture, variant),
                missing,
                cursor: None,
            });
        }
        let coll = format!("t{}_{}", self.fresh, variant.suffix());
        let (docs, split) = match (&case.seed, &case.fixture) {
            (Some(seed), _) => (seed.clone(), median_key(seed)),
            (None, Some(fixture)) => {
                let fixture = self
                    .fixtures
                    .get(fixture)
                    .ok_or_else(|| format!("unknown fixture {fixture}"))?;
                (fixture.docs.clone(), fixture.split.clone())
            }
            (None, None) => (Vec::new(), Bson::Int32(SPLIT_DEFAULT)),
        };
        let split = case.split.clone().unwrap_or(split);
        self.create(&coll, variant, &docs, split)
            .await
            .map_err(|err| format!("preparing {coll}: {err}"))?;
        Ok(Names {
            coll,
            missing,
            cursor: None,
        })
    }

    async fn run(&mut self, db: &str, command: Document) -> Outcome {
        let database = self.client.database(db);
        // One explicit session keeps getMore in the session that opened the cursor; the driver
        // refuses to send killCursors inside a session, so that one goes without.
        let kill = command
            .keys()
            .next()
            .is_some_and(|name| name == "killCursors");
        let reply = if kill {
            tokio::time::timeout(COMMAND_TIMEOUT, database.run_command(command)).await
        } else {
            let future = database.run_command(command).session(&mut self.session);
            tokio::time::timeout(COMMAND_TIMEOUT, future).await
        };
        match reply {
            Err(_) => Outcome::Error {
                code: -1,
                message: format!("no reply within {COMMAND_TIMEOUT:?}"),
            },
            Ok(Ok(reply)) => Outcome::Reply(reply),
            Ok(Err(err)) => match err.kind.as_ref() {
                ErrorKind::Command(command) => Outcome::Error {
                    code: command.code,
                    message: command.message.clone(),
                },
                _ => Outcome::Error {
                    code: -1,
                    message: err.to_string(),
                },
            },
        }
    }

    async fn check(
        &mut self,
        case: &Case,
        names: &Names,
        command: &Document,
        expect: &Document,
        outcome: Outcome,
    ) -> Result<(), String> {
        if let Ok(code) = expect.get_i32("error_code") {
            return check_error(code, &outcome);
        }
        let reply = match outcome {
            Outcome::Reply(reply) if is_ok(&reply) => reply,
            other => return Err(format!("failed: {}", show_outcome(&other))),
        };
        if reply.contains_key("writeErrors") && !expects_write_errors(expect) {
            return Err(format!("unexpected write errors: {}", show_doc(&reply)));
        }
        check_reply_fields(expect, &reply)?;
        if let Ok(expected) = expect.get_array("docs") {
            let docs = self.drain(&case.db, &reply).await?;
            let ordered = expect
                .get_bool("ordered")
                .unwrap_or_else(|_| command_sorts(command));
            let subset = expect.get_bool("subset").unwrap_or(false);
            compare_docs(expected, &docs, ordered, subset)?;
        }
        if let Ok(expected) = expect.get_array("after") {
            let coll = match &case.after_coll {
                Some(after) => substitute_str(after, names),
                None => Bson::String(names.coll.clone()),
            };
            let find = doc! { "find": coll, "filter": {} };
            let reply = match self.run(DB, find.clone()).await {
                Outcome::Reply(reply) if is_ok(&reply) => reply,
                other => return Err(format!("reading back: {}", show_outcome(&other))),
            };
            let docs = self.drain(DB, &reply).await?;
            compare_docs(expected, &docs, false, false).map_err(|why| format!("after: {why}"))?;
        }
        Ok(())
    }

    /// Every document of a cursor reply, following it with getMore until it is exhausted.
    async fn drain(&mut self, db: &str, reply: &Document) -> Result<Vec<Document>, String> {
        let cursor = reply
            .get_document("cursor")
            .map_err(|_| format!("no cursor in {}", show_doc(reply)))?;
        let mut docs = batch_docs(cursor, "firstBatch")?;
        let mut id = cursor_id(reply).unwrap_or(0);
        let ns = cursor.get_str("ns").unwrap_or_default();
        let coll = ns.split_once('.').map(|(_, c)| c).unwrap_or(ns).to_owned();
        for _ in 0..GET_MORES_MAX {
            if id == 0 {
                return Ok(docs);
            }
            let more = doc! { "getMore": id, "collection": coll.clone() };
            let reply = match self.run(db, more).await {
                Outcome::Reply(reply) if is_ok(&reply) => reply,
                other => return Err(format!("getMore failed: {}", show_outcome(&other))),
            };
            let cursor = reply
                .get_document("cursor")
                .map_err(|_| format!("no cursor in getMore reply {}", show_doc(&reply)))?;
            docs.extend(batch_docs(cursor, "nextBatch")?);
            id = cursor_id(&reply).unwrap_or(0);
        }
        Err(format!(
            "cursor not exhausted after {GET_MORES_MAX} getMores"
        ))
    }
}

fn shared_name(fixture: &str, variant: Variant) -> String {
    format!("fx_{fixture}_{}", variant.suffix())
}

/// A read-only case on a named fixture can share the fixture's pre-loaded collections.
fn shares_fixture(case: &Case) -> bool {
    let name = case.command.keys().next().map(String::as_str).unwrap_or("");
    let writes_out = case
        .command
        .get_array("pipeline")
        .map(|stages| {
            stages.iter().any(|stage| {
                stage
                    .as_document()
                    .is_some_and(|s| s.contains_key("$out") || s.contains_key("$merge"))
            })
        })
        .unwrap_or(false);
    case.seed.is_none()
        && case.setup.is_empty()
        && case.split.is_none()
        && !case.expect.contains_key("after")
        && READ_COMMANDS.contains(&name)
        && !writes_out
}

/// The median shard key of `docs`, so the sharded copy has documents on both shards.
fn median_key(docs: &[Document]) -> Bson {
    let mut keys: Vec<f64> = docs
        .iter()
        .filter_map(|d| match d.get(SHARD_KEY) {
            Some(Bson::Int32(v)) => Some(f64::from(*v)),
            Some(Bson::Int64(v)) => Some(*v as f64),
            Some(Bson::Double(v)) => Some(*v),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return Bson::Int32(SPLIT_DEFAULT);
    }
    keys.sort_by(f64::total_cmp);
    let middle = keys[keys.len() / 2];
    if middle.fract() == 0.0 {
        Bson::Int32(middle as i32)
    } else {
        Bson::Double(middle)
    }
}

fn cursor_id(reply: &Document) -> Option<i64> {
    match reply.get_document("cursor").ok()?.get("id")? {
        Bson::Int64(id) => Some(*id),
        Bson::Int32(id) => Some(i64::from(*id)),
        _ => None,
    }
}

fn batch_docs(cursor: &Document, key: &str) -> Result<Vec<Document>, String> {
    let batch = cursor
        .get_array(key)
        .map_err(|_| format!("cursor without {key}: {}", show_doc(cursor)))?;
    batch
        .iter()
        .map(|d| {
            d.as_document()
                .cloned()
                .ok_or_else(|| format!("non-document {} in {key}", show(d)))
        })
        .collect()
}

/// A reply with ok:1 and no write errors (what a setup step must answer).
fn reply_clean(reply: &Document) -> bool {
    is_ok(reply) && !reply.contains_key("writeErrors") && !reply.contains_key("writeConcernError")
}

fn expects_write_errors(expect: &Document) -> bool {
    expect
        .get_document("reply_subset")
        .is_ok_and(|subset| subset.contains_key("writeErrors"))
}

fn check_error(expected: i32, outcome: &Outcome) -> Result<(), String> {
    let actual = match outcome {
        Outcome::Error { code, .. } => Some(*code),
        Outcome::Reply(reply) => first_write_error_code(reply),
    };
    if actual == Some(expected) {
        return Ok(());
    }
    Err(format!(
        "expected error {expected}, got {}",
        show_outcome(outcome)
    ))
}

fn first_write_error_code(reply: &Document) -> Option<i32> {
    let first = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    match first.get("code")? {
        Bson::Int32(code) => Some(*code),
        Bson::Int64(code) => i32::try_from(*code).ok(),
        _ => None,
    }
}

fn check_reply_fields(expect: &Document, reply: &Document) -> Result<(), String> {
    if let Some(n) = expect.get("n") {
        let actual = reply.get("n").cloned().unwrap_or(Bson::Null);
        if !subset_match(n, &actual) {
            return Err(format!("n: expected {}, got {}", show(n), show_doc(reply)));
        }
    }
    if let Ok(subset) = expect.get_document("reply_subset") {
        let actual = Bson::Document(reply.clone());
        if !subset_match(&Bson::Document(subset.clone()), &actual) {
            return Err(format!("reply mismatch: {}", show_doc(reply)));
        }
    }
    if let Ok(values) = expect.get_array("values") {
        let actual = reply
            .get_array("values")
            .map_err(|_| format!("no values in {}", show_doc(reply)))?;
        multiset_match(values, actual, bson_eq)
            .map_err(|why| format!("values: {why}; got {}", show_array(actual)))?;
    }
    if let Ok(explain) = expect.get_document("explain") {
        check_explain(explain, reply)?;
    }
    Ok(())
}

/// Checks that every stage name in `include` occurs somewhere in the explain output as a
/// `stage` value, and none in `exclude` does: the shape of explain differs between a mongod and a
/// router (shards are nested), but the stage names the planner chose do not.
fn check_explain(explain: &Document, reply: &Document) -> Result<(), String> {
    let mut stages = Vec::new();
    collect_stages(&Bson::Document(reply.clone()), &mut stages);
    for stage in explain
        .get_array("include")
        .map(|a| a.iter())
        .into_iter()
        .flatten()
    {
        let stage = stage.as_str().unwrap_or_default();
        if !stages.iter().any(|s| s == stage) {
            return Err(format!(
                "explain has no {stage} stage (stages {stages:?}): {}",
                show_doc(reply)
            ));
        }
    }
    for stage in explain
        .get_array("exclude")
        .map(|a| a.iter())
        .into_iter()
        .flatten()
    {
        let stage = stage.as_str().unwrap_or_default();
        if stages.iter().any(|s| s == stage) {
            return Err(format!(
                "explain has a {stage} stage (stages {stages:?}): {}",
                show_doc(reply)
            ));
        }
    }
    Ok(())
}

fn collect_stages(value: &Bson, stages: &mut Vec<String>) {
    match value {
        Bson::Document(doc) => {
            for (key, value) in doc {
                if key == "stage"
                    && let Bson::String(stage) = value
                {
                    stages.push(stage.clone());
                }
                collect_stages(value, stages);
            }
        }
        Bson::Array(values) => values.iter().for_each(|v| collect_stages(v, stages)),
        _ => {}
    }
}

/// Whether the order of a command's results is defined: a find with a sort, or a pipeline whose
/// last `$sort`/`$sortByCount` is not followed by a stage that reorders.
fn command_sorts(command: &Document) -> bool {
    if command.contains_key("find") {
        return command.get_document("sort").is_ok_and(|s| !s.is_empty());
    }
    let Ok(stages) = command.get_array("pipeline") else {
        return false;
    };
    let mut sorted = false;
    for stage in stages.iter().filter_map(Bson::as_document) {
        let name = stage.keys().next().map(String::as_str).unwrap_or("");
        match name {
            "$sort" | "$sortByCount" => sorted = true,
            "$group" | "$facet" | "$bucket" | "$bucketAuto" | "$sample" | "$unionWith" => {
                sorted = false;
            }
            _ => {}
        }
    }
    sorted
}

fn compare_docs(
    expected: &[Bson],
    actual: &[Document],
    ordered: bool,
    subset: bool,
) -> Result<(), String> {
    let actual: Vec<Bson> = actual.iter().cloned().map(Bson::Document).collect();
    let same = |e: &Bson, a: &Bson| {
        if subset {
            subset_match(e, a)
        } else {
            bson_eq(e, a)
        }
    };
    let result = if ordered {
        let equal =
            expected.len() == actual.len() && expected.iter().zip(&actual).all(|(e, a)| same(e, a));
        if equal {
            Ok(())
        } else {
            Err("documents differ (order-sensitive)".to_owned())
        }
    } else {
        multiset_match(expected, &actual, same)
    };
    result.map_err(|why| format!("{why}; got {}", show_array(&actual)))
}

fn multiset_match(
    expected: &[Bson],
    actual: &[Bson],
    same: impl Fn(&Bson, &Bson) -> bool,
) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "expected {} documents/values, got {}",
            expected.len(),
            actual.len()
        ));
    }
    let mut used = vec![false; actual.len()];
    for e in expected {
        let found = (0..actual.len()).find(|&i| !used[i] && same(e, &actual[i]));
        match found {
            Some(i) => used[i] = true,
            None => return Err(format!("no match for {}", show(e))),
        }
    }
    Ok(())
}

/// The `@any` / `@type:NAME` wildcards of an expectation, if `expected` is one.
fn wildcard(expected: &Bson, actual: &Bson) -> Option<bool> {
    let Bson::String(text) = expected else {
        return None;
    };
    if text == "@any" {
        return Some(true);
    }
    let name = text.strip_prefix("@type:")?;
    Some(type_name(actual) == name)
}

fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
        _ => "other",
    }
}

/// Exact equality as a user sees it: same BSON types and values; documents equal whatever their
/// field order (field order is not what these cases test), arrays element by element.
fn bson_eq(expected: &Bson, actual: &Bson) -> bool {
    if let Some(matched) = wildcard(expected, actual) {
        return matched;
    }
    match (expected, actual) {
        (Bson::Document(e), Bson::Document(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(key, ev)| a.get(key).is_some_and(|av| bson_eq(ev, av)))
        }
        (Bson::Array(e), Bson::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| bson_eq(ev, av))
        }
        (Bson::Double(e), Bson::Double(a)) => e == a || (e.is_nan() && a.is_nan()),
        _ => expected == actual,
    }
}

/// Subset matching for replies: every expected field must be present and match; arrays match
/// element by element with the same length; numbers compare by value whatever their type.
fn subset_match(expected: &Bson, actual: &Bson) -> bool {
    if let Some(matched) = wildcard(expected, actual) {
        return matched;
    }
    match (expected, actual) {
        (Bson::Document(e), Bson::Document(a)) => e
            .iter()
            .all(|(key, ev)| a.get(key).is_some_and(|av| subset_match(ev, av))),
        (Bson::Array(e), Bson::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| subset_match(ev, av))
        }
        _ => match (as_f64(expected), as_f64(actual)) {
            (Some(e), Some(a)) => e == a,
            _ => bson_eq(expected, actual),
        },
    }
}

fn as_f64(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    }
}

fn substitute_doc(doc: &Document, names: &Names) -> Document {
    doc.iter()
        .map(|(k, v)| (k.clone(), substitute(v, names)))
        .collect()
}

fn substitute(value: &Bson, names: &Names) -> Bson {
    match value {
        Bson::String(text) => substitute_str(text, names),
        Bson::Document(doc) => Bson::Document(substitute_doc(doc, names)),
        Bson::Array(values) => Bson::Array(values.iter().map(|v| substitute(v, names)).collect()),
        other => other.clone(),
    }
}

fn substitute_str(text: &str, names: &Names) -> Bson {
    let coll2 = format!("{}_2", names.coll);
    let replaced = match text {
        "@coll" => names.coll.clone(),
        "@coll2" => coll2,
        "@ns" => format!("{DB}.{}", names.coll),
        "@ns2" => format!("{DB}.{coll2}"),
        "@db" => DB.to_owned(),
        "@missing" => names.missing.clone(),
        "@cursor" => return Bson::Int64(names.cursor.unwrap_or(0)),
        _ => match text.strip_prefix("@fixture:") {
            Some(fixture) => shared_name(fixture, Variant::Unsharded),
            None => text.to_owned(),
        },
    };
    Bson::String(replaced)
}

fn show_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Reply(reply) => show_doc(reply),
        Outcome::Error { code, message } => {
            let message: String = message.chars().take(SHOW_CHARS_MAX).collect();
            format!("error {code}: {message}")
        }
    }
}

fn show_doc(doc: &Document) -> String {
    show(&Bson::Document(doc.clone()))
}

fn show_array(values: &[Bson]) -> String {
    show(&Bson::Array(values.to_vec()))
}

/// A compact shell-like rendering that keeps the BSON types visible (`2.0` is a double, `2` an
/// int, `NumberLong(2)` a long), truncated to [`SHOW_CHARS_MAX`].
fn show(value: &Bson) -> String {
    let mut text = String::new();
    render(value, &mut text);
    if text.chars().count() > SHOW_CHARS_MAX {
        let cut: String = text.chars().take(SHOW_CHARS_MAX).collect();
        return format!("{cut}…");
    }
    text
}

fn render(value: &Bson, out: &mut String) {
    let text = match value {
        Bson::Document(doc) => {
            let fields: Vec<String> = doc
                .iter()
                .map(|(k, v)| {
                    let mut field = format!("{k}: ");
                    render(v, &mut field);
                    field
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Bson::Array(values) => {
            let items: Vec<String> = values
                .iter()
                .map(|v| {
                    let mut item = String::new();
                    render(v, &mut item);
                    item
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
        Bson::Double(v) if v.is_finite() && v.fract() == 0.0 => format!("{v:.1}"),
        Bson::Int64(v) => format!("NumberLong({v})"),
        Bson::String(s) => format!("{s:?}"),
        Bson::DateTime(d) => format!(
            "ISODate({:?})",
            d.try_to_rfc3339_string().unwrap_or_default()
        ),
        Bson::Decimal128(d) => format!("NumberDecimal({d})"),
        Bson::ObjectId(id) => format!("ObjectId({id})"),
        Bson::MinKey => "MinKey".to_owned(),
        Bson::MaxKey => "MaxKey".to_owned(),
        other => other.to_string(),
    };
    out.push_str(&text);
}

/// Read when the test runs (see `workspace_root` in `common/base/tests/tidy.rs` for why).
fn conformance_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("conformance")
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("reading {}: {err}", path.display()))?;
    serde_json::from_str(&text).map_err(|err| anyhow::anyhow!("parsing {}: {err}", path.display()))
}

fn to_doc(value: &Value, what: &str) -> anyhow::Result<Document> {
    match Bson::try_from(value.clone())? {
        Bson::Document(doc) => Ok(doc),
        other => anyhow::bail!("{what} is not a document: {other}"),
    }
}

fn to_docs(value: &Value, what: &str) -> anyhow::Result<Vec<Document>> {
    value
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{what} is not an array"))?
        .iter()
        .map(|v| to_doc(v, what))
        .collect()
}

/// `fixtures.json`: `{name: {manual, docs, split?, unsharded_only?}}`.
fn load_fixtures() -> anyhow::Result<BTreeMap<String, Fixture>> {
    let json = read_json(&conformance_dir().join("fixtures.json"))?;
    let map = json
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("fixtures.json is not an object"))?;
    let mut fixtures = BTreeMap::new();
    for (name, fixture) in map {
        let docs = to_docs(&fixture["docs"], &format!("fixture {name} docs"))?;
        let split = match fixture.get("split") {
            Some(split) => Bson::try_from(split.clone())?,
            None => median_key(&docs),
        };
        let unsharded_only = fixture["unsharded_only"].as_bool().unwrap_or(false);
        anyhow::ensure!(
            unsharded_only || docs.iter().all(|d| d.contains_key(SHARD_KEY)),
            "fixture {name}: every document needs the shard key {SHARD_KEY}"
        );
        fixtures.insert(
            name.clone(),
            Fixture {
                docs,
                split,
                unsharded_only,
            },
        );
    }
    Ok(fixtures)
}

/// Every `*.json` area file but `fixtures.json`, in name order: `{area, groups: [{manual,
/// cases}]}`.
fn load_cases() -> anyhow::Result<Vec<Case>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(conformance_dir())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "fixtures.json"))
        .collect();
    paths.sort();
    let mut cases = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for path in paths {
        let json = read_json(&path)?;
        let area = json["area"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{} has no area", path.display()))?;
        let groups = json["groups"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{} has no groups", path.display()))?;
        for group in groups {
            anyhow::ensure!(
                group["manual"].is_string(),
                "{}: a group without its manual page",
                path.display()
            );
            for case in group["cases"].as_array().into_iter().flatten() {
                let case = parse_case(area, case)?;
                anyhow::ensure!(
                    seen.insert((case.area.clone(), case.name.clone())),
                    "duplicate case name {} in {area}",
                    case.name
                );
                cases.push(case);
            }
        }
    }
    Ok(cases)
}

fn parse_case(area: &str, json: &Value) -> anyhow::Result<Case> {
    let name = json["name"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{area}: a case without a name: {json}"))?
        .to_owned();
    let object = json
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("{area}/{name} is not an object"))?;
    for key in object.keys() {
        anyhow::ensure!(
            CASE_KEYS.contains(&key.as_str()),
            "{area}/{name}: unknown key {key}"
        );
    }
    let what = format!("{area}/{name}");
    let expect = to_doc(&json["expect"], &format!("{what} expect"))?;
    for key in expect.keys() {
        anyhow::ensure!(
            EXPECT_KEYS.contains(&key.as_str()),
            "{what}: unknown expect key {key}"
        );
    }
    anyhow::ensure!(
        CHECK_KEYS.iter().any(|key| expect.contains_key(key)),
        "{what}: expect checks nothing"
    );
    let variants = match json.get("variants") {
        None => vec![Variant::Unsharded, Variant::Sharded],
        Some(list) => parse_variants(list, &what)?,
    };
    Ok(Case {
        area: area.to_owned(),
        fixture: json["fixture"].as_str().map(str::to_owned),
        seed: json.get("seed").map(|s| to_docs(s, &what)).transpose()?,
        split: json
            .get("split")
            .map(|s| Bson::try_from(s.clone()))
            .transpose()?,
        setup: json
            .get("setup")
            .map(|s| to_docs(s, &what))
            .transpose()?
            .unwrap_or_default(),
        db: json["db"].as_str().unwrap_or(DB).to_owned(),
        variants,
        command: to_doc(&json["command"], &format!("{what} command"))?,
        expect,
        expect_sharded: json
            .get("expect_sharded")
            .map(|e| to_doc(e, &what))
            .transpose()?,
        after_coll: json["after_coll"].as_str().map(str::to_owned),
        name,
    })
}

fn parse_variants(list: &Value, what: &str) -> anyhow::Result<Vec<Variant>> {
    list.as_array()
        .ok_or_else(|| anyhow::anyhow!("{what}: variants is not an array"))?
        .iter()
        .map(|v| match v.as_str() {
            Some("unsharded") => Ok(Variant::Unsharded),
            Some("sharded") => Ok(Variant::Sharded),
            _ => anyhow::bail!("{what}: unknown variant {v}"),
        })
        .collect()
}
