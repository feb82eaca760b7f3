//! Object-form operators whose arguments are all expressions (`{$dateAdd: {startDate, unit,
//! amount}}`, `{$regexFind: {input, regex}}`, `{$convert: {input, to, onError}}`, ...). One table
//! says, per operator, which argument names exist, which are required and which MongoDB code each
//! malformed spec gets, so parsing is written once; evaluation dispatches to the operator family.

use bson::Bson;

use super::{Ctx, Expr, Value, convert, date_arith, date_parts, parse_expr, strings};
use crate::error::{QueryError, Result};

/// The object-form operators parsed through [`SPECS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NamedOp {
    RegexFind,
    RegexFindAll,
    RegexMatch,
    ReplaceOne,
    ReplaceAll,
    DateFromString,
    DateFromParts,
    DateToParts,
    DateAdd,
    DateSubtract,
    DateDiff,
    DateTrunc,
    Convert,
}

/// How one operator's argument object is read.
struct Spec {
    name: &'static str,
    op: NamedOp,
    /// The argument names; a parsed operator has one slot per name, in this order.
    fields: &'static [&'static str],
    /// The code for an argument that is not an object.
    not_object: i32,
    /// The code for an argument name not in `fields`.
    unknown: i32,
    /// Required arguments (index into `fields`) and the code for each one missing.
    required: &'static [(usize, i32)],
}

const REGEX_FIELDS: &[&str] = &["input", "regex", "options"];
const REGEX_REQUIRED: &[(usize, i32)] = &[(0, 31022), (1, 31023)];
const REPLACE_FIELDS: &[&str] = &["input", "find", "replacement"];
const REPLACE_REQUIRED: &[(usize, i32)] = &[(0, 51749), (1, 51748), (2, 51747)];
const DATE_ARITH_FIELDS: &[&str] = &["startDate", "unit", "amount", "timezone"];
const DATE_ARITH_REQUIRED: &[(usize, i32)] = &[(0, 5166402), (1, 5166402), (2, 5166402)];

const SPECS: &[Spec] = &[
    Spec {
        name: "$regexFind",
        op: NamedOp::RegexFind,
        fields: REGEX_FIELDS,
        not_object: 51103,
        unknown: 31024,
        required: REGEX_REQUIRED,
    },
    Spec {
        name: "$regexFindAll",
        op: NamedOp::RegexFindAll,
        fields: REGEX_FIELDS,
        not_object: 51103,
        unknown: 31024,
        required: REGEX_REQUIRED,
    },
    Spec {
        name: "$regexMatch",
        op: NamedOp::RegexMatch,
        fields: REGEX_FIELDS,
        not_object: 51103,
        unknown: 31024,
        required: REGEX_REQUIRED,
    },
    Spec {
        name: "$replaceOne",
        op: NamedOp::ReplaceOne,
        fields: REPLACE_FIELDS,
        not_object: 51751,
        unknown: 51750,
        required: REPLACE_REQUIRED,
    },
    Spec {
        name: "$replaceAll",
        op: NamedOp::ReplaceAll,
        fields: REPLACE_FIELDS,
        not_object: 51751,
        unknown: 51750,
        required: REPLACE_REQUIRED,
    },
    Spec {
        name: "$dateFromString",
        op: NamedOp::DateFromString,
        fields: &["dateString", "timezone", "format", "onNull", "onError"],
        not_object: 40540,
        unknown: 40541,
        required: &[(0, 40542)],
    },
    Spec {
        name: "$dateFromParts",
        op: NamedOp::DateFromParts,
        fields: date_parts::FROM_PARTS_FIELDS,
        not_object: 40519,
        unknown: 40518,
        required: &[],
    },
    Spec {
        name: "$dateToParts",
        op: NamedOp::DateToParts,
        fields: &["date", "timezone", "iso8601"],
        not_object: 40524,
        unknown: 40520,
        required: &[(0, 40522)],
    },
    Spec {
        name: "$dateAdd",
        op: NamedOp::DateAdd,
        fields: DATE_ARITH_FIELDS,
        not_object: 5166400,
        unknown: 5166401,
        required: DATE_ARITH_REQUIRED,
    },
    Spec {
        name: "$dateSubtract",
        op: NamedOp::DateSubtract,
        fields: DATE_ARITH_FIELDS,
        not_object: 5166400,
        unknown: 5166401,
        required: DATE_ARITH_REQUIRED,
    },
    Spec {
        name: "$dateDiff",
        op: NamedOp::DateDiff,
        fields: &["startDate", "endDate", "unit", "timezone", "startOfWeek"],
        not_object: 5166301,
        unknown: 5166302,
        required: &[(0, 5166303), (1, 5166304), (2, 5166305)],
    },
    Spec {
        name: "$dateTrunc",
        op: NamedOp::DateTrunc,
        fields: &["date", "unit", "binSize", "timezone", "startOfWeek"],
        not_object: 5439007,
        unknown: 5439008,
        required: &[(0, 5439009), (1, 5439010)],
    },
    Spec {
        name: "$convert",
        op: NamedOp::Convert,
        fields: &["input", "to", "onError", "onNull"],
        not_object: 9,
        unknown: 9,
        required: &[(0, 9), (1, 9)],
    },
];

/// The operator an expression name denotes, if it is one of these.
pub(super) fn lookup(name: &str) -> Option<NamedOp> {
    SPECS.iter().find(|spec| spec.name == name).map(|s| s.op)
}

fn spec(op: NamedOp) -> &'static Spec {
    // Every NamedOp has a row; the first row is only a fallback the table makes unreachable.
    SPECS.iter().find(|s| s.op == op).unwrap_or(&SPECS[0])
}

/// The name an operator is written with, for error messages.
pub(crate) fn name(op: NamedOp) -> &'static str {
    spec(op).name
}

/// Parses `{name: value, ...}` into one slot per argument name.
pub(super) fn parse(op: NamedOp, arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let spec = spec(op);
    let Bson::Document(args) = arg else {
        return Err(QueryError::coded(
            spec.not_object,
            format!(
                "{} only supports an object as its argument, found: {}",
                spec.name,
                super::type_of(Some(arg))
            ),
        ));
    };
    let mut slots: Vec<Option<Expr>> = vec![None; spec.fields.len()];
    for (key, value) in args {
        let Some(index) = spec.fields.iter().position(|f| f == key) else {
            return Err(QueryError::coded(
                spec.unknown,
                format!("Unrecognized argument to {}: {key}", spec.name),
            ));
        };
        slots[index] = Some(parse_expr(value, scope)?);
    }
    for (index, code) in spec.required {
        if slots[*index].is_none() {
            return Err(QueryError::coded(
                *code,
                format!(
                    "Missing '{}' parameter to {}",
                    spec.fields[*index], spec.name
                ),
            ));
        }
    }
    if op == NamedOp::DateFromParts {
        date_parts::check_from_parts(&slots)?;
    }
    Ok(Expr::Named(op, slots))
}

/// The parsed argument in slot `index`, if it was given.
pub(super) fn slot(slots: &[Option<Expr>], index: usize) -> Option<&Expr> {
    slots.get(index).and_then(Option::as_ref)
}

/// Evaluates the argument in slot `index`; an argument that was not given is missing.
pub(super) fn eval_slot(slots: &[Option<Expr>], index: usize, ctx: &mut Ctx<'_>) -> Result<Value> {
    match slot(slots, index) {
        Some(expr) => super::eval(expr, ctx),
        None => Ok(None),
    }
}

pub(super) fn eval(op: NamedOp, slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    match op {
        NamedOp::RegexFind | NamedOp::RegexFindAll | NamedOp::RegexMatch => {
            strings::eval_regex(op, slots, ctx)
        }
        NamedOp::ReplaceOne | NamedOp::ReplaceAll => strings::eval_replace(op, slots, ctx),
        NamedOp::DateFromString => date_parts::eval_from_string(slots, ctx),
        NamedOp::DateFromParts => date_parts::eval_from_parts(slots, ctx),
        NamedOp::DateToParts => date_parts::eval_to_parts(slots, ctx),
        NamedOp::DateAdd | NamedOp::DateSubtract => date_arith::eval_add(op, slots, ctx),
        NamedOp::DateDiff => date_arith::eval_diff(slots, ctx),
        NamedOp::DateTrunc => date_arith::eval_trunc(slots, ctx),
        NamedOp::Convert => convert::eval_convert(slots, ctx),
    }
}
