//! Raft snapshots as files, so a member's data set is never held in memory whole.
//!
//! A snapshot is every pair of the replicated state (catalog, documents, session records) as of
//! one applied log entry. It is written to `<dir>/snapshots/` by streaming a point-in-time read
//! of the store ([`shoal_docstore::Kv::visit_consistent`]), sent to a lagging member in chunks
//! of [`SNAPSHOT_CHUNK_BYTES`], and installed from the file in bounded batches. A member that
//! restarts finds its latest snapshot on disk instead of building a new one.
//!
//! File layout: [`MAGIC`], the metadata (u32 length, JSON), the pairs (space tag, u32 key
//! length, key, u32 value length, value), then a trailer: [`TRAILER_TAG`], the pair count (u64)
//! and a CRC-32C of every byte before it (u32). A file is complete and intact exactly when its
//! trailer checks; every number is big-endian.
//!
//! File names: `snapshot-<index>-<sequence>.snap` (built or installed; the newest is the
//! member's current snapshot), `building-<sequence>.tmp` (being written), `incoming-<node>.part`
//! (`incoming-<node>-<stream>.part`: being received from member `node`, one file per sending so
//! a late chunk of an abandoned sending cannot mix into a new one), `received-<node>-<sequence>.snap`
//! (received and checked, waiting for Raft to install it). Anything but `snapshot-*` left over
//! from a crash is removed at open. The file an interrupted install needs is never removed.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::alias::SnapshotMetaOf;
use shoal_docstore::Space;

use crate::types::{NodeId, TypeConfig};

/// The first bytes of every snapshot file (the format's version is its last digit).
pub const MAGIC: &[u8; 8] = b"SHOALSN1";
/// Marks the trailer; no space tag takes this value.
pub const TRAILER_TAG: u8 = 0xEE;
/// Bytes of one chunk sent to a lagging member (one RPC frame each, well under the frame limit).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// The largest snapshot a member accepts from another (a bound on what a peer makes it write).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 40;
/// The largest metadata block a snapshot file may declare.
const META_BYTES_MAX: usize = 16 << 20;
/// The largest key or value a snapshot file may declare (documents are at most 16 MB).
const PAIR_PART_BYTES_MAX: usize = 64 << 20;
/// Buffer of the file readers and writers.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// The subdirectory of a member's data directory holding its snapshots.
pub const SNAPSHOTS_SUBDIR: &str = "snapshots";

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";

/// One snapshot file on disk: what Raft passes around as the snapshot's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> io::Result<u64> {
        Ok(fs::metadata(&self.path)?.len())
    }
}

/// A member's snapshot directory.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// Makes every file name this process writes unique.
    sequence: AtomicU64,
    /// Held while files are renamed into place or removed, so a clean-up never removes a file
    /// that is becoming the current snapshot. Holds the file an install is writing from (named
    /// by the install marker): no clean-up removes it.
    files: Mutex<Option<PathBuf>>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl SnapshotStore {
    /// Opens (creating) the snapshot directory `dir` and removes what a crash left half-done.
    pub fn open(dir: &Path) -> io::Result<SnapshotStore> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX)) {
                fs::remove_file(entry.path())?;
            }
        }
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64);
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            sequence: AtomicU64::new(start),
            files: Mutex::new(None),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn next(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts writing a snapshot with `meta`.
    pub fn writer(&self, meta: &SnapshotMetaOf<TypeConfig>) -> io::Result<SnapshotWriter> {
        let path = self.dir.join(format!("building-{}.tmp", self.next()));
        SnapshotWriter::create(path, meta)
    }

    /// The name a snapshot of entry `index` gets when it becomes current.
    fn snapshot_path(&self, meta: &SnapshotMetaOf<TypeConfig>) -> PathBuf {
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        self.dir.join(format!(
            "{SNAPSHOT_PREFIX}{index:020}-{}{SNAPSHOT_SUFFIX}",
            self.next()
        ))
    }

    /// Makes `file` (finished, anywhere) a snapshot of this directory: renamed when it is one of
    /// this directory's own files, otherwise hard-linked or copied (the source stays).
    pub fn adopt(
        &self,
        file: &SnapshotFile,
        meta: &SnapshotMetaOf<TypeConfig>,
    ) -> io::Result<SnapshotFile> {
        let _files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let target = self.snapshot_path(meta);
        let own_building = file.path.parent() == Some(self.dir.as_path())
            && file
                .path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("building-"));
        if own_building {
            fs::rename(&file.path, &target)?;
        } else if fs::hard_link(&file.path, &target).is_err() {
            fs::copy(&file.path, &target)?;
            File::open(&target)?.sync_all()?;
        }
        sync_dir(&self.dir)?;
        Ok(SnapshotFile { path: target })
    }

    /// Marks `file` as the one an install writes from (`None`: the install is done): until
    /// then no clean-up removes it, since a restart would need it to finish the install.
    pub fn protect(&self, file: Option<&SnapshotFile>) {
        *self.files.lock().unwrap_or_else(PoisonError::into_inner) =
            file.map(|file| file.path.clone());
    }

    /// Removes every built or installed snapshot but `keep` (and a protected one). A sender
    /// streaming a removed file keeps reading it through its open handle.
    pub fn remove_others(&self, keep: &SnapshotFile) -> io::Result<()> {
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        for path in self.snapshot_files()? {
            if path != keep.path && Some(&path) != files.as_ref() {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Removes every built or installed snapshot (they describe a state that is being
    /// replaced wholesale, e.g. by a forced reconfiguration).
    pub fn remove_all(&self) -> io::Result<()> {
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        for path in self.snapshot_files()? {
            if Some(&path) != files.as_ref() {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn snapshot_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX) {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// The newest snapshot in the directory whose metadata reads, if any (names sort by index).
    pub fn latest(&self) -> io::Result<Option<(SnapshotMetaOf<TypeConfig>, SnapshotFile)>> {
        for path in self.snapshot_files()?.into_iter().rev() {
            match read_meta(&path) {
                Ok(meta) => return Ok(Some((meta, SnapshotFile { path }))),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable snapshot file");
                }
            }
        }
        Ok(None)
    }

    /// The snapshot named `name` in this directory (from an install marker).
    pub fn named(&self, name: &str) -> io::Result<SnapshotFile> {
        let plain = Path::new(name).file_name().is_some_and(|file| file == name);
        if !plain {
            return Err(invalid(format!("bad snapshot file name {name:?}")));
        }
        Ok(SnapshotFile {
            path: self.dir.join(name),
        })
    }

    /// Appends one received chunk of sending `stream` of member `from`'s snapshot at `offset`
    /// of `total` bytes. Offset 0 starts a new file (and drops that member's abandoned ones);
    /// any other offset must be where the file ends (a sender that lost its place starts over).
    /// Returns the finished file after the last chunk: check it with [`check_received`].
    pub fn receive_chunk(
        &self,
        from: NodeId,
        stream: u64,
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> io::Result<Option<SnapshotFile>> {
        if total > SNAPSHOT_BYTES_MAX || data.len() > SNAPSHOT_CHUNK_BYTES {
            return Err(invalid(format!(
                "snapshot chunk of {} bytes for a snapshot of {total} bytes exceeds the limits",
                data.len()
            )));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= total)
            .ok_or_else(|| invalid("snapshot chunk past the snapshot's end"))?;
        let path = self.dir.join(format!("incoming-{from}-{stream}.part"));
        let mut file = if offset == 0 {
            self.remove_incoming_from(from)?;
            File::create(&path)?
        } else {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            let length = file.metadata()?.len();
            if length != offset {
                return Err(invalid(format!(
                    "snapshot chunk at {offset}, but {length} bytes were received"
                )));
            }
            file.seek(SeekFrom::End(0))?;
            file
        };
        file.write_all(data)?;
        if end < total {
            return Ok(None);
        }
        file.sync_all()?;
        drop(file);
        let received = self
            .dir
            .join(format!("received-{from}-{}{SNAPSHOT_SUFFIX}", self.next()));
        fs::rename(&path, &received)?;
        Ok(Some(SnapshotFile { path: received }))
    }

    /// Removes the files member `from` was sending and abandoned.
    fn remove_incoming_from(&self, from: NodeId) -> io::Result<()> {
        let prefix = format!("incoming-{from}-");
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes a received file Raft did not install (or that was adopted by a link).
    pub fn discard_received(&self, file: &SnapshotFile) {
        if file.path.parent() == Some(self.dir.as_path())
            && let Err(error) = fs::remove_file(&file.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %file.path.display(), %error, "removing a received snapshot");
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes one snapshot file: [`SnapshotStore::writer`], [`SnapshotWriter::pair`] for every pair
/// in key order per space, [`SnapshotWriter::finish`].
#[derive(Debug)]
pub struct SnapshotWriter {
    path: PathBuf,
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    crc: u32,
    pairs: u64,
    bytes: u64,
}

impl SnapshotWriter {
    fn create(path: PathBuf, meta: &SnapshotMetaOf<TypeConfig>) -> io::Result<SnapshotWriter> {
        let file = File::create(&path)?;
        let mut writer = SnapshotWriter {
            path,
            out: Some(BufWriter::with_capacity(IO_BUFFER_BYTES, file)),
            crc: 0,
            pairs: 0,
            bytes: 0,
        };
        let meta = serde_json::to_vec(meta).map_err(io::Error::other)?;
        writer.put(MAGIC)?;
        writer.put(&len_u32(meta.len())?.to_be_bytes())?;
        writer.put(&meta)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.output()?.write_all(bytes)
    }

    fn output(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("the snapshot file is already finished"))
    }

    /// Appends one pair.
    pub fn pair(&mut self, space: Space, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[space_tag(space)])?;
        self.put(&len_u32(key.len())?.to_be_bytes())?;
        self.put(key)?;
        self.put(&len_u32(value.len())?.to_be_bytes())?;
        self.put(value)?;
        self.pairs += 1;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the trailer and makes the file durable; the result is ready for
    /// [`SnapshotStore::adopt`].
    pub fn finish(mut self) -> io::Result<SnapshotFile> {
        self.put(&[TRAILER_TAG])?;
        self.put(&self.pairs.to_be_bytes())?;
        let crc = self.crc;
        self.output()?.write_all(&crc.to_be_bytes())?;
        let out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("the snapshot file is already finished"))?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(SnapshotFile {
            path: self.path.clone(),
        })
    }
}

impl Drop for SnapshotWriter {
    /// A snapshot abandoned half written (an error, a full disk) leaves no file behind.
    fn drop(&mut self) {
        if self.out.take().is_some()
            && let Err(error) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "removing an unfinished snapshot file");
        }
    }
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| invalid(format!("a snapshot part of {len} bytes")))
}

fn space_tag(space: Space) -> u8 {
    match space {
        Space::Catalog => 0,
        Space::Docs => 1,
        Space::RaftLog => 2,
        Space::RaftMeta => 3,
    }
}

fn tag_space(tag: u8) -> Option<Space> {
    match tag {
        0 => Some(Space::Catalog),
        1 => Some(Space::Docs),
        3 => Some(Space::RaftMeta),
        _ => None,
    }
}

/// One pair read back, with its space.
type SpacePair = (Space, Vec<u8>, Vec<u8>);

/// Reads a snapshot file front to back, checking its checksum on the way.
struct SnapshotReader {
    input: BufReader<File>,
    crc: u32,
}

impl SnapshotReader {
    fn open(path: &Path) -> io::Result<(SnapshotReader, SnapshotMetaOf<TypeConfig>)> {
        let file = File::open(path)?;
        let mut reader = SnapshotReader {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            crc: 0,
        };
        let magic = reader.take(MAGIC.len())?;
        if magic != MAGIC {
            return Err(invalid(format!(
                "{} is not a snapshot file",
                path.display()
            )));
        }
        let meta_len = reader.take_len(META_BYTES_MAX)?;
        let meta = reader.take(meta_len)?;
        let meta = serde_json::from_slice(&meta)
            .map_err(|e| invalid(format!("snapshot metadata does not decode: {e}")))?;
        Ok((reader, meta))
    }

    fn take(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.input.read_exact(&mut bytes).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("truncated snapshot file")
            } else {
                e
            }
        })?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes);
        Ok(bytes)
    }

    fn take_u32(&mut self) -> io::Result<u32> {
        let bytes = self.take(4)?;
        let array: [u8; 4] = bytes
            .try_into()
            .map_err(|_| invalid("truncated snapshot file"))?;
        Ok(u32::from_be_bytes(array))
    }

    fn take_len(&mut self, max: usize) -> io::Result<usize> {
        let len = self.take_u32()? as usize;
        if len > max {
            return Err(invalid(format!(
                "snapshot file declares a part of {len} bytes"
            )));
        }
        Ok(len)
    }

    /// The next pair, or `None` after the trailer checked.
    fn next_pair(&mut self, pairs_seen: u64) -> io::Result<Option<SpacePair>> {
        let tag = self.take(1)?[0];
        if tag == TRAILER_TAG {
            let count = self.take(8)?;
            let count = u64::from_be_bytes(
                count
                    .try_into()
                    .map_err(|_| invalid("truncated snapshot file"))?,
            );
            let expected = self.crc;
            let mut stored = [0; 4];
            self.input
                .read_exact(&mut stored)
                .map_err(|_| invalid("truncated snapshot file"))?;
            if u32::from_be_bytes(stored) != expected {
                return Err(invalid("snapshot file checksum mismatch"));
            }
            if count != pairs_seen {
                return Err(invalid(format!(
                    "snapshot file holds {pairs_seen} pairs, its trailer says {count}"
                )));
            }
            let mut rest = [0; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(invalid("bytes after the snapshot file's trailer"));
            }
            return Ok(None);
        }
        let space = tag_space(tag).ok_or_else(|| invalid(format!("bad snapshot space {tag}")))?;
        let key_len = self.take_len(PAIR_PART_BYTES_MAX)?;
        let key = self.take(key_len)?;
        let value_len = self.take_len(PAIR_PART_BYTES_MAX)?;
        let value = self.take(value_len)?;
        Ok(Some((space, key, value)))
    }
}

/// Checks a received snapshot whole: intact, and the snapshot its sender described.
pub fn check_received(
    file: &SnapshotFile,
    expected: &SnapshotMetaOf<TypeConfig>,
) -> io::Result<()> {
    let (meta, _) = verify(file.path())?;
    if meta != *expected {
        return Err(invalid(
            "the received snapshot file is not the snapshot its sender described",
        ));
    }
    Ok(())
}

/// The metadata of the snapshot file at `path` (the rest is not read).
pub fn read_meta(path: &Path) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    SnapshotReader::open(path).map(|(_, meta)| meta)
}

/// Reads the whole file, checks its checksum and returns its metadata and pair count.
pub fn verify(path: &Path) -> io::Result<(SnapshotMetaOf<TypeConfig>, u64)> {
    let mut pairs = 0;
    let meta = for_each_pair(path, &mut |_, _, _| {
        pairs += 1;
        Ok(())
    })?;
    Ok((meta, pairs))
}

/// Calls `visit` with every pair of the file in order and returns the metadata. The checksum is
/// checked only at the end: check the file with [`verify`] before acting on its pairs.
pub fn for_each_pair(
    path: &Path,
    visit: &mut dyn FnMut(Space, Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let (mut reader, meta) = SnapshotReader::open(path)?;
    let mut pairs = 0u64;
    while let Some((space, key, value)) = reader.next_pair(pairs)? {
        visit(space, key, value)?;
        pairs += 1;
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMetaOf<TypeConfig> {
        SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(openraft::alias::LogIdOf::<TypeConfig>::new_term_index(
                2, index,
            )),
            last_membership: Default::default(),
        }
    }

    fn write(store: &SnapshotStore, index: u64, pairs: &[(Space, &[u8], &[u8])]) -> SnapshotFile {
        let mut writer = store.writer(&meta(index)).unwrap();
        for (space, key, value) in pairs {
            writer.pair(*space, key, value).unwrap();
        }
        let built = writer.finish().unwrap();
        store.adopt(&built, &meta(index)).unwrap()
    }

    #[test]
    fn a_written_snapshot_reads_back_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let file = write(
            &store,
            7,
            &[(Space::Catalog, b"c", b"1"), (Space::Docs, b"d", b"22")],
        );
        let (read, pairs) = verify(file.path()).unwrap();
        assert_eq!(read, meta(7));
        assert_eq!(pairs, 2);
        let mut seen = Vec::new();
        for_each_pair(file.path(), &mut |space, key, value| {
            seen.push((space, key, value));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[1], (Space::Docs, b"d".to_vec(), b"22".to_vec()));

        let bytes = fs::read(file.path()).unwrap();
        let mut flipped = bytes.clone();
        let at = bytes.len() - 20;
        flipped[at] ^= 1;
        fs::write(file.path(), &flipped).unwrap();
        assert!(verify(file.path()).is_err());
        fs::write(file.path(), &bytes[..bytes.len() - 3]).unwrap();
        assert!(verify(file.path()).is_err());
    }

    #[test]
    fn the_latest_snapshot_survives_reopening_and_leftovers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let older = write(&store, 9, &[]);
        let newer = write(&store, 120, &[(Space::Docs, b"k", b"v")]);
        assert!(store.receive_chunk(4, 1, 0, 10, b"half").unwrap().is_none());
        let reopened = SnapshotStore::open(dir.path()).unwrap();
        let (latest_meta, latest) = reopened.latest().unwrap().unwrap();
        assert_eq!(latest, newer);
        assert_eq!(latest_meta, meta(120));
        assert!(!dir.path().join("incoming-4-1.part").exists());
        reopened.remove_others(&latest).unwrap();
        assert!(!older.path().exists());
        assert!(newer.path().exists());
    }

    #[test]
    fn chunks_assemble_in_order_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let source = write(&store, 3, &[(Space::Docs, b"key", &[7; 100])]);
        let bytes = fs::read(source.path()).unwrap();
        let total = bytes.len() as u64;
        let (first, second) = bytes.split_at(50);
        assert!(
            store
                .receive_chunk(2, 7, 0, total, first)
                .unwrap()
                .is_none()
        );
        // A chunk at the wrong offset is refused; the sender starts over.
        assert!(store.receive_chunk(2, 7, 60, total, second).is_err());
        assert!(
            store
                .receive_chunk(2, 7, 0, total, first)
                .unwrap()
                .is_none()
        );
        let received = store
            .receive_chunk(2, 7, 50, total, second)
            .unwrap()
            .unwrap();
        assert_eq!(verify(received.path()).unwrap().0, meta(3));
        assert!(
            store
                .receive_chunk(2, 7, 0, total, &vec![0; SNAPSHOT_CHUNK_BYTES + 1])
                .is_err()
        );
        assert!(store.receive_chunk(2, 7, 40, 45, &[0; 10]).is_err());
        store.discard_received(&received);
        assert!(!received.path().exists());
    }

    /// A late chunk of an abandoned sending cannot land in a newer one, and a received file
    /// that is not the announced snapshot is refused before Raft sees it.
    #[test]
    fn sendings_do_not_mix_and_received_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let source = write(&store, 3, &[(Space::Docs, b"key", &[7; 100])]);
        let bytes = fs::read(source.path()).unwrap();
        let total = bytes.len() as u64;
        let (first, second) = bytes.split_at(50);
        assert!(
            store
                .receive_chunk(2, 7, 0, total, first)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .receive_chunk(2, 8, 0, total, first)
                .unwrap()
                .is_none()
        );
        // Sending 7 was abandoned when 8 started: its late chunk finds no file.
        assert!(store.receive_chunk(2, 7, 50, total, second).is_err());
        let received = store
            .receive_chunk(2, 8, 50, total, second)
            .unwrap()
            .unwrap();
        assert!(check_received(&received, &meta(3)).is_ok());
        assert!(check_received(&received, &meta(4)).is_err());
        let mut damaged = bytes.clone();
        damaged[60] ^= 1;
        let (first, second) = damaged.split_at(50);
        assert!(
            store
                .receive_chunk(2, 9, 0, total, first)
                .unwrap()
                .is_none()
        );
        let received = store
            .receive_chunk(2, 9, 50, total, second)
            .unwrap()
            .unwrap();
        assert!(check_received(&received, &meta(3)).is_err());
    }

    /// The file an install writes from survives every clean-up until the install is done; an
    /// abandoned writer leaves nothing.
    #[test]
    fn the_installing_file_is_kept_and_abandoned_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let installing = write(&store, 5, &[]);
        let newer = write(&store, 9, &[]);
        store.protect(Some(&installing));
        store.remove_others(&newer).unwrap();
        store.remove_all().unwrap();
        assert!(installing.path().exists());
        assert!(!newer.path().exists());
        store.protect(None);
        store.remove_all().unwrap();
        assert!(!installing.path().exists());
        let writer = store.writer(&meta(11)).unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn names_from_markers_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.named("snapshot-1-2.snap").is_ok());
        assert!(store.named("../x.snap").is_err());
        assert!(store.named("a/b").is_err());
    }
}
