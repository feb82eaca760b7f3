//! MongoDB's error codes and the one error type that crosses every boundary: a command error.
//!
//! Every crate has its own typed error enum; each converts into [`CommandError`] in exactly one
//! `From` impl, and this is the only shape that goes on the wire (`{ok: 0, errmsg, code,
//! codeName, errorLabels?}`). Codes and names follow MongoDB's `error_codes.yml` so drivers react
//! to them as they would to a real server.

use bson::{Bson, Document, doc};

/// A MongoDB error code. Wire compatibility: the number is what drivers see in `code`, and
/// [`ErrorCode::name`] what they see in `codeName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i32);

macro_rules! codes {
    ($( $konst:ident = $num:literal, $name:literal; )*) => {
        impl ErrorCode {
            $(
                #[doc = concat!("`", $name, "` (", stringify!($num), ").")]
                pub const $konst: ErrorCode = ErrorCode($num);
            )*
            /// Every code this crate names, for uniqueness checks and documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode($num)),*];

            /// The `codeName` MongoDB uses for this code, if this table names it.
            pub fn known_name(self) -> Option<&'static str> {
                match self.0 {
                    $($num => Some($name),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    INTERNAL_ERROR = 1, "InternalError";
    BAD_VALUE = 2, "BadValue";
    NO_SUCH_KEY = 4, "NoSuchKey";
    HOST_UNREACHABLE = 6, "HostUnreachable";
    HOST_NOT_FOUND = 7, "HostNotFound";
    UNKNOWN_ERROR = 8, "UnknownError";
    FAILED_TO_PARSE = 9, "FailedToParse";
    UNAUTHORIZED = 13, "Unauthorized";
    TYPE_MISMATCH = 14, "TypeMismatch";
    ILLEGAL_OPERATION = 20, "IllegalOperation";
    NAMESPACE_NOT_FOUND = 26, "NamespaceNotFound";
    INDEX_NOT_FOUND = 27, "IndexNotFound";
    CURSOR_NOT_FOUND = 43, "CursorNotFound";
    NAMESPACE_EXISTS = 48, "NamespaceExists";
    MAX_TIME_MS_EXPIRED = 50, "MaxTimeMSExpired";
    DOLLAR_PREFIXED_FIELD_NAME = 52, "DollarPrefixedFieldName";
    EMPTY_FIELD_NAME = 56, "EmptyFieldName";
    COMMAND_NOT_FOUND = 59, "CommandNotFound";
    SHARD_KEY_NOT_FOUND = 61, "ShardKeyNotFound";
    WRITE_CONCERN_TIMEOUT = 64, "WriteConcernTimeout";
    IMMUTABLE_FIELD = 66, "ImmutableField";
    CANNOT_CREATE_INDEX = 67, "CannotCreateIndex";
    SHARD_NOT_FOUND = 70, "ShardNotFound";
    REPLICA_SET_NOT_FOUND = 71, "ReplicaSetNotFound";
    INVALID_OPTIONS = 72, "InvalidOptions";
    INVALID_NAMESPACE = 73, "InvalidNamespace";
    NETWORK_TIMEOUT = 89, "NetworkTimeout";
    SHUTDOWN_IN_PROGRESS = 91, "ShutdownInProgress";
    OPERATION_FAILED = 96, "OperationFailed";
    CONFLICTING_OPERATION_IN_PROGRESS = 117, "ConflictingOperationInProgress";
    NAMESPACE_NOT_SHARDED = 118, "NamespaceNotSharded";
    INVALID_ID_FIELD = 53, "InvalidIdField";
    COMMAND_NOT_SUPPORTED = 115, "CommandNotSupported";
    PRIMARY_STEPPED_DOWN = 189, "PrimarySteppedDown";
    NOT_IMPLEMENTED = 238, "NotImplemented";
    PROTOCOL_ERROR = 17, "ProtocolError";
    NOT_WRITABLE_PRIMARY = 10107, "NotWritablePrimary";
    BSON_OBJECT_TOO_LARGE = 10334, "BSONObjectTooLarge";
    DUPLICATE_KEY = 11000, "DuplicateKey";
    STALE_CONFIG = 13388, "StaleConfig";
    INVALID_BSON = 22, "InvalidBSON";
    LOCATION16979 = 16979, "Location16979";
    OP_QUERY_UNSUPPORTED = 5739101, "Location5739101";
    INVALID_LENGTH = 16, "InvalidLength";
    DATABASE_DIFFER_CASE = 13297, "DatabaseDifferCase";
    INDEX_OPTIONS_CONFLICT = 85, "IndexOptionsConflict";
    INDEX_KEY_SPECS_CONFLICT = 86, "IndexKeySpecsConflict";
    DOCUMENT_VALIDATION_FAILURE = 121, "DocumentValidationFailure";
    CANNOT_INDEX_PARALLEL_ARRAYS = 171, "CannotIndexParallelArrays";
    INVALID_INDEX_SPECIFICATION_OPTION = 197, "InvalidIndexSpecificationOption";
    ALREADY_INITIALIZED = 23, "AlreadyInitialized";
    PATH_NOT_VIABLE = 28, "PathNotViable";
    CONFLICTING_UPDATE_OPERATORS = 40, "ConflictingUpdateOperators";
    INVALID_PIPELINE_OPERATOR = 168, "InvalidPipelineOperator";
    CONVERSION_FAILURE = 241, "ConversionFailure";
    QUERY_EXCEEDED_MEMORY_LIMIT = 292, "QueryExceededMemoryLimitNoDiskUseAllowed";
    PROJECTION_PATH_COLLISION = 31250, "Location31250";
    INCLUSION_IN_EXCLUSION = 31253, "Location31253";
    TRANSACTION_TOO_OLD = 225, "TransactionTooOld";
    NOT_PRIMARY_NO_SECONDARY_OK = 13435, "NotPrimaryNoSecondaryOk";
    NOT_PRIMARY_OR_SECONDARY = 13436, "NotPrimaryOrSecondary";
    INTERRUPTED_DUE_TO_REPL_STATE_CHANGE = 11602, "InterruptedDueToReplStateChange";
    INTERRUPTED_AT_SHUTDOWN = 11600, "InterruptedAtShutdown";
    NOT_YET_INITIALIZED = 94, "NotYetInitialized";
    INVALID_REPLICA_SET_CONFIG = 93, "InvalidReplicaSetConfig";
    NEW_REPLICA_SET_CONFIGURATION_INCOMPATIBLE = 103, "NewReplicaSetConfigurationIncompatible";
    NODE_NOT_FOUND = 74, "NodeNotFound";
    EXCEEDED_TIME_LIMIT = 262, "ExceededTimeLimit";
    UNSATISFIABLE_WRITE_CONCERN = 100, "UnsatisfiableWriteConcern";
    SOCKET_EXCEPTION = 9001, "SocketException";
    FAILED_TO_SATISFY_READ_PREFERENCE = 133, "FailedToSatisfyReadPreference";
    EXCLUSION_IN_INCLUSION = 31254, "Location31254";
    ZONE_STILL_IN_USE = 163, "ZoneStillInUse";
    ZONE_NOT_FOUND = 177, "ZoneNotFound";
    RANGE_OVERLAP_CONFLICT = 178, "RangeOverlapConflict";
    MOVE_PRIMARY_IN_PROGRESS = 319, "MovePrimaryInProgress";
}

impl ErrorCode {
    /// The `codeName` for this code: the table's name, or `Location<code>` as MongoDB names
    /// codes raised at a single source location.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.known_name() {
            Some(name) => std::borrow::Cow::Borrowed(name),
            None => std::borrow::Cow::Owned(format!("Location{}", self.0)),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// A failed command, as MongoDB reports it. This is the single error shape on the client wire
/// and on the internal RPC: crates convert their own errors into it in one `From` impl.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {errmsg}")]
pub struct CommandError {
    /// The MongoDB code.
    pub code: ErrorCode,
    /// The human-readable message (`errmsg`).
    pub errmsg: String,
    /// `errorLabels`, e.g. `RetryableWriteError`. Empty for most errors.
    pub labels: Vec<String>,
    /// Extra fields copied into the reply (e.g. `keyPattern`/`keyValue` of a DuplicateKey).
    pub extra: Document,
}

/// `errInfo.reason` of a shard-key-change refusal, shared by the shard that raises it and the
/// router that acts on it.
pub const SHARD_KEY_CHANGE_REASON: &str = "shardKeyChange";

/// The result type of anything that can fail as a command.
pub type Result<T, E = CommandError> = std::result::Result<T, E>;

impl CommandError {
    /// A command error with a code and message.
    pub fn new(code: ErrorCode, errmsg: impl Into<String>) -> Self {
        CommandError {
            code,
            errmsg: errmsg.into(),
            labels: Vec::new(),
            extra: Document::new(),
        }
    }

    /// `BadValue` (2), the catch-all for a well-formed request with a meaningless value.
    pub fn bad_value(errmsg: impl Into<String>) -> Self {
        Self::new(ErrorCode::BAD_VALUE, errmsg)
    }

    /// `TypeMismatch` (14) for a command field of the wrong BSON type.
    pub fn type_mismatch(field: &str, expected: &str, got: &Bson) -> Self {
        Self::new(
            ErrorCode::TYPE_MISMATCH,
            format!(
                "BSON field '{field}' is the wrong type '{}', expected type '{expected}'",
                type_name(got)
            ),
        )
    }

    /// `FailedToParse` (9).
    pub fn failed_to_parse(errmsg: impl Into<String>) -> Self {
        Self::new(ErrorCode::FAILED_TO_PARSE, errmsg)
    }

    /// `InternalError` (1): a bug or an invariant that held elsewhere but not here.
    pub fn internal(errmsg: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL_ERROR, errmsg)
    }

    /// `Unauthorized` (13) for an administrative command sent to a database other than `admin`,
    /// worded as MongoDB words it.
    pub fn admin_only(command: &str) -> Self {
        Self::new(
            ErrorCode::UNAUTHORIZED,
            format!("{command} may only be run against the admin database."),
        )
    }

    /// The IDL parser's error for a missing required field (`Location40414`), as MongoDB
    /// words it.
    pub fn missing_field(command: &str, field: &str) -> Self {
        Self::new(
            ErrorCode(40414),
            format!("BSON field '{command}.{field}' is missing but a required field"),
        )
    }

    /// A shard's refusal of an update that would change a document's shard key: ImmutableField,
    /// marked with `errInfo.reason` so the router can tell it from every other ImmutableField
    /// (and move the document in a retryable write) without reading the message.
    pub fn shard_key_change(errmsg: impl Into<String>) -> Self {
        let mut error = Self::new(ErrorCode::IMMUTABLE_FIELD, errmsg);
        error
            .extra
            .insert("errInfo", doc! {"reason": SHARD_KEY_CHANGE_REASON});
        error
    }

    /// Whether this is a [`CommandError::shard_key_change`] refusal.
    pub fn is_shard_key_change(&self) -> bool {
        self.code == ErrorCode::IMMUTABLE_FIELD
            && self
                .extra
                .get_document("errInfo")
                .is_ok_and(|info| info.get_str("reason") == Ok(SHARD_KEY_CHANGE_REASON))
    }

    /// Adds an error label (e.g. `RetryableWriteError`).
    pub fn with_label(mut self, label: &str) -> Self {
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_owned());
        }
        self
    }

    /// The reply document: `{ok: 0.0, errmsg, code, codeName, errorLabels?, ...extra}`.
    pub fn to_document(&self) -> Document {
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.errmsg.clone(),
            "code": self.code.0,
            "codeName": self.code.name().into_owned(),
        };
        if !self.labels.is_empty() {
            reply.insert("errorLabels", self.labels.clone());
        }
        for (key, value) in &self.extra {
            reply.insert(key.clone(), value.clone());
        }
        reply
    }

    /// Reads an error back from a reply document; `None` when the reply is a success
    /// (`ok` is 1). A reply without a usable `ok` counts as a failure with InternalError.
    pub fn from_reply(reply: &Document) -> Option<CommandError> {
        let ok = match reply.get("ok") {
            Some(Bson::Double(v)) => *v == 1.0,
            Some(Bson::Int32(v)) => *v == 1,
            Some(Bson::Int64(v)) => *v == 1,
            Some(Bson::Boolean(v)) => *v,
            _ => false,
        };
        if ok {
            return None;
        }
        let code = match reply.get("code") {
            Some(Bson::Int32(v)) => *v,
            Some(Bson::Int64(v)) => i32::try_from(*v).unwrap_or(1),
            Some(Bson::Double(v)) => *v as i32,
            _ => ErrorCode::INTERNAL_ERROR.0,
        };
        let errmsg = reply
            .get_str("errmsg")
            .unwrap_or("reply without errmsg")
            .to_owned();
        let labels = match reply.get_array("errorLabels") {
            Ok(list) => list
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut extra = Document::new();
        for (key, value) in reply {
            if !matches!(
                key.as_str(),
                "ok" | "errmsg" | "code" | "codeName" | "errorLabels"
            ) {
                extra.insert(key.clone(), value.clone());
            }
        }
        Some(CommandError {
            code: ErrorCode(code),
            errmsg,
            labels,
            extra,
        })
    }
}

/// MongoDB's name for a BSON value's type, as used in error messages and `$type`.
pub fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert!(code.known_name().is_some(), "code {} has no name", code.0);
        }
    }

    #[test]
    fn shard_key_changes_are_marked_not_worded() {
        let change = CommandError::shard_key_change("anything");
        assert!(change.is_shard_key_change());
        let back = CommandError::from_reply(&change.to_document()).unwrap();
        assert!(back.is_shard_key_change());
        let other = CommandError::new(ErrorCode::IMMUTABLE_FIELD, "the shard key differs");
        assert!(!other.is_shard_key_change());
    }

    #[test]
    fn unnamed_codes_are_named_by_location() {
        assert_eq!(ErrorCode(40414).name(), "Location40414");
        assert_eq!(ErrorCode::DUPLICATE_KEY.name(), "DuplicateKey");
    }

    #[test]
    fn error_round_trips_through_a_reply() {
        let err = CommandError::new(ErrorCode::DUPLICATE_KEY, "dup").with_label("X");
        let reply = err.to_document();
        assert_eq!(reply.get_str("codeName").unwrap(), "DuplicateKey");
        let back = CommandError::from_reply(&reply).unwrap();
        assert_eq!(back, err);
        assert!(CommandError::from_reply(&doc! {"ok": 1.0}).is_none());
    }
}
