//! Running the `shoal` command-line tool from tests: bounded in time, output captured, and a
//! failure reported with both streams.

use std::{
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use crate::bin_path;

/// How long one `shoal` run may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `shoal ARGS` to completion (at most [`CLI_TIMEOUT`]).
pub async fn shoal(args: &[&str]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(bin_path("shoal")?);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("shoal {args:?} did not finish within {CLI_TIMEOUT:?}"))?
        .map_err(anyhow::Error::from)
}

/// Runs `shoal` and fails unless it exits 0; returns stdout.
pub async fn shoal_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = shoal(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "shoal {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `path` as a `&str` argument.
pub fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}
