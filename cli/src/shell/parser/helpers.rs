//! Shell type helpers (`ObjectId('..')`, `ISODate('..')`, `NumberLong(..)`, `UUID('..')`,
//! `Timestamp(t, i)`, ...) and Extended JSON wrappers (`{$oid: ..}`, `{$date: ..}`, ...),
//! turned into typed BSON values.
//!
//! Errors are plain messages; the parser attaches the position of the helper call.

use std::str::FromStr;

use bson::{
    Binary, Bson, DateTime, Decimal128, Document, Timestamp, oid::ObjectId, spec::BinarySubtype,
};

use super::regex_bson;

/// Builds the value of a helper call such as `ObjectId('..')`; the error is a plain message
/// that the caller positions.
pub(super) fn helper_value(name: &str, has_args: bool, args: Vec<Bson>) -> Result<Bson, String> {
    let mut args = args.into_iter();
    let first = args.next();
    let second = args.next();
    if args.next().is_some() {
        return Err(format!("too many arguments to {name}()"));
    }
    match name {
        "ObjectId" => object_id(first),
        "ISODate" | "Date" => date(first),
        "NumberLong" | "Long" => long(first),
        "NumberInt" | "Int32" => int32(first),
        "Double" => double(first),
        "NumberDecimal" | "Decimal128" => decimal(first),
        "UUID" => uuid(first),
        "Timestamp" => timestamp(first, second),
        "BinData" => bin_data(first, second),
        "Binary" => binary_from_base64(first, second),
        "MinKey" | "MaxKey" if first.is_none() => Ok(if name == "MinKey" {
            Bson::MinKey
        } else {
            Bson::MaxKey
        }),
        _ if !has_args => Err(format!("{name} is not a value")),
        _ => Err(format!("unexpected arguments to {name}()")),
    }
}

fn object_id(arg: Option<Bson>) -> Result<Bson, String> {
    match arg {
        None => Ok(Bson::ObjectId(ObjectId::new())),
        Some(Bson::String(hex)) => ObjectId::parse_str(&hex)
            .map(Bson::ObjectId)
            .map_err(|_| format!("invalid ObjectId '{hex}': expected 24 hex characters")),
        Some(_) => Err("ObjectId() takes a hex string".to_string()),
    }
}

fn date(arg: Option<Bson>) -> Result<Bson, String> {
    match arg {
        None => Ok(Bson::DateTime(DateTime::now())),
        Some(Bson::String(text)) => parse_date(&text)
            .map(Bson::DateTime)
            .ok_or_else(|| format!("invalid date '{text}'")),
        Some(Bson::Int32(millis)) => Ok(Bson::DateTime(DateTime::from_millis(i64::from(millis)))),
        Some(Bson::Int64(millis)) => Ok(Bson::DateTime(DateTime::from_millis(millis))),
        Some(_) => Err("a date takes an ISO-8601 string or milliseconds".to_string()),
    }
}

/// Parses the ISO-8601 forms mongosh accepts: full RFC 3339, a missing `Z`, or a bare date.
pub fn parse_date(text: &str) -> Option<DateTime> {
    let candidates = [
        text.to_string(),
        format!("{text}Z"),
        format!("{text}T00:00:00Z"),
        format!("{text}:00Z"),
    ];
    candidates
        .iter()
        .find_map(|candidate| DateTime::parse_rfc3339_str(candidate).ok())
}

fn long(arg: Option<Bson>) -> Result<Bson, String> {
    match arg {
        None => Ok(Bson::Int64(0)),
        Some(Bson::String(text)) => text
            .trim()
            .parse::<i64>()
            .map(Bson::Int64)
            .map_err(|_| format!("invalid NumberLong '{text}'")),
        Some(Bson::Int32(value)) => Ok(Bson::Int64(i64::from(value))),
        Some(Bson::Int64(value)) => Ok(Bson::Int64(value)),
        Some(_) => Err("NumberLong() takes an integer or a string".to_string()),
    }
}

fn int32(arg: Option<Bson>) -> Result<Bson, String> {
    match arg {
        None => Ok(Bson::Int32(0)),
        Some(Bson::String(text)) => text
            .trim()
            .parse::<i32>()
            .map(Bson::Int32)
            .map_err(|_| format!("invalid NumberInt '{text}'")),
        Some(Bson::Int32(value)) => Ok(Bson::Int32(value)),
        Some(_) => Err("NumberInt() takes a 32-bit integer or a string".to_string()),
    }
}

fn double(arg: Option<Bson>) -> Result<Bson, String> {
    match arg {
        Some(Bson::Int32(value)) => Ok(Bson::Double(f64::from(value))),
        #[allow(clippy::cast_precision_loss)] // reason: the user asked for a double.
        Some(Bson::Int64(value)) => Ok(Bson::Double(value as f64)),
        Some(Bson::Double(value)) => Ok(Bson::Double(value)),
        Some(Bson::String(text)) => parse_double(&text).map(Bson::Double),
        _ => Err("Double() takes a number".to_string()),
    }
}

fn parse_double(text: &str) -> Result<f64, String> {
    match text {
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("invalid double '{text}'")),
    }
}

fn decimal(arg: Option<Bson>) -> Result<Bson, String> {
    let text = match arg {
        Some(Bson::String(text)) => text,
        Some(Bson::Int32(value)) => value.to_string(),
        Some(Bson::Int64(value)) => value.to_string(),
        None => "0".to_string(),
        Some(_) => return Err("NumberDecimal() takes a string".to_string()),
    };
    Decimal128::from_str(&text)
        .map(Bson::Decimal128)
        .map_err(|_| format!("invalid NumberDecimal '{text}'"))
}

fn uuid(arg: Option<Bson>) -> Result<Bson, String> {
    let Some(Bson::String(text)) = arg else {
        return Err("UUID() takes a string".to_string());
    };
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let bytes = decode_hex(&hex).filter(|bytes| bytes.len() == 16);
    match bytes {
        Some(bytes) => Ok(Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes,
        })),
        None => Err(format!("invalid UUID '{text}'")),
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|idx| u8::from_str_radix(&hex[idx..idx + 2], 16).ok())
        .collect()
}

fn timestamp(first: Option<Bson>, second: Option<Bson>) -> Result<Bson, String> {
    let (time, increment) = match (first, second) {
        (Some(Bson::Document(doc)), None) => (doc.get("t").cloned(), doc.get("i").cloned()),
        (Some(time), Some(increment)) => (Some(time), Some(increment)),
        (None, None) => (Some(Bson::Int32(0)), Some(Bson::Int32(0))),
        _ => return Err("Timestamp() takes (t, i) or ({t, i})".to_string()),
    };
    let time = time
        .as_ref()
        .and_then(as_u32)
        .ok_or("invalid Timestamp t")?;
    let increment = increment
        .as_ref()
        .and_then(as_u32)
        .ok_or("invalid Timestamp i")?;
    Ok(Bson::Timestamp(Timestamp { time, increment }))
}

fn as_u32(value: &Bson) -> Option<u32> {
    match value {
        Bson::Int32(v) => u32::try_from(*v).ok(),
        Bson::Int64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn bin_data(first: Option<Bson>, second: Option<Bson>) -> Result<Bson, String> {
    binary_from_base64(second, first)
}

fn binary_from_base64(data: Option<Bson>, subtype: Option<Bson>) -> Result<Bson, String> {
    let Some(Bson::String(base64)) = data else {
        return Err("binary data must be a base64 string".to_string());
    };
    let subtype = match subtype {
        None => 0,
        Some(value) => as_u32(&value)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or("invalid binary subtype")?,
    };
    Binary::from_base64(&base64, BinarySubtype::from(subtype))
        .map(Bson::Binary)
        .map_err(|_| format!("invalid base64 '{base64}'"))
}

/// Converts `{$oid: ..}`-style canonical/relaxed Extended JSON wrappers into typed values;
/// other documents are returned unchanged.
pub(super) fn convert_extended_json(doc: Document) -> Result<Bson, String> {
    let Some(first_key) = doc.keys().next().cloned() else {
        return Ok(Bson::Document(doc));
    };
    let single = doc.len() == 1;
    let value = doc.get(&first_key).cloned().unwrap_or(Bson::Null);
    let converted = match first_key.as_str() {
        "$oid" if single => object_id(Some(value)),
        "$date" if single => extended_date(value),
        "$numberLong" if single => string_arg(value, "$numberLong").and_then(long),
        "$numberInt" if single => string_arg(value, "$numberInt").and_then(int32),
        "$numberDouble" if single => string_arg(value, "$numberDouble").and_then(double),
        "$numberDecimal" if single => string_arg(value, "$numberDecimal").and_then(decimal),
        "$uuid" if single => uuid(Some(value)),
        "$binary" => extended_binary(&doc),
        "$timestamp" if single => extended_timestamp(value),
        "$regularExpression" if single => extended_regex(value),
        "$minKey" if single => Ok(Bson::MinKey),
        "$maxKey" if single => Ok(Bson::MaxKey),
        _ => return Ok(Bson::Document(doc)),
    };
    converted.map_err(|message| format!("invalid Extended JSON {first_key}: {message}"))
}

fn string_arg(value: Bson, key: &str) -> Result<Option<Bson>, String> {
    match value {
        Bson::String(_) => Ok(Some(value)),
        _ => Err(format!("{key} takes a string")),
    }
}

fn extended_date(value: Bson) -> Result<Bson, String> {
    match value {
        Bson::Int64(_) | Bson::Int32(_) | Bson::String(_) => date(Some(value)),
        _ => Err("expected an ISO-8601 string or {$numberLong: '..'}".to_string()),
    }
}

fn extended_binary(doc: &Document) -> Result<Bson, String> {
    match (doc.get("$binary"), doc.get("$type")) {
        (Some(Bson::Document(inner)), None) if doc.len() == 1 => {
            let data = inner.get("base64").cloned();
            let subtype = match inner.get("subType") {
                Some(Bson::String(hex)) => Some(hex_subtype(hex)?),
                _ => None,
            };
            binary_from_base64(data, subtype)
        }
        (Some(data @ Bson::String(_)), Some(Bson::String(hex))) if doc.len() == 2 => {
            binary_from_base64(Some(data.clone()), Some(hex_subtype(hex)?))
        }
        _ => Err("expected {$binary: {base64: '..', subType: '..'}}".to_string()),
    }
}

fn hex_subtype(hex: &str) -> Result<Bson, String> {
    u8::from_str_radix(hex, 16)
        .map(|v| Bson::Int32(i32::from(v)))
        .map_err(|_| format!("invalid subType '{hex}'"))
}

fn extended_timestamp(value: Bson) -> Result<Bson, String> {
    match value {
        Bson::Document(_) => timestamp(Some(value), None),
        _ => Err("expected {t: .., i: ..}".to_string()),
    }
}

fn extended_regex(value: Bson) -> Result<Bson, String> {
    let Bson::Document(inner) = value else {
        return Err("expected {pattern: '..', options: '..'}".to_string());
    };
    let pattern = inner
        .get_str("pattern")
        .map_err(|_| "missing pattern".to_string())?;
    let options = inner.get_str("options").unwrap_or("");
    Ok(regex_bson(pattern, options))
}
