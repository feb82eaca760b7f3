//! The backup store on disk: content-addressed objects and backup manifests (the layout is in
//! the [`super`] module documentation).
//!
//! Invariants kept here: an object's name is the SHA-256 of its bytes (checked on the bytes
//! written, not only the bytes read); an object appears under its name only complete and
//! synced (written in `tmp/`, then renamed); a manifest is renamed into place only after every
//! object it names is durable, so a backup directory without a manifest is an unfinished backup.

use std::{
    fs::File,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::{
    manifest::{BACKUPS_DIR, MANIFEST_FILE, Manifest, OBJECTS_DIR, object_name},
    progress::ByteProgress,
};

/// Bytes read per call while hashing or copying.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Where objects are written before they are complete.
const TMP_DIR: &str = "tmp";
/// Distinguishes temporary files of one process.
static TMP_FILES: AtomicU64 = AtomicU64::new(0);

/// A store directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What storing one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The file's SHA-256, lower-case hex (its object's name).
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Whether its bytes were copied (false: the store already had the object).
    pub copied: bool,
}

impl Store {
    /// Opens the store at `root`, creating it (and its directories) if needed.
    pub fn create(root: &Path) -> anyhow::Result<Store> {
        for dir in [OBJECTS_DIR, BACKUPS_DIR, TMP_DIR] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing store (one with a `backups` directory).
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        let backups = root.join(BACKUPS_DIR);
        anyhow::ensure!(
            backups.is_dir(),
            "{} is not a backup store (it has no {BACKUPS_DIR} directory)",
            root.display()
        );
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The path of an object named as manifests name it (`objects/<sha256>`).
    pub fn object_path(&self, object: &str) -> PathBuf {
        self.root.join(object)
    }

    fn backup_dir(&self, id: &str) -> PathBuf {
        self.root.join(BACKUPS_DIR).join(id)
    }

    /// Stores the file at `source`, expected to be `expected_size` bytes, as an object: hashed
    /// first, copied only when the store lacks that object (RocksDB's SST files never change,
    /// so a later backup copies only new ones). `progress` counts the bytes hashed.
    pub fn put_file(
        &self,
        source: &Path,
        expected_size: u64,
        progress: &mut ByteProgress,
    ) -> anyhow::Result<Stored> {
        let (sha256, size) = hash_file(source, &mut |bytes| progress.add(bytes))
            .with_context(|| format!("cannot read {}", source.display()))?;
        anyhow::ensure!(
            size == expected_size,
            "{} has {size} bytes, the member reported {expected_size}",
            source.display()
        );
        let object = self.object_path(&object_name(&sha256));
        let present = std::fs::metadata(&object).is_ok_and(|meta| meta.len() == size);
        if !present {
            self.copy_in(source, &sha256, &object)?;
        }
        Ok(Stored {
            sha256,
            size,
            copied: !present,
        })
    }

    /// Copies `source` into `tmp/`, checks the copy's hash, syncs it and renames it to `object`.
    fn copy_in(&self, source: &Path, sha256: &str, object: &Path) -> anyhow::Result<()> {
        let sequence = TMP_FILES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{sha256}.{}.{sequence}", std::process::id()));
        let copied = copy_hashing(source, &tmp)
            .with_context(|| format!("cannot copy {} to {}", source.display(), tmp.display()));
        let result = copied.and_then(|copied_sha| {
            anyhow::ensure!(
                copied_sha == sha256,
                "{} changed while it was copied (SHA-256 {sha256}, then {copied_sha})",
                source.display()
            );
            std::fs::rename(&tmp, object)
                .with_context(|| format!("cannot rename {} into the store", tmp.display()))
        });
        if result.is_err() {
            // Best effort: a leftover in tmp/ is never read.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Stores `bytes` as an object (written in `tmp/`, synced, renamed); returns its SHA-256.
    pub fn put_bytes(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let sha256 = hex(&Sha256::digest(bytes));
        let object = self.object_path(&object_name(&sha256));
        if std::fs::metadata(&object).is_ok_and(|meta| meta.len() == bytes.len() as u64) {
            return Ok(sha256);
        }
        let sequence = TMP_FILES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{sha256}.{}.{sequence}", std::process::id()));
        let written = File::create(&tmp)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .with_context(|| format!("cannot write {}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, &object)
                    .with_context(|| format!("cannot rename {} into the store", tmp.display()))
            });
        if written.is_err() {
            // Best effort: a leftover in tmp/ is never read.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| sha256)
    }

    /// Reads object `object` and checks its bytes against `sha256`.
    pub fn read_object(&self, object: &str, sha256: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.object_path(object);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let actual = hex(&Sha256::digest(&bytes));
        anyhow::ensure!(
            actual == sha256,
            "{} is damaged: SHA-256 {actual}, expected {sha256}",
            path.display()
        );
        Ok(bytes)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the directory of backup `id`; fails if it exists (ids are unique).
    pub fn reserve_backup(&self, id: &str) -> anyhow::Result<()> {
        let dir = self.backup_dir(id);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))
    }

    /// Removes the directory of an unfinished backup (objects it stored stay; they are
    /// unreferenced, not wrong).
    pub fn abandon_backup(&self, id: &str) {
        let dir = self.backup_dir(id);
        if !dir.join(MANIFEST_FILE).exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Makes the objects durable, then writes `manifest` (temporary file, sync, rename).
    pub fn write_manifest(&self, manifest: &Manifest) -> anyhow::Result<()> {
        sync_dir(&self.root.join(OBJECTS_DIR))?;
        let dir = self.backup_dir(&manifest.id);
        let tmp = dir.join(format!("{MANIFEST_FILE}.partial"));
        let mut file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(manifest.to_json().as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let path = dir.join(MANIFEST_FILE);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        sync_dir(&dir)
    }

    /// The ids of finished backups (directories holding a manifest), oldest first.
    pub fn backup_ids(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.root.join(BACKUPS_DIR);
        let mut ids = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if !entry.path().join(MANIFEST_FILE).is_file() {
                continue;
            }
            if let Ok(id) = entry.file_name().into_string() {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads and checks the manifest of backup `id`.
    pub fn read_manifest(&self, id: &str) -> anyhow::Result<Manifest> {
        let path = self.backup_dir(id).join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Manifest::from_json(&text, id)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The SHA-256 (hex) and length of the file at `path`; `on_read` sees every chunk's size.
pub fn hash_file(path: &Path, on_read: &mut dyn FnMut(u64)) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
        on_read(read as u64);
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Copies `source` to a new file `target` (which must not exist), syncs it, and returns the
/// SHA-256 of the bytes written.
pub fn copy_hashing(source: &Path, target: &Path) -> io::Result<String> {
    let mut input = File::open(source)?;
    let mut output = File::options().write(true).create_new(true).open(target)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read])?;
    }
    output.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

/// Syncs a directory, so the renames into it survive a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::physical::progress::Reporter;

    #[test]
    fn files_are_stored_once_by_content() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(&work.path().join("store")).unwrap();
        let a = work.path().join("a");
        let b = work.path().join("b");
        std::fs::write(&a, b"test").unwrap();
        std::fs::write(&b, b"test").unwrap();
        let mut progress = Reporter::plain().start("stored", "t", 8);
        let first = store.put_file(&a, 4, &mut progress).unwrap();
        assert_eq!(
            first.sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(first.copied);
        let second = store.put_file(&b, 4, &mut progress).unwrap();
        assert_eq!(second.sha256, first.sha256);
        assert!(!second.copied, "the same bytes are stored once");
        let object = store.object_path(&object_name(&first.sha256));
        assert_eq!(std::fs::read(object).unwrap(), b"test");
        assert!(store.put_file(&a, 5, &mut progress).is_err(), "wrong size");
        let leftovers = std::fs::read_dir(work.path().join("store").join(TMP_DIR)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn only_backups_with_a_manifest_are_listed() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(work.path()).unwrap();
        store.reserve_backup("b1").unwrap();
        assert!(store.reserve_backup("b1").is_err(), "ids are unique");
        assert!(store.backup_ids().unwrap().is_empty());
        store.abandon_backup("b1");
        assert!(!work.path().join(BACKUPS_DIR).join("b1").exists());
        assert!(Store::open(&work.path().join("nothing")).is_err());
    }
}
