//! Process plumbing shared by every Shoal server binary (router, config server, shard): the
//! TLS flags, logging setup, shutdown signals, and the server-information replies (`buildInfo`,
//! `serverStatus`, `getParameter`, ...) that drivers and mongosh send to any server.
//!
//! It holds no data and no protocol logic, so the router can use it without pulling in storage.

pub mod info;

use std::path::PathBuf;

use shoal_rpc::certs::TlsPaths;

/// Where a node finds its cluster certificate authority and its own certificate.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// Directory holding `ca.pem`, `node.pem` and `node-key.pem` (as written by `shoal certs`
    /// or `shoal up`). Individual flags below override single files.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The cluster CA certificate (PEM) that every peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Resolves the three paths, with `fallback_dir/tls` as the directory when no flag names
    /// one, and checks that the files exist.
    pub fn resolve(&self, fallback_dir: Option<&std::path::Path>) -> Result<TlsPaths, String> {
        let dir = self
            .tls_dir
            .clone()
            .or_else(|| fallback_dir.map(|d| d.join("tls")));
        let from_dir = dir.as_deref().map(TlsPaths::from_dir);
        let pick = |flag: &Option<PathBuf>, from: Option<&PathBuf>, what: &str| {
            flag.clone()
                .or_else(|| from.cloned())
                .ok_or_else(|| format!("no {what} given: pass --tls-dir DIR or --tls-{what} FILE"))
        };
        let paths = TlsPaths {
            ca: pick(&self.tls_ca, from_dir.as_ref().map(|p| &p.ca), "ca")?,
            cert: pick(&self.tls_cert, from_dir.as_ref().map(|p| &p.cert), "cert")?,
            key: pick(&self.tls_key, from_dir.as_ref().map(|p| &p.key), "key")?,
        };
        for file in [&paths.ca, &paths.cert, &paths.key] {
            if !file.is_file() {
                return Err(format!(
                    "TLS file {} does not exist (create certificates with `shoal certs`)",
                    file.display()
                ));
            }
        }
        Ok(paths)
    }
}

/// The command line of a replica-set member (`shoal-shard`, `shoal-config`).
#[derive(Clone, Debug, clap::Args)]
pub struct MemberArgs {
    /// The replica-set name. For a shard it becomes the shard's name when the set is added to a
    /// cluster; routers name the config server's in `--configdb NAME/HOST:PORT`.
    #[arg(long, value_name = "NAME")]
    pub replset: String,
    /// Address for both the MongoDB wire protocol (TCP) and the cluster's QUIC RPC (UDP).
    #[arg(long, value_name = "HOST:PORT")]
    pub bind: std::net::SocketAddr,
    /// Data directory; created if missing. The member restarts with what it holds.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Initiates the replica set with these members (`HOST:PORT,...`, in `_id` order) on first
    /// start, as `rs.initiate()` would; only the first host listed initiates. Without it the
    /// set waits for `replSetInitiate`.
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub initiate_members: Vec<String>,
    /// The shortest election timeout in milliseconds (the longest is twice it).
    #[arg(long, value_name = "MS", default_value_t = 400)]
    pub election_timeout_ms: u64,
    /// Log entries between snapshots (older entries are then purged).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub snapshot_entries: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
}

/// Logs to stderr, `info` and above unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn,openraft=error")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// When this environment variable is `1`, a server shuts down once its parent process is gone
/// (`shoal up` sets it for the nodes it supervises).
pub const EXIT_WITH_PARENT_ENV: &str = "SHOAL_EXIT_WITH_PARENT";
/// How often an orphan-aware server checks that its parent is alive.
pub const PARENT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Resolves when the parent process that started this one has exited (the process was
/// re-parented), if [`EXIT_WITH_PARENT_ENV`] asks for it; never resolves otherwise.
async fn parent_gone() {
    if std::env::var(EXIT_WITH_PARENT_ENV).as_deref() != Ok("1") {
        std::future::pending::<()>().await;
    }
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(PARENT_CHECK_INTERVAL).await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "the supervising process is gone; shutting down");
            return;
        }
    }
}

/// Resolves when the process receives SIGINT or SIGTERM, or loses the parent that asked it to
/// exit with it.
pub async fn shutdown_signal() {
    tokio::select! {
        _ = signal_received() => {}
        _ = parent_gone() => {}
    }
}

async fn signal_received() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be stopped with SIGKILL.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}
