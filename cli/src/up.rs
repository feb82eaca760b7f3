//! `shoal up`: runs a whole local cluster (a config server replica set, N shard replica sets,
//! one router) as child processes in the foreground, the way a developer wants to "just start
//! Shoal".
//!
//! The layout (ports, directories, command lines) is computed by pure functions so it can be
//! tested without processes. Every member of a set gets the same `--initiate-members` list, so
//! the first member initiates the set on its first start and later runs simply restart it.
//! Startup is ordered (config, shards, router) because each tier needs the one before it;
//! every process must answer `ping`, and every set elect a primary, within [`STARTUP_WAIT`].
//! Shards are registered through the router only if `listShards` does not list them, so a
//! second `shoal up` over the same directory restarts with its data. Shutdown runs in the
//! reverse order.

use std::{
    collections::{HashMap, HashSet},
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
/// Upper bound on `--members`: MongoDB's limit on voting members of a set.
pub const MEMBERS_MAX: u16 = 7;
/// Default `--members`: the smallest set that survives losing a member.
pub const MEMBERS_DEFAULT: u16 = 3;
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

/// One replica set of the local cluster: the config server or one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetSpec {
    /// Replica-set name (`configRS`, `shard<i>`); a shard's set name is also its shard name.
    pub name: String,
    /// `config` or `shard<i>`: the prefix of its members' node names and directories.
    pub label: String,
    /// [`NodeRole::Config`] or [`NodeRole::Shard`].
    pub role: NodeRole,
    /// Member ports on [`LOCAL_HOST`], in member `_id` order.
    pub ports: Vec<u16>,
}

impl ReplicaSetSpec {
    /// `host:port` of every member, in `_id` order.
    pub fn hosts(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("{LOCAL_HOST}:{port}"))
            .collect()
    }

    /// The `--initiate-members` value: every member, comma separated, in `_id` order.
    pub fn initiate_members(&self) -> String {
        self.hosts().join(",")
    }

    /// `NAME/host1,host2,...`, the form `--configdb` and `addShard` take.
    pub fn seed_list(&self) -> String {
        format!("{}/{}", self.name, self.initiate_members())
    }

    /// The node name of member `member_idx`: `<label>-<idx>`.
    pub fn member_name(&self, member_idx: usize) -> String {
        format!("{}-{member_idx}", self.label)
    }
}

/// One process of the local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `config-<m>`, `shard<i>-<m>` or `router`; also its directory and certificate name.
    pub name: String,
    /// Which binary runs it.
    pub role: NodeRole,
    /// TCP (wire) and UDP (QUIC) port on [`LOCAL_HOST`].
    pub port: u16,
    /// Replica set name (config and shard members only).
    pub replset: Option<String>,
    /// `DIR/<name>`.
    pub node_dir: PathBuf,
    /// `DIR/<name>/data` (config and shard members only).
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

/// The port of member `member_idx` of replica set `set_idx` (0 is the config server, `i + 1`
/// shard `i`): the router keeps PORT and each set takes the next `members` ports.
pub fn member_port(port: u16, members: u16, set_idx: u16, member_idx: u16) -> anyhow::Result<u16> {
    let offset = 1 + u32::from(members) * u32::from(set_idx) + u32::from(member_idx);
    u16::try_from(u32::from(port) + offset)
        .map_err(|_| anyhow!("--port {port} leaves no room for every member's port below 65536"))
}

/// Ports and directories of a local cluster rooted at `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The data root (`--dir`).
    pub dir: PathBuf,
    /// The router's port (`--port`); the members' ports follow it.
    pub port: u16,
    /// Members of every replica set (`--members`).
    pub members: u16,
    /// `DIR/tls/ca`.
    pub ca_dir: PathBuf,
    /// The config server's set, then shard 0, shard 1, ...
    pub sets: Vec<ReplicaSetSpec>,
    /// Processes in start order: config members, shard members (by shard), router.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterLayout {
    /// Lays out the router on PORT, the config members on PORT+1..=PORT+M and the members of
    /// shard i from PORT+1+M*(i+1), M being `members`.
    pub fn new(
        dir: &Path,
        port: u16,
        shard_count: u16,
        members: u16,
    ) -> anyhow::Result<ClusterLayout> {
        if shard_count == 0 || SHARDS_MAX < shard_count {
            bail!("--shards must be between 1 and {SHARDS_MAX}, got {shard_count}");
        }
        if members == 0 || MEMBERS_MAX < members {
            bail!("--members must be between 1 and {MEMBERS_MAX}, got {members}");
        }
        let mut sets = Vec::with_capacity(usize::from(shard_count) + 1);
        for set_idx in 0..=shard_count {
            let (name, label, role) = match set_idx.checked_sub(1) {
                None => (
                    CONFIG_REPLSET.to_string(),
                    "config".to_string(),
                    NodeRole::Config,
                ),
                Some(shard_idx) => {
                    let name = format!("shard{shard_idx}");
                    (name.clone(), name, NodeRole::Shard)
                }
            };
            let ports = (0..members)
                .map(|member_idx| member_port(port, members, set_idx, member_idx))
                .collect::<anyhow::Result<Vec<u16>>>()?;
            sets.push(ReplicaSetSpec {
                name,
                label,
                role,
                ports,
            });
        }
        let mut nodes: Vec<NodeSpec> = sets.iter().flat_map(|set| member_nodes(dir, set)).collect();
        nodes.push(node(dir, "router", NodeRole::Router, port, None));
        Ok(ClusterLayout {
            dir: dir.to_path_buf(),
            port,
            members,
            ca_dir: dir.join("tls").join("ca"),
            sets,
            nodes,
        })
    }

    /// The config server's replica set.
    pub fn config_set(&self) -> anyhow::Result<&ReplicaSetSpec> {
        self.sets
            .iter()
            .find(|set| set.role == NodeRole::Config)
            .ok_or_else(|| anyhow!("internal error: the layout has no config server"))
    }

    /// The router's `--configdb` value, `configRS/127.0.0.1:PORT+1,...`.
    pub fn configdb(&self) -> anyhow::Result<String> {
        Ok(self.config_set()?.seed_list())
    }

    /// The URI clients use: `mongodb://127.0.0.1:PORT/`.
    pub fn client_uri(&self) -> String {
        format!("mongodb://{LOCAL_HOST}:{}/", self.port)
    }

    /// The shards' replica sets, in order.
    pub fn shard_sets(&self) -> impl Iterator<Item = &ReplicaSetSpec> {
        self.sets.iter().filter(|set| set.role == NodeRole::Shard)
    }

    /// The replica set named `name`.
    pub fn set(&self, name: &str) -> Option<&ReplicaSetSpec> {
        self.sets.iter().find(|set| set.name == name)
    }

    /// Command-line arguments of `node`'s binary.
    pub fn node_args(&self, node: &NodeSpec) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        if let Some(replset) = &node.replset {
            let set = self
                .set(replset)
                .ok_or_else(|| anyhow!("internal error: no replica set named {replset}"))?;
            args.extend(["--replset".to_string(), replset.clone()]);
            args.extend(["--initiate-members".to_string(), set.initiate_members()]);
        }
        args.extend(["--bind".to_string(), node.address()]);
        if let Some(data_dir) = &node.data_dir {
            args.extend(["--dir".to_string(), data_dir.display().to_string()]);
        }
        if node.role == NodeRole::Router {
            args.extend(["--configdb".to_string(), self.configdb()?]);
        }
        args.extend(["--tls-dir".to_string(), node.tls_dir.display().to_string()]);
        Ok(args)
    }
}

fn member_nodes(dir: &Path, set: &ReplicaSetSpec) -> Vec<NodeSpec> {
    set.ports
        .iter()
        .enumerate()
        .map(|(member_idx, port)| {
            let name = set.member_name(member_idx);
            node(dir, &name, set.role, *port, Some(&set.name))
        })
        .collect()
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

/// Why the data under `--dir` does not fit this layout, if it does not: a set whose members
/// only partly hold data (the set was initiated with another `--members`; the missing members
/// would never be added), or a directory of an older single-process layout (`DIR/shard0/data`)
/// whose data the new members would silently ignore. `has_data(name)` says whether
/// `DIR/<name>/data` exists.
pub fn previous_run_mismatch(
    layout: &ClusterLayout,
    has_data: impl Fn(&str) -> bool,
) -> Option<String> {
    for set in &layout.sets {
        if has_data(&set.label) {
            return Some(format!(
                "{} holds data of an older `shoal up` without replica sets ({}/data); use a new --dir",
                layout.dir.display(),
                set.label
            ));
        }
        let with_data: Vec<String> = (0..usize::from(MEMBERS_MAX))
            .map(|member_idx| set.member_name(member_idx))
            .filter(|name| has_data(name))
            .collect();
        let expected: Vec<String> = (0..set.ports.len())
            .map(|idx| set.member_name(idx))
            .collect();
        if !with_data.is_empty() && with_data != expected {
            return Some(format!(
                "{} was created with another --members (it holds {}, this run expects {}); pass the same --members as before or use a new --dir",
                layout.dir.display(),
                with_data.join(", "),
                expected.join(", ")
            ));
        }
    }
    None
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
pub fn shards_to_add<'a>(
    layout: &'a ClusterLayout,
    listed: &HashSet<String>,
) -> Vec<&'a ReplicaSetSpec> {
    layout
        .shard_sets()
        .filter(|set| !listed.contains(&set.name))
        .collect()
}

/// Whether a `hello` (or `isMaster`) reply comes from a replica set's primary.
pub fn is_writable_primary(reply: &Document) -> bool {
    ["isWritablePrimary", "ismaster"]
        .iter()
        .any(|field| reply.get_bool(field) == Ok(true))
}

/// The lines printed under the ready line: where each process listens, which member was
/// primary when startup finished (`primaries` maps set names to hosts), and how to open a
/// shell on a member.
pub fn summary(layout: &ClusterLayout, primaries: &HashMap<String, String>) -> String {
    let width = layout
        .sets
        .iter()
        .map(|set| set.name.len())
        .max()
        .unwrap_or(0);
    let width = width.max("router".len());
    let mut lines = vec![format!(
        "  {:<width$}  {LOCAL_HOST}:{}  (connect here)",
        "router", layout.port
    )];
    for set in &layout.sets {
        let primary = primaries.get(&set.name);
        let hosts: Vec<String> = set
            .hosts()
            .into_iter()
            .map(|host| match primary {
                Some(primary) if *primary == host => format!("{host} (primary)"),
                _ => host,
            })
            .collect();
        lines.push(format!("  {:<width$}  {}", set.name, hosts.join(", ")));
    }
    if let Some(member) = layout.shard_sets().next().and_then(|set| set.ports.first()) {
        lines.push(format!(
            "  a shell on a member: shoal shell --port {member} --eval 'rs.status()'"
        ));
    }
    lines.push(format!("  data: {}", layout.dir.display()));
    lines.join("\n")
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
    /// Members of every replica set (the config server's and each shard's).
    pub members: u16,
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
    let layout = ClusterLayout::new(&dir, options.port, options.shards, options.members)?;
    check_binaries(&options.bin_dir)?;
    if let Some(mismatch) =
        previous_run_mismatch(&layout, |name| dir.join(name).join("data").is_dir())
    {
        bail!(mismatch);
    }
    prepare_dirs_and_certs(&layout)?;
    let mut stop_signals = StopSignals::new()?;
    let mut running: Vec<RunningNode> = Vec::new();
    let startup = tokio::select! {
        result = start_cluster(&layout, &options.bin_dir, &mut running) => Some(result),
        () = stop_signals.recv() => None,
    };
    match startup {
        Some(Ok(primaries)) => {
            println!("Shoal cluster ready: {}", layout.client_uri());
            println!("{}", summary(&layout, &primaries));
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

/// Starts the config members, the shard members and the router (each tier's processes at
/// once, then waits for each to answer `ping`), waits until every set has a primary, and
/// registers the shards. Returns each set's primary.
async fn start_cluster(
    layout: &ClusterLayout,
    bin_dir: &Path,
    running: &mut Vec<RunningNode>,
) -> anyhow::Result<HashMap<String, String>> {
    for tier in layout.nodes.chunk_by(|a, b| a.replset == b.replset) {
        let first = running.len();
        for spec in tier {
            let child = spawn_node(layout, spec, bin_dir)?;
            running.push(RunningNode {
                spec: spec.clone(),
                child: Some(child),
            });
        }
        for node in &mut running[first..] {
            wait_ready(node).await?;
            eprintln!("{} is up on {}", node.spec.name, node.spec.address());
        }
    }
    let mut primaries = HashMap::new();
    for set in &layout.sets {
        let primary = wait_primary(set, running).await?;
        eprintln!("{} formed with primary {primary}", set.name);
        primaries.insert(set.name.clone(), primary);
    }
    add_missing_shards(layout).await?;
    Ok(primaries)
}

fn spawn_node(layout: &ClusterLayout, spec: &NodeSpec, bin_dir: &Path) -> anyhow::Result<Child> {
    let binary = bin_dir.join(spec.role.binary_name());
    let args = layout.node_args(spec)?;
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
        check_ping_deadline(node, deadline)?;
        tokio::time::sleep(TCP_PROBE_INTERVAL).await;
    }
    let client = probe_client(node.spec.port)?;
    while client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .is_err()
    {
        check_ping_deadline(node, deadline)?;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(())
}

/// Fails if the node's process has exited or did not answer `ping` before `deadline`.
fn check_ping_deadline(node: &mut RunningNode, deadline: Instant) -> anyhow::Result<()> {
    check_still_running(node)?;
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

/// Fails if the node's process has exited.
fn check_still_running(node: &mut RunningNode) -> anyhow::Result<()> {
    if let Some(child) = node.child.as_mut()
        && let Some(status) = child.try_wait().context("cannot check a child process")?
    {
        node.child = None;
        let reason = format!("exited during startup ({status})");
        bail!(startup_failure(&node.spec, &reason));
    }
    Ok(())
}

/// Polls `hello` on every member of `set` until one is the writable primary and the others
/// its secondaries (so `rs.*` works on any member once `shoal up` is ready); returns the
/// primary's host. Fails when a member exits or the set does not form within [`STARTUP_WAIT`].
async fn wait_primary(set: &ReplicaSetSpec, running: &mut [RunningNode]) -> anyhow::Result<String> {
    let deadline = Instant::now() + STARTUP_WAIT;
    let clients = set
        .ports
        .iter()
        .map(|port| probe_client(*port))
        .collect::<anyhow::Result<Vec<Client>>>()?;
    let hosts = set.hosts();
    loop {
        let mut replies = Vec::with_capacity(clients.len());
        for client in &clients {
            let reply = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await;
            replies.push(reply.ok());
        }
        let waiting_for = match set_formed(&hosts, &replies) {
            Ok(primary) => return Ok(primary),
            Err(waiting_for) => waiting_for,
        };
        let mut logs = Vec::new();
        let members = running
            .iter_mut()
            .filter(|node| node.spec.replset.as_deref() == Some(set.name.as_str()));
        for node in members {
            check_still_running(node)?;
            logs.push(node.spec.log_path.display().to_string());
        }
        if deadline <= Instant::now() {
            bail!(
                "replica set {} did not form within {} s: {waiting_for}; see {}",
                set.name,
                STARTUP_WAIT.as_secs(),
                logs.join(", ")
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether a set has formed, from its members' `hello` replies (`None`: no answer), given in
/// the order of `hosts`: the primary's host when one member is the writable primary and every
/// other one is a secondary, else what is still missing.
pub fn set_formed(hosts: &[String], replies: &[Option<Document>]) -> Result<String, String> {
    let primaries: Vec<&String> = hosts
        .iter()
        .zip(replies)
        .filter(|(_, reply)| reply.as_ref().is_some_and(is_writable_primary))
        .map(|(host, _)| host)
        .collect();
    let [primary] = primaries.as_slice() else {
        return Err(format!(
            "{} primaries among {}",
            primaries.len(),
            hosts.join(", ")
        ));
    };
    let not_secondary: Vec<&str> = hosts
        .iter()
        .zip(replies)
        .filter(|(host, reply)| {
            host != primary
                && !reply
                    .as_ref()
                    .is_some_and(|reply| reply.get_bool("secondary") == Ok(true))
        })
        .map(|(host, _)| host.as_str())
        .collect();
    if not_secondary.is_empty() {
        Ok((*primary).clone())
    } else {
        Err(format!(
            "primary {primary}, but {} not secondary yet",
            not_secondary.join(", ")
        ))
    }
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

pub(crate) fn log_tail(path: &Path) -> Option<String> {
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
    let client = probe_client(router.port)?;
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        let outcome = register_shards(layout, &client).await;
        let retry_after = match outcome {
            Ok(true) => return Ok(()),
            Ok(false) => "the config server has not written its first metadata",
            Err(error) if is_transient(&error) => {
                tracing::debug!(%error, "shard registration not ready yet; retrying");
                "the cluster is still forming"
            }
            Err(error) => {
                return Err(anyhow!(
                    "cannot register the shards through the router: {error}; see {}",
                    router.log_path.display()
                ));
            }
        };
        if deadline <= Instant::now() {
            bail!(
                "cannot register the shards within {} s: {retry_after}; see {}",
                STARTUP_WAIT.as_secs(),
                router.log_path.display()
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One attempt at registering the missing shards; `Ok(false)` when the config server is not
/// initialised yet. Its primary writes `config.version` and the first routing-metadata
/// version a moment after its first election, and a shard added before that would have its
/// routing version overwritten, leaving routers with a cache they believe is current.
async fn register_shards(
    layout: &ClusterLayout,
    client: &Client,
) -> Result<bool, mongodb::error::Error> {
    let version = client
        .database("config")
        .collection::<Document>("version")
        .find_one(doc! {})
        .await?;
    if version.is_none() {
        return Ok(false);
    }
    let admin = client.database("admin");
    let listed = listed_shard_names(&admin.run_command(doc! { "listShards": 1 }).await?);
    for shard in shards_to_add(layout, &listed) {
        admin
            .run_command(doc! { "addShard": shard.seed_list() })
            .await?;
        eprintln!("added shard {}", shard.seed_list());
    }
    Ok(true)
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

    fn summarize(layout: &ClusterLayout) -> Vec<(&str, NodeRole, u16, Option<&str>)> {
        layout
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
            .collect()
    }

    #[test]
    fn layout_assigns_ports_and_directories() {
        let layout = ClusterLayout::new(Path::new("/data"), 27017, 2, 3).unwrap();
        assert_eq!(
            summarize(&layout),
            vec![
                ("config-0", NodeRole::Config, 27018, Some("configRS")),
                ("config-1", NodeRole::Config, 27019, Some("configRS")),
                ("config-2", NodeRole::Config, 27020, Some("configRS")),
                ("shard0-0", NodeRole::Shard, 27021, Some("shard0")),
                ("shard0-1", NodeRole::Shard, 27022, Some("shard0")),
                ("shard0-2", NodeRole::Shard, 27023, Some("shard0")),
                ("shard1-0", NodeRole::Shard, 27024, Some("shard1")),
                ("shard1-1", NodeRole::Shard, 27025, Some("shard1")),
                ("shard1-2", NodeRole::Shard, 27026, Some("shard1")),
                ("router", NodeRole::Router, 27017, None),
            ]
        );
        let shard1_member2 = &layout.nodes[8];
        assert_eq!(
            shard1_member2.data_dir.as_deref(),
            Some(Path::new("/data/shard1-2/data"))
        );
        assert_eq!(shard1_member2.tls_dir, Path::new("/data/shard1-2/tls"));
        assert_eq!(shard1_member2.log_path, Path::new("/data/shard1-2/log"));
        assert_eq!(layout.nodes[9].data_dir, None);
        assert_eq!(layout.ca_dir, Path::new("/data/tls/ca"));
        assert_eq!(layout.client_uri(), "mongodb://127.0.0.1:27017/");
        assert_eq!(
            layout.configdb().unwrap(),
            "configRS/127.0.0.1:27018,127.0.0.1:27019,127.0.0.1:27020"
        );
        let seeds: Vec<String> = layout.shard_sets().map(ReplicaSetSpec::seed_list).collect();
        assert_eq!(
            seeds,
            [
                "shard0/127.0.0.1:27021,127.0.0.1:27022,127.0.0.1:27023",
                "shard1/127.0.0.1:27024,127.0.0.1:27025,127.0.0.1:27026",
            ]
        );
    }

    #[test]
    fn member_ports_follow_the_router_set_by_set() {
        // Shard i (set i + 1) starts at PORT+1+M*(i+1).
        assert_eq!(member_port(1000, 5, 0, 0).unwrap(), 1001);
        assert_eq!(member_port(1000, 5, 0, 4).unwrap(), 1005);
        assert_eq!(member_port(1000, 5, 1, 0).unwrap(), 1006);
        assert_eq!(member_port(1000, 5, 3, 2).unwrap(), 1018);
        assert!(member_port(65534, 1, 1, 0).is_err());
    }

    #[test]
    fn one_member_sets_keep_one_process_per_tier() {
        let layout = ClusterLayout::new(Path::new("/d"), 4000, 2, 1).unwrap();
        let ports: Vec<(&str, u16)> = layout
            .nodes
            .iter()
            .map(|node| (node.name.as_str(), node.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("config-0", 4001),
                ("shard0-0", 4002),
                ("shard1-0", 4003),
                ("router", 4000)
            ]
        );
    }

    #[test]
    fn node_command_lines_match_the_server_flags() {
        let layout = ClusterLayout::new(Path::new("/d"), 4000, 1, 2).unwrap();
        let args: Vec<Vec<String>> = layout
            .nodes
            .iter()
            .map(|n| layout.node_args(n).unwrap())
            .collect();
        let member = |set: &str, hosts: &str, port: u16, name: &str| -> Vec<String> {
            [
                "--replset",
                set,
                "--initiate-members",
                hosts,
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--dir",
                &format!("/d/{name}/data"),
                "--tls-dir",
                &format!("/d/{name}/tls"),
            ]
            .map(str::to_string)
            .to_vec()
        };
        let config_hosts = "127.0.0.1:4001,127.0.0.1:4002";
        let shard_hosts = "127.0.0.1:4003,127.0.0.1:4004";
        let expected: Vec<Vec<String>> = vec![
            member("configRS", config_hosts, 4001, "config-0"),
            member("configRS", config_hosts, 4002, "config-1"),
            member("shard0", shard_hosts, 4003, "shard0-0"),
            member("shard0", shard_hosts, 4004, "shard0-1"),
            [
                "--bind",
                "127.0.0.1:4000",
                "--configdb",
                "configRS/127.0.0.1:4001,127.0.0.1:4002",
                "--tls-dir",
                "/d/router/tls",
            ]
            .map(str::to_string)
            .to_vec(),
        ];
        assert_eq!(args, expected);
        let binaries: Vec<&str> = layout.nodes.iter().map(|n| n.role.binary_name()).collect();
        assert_eq!(
            binaries,
            [
                "shoal-config",
                "shoal-config",
                "shoal-shard",
                "shoal-shard",
                "shoal-router"
            ]
        );
    }

    #[test]
    fn layout_rejects_bad_counts_and_ports() {
        assert!(ClusterLayout::new(Path::new("/d"), 27017, 0, 3).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 27017, SHARDS_MAX + 1, 3).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 27017, 2, 0).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 27017, 2, MEMBERS_MAX + 1).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 27017, SHARDS_MAX, MEMBERS_MAX).is_ok());
        // Two shards of three members plus config need PORT+1..=PORT+9.
        assert!(ClusterLayout::new(Path::new("/d"), 65527, 2, 3).is_err());
        assert!(ClusterLayout::new(Path::new("/d"), 65526, 2, 3).is_ok());
    }

    #[test]
    fn only_unlisted_shards_are_added() {
        let layout = ClusterLayout::new(Path::new("/d"), 27017, 3, 1).unwrap();
        let reply = doc! { "shards": [
            { "_id": "shard0", "host": "shard0/127.0.0.1:27019", "state": 1 },
            { "_id": "renamed", "host": "shard2/127.0.0.1:27021", "state": 1 },
        ], "ok": 1 };
        let listed = listed_shard_names(&reply);
        let missing: Vec<String> = shards_to_add(&layout, &listed)
            .iter()
            .map(|s| s.seed_list())
            .collect();
        assert_eq!(missing, ["shard1/127.0.0.1:27020"]);
        let empty = listed_shard_names(&doc! { "ok": 1 });
        assert_eq!(shards_to_add(&layout, &empty).len(), 3);
    }

    #[test]
    fn nodes_stop_router_then_shards_then_config() {
        let layout = ClusterLayout::new(Path::new("/d"), 27017, 2, 2).unwrap();
        let order: Vec<&str> = stop_order(&layout.nodes)
            .into_iter()
            .map(|idx| layout.nodes[idx].name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "router", "shard0-0", "shard0-1", "shard1-0", "shard1-1", "config-0", "config-1"
            ]
        );
    }

    #[test]
    fn data_of_another_member_count_is_refused() {
        let layout = ClusterLayout::new(Path::new("/d"), 27017, 1, 3).unwrap();
        assert_eq!(previous_run_mismatch(&layout, |_| false), None);
        let all = [
            "config-0", "config-1", "config-2", "shard0-0", "shard0-1", "shard0-2",
        ];
        assert_eq!(
            previous_run_mismatch(&layout, |name| all.contains(&name)),
            None
        );
        let fewer = ["config-0", "shard0-0"];
        let error = previous_run_mismatch(&layout, |name| fewer.contains(&name)).unwrap();
        assert!(error.contains("another --members"), "{error}");
        assert!(error.contains("holds config-0, this run expects config-0, config-1, config-2"));
        let more = ["shard0-0", "shard0-1", "shard0-2", "shard0-3"];
        assert!(previous_run_mismatch(&layout, |name| more.contains(&name)).is_some());
        let old_layout = previous_run_mismatch(&layout, |name| name == "shard0").unwrap();
        assert!(old_layout.contains("without replica sets"), "{old_layout}");
    }

    #[test]
    fn primaries_are_found_in_hello_replies() {
        assert!(is_writable_primary(&doc! { "isWritablePrimary": true }));
        assert!(is_writable_primary(&doc! { "ismaster": true }));
        assert!(!is_writable_primary(
            &doc! { "isWritablePrimary": false, "secondary": true }
        ));
        assert!(!is_writable_primary(&doc! { "ok": 1 }));
    }

    #[test]
    fn a_set_forms_with_one_primary_and_all_others_secondary() {
        let hosts: Vec<String> = ["h:1", "h:2", "h:3"].map(str::to_string).to_vec();
        let primary = Some(doc! { "isWritablePrimary": true, "secondary": false });
        let secondary = Some(doc! { "isWritablePrimary": false, "secondary": true });
        let uninitiated = Some(doc! { "isWritablePrimary": false, "secondary": false });
        let formed = [secondary.clone(), primary.clone(), secondary.clone()];
        assert_eq!(set_formed(&hosts, &formed), Ok("h:2".to_string()));
        let lagging = [primary.clone(), uninitiated, None];
        assert_eq!(
            set_formed(&hosts, &lagging),
            Err("primary h:1, but h:2, h:3 not secondary yet".to_string())
        );
        let electing = [secondary.clone(), secondary.clone(), None];
        assert_eq!(
            set_formed(&hosts, &electing),
            Err("0 primaries among h:1, h:2, h:3".to_string())
        );
        let two = [primary.clone(), primary, secondary];
        assert!(set_formed(&hosts, &two).is_err());
    }

    #[test]
    fn summary_lists_every_set_and_its_primary() {
        let layout = ClusterLayout::new(Path::new("/d"), 5000, 1, 2).unwrap();
        let primaries = HashMap::from([("shard0".to_string(), "127.0.0.1:5004".to_string())]);
        let expected = "  router    127.0.0.1:5000  (connect here)
  configRS  127.0.0.1:5001, 127.0.0.1:5002
  shard0    127.0.0.1:5003, 127.0.0.1:5004 (primary)
  a shell on a member: shoal shell --port 5003 --eval 'rs.status()'
  data: /d";
        assert_eq!(summary(&layout, &primaries), expected);
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
