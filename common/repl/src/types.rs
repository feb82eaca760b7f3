//! The Raft type configuration: what a log entry carries (a write command, as the oplog), what
//! applying it returns (the command's reply), and what the membership says about each member
//! (MongoDB's per-member options).

use std::fmt;

use bson::Document;
use serde::{Deserialize, Serialize};

/// A member's Raft node id. Derived from its address (see [`node_id_for`]) so that a member
/// knows its own id before it has seen any configuration, as mongod finds itself in a config by
/// its host name.
pub type NodeId = u64;

/// A Raft term: MongoDB's `term`, and the source of `electionId`.
pub type Term = u64;

/// A write command replicated through the log: executed by every member when committed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposal {
    /// The database the command runs against.
    pub db: String,
    /// The command document, BSON-encoded (base64 in the serialized entry).
    #[serde(with = "b64")]
    pub command: Vec<u8>,
    /// The primary's clock when it proposed the write; every member uses it for `$currentDate`
    /// and generated ObjectIds.
    pub now_millis: i64,
    /// The retryable-write identity, when the command carries `lsid` and `txnNumber`.
    pub session: Option<SessionStatement>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal(db={}, {} bytes)", self.db, self.command.len())
    }
}

/// Which retryable statement (group) a proposal executes: the session, its transaction number
/// and the first statement id of the batch (routers send one batch per shard per attempt).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionStatement {
    /// The session id (`lsid.id`, 16 bytes, base64 in the serialized entry).
    #[serde(with = "b64")]
    pub lsid: Vec<u8>,
    /// `txnNumber`.
    pub txn_number: i64,
    /// The first `stmtIds` entry, 0 without one.
    pub stmt: i32,
    /// A digest of the whole `stmtIds` list: a recorded reply answers a retry only when the
    /// retry carries the same statements (a router re-sending part of a batch after StaleConfig
    /// starts with the same statement but is another request). 0 for entries written before.
    #[serde(default)]
    pub stmts: u64,
}

/// What applying an entry returns to the proposer: the command's reply, BSON-encoded.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    /// The reply document, BSON-encoded; empty for blank and membership entries.
    #[serde(with = "b64")]
    pub reply: Vec<u8>,
}

impl Applied {
    /// The reply as a document (an empty one for entries without a reply). Undecodable bytes
    /// become an InternalError reply rather than a reply without `ok`.
    pub fn document(&self) -> Document {
        if self.reply.is_empty() {
            return Document::new();
        }
        match Document::from_reader(&mut self.reply.as_slice()) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::error!(%error, "undecodable reply from the state machine");
                shoal_common::CommandError::internal(
                    "the write was applied but its reply could not be decoded",
                )
                .to_document()
            }
        }
    }
}

/// One member as the replica-set configuration describes it (`rs.conf().members[i]`).
/// (`Default` is an empty placeholder, required by openraft's storage test suite.)
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberNode {
    /// MongoDB's member `_id`.
    pub id: i32,
    /// `host:port`, both protocols.
    pub host: String,
    /// `priority` in thousandths (floats are not `Eq`); 0 means never primary.
    pub priority_milli: u32,
    /// `votes`: 1 for a voter, 0 for a learner (asynchronous, never primary).
    pub votes: u8,
    /// `hidden`: invisible to `hello` and never primary.
    pub hidden: bool,
    /// `secondaryDelaySecs`: applies entries this late; never primary.
    pub secondary_delay_secs: u32,
}

impl MemberNode {
    /// A voting member with MongoDB's defaults.
    pub fn voter(id: i32, host: &str) -> MemberNode {
        MemberNode {
            id,
            host: host.to_owned(),
            priority_milli: 1000,
            votes: 1,
            hidden: false,
            secondary_delay_secs: 0,
        }
    }

    /// Whether the member may ever become primary.
    pub fn electable(&self) -> bool {
        self.priority_milli > 0 && self.votes > 0 && !self.hidden && self.secondary_delay_secs == 0
    }

    /// `priority` as MongoDB shows it.
    pub fn priority(&self) -> f64 {
        f64::from(self.priority_milli) / 1000.0
    }
}

openraft::declare_raft_types!(
    /// Shoal's Raft types: standard Raft leader ids (one leader per term, as MongoDB's terms).
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = MemberNode,
        Term = Term,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Term, NodeId>,
);

/// The node id of the member at `host` (`ip:port`): the IPv4 address and port packed into 48
/// bits, unique per address. Other host names hash to a value above 2^48.
pub fn node_id_for(host: &str) -> NodeId {
    if let Ok(addr) = host.parse::<std::net::SocketAddrV4>() {
        return (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port());
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash | (1 << 48)
}

mod b64 {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_unique_per_address() {
        assert_ne!(node_id_for("127.0.0.1:1000"), node_id_for("127.0.0.1:1001"));
        assert_ne!(node_id_for("127.0.0.1:1000"), node_id_for("127.0.0.2:1000"));
        assert_eq!(node_id_for("127.0.0.1:1"), (0x7f00_0001 << 16) | 1);
        assert!(node_id_for("db.example:27017") >= 1 << 48);
    }

    #[test]
    fn proposals_round_trip_through_json() {
        let proposal = Proposal {
            db: "d".into(),
            command: vec![0, 1, 2, 255],
            now_millis: 5,
            session: Some(SessionStatement {
                lsid: vec![9; 16],
                txn_number: 3,
                stmt: 0,
                stmts: 7,
            }),
        };
        let text = serde_json::to_string(&proposal).unwrap();
        assert_eq!(serde_json::from_str::<Proposal>(&text).unwrap(), proposal);
    }
}
