//! The expression operators themselves: parsing of the object-form operators (`$cond`,
//! `$filter`, `$map`, ...) and evaluation of every operator once its arguments are known. Kept
//! apart from the tree walk in `expr.rs` so each operator family reads as one small function.

use std::cmp::Ordering;

use bson::{Bson, Document};
use shoal_common::bsonorder;

use super::date;
use super::{
    Ctx, Expr, Num, Op, TrimKind, Value, compare_values, eval, eval_or_null, parse_expr, truthy,
    type_label, type_of, with_var,
};
use crate::error::{LocationCode, QueryError, Result};
use crate::filter::compile_regex;

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
        "$regexMatch" => {
            let slots = object_args(name, arg, &["input", "regex", "options"])?;
            Ok(Expr::RegexMatch {
                input: required_expr(name, "input", slots[0], scope)?,
                regex: required_expr(name, "regex", slots[1], scope)?,
                options: optional(slots[2], scope)?,
            })
        }
        _ => Err(QueryError::InvalidPipelineOperator(format!(
            "Unrecognized expression '{name}'"
        ))),
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
        Expr::RegexMatch {
            input,
            regex,
            options,
        } => eval_regex_match(input, regex, options.as_deref(), ctx),
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
        None => c.is_whitespace() || c == '\0',
    };
    let trimmed = match kind {
        TrimKind::Both => text.trim_matches(is_trimmed),
        TrimKind::Start => text.trim_start_matches(is_trimmed),
        TrimKind::End => text.trim_end_matches(is_trimmed),
    };
    Ok(Some(Bson::String(trimmed.to_owned())))
}

fn eval_regex_match(
    input: &Expr,
    regex: &Expr,
    options: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let text = match eval(input, ctx)? {
        None | Some(Bson::Null) => return Ok(Some(Bson::Boolean(false))),
        Some(Bson::String(text)) => text,
        Some(other) => {
            return Err(located(
                51104,
                format!(
                    "$regexMatch needs 'input' to be of type string, got {}",
                    type_of(Some(&other))
                ),
            ));
        }
    };
    let extra_options = match options {
        None => String::new(),
        Some(options_expr) => match eval(options_expr, ctx)? {
            None | Some(Bson::Null) => String::new(),
            Some(Bson::String(o)) => o,
            Some(_) => {
                return Err(located(
                    51106,
                    "$regexMatch needs 'options' to be of type string",
                ));
            }
        },
    };
    let (pattern, mut flags) = match eval(regex, ctx)? {
        None | Some(Bson::Null) => return Ok(Some(Bson::Boolean(false))),
        Some(Bson::String(p)) => (p, String::new()),
        Some(Bson::RegularExpression(r)) => (r.pattern, r.options),
        Some(_) => {
            return Err(located(
                51105,
                "$regexMatch needs 'regex' to be of type string or regex",
            ));
        }
    };
    flags.push_str(&extra_options);
    let compiled = compile_regex(&pattern, &flags)?;
    Ok(Some(Bson::Boolean(compiled.is_match(&text))))
}

// ---------------------------------------------------------------------------------------------
// Positional operators
// ---------------------------------------------------------------------------------------------

pub(super) fn apply_op(op: Op, args: Vec<Value>) -> Result<Value> {
    match op {
        Op::Add | Op::Subtract | Op::Multiply | Op::Divide | Op::Mod | Op::Pow => {
            arithmetic(op, args)
        }
        Op::Abs | Op::Ceil | Op::Floor | Op::Sqrt | Op::Exp | Op::Ln | Op::Log10 => {
            unary_math(op, args)
        }
        Op::Round | Op::Trunc => round(op, args),
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
        Op::ObjectToArray | Op::ArrayToObject | Op::MergeObjects => object_op(op, args),
        Op::Max | Op::Min | Op::Sum | Op::Avg => group_like(op, args),
        Op::Type
        | Op::ToString
        | Op::ToInt
        | Op::ToLong
        | Op::ToDouble
        | Op::ToBool
        | Op::ToDate
        | Op::IsNumber => convert(op, args),
    }
}

fn first(args: &[Value]) -> Option<&Bson> {
    args.first().and_then(Option::as_ref)
}

fn is_nullish(value: &Value) -> bool {
    matches!(value, None | Some(Bson::Null) | Some(Bson::Undefined))
}

fn op_name(op: Op) -> &'static str {
    super::POSITIONAL_OPS
        .iter()
        .find(|(_, o, ..)| *o == op)
        .map_or("$op", |(n, ..)| *n)
}

fn number_arg(op: Op, value: &Value, code: i32) -> Result<Num> {
    value.as_ref().and_then(Num::of).ok_or_else(|| {
        located(
            code,
            format!(
                "{} only supports numeric types, not {}",
                op_name(op),
                type_label(value)
            ),
        )
    })
}

fn arithmetic(op: Op, args: Vec<Value>) -> Result<Value> {
    if args.iter().any(is_nullish) {
        return Ok(Some(Bson::Null));
    }
    match op {
        Op::Add => add(args),
        Op::Subtract => subtract(&args[0], &args[1]),
        Op::Multiply => {
            let mut product = Num::I32(1);
            for arg in &args {
                product = product.mul(number_arg(op, arg, 16555)?);
            }
            Ok(Some(product.to_bson()))
        }
        Op::Divide => {
            let dividend = number_arg(op, &args[0], 16609)?;
            let divisor = number_arg(op, &args[1], 16609)?;
            if divisor.as_f64() == 0.0 {
                return Err(QueryError::location(
                    LocationCode::DIVIDE_BY_ZERO,
                    "can't $divide by zero",
                ));
            }
            Ok(Some(Bson::Double(dividend.as_f64() / divisor.as_f64())))
        }
        Op::Mod => modulo(
            number_arg(op, &args[0], 16611)?,
            number_arg(op, &args[1], 16611)?,
        ),
        _ => power(
            number_arg(op, &args[0], 28762)?,
            number_arg(op, &args[1], 28763)?,
        ),
    }
}

fn add(args: Vec<Value>) -> Result<Value> {
    let mut sum = Num::I32(0);
    let mut date_millis: Option<i64> = None;
    for arg in &args {
        match arg {
            Some(Bson::DateTime(date)) if date_millis.is_none() => {
                date_millis = Some(date.timestamp_millis())
            }
            Some(Bson::DateTime(_)) => {
                return Err(located(
                    16612,
                    "only one date allowed in an $add expression",
                ));
            }
            other => {
                let number = other.as_ref().and_then(Num::of).ok_or_else(|| {
                    QueryError::location(
                        LocationCode::ARITHMETIC_TYPE,
                        format!(
                            "$add only supports numeric or date types, not {}",
                            type_label(other)
                        ),
                    )
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

fn round_millis(number: Num) -> i64 {
    match number {
        Num::F64(v) => v.round() as i64,
        Num::I32(v) => i64::from(v),
        Num::I64(v) => v,
    }
}

fn subtract(left: &Value, right: &Value) -> Result<Value> {
    match (left, right) {
        (Some(Bson::DateTime(a)), Some(Bson::DateTime(b))) => Ok(Some(Bson::Int64(
            a.timestamp_millis().saturating_sub(b.timestamp_millis()),
        ))),
        (Some(Bson::DateTime(a)), Some(other)) => {
            let number = Num::of(other).ok_or_else(|| {
                located(
                    16613,
                    format!("cant $subtract a {} from a Date", type_of(Some(other))),
                )
            })?;
            Ok(Some(Bson::DateTime(bson::DateTime::from_millis(
                a.timestamp_millis().saturating_sub(round_millis(number)),
            ))))
        }
        _ => {
            let a = left.as_ref().and_then(Num::of);
            let b = right.as_ref().and_then(Num::of);
            match (a, b) {
                (Some(a), Some(b)) => Ok(Some(a.sub(b).to_bson())),
                _ => Err(located(
                    16556,
                    format!(
                        "cant $subtract a {} from a {}",
                        type_label(right),
                        type_label(left)
                    ),
                )),
            }
        }
    }
}

fn modulo(dividend: Num, divisor: Num) -> Result<Value> {
    if divisor.as_f64() == 0.0 {
        return Err(QueryError::location(
            LocationCode::MOD_BY_ZERO,
            "can't $mod by zero",
        ));
    }
    let result = match (dividend, divisor) {
        (Num::I32(a), Num::I32(b)) => Num::I32(a.wrapping_rem(b)),
        (Num::F64(_), _) | (_, Num::F64(_)) => Num::F64(dividend.as_f64() % divisor.as_f64()),
        _ => {
            let a = dividend.as_whole().unwrap_or(0);
            let b = divisor.as_whole().unwrap_or(1);
            Num::I64(a.wrapping_rem(b))
        }
    };
    Ok(Some(result.to_bson()))
}

fn power(base: Num, exponent: Num) -> Result<Value> {
    let both_int = !matches!(base, Num::F64(_)) && !matches!(exponent, Num::F64(_));
    if both_int {
        let b = base.as_whole().unwrap_or(0);
        let e = exponent.as_whole().unwrap_or(0);
        if b == 0 && e < 0 {
            return Err(located(
                28764,
                "$pow cannot take a base of 0 and a negative exponent",
            ));
        }
        if let Ok(e32) = u32::try_from(e)
            && let Some(result) = b.checked_pow(e32)
        {
            let keep_int = matches!((base, exponent), (Num::I32(_), Num::I32(_)));
            return Ok(Some(Num::from_i64_narrow(result, keep_int).to_bson()));
        }
    }
    Ok(Some(Bson::Double(base.as_f64().powf(exponent.as_f64()))))
}

fn unary_math(op: Op, args: Vec<Value>) -> Result<Value> {
    let arg = &args[0];
    if is_nullish(arg) {
        return Ok(Some(Bson::Null));
    }
    let number = number_arg(op, arg, 28765)?;
    let float = number.as_f64();
    let result = match op {
        Op::Abs => match number {
            Num::I32(v) => v
                .checked_abs()
                .map_or(Num::I64(i64::from(v).abs()), Num::I32),
            Num::I64(v) => v.checked_abs().map_or(Num::F64(float.abs()), Num::I64),
            Num::F64(v) => Num::F64(v.abs()),
        },
        Op::Ceil => map_float(number, f64::ceil),
        Op::Floor => map_float(number, f64::floor),
        Op::Sqrt if float < 0.0 => {
            return Err(located(
                28714,
                "$sqrt's argument must be greater than or equal to 0",
            ));
        }
        Op::Sqrt => Num::F64(float.sqrt()),
        Op::Exp => Num::F64(float.exp()),
        Op::Ln if float <= 0.0 => {
            return Err(located(
                28766,
                format!("$ln's argument must be a positive number, but is {float}"),
            ));
        }
        Op::Ln => Num::F64(float.ln()),
        Op::Log10 if float <= 0.0 => {
            return Err(located(
                28761,
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

fn round(op: Op, args: Vec<Value>) -> Result<Value> {
    if args.iter().any(is_nullish) {
        return Ok(Some(Bson::Null));
    }
    let number = number_arg(op, &args[0], 51081)?;
    let place = match args.get(1) {
        None => 0,
        Some(place) => match place.as_ref().and_then(Num::of).and_then(Num::as_whole) {
            Some(p) if (-20..=100).contains(&p) => p,
            _ => {
                return Err(located(
                    51083,
                    format!(
                        "{} place must be an integer between -20 and 100",
                        op_name(op)
                    ),
                ));
            }
        },
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
            Some(arrays) => Bson::Array(union(arrays.into_iter().flatten())),
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

/// Distinct values in first-seen order (MongoDB equality: 1 and 1.0 are the same value).
pub(crate) fn union(values: impl IntoIterator<Item = Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = Vec::new();
    for value in values {
        if !out
            .iter()
            .any(|seen| bsonorder::compare(seen, &value) == Ordering::Equal)
        {
            out.push(value);
        }
    }
    out
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

fn conversion_error(value: &Bson, target: &str) -> QueryError {
    QueryError::ConversionFailure(format!(
        "Unsupported conversion from {} to {target} in $convert with no onError value",
        type_of(Some(value))
    ))
}

fn convert(op: Op, args: Vec<Value>) -> Result<Value> {
    let arg = args.into_iter().next().flatten();
    match op {
        Op::Type => return Ok(Some(Bson::String(type_of(arg.as_ref()).to_owned()))),
        Op::IsNumber => {
            return Ok(Some(Bson::Boolean(
                arg.as_ref().and_then(Num::of).is_some(),
            )));
        }
        _ => {}
    }
    let Some(value) = arg.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
        return Ok(Some(Bson::Null));
    };
    let converted = match op {
        Op::ToString => to_string(&value)?,
        Op::ToInt => {
            let whole = to_whole(&value, "int")?;
            Bson::Int32(i32::try_from(whole).map_err(|_| {
                QueryError::ConversionFailure(format!("Conversion would overflow target type in $convert with no onError value: {whole}"))
            })?)
        }
        Op::ToLong => Bson::Int64(to_whole(&value, "long")?),
        Op::ToDouble => Bson::Double(to_double(&value)?),
        Op::ToBool => Bson::Boolean(match &value {
            Bson::String(_) => true,
            other => truthy(Some(other)),
        }),
        _ => Bson::DateTime(date::to_date(&value)?),
    };
    Ok(Some(converted))
}

fn to_string(value: &Bson) -> Result<Bson> {
    let text = match value {
        Bson::String(s) => s.clone(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Int32(v) => v.to_string(),
        Bson::Int64(v) => v.to_string(),
        Bson::Double(v) => format_double(*v),
        Bson::Decimal128(d) => d.to_string(),
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::DateTime(d) => date::iso_string(*d),
        other => return Err(conversion_error(other, "string")),
    };
    Ok(Bson::String(text))
}

fn to_whole(value: &Bson, target: &str) -> Result<i64> {
    match value {
        Bson::Boolean(b) => Ok(i64::from(*b)),
        Bson::Int32(v) => Ok(i64::from(*v)),
        Bson::Int64(v) => Ok(*v),
        Bson::Double(_) | Bson::Decimal128(_) => {
            let float = Num::of(value).map_or(f64::NAN, Num::as_f64);
            if !float.is_finite() || float.abs() >= 9.223_372_036_854_775e18 {
                return Err(QueryError::ConversionFailure(format!(
                    "Conversion would overflow target type in $convert with no onError value: {float}"
                )));
            }
            Ok(float.trunc() as i64)
        }
        Bson::DateTime(d) if target == "long" => Ok(d.timestamp_millis()),
        Bson::String(s) => s.trim().parse::<i64>().map_err(|_| {
            QueryError::ConversionFailure(format!(
                "Failed to parse number '{s}' in $convert with no onError value"
            ))
        }),
        other => Err(conversion_error(other, target)),
    }
}

fn to_double(value: &Bson) -> Result<f64> {
    match value {
        Bson::Boolean(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Bson::DateTime(d) => Ok(d.timestamp_millis() as f64),
        Bson::String(s) => s.trim().parse::<f64>().map_err(|_| {
            QueryError::ConversionFailure(format!(
                "Failed to parse number '{s}' in $convert with no onError value"
            ))
        }),
        other => Num::of(other)
            .map(Num::as_f64)
            .ok_or_else(|| conversion_error(other, "double")),
    }
}
