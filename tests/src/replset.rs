//! [`ReplCluster`]: a config-server replica set, one shard replica set and a router, every
//! member a real process on 127.0.0.1, for failover tests: kill (SIGKILL), pause (SIGSTOP),
//! partition (the members' fault-injecting Raft transport) and restart members, find the
//! primary, and compare members' `dbHash`.

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

/// The shard's replica-set (and shard) name.
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
    /// The shard.
    Shard,
}

/// A running cluster; see the module documentation.
#[derive(Debug)]
pub struct ReplCluster {
    config: Vec<Process>,
    shard: Vec<Process>,
    router: Process,
    config_ports: Vec<u16>,
    shard_ports: Vec<u16>,
    router_port: u16,
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
        let dir = tempfile::Builder::new().prefix("shoal-repl-").tempdir()?;
        let ca_dir = dir.path().join("tls").join("ca");
        let config_ports = (0..config_members)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shard_ports = (0..shard_members)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let router_port = free_port()?;
        let hosts = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let config_hosts = hosts(&config_ports);
        let shard_hosts = hosts(&shard_ports);
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
        let mut shard = Vec::new();
        for (j, port) in shard_ports.iter().enumerate() {
            shard.push(member_process(
                &dir,
                &ca_dir,
                &format!("shard0-{j}"),
                "shoal-shard",
                SHARD_SET,
                *port,
                &shard_hosts,
                member_flags,
            )?);
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
            shard,
            router,
            config_ports,
            shard_ports,
            router_port,
            finished: false,
            dir,
        };
        for set in [Set::Config, Set::Shard] {
            for j in 0..cluster.members(set) {
                cluster.start_member(set, j).await?;
            }
        }
        cluster.router.start(&[])?;
        wait_ping(router_port, READY_TIMEOUT).await?;
        cluster.wait_primary(Set::Config).await?;
        cluster.wait_primary(Set::Shard).await?;
        let add = doc! {"addShard": format!("{SHARD_SET}/{shard_hosts}")};
        let reply = cluster
            .router_client()
            .await?
            .database("admin")
            .run_command(add)
            .await?;
        anyhow::ensure!(crate::mongo::is_ok(&reply), "addShard answered {reply}");
        Ok(cluster)
    }

    /// Members of `set`.
    pub fn members(&self, set: Set) -> usize {
        self.ports(set).len()
    }

    fn ports(&self, set: Set) -> &[u16] {
        match set {
            Set::Config => &self.config_ports,
            Set::Shard => &self.shard_ports,
        }
    }

    /// The port of member `j` of `set`.
    pub fn port(&self, set: Set, j: usize) -> u16 {
        self.ports(set)[j]
    }

    /// `127.0.0.1:PORT` of member `j`.
    pub fn host(&self, set: Set, j: usize) -> String {
        format!("127.0.0.1:{}", self.port(set, j))
    }

    fn process(&mut self, set: Set, j: usize) -> &mut Process {
        match set {
            Set::Config => &mut self.config[j],
            Set::Shard => &mut self.shard[j],
        }
    }

    /// Starts member `j` and waits until it answers `ping`.
    pub async fn start_member(&mut self, set: Set, j: usize) -> anyhow::Result<()> {
        let port = self.port(set, j);
        self.process(set, j).start(&[])?;
        wait_ping(port, READY_TIMEOUT).await?;
        Ok(())
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
        std::fs::read_to_string(self.process(set, j).log_path()).is_ok_and(|log| log.contains(text))
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
        for p in self.config.iter().chain(&self.shard) {
            p.dump_log(LOG_TAIL_LINES);
        }
        self.router.dump_log(LOG_TAIL_LINES);
    }
}

impl Drop for ReplCluster {
    fn drop(&mut self) {
        self.router.kill();
        for p in self.config.iter_mut().chain(self.shard.iter_mut()) {
            // SIGCONT first: a paused process must not outlive the test.
            let _ = p.signal(libc::SIGCONT);
            p.kill();
        }
        if !self.finished || std::thread::panicking() {
            self.dump_logs();
        }
    }
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
