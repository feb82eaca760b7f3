//! The scratch cluster of `shoal backup verify --restore`: the real `shoal-config`,
//! `shoal-shard` and `shoal-router` processes (found where `shoal up` finds them) started on a
//! restored backup's data directories, on free loopback ports, until the check is done.
//!
//! Each restored set is a one-member set already (the restore rebuilt its Raft state for the
//! port it was given), so the members need no `--initiate-members`. The processes run in their
//! own process groups with `SHOAL_EXIT_WITH_PARENT=1`, as under `shoal up`: they are stopped in
//! order by [`ScratchCluster::stop`], killed if the cluster is dropped without it (a panic), and
//! stop themselves if this process is killed outright.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bson::{Document, doc};
use mongodb::{
    Client,
    options::{ClientOptions, ServerAddress},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};

use super::manifest::SetRole;
use crate::{
    certs,
    up::{self, LOCAL_HOST, NodeRole},
};

/// Lowest port a scratch cluster uses. The range lies below the kernel's ephemeral ports
/// (32768 and up on Linux), so an outgoing connection cannot take a port between the check and
/// the server binding it, and below the range the integration tests draw from (12000-32000).
const PORT_LOW: u16 = 10_000;
/// One past the highest port a scratch cluster uses.
const PORT_HIGH: u16 = 12_000;
/// Random ports tried before giving up.
const PORT_ATTEMPTS_MAX: usize = 2_000;
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Server selection and connect timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client reading a member may wait to select it.
const READ_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A replica set of the scratch cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchSet {
    /// The set name (its data directory under the data root).
    pub name: String,
    /// Config server or shard.
    pub role: SetRole,
    /// Its one member's port on 127.0.0.1.
    pub port: u16,
}

impl ScratchSet {
    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("{LOCAL_HOST}:{}", self.port)
    }
}

/// One process.
#[derive(Debug)]
struct ScratchNode {
    name: String,
    role: NodeRole,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A scratch cluster; see the module documentation.
#[derive(Debug)]
pub struct ScratchCluster {
    /// Members in start order (config server first), then the router.
    nodes: Vec<ScratchNode>,
    bin_dir: PathBuf,
}

/// `count` distinct ports on 127.0.0.1 free for both TCP and UDP (every node listens on both,
/// wire protocol and QUIC, on one port number).
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let state = RandomState::new();
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    let span = u64::from(PORT_HIGH - PORT_LOW);
    for attempt in 0..PORT_ATTEMPTS_MAX {
        if ports.len() == count {
            break;
        }
        let offset = state.hash_one(attempt) % span;
        let port = PORT_LOW + u16::try_from(offset).unwrap_or(0);
        if !ports.contains(&port) && port_is_free(port) {
            ports.push(port);
        }
    }
    anyhow::ensure!(
        ports.len() == count,
        "found only {} of {count} free ports in {PORT_LOW}..{PORT_HIGH} after {PORT_ATTEMPTS_MAX} attempts",
        ports.len()
    );
    Ok(ports)
}

fn port_is_free(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

impl ScratchCluster {
    /// Lays out (and makes certificates for) a cluster whose sets' data directories are
    /// `data_root/<set>`, with logs and certificates under `root`. Starts nothing.
    pub fn new(
        root: &Path,
        data_root: &Path,
        bin_dir: &Path,
        sets: &[ScratchSet],
        router_port: u16,
    ) -> anyhow::Result<ScratchCluster> {
        let config = sets
            .iter()
            .find(|set| set.role == SetRole::Config)
            .context("the backup has no config server set")?;
        let ca_dir = root.join("tls").join("ca");
        certs::ensure_ca(&ca_dir)?;
        let mut nodes = Vec::new();
        for set in sets {
            let role = match set.role {
                SetRole::Config => NodeRole::Config,
                SetRole::Shard => NodeRole::Shard,
            };
            let tls = node_tls(root, &ca_dir, &set.name)?;
            let args = vec![
                "--replset".to_owned(),
                set.name.clone(),
                "--bind".to_owned(),
                set.host(),
                "--dir".to_owned(),
                data_root.join(&set.name).display().to_string(),
                "--tls-dir".to_owned(),
                tls,
            ];
            nodes.push(node(root, &set.name, role, set.port, args));
        }
        // Start order: the config server first (shards and router talk to it).
        nodes.sort_by_key(|node| node.role != NodeRole::Config);
        let router_tls = node_tls(root, &ca_dir, "router")?;
        let router_args = vec![
            "--bind".to_owned(),
            format!("{LOCAL_HOST}:{router_port}"),
            "--configdb".to_owned(),
            format!("{}/{}", config.name, config.host()),
            "--tls-dir".to_owned(),
            router_tls,
        ];
        nodes.push(node(
            root,
            "router",
            NodeRole::Router,
            router_port,
            router_args,
        ));
        Ok(ScratchCluster {
            nodes,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    /// The router's port.
    pub fn router_port(&self) -> u16 {
        self.nodes.last().map_or(0, |node| node.port)
    }

    /// Starts every member, waits (at most [`up::STARTUP_WAIT`] each) until each is its set's
    /// primary, then starts the router and waits until it reads the shard list through the
    /// config server. On failure the error carries the failing node's log tail; the caller
    /// still calls [`ScratchCluster::stop`].
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for binary in [NodeRole::Config, NodeRole::Shard, NodeRole::Router] {
            let path = self.bin_dir.join(binary.binary_name());
            anyhow::ensure!(
                path.is_file(),
                "cannot find {}; build the server binaries (cargo build --release) or pass --bin-dir",
                path.display()
            );
        }
        let members = self.nodes.len().saturating_sub(1);
        for index in 0..members {
            self.spawn(index)?;
        }
        for index in 0..members {
            self.wait_primary(index).await?;
        }
        let router = members;
        self.spawn(router)?;
        self.wait_router(router, members.saturating_sub(1)).await
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let binary = self.bin_dir.join(node.role.binary_name());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        let stdout = log.try_clone().context("cannot duplicate a log handle")?;
        let child = Command::new(&binary)
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .process_group(0)
            .env(shoal_node::EXIT_WITH_PARENT_ENV, "1")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until member `index` listens, answers and is primary of its (one-member) set.
    async fn wait_primary(&mut self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + up::STARTUP_WAIT;
        let address = format!("{LOCAL_HOST}:{}", self.nodes[index].port);
        while TcpStream::connect(&address).await.is_err() {
            self.check_alive(index, deadline, "did not listen")?;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        let client = member_client(self.nodes[index].port, PROBE_TIMEOUT)?;
        loop {
            let hello = client
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await;
            if hello.is_ok_and(|reply| up::is_writable_primary(&reply)) {
                return Ok(());
            }
            self.check_alive(index, deadline, "did not become primary")?;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Waits until the router lists `shards` shards in `config.shards`.
    async fn wait_router(&mut self, index: usize, shards: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + up::STARTUP_WAIT;
        let address = format!("{LOCAL_HOST}:{}", self.nodes[index].port);
        while TcpStream::connect(&address).await.is_err() {
            self.check_alive(index, deadline, "did not listen")?;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        let client = member_client(self.nodes[index].port, PROBE_TIMEOUT)?;
        loop {
            let listed = client
                .database("config")
                .collection::<Document>("shards")
                .count_documents(doc! {})
                .await;
            if listed.is_ok_and(|n| n == shards as u64) {
                return Ok(());
            }
            self.check_alive(index, deadline, "did not serve config.shards")?;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Fails if node `index` exited or `deadline` passed, with its log's tail.
    fn check_alive(&mut self, index: usize, deadline: Instant, what: &str) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        if let Some(child) = node.child.as_mut()
            && let Some(status) = child.try_wait().context("cannot check a child process")?
        {
            node.child = None;
            anyhow::bail!(failure(node, &format!("exited during startup ({status})")));
        }
        if deadline <= Instant::now() {
            let reason = format!("{what} within {} s", up::STARTUP_WAIT.as_secs());
            anyhow::bail!(failure(node, &reason));
        }
        Ok(())
    }

    /// Stops every process: the router, the shards, the config server, each with SIGTERM and,
    /// after [`up::STOP_WAIT`], SIGKILL.
    pub async fn stop(&mut self) {
        for node in self.nodes.iter_mut().rev() {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok())
                && let Err(error) = kill(Pid::from_raw(pid), Signal::SIGTERM)
            {
                tracing::warn!(node = %node.name, %error, "cannot send SIGTERM");
            }
            if tokio::time::timeout(up::STOP_WAIT, child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "{} did not stop within {} s; killing it",
                    node.name,
                    up::STOP_WAIT.as_secs()
                );
                if let Err(error) = child.kill().await {
                    eprintln!("shoal: cannot kill {}: {error}", node.name);
                }
            }
        }
    }
}

fn node_tls(root: &Path, ca_dir: &Path, name: &str) -> anyhow::Result<String> {
    let dir = root.join("tls").join(name);
    certs::ensure_node_cert(ca_dir, &dir, name, &certs::default_hosts())?;
    Ok(dir.display().to_string())
}

fn node(root: &Path, name: &str, role: NodeRole, port: u16, args: Vec<String>) -> ScratchNode {
    ScratchNode {
        name: name.to_owned(),
        role,
        port,
        args,
        log: root.join(format!("{name}.log")),
        child: None,
    }
}

fn failure(node: &ScratchNode, reason: &str) -> String {
    let mut message = format!(
        "scratch node {} ({}) {reason}; log {}",
        node.name,
        node.role.binary_name(),
        node.log.display()
    );
    if let Some(tail) = up::log_tail(&node.log) {
        message.push_str(&format!("\n--- last lines of its log ---\n{tail}"));
    }
    message
}

/// A driver client talking to 127.0.0.1:`port` alone.
fn member_client(port: u16, selection_timeout: Duration) -> anyhow::Result<Client> {
    let mut options = ClientOptions::default();
    options.hosts = vec![ServerAddress::Tcp {
        host: LOCAL_HOST.to_owned(),
        port: Some(port),
    }];
    options.direct_connection = Some(true);
    options.server_selection_timeout = Some(selection_timeout);
    options.connect_timeout = Some(selection_timeout);
    options.app_name = Some("shoal backup verify".to_owned());
    Client::with_options(options).context("cannot create a driver client")
}

/// A client for reading the member of `set`.
pub fn set_client(set: &ScratchSet) -> anyhow::Result<Client> {
    member_client(set.port, READ_SELECTION_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_in_range() {
        let ports = free_ports(4).unwrap();
        assert_eq!(ports.len(), 4);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert!(ports.iter().all(|p| (PORT_LOW..PORT_HIGH).contains(p)));
    }

    #[test]
    fn the_layout_starts_the_config_server_first_and_the_router_last() {
        let root = tempfile::tempdir().unwrap();
        let sets = [
            ScratchSet {
                name: "shard0".to_owned(),
                role: SetRole::Shard,
                port: 10_001,
            },
            ScratchSet {
                name: "cfg".to_owned(),
                role: SetRole::Config,
                port: 10_002,
            },
        ];
        let data = root.path().join("data");
        let cluster =
            ScratchCluster::new(root.path(), &data, Path::new("/bin"), &sets, 10_003).unwrap();
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["cfg", "shard0", "router"]);
        assert_eq!(cluster.router_port(), 10_003);
        let shard = &cluster.nodes[1].args;
        assert_eq!(
            shard[..4],
            ["--replset", "shard0", "--bind", "127.0.0.1:10001"]
        );
        assert_eq!(shard[5], data.join("shard0").display().to_string());
        let router = &cluster.nodes[2].args;
        assert_eq!(router[3], "cfg/127.0.0.1:10002");
        assert!(
            root.path()
                .join("tls")
                .join("router")
                .join("node.pem")
                .is_file()
        );
    }
}
