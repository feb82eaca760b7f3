//! [`ReplCluster`]: a config-server replica set, one or more shard replica sets (`shard0`,
//! `shard1`, ...) and a router, every member a real process on 127.0.0.1, for failover tests:
//! kill (SIGKILL), pause (SIGSTOP), partition (the members' fault-injecting Raft transport) and
//! restart members (optionally with extra environment, e.g. `SHOAL_FAILPOINTS`), find the
//! primary, read members' logs, and compare members' `dbHash`.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mongodb::{
    Client,
    options::{ReadPreference, SelectionCriteria},
};
use tempfile::TempDir;

use crate::{
    LOG_TAIL_LINES, READY_TIMEOUT, bin_path, make_certs,
    mongo::{direct_client, wait_ping},
    ports::free_port,
    process::Process,
};

/// The first shard's replica-set (and shard) name; shard `i` is `shard{i}`.
pub const SHARD_SET: &str = "shard0";
/// The config server's replica-set name.
pub const CONFIG_SET: &str = "configRS";
/// How long a set may take to elect a primary (after start or a failure).
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);
/// How long members may take to converge to identical contents.
pub const CONVERGE_WAIT: Duration = Duration::from_secs(30);

/// Which replica set of a [`ReplCluster`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    /// The config server.
    Config,
    /// The first shard, `shard0` (the same set as `ShardN(0)`).
    Shard,
    /// Shard `i`, `shard{i}`.
    ShardN(usize),
}

impl Set {
    /// The shard index of a shard set, `None` for the config server.
    pub fn shard_index(self) -> Option<usize> {
        match self {
            Set::Config => None,
            Set::Shard => Some(0),
            Set::ShardN(i) => Some(i),
        }
    }
}

/// The replica-set (and shard) name of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("shard{i}")
}

/// Environment variables given to a member when it starts.
type Env = Vec<(String, String)>;

/// A running cluster; see the module documentation.
#[derive(Debug)]
pub struct ReplCluster {
    config: Vec<Process>,
    shards: Vec<Vec<Process>>,
    router: Process,
    config_ports: Vec<u16>,
    shard_ports: Vec<Vec<u16>>,
    router_port: u16,
    /// Per set (config first, then each shard): the environment of later starts.
    envs: Vec<Env>,
    finished: bool,
    dir: TempDir,
}

impl ReplCluster {
    /// Starts `config_members` config servers, `shard_members` shard members and a router,
    /// waits for both sets to elect, and adds the shard.
    pub async fn start(config_members: usize, shard_members: usize) -> anyhow::Result<ReplCluster> {
        Self::start_with(config_members, shard_members, &[]).await
    }

    /// Like [`ReplCluster::start`], with extra flags for every member (e.g. `--snapshot-entries`).
    pub async fn start_with(
        config_members: usize,
        shard_members: usize,
        member_flags: &[&str],
    ) -> anyhow::Result<ReplCluster> {
        Self::start_shards(config_members, shard_members, 1, member_flags).await
    }

    /// Starts `config_members` config servers, `n_shards` shard sets (`shard0`, `shard1`, ...) of
    /// `shard_members` members each and a router, all members with `member_flags`; waits for
    /// every set to elect and adds the shards in order.
    pub async fn start_shards(
        config_members: usize,
        shard_members: usize,
        n_shards: usize,
        member_flags: &[&str],
    ) -> anyhow::Result<ReplCluster> {
        let dir = tempfile::Builder::new().prefix("shoal-repl-").tempdir()?;
        let ca_dir = dir.path().join("tls").join("ca");
        let ports = |n: usize| {
            (0..n)
                .map(|_| free_port())
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let config_ports = ports(config_members)?;
        let shard_ports = (0..n_shards)
            .map(|_| ports(shard_members))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let router_port = free_port()?;
        let config_hosts = hosts(&config_ports);
        let mut config = Vec::new();
        for (j, port) in config_ports.iter().enumerate() {
            config.push(member_process(
                &dir,
                &ca_dir,
                &format!("config{j}"),
                "shoal-config",
                CONFIG_SET,
                *port,
                &config_hosts,
                member_flags,
            )?);
        }
        let mut shards = Vec::new();
        for (i, set_ports) in shard_ports.iter().enumerate() {
            let set_hosts = hosts(set_ports);
            let mut members = Vec::new();
            for (j, port) in set_ports.iter().enumerate() {
                members.push(member_process(
                    &dir,
                    &ca_dir,
                    &format!("shard{i}-{j}"),
                    "shoal-shard",
                    &shard_name(i),
                    *port,
                    &set_hosts,
                    member_flags,
                )?);
            }
            shards.push(members);
        }
        let tls_dir = dir.path().join("tls").join("router");
        make_certs(&ca_dir, &tls_dir, "router")?;
        let router = Process::new(
            "router",
            bin_path("shoal-router")?,
            vec![
                "--bind".into(),
                format!("127.0.0.1:{router_port}"),
                "--configdb".into(),
                format!("{CONFIG_SET}/{config_hosts}"),
                "--tls-dir".into(),
                tls_dir.display().to_string(),
            ],
            dir.path().join("router.log"),
        );
        let mut cluster = ReplCluster {
            config,
            shards,
            router,
            config_ports,
            shard_ports,
            router_port,
            envs: vec![Vec::new(); n_shards + 1],
            finished: false,
            dir,
        };
        for set in cluster.sets() {
            for j in 0..cluster.members(set) {
                cluster.start_member(set, j).await?;
            }
        }
        cluster.router.start(&[])?;
        wait_ping(router_port, READY_TIMEOUT).await?;
        for set in cluster.sets() {
            cluster.wait_primary(set).await?;
        }
        let router = cluster.router_client().await?;
        for i in 0..n_shards {
            let add =
                doc! {"addShard": format!("{}/{}", shard_name(i), hosts(&cluster.shard_ports[i]))};
            let reply = router.database("admin").run_command(add).await?;
            anyhow::ensure!(crate::mongo::is_ok(&reply), "addShard answered {reply}");
        }
        Ok(cluster)
    }

    /// Every set: the config server, then the shards in order.
    pub fn sets(&self) -> Vec<Set> {
        std::iter::once(Set::Config)
            .chain((0..self.shards.len()).map(Set::ShardN))
            .collect()
    }

    /// How many shard sets the cluster has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Members of `set`.
    pub fn members(&self, set: Set) -> usize {
        self.ports(set).len()
    }

    fn ports(&self, set: Set) -> &[u16] {
        match set.shard_index() {
            None => &self.config_ports,
            Some(i) => &self.shard_ports[i],
        }
    }

    fn env_slot(set: Set) -> usize {
        set.shard_index().map_or(0, |i| i + 1)
    }

    /// The port of member `j` of `set`.
    pub fn port(&self, set: Set, j: usize) -> u16 {
        self.ports(set)[j]
    }

    /// The data directory (`--dir`) of member `j` of `set`.
    pub fn member_dir(&self, set: Set, j: usize) -> std::path::PathBuf {
        let name = match set.shard_index() {
            None => format!("config{j}"),
            Some(i) => format!("shard{i}-{j}"),
        };
        self.dir.path().join("data").join(name)
    }

    /// `127.0.0.1:PORT` of member `j`.
    pub fn host(&self, set: Set, j: usize) -> String {
        format!("127.0.0.1:{}", self.port(set, j))
    }

    fn process(&mut self, set: Set, j: usize) -> &mut Process {
        match set.shard_index() {
            None => &mut self.config[j],
            Some(i) => &mut self.shards[i][j],
        }
    }

    fn process_ref(&self, set: Set, j: usize) -> &Process {
        match set.shard_index() {
            None => &self.config[j],
            Some(i) => &self.shards[i][j],
        }
    }

    /// Starts member `j` (with the environment [`ReplCluster::set_env`] gave its set) and waits
    /// until it answers `ping`.
    pub async fn start_member(&mut self, set: Set, j: usize) -> anyhow::Result<()> {
        let env = self.envs[Self::env_slot(set)].clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.start_member_with_env(set, j, &env).await
    }

    /// Starts member `j` with extra environment variables (this start only) and waits until
    /// it answers `ping`.
    pub async fn start_member_with_env(
        &mut self,
        set: Set,
        j: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let port = self.port(set, j);
        self.process(set, j).start(env)?;
        wait_ping(port, READY_TIMEOUT).await?;
        Ok(())
    }

    /// The environment every later start of a member of `set` gets (e.g.
    /// `[("SHOAL_FAILPOINTS", "moveChunk.afterClone:pause=4000")]`); empty clears it.
    pub fn set_env(&mut self, set: Set, env: &[(&str, &str)]) {
        self.envs[Self::env_slot(set)] = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// SIGKILLs every member of `set`, restarts them all (with its [`ReplCluster::set_env`]
    /// environment) and waits for a primary, whose index it returns.
    pub async fn restart_set(&mut self, set: Set) -> anyhow::Result<usize> {
        for j in 0..self.members(set) {
            self.kill(set, j);
        }
        for j in 0..self.members(set) {
            self.start_member(set, j).await?;
        }
        self.wait_primary(set).await
    }

    /// Whether member `j`'s process is running (it was started and has not exited).
    pub fn is_running(&mut self, set: Set, j: usize) -> bool {
        self.process(set, j).is_running()
    }

    /// SIGKILLs member `j`.
    pub fn kill(&mut self, set: Set, j: usize) {
        self.process(set, j).kill();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to member `j`.
    pub fn signal(&mut self, set: Set, j: usize, signal: i32) -> anyhow::Result<()> {
        self.process(set, j).signal(signal)
    }

    /// The router's client (retryable writes on, as drivers default).
    pub async fn router_client(&self) -> anyhow::Result<Client> {
        crate::mongo::client_for(&format!(
            "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=30000",
            self.router_port
        ))
        .await
    }

    /// A direct client of member `j` that may read from a secondary.
    pub async fn member_client(&self, set: Set, j: usize) -> anyhow::Result<Client> {
        direct_client(self.port(set, j)).await
    }

    /// Runs `command` on member `j` (`admin`), allowing a secondary to answer.
    pub async fn member_command(
        &self,
        set: Set,
        j: usize,
        command: Document,
    ) -> anyhow::Result<Document> {
        let client = self.member_client(set, j).await?;
        let criteria =
            SelectionCriteria::ReadPreference(ReadPreference::PrimaryPreferred { options: None });
        Ok(client
            .database("admin")
            .run_command(command)
            .selection_criteria(criteria)
            .await?)
    }

    /// `hello` of member `j`, or `None` when it does not answer within a second.
    pub async fn hello(&self, set: Set, j: usize) -> Option<Document> {
        let port = self.port(set, j);
        let probe = async move {
            let client = crate::mongo::client_for(&crate::mongo::direct_uri(port, 1000))
                .await
                .ok()?;
            client
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .ok()
            .flatten()
    }

    /// The member that is primary now, if exactly one member with the highest term says so.
    pub async fn current_primary(&self, set: Set) -> Option<usize> {
        let mut best: Option<(usize, Vec<u8>)> = None;
        for j in 0..self.members(set) {
            let Some(hello) = self.hello(set, j).await else {
                continue;
            };
            if hello.get_bool("isWritablePrimary") != Ok(true) {
                continue;
            }
            let term = match hello.get("electionId") {
                Some(Bson::ObjectId(id)) => id.bytes().to_vec(),
                _ => Vec::new(),
            };
            if best.as_ref().is_none_or(|(_, t)| term > *t) {
                best = Some((j, term));
            }
        }
        best.map(|(j, _)| j)
    }

    /// Waits (bounded by [`ELECTION_WAIT`]) for `set` to have a primary; returns its index.
    pub async fn wait_primary(&self, set: Set) -> anyhow::Result<usize> {
        self.wait_primary_other_than(set, None).await
    }

    /// Waits for a primary other than `not` (a member that was just killed or paused).
    pub async fn wait_primary_other_than(
        &self,
        set: Set,
        not: Option<usize>,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        while started.elapsed() < ELECTION_WAIT {
            if let Some(j) = self.current_primary(set).await
                && Some(j) != not
            {
                return Ok(j);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{set:?} elected no primary within {ELECTION_WAIT:?}")
    }

    /// Waits until member `j` reports itself a secondary.
    pub async fn wait_secondary(&self, set: Set, j: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < ELECTION_WAIT {
            if let Some(hello) = self.hello(set, j).await
                && hello.get_bool("secondary") == Ok(true)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("member {j} of {set:?} did not become a secondary within {ELECTION_WAIT:?}")
    }

    /// Cuts member `j`'s Raft traffic with the members `from` (both directions); an empty
    /// `from` heals.
    pub async fn partition(&self, set: Set, j: usize, from: &[usize]) -> anyhow::Result<()> {
        let hosts: Vec<String> = from.iter().map(|k| self.host(set, *k)).collect();
        self.member_command(set, j, doc! {"_shoalPartition": hosts})
            .await?;
        for k in from {
            let me = vec![self.host(set, j)];
            self.member_command(set, *k, doc! {"_shoalPartition": me})
                .await?;
        }
        Ok(())
    }

    /// Heals every partition of `set`.
    pub async fn heal(&self, set: Set) -> anyhow::Result<()> {
        for j in 0..self.members(set) {
            self.member_command(set, j, doc! {"_shoalPartition": Vec::<String>::new()})
                .await?;
        }
        Ok(())
    }

    /// `dbHash` of `db` on every running member of `set`, once they all agree (bounded by
    /// [`CONVERGE_WAIT`]); fails with the differing hashes otherwise.
    pub async fn converged_hash(
        &self,
        set: Set,
        db: &str,
        members: &[usize],
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < CONVERGE_WAIT {
            last.clear();
            for j in members {
                let client = self.member_client(set, *j).await?;
                let criteria =
                    SelectionCriteria::ReadPreference(ReadPreference::PrimaryPreferred {
                        options: None,
                    });
                let reply = client
                    .database(db)
                    .run_command(doc! {"dbHash": 1})
                    .selection_criteria(criteria)
                    .await;
                last.push(
                    reply
                        .map(|r| r.get_str("md5").unwrap_or("").to_owned())
                        .unwrap_or_else(|e| format!("error: {e}")),
                );
            }
            if last
                .iter()
                .all(|h| h == &last[0] && !h.starts_with("error"))
            {
                return Ok(last[0].clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("members {members:?} did not converge: {last:?}")
    }

    /// Whether member `j`'s log contains `text`.
    pub fn log_contains(&mut self, set: Set, j: usize, text: &str) -> bool {
        self.log_count(set, j, text) > 0
    }

    /// Member `j`'s whole log (stdout and stderr over all its starts); empty when unreadable.
    pub fn log_text(&self, set: Set, j: usize) -> String {
        std::fs::read_to_string(self.process_ref(set, j).log_path()).unwrap_or_default()
    }

    /// How many times `text` occurs in member `j`'s log.
    pub fn log_count(&self, set: Set, j: usize, text: &str) -> usize {
        self.log_text(set, j).matches(text).count()
    }

    /// The lines of member `j`'s log containing `text`.
    pub fn log_lines(&self, set: Set, j: usize, text: &str) -> Vec<String> {
        self.log_text(set, j)
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded by `timeout`) until some member of `set` has more than `seen[j]`
    /// occurrences of `text` in its log; returns that member. `seen` comes from
    /// [`ReplCluster::log_counts`] taken before the awaited event.
    pub async fn wait_log(
        &self,
        set: Set,
        text: &str,
        seen: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            for j in 0..self.members(set) {
                if self.log_count(set, j, text) > seen.get(j).copied().unwrap_or(0) {
                    return Ok(j);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no member of {set:?} logged {text:?} within {timeout:?}")
    }

    /// Occurrences of `text` in each member's log of `set`, for [`ReplCluster::wait_log`].
    pub fn log_counts(&self, set: Set, text: &str) -> Vec<usize> {
        (0..self.members(set))
            .map(|j| self.log_count(set, j, text))
            .collect()
    }

    /// Marks the test as passed (no log dump on drop).
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Prints every process's log tail.
    pub fn dump_logs(&self) {
        eprintln!(
            "===== shoal repl cluster logs ({}) =====",
            self.dir.path().display()
        );
        for p in self.config.iter().chain(self.shards.iter().flatten()) {
            p.dump_log(LOG_TAIL_LINES);
        }
        self.router.dump_log(LOG_TAIL_LINES);
    }
}

impl Drop for ReplCluster {
    fn drop(&mut self) {
        self.router.kill();
        for p in self
            .config
            .iter_mut()
            .chain(self.shards.iter_mut().flatten())
        {
            // SIGCONT first: a paused process must not outlive the test.
            let _ = p.signal(libc::SIGCONT);
            p.kill();
        }
        if !self.finished || std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// `127.0.0.1:P1,127.0.0.1:P2,...`
fn hosts(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[allow(clippy::too_many_arguments)]
fn member_process(
    dir: &TempDir,
    ca_dir: &std::path::Path,
    name: &str,
    binary: &str,
    replset: &str,
    port: u16,
    initiate: &str,
    flags: &[&str],
) -> anyhow::Result<Process> {
    let tls_dir = dir.path().join("tls").join(name);
    make_certs(ca_dir, &tls_dir, name)?;
    let mut args = vec![
        "--replset".to_owned(),
        replset.to_owned(),
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dir".to_owned(),
        dir.path().join("data").join(name).display().to_string(),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
        "--initiate-members".to_owned(),
        initiate.to_owned(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    Ok(Process::new(
        name,
        bin_path(binary)?,
        args,
        dir.path().join(format!("{name}.log")),
    ))
}
