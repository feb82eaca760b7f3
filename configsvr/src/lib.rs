//! The config server: the cluster's metadata authority. It keeps shards, databases,
//! collections and chunks as documents in its own `config` database (so that `find` and
//! `aggregate` on `config.*` work exactly as on MongoDB, and mongosh's `sh.status()` reads them
//! unchanged), and it is the only writer of that metadata.
//!
//! Every metadata change is one atomic write batch on the engine together with a bump of the
//! routing-metadata version, so a crash leaves either the old or the new metadata, never a mix.
//! The pure decisions (parsing `addShard` strings, choosing a primary shard, rewriting chunk
//! maps) live in [`catalog`] and in `shoal_common::chunks`; [`server`] is the I/O around them.

mod actionlog;
mod autosplit;
mod balancer;
pub mod catalog;
pub mod drain;
mod measure;
pub mod migrate;
pub mod move_primary;
pub mod server;
mod store;
pub mod zones;

pub use server::ConfigServer;
