//! Replication for Shoal's replica sets: Raft (openraft) with the oplog as its log.
//!
//! A write command on the primary becomes a log entry ([`types::Proposal`]); once a majority
//! has it durably, every member applies it to its document engine as one atomic batch
//! ([`state_machine`]). MongoDB's vocabulary maps onto Raft: primary = leader, secondary =
//! follower, `votes: 0` member = learner, `w: "majority"` = committed, `replSetStepDown` =
//! leader transfer, initial sync = snapshot install.
//!
//! [`ReplicaSet`] is what a member holds: it owns the Raft instance and answers the
//! replica-set commands (`replSetInitiate`, `replSetGetStatus`, `replSetGetConfig`,
//! `replSetReconfig`, `replSetStepDown`), the `hello` fields, and the write path with its write
//! concern. The protocol decisions that need no I/O live in [`config`] and [`concern`];
//! [`force`] rebuilds a survivor as a new incarnation of its set when the majority is lost.

#![deny(missing_docs)]

pub mod archive;
pub mod client;
pub mod concern;
pub mod config;
pub mod force;
pub mod log_store;
pub mod network;
pub mod set;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use client::{ReadMode, ReadPreference, Topology};
pub use concern::WriteConcern;
pub use config::ReplConfig;
pub use network::{Incarnation, Partition};
pub use set::{ReplOptions, ReplicaSet};
pub use state_machine::{DeferringKv, replicated_engine};
pub use types::{MemberNode, NodeId, node_id_for};
