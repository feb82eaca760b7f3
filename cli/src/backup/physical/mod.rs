//! `shoal backup create|list|verify|restore`: physical backups of a whole cluster, made of one
//! RocksDB checkpoint per replica set (the config server's and every shard's), kept in a
//! content-addressed store so that a later backup copies only the files that changed.
//!
//! # The store (format 1)
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
//!   directory (`db/000012.sst`) with its size, SHA-256 and object.
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
//! # Point-in-time recovery (next)
//!
//! A restore to any time T builds on this format: for each set, take the latest backup whose
//! `appliedTime` is at or before T, then replay that set's archived oplog entries from
//! `appliedIndex + 1` up to the last entry proposed at or before T. The oplog archive will be
//! more objects (`objects/<sha256>` of log segments) listed by a new manifest section, in a
//! format 2; format 1 readers refuse it rather than restore without it.

pub mod create;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod store;
pub mod verify;

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
    Ok(verifier.finish())
}

/// The lines of `shoal backup list`: one per backup, then the recoverable range; and whether
/// every manifest was readable.
pub fn list(store_dir: &Path) -> anyhow::Result<(Vec<String>, bool)> {
    let store = Store::open(store_dir)?;
    let mut lines = vec![format!(
        "{:<21} {:<24} {:>6} {:>12} {:>12}  SETS",
        "ID", "CREATED (UTC)", "FILES", "SIZE", "COPIED"
    )];
    let mut all_readable = true;
    let mut times = Vec::new();
    for id in store.backup_ids()? {
        match store.read_manifest(&id) {
            Ok(manifest) => {
                times.push(manifest.created.clone());
                lines.push(list_line(&manifest));
            }
            Err(error) => {
                all_readable = false;
                lines.push(format!("{id:<21} unreadable manifest: {error:#}"));
            }
        }
    }
    lines.push(match (times.first(), times.last()) {
        (Some(first), Some(last)) => format!(
            "recoverable: {} backup times from {first} to {last} (no oplog archive yet: only \
             those instants)",
            times.len()
        ),
        _ => "no backups".to_owned(),
    });
    Ok((lines, all_readable))
}

fn list_line(manifest: &Manifest) -> String {
    let sets: Vec<String> = manifest
        .sets
        .iter()
        .map(|set| format!("{}:{}@{}", set.name, set.role.as_str(), set.applied_index))
        .collect();
    format!(
        "{:<21} {:<24} {:>6} {:>12} {:>12}  {}",
        manifest.id,
        manifest.created,
        manifest.files().count(),
        megabytes(manifest.bytes_referenced),
        megabytes(manifest.bytes_copied),
        sets.join(" ")
    )
}
