//! Raft's transport: openraft's RPCs carried over the cluster's QUIC RPC (mutual TLS), and the
//! receiving side that hands them to the local Raft.
//!
//! Requests are command documents (`{_shoalRaft: <kind>, from, body, $db: "admin"}`) so they
//! share the members' one RPC port and dispatcher; openraft's messages travel JSON-encoded in
//! `body` (their membership maps have integer keys, which BSON documents cannot hold).
//!
//! Every message carries the sender's [`Incarnation`] of the set. A forced reconfiguration
//! starts a new incarnation on the survivor; members of another incarnation refuse each other's
//! messages, so a member that was left out (and kept its old data) cannot disturb the new set.
//! A member that learns from a refusal that a newer incarnation exists marks itself superseded.
//!
//! Fault injection: [`Partition`] makes a member drop every Raft message to and from chosen
//! peers, which is how tests cut a primary off from its secondaries while clients still reach
//! it.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{Binary, Bson, Document, doc, oid::ObjectId, spec::BinarySubtype};
use openraft::{
    alias::{SnapshotOf, VoteOf},
    errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable},
    network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
        TransferLeaderResponse, VoteRequest, VoteResponse,
    },
};
use shoal_common::ErrorCode;
use shoal_rpc::RpcClient;

use crate::{
    snapshot::{SNAPSHOT_CHUNK_BYTES, SnapshotFile},
    types::{MemberNode, NodeId, TypeConfig},
};

/// The longest one Raft message may take before the sender treats the peer as unreachable
/// (openraft passes its own, shorter, deadline for heartbeats and votes).
pub const RAFT_CALL_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// How long the last chunk of a snapshot may wait for the member to install it (it reads and
/// writes the whole data set: about ten seconds per GB on a modest disk).
pub const SNAPSHOT_INSTALL_CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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

/// One incarnation of a replica set: the set `replSetInitiate` made, or the set a forced
/// reconfiguration rebuilt from a survivor. Persisted in `raft_meta` and carried by every Raft
/// message; members of different incarnations refuse each other's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// 1 for an initiated set, one more per forced reconfiguration: the higher generation is
    /// the newer set, which tells a left-out member that it is the one superseded.
    pub generation: u64,
    /// Random, so that two forced reconfigurations of the same generation still differ.
    pub id: ObjectId,
}

impl Incarnation {
    /// The incarnation `replSetInitiate` starts.
    pub fn first() -> Incarnation {
        Incarnation {
            generation: 1,
            id: ObjectId::new(),
        }
    }

    /// The incarnation a forced reconfiguration starts after `previous` (`None` for a set made
    /// before incarnations existed, generation 0).
    pub fn after(previous: Option<Incarnation>) -> Incarnation {
        Incarnation {
            generation: generation(previous).saturating_add(1),
            id: ObjectId::new(),
        }
    }

    /// The form messages and storage carry.
    pub fn to_document(self) -> Document {
        doc! {
            "generation": i64::try_from(self.generation).unwrap_or(i64::MAX),
            "id": self.id,
        }
    }

    /// Reads [`Incarnation::to_document`]'s form; `None` when malformed.
    pub fn from_document(document: &Document) -> Option<Incarnation> {
        let generation = u64::try_from(document.get_i64("generation").ok()?).ok()?;
        let id = document.get_object_id("id").ok()?;
        Some(Incarnation { generation, id })
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.generation, self.id)
    }
}

/// The generation of `incarnation`, 0 for none (a set made before incarnations existed).
pub fn generation(incarnation: Option<Incarnation>) -> u64 {
    incarnation.map_or(0, |i| i.generation)
}

/// What a member does with a Raft message stamped with another member's incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncarnationVerdict {
    /// Same incarnation: handle it.
    Accept,
    /// This member is pristine (never initiated, no incarnation): join the sender's incarnation
    /// and handle it. This is how members of a new set, and members added later, learn it.
    Adopt(Incarnation),
    /// Another incarnation: refuse it. `superseded` when the sender's is the newer one.
    Refuse {
        /// Whether this member's incarnation is the older one.
        superseded: bool,
    },
}

/// Decides what a member of incarnation `mine` does with a message of `theirs`.
pub fn incarnation_verdict(
    mine: Option<Incarnation>,
    theirs: Option<Incarnation>,
    pristine: bool,
) -> IncarnationVerdict {
    if mine == theirs {
        return IncarnationVerdict::Accept;
    }
    match (mine, theirs) {
        (None, Some(theirs)) if pristine => IncarnationVerdict::Adopt(theirs),
        _ => IncarnationVerdict::Refuse {
            superseded: generation(theirs) > generation(mine),
        },
    }
}

/// This member's incarnation, shared by the transport (which stamps messages with it and
/// learns from refusals) and the replica set (which checks incoming messages against it).
#[derive(Debug, Default)]
pub struct IncarnationCell {
    current: Mutex<Option<Incarnation>>,
    /// Set once a member of a newer incarnation refused this member or wrote to it: this
    /// member was left out by a forced reconfiguration. In memory only: after a restart the
    /// first refusal sets it again.
    superseded: AtomicBool,
}

impl IncarnationCell {
    /// A cell holding `current` (as read from storage).
    pub fn new(current: Option<Incarnation>) -> IncarnationCell {
        IncarnationCell {
            current: Mutex::new(current),
            superseded: AtomicBool::new(false),
        }
    }

    /// The incarnation now.
    pub fn get(&self) -> Option<Incarnation> {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the incarnation (initiate, forced reconfiguration); clears `superseded`.
    pub fn set(&self, incarnation: Option<Incarnation>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = incarnation;
        self.superseded.store(false, Ordering::Relaxed);
    }

    /// Sets the incarnation to `adopted` if this member has none yet, after `persist` succeeds
    /// (under the lock, so two senders cannot both be adopted). Returns whether `adopted` is
    /// the incarnation now.
    pub fn adopt<E>(
        &self,
        adopted: Incarnation,
        persist: impl FnOnce(Incarnation) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = *current {
            return Ok(current == adopted);
        }
        persist(adopted)?;
        *current = Some(adopted);
        Ok(true)
    }

    /// Whether a newer incarnation of the set exists (this member was left out).
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Relaxed)
    }

    /// Records that a newer incarnation exists; returns whether this is news.
    pub fn mark_superseded(&self) -> bool {
        !self.superseded.swap(true, Ordering::Relaxed)
    }
}

/// Field of a refusal that carries the refusing member's incarnation.
pub const REFUSAL_INCARNATION_FIELD: &str = "incarnation";
/// The code of a refusal for another incarnation (MongoDB's for a heartbeat from a member of
/// another set).
pub const REFUSAL_CODE: ErrorCode = ErrorCode::INVALID_REPLICA_SET_CONFIG;

/// Creates one [`PeerClient`] per peer.
#[derive(Clone)]
pub struct Network {
    rpc: RpcClient,
    me: NodeId,
    set_name: String,
    partition: Arc<Partition>,
    incarnation: Arc<IncarnationCell>,
}

impl Network {
    /// A network sending as `me`, member of replica set `set_name` in the incarnation
    /// `incarnation` holds.
    pub fn new(
        rpc: RpcClient,
        me: NodeId,
        set_name: String,
        partition: Arc<Partition>,
        incarnation: Arc<IncarnationCell>,
    ) -> Network {
        Network {
            rpc,
            me,
            set_name,
            partition,
            incarnation,
        }
    }

    /// Learns from a peer's refusal: a refusal by a newer incarnation means this member was
    /// left out by a forced reconfiguration.
    fn note_refusal(&self, host: &str, reply: &Document) {
        if reply.get_i32("code") != Ok(REFUSAL_CODE.0) {
            return;
        }
        let Some(theirs) = reply
            .get_document(REFUSAL_INCARNATION_FIELD)
            .ok()
            .and_then(Incarnation::from_document)
        else {
            return;
        };
        let mine = self.incarnation.get();
        if theirs.generation > generation(mine) && self.incarnation.mark_superseded() {
            tracing::warn!(
                set = %self.set_name,
                peer = host,
                theirs = %theirs,
                mine = ?mine.map(|i| i.to_string()),
                "a forced reconfiguration left this member out of its replica set: it stops electing and serving; wipe its data directory and add it again with rs.add"
            );
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
        if let Some(incarnation) = self.network.incarnation.get() {
            request.insert("incarnation", incarnation.to_document());
        }
        if let Some((key, value)) = extra {
            request.insert(key, value);
        }
        let reply = self
            .network
            .rpc
            .call(&self.host, request, timeout)
            .await
            .map_err(|e| TransportError(e.to_string()))?;
        match reply.get_str("body") {
            Ok(_) => Ok(reply),
            Err(_) => {
                self.network.note_refusal(&self.host, &reply);
                Err(TransportError(format!(
                    "{} refused a raft {kind}: {}",
                    self.host,
                    reply.get_str("errmsg").unwrap_or("no body")
                )))
            }
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
            .call(
                kind,
                body,
                None,
                option.hard_ttl().min(RAFT_CALL_TIMEOUT_MAX),
            )
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
    type SnapshotData = SnapshotFile;

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

    /// Streams the snapshot file in chunks of [`SNAPSHOT_CHUNK_BYTES`]; the member answers the
    /// last one after installing it. The file is opened once, so a newer snapshot replacing it
    /// meanwhile does not cut the stream.
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let last = snapshot.meta.last_log_id;
        let started = std::time::Instant::now();
        tracing::info!(to = %self.host, ?last, "sending a snapshot");
        let sent = self.stream_snapshot(vote, snapshot, cancel, option).await;
        match &sent {
            Ok(_) => {
                tracing::info!(to = %self.host, ?last, millis = started.elapsed().as_millis() as u64, "snapshot sent and installed");
            }
            Err(error) => {
                tracing::warn!(to = %self.host, ?last, %error, "sending a snapshot failed; it will be sent again");
            }
        }
        sent
    }
}

impl PeerClient {
    async fn stream_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreachable =
            |error: String| StreamingError::Unreachable(Unreachable::new(&TransportError(error)));
        let path = snapshot.snapshot.path().to_path_buf();
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| unreachable(format!("opening snapshot {}: {e}", path.display())))?;
        let total = file
            .metadata()
            .await
            .map_err(|e| unreachable(format!("reading snapshot {}: {e}", path.display())))?
            .len();
        let header = serde_json::to_string(&(vote, &snapshot.meta))
            .map_err(|e| unreachable(e.to_string()))?;
        let mut cancel = std::pin::pin!(cancel);
        let mut buffer = vec![0; SNAPSHOT_CHUNK_BYTES];
        // Positive in BSON's signed long.
        let stream = rand::random::<u64>() >> 1;
        let mut offset = 0u64;
        loop {
            let filled = read_up_to(&mut file, &mut buffer)
                .await
                .map_err(|e| unreachable(format!("reading snapshot {}: {e}", path.display())))?;
            let end = offset + filled as u64;
            if filled == 0 && end < total {
                return Err(unreachable(format!(
                    "snapshot {} ended at {end} of {total} bytes",
                    path.display()
                )));
            }
            let last = end >= total;
            let chunk = doc! {
                "stream": stream as i64,
                "offset": offset as i64,
                "total": total as i64,
                "data": Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: buffer[..filled].to_vec(),
                }),
            };
            // The last chunk's answer waits for the install (reading and writing the whole
            // data set); the others only for a write to disk.
            let timeout = if last {
                SNAPSHOT_INSTALL_CALL_TIMEOUT
            } else {
                option.hard_ttl().min(RAFT_CALL_TIMEOUT_MAX)
            };
            let call = self.call(
                "snapshotChunk",
                header.clone(),
                Some(("chunk", Bson::Document(chunk))),
                timeout,
            );
            let reply = tokio::select! {
                reply = call => reply.map_err(|e| unreachable(e.to_string()))?,
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            };
            if last {
                return decode_body(&reply).map_err(|e| unreachable(e.to_string()));
            }
            offset = end;
        }
    }
}

/// Fills `buffer` from `file` unless the file ends first; returns the bytes read.
async fn read_up_to(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt as _;
    let mut filled = 0;
    while filled < buffer.len() {
        let read = file.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_other_incarnations_refuse_each_other() {
        let first = Incarnation::first();
        let forced = Incarnation::after(Some(first));
        assert_eq!(forced.generation, 2);
        let verdict = |mine, theirs, pristine| incarnation_verdict(mine, theirs, pristine);
        assert_eq!(
            verdict(Some(first), Some(first), false),
            IncarnationVerdict::Accept
        );
        assert_eq!(verdict(None, None, false), IncarnationVerdict::Accept);
        // A pristine member joins whichever incarnation writes to it first.
        assert_eq!(
            verdict(None, Some(forced), true),
            IncarnationVerdict::Adopt(forced)
        );
        // The survivor refuses a left-out member, which learns it was superseded from the
        // refusal (sender side) or from a newer member's message (receiver side).
        assert_eq!(
            verdict(Some(forced), Some(first), false),
            IncarnationVerdict::Refuse { superseded: false }
        );
        assert_eq!(
            verdict(Some(first), Some(forced), false),
            IncarnationVerdict::Refuse { superseded: true }
        );
        // A set from before incarnations (none) and a forced one refuse each other too.
        assert_eq!(
            verdict(None, Some(Incarnation::after(None)), false),
            IncarnationVerdict::Refuse { superseded: true }
        );
        assert_eq!(
            verdict(Some(Incarnation::after(None)), None, false),
            IncarnationVerdict::Refuse { superseded: false }
        );
        // Two forced reconfigurations of the same generation are different sets.
        let twin = Incarnation::after(Some(first));
        assert_eq!(
            verdict(Some(forced), Some(twin), false),
            IncarnationVerdict::Refuse { superseded: false }
        );
    }

    #[test]
    fn incarnations_round_trip_and_adopt_once() {
        let incarnation = Incarnation::after(Some(Incarnation::first()));
        let document = incarnation.to_document();
        assert_eq!(Incarnation::from_document(&document), Some(incarnation));
        assert_eq!(Incarnation::from_document(&doc! {"generation": "x"}), None);
        let cell = IncarnationCell::new(None);
        let stored = std::cell::Cell::new(0);
        let persist = |_| -> Result<(), ()> {
            stored.set(stored.get() + 1);
            Ok(())
        };
        assert_eq!(cell.adopt(incarnation, persist), Ok(true));
        assert_eq!(cell.adopt(Incarnation::first(), persist), Ok(false));
        assert_eq!(cell.adopt(incarnation, persist), Ok(true));
        assert_eq!(stored.get(), 1);
        assert_eq!(cell.get(), Some(incarnation));
        assert!(cell.mark_superseded());
        assert!(!cell.mark_superseded());
        assert!(cell.is_superseded());
        cell.set(Some(Incarnation::first()));
        assert!(!cell.is_superseded());
    }
}
