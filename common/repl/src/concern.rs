//! Write concern and the session identity of retryable writes, parsed from a command. Pure.

use std::time::Duration;

use bson::{Bson, Document};
use shoal_common::{CommandError, ErrorCode};

use crate::types::SessionStatement;

/// How long a write waits for its concern when the client set no `wtimeout`: MongoDB waits
/// forever; a bound keeps a request from pinning resources across a long outage.
pub const WRITE_CONCERN_WAIT_MAX: Duration = Duration::from_secs(120);

/// What acknowledgement a write asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum W {
    /// `w: 0`: no acknowledgement.
    Unacknowledged,
    /// `w: N` (N >= 1) members.
    Members(u32),
    /// `w: "majority"` (the default).
    Majority,
}

/// A parsed `writeConcern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteConcern {
    /// `w`.
    pub w: W,
    /// `wtimeout`; `None` for no limit (bounded by [`WRITE_CONCERN_WAIT_MAX`]).
    pub wtimeout: Option<Duration>,
    /// `j`: every acknowledged entry is already synced to the log, so it changes nothing.
    pub j: bool,
}

impl Default for WriteConcern {
    fn default() -> WriteConcern {
        WriteConcern {
            w: W::Majority,
            wtimeout: None,
            j: true,
        }
    }
}

fn bad(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::FAILED_TO_PARSE, message)
}

impl WriteConcern {
    /// The concern of `command` (MongoDB's default, majority, when absent).
    pub fn of(command: &Document) -> Result<WriteConcern, CommandError> {
        let mut concern = WriteConcern::default();
        let Some(value) = command.get("writeConcern") else {
            return Ok(concern);
        };
        let Bson::Document(spec) = value else {
            return Err(CommandError::type_mismatch("writeConcern", "object", value));
        };
        for (key, value) in spec {
            match (key.as_str(), value) {
                ("w", Bson::String(mode)) if mode == "majority" => concern.w = W::Majority,
                ("w", Bson::String(tag)) => {
                    return Err(CommandError::new(
                        ErrorCode::UNSATISFIABLE_WRITE_CONCERN,
                        format!(
                            "No write concern mode named '{tag}' found in replica set configuration"
                        ),
                    ));
                }
                ("w", number) => {
                    let n =
                        integer(number).ok_or_else(|| bad("w must be a number or \"majority\""))?;
                    concern.w = match n {
                        0 => W::Unacknowledged,
                        1..=50 => W::Members(n as u32),
                        _ => return Err(bad(format!("w: {n} is out of range"))),
                    };
                }
                ("wtimeout" | "wtimeoutMS", number) => {
                    let ms = integer(number).ok_or_else(|| bad("wtimeout must be a number"))?;
                    concern.wtimeout = (ms > 0).then(|| Duration::from_millis(ms.unsigned_abs()));
                }
                ("j", Bson::Boolean(j)) => concern.j = *j,
                ("j", _) => return Err(bad("j must be a boolean")),
                ("fsync", _) | ("provenance", _) => {}
                (other, _) => {
                    return Err(bad(format!("unrecognized write concern field: {other}")));
                }
            }
        }
        Ok(concern)
    }

    /// The longest the write waits for its concern.
    pub fn deadline(&self) -> Duration {
        self.wtimeout
            .unwrap_or(WRITE_CONCERN_WAIT_MAX)
            .min(WRITE_CONCERN_WAIT_MAX)
    }

    /// The `writeConcernError` for a concern not met in time.
    pub fn timeout_error(&self) -> Document {
        bson::doc! {
            "code": ErrorCode::WRITE_CONCERN_TIMEOUT.0,
            "codeName": "WriteConcernTimeout",
            "errmsg": "waiting for replication timed out",
            "errInfo": {"wtimeout": true},
        }
    }
}

fn integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

/// The retryable-write identity of `command`: `lsid.id` and `txnNumber` (and the first of
/// `stmtIds`, which routers set per batch), or `None` for a plain write.
pub fn session_statement(command: &Document) -> Option<SessionStatement> {
    let txn_number = command.get("txnNumber").and_then(integer)?;
    let lsid = command.get_document("lsid").ok()?;
    let id = match lsid.get("id")? {
        Bson::Binary(binary) => binary.bytes.clone(),
        _ => return None,
    };
    if command.contains_key("startTransaction") || command.contains_key("autocommit") {
        return None;
    }
    let stmt = command
        .get_array("stmtIds")
        .ok()
        .and_then(|ids| ids.first())
        .or_else(|| command.get("stmtId"))
        .and_then(integer)
        .and_then(|s| i32::try_from(s).ok())
        .unwrap_or(0);
    let stmts = command
        .get_array("stmtIds")
        .map_or(0, |ids| statements_digest(ids));
    Some(SessionStatement {
        lsid: id,
        txn_number,
        stmt,
        stmts,
    })
}

/// FNV-1a over the statement ids: the identity of a batch's statement list.
fn statements_digest(ids: &[Bson]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        let value = integer(id).unwrap_or(i64::MIN);
        for byte in value.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use bson::{Binary, doc, spec::BinarySubtype};

    use super::*;

    #[test]
    fn parses_write_concerns() {
        assert_eq!(WriteConcern::of(&doc! {}).unwrap(), WriteConcern::default());
        let c =
            WriteConcern::of(&doc! {"writeConcern": {"w": 2, "wtimeout": 500, "j": true}}).unwrap();
        assert_eq!(c.w, W::Members(2));
        assert_eq!(c.wtimeout, Some(Duration::from_millis(500)));
        assert_eq!(
            WriteConcern::of(&doc! {"writeConcern": {"w": 0}})
                .unwrap()
                .w,
            W::Unacknowledged
        );
        assert_eq!(
            WriteConcern::of(&doc! {"writeConcern": {"w": "majority", "wtimeout": 0}}).unwrap(),
            WriteConcern::default()
        );
        assert!(WriteConcern::of(&doc! {"writeConcern": {"w": "dc1"}}).is_err());
        assert!(WriteConcern::of(&doc! {"writeConcern": {"w": true}}).is_err());
        assert!(WriteConcern::of(&doc! {"writeConcern": 1}).is_err());
        assert_eq!(
            WriteConcern::default()
                .timeout_error()
                .get_i32("code")
                .unwrap(),
            64
        );
    }

    #[test]
    fn finds_session_statements() {
        let lsid = doc! {"id": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]}};
        let command =
            doc! {"insert": "c", "lsid": lsid.clone(), "txnNumber": 5_i64, "stmtIds": [3, 4]};
        let statement = session_statement(&command).unwrap();
        assert_eq!((statement.txn_number, statement.stmt), (5, 3));
        assert!(session_statement(&doc! {"insert": "c", "lsid": lsid.clone()}).is_none());
        let in_txn = doc! {"insert": "c", "lsid": lsid, "txnNumber": 1_i64, "autocommit": false};
        assert!(session_statement(&in_txn).is_none());
    }
}
