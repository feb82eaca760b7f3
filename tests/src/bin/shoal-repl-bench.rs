//! `shoal-repl-bench`: the replica-set figures. On a cluster whose shard is a 3-member replica
//! set (release binaries, loopback, 1 KB documents):
//! - failover time: SIGKILL the shard's primary, then time one `w: "majority"` insert through
//!   the router started right after the kill until it succeeds; `--trials N` times (default 10),
//!   restarting the killed member between trials; median and worst;
//! - throughput: `--clients N` (default 16) clients each inserting single documents for
//!   `--seconds S` (default 10), with `w: "majority"` and then with `w: 1`.
//!
//! Usage: `shoal-repl-bench [--members M] [--trials N] [--clients N] [--seconds S]` (failover
//! trials need `--members 3`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Document, doc};
use mongodb::options::{Acknowledgment, WriteConcern};
use shoal_tests::replset::{ReplCluster, Set};

const PAYLOAD_BYTES: usize = 1_000;
/// The longest one failover trial may take before the bench gives up.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);

struct Options {
    members: usize,
    trials: usize,
    clients: usize,
    seconds: u64,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        members: 3,
        trials: 10,
        clients: 16,
        seconds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match arg.as_str() {
            "--trials" => options.trials = value("--trials")?.parse()?,
            "--members" => options.members = value("--members")?.parse()?,
            "--clients" => options.clients = value("--clients")?.parse()?,
            "--seconds" => options.seconds = value("--seconds")?.parse()?,
            "--help" | "-h" => {
                println!(
                    "usage: shoal-repl-bench [--members M] [--trials N] [--clients N] [--seconds S]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(options)
}

async fn failover_trials(
    cluster: &mut ReplCluster,
    trials: usize,
) -> anyhow::Result<Vec<Duration>> {
    let client = cluster.router_client().await?;
    let coll = client.database("bench").collection::<Document>("failover");
    let pad = "f".repeat(PAYLOAD_BYTES);
    coll.insert_one(doc! {"warm": true}).await?;
    let mut times = Vec::new();
    for trial in 0..trials {
        let primary = cluster.wait_primary(Set::Shard).await?;
        // Let every member catch up so any of them may win.
        let members: Vec<usize> = (0..cluster.members(Set::Shard)).collect();
        cluster
            .converged_hash(Set::Shard, "bench", &members)
            .await?;
        cluster.kill(Set::Shard, primary);
        let killed = Instant::now();
        loop {
            anyhow::ensure!(
                killed.elapsed() < TRIAL_LIMIT,
                "trial {trial}: no insert succeeded within {TRIAL_LIMIT:?}"
            );
            if coll
                .insert_one(doc! {"trial": trial as i64, "pad": pad.clone()})
                .await
                .is_ok()
            {
                break;
            }
        }
        let took = killed.elapsed();
        println!(
            "trial {trial}: first w:majority insert {:.0} ms after SIGKILL of the primary",
            took.as_secs_f64() * 1000.0
        );
        times.push(took);
        cluster.start_member(Set::Shard, primary).await?;
        cluster.wait_secondary(Set::Shard, primary).await?;
    }
    Ok(times)
}

async fn throughput(
    cluster: &ReplCluster,
    clients: usize,
    seconds: u64,
    w: Acknowledgment,
    label: &str,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..clients {
        let client = cluster.router_client().await?;
        let concern = WriteConcern::builder().w(w.clone()).build();
        let coll = client
            .database("bench")
            .collection_with_options::<Document>(
                label,
                mongodb::options::CollectionOptions::builder()
                    .write_concern(concern)
                    .build(),
            );
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let pad = "t".repeat(PAYLOAD_BYTES);
            for seq in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if coll
                    .insert_one(doc! {"c": id as i64, "s": seq as i64, "pad": pad.clone()})
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await?;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    println!("{label}: {rate:.0} inserts/s ({clients} clients, {seconds} s, 1 KB documents)");
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let mut cluster = ReplCluster::start(1, options.members).await?;
    let majority = throughput(
        &cluster,
        options.clients,
        options.seconds,
        Acknowledgment::Majority,
        "w_majority",
    )
    .await?;
    let one = throughput(
        &cluster,
        options.clients,
        options.seconds,
        Acknowledgment::Nodes(1),
        "w_1",
    )
    .await?;
    let mut times = failover_trials(&mut cluster, options.trials).await?;
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let worst = times.last().copied().unwrap_or_default();
    println!("== summary ==");
    println!(
        "failover (SIGKILL primary -> first w:majority insert via router), {} trials: median {:.0} ms, worst {:.0} ms",
        times.len(),
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    println!(
        "inserts/s with {} clients: w:majority {majority:.0}, w:1 {one:.0}",
        options.clients
    );
    cluster.finish();
    Ok(())
}
