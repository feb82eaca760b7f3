//! The forced-reconfiguration runbook of `docs/disaster-recovery.md`, run against real
//! processes: a 3-member shard set loses two members to SIGKILL; `rs.reconfig(cfg, {force:
//! true})` in `shoal shell` on the survivor makes it primary of a new incarnation of the set,
//! which serves writes through the router and directly with every earlier document kept. A lost
//! member restarted with its old data does not disturb it (it learns it was left out), and a
//! wiped member rejoins with `rs.add`. While a majority is up, forcing is refused.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::{
    Client, Collection,
    options::{ReadPreference, SelectionCriteria, WriteConcern},
};
use shoal_tests::{
    mongo::{error_code, get_i64},
    replset::{ReplCluster, SHARD_SET, Set},
    up::shell_eval_on_port,
};

const DB: &str = "dr";
const COLLECTION: &str = "docs";
/// Documents written with `w: "majority"` before the site is lost.
const DOCS_BEFORE: i64 = 200;
/// Documents written through the router after the forced reconfiguration.
const DOCS_ROUTER_AFTER: i64 = 50;
/// Documents written on the survivor directly.
const DOCS_DIRECT_AFTER: i64 = 10;
/// Documents written through the router while a left-out member is back.
const DOCS_WITH_OLD_MEMBER: i64 = 10;
/// How long a step of the runbook may take (a write finding the new primary, a left-out
/// member learning it was left out, a re-added member catching up).
const STEP_WAIT: Duration = Duration::from_secs(30);
/// How long the survivor must stay primary, unchanged, while a left-out member runs.
const UNDISTURBED_FOR: Duration = Duration::from_secs(3);
/// MongoDB's NewReplicaSetConfigurationIncompatible.
const CODE_INCOMPATIBLE: i32 = 103;
/// MongoDB's InvalidReplicaSetConfig.
const CODE_INVALID_CONFIG: i32 = 93;
/// `myState` of a member that is not in the configuration.
const STATE_REMOVED: i32 = 10;
/// `state` of an unreachable member.
const STATE_DOWN: i64 = 8;
/// `state` of the primary.
const STATE_PRIMARY: i64 = 1;

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

/// Inserts `_id: id` with `w: "majority"`, retrying until `STEP_WAIT`; a duplicate key means an
/// earlier attempt whose answer was lost went through.
async fn insert(documents: &Collection<Document>, id: i64, phase: &str) -> anyhow::Result<()> {
    eventually(STEP_WAIT, || async {
        let inserted = documents
            .insert_one(doc! {"_id": id, "phase": phase})
            .write_concern(WriteConcern::majority())
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(error) if error_code(&error) == Some(11000) => Ok(()),
            Err(error) => Err(error.into()),
        }
    })
    .await
}

/// The forced configuration for member `j`: that member alone.
fn only(cluster: &ReplCluster, j: usize) -> Document {
    doc! {
        "_id": SHARD_SET,
        "version": 100,
        "members": [{"_id": j as i32, "host": cluster.host(Set::Shard, j)}],
    }
}

/// `replSetReconfig` with `force: true` on member `j`; the server's error code on failure.
async fn force_on(cluster: &ReplCluster, j: usize, config: Document) -> Result<Document, i32> {
    let client = cluster.member_client(Set::Shard, j).await.map_err(|_| -1)?;
    client
        .database("admin")
        .run_command(doc! {"replSetReconfig": config, "force": true})
        .await
        .map_err(|error| error_code(&error).unwrap_or(-1))
}

async fn count(client: &Client, criteria: Option<SelectionCriteria>) -> anyhow::Result<u64> {
    let documents = client.database(DB).collection::<Document>(COLLECTION);
    let counted = match criteria {
        Some(criteria) => {
            documents
                .count_documents(doc! {})
                .selection_criteria(criteria)
                .await?
        }
        None => documents.count_documents(doc! {}).await?,
    };
    Ok(counted)
}

/// `electionId` of member `j` while it is primary.
async fn election_id(cluster: &ReplCluster, j: usize) -> Option<bson::oid::ObjectId> {
    let hello = cluster.hello(Set::Shard, j).await?;
    if hello.get_bool("isWritablePrimary") != Ok(true) {
        return None;
    }
    hello.get_object_id("electionId").ok()
}

/// The data directory of shard member `j`, from the survivor's command line (`--dir
/// ROOT/data/shard0-0`).
async fn data_dir(cluster: &ReplCluster, j: usize) -> anyhow::Result<std::path::PathBuf> {
    let options = cluster
        .member_command(Set::Shard, 0, doc! {"getCmdLineOpts": 1})
        .await?;
    let argv: Vec<&str> = options
        .get_array("argv")?
        .iter()
        .filter_map(|arg| arg.as_str())
        .collect();
    let dir = argv
        .windows(2)
        .find(|pair| pair[0] == "--dir")
        .map(|pair| std::path::PathBuf::from(pair[1]))
        .ok_or_else(|| anyhow::anyhow!("no --dir in {argv:?}"))?;
    let parent = dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent", dir.display()))?;
    Ok(parent.join(format!("shard0-{j}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_reconfiguration_makes_the_survivor_primary() -> anyhow::Result<()> {
    let mut cluster = ReplCluster::start(1, 3).await?;
    let router = cluster.router_client().await?;
    let documents = router.database(DB).collection::<Document>(COLLECTION);
    let before: Vec<Document> = (0..DOCS_BEFORE)
        .map(|id| doc! {"_id": id, "phase": "before"})
        .collect();
    documents
        .insert_many(before)
        .write_concern(WriteConcern::majority())
        .await?;
    // Every member holds every document, so the survivor loses none of them.
    cluster.converged_hash(Set::Shard, DB, &[0, 1, 2]).await?;

    // With every member up, forcing is refused on any member: a normal reconfig keeps all writes.
    for j in 0..3 {
        let refused = force_on(&cluster, j, only(&cluster, j)).await;
        assert_eq!(refused.err(), Some(CODE_INCOMPATIBLE), "member {j}");
    }
    let mut with_other = only(&cluster, 0);
    with_other.insert(
        "members",
        vec![
            doc! {"_id": 0, "host": cluster.host(Set::Shard, 0)},
            doc! {"_id": 1, "host": cluster.host(Set::Shard, 1)},
        ],
    );
    let refused = force_on(&cluster, 0, with_other).await;
    assert_eq!(refused.err(), Some(CODE_INVALID_CONFIG));

    // The primary site is lost.
    cluster.kill(Set::Shard, 1);
    cluster.kill(Set::Shard, 2);
    let lost_at = Instant::now();
    // Step 1 of the runbook: once the survivor notices (a former primary stops serving
    // within its majority lease), its status shows the lost members down and no primary.
    eventually(STEP_WAIT, || async {
        let status = cluster
            .member_command(Set::Shard, 0, doc! {"replSetGetStatus": 1})
            .await?;
        let states: Vec<(i64, f64)> = status
            .get_array("members")?
            .iter()
            .filter_map(|member| member.as_document())
            .map(|member| {
                let state = get_i64(member, "state").unwrap_or(-1);
                (state, member.get_f64("health").unwrap_or(-1.0))
            })
            .collect();
        let down = states
            .iter()
            .filter(|(state, health)| *state == STATE_DOWN && *health == 0.0)
            .count();
        anyhow::ensure!(down == 2, "{status}");
        anyhow::ensure!(
            states.iter().all(|(state, _)| *state != STATE_PRIMARY),
            "{status}"
        );
        Ok(())
    })
    .await?;
    let survivor = cluster.host(Set::Shard, 0);
    let script = format!(
        "rs.reconfig({{_id: '{SHARD_SET}', members: [{{_id: 0, host: '{survivor}'}}]}}, {{force: true}})"
    );
    let forced_at = Instant::now();
    let output = shell_eval_on_port(cluster.port(Set::Shard, 0), &script).await?;
    assert!(output.status.success(), "{output:?}");
    let primary = cluster.wait_primary(Set::Shard).await?;
    assert_eq!(primary, 0);
    eprintln!(
        "the survivor is primary {:?} after the loss, {:?} after the forced reconfiguration started",
        lost_at.elapsed(),
        forced_at.elapsed()
    );
    let config = cluster
        .member_command(Set::Shard, 0, doc! {"replSetGetConfig": 1})
        .await?;
    assert_eq!(
        config.get_document("config")?.get_array("members")?.len(),
        1
    );

    // Writes through the router (which finds the new primary among the shard's hosts) and
    // directly on the survivor; every earlier document is still there.
    for id in DOCS_BEFORE..DOCS_BEFORE + DOCS_ROUTER_AFTER {
        insert(&documents, id, "router after").await?;
    }
    eprintln!("router writes work {:?} after the loss", lost_at.elapsed());
    let direct = cluster.member_client(Set::Shard, 0).await?;
    let direct_documents = direct.database(DB).collection::<Document>(COLLECTION);
    let first_direct = DOCS_BEFORE + DOCS_ROUTER_AFTER;
    for id in first_direct..first_direct + DOCS_DIRECT_AFTER {
        insert(&direct_documents, id, "direct after").await?;
    }
    let total = DOCS_BEFORE + DOCS_ROUTER_AFTER + DOCS_DIRECT_AFTER;
    assert_eq!(count(&router, None).await?, total as u64);
    assert_eq!(count(&direct, None).await?, total as u64);
    let kept = documents.count_documents(doc! {"phase": "before"}).await?;
    assert_eq!(kept, DOCS_BEFORE as u64);

    // A lost member comes back with its old data: it learns it was left out and stays out.
    let election = election_id(&cluster, 0)
        .await
        .ok_or_else(|| anyhow::anyhow!("the survivor is not primary"))?;
    cluster.start_member(Set::Shard, 1).await?;
    eventually(STEP_WAIT, || async {
        let status = cluster
            .member_command(Set::Shard, 1, doc! {"replSetGetStatus": 1})
            .await?;
        let state = get_i64(&status, "myState").unwrap_or(-1);
        anyhow::ensure!(
            state == i64::from(STATE_REMOVED),
            "member 1 status {status}"
        );
        Ok(())
    })
    .await?;
    let watched = Instant::now();
    while watched.elapsed() < UNDISTURBED_FOR {
        assert_eq!(election_id(&cluster, 0).await, Some(election));
        let old = cluster
            .hello(Set::Shard, 1)
            .await
            .ok_or_else(|| anyhow::anyhow!("member 1 does not answer hello"))?;
        assert_eq!(old.get_bool("isWritablePrimary"), Ok(false), "{old}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_late = total;
    for id in first_late..first_late + DOCS_WITH_OLD_MEMBER {
        insert(&documents, id, "old member back").await?;
    }
    let total = total + DOCS_WITH_OLD_MEMBER;
    assert_eq!(count(&router, None).await?, total as u64);
    assert_eq!(election_id(&cluster, 0).await, Some(election));
    assert!(cluster.log_contains(
        Set::Shard,
        0,
        "refused raft messages from another incarnation"
    ));
    assert!(cluster.log_contains(Set::Shard, 1, "left this member out"));

    // The other lost member rejoins wiped, with rs.add, and catches up from a snapshot.
    let wiped = data_dir(&cluster, 2).await?;
    std::fs::remove_dir_all(&wiped)?;
    cluster.start_member(Set::Shard, 2).await?;
    let add = format!("rs.add('{}')", cluster.host(Set::Shard, 2));
    let output = shell_eval_on_port(cluster.port(Set::Shard, 0), &add).await?;
    assert!(output.status.success(), "{output:?}");
    cluster.wait_secondary(Set::Shard, 2).await?;
    cluster.converged_hash(Set::Shard, DB, &[0, 2]).await?;
    let rejoined = cluster.member_client(Set::Shard, 2).await?;
    let secondary =
        SelectionCriteria::ReadPreference(ReadPreference::SecondaryPreferred { options: None });
    assert_eq!(count(&rejoined, Some(secondary)).await?, total as u64);
    assert_eq!(election_id(&cluster, 0).await, Some(election));
    cluster.finish();
    Ok(())
}
