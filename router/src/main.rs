//! `shoal-router`: the stateless front door of a Shoal cluster, like mongos. Clients connect with
//! any MongoDB driver; the router routes each request to the shards that own its data over QUIC.

use std::net::SocketAddr;

use clap::Parser;
use shoal_node::TlsArgs;

/// The Shoal router (a mongos for Shoal clusters).
#[derive(Debug, Parser)]
#[command(name = "shoal-router", version, about)]
struct Args {
    /// Address for MongoDB wire-protocol clients (TCP).
    #[arg(long, value_name = "HOST:PORT")]
    bind: SocketAddr,
    /// The config server replica set: `NAME/HOST:PORT[,HOST:PORT...]`.
    #[arg(long, value_name = "NAME/HOST:PORT,...")]
    configdb: String,
    #[command(flatten)]
    tls: TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_node::init_logging();
    let args = Args::parse();
    let tls = args.tls.resolve(None).map_err(anyhow::Error::msg)?;
    shoal_router::run(args.bind, &args.configdb, &tls).await
}
