//! End-to-end tests of the QUIC RPC: real sockets on loopback, real certificates from a
//! throwaway CA, and the failure cases a cluster meets (foreign certificates, dead peers,
//! restarted peers).

// Setup helpers live outside #[test] fns, where clippy's allow-unwrap-in-tests does not reach.
#![allow(clippy::unwrap_used, reason = "a failed test setup should panic")]

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Document, doc};
use shoal_rpc::{
    RpcClient, RpcError, RpcHandler, RpcServer, RpcTransport, TlsPaths,
    certs::{create_ca, create_node_cert},
};
use tokio::task::JoinHandle;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Replies `{echo: <request>}` and counts the requests it saw.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
}

impl RpcHandler for Echo {
    fn handle(
        &self,
        _peer: SocketAddr,
        request: Document,
    ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            doc! { "echo": request }
        })
    }
}

/// Certificates for one cluster (server, client) and one node of a foreign cluster.
struct Certs {
    _dir: tempfile::TempDir,
    server: TlsPaths,
    client: TlsPaths,
    foreign: TlsPaths,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    create_ca(&root.join("ca")).unwrap();
    create_ca(&root.join("other-ca")).unwrap();
    let hosts = vec!["127.0.0.1".to_owned()];
    let node = |ca: &str, name: &str| -> TlsPaths {
        create_node_cert(&root.join(ca), &root.join(name), name, &hosts).unwrap();
        TlsPaths::from_dir(&root.join(name))
    };
    let server = node("ca", "server");
    let client = node("ca", "client");
    let foreign = node("other-ca", "foreign");
    Certs {
        _dir: dir,
        server,
        client,
        foreign,
    }
}

fn start(addr: SocketAddr, tls: &TlsPaths, handler: Arc<Echo>) -> (SocketAddr, JoinHandle<()>) {
    let server = RpcServer::bind(addr, tls, handler).unwrap();
    let local = server.local_addr();
    (local, tokio::spawn(server.run()))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls_each_get_their_reply() {
    let certs = certs();
    let echo = Arc::new(Echo::default());
    let (addr, server) = start(loopback(), &certs.server, echo.clone());
    let client = RpcClient::new(&certs.client).unwrap();
    let target = addr.to_string();
    let calls = (0..100).map(|i| {
        let client = client.clone();
        let target = target.clone();
        async move { client.call(&target, doc! { "i": i }, CALL_TIMEOUT).await }
    });
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        let i = i32::try_from(i).unwrap();
        assert_eq!(reply.unwrap(), doc! { "echo": { "i": i } });
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 100);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_document_round_trips() {
    let certs = certs();
    let (addr, server) = start(loopback(), &certs.server, Arc::new(Echo::default()));
    let client = RpcClient::new(&certs.client).unwrap();
    let bytes: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let blob = bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    };
    let request = doc! { "blob": blob };
    let reply = client
        .call(&addr.to_string(), request.clone(), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, doc! { "echo": request });
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_ca_get_no_answer() {
    let certs = certs();
    let echo = Arc::new(Echo::default());
    let (addr, server) = start(loopback(), &certs.server, echo.clone());
    let timeout = Duration::from_secs(3);
    // A node of another cluster: it distrusts our server as well.
    let foreign = RpcClient::new(&certs.foreign).unwrap();
    let started = Instant::now();
    let error = foreign
        .call(&addr.to_string(), doc! { "x": 1 }, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RpcError::Connect { .. } | RpcError::Closed(_)),
        "{error}"
    );
    // A client that trusts our CA but holds a certificate from another: only the server's
    // client verification stands in its way.
    let impostor_tls = TlsPaths {
        ca: certs.server.ca.clone(),
        ..certs.foreign.clone()
    };
    let impostor = RpcClient::new(&impostor_tls).unwrap();
    let error = impostor
        .call(&addr.to_string(), doc! { "x": 1 }, timeout)
        .await
        .unwrap_err();
    assert!(!matches!(error, RpcError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < timeout);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_dead_port_fails_within_the_timeout() {
    let certs = certs();
    let unused = std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    let client = RpcClient::new(&certs.client).unwrap();
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let error = client
        .call(&unused.to_string(), doc! {}, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RpcError::Timeout { .. } | RpcError::Connect { .. }),
        "{error}"
    );
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_is_a_resolve_error() {
    let certs = certs();
    let client = RpcClient::new(&certs.client).unwrap();
    let error = client
        .call("no port here", doc! {}, CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::Resolve(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_to_a_restarted_server() {
    let certs = certs();
    let (addr, server) = start(loopback(), &certs.server, Arc::new(Echo::default()));
    let client = RpcClient::new(&certs.client).unwrap();
    let reply = client
        .call(&addr.to_string(), doc! { "n": 1 }, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, doc! { "echo": { "n": 1 } });

    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
    let (_, restarted) = rebind(addr, &certs.server.clone()).await;

    let reply = client
        .call(&addr.to_string(), doc! { "n": 2 }, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, doc! { "echo": { "n": 2 } });
    restarted.abort();
}

/// Binds `addr` again. The old socket closes once its connections have drained (a few
/// round-trip times), so binding is retried for a bounded time.
async fn rebind(addr: SocketAddr, tls: &TlsPaths) -> (SocketAddr, JoinHandle<()>) {
    const BIND_ATTEMPTS_MAX: u32 = 100;
    for _ in 0..BIND_ATTEMPTS_MAX {
        match RpcServer::bind(addr, tls, Arc::new(Echo::default())) {
            Ok(server) => return (server.local_addr(), tokio::spawn(server.run())),
            Err(RpcError::Io(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => panic!("rebind failed: {error}"),
        }
    }
    panic!("port {addr} still busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_works_through_the_transport_trait() {
    let certs = certs();
    let (addr, server) = start(loopback(), &certs.server, Arc::new(Echo::default()));
    let transport: Arc<dyn RpcTransport> = Arc::new(RpcClient::new(&certs.client).unwrap());
    let reply = transport
        .call(&addr.to_string(), doc! { "t": true }, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, doc! { "echo": { "t": true } });
    server.abort();
}

#[test]
fn tls_paths_follow_the_directory_layout() {
    let paths = TlsPaths::from_dir(Path::new("/x"));
    assert_eq!(paths.ca, Path::new("/x/ca.pem"));
    assert_eq!(paths.cert, Path::new("/x/node.pem"));
    assert_eq!(paths.key, Path::new("/x/node-key.pem"));
}
