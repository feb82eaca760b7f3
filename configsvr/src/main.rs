//! `shoal-config`: one member of the config server replica set, which holds the cluster's
//! metadata (shards, databases, collections, chunks) in RocksDB and answers the routers'
//! metadata commands over QUIC, and administrators over the MongoDB wire protocol.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::Parser;
use shoal_config::ConfigServer;
use shoal_member::{MemberConfig, Role, run_member};
use shoal_node::TlsArgs;

/// A member of the Shoal config server replica set.
#[derive(Debug, Parser)]
#[command(name = "shoal-config", version, about)]
struct Args {
    /// The config server replica-set name (routers name it in `--configdb NAME/HOST:PORT`).
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
        role: Role::Config,
    };
    run_member(config, Arc::new(ConfigServer::default())).await
}
