//! The expression operators themselves: parsing of the object-form operators (`$cond`,
//! `$filter`, `$map`, ...) and evaluation of every operator once its arguments are known. Kept
//! apart from the tree walk in `expr.rs` so each operator family reads as one small function.

use std::cmp::Ordering;

use bson::{Bson, Document};
use shoal_common::bsonorder;

use super::{
    Ctx, Expr, Num, Op, TrimKind, Value, compare_values, eval, eval_or_null, nullish as is_nullish,
    op_name, parse_expr, truthy, type_label, type_of, with_var,
};
use super::{arith, convert, date, named, sets, strings};
use crate::error::{LocationCode, QueryError, Result};

/// What `$trim` removes without `chars`: MongoDB's list, not Unicode's whitespace property.
const TRIM_DEFAULT_CHARS: &[char] = &[
    '\0', ' ', '\t', '\n', '\u{0B}', '\u{0C}', '\r', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2001}',
    '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}',
    '\u{200A}',
];

/// The most elements `$range` may produce, so one expression cannot exhaust memory.
const RANGE_ELEMENTS_MAX: usize = 1_000_000;

fn located(code: i32, message: impl Into<String>) -> QueryError {
    QueryError::location(LocationCode(code), message)
}

// ---------------------------------------------------------------------------------------------
// Parsing of object-form operators
// ---------------------------------------------------------------------------------------------

/// Reads an operator's object argument: one slot per allowed field, in `allowed` order.
fn object_args<'a>(name: &str, arg: &'a Bson, allowed: &[&str]) -> Result<Vec<Option<&'a Bson>>> {
    let Bson::Document(spec) = arg else {
        return Err(QueryError::location(
            LocationCode::EXPRESSION_SPEC,
            format!("{name} only supports an object as its argument"),
        ));
    };
    let mut slots = vec![None; allowed.len()];
    for (key, value) in spec {
        let Some(index) = allowed.iter().position(|a| a == key) else {
            return Err(QueryError::location(
                LocationCode::EXPRESSION_SPEC,
                format!("Unrecognized parameter to {name}: {key}"),
            ));
        };
        slots[index] = Some(value);
    }
    Ok(slots)
}

fn required<'a>(name: &str, field: &str, slot: Option<&'a Bson>) -> Result<&'a Bson> {
    slot.ok_or_else(|| {
        QueryError::location(
            LocationCode::EXPRESSION_SPEC,
            format!("Missing '{field}' parameter to {name}"),
        )
    })
}

fn optional(slot: Option<&Bson>, scope: &mut Vec<String>) -> Result<Option<Box<Expr>>> {
    slot.map(|value| parse_expr(value, scope).map(Box::new))
        .transpose()
}

fn variable_name(name: &str, slot: Option<&Bson>) -> Result<String> {
    let Some(value) = slot else {
        return Ok("this".to_owned());
    };
    let Bson::String(var) = value else {
        return Err(located(16866, format!("{name} 'as' must be a string")));
    };
    let valid_start = var
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || !c.is_ascii());
    let valid_rest = var.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !valid_start || !valid_rest {
        return Err(located(
            16867,
            format!("'{var}' starts with an invalid character for a user variable name"),
        ));
    }
    Ok(var.clone())
}

/// Parses a body with extra variables in scope.
fn parse_scoped(value: &Bson, scope: &mut Vec<String>, names: &[&str]) -> Result<Expr> {
    let depth = scope.len();
    scope.extend(names.iter().map(|n| (*n).to_owned()));
    let parsed = parse_expr(value, scope);
    scope.truncate(depth);
    parsed
}

fn required_expr(
    name: &str,
    field: &str,
    slot: Option<&Bson>,
    scope: &mut Vec<String>,
) -> Result<Box<Expr>> {
    Ok(Box::new(parse_expr(required(name, field, slot)?, scope)?))
}

pub(super) fn parse_named(name: &str, arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    match name {
        "$cond" => parse_cond(arg, scope),
        "$switch" => parse_switch(arg, scope),
        "$filter" | "$map" | "$reduce" => parse_iteration(name, arg, scope),
        "$let" => parse_let(arg, scope),
        "$dateToString" => {
            let slots = object_args(name, arg, &["date", "format", "timezone", "onNull"])?;
            Ok(Expr::DateToString {
                date: required_expr(name, "date", slots[0], scope)?,
                format: optional(slots[1], scope)?,
                timezone: optional(slots[2], scope)?,
                on_null: optional(slots[3], scope)?,
            })
        }
        "$trim" | "$ltrim" | "$rtrim" => {
            let kind = match name {
                "$ltrim" => TrimKind::Start,
                "$rtrim" => TrimKind::End,
                _ => TrimKind::Both,
            };
            let slots = object_args(name, arg, &["input", "chars"])?;
            Ok(Expr::Trim {
                kind,
                input: required_expr(name, "input", slots[0], scope)?,
                chars: optional(slots[1], scope)?,
            })
        }
        "$zip" => sets::parse_zip(arg, scope),
        "$sortArray" => sets::parse_sort_array(arg, scope),
        "$getField" => sets::parse_get_field(arg, scope),
        "$setField" | "$unsetField" => sets::parse_set_field(name, arg, scope),
        _ => match named::lookup(name) {
            Some(op) => named::parse(op, arg, scope),
            None => Err(QueryError::InvalidPipelineOperator(format!(
                "Unrecognized expression '{name}'"
            ))),
        },
    }
}

/// `$filter`, `$map` and `$reduce`: an input array and a body with the element in scope.
fn parse_iteration(name: &str, arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    match name {
        "$filter" => {
            let slots = object_args(name, arg, &["input", "as", "cond", "limit"])?;
            let var = variable_name(name, slots[1])?;
            let cond = parse_scoped(required(name, "cond", slots[2])?, scope, &[&var])?;
            Ok(Expr::Filter {
                input: required_expr(name, "input", slots[0], scope)?,
                cond: Box::new(cond),
                limit: optional(slots[3], scope)?,
                var,
            })
        }
        "$map" => {
            let slots = object_args(name, arg, &["input", "as", "in"])?;
            let var = variable_name(name, slots[1])?;
            let body = parse_scoped(required(name, "in", slots[2])?, scope, &[&var])?;
            Ok(Expr::Map {
                input: required_expr(name, "input", slots[0], scope)?,
                body: Box::new(body),
                var,
            })
        }
        _ => {
            let slots = object_args(name, arg, &["input", "initialValue", "in"])?;
            let body = parse_scoped(required(name, "in", slots[2])?, scope, &["value", "this"])?;
            Ok(Expr::Reduce {
                input: required_expr(name, "input", slots[0], scope)?,
                initial: required_expr(name, "initialValue", slots[1], scope)?,
                body: Box::new(body),
            })
        }
    }
}

fn parse_cond(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let parts: [&Bson; 3] = match arg {
        Bson::Array(items) if items.len() == 3 => [&items[0], &items[1], &items[2]],
        Bson::Array(items) => {
            return Err(located(
                16020,
                format!(
                    "Expression $cond takes exactly 3 arguments. {} were passed in.",
                    items.len()
                ),
            ));
        }
        Bson::Document(_) => {
            let slots = object_args("$cond", arg, &["if", "then", "else"])?;
            [
                required("$cond", "if", slots[0])?,
                required("$cond", "then", slots[1])?,
                required("$cond", "else", slots[2])?,
            ]
        }
        _ => {
            return Err(located(
                16020,
                "Expression $cond takes exactly 3 arguments. 1 were passed in.",
            ));
        }
    };
    Ok(Expr::Cond(
        Box::new(parse_expr(parts[0], scope)?),
        Box::new(parse_expr(parts[1], scope)?),
        Box::new(parse_expr(parts[2], scope)?),
    ))
}

fn parse_switch(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let slots = object_args("$switch", arg, &["branches", "default"])?;
    let Some(Bson::Array(branch_specs)) = slots[0] else {
        return Err(located(40061, "$switch expected an array for 'branches'"));
    };
    let mut branches = Vec::with_capacity(branch_specs.len());
    for spec in branch_specs {
        let slots = object_args("$switch branch", spec, &["case", "then"])?;
        let case = parse_expr(required("$switch", "case", slots[0])?, scope)?;
        let then = parse_expr(required("$switch", "then", slots[1])?, scope)?;
        branches.push((case, then));
    }
    Ok(Expr::Switch {
        branches,
        default: optional(slots[1], scope)?,
    })
}

fn parse_let(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let slots = object_args("$let", arg, &["vars", "in"])?;
    let Some(Bson::Document(var_specs)) = slots[0] else {
        return Err(located(
            16874,
            "invalid parameter: expected an object (vars)",
        ));
    };
    let mut vars = Vec::with_capacity(var_specs.len());
    for (name, value) in var_specs {
        let checked = variable_name("$let", Some(&Bson::String(name.clone())))?;
        vars.push((checked, parse_expr(value, scope)?));
    }
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let body = parse_scoped(required("$let", "in", slots[1])?, scope, &names)?;
    Ok(Expr::Let {
        vars,
        body: Box::new(body),
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation of object-form operators
// ---------------------------------------------------------------------------------------------

pub(super) fn eval_named(expr: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    match expr {
        Expr::Switch { branches, default } => eval_switch(branches, default.as_deref(), ctx),
        Expr::Filter {
            input,
            var,
            cond,
            limit,
        } => eval_filter(input, var, cond, limit.as_deref(), ctx),
        Expr::Map { input, var, body } => eval_map(input, var, body, ctx),
        Expr::Reduce {
            input,
            initial,
            body,
        } => eval_reduce(input, initial, body, ctx),
        Expr::Let { vars, body } => eval_let(vars, body, ctx),
        Expr::DateToString {
            date,
            format,
            timezone,
            on_null,
        } => date::eval_date_to_string(
            date,
            format.as_deref(),
            timezone.as_deref(),
            on_null.as_deref(),
            ctx,
        ),
        Expr::DatePart {
            part,
            date,
            timezone,
        } => date::eval_date_part(*part, date, timezone.as_deref(), ctx),
        Expr::Trim { kind, input, chars } => eval_trim(*kind, input, chars.as_deref(), ctx),
        Expr::Named(op, slots) => named::eval(*op, slots, ctx),
        Expr::Zip {
            inputs,
            defaults,
            longest,
        } => sets::eval_zip(inputs, defaults, *longest, ctx),
        Expr::SortArray { input, sort_by } => sets::eval_sort_array(input, sort_by, ctx),
        Expr::GetField { field, input } => sets::eval_get_field(field, input, ctx),
        Expr::SetField {
            field,
            input,
            value,
        } => sets::eval_set_field(field, input, value, ctx),
        Expr::Literal(_)
        | Expr::Field(_)
        | Expr::Var(..)
        | Expr::Object(_)
        | Expr::Array(_)
        | Expr::Op(..)
        | Expr::Cond(..) => super::eval(expr, ctx),
    }
}

fn eval_switch(
    branches: &[(Expr, Expr)],
    default: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    for (case, then) in branches {
        if truthy(eval(case, ctx)?.as_ref()) {
            return eval(then, ctx);
        }
    }
    match default {
        Some(default) => eval(default, ctx),
        None => Err(QueryError::location(
            LocationCode::SWITCH_NO_MATCH,
            "$switch could not find a matching branch for an input, and no default was specified.",
        )),
    }
}

fn eval_map(input: &Expr, var: &str, body: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    let Some(items) = array_input("$map", eval(input, ctx)?, 16883)? else {
        return Ok(Some(Bson::Null));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(with_var(ctx, var, item, |ctx| eval_or_null(body, ctx))?);
    }
    Ok(Some(Bson::Array(out)))
}

fn eval_let(vars: &[(String, Expr)], body: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    let mut values = Vec::with_capacity(vars.len());
    for (name, value_expr) in vars {
        values.push((name.clone(), eval_or_null(value_expr, ctx)?));
    }
    let depth = ctx.vars.len();
    ctx.vars.extend(values);
    let result = eval(body, ctx);
    ctx.vars.truncate(depth);
    result
}

/// An array argument: `Ok(None)` for null/missing, an error naming `code` for other types.
fn array_input(name: &str, value: Value, code: i32) -> Result<Option<Vec<Bson>>> {
    match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
        Some(Bson::Array(items)) => Ok(Some(items)),
        Some(other) => Err(located(
            code,
            format!(
                "input to {name} must be an array not {}",
                type_of(Some(&other))
            ),
        )),
    }
}

fn eval_filter(
    input: &Expr,
    var: &str,
    cond: &Expr,
    limit: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let Some(items) = array_input("$filter", eval(input, ctx)?, 28651)? else {
        return Ok(Some(Bson::Null));
    };
    let limit = match limit {
        None => usize::MAX,
        Some(limit_expr) => match eval(limit_expr, ctx)?
            .as_ref()
            .and_then(Num::of)
            .and_then(Num::as_whole)
        {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => return Err(located(327392, "$filter: limit must be a positive integer")),
        },
    };
    let mut out = Vec::new();
    for item in items {
        if out.len() >= limit {
            break;
        }
        let keep = with_var(ctx, var, item.clone(), |ctx| {
            Ok(truthy(eval(cond, ctx)?.as_ref()))
        })?;
        if keep {
            out.push(item);
        }
    }
    Ok(Some(Bson::Array(out)))
}

fn eval_reduce(input: &Expr, initial: &Expr, body: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    let Some(items) = array_input("$reduce", eval(input, ctx)?, 40080)? else {
        return Ok(Some(Bson::Null));
    };
    let mut accumulated = eval_or_null(initial, ctx)?;
    for item in items {
        let depth = ctx.vars.len();
        ctx.vars.push(("value".to_owned(), accumulated));
        ctx.vars.push(("this".to_owned(), item));
        let next = eval_or_null(body, ctx);
        ctx.vars.truncate(depth);
        accumulated = next?;
    }
    Ok(Some(accumulated))
}

fn eval_trim(
    kind: TrimKind,
    input: &Expr,
    chars: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let text = match eval(input, ctx)? {
        None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
        Some(Bson::String(text)) => text,
        Some(other) => {
            return Err(located(
                50699,
                format!(
                    "$trim requires its input to be a string, got {other} (of type {}) instead.",
                    type_of(Some(&other))
                ),
            ));
        }
    };
    let trim_set: Option<Vec<char>> = match chars {
        None => None,
        Some(chars_expr) => match eval(chars_expr, ctx)? {
            None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
            Some(Bson::String(set)) => Some(set.chars().collect()),
            Some(other) => {
                return Err(located(
                    50700,
                    format!(
                        "$trim requires 'chars' to be a string, got {}",
                        type_of(Some(&other))
                    ),
                ));
            }
        },
    };
    let is_trimmed = |c: char| match &trim_set {
        Some(set) => set.contains(&c),
        None => TRIM_DEFAULT_CHARS.contains(&c),
    };
    let trimmed = match kind {
        TrimKind::Both => text.trim_matches(is_trimmed),
        TrimKind::Start => text.trim_start_matches(is_trimmed),
        TrimKind::End => text.trim_end_matches(is_trimmed),
    };
    Ok(Some(Bson::String(trimmed.to_owned())))
}

// ---------------------------------------------------------------------------------------------
// Positional operators
// ---------------------------------------------------------------------------------------------

pub(super) fn apply_op(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::Add | Op::Subtract | Op::Multiply | Op::Divide | Op::Mod | Op::Pow | Op::Log => {
            arith::arithmetic(op, args)
        }
        Op::Abs | Op::Ceil | Op::Floor | Op::Sqrt | Op::Exp | Op::Ln | Op::Log10 => {
            arith::unary_math(op, args)
        }
        Op::Round | Op::Trunc => arith::round(op, args),
        Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte | Op::Cmp => {
            Ok(Some(compare_op(op, &args)))
        }
        Op::Not => Ok(Some(Bson::Boolean(!truthy(first(&args))))),
        Op::And | Op::Or | Op::IfNull => Err(QueryError::bad_value(
            "short-circuit operator evaluated eagerly",
        )),
        Op::Concat | Op::ToLower | Op::ToUpper | Op::Split | Op::Strcasecmp => string_op(op, args),
        Op::Substr | Op::SubstrCP | Op::StrLenCP | Op::StrLenBytes => substring_op(op, args),
        Op::Size | Op::ArrayElemAt | Op::In | Op::IsArray | Op::First | Op::Last => {
            array_access(op, args)
        }
        Op::ConcatArrays | Op::Slice | Op::ReverseArray | Op::Range | Op::SetUnion => {
            array_build(op, args)
        }
        Op::IndexOfBytes | Op::IndexOfCP => strings::index_of(op, args),
        Op::IndexOfArray => sets::index_of_array(args),
        Op::SetEquals
        | Op::SetIsSubset
        | Op::SetDifference
        | Op::SetIntersection
        | Op::AnyElementTrue
        | Op::AllElementsTrue => sets::set_op(op, args),
        Op::ObjectToArray | Op::ArrayToObject | Op::MergeObjects => object_op(op, args),
        Op::Max | Op::Min | Op::Sum | Op::Avg => group_like(op, args),
        Op::Type => Ok(Some(Bson::String(type_of(first(&args)).to_owned()))),
        Op::IsNumber => Ok(Some(Bson::Boolean(
            first(&args).and_then(Num::of).is_some(),
        ))),
        Op::ToString
        | Op::ToInt
        | Op::ToLong
        | Op::ToDouble
        | Op::ToDecimal
        | Op::ToBool
        | Op::ToDate
        | Op::ToObjectId => convert::shortcut(op, args),
    }
}

fn first(args: &[Value]) -> Option<&Bson> {
    args.first().and_then(Option::as_ref)
}

fn compare_op(op: Op, args: &[Value]) -> Bson {
    let order = compare_values(args[0].as_ref(), args[1].as_ref());
    let result = match op {
        Op::Eq => order == Ordering::Equal,
        Op::Ne => order != Ordering::Equal,
        Op::Gt => order == Ordering::Greater,
        Op::Gte => order != Ordering::Less,
        Op::Lt => order == Ordering::Less,
        Op::Lte => order != Ordering::Greater,
        _ => {
            return Bson::Int32(match order {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            });
        }
    };
    Bson::Boolean(result)
}

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

/// Formats a double the way MongoDB prints it ("1", "2.5", "1e+20", "NaN", "Infinity").
pub(crate) fn format_double(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e15).contains(&magnitude) {
        let text = format!("{value:e}");
        return match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        };
    }
    format!("{value}")
}

/// Converts a scalar to a string as `$toLower`/`$concat`-style operators do.
fn coerce_string(op: Op, value: &Value) -> Result<String> {
    match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(String::new()),
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => Ok(s.clone()),
        Some(Bson::Int32(v)) => Ok(v.to_string()),
        Some(Bson::Int64(v)) => Ok(v.to_string()),
        Some(Bson::Double(v)) => Ok(format_double(*v)),
        Some(Bson::Decimal128(d)) => Ok(d.to_string()),
        Some(Bson::DateTime(d)) => Ok(date::iso_string(*d)),
        Some(Bson::Timestamp(ts)) => Ok(format!("Timestamp({}, {})", ts.time, ts.increment)),
        Some(other) => Err(QueryError::location(
            LocationCode::STRING_ARG,
            format!(
                "{}: can't convert from BSON type {} to String",
                op_name(op),
                type_of(Some(other))
            ),
        )),
    }
}

fn string_op(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::Concat => {
            let mut out = String::new();
            for arg in &args {
                match arg {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
                    Some(Bson::String(s)) => out.push_str(s),
                    other => {
                        return Err(QueryError::location(
                            LocationCode::CONCAT_TYPE,
                            format!("$concat only supports strings, not {}", type_label(other)),
                        ));
                    }
                }
            }
            Ok(Some(Bson::String(out)))
        }
        Op::ToLower => Ok(Some(Bson::String(
            coerce_string(op, &args[0])?.to_lowercase(),
        ))),
        Op::ToUpper => Ok(Some(Bson::String(
            coerce_string(op, &args[0])?.to_uppercase(),
        ))),
        Op::Strcasecmp => {
            let a = coerce_string(op, &args[0])?.to_lowercase();
            let b = coerce_string(op, &args[1])?.to_lowercase();
            Ok(Some(Bson::Int32(match a.cmp(&b) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            })))
        }
        _ => split(&args[0], &args[1]),
    }
}

fn split(input: &Value, delimiter: &Value) -> Result<Value> {
    let text = match input {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::String(text)) => text,
        other => {
            return Err(located(
                40085,
                format!(
                    "$split requires an expression that evaluates to a string as a first argument, found: {}",
                    type_label(other)
                ),
            ));
        }
    };
    let separator = match delimiter {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::String(s)) => s,
        other => {
            return Err(located(
                40086,
                format!(
                    "$split requires an expression that evaluates to a string as a second argument, found: {}",
                    type_label(other)
                ),
            ));
        }
    };
    if separator.is_empty() {
        return Err(QueryError::location(
            LocationCode::SPLIT_DELIMITER,
            "$split requires a non-empty separator",
        ));
    }
    let parts = text
        .split(separator.as_str())
        .map(|p| Bson::String(p.to_owned()))
        .collect();
    Ok(Some(Bson::Array(parts)))
}

fn int_arg(op: Op, value: &Value, what: &str) -> Result<i64> {
    value
        .as_ref()
        .and_then(Num::of)
        .and_then(Num::as_whole)
        .ok_or_else(|| {
            located(
                16034,
                format!(
                    "{}: {what} must be a numeric type (is BSON type {})",
                    op_name(op),
                    type_label(value)
                ),
            )
        })
}

fn substring_op(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::StrLenCP | Op::StrLenBytes => {
            let Some(Bson::String(text)) = &args[0] else {
                let code = if op == Op::StrLenCP { 34471 } else { 34473 };
                return Err(located(
                    code,
                    format!(
                        "{} requires a string argument, found: {}",
                        op_name(op),
                        type_label(&args[0])
                    ),
                ));
            };
            let length = if op == Op::StrLenCP {
                text.chars().count()
            } else {
                text.len()
            };
            Ok(Some(Bson::Int32(i32::try_from(length).unwrap_or(i32::MAX))))
        }
        Op::SubstrCP => {
            let text = coerce_string(op, &args[0])?;
            let start = int_arg(op, &args[1], "starting index")?;
            let length = int_arg(op, &args[2], "length")?;
            if start < 0 || length < 0 {
                return Err(located(
                    34455,
                    "$substrCP: the starting index and length must be non-negative",
                ));
            }
            let start = usize::try_from(start).unwrap_or(usize::MAX);
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            let result: String = text.chars().skip(start).take(length).collect();
            Ok(Some(Bson::String(result)))
        }
        _ => substr_bytes(op, &args),
    }
}

fn substr_bytes(op: Op, args: &[Value]) -> Result<Value> {
    let text = coerce_string(op, &args[0])?;
    let start = int_arg(op, &args[1], "starting index")?;
    let length = int_arg(op, &args[2], "length")?;
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    if start >= text.len() {
        return Ok(Some(Bson::String(String::new())));
    }
    let end = match usize::try_from(length) {
        Ok(length) => start.saturating_add(length).min(text.len()),
        Err(_) => text.len(),
    };
    if !text.is_char_boundary(start) {
        return Err(QueryError::location(
            LocationCode::SUBSTR_UTF8,
            "$substrBytes:  Invalid range, starting index is a UTF-8 continuation byte.",
        ));
    }
    if !text.is_char_boundary(end) {
        return Err(located(
            28657,
            "$substrBytes:  Invalid range, ending index is in the middle of a UTF-8 character.",
        ));
    }
    Ok(Some(Bson::String(text[start..end].to_owned())))
}

// ---------------------------------------------------------------------------------------------
// Arrays and objects
// ---------------------------------------------------------------------------------------------

fn array_access(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::Size => match &args[0] {
            Some(Bson::Array(items)) => Ok(Some(Bson::Int32(
                i32::try_from(items.len()).unwrap_or(i32::MAX),
            ))),
            other => Err(QueryError::location(
                LocationCode::SIZE_TYPE,
                format!(
                    "The argument to $size must be an array. Type of the argument is: {}",
                    type_label(other)
                ),
            )),
        },
        Op::IsArray => Ok(Some(Bson::Boolean(matches!(
            first(&args),
            Some(Bson::Array(_))
        )))),
        Op::In => match &args[1] {
            Some(Bson::Array(items)) => {
                let found = items
                    .iter()
                    .any(|item| compare_values(args[0].as_ref(), Some(item)) == Ordering::Equal);
                Ok(Some(Bson::Boolean(found)))
            }
            other => Err(QueryError::location(
                LocationCode::IN_TYPE,
                format!(
                    "$in requires an array as a second argument, found: {}",
                    type_label(other)
                ),
            )),
        },
        Op::First | Op::Last => match &args[0] {
            None => Ok(None),
            Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
            Some(Bson::Array(items)) => Ok(if op == Op::First {
                items.first()
            } else {
                items.last()
            }
            .cloned()),
            other => Err(located(
                28689,
                format!(
                    "{}'s argument must be an array, but is {}",
                    op_name(op),
                    type_label(other)
                ),
            )),
        },
        _ => array_elem_at(&args[0], &args[1]),
    }
}

fn array_elem_at(array: &Value, index: &Value) -> Result<Value> {
    if is_nullish(array) || is_nullish(index) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = array else {
        return Err(located(
            28689,
            format!(
                "$arrayElemAt's first argument must be an array, but is {}",
                type_label(array)
            ),
        ));
    };
    let Some(position) = index.as_ref().and_then(Num::of).and_then(Num::as_whole) else {
        return Err(located(
            28691,
            format!(
                "$arrayElemAt's second argument must be a numeric value, but is {}",
                type_label(index)
            ),
        ));
    };
    Ok(element_at(items, position).cloned())
}

/// An element by position, negative positions counting from the end.
fn element_at(items: &[Bson], position: i64) -> Option<&Bson> {
    let index = if position < 0 {
        let back = usize::try_from(position.unsigned_abs()).ok()?;
        items.len().checked_sub(back)?
    } else {
        usize::try_from(position).ok()?
    };
    items.get(index)
}

fn arrays_or_null(op: Op, args: Vec<Value>, code: i32) -> Result<Option<Vec<Vec<Bson>>>> {
    let mut arrays = Vec::with_capacity(args.len());
    for arg in args {
        match arg {
            None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(None),
            Some(Bson::Array(items)) => arrays.push(items),
            Some(other) => {
                return Err(located(
                    code,
                    format!(
                        "{} only supports arrays, not {}",
                        op_name(op),
                        type_of(Some(&other))
                    ),
                ));
            }
        }
    }
    Ok(Some(arrays))
}

fn array_build(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::ConcatArrays => Ok(Some(match arrays_or_null(op, args, 28664)? {
            None => Bson::Null,
            Some(arrays) => Bson::Array(arrays.into_iter().flatten().collect()),
        })),
        Op::SetUnion => Ok(Some(match arrays_or_null(op, args, 17043)? {
            None => Bson::Null,
            Some(arrays) => Bson::Array(sets::sorted_set(arrays.into_iter().flatten())),
        })),
        Op::ReverseArray => match &args[0] {
            None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
            Some(Bson::Array(items)) => {
                Ok(Some(Bson::Array(items.iter().rev().cloned().collect())))
            }
            other => Err(located(
                34435,
                format!(
                    "The argument to $reverseArray must be an array, but was of type: {}",
                    type_label(other)
                ),
            )),
        },
        Op::Range => range(&args),
        _ => slice(&args),
    }
}

fn range(args: &[Value]) -> Result<Value> {
    let whole = |value: &Value, what: &str, code: i32| {
        value.as_ref().and_then(Num::of).and_then(Num::as_whole).ok_or_else(|| {
            located(code, format!("$range requires a numeric {what} value that can be represented as a 32-bit integer"))
        })
    };
    let start = whole(&args[0], "starting", 34443)?;
    let end = whole(&args[1], "ending", 34445)?;
    let step = match args.get(2) {
        Some(step) => whole(step, "step", 34447)?,
        None => 1,
    };
    if step == 0 {
        return Err(located(34449, "$range requires a non-zero step value"));
    }
    let mut out = Vec::new();
    let mut current = start;
    while (step > 0 && current < end) || (step < 0 && current > end) {
        if out.len() >= RANGE_ELEMENTS_MAX {
            return Err(located(
                20,
                format!("$range would produce more than {RANGE_ELEMENTS_MAX} elements"),
            ));
        }
        out.push(Num::from_i64_narrow(current, true).to_bson());
        current = current.saturating_add(step);
    }
    Ok(Some(Bson::Array(out)))
}

fn slice(args: &[Value]) -> Result<Value> {
    if args.iter().any(is_nullish) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = &args[0] else {
        return Err(located(
            28724,
            format!(
                "First argument to $slice must be an array, but is of type: {}",
                type_label(&args[0])
            ),
        ));
    };
    let whole = |value: &Value, code: i32| {
        value
            .as_ref()
            .and_then(Num::of)
            .and_then(Num::as_whole)
            .ok_or_else(|| {
                located(
                    code,
                    format!(
                        "Argument to $slice must be a numeric value, but was of type: {}",
                        type_label(value)
                    ),
                )
            })
    };
    let sliced = if args.len() == 2 {
        slice_count(items, whole(&args[1], 28725)?)
    } else {
        let count = whole(&args[2], 28726)?;
        if count <= 0 {
            return Err(located(
                28729,
                format!("Third argument to $slice must be positive: {count}"),
            ));
        }
        slice_from(items, whole(&args[1], 28727)?, count)
    };
    Ok(Some(Bson::Array(sliced)))
}

/// The first `count` elements, or the last `-count` when negative.
pub(crate) fn slice_count(items: &[Bson], count: i64) -> Vec<Bson> {
    let magnitude = usize::try_from(count.unsigned_abs())
        .unwrap_or(usize::MAX)
        .min(items.len());
    if count >= 0 {
        items[..magnitude].to_vec()
    } else {
        items[items.len() - magnitude..].to_vec()
    }
}

/// `count` elements from `position` (negative positions count from the end).
pub(crate) fn slice_from(items: &[Bson], position: i64, count: i64) -> Vec<Bson> {
    let start = if position < 0 {
        items
            .len()
            .saturating_sub(usize::try_from(position.unsigned_abs()).unwrap_or(usize::MAX))
    } else {
        usize::try_from(position)
            .unwrap_or(usize::MAX)
            .min(items.len())
    };
    let count = usize::try_from(count).unwrap_or(0);
    items[start..].iter().take(count).cloned().collect()
}

fn object_op(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::MergeObjects => {
            let mut merged = Document::new();
            for (index, arg) in args.into_iter().enumerate() {
                match arg {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                    Some(Bson::Document(doc)) => merged.extend(doc),
                    Some(other) => {
                        return Err(located(
                            40400,
                            format!(
                                "$mergeObjects requires object inputs, but input {index} is of type {}",
                                type_of(Some(&other))
                            ),
                        ));
                    }
                }
            }
            Ok(Some(Bson::Document(merged)))
        }
        Op::ObjectToArray => match &args[0] {
            None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
            Some(Bson::Document(doc)) => Ok(Some(Bson::Array(
                doc.iter()
                    .map(|(k, v)| Bson::Document(bson::doc! {"k": k.clone(), "v": v.clone()}))
                    .collect(),
            ))),
            other => Err(located(
                40390,
                format!(
                    "$objectToArray requires a document input, found: {}",
                    type_label(other)
                ),
            )),
        },
        _ => array_to_object(&args[0]),
    }
}

fn array_to_object(value: &Value) -> Result<Value> {
    let items = match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(located(
                40386,
                format!(
                    "$arrayToObject requires an array input, found: {}",
                    type_label(other)
                ),
            ));
        }
    };
    let mut out = Document::new();
    for item in items {
        let (key, value) = match item {
            Bson::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
            Bson::Document(kv) if kv.len() == 2 => match (kv.get("k"), kv.get("v")) {
                (Some(k), Some(v)) => (k, v),
                _ => {
                    return Err(located(
                        40393,
                        "$arrayToObject requires an object with keys 'k' and 'v'.",
                    ));
                }
            },
            _ => {
                return Err(located(
                    40398,
                    "Unrecognised input type format for $arrayToObject",
                ));
            }
        };
        let Bson::String(key) = key else {
            return Err(located(
                40395,
                "$arrayToObject requires keys of type string",
            ));
        };
        out.insert(key.clone(), value.clone());
    }
    Ok(Some(Bson::Document(out)))
}

// ---------------------------------------------------------------------------------------------
// $max/$min/$sum/$avg as expressions, and conversions
// ---------------------------------------------------------------------------------------------

fn group_like(op: Op, args: Vec<Value>) -> Result<Value> {
    let values: Vec<Bson> = match <[Value; 1]>::try_from(args) {
        Ok([Some(Bson::Array(items))]) => items,
        Ok([single]) => single.into_iter().collect(),
        Err(args) => args.into_iter().flatten().collect(),
    };
    let present = values
        .into_iter()
        .filter(|v| !matches!(v, Bson::Null | Bson::Undefined));
    Ok(Some(match op {
        Op::Max => present.max_by(bsonorder::compare).unwrap_or(Bson::Null),
        Op::Min => present.min_by(bsonorder::compare).unwrap_or(Bson::Null),
        Op::Sum => present
            .filter_map(|v| Num::of(&v))
            .fold(Num::I32(0), Num::add)
            .to_bson(),
        _ => {
            let numbers: Vec<Num> = present.filter_map(|v| Num::of(&v)).collect();
            if numbers.is_empty() {
                Bson::Null
            } else {
                let total: f64 = numbers.iter().map(|n| n.as_f64()).sum();
                Bson::Double(total / numbers.len() as f64)
            }
        }
    }))
}
