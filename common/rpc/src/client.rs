//! The RPC client: one QUIC endpoint per process, one cached connection per peer, one stream per
//! request.
//!
//! Retry rule: a request is retried (at most [`CALL_RETRIES_MAX`] times, on a fresh connection)
//! only when no handler can have seen it, i.e. the connection failed while connecting, opening
//! the stream or sending, or the peer answered with a stateless reset (it has no state for the
//! connection, typically because it restarted). A connection lost after the request was sent is
//! reported, not retried, because the peer may have executed it and internal requests are not
//! all idempotent.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bson::Document;
use quinn::{Connection, ConnectionError, Endpoint, ReadError, ReadExactError, WriteError};
use tracing::debug;

use crate::{
    RpcError,
    certs::TlsPaths,
    frame::{self, FrameReadError},
    tls,
};

/// The DNS name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "shoal-node";
/// How many times one call is retried on a fresh connection after a failure that provably did
/// not reach the peer's handler.
pub const CALL_RETRIES_MAX: u32 = 1;
/// Distinct peer addresses with a cached connection. Closed entries are evicted when the cache
/// is full; a cluster has far fewer members than this.
pub const PEERS_MAX: usize = 1024;

/// One peer's cached connection. The async mutex makes concurrent callers share one handshake
/// instead of each opening a connection.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A failed attempt, sorted by whether repeating it is safe.
enum AttemptError {
    /// No handler can have seen the request.
    Retryable(RpcError),
    /// The request may have been executed, or retrying cannot help.
    Final(RpcError),
}

/// The RPC client. Cheap to clone: clones share the endpoint and the connection cache.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    endpoint: Endpoint,
    peers: Mutex<HashMap<SocketAddr, Slot>>,
}

impl RpcClient {
    /// Creates the client's endpoint; `tls` is this node's identity. Must be called inside a
    /// tokio runtime.
    pub fn new(tls: &TlsPaths) -> Result<RpcClient, RpcError> {
        let config = tls::client_config(tls)?;
        let mut endpoint = bind_endpoint()?;
        endpoint.set_default_client_config(config);
        let inner = ClientInner {
            endpoint,
            peers: Mutex::new(HashMap::new()),
        };
        Ok(RpcClient {
            inner: Arc::new(inner),
        })
    }

    /// Sends `request` to `addr` (`host:port`) and returns the reply. Everything, including
    /// name resolution, connecting and the retry, happens within `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        request: Document,
        timeout: Duration,
    ) -> Result<Document, RpcError> {
        let request_frame = frame::encode(&request)?;
        let attempts = self.call_with_retry(addr, &request_frame);
        match tokio::time::timeout(timeout, attempts).await {
            Ok(result) => result,
            Err(_elapsed) => Err(RpcError::Timeout {
                addr: addr.to_owned(),
            }),
        }
    }

    async fn call_with_retry(
        &self,
        addr: &str,
        request_frame: &[u8],
    ) -> Result<Document, RpcError> {
        let peer = resolve(addr).await?;
        let mut retries = 0;
        loop {
            match self.attempt(addr, peer, request_frame).await {
                Ok(reply) => return Ok(reply),
                Err(AttemptError::Retryable(error)) if retries < CALL_RETRIES_MAX => {
                    debug!(addr, %error, retries, "RPC attempt failed, retrying on a fresh connection");
                    retries += 1;
                }
                Err(AttemptError::Retryable(error) | AttemptError::Final(error)) => {
                    return Err(error);
                }
            }
        }
    }

    async fn attempt(
        &self,
        addr: &str,
        peer: SocketAddr,
        request_frame: &[u8],
    ) -> Result<Document, AttemptError> {
        let slot = self.slot(addr, peer)?;
        let connection = connect(&self.inner.endpoint, addr, peer, &slot).await?;
        let result = exchange(&connection, request_frame).await;
        if let Err(AttemptError::Retryable(_)) = &result {
            evict(&slot, &connection).await;
        }
        result
    }

    /// The cache slot for `peer`, created if needed.
    fn slot(&self, addr: &str, peer: SocketAddr) -> Result<Slot, AttemptError> {
        let mut peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = peers.get(&peer) {
            return Ok(slot.clone());
        }
        if PEERS_MAX <= peers.len() {
            peers.retain(|_, slot| slot_in_use(slot));
        }
        if PEERS_MAX <= peers.len() {
            let reason = format!("more than {PEERS_MAX} peers");
            return Err(AttemptError::Final(RpcError::Connect {
                addr: addr.to_owned(),
                reason,
            }));
        }
        let slot = Slot::default();
        peers.insert(peer, slot.clone());
        Ok(slot)
    }
}

/// Binds dual-stack when the host has IPv6, so one endpoint reaches IPv4 and IPv6 peers.
fn bind_endpoint() -> Result<Endpoint, RpcError> {
    match Endpoint::client(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))) {
        Ok(endpoint) => Ok(endpoint),
        Err(error) => {
            debug!(%error, "no IPv6 socket, RPC client uses IPv4 only");
            Ok(Endpoint::client(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                0,
            )))?)
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, RpcError> {
    let mut addresses = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| RpcError::Resolve(format!("{addr}: {e}")))?;
    addresses
        .next()
        .ok_or_else(|| RpcError::Resolve(format!("{addr}: no address")))
}

/// Whether a slot must stay in the cache: it holds an open connection or someone is using it.
fn slot_in_use(slot: &Slot) -> bool {
    match slot.try_lock() {
        Ok(cached) => cached.as_ref().is_some_and(|c| c.close_reason().is_none()),
        Err(_locked) => true,
    }
}

/// The cached connection to `peer`, or a new one when there is none or it has closed.
async fn connect(
    endpoint: &Endpoint,
    addr: &str,
    peer: SocketAddr,
    slot: &Slot,
) -> Result<Connection, AttemptError> {
    let mut cached = slot.lock().await;
    if let Some(connection) = cached.as_ref()
        && connection.close_reason().is_none()
    {
        return Ok(connection.clone());
    }
    let connect_error = |reason: String| RpcError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let connecting = endpoint
        .connect(peer, SERVER_NAME)
        .map_err(|e| AttemptError::Final(connect_error(e.to_string())))?;
    let connection = connecting
        .await
        .map_err(|e| AttemptError::Retryable(connect_error(e.to_string())))?;
    debug!(addr, %peer, "RPC connection open");
    *cached = Some(connection.clone());
    Ok(connection)
}

/// Forgets `failed` so the retry opens a fresh connection.
async fn evict(slot: &Slot, failed: &Connection) {
    let mut cached = slot.lock().await;
    if cached
        .as_ref()
        .is_some_and(|c| c.stable_id() == failed.stable_id())
    {
        *cached = None;
    }
}

/// One request on one new stream.
async fn exchange(connection: &Connection, request_frame: &[u8]) -> Result<Document, AttemptError> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|lost| AttemptError::Retryable(connection_lost(&lost)))?;
    send.write_all(request_frame)
        .await
        .map_err(classify_write)?;
    send.finish()
        .map_err(|e| AttemptError::Final(RpcError::Closed(e.to_string())))?;
    frame::read(&mut recv).await.map_err(classify_read)
}

fn classify_write(error: WriteError) -> AttemptError {
    match error {
        // The frame was not fully sent, so the peer cannot have parsed a request.
        WriteError::ConnectionLost(lost) => AttemptError::Retryable(connection_lost(&lost)),
        WriteError::Stopped(_) | WriteError::ClosedStream | WriteError::ZeroRttRejected => {
            AttemptError::Final(RpcError::Closed(error.to_string()))
        }
    }
}

fn classify_read(error: FrameReadError) -> AttemptError {
    match error {
        FrameReadError::Stream(ReadExactError::ReadError(ReadError::ConnectionLost(lost))) => {
            // A stateless reset means the peer has no state for this connection: it never
            // started our request, or it crashed while running it, which no retry rule can see.
            if lost == ConnectionError::Reset {
                AttemptError::Retryable(connection_lost(&lost))
            } else {
                AttemptError::Final(connection_lost(&lost))
            }
        }
        FrameReadError::Stream(ReadExactError::FinishedEarly(_)) => AttemptError::Final(
            RpcError::Closed("reply stream ended before a full frame".to_owned()),
        ),
        FrameReadError::Stream(ReadExactError::ReadError(error)) => {
            AttemptError::Final(RpcError::Closed(error.to_string()))
        }
        FrameReadError::Invalid(error) => AttemptError::Final(error),
    }
}

/// quinn's stream errors print only "connection lost"; the cause is what an operator needs.
fn connection_lost(cause: &ConnectionError) -> RpcError {
    RpcError::Closed(format!("connection lost: {cause}"))
}
