//! `shoal backup restore --to-time T --host SET=HOST:PORT ...`: builds a new cluster's data
//! directories as the cluster was at time T, from a backup and the oplog archive
//! ([`super::archive`]).
//!
//! For every replica set of the backup: restore its checkpoint, replay the archived entries
//! after it that precede the cut at T (`shoal_repl::archive`), then make it a new one-member set
//! whose member is the given host (a new incarnation: no member of the original set can join
//! it). The config server's copy also gets the shards' new hosts in `config.shards` and a new
//! `clusterId`, so the new cluster's own backups and archive never mix with the original's.
//!
//! Consistency across sets comes from cutting every set at the same T: a write acknowledged
//! before T is in (it was proposed before T), one sent at T or later is out. A chunk migration
//! in flight at T is resolved by the restored config server exactly as after a crash: its
//! committed metadata wins, the recipient's uncommitted copy is an orphan that is deleted.
//!
//! Everything is checked before anything is written: the backup verifies, every set has a host,
//! the archive covers every set from its checkpoint up to T without a gap, and every segment
//! needed reads back with its checksum. A failure leaves `--out` as it was.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use bson::{Document, doc, oid::ObjectId};
use shoal_docstore::{Engine, Kv, RocksKv};
use shoal_repl::archive::{ArchivedEntry, entries_before, replay_and_rebuild};

use super::{
    archive::SetArchive,
    manifest::{Manifest, SetBackup, SetRole},
    progress::Reporter,
    restore::{RESTORED_FROM_FILE, RestoreSummary, check_restorable, restore_set},
    store::Store,
};

/// Archived bytes one set may replay (they are held in memory while the restore is checked).
pub const REPLAY_BYTES_MAX: u64 = 4 << 30;

/// What a point-in-time (or new-cluster) restore is asked to do.
#[derive(Debug, Clone)]
pub struct PitrOptions {
    /// The store directory.
    pub store: PathBuf,
    /// Where to write `<out>/<set>/`.
    pub out: PathBuf,
    /// The time to restore to (ms since the epoch); `None`: the backup itself, no replay.
    pub to_time_millis: Option<i64>,
    /// The backup to start from (default: the latest one whose every set is before the time).
    pub backup: Option<String>,
    /// The new cluster's member of each set: set name → `HOST:PORT`.
    pub hosts: BTreeMap<String, String>,
    /// Restore only these sets (empty: every set of the backup): one replica set as it was at
    /// the time, e.g. to read a dropped collection back from one shard.
    pub sets: Vec<String>,
}

/// One set's restore, planned and checked.
struct SetPlan {
    set: SetBackup,
    host: String,
    entries: Vec<ArchivedEntry>,
}

/// Restores to a point in time into a new cluster; see the module documentation.
pub fn run(options: &PitrOptions, reporter: Reporter) -> anyhow::Result<RestoreSummary> {
    let store = Store::open(&options.store)?;
    let mut manifest = choose_backup(&store, options)?;
    if !options.sets.is_empty() {
        for name in &options.sets {
            anyhow::ensure!(
                manifest.sets.iter().any(|set| &set.name == name),
                "backup {} has no replica set {name}",
                manifest.id
            );
        }
        manifest.sets.retain(|set| options.sets.contains(&set.name));
    }
    check_restorable(&store, &manifest, &options.out, reporter)?;
    // Without a time, the backup's own cluster-wide point (when it recorded one).
    let mut options = options.clone();
    if options.to_time_millis.is_none() {
        options.to_time_millis = manifest.consistent_at_millis;
    }
    restore_checked(&store, &manifest, &options, reporter)
}

/// The restore of [`run`] once `manifest` is known to verify and no set directory exists in
/// `options.out` (`verify --restore` checks both itself).
pub(super) fn restore_checked(
    store: &Store,
    manifest: &Manifest,
    options: &PitrOptions,
    reporter: Reporter,
) -> anyhow::Result<RestoreSummary> {
    let mut plans = Vec::new();
    for set in &manifest.sets {
        plans.push(plan_set(store, manifest, set, options)?);
    }
    let cluster_id = ObjectId::new();
    let shard_hosts: Vec<(String, String)> = plans
        .iter()
        .filter(|plan| plan.set.role == SetRole::Shard)
        .map(|plan| {
            let shard = plan
                .set
                .shard
                .clone()
                .unwrap_or_else(|| plan.set.name.clone());
            (shard, format!("{}/{}", plan.set.name, plan.host))
        })
        .collect();
    let mut summary = RestoreSummary::default();
    for plan in &plans {
        let prepare = |partial: &Path| {
            let rebuilt = rebuild(partial, plan)?;
            if plan.set.role == SetRole::Config {
                rewrite_config(partial, &shard_hosts, cluster_id)?;
            }
            write_provenance(
                partial,
                manifest,
                plan,
                options.to_time_millis,
                rebuilt,
                cluster_id,
            )
        };
        let target = restore_set(store, manifest, &plan.set, &options.out, reporter, &prepare)
            .with_context(|| format!("cannot restore set {}", plan.set.name))?;
        summary.sets.push(target);
        summary.files += plan.set.files.len();
        summary.bytes += plan.set.bytes();
    }
    Ok(summary)
}

/// The backup named by the options, or the latest whose every set was checkpointed before the
/// time (each checkpoint must be a prefix of the history up to T).
fn choose_backup(store: &Store, options: &PitrOptions) -> anyhow::Result<Manifest> {
    if let Some(id) = &options.backup {
        let manifest = store.read_manifest(id)?;
        if let Some(time) = options.to_time_millis {
            for set in &manifest.sets {
                anyhow::ensure!(
                    set.applied_time_millis < time,
                    "backup {id} holds writes of set {} from {} (not before the restore time)",
                    set.name,
                    set.applied_time
                );
            }
        }
        return Ok(manifest);
    }
    let mut chosen = None;
    for id in store.backup_ids()? {
        let Ok(manifest) = store.read_manifest(&id) else {
            continue;
        };
        let before = options.to_time_millis.is_none_or(|time| {
            manifest
                .sets
                .iter()
                .all(|set| set.applied_time_millis < time)
        });
        if before {
            chosen = Some(manifest);
        }
    }
    chosen.context("no backup of the store was taken before the restore time")
}

/// Checks that set `set` can be restored and reads the entries to replay.
fn plan_set(
    store: &Store,
    manifest: &Manifest,
    set: &SetBackup,
    options: &PitrOptions,
) -> anyhow::Result<SetPlan> {
    let host = options
        .hosts
        .get(&set.name)
        .with_context(|| format!("no --host {}=HOST:PORT for set {}", set.name, set.name))?
        .clone();
    let entries = match options.to_time_millis {
        Some(time) => {
            let archive = SetArchive::new(store, &manifest.cluster_id, &set.name);
            entries_to(store, &archive, set, time)?
        }
        None => Vec::new(),
    };
    Ok(SetPlan {
        set: set.clone(),
        host,
        entries,
    })
}

/// The archived entries of `set` after its checkpoint and before the cut at `time`.
fn entries_to(
    store: &Store,
    archive: &SetArchive,
    set: &SetBackup,
    time: i64,
) -> anyhow::Result<Vec<ArchivedEntry>> {
    let progress = archive.progress()?;
    let from = set.applied_index.saturating_add(1);
    let mut entries: Vec<ArchivedEntry> = Vec::new();
    let mut bytes = 0u64;
    for segment in archive.segments()? {
        if segment.last < from {
            continue;
        }
        let next = entries.last().map_or(from, |e| e.index + 1);
        // A gap (entries purged before they were archived) shows as a hole here.
        anyhow::ensure!(
            segment.first <= next,
            "the oplog archive of set {} lacks entries {next}..{} (purged before they were \
             archived); restore to a time before {next} or from a later backup",
            set.name,
            segment.first - 1,
        );
        for entry in archive.read_segment(store, &segment)? {
            if entry.index < next {
                continue;
            }
            if entry.time_millis.is_some_and(|t| t >= time) {
                return Ok(entries);
            }
            bytes += entry.bytes.len() as u64;
            anyhow::ensure!(
                bytes <= REPLAY_BYTES_MAX,
                "set {} would replay more than {REPLAY_BYTES_MAX} bytes of oplog; take a newer backup",
                set.name
            );
            entries.push(entry);
        }
    }
    // No archived write at or after T: the archive must have been complete at T.
    anyhow::ensure!(
        progress.as_of_millis >= time,
        "the oplog archive of set {} is complete only up to {} (ms), before the restore time {time}; \
         is `shoal backup archive` running?",
        set.name,
        progress.as_of_millis
    );
    let cut = entries_before(&entries, time);
    entries.truncate(cut);
    Ok(entries)
}

/// Replays the plan's entries in the restored set directory and rebuilds it as a new set.
fn rebuild(partial: &Path, plan: &SetPlan) -> anyhow::Result<shoal_repl::archive::Rebuilt> {
    let db = partial.join(DB_SUBDIR);
    let kv: Arc<dyn Kv> =
        Arc::new(RocksKv::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    replay_and_rebuild(kv, &plan.set.name, &plan.host, &plan.entries)
        .with_context(|| format!("cannot replay the oplog of set {}", plan.set.name))
}

/// The RocksDB directory inside a member's data directory (`shoal_member::checkpoint::DB_SUBDIR`;
/// the backup's file paths start with it).
pub(super) const DB_SUBDIR: &str = "db";

/// Points the restored config server at the new shards and gives the cluster a new id.
fn rewrite_config(
    partial: &Path,
    shard_hosts: &[(String, String)],
    cluster_id: ObjectId,
) -> anyhow::Result<()> {
    let db = partial.join(DB_SUBDIR);
    let kv: Arc<dyn Kv> =
        Arc::new(RocksKv::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let engine = Engine::with_kv(kv).context("cannot open the config server's documents")?;
    for (shard, host) in shard_hosts {
        let update = doc! {"update": "shards", "updates": [
            {"q": {"_id": shard}, "u": {"$set": {"host": host}}},
        ]};
        let reply = engine.execute("config", &update);
        check_one(&reply, &format!("config.shards {shard}"))?;
    }
    let update = doc! {"update": "version", "updates": [
        {"q": {}, "u": {"$set": {"clusterId": cluster_id}}},
    ]};
    check_one(&engine.execute("config", &update), "config.version")
}

fn check_one(reply: &Document, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        reply.get_f64("ok") == Ok(1.0) && reply.get_i32("n") == Ok(1),
        "cannot rewrite {what}: {reply}"
    );
    Ok(())
}

/// `restored-from.json` of a point-in-time restore.
fn write_provenance(
    partial: &Path,
    manifest: &Manifest,
    plan: &SetPlan,
    to_time_millis: Option<i64>,
    rebuilt: shoal_repl::archive::Rebuilt,
    cluster_id: ObjectId,
) -> anyhow::Result<()> {
    let value = serde_json::json!({
        "backup": manifest.id,
        "fromClusterId": manifest.cluster_id,
        "clusterId": cluster_id.to_hex(),
        "set": plan.set.name,
        "role": plan.set.role.as_str(),
        "host": plan.host,
        "toTimeMillis": to_time_millis,
        "backupAppliedIndex": plan.set.applied_index,
        "replayed": rebuilt.replayed,
        "appliedIndex": rebuilt.applied_index,
        "incarnation": rebuilt.incarnation.to_string(),
    });
    let path = partial.join(RESTORED_FROM_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
