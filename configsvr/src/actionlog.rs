//! `config.actionlog`: MongoDB's record of what the balancer did, read by operators and by
//! `sh.status()`-style tools. Balancer rounds log `{what: "balancer.round"}` and migrations
//! `{what: "moveChunk.commit" | "moveChunk.error"}`; only the newest [`ACTIONLOG_MAX`] entries
//! are kept, so the log cannot grow without bound.

use std::sync::Arc;

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::CommandError;
use shoal_docstore::AtomicOp;
use shoal_member::MemberCore;

use crate::{
    server::{ConfigServer, put},
    store,
};

/// `config.actionlog`.
pub const ACTIONLOG: &str = "actionlog";
/// Entries kept; older ones are deleted as new ones arrive.
pub const ACTIONLOG_MAX: usize = 200;

impl ConfigServer {
    /// Appends `{_id, server, time, what, details}` (plus `ns` when given) to the action log and
    /// deletes the oldest entries beyond [`ACTIONLOG_MAX`], in one atomic write. The routing
    /// version is not bumped: the log is not routing metadata.
    pub(crate) async fn log_action(
        &self,
        core: &Arc<MemberCore>,
        what: &str,
        ns: Option<&str>,
        details: Document,
    ) -> Result<(), CommandError> {
        let mut entry = doc! {
            "_id": ObjectId::new(),
            "server": core.host(),
            "what": what,
            "time": bson::DateTime::now(),
        };
        if let Some(ns) = ns {
            entry.insert("ns", ns);
        }
        entry.insert("details", details);
        let existing = store::find_all(core, ACTIONLOG, doc! {}).await?;
        let mut ops = vec![put(ACTIONLOG, entry)];
        for id in ids_to_trim(&existing, ACTIONLOG_MAX - 1) {
            ops.push(AtomicOp::Delete {
                coll: ACTIONLOG.into(),
                id,
            });
        }
        store::apply(core, ops).await
    }
}

/// The `_id`s of the oldest entries to delete so that `keep` remain: oldest by `time`, then by
/// `_id` (ObjectIds grow with time, so entries written within one millisecond keep their order).
pub(crate) fn ids_to_trim(entries: &[Document], keep: usize) -> Vec<Bson> {
    if entries.len() <= keep {
        return Vec::new();
    }
    let mut dated: Vec<(i64, Bson)> = entries
        .iter()
        .filter_map(|entry| {
            let time = entry
                .get_datetime("time")
                .map_or(0, |t| t.timestamp_millis());
            Some((time, entry.get("_id")?.clone()))
        })
        .collect();
    dated.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| match (&a.1, &b.1) {
            (Bson::ObjectId(x), Bson::ObjectId(y)) => x.cmp(y),
            _ => std::cmp::Ordering::Equal,
        })
    });
    let excess = dated.len().saturating_sub(keep);
    dated.into_iter().take(excess).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i32, millis: i64) -> Document {
        doc! {"_id": id, "time": bson::DateTime::from_millis(millis)}
    }

    #[test]
    fn the_oldest_entries_are_trimmed() {
        let entries = vec![entry(1, 30), entry(2, 10), entry(3, 20), entry(4, 40)];
        assert_eq!(
            ids_to_trim(&entries, 2),
            vec![Bson::Int32(2), Bson::Int32(3)]
        );
        assert_eq!(ids_to_trim(&entries, 4), Vec::<Bson>::new());
        assert_eq!(ids_to_trim(&entries, 9), Vec::<Bson>::new());
        assert_eq!(ids_to_trim(&entries, 0).len(), 4);
    }

    #[test]
    fn entries_without_time_go_first() {
        let entries = vec![entry(1, 30), doc! {"_id": 2}];
        assert_eq!(ids_to_trim(&entries, 1), vec![Bson::Int32(2)]);
    }
}
