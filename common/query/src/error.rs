//! The query language's typed error. Every variant carries exactly one MongoDB error code so that
//! a driver sees the same `code`/`codeName` it would get from a real server; the single
//! `From<QueryError> for CommandError` below is the only place the mapping is written down.
//!
//! MongoDB reports many aggregation failures with numbered assertion codes ("Location16554"), one
//! per call site. Those are carried by [`QueryError::Location`], whose code is fixed by the call
//! site that raises it (see [`LocationCode`]), so each code still names one failure.

use shoal_common::{CommandError, ErrorCode};

/// A numbered MongoDB assertion code (`LocationNNNNN`) raised by one aggregation call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocationCode(pub i32);

impl LocationCode {
    /// `$mod` by zero.
    pub const MOD_BY_ZERO: LocationCode = LocationCode(16610);
    /// An arithmetic operator got a non-numeric argument.
    pub const ARITHMETIC_TYPE: LocationCode = LocationCode(16554);
    /// An expression got the wrong number of arguments.
    pub const ARITY: LocationCode = LocationCode(16020);
    /// `$concat` got a non-string.
    pub const CONCAT_TYPE: LocationCode = LocationCode(16702);
    /// `$size` got a non-array.
    pub const SIZE_TYPE: LocationCode = LocationCode(17124);
    /// An array expression got a non-array.
    pub const ARRAY_TYPE: LocationCode = LocationCode(28664);
    /// `$in` (expression) got a non-array second argument.
    pub const IN_TYPE: LocationCode = LocationCode(40081);
    /// `$switch` found no branch and has no default.
    pub const SWITCH_NO_MATCH: LocationCode = LocationCode(40066);
    /// A malformed expression argument (object form with unknown or missing fields).
    pub const EXPRESSION_SPEC: LocationCode = LocationCode(40181);
    /// A string operator got an unusable argument.
    pub const STRING_ARG: LocationCode = LocationCode(16007);
    /// A date operator got a non-date.
    pub const DATE_TYPE: LocationCode = LocationCode(16006);
    /// A pipeline stage object with more or fewer than one field.
    pub const STAGE_ONE_FIELD: LocationCode = LocationCode(40323);
    /// An unknown pipeline stage name.
    pub const UNKNOWN_STAGE: LocationCode = LocationCode(40324);
    /// `$group` without `_id`.
    pub const GROUP_ID: LocationCode = LocationCode(15955);
    /// An unknown `$group` accumulator.
    pub const GROUP_ACCUMULATOR: LocationCode = LocationCode(15952);
    /// A `$group` field that is not an accumulator object.
    pub const GROUP_FIELD: LocationCode = LocationCode(40234);
    /// A `$group` output field containing a dot.
    pub const GROUP_FIELD_DOT: LocationCode = LocationCode(40235);
    /// `$limit` not a positive integer.
    pub const LIMIT: LocationCode = LocationCode(15958);
    /// `$skip` not a non-negative integer.
    pub const SKIP: LocationCode = LocationCode(15956);
    /// `$sort` stage empty or with a bad direction.
    pub const SORT_STAGE: LocationCode = LocationCode(15976);
    /// `$match` argument not a document.
    pub const MATCH_STAGE: LocationCode = LocationCode(15959);
    /// `$count` field name invalid.
    pub const COUNT_STAGE: LocationCode = LocationCode(40156);
    /// `$unwind` malformed.
    pub const UNWIND_STAGE: LocationCode = LocationCode(28812);
    /// `$unwind` path without a leading `$`.
    pub const UNWIND_PATH: LocationCode = LocationCode(28818);
    /// `$replaceRoot` produced a non-document.
    pub const REPLACE_ROOT: LocationCode = LocationCode(40228);
    /// `$facet` malformed.
    pub const FACET_STAGE: LocationCode = LocationCode(40169);
    /// `$sample` malformed.
    pub const SAMPLE_STAGE: LocationCode = LocationCode(28745);
    /// `$project` empty or otherwise malformed.
    pub const PROJECT_STAGE: LocationCode = LocationCode(51272);
    /// An invalid regular expression.
    pub const INVALID_REGEX: LocationCode = LocationCode(51091);
    /// A projection `$slice` argument that is malformed.
    pub const PROJECTION_SLICE: LocationCode = LocationCode(28724);
    /// A field path that is malformed (`$` alone, empty component, ...).
    pub const FIELD_PATH: LocationCode = LocationCode(16872);
    /// A variable that is not defined.
    pub const UNDEFINED_VARIABLE: LocationCode = LocationCode(17276);
    /// `$split` with an empty delimiter.
    pub const SPLIT_DELIMITER: LocationCode = LocationCode(40087);
    /// A `$substr*` index that cuts a UTF-8 character.
    pub const SUBSTR_UTF8: LocationCode = LocationCode(28656);
    /// An unsupported time zone.
    pub const TIMEZONE: LocationCode = LocationCode(40485);
    /// A `$dateToString` format that is invalid.
    pub const DATE_FORMAT: LocationCode = LocationCode(18536);
    /// An object expression field name starting with `$` or containing a dot.
    pub const OBJECT_FIELD: LocationCode = LocationCode(16410);
}

/// Why a filter, projection, sort, update or pipeline could not be parsed or applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// `BadValue` (2): a well-formed request with a meaningless value.
    #[error("{0}")]
    BadValue(String),
    /// `FailedToParse` (9): an update document that does not parse.
    #[error("{0}")]
    FailedToParse(String),
    /// `TypeMismatch` (14): an operator applied to a value of the wrong type.
    #[error("{0}")]
    TypeMismatch(String),
    /// `PathNotViable` (28): an update path that runs through a scalar.
    #[error("{0}")]
    PathNotViable(String),
    /// `ConflictingUpdateOperators` (40): two update operators touch overlapping paths.
    #[error("{0}")]
    ConflictingUpdateOperators(String),
    /// `DollarPrefixedFieldName` (52): a `$` field in a replacement document.
    #[error("{0}")]
    DollarPrefixedFieldName(String),
    /// `EmptyFieldName` (56): an update path with an empty component.
    #[error("{0}")]
    EmptyFieldName(String),
    /// `ImmutableField` (66): an update that changes `_id`.
    #[error("{0}")]
    ImmutableField(String),
    /// `IndexNotFound` (27): a query that needs an index that does not exist (`$text`).
    #[error("{0}")]
    IndexNotFound(String),
    /// `InvalidOptions` (72): a stage that an update pipeline does not allow.
    #[error("{0}")]
    InvalidOptions(String),
    /// `InvalidPipelineOperator` (168): an unknown expression operator.
    #[error("{0}")]
    InvalidPipelineOperator(String),
    /// `ConversionFailure` (241): a `$to*` conversion that cannot be done.
    #[error("{0}")]
    ConversionFailure(String),
    /// `Location31253`: an inclusion in an exclusion projection.
    #[error("{0}")]
    InclusionInExclusion(String),
    /// `Location31254`: an exclusion in an inclusion projection.
    #[error("{0}")]
    ExclusionInInclusion(String),
    /// `Location31250`: two projection paths that overlap.
    #[error("{0}")]
    ProjectionPathCollision(String),
    /// A numbered MongoDB assertion raised by one call site (see [`LocationCode`]).
    #[error("{message}")]
    Location {
        /// The call site's code.
        code: LocationCode,
        /// The message MongoDB gives for it.
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

impl QueryError {
    /// A numbered-assertion error.
    pub fn location(code: LocationCode, message: impl Into<String>) -> Self {
        QueryError::Location {
            code,
            message: message.into(),
        }
    }

    /// The MongoDB code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::BadValue(_) => ErrorCode::BAD_VALUE,
            QueryError::FailedToParse(_) => ErrorCode::FAILED_TO_PARSE,
            QueryError::TypeMismatch(_) => ErrorCode::TYPE_MISMATCH,
            QueryError::PathNotViable(_) => ErrorCode(28),
            QueryError::ConflictingUpdateOperators(_) => ErrorCode(40),
            QueryError::DollarPrefixedFieldName(_) => ErrorCode::DOLLAR_PREFIXED_FIELD_NAME,
            QueryError::EmptyFieldName(_) => ErrorCode::EMPTY_FIELD_NAME,
            QueryError::ImmutableField(_) => ErrorCode::IMMUTABLE_FIELD,
            QueryError::IndexNotFound(_) => ErrorCode::INDEX_NOT_FOUND,
            QueryError::InvalidOptions(_) => ErrorCode::INVALID_OPTIONS,
            QueryError::InvalidPipelineOperator(_) => ErrorCode(168),
            QueryError::ConversionFailure(_) => ErrorCode(241),
            QueryError::InclusionInExclusion(_) => ErrorCode(31253),
            QueryError::ExclusionInInclusion(_) => ErrorCode(31254),
            QueryError::ProjectionPathCollision(_) => ErrorCode(31250),
            QueryError::Location { code, .. } => ErrorCode(code.0),
        }
    }

    pub(crate) fn bad_value(message: impl Into<String>) -> Self {
        QueryError::BadValue(message.into())
    }

    /// An error by MongoDB code: the named codes this crate has a variant for get that variant,
    /// any other code is a numbered assertion. Lets one table of operator specs name its codes.
    pub(crate) fn coded(code: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        match code {
            2 => QueryError::BadValue(message),
            9 => QueryError::FailedToParse(message),
            14 => QueryError::TypeMismatch(message),
            241 => QueryError::ConversionFailure(message),
            other => QueryError::location(LocationCode(other), message),
        }
    }
}

impl From<QueryError> for CommandError {
    fn from(err: QueryError) -> Self {
        CommandError::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_code_and_message() {
        let err = QueryError::bad_value("unknown operator: $foo");
        let command: CommandError = err.into();
        assert_eq!(command.code, ErrorCode::BAD_VALUE);
        assert_eq!(command.errmsg, "unknown operator: $foo");
        let located = QueryError::location(LocationCode::UNKNOWN_STAGE, "x");
        assert_eq!(CommandError::from(located).code, ErrorCode(40324));
        assert_eq!(
            QueryError::coded(9, "x"),
            QueryError::FailedToParse("x".into())
        );
        assert_eq!(QueryError::coded(241, "x").code().0, 241);
        assert_eq!(QueryError::coded(5166403, "x").code().0, 5166403);
    }

    #[test]
    fn variant_codes_are_distinct() {
        let all = [
            QueryError::BadValue(String::new()),
            QueryError::FailedToParse(String::new()),
            QueryError::TypeMismatch(String::new()),
            QueryError::PathNotViable(String::new()),
            QueryError::ConflictingUpdateOperators(String::new()),
            QueryError::DollarPrefixedFieldName(String::new()),
            QueryError::EmptyFieldName(String::new()),
            QueryError::ImmutableField(String::new()),
            QueryError::IndexNotFound(String::new()),
            QueryError::InvalidOptions(String::new()),
            QueryError::InvalidPipelineOperator(String::new()),
            QueryError::ConversionFailure(String::new()),
            QueryError::InclusionInExclusion(String::new()),
            QueryError::ExclusionInInclusion(String::new()),
            QueryError::ProjectionPathCollision(String::new()),
        ];
        let mut seen = std::collections::HashSet::new();
        for err in &all {
            assert!(seen.insert(err.code().0), "duplicate code {}", err.code().0);
        }
    }
}
