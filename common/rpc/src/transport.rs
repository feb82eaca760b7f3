//! The seam between RPC callers and the network: [`RpcTransport`], implemented by the QUIC
//! [`RpcClient`] and by [`InMemoryTransport`], which calls handlers directly.
//!
//! Router, config server and shard code take an `Arc<dyn RpcTransport>`, so their tests can run
//! a whole cluster in one process, or wrap a transport to drop, delay or fail requests, without
//! sockets or certificates.

use std::{
    collections::HashMap,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bson::Document;

use crate::{RpcClient, RpcError, RpcHandler, frame};

/// The future an [`RpcTransport`] call returns.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Document, RpcError>> + Send + 'a>>;

/// Sends one request to a peer and waits for its reply.
pub trait RpcTransport: Send + Sync + 'static {
    /// Sends `request` to `addr` (`host:port`) and returns the reply, failing with
    /// [`RpcError::Timeout`] when no reply arrives within `timeout`.
    fn call<'a>(&'a self, addr: &'a str, request: Document, timeout: Duration) -> CallFuture<'a>;
}

impl RpcTransport for RpcClient {
    fn call<'a>(&'a self, addr: &'a str, request: Document, timeout: Duration) -> CallFuture<'a> {
        Box::pin(RpcClient::call(self, addr, request, timeout))
    }
}

/// A transport that hands requests straight to handlers registered under an address.
///
/// Requests and replies still go through the frame encoding, so size limits and BSON validity
/// are checked as on the network.
#[derive(Default)]
pub struct InMemoryTransport {
    handlers: Mutex<HashMap<String, Arc<dyn RpcHandler>>>,
}

impl InMemoryTransport {
    /// A transport with no servers.
    pub fn new() -> InMemoryTransport {
        InMemoryTransport::default()
    }

    /// Serves `addr` with `handler`, replacing any previous handler (a restarted node).
    pub fn register(&self, addr: &str, handler: Arc<dyn RpcHandler>) {
        let mut handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        handlers.insert(addr.to_owned(), handler);
    }

    /// Stops serving `addr` (a node that went down); calls to it fail with `Connect`.
    pub fn unregister(&self, addr: &str) {
        let mut handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        handlers.remove(addr);
    }

    fn handler(&self, addr: &str) -> Option<Arc<dyn RpcHandler>> {
        let handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        handlers.get(addr).cloned()
    }

    async fn deliver(&self, addr: &str, request: Document) -> Result<Document, RpcError> {
        let handler = self.handler(addr).ok_or_else(|| RpcError::Connect {
            addr: addr.to_owned(),
            reason: "no in-memory server at this address".to_owned(),
        })?;
        let request = round_trip(&request)?;
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let reply = handler.handle(peer, request).await;
        round_trip(&reply)
    }
}

impl RpcTransport for InMemoryTransport {
    fn call<'a>(&'a self, addr: &'a str, request: Document, timeout: Duration) -> CallFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.deliver(addr, request)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(RpcError::Timeout {
                    addr: addr.to_owned(),
                }),
            }
        })
    }
}

/// Encodes and decodes a document as the network would.
fn round_trip(document: &Document) -> Result<Document, RpcError> {
    let frame = frame::encode(document)?;
    let body = frame
        .get(4..)
        .ok_or_else(|| RpcError::InvalidBson("empty frame".to_owned()))?;
    frame::decode(body)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    struct Echo;

    impl RpcHandler for Echo {
        fn handle(
            &self,
            _peer: SocketAddr,
            request: Document,
        ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>> {
            Box::pin(async move {
                doc! { "echo": request }
            })
        }
    }

    struct Never;

    impl RpcHandler for Never {
        fn handle(
            &self,
            _peer: SocketAddr,
            _request: Document,
        ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn in_memory_calls_reach_the_registered_handler() {
        let transport = InMemoryTransport::new();
        transport.register("a:1", Arc::new(Echo));
        let reply = transport
            .call("a:1", doc! { "x": 1 }, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(reply, doc! { "echo": { "x": 1 } });
        transport.unregister("a:1");
        let error = transport
            .call("a:1", doc! {}, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, RpcError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn in_memory_call_times_out() {
        let transport = InMemoryTransport::new();
        transport.register("slow:1", Arc::new(Never));
        let error = transport
            .call("slow:1", doc! {}, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(error, RpcError::Timeout { .. }), "{error}");
    }
}
