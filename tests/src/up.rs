//! Driving the `shoal` command-line tool: `shoal up` (run until its ready line, stopped with
//! SIGTERM) and `shoal shell --eval`, as a user would from a terminal.
//!
//! `shoal up` runs every replica set (config server, each shard) with `--members` members: the
//! router on PORT, then each set's members on the next ports ([`up_ports`]).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    EXIT_TIMEOUT, bin_path,
    ports::port_is_free,
    process::{Process, send_signal_to_group},
};

/// How long `shoal up` may take to print its ready line.
pub const UP_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `shoal shell --eval` may run.
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the line `shoal up` prints once the cluster serves.
pub const READY_PREFIX: &str = "Shoal cluster ready:";
/// Lines of `shoal up` output buffered between the reader thread and the test.
const STDOUT_LINES_QUEUED_MAX: usize = 256;
/// How long ports may stay busy after `shoal up` exited.
const PORTS_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// `shoal up`'s default `--members`.
pub const MEMBERS_DEFAULT: usize = 3;

/// Every port `shoal up --port PORT --shards SHARDS --members MEMBERS` listens on: the router
/// on PORT, the config members on PORT+1..=PORT+MEMBERS, and the members of shard i from
/// PORT+1+MEMBERS*(i+1).
pub fn up_ports(port: u16, shards: usize, members: usize) -> anyhow::Result<Vec<u16>> {
    let count = u16::try_from(1 + members * (shards + 1))?;
    let end = port
        .checked_add(count)
        .ok_or_else(|| anyhow::anyhow!("{count} ports from {port} pass 65535"))?;
    Ok((port..end).collect())
}

/// The wire ports of shard `shard_idx`'s members under `shoal up --port PORT --members MEMBERS`.
pub fn shard_member_ports(port: u16, members: usize, shard_idx: usize) -> anyhow::Result<Vec<u16>> {
    let first = u16::try_from(1 + members * (shard_idx + 1))?;
    let members = u16::try_from(members)?;
    let start = port
        .checked_add(first)
        .ok_or_else(|| anyhow::anyhow!("shard {shard_idx} ports pass 65535"))?;
    Ok((start..start.saturating_add(members)).collect())
}

/// A running `shoal up`.
#[derive(Debug)]
pub struct ShoalUp {
    process: Process,
    /// The connection string from the ready line.
    pub uri: String,
    /// Time from spawn to the ready line.
    pub ready_after: Duration,
}

impl ShoalUp {
    /// Runs `shoal up --dir DIR --port PORT --shards N` (default `--members`, see
    /// [`MEMBERS_DEFAULT`]) and waits for its ready line. Its stderr goes to `log`; it runs in
    /// its own process group so dropping it kills its children too.
    pub async fn start(
        dir: &Path,
        port: u16,
        shards: usize,
        log: &Path,
    ) -> anyhow::Result<ShoalUp> {
        Self::start_with_args(dir, port, shards, Vec::new(), log).await
    }

    /// [`ShoalUp::start`] with `--members MEMBERS`.
    pub async fn start_with_members(
        dir: &Path,
        port: u16,
        shards: usize,
        members: usize,
        log: &Path,
    ) -> anyhow::Result<ShoalUp> {
        let extra = vec!["--members".to_owned(), members.to_string()];
        Self::start_with_args(dir, port, shards, extra, log).await
    }

    async fn start_with_args(
        dir: &Path,
        port: u16,
        shards: usize,
        extra: Vec<String>,
        log: &Path,
    ) -> anyhow::Result<ShoalUp> {
        let mut args = vec![
            "up".to_owned(),
            "--dir".to_owned(),
            dir.display().to_string(),
            "--port".to_owned(),
            port.to_string(),
            "--shards".to_owned(),
            shards.to_string(),
        ];
        args.extend(extra);
        let mut process =
            Process::new("shoal-up", bin_path("shoal")?, args, log.to_path_buf()).with_own_group();
        let started = Instant::now();
        let stdout = process.start_piped()?;
        let (sender, mut lines) = mpsc::channel::<String>(STDOUT_LINES_QUEUED_MAX);
        // A thread, not a task: ChildStdout is blocking. It keeps draining after the ready line so
        // `shoal up` never blocks on a full pipe, and ends at EOF when the process exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("shoal up: {line}");
                // Once the receiver is gone the lines are only printed.
                let _ = sender.try_send(line);
            }
        });
        let deadline = started + UP_READY_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, lines.recv()).await;
            match line {
                Err(_) => {
                    process.dump_log(crate::LOG_TAIL_LINES);
                    anyhow::bail!("shoal up printed no ready line within {UP_READY_TIMEOUT:?}");
                }
                Ok(None) => {
                    process.dump_log(crate::LOG_TAIL_LINES);
                    anyhow::bail!("shoal up closed stdout before its ready line");
                }
                Ok(Some(line)) => {
                    if let Some(uri) = line.strip_prefix(READY_PREFIX) {
                        let uri = uri.trim().to_owned();
                        return Ok(ShoalUp {
                            process,
                            uri,
                            ready_after: started.elapsed(),
                        });
                    }
                }
            }
        }
    }

    /// The process id of `shoal up` itself.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends SIGTERM and waits (bounded by [`EXIT_TIMEOUT`]) for `shoal up` to exit; then checks
    /// that no process of its group is left and that `ports` are free again.
    pub async fn terminate(mut self, ports: &[u16]) -> anyhow::Result<Duration> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("shoal up is not running"))?;
        let started = Instant::now();
        self.process.signal(libc::SIGTERM)?;
        let status = self.process.wait_exit(EXIT_TIMEOUT).await?;
        let took = started.elapsed();
        println!("shoal up exited with {status} {took:?} after SIGTERM");
        // Signal 0 probes: ESRCH means no process of the group is left.
        if send_signal_to_group(pid, 0).is_ok() {
            let _ = send_signal_to_group(pid, libc::SIGKILL);
            anyhow::bail!("processes of shoal up's group were still alive after it exited");
        }
        wait_ports_free(ports).await?;
        Ok(took)
    }

    /// SIGKILLs `shoal up` alone (not its nodes), as a crash or the OOM killer would, and waits
    /// until `ports` are free: the orphaned nodes must notice and stop by themselves.
    pub async fn kill_only_supervisor(mut self, ports: &[u16]) -> anyhow::Result<Duration> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("shoal up is not running"))?;
        let started = Instant::now();
        crate::process::send_signal(pid, libc::SIGKILL)?;
        self.process.wait_exit(EXIT_TIMEOUT).await?;
        wait_ports_free(ports).await?;
        Ok(started.elapsed())
    }

    /// Prints the stderr log tail of `shoal up`.
    pub fn dump_log(&self) {
        self.process.dump_log(crate::LOG_TAIL_LINES);
    }
}

/// Waits until every port binds on TCP and UDP again.
pub async fn wait_ports_free(ports: &[u16]) -> anyhow::Result<()> {
    let deadline = Instant::now() + PORTS_RELEASE_TIMEOUT;
    loop {
        let busy: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|port| !port_is_free(*port))
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "ports still in use: {busy:?}");
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
}

/// Runs `shoal shell URI --eval SCRIPT` and returns its output (status included).
pub async fn shell_eval(uri: &str, script: &str) -> anyhow::Result<Output> {
    shell_eval_with(&[uri], script).await
}

/// Runs `shoal shell --port PORT --eval SCRIPT` (a shell on the server at 127.0.0.1:PORT,
/// e.g. one replica-set member) and returns its output (status included).
pub async fn shell_eval_on_port(port: u16, script: &str) -> anyhow::Result<Output> {
    shell_eval_with(&["--port", &port.to_string()], script).await
}

async fn shell_eval_with(connect_args: &[&str], script: &str) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(bin_path("shoal")?);
    command
        .arg("shell")
        .args(connect_args)
        .arg("--eval")
        .arg(script)
        .kill_on_drop(true);
    let output = tokio::time::timeout(SHELL_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            anyhow::anyhow!("shoal shell --eval {script:?} ran over {SHELL_TIMEOUT:?}")
        })??;
    println!(
        "shoal shell {} --eval {script:?}: {}\nstdout:\n{}\nstderr:\n{}",
        connect_args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}
