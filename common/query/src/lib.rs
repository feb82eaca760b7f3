//! Shoal's query language: filters, projections, sorts, update operators, aggregation
//! pipelines and the order-preserving key encoding, all as pure functions over BSON documents.
//!
//! Why one crate: the shard evaluates queries against its documents, the router merges and
//! finishes pipelines, and both must agree exactly with each other and with MongoDB's manual.
//! Nothing here does I/O or reads the clock (except `$currentDate`, which by definition does);
//! every comparison goes through `shoal_common::bsonorder::compare`.

// The manual-example tables in the tests nest `bson!` deeply.
#![cfg_attr(test, recursion_limit = "512")]

pub mod error;
pub mod expr;
pub mod filter;
pub mod keycode;
pub mod lookup;
pub mod nesting;
pub mod path;
pub mod pipeline;
pub mod projection;
pub mod sort;
pub mod update;

pub use error::{QueryError, Result};
pub use expr::Expression;
pub use filter::Filter;
pub use lookup::{CollectionSource, lookup_collections};
pub use pipeline::Pipeline;
pub use projection::Projection;
pub use sort::SortSpec;
pub use update::Update;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}

    #[test]
    fn parsed_specs_can_be_shared_across_tasks() {
        assert_send_sync::<Filter>();
        assert_send_sync::<Projection>();
        assert_send_sync::<SortSpec>();
        assert_send_sync::<Update>();
        assert_send_sync::<Pipeline>();
        assert_send_sync::<Expression>();
        assert_send_sync::<QueryError>();
    }

    #[test]
    fn deeply_nested_specs_are_rejected_not_overflowed() {
        let mut filter = bson::doc! {"a": 1};
        for _ in 0..500 {
            filter = bson::doc! {"$and": [filter]};
        }
        assert_eq!(Filter::parse(&filter).unwrap_err().code().0, 2);
        let mut expression = bson::Bson::Int32(1);
        for _ in 0..500 {
            expression = bson::Bson::Document(bson::doc! {"$abs": expression});
        }
        assert_eq!(Expression::parse(&expression).unwrap_err().code().0, 2);
    }
}
