//! Types shared by every Shoal crate: MongoDB error codes and the command error that carries
//! them, identities and versions (`ShardId`, `Namespace`, `ChunkVersion`), BSON's cross-type
//! ordering, and the pure chunk-routing logic.
//!
//! Dependency rule: this crate sits at the bottom of the workspace. It depends on no other Shoal
//! crate and does no I/O, so routing and ownership decisions built here can be tested
//! deterministically.

#![deny(missing_docs)]

pub mod balancer;
pub mod bsonorder;
pub mod chunks;
pub mod determinism;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod metadata;

pub use error::{CommandError, ErrorCode, Result};
pub use ids::{ChunkVersion, CollectionUuid, Epoch, Namespace, ShardId, ShardVersion};
