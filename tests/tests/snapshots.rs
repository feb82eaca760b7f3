//! Raft snapshots of a data set larger than one message (the in-memory snapshots this replaced
//! stopped at 56 MiB, and a set past that could neither catch a member up nor restart once its
//! log was purged): a 3-member shard set holding about 140 MB, snapshotting every 100 entries,
//! streams its snapshot to a member that fell behind the purged log, and every member restarts after its
//! log was purged behind a snapshot.
//!
//! The member that needs the snapshot was partitioned away while the others wrote and purged
//! their logs (wiping a member's data instead would undo votes and acknowledgements it gave,
//! which Raft cannot tolerate; a wiped member rejoins with `rs.remove`/`rs.add`, see
//! `forced_reconfig.rs`).

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::options::{ReadPreference, SelectionCriteria};
use shoal_tests::replset::{ReplCluster, Set};

const DB: &str = "big";
/// Documents of [`PAD_BYTES`] each: about 140 MB in all, so snapshots pass 100 MB.
const DOCS: i64 = 140_000;
const PAD_BYTES: usize = 1_000;
/// Documents per insert (one log entry each): 280 entries, past two snapshot thresholds.
const BATCH_DOCS: i64 = 500;
/// How long the lagging member may take to receive and install the snapshot and catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(240);

fn secondary_preferred() -> SelectionCriteria {
    SelectionCriteria::ReadPreference(ReadPreference::SecondaryPreferred { options: None })
}

/// Member `j`'s own count of the collection, once it equals `expected` (bounded by `limit`).
async fn wait_member_count(
    cluster: &ReplCluster,
    j: usize,
    expected: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        let counted = cluster
            .member_client(Set::Shard, j)
            .await?
            .database(DB)
            .collection::<Document>("c")
            .count_documents(doc! {})
            .selection_criteria(secondary_preferred())
            .await;
        match counted {
            Ok(n) if n == expected => return Ok(()),
            Ok(n) => last = format!("{n} documents"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("member {j} did not reach {expected} documents within {limit:?}: {last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_set_streams_its_snapshot_and_restarts_after_purging_its_log() -> anyhow::Result<()>
{
    let mut cluster = ReplCluster::start_with(1, 3, &["--snapshot-entries", "100"]).await?;
    let router = cluster.router_client().await?;
    let coll = router.database(DB).collection::<Document>("c");
    coll.insert_one(doc! {"_id": -1}).await?;
    // A secondary is cut off before the load: when it comes back, the others' logs no longer
    // reach back to where it stopped, so only a snapshot can bring it up to date.
    let primary = cluster.wait_primary(Set::Shard).await?;
    let lagging = (primary + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|j| *j != lagging).collect();
    cluster.partition(Set::Shard, lagging, &others).await?;
    let built_before = cluster.log_counts(Set::Shard, "built snapshot");
    let pad = "p".repeat(PAD_BYTES);
    for first in (0..DOCS).step_by(BATCH_DOCS as usize) {
        let batch: Vec<Document> = (first..DOCS.min(first + BATCH_DOCS))
            .map(|id| doc! {"_id": id, "pad": &pad})
            .collect();
        coll.insert_many(batch).await?;
    }
    cluster
        .wait_log(
            Set::Shard,
            "built snapshot",
            &built_before,
            Duration::from_secs(60),
        )
        .await?;
    let installed_before = cluster.log_count(Set::Shard, lagging, "installed snapshot");
    cluster.heal(Set::Shard).await?;
    wait_member_count(&cluster, lagging, DOCS as u64 + 1, CATCH_UP_WAIT).await?;
    anyhow::ensure!(
        cluster.log_count(Set::Shard, lagging, "installed snapshot") > installed_before,
        "the lagging member caught up without installing a snapshot"
    );
    for line in cluster.log_lines(Set::Shard, lagging, "installed snapshot") {
        println!("{line}");
    }
    let hash = cluster.converged_hash(Set::Shard, DB, &[0, 1, 2]).await?;
    println!("member {lagging} caught up from a streamed snapshot; dbHash {hash}");

    // Every member restarts with its log purged behind a snapshot, and the set serves writes.
    cluster.restart_set(Set::Shard).await?;
    coll.insert_one(doc! {"_id": DOCS, "pad": "last"}).await?;
    for j in 0..3 {
        wait_member_count(&cluster, j, DOCS as u64 + 2, CATCH_UP_WAIT).await?;
    }
    cluster.converged_hash(Set::Shard, DB, &[0, 1, 2]).await?;
    cluster.finish();
    Ok(())
}
