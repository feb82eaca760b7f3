//! `shoal-shard`: one member of a shard's replica set. It keeps user documents in RocksDB under
//! `--dir`, takes internal requests from routers over QUIC (UDP `--bind`) and MongoDB wire
//! connections (TCP `--bind`) for administration and direct reads.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::Parser;
use shoal_member::{MemberConfig, NoExtension, Role, run_member};
use shoal_node::TlsArgs;

/// A member of a Shoal shard replica set.
#[derive(Debug, Parser)]
#[command(name = "shoal-shard", version, about)]
struct Args {
    /// The replica-set name; it becomes the shard's name when the set is added to a cluster.
    #[arg(long, value_name = "NAME")]
    replset: String,
    /// Address for both the MongoDB wire protocol (TCP) and the cluster's QUIC RPC (UDP).
    #[arg(long, value_name = "HOST:PORT")]
    bind: SocketAddr,
    /// Data directory; created if missing. The member restarts with what it holds.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    tls: TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_node::init_logging();
    let args = Args::parse();
    let tls = args
        .tls
        .resolve(Some(&args.dir))
        .map_err(anyhow::Error::msg)?;
    let config = MemberConfig {
        replset: args.replset,
        bind: args.bind,
        dir: args.dir,
        tls,
        role: Role::Shard,
    };
    run_member(config, Arc::new(NoExtension)).await
}
