//! The router: speaks the MongoDB wire protocol to clients and forwards each request over QUIC
//! to the shards that own its data, merging the answers (sorted merges, skip and limit, summed
//! counts, split aggregation pipelines). It holds no document data: its only state is a cache of
//! the routing metadata (read from the config servers) and the cursors of open client queries.
//!
//! Code map: [`topology`] is the pure routing cache; [`cluster`] does the I/O to config servers
//! and shards; [`cursors`] merges shard cursors into client cursors; [`commands`] dispatches
//! each client command.

pub mod cluster;
pub mod commands;
pub mod cursors;
pub mod topology;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use shoal_rpc::{RpcClient, certs::TlsPaths};

/// Runs the router until SIGINT/SIGTERM, refreshing its routing cache in the background every
/// `routing_refresh` (never when `None`).
pub async fn run(
    bind: SocketAddr,
    configdb: &str,
    tls: &TlsPaths,
    routing_refresh: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    cluster::parse_configdb(configdb).map_err(|e| anyhow::anyhow!(e.errmsg))?;
    let rpc = RpcClient::new(tls).map_err(|e| anyhow::anyhow!("TLS client: {e}"))?;
    let cluster = Arc::new(cluster::Cluster::new(rpc, configdb));
    let refresher = tokio::spawn(cluster::refresh_loop(
        Arc::clone(&cluster),
        bind.to_string(),
        routing_refresh,
    ));
    let router = Arc::new(commands::Router::new(
        Arc::clone(&cluster),
        bind.to_string(),
    ));
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding TCP on {bind}"))?;
    tracing::info!(bind = %bind, configdb, "router ready");
    let server = tokio::spawn(shoal_wire::serve(listener, router));
    shoal_node::shutdown_signal().await;
    server.abort();
    refresher.abort();
    Ok(())
}
