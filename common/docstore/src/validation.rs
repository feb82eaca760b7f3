//! Schema validation: a collection's `validator` (a query filter), `validationLevel` and
//! `validationAction`, set by `create` or `collMod`, checked on every document write in the
//! same place that maintains the indexes. `strict` checks every insert and update, `moderate`
//! lets documents that were already invalid be updated freely, `off` checks nothing; `warn`
//! logs a failure instead of refusing the write (DocumentValidationFailure 121).

use bson::{Bson, Document, doc};
use shoal_common::CommandError;
use shoal_query::Filter;

use crate::{args::Fields, index::named_error};

const DOCUMENT_VALIDATION_FAILURE: (i32, &str) = (121, "DocumentValidationFailure");
const LEVELS: &[&str] = &["off", "strict", "moderate"];
const ACTIONS: &[&str] = &["error", "warn", "errorAndLog"];

/// A collection's validation options.
#[derive(Clone, Debug, Default)]
pub(crate) struct Validation {
    /// The validator as given, and parsed.
    pub validator: Option<(Document, Filter)>,
    /// `validationLevel`, when set.
    pub level: Option<String>,
    /// `validationAction`, when set.
    pub action: Option<String>,
}

impl PartialEq for Validation {
    fn eq(&self, other: &Validation) -> bool {
        self.validator.as_ref().map(|(doc, _)| doc) == other.validator.as_ref().map(|(doc, _)| doc)
            && self.level == other.level
            && self.action == other.action
    }
}

impl Validation {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.validator.is_none() && self.level.is_none() && self.action.is_none()
    }

    /// Applies the validation fields of a `create` or `collMod` command (`label` names it in
    /// errors); fields absent from the command keep their value.
    pub fn update_from(&mut self, command: &Document, label: &str) -> Result<(), CommandError> {
        let fields = Fields::new(command, label);
        if let Some(validator) = fields.doc("validator")? {
            let filter = Filter::parse(validator)?;
            self.validator = Some((validator.clone(), filter));
        }
        let choice = |field: &str, allowed: &[&str]| -> Result<Option<String>, CommandError> {
            match fields.str(field)? {
                Some(value) if allowed.contains(&value) => Ok(Some(value.to_owned())),
                Some(value) => Err(CommandError::bad_value(format!(
                    "Enumeration value '{value}' for field '{label}.{field}' is not a valid value."
                ))),
                None => Ok(None),
            }
        };
        if let Some(level) = choice("validationLevel", LEVELS)? {
            self.level = Some(level);
        }
        if let Some(action) = choice("validationAction", ACTIONS)? {
            self.action = Some(action);
        }
        Ok(())
    }

    /// The `options` fields `listCollections` shows.
    pub fn options(&self) -> Document {
        let mut options = Document::new();
        if let Some((validator, _)) = &self.validator {
            options.insert("validator", validator.clone());
            options.insert(
                "validationLevel",
                self.level.clone().unwrap_or_else(|| "strict".into()),
            );
            options.insert(
                "validationAction",
                self.action.clone().unwrap_or_else(|| "error".into()),
            );
            return options;
        }
        if let Some(level) = &self.level {
            options.insert("validationLevel", level.clone());
        }
        if let Some(action) = &self.action {
            options.insert("validationAction", action.clone());
        }
        options
    }

    /// The catalog form (the same fields).
    pub fn to_record(&self) -> Document {
        let mut record = Document::new();
        if let Some((validator, _)) = &self.validator {
            record.insert("validator", validator.clone());
        }
        if let Some(level) = &self.level {
            record.insert("validationLevel", level.clone());
        }
        if let Some(action) = &self.action {
            record.insert("validationAction", action.clone());
        }
        record
    }

    /// Reads the catalog form.
    pub fn from_record(record: &Document) -> Result<Validation, String> {
        let mut validation = Validation::default();
        validation
            .update_from(record, "options")
            .map_err(|err| format!("validation options: {}", err.errmsg))?;
        Ok(validation)
    }

    /// Checks a document write: `old` is the document replaced (`None` for an insert).
    pub fn check(&self, old: Option<&Document>, new: &Document) -> Result<(), CommandError> {
        let Some((validator, filter)) = &self.validator else {
            return Ok(());
        };
        match self.level.as_deref() {
            Some("off") => return Ok(()),
            Some("moderate") if old.is_some_and(|old| !filter.matches(old)) => return Ok(()),
            _ => {}
        }
        if filter.matches(new) {
            return Ok(());
        }
        let id = new.get("_id").cloned().unwrap_or(Bson::Null);
        if self.action.as_deref() == Some("warn") {
            tracing::warn!(id = %id, "document failed validation; written anyway (validationAction warn)");
            return Ok(());
        }
        let mut err = named_error(
            DOCUMENT_VALIDATION_FAILURE.0,
            DOCUMENT_VALIDATION_FAILURE.1,
            "Document failed validation",
        );
        err.extra.insert(
            "errInfo",
            doc! {
                "failingDocumentId": id,
                "details": {"operatorName": "$and", "specifiedAs": validator.clone(), "reason": "the document does not match the validator"},
            },
        );
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_actions_decide_what_is_refused() {
        let mut validation = Validation::default();
        validation
            .update_from(&doc! {"validator": {"q": {"$type": "int"}}}, "create")
            .unwrap();
        assert!(validation.check(None, &doc! {"_id": 1, "q": 1}).is_ok());
        let err = validation
            .check(None, &doc! {"_id": 1, "q": "x"})
            .unwrap_err();
        assert_eq!(err.code.0, 121);
        validation
            .update_from(&doc! {"validationLevel": "moderate"}, "collMod")
            .unwrap();
        assert!(
            validation
                .check(Some(&doc! {"q": "old"}), &doc! {"q": "x"})
                .is_ok()
        );
        assert!(
            validation
                .check(Some(&doc! {"q": 1}), &doc! {"q": "x"})
                .is_err()
        );
        validation
            .update_from(&doc! {"validationAction": "warn"}, "collMod")
            .unwrap();
        assert!(validation.check(None, &doc! {"q": "x"}).is_ok());
        let bad = validation.update_from(&doc! {"validationLevel": "sometimes"}, "collMod");
        assert_eq!(bad.unwrap_err().code.0, 2);
        let back = Validation::from_record(&validation.to_record()).unwrap();
        assert_eq!(back, validation);
        assert_eq!(
            back.options(),
            doc! {"validator": {"q": {"$type": "int"}}, "validationLevel": "moderate", "validationAction": "warn"}
        );
    }
}
