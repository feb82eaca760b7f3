//! Sharding administration through the router. The config server owns the metadata, so the
//! router forwards these commands there and refreshes its routing cache right after a change,
//! so that its next request already routes by the new metadata.

use std::time::Duration;

use bson::Document;
use shoal_common::CommandError;

use super::{Router, shard_command};

/// Commands that only read metadata; the others change it and trigger a cache refresh.
const READ_ONLY_ADMIN: &[&str] = &["listShards", "balancerStatus", "balancerCollectionStatus"];

/// How long the router waits for the config server's answer to `movePrimary`, which copies
/// the database's unsharded collections first. The move goes on if this expires; running
/// `movePrimary` again then reports it in progress, and once done, that the shard already is
/// the primary.
const MOVE_PRIMARY_CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Router {
    pub(super) async fn admin_forward(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let name = command
            .keys()
            .next()
            .map(String::as_str)
            .unwrap_or_default();
        if db != "admin" {
            return Err(CommandError::admin_only(name));
        }
        let timeout = if name == "movePrimary" {
            MOVE_PRIMARY_CALL_TIMEOUT
        } else {
            crate::cluster::CONFIG_CALL_TIMEOUT
        };
        let reply = self
            .cluster
            .call_config_timeout("admin", shard_command(command), timeout)
            .await?;
        if CommandError::from_reply(&reply).is_none() && !READ_ONLY_ADMIN.contains(&name) {
            self.cluster.refresh().await?;
        }
        Ok(reply)
    }
}
