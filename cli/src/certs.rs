//! `shoal certs`: creates the cluster CA and node certificates for nodes started by hand.
//!
//! Internal traffic is mutual TLS against one cluster CA, so every node needs a certificate
//! signed by it. `shoal up` calls the same `shoal_rpc::certs` functions for its own layout;
//! both are no-ops when the files already exist, so re-running never rotates keys under a
//! running cluster.

use std::path::Path;

use anyhow::Context as _;

/// Host names put in node certificates when none are given.
pub const NODE_HOSTS_DEFAULT: [&str; 2] = ["127.0.0.1", "localhost"];

/// The default host list as owned strings.
pub fn default_hosts() -> Vec<String> {
    NODE_HOSTS_DEFAULT
        .iter()
        .map(|host| (*host).to_string())
        .collect()
}

/// Creates the CA in `ca_dir` (if missing).
pub fn ensure_ca(ca_dir: &Path) -> anyhow::Result<()> {
    shoal_rpc::certs::create_ca(ca_dir)
        .with_context(|| format!("cannot create the cluster CA in {}", ca_dir.display()))
}

/// Creates `out_dir/{node.pem,node-key.pem,ca.pem}` signed by the CA in `ca_dir` (if missing).
pub fn ensure_node_cert(
    ca_dir: &Path,
    out_dir: &Path,
    node_name: &str,
    hosts: &[String],
) -> anyhow::Result<()> {
    shoal_rpc::certs::create_node_cert(ca_dir, out_dir, node_name, hosts).with_context(|| {
        format!(
            "cannot create the certificate of {node_name} in {}",
            out_dir.display()
        )
    })
}

/// Runs `shoal certs --ca-dir DIR [--out DIR --name NAME --host H...]`.
pub fn run(ca_dir: &Path, node: Option<(&Path, &str)>, hosts: &[String]) -> anyhow::Result<()> {
    ensure_ca(ca_dir)?;
    eprintln!("CA: {}", ca_dir.display());
    if let Some((out_dir, name)) = node {
        let hosts = if hosts.is_empty() {
            default_hosts()
        } else {
            hosts.to_vec()
        };
        ensure_node_cert(ca_dir, out_dir, name, &hosts)?;
        eprintln!(
            "node certificate for {name} ({}): {}",
            hosts.join(", "),
            out_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_ca_and_node_files_idempotently() {
        let temp = tempfile::tempdir().unwrap();
        let ca_dir = temp.path().join("ca");
        let out_dir = temp.path().join("n1");
        run(&ca_dir, Some((&out_dir, "n1")), &[]).unwrap();
        for file in ["ca.pem", "ca-key.pem"] {
            assert!(ca_dir.join(file).is_file(), "{file}");
        }
        for file in ["ca.pem", "node.pem", "node-key.pem"] {
            assert!(out_dir.join(file).is_file(), "{file}");
        }
        let before = std::fs::read(out_dir.join("node.pem")).unwrap();
        run(&ca_dir, Some((&out_dir, "n1")), &[]).unwrap();
        assert_eq!(std::fs::read(out_dir.join("node.pem")).unwrap(), before);
    }
}
