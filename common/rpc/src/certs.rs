//! The cluster's certificates: one self-signed CA per cluster and one leaf per node, both made
//! with rcgen so `shoal up` needs no openssl.
//!
//! Every node certificate carries the DNS name [`crate::SERVER_NAME`] (`shoal-node`), and clients
//! verify that name rather than the peer's address: nodes move between hosts and ports, but
//! anything signed by the cluster CA is a cluster member. Each leaf is valid for both server and
//! client authentication because every node is both (mutual TLS on every connection).
//!
//! Generation is idempotent: existing files are kept, so re-running `shoal up` keeps the CA and
//! the certificates it already issued.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{RpcError, SERVER_NAME};

/// The CA certificate's file name, in the CA directory and in every node directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name; it exists only in the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A node's certificate file name.
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node's private key file name.
pub const NODE_KEY_FILE: &str = "node-key.pem";

/// The CA's common name.
const CA_COMMON_NAME: &str = "Shoal cluster CA";

/// The files one node needs for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM) that peers must chain to.
    pub ca: PathBuf,
    /// This node's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// This node's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsPaths {
    /// The conventional layout written by [`create_node_cert`]: `ca.pem`, `node.pem`,
    /// `node-key.pem` in `dir`.
    pub fn from_dir(dir: &Path) -> TlsPaths {
        TlsPaths {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
        }
    }
}

/// Writes a new self-signed cluster CA (`ca.pem`, `ca-key.pem`) into `ca_dir`, unless both files
/// already exist.
pub fn create_ca(ca_dir: &Path) -> Result<(), RpcError> {
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    fs::create_dir_all(ca_dir)?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_private(&key_path, &key.serialize_pem())?;
    fs::write(&cert_path, cert.pem())?;
    Ok(())
}

/// Writes `out_dir/node.pem` and `out_dir/node-key.pem` (a leaf signed by the CA in `ca_dir`)
/// and copies the CA certificate to `out_dir/ca.pem`, unless all three already exist.
///
/// The certificate names `shoal-node`, `localhost` and every entry of `hosts` (an IP address
/// becomes an IP SAN, anything else a DNS SAN).
pub fn create_node_cert(
    ca_dir: &Path,
    out_dir: &Path,
    node_name: &str,
    hosts: &[String],
) -> Result<(), RpcError> {
    let paths = TlsPaths::from_dir(out_dir);
    if paths.ca.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(());
    }
    let ca_cert_pem = read_to_string(&ca_dir.join(CA_CERT_FILE))?;
    let ca_key_pem = read_to_string(&ca_dir.join(CA_KEY_FILE))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // The issuer is rebuilt from the same parameters that made the CA: rcgen only needs its
    // subject name and key, and this avoids parsing X.509 back.
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let key = KeyPair::generate()?;
    let cert = node_params(node_name, hosts)?.signed_by(&key, &issuer)?;
    fs::create_dir_all(out_dir)?;
    write_private(&paths.key, &key.serialize_pem())?;
    fs::write(&paths.cert, cert.pem())?;
    fs::write(&paths.ca, ca_cert_pem)?;
    Ok(())
}

/// The CA's parameters. Deterministic, so [`create_node_cert`] can rebuild the issuer name.
fn ca_params() -> Result<CertificateParams, RpcError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn node_params(node_name: &str, hosts: &[String]) -> Result<CertificateParams, RpcError> {
    let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    let mut params = CertificateParams::new(names)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn read_to_string(path: &Path) -> Result<String, RpcError> {
    fs::read_to_string(path)
        .map_err(|e| RpcError::Cert(format!("cannot read {}: {e}", path.display())))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), RpcError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        let first = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        create_ca(dir.path()).unwrap();
        let second = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(first, second);
        assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn node_cert_is_written_once_with_a_copy_of_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let node_dir = dir.path().join("node1");
        create_ca(&ca_dir).unwrap();
        let hosts = vec!["10.0.0.7".to_owned(), "db1.example".to_owned()];
        create_node_cert(&ca_dir, &node_dir, "node1", &hosts).unwrap();
        let paths = TlsPaths::from_dir(&node_dir);
        let cert = fs::read_to_string(&paths.cert).unwrap();
        create_node_cert(&ca_dir, &node_dir, "node1", &hosts).unwrap();
        assert_eq!(cert, fs::read_to_string(&paths.cert).unwrap());
        let ca_copy = fs::read_to_string(&paths.ca).unwrap();
        assert_eq!(
            ca_copy,
            fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap()
        );
        assert!(
            fs::read_to_string(&paths.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
    }

    #[test]
    fn node_cert_without_a_ca_is_a_cert_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = create_node_cert(&dir.path().join("none"), dir.path(), "n", &[]).unwrap_err();
        assert!(matches!(error, RpcError::Cert(_)), "{error}");
    }
}
