//! Arithmetic operators (`$add` ... `$log10`, `$round`, `$trunc`). Kept apart from the other
//! positional operators because their null and type rules differ per operator in MongoDB 7.0:
//! `$add`/`$multiply` stop at the first null or non-number in argument order, `$subtract`,
//! `$divide` and `$mod` answer null only when an argument is not a number and one is nullish,
//! and the type errors are TypeMismatch (14) where 7.0 reports it, numbered assertions elsewhere.

use bson::Bson;

use super::{Num, Op, Value, nullish, op_name, type_label};
use crate::error::{LocationCode, QueryError, Result};

fn number_arg(op: Op, value: &Value, code: i32) -> Result<Num> {
    value.as_ref().and_then(Num::of).ok_or_else(|| {
        QueryError::coded(
            code,
            format!(
                "{} only supports numeric types, not {}",
                op_name(op),
                type_label(value)
            ),
        )
    })
}

pub(super) fn arithmetic(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::Add => add(args),
        Op::Multiply => multiply(&args),
        Op::Subtract => subtract(&args[0], &args[1]),
        Op::Divide => divide(&args[0], &args[1]),
        Op::Mod => modulo(&args[0], &args[1]),
        Op::Log => log(&args[0], &args[1]),
        _ => {
            if args.iter().any(nullish) {
                return Ok(Some(Bson::Null));
            }
            power(
                number_arg(op, &args[0], 28762)?,
                number_arg(op, &args[1], 28763)?,
            )
        }
    }
}

fn add(args: Vec<Value>) -> Result<Value> {
    let mut sum = Num::I32(0);
    let mut date_millis: Option<i64> = None;
    for arg in &args {
        if nullish(arg) {
            return Ok(Some(Bson::Null));
        }
        match arg {
            Some(Bson::DateTime(date)) if date_millis.is_none() => {
                date_millis = Some(date.timestamp_millis())
            }
            Some(Bson::DateTime(_)) => {
                return Err(QueryError::location(
                    LocationCode(16612),
                    "only one date allowed in an $add expression",
                ));
            }
            other => {
                let number = other.as_ref().and_then(Num::of).ok_or_else(|| {
                    QueryError::TypeMismatch(format!(
                        "$add only supports numeric or date types, not {}",
                        type_label(other)
                    ))
                })?;
                sum = sum.add(number);
            }
        }
    }
    Ok(Some(match date_millis {
        Some(millis) => Bson::DateTime(bson::DateTime::from_millis(
            millis.saturating_add(round_millis(sum)),
        )),
        None => sum.to_bson(),
    }))
}

fn multiply(args: &[Value]) -> Result<Value> {
    let mut product = Num::I32(1);
    for arg in args {
        if nullish(arg) {
            return Ok(Some(Bson::Null));
        }
        product = product.mul(number_arg(Op::Multiply, arg, 14)?);
    }
    Ok(Some(product.to_bson()))
}

fn round_millis(number: Num) -> i64 {
    match number {
        Num::F64(v) => v.round() as i64,
        Num::I32(v) => i64::from(v),
        Num::I64(v) => v,
    }
}

/// Milliseconds from a number the way MongoDB's `coerceToLong` does: doubles truncate.
fn truncate_millis(number: Num) -> i64 {
    match number {
        Num::F64(v) => v.trunc() as i64,
        Num::I32(v) => i64::from(v),
        Num::I64(v) => v,
    }
}

fn subtract(left: &Value, right: &Value) -> Result<Value> {
    let numbers = (
        left.as_ref().and_then(Num::of),
        right.as_ref().and_then(Num::of),
    );
    if let (Some(a), Some(b)) = numbers {
        return Ok(Some(a.sub(b).to_bson()));
    }
    if nullish(left) || nullish(right) {
        return Ok(Some(Bson::Null));
    }
    match (left, right) {
        (Some(Bson::DateTime(a)), Some(Bson::DateTime(b))) => Ok(Some(Bson::Int64(
            a.timestamp_millis().saturating_sub(b.timestamp_millis()),
        ))),
        (Some(Bson::DateTime(a)), _) => match numbers.1 {
            Some(number) => Ok(Some(Bson::DateTime(bson::DateTime::from_millis(
                a.timestamp_millis().saturating_sub(truncate_millis(number)),
            )))),
            None => Err(QueryError::TypeMismatch(format!(
                "can't $subtract {} from Date",
                type_label(right)
            ))),
        },
        _ => Err(QueryError::TypeMismatch(format!(
            "can't $subtract {} from {}",
            type_label(right),
            type_label(left)
        ))),
    }
}

fn divide(left: &Value, right: &Value) -> Result<Value> {
    match (
        left.as_ref().and_then(Num::of),
        right.as_ref().and_then(Num::of),
    ) {
        (Some(dividend), Some(divisor)) => {
            if divisor.as_f64() == 0.0 {
                return Err(QueryError::bad_value("can't $divide by zero"));
            }
            Ok(Some(Bson::Double(dividend.as_f64() / divisor.as_f64())))
        }
        _ if nullish(left) || nullish(right) => Ok(Some(Bson::Null)),
        _ => Err(QueryError::TypeMismatch(format!(
            "$divide only supports numeric types, not {} and {}",
            type_label(left),
            type_label(right)
        ))),
    }
}

fn modulo(left: &Value, right: &Value) -> Result<Value> {
    let (dividend, divisor) = match (
        left.as_ref().and_then(Num::of),
        right.as_ref().and_then(Num::of),
    ) {
        (Some(dividend), Some(divisor)) => (dividend, divisor),
        _ if nullish(left) || nullish(right) => return Ok(Some(Bson::Null)),
        _ => {
            return Err(QueryError::location(
                LocationCode(16611),
                format!(
                    "$mod only supports numeric types, not {} and {}",
                    type_label(left),
                    type_label(right)
                ),
            ));
        }
    };
    if divisor.as_f64() == 0.0 {
        return Err(QueryError::location(
            LocationCode::MOD_BY_ZERO,
            "can't $mod by zero",
        ));
    }
    // A double divisor with an integral value computes in integers, as MongoDB does.
    let result = match (dividend, divisor) {
        (Num::F64(_), _) => Num::F64(dividend.as_f64() % divisor.as_f64()),
        (_, Num::F64(v)) if v.fract() != 0.0 => Num::F64(dividend.as_f64() % v),
        (Num::I32(a), Num::I32(b)) => Num::I32(a.wrapping_rem(b)),
        (Num::I32(a), Num::F64(b)) => Num::I32(a.wrapping_rem(b as i32)),
        _ => {
            let a = dividend.as_whole().unwrap_or(0);
            let b = divisor.as_whole().unwrap_or(1);
            Num::I64(a.wrapping_rem(b))
        }
    };
    Ok(Some(result.to_bson()))
}

fn log(value: &Value, base: &Value) -> Result<Value> {
    if nullish(value) || nullish(base) {
        return Ok(Some(Bson::Null));
    }
    let number = value.as_ref().and_then(Num::of).ok_or_else(|| {
        QueryError::location(
            LocationCode(28756),
            format!("$log's argument must be numeric, not {}", type_label(value)),
        )
    })?;
    let base_number = base.as_ref().and_then(Num::of).ok_or_else(|| {
        QueryError::location(
            LocationCode(28757),
            format!("$log's base must be numeric, not {}", type_label(base)),
        )
    })?;
    let (x, b) = (number.as_f64(), base_number.as_f64());
    if x <= 0.0 {
        return Err(QueryError::location(
            LocationCode(28758),
            format!("$log's argument must be a positive number, but is {x}"),
        ));
    }
    if b <= 0.0 || b == 1.0 {
        return Err(QueryError::location(
            LocationCode(28759),
            format!("$log's base must be a positive number not equal to 1, but is {b}"),
        ));
    }
    Ok(Some(Bson::Double(x.ln() / b.ln())))
}

fn power(base: Num, exponent: Num) -> Result<Value> {
    let both_int = !matches!(base, Num::F64(_)) && !matches!(exponent, Num::F64(_));
    if both_int {
        let b = base.as_whole().unwrap_or(0);
        let e = exponent.as_whole().unwrap_or(0);
        if b == 0 && e < 0 {
            return Err(QueryError::location(
                LocationCode(28764),
                "$pow cannot take a base of 0 and a negative exponent",
            ));
        }
        if let Ok(e32) = u32::try_from(e)
            && let Some(result) = b.checked_pow(e32)
        {
            let keep_int = matches!((base, exponent), (Num::I32(_), Num::I32(_)));
            return Ok(Some(Num::from_i64_narrow(result, keep_int).to_bson()));
        }
    } else if base.as_f64() == 0.0 && exponent.as_f64() < 0.0 {
        return Err(QueryError::location(
            LocationCode(28764),
            "$pow cannot take a base of 0 and a negative exponent",
        ));
    }
    Ok(Some(Bson::Double(base.as_f64().powf(exponent.as_f64()))))
}

pub(super) fn unary_math(op: Op, args: Vec<Value>) -> Result<Value> {
    let arg = &args[0];
    if nullish(arg) {
        return Ok(Some(Bson::Null));
    }
    let number = number_arg(op, arg, 28765)?;
    let float = number.as_f64();
    let result = match op {
        Op::Abs => match number {
            Num::I32(v) => v
                .checked_abs()
                .map_or(Num::I64(i64::from(v).abs()), Num::I32),
            Num::I64(v) => Num::I64(v.checked_abs().ok_or_else(|| {
                QueryError::location(LocationCode(28680), "can't take $abs of long long min")
            })?),
            Num::F64(v) => Num::F64(v.abs()),
        },
        Op::Ceil => map_float(number, f64::ceil),
        Op::Floor => map_float(number, f64::floor),
        Op::Sqrt if float < 0.0 => {
            return Err(QueryError::location(
                LocationCode(28714),
                "$sqrt's argument must be greater than or equal to 0",
            ));
        }
        Op::Sqrt => Num::F64(float.sqrt()),
        Op::Exp => Num::F64(float.exp()),
        Op::Ln if float <= 0.0 => {
            return Err(QueryError::location(
                LocationCode(28766),
                format!("$ln's argument must be a positive number, but is {float}"),
            ));
        }
        Op::Ln => Num::F64(float.ln()),
        Op::Log10 if float <= 0.0 => {
            return Err(QueryError::location(
                LocationCode(28761),
                format!("$log10's argument must be a positive number, but is {float}"),
            ));
        }
        _ => Num::F64(float.log10()),
    };
    Ok(Some(result.to_bson()))
}

fn map_float(number: Num, f: fn(f64) -> f64) -> Num {
    match number {
        Num::F64(v) => Num::F64(f(v)),
        integral => integral,
    }
}

/// `$round` and `$trunc` with an optional place in [-20, 100].
pub(super) fn round(op: Op, args: Vec<Value>) -> Result<Value> {
    if nullish(&args[0]) {
        return Ok(Some(Bson::Null));
    }
    let number = number_arg(op, &args[0], 51081)?;
    let place = match args.get(1) {
        None => 0,
        Some(place) if nullish(place) => return Ok(Some(Bson::Null)),
        Some(place) => {
            let Some(whole) = place.as_ref().and_then(Num::of).and_then(Num::as_whole) else {
                return Err(QueryError::location(
                    LocationCode(51082),
                    format!(
                        "precision argument to  {} must be a integral value",
                        op_name(op)
                    ),
                ));
            };
            if !(-20..=100).contains(&whole) {
                return Err(QueryError::location(
                    LocationCode(51083),
                    format!(
                        "cannot apply {} with precision value {whole} value must be in [-20, 100]",
                        op_name(op)
                    ),
                ));
            }
            whole
        }
    };
    let rounder: fn(f64) -> f64 = if op == Op::Round {
        f64::round_ties_even
    } else {
        f64::trunc
    };
    let result = match number {
        Num::F64(v) => Num::F64(scaled(v, place, rounder)),
        integral if place >= 0 => integral,
        Num::I32(v) => Num::I32(scaled(f64::from(v), place, rounder) as i32),
        other => Num::I64(scaled(other.as_f64(), place, rounder) as i64),
    };
    Ok(Some(result.to_bson()))
}

fn scaled(value: f64, place: i64, rounder: fn(f64) -> f64) -> f64 {
    let factor = 10f64.powi(i32::try_from(place).unwrap_or(0));
    let result = rounder(value * factor) / factor;
    if result.is_finite() { result } else { value }
}
