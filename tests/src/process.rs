//! One server child process that a test can start, signal, kill and restart with the same command
//! line, its stdout and stderr appended to a log file that survives restarts.
//!
//! Dropping a [`Process`] SIGKILLs it and reaps it, so no server outlives its test, panics
//! included. A process started in its own process group (for `shoal up`, which has children of
//! its own) is killed as a whole group.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::POLL_INTERVAL;

/// The most bytes read from the end of a log when printing its tail.
const LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;

/// A restartable child process.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    own_group: bool,
    child: Option<Child>,
}

impl Process {
    /// Describes a process without starting it. Output goes to `log` (appended).
    pub fn new(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Process {
        Process {
            name: name.to_owned(),
            program,
            args,
            log,
            own_group: false,
            child: None,
        }
    }

    /// Starts the process in a new process group, so [`Drop`] can kill its descendants too.
    pub fn with_own_group(mut self) -> Process {
        self.own_group = true;
        self
    }

    /// The name given at creation (used in logs and messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the process with extra environment variables. It must not be running.
    pub fn start(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let mut log = File::options().create(true).append(true).open(&self.log)?;
        writeln!(
            log,
            "==== harness: starting {} {:?} env {:?}",
            self.name, self.args, env
        )?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, value) in env {
            command.env(key, value);
        }
        if self.own_group {
            command.process_group(0);
        }
        let child = command.spawn().map_err(|err| {
            anyhow::anyhow!(
                "cannot start {} ({}): {err}",
                self.name,
                self.program.display()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process with stdout piped to the caller (for `shoal up`'s ready line); stderr
    /// still goes to the log.
    pub fn start_piped(&mut self) -> anyhow::Result<std::process::ChildStdout> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let mut log = File::options().create(true).append(true).open(&self.log)?;
        writeln!(log, "==== harness: starting {} {:?}", self.name, self.args)?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if self.own_group {
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|err| {
            anyhow::anyhow!(
                "cannot start {} ({}): {err}",
                self.name,
                self.program.display()
            )
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no piped stdout"))?;
        self.child = Some(child);
        Ok(stdout)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and has not exited yet. Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.note(&format!("exited with {status}"));
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Sends `signal` (a `libc::SIG*` number) to the process.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?;
        send_signal(pid, signal)
    }

    /// SIGKILLs the process (and its group if it has one) and reaps it. A no-op when stopped.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.own_group {
            // The group id is the leader's pid; a negative pid signals the whole group.
            let _ = send_signal_to_group(child.id(), libc::SIGKILL);
        }
        let _ = child.kill();
        let status = child.wait();
        self.note(&format!("killed by the harness: {status:?}"));
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                self.note(&format!(
                    "exited with {status} (signal {:?})",
                    status.signal()
                ));
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Prints the log tail to stderr, headed by the process name.
    pub fn dump_log(&self, lines: usize) {
        eprintln!(
            "----- {} log tail ({}) -----",
            self.name,
            self.log.display()
        );
        eprintln!("{}", self.log_tail(lines));
    }

    fn note(&self, message: &str) {
        if let Ok(mut log) = File::options().append(true).open(&self.log) {
            let _ = writeln!(log, "==== harness: {} {message}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal to one process.
pub fn send_signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    raw_kill(pid, signal)
}

/// Sends a signal to every process of the group led by `leader`.
pub fn send_signal_to_group(leader: u32, signal: i32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(leader)?;
    raw_kill(-pid, signal)
}

#[allow(unsafe_code)] // reason: kill(2) has no safe std wrapper for signals other than SIGKILL.
fn raw_kill(pid: libc::pid_t, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    let rc = unsafe { libc::kill(pid, signal) };
    anyhow::ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The last `lines` lines of a file (at most the last 64 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES_MAX);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
