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
    /// How often to ask the config server for routing changes, in milliseconds; 0 never asks
    /// (the router then learns of changes from shards refusing its stale versions).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    routing_refresh_ms: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_node::init_logging();
    let args = Args::parse();
    let tls = args.tls.resolve(None).map_err(anyhow::Error::msg)?;
    let routing_refresh = shoal_router::cluster::refresh_interval_from_ms(args.routing_refresh_ms);
    shoal_router::run(args.bind, &args.configdb, &tls, routing_refresh).await
}
