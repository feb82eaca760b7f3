//! `$convert` and its shortcuts (`$toInt`, `$toString`, ...): MongoDB's conversion table, with
//! a ConversionFailure (241) for every conversion the table lacks or a value cannot make, which
//! `$convert`'s `onError` catches. `onNull` answers for a null or missing input.
//!
//! Decimal128 values are computed through doubles (the bson crate has no decimal arithmetic), so
//! a decimal converts exactly only when a double holds it exactly.

use bson::oid::ObjectId;
use bson::{Bson, Decimal128};

use super::date::{self, Zone};
use super::named::{eval_slot, slot};
use super::ops::format_double;
use super::{Ctx, Expr, Num, Op, Value, eval, nullish, truthy, type_of};
use crate::error::{QueryError, Result};

/// A `$convert` target type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
    /// A real BSON type (or "missing") that nothing converts to.
    Other(&'static str),
}

/// BSON type names and numbers as `$type` reports them, with the target each denotes.
const TYPES: &[(&str, i32, Target)] = &[
    ("double", 1, Target::Double),
    ("string", 2, Target::String),
    ("object", 3, Target::Other("object")),
    ("array", 4, Target::Other("array")),
    ("binData", 5, Target::Other("binData")),
    ("undefined", 6, Target::Other("undefined")),
    ("objectId", 7, Target::ObjectId),
    ("bool", 8, Target::Bool),
    ("date", 9, Target::Date),
    ("null", 10, Target::Other("null")),
    ("regex", 11, Target::Other("regex")),
    ("dbPointer", 12, Target::Other("dbPointer")),
    ("javascript", 13, Target::Other("javascript")),
    ("symbol", 14, Target::Other("symbol")),
    (
        "javascriptWithScope",
        15,
        Target::Other("javascriptWithScope"),
    ),
    ("int", 16, Target::Int),
    ("timestamp", 17, Target::Other("timestamp")),
    ("long", 18, Target::Long),
    ("decimal", 19, Target::Decimal),
    ("minKey", -1, Target::Other("minKey")),
    ("maxKey", 127, Target::Other("maxKey")),
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Other(name) => name,
            known => TYPES
                .iter()
                .find(|(_, _, t)| *t == known)
                .map_or("missing", |(name, ..)| *name),
        }
    }
}

/// `$convert`'s `to`: a type name or number (FailedToParse 9 / BadValue 2 when invalid).
fn target_of(value: &Bson) -> Result<Target> {
    if let Bson::String(name) = value {
        if name == "missing" {
            return Ok(Target::Other("missing"));
        }
        return TYPES
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(.., target)| *target)
            .ok_or_else(|| QueryError::bad_value(format!("Unknown type name: {name}")));
    }
    let Some(number) = Num::of(value) else {
        return Err(QueryError::FailedToParse(format!(
            "$convert's 'to' argument must be a string or number, but is {}",
            type_of(Some(value))
        )));
    };
    let code = number
        .as_whole()
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| {
            QueryError::FailedToParse("In $convert, numeric 'to' argument is not an integer".into())
        })?;
    TYPES
        .iter()
        .find(|(_, c, _)| *c == code)
        .map(|(.., target)| *target)
        .ok_or_else(|| {
            QueryError::FailedToParse(format!(
                "In $convert, numeric value for 'to' does not correspond to a BSON type: {code}"
            ))
        })
}

/// `{$convert: {input, to, onError, onNull}}`.
pub(super) fn eval_convert(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let to = eval_slot(slots, 1, ctx)?;
    let input = eval_slot(slots, 0, ctx)?;
    let target = match &to {
        value if nullish(value) => None,
        Some(value) => Some(target_of(value)?),
        None => None,
    };
    let input = match input {
        value if nullish(&value) => {
            return match slot(slots, 3) {
                Some(on_null) => eval(on_null, ctx),
                None => Ok(Some(Bson::Null)),
            };
        }
        Some(value) => value,
        None => return Ok(Some(Bson::Null)),
    };
    let Some(target) = target else {
        return Ok(Some(Bson::Null));
    };
    match convert_to(&input, target) {
        Ok(converted) => Ok(Some(converted)),
        Err(QueryError::ConversionFailure(message)) => match slot(slots, 2) {
            Some(on_error) => eval(on_error, ctx),
            None => Err(QueryError::ConversionFailure(message)),
        },
        Err(other) => Err(other),
    }
}

/// `$toInt`, `$toString`, ...: `$convert` without `onError`/`onNull`.
pub(super) fn shortcut(op: Op, args: Vec<Value>) -> Result<Value> {
    let target = match op {
        Op::ToString => Target::String,
        Op::ToInt => Target::Int,
        Op::ToLong => Target::Long,
        Op::ToDouble => Target::Double,
        Op::ToDecimal => Target::Decimal,
        Op::ToBool => Target::Bool,
        Op::ToObjectId => Target::ObjectId,
        _ => Target::Date,
    };
    match args.into_iter().next().flatten() {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
        Some(value) => convert_to(&value, target).map(Some),
    }
}

fn unsupported(value: &Bson, target: Target) -> QueryError {
    QueryError::ConversionFailure(format!(
        "Unsupported conversion from {} to {} in $convert with no onError value",
        type_of(Some(value)),
        target.name()
    ))
}

fn overflow(shown: impl std::fmt::Display) -> QueryError {
    QueryError::ConversionFailure(format!(
        "Conversion would overflow target type in $convert with no onError value: {shown}"
    ))
}

/// Converts a non-null value to `target` by MongoDB's conversion table.
pub(crate) fn convert_to(value: &Bson, target: Target) -> Result<Bson> {
    match target {
        Target::Bool => Ok(Bson::Boolean(match value {
            Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
                truthy(Some(value))
            }
            Bson::Decimal128(_) => truthy(Some(value)),
            _ => true,
        })),
        Target::Double => to_double(value).map(Bson::Double),
        Target::String => to_string(value),
        Target::ObjectId => match value {
            Bson::ObjectId(_) => Ok(value.clone()),
            Bson::String(text) => ObjectId::parse_str(text)
                .map(Bson::ObjectId)
                .map_err(|err| {
                    QueryError::ConversionFailure(format!(
                        "Failed to parse objectId '{text}' in $convert with no onError value: {err}"
                    ))
                }),
            other => Err(unsupported(other, target)),
        },
        Target::Date => to_date(value).map(Bson::DateTime),
        Target::Int => {
            let whole = to_whole(value, target)?;
            i32::try_from(whole)
                .map(Bson::Int32)
                .map_err(|_| overflow(whole))
        }
        Target::Long => to_whole(value, target).map(Bson::Int64),
        Target::Decimal => to_decimal(value).map(Bson::Decimal128),
        Target::Other(_) => Err(unsupported(value, target)),
    }
}

fn parse_failure(text: &str) -> QueryError {
    QueryError::ConversionFailure(format!(
        "Failed to parse number '{text}' in $convert with no onError value"
    ))
}

/// Strings parse as numbers, except hexadecimal (which MongoDB rejects explicitly).
fn check_not_hex(text: &str) -> Result<()> {
    if text.starts_with("0x") {
        return Err(QueryError::ConversionFailure(format!(
            "Illegal hexadecimal input in $convert with no onError value: {text}"
        )));
    }
    Ok(())
}

fn decimal_as_f64(value: &Decimal128) -> f64 {
    value.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

fn to_double(value: &Bson) -> Result<f64> {
    match value {
        Bson::Double(v) => Ok(*v),
        Bson::Int32(v) => Ok(f64::from(*v)),
        Bson::Int64(v) => Ok(*v as f64),
        Bson::Boolean(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Bson::DateTime(d) => Ok(d.timestamp_millis() as f64),
        Bson::Decimal128(d) => {
            let text = d.to_string();
            let float = decimal_as_f64(d);
            if float.is_infinite() && !text.contains("Inf") {
                return Err(overflow(text));
            }
            Ok(float)
        }
        Bson::String(text) => {
            check_not_hex(text)?;
            text.parse::<f64>().map_err(|_| parse_failure(text))
        }
        other => Err(unsupported(other, Target::Double)),
    }
}

/// A double's integer part for `int`/`long`, refusing NaN, infinity and out-of-range values.
fn whole_of_double(float: f64, target: Target) -> Result<i64> {
    if float.is_nan() {
        return Err(QueryError::ConversionFailure(
            "Attempt to convert NaN value to integer type in $convert with no onError value".into(),
        ));
    }
    if float.is_infinite() {
        return Err(QueryError::ConversionFailure(
            "Attempt to convert infinity value to integer type in $convert with no onError value"
                .into(),
        ));
    }
    let in_range = match target {
        Target::Int => (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&float),
        _ => float >= i64::MIN as f64 && float < 9_223_372_036_854_775_808.0,
    };
    if !in_range {
        return Err(overflow(format_double(float)));
    }
    Ok(float.trunc() as i64)
}

fn to_whole(value: &Bson, target: Target) -> Result<i64> {
    match value {
        Bson::Int32(v) => Ok(i64::from(*v)),
        Bson::Int64(v) => Ok(*v),
        Bson::Boolean(b) => Ok(i64::from(*b)),
        Bson::Double(v) => whole_of_double(*v, target),
        Bson::Decimal128(d) => whole_of_double(decimal_as_f64(d), target),
        Bson::DateTime(d) if target == Target::Long => Ok(d.timestamp_millis()),
        Bson::String(text) => {
            check_not_hex(text)?;
            let whole = text.parse::<i64>().map_err(|_| parse_failure(text))?;
            if target == Target::Int && i32::try_from(whole).is_err() {
                return Err(parse_failure(text));
            }
            Ok(whole)
        }
        other => Err(unsupported(other, target)),
    }
}

/// A decimal from a double keeps 15 significant digits, as MongoDB's conversion does.
fn to_decimal(value: &Bson) -> Result<Decimal128> {
    let text = match value {
        Bson::Decimal128(d) => return Ok(*d),
        Bson::Int32(v) => v.to_string(),
        Bson::Int64(v) => v.to_string(),
        Bson::Boolean(b) => i32::from(*b).to_string(),
        Bson::DateTime(d) => d.timestamp_millis().to_string(),
        Bson::Double(v) if v.is_nan() => "NaN".to_owned(),
        Bson::Double(v) if v.is_infinite() => {
            if *v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        }
        Bson::Double(v) => {
            let scientific = format!("{v:.14e}");
            match scientific.split_once('e') {
                Some((mantissa, exponent)) => format!("{mantissa}E{exponent}"),
                None => scientific,
            }
        }
        Bson::String(text) => {
            check_not_hex(text)?;
            text.clone()
        }
        other => return Err(unsupported(other, Target::Decimal)),
    };
    text.parse::<Decimal128>().map_err(|_| parse_failure(&text))
}

fn to_string(value: &Bson) -> Result<Bson> {
    let text = match value {
        Bson::String(s) => s.clone(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Int32(v) => v.to_string(),
        Bson::Int64(v) => v.to_string(),
        Bson::Double(v) if *v == 0.0 && v.is_sign_negative() => "-0".to_owned(),
        Bson::Double(v) => format_double(*v),
        Bson::Decimal128(d) => d.to_string(),
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::DateTime(d) => date::iso_string(*d),
        other => return Err(unsupported(other, Target::String)),
    };
    Ok(Bson::String(text))
}

fn to_date(value: &Bson) -> Result<bson::DateTime> {
    let millis = match value {
        Bson::DateTime(d) => return Ok(*d),
        Bson::Timestamp(ts) => i64::from(ts.time) * 1000,
        Bson::ObjectId(oid) => return Ok(oid.timestamp()),
        Bson::Int64(v) => *v,
        Bson::Double(v) => whole_of_double(*v, Target::Long)?,
        Bson::Decimal128(d) => whole_of_double(decimal_as_f64(d), Target::Long)?,
        Bson::String(text) => super::date_parts::parse_date_string(text, &Zone::utc(), None)?,
        other => return Err(unsupported(other, Target::Date)),
    };
    Ok(bson::DateTime::from_millis(millis))
}
