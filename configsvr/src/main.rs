//! `shoal-config`: one member of the config server replica set, which holds the cluster's
//! metadata (shards, databases, collections, chunks) in RocksDB and answers the routers'
//! metadata commands over QUIC, and administrators over the MongoDB wire protocol.

use std::sync::Arc;

use clap::Parser;
use shoal_config::ConfigServer;
use shoal_member::{MemberConfig, Role, run_member};
use shoal_node::MemberArgs;

/// A member of the Shoal config server replica set.
#[derive(Debug, Parser)]
#[command(name = "shoal-config", version, about)]
struct Args {
    #[command(flatten)]
    member: MemberArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_node::init_logging();
    let config = MemberConfig::from_args(Args::parse().member, Role::Config)?;
    run_member(config, Arc::new(ConfigServer::default())).await
}
