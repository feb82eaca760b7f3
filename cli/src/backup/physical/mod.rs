//! `shoal backup create|list|verify|restore`: physical backups of a whole cluster, made of one
//! RocksDB checkpoint per replica set (the config server's and every shard's), kept in a
//! content-addressed store so that a later backup copies only the files that changed.
//!
//! # The store
//!
//! ```text
//! STORE/
//!   objects/<sha256>              the bytes of one checkpoint file, named by their SHA-256
//!   backups/<id>/manifest.json    one backup (see `manifest`); <id> = YYYYMMDDTHHMMSS.mmmZ
//!   tmp/                          objects being written (renamed into objects/ when complete)
//! ```
//!
//! - An object is immutable and named by the SHA-256 of its content; any number of backups
//!   reference it. RocksDB's SST files never change once written, so the second backup of a
//!   cluster copies only the SSTs written since (plus the small MANIFEST, OPTIONS and WAL files).
//! - A manifest appears (by rename) only after every object it names is written and synced; a
//!   backup directory without a manifest is unfinished and ignored. Objects of an abandoned
//!   backup stay, unreferenced (a future `prune` would remove objects no manifest names).
//! - `manifest.json` names, per replica set: the set and its role, the member the checkpoint
//!   was taken on, the last applied log entry (`appliedIndex`, `appliedTerm`) and the time of
//!   the last write in it (`appliedTime`), and every file as a path relative to a member's data
//!   directory (`db/000012.sst`) with its size, SHA-256 and object; and (manifest format 2)
//!   every user collection's document count and digest as of the applied entry
//!   ([`checksum`]), which `verify --restore` ([`verify_restore`]) compares with a scratch
//!   cluster restored from it.
//!
//! # Consistency
//!
//! Each set's checkpoint is consistent on its own: the documents, the catalog, the Raft log and
//! the replication state as of one applied entry. The sets are checkpointed at about the same
//! time but not at one instant across the cluster: a chunk migration committing between two
//! checkpoints can leave a restored cluster with a document on both shards (invisible on the
//! non-owner, as any orphan) or, if the config server's checkpoint is older than the recipient's,
//! with metadata that predates it. Stop the balancer around a backup for a clean cut.
//!
//! # Point-in-time recovery
//!
//! `shoal backup archive` keeps every set's applied log entries in the same store
//! (`archive/<cluster id>/<set>/`, see [`archive`]); `shoal backup restore --to-time T` takes
//! the latest backup whose every set is before T and replays each set's archived entries up to
//! the cut at T ([`pitr`]). Stopping at one instant on every set also gives the cluster-wide
//! consistent cut that the backups alone lack.

pub mod archive;
pub mod checksum;
pub mod create;
pub mod manifest;
pub mod pitr;
pub mod progress;
pub mod restore;
pub mod scratch;
pub mod store;
pub mod verify;
pub mod verify_restore;

use std::path::Path;

use manifest::Manifest;
use progress::{Reporter, megabytes};
use store::Store;
use verify::{Report, Verifier};

/// Verifies backup `id`, or every backup of the store.
pub fn verify(store_dir: &Path, id: Option<&str>, reporter: Reporter) -> anyhow::Result<Report> {
    let store = Store::open(store_dir)?;
    let ids = match id {
        Some(id) => vec![id.to_owned()],
        None => store.backup_ids()?,
    };
    anyhow::ensure!(!ids.is_empty(), "{} holds no backups", store_dir.display());
    let mut verifier = Verifier::new(&store, reporter);
    for id in &ids {
        verifier.verify_backup(id);
    }
    if id.is_none() {
        // Verifying the whole store includes the oplog archive of every backed-up cluster.
        let mut clusters: Vec<String> = ids
            .iter()
            .filter_map(|id| store.read_manifest(id).ok())
            .map(|manifest| manifest.cluster_id)
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        for cluster in clusters {
            verifier.verify_archive(&cluster)?;
        }
    }
    Ok(verifier.finish())
}

/// The lines of `shoal backup list`: one per backup, then the recoverable ranges; and whether
/// every manifest was readable.
pub fn list(store_dir: &Path) -> anyhow::Result<(Vec<String>, bool)> {
    let store = Store::open(store_dir)?;
    let mut lines = vec![format!(
        "{:<21} {:<24} {:<24} {:>6} {:>12} {:>12}  SETS",
        "ID", "CREATED (UTC)", "CONSISTENT AT (UTC)", "FILES", "SIZE", "COPIED"
    )];
    let mut all_readable = true;
    let mut manifests = Vec::new();
    for id in store.backup_ids()? {
        match store.read_manifest(&id) {
            Ok(manifest) => {
                lines.push(list_line(&manifest));
                manifests.push(manifest);
            }
            Err(error) => {
                all_readable = false;
                lines.push(format!("{id:<21} unreadable manifest: {error:#}"));
            }
        }
    }
    if manifests.is_empty() {
        lines.push("no backups".to_owned());
    }
    lines.extend(recoverable_lines(&store, &manifests)?);
    Ok((lines, all_readable))
}

/// For each cluster: the instants the backups alone restore, and the range the oplog archive
/// makes recoverable to any time (from the first backup to where every set's archive is
/// complete, unless a gap or a missing set cuts it).
fn recoverable_lines(store: &Store, manifests: &[Manifest]) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut clusters: Vec<&str> = manifests.iter().map(|m| m.cluster_id.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    for cluster in clusters {
        let backups: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.cluster_id == cluster)
            .collect();
        let archived = archive::sets_of(store, cluster)?;
        let Some(first) = backups.first() else {
            continue;
        };
        let from = first
            .sets
            .iter()
            .map(|set| set.applied_time_millis)
            .max()
            .unwrap_or(0);
        let complete = first.sets.iter().all(|set| {
            archived.iter().any(|(name, progress)| {
                name == &set.name
                    && progress
                        .gaps
                        .iter()
                        .all(|gap| gap.after < set.applied_index)
            })
        });
        let to = archived
            .iter()
            .map(|(_, progress)| progress.as_of_millis)
            .min()
            .unwrap_or(0);
        if complete && to > from {
            lines.push(format!(
                "cluster {cluster}: recoverable to any time from {} to {} (backup {} and the oplog archive)",
                millis_rfc3339(from),
                millis_rfc3339(to),
                first.id
            ));
        } else {
            lines.push(format!(
                "cluster {cluster}: recoverable to {} backup instants only (no complete oplog archive after the first backup)",
                backups.len()
            ));
        }
    }
    Ok(lines)
}

fn millis_rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn list_line(manifest: &Manifest) -> String {
    let sets: Vec<String> = manifest
        .sets
        .iter()
        .map(|set| format!("{}:{}@{}", set.name, set.role.as_str(), set.applied_index))
        .collect();
    // The cluster-wide point a new-cluster restore of this backup reaches, when recorded.
    let point = manifest
        .consistent_at_millis
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
    format!(
        "{:<21} {:<24} {:<24} {:>6} {:>12} {:>12}  {}",
        manifest.id,
        manifest.created,
        point,
        manifest.files().count(),
        megabytes(manifest.bytes_referenced),
        megabytes(manifest.bytes_copied),
        sets.join(" ")
    )
}
