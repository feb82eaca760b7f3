//! `shoal backup create`: finds every replica set of the cluster through the router (the shards
//! in `config.shards`, the config server from the router's `--configdb`), asks one member of
//! each (a secondary when there is one) for a checkpoint (`_shoalCheckpoint`), stores the
//! checkpoints' files as objects and writes the manifest.
//!
//! The checkpoints are requested together, then copied one set at a time. By default each member
//! writes its checkpoint next to its data (hard links, almost free) and this command reads the
//! files from there, which works when it runs on the members' machine (a local cluster, the
//! tests). With members on other machines, `--checkpoint-dir` must name a directory shared by
//! them and this machine; otherwise the files would need a copy protocol, which Shoal does not
//! have yet.
//!
//! The checkpoints are of one set each, taken one after another, so no instant is in all of
//! them. Once they are all taken the command notes the time (`consistentAtMillis`) and copies
//! every set's oplog from its checkpoint to past that time into the store's oplog archive (one
//! round of `shoal backup archive`). A restore into a new cluster (`--host`) replays each set to
//! that same time: every shard and the config server at one cluster-wide point, without
//! stopping writes or the balancer.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bson::{Bson, Document, doc};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt as _;
use mongodb::Client;

use super::{
    archive::{SetArchive, archive_set},
    checksum::{CollectionChecksum, checkpoint_checksums},
    manifest::{
        FileEntry, MANIFEST_FORMAT, Manifest, SETS_MAX, SetBackup, SetRole, is_plain_name,
        object_name,
    },
    progress::{Reporter, megabytes},
    store::Store,
};
use crate::backup::connect;

/// How long one member may take to make its checkpoint (a flush and hard links: seconds).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);
/// Archive rounds (each up to `archive::PAGES_PER_ROUND_MAX` pages) one set may take to reach
/// the backup's consistent point.
const CONSISTENT_ARCHIVE_ROUNDS_MAX: usize = 1000;
/// Failed archive rounds one set may have (a failover) before the backup fails.
const CONSISTENT_ARCHIVE_FAILURES_MAX: usize = 20;
/// The wait after a failed archive round.
const CONSISTENT_ARCHIVE_RETRY_WAIT: Duration = Duration::from_millis(500);
/// Members of one set probed with `hello` to find a secondary.
const MEMBERS_PROBED_MAX: usize = 50;
/// How long the driver looks for a member before giving up on it.
const MEMBER_SELECTION_TIMEOUT_MS: u64 = 5000;
/// A file RocksDB writes into every database; its presence marks a directory as a checkpoint
/// this command may delete.
const ROCKSDB_CURRENT_FILE: &str = "CURRENT";

/// What `shoal backup create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Connection string of the router.
    pub uri: String,
    /// The store directory (created if missing).
    pub store: PathBuf,
    /// The config server's `NAME/HOST:PORT,...` when the router's command line does not say.
    pub config: Option<String>,
    /// A directory, shared with the members, to write the checkpoints into.
    pub checkpoint_dir: Option<PathBuf>,
}

/// What a backup stored.
#[derive(Debug, Clone)]
pub struct CreateSummary {
    /// The backup id.
    pub id: String,
    /// Replica sets backed up.
    pub sets: usize,
    /// Files referenced.
    pub files: usize,
    /// Bytes added to the store.
    pub bytes_copied: u64,
    /// Bytes of all files.
    pub bytes_referenced: u64,
    /// Time from start to manifest.
    pub elapsed: Duration,
}

/// A replica set to back up.
#[derive(Debug, Clone)]
pub(super) struct SetTarget {
    pub(super) name: String,
    pub(super) role: SetRole,
    pub(super) shard: Option<String>,
    pub(super) seeds: Vec<String>,
}

/// What a member answered to `_shoalCheckpoint`.
#[derive(Debug, Clone)]
struct CheckpointReply {
    dir: PathBuf,
    db_subdir: String,
    applied_index: u64,
    applied_term: u64,
    applied_time_millis: i64,
    applied_time_exact: bool,
    files: Vec<(String, u64)>,
}

/// A checkpoint made on a member of a set.
#[derive(Debug, Clone)]
struct Taken {
    target: SetTarget,
    member: String,
    member_state: &'static str,
    checkpoint: CheckpointReply,
}

/// Runs `shoal backup create`; see the module documentation.
pub async fn run(options: &CreateOptions, reporter: Reporter) -> anyhow::Result<CreateSummary> {
    let started = Instant::now();
    let store = Store::create(&options.store)?;
    let client = connect(&options.uri, "shoal backup").await?;
    let cluster_id = cluster_id(&client).await?;
    let targets = set_targets(&client, options.config.as_deref()).await?;
    let created = Utc::now();
    let id = created.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    store.reserve_backup(&id)?;
    let header = Manifest {
        format: MANIFEST_FORMAT,
        id: id.clone(),
        created: rfc3339(created),
        created_millis: created.timestamp_millis(),
        completed: String::new(),
        cluster_id,
        bytes_copied: 0,
        bytes_referenced: 0,
        consistent_at_millis: None,
        sets: Vec::new(),
    };
    let result = back_up(&store, header, targets, options, reporter).await;
    match result {
        Ok(manifest) => Ok(CreateSummary {
            id,
            sets: manifest.sets.len(),
            files: manifest.files().count(),
            bytes_copied: manifest.bytes_copied,
            bytes_referenced: manifest.bytes_referenced,
            elapsed: started.elapsed(),
        }),
        Err(error) => {
            store.abandon_backup(&id);
            Err(error)
        }
    }
}

/// Takes every set's checkpoint, stores them and writes the manifest.
async fn back_up(
    store: &Store,
    mut manifest: Manifest,
    targets: Vec<SetTarget>,
    options: &CreateOptions,
    reporter: Reporter,
) -> anyhow::Result<Manifest> {
    let taken = take_checkpoints(
        targets.clone(),
        &manifest.id,
        options.checkpoint_dir.as_deref(),
    )
    .await?;
    let dirs: Vec<PathBuf> = taken.iter().map(|one| one.checkpoint.dir.clone()).collect();
    // After every checkpoint: the point all sets are brought to at restore.
    let consistent_at = Utc::now().timestamp_millis();
    if let Err(error) = archive_past(store, &manifest.cluster_id, &targets, consistent_at).await {
        dirs.iter().for_each(|dir| remove_checkpoint(dir));
        return Err(error);
    }
    manifest.consistent_at_millis = Some(consistent_at);
    for (index, one) in taken.into_iter().enumerate() {
        let store = store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let result = store_set(&store, &one, reporter);
            remove_checkpoint(&one.checkpoint.dir);
            result
        })
        .await
        .map_err(|error| anyhow::anyhow!("the copy task failed: {error}"))
        .and_then(|result| result);
        match stored {
            Ok((set, copied)) => {
                manifest.bytes_copied += copied;
                manifest.bytes_referenced += set.bytes();
                manifest.sets.push(set);
            }
            Err(error) => {
                dirs[index + 1..]
                    .iter()
                    .for_each(|dir| remove_checkpoint(dir));
                return Err(error);
            }
        }
    }
    manifest.completed = rfc3339(Utc::now());
    store.write_manifest(&manifest)?;
    Ok(manifest)
}

/// Archives every set's oplog until the archive is complete past `time` (bounded by
/// [`CONSISTENT_ARCHIVE_ROUNDS_MAX`] rounds per set).
async fn archive_past(
    store: &Store,
    cluster: &str,
    targets: &[SetTarget],
    time: i64,
) -> anyhow::Result<()> {
    let mut members = std::collections::HashMap::new();
    for target in targets {
        let archive = SetArchive::new(store, cluster, &target.name);
        let (mut rounds, mut failures) = (0, 0);
        while archive.progress()?.as_of_millis < time {
            anyhow::ensure!(
                rounds < CONSISTENT_ARCHIVE_ROUNDS_MAX,
                "the oplog of set {} could not be archived past the backup's point in \
                 {CONSISTENT_ARCHIVE_ROUNDS_MAX} rounds",
                target.name
            );
            rounds += 1;
            if let Err(error) = archive_set(store, &archive, target, &mut members).await {
                // An election in progress: the next round finds the new primary.
                failures += 1;
                if failures >= CONSISTENT_ARCHIVE_FAILURES_MAX {
                    return Err(error)
                        .with_context(|| format!("archiving the oplog of set {}", target.name));
                }
                members.clear();
                tokio::time::sleep(CONSISTENT_ARCHIVE_RETRY_WAIT).await;
            }
        }
    }
    Ok(())
}

/// Asks every set for its checkpoint at once; on any failure removes those made and fails.
async fn take_checkpoints(
    targets: Vec<SetTarget>,
    id: &str,
    shared_dir: Option<&Path>,
) -> anyhow::Result<Vec<Taken>> {
    let requests = targets.into_iter().map(|target| {
        let dir = shared_dir.map(|shared| shared.join(id).join(&target.name));
        async move {
            let name = target.name.clone();
            take_checkpoint(target, dir)
                .await
                .with_context(|| format!("cannot take a checkpoint of set {name}"))
        }
    });
    let results = futures::future::join_all(requests).await;
    let mut taken = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(one) => taken.push(one),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        taken
            .iter()
            .for_each(|one| remove_checkpoint(&one.checkpoint.dir));
        return Err(error);
    }
    Ok(taken)
}

/// Chooses a member of `target` and asks it for a checkpoint (into `dir` if given).
async fn take_checkpoint(target: SetTarget, dir: Option<PathBuf>) -> anyhow::Result<Taken> {
    let (member, member_state) = choose_member(&target).await?;
    let client = direct_client(&member).await?;
    let mut command = doc! {"_shoalCheckpoint": 1};
    if let Some(dir) = &dir {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        command.insert("dir", dir.display().to_string());
    }
    let reply = tokio::time::timeout(
        CHECKPOINT_TIMEOUT,
        client.database("admin").run_command(command),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{member} made no checkpoint within {CHECKPOINT_TIMEOUT:?}"))?
    .with_context(|| format!("_shoalCheckpoint on {member} failed"))?;
    let checkpoint = parse_checkpoint_reply(&reply)
        .with_context(|| format!("{member} answered _shoalCheckpoint with {reply}"))?;
    Ok(Taken {
        target,
        member,
        member_state,
        checkpoint,
    })
}

/// Copies one set's checkpoint into the store; returns its manifest entry and the bytes copied.
fn store_set(store: &Store, taken: &Taken, reporter: Reporter) -> anyhow::Result<(SetBackup, u64)> {
    let checkpoint = &taken.checkpoint;
    anyhow::ensure!(
        checkpoint.dir.is_dir(),
        "set {}: the checkpoint {} that {} wrote is not readable from here; run the backup on \
         the members' machine, or pass --checkpoint-dir naming a directory they share with it",
        taken.target.name,
        checkpoint.dir.display(),
        taken.member
    );
    let total = checkpoint.files.iter().map(|(_, size)| size).sum();
    let mut progress = reporter.start("stored", &taken.target.name, total);
    let mut files = Vec::new();
    let mut copied = 0u64;
    for (name, size) in &checkpoint.files {
        let source = checkpoint.dir.join(name);
        let stored = match store.put_file(&source, *size, &mut progress) {
            Ok(stored) => stored,
            Err(error) => {
                progress.abandon();
                return Err(error.context(format!("set {}", taken.target.name)));
            }
        };
        if stored.copied {
            copied += stored.size;
        }
        files.push(FileEntry {
            path: format!("{}/{name}", checkpoint.db_subdir),
            size: stored.size,
            object: object_name(&stored.sha256),
            sha256: stored.sha256,
        });
    }
    let checksumming = Instant::now();
    let collections = collection_checksums(taken);
    let documents: u64 = collections.iter().flatten().map(|c| c.documents).sum();
    progress.finish(&format!(
        " from {} ({}), {} new; {documents} documents checksummed in {:.1} s",
        taken.member,
        taken.member_state,
        megabytes(copied),
        checksumming.elapsed().as_secs_f64()
    ));
    Ok((set_entry(taken, files, collections), copied))
}

/// The set's collection checksums, read from its checkpoint. A backup is worth more than its
/// checksums: when they cannot be computed (a document that does not decode, say), the backup
/// goes on without them and `verify --restore` will say so.
fn collection_checksums(taken: &Taken) -> Option<Vec<CollectionChecksum>> {
    match checkpoint_checksums(&taken.checkpoint.dir) {
        Ok(collections) => Some(collections),
        Err(error) => {
            tracing::warn!(set = %taken.target.name, error = %format!("{error:#}"),
                "cannot compute the collection checksums; the backup records none for this set");
            None
        }
    }
}

/// The manifest entry of a stored set.
fn set_entry(
    taken: &Taken,
    files: Vec<FileEntry>,
    collections: Option<Vec<CollectionChecksum>>,
) -> SetBackup {
    let checkpoint = &taken.checkpoint;
    let applied_time = DateTime::from_timestamp_millis(checkpoint.applied_time_millis)
        .map(rfc3339)
        .unwrap_or_default();
    SetBackup {
        name: taken.target.name.clone(),
        role: taken.target.role,
        shard: taken.target.shard.clone(),
        member: taken.member.clone(),
        member_state: taken.member_state.to_owned(),
        applied_index: checkpoint.applied_index,
        applied_term: checkpoint.applied_term,
        applied_time,
        applied_time_millis: checkpoint.applied_time_millis,
        applied_time_exact: checkpoint.applied_time_exact,
        files,
        collections,
    }
}

/// Deletes a checkpoint directory once copied (only if it looks like a RocksDB database, so a
/// strange reply cannot make this delete anything else).
fn remove_checkpoint(dir: &Path) {
    if !dir.join(ROCKSDB_CURRENT_FILE).is_file() {
        return;
    }
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove a checkpoint; remove it by hand");
    }
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `config.version`'s `clusterId`, as hex.
pub(super) async fn cluster_id(client: &Client) -> anyhow::Result<String> {
    let version = client
        .database("config")
        .collection::<Document>("version")
        .find_one(doc! {})
        .await
        .context("cannot read config.version through the router")?
        .context("config.version is empty: is the config server initialized?")?;
    match version.get("clusterId") {
        Some(Bson::ObjectId(id)) => Ok(id.to_hex()),
        Some(Bson::String(id)) => Ok(id.clone()),
        _ => anyhow::bail!("config.version has no clusterId: {version}"),
    }
}

/// The config server's set and every shard's set, the config server first.
pub(super) async fn set_targets(
    client: &Client,
    config: Option<&str>,
) -> anyhow::Result<Vec<SetTarget>> {
    let configdb = match config {
        Some(config) => config.to_owned(),
        None => {
            let opts = client
                .database("admin")
                .run_command(doc! {"getCmdLineOpts": 1})
                .await
                .context("getCmdLineOpts on the router failed")?;
            configdb_from_cmd_line(&opts).context(
                "the router's command line does not name the config server; pass \
                 --config NAME/HOST:PORT,...",
            )?
        }
    };
    let (name, seeds) = parse_set_hosts(&configdb)?;
    let mut targets = vec![SetTarget {
        name,
        role: SetRole::Config,
        shard: None,
        seeds,
    }];
    let shards: Vec<Document> = client
        .database("config")
        .collection::<Document>("shards")
        .find(doc! {})
        .await
        .context("cannot read config.shards through the router")?
        .try_collect()
        .await
        .context("cannot read config.shards through the router")?;
    for shard in shards {
        let id = shard
            .get_str("_id")
            .context("config.shards entry without _id")?;
        let host = shard
            .get_str("host")
            .with_context(|| format!("config.shards entry {id} has no host"))?;
        let (name, seeds) = parse_set_hosts(host)?;
        targets.push(SetTarget {
            name,
            role: SetRole::Shard,
            shard: Some(id.to_owned()),
            seeds,
        });
    }
    check_targets(&targets)?;
    Ok(targets)
}

fn check_targets(targets: &[SetTarget]) -> anyhow::Result<()> {
    anyhow::ensure!(
        targets.len() <= SETS_MAX,
        "{} replica sets (at most {SETS_MAX})",
        targets.len()
    );
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        anyhow::ensure!(pair[0] != pair[1], "two replica sets are named {}", pair[0]);
    }
    for name in names {
        anyhow::ensure!(
            is_plain_name(name),
            "replica set name {name:?} cannot be a directory name"
        );
    }
    Ok(())
}

/// The `--configdb` value in a `getCmdLineOpts` reply (Shoal's router lists its `argv`; mongos
/// also has `parsed.sharding.configDB`).
pub fn configdb_from_cmd_line(reply: &Document) -> Option<String> {
    if let Ok(parsed) = reply.get_document("parsed")
        && let Ok(sharding) = parsed.get_document("sharding")
        && let Ok(configdb) = sharding.get_str("configDB")
    {
        return Some(configdb.to_owned());
    }
    let argv: Vec<&str> = reply
        .get_array("argv")
        .ok()?
        .iter()
        .filter_map(Bson::as_str)
        .collect();
    argv.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix("--configdb=") {
            return Some(value.to_owned());
        }
        (*arg == "--configdb")
            .then(|| argv.get(i + 1).map(|value| (*value).to_owned()))
            .flatten()
    })
}

/// `NAME/HOST:PORT,HOST:PORT` into the set name and its hosts.
pub fn parse_set_hosts(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    let Some((name, hosts)) = text.split_once('/') else {
        anyhow::bail!("{text:?} is not NAME/HOST:PORT[,HOST:PORT...]");
    };
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        !name.is_empty() && !hosts.is_empty(),
        "{text:?} is not NAME/HOST:PORT[,HOST:PORT...]"
    );
    Ok((name.to_owned(), hosts))
}

/// A driver client talking to `host` alone.
pub(super) async fn direct_client(host: &str) -> anyhow::Result<Client> {
    let uri = format!(
        "mongodb://{host}/?directConnection=true&serverSelectionTimeoutMS={MEMBER_SELECTION_TIMEOUT_MS}"
    );
    connect(&uri, "shoal backup").await
}

/// A member of `target` to take the checkpoint on: a secondary if one answers, else the
/// primary. Returns its host and state.
async fn choose_member(target: &SetTarget) -> anyhow::Result<(String, &'static str)> {
    let mut hosts = target.seeds.clone();
    let mut primary = None;
    let mut probed = 0;
    while probed < hosts.len() && probed < MEMBERS_PROBED_MAX {
        let host = hosts[probed].clone();
        probed += 1;
        let Ok(hello) = hello(&host).await else {
            continue;
        };
        if hello.get_str("setName") != Ok(target.name.as_str()) {
            continue;
        }
        for listed in hello.get_array("hosts").into_iter().flatten() {
            if let Some(listed) = listed.as_str()
                && !hosts.iter().any(|known| known == listed)
            {
                hosts.push(listed.to_owned());
            }
        }
        if hello.get_bool("secondary") == Ok(true) {
            return Ok((host, "secondary"));
        }
        if hello.get_bool("isWritablePrimary") == Ok(true) {
            primary.get_or_insert(host);
        }
    }
    primary.map(|host| (host, "primary")).with_context(|| {
        format!(
            "no member of set {} answered as primary or secondary (tried {})",
            target.name,
            hosts.join(", ")
        )
    })
}

pub(super) async fn hello(host: &str) -> anyhow::Result<Document> {
    let client = direct_client(host).await?;
    Ok(client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await?)
}

/// Reads a `_shoalCheckpoint` reply; file names must be plain names.
fn parse_checkpoint_reply(reply: &Document) -> anyhow::Result<CheckpointReply> {
    let db_subdir = reply.get_str("dbSubdir")?.to_owned();
    anyhow::ensure!(is_plain_name(&db_subdir), "dbSubdir {db_subdir:?}");
    let mut files = Vec::new();
    for file in reply.get_array("files")? {
        let file = file
            .as_document()
            .context("a files entry is not a document")?;
        let name = file.get_str("name")?;
        anyhow::ensure!(is_plain_name(name), "file name {name:?}");
        let size = u64::try_from(file.get_i64("size")?).context("negative file size")?;
        files.push((name.to_owned(), size));
    }
    Ok(CheckpointReply {
        dir: PathBuf::from(reply.get_str("dir")?),
        db_subdir,
        applied_index: u64::try_from(reply.get_i64("appliedIndex")?)?,
        applied_term: u64::try_from(reply.get_i64("appliedTerm")?)?,
        applied_time_millis: reply.get_datetime("appliedTime")?.timestamp_millis(),
        applied_time_exact: reply.get_bool("appliedTimeExact")?,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configdb_comes_from_the_routers_command_line() {
        let shoal = doc! {"argv": ["shoal-router", "--bind", "b", "--configdb", "cfg/h:1,h:2"]};
        assert_eq!(configdb_from_cmd_line(&shoal).unwrap(), "cfg/h:1,h:2");
        let equals = doc! {"argv": ["shoal-router", "--configdb=cfg/h:1"]};
        assert_eq!(configdb_from_cmd_line(&equals).unwrap(), "cfg/h:1");
        let mongos = doc! {"argv": [], "parsed": {"sharding": {"configDB": "c/x:1"}}};
        assert_eq!(configdb_from_cmd_line(&mongos).unwrap(), "c/x:1");
        assert_eq!(configdb_from_cmd_line(&doc! {"argv": ["--configdb"]}), None);
        assert_eq!(configdb_from_cmd_line(&doc! {}), None);
    }

    #[test]
    fn set_hosts_parse() {
        let (name, hosts) = parse_set_hosts("shard0/127.0.0.1:1,127.0.0.1:2").unwrap();
        assert_eq!(name, "shard0");
        assert_eq!(hosts, ["127.0.0.1:1", "127.0.0.1:2"]);
        for bad in ["h:1", "/h:1", "rs/", "rs/,"] {
            assert!(parse_set_hosts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoint_replies_parse_and_refuse_unsafe_names() {
        let reply = doc! {
            "dir": "/d/checkpoints/1", "dbSubdir": "db", "appliedIndex": 7_i64,
            "appliedTerm": 2_i64, "appliedTime": bson::DateTime::from_millis(5),
            "appliedTimeExact": true, "files": [{"name": "000001.sst", "size": 10_i64}],
        };
        let parsed = parse_checkpoint_reply(&reply).unwrap();
        assert_eq!(parsed.files, [("000001.sst".to_owned(), 10)]);
        assert_eq!((parsed.applied_index, parsed.applied_term), (7, 2));
        let mut escaping = reply.clone();
        escaping.insert(
            "files",
            vec![Bson::Document(doc! {"name": "../x", "size": 1_i64})],
        );
        assert!(parse_checkpoint_reply(&escaping).is_err());
        let mut negative = reply;
        negative.insert("appliedIndex", -1_i64);
        assert!(parse_checkpoint_reply(&negative).is_err());
    }

    #[test]
    fn targets_need_distinct_plain_names() {
        let target = |name: &str| SetTarget {
            name: name.to_owned(),
            role: SetRole::Shard,
            shard: None,
            seeds: vec!["h:1".to_owned()],
        };
        assert!(check_targets(&[target("a"), target("b")]).is_ok());
        assert!(check_targets(&[target("a"), target("a")]).is_err());
        assert!(check_targets(&[target("..")]).is_err());
    }
}
