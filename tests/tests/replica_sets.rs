//! Replica-set features beyond failover, with real processes: the config server's primary
//! killed under metadata commands, write concerns (`w: 1`, `w: 2`, `wtimeout` with a majority
//! down), reads with `readPreference: secondary` served by a secondary, a member added with
//! `replSetReconfig` catching up from a snapshot, and a `votes: 0` member never elected.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mongodb::options::{Acknowledgment, ReadPreference, SelectionCriteria, WriteConcern};
use shoal_tests::{
    mongo::get_i64,
    replset::{ReplCluster, Set},
};

/// Retries `f` until it succeeds or `limit` passes.
async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() >= limit => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_server_failover_keeps_metadata_commands_working() -> anyhow::Result<()> {
    let mut cluster = ReplCluster::start(3, 1).await?;
    let admin = cluster.router_client().await?.database("admin");
    admin.run_command(doc! {"enableSharding": "meta"}).await?;
    admin
        .run_command(doc! {"shardCollection": "meta.a", "key": {"k": 1}})
        .await?;
    let primary = cluster.wait_primary(Set::Config).await?;
    cluster.kill(Set::Config, primary);
    let killed_at = Instant::now();
    // The router follows the election: both commands succeed once a new primary is elected.
    admin
        .run_command(doc! {"shardCollection": "meta.b", "key": {"k": 1}})
        .await?;
    admin
        .run_command(doc! {"split": "meta.b", "middle": {"k": 100}})
        .await?;
    eprintln!(
        "metadata commands succeeded {:?} after the config primary was killed",
        killed_at.elapsed()
    );
    let chunks = cluster
        .router_client()
        .await?
        .database("config")
        .collection::<Document>("chunks");
    let collection = cluster
        .router_client()
        .await?
        .database("config")
        .collection::<Document>("collections");
    let meta_b = collection
        .find_one(doc! {"_id": "meta.b"})
        .await?
        .ok_or_else(|| anyhow::anyhow!("meta.b not sharded"))?;
    let uuid = meta_b.get("uuid").cloned().unwrap_or(Bson::Null);
    assert_eq!(chunks.count_documents(doc! {"uuid": uuid}).await?, 2);
    // The killed member comes back as a secondary and catches up.
    cluster.start_member(Set::Config, primary).await?;
    cluster.wait_secondary(Set::Config, primary).await?;
    cluster
        .converged_hash(Set::Config, "config", &[0, 1, 2])
        .await?;
    cluster.finish();
    Ok(())
}

/// Reads that a secondary may answer (direct connections to a member).
fn secondary_preferred() -> SelectionCriteria {
    SelectionCriteria::ReadPreference(ReadPreference::SecondaryPreferred { options: None })
}

fn opcounter(status: &Document, field: &str) -> i64 {
    status
        .get_document("opcounters")
        .ok()
        .and_then(|o| get_i64(o, field))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_concerns_and_secondary_reads() -> anyhow::Result<()> {
    let mut cluster = ReplCluster::start(1, 3).await?;
    let client = cluster.router_client().await?;
    let coll = client.database("wc").collection::<Document>("c");
    // w: 1 and w: 2 are acknowledged.
    for (i, w) in [
        Acknowledgment::Nodes(1),
        Acknowledgment::Nodes(2),
        Acknowledgment::Majority,
    ]
    .into_iter()
    .enumerate()
    {
        let concern = WriteConcern::builder().w(w).build();
        coll.insert_one(doc! {"_id": i as i32})
            .write_concern(concern)
            .await?;
    }
    // w larger than the set is refused.
    let too_many = WriteConcern::builder().w(Acknowledgment::Nodes(5)).build();
    assert!(
        coll.insert_one(doc! {"_id": 99})
            .write_concern(too_many)
            .await
            .is_err()
    );

    // readPreference secondary: a secondary's query counter moves, the primary's does not.
    let primary = cluster.wait_primary(Set::Shard).await?;
    let mut before = Vec::new();
    for j in 0..3 {
        before.push(opcounter(
            &cluster
                .member_command(Set::Shard, j, doc! {"serverStatus": 1})
                .await?,
            "query",
        ));
    }
    let secondary = SelectionCriteria::ReadPreference(ReadPreference::Secondary { options: None });
    let found = eventually(Duration::from_secs(10), || {
        let coll = coll.clone();
        let secondary = secondary.clone();
        async move {
            let found = coll
                .find_one(doc! {"_id": 2})
                .selection_criteria(secondary)
                .await?;
            found.ok_or_else(|| anyhow::anyhow!("not replicated to the secondary yet"))
        }
    })
    .await?;
    assert_eq!(found.get_i32("_id")?, 2);
    let mut after = Vec::new();
    for j in 0..3 {
        after.push(opcounter(
            &cluster
                .member_command(Set::Shard, j, doc! {"serverStatus": 1})
                .await?,
            "query",
        ));
    }
    assert_eq!(
        after[primary], before[primary],
        "the primary served a secondary read"
    );
    assert!(
        (0..3).any(|j| j != primary && after[j] > before[j]),
        "no secondary served the read: {before:?} -> {after:?}"
    );

    // wtimeout with a majority down: writeConcernError 64, and the write itself survives.
    let others: Vec<usize> = (0..3).filter(|j| *j != primary).collect();
    for j in &others {
        cluster.signal(Set::Shard, *j, libc::SIGSTOP)?;
    }
    let direct = cluster.member_client(Set::Shard, primary).await?;
    let reply = direct
        .database("wc")
        .run_command(doc! {
            "insert": "c", "documents": [{"_id": "during-outage"}],
            "writeConcern": {"w": "majority", "wtimeout": 1000},
        })
        .await?;
    let error = reply
        .get_document("writeConcernError")
        .map_err(|_| anyhow::anyhow!("no writeConcernError in {reply}"))?;
    assert_eq!(error.get_i32("code")?, 64, "{reply}");
    assert_eq!(error.get_str("codeName")?, "WriteConcernTimeout");
    for j in &others {
        cluster.signal(Set::Shard, *j, libc::SIGCONT)?;
    }
    eventually(Duration::from_secs(30), || {
        let coll = coll.clone();
        async move {
            coll.find_one(doc! {"_id": "during-outage"})
                .await?
                .ok_or_else(|| anyhow::anyhow!("not committed yet"))
        }
    })
    .await?;
    cluster.converged_hash(Set::Shard, "wc", &[0, 1, 2]).await?;

    // A primary cut off from its majority steps down: hello says so and writes are refused.
    let cut = cluster.wait_primary(Set::Shard).await?;
    let others: Vec<usize> = (0..3).filter(|j| *j != cut).collect();
    cluster.partition(Set::Shard, cut, &others).await?;
    eventually(Duration::from_secs(15), || {
        let cluster = &cluster;
        async move {
            let hello = cluster
                .hello(Set::Shard, cut)
                .await
                .ok_or_else(|| anyhow::anyhow!("silent"))?;
            anyhow::ensure!(
                !hello.get_bool("isWritablePrimary")?,
                "still claims primary"
            );
            Ok(())
        }
    })
    .await?;
    let refused = cluster
        .member_client(Set::Shard, cut)
        .await?
        .database("wc")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": "cut-off"})
        .await;
    assert_eq!(
        refused
            .as_ref()
            .err()
            .and_then(shoal_tests::mongo::error_code),
        Some(10107),
        "{refused:?}"
    );
    cluster.heal(Set::Shard).await?;
    cluster.wait_primary(Set::Shard).await?;

    // readConcern linearizable: served by the primary after a ReadIndex round, refused by a
    // secondary.
    let linearizable = coll
        .find_one(doc! {"_id": "during-outage"})
        .read_concern(mongodb::options::ReadConcern::linearizable())
        .await?;
    assert!(linearizable.is_some());
    let primary = cluster.wait_primary(Set::Shard).await?;
    let secondary_member = (0..3).find(|j| *j != primary).unwrap_or(0);
    let on_secondary = cluster
        .member_client(Set::Shard, secondary_member)
        .await?
        .database("wc")
        .collection::<Document>("c");
    let refused = on_secondary
        .find_one(doc! {})
        .read_concern(mongodb::options::ReadConcern::linearizable())
        .selection_criteria(secondary_preferred())
        .await;
    assert_eq!(
        refused
            .as_ref()
            .err()
            .and_then(shoal_tests::mongo::error_code),
        Some(10107),
        "{refused:?}"
    );
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn added_member_catches_up_and_a_non_voter_is_never_primary() -> anyhow::Result<()> {
    // Snapshots every 100 entries, so the added member needs one (the log before it is gone).
    let mut cluster = ReplCluster::start_with(1, 4, &["--snapshot-entries", "100"]).await?;
    let client = cluster.router_client().await?;
    let coll = client.database("grow").collection::<Document>("c");
    for i in 0..400 {
        coll.insert_one(doc! {"_id": i, "pad": "y".repeat(200)})
            .await?;
    }
    // Member 3 was started with the others but is not in the set (the set was initiated with
    // all four; remove it first, then add it back as a non-voter).
    let primary = cluster.wait_primary(Set::Shard).await?;
    let config = cluster
        .member_command(Set::Shard, primary, doc! {"replSetGetConfig": 1})
        .await?;
    let mut config = config.get_document("config")?.clone();
    let members: Vec<Bson> = config.get_array("members")?.clone();
    let new_host = cluster.host(Set::Shard, 3);
    let (kept, removed): (Vec<Bson>, Vec<Bson>) = members.into_iter().partition(|m| {
        m.as_document().and_then(|m| m.get_str("host").ok()) != Some(new_host.as_str())
    });
    assert_eq!(removed.len(), 1);
    config.insert("members", kept.clone());
    if primary == 3 {
        anyhow::bail!("the member to remove became primary; the test needs it to be a secondary");
    }
    cluster
        .member_command(
            Set::Shard,
            primary,
            doc! {"replSetReconfig": config.clone()},
        )
        .await?;
    // A removed member stops serving.
    let refused = cluster
        .member_client(Set::Shard, 3)
        .await?
        .database("grow")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .selection_criteria(secondary_preferred())
        .await;
    let code = refused
        .as_ref()
        .err()
        .and_then(shoal_tests::mongo::error_code);
    assert_eq!(code, Some(13436), "a removed member answered: {refused:?}");
    for i in 400..600 {
        coll.insert_one(doc! {"_id": i}).await?;
    }
    // rs.add({host, votes: 0, priority: 0}).
    let mut members = kept;
    members.push(Bson::Document(
        doc! {"_id": 3, "host": new_host.clone(), "votes": 0, "priority": 0},
    ));
    config.insert("members", members);
    cluster
        .member_command(Set::Shard, primary, doc! {"replSetReconfig": config})
        .await?;
    let status = cluster
        .member_command(Set::Shard, primary, doc! {"replSetGetStatus": 1})
        .await?;
    assert_eq!(status.get_array("members")?.len(), 4, "{status}");
    cluster
        .converged_hash(Set::Shard, "grow", &[0, 1, 2, 3])
        .await?;
    let count = cluster
        .member_client(Set::Shard, 3)
        .await?
        .database("grow")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .selection_criteria(secondary_preferred())
        .await?;
    assert_eq!(count, 600);
    assert!(
        cluster.log_contains(Set::Shard, 3, "installed snapshot"),
        "the new member caught up without a snapshot"
    );

    // Kill the primary twice; the non-voter is never elected.
    for _ in 0..2 {
        let primary = cluster.wait_primary(Set::Shard).await?;
        cluster.kill(Set::Shard, primary);
        let elected = cluster
            .wait_primary_other_than(Set::Shard, Some(primary))
            .await?;
        assert_ne!(elected, 3, "the votes: 0 member became primary");
        let hello = cluster
            .hello(Set::Shard, 3)
            .await
            .ok_or_else(|| anyhow::anyhow!("member 3 silent"))?;
        assert!(!hello.get_bool("isWritablePrimary")?);
        cluster.start_member(Set::Shard, primary).await?;
        cluster.wait_secondary(Set::Shard, primary).await?;
    }
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_down_priority_takeover_and_delayed_member() -> anyhow::Result<()> {
    let cluster = ReplCluster::start(1, 4).await?;
    let client = cluster.router_client().await?;
    let coll = client.database("prio").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await?;

    // replSetStepDown hands the primary role to another member.
    let first = cluster.wait_primary(Set::Shard).await?;
    cluster
        .member_command(Set::Shard, first, doc! {"replSetStepDown": 60})
        .await?;
    let second = cluster
        .wait_primary_other_than(Set::Shard, Some(first))
        .await?;
    assert_ne!(first, second);
    coll.insert_one(doc! {"_id": 1}).await?;

    // Give `first` priority 2 and make member `delayed` a hidden, delayed non-voter: the
    // supervisor hands the primary role back to `first`.
    let delayed = (0..4).find(|j| *j != first && *j != second).unwrap_or(3);
    let reply = cluster
        .member_command(Set::Shard, second, doc! {"replSetGetConfig": 1})
        .await?;
    let mut config = reply.get_document("config")?.clone();
    let first_host = cluster.host(Set::Shard, first);
    let delayed_host = cluster.host(Set::Shard, delayed);
    let members: Vec<Bson> = config
        .get_array("members")?
        .iter()
        .filter_map(|m| m.as_document().cloned())
        .map(|mut m| {
            let host = m.get_str("host").unwrap_or("").to_owned();
            if host == first_host {
                m.insert("priority", 2.0);
            }
            if host == delayed_host {
                m.insert("priority", 0.0);
                m.insert("votes", 0);
                m.insert("hidden", true);
                m.insert("secondaryDelaySecs", 3);
            }
            Bson::Document(m)
        })
        .collect();
    config.insert("members", members);
    cluster
        .member_command(Set::Shard, second, doc! {"replSetReconfig": config})
        .await?;
    let started = Instant::now();
    eventually(Duration::from_secs(20), || {
        let cluster = &cluster;
        async move {
            match cluster.current_primary(Set::Shard).await {
                Some(j) if j == first => Ok(()),
                other => anyhow::bail!("primary is {other:?}, not the priority-2 member {first}"),
            }
        }
    })
    .await?;
    eprintln!("priority takeover after {:?}", started.elapsed());

    // The delayed member applies a write about three seconds late.
    coll.insert_one(doc! {"_id": "late"}).await?;
    let written = Instant::now();
    let on_delayed = cluster
        .member_client(Set::Shard, delayed)
        .await?
        .database("prio")
        .collection::<Document>("c");
    let secondary = secondary_preferred();
    let early = on_delayed
        .find_one(doc! {"_id": "late"})
        .selection_criteria(secondary.clone())
        .await?;
    assert!(early.is_none(), "the delayed member applied at once");
    eventually(Duration::from_secs(20), || {
        let on_delayed = on_delayed.clone();
        let secondary = secondary.clone();
        async move {
            on_delayed
                .find_one(doc! {"_id": "late"})
                .selection_criteria(secondary)
                .await?
                .ok_or_else(|| anyhow::anyhow!("not applied yet"))
        }
    })
    .await?;
    let lag = written.elapsed();
    assert!(
        lag >= Duration::from_secs(2),
        "applied after {lag:?}, before its delay"
    );
    eprintln!("the delayed member applied the write after {lag:?}");
    let hello = cluster
        .hello(Set::Shard, delayed)
        .await
        .ok_or_else(|| anyhow::anyhow!("delayed member silent"))?;
    assert!(hello.get_bool("hidden")?);
    cluster.finish();
    Ok(())
}
