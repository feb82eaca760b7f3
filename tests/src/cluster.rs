//! [`TestCluster`]: a config server, N shards and a router started as real processes in a
//! temporary directory, with their own CA and node certificates, ready for a driver to use.
//!
//! The cluster prints every node's log tail when it is dropped without [`TestCluster::finish`]
//! having been called (a panic or an early `?` return), so a failing test shows what the servers
//! said; and its processes die with it.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

use bson::{Document, doc};
use mongodb::Client;
use tempfile::TempDir;

use crate::{
    EXIT_TIMEOUT, LOG_TAIL_LINES, READY_TIMEOUT, bin_path, make_certs,
    mongo::{direct_client, is_ok, wait_ping},
    ports::free_port,
    process::Process,
};

/// Set (to anything) to keep a failed test cluster's directory, logs and data.
pub const KEEP_FAILED_ENV: &str = "SHOAL_KEEP_FAILED";

/// The config server replica-set name used by every test cluster.
pub const CONFIG_REPLSET: &str = "configRS";

/// One process of a [`TestCluster`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// The config server.
    Config,
    /// Shard number i (replica set and shard name `shard{i}`).
    Shard(usize),
    /// The router.
    Router,
}

/// A running cluster; see the module documentation.
#[derive(Debug)]
pub struct TestCluster {
    // Declared before `dir` so the processes die before their data directory is removed.
    config: Process,
    shards: Vec<Process>,
    router: Process,
    config_port: u16,
    shard_ports: Vec<u16>,
    router_port: u16,
    finished: bool,
    dir: TempDir,
}

impl TestCluster {
    /// Starts a cluster with `n_shards` shards and adds every shard through the router.
    pub async fn start(n_shards: usize) -> anyhow::Result<TestCluster> {
        let cluster = TestCluster::start_without_shards(n_shards).await?;
        cluster.add_shards().await?;
        Ok(cluster)
    }

    /// Starts every process and waits until each answers `ping`, but adds no shard.
    pub async fn start_without_shards(n_shards: usize) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("shoal-test-").tempdir()?;
        let data_root = dir.path().join("data");
        let config_port = free_port()?;
        let shard_ports = (0..n_shards)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        TestCluster::start_on(dir, &data_root, config_port, shard_ports).await
    }

    /// Starts a cluster on data directories that `shoal backup restore --host SET=HOST:PORT`
    /// wrote: `<data_root>/configRS` and `<data_root>/shard{i}`, each at the port its `--host`
    /// named. Adds no shard: the restored config server already lists them.
    pub async fn start_restored(
        data_root: &std::path::Path,
        config_port: u16,
        shard_ports: Vec<u16>,
    ) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("shoal-test-").tempdir()?;
        TestCluster::start_on(dir, data_root, config_port, shard_ports).await
    }

    async fn start_on(
        dir: TempDir,
        data_root: &std::path::Path,
        config_port: u16,
        shard_ports: Vec<u16>,
    ) -> anyhow::Result<TestCluster> {
        let ca_dir = dir.path().join("tls").join("ca");
        let router_port = free_port()?;
        let config = member_process(
            &dir,
            &ca_dir,
            &data_root.join(CONFIG_REPLSET),
            ("config", "shoal-config"),
            CONFIG_REPLSET,
            config_port,
        )?;
        let shards = shard_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = shard_name(i);
                let data_dir = data_root.join(&name);
                member_process(
                    &dir,
                    &ca_dir,
                    &data_dir,
                    (&name, "shoal-shard"),
                    &name,
                    *port,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let router = router_process(&dir, &ca_dir, router_port, config_port)?;
        let mut cluster = TestCluster {
            config,
            shards,
            router,
            config_port,
            shard_ports,
            router_port,
            finished: false,
            dir,
        };
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Runs `addShard: "shard{i}/127.0.0.1:PORT"` for every shard through the router.
    pub async fn add_shards(&self) -> anyhow::Result<()> {
        let client = self.router_client().await?;
        for i in 0..self.shards.len() {
            let reply = client
                .database("admin")
                .run_command(doc! { "addShard": self.shard_connection_string(i) })
                .await
                .map_err(|err| anyhow::anyhow!("addShard {}: {err}", shard_name(i)))?;
            anyhow::ensure!(is_ok(&reply), "addShard {} answered {reply}", shard_name(i));
        }
        Ok(())
    }

    /// `shard{i}/127.0.0.1:PORT`, the form `addShard` takes.
    pub fn shard_connection_string(&self, i: usize) -> String {
        format!("{}/127.0.0.1:{}", shard_name(i), self.shard_ports[i])
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The TCP/UDP port of a node.
    pub fn port(&self, node: Node) -> u16 {
        match node {
            Node::Config => self.config_port,
            Node::Shard(i) => self.shard_ports[i],
            Node::Router => self.router_port,
        }
    }

    /// Every node, in start order (config, shards, router).
    pub fn nodes(&self) -> Vec<Node> {
        let mut nodes = vec![Node::Config];
        nodes.extend((0..self.shards.len()).map(Node::Shard));
        nodes.push(Node::Router);
        nodes
    }

    /// The temporary directory holding data, certificates and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The router's connection string (no `directConnection`: it is discovered as a mongos).
    pub fn router_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.router_port)
    }

    /// A driver client for the router.
    pub async fn router_client(&self) -> anyhow::Result<Client> {
        let uri = format!(
            "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS={}",
            self.router_port,
            crate::mongo::SELECTION_TIMEOUT_MS
        );
        crate::mongo::client_for(&uri).await
    }

    /// Starts another router named `name` with `extra_args` (e.g. `--routing-refresh-ms 0`)
    /// against the same config server; returns its process (killed when dropped) and port.
    pub async fn extra_router(
        &self,
        name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<(Process, u16)> {
        let ca_dir = self.dir.path().join("tls").join("ca");
        let port = free_port()?;
        let tls_dir = self.dir.path().join("tls").join(name);
        make_certs(&ca_dir, &tls_dir, name)?;
        let mut args = vec![
            "--bind".to_owned(),
            format!("127.0.0.1:{port}"),
            "--configdb".to_owned(),
            format!("{CONFIG_REPLSET}/127.0.0.1:{}", self.config_port),
            "--tls-dir".to_owned(),
            tls_dir.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let log = self.dir.path().join(format!("{name}.log"));
        let mut process = Process::new(name, bin_path("shoal-router")?, args, log);
        process.start(&[])?;
        wait_ping(port, READY_TIMEOUT)
            .await
            .map_err(|err| anyhow::anyhow!("{name} not ready: {err}"))?;
        Ok((process, port))
    }

    /// A driver client connected directly to one node's own wire port.
    pub async fn member_client(&self, node: Node) -> anyhow::Result<Client> {
        direct_client(self.port(node)).await
    }

    /// SIGKILLs a node and reaps it.
    pub fn kill(&mut self, node: Node) {
        self.process_mut(node).kill();
    }

    /// Kills the node if it runs, starts it again with the same arguments and data directory,
    /// and waits until it answers `ping`.
    pub async fn restart(&mut self, node: Node) -> anyhow::Result<()> {
        self.restart_with_env(node, &[]).await
    }

    /// Like [`TestCluster::restart`], with extra environment variables for this run only (a
    /// later `restart` drops them), e.g. `SHOAL_FAILPOINTS`.
    pub async fn restart_with_env(
        &mut self,
        node: Node,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.kill(node);
        self.start_node(node, env).await
    }

    /// Starts a stopped node and waits until it answers `ping`.
    pub async fn start_node(&mut self, node: Node, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let port = self.port(node);
        let process = self.process_mut(node);
        process.start(env)?;
        let name = process.name().to_owned();
        wait_ping(port, READY_TIMEOUT)
            .await
            .map_err(|err| anyhow::anyhow!("{name} not ready: {err}"))?;
        Ok(())
    }

    /// Whether a node's process is alive.
    pub fn is_running(&mut self, node: Node) -> bool {
        self.process_mut(node).is_running()
    }

    /// Waits (bounded by [`EXIT_TIMEOUT`]) for a node to exit on its own, e.g. at a failpoint.
    pub async fn wait_exit(&mut self, node: Node) -> anyhow::Result<ExitStatus> {
        self.process_mut(node).wait_exit(EXIT_TIMEOUT).await
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for node in self.nodes() {
            self.kill(node);
        }
    }

    /// Starts every stopped node in dependency order (config, shards, router), each waited for.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for node in self.nodes() {
            if !self.is_running(node) {
                self.start_node(node, &[]).await?;
            }
        }
        Ok(())
    }

    /// Stops every node (SIGKILL); the data directory stays until the cluster is dropped.
    pub fn stop_all(&mut self) {
        self.kill_all();
    }

    /// Marks the test as passed: dropping the cluster will not print the logs.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Prints every node's log tail to stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "===== shoal test cluster logs ({}) =====",
            self.dir.path().display()
        );
        self.config.dump_log(LOG_TAIL_LINES);
        for shard in &self.shards {
            shard.dump_log(LOG_TAIL_LINES);
        }
        self.router.dump_log(LOG_TAIL_LINES);
    }

    /// Polls a read of `config.shards` through the router until it succeeds, bounded by
    /// [`READY_TIMEOUT`]: after a config server restart the router may need time to reconnect.
    /// Returns how long it took.
    pub async fn wait_router_reaches_config(&self) -> anyhow::Result<Duration> {
        let client = self.router_client().await?;
        let started = std::time::Instant::now();
        loop {
            let attempt = client
                .database("config")
                .collection::<Document>("shards")
                .find_one(doc! {})
                .await;
            match attempt {
                Ok(_) => return Ok(started.elapsed()),
                Err(err) if started.elapsed() >= READY_TIMEOUT => {
                    anyhow::bail!("router cannot read config.shards after {READY_TIMEOUT:?}: {err}")
                }
                Err(_) => tokio::time::sleep(crate::POLL_INTERVAL).await,
            }
        }
    }

    /// Runs a command on the router's `admin` database and returns the reply (ok:0 is an error).
    pub async fn admin(&self, command: Document) -> anyhow::Result<Document> {
        let client = self.router_client().await?;
        let reply = client.database("admin").run_command(command.clone()).await;
        reply.map_err(|err| anyhow::anyhow!("{command} failed: {err}"))
    }

    fn process_mut(&mut self, node: Node) -> &mut Process {
        match node {
            Node::Config => &mut self.config,
            Node::Shard(i) => &mut self.shards[i],
            Node::Router => &mut self.router,
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_all();
        if !self.finished || std::thread::panicking() {
            self.dump_logs();
            if std::env::var_os(KEEP_FAILED_ENV).is_some() {
                // Debugging a failure: the data and full logs stay for inspection.
                self.dir.disable_cleanup(true);
                eprintln!("kept {} ({KEEP_FAILED_ENV})", self.dir.path().display());
            }
        }
    }
}

/// `shard{i}`: the replica-set name and shard name of shard i.
pub fn shard_name(i: usize) -> String {
    format!("shard{i}")
}

/// A member process; `(name, binary)` names its log and certificates and the program to run.
fn member_process(
    dir: &TempDir,
    ca_dir: &std::path::Path,
    data_dir: &std::path::Path,
    (name, binary): (&str, &str),
    replset: &str,
    port: u16,
) -> anyhow::Result<Process> {
    let tls_dir = dir.path().join("tls").join(name);
    make_certs(ca_dir, &tls_dir, name)?;
    let args = vec![
        "--replset".to_owned(),
        replset.to_owned(),
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dir".to_owned(),
        data_dir.display().to_string(),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
        // A one-member set, initiated on first start.
        "--initiate-members".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    let log = dir.path().join(format!("{name}.log"));
    Ok(Process::new(name, bin_path(binary)?, args, log))
}

/// One replica set restored on its own (`shoal backup restore --set`): its one member running
/// on its data directory, stopped when dropped.
#[derive(Debug)]
pub struct RestoredSet {
    member: Process,
    port: u16,
    _dir: TempDir,
}

impl RestoredSet {
    /// Starts a `shoal-shard` member of set `replset` on `data_dir` at `port` and waits until it
    /// answers `ping`.
    pub async fn start_shard(
        data_dir: &std::path::Path,
        replset: &str,
        port: u16,
    ) -> anyhow::Result<RestoredSet> {
        let dir = tempfile::Builder::new().prefix("shoal-set-").tempdir()?;
        let ca_dir = dir.path().join("tls").join("ca");
        let mut member = member_process(
            &dir,
            &ca_dir,
            data_dir,
            (replset, "shoal-shard"),
            replset,
            port,
        )?;
        member.start(&[])?;
        wait_ping(port, READY_TIMEOUT).await?;
        Ok(RestoredSet {
            member,
            port,
            _dir: dir,
        })
    }

    /// A client connected directly to the member.
    pub async fn client(&self) -> anyhow::Result<Client> {
        direct_client(self.port).await
    }

    /// Stops the member.
    pub fn stop(mut self) {
        self.member.kill();
    }
}

fn router_process(
    dir: &TempDir,
    ca_dir: &std::path::Path,
    port: u16,
    config_port: u16,
) -> anyhow::Result<Process> {
    let tls_dir = dir.path().join("tls").join("router");
    make_certs(ca_dir, &tls_dir, "router")?;
    let args = vec![
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--configdb".to_owned(),
        format!("{CONFIG_REPLSET}/127.0.0.1:{config_port}"),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
    ];
    let log = dir.path().join("router.log");
    Ok(Process::new("router", bin_path("shoal-router")?, args, log))
}
