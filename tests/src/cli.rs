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

/// Waits (at most `timeout`) until the oplog archive in `store` is complete past `time` (ms)
/// for every set of `sets`, whatever the cluster id.
pub async fn wait_archive_past(
    store: &Path,
    sets: &[String],
    time: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let archive = store.join("archive");
    loop {
        let mut behind = Vec::new();
        for set in sets {
            let mut best = 0i64;
            for cluster in std::fs::read_dir(&archive).into_iter().flatten().flatten() {
                let path = cluster.path().join(set).join("progress.json");
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let value: serde_json::Value = serde_json::from_str(&text)?;
                    best = best.max(value["asOfMillis"].as_i64().unwrap_or(0));
                }
            }
            if best < time {
                behind.push(format!("{set} at {best}"));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the archive did not pass {time} within {timeout:?}: {behind:?}"
        );
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
}

/// The arguments of `shoal backup restore --to-time TIME` into `out`, each set of `hosts`
/// (`(set, port)`) becoming a new one-member set at 127.0.0.1:port.
pub fn restore_to_time_args(
    store: &Path,
    out: &Path,
    time: i64,
    hosts: &[(String, u16)],
) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = ["backup", "restore", "--store", path_str(store)?, "--out"]
        .map(str::to_owned)
        .to_vec();
    args.push(path_str(out)?.to_owned());
    args.push("--to-time".to_owned());
    args.push(time.to_string());
    for (set, port) in hosts {
        args.push("--host".to_owned());
        args.push(format!("{set}=127.0.0.1:{port}"));
    }
    Ok(args)
}

/// Where backup `id`'s manifest is in the store at `store`.
pub fn manifest_path(store: &Path, id: &str) -> std::path::PathBuf {
    store.join("backups").join(id).join("manifest.json")
}

/// Backup `id`'s manifest, as JSON.
pub fn read_manifest(store: &Path, id: &str) -> anyhow::Result<serde_json::Value> {
    let path = manifest_path(store, id);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Inserts batches of `batch_docs` into `app.events` until `stop` (at most `batches_max`
/// batches), counting acknowledged documents in `acked`: writes going on during a backup.
pub async fn event_writer(
    client: mongodb::Client,
    batch_docs: u64,
    batches_max: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let events = client
        .database("app")
        .collection::<bson::Document>("events");
    for batch in 0..batches_max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let docs: Vec<bson::Document> = (0..batch_docs)
            .map(|n| bson::doc! {"batch": batch as i64, "n": n as i64})
            .collect();
        events.insert_many(docs).await?;
        acked.fetch_add(batch_docs, Ordering::Relaxed);
    }
    Ok(())
}
