//! Atomic writes across collections, for callers that keep several collections consistent with
//! each other: the config server changes `config.chunks`, `config.collections` and its routing
//! version together, and a crash must leave either all of a change or none of it.
//!
//! This bypasses the command layer on purpose: the caller has already decided what to write,
//! and a command batch cannot span collections.

use bson::{Bson, Document};
use shoal_common::{CommandError, Namespace};

use crate::{
    catalog,
    engine::Engine,
    error::StoreError,
    index,
    keys::{decode_document, doc_key, encode_document},
    kv::Space,
    txn::{Reader, Txn},
};

/// The document stored (or staged) at `key`.
fn stored(txn: &Txn<'_>, key: &[u8]) -> Result<Option<Document>, StoreError> {
    txn.get(Space::Docs, key)?
        .map(|bytes| decode_document(key, &bytes))
        .transpose()
}

/// The most operations one atomic batch takes.
pub const ATOMIC_OPS_MAX: usize = 100_000;

/// One write of an atomic batch.
#[derive(Clone, Debug, PartialEq)]
pub enum AtomicOp {
    /// Inserts or replaces the document with `doc`'s `_id` in `coll`.
    Put {
        /// The collection (in the batch's database).
        coll: String,
        /// The whole document; must have an `_id`.
        doc: Document,
    },
    /// Deletes the document with this `_id` from `coll`, if present.
    Delete {
        /// The collection (in the batch's database).
        coll: String,
        /// The `_id` of the document.
        id: Bson,
    },
    /// Deletes the document with this `_id` from `coll` only if it is exactly `expect` (a
    /// compare-and-delete); otherwise the whole batch fails with WriteConflict and writes nothing.
    DeleteIfUnchanged {
        /// The collection (in the batch's database).
        coll: String,
        /// The document that must still be stored.
        expect: Document,
    },
}

impl AtomicOp {
    /// The op as an element of `_shoalApplyAtomic.ops`, in database `db`.
    pub fn to_document(&self, db: &str) -> Document {
        match self {
            AtomicOp::Put { coll, doc } => bson::doc! {"db": db, "put": coll, "doc": doc.clone()},
            AtomicOp::Delete { coll, id } => {
                bson::doc! {"db": db, "delete": coll, "id": id.clone()}
            }
            AtomicOp::DeleteIfUnchanged { coll, expect } => {
                bson::doc! {"db": db, "deleteIfUnchanged": coll, "expect": expect.clone()}
            }
        }
    }

    /// Parses one element of `_shoalApplyAtomic.ops`: `{db, put: coll, doc}`,
    /// `{db, delete: coll, id}` or `{db, deleteIfUnchanged: coll, expect}`.
    pub fn parse(op: &Document) -> Result<(String, AtomicOp), CommandError> {
        let db = op
            .get_str("db")
            .map_err(|_| CommandError::bad_value("atomic op without 'db'"))?;
        let coll = |field: &str| op.get_str(field).map(str::to_owned);
        let document = |field: &str| {
            op.get_document(field).cloned().map_err(|_| {
                CommandError::bad_value(format!("atomic op without document '{field}'"))
            })
        };
        let parsed = if let Ok(coll) = coll("put") {
            AtomicOp::Put {
                coll,
                doc: document("doc")?,
            }
        } else if let Ok(coll) = coll("delete") {
            let id = op
                .get("id")
                .cloned()
                .ok_or_else(|| CommandError::bad_value("atomic delete without 'id'"))?;
            AtomicOp::Delete { coll, id }
        } else if let Ok(coll) = coll("deleteIfUnchanged") {
            AtomicOp::DeleteIfUnchanged {
                coll,
                expect: document("expect")?,
            }
        } else {
            return Err(CommandError::bad_value(format!("unknown atomic op {op}")));
        };
        Ok((db.to_owned(), parsed))
    }
}

impl Engine {
    /// `_shoalApplyAtomic {ops: [...]}` (see [`AtomicOp::parse`]): several writes, possibly in
    /// several databases, as one atomic batch. Routers and the config server use it for steps
    /// that must not be split by a crash; as a command it replicates like any other write.
    pub(crate) fn apply_atomic_command(
        &self,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ops = match command.get("ops") {
            Some(Bson::Array(ops)) => ops,
            Some(other) => return Err(CommandError::type_mismatch("ops", "array", other)),
            None => return Err(CommandError::missing_field("_shoalApplyAtomic", "ops")),
        };
        let mut parsed = Vec::with_capacity(ops.len());
        for op in ops {
            let op = op
                .as_document()
                .ok_or_else(|| CommandError::type_mismatch("ops", "object", op))?;
            parsed.push(AtomicOp::parse(op)?);
        }
        let scoped: Vec<(&str, &AtomicOp)> =
            parsed.iter().map(|(db, op)| (db.as_str(), op)).collect();
        self.apply_atomic_across(&scoped)?;
        Ok(Document::new())
    }

    /// Applies `ops` to database `db` as one synced batch: all of them or, on any error, none.
    /// Collections are created as needed.
    pub fn apply_atomic(&self, db: &str, ops: &[AtomicOp]) -> Result<(), CommandError> {
        let scoped: Vec<(&str, &AtomicOp)> = ops.iter().map(|op| (db, op)).collect();
        self.apply_atomic_across(&scoped)
    }

    /// Like [`Engine::apply_atomic`], each operation in its own database: one synced batch for
    /// all of them (the router's shard-key moves delete a document and record the move in
    /// `admin` together).
    pub fn apply_atomic_across(&self, ops: &[(&str, &AtomicOp)]) -> Result<(), CommandError> {
        if ops.len() > ATOMIC_OPS_MAX {
            return Err(CommandError::bad_value(format!(
                "an atomic batch takes at most {ATOMIC_OPS_MAX} operations, got {}",
                ops.len()
            )));
        }
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        for (db, op) in ops {
            let db = *db;
            match op {
                AtomicOp::Put { coll, doc } => {
                    let ns = Namespace::new(db, coll)?.to_string();
                    let id = doc
                        .get("_id")
                        .ok_or_else(|| CommandError::bad_value("an atomic put needs an _id"))?;
                    let mut entry = catalog::ensure(&mut txn, &ns)?;
                    let key = doc_key(entry.id, id);
                    // The replaced document matters only to indexes and validation.
                    let old = if entry.indexes.is_empty() && entry.validation.is_empty() {
                        None
                    } else {
                        stored(&txn, &key)?
                    };
                    index::stage_document(
                        &mut txn,
                        &mut entry,
                        key,
                        old.as_ref(),
                        doc,
                        encode_document(doc),
                    )?;
                }
                AtomicOp::DeleteIfUnchanged { coll, expect } => {
                    let ns = Namespace::new(db, coll)?.to_string();
                    let conflict = || {
                        CommandError::new(
                            shoal_common::ErrorCode(112),
                            format!("the document changed in {ns} while it was being moved"),
                        )
                    };
                    let id = expect.get("_id").ok_or_else(conflict)?;
                    let mut entry = catalog::lookup(&txn, &ns)?.ok_or_else(conflict)?;
                    let key = doc_key(entry.id, id);
                    match stored(&txn, &key)? {
                        Some(old) if &old == expect => {
                            index::unstage_document(&mut txn, &mut entry, key, &old)?;
                        }
                        _ => return Err(conflict()),
                    }
                }
                AtomicOp::Delete { coll, id } => {
                    let ns = Namespace::new(db, coll)?.to_string();
                    if let Some(mut entry) = catalog::lookup(&txn, &ns)? {
                        let key = doc_key(entry.id, id);
                        if let Some(old) = stored(&txn, &key)? {
                            index::unstage_document(&mut txn, &mut entry, key, &old)?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bson::doc;

    use super::*;
    use crate::kv::MemKv;

    fn count(engine: &Engine, coll: &str) -> i64 {
        let reply = engine.execute("config", &doc! {"count": coll});
        reply
            .get_i32("n")
            .map(i64::from)
            .unwrap_or_else(|_| reply.get_i64("n").unwrap_or(-1))
    }

    #[test]
    fn puts_and_deletes_across_collections_together() {
        let engine = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let ops = vec![
            AtomicOp::Put {
                coll: "a".into(),
                doc: doc! {"_id": 1, "x": 1},
            },
            AtomicOp::Put {
                coll: "b".into(),
                doc: doc! {"_id": "k", "y": 2},
            },
        ];
        engine.apply_atomic("config", &ops).unwrap();
        assert_eq!(count(&engine, "a"), 1);
        assert_eq!(count(&engine, "b"), 1);
        let replace = vec![
            AtomicOp::Put {
                coll: "a".into(),
                doc: doc! {"_id": 1, "x": 5},
            },
            AtomicOp::Delete {
                coll: "b".into(),
                id: Bson::String("k".into()),
            },
            AtomicOp::Delete {
                coll: "missing".into(),
                id: Bson::Int32(1),
            },
        ];
        engine.apply_atomic("config", &replace).unwrap();
        assert_eq!(count(&engine, "b"), 0);
        let found = engine.execute("config", &doc! {"find": "a", "filter": {"_id": 1}});
        let batch = found
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        assert_eq!(batch[0].as_document().unwrap().get_i32("x").unwrap(), 5);
    }

    #[test]
    fn compare_and_delete_spans_databases_atomically() {
        let engine = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let doc = doc! {"_id": 1, "k": 1};
        engine
            .apply_atomic(
                "app",
                &[AtomicOp::Put {
                    coll: "c".into(),
                    doc: doc.clone(),
                }],
            )
            .unwrap();
        let changed = AtomicOp::DeleteIfUnchanged {
            coll: "c".into(),
            expect: doc! {"_id": 1, "k": 2},
        };
        let record = AtomicOp::Put {
            coll: "moves".into(),
            doc: doc! {"_id": "m"},
        };
        let error = engine
            .apply_atomic_across(&[("app", &changed), ("admin", &record)])
            .unwrap_err();
        assert_eq!(error.code.0, 112);
        assert_eq!(count(&engine, "moves"), 0);
        let same = AtomicOp::DeleteIfUnchanged {
            coll: "c".into(),
            expect: doc,
        };
        engine
            .apply_atomic_across(&[("app", &same), ("admin", &record)])
            .unwrap();
        let reply = engine.execute("app", &doc! {"count": "c"});
        assert_eq!(reply.get_i32("n").unwrap(), 0);
        let reply = engine.execute("admin", &doc! {"count": "moves"});
        assert_eq!(reply.get_i32("n").unwrap(), 1);
    }

    #[test]
    fn a_bad_op_writes_nothing() {
        let engine = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let ops = vec![
            AtomicOp::Put {
                coll: "a".into(),
                doc: doc! {"_id": 1},
            },
            AtomicOp::Put {
                coll: "a".into(),
                doc: doc! {"no_id": 1},
            },
        ];
        assert!(engine.apply_atomic("config", &ops).is_err());
        assert_eq!(count(&engine, "a"), 0);
    }
}
