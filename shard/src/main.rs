//! `shoal-shard`: one member of a shard's replica set. It keeps user documents in RocksDB under
//! `--dir`, takes internal requests from routers over QUIC (UDP `--bind`) and MongoDB wire
//! connections (TCP `--bind`) for administration and direct reads.

use std::sync::Arc;

use clap::Parser;
use shoal_member::{MemberConfig, NoExtension, Role, run_member};
use shoal_node::MemberArgs;

/// A member of a Shoal shard replica set.
#[derive(Debug, Parser)]
#[command(name = "shoal-shard", version, about)]
struct Args {
    #[command(flatten)]
    member: MemberArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_node::init_logging();
    let config = MemberConfig::from_args(Args::parse().member, Role::Shard)?;
    run_member(config, Arc::new(NoExtension)).await
}
