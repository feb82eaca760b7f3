//! The `shoal` command: `shoal up` runs a local cluster in the foreground, `shoal shell` is a
//! mongosh-style admin shell, and `shoal certs` makes TLS material for hand-started nodes.
//!
//! main only parses arguments and owns the tokio runtime; the shell drives the runtime itself
//! because its line editor blocks on the terminal between statements.

mod certs;
mod shell;
mod up;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The default URI of `shoal shell`, the router that `shoal up` starts by default.
const SHELL_URI_DEFAULT: &str = "mongodb://127.0.0.1:27017/";

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
    /// Start a local cluster (config server, shards, router) and keep it in the foreground.
    Up {
        /// Data directory (one subdirectory per node).
        #[arg(long, default_value = "./shoal-data")]
        dir: PathBuf,
        /// Router port; the config server uses PORT+1 and shard i uses PORT+2+i.
        #[arg(long, default_value_t = 27017)]
        port: u16,
        /// Number of shards.
        #[arg(long, default_value_t = 2)]
        shards: u16,
        /// Directory of shoal-config, shoal-shard and shoal-router (default: next to `shoal`).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// An admin shell in the style of mongosh.
    Shell {
        /// Connection string.
        #[arg(default_value = SHELL_URI_DEFAULT)]
        uri: String,
        /// Run these statements and exit (status 1 on the first error).
        #[arg(long)]
        eval: Option<String>,
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
                bin_dir,
            };
            runtime()?.block_on(up::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Shell { uri, eval } => {
            let status = shell::run(&runtime()?, &uri, eval.as_deref())?;
            Ok(if status == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
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
            bin_dir,
        } = cli.command
        else {
            panic!("expected up");
        };
        assert_eq!(dir, PathBuf::from("./shoal-data"));
        assert_eq!((port, shards, bin_dir), (27017, 2, None));
    }

    #[test]
    fn shell_takes_uri_and_eval() {
        let cli =
            Cli::try_parse_from(["shoal", "shell", "mongodb://h:1/", "--eval", "db"]).unwrap();
        let CliCommand::Shell { uri, eval } = cli.command else {
            panic!("expected shell");
        };
        assert_eq!(
            (uri.as_str(), eval.as_deref()),
            ("mongodb://h:1/", Some("db"))
        );
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
