//! `shoal backup verify`: re-reads every object a manifest references and checks its size and
//! SHA-256, naming each file that is missing, truncated, too long or corrupted. `restore` runs
//! the same check first and refuses on any problem.
//!
//! An object shared by several files or backups is read once per run. `verify --restore`
//! ([`super::verify_restore`]) runs this check first, then compares a restored cluster's
//! collections with the backup's.

use std::{collections::HashMap, fmt};

use super::{
    archive::{self, SetArchive},
    manifest::{FileEntry, Manifest, SetBackup},
    progress::{Reporter, megabytes},
    store::{Store, hash_file},
};

/// What is wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The object file does not exist.
    Missing,
    /// The object is shorter than the file it holds.
    Truncated {
        /// Bytes found.
        actual: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The object is longer than the file it holds.
    Oversized {
        /// Bytes found.
        actual: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The object has the right size and the wrong bytes.
    Corrupted {
        /// The SHA-256 of what is there.
        actual_sha256: String,
    },
    /// The object cannot be read.
    Unreadable(String),
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Missing => write!(f, "missing"),
            ProblemKind::Truncated { actual, expected } => {
                write!(f, "truncated ({actual} of {expected} bytes)")
            }
            ProblemKind::Oversized { actual, expected } => {
                write!(f, "wrong size ({actual} bytes, expected {expected})")
            }
            ProblemKind::Corrupted { actual_sha256 } => {
                write!(f, "corrupted (SHA-256 of the object is {actual_sha256})")
            }
            ProblemKind::Unreadable(reason) => write!(f, "unreadable ({reason})"),
        }
    }
}

/// One file of one backup that cannot be restored as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The backup.
    pub backup: String,
    /// The set.
    pub set: String,
    /// The file's path in the manifest.
    pub path: String,
    /// The object that should hold it.
    pub object: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup {}: set {}: file {} (object {}): {}",
            self.backup, self.set, self.path, self.object, self.kind
        )
    }
}

/// What verifying found.
#[derive(Debug, Default)]
pub struct Report {
    /// Manifests read.
    pub backups: usize,
    /// File entries checked.
    pub files: usize,
    /// Bytes of distinct objects read.
    pub bytes_read: u64,
    /// Files that are not as stored, in manifest order.
    pub problems: Vec<Problem>,
    /// Backups whose manifest is unreadable: (id, why).
    pub bad_manifests: Vec<(String, String)>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.bad_manifests.is_empty()
    }
}

/// Checks objects of the store, remembering results so a shared object is read once.
#[derive(Debug)]
pub struct Verifier<'a> {
    store: &'a Store,
    reporter: Reporter,
    checked: HashMap<String, Result<(), ProblemKind>>,
    report: Report,
}

impl<'a> Verifier<'a> {
    /// A verifier over `store`.
    pub fn new(store: &'a Store, reporter: Reporter) -> Verifier<'a> {
        Verifier {
            store,
            reporter,
            checked: HashMap::new(),
            report: Report::default(),
        }
    }

    /// Verifies backup `id` (an unreadable manifest is reported, not returned).
    pub fn verify_backup(&mut self, id: &str) {
        match self.store.read_manifest(id) {
            Ok(manifest) => self.verify_manifest(&manifest),
            Err(error) => self
                .report
                .bad_manifests
                .push((id.to_owned(), format!("{error:#}"))),
        }
    }

    /// Verifies every file `manifest` references.
    pub fn verify_manifest(&mut self, manifest: &Manifest) {
        self.report.backups += 1;
        for set in &manifest.sets {
            self.verify_set(&manifest.id, set);
        }
    }

    fn verify_set(&mut self, backup: &str, set: &SetBackup) {
        let label = format!("{backup} {}", set.name);
        let mut progress = self.reporter.start("verified", &label, set.bytes());
        let mut problems = 0usize;
        for file in &set.files {
            self.report.files += 1;
            let read_before = self.report.bytes_read;
            let outcome = match self.checked.get(&file.object) {
                Some(outcome) => outcome.clone(),
                None => {
                    let outcome = self.check_object(file);
                    self.checked.insert(file.object.clone(), outcome.clone());
                    outcome
                }
            };
            // Only bytes read now: an object shared with a file checked earlier is not re-read.
            progress.add(self.report.bytes_read - read_before);
            if let Err(kind) = outcome {
                problems += 1;
                self.report.problems.push(Problem {
                    backup: backup.to_owned(),
                    set: set.name.clone(),
                    path: file.path.clone(),
                    object: file.object.clone(),
                    kind,
                });
            }
        }
        let detail = match problems {
            0 => format!(" ({} files, all as stored)", set.files.len()),
            n => format!(" ({} files, {n} BAD)", set.files.len()),
        };
        progress.finish(&detail);
    }

    /// Verifies every segment of the oplog archive of cluster `cluster` (a problem is reported
    /// against "archive of cluster ..." and the segment's file).
    pub fn verify_archive(&mut self, cluster: &str) -> anyhow::Result<()> {
        for (set, _) in archive::sets_of(self.store, cluster)? {
            let segments = SetArchive::new(self.store, cluster, &set).segments()?;
            for segment in segments {
                self.report.files += 1;
                let file = FileEntry {
                    path: format!(
                        "{}/{cluster}/{set}/segments/{:020}-{:020}.json",
                        archive::ARCHIVE_DIR,
                        segment.first,
                        segment.last
                    ),
                    size: segment.size,
                    sha256: segment.sha256.clone(),
                    object: segment.object.clone(),
                };
                let outcome = match self.checked.get(&file.object) {
                    Some(outcome) => outcome.clone(),
                    None => {
                        let outcome = self.check_object(&file);
                        self.checked.insert(file.object.clone(), outcome.clone());
                        outcome
                    }
                };
                if let Err(kind) = outcome {
                    self.report.problems.push(Problem {
                        backup: format!("archive of cluster {cluster}"),
                        set: set.clone(),
                        path: file.path,
                        object: file.object,
                        kind,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_object(&mut self, file: &FileEntry) -> Result<(), ProblemKind> {
        let path = self.store.object_path(&file.object);
        let actual = match std::fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProblemKind::Missing);
            }
            Err(error) => return Err(ProblemKind::Unreadable(error.to_string())),
        };
        if actual < file.size {
            return Err(ProblemKind::Truncated {
                actual,
                expected: file.size,
            });
        }
        if actual > file.size {
            return Err(ProblemKind::Oversized {
                actual,
                expected: file.size,
            });
        }
        let (sha256, read) = hash_file(&path, &mut |_| {})
            .map_err(|error| ProblemKind::Unreadable(error.to_string()))?;
        self.report.bytes_read += read;
        if read != file.size {
            // The file changed size between the two looks.
            return Err(ProblemKind::Truncated {
                actual: read,
                expected: file.size,
            });
        }
        if sha256 != file.sha256 {
            return Err(ProblemKind::Corrupted {
                actual_sha256: sha256,
            });
        }
        Ok(())
    }

    /// What was found.
    pub fn finish(self) -> Report {
        self.report
    }
}

/// The lines `verify` prints for `report` (problems first, then the summary).
pub fn report_lines(report: &Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .bad_manifests
        .iter()
        .map(|(id, why)| format!("backup {id}: unreadable manifest: {why}"))
        .collect();
    lines.extend(report.problems.iter().map(Problem::to_string));
    let verdict = if report.is_ok() {
        "ok".to_owned()
    } else {
        format!(
            "FAILED: {} bad files, {} unreadable manifests",
            report.problems.len(),
            report.bad_manifests.len()
        )
    };
    lines.push(format!(
        "verified {} backups, {} files, {} read: {verdict}",
        report.backups,
        report.files,
        megabytes(report.bytes_read)
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::physical::manifest::{MANIFEST_FORMAT, OBJECTS_DIR, SetRole, object_name};

    fn entry(path: &str, bytes: &[u8], store: &Store) -> FileEntry {
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), bytes).unwrap();
        let mut progress = Reporter::plain().start("stored", "t", 0);
        let stored = store
            .put_file(source.path(), bytes.len() as u64, &mut progress)
            .unwrap();
        FileEntry {
            path: path.to_owned(),
            size: stored.size,
            object: object_name(&stored.sha256),
            sha256: stored.sha256,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: "b1".to_owned(),
            created: String::new(),
            created_millis: 0,
            completed: String::new(),
            cluster_id: String::new(),
            bytes_copied: 0,
            bytes_referenced: 0,
            consistent_at_millis: None,
            sets: vec![SetBackup {
                name: "rs".to_owned(),
                role: SetRole::Shard,
                shard: None,
                member: "h:1".to_owned(),
                member_state: "primary".to_owned(),
                applied_index: 0,
                applied_term: 0,
                applied_time: String::new(),
                applied_time_millis: 0,
                applied_time_exact: false,
                files,
                collections: None,
            }],
        }
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(work.path()).unwrap();
        let files = vec![
            entry("db/good", b"good bytes", &store),
            entry("db/flipped", b"flipped bytes", &store),
            entry("db/cut", b"cut bytes", &store),
            entry("db/gone", b"gone bytes", &store),
            entry("db/long", b"long bytes", &store),
            entry("db/again", b"good bytes", &store),
        ];
        let object = |i: usize| store.object_path(&files[i].object);
        let mut flipped = std::fs::read(object(1)).unwrap();
        flipped[3] ^= 0x01;
        std::fs::write(object(1), flipped).unwrap();
        std::fs::write(object(2), b"cut").unwrap();
        std::fs::remove_file(object(3)).unwrap();
        std::fs::write(object(4), b"long bytes and more").unwrap();

        let mut verifier = Verifier::new(&store, Reporter::plain());
        verifier.verify_manifest(&manifest(files.clone()));
        let report = verifier.finish();
        let named: Vec<(&str, &ProblemKind)> = report
            .problems
            .iter()
            .map(|problem| (problem.path.as_str(), &problem.kind))
            .collect();
        assert_eq!(named.len(), 4, "{named:?}");
        assert_eq!(named[0].0, "db/flipped");
        assert!(matches!(named[0].1, ProblemKind::Corrupted { .. }));
        assert_eq!(
            named[1],
            (
                "db/cut",
                &ProblemKind::Truncated {
                    actual: 3,
                    expected: 9
                }
            )
        );
        assert_eq!(named[2], ("db/gone", &ProblemKind::Missing));
        assert!(matches!(named[3].1, ProblemKind::Oversized { .. }));
        assert_eq!(report.files, 6);
        let lines = report_lines(&report);
        assert!(
            lines[1].contains("file db/cut (object objects/"),
            "{lines:?}"
        );
        assert!(lines[1].contains("truncated (3 of 9 bytes)"), "{lines:?}");
        assert!(
            lines.last().unwrap().contains("FAILED: 4 bad files"),
            "{lines:?}"
        );
    }

    #[test]
    fn intact_backups_pass_and_bad_manifests_are_reported() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(work.path()).unwrap();
        let files = vec![
            entry("db/a", b"aaaa", &store),
            entry("db/b", b"bbbb", &store),
        ];
        let mut verifier = Verifier::new(&store, Reporter::plain());
        verifier.verify_manifest(&manifest(files));
        verifier.verify_backup("absent");
        let report = verifier.finish();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.bytes_read, 8);
        assert_eq!(report.bad_manifests.len(), 1);
        assert!(!report.is_ok());
        assert!(work.path().join(OBJECTS_DIR).is_dir());
    }
}
