//! Versioned routing at the router: every request for a sharded collection carries the
//! `shardVersion` of its target shard, taken from the routing snapshot that chose the target,
//! and a shard whose metadata differs refuses it with StaleConfig (13388) before executing
//! anything. This module holds what the router does about such refusals: it refreshes the
//! namespace's routing, re-targets, and retries only the work the refusing shard did not do,
//! a bounded number of times with backoff (a migration's critical section lasts well under a
//! second, so a few short waits outlast it).
//!
//! The decisions (backoff, which statements to resend, whether the shard rather than the
//! router is behind) are pure functions; [`StaleRetry::after`] and [`retry_stale`] are the
//! only I/O, through [`Cluster::refresh_after_stale`].

use std::{collections::HashSet, future::Future, time::Duration};

use bson::{Bson, Document};
use shoal_common::{CommandError, Epoch, ErrorCode, Namespace, ShardVersion};

use crate::cluster::Cluster;

/// How many times one client command is retried after StaleConfig refusals.
pub const STALE_RETRIES_MAX: u32 = 20;
/// The wait before the first retry.
pub const STALE_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// The longest wait between two retries (the wait doubles up to it).
pub const STALE_BACKOFF_MAX: Duration = Duration::from_millis(500);

const _: () = assert!(STALE_BACKOFF_INITIAL.as_millis() > 0);
const _: () = assert!(STALE_BACKOFF_INITIAL.as_millis() <= STALE_BACKOFF_MAX.as_millis());

/// Whether `error` is a StaleConfig refusal (command-level, or a write error of one statement).
pub fn is_stale(error: &CommandError) -> bool {
    error.code == ErrorCode::STALE_CONFIG
}

/// Adds `shardVersion` to a request when the collection is sharded (`version` is `Some`).
pub fn with_shard_version(mut request: Document, version: Option<ShardVersion>) -> Document {
    if let Some(version) = version {
        request.insert("shardVersion", version.to_document());
    }
    request
}

/// A reply passed through to the client as it is, unless it is a StaleConfig refusal, which
/// becomes an error so the caller retries.
pub fn fail_if_stale(reply: Document) -> Result<Document, CommandError> {
    match CommandError::from_reply(&reply) {
        Some(error) if is_stale(&error) => Err(error),
        _ => Ok(reply),
    }
}

/// Where one shard request goes, with the version to send (`None` for an unsharded
/// collection or the config server). Both come from one routing snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardTarget {
    /// The replica-set target (or one member's address).
    pub host: String,
    /// The shard's version of the collection in the snapshot that chose `host`.
    pub version: Option<ShardVersion>,
}

impl ShardTarget {
    /// A target that sends no version.
    pub fn unversioned(host: String) -> ShardTarget {
        ShardTarget {
            host,
            version: None,
        }
    }

    /// `request` as this target receives it.
    pub fn request(&self, request: &Document) -> Document {
        with_shard_version(request.clone(), self.version)
    }
}

/// What a StaleConfig refusal says about the two sides' versions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StaleInfo {
    /// The version the router sent (`vReceived`); absent from per-statement write errors.
    pub received: Option<ShardVersion>,
    /// The version the shard has (`vWanted`); absent when the shard has no metadata.
    pub wanted: Option<ShardVersion>,
}

impl StaleInfo {
    /// Reads `vReceived`/`vWanted` from the error, at its top level or in `errInfo` (where
    /// MongoDB puts them in write errors). Unreadable versions count as absent.
    pub fn of(error: &CommandError) -> StaleInfo {
        let info = error.extra.get_document("errInfo").ok();
        let version = |field: &str| {
            error
                .extra
                .get(field)
                .or_else(|| info.and_then(|info| info.get(field)))
                .and_then(|value| ShardVersion::from_bson(value).ok())
        };
        StaleInfo {
            received: version("vReceived"),
            wanted: version("vWanted"),
        }
    }

    /// Whether the refusing shard is behind the config server (so its metadata must be pushed
    /// again) rather than the router being behind (which the refresh already fixed).
    /// `fresh_epoch` is the collection's epoch after the refresh, `None` when it is no longer
    /// sharded (the retry then sends no version). Only a command-level refusal, which names the
    /// version the router sent, can tell; per-statement refusals come from migrations in
    /// progress, which a push must not disturb.
    pub fn shard_is_behind(&self, fresh_epoch: Option<Epoch>) -> bool {
        let (Some(received), Some(fresh_epoch)) = (self.received, fresh_epoch) else {
            return false;
        };
        match self.wanted {
            None => true,
            Some(wanted) if wanted.epoch != fresh_epoch => true,
            Some(wanted) => received.epoch == wanted.epoch && wanted.major < received.major,
        }
    }
}

/// The retry budget of one client command.
#[derive(Debug)]
pub struct StaleRetry {
    retries: u32,
    backoff: Duration,
}

impl Default for StaleRetry {
    fn default() -> Self {
        StaleRetry {
            retries: 0,
            backoff: STALE_BACKOFF_INITIAL,
        }
    }
}

impl StaleRetry {
    /// The wait before the next retry, `None` once [`STALE_RETRIES_MAX`] retries were used.
    fn next_delay(&mut self) -> Option<Duration> {
        if STALE_RETRIES_MAX <= self.retries {
            return None;
        }
        self.retries += 1;
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(STALE_BACKOFF_MAX);
        Some(delay)
    }

    /// Called after an attempt on `ns` failed with `error`: when it is a StaleConfig refusal
    /// and the budget allows, waits, refreshes the routing of `ns` and returns true (retry);
    /// otherwise returns false and the caller reports `error`.
    pub async fn after(&mut self, cluster: &Cluster, ns: &Namespace, error: &CommandError) -> bool {
        if !is_stale(error) {
            return false;
        }
        let Some(delay) = self.next_delay() else {
            tracing::warn!(ns = %ns, retries = STALE_RETRIES_MAX, error = %error, "shard kept refusing the routing version");
            return false;
        };
        tokio::time::sleep(delay).await;
        if let Err(refresh_error) = cluster.refresh_after_stale(ns, error).await {
            // The retry still runs: it fails with StaleConfig again and spends the budget.
            tracing::debug!(ns = %ns, error = %refresh_error, "cannot refresh routing after StaleConfig");
        }
        true
    }
}

/// Runs `attempt` until it succeeds, fails with anything but StaleConfig, or the retry budget
/// is spent. For work an attempt does entirely or not at all (reads, findAndModify).
pub async fn retry_stale<T, F, Fut>(
    cluster: &Cluster,
    ns: &Namespace,
    mut attempt: F,
) -> Result<T, CommandError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CommandError>>,
{
    let mut retry = StaleRetry::default();
    loop {
        match attempt().await {
            Err(error) if retry.after(cluster, ns, &error).await => {}
            result => return result,
        }
    }
}

/// The client-batch indexes of a write batch to send again after an attempt over `pending`
/// whose statements at `stale` were refused: an ordered batch resumes at the first refused
/// statement (nothing after it ran); an unordered one resends just the refused statements.
pub fn indexes_to_retry(pending: &[usize], stale: &[usize], ordered: bool) -> Vec<usize> {
    if ordered {
        let Some(first) = stale.iter().min() else {
            return Vec::new();
        };
        return pending.iter().copied().filter(|i| first <= i).collect();
    }
    let stale: HashSet<usize> = stale.iter().copied().collect();
    pending
        .iter()
        .copied()
        .filter(|i| stale.contains(i))
        .collect()
}

/// Whether a write error entry (`{index, code, errmsg}`) is a StaleConfig refusal.
pub fn is_stale_write_error(entry: &Document) -> bool {
    matches!(entry.get("code"), Some(Bson::Int32(code)) if *code == ErrorCode::STALE_CONFIG.0)
        || matches!(entry.get("code"), Some(Bson::Int64(code)) if *code == i64::from(ErrorCode::STALE_CONFIG.0))
}

#[cfg(test)]
mod tests {
    use bson::{doc, oid::ObjectId};

    use super::*;

    fn version(epoch: Epoch, major: u32) -> ShardVersion {
        ShardVersion { epoch, major }
    }

    fn stale(received: Option<ShardVersion>, wanted: Option<ShardVersion>) -> CommandError {
        let mut error = CommandError::new(ErrorCode::STALE_CONFIG, "stale");
        if let Some(received) = received {
            error.extra.insert("vReceived", received.to_document());
        }
        if let Some(wanted) = wanted {
            error.extra.insert("vWanted", wanted.to_document());
        }
        error
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_the_budget_ends() {
        let mut retry = StaleRetry::default();
        let delays: Vec<u128> = std::iter::from_fn(|| retry.next_delay())
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays.len(), STALE_RETRIES_MAX as usize);
        assert_eq!(delays[..7], [10, 20, 40, 80, 160, 320, 500]);
        assert!(delays[7..].iter().all(|d| *d == 500));
        assert_eq!(retry.next_delay(), None);
    }

    #[test]
    fn only_stale_config_is_retried() {
        assert!(is_stale(&stale(None, None)));
        assert!(!is_stale(&CommandError::new(
            ErrorCode::DUPLICATE_KEY,
            "dup"
        )));
        let reply = stale(None, None).to_document();
        assert!(fail_if_stale(reply).is_err());
        let other = CommandError::new(ErrorCode::BAD_VALUE, "bad").to_document();
        assert_eq!(fail_if_stale(other.clone()).unwrap(), other);
        assert!(is_stale_write_error(
            &doc! {"index": 0, "code": 13388, "errmsg": "x"}
        ));
        assert!(is_stale_write_error(
            &doc! {"index": 0, "code": 13388_i64, "errmsg": "x"}
        ));
        assert!(!is_stale_write_error(
            &doc! {"index": 0, "code": 11000, "errmsg": "x"}
        ));
    }

    #[test]
    fn versions_are_read_from_the_top_level_or_err_info() {
        let epoch = Epoch(ObjectId::new());
        let info = StaleInfo::of(&stale(Some(version(epoch, 3)), Some(version(epoch, 2))));
        assert_eq!(info.received, Some(version(epoch, 3)));
        assert_eq!(info.wanted, Some(version(epoch, 2)));
        let mut nested = CommandError::new(ErrorCode::STALE_CONFIG, "stale");
        nested.extra.insert(
            "errInfo",
            doc! {"vReceived": version(epoch, 4).to_document(), "vWanted": "garbage"},
        );
        let info = StaleInfo::of(&nested);
        assert_eq!(info.received, Some(version(epoch, 4)));
        assert_eq!(info.wanted, None);
    }

    #[test]
    fn only_a_shard_behind_the_config_server_is_synced() {
        let epoch = Epoch(ObjectId::new());
        let other = Epoch(ObjectId::new());
        let behind =
            |received, wanted, fresh| StaleInfo { received, wanted }.shard_is_behind(fresh);
        // The shard has an older major than the router sent: it missed a push.
        assert!(behind(
            Some(version(epoch, 3)),
            Some(version(epoch, 2)),
            Some(epoch)
        ));
        // The router was behind: the refresh fixed it, no push.
        assert!(!behind(
            Some(version(epoch, 2)),
            Some(version(epoch, 3)),
            Some(epoch)
        ));
        // The shard has no metadata, or an older incarnation than the config server.
        assert!(behind(Some(version(epoch, 2)), None, Some(epoch)));
        assert!(behind(
            Some(version(epoch, 2)),
            Some(version(other, 9)),
            Some(epoch)
        ));
        // The router sent an old incarnation; the shard has the current one.
        assert!(!behind(
            Some(version(other, 9)),
            Some(version(epoch, 1)),
            Some(epoch)
        ));
        // Per-statement refusals (no vReceived), and collections no longer sharded.
        assert!(!behind(None, Some(version(epoch, 1)), Some(epoch)));
        assert!(!behind(
            Some(version(epoch, 3)),
            Some(version(epoch, 2)),
            None
        ));
    }

    #[test]
    fn ordered_batches_resume_at_the_first_refusal_unordered_resend_refusals() {
        let pending = [2, 3, 5, 8, 9];
        assert_eq!(indexes_to_retry(&pending, &[8, 3], true), [3, 5, 8, 9]);
        assert_eq!(indexes_to_retry(&pending, &[8, 3], false), [3, 8]);
        assert!(indexes_to_retry(&pending, &[], true).is_empty());
        assert!(indexes_to_retry(&pending, &[], false).is_empty());
    }

    #[test]
    fn versions_are_attached_only_for_sharded_collections() {
        let epoch = Epoch(ObjectId::new());
        let request = doc! {"find": "c"};
        let target = ShardTarget {
            host: "s0/h:1".to_owned(),
            version: Some(version(epoch, 2)),
        };
        let sent = target.request(&request);
        assert_eq!(
            ShardVersion::from_bson(sent.get("shardVersion").unwrap()).unwrap(),
            version(epoch, 2)
        );
        let unversioned = ShardTarget::unversioned("s0/h:1".to_owned()).request(&request);
        assert_eq!(unversioned, request);
    }
}
