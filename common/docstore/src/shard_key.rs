//! The shard-key guard of `update` and `findAndModify` on sharded collections.
//!
//! The router adds two internal fields to the commands it forwards to the shard owning the
//! documents: `shardKeyPattern` and, for upserts, `upsertShardKey` (the key it routed by). A
//! document whose shard key changed in place would sit on a shard that does not own it, and an
//! upsert that inserts another key would put a document where the router will never look for
//! it. MongoDB checks this on the shard against the pre-image, inside the write, so a
//! concurrent change cannot slip between check and write; the engine does the same under its
//! writer lock. Both fields are absent for unsharded collections and direct use.

use bson::{Bson, Document};
use shoal_common::{
    CommandError, ErrorCode,
    bsonorder::{compare, compare_key_values},
    chunks::{ShardKeyPattern, lookup_path},
};

use crate::args::Fields;

/// The shard key an `update` or `findAndModify` must preserve.
pub(crate) struct ShardKeyGuard {
    pattern: ShardKeyPattern,
    /// The key an upserted document must have (`upsertShardKey`), already in extracted form
    /// (hashed fields carry the hash, as [`ShardKeyPattern::extract`] yields).
    upsert_key: Option<Document>,
}

impl ShardKeyGuard {
    /// Reads `shardKeyPattern` and `upsertShardKey`; `None` when the command carries neither.
    pub(crate) fn parse(fields: &Fields<'_>) -> Result<Option<ShardKeyGuard>, CommandError> {
        let upsert_key = fields.doc("upsertShardKey")?;
        let Some(pattern) = fields.doc("shardKeyPattern")? else {
            if upsert_key.is_some() {
                return Err(CommandError::bad_value(format!(
                    "BSON field '{}.upsertShardKey' requires '{}.shardKeyPattern'",
                    fields.label, fields.label
                )));
            }
            return Ok(None);
        };
        let pattern = ShardKeyPattern::parse(pattern)?;
        if let Some(key) = upsert_key {
            pattern.validate_key_shape(key)?;
        }
        Ok(Some(ShardKeyGuard {
            pattern,
            upsert_key: upsert_key.cloned(),
        }))
    }

    /// Fails with ImmutableField when `new` (the post-image of `old`) has another shard key.
    pub(crate) fn check_update(&self, old: &Document, new: &Document) -> Result<(), CommandError> {
        let old_key = self.pattern.extract(old)?;
        let new_key = self.pattern.extract(new)?;
        let changed = self
            .pattern
            .fields
            .iter()
            .zip(old_key.values().zip(new_key.values()))
            .find(|(_, (before, after))| compare(before, after).is_ne());
        let Some(((field, _), _)) = changed else {
            return Ok(());
        };
        // The raw value, not the hash a hashed field extracts to: that is what the user wrote.
        let value = lookup_path(new, field).cloned().unwrap_or(Bson::Null);
        Err(CommandError::shard_key_change(format!(
            "After applying the update, the (immutable) shard key field '{field}' was found \
             to have been altered to {value}"
        )))
    }

    /// Checks the document an upsert inserts: its shard key must extract, and equal
    /// `upsertShardKey` when the router sent one.
    pub(crate) fn check_upsert(&self, document: &Document) -> Result<(), CommandError> {
        let key = self.pattern.extract(document)?;
        let Some(expected) = &self.upsert_key else {
            return Ok(());
        };
        if compare_key_values(&key, expected).is_eq() {
            return Ok(());
        }
        Err(CommandError::new(
            ErrorCode::IMMUTABLE_FIELD,
            format!(
                "Upsert would insert a document whose shard key {key} differs from the query's \
                 {expected}"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn guard(command: &Document) -> Result<Option<ShardKeyGuard>, CommandError> {
        ShardKeyGuard::parse(&Fields::new(command, "update"))
    }

    #[test]
    fn parse_validates_types_and_shapes() {
        assert!(guard(&doc! {}).unwrap().is_none());
        let bad_type = guard(&doc! {"shardKeyPattern": 1}).err().unwrap();
        assert_eq!(bad_type.code, ErrorCode::TYPE_MISMATCH);
        let bad_pattern = guard(&doc! {"shardKeyPattern": {"k": -1}}).err().unwrap();
        assert_eq!(bad_pattern.code, ErrorCode::BAD_VALUE);
        let bad_key = guard(&doc! {"shardKeyPattern": {"k": 1}, "upsertShardKey": {"j": 1}})
            .err()
            .unwrap();
        assert_eq!(bad_key.code, ErrorCode::BAD_VALUE);
        let key_type = guard(&doc! {"shardKeyPattern": {"k": 1}, "upsertShardKey": 3})
            .err()
            .unwrap();
        assert_eq!(key_type.code, ErrorCode::TYPE_MISMATCH);
        let alone = guard(&doc! {"upsertShardKey": {"k": 1}}).err().unwrap();
        assert_eq!(alone.code, ErrorCode::BAD_VALUE);
    }

    #[test]
    fn hashed_keys_compare_by_value_and_report_the_raw_value() {
        let guard = guard(&doc! {"shardKeyPattern": {"k": "hashed"}})
            .unwrap()
            .unwrap();
        let same = guard.check_update(&doc! {"k": 1}, &doc! {"k": 1.0, "x": 2});
        assert!(same.is_ok());
        let err = guard
            .check_update(&doc! {"k": 1}, &doc! {"k": 2})
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::IMMUTABLE_FIELD);
        assert!(
            err.errmsg
                .ends_with("field 'k' was found to have been altered to 2")
        );
    }

    #[test]
    fn an_array_in_the_new_key_fails_with_bad_value() {
        let guard = guard(&doc! {"shardKeyPattern": {"k": 1}}).unwrap().unwrap();
        let err = guard
            .check_update(&doc! {"k": 1}, &doc! {"k": [1]})
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_VALUE);
    }
}
