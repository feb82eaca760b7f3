//! Sharding administration through the router. The config server owns the metadata, so the
//! router forwards these commands there and refreshes its routing cache right after a change,
//! so that its next request already routes by the new metadata.

use bson::Document;
use shoal_common::CommandError;

use super::{Router, shard_command};

/// Commands that only read metadata; the others change it and trigger a cache refresh.
const READ_ONLY_ADMIN: &[&str] = &["listShards", "balancerStatus"];

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
        let reply = self
            .cluster
            .call_config("admin", shard_command(command))
            .await?;
        if CommandError::from_reply(&reply).is_none() && !READ_ONLY_ADMIN.contains(&name) {
            self.cluster.refresh().await?;
        }
        Ok(reply)
    }
}
