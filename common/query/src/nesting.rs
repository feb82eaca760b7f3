//! The nesting limit on user-supplied specifications. Parsers and matchers here recurse on the
//! structure of filters, expressions and pipelines, so a pathologically deep document would
//! overflow the stack; MongoDB refuses such input too (its BSON depth limit is 200 levels).

use bson::{Bson, Document};

use crate::error::{QueryError, Result};

/// The deepest nesting of documents and arrays a specification may have.
pub const NESTING_DEPTH_MAX: usize = 180;

/// Rejects a value nested deeper than [`NESTING_DEPTH_MAX`] (BadValue 2). Iterative, so the
/// check itself cannot overflow the stack.
pub fn check_value(value: &Bson) -> Result<()> {
    check_from(vec![(value, 1)])
}

/// [`check_value`] for a document.
pub fn check_document(doc: &Document) -> Result<()> {
    check_from(doc.values().map(|value| (value, 2)).collect())
}

fn check_from(mut pending: Vec<(&Bson, usize)>) -> Result<()> {
    while let Some((current, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Bson>> = match current {
            Bson::Document(doc) => Box::new(doc.values()),
            Bson::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        if depth > NESTING_DEPTH_MAX {
            return Err(QueryError::bad_value(format!(
                "specification exceeds the maximum nesting depth of {NESTING_DEPTH_MAX}"
            )));
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn nested(depth: usize) -> Document {
        let mut doc = doc! {"x": 1};
        for _ in 1..depth {
            doc = doc! {"a": doc};
        }
        doc
    }

    #[test]
    fn depth_limit_is_enforced_without_recursion() {
        assert!(check_document(&nested(NESTING_DEPTH_MAX)).is_ok());
        assert_eq!(
            check_document(&nested(NESTING_DEPTH_MAX + 1))
                .unwrap_err()
                .code()
                .0,
            2
        );
        assert!(check_value(&Bson::Document(nested(NESTING_DEPTH_MAX))).is_ok());
        assert!(check_value(&Bson::Document(nested(NESTING_DEPTH_MAX + 1))).is_err());
        assert!(check_document(&nested(1_000)).is_err());
    }
}
