//! `shoal backup verify --restore`: proves that a backup restores into a cluster that serves
//! the data it was taken with.
//!
//! 1. The backup's files are verified as `verify` and `restore` do; on any damage nothing else
//!    runs.
//! 2. It is restored into a scratch directory as a new cluster (`restore --host`, one port per
//!    set on 127.0.0.1), and the restored config server's balancer and auto-splitter are
//!    switched off, so that nothing moves documents between shards while they are read.
//! 3. The real server processes start on it ([`scratch`](super::scratch)); once every set has
//!    its primary and the router lists the shards, the config server pushes every sharded
//!    collection's ownership to the shards (as a new config primary does on its own), so the
//!    reads below see the ownership of the restored metadata, not a race with that push.
//! 4. Each set's collection checksums are read from its member ([`checksum`](super::checksum))
//!    and compared with those the manifest recorded when the backup was taken, one line per set
//!    and collection. The processes are stopped, whatever happened, and the scratch directory is
//!    removed unless asked to keep it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bson::{Document, doc};
use futures::TryStreamExt as _;
use shoal_docstore::{Engine, RocksKv};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    checksum::{
        ClientRunner, CollectionChecksum, SetChecksums, check_ok, compare, comparison_lines,
        set_checksums,
    },
    manifest::{Manifest, SetRole},
    pitr::{DB_SUBDIR, PitrOptions, restore_checked},
    progress::Reporter,
    scratch::{ScratchCluster, ScratchSet, free_ports, set_client},
    store::Store,
    verify::{Verifier, report_lines},
};

/// The prefix of the scratch directory's name.
const SCRATCH_PREFIX: &str = "shoal-verify-";
/// Sharded collections whose ownership is pushed at most (a bound on the metadata read).
const SHARDED_COLLECTIONS_MAX: usize = 100_000;

/// What `verify --restore` is asked to do.
#[derive(Debug, Clone)]
pub struct VerifyRestoreOptions {
    /// The store directory.
    pub store: PathBuf,
    /// The backup (default: the latest).
    pub backup: Option<String>,
    /// Where `shoal-config`, `shoal-shard` and `shoal-router` are.
    pub bin_dir: PathBuf,
    /// The directory to make the scratch directory in (default: the system's temporary one).
    pub scratch_parent: Option<PathBuf>,
    /// Keep the scratch directory (data and logs) afterwards.
    pub keep_scratch: bool,
}

/// What the scratch cluster held, and how long it took.
struct Observed {
    restored: Vec<(String, Vec<CollectionChecksum>)>,
    startup: Duration,
    reading: Duration,
}

/// Runs `verify --restore`; every line of the report goes to `out`. Returns whether the
/// backup verified (files and collections); errors are failures to run the check at all.
pub async fn run(
    options: &VerifyRestoreOptions,
    reporter: Reporter,
    out: &mut dyn FnMut(&str),
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let store = Store::open(&options.store)?;
    let manifest = chosen_backup(&store, options.backup.as_deref())?;
    let id = manifest.id.clone();
    let mut verifier = Verifier::new(&store, reporter);
    verifier.verify_manifest(&manifest);
    let report = verifier.finish();
    report_lines(&report).iter().for_each(|line| out(line));
    if !report.is_ok() {
        out(&format!(
            "backup {id}: not restored into a scratch cluster: its files do not verify"
        ));
        return Ok(false);
    }
    let scratch = scratch_dir(options.scratch_parent.as_deref())?;
    let outcome = restore_and_read(&store, &manifest, scratch.path(), options, reporter).await;
    finish_scratch(scratch, options.keep_scratch, out);
    let (observed, restoring) = outcome.map_err(|error| {
        let hint = if options.keep_scratch {
            ""
        } else {
            " (--keep-scratch keeps its data and logs)"
        };
        error.context(format!("verify --restore of backup {id} failed{hint}"))
    })?;
    let recorded: Vec<SetChecksums> = manifest
        .sets
        .iter()
        .map(|set| (set.name.clone(), set.collections.clone()))
        .collect();
    let comparison = compare(&recorded, &observed.restored);
    comparison_lines(&comparison)
        .iter()
        .for_each(|line| out(line));
    let documents: u64 = comparison.lines.iter().map(|l| l.restored.documents).sum();
    let verdict = if comparison.is_ok() {
        format!(
            "ok: {} collection checksums of {} sets match ({documents} documents)",
            comparison.lines.len(),
            manifest.sets.len()
        )
    } else if comparison.unrecorded_sets.is_empty() {
        format!(
            "FAILED: {} of {} collection checksums differ",
            comparison.mismatches(),
            comparison.lines.len()
        )
    } else {
        "FAILED: the backup records no collection checksums to compare with".to_owned()
    };
    out(&format!(
        "backup {id} restored into a scratch cluster: {verdict}; took {:.1} s (restore {:.1} s, \
         cluster up {:.1} s, checksums {:.1} s)",
        started.elapsed().as_secs_f64(),
        restoring.as_secs_f64(),
        observed.startup.as_secs_f64(),
        observed.reading.as_secs_f64()
    ));
    Ok(comparison.is_ok())
}

/// Backup `id`, or the latest one.
fn chosen_backup(store: &Store, id: Option<&str>) -> anyhow::Result<Manifest> {
    let id = match id {
        Some(id) => id.to_owned(),
        None => store
            .backup_ids()?
            .pop()
            .with_context(|| format!("{} holds no backups", store.root().display()))?,
    };
    store.read_manifest(&id)
}

fn scratch_dir(parent: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(&parent)
        .with_context(|| format!("cannot make a scratch directory in {}", parent.display()))
}

fn finish_scratch(scratch: tempfile::TempDir, keep: bool, out: &mut dyn FnMut(&str)) {
    let path = scratch.path().display().to_string();
    if keep {
        let kept = scratch.keep();
        out(&format!("scratch directory kept: {}", kept.display()));
    } else if let Err(error) = scratch.close() {
        tracing::warn!(dir = %path, %error, "cannot remove the scratch directory; remove it by hand");
    }
}

/// Restores the backup under `root`, runs the scratch cluster, reads it and stops it; returns
/// what it held and how long the restore took.
async fn restore_and_read(
    store: &Store,
    manifest: &Manifest,
    root: &Path,
    options: &VerifyRestoreOptions,
    reporter: Reporter,
) -> anyhow::Result<(Observed, Duration)> {
    let data = root.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let ports = free_ports(manifest.sets.len() + 1)?;
    let sets: Vec<ScratchSet> = manifest
        .sets
        .iter()
        .zip(&ports)
        .map(|(set, port)| ScratchSet {
            name: set.name.clone(),
            role: set.role,
            port: *port,
        })
        .collect();
    let router_port = ports.last().copied().context("no port for the router")?;
    let restore_started = Instant::now();
    tokio::task::block_in_place(|| restore(store, manifest, &sets, &data, reporter))?;
    let restoring = restore_started.elapsed();
    eprintln!(
        "restored backup {} into {} in {:.1} s",
        manifest.id,
        data.display(),
        restoring.as_secs_f64()
    );
    let mut cluster = ScratchCluster::new(root, &data, &options.bin_dir, &sets, router_port)?;
    let outcome = {
        let work = serve_and_read(&mut cluster, &sets);
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            outcome = work => outcome,
            _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
        }
    };
    cluster.stop().await;
    Ok((outcome?, restoring))
}

/// Writes every set as a new one-member set at its scratch port, and quiets the config server.
fn restore(
    store: &Store,
    manifest: &Manifest,
    sets: &[ScratchSet],
    data: &Path,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let options = PitrOptions {
        store: store.root().to_path_buf(),
        out: data.to_path_buf(),
        to_time_millis: None,
        backup: Some(manifest.id.clone()),
        hosts: sets
            .iter()
            .map(|set| (set.name.clone(), set.host()))
            .collect(),
        sets: Vec::new(),
    };
    restore_checked(store, manifest, &options, reporter)?;
    let config = sets
        .iter()
        .find(|set| set.role == SetRole::Config)
        .context("the backup has no config server set")?;
    quiet_config(&data.join(&config.name).join(DB_SUBDIR))
}

/// Switches the restored config server's balancer and auto-splitter off: a migration in the
/// scratch cluster would move documents between the sets while they are read.
fn quiet_config(db: &Path) -> anyhow::Result<()> {
    let kv = RocksKv::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    let engine = Engine::with_kv(Arc::new(kv)).context("cannot open the config server's data")?;
    let settings = [
        ("balancer", doc! {"stopped": true, "mode": "off"}),
        ("autosplit", doc! {"enabled": false}),
    ];
    for (id, set) in settings {
        let update = doc! {"update": "settings", "updates": [
            {"q": {"_id": id}, "u": {"$set": set}, "upsert": true},
        ]};
        let reply = check_ok(engine.execute("config", &update), "config.settings update")?;
        anyhow::ensure!(
            reply.get_i32("n") == Ok(1),
            "cannot switch off the {id} of the scratch cluster: {reply}"
        );
    }
    Ok(())
}

/// Starts the cluster, pushes the ownership and reads every set's checksums.
async fn serve_and_read(
    cluster: &mut ScratchCluster,
    sets: &[ScratchSet],
) -> anyhow::Result<Observed> {
    let started = Instant::now();
    cluster.start().await?;
    let startup = started.elapsed();
    eprintln!(
        "scratch cluster serving on 127.0.0.1:{} after {:.1} s",
        cluster.router_port(),
        startup.as_secs_f64()
    );
    let started = Instant::now();
    let config = sets
        .iter()
        .find(|set| set.role == SetRole::Config)
        .context("the backup has no config server set")?;
    push_ownership(config).await?;
    let mut restored = Vec::new();
    for set in sets {
        let runner = ClientRunner(set_client(set)?);
        let checksums = set_checksums(&runner)
            .await
            .with_context(|| format!("cannot read the collections of set {}", set.name))?;
        restored.push((set.name.clone(), checksums));
    }
    Ok(Observed {
        restored,
        startup,
        reading: started.elapsed(),
    })
}

/// Has the config server push every sharded collection's ownership to the shards now (it does
/// so by itself soon after it starts; doing it here makes the reads come after it).
async fn push_ownership(config: &ScratchSet) -> anyhow::Result<()> {
    let client = set_client(config)?;
    let collections: Vec<Document> = client
        .database("config")
        .collection::<Document>("collections")
        .find(doc! {})
        .limit(i64::try_from(SHARDED_COLLECTIONS_MAX).unwrap_or(i64::MAX))
        .await
        .context("cannot read config.collections")?
        .try_collect()
        .await
        .context("cannot read config.collections")?;
    for collection in collections {
        let Ok(ns) = collection.get_str("_id") else {
            continue;
        };
        let reply = client
            .database("admin")
            .run_command(doc! {"_shoalSyncShardFiltering": ns})
            .await
            .with_context(|| format!("cannot push the ownership of {ns} to the shards"))?;
        check_ok(reply, "_shoalSyncShardFiltering")?;
    }
    Ok(())
}
