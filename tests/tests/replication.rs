//! Replica-set failover through the router, with real processes: a 3-member shard replica set
//! loses its primary to SIGKILL, SIGSTOP and a network partition, and a killed member comes
//! back. Four clients insert continuously with `w: "majority"` and retryable writes meanwhile.
//! After each fault: every acknowledged document is present exactly once, a counter incremented
//! by retryable updates counts every acknowledged increment exactly once, all members converge
//! to the same `dbHash`, and the former primary rejoins as a secondary.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::Client;
use shoal_tests::replset::{ReplCluster, Set};

const WRITERS: usize = 4;
/// Upper bound on one writer's operations per phase (the loop also stops on the phase's flag).
const WRITES_PER_PHASE_MAX: u64 = 1_000_000;

#[derive(Clone, Default)]
struct Ledger {
    acked: BTreeSet<String>,
    uncertain: BTreeSet<String>,
    increments_acked: BTreeMap<usize, u64>,
    increments_uncertain: BTreeMap<usize, u64>,
    last_success: Option<Instant>,
    longest_gap: Duration,
    errors: Vec<String>,
}

fn book(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ledger {
    fn snapshot(&self) -> Ledger {
        self.clone()
    }
}

async fn writer(
    client: Client,
    id: usize,
    phase: u32,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let docs = client.database("repl").collection::<Document>("docs");
    let counters = client.database("repl").collection::<Document>("counters");
    let pad = "x".repeat(1000);
    for seq in 0..WRITES_PER_PHASE_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("p{phase}-w{id}-{seq}");
        let inserted = docs
            .insert_one(doc! {"_id": key.clone(), "pad": pad.clone()})
            .await;
        let counted = counters
            .update_one(doc! {"_id": format!("w{id}")}, doc! {"$inc": {"n": 1}})
            .upsert(true)
            .await;
        let mut ledger = book(&ledger);
        match inserted {
            Ok(_) => {
                ledger.acked.insert(key);
                let now = Instant::now();
                if let Some(last) = ledger.last_success {
                    ledger.longest_gap = ledger.longest_gap.max(now - last);
                }
                ledger.last_success = Some(now);
            }
            Err(error) => {
                ledger.uncertain.insert(key);
                ledger.errors.push(error.to_string());
            }
        }
        match counted {
            Ok(_) => *ledger.increments_acked.entry(id).or_default() += 1,
            Err(error) => {
                *ledger.increments_uncertain.entry(id).or_default() += 1;
                ledger.errors.push(error.to_string());
            }
        }
    }
}

/// A failure injected into the shard's replica set during a phase.
enum Fault {
    /// SIGKILL member j.
    Kill(usize),
    /// SIGSTOP member j for 5 s, then SIGCONT.
    Pause(usize),
    /// Cut member j off from the others for 5 s, then heal.
    Partition(usize, Vec<usize>),
}

async fn inject(cluster: &mut ReplCluster, fault: &Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(j) => cluster.kill(Set::Shard, *j),
        Fault::Pause(j) => {
            cluster.signal(Set::Shard, *j, libc::SIGSTOP)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            cluster.signal(Set::Shard, *j, libc::SIGCONT)?;
        }
        Fault::Partition(j, others) => {
            cluster.partition(Set::Shard, *j, others).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            cluster.heal(Set::Shard).await?;
        }
    }
    Ok(())
}

/// Runs writers around `fault`, then checks the ledger against the data.
async fn phase(
    cluster: &mut ReplCluster,
    number: u32,
    ledger: &Arc<Mutex<Ledger>>,
    fault: Fault,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    book(ledger).last_success = None;
    book(ledger).longest_gap = Duration::ZERO;
    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        let client = cluster.router_client().await?;
        tasks.push(tokio::spawn(writer(
            client,
            id,
            number,
            Arc::clone(&stop),
            Arc::clone(ledger),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    inject(cluster, &fault).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await??;
    }
    let gap = book(ledger).longest_gap;
    eprintln!("phase {number}: longest gap between acknowledged inserts {gap:?}");
    verify(cluster, ledger).await
}

async fn verify(cluster: &ReplCluster, ledger: &Arc<Mutex<Ledger>>) -> anyhow::Result<()> {
    let client = cluster.router_client().await?;
    let docs = client.database("repl").collection::<Document>("docs");
    let found: Vec<Document> = docs
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .await?
        .try_collect()
        .await?;
    let ids: Vec<String> = found
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect();
    anyhow::ensure!(ids.len() == found.len(), "a document without a string _id");
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    anyhow::ensure!(unique.len() == ids.len(), "a document is present twice");
    let ledger = book(ledger).snapshot();
    let missing: Vec<&String> = ledger.acked.difference(&unique).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} acknowledged documents lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let extra: Vec<&String> = unique
        .iter()
        .filter(|id| !ledger.acked.contains(*id) && !ledger.uncertain.contains(*id))
        .collect();
    anyhow::ensure!(extra.is_empty(), "documents nobody wrote: {extra:?}");
    eprintln!(
        "acknowledged {} documents, {} client errors",
        ledger.acked.len(),
        ledger.errors.len()
    );
    if let Some(error) = ledger.errors.first() {
        eprintln!("first client error: {error}");
    }
    let counters = client.database("repl").collection::<Document>("counters");
    for id in 0..WRITERS {
        let Some(counter) = counters.find_one(doc! {"_id": format!("w{id}")}).await? else {
            anyhow::bail!("counter w{id} missing");
        };
        let n = shoal_tests::mongo::get_i64(&counter, "n").unwrap_or(0) as u64;
        let acked = ledger.increments_acked.get(&id).copied().unwrap_or(0);
        let uncertain = ledger.increments_uncertain.get(&id).copied().unwrap_or(0);
        anyhow::ensure!(
            acked <= n && n <= acked + uncertain,
            "counter w{id} is {n} after {acked} acknowledged (+{uncertain} uncertain) increments: a retry was applied twice or an increment was lost"
        );
    }
    Ok(())
}

async fn running_members_converge(cluster: &ReplCluster, members: &[usize]) -> anyhow::Result<()> {
    let hash = cluster.converged_hash(Set::Shard, "repl", members).await?;
    eprintln!("members {members:?} converged to dbHash {hash}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = ReplCluster::start(1, 3).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // (a) SIGKILL the primary.
    let killed = cluster.wait_primary(Set::Shard).await?;
    phase(&mut cluster, 1, &ledger, Fault::Kill(killed)).await?;
    let survivors: Vec<usize> = (0..3).filter(|j| *j != killed).collect();
    running_members_converge(&cluster, &survivors).await?;

    // (d) restart the killed member: it catches up and rejoins as a secondary.
    cluster.start_member(Set::Shard, killed).await?;
    cluster.wait_secondary(Set::Shard, killed).await?;
    running_members_converge(&cluster, &[0, 1, 2]).await?;

    // (b) SIGSTOP the primary for 5 s, then SIGCONT: it rejoins as a secondary.
    let paused = cluster.wait_primary(Set::Shard).await?;
    phase(&mut cluster, 2, &ledger, Fault::Pause(paused)).await?;
    cluster.wait_secondary(Set::Shard, paused).await?;
    running_members_converge(&cluster, &[0, 1, 2]).await?;

    // (c) cut the primary off from both secondaries for 5 s, then heal.
    let cut = cluster.wait_primary(Set::Shard).await?;
    let others: Vec<usize> = (0..3).filter(|j| *j != cut).collect();
    phase(&mut cluster, 3, &ledger, Fault::Partition(cut, others)).await?;
    cluster.wait_secondary(Set::Shard, cut).await?;
    running_members_converge(&cluster, &[0, 1, 2]).await?;

    // (d) again, under load: kill a secondary, restart it, and it converges.
    let primary = cluster.wait_primary(Set::Shard).await?;
    let restarted = (0..3).find(|j| *j != primary).unwrap_or(0);
    phase(&mut cluster, 4, &ledger, Fault::Kill(restarted)).await?;
    cluster.start_member(Set::Shard, restarted).await?;
    cluster.wait_secondary(Set::Shard, restarted).await?;
    running_members_converge(&cluster, &[0, 1, 2]).await?;
    cluster.finish();
    Ok(())
}
