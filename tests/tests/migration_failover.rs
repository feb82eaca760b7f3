//! Chunk migration under primary failover (issue 5): during a `moveChunk`, the donor's primary,
//! the recipient's primary or the config server's primary is SIGKILLed at each named migration
//! step, one step per collection, one cluster per victim (3 config members, two 3-member shards).
//! The config primary is also killed with `moveChunk` sent to it directly (so no router re-sends
//! it and the new primary must resolve the migration from `config.migrations`), and SIGSTOPped
//! until another is elected, then resumed (a deposed primary going on with its migration).
//!
//! Every config member is started with `SHOAL_FAILPOINTS=moveChunk.<step>:pause=MILLIS`, so the
//! config primary announces the step in its log and waits there; the test kills the victim
//! then, restarts it once its set elected another primary, lets the interrupted `moveChunk`
//! finish or fail (both are allowed), and retries `moveChunk` until it succeeds. Meanwhile one
//! client inserts into the moving range, retrying each insert until it is acknowledged.
//!
//! Afterwards: the chunk map puts the chunk on the recipient; through the router every
//! inserted document and every acknowledged write is found exactly once (count and full scan);
//! the shards' primaries, which hide orphans, together hold every document once, none on
//! both; and once all steps ran, range deletion leaves no orphan on any shard. Each run prints
//! (`RESULT` lines, visible with `--nocapture`) how long the first `moveChunk` took, whether it
//! succeeded, and the config server's log lines showing how the migration was resolved.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Client;
use shoal_tests::{
    mongo::error_code,
    replset::{ReplCluster, Set},
    sharding::{admin, check_tiling, chunks_of, other_shard, primary_shard, shard_index},
};

const DB: &str = "mig";
/// Documents inserted per collection before its migration.
const DOCS: i64 = 6_000;
/// The split point: `[MIDDLE, MaxKey)` moves.
const MIDDLE: i64 = DOCS / 2;
/// Bytes of padding per document (~1 KB documents).
const PAD_BYTES: usize = 1_000;
const INSERT_BATCH: usize = 1_000;
/// How long the config primary waits at the armed step.
const PAUSE_MS: u64 = 4_000;
/// The migration steps, in order (failpoints `moveChunk.<step>`).
const STEPS: [&str; 7] = [
    "afterStart",
    "afterClone",
    "afterCatchUp",
    "inCriticalSection",
    "beforeCommit",
    "afterCommit",
    "afterRecipientRefresh",
];
/// Steps after the commit: the chunk map already names the recipient there.
const COMMITTED_STEPS: [&str; 2] = ["afterCommit", "afterRecipientRefresh"];
/// How long a new config primary may take to resolve a migration its predecessor left.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// How long the test waits for the config primary to reach the armed step.
const STEP_WAIT: Duration = Duration::from_secs(60);
/// How long the interrupted `moveChunk` may take to answer.
const FIRST_MOVE_WAIT: Duration = Duration::from_secs(120);
/// `moveChunk` attempts after the interrupted one.
const MOVE_RETRIES_MAX: usize = 10;
const MOVE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Attempts per writer insert before it counts as uncertain.
const WRITE_ATTEMPTS_MAX: usize = 200;
const WRITE_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Upper bound on the writer's inserts per run (it also stops on its flag).
const WRITES_MAX: i64 = 100_000;
/// How long the final state may take to settle (routers and shards learn ownership by
/// pushes and a one-second refresh); a check passing only after a retry is reported.
const VERIFY_WAIT: Duration = Duration::from_secs(20);

/// How long the range deleter may take to remove every orphan once all steps ran.
const ORPHANS_WAIT: Duration = Duration::from_secs(60);
/// Config-server log messages printed per run, to show which path resolved the migration.
const CONFIG_MARKERS: [&str; 7] = [
    "migration failed; resolving",
    "migration not resolved yet",
    "resolving an interrupted migration",
    "migration aborted and cleaned up",
    "chunk migrated",
    "failpoint pausing",
    "migration recovery or range deletion failed",
];

const DUPLICATE_KEY: i32 = 11_000;
const STALE_CONFIG: i32 = 13_388;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Donor,
    Recipient,
    /// The config primary, `moveChunk` sent through the router (which re-sends it to the new
    /// config primary when the old one dies).
    Config,
    /// The config primary, `moveChunk` sent to it directly: nobody re-sends it, so the new
    /// primary must resolve the migration it finds in `config.migrations`.
    ConfigDirect,
    /// The config primary SIGSTOPped (not killed) until another is elected, then resumed: a
    /// deposed primary going on with its migration while the new one resolves or re-runs it.
    ConfigPaused,
}

/// What the concurrent writer saw.
#[derive(Debug, Default)]
struct Ledger {
    acked: BTreeSet<i64>,
    uncertain: BTreeSet<i64>,
    errors: usize,
    stale_errors: usize,
    first_error: Option<String>,
}

fn book(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shard-set of shard `name` (`shard{i}`).
fn shard_set(name: &str) -> anyhow::Result<Set> {
    Ok(Set::ShardN(shard_index(name)?))
}

/// Inserts into the moving range until `stop`, each document retried (same `_id`) until
/// acknowledged; a duplicate-key answer to a retry means an earlier attempt was applied.
async fn writer(router: Client, coll: String, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let docs = router.database(DB).collection::<Document>(&coll);
    for i in 0..WRITES_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let id = DOCS + i;
        let k = MIDDLE + (i * 7_919) % (DOCS - MIDDLE);
        let mut acked = false;
        for attempt in 0..WRITE_ATTEMPTS_MAX {
            match docs.insert_one(doc! {"_id": id, "k": k, "w": true}).await {
                Ok(_) => acked = true,
                Err(error) if attempt > 0 && error_code(&error) == Some(DUPLICATE_KEY) => {
                    acked = true;
                }
                Err(error) => {
                    let mut ledger = book(&ledger);
                    ledger.errors += 1;
                    if error_code(&error) == Some(STALE_CONFIG) {
                        ledger.stale_errors += 1;
                    }
                    ledger.first_error.get_or_insert_with(|| error.to_string());
                }
            }
            if acked {
                break;
            }
            tokio::time::sleep(WRITE_RETRY_DELAY).await;
        }
        let mut ledger = book(&ledger);
        if acked {
            ledger.acked.insert(id);
        } else {
            ledger.uncertain.insert(id);
        }
    }
}

async fn insert_base(router: &Client, coll: &str) -> anyhow::Result<()> {
    let docs = router.database(DB).collection::<Document>(coll);
    let pad = "x".repeat(PAD_BYTES);
    let all: Vec<Document> = (0..DOCS)
        .map(|k| doc! {"_id": k, "k": k, "pad": pad.clone()})
        .collect();
    for batch in all.chunks(INSERT_BATCH) {
        docs.insert_many(batch.to_vec()).await?;
    }
    Ok(())
}

fn move_command(ns: &str, to: &str) -> Document {
    doc! {"moveChunk": ns, "find": {"k": MIDDLE}, "to": to}
}

async fn ids_of(client: &Client, coll: &str) -> anyhow::Result<Vec<i64>> {
    let found: Vec<Document> = client
        .database(DB)
        .collection::<Document>(coll)
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .await?
        .try_collect()
        .await?;
    found
        .iter()
        .map(|d| match d.get("_id") {
            Some(Bson::Int64(id)) => Ok(*id),
            Some(Bson::Int32(id)) => Ok(i64::from(*id)),
            other => anyhow::bail!("unexpected _id {other:?}"),
        })
        .collect()
}

/// The expected final state, checked once.
async fn verify_once(
    cluster: &ReplCluster,
    router: &Client,
    coll: &str,
    recipient: &str,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let ns = format!("{DB}.{coll}");
    let chunks = check_tiling(&chunks_of(router, &ns).await?, "k")?;
    let upper = chunks
        .iter()
        .find(|c| c.get_document("min").ok() == Some(&doc! {"k": MIDDLE}))
        .ok_or_else(|| anyhow::anyhow!("no chunk starts at {MIDDLE}: {chunks:?}"))?;
    anyhow::ensure!(
        upper.get_str("shard")? == recipient,
        "the chunk map puts the moved chunk on {}",
        upper.get_str("shard")?
    );

    let ids = ids_of(router, coll).await?;
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    anyhow::ensure!(
        unique.len() == ids.len(),
        "a router scan returns {} duplicates",
        ids.len() - unique.len()
    );
    let missing_base = (0..DOCS).filter(|id| !unique.contains(id)).count();
    anyhow::ensure!(
        missing_base == 0,
        "{missing_base} inserted documents missing through the router"
    );
    let missing_acked: Vec<&i64> = ledger.acked.difference(&unique).collect();
    anyhow::ensure!(
        missing_acked.is_empty(),
        "acknowledged writes missing: {missing_acked:?}"
    );
    let unknown: Vec<&i64> = unique
        .iter()
        .filter(|id| **id >= DOCS && !ledger.acked.contains(id) && !ledger.uncertain.contains(id))
        .collect();
    anyhow::ensure!(unknown.is_empty(), "documents nobody wrote: {unknown:?}");
    let counted = router
        .database(DB)
        .collection::<Document>(coll)
        .count_documents(doc! {})
        .await?;
    anyhow::ensure!(
        counted == unique.len() as u64,
        "count says {counted}, the scan found {}",
        unique.len()
    );

    let mut per_shard = Vec::new();
    for i in 0..cluster.shard_count() {
        let set = Set::ShardN(i);
        let primary = cluster.wait_primary(set).await?;
        let direct = cluster.member_client(set, primary).await?;
        per_shard.push(
            ids_of(&direct, coll)
                .await?
                .into_iter()
                .collect::<BTreeSet<i64>>(),
        );
    }
    let on_both: Vec<&i64> = per_shard[0].intersection(&per_shard[1]).take(5).collect();
    anyhow::ensure!(
        on_both.is_empty(),
        "documents owned by both shards, e.g. {on_both:?}"
    );
    let sum: usize = per_shard.iter().map(BTreeSet::len).sum();
    anyhow::ensure!(
        sum == unique.len(),
        "the shards own {sum} documents ({:?}), the router sees {}",
        per_shard.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        unique.len()
    );
    Ok(())
}

/// [`verify_once`] until it passes or [`VERIFY_WAIT`] ends; returns the failures seen before
/// it passed.
async fn verify(
    cluster: &ReplCluster,
    router: &Client,
    coll: &str,
    recipient: &str,
    ledger: &Ledger,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let mut transient = Vec::new();
    loop {
        match verify_once(cluster, router, coll, recipient, ledger).await {
            Ok(()) => return Ok(transient),
            Err(error) if started.elapsed() < VERIFY_WAIT => {
                transient.push(error.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                anyhow::bail!(
                    "{error} (after {} failed checks: {transient:?})",
                    transient.len()
                )
            }
        }
    }
}

/// Waits (bounded by [`RECOVERY_WAIT`]) for a config member to log `text` after `since`.
async fn wait_config_event(
    cluster: &ReplCluster,
    since: &[usize],
    text: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < RECOVERY_WAIT {
        if config_events(cluster, since)
            .iter()
            .any(|event| event.contains(text))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no config member logged {text:?} within {RECOVERY_WAIT:?}")
}

/// Lines each config member's log has now.
fn config_log_lengths(cluster: &ReplCluster) -> Vec<usize> {
    (0..cluster.members(Set::Config))
        .map(|j| cluster.log_text(Set::Config, j).lines().count())
        .collect()
}

/// The config members' log lines after `since` that carry one of [`CONFIG_MARKERS`], without
/// the timestamp and colours.
fn config_events(cluster: &ReplCluster, since: &[usize]) -> Vec<String> {
    let mut events = Vec::new();
    for j in 0..cluster.members(Set::Config) {
        let text = cluster.log_text(Set::Config, j);
        for line in text.lines().skip(since.get(j).copied().unwrap_or(0)) {
            if CONFIG_MARKERS.iter().any(|marker| line.contains(marker)) {
                let plain = strip_ansi(line);
                let message = plain.split_once(": ").map_or(plain.as_str(), |(_, m)| m);
                events.push(format!("config{j}: {message}"));
            }
        }
    }
    events
}

fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut escaped = false;
    for c in line.chars() {
        match (escaped, c) {
            (false, '\u{1b}') => escaped = true,
            (true, 'm') => escaped = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    plain
}

/// Documents stored in `coll` on a shard's primary, orphans included (`collStats.count`).
async fn stored_on(cluster: &ReplCluster, set: Set, coll: &str) -> anyhow::Result<i64> {
    let primary = cluster.wait_primary(set).await?;
    let client = cluster.member_client(set, primary).await?;
    let stats = client
        .database(DB)
        .run_command(doc! {"collStats": coll})
        .await?;
    shoal_tests::mongo::get_i64(&stats, "count")
        .ok_or_else(|| anyhow::anyhow!("collStats without count: {stats}"))
}

/// Documents of `coll` a shard's primary owns (its reads hide orphans).
async fn owned_on(cluster: &ReplCluster, set: Set, coll: &str) -> anyhow::Result<i64> {
    let primary = cluster.wait_primary(set).await?;
    let client = cluster.member_client(set, primary).await?;
    let owned = client
        .database(DB)
        .collection::<Document>(coll)
        .count_documents(doc! {})
        .await?;
    Ok(i64::try_from(owned)?)
}

/// Waits until no shard stores an orphan of any step's collection (range deletion ran on
/// the donor's copies and on aborted migrations' partial copies).
async fn orphans_deleted(cluster: &ReplCluster) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut left = Vec::new();
        for step in STEPS {
            let coll = format!("c_{step}");
            for i in 0..cluster.shard_count() {
                let set = Set::ShardN(i);
                let (stored, owned) = (
                    stored_on(cluster, set, &coll).await?,
                    owned_on(cluster, set, &coll).await?,
                );
                if stored != owned {
                    left.push(format!(
                        "{coll} on shard{i}: {stored} stored, {owned} owned"
                    ));
                }
            }
        }
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < ORPHANS_WAIT,
            "orphans left after {ORPHANS_WAIT:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Kills the victim's current primary once it is found, waits for another primary and
/// restarts the killed member. `config_pauser` is the config member that announced the step.
async fn kill_victim(
    cluster: &mut ReplCluster,
    victim: Victim,
    donor: Set,
    recipient: Set,
    config_pauser: usize,
) -> anyhow::Result<(Set, usize, usize)> {
    let (set, member) = match victim {
        Victim::Donor => (donor, cluster.wait_primary(donor).await?),
        Victim::Recipient => (recipient, cluster.wait_primary(recipient).await?),
        Victim::Config | Victim::ConfigDirect | Victim::ConfigPaused => {
            (Set::Config, config_pauser)
        }
    };
    if victim == Victim::ConfigPaused {
        cluster.signal(set, member, libc::SIGSTOP)?;
        let elected = cluster.wait_primary_other_than(set, Some(member)).await;
        cluster.signal(set, member, libc::SIGCONT)?;
        return Ok((set, member, elected?));
    }
    cluster.kill(set, member);
    let elected = cluster.wait_primary_other_than(set, Some(member)).await?;
    cluster.start_member(set, member).await?;
    Ok((set, member, elected))
}

/// One step: a fresh collection, the config set restarted with the step armed, a move
/// interrupted by the victim's kill, retries, checks.
async fn run_step(
    cluster: &mut ReplCluster,
    router: &Client,
    victim: Victim,
    step: &str,
    donor: &str,
    recipient: &str,
) -> anyhow::Result<()> {
    let run_started = Instant::now();
    let armed = format!("moveChunk.{step}:pause={PAUSE_MS}");
    cluster.set_env(Set::Config, &[("SHOAL_FAILPOINTS", &armed)]);
    cluster.restart_set(Set::Config).await?;

    let coll = format!("c_{step}");
    let ns = format!("{DB}.{coll}");
    admin(router, doc! {"shardCollection": &ns, "key": {"k": 1}}).await?;
    insert_base(router, &coll).await?;
    admin(router, doc! {"split": &ns, "middle": {"k": MIDDLE}}).await?;

    let announce = format!("failpoint moveChunk.{step} paused for {PAUSE_MS} ms");
    let seen = cluster.log_counts(Set::Config, &announce);
    let log_start = config_log_lengths(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writing = tokio::spawn(writer(
        cluster.router_client().await?,
        coll.clone(),
        Arc::clone(&stop),
        Arc::clone(&ledger),
    ));
    let move_started = Instant::now();
    let moving = {
        let router = if victim == Victim::ConfigDirect {
            let primary = cluster.wait_primary(Set::Config).await?;
            cluster.member_client(Set::Config, primary).await?
        } else {
            cluster.router_client().await?
        };
        let command = move_command(&ns, recipient);
        tokio::spawn(async move { admin(&router, command).await })
    };
    let pauser = cluster
        .wait_log(Set::Config, &announce, &seen, STEP_WAIT)
        .await?;
    let (killed_set, killed, elected) = kill_victim(
        cluster,
        victim,
        shard_set(donor)?,
        shard_set(recipient)?,
        pauser,
    )
    .await?;
    let first = tokio::time::timeout(FIRST_MOVE_WAIT, moving).await??;
    let first_millis = move_started.elapsed().as_millis();
    if victim == Victim::ConfigDirect && first.is_err() && !COMMITTED_STEPS.contains(&step) {
        // Nobody re-sent the move: the new primary must abort it from `config.migrations`
        // before the retry below could start over.
        let resolved = format!("migration aborted and cleaned up ns={ns} ");
        wait_config_event(cluster, &log_start, &resolved).await?;
    }

    let mut retries = 0;
    let mut last_error = None;
    for attempt in 0..=MOVE_RETRIES_MAX {
        anyhow::ensure!(
            attempt < MOVE_RETRIES_MAX,
            "moveChunk never succeeded: {last_error:?}"
        );
        match admin(router, move_command(&ns, recipient)).await {
            Ok(_) => break,
            Err(error) => {
                retries += 1;
                last_error = Some(error.to_string());
                tokio::time::sleep(MOVE_RETRY_DELAY).await;
            }
        }
    }
    let total_millis = move_started.elapsed().as_millis();
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), writing).await??;

    let ledger = std::mem::take(&mut *book(&ledger));
    let transient = verify(cluster, router, &coll, recipient, &ledger).await?;
    let outcome = match &first {
        Ok(_) => "succeeded".to_owned(),
        Err(error) => format!("failed ({error})"),
    };
    println!(
        "RESULT victim={victim:?} step={step}: first moveChunk {outcome} after {first_millis} ms; \
         {retries} failed retries, moved after {total_millis} ms; killed {killed_set:?} primary {killed}, \
         new primary {elected}; writer acked {} (uncertain {}, {} errors, {} StaleConfig, first: {:?}); \
         checks passed after {} transient failures {:?}; run {} ms",
        ledger.acked.len(),
        ledger.uncertain.len(),
        ledger.errors,
        ledger.stale_errors,
        ledger.first_error,
        transient.len(),
        transient.first(),
        run_started.elapsed().as_millis(),
    );
    for event in config_events(cluster, &log_start) {
        println!("    {event}");
    }
    // The next step starts with every member back in its set (the config set is restarted).
    if killed_set != Set::Config {
        cluster.wait_secondary(killed_set, killed).await?;
    }
    Ok(())
}

async fn run_victim(victim: Victim) -> anyhow::Result<()> {
    let mut cluster = ReplCluster::start_shards(3, 3, 2, &[]).await?;
    let router = cluster.router_client().await?;
    // Only the test moves chunks (a build without a balancer refuses the command: fine).
    if let Err(error) = admin(&router, doc! {"balancerStop": 1}).await {
        println!("balancerStop: {error}");
    }
    admin(&router, doc! {"enableSharding": DB}).await?;
    let donor = primary_shard(&router, DB).await?;
    let recipient = other_shard(&router, &donor).await?;
    for step in STEPS {
        run_step(&mut cluster, &router, victim, step, &donor, &recipient).await?;
    }
    let waited = orphans_deleted(&cluster).await?;
    println!(
        "RESULT victim={victim:?}: no orphans left {} ms after the last step",
        waited.as_millis()
    );
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn donor_primary_killed_at_each_step() -> anyhow::Result<()> {
    run_victim(Victim::Donor).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recipient_primary_killed_at_each_step() -> anyhow::Result<()> {
    run_victim(Victim::Recipient).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_primary_killed_at_each_step() -> anyhow::Result<()> {
    run_victim(Victim::Config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_primary_paused_at_each_step_resumes_deposed() -> anyhow::Result<()> {
    run_victim(Victim::ConfigPaused).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_primary_killed_at_each_step_without_router_retry() -> anyhow::Result<()> {
    run_victim(Victim::ConfigDirect).await
}
