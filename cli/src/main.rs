//! The `shoal` command: `shoal up` runs a local cluster in the foreground, `shoal shell` is a
//! mongosh-style admin shell, `shoal certs` makes TLS material for hand-started nodes, and
//! `shoal dump` / `shoal restore` make and load logical backups in mongodump's layout, and
//! `shoal backup` makes, lists, verifies and restores physical ones (RocksDB checkpoints).
//!
//! main only parses arguments and owns the tokio runtime; the shell drives the runtime itself
//! because its line editor blocks on the terminal between statements.

mod backup;
mod certs;
mod shell;
mod up;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The default host of `shoal shell`, where `shoal up` starts its router.
const SHELL_HOST_DEFAULT: &str = "127.0.0.1";
/// The default port of `shoal shell`, the router port of `shoal up`.
const SHELL_PORT_DEFAULT: u16 = 27017;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a MongoDB-compatible sharded document database"
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Start a local cluster (config server and shard replica sets, router) in the foreground.
    Up {
        /// Data directory (one subdirectory per node).
        #[arg(long, default_value = "./shoal-data")]
        dir: PathBuf,
        /// Router port; with M members per set, the config members use PORT+1..=PORT+M and
        /// the members of shard i (from 0) start at PORT+1+M*(i+1).
        #[arg(long, default_value_t = 27017)]
        port: u16,
        /// Number of shards.
        #[arg(long, default_value_t = 2)]
        shards: u16,
        /// Members of each replica set (the config server and every shard), 1 to 7.
        #[arg(
            long,
            default_value_t = up::MEMBERS_DEFAULT,
            value_parser = clap::value_parser!(u16).range(1..=i64::from(up::MEMBERS_MAX))
        )]
        members: u16,
        /// Directory of shoal-config, shoal-shard and shoal-router (default: next to `shoal`).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// An admin shell in the style of mongosh.
    Shell {
        /// Connection string (default: mongodb://127.0.0.1:27017/, the router of `shoal up`).
        #[arg(conflicts_with_all = ["host", "port"])]
        uri: Option<String>,
        /// Server to connect to: HOST, HOST:PORT, or SET/HOST:PORT,... for a replica set
        /// (default 127.0.0.1). A single host is connected to directly, so `rs.*` runs there.
        #[arg(long)]
        host: Option<String>,
        /// Port of the server (default 27017).
        #[arg(long)]
        port: Option<u16>,
        /// Run these statements and exit (status 1 on the first error).
        #[arg(long)]
        eval: Option<String>,
    },
    /// Write a logical backup (mongodump's layout) of every database but admin, config and
    /// local, read through the router.
    #[command(after_help = DUMP_HELP)]
    Dump {
        /// Connection string of the router, e.g. mongodb://127.0.0.1:27017/.
        uri: String,
        /// The dump directory: DIR/<db>/<coll>.bson and DIR/<db>/<coll>.metadata.json.
        #[arg(long, default_value = "dump")]
        out: PathBuf,
        /// Dump only this database.
        #[arg(long)]
        db: Option<String>,
        /// Dump only this collection (of --db).
        #[arg(long, requires = "db")]
        collection: Option<String>,
        /// Gzip every file (.bson.gz, .metadata.json.gz).
        #[arg(long)]
        gzip: bool,
    },
    /// Load a dump written by `shoal dump` (or mongodump) through the router.
    #[command(after_help = RESTORE_HELP)]
    Restore {
        /// Connection string of the router, e.g. mongodb://127.0.0.1:27017/.
        uri: String,
        /// The dump directory (holding one directory per database).
        dir: PathBuf,
        /// Restore only this database of the dump.
        #[arg(long)]
        db: Option<String>,
        /// Restore only this collection (of --db).
        #[arg(long, requires = "db")]
        collection: Option<String>,
        /// Drop each collection before restoring it.
        #[arg(long)]
        drop: bool,
    },
    /// Physical backups: a RocksDB checkpoint of every replica set, in a content-addressed store.
    Backup {
        #[command(subcommand)]
        action: BackupCommand,
    },
    /// Create a cluster CA and, optionally, a node certificate signed by it.
    Certs {
        /// Directory of the CA (ca.pem, ca-key.pem); created if missing.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Directory for the node's node.pem, node-key.pem and ca.pem.
        #[arg(long, requires = "name")]
        out: Option<PathBuf>,
        /// The node's name.
        #[arg(long, requires = "out")]
        name: Option<String>,
        /// Host names or IPs the node certificate is valid for (default 127.0.0.1, localhost).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

/// `shoal backup` subcommands.
#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Back up every replica set (config server and shards) into the store; prints the id.
    #[command(after_help = BACKUP_CREATE_HELP)]
    Create {
        /// Connection string of the router, e.g. mongodb://127.0.0.1:27017/.
        #[arg(long)]
        uri: String,
        /// The store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// The config server as NAME/HOST:PORT,... (default: the router's --configdb).
        #[arg(long)]
        config: Option<String>,
        /// A directory the members and this machine share, for the checkpoints (default: each
        /// member's own data directory, readable only on its machine).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
    /// List the store's backups.
    List {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
    },
    /// Re-hash every stored file a backup references (and, without --backup, every oplog
    /// archive segment); exits non-zero naming each bad one. With --restore, also restore the
    /// backup into a scratch cluster and compare its collections with the backup's checksums.
    #[command(after_help = BACKUP_VERIFY_HELP)]
    Verify {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        /// Verify only this backup (default: all; with --restore, the latest).
        #[arg(long)]
        backup: Option<String>,
        /// Restore the backup into a scratch cluster on 127.0.0.1 and compare every set's
        /// per-collection checksums with those recorded at backup time.
        #[arg(long)]
        restore: bool,
        /// Keep the scratch cluster's directory (data and logs) afterwards.
        #[arg(long, requires = "restore")]
        keep_scratch: bool,
        /// Make the scratch directory in this directory (default: the system's temporary one).
        #[arg(long, requires = "restore")]
        scratch_dir: Option<PathBuf>,
        /// Directory of shoal-config, shoal-shard and shoal-router (default: next to `shoal`).
        #[arg(long, requires = "restore")]
        bin_dir: Option<PathBuf>,
    },
    /// Verify a backup, then write one data directory per replica set into --out.
    #[command(after_help = BACKUP_RESTORE_HELP)]
    Restore {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        /// The backup id (see `shoal backup list`); with --to-time, the default is the latest
        /// backup before that time.
        #[arg(long)]
        backup: Option<String>,
        /// Where to write <out>/<set name>/ (each laid out as a member's --dir).
        #[arg(long)]
        out: PathBuf,
        /// Restore to this time (RFC 3339, or milliseconds since the epoch) by replaying the
        /// oplog archive onto the backup; needs --host for every set.
        #[arg(long)]
        to_time: Option<String>,
        /// SET=HOST:PORT: the new cluster's member of each replica set. Makes each set a new
        /// one-member set there and points config.shards at the new shards.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Restore only this replica set (repeatable; needs --host for it): one set as it was,
        /// a new one-member set to read from directly.
        #[arg(long = "set")]
        sets: Vec<String>,
    },
    /// Copy every replica set's oplog into the store continuously, for point-in-time restores.
    #[command(after_help = BACKUP_ARCHIVE_HELP)]
    Archive {
        /// Connection string of the router.
        #[arg(long)]
        uri: String,
        /// The store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// The config server as NAME/HOST:PORT,... (default: the router's --configdb).
        #[arg(long)]
        config: Option<String>,
        /// Milliseconds between rounds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many rounds (default: run until stopped).
        #[arg(long)]
        rounds: Option<u64>,
    },
}

/// What `shoal backup create --help` adds below the options.
const BACKUP_CREATE_HELP: &str = "\
One member of each replica set (a secondary when there is one) writes a RocksDB checkpoint; its
files are stored as objects named by their SHA-256, so a file already in the store (an unchanged
SST) is not copied again. Each set is consistent as of its last applied log entry; sets are not
cut at one common instant. Progress goes to stderr, the backup id to stdout.";

/// What `shoal backup verify --help` adds below the options.
const BACKUP_VERIFY_HELP: &str = "\
With --restore, the backup (--backup, default the latest) is verified, then restored into a
temporary directory as a new cluster whose processes (shoal-config, shoal-shard, shoal-router)
run on free ports of 127.0.0.1 with the balancer off. Every set's user collections are read from
its member and their document counts and digests compared with those the backup recorded when
it was taken: one line per set and collection. The processes are stopped and the directory
removed (unless --keep-scratch) whatever the outcome; exits non-zero on any difference, and for
backups made before shoal recorded collection checksums. Needs disk space for a full restore.";

/// What `shoal backup restore --help` adds below the options.
const BACKUP_RESTORE_HELP: &str = "\
The backup is verified first: on any missing or damaged file nothing is written. Each set is
written to <out>/<set> (refused if it exists) with restored-from.json naming its log position.
Without --host the directories keep the sets' Raft state: a member started on one at its original
address resumes there. With --host SET=HOST:PORT for every set, each set becomes a new one-member
set at that address and config.shards names the new shards: start shoal-config and shoal-shard on
the directories at those addresses, and a router with --configdb CONFIGSET/HOST:PORT. With
--to-time T the archived oplog (`shoal backup archive`) is replayed onto the latest backup before
T, up to the last write proposed before T, on every set: the new cluster holds exactly the writes
acknowledged before T (and possibly some still unacknowledged at T). Without --to-time, a backup
that recorded its cluster-wide point (consistentAtMillis, see `shoal backup list`) is replayed to
it. --set NAME restores only that set (with its --host), as it was: a one-member set to connect
to directly, e.g. to copy a dropped collection back.";

/// What `shoal backup archive --help` adds below the options.
const BACKUP_ARCHIVE_HELP: &str = "\
Each round reads, from every set's primary, the log entries applied since the last round and
stores them as checksummed segments. A restore to time T needs every set archived past T: keep
this running (one archiver per store). If a set purges log entries before they are archived, the
archive records the gap; restores cannot cross it until the next backup.";

/// What `shoal dump --help` adds below the options.
const DUMP_HELP: &str = "\
Each collection is read with one cursor sorted by _id over the live collection: a dump is
consistent per collection only as far as a cursor is, and is NOT a point-in-time snapshot of the
cluster (writes during the dump may or may not be included). Stop writes for an exact copy.
Progress goes to stderr. Exits non-zero on any error; an unfinished .bson is left as .partial.";

/// What `shoal restore --help` adds below the options.
const RESTORE_HELP: &str = "\
Per collection: drop it (--drop), create it with its dumped options, shard it on its dumped shard
key (enableSharding + shardCollection), create its indexes, then insert its documents in unordered
batches of 1000. Files ending in .gz are decompressed.
Restore stops at the first error and exits non-zero, naming the file for a corrupt or truncated
dump. Documents inserted before the error STAY in the collection: rerun with --drop to start over.
Without --drop, documents whose _id already exists are errors.";

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("shoal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        CliCommand::Up {
            dir,
            port,
            shards,
            members,
            bin_dir,
        } => {
            let bin_dir = match bin_dir {
                Some(bin_dir) => bin_dir,
                None => default_bin_dir()?,
            };
            let options = up::UpOptions {
                dir,
                port,
                shards,
                members,
                bin_dir,
            };
            runtime()?.block_on(up::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Shell {
            uri,
            host,
            port,
            eval,
        } => {
            let uri = shell_uri(uri.as_deref(), host.as_deref(), port)?;
            let status = shell::run(&runtime()?, &uri, eval.as_deref())?;
            Ok(if status == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        CliCommand::Dump {
            uri,
            out,
            db,
            collection,
            gzip,
        } => {
            let options = backup::dump::DumpOptions {
                uri,
                out,
                selection: backup::layout::Selection::new(db, collection)?,
                gzip,
            };
            let reporter = backup::progress::Reporter::for_stderr();
            let summary = runtime()?.block_on(backup::dump::run(&options, reporter))?;
            eprintln!(
                "dumped {} documents of {} collections to {}",
                summary.documents,
                summary.collections,
                options.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Restore {
            uri,
            dir,
            db,
            collection,
            drop,
        } => {
            let options = backup::restore::RestoreOptions {
                uri,
                dir,
                selection: backup::layout::Selection::new(db, collection)?,
                drop,
            };
            let reporter = backup::progress::Reporter::for_stderr();
            let summary = runtime()?.block_on(backup::restore::run(&options, reporter))?;
            eprintln!(
                "restored {} documents of {} collections from {}",
                summary.documents,
                summary.collections,
                options.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Backup { action } => run_backup(action),
        CliCommand::Certs {
            ca_dir,
            out,
            name,
            hosts,
        } => {
            let node = out.as_deref().zip(name.as_deref());
            certs::run(&ca_dir, node, &hosts)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A time given as RFC 3339 or as milliseconds since the epoch.
fn parse_time_millis(text: &str) -> anyhow::Result<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .with_context(|| format!("{text:?} is neither RFC 3339 nor milliseconds since the epoch"))
}

/// `SET=HOST:PORT` arguments as a map; a set named twice is refused.
fn parse_set_hosts_map(
    pairs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut hosts = std::collections::BTreeMap::new();
    for pair in pairs {
        let (set, host) = pair
            .split_once('=')
            .filter(|(set, host)| !set.is_empty() && !host.is_empty())
            .with_context(|| format!("--host {pair:?} is not SET=HOST:PORT"))?;
        anyhow::ensure!(
            hosts.insert(set.to_owned(), host.to_owned()).is_none(),
            "--host names set {set} twice"
        );
    }
    Ok(hosts)
}

fn run_backup(action: BackupCommand) -> anyhow::Result<ExitCode> {
    use backup::physical;
    let reporter = physical::progress::Reporter::for_stderr();
    match action {
        BackupCommand::Create {
            uri,
            store,
            config,
            checkpoint_dir,
        } => {
            let options = physical::create::CreateOptions {
                uri,
                store,
                config,
                checkpoint_dir,
            };
            let summary = runtime()?.block_on(physical::create::run(&options, reporter))?;
            eprintln!(
                "backup {}: {} sets, {} files, {} referenced, {} copied, in {:.1}s ({})",
                summary.id,
                summary.sets,
                summary.files,
                physical::progress::megabytes(summary.bytes_referenced),
                physical::progress::megabytes(summary.bytes_copied),
                summary.elapsed.as_secs_f64(),
                physical::progress::rate(summary.bytes_referenced, summary.elapsed)
            );
            println!("{}", summary.id);
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List { store } => {
            let (lines, all_readable) = physical::list(&store)?;
            lines.iter().for_each(|line| println!("{line}"));
            anyhow::ensure!(all_readable, "some manifests are unreadable");
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            store,
            backup,
            restore: true,
            keep_scratch,
            scratch_dir,
            bin_dir,
        } => {
            let options = physical::verify_restore::VerifyRestoreOptions {
                store,
                backup,
                bin_dir: match bin_dir {
                    Some(bin_dir) => bin_dir,
                    None => default_bin_dir()?,
                },
                scratch_parent: scratch_dir,
                keep_scratch,
            };
            let mut print = |line: &str| println!("{line}");
            let ok = runtime()?.block_on(physical::verify_restore::run(
                &options, reporter, &mut print,
            ))?;
            anyhow::ensure!(ok, "verification failed");
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify { store, backup, .. } => {
            let report = physical::verify(&store, backup.as_deref(), reporter)?;
            let lines = physical::verify::report_lines(&report);
            lines.iter().for_each(|line| println!("{line}"));
            anyhow::ensure!(
                report.is_ok(),
                "verification failed: {} bad files, {} unreadable manifests",
                report.problems.len(),
                report.bad_manifests.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Restore {
            store,
            backup,
            out,
            to_time,
            hosts,
            sets,
        } => {
            let started = std::time::Instant::now();
            anyhow::ensure!(
                sets.is_empty() || !hosts.is_empty(),
                "--set needs --host SET=HOST:PORT for the set"
            );
            let summary = if to_time.is_none() && hosts.is_empty() {
                let backup = backup.context("--backup is required without --to-time and --host")?;
                physical::restore::run(&store, &backup, &out, reporter)?
            } else {
                let options = physical::pitr::PitrOptions {
                    store,
                    out: out.clone(),
                    to_time_millis: to_time.as_deref().map(parse_time_millis).transpose()?,
                    backup,
                    hosts: parse_set_hosts_map(&hosts)?,
                    sets,
                };
                physical::pitr::run(&options, reporter)?
            };
            eprintln!(
                "restored {} sets, {} files, {} into {} in {:.1}s",
                summary.sets.len(),
                summary.files,
                physical::progress::megabytes(summary.bytes),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Archive {
            uri,
            store,
            config,
            interval_ms,
            rounds,
        } => {
            let options = physical::archive::ArchiveOptions {
                uri,
                store,
                config,
                interval: std::time::Duration::from_millis(interval_ms.max(1)),
                rounds,
            };
            runtime()?.block_on(physical::archive::run(&options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The connection string of `shoal shell`: the URI if given, else one built from `--host`
/// and `--port` as mongosh builds it (`SET/h1:p1,h2:p2` becomes a replica-set URI; hosts
/// without a port get `--port`).
fn shell_uri(uri: Option<&str>, host: Option<&str>, port: Option<u16>) -> anyhow::Result<String> {
    if let Some(uri) = uri {
        return Ok(uri.to_string());
    }
    let host = host.unwrap_or(SHELL_HOST_DEFAULT);
    let (set, host_list) = match host.split_once('/') {
        Some((set, hosts)) => (Some(set), hosts),
        None => (None, host),
    };
    let mut hosts = Vec::new();
    for one in host_list.split(',') {
        if one.is_empty() {
            anyhow::bail!("--host {host:?} has an empty host name");
        }
        let has_port = match one.strip_prefix('[') {
            Some(bracketed) => bracketed.contains("]:"),
            None => one.contains(':'),
        };
        match (has_port, port) {
            (true, Some(port)) => {
                anyhow::bail!("--host {one} already names a port; leave out --port {port}")
            }
            (true, None) => hosts.push(one.to_string()),
            (false, port) => hosts.push(format!("{one}:{}", port.unwrap_or(SHELL_PORT_DEFAULT))),
        }
    }
    let query = set
        .map(|set| format!("?replicaSet={set}"))
        .unwrap_or_default();
    Ok(format!("mongodb://{}/{query}", hosts.join(",")))
}

fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running shoal executable")?;
    exe.parent()
        .map(PathBuf::from)
        .context("the shoal executable has no parent directory")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn up_defaults() {
        let cli = Cli::try_parse_from(["shoal", "up"]).unwrap();
        let CliCommand::Up {
            dir,
            port,
            shards,
            members,
            bin_dir,
        } = cli.command
        else {
            panic!("expected up");
        };
        assert_eq!(dir, PathBuf::from("./shoal-data"));
        assert_eq!((port, shards, members, bin_dir), (27017, 2, 3, None));
    }

    #[test]
    fn up_members_are_one_to_seven() {
        for bad in ["0", "8"] {
            assert!(Cli::try_parse_from(["shoal", "up", "--members", bad]).is_err());
        }
        let cli = Cli::try_parse_from(["shoal", "up", "--members", "7"]).unwrap();
        let CliCommand::Up { members, .. } = cli.command else {
            panic!("expected up");
        };
        assert_eq!(members, 7);
    }

    #[test]
    fn shell_takes_uri_and_eval() {
        let cli =
            Cli::try_parse_from(["shoal", "shell", "mongodb://h:1/", "--eval", "db"]).unwrap();
        let CliCommand::Shell { uri, eval, .. } = cli.command else {
            panic!("expected shell");
        };
        assert_eq!(
            (uri.as_deref(), eval.as_deref()),
            (Some("mongodb://h:1/"), Some("db"))
        );
        assert!(Cli::try_parse_from(["shoal", "shell", "mongodb://h:1/", "--port", "2"]).is_err());
        let cli = Cli::try_parse_from(["shoal", "shell", "--port", "27021"]).unwrap();
        let CliCommand::Shell { host, port, .. } = cli.command else {
            panic!("expected shell");
        };
        assert_eq!((host, port), (None, Some(27021)));
    }

    #[test]
    fn shell_uri_comes_from_host_and_port() {
        let uri = |u, h, p| shell_uri(u, h, p).unwrap();
        assert_eq!(uri(None, None, None), "mongodb://127.0.0.1:27017/");
        assert_eq!(uri(None, None, Some(27021)), "mongodb://127.0.0.1:27021/");
        assert_eq!(uri(None, Some("h"), None), "mongodb://h:27017/");
        assert_eq!(uri(None, Some("h:5"), None), "mongodb://h:5/");
        assert_eq!(uri(None, Some("[::1]"), Some(7)), "mongodb://[::1]:7/");
        assert_eq!(
            uri(None, Some("rs/a:1,b"), None),
            "mongodb://a:1,b:27017/?replicaSet=rs"
        );
        assert_eq!(uri(Some("mongodb://x:1/"), None, None), "mongodb://x:1/");
        assert!(shell_uri(None, Some("h:5"), Some(6)).is_err());
        assert!(shell_uri(None, Some("a,,b"), None).is_err());
    }

    #[test]
    fn dump_and_restore_arguments() {
        let cli = Cli::try_parse_from(["shoal", "dump", "mongodb://h:1/", "--gzip"]).unwrap();
        let CliCommand::Dump {
            uri,
            out,
            db,
            collection,
            gzip,
        } = cli.command
        else {
            panic!("expected dump");
        };
        assert_eq!(
            (uri.as_str(), out, db, collection, gzip),
            ("mongodb://h:1/", PathBuf::from("dump"), None, None, true)
        );
        assert!(Cli::try_parse_from(["shoal", "dump", "u", "--collection", "c"]).is_err());
        let cli = Cli::try_parse_from([
            "shoal",
            "restore",
            "u",
            "d",
            "--db",
            "x",
            "--collection",
            "c",
            "--drop",
        ])
        .unwrap();
        let CliCommand::Restore {
            dir,
            db,
            collection,
            drop,
            ..
        } = cli.command
        else {
            panic!("expected restore");
        };
        assert_eq!(
            (dir, db.as_deref(), collection.as_deref(), drop),
            (PathBuf::from("d"), Some("x"), Some("c"), true)
        );
        assert!(Cli::try_parse_from(["shoal", "restore", "u"]).is_err());
    }

    #[test]
    fn backup_arguments() {
        let cli = Cli::try_parse_from([
            "shoal",
            "backup",
            "create",
            "--uri",
            "mongodb://h:1/",
            "--store",
            "s",
        ])
        .unwrap();
        let CliCommand::Backup {
            action: BackupCommand::Create {
                uri, store, config, ..
            },
        } = cli.command
        else {
            panic!("expected backup create");
        };
        assert_eq!(
            (uri.as_str(), store, config),
            ("mongodb://h:1/", PathBuf::from("s"), None)
        );
        assert!(Cli::try_parse_from(["shoal", "backup", "create", "--store", "s"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "backup", "restore", "--store", "s"]).is_err());
        let cli = Cli::try_parse_from(["shoal", "backup", "verify", "--store", "s"]).unwrap();
        let CliCommand::Backup {
            action: BackupCommand::Verify { backup, .. },
        } = cli.command
        else {
            panic!("expected backup verify");
        };
        assert_eq!(backup, None);
        let cli = Cli::try_parse_from([
            "shoal",
            "backup",
            "verify",
            "--store",
            "s",
            "--restore",
            "--keep-scratch",
        ])
        .unwrap();
        let CliCommand::Backup {
            action:
                BackupCommand::Verify {
                    restore,
                    keep_scratch,
                    bin_dir,
                    ..
                },
        } = cli.command
        else {
            panic!("expected backup verify");
        };
        assert!(restore && keep_scratch);
        assert_eq!(bin_dir, None);
        let scratch_without_restore = [
            "shoal",
            "backup",
            "verify",
            "--store",
            "s",
            "--keep-scratch",
        ];
        assert!(Cli::try_parse_from(scratch_without_restore).is_err());
    }

    #[test]
    fn certs_out_requires_name() {
        assert!(Cli::try_parse_from(["shoal", "certs", "--ca-dir", "c", "--out", "o"]).is_err());
        let cli = Cli::try_parse_from([
            "shoal", "certs", "--ca-dir", "c", "--out", "o", "--name", "n", "--host", "h1",
            "--host", "h2",
        ])
        .unwrap();
        let CliCommand::Certs { hosts, .. } = cli.command else {
            panic!("expected certs");
        };
        assert_eq!(hosts, ["h1", "h2"]);
    }
}
