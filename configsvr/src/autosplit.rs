//! The auto-splitter: on the config server's primary, a loop that finds chunks grown past the
//! maximum chunk size and splits them at the median shard key of their documents, as MongoDB's
//! auto-splitter does.
//!
//! The maximum is MongoDB's: `config.settings {_id: "chunksize", value: <MB>}` for the cluster
//! (default 128 MB), overridden per collection by `maxChunkSizeBytes` in `config.collections`
//! (set with `configureCollectionBalancing`). `config.settings {_id: "autosplit", enabled:
//! false}` turns it off. A chunk whose documents share one key cannot be split; it is left as it
//! is and looked at again next round, never flagged forever.

use std::{sync::Arc, time::Duration};

use bson::{Document, doc};
use shoal_common::{CommandError, Namespace};
use shoal_member::MemberCore;

use crate::{measure::number, server::ConfigServer, store};

/// How often the primary looks for chunks to split.
pub const AUTOSPLIT_INTERVAL: Duration = Duration::from_secs(2);
/// MongoDB's default maximum chunk size.
pub const CHUNK_SIZE_DEFAULT_BYTES: i64 = 128 << 20;
/// The smallest maximum chunk size accepted (MongoDB's lower bound, 1 MB).
pub const CHUNK_SIZE_MIN_BYTES: i64 = 1 << 20;
/// Splits one round makes at most; the next round continues.
pub const SPLITS_PER_ROUND_MAX: usize = 64;

/// A chunk found too large: its collection and bounds.
struct Oversized {
    ns: Namespace,
    min: Document,
    max: Document,
}

impl ConfigServer {
    /// Runs forever; acts only while this member is primary. Errors are logged once per
    /// outage, not once per round.
    pub(crate) async fn autosplit_loop(self, core: Arc<MemberCore>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(AUTOSPLIT_INTERVAL).await;
            if !core.repl.is_primary() {
                continue;
            }
            // A split of a chunk under migration would abort the migration: wait for it.
            let Ok(_no_migration) = self.migration_lock.try_lock() else {
                continue;
            };
            match self.autosplit_round(&core).await {
                Ok(0) => failing = false,
                Ok(splits) => {
                    failing = false;
                    tracing::info!(splits, "auto-split round");
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "auto-split round failed");
                }
                Err(_) => {}
            }
        }
    }

    /// One round: measures every chunk (one scan per shard and collection) and splits those
    /// over the maximum. Returns the number of splits.
    pub(crate) async fn autosplit_round(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<usize, CommandError> {
        let settings = store::find_all(core, "settings", doc! {}).await?;
        let setting = |id: &str| settings.iter().find(|s| s.get_str("_id") == Ok(id));
        if setting("autosplit").is_some_and(|s| s.get_bool("enabled") == Ok(false)) {
            return Ok(0);
        }
        let cluster_max = setting("chunksize")
            .and_then(|s| number(s.get("value")?))
            .map_or(CHUNK_SIZE_DEFAULT_BYTES, |mb| mb.saturating_mul(1 << 20))
            .max(CHUNK_SIZE_MIN_BYTES);
        let mut oversized = Vec::new();
        for collection in store::find_all(core, "collections", doc! {}).await? {
            let Ok(ns) = collection.get_str("_id").map(Namespace::parse) else {
                continue;
            };
            let ns = ns?;
            let max = collection
                .get("maxChunkSizeBytes")
                .and_then(number)
                .unwrap_or(cluster_max)
                .max(CHUNK_SIZE_MIN_BYTES);
            oversized.extend(self.oversized_chunks(core, &ns, max).await?);
            if oversized.len() >= SPLITS_PER_ROUND_MAX {
                break;
            }
        }
        let mut splits = 0;
        for chunk in oversized.into_iter().take(SPLITS_PER_ROUND_MAX) {
            if self.split_oversized(core, &chunk).await? {
                splits += 1;
            }
        }
        Ok(splits)
    }

    async fn oversized_chunks(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        max_bytes: i64,
    ) -> Result<Vec<Oversized>, CommandError> {
        let collection = self.load_collection(core, ns).await?;
        let sizes = self.chunk_sizes(core, &collection).await?;
        let max_bytes = u64::try_from(max_bytes).unwrap_or(0);
        Ok(collection
            .map
            .chunks
            .iter()
            .zip(sizes)
            .filter(|(_, size)| size.bytes > max_bytes)
            .map(|(chunk, _)| Oversized {
                ns: ns.clone(),
                min: chunk.min.clone(),
                max: chunk.max.clone(),
            })
            .collect())
    }

    /// Splits one oversized chunk at its median, if it still exists and can be split.
    async fn split_oversized(
        &self,
        core: &Arc<MemberCore>,
        chunk: &Oversized,
    ) -> Result<bool, CommandError> {
        let _guard = self.metadata_lock.lock().await;
        let collection = self.load_collection(core, &chunk.ns).await?;
        let bounds = doc! {"bounds": [chunk.min.clone(), chunk.max.clone()]};
        let middle = match self
            .median_of_chunk(core, &chunk.ns, &collection, &bounds)
            .await
        {
            Ok(middle) => middle,
            // Split or merged meanwhile, or one key value only: look again next round.
            Err(error) => {
                tracing::debug!(ns = %chunk.ns, min = %chunk.min, %error, "oversized chunk not split this round");
                return Ok(false);
            }
        };
        self.split_at(core, &chunk.ns, collection, &middle).await?;
        Ok(true)
    }
}
