//! `backups/<id>/manifest.json`: what one physical backup holds, and the checks a manifest must
//! pass before any file is read or written on its word. I/O-free.
//!
//! Every path in a manifest comes from a file on disk that someone could edit, so a restore
//! writes only where [`Manifest::check`] allows: relative paths of plain components, set names
//! that are one directory name, objects named by their own SHA-256.

use std::{
    collections::BTreeSet,
    path::{Component, Path},
};

use serde::{Deserialize, Serialize};

use super::checksum::{COLLECTIONS_PER_SET_MAX, CollectionChecksum};

/// The manifest format this version writes. Format 2 added the sets' collection checksums
/// (`collections`); readers refuse formats they do not know.
pub const MANIFEST_FORMAT: u32 = 2;
/// Formats this version reads: 1 (no collection checksums) and [`MANIFEST_FORMAT`].
pub const MANIFEST_FORMATS_READ: [u32; 2] = [1, MANIFEST_FORMAT];
/// The directory of content-addressed objects inside a store.
pub const OBJECTS_DIR: &str = "objects";
/// The directory of backups (one subdirectory per backup id) inside a store.
pub const BACKUPS_DIR: &str = "backups";
/// The manifest's file name inside `backups/<id>/`.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Hex digits of a SHA-256.
const SHA256_HEX_CHARS: usize = 64;
/// The most replica sets one backup may name (a bound on what a manifest makes us do).
pub const SETS_MAX: usize = 1024;
/// The most files one set may hold.
pub const FILES_PER_SET_MAX: usize = 1_000_000;

/// What a manifest can be wrong about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The manifest was written by a format this version does not read.
    #[error(
        "manifest format {found} is not supported (this shoal reads formats 1 to {MANIFEST_FORMAT})"
    )]
    Format {
        /// The format the manifest declares.
        found: u32,
    },
    /// The manifest's id is not the name of the directory holding it.
    #[error("manifest id {found:?} does not match its directory {expected:?}")]
    Id {
        /// The directory name.
        expected: String,
        /// The id inside.
        found: String,
    },
    /// A set name is not usable as one directory name, or repeats.
    #[error("invalid set name {0:?}")]
    SetName(String),
    /// A file path could write outside its set's directory.
    #[error("set {set}: unsafe file path {path:?}")]
    Path {
        /// The set.
        set: String,
        /// The path.
        path: String,
    },
    /// A checksum is not 64 lower-case hex digits, or the object is not named by it.
    #[error("set {set}: file {path:?} has checksum {sha256:?} and object {object:?}")]
    Object {
        /// The set.
        set: String,
        /// The file.
        path: String,
        /// Its checksum.
        sha256: String,
        /// Its object.
        object: String,
    },
    /// A collection checksum names an invalid or repeated namespace, or its digest is not 64
    /// lower-case hex digits.
    #[error("set {set}: invalid collection checksum for {ns:?}")]
    Collection {
        /// The set.
        set: String,
        /// The namespace.
        ns: String,
    },
    /// Too many sets, files or collections.
    #[error("{0}")]
    TooLarge(String),
}

/// Whether a replica set holds cluster metadata or documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetRole {
    /// The config server's replica set.
    Config,
    /// A shard's replica set.
    Shard,
}

impl SetRole {
    /// `config` or `shard`.
    pub fn as_str(self) -> &'static str {
        match self {
            SetRole::Config => "config",
            SetRole::Shard => "shard",
        }
    }
}

/// One backup; see the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written.
    pub format: u32,
    /// The backup id: its creation time, `YYYYMMDDTHHMMSS.mmmZ`, also its directory name.
    pub id: String,
    /// When the backup started (RFC 3339, UTC).
    pub created: String,
    /// The same instant in milliseconds since the epoch.
    pub created_millis: i64,
    /// When the last file was stored (RFC 3339, UTC).
    pub completed: String,
    /// `config.version`'s `clusterId` (hex ObjectId): which cluster this is a backup of.
    pub cluster_id: String,
    /// Bytes this backup added to the store (objects that were not there yet).
    pub bytes_copied: u64,
    /// Bytes of all its files, stored before or now.
    pub bytes_referenced: u64,
    /// The time (ms since the epoch, after every checkpoint) up to which the oplog archive was
    /// complete for every set when the backup finished: a restore into a new cluster replays
    /// every set to it, one cluster-wide point. Absent in backups made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_at_millis: Option<i64>,
    /// One entry per replica set, the config server's first.
    pub sets: Vec<SetBackup>,
}

/// One replica set's checkpoint inside a backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetBackup {
    /// The replica-set name; the set's directory in a restore.
    pub name: String,
    /// Config server or shard.
    pub role: SetRole,
    /// The shard id in `config.shards` (shards only; usually the set name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The member (`host:port`) the checkpoint was taken on.
    pub member: String,
    /// Whether that member was `primary` or `secondary` when asked.
    pub member_state: String,
    /// The last log entry the checkpoint reflects (0: none).
    pub applied_index: u64,
    /// The term of that entry.
    pub applied_term: u64,
    /// The proposal time of the last write in the checkpoint (RFC 3339, UTC).
    pub applied_time: String,
    /// The same instant in milliseconds since the epoch.
    pub applied_time_millis: i64,
    /// False when no write was found in the log and `applied_time` is the checkpoint's time.
    pub applied_time_exact: bool,
    /// The set's files, relative to a member's data directory (`db/000012.sst`).
    pub files: Vec<FileEntry>,
    /// Every user collection's checksum as of `applied_index`, sorted by namespace (see
    /// `checksum`); `None` in format 1 manifests, and when the checkpoint could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<CollectionChecksum>>,
}

/// One file of a set's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    /// Where the file goes, relative to the member's data directory.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The object holding its bytes, relative to the store (`objects/<sha256>`).
    pub object: String,
}

impl Manifest {
    /// The manifest's text: pretty JSON, so a human can read and diff it.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail; an empty string would
        // then fail the reader's check loudly.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and [`check`](Manifest::check)s a manifest found in directory `dir_name`.
    pub fn from_json(text: &str, dir_name: &str) -> Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|error| format!("not a manifest: {error}"))?;
        manifest
            .check(dir_name)
            .map_err(|error| error.to_string())?;
        Ok(manifest)
    }

    /// Checks everything a reader relies on; see the module documentation.
    pub fn check(&self, dir_name: &str) -> Result<(), ManifestError> {
        if !MANIFEST_FORMATS_READ.contains(&self.format) {
            return Err(ManifestError::Format { found: self.format });
        }
        if self.id != dir_name {
            return Err(ManifestError::Id {
                expected: dir_name.to_owned(),
                found: self.id.clone(),
            });
        }
        if self.sets.len() > SETS_MAX {
            return Err(ManifestError::TooLarge(format!(
                "{} sets (at most {SETS_MAX})",
                self.sets.len()
            )));
        }
        let mut names = BTreeSet::new();
        for set in &self.sets {
            if !is_plain_name(&set.name) || !names.insert(set.name.as_str()) {
                return Err(ManifestError::SetName(set.name.clone()));
            }
            set.check()?;
        }
        Ok(())
    }

    /// Every file entry with its set, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = (&SetBackup, &FileEntry)> {
        self.sets
            .iter()
            .flat_map(|set| set.files.iter().map(move |file| (set, file)))
    }
}

impl SetBackup {
    fn check(&self) -> Result<(), ManifestError> {
        if self.files.len() > FILES_PER_SET_MAX {
            return Err(ManifestError::TooLarge(format!(
                "set {}: {} files (at most {FILES_PER_SET_MAX})",
                self.name,
                self.files.len()
            )));
        }
        let mut paths = BTreeSet::new();
        for file in &self.files {
            if !is_safe_relative_path(&file.path) || !paths.insert(file.path.as_str()) {
                return Err(ManifestError::Path {
                    set: self.name.clone(),
                    path: file.path.clone(),
                });
            }
            if !is_sha256_hex(&file.sha256) || file.object != object_name(&file.sha256) {
                return Err(ManifestError::Object {
                    set: self.name.clone(),
                    path: file.path.clone(),
                    sha256: file.sha256.clone(),
                    object: file.object.clone(),
                });
            }
        }
        self.check_collections()
    }

    fn check_collections(&self) -> Result<(), ManifestError> {
        let collections = self.collections.as_deref().unwrap_or_default();
        if collections.len() > COLLECTIONS_PER_SET_MAX {
            return Err(ManifestError::TooLarge(format!(
                "set {}: {} collection checksums (at most {COLLECTIONS_PER_SET_MAX})",
                self.name,
                collections.len()
            )));
        }
        let mut names = BTreeSet::new();
        for collection in collections {
            let valid_ns = collection
                .ns
                .split_once('.')
                .is_some_and(|(db, coll)| !db.is_empty() && !coll.is_empty());
            if !valid_ns
                || !names.insert(collection.ns.as_str())
                || !is_sha256_hex(&collection.digest)
            {
                return Err(ManifestError::Collection {
                    set: self.name.clone(),
                    ns: collection.ns.clone(),
                });
            }
        }
        Ok(())
    }

    /// Bytes of all the set's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

/// `objects/<sha256>`: where the store keeps the bytes whose SHA-256 is `sha256`.
pub fn object_name(sha256: &str) -> String {
    format!("{OBJECTS_DIR}/{sha256}")
}

/// Whether `text` is 64 lower-case hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == SHA256_HEX_CHARS
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Whether `name` is one ordinary directory name (no separator, not `.`/`..`, not hidden).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && is_safe_relative_path(name)
}

/// Whether `path` is relative and made only of ordinary `/`-separated names (no empty, `.` or
/// `..` component), so joining it to a directory stays inside that directory. Stricter than
/// [`Path::components`], which drops inner `.` components silently.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn manifest() -> Manifest {
        let file = FileEntry {
            path: "db/000012.sst".to_owned(),
            size: 4,
            sha256: SHA.to_owned(),
            object: object_name(SHA),
        };
        let set = SetBackup {
            name: "shard0".to_owned(),
            role: SetRole::Shard,
            shard: Some("shard0".to_owned()),
            member: "127.0.0.1:1".to_owned(),
            member_state: "secondary".to_owned(),
            applied_index: 12,
            applied_term: 2,
            applied_time: "2025-01-01T00:00:00.000Z".to_owned(),
            applied_time_millis: 1_735_689_600_000,
            applied_time_exact: true,
            files: vec![file],
            collections: Some(vec![CollectionChecksum {
                ns: "app.items".to_owned(),
                documents: 3,
                digest: SHA.to_owned(),
            }]),
        };
        Manifest {
            format: MANIFEST_FORMAT,
            id: "20250101T000000.000Z".to_owned(),
            created: "2025-01-01T00:00:00.000Z".to_owned(),
            created_millis: 1_735_689_600_000,
            completed: "2025-01-01T00:00:01.000Z".to_owned(),
            cluster_id: "65a000000000000000000000".to_owned(),
            bytes_copied: 4,
            bytes_referenced: 4,
            consistent_at_millis: None,
            sets: vec![set],
        }
    }

    #[test]
    fn manifests_round_trip_through_json() {
        let original = manifest();
        let text = original.to_json();
        assert!(text.contains(r#""appliedIndex": 12"#), "{text}");
        assert!(text.contains(r#""role": "shard""#), "{text}");
        let parsed = Manifest::from_json(&text, &original.id).unwrap();
        assert_eq!(parsed, original);
        assert_eq!(parsed.files().count(), 1);
        assert_eq!(parsed.sets[0].bytes(), 4);
        assert!(text.contains(r#""ns": "app.items""#), "{text}");
    }

    #[test]
    fn format_1_manifests_read_as_without_collection_checksums() {
        let mut old = manifest();
        old.format = 1;
        old.sets[0].collections = None;
        let text = old.to_json();
        assert!(!text.contains("collections"), "{text}");
        let parsed = Manifest::from_json(&text, &old.id).unwrap();
        assert_eq!(parsed.sets[0].collections, None);
        assert_eq!(parsed.format, 1);
    }

    #[test]
    fn bad_collection_checksums_are_refused() {
        let id = manifest().id;
        for (ns, digest) in [
            ("noDot", SHA.to_owned()),
            (".c", SHA.to_owned()),
            ("app.items", SHA.to_uppercase()),
            ("app.items", "12".to_owned()),
        ] {
            let mut bad = manifest();
            let collections = bad.sets[0].collections.as_mut().unwrap();
            collections[0].ns = ns.to_owned();
            collections[0].digest = digest;
            assert!(
                matches!(bad.check(&id), Err(ManifestError::Collection { .. })),
                "{ns}"
            );
        }
        let mut twice = manifest();
        let collections = twice.sets[0].collections.as_mut().unwrap();
        collections.push(collections[0].clone());
        assert!(matches!(
            twice.check(&id),
            Err(ManifestError::Collection { .. })
        ));
    }

    #[test]
    fn unknown_formats_and_misplaced_manifests_are_refused() {
        let mut future = manifest();
        future.format = MANIFEST_FORMAT + 1;
        assert_eq!(
            future.check(&future.id.clone()),
            Err(ManifestError::Format {
                found: MANIFEST_FORMAT + 1
            })
        );
        let moved = manifest();
        assert!(matches!(
            moved.check("other"),
            Err(ManifestError::Id { .. })
        ));
        assert!(Manifest::from_json("{}", "x").is_err());
        let extra = manifest().to_json().replacen('{', r#"{"surprise": 1,"#, 1);
        assert!(Manifest::from_json(&extra, &manifest().id).is_err());
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "db/../../x",
            "",
            "db/./x",
            "a\\b",
            "db//x",
            "db/",
        ] {
            let mut escaping = manifest();
            escaping.sets[0].files[0].path = bad.to_owned();
            let id = escaping.id.clone();
            assert!(
                matches!(escaping.check(&id), Err(ManifestError::Path { .. })),
                "{bad:?}"
            );
        }
        for bad in ["..", ".hidden", "a/b", ""] {
            let mut named = manifest();
            named.sets[0].name = bad.to_owned();
            let id = named.id.clone();
            assert_eq!(
                named.check(&id),
                Err(ManifestError::SetName(bad.to_owned())),
                "{bad:?}"
            );
        }
        let mut twice = manifest();
        twice.sets.push(twice.sets[0].clone());
        let id = twice.id.clone();
        assert!(matches!(twice.check(&id), Err(ManifestError::SetName(_))));
    }

    #[test]
    fn objects_are_named_by_their_checksum() {
        let mut upper = manifest();
        upper.sets[0].files[0].sha256 = SHA.to_uppercase();
        let id = upper.id.clone();
        assert!(matches!(
            upper.check(&id),
            Err(ManifestError::Object { .. })
        ));
        let mut elsewhere = manifest();
        elsewhere.sets[0].files[0].object = format!("../{SHA}");
        assert!(matches!(
            elsewhere.check(&id),
            Err(ManifestError::Object { .. })
        ));
        assert!(is_sha256_hex(SHA));
        assert!(!is_sha256_hex(&SHA[1..]));
    }
}
