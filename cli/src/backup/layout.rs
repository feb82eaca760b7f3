//! The dump directory's layout and what `--db` / `--collection` select. mongodump's layout:
//! `DIR/<db>/<coll>.bson` and `DIR/<db>/<coll>.metadata.json`, each with `.gz` appended when
//! compressed. Collection names may hold characters a file name cannot (`/`), so file names
//! percent-escape them as mongodump does (`%2F`); restore unescapes any `%XX`.

use std::collections::BTreeMap;

use super::FormatError;

/// Databases never dumped or restored: users, cluster metadata and node-local data.
pub const SYSTEM_DATABASES: &[&str] = &["admin", "config", "local"];
/// The prefix of collections the server manages itself.
const SYSTEM_COLLECTION_PREFIX: &str = "system.";
/// The suffix of a document file.
const BSON_SUFFIX: &str = ".bson";
/// The suffix of a metadata file.
const METADATA_SUFFIX: &str = ".metadata.json";
/// What compression appends.
pub const GZIP_SUFFIX: &str = ".gz";

/// Which databases and collections a dump or restore covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    db: Option<String>,
    collection: Option<String>,
}

impl Selection {
    /// Everything (but the system databases and `system.*` collections), or one database, or
    /// one collection of one database.
    pub fn new(db: Option<String>, collection: Option<String>) -> Result<Selection, FormatError> {
        if let Some(db) = &db
            && SYSTEM_DATABASES.contains(&db.as_str())
        {
            return Err(FormatError::Selection(format!(
                "the {} databases are never dumped or restored; --db {db} selects nothing",
                SYSTEM_DATABASES.join(", ")
            )));
        }
        if let Some(collection) = &collection {
            if db.is_none() {
                return Err(FormatError::Selection("--collection needs --db".to_owned()));
            }
            if collection.starts_with(SYSTEM_COLLECTION_PREFIX) {
                return Err(FormatError::Selection(format!(
                    "system collections are never dumped or restored; --collection {collection} selects nothing"
                )));
            }
        }
        Ok(Selection { db, collection })
    }

    /// The one database selected, if any.
    pub fn db(&self) -> Option<&str> {
        self.db.as_deref()
    }

    /// Whether database `db` is covered.
    pub fn includes_db(&self, db: &str) -> bool {
        !SYSTEM_DATABASES.contains(&db) && self.db.as_deref().is_none_or(|wanted| wanted == db)
    }

    /// Whether collection `coll` of database `db` is covered.
    pub fn includes(&self, db: &str, coll: &str) -> bool {
        self.includes_db(db)
            && !coll.starts_with(SYSTEM_COLLECTION_PREFIX)
            && self
                .collection
                .as_deref()
                .is_none_or(|wanted| wanted == coll)
    }

    /// What is selected, for messages: `everything`, `database d`, `collection d.c`.
    pub fn describe(&self) -> String {
        match (&self.db, &self.collection) {
            (Some(db), Some(coll)) => format!("collection {db}.{coll}"),
            (Some(db), None) => format!("database {db}"),
            _ => "everything".to_owned(),
        }
    }
}

/// The file name holding collection `coll`'s documents.
pub fn bson_file_name(coll: &str, gzip: bool) -> String {
    format!("{}{BSON_SUFFIX}{}", escape(coll), gzip_suffix(gzip))
}

/// The file name holding collection `coll`'s metadata.
pub fn metadata_file_name(coll: &str, gzip: bool) -> String {
    format!("{}{METADATA_SUFFIX}{}", escape(coll), gzip_suffix(gzip))
}

fn gzip_suffix(gzip: bool) -> &'static str {
    if gzip { GZIP_SUFFIX } else { "" }
}

/// Whether a dump file is gzip-compressed (by its name, as mongorestore decides).
pub fn is_gzip(file_name: &str) -> bool {
    file_name.ends_with(GZIP_SUFFIX)
}

/// Percent-escapes the characters a file name cannot hold (and `%` itself).
pub fn escape(coll: &str) -> String {
    let mut out = String::with_capacity(coll.len());
    for c in coll.chars() {
        if matches!(c, '%' | '/' | '\\') || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`] (and mongodump's escaping, which escapes more characters).
pub fn unescape(stem: &str) -> Result<String, FormatError> {
    let bad = |reason: &str| FormatError::FileName {
        name: stem.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            out.push(bytes[at]);
            at += 1;
            continue;
        }
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or_else(|| bad("'%' is not followed by two hex digits"))?;
        out.push(hex);
        at += 3;
    }
    String::from_utf8(out).map_err(|_| bad("the unescaped name is not UTF-8"))
}

/// One collection found in a dump: its name and its files (names inside the database's
/// directory). A collection may lack metadata (restored without options or indexes) or
/// documents (restored empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedCollection {
    /// The collection name.
    pub collection: String,
    /// The document file, if any.
    pub bson: Option<String>,
    /// The metadata file, if any.
    pub metadata: Option<String>,
}

/// The collections of database `db` among the file names of its directory, sorted by name and
/// filtered by `selection`. Other files are ignored; the same collection both compressed and
/// not is an error (which one is the backup?).
pub fn collections_in(
    db: &str,
    file_names: &[String],
    selection: &Selection,
) -> Result<Vec<DumpedCollection>, FormatError> {
    let mut found: BTreeMap<String, DumpedCollection> = BTreeMap::new();
    for name in file_names {
        let plain = name.strip_suffix(GZIP_SUFFIX).unwrap_or(name);
        let (stem, is_bson) = match (
            plain.strip_suffix(METADATA_SUFFIX),
            plain.strip_suffix(BSON_SUFFIX),
        ) {
            (Some(stem), _) => (stem, false),
            (None, Some(stem)) => (stem, true),
            (None, None) => continue,
        };
        let collection = unescape(stem)?;
        if !selection.includes(db, &collection) {
            continue;
        }
        let entry = found
            .entry(collection.clone())
            .or_insert_with(|| DumpedCollection {
                collection,
                bson: None,
                metadata: None,
            });
        let slot = if is_bson {
            &mut entry.bson
        } else {
            &mut entry.metadata
        };
        if let Some(previous) = slot {
            return Err(FormatError::FileName {
                name: name.clone(),
                reason: format!("{previous} holds the same collection"),
            });
        }
        *slot = Some(name.clone());
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn selection_filters() {
        let all = Selection::new(None, None).unwrap();
        assert!(all.includes("app", "users"));
        assert!(!all.includes("app", "system.views"));
        for db in ["admin", "config", "local"] {
            assert!(!all.includes_db(db));
        }
        let one_db = Selection::new(Some("app".into()), None).unwrap();
        assert!(one_db.includes("app", "users"));
        assert!(!one_db.includes("other", "users"));
        let one = Selection::new(Some("app".into()), Some("users".into())).unwrap();
        assert!(one.includes("app", "users"));
        assert!(!one.includes("app", "users2"));
        assert!(!one.includes("other", "users"));
        assert_eq!(one.describe(), "collection app.users");
        assert_eq!(all.describe(), "everything");
    }

    #[test]
    fn selections_that_select_nothing_are_errors() {
        assert!(Selection::new(None, Some("users".into())).is_err());
        assert!(Selection::new(Some("config".into()), None).is_err());
        assert!(Selection::new(Some("app".into()), Some("system.js".into())).is_err());
    }

    #[test]
    fn file_names() {
        assert_eq!(bson_file_name("users", false), "users.bson");
        assert_eq!(bson_file_name("users", true), "users.bson.gz");
        assert_eq!(metadata_file_name("a/b", false), "a%2Fb.metadata.json");
        assert_eq!(metadata_file_name("u", true), "u.metadata.json.gz");
        assert!(is_gzip("u.bson.gz"));
        assert!(!is_gzip("u.bson"));
    }

    #[test]
    fn escaping_round_trips() {
        for name in [
            "plain",
            "a/b",
            "100%",
            "back\\slash",
            "tab\there",
            "ünï.cödé",
        ] {
            let escaped = escape(name);
            assert!(!escaped.contains('/'), "{escaped}");
            assert_eq!(unescape(&escaped).unwrap(), name);
        }
        // mongodump escapes more (url.PathEscape); restore reads that too.
        assert_eq!(unescape("a%20b%3Ac").unwrap(), "a b:c");
        assert!(unescape("bad%2").is_err());
        assert!(unescape("bad%zz").is_err());
        assert!(unescape("bad%FF").is_err());
    }

    #[test]
    fn collections_are_grouped_sorted_and_filtered() {
        let files = names(&[
            "b.bson",
            "b.metadata.json",
            "a.bson.gz",
            "a.metadata.json.gz",
            "only_meta.metadata.json",
            "x%2Fy.bson",
            "system.views.bson",
            "notes.txt",
            "prelude.json",
        ]);
        let all = Selection::default();
        let found = collections_in("d", &files, &all).unwrap();
        let summary: Vec<(&str, Option<&str>, Option<&str>)> = found
            .iter()
            .map(|c| {
                (
                    c.collection.as_str(),
                    c.bson.as_deref(),
                    c.metadata.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", Some("a.bson.gz"), Some("a.metadata.json.gz")),
                ("b", Some("b.bson"), Some("b.metadata.json")),
                ("only_meta", None, Some("only_meta.metadata.json")),
                ("x/y", Some("x%2Fy.bson"), None),
            ]
        );
        let just_b = Selection::new(Some("d".into()), Some("b".into())).unwrap();
        assert_eq!(collections_in("d", &files, &just_b).unwrap().len(), 1);
        assert!(collections_in("config", &files, &all).unwrap().is_empty());
    }

    #[test]
    fn compressed_and_plain_copies_conflict() {
        let files = names(&["a.bson", "a.bson.gz"]);
        let error = collections_in("d", &files, &Selection::default()).unwrap_err();
        assert!(matches!(error, FormatError::FileName { .. }), "{error}");
    }
}
