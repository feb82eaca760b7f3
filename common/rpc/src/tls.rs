//! Builds the quinn client and server configurations: mutual TLS 1.3 against the cluster CA and
//! the transport limits every Shoal connection uses.
//!
//! The ring crypto provider is passed explicitly to every rustls builder, so no process-wide
//! default provider has to be installed (and a binary that links a second provider cannot make
//! these builders ambiguous).

use std::{fs::File, io::BufReader, path::Path, sync::Arc, time::Duration};

use quinn::{
    IdleTimeout, TransportConfig, VarInt,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};
use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};

use crate::{RpcError, certs::TlsPaths};

/// The ALPN protocol both sides require; bumped if the framing ever changes.
pub const ALPN: &[u8] = b"shoal/1";

/// Concurrent requests one peer may have in flight on one connection. quinn's default (100)
/// makes `open_bi` wait under a router's fan-out, so it is raised well above any batch size.
pub const BIDI_STREAMS_MAX: u32 = 4096;
/// How often an idle connection pings, so cached connections stay open between requests.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection with no traffic (not even keep-alives) for this long is dead.
pub const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(10);

const _: () = assert!(KEEP_ALIVE_INTERVAL.as_millis() < IDLE_TIMEOUT_MAX.as_millis());

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The transport parameters shared by client and server.
fn transport_config() -> Result<Arc<TransportConfig>, RpcError> {
    let idle_timeout = IdleTimeout::try_from(IDLE_TIMEOUT_MAX)
        .map_err(|e| RpcError::Tls(format!("idle timeout out of range: {e}")))?;
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(BIDI_STREAMS_MAX));
    // Requests are bidirectional only; refusing uni streams keeps a peer from parking data.
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(idle_timeout));
    Ok(Arc::new(transport))
}

/// The server side: our certificate, and a client certificate chaining to the CA is required.
pub(crate) fn server_config(tls: &TlsPaths) -> Result<quinn::ServerConfig, RpcError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&tls.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| RpcError::Tls(format!("client verifier: {e}")))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // max_early_data_size stays 0: no 0-RTT, because 0-RTT requests can be replayed.
    let quic = QuicServerConfig::try_from(crypto).map_err(|e| RpcError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config()?);
    Ok(config)
}

/// The client side: the server must chain to the CA and name `shoal-node`; we present our own
/// certificate.
pub(crate) fn client_config(tls: &TlsPaths) -> Result<quinn::ClientConfig, RpcError> {
    let roots = load_roots(&tls.ca)?;
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // enable_early_data stays false: no 0-RTT.
    let quic = QuicClientConfig::try_from(crypto).map_err(|e| RpcError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config()?);
    Ok(config)
}

fn open(path: &Path) -> Result<BufReader<File>, RpcError> {
    let file = File::open(path)
        .map_err(|e| RpcError::Cert(format!("cannot open {}: {e}", path.display())))?;
    Ok(BufReader::new(file))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RpcError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RpcError::Cert(format!("cannot parse {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(RpcError::Cert(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, RpcError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| RpcError::Cert(format!("cannot parse {}: {e}", path.display())))?
        .ok_or_else(|| RpcError::Cert(format!("no private key in {}", path.display())))
}

fn load_roots(path: &Path) -> Result<RootCertStore, RpcError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| RpcError::Cert(format!("bad CA certificate {}: {e}", path.display())))?;
    }
    Ok(roots)
}
