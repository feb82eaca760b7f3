//! The RPC server: accepts QUIC connections from cluster members (mutual TLS), and answers each
//! bidirectional stream as one request with one reply.
//!
//! Every connection and every stream runs in its own task, so a slow handler delays only its own
//! request. Bounds: [`CONNECTIONS_MAX`] connections, [`crate::BIDI_STREAMS_MAX`] streams per
//! connection (enforced by QUIC flow control), and [`REQUEST_READ_TIMEOUT`] for a peer to send
//! its request.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use bson::Document;
use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use shoal_common::CommandError;
use tracing::{debug, warn};

use crate::{
    RpcError,
    certs::TlsPaths,
    frame::{self, FrameReadError},
    tls,
};

/// Connections one server accepts at once; further attempts are refused. A cluster has a few
/// dozen members, so this is far above legitimate use.
pub const CONNECTIONS_MAX: usize = 1024;
/// How long a peer may take to send its request frame once it opened a stream.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The QUIC application close code sent when the server shuts down.
const CLOSE_SHUTDOWN: u32 = 1;

/// Answers RPC requests. Implemented by the config server and the shards.
pub trait RpcHandler: Send + Sync + 'static {
    /// Returns the reply to `request` from `peer`. Failures are replies too (`{ok: 0, ...}`),
    /// so the handler decides how every error is reported.
    fn handle(
        &self,
        peer: SocketAddr,
        request: Document,
    ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>>;
}

/// A secret fixed for this node and address, from which the server's QUIC stateless-reset key
/// and connection-ID key are derived instead of being drawn at random. A node that restarts on
/// the same address then recognizes the connection IDs of its previous incarnation and answers
/// them with resets their peers accept, so a router notices the restart at its next packet
/// instead of after the idle timeout.
fn node_identity_digest(tls: &TlsPaths, addr: SocketAddr) -> Result<[u8; 32], RpcError> {
    let secret = std::fs::read(&tls.key)
        .map_err(|e| RpcError::Cert(format!("reading {}: {e}", tls.key.display())))?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"shoal quic endpoint identity\0");
    context.update(&secret);
    context.update(addr.to_string().as_bytes());
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    Ok(digest)
}

/// A bound RPC server; [`RpcServer::run`] serves it.
pub struct RpcServer {
    endpoint: Endpoint,
    handler: Arc<dyn RpcHandler>,
}

impl RpcServer {
    /// Binds the UDP socket now, so the caller learns about a busy port before it spawns the
    /// server. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsPaths,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<RpcServer, RpcError> {
        let config = tls::server_config(tls)?;
        let identity = node_identity_digest(tls, addr)?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &identity,
        )));
        // Connection IDs carry a keyed check; with the same key across restarts, the new process
        // accepts the old IDs as its own format and answers them with resets.
        let cid_key = u64::from_le_bytes(identity[..8].try_into().unwrap_or([0; 8]));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = std::net::UdpSocket::bind(addr)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint = Endpoint::new(endpoint_config, Some(config), socket, runtime)?;
        Ok(RpcServer { endpoint, handler })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound UDP socket always has a local address; the fallback only guards the API.
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts connections until this future is dropped (e.g. its task aborted). Dropping it
    /// closes every connection, so peers notice at once instead of after the idle timeout.
    pub async fn run(self) {
        let _close_on_drop = CloseOnDrop(self.endpoint.clone());
        while let Some(incoming) = self.endpoint.accept().await {
            if CONNECTIONS_MAX <= self.endpoint.open_connections() {
                warn!(peer = %incoming.remote_address(), limit = CONNECTIONS_MAX, "refusing RPC connection");
                incoming.refuse();
                continue;
            }
            tokio::spawn(serve_connection(incoming, self.handler.clone()));
        }
    }
}

/// Closes the endpoint when the accept loop ends or is dropped.
struct CloseOnDrop(Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
    }
}

async fn serve_connection(incoming: Incoming, handler: Arc<dyn RpcHandler>) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            // Includes peers whose certificate is not signed by the cluster CA.
            warn!(%peer, %error, "RPC handshake failed");
            return;
        }
    };
    debug!(%peer, "RPC connection open");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(peer, send, recv, handler.clone()));
            }
            Err(error) => {
                debug!(%peer, %error, "RPC connection closed");
                return;
            }
        }
    }
}

/// Reads one request, answers it, and finishes the stream.
async fn serve_stream(
    peer: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
    handler: Arc<dyn RpcHandler>,
) {
    let reply = match tokio::time::timeout(REQUEST_READ_TIMEOUT, frame::read(&mut recv)).await {
        Ok(Ok(request)) => handler.handle(peer, request).await,
        Ok(Err(FrameReadError::Stream(error))) => {
            debug!(%peer, %error, "RPC request stream ended early");
            return;
        }
        Ok(Err(FrameReadError::Invalid(error))) => {
            warn!(%peer, %error, "invalid RPC request");
            // The rest of the frame is unread; tell the peer to stop sending it.
            let _ = recv.stop(VarInt::from_u32(0));
            CommandError::from(error).to_document()
        }
        Err(_elapsed) => {
            debug!(%peer, "RPC request not received in time");
            return;
        }
    };
    let reply_frame = match frame::encode(&reply) {
        Ok(reply_frame) => reply_frame,
        Err(error) => {
            warn!(%peer, %error, "RPC reply cannot be sent");
            match frame::encode(&CommandError::from(error).to_document()) {
                Ok(error_frame) => error_frame,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = send.write_all(&reply_frame).await {
        debug!(%peer, %error, "RPC reply not delivered");
        return;
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bson::doc;
    use shoal_common::ErrorCode;

    use super::*;
    use crate::{
        FRAME_BYTES_MAX, SERVER_NAME,
        certs::{create_ca, create_node_cert},
    };

    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    impl RpcHandler for Counting {
        fn handle(
            &self,
            _peer: SocketAddr,
            _request: Document,
        ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                doc! { "ok": 1 }
            })
        }
    }

    /// Sends raw bytes on one stream and returns the server's reply code.
    async fn reply_code(connection: &quinn::Connection, raw: &[u8]) -> i32 {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(raw).await.unwrap();
        send.finish().unwrap();
        let reply = frame::read(&mut recv).await.unwrap();
        assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
        reply.get_i32("code").unwrap()
    }

    #[tokio::test]
    async fn malformed_requests_get_error_replies_without_reaching_the_handler() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        create_node_cert(dir.path(), &dir.path().join("node"), "node", &[]).unwrap();
        let tls = TlsPaths::from_dir(&dir.path().join("node"));
        let handler = Arc::new(Counting::default());
        let server = RpcServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &tls, handler.clone());
        let server = server.unwrap();
        let addr = server.local_addr();
        let serving = tokio::spawn(server.run());
        let mut endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(tls::client_config(&tls).unwrap());
        let connection = endpoint.connect(addr, SERVER_NAME).unwrap().await.unwrap();

        let too_large = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_le_bytes();
        assert_eq!(
            reply_code(&connection, &too_large).await,
            ErrorCode::PROTOCOL_ERROR.0
        );
        let garbage = [9, 0, 0, 0, 9, 0, 0, 0, 0x20, b'a', 0, 0, 0];
        assert_eq!(
            reply_code(&connection, &garbage).await,
            ErrorCode::INVALID_BSON.0
        );
        assert_eq!(handler.calls.load(Ordering::SeqCst), 0);

        let valid = frame::encode(&doc! { "ping": 1 }).unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&valid).await.unwrap();
        send.finish().unwrap();
        assert_eq!(frame::read(&mut recv).await.unwrap(), doc! { "ok": 1 });
        assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
        serving.abort();
    }
}
