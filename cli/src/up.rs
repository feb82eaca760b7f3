//! `shoal up`: runs a whole local cluster (one config server, N shards, one router) as child
//! processes in the foreground, the way a developer wants to "just start Shoal".
//!
//! The layout (ports, directories, command lines) is computed by pure functions so it can be
//! tested without processes. Startup is ordered (config, shards, router) because each tier
//! needs the one before it; every node must answer `ping` within [`STARTUP_WAIT`]. Shards are
//! registered through the router only if `listShards` does not list them, so a second `shoal
//! up` over the same directory restarts with its data. Shutdown runs in the reverse order.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use bson::{Bson, Document, doc};
use mongodb::{
    Client,
    error::{ErrorKind, RETRYABLE_WRITE_ERROR},
    options::{ClientOptions, ServerAddress},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    net::TcpStream,
    process::{Child, Command},
    signal::unix::{Signal as UnixSignal, SignalKind, signal},
};

use crate::certs;

/// How long each node may take to answer `ping`, and the router to accept all shards.
pub const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);
/// Pause between TCP connect attempts while a node starts listening.
const TCP_PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Server selection and connect timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often running children are checked for unexpected exits.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find [`LOG_TAIL_LINES`].
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// Upper bound on `--shards`, keeping the port range and process count sane.
pub const SHARDS_MAX: u16 = 64;
/// Address every node binds and every client uses.
pub const LOCAL_HOST: &str = "127.0.0.1";
/// Replica set name of the config server.
pub const CONFIG_REPLSET: &str = "configRS";
/// Error codes that mean "not ready yet" while the cluster is forming.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 70, 71, 89, 91, 133, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Which server binary a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// `shoal-config`.
    Config,
    /// `shoal-shard`.
    Shard,
    /// `shoal-router`.
    Router,
}

impl NodeRole {
    /// The executable's file name.
    pub fn binary_name(self) -> &'static str {
        match self {
            NodeRole::Config => "shoal-config",
            NodeRole::Shard => "shoal-shard",
            NodeRole::Router => "shoal-router",
        }
    }
}

/// One node of the local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `config`, `shard<i>` or `router`; also its directory and certificate name.
    pub name: String,
    /// Which binary runs it.
    pub role: NodeRole,
    /// TCP (wire) and UDP (QUIC) port on [`LOCAL_HOST`].
    pub port: u16,
    /// Replica set name (config and shards only).
    pub replset: Option<String>,
    /// `DIR/<name>`.
    pub node_dir: PathBuf,
    /// `DIR/<name>/data` (config and shards only).
    pub data_dir: Option<PathBuf>,
    /// `DIR/<name>/tls`.
    pub tls_dir: PathBuf,
    /// `DIR/<name>/log`, where stdout and stderr are appended.
    pub log_path: PathBuf,
}

impl NodeSpec {
    /// `host:port` this node serves on.
    pub fn address(&self) -> String {
        format!("{LOCAL_HOST}:{}", self.port)
    }
}

/// Ports and directories of a local cluster rooted at `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The data root (`--dir`).
    pub dir: PathBuf,
    /// The router's port (`--port`); others follow it.
    pub port: u16,
    /// `DIR/tls/ca`.
    pub ca_dir: PathBuf,
    /// Nodes in start order: config, shards, router.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterLayout {
    /// Lays out config on PORT+1, `shard<i>` on PORT+2+i and the router on PORT.
    pub fn new(dir: &Path, port: u16, shard_count: u16) -> anyhow::Result<ClusterLayout> {
        if shard_count == 0 || SHARDS_MAX < shard_count {
            bail!("--shards must be between 1 and {SHARDS_MAX}, got {shard_count}");
        }
        let last_port = u32::from(port) + 1 + u32::from(shard_count);
        if u32::from(u16::MAX) < last_port {
            bail!("--port {port} leaves no room for {shard_count} shard ports below 65536");
        }
        let mut nodes = vec![node(
            dir,
            "config",
            NodeRole::Config,
            port + 1,
            Some(CONFIG_REPLSET),
        )];
        for shard_idx in 0..shard_count {
            let name = format!("shard{shard_idx}");
            nodes.push(node(
                dir,
                &name,
                NodeRole::Shard,
                port + 2 + shard_idx,
                Some(&name),
            ));
        }
        nodes.push(node(dir, "router", NodeRole::Router, port, None));
        Ok(ClusterLayout {
            dir: dir.to_path_buf(),
            port,
            ca_dir: dir.join("tls").join("ca"),
            nodes,
        })
    }

    /// The router's `--configdb` value, `configRS/127.0.0.1:PORT+1`.
    pub fn configdb(&self) -> String {
        format!("{CONFIG_REPLSET}/{LOCAL_HOST}:{}", u32::from(self.port) + 1)
    }

    /// The URI clients use: `mongodb://127.0.0.1:PORT/`.
    pub fn client_uri(&self) -> String {
        format!("mongodb://{LOCAL_HOST}:{}/", self.port)
    }

    /// The shard nodes, in order.
    pub fn shards(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes
            .iter()
            .filter(|node| node.role == NodeRole::Shard)
    }

    /// Command-line arguments of `node`'s binary.
    pub fn node_args(&self, node: &NodeSpec) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(replset) = &node.replset {
            args.extend(["--replset".to_string(), replset.clone()]);
        }
        args.extend(["--bind".to_string(), node.address()]);
        if let Some(data_dir) = &node.data_dir {
            args.extend(["--dir".to_string(), data_dir.display().to_string()]);
        }
        if node.role == NodeRole::Router {
            args.extend(["--configdb".to_string(), self.configdb()]);
        }
        args.extend(["--tls-dir".to_string(), node.tls_dir.display().to_string()]);
        args
    }
}

fn node(dir: &Path, name: &str, role: NodeRole, port: u16, replset: Option<&str>) -> NodeSpec {
    let node_dir = dir.join(name);
    NodeSpec {
        name: name.to_string(),
        role,
        port,
        replset: replset.map(str::to_string),
        data_dir: replset.map(|_| node_dir.join("data")),
        tls_dir: node_dir.join("tls"),
        log_path: node_dir.join("log"),
        node_dir,
    }
}

/// The `addShard` argument for a shard node: `shard<i>/127.0.0.1:P`.
pub fn shard_url(node: &NodeSpec) -> String {
    format!(
        "{}/{}",
        node.replset.as_deref().unwrap_or(&node.name),
        node.address()
    )
}

/// Names of shards in a `listShards` reply: each `_id` and each host's replica set prefix.
pub fn listed_shard_names(reply: &Document) -> HashSet<String> {
    let mut names = HashSet::new();
    let shards = reply
        .get_array("shards")
        .map(Vec::as_slice)
        .unwrap_or_default();
    for shard in shards.iter().filter_map(Bson::as_document) {
        if let Ok(id) = shard.get_str("_id") {
            names.insert(id.to_string());
        }
        if let Some((replset, _)) = shard.get_str("host").ok().and_then(|h| h.split_once('/')) {
            names.insert(replset.to_string());
        }
    }
    names
}

/// The shards of `layout` that `listShards` does not list yet.
pub fn shards_to_add<'a>(layout: &'a ClusterLayout, listed: &HashSet<String>) -> Vec<&'a NodeSpec> {
    layout
        .shards()
        .filter(|shard| !listed.contains(shard.replset.as_deref().unwrap_or(&shard.name)))
        .collect()
}

/// Options of `shoal up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Data root.
    pub dir: PathBuf,
    /// Router port.
    pub port: u16,
    /// Number of shards.
    pub shards: u16,
    /// Directory holding `shoal-config`, `shoal-shard` and `shoal-router`.
    pub bin_dir: PathBuf,
}

struct RunningNode {
    spec: NodeSpec,
    child: Option<Child>,
}

/// Runs the cluster until SIGINT/SIGTERM.
pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let dir = std::path::absolute(&options.dir)
        .with_context(|| format!("invalid --dir {}", options.dir.display()))?;
    let layout = ClusterLayout::new(&dir, options.port, options.shards)?;
    check_binaries(&options.bin_dir)?;
    prepare_dirs_and_certs(&layout)?;
    let mut stop_signals = StopSignals::new()?;
    let mut running: Vec<RunningNode> = Vec::new();
    let startup = tokio::select! {
        result = start_cluster(&layout, &options.bin_dir, &mut running) => Some(result),
        () = stop_signals.recv() => None,
    };
    match startup {
        Some(Ok(())) => {
            println!("Shoal cluster ready: {}", layout.client_uri());
            let _ = std::io::stdout().flush();
            eprintln!("started in {:.1} s", started_at.elapsed().as_secs_f64());
            supervise(&mut running, &mut stop_signals).await;
            stop_all(&mut running).await;
            Ok(())
        }
        Some(Err(error)) => {
            stop_all(&mut running).await;
            Err(error)
        }
        None => {
            eprintln!("interrupted during startup; stopping");
            stop_all(&mut running).await;
            Ok(())
        }
    }
}

fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for role in [NodeRole::Config, NodeRole::Shard, NodeRole::Router] {
        let path = bin_dir.join(role.binary_name());
        if !path.is_file() {
            bail!(
                "cannot find {}; build the server binaries (cargo build --release) or pass --bin-dir",
                path.display()
            );
        }
    }
    Ok(())
}

fn prepare_dirs_and_certs(layout: &ClusterLayout) -> anyhow::Result<()> {
    certs::ensure_ca(&layout.ca_dir)?;
    let hosts = certs::default_hosts();
    for node in &layout.nodes {
        let dirs = [Some(&node.node_dir), node.data_dir.as_ref()];
        for dir in dirs.into_iter().flatten() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        certs::ensure_node_cert(&layout.ca_dir, &node.tls_dir, &node.name, &hosts)?;
    }
    Ok(())
}

async fn start_cluster(
    layout: &ClusterLayout,
    bin_dir: &Path,
    running: &mut Vec<RunningNode>,
) -> anyhow::Result<()> {
    for spec in &layout.nodes {
        let child = spawn_node(layout, spec, bin_dir)?;
        running.push(RunningNode {
            spec: spec.clone(),
            child: Some(child),
        });
        let Some(node) = running.last_mut() else {
            bail!("internal error: node list is empty after a start");
        };
        wait_ready(node).await?;
        eprintln!("{} is up on {}", spec.name, spec.address());
    }
    add_missing_shards(layout).await
}

fn spawn_node(layout: &ClusterLayout, spec: &NodeSpec, bin_dir: &Path) -> anyhow::Result<Child> {
    let binary = bin_dir.join(spec.role.binary_name());
    let args = layout.node_args(spec);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("cannot open {}", spec.log_path.display()))?;
    writeln!(
        log,
        "--- shoal up: starting {}: {} {} ---",
        spec.name,
        binary.display(),
        args.join(" ")
    )
    .with_context(|| format!("cannot write {}", spec.log_path.display()))?;
    let stdout_log = log
        .try_clone()
        .context("cannot duplicate the log file handle")?;
    eprintln!(
        "starting {} on {} (log: {})",
        spec.name,
        spec.address(),
        spec.log_path.display()
    );
    Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout_log)
        .stderr(log)
        // Own process group: a terminal Ctrl-C reaches only `shoal up`, which then stops the
        // nodes in order instead of all of them dying at once.
        .process_group(0)
        // If `shoal up` itself is killed (SIGKILL gives it no chance to stop its nodes), the
        // nodes notice they were orphaned and shut down instead of holding the ports.
        .env(shoal_node::EXIT_WITH_PARENT_ENV, "1")
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

async fn wait_ready(node: &mut RunningNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_WAIT;
    // A plain TCP connect first: it notices the listener within milliseconds, while a driver
    // client that saw "connection refused" waits for its next heartbeat.
    while TcpStream::connect(node.spec.address()).await.is_err() {
        check_still_running(node, deadline)?;
        tokio::time::sleep(TCP_PROBE_INTERVAL).await;
    }
    let client = probe_client(node.spec.port)?;
    while client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .is_err()
    {
        check_still_running(node, deadline)?;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(())
}

/// Fails if the node's process has exited or the startup deadline has passed.
fn check_still_running(node: &mut RunningNode, deadline: Instant) -> anyhow::Result<()> {
    if let Some(child) = node.child.as_mut()
        && let Some(status) = child.try_wait().context("cannot check a child process")?
    {
        node.child = None;
        let reason = format!("exited during startup ({status})");
        bail!(startup_failure(&node.spec, &reason));
    }
    if deadline <= Instant::now() {
        let reason = format!(
            "did not answer ping on {} within {} s",
            node.spec.address(),
            STARTUP_WAIT.as_secs()
        );
        bail!(startup_failure(&node.spec, &reason));
    }
    Ok(())
}

fn probe_client(port: u16) -> anyhow::Result<Client> {
    let mut options = ClientOptions::default();
    options.hosts = vec![ServerAddress::Tcp {
        host: LOCAL_HOST.to_string(),
        port: Some(port),
    }];
    options.direct_connection = Some(true);
    options.server_selection_timeout = Some(PROBE_TIMEOUT);
    options.connect_timeout = Some(PROBE_TIMEOUT);
    options.app_name = Some("shoal up".to_string());
    Client::with_options(options).context("cannot create a driver client")
}

fn startup_failure(spec: &NodeSpec, reason: &str) -> String {
    let mut message = format!(
        "node {} {reason}; see its log {}",
        spec.name,
        spec.log_path.display()
    );
    if let Some(tail) = log_tail(&spec.log_path) {
        message.push_str(&format!(
            "\n--- last lines of {} ---\n{tail}",
            spec.log_path.display()
        ));
    }
    message
}

fn log_tail(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    Some(lines[start..].join("\n"))
}

/// Registers every shard the router does not list yet, retrying while the cluster forms.
async fn add_missing_shards(layout: &ClusterLayout) -> anyhow::Result<()> {
    let router = layout
        .nodes
        .iter()
        .find(|node| node.role == NodeRole::Router);
    let router = router.ok_or_else(|| anyhow!("internal error: the layout has no router"))?;
    let admin = probe_client(router.port)?.database("admin");
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        let attempt = async {
            let listed = listed_shard_names(&admin.run_command(doc! { "listShards": 1 }).await?);
            for shard in shards_to_add(layout, &listed) {
                admin
                    .run_command(doc! { "addShard": shard_url(shard) })
                    .await?;
                eprintln!("added shard {}", shard_url(shard));
            }
            Ok::<(), mongodb::error::Error>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) if is_transient(&error) && Instant::now() < deadline => {
                tracing::debug!(%error, "shard registration not ready yet; retrying");
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            Err(error) => {
                return Err(anyhow!(
                    "cannot register the shards through the router: {error}; see {}",
                    router.log_path.display()
                ));
            }
        }
    }
}

fn is_transient(error: &mongodb::error::Error) -> bool {
    if error.contains_label(RETRYABLE_WRITE_ERROR) {
        return true;
    }
    match error.kind.as_ref() {
        ErrorKind::Command(command) => is_transient_code(command.code),
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        _ => false,
    }
}

/// Whether a command error code means the cluster is still forming (no primary yet, a shard
/// not reachable yet) rather than a real failure.
pub fn is_transient_code(code: i32) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Waits for SIGINT or SIGTERM, reporting children that exit on their own meanwhile.
async fn supervise(running: &mut [RunningNode], stop_signals: &mut StopSignals) {
    let mut ticker = tokio::time::interval(CHILD_POLL_INTERVAL);
    loop {
        tokio::select! {
            () = stop_signals.recv() => return,
            _ = ticker.tick() => report_exits(running),
        }
    }
}

/// The signals that stop the cluster: Ctrl-C, `kill`, and the terminal going away (the
/// children sit in their own process groups, so they would otherwise outlive a closed
/// terminal).
struct StopSignals {
    interrupt: UnixSignal,
    terminate: UnixSignal,
    hangup: UnixSignal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// Returns when any of the signals arrives.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

fn report_exits(running: &mut [RunningNode]) {
    for node in running.iter_mut() {
        let Some(child) = node.child.as_mut() else {
            continue;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                eprintln!(
                    "shoal: {} exited unexpectedly ({status}); see {}; other nodes keep running",
                    node.spec.name,
                    node.spec.log_path.display()
                );
                node.child = None;
            }
            Ok(None) => {}
            Err(error) => eprintln!("shoal: cannot check {}: {error}", node.spec.name),
        }
    }
}

/// Stop order: router first (clients stop arriving), then shards, then the config server.
pub fn stop_order(nodes: &[NodeSpec]) -> Vec<usize> {
    let by_role = |role: NodeRole| {
        nodes
            .iter()
            .enumerate()
            .filter(move |(_, node)| node.role == role)
            .map(|(idx, _)| idx)
    };
    by_role(NodeRole::Router)
        .chain(by_role(NodeRole::Shard))
        .chain(by_role(NodeRole::Config))
        .collect()
}

async fn stop_all(running: &mut [RunningNode]) {
    let specs: Vec<NodeSpec> = running.iter().map(|node| node.spec.clone()).collect();
    for idx in stop_order(&specs) {
        stop_node(&mut running[idx]).await;
    }
}

async fn stop_node(node: &mut RunningNode) {
    let Some(mut child) = node.child.take() else {
        return;
    };
    let name = &node.spec.name;
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok())
        && let Err(error) = kill(Pid::from_raw(pid), Signal::SIGTERM)
    {
        eprintln!("shoal: cannot send SIGTERM to {name}: {error}");
    }
    match tokio::time::timeout(STOP_WAIT, child.wait()).await {
        Ok(Ok(status)) => eprintln!("stopped {name} ({status})"),
        Ok(Err(error)) => eprintln!("shoal: cannot wait for {name}: {error}"),
        Err(_) => {
            eprintln!(
                "{name} did not stop within {} s; killing it",
                STOP_WAIT.as_secs()
            );
            if let Err(error) = child.kill().await {
                eprintln!("shoal: cannot kill {name}: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_assigns_ports_and_directories() {
        let layout = ClusterLayout::new(Path::new("/data"), 27017, 2).unwrap();
        let summary: Vec<(&str, NodeRole, u16, Option<&str>)> = layout
            .nodes
            .iter()
            .map(|node| {
                (
                    node.name.as_str(),
                    node.role,
                    node.port,
                    node.replset.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("config", NodeRole::Config, 27018, Some("configRS")),
                ("shard0", NodeRole::Shard, 27019, Some("shard0")),
                ("shard1", NodeRole::Shard, 27020, Some("shard1")),
                ("router", NodeRole::Router, 27017, None),
            ]
        );
        let shard1 = &layout.nodes[2];
        assert_eq!(
            shard1.data_dir.as_deref(),
            Some(Path::new("/data/shard1/data"))
        );
        assert_eq!(shard1.tls_dir, Path::new("/data/shard1/tls"));
        assert_eq!(shard1.log_path, Path::new("/data/shard1/log"));
        assert_eq!(layout.nodes[3].data_dir, None);
        assert_eq!(layout.ca_dir, Path::new("/data/tls/ca"));
        assert_eq!(layout.client_uri(), "mongodb://127.0.0.1:27017/");
        assert_eq!(layout.configdb(), "configRS/127.0.0.1:27018");
        assert_eq!(shard_url(shard1), "shard1/127.0.0.1:27020");
    }

    #[test]
    fn node_command_lines_match_the_server_flags() {
        let layout = ClusterLayout::new(Path::new("/d"), 4000, 1).unwrap();
        let args: Vec<Vec<String>> = layout.nodes.iter().map(|n| layout.node_args(n)).collect();
        let expected: Vec<Vec<&str>> = vec![
            vec![
                "--replset",
                "configRS",
                "--bind",
                "127.0.0.1:4001",
                "--dir",
                "/d/config/data",
                "--tls-dir",
                "/d/config/tls",
            ],
            vec![
                "--replset",
                "shard0",
                "--bind",
                "127.0.0.1:4002",
                "--dir",
                "/d/shard0/data",
                "--tls-dir",
                "/d/shard0/tls",
            ],
            vec![
                "--bind",
                "127.0.0.1:4000",
                "--configdb",
                "configRS/127.0.0.1:4001",
                "--tls-dir",
                "/d/router/tls",
            ],
        ];
        assert_eq!(args, expected);
        let binaries: Vec<&str> = layout.nodes.iter().map(|n| n.role.binary_name()).collect();
        assert_eq!(binaries, ["shoal-config", "shoal-shard", "shoal-router"]);
    }

    #[test]
    fn layout_rejects_bad_counts_and_ports() {
        assert!(ClusterLayout::new(Path::new("/d"), 27017, 0).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 27017, SHARDS_MAX + 1).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 65533, 2).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 65532, 2).is_ok());
    }

    #[test]
    fn only_unlisted_shards_are_added() {
        let layout = ClusterLayout::new(Path::new("/d"), 27017, 3).unwrap();
        let reply = doc! { "shards": [
            { "_id": "shard0", "host": "shard0/127.0.0.1:27019", "state": 1 },
            { "_id": "renamed", "host": "shard2/127.0.0.1:27021", "state": 1 },
        ], "ok": 1 };
        let listed = listed_shard_names(&reply);
        let missing: Vec<String> = shards_to_add(&layout, &listed)
            .iter()
            .map(|s| shard_url(s))
            .collect();
        assert_eq!(missing, ["shard1/127.0.0.1:27020"]);
        let empty = listed_shard_names(&doc! { "ok": 1 });
        assert_eq!(shards_to_add(&layout, &empty).len(), 3);
    }

    #[test]
    fn nodes_stop_router_then_shards_then_config() {
        let layout = ClusterLayout::new(Path::new("/d"), 27017, 2).unwrap();
        let order: Vec<&str> = stop_order(&layout.nodes)
            .into_iter()
            .map(|idx| layout.nodes[idx].name.as_str())
            .collect();
        assert_eq!(order, ["router", "shard0", "shard1", "config"]);
    }

    #[test]
    fn only_not_ready_errors_are_retried() {
        assert!(is_transient_code(10107), "NotWritablePrimary");
        assert!(is_transient_code(133), "FailedToSatisfyReadPreference");
        assert!(is_transient_code(6), "HostUnreachable");
        assert!(!is_transient_code(2), "BadValue");
        assert!(!is_transient_code(59), "CommandNotFound");
        assert!(!is_transient(&mongodb::error::Error::custom("other")));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("log");
        let text: String = (0..50).map(|line| format!("line {line}\n")).collect();
        fs::write(&path, text).unwrap();
        let tail = log_tail(&path).unwrap();
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
        assert!(tail.ends_with("line 49"));
    }
}
