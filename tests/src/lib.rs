//! Harness for Shoal's integration tests: it runs the real server binaries (`shoal-config`,
//! `shoal-shard`, `shoal-router`, `shoal`) as child processes on 127.0.0.1, so the tests exercise
//! the same wire protocol, QUIC transport and on-disk state that users get.
//!
//! Why a library: every test needs the same chores (find the binaries, pick ports that parallel
//! tests do not share, make certificates, wait for readiness with bounded loops, and never leave a
//! process behind, even when a test panics), and getting them subtly wrong makes tests flaky.

pub mod cli;
pub mod cluster;
pub mod mongo;
pub mod ports;
pub mod process;
pub mod replset;
pub mod sharding;
pub mod up;

use std::{path::PathBuf, time::Duration};

pub use cluster::{Node, RestoredSet, TestCluster};
pub use process::Process;

/// How long a node may take from spawn to answering `ping`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness and exit are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a process may take to exit after SIGKILL/SIGTERM or a failpoint abort.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How many log lines per process are printed when a test fails.
pub const LOG_TAIL_LINES: usize = 60;
/// The environment variable that overrides where the server binaries are.
pub const BIN_DIR_ENV: &str = "SHOAL_BIN_DIR";

/// The directory holding the server binaries: `$SHOAL_BIN_DIR`, else the cargo profile directory
/// of the running executable (`target/release/deps/test-xxx` and `target/release/bench` both map
/// to `target/release`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of one server binary, checked to exist so a missing build fails with a clear message.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    anyhow::ensure!(
        path.is_file(),
        "binary {} not found (build with `cargo build --release` or set {BIN_DIR_ENV})",
        path.display()
    );
    Ok(path)
}

/// Writes a cluster CA into `ca_dir` (if missing) and a node certificate for 127.0.0.1 into
/// `out_dir` (`ca.pem`, `node.pem`, `node-key.pem`), the layout every node's `--tls-dir` takes.
pub fn make_certs(
    ca_dir: &std::path::Path,
    out_dir: &std::path::Path,
    node_name: &str,
) -> anyhow::Result<()> {
    shoal_rpc::certs::create_ca(ca_dir)?;
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    shoal_rpc::certs::create_node_cert(ca_dir, out_dir, node_name, &hosts)?;
    Ok(())
}

/// `bytes` pseudo-random bytes from `seed` (xorshift): payloads that storage compression cannot
/// shrink, so backup and restore figures count real bytes.
pub fn incompressible(seed: u64, bytes: usize) -> bson::Binary {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    }
}
