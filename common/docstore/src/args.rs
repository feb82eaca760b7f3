//! Typed access to command fields with MongoDB's error messages: a wrong type is TypeMismatch
//! (14) naming the field as `command.field`, a missing required field is IDLFailedToParse
//! (40414). Null counts as absent, as in MongoDB's IDL for optional fields.

use bson::{Bson, Document};
use shoal_common::{CommandError, ErrorCode, Namespace};

/// MongoDB's `IDLFailedToParse`, used for missing required fields.
const IDL_FAILED_TO_PARSE: ErrorCode = ErrorCode(40414);

/// A command (or sub-document) being read, with the label used in error messages.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    /// The document read.
    pub doc: &'a Document,
    /// `find`, `update.updates`, ...
    pub label: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(doc: &'a Document, label: &'a str) -> Fields<'a> {
        Fields { doc, label }
    }

    fn present(&self, field: &str) -> Option<&'a Bson> {
        match self.doc.get(field) {
            None | Some(Bson::Null) => None,
            Some(value) => Some(value),
        }
    }

    fn mismatch(&self, field: &str, expected: &str, got: &Bson) -> CommandError {
        CommandError::type_mismatch(&format!("{}.{field}", self.label), expected, got)
    }

    /// The error for a missing required field.
    pub fn missing(&self, field: &str) -> CommandError {
        CommandError::new(
            IDL_FAILED_TO_PARSE,
            format!(
                "BSON field '{}.{field}' is missing but a required field",
                self.label
            ),
        )
    }

    /// An optional embedded document.
    pub fn doc(&self, field: &str) -> Result<Option<&'a Document>, CommandError> {
        match self.present(field) {
            None => Ok(None),
            Some(Bson::Document(inner)) => Ok(Some(inner)),
            Some(other) => Err(self.mismatch(field, "object", other)),
        }
    }

    /// An optional array.
    pub fn array(&self, field: &str) -> Result<Option<&'a [Bson]>, CommandError> {
        match self.present(field) {
            None => Ok(None),
            Some(Bson::Array(items)) => Ok(Some(items.as_slice())),
            Some(other) => Err(self.mismatch(field, "array", other)),
        }
    }

    /// An optional string.
    pub fn str(&self, field: &str) -> Result<Option<&'a str>, CommandError> {
        match self.present(field) {
            None => Ok(None),
            Some(Bson::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(self.mismatch(field, "string", other)),
        }
    }

    /// An optional boolean; numbers are accepted as MongoDB does (non-zero is true).
    pub fn bool(&self, field: &str) -> Result<Option<bool>, CommandError> {
        match self.present(field) {
            None => Ok(None),
            Some(Bson::Boolean(flag)) => Ok(Some(*flag)),
            Some(Bson::Int32(n)) => Ok(Some(*n != 0)),
            Some(Bson::Int64(n)) => Ok(Some(*n != 0)),
            Some(Bson::Double(n)) => Ok(Some(*n != 0.0)),
            Some(other) => Err(self.mismatch(field, "bool", other)),
        }
    }

    /// An optional boolean defaulting to `default`.
    pub fn flag(&self, field: &str, default: bool) -> Result<bool, CommandError> {
        Ok(self.bool(field)?.unwrap_or(default))
    }

    /// An optional integer; doubles with an integral value are accepted.
    pub fn i64(&self, field: &str) -> Result<Option<i64>, CommandError> {
        match self.present(field) {
            None => Ok(None),
            Some(value) => as_i64(value)
                .map(Some)
                .ok_or_else(|| self.mismatch(field, "long", value)),
        }
    }

    /// An optional non-negative integer.
    pub fn non_negative(&self, field: &str) -> Result<Option<u64>, CommandError> {
        match self.i64(field)? {
            None => Ok(None),
            Some(n) => u64::try_from(n).map(Some).map_err(|_| {
                CommandError::bad_value(format!(
                    "BSON field '{}.{field}' value must be >= 0, actual value '{n}'",
                    self.label
                ))
            }),
        }
    }
}

/// An integral number as i64 (`None` for other types and for fractional doubles).
pub(crate) fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) if n.fract() == 0.0 && n.abs() < 9.0e18 => Some(*n as i64),
        _ => None,
    }
}

/// The collection a command names in its first field, validated with its database.
pub(crate) fn collection_ns(
    db: &str,
    command: &Document,
    name: &str,
) -> Result<Namespace, CommandError> {
    match command.get(name) {
        Some(Bson::String(coll)) => Namespace::new(db, coll),
        Some(other) => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            format!(
                "collection name has invalid type {}",
                shoal_common::error::type_name(other)
            ),
        )),
        None => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            "missing collection name",
        )),
    }
}

/// The documents of an array field, refusing non-document elements with TypeMismatch.
pub(crate) fn documents<'a>(
    items: &'a [Bson],
    label: &str,
) -> Result<Vec<&'a Document>, CommandError> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Bson::Document(inner) => Ok(inner),
            other => Err(CommandError::type_mismatch(
                &format!("{label}.{index}"),
                "object",
                other,
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn fields_check_types() {
        let cmd = doc! {"a": 1.0, "b": "x", "c": Bson::Null, "d": -1, "e": 1.5};
        let fields = Fields::new(&cmd, "find");
        assert_eq!(fields.i64("a").unwrap(), Some(1));
        assert_eq!(fields.i64("c").unwrap(), None);
        assert_eq!(fields.doc("b").unwrap_err().code, ErrorCode::TYPE_MISMATCH);
        assert_eq!(
            fields.non_negative("d").unwrap_err().code,
            ErrorCode::BAD_VALUE
        );
        assert_eq!(fields.i64("e").unwrap_err().code, ErrorCode::TYPE_MISMATCH);
        assert!(fields.flag("a", false).unwrap());
        assert_eq!(fields.missing("q").code.0, 40414);
    }
}
