//! Raft's transport: openraft's RPCs carried over the cluster's QUIC RPC (mutual TLS), and the
//! receiving side that hands them to the local Raft.
//!
//! Requests are command documents (`{_shoalRaft: <kind>, from, body, $db: "admin"}`) so they
//! share the members' one RPC port and dispatcher; openraft's messages travel JSON-encoded in
//! `body` (their membership maps have integer keys, which BSON documents cannot hold).
//!
//! Fault injection: [`Partition`] makes a member drop every Raft message to and from chosen
//! peers, which is how tests cut a primary off from its secondaries while clients still reach
//! it.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use openraft::{
    alias::{SnapshotOf, VoteOf},
    errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable},
    network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
        TransferLeaderResponse, VoteRequest, VoteResponse,
    },
};
use shoal_rpc::RpcClient;

use crate::types::{MemberNode, NodeId, TypeConfig};

/// The longest one Raft message may take before the sender treats the peer as unreachable
/// (openraft passes its own, shorter, deadline for heartbeats and votes).
pub const RAFT_CALL_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// Peers whose Raft messages this member drops (fault injection for tests).
#[derive(Debug, Default)]
pub struct Partition {
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Partition {
    /// Replaces the set of blocked peers.
    pub fn set(&self, peers: BTreeSet<NodeId>) {
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = peers;
    }

    /// Whether messages to or from `peer` are dropped.
    pub fn blocks(&self, peer: NodeId) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer)
    }

    /// The blocked peers.
    pub fn blocked(&self) -> BTreeSet<NodeId> {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Creates one [`PeerClient`] per peer.
#[derive(Clone)]
pub struct Network {
    rpc: RpcClient,
    me: NodeId,
    set_name: String,
    partition: Arc<Partition>,
}

impl Network {
    /// A network sending as `me`, member of replica set `set_name`.
    pub fn new(rpc: RpcClient, me: NodeId, set_name: String, partition: Arc<Partition>) -> Network {
        Network {
            rpc,
            me,
            set_name,
            partition,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            host: node.host.clone(),
        }
    }
}

/// Sends Raft messages to one peer.
pub struct PeerClient {
    network: Network,
    target: NodeId,
    host: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call(
        &self,
        kind: &str,
        body: String,
        extra: Option<(&str, Bson)>,
        timeout: Duration,
    ) -> Result<Document, TransportError> {
        if self.network.partition.blocks(self.target) {
            return Err(TransportError(format!("partitioned from {}", self.host)));
        }
        let mut request = doc! {
            "_shoalRaft": kind,
            "from": self.network.me as i64,
            "setName": self.network.set_name.clone(),
            "body": body,
            "$db": "admin",
        };
        if let Some((key, value)) = extra {
            request.insert(key, value);
        }
        let timeout = timeout.min(RAFT_CALL_TIMEOUT_MAX);
        let reply = self
            .network
            .rpc
            .call(&self.host, request, timeout)
            .await
            .map_err(|e| TransportError(e.to_string()))?;
        match reply.get_str("body") {
            Ok(_) => Ok(reply),
            Err(_) => Err(TransportError(format!(
                "{} refused a raft {kind}: {}",
                self.host,
                reply.get_str("errmsg").unwrap_or("no body")
            ))),
        }
    }

    async fn exchange<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body =
            serde_json::to_string(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .call(kind, body, None, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        decode_body(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

fn decode_body<T: serde::de::DeserializeOwned>(reply: &Document) -> Result<T, TransportError> {
    let body = reply
        .get_str("body")
        .map_err(|_| TransportError("reply without body".into()))?;
    serde_json::from_str(body).map_err(|e| TransportError(format!("undecodable raft reply: {e}")))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("append", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("vote", &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("preVote", &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("transferLeader", &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = serde_json::to_string(&(vote, &snapshot.meta))
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let data = Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: snapshot.snapshot,
        });
        let reply = self
            .call("snapshot", header, Some(("data", data)), option.hard_ttl())
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        decode_body(&reply).map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}
