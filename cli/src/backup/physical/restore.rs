//! `shoal backup restore`: materializes one data directory per replica set of a backup,
//! `<out>/<set>/`, laid out as a member's `--dir` (`db/` holds the RocksDB files), plus
//! `restored-from.json` naming the backup and the log position the set is at.
//!
//! Nothing is written before the whole backup verifies ([`super::verify`]) and no target
//! directory exists: a damaged backup leaves `--out` untouched. Each set is written into
//! `<out>/.<set>.partial` and renamed when complete, and every copied file is hashed again on
//! the way, so a finished set directory always holds exactly the stored bytes.
//!
//! The directories hold the sets' Raft state as the checkpoints had it (the membership names the
//! original members' addresses). Starting a member on one at the same address resumes that
//! member at the backup's position; starting a new cluster elsewhere needs the Raft state reset
//! and `config.shards` rewritten, which this command does not do.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{
    manifest::{Manifest, SetBackup},
    progress::Reporter,
    store::{Store, copy_hashing, sync_dir},
    verify::{Verifier, report_lines},
};

/// The provenance file written into each restored set directory.
pub const RESTORED_FROM_FILE: &str = "restored-from.json";

/// What a restore wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Set directories written.
    pub sets: Vec<PathBuf>,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Restores backup `id` of the store at `store_dir` into `out`; see the module documentation.
pub fn run(
    store_dir: &Path,
    id: &str,
    out: &Path,
    reporter: Reporter,
) -> anyhow::Result<RestoreSummary> {
    let store = Store::open(store_dir)?;
    let manifest = store.read_manifest(id)?;
    check_restorable(&store, &manifest, out, reporter)?;
    let mut summary = RestoreSummary::default();
    for set in &manifest.sets {
        let target = restore_set(&store, &manifest, set, out, reporter, &|_| Ok(()))
            .with_context(|| format!("cannot restore set {} of backup {id}", set.name))?;
        summary.sets.push(target);
        summary.files += set.files.len();
        summary.bytes += set.bytes();
    }
    Ok(summary)
}

/// Refuses a restore of `manifest` into `out` when a set directory exists there or the backup
/// does not verify; nothing is written either way.
pub(super) fn check_restorable(
    store: &Store,
    manifest: &Manifest,
    out: &Path,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let id = &manifest.id;
    for set in &manifest.sets {
        let target = out.join(&set.name);
        anyhow::ensure!(
            !target.exists(),
            "refusing to restore backup {id}: {} already exists",
            target.display()
        );
    }
    let mut verifier = Verifier::new(store, reporter);
    verifier.verify_manifest(manifest);
    let report = verifier.finish();
    if !report.is_ok() {
        let lines = report_lines(&report).join("\n");
        anyhow::bail!(
            "refusing to restore backup {id}: it does not verify; nothing was written to {}\n{lines}",
            out.display()
        );
    }
    Ok(())
}

/// Writes one set into `<out>/.<set>.partial`, runs `prepare` on that directory (a
/// point-in-time restore replays the oplog there), then renames it to `<out>/<set>`.
pub(super) fn restore_set(
    store: &Store,
    manifest: &Manifest,
    set: &SetBackup,
    out: &Path,
    reporter: Reporter,
    prepare: &dyn Fn(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let partial = out.join(format!(".{}.partial", set.name));
    anyhow::ensure!(
        !partial.exists(),
        "{} exists (an interrupted restore?); remove it first",
        partial.display()
    );
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut progress = reporter.start("restored", &set.name, set.bytes());
    for file in &set.files {
        let target = partial.join(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let object = store.object_path(&file.object);
        let sha256 = copy_hashing(&object, &target)
            .with_context(|| format!("cannot copy {} to {}", object.display(), target.display()))?;
        anyhow::ensure!(
            sha256 == file.sha256,
            "{} changed after it was verified (SHA-256 {sha256}, expected {})",
            object.display(),
            file.sha256
        );
        progress.add(file.size);
    }
    let provenance = provenance_json(manifest, set);
    std::fs::write(partial.join(RESTORED_FROM_FILE), provenance)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    prepare(&partial)?;
    for dir in directories_of(set, &partial) {
        sync_dir(&dir)?;
    }
    let target = out.join(&set.name);
    std::fs::rename(&partial, &target).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            target.display()
        )
    })?;
    sync_dir(out)?;
    progress.finish(&format!(" into {}", target.display()));
    Ok(target)
}

/// The directories a set's files were written into (and the set directory itself).
fn directories_of(set: &SetBackup, root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = set
        .files
        .iter()
        .filter_map(|file| root.join(&file.path).parent().map(Path::to_path_buf))
        .collect();
    dirs.push(root.to_path_buf());
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `restored-from.json`: the backup and the set's position, for whoever starts a member on it.
fn provenance_json(manifest: &Manifest, set: &SetBackup) -> String {
    let value = serde_json::json!({
        "backup": manifest.id,
        "clusterId": manifest.cluster_id,
        "set": set.name,
        "role": set.role.as_str(),
        "shard": set.shard,
        "member": set.member,
        "appliedIndex": set.applied_index,
        "appliedTerm": set.applied_term,
        "appliedTime": set.applied_time,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
