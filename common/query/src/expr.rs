//! Aggregation expressions (`$add`, `$cond`, `"$a.b"`, `$$ROOT`, ...): parsed once into a tree,
//! then evaluated per document. `$expr` filters, computed projections, `$addFields`, `$group`
//! keys and accumulator arguments and pipeline-style updates all evaluate through here, so an
//! operator behaves the same wherever it appears.
//!
//! A missing value (a field that does not exist, `$$REMOVE`) is kept apart from null as `None`:
//! MongoDB omits missing computed fields, reports `$type` "missing", and sorts missing below null.

use std::cmp::Ordering;

use bson::{Bson, Document};
use shoal_common::bsonorder;
use shoal_common::error::type_name;

use crate::error::{LocationCode, QueryError, Result};

mod arith;
mod convert;
mod date;
mod date_arith;
mod date_parts;
#[cfg(test)]
mod manual_tests;
mod named;
mod ops;
mod sets;
mod strings;

pub(crate) use named::NamedOp;
pub(crate) use ops::{slice_count, slice_from};
pub(crate) use sets::SortBy;

/// The result of evaluating an expression: `None` is "missing".
pub type Value = Option<Bson>;

/// A parsed aggregation expression.
#[derive(Clone, Debug)]
pub struct Expression(pub(crate) Expr);

#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Literal(Bson),
    /// `$a.b`: a path relative to `$$CURRENT`.
    Field(Vec<String>),
    /// `$$name.a.b`.
    Var(String, Vec<String>),
    Object(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Op(Op, Vec<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Switch {
        branches: Vec<(Expr, Expr)>,
        default: Option<Box<Expr>>,
    },
    Filter {
        input: Box<Expr>,
        var: String,
        cond: Box<Expr>,
        limit: Option<Box<Expr>>,
    },
    Map {
        input: Box<Expr>,
        var: String,
        body: Box<Expr>,
    },
    Reduce {
        input: Box<Expr>,
        initial: Box<Expr>,
        body: Box<Expr>,
    },
    Let {
        vars: Vec<(String, Expr)>,
        body: Box<Expr>,
    },
    DateToString {
        date: Box<Expr>,
        format: Option<Box<Expr>>,
        timezone: Option<Box<Expr>>,
        on_null: Option<Box<Expr>>,
    },
    DatePart {
        part: DatePart,
        date: Box<Expr>,
        timezone: Option<Box<Expr>>,
    },
    Trim {
        kind: TrimKind,
        input: Box<Expr>,
        chars: Option<Box<Expr>>,
    },
    /// An object-form operator whose arguments are all expressions (`$regexFind`, `$dateAdd`,
    /// `$convert`, ...): one slot per argument name, in the order [`NamedOp`]'s spec lists them.
    Named(NamedOp, Vec<Option<Expr>>),
    Zip {
        inputs: Vec<Expr>,
        defaults: Vec<Expr>,
        longest: bool,
    },
    SortArray {
        input: Box<Expr>,
        sort_by: SortBy,
    },
    GetField {
        field: String,
        input: Box<Expr>,
    },
    /// `$setField` and `$unsetField` (whose value is `$$REMOVE`).
    SetField {
        field: String,
        input: Box<Expr>,
        value: Box<Expr>,
    },
}

/// Which end(s) `$trim` works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrimKind {
    Both,
    Start,
    End,
}

/// The calendar fields the date operators extract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DatePart {
    Year,
    Month,
    DayOfMonth,
    Hour,
    Minute,
    Second,
    Millisecond,
    DayOfWeek,
    DayOfYear,
    Week,
    IsoWeek,
    IsoWeekYear,
    IsoDayOfWeek,
}

/// Operators that take a list of evaluated arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Subtract,
    Multiply,
    Divide,
    Mod,
    Abs,
    Ceil,
    Floor,
    Round,
    Trunc,
    Pow,
    Sqrt,
    Exp,
    Ln,
    Log10,
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Cmp,
    And,
    Or,
    Not,
    IfNull,
    Concat,
    ToLower,
    ToUpper,
    Substr,
    SubstrCP,
    StrLenCP,
    StrLenBytes,
    Split,
    Strcasecmp,
    Size,
    ArrayElemAt,
    In,
    ConcatArrays,
    Slice,
    IsArray,
    First,
    Last,
    ReverseArray,
    Range,
    SetUnion,
    ObjectToArray,
    ArrayToObject,
    MergeObjects,
    Max,
    Min,
    Sum,
    Avg,
    Type,
    ToString,
    ToInt,
    ToLong,
    ToDouble,
    ToBool,
    ToDate,
    ToDecimal,
    ToObjectId,
    IsNumber,
    Log,
    IndexOfBytes,
    IndexOfCP,
    IndexOfArray,
    SetEquals,
    SetIsSubset,
    SetDifference,
    SetIntersection,
    AnyElementTrue,
    AllElementsTrue,
}

/// Operators with positional arguments: name, operator, minimum and maximum argument count.
const POSITIONAL_OPS: &[(&str, Op, usize, usize)] = &[
    ("$add", Op::Add, 0, usize::MAX),
    ("$subtract", Op::Subtract, 2, 2),
    ("$multiply", Op::Multiply, 0, usize::MAX),
    ("$divide", Op::Divide, 2, 2),
    ("$mod", Op::Mod, 2, 2),
    ("$abs", Op::Abs, 1, 1),
    ("$ceil", Op::Ceil, 1, 1),
    ("$floor", Op::Floor, 1, 1),
    ("$round", Op::Round, 1, 2),
    ("$trunc", Op::Trunc, 1, 2),
    ("$pow", Op::Pow, 2, 2),
    ("$sqrt", Op::Sqrt, 1, 1),
    ("$exp", Op::Exp, 1, 1),
    ("$ln", Op::Ln, 1, 1),
    ("$log10", Op::Log10, 1, 1),
    ("$eq", Op::Eq, 2, 2),
    ("$ne", Op::Ne, 2, 2),
    ("$gt", Op::Gt, 2, 2),
    ("$gte", Op::Gte, 2, 2),
    ("$lt", Op::Lt, 2, 2),
    ("$lte", Op::Lte, 2, 2),
    ("$cmp", Op::Cmp, 2, 2),
    ("$and", Op::And, 0, usize::MAX),
    ("$or", Op::Or, 0, usize::MAX),
    ("$not", Op::Not, 1, 1),
    ("$ifNull", Op::IfNull, 2, usize::MAX),
    ("$concat", Op::Concat, 0, usize::MAX),
    ("$toLower", Op::ToLower, 1, 1),
    ("$toUpper", Op::ToUpper, 1, 1),
    ("$substr", Op::Substr, 3, 3),
    ("$substrBytes", Op::Substr, 3, 3),
    ("$substrCP", Op::SubstrCP, 3, 3),
    ("$strLenCP", Op::StrLenCP, 1, 1),
    ("$strLenBytes", Op::StrLenBytes, 1, 1),
    ("$split", Op::Split, 2, 2),
    ("$strcasecmp", Op::Strcasecmp, 2, 2),
    ("$size", Op::Size, 1, 1),
    ("$arrayElemAt", Op::ArrayElemAt, 2, 2),
    ("$in", Op::In, 2, 2),
    ("$concatArrays", Op::ConcatArrays, 0, usize::MAX),
    ("$slice", Op::Slice, 2, 3),
    ("$isArray", Op::IsArray, 1, 1),
    ("$first", Op::First, 1, 1),
    ("$last", Op::Last, 1, 1),
    ("$reverseArray", Op::ReverseArray, 1, 1),
    ("$range", Op::Range, 2, 3),
    ("$setUnion", Op::SetUnion, 0, usize::MAX),
    ("$objectToArray", Op::ObjectToArray, 1, 1),
    ("$arrayToObject", Op::ArrayToObject, 1, 1),
    ("$mergeObjects", Op::MergeObjects, 0, usize::MAX),
    ("$max", Op::Max, 1, usize::MAX),
    ("$min", Op::Min, 1, usize::MAX),
    ("$sum", Op::Sum, 1, usize::MAX),
    ("$avg", Op::Avg, 1, usize::MAX),
    ("$type", Op::Type, 1, 1),
    ("$toString", Op::ToString, 1, 1),
    ("$toInt", Op::ToInt, 1, 1),
    ("$toLong", Op::ToLong, 1, 1),
    ("$toDouble", Op::ToDouble, 1, 1),
    ("$toBool", Op::ToBool, 1, 1),
    ("$toDate", Op::ToDate, 1, 1),
    ("$toDecimal", Op::ToDecimal, 1, 1),
    ("$toObjectId", Op::ToObjectId, 1, 1),
    ("$isNumber", Op::IsNumber, 1, 1),
    ("$log", Op::Log, 2, 2),
    ("$indexOfBytes", Op::IndexOfBytes, 2, 4),
    ("$indexOfCP", Op::IndexOfCP, 2, 4),
    ("$indexOfArray", Op::IndexOfArray, 2, 4),
    ("$setEquals", Op::SetEquals, 2, usize::MAX),
    ("$setIsSubset", Op::SetIsSubset, 2, 2),
    ("$setDifference", Op::SetDifference, 2, 2),
    ("$setIntersection", Op::SetIntersection, 0, usize::MAX),
    ("$anyElementTrue", Op::AnyElementTrue, 1, 1),
    ("$allElementsTrue", Op::AllElementsTrue, 1, 1),
];

const DATE_PARTS: &[(&str, DatePart)] = &[
    ("$year", DatePart::Year),
    ("$month", DatePart::Month),
    ("$dayOfMonth", DatePart::DayOfMonth),
    ("$hour", DatePart::Hour),
    ("$minute", DatePart::Minute),
    ("$second", DatePart::Second),
    ("$millisecond", DatePart::Millisecond),
    ("$dayOfWeek", DatePart::DayOfWeek),
    ("$dayOfYear", DatePart::DayOfYear),
    ("$week", DatePart::Week),
    ("$isoWeek", DatePart::IsoWeek),
    ("$isoWeekYear", DatePart::IsoWeekYear),
    ("$isoDayOfWeek", DatePart::IsoDayOfWeek),
];

/// Variables every expression may use without defining them.
const BUILTIN_VARIABLES: &[&str] = &["ROOT", "CURRENT", "REMOVE"];

impl Expression {
    /// Parses an expression (a literal, a `"$path"`, a `"$$var"`, an operator document or an
    /// object/array of expressions).
    pub fn parse(value: &Bson) -> Result<Expression> {
        crate::nesting::check_value(value)?;
        let mut scope = Vec::new();
        Ok(Expression(parse_expr(value, &mut scope)?))
    }

    /// Evaluates against `doc` (which is `$$ROOT` and `$$CURRENT`); `None` means missing.
    pub fn evaluate(&self, doc: &Document) -> Result<Value> {
        let mut ctx = Ctx::new(doc);
        eval(&self.0, &mut ctx)
    }

    /// Evaluates with missing turned into null.
    pub fn evaluate_or_null(&self, doc: &Document) -> Result<Bson> {
        Ok(self.evaluate(doc)?.unwrap_or(Bson::Null))
    }
}

/// The evaluation state: the root document and the user variables in scope (innermost last).
pub(crate) struct Ctx<'a> {
    root: &'a Document,
    vars: Vec<(String, Bson)>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(root: &'a Document) -> Self {
        Ctx {
            root,
            vars: Vec::new(),
        }
    }

    /// The document being evaluated (`$$ROOT`).
    pub(crate) fn root(&self) -> &'a Document {
        self.root
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

pub(crate) fn parse_expr(value: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    match value {
        Bson::String(text) if text.starts_with("$$") => parse_variable(&text[2..], scope),
        Bson::String(text) if text.starts_with('$') => {
            Ok(Expr::Field(parse_field_path(&text[1..])?))
        }
        Bson::Document(doc) => parse_document(doc, scope),
        Bson::Array(items) => {
            let parsed = items
                .iter()
                .map(|item| parse_expr(item, scope))
                .collect::<Result<_>>()?;
            Ok(Expr::Array(parsed))
        }
        other => Ok(Expr::Literal(other.clone())),
    }
}

fn parse_field_path(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Err(QueryError::location(
            LocationCode::FIELD_PATH,
            "'$' by itself is not a valid FieldPath",
        ));
    }
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    for part in &parts {
        if part.is_empty() {
            return Err(QueryError::location(
                LocationCode::FIELD_PATH,
                "FieldPath field names may not be empty strings.",
            ));
        }
        if part.starts_with('$') {
            return Err(QueryError::location(
                LocationCode::OBJECT_FIELD,
                format!(
                    "FieldPath field names may not start with '$'. Consider using $getField or $setField. ({path})"
                ),
            ));
        }
    }
    Ok(parts)
}

fn parse_variable(text: &str, scope: &[String]) -> Result<Expr> {
    let mut parts = text.split('.');
    let name = parts.next().unwrap_or_default().to_owned();
    let rest: Vec<String> = parts.map(str::to_owned).collect();
    if rest.iter().any(String::is_empty) {
        return Err(QueryError::location(
            LocationCode::FIELD_PATH,
            "FieldPath field names may not be empty strings.",
        ));
    }
    let known = BUILTIN_VARIABLES.contains(&name.as_str()) || scope.contains(&name);
    if !known {
        return Err(QueryError::location(
            LocationCode::UNDEFINED_VARIABLE,
            format!("Use of undefined variable: {name}"),
        ));
    }
    Ok(Expr::Var(name, rest))
}

fn parse_document(doc: &Document, scope: &mut Vec<String>) -> Result<Expr> {
    let Some((first, first_value)) = doc.iter().next() else {
        return Ok(Expr::Object(Vec::new()));
    };
    if !first.starts_with('$') {
        return parse_object(doc, scope);
    }
    if doc.len() > 1 {
        return Err(QueryError::location(
            LocationCode(15983),
            format!("An object representing an expression must have exactly one field: {doc}"),
        ));
    }
    parse_operator(first, first_value, scope)
}

fn parse_object(doc: &Document, scope: &mut Vec<String>) -> Result<Expr> {
    let mut fields = Vec::with_capacity(doc.len());
    for (key, value) in doc {
        if key.starts_with('$') {
            return Err(QueryError::location(
                LocationCode::OBJECT_FIELD,
                format!("field path references must be prefixed with a '$' ('{key}')"),
            ));
        }
        if key.contains('.') {
            return Err(QueryError::location(
                LocationCode(16412),
                format!("FieldPath field names may not contain '.'. ('{key}')"),
            ));
        }
        fields.push((key.clone(), parse_expr(value, scope)?));
    }
    Ok(Expr::Object(fields))
}

fn parse_operator(name: &str, arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    if name == "$literal" {
        return Ok(Expr::Literal(arg.clone()));
    }
    if let Some((_, op, min, max)) = POSITIONAL_OPS.iter().find(|(n, ..)| *n == name) {
        let args = positional_args(arg, scope)?;
        if args.len() < *min || args.len() > *max {
            return Err(arity_error(name, *min, *max, args.len()));
        }
        return Ok(Expr::Op(*op, args));
    }
    if let Some((_, part)) = DATE_PARTS.iter().find(|(n, _)| *n == name) {
        return parse_date_part(*part, name, arg, scope);
    }
    ops::parse_named(name, arg, scope)
}

fn positional_args(arg: &Bson, scope: &mut Vec<String>) -> Result<Vec<Expr>> {
    match arg {
        Bson::Array(items) => items.iter().map(|item| parse_expr(item, scope)).collect(),
        other => Ok(vec![parse_expr(other, scope)?]),
    }
}

/// MongoDB's arity error: operators with their own check use its code, fixed arity is 16020,
/// a range 28667, the `$to*` conversion shortcuts 50723.
fn arity_error(name: &str, min: usize, max: usize, got: usize) -> QueryError {
    let (code, message) = match name {
        "$ifNull" => (
            1257300,
            format!("$ifNull needs at least two arguments, had: {got}"),
        ),
        "$setEquals" => (
            17045,
            format!("$setEquals needs at least two arguments had: {got}"),
        ),
        _ if name.starts_with("$to") => (
            50723,
            format!("{name} requires a single argument, got {got}"),
        ),
        _ if min == max => (
            16020,
            format!("Expression {name} takes exactly {min} arguments. {got} were passed in."),
        ),
        _ if max == usize::MAX => (
            16020,
            format!("Expression {name} takes at least {min} arguments. {got} were passed in."),
        ),
        _ => (
            28667,
            format!(
                "Expression {name} takes at least {min} arguments, and at most {max}. {got} were passed in."
            ),
        ),
    };
    QueryError::location(LocationCode(code), message)
}

/// `$year` and friends: `{$year: <date>}`, `{$year: [<date>]}` or
/// `{$year: {date: <date>, timezone: <tz>}}`.
fn parse_date_part(
    part: DatePart,
    name: &str,
    arg: &Bson,
    scope: &mut Vec<String>,
) -> Result<Expr> {
    if let Bson::Document(spec) = arg
        && spec.keys().next().is_some_and(|key| !key.starts_with('$'))
    {
        let mut date = None;
        let mut timezone = None;
        for (key, value) in spec {
            match key.as_str() {
                "date" => date = Some(Box::new(parse_expr(value, scope)?)),
                "timezone" => timezone = Some(Box::new(parse_expr(value, scope)?)),
                other => {
                    return Err(QueryError::location(
                        LocationCode(40535),
                        format!("unrecognized option to {name}: \"{other}\""),
                    ));
                }
            }
        }
        let date = date.ok_or_else(|| {
            QueryError::location(
                LocationCode(40539),
                format!("missing 'date' argument to {name}, provided: {spec}"),
            )
        })?;
        return Ok(Expr::DatePart {
            part,
            date,
            timezone,
        });
    }
    let args = positional_args(arg, scope)?;
    let [date] = <[Expr; 1]>::try_from(args).map_err(|args| {
        QueryError::location(
            LocationCode(40536),
            format!(
                "{name} accepts exactly one argument if given an array, but was given {}",
                args.len()
            ),
        )
    })?;
    Ok(Expr::DatePart {
        part,
        date: Box::new(date),
        timezone: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

pub(crate) fn eval(expr: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    match expr {
        Expr::Literal(value) => Ok(Some(value.clone())),
        Expr::Field(parts) => Ok(field_from_doc(ctx.root, parts)),
        Expr::Var(name, parts) => Ok(eval_variable(name, parts, ctx)),
        Expr::Object(fields) => {
            let mut out = Document::new();
            for (key, value_expr) in fields {
                if let Some(value) = eval(value_expr, ctx)? {
                    out.insert(key.clone(), value);
                }
            }
            Ok(Some(Bson::Document(out)))
        }
        Expr::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(eval(item, ctx)?.unwrap_or(Bson::Null));
            }
            Ok(Some(Bson::Array(out)))
        }
        Expr::Op(op, args) => eval_op(*op, args, ctx),
        Expr::Cond(cond, then, otherwise) => {
            let test = eval(cond, ctx)?;
            if truthy(test.as_ref()) {
                eval(then, ctx)
            } else {
                eval(otherwise, ctx)
            }
        }
        other => ops::eval_named(other, ctx),
    }
}

/// Evaluates with missing turned into null.
pub(crate) fn eval_or_null(expr: &Expr, ctx: &mut Ctx<'_>) -> Result<Bson> {
    Ok(eval(expr, ctx)?.unwrap_or(Bson::Null))
}

fn eval_variable(name: &str, parts: &[String], ctx: &Ctx<'_>) -> Value {
    match name {
        "ROOT" | "CURRENT" => field_from_doc(ctx.root, parts)
            .or_else(|| parts.is_empty().then(|| Bson::Document(ctx.root.clone()))),
        "REMOVE" => None,
        _ => {
            let value = ctx
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)?;
            field_from_value(value, parts)
        }
    }
}

/// Runs `body` with a variable bound, then unbinds it.
pub(crate) fn with_var<T>(
    ctx: &mut Ctx<'_>,
    name: &str,
    value: Bson,
    body: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
) -> Result<T> {
    ctx.vars.push((name.to_owned(), value));
    let result = body(ctx);
    ctx.vars.pop();
    result
}

fn field_from_doc(doc: &Document, parts: &[String]) -> Value {
    let (head, rest) = parts.split_first()?;
    field_from_value(doc.get(head)?, rest)
}

/// Aggregation path semantics: arrays are mapped over (elements without the field drop out),
/// and numeric components are field names, not indexes.
pub(crate) fn field_from_value(value: &Bson, parts: &[String]) -> Value {
    let Some((head, rest)) = parts.split_first() else {
        return Some(value.clone());
    };
    match value {
        Bson::Document(doc) => field_from_value(doc.get(head)?, rest),
        Bson::Array(items) => {
            let mapped = items
                .iter()
                .filter(|item| matches!(item, Bson::Document(_) | Bson::Array(_)))
                .filter_map(|item| field_from_value(item, parts))
                .collect();
            Some(Bson::Array(mapped))
        }
        _ => None,
    }
}

/// Null, undefined or missing: the values most operators answer null for.
pub(crate) fn nullish(value: &Value) -> bool {
    matches!(value, None | Some(Bson::Null) | Some(Bson::Undefined))
}

/// The name a positional operator was written with, for error messages.
pub(crate) fn op_name(op: Op) -> &'static str {
    POSITIONAL_OPS
        .iter()
        .find(|(_, o, ..)| *o == op)
        .map_or("$op", |(n, ..)| *n)
}

/// MongoDB truthiness: false, null, missing, undefined and numeric zero are false.
pub fn truthy(value: Option<&Bson>) -> bool {
    match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) | Some(Bson::Boolean(false)) => false,
        Some(Bson::Int32(v)) => *v != 0,
        Some(Bson::Int64(v)) => *v != 0,
        Some(Bson::Double(v)) => *v != 0.0,
        Some(Bson::Decimal128(d)) => d
            .to_string()
            .parse::<f64>()
            .map(|v| v != 0.0)
            .unwrap_or(true),
        Some(_) => true,
    }
}

fn eval_args(args: &[Expr], ctx: &mut Ctx<'_>) -> Result<Vec<Value>> {
    args.iter().map(|arg| eval(arg, ctx)).collect()
}

fn eval_op(op: Op, args: &[Expr], ctx: &mut Ctx<'_>) -> Result<Value> {
    match op {
        Op::And => {
            for arg in args {
                if !truthy(eval(arg, ctx)?.as_ref()) {
                    return Ok(Some(Bson::Boolean(false)));
                }
            }
            Ok(Some(Bson::Boolean(true)))
        }
        Op::Or => {
            for arg in args {
                if truthy(eval(arg, ctx)?.as_ref()) {
                    return Ok(Some(Bson::Boolean(true)));
                }
            }
            Ok(Some(Bson::Boolean(false)))
        }
        Op::IfNull => {
            let Some((last, firsts)) = args.split_last() else {
                return Ok(None);
            };
            for arg in firsts {
                match eval(arg, ctx)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                    Some(value) => return Ok(Some(value)),
                }
            }
            eval(last, ctx)
        }
        _ => {
            let values = eval_args(args, ctx)?;
            ops::apply_op(op, values)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers, shared with update operators and accumulators
// ---------------------------------------------------------------------------------------------

/// A BSON number widened for arithmetic. Decimal128 is computed as a double (an approximation:
/// the bson crate has no decimal arithmetic).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    I32(i32),
    I64(i64),
    F64(f64),
}

impl Num {
    pub(crate) fn of(value: &Bson) -> Option<Num> {
        match value {
            Bson::Int32(v) => Some(Num::I32(*v)),
            Bson::Int64(v) => Some(Num::I64(*v)),
            Bson::Double(v) => Some(Num::F64(*v)),
            Bson::Decimal128(d) => Some(Num::F64(d.to_string().parse::<f64>().unwrap_or(f64::NAN))),
            _ => None,
        }
    }

    pub(crate) fn to_bson(self) -> Bson {
        match self {
            Num::I32(v) => Bson::Int32(v),
            Num::I64(v) => Bson::Int64(v),
            Num::F64(v) => Bson::Double(v),
        }
    }

    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::I32(v) => f64::from(v),
            Num::I64(v) => v as f64,
            Num::F64(v) => v,
        }
    }

    fn as_i64(self) -> Option<i64> {
        match self {
            Num::I32(v) => Some(i64::from(v)),
            Num::I64(v) => Some(v),
            Num::F64(_) => None,
        }
    }

    /// The integral value, when the number is one (a double like 2.0 counts).
    pub(crate) fn as_whole(self) -> Option<i64> {
        match self {
            Num::F64(v) if v.fract() == 0.0 && v.abs() < 9.2e18 => Some(v as i64),
            Num::F64(_) => None,
            other => other.as_i64(),
        }
    }

    fn from_i64_narrow(value: i64, keep_int: bool) -> Num {
        match i32::try_from(value) {
            Ok(narrow) if keep_int => Num::I32(narrow),
            _ => Num::I64(value),
        }
    }

    fn combine(
        self,
        other: Num,
        int_op: fn(i64, i64) -> Option<i64>,
        float_op: fn(f64, f64) -> f64,
    ) -> Num {
        let both_i32 = matches!((self, other), (Num::I32(_), Num::I32(_)));
        match (self.as_i64(), other.as_i64()) {
            (Some(a), Some(b)) => match int_op(a, b) {
                Some(result) => Num::from_i64_narrow(result, both_i32),
                None => Num::F64(float_op(a as f64, b as f64)),
            },
            _ => Num::F64(float_op(self.as_f64(), other.as_f64())),
        }
    }

    /// Addition with MongoDB's widening: int+int overflows into long, long into double.
    pub(crate) fn add(self, other: Num) -> Num {
        self.combine(other, i64::checked_add, |a, b| a + b)
    }

    pub(crate) fn sub(self, other: Num) -> Num {
        self.combine(other, i64::checked_sub, |a, b| a - b)
    }

    pub(crate) fn mul(self, other: Num) -> Num {
        self.combine(other, i64::checked_mul, |a, b| a * b)
    }

    pub(crate) fn zero_like(self) -> Num {
        match self {
            Num::I32(_) => Num::I32(0),
            Num::I64(_) => Num::I64(0),
            Num::F64(_) => Num::F64(0.0),
        }
    }
}

/// Compares two values in MongoDB order, with missing below everything but MinKey.
pub(crate) fn compare_values(a: Option<&Bson>, b: Option<&Bson>) -> Ordering {
    let undefined = Bson::Undefined;
    bsonorder::compare(a.unwrap_or(&undefined), b.unwrap_or(&undefined))
}

/// `$type`'s answer for a value.
pub(crate) fn type_of(value: Option<&Bson>) -> &'static str {
    match value {
        None => "missing",
        Some(value) => type_name(value),
    }
}

/// The type name MongoDB uses in error messages ("missing" for a missing value).
pub(crate) fn type_label(value: &Value) -> &'static str {
    type_of(value.as_ref())
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc};

    use super::*;

    fn eval_on(expr: Bson, doc: &Document) -> Result<Value> {
        Expression::parse(&expr)?.evaluate(doc)
    }

    fn ok(expr: Bson, doc: &Document) -> Bson {
        match eval_on(expr.clone(), doc) {
            Ok(Some(value)) => value,
            Ok(None) => Bson::String("<missing>".into()),
            Err(err) => panic!("{expr}: {err}"),
        }
    }

    fn code(expr: Bson, doc: &Document) -> i32 {
        match eval_on(expr.clone(), doc) {
            Err(err) => err.code().0,
            Ok(value) => panic!("{expr} evaluated to {value:?}"),
        }
    }

    #[test]
    fn field_paths_and_variables() {
        let d = doc! {"a": {"b": 5}, "arr": [{"x": 1}, {"y": 2}, {"x": 3}, 7]};
        assert_eq!(ok(bson!("$a.b"), &d), bson!(5));
        assert_eq!(ok(bson!("$arr.x"), &d), bson!([1, 3]));
        assert_eq!(ok(bson!("$$ROOT.a"), &d), bson!({"b": 5}));
        assert_eq!(ok(bson!("$$CURRENT.a.b"), &d), bson!(5));
        assert_eq!(ok(bson!("$$ROOT"), &d), Bson::Document(d.clone()));
        assert_eq!(ok(bson!("$nope"), &d), bson!("<missing>"));
        assert_eq!(ok(bson!("$$REMOVE"), &d), bson!("<missing>"));
        assert_eq!(ok(bson!({"$literal": "$a"}), &d), bson!("$a"));
        assert_eq!(ok(bson!({"k": "$a.b", "m": "$nope"}), &d), bson!({"k": 5}));
        assert_eq!(ok(bson!(["$a.b", "$nope"]), &d), bson!([5, null]));
        assert_eq!(code(bson!("$$undefinedVar"), &d), 17276);
        assert_eq!(code(bson!("$"), &d), 16872);
        assert_eq!(code(bson!({"$foo": 1}), &d), 168);
        assert_eq!(code(bson!({"$add": 1, "$sub": 2}), &d), 15983);
    }

    #[test]
    fn less_common_operators() {
        let d = doc! {"x": 1234.5678, "n": 125, "o": {"a": 1, "b": "s"}, "arr": [3, 1, 3]};
        let cases = [
            (bson!({"$round": ["$x", 2]}), bson!(1234.57)),
            (bson!({"$round": ["$n", -1]}), bson!(120)),
            (bson!({"$round": 2.5}), bson!(2.0)),
            (bson!({"$trunc": ["$x", -2]}), bson!(1200.0)),
            (bson!({"$pow": [2, 10]}), bson!(1024)),
            (bson!({"$pow": [2, -1]}), bson!(0.5)),
            (bson!({"$sqrt": 16}), bson!(4.0)),
            (bson!({"$range": [0, 10, 3]}), bson!([0, 3, 6, 9])),
            (bson!({"$reverseArray": "$arr"}), bson!([3, 1, 3])),
            (bson!({"$setUnion": ["$arr", [1, 5]]}), bson!([1, 3, 5])),
            (bson!({"$first": "$arr"}), bson!(3)),
            (bson!({"$last": [[]]}), bson!("<missing>")),
            (
                bson!({"$objectToArray": "$o"}),
                bson!([{"k": "a", "v": 1}, {"k": "b", "v": "s"}]),
            ),
            (
                bson!({"$arrayToObject": [[["k", 1], ["j", 2]]]}),
                bson!({"k": 1, "j": 2}),
            ),
            (
                bson!({"$mergeObjects": ["$o", {"b": 2}, null]}),
                bson!({"a": 1, "b": 2}),
            ),
            (
                bson!({"$regexMatch": {"input": "Hello", "regex": "^h", "options": "i"}}),
                bson!(true),
            ),
            (bson!({"$toString": 1e20}), bson!("1e+20")),
            (bson!({"$toString": 2.0}), bson!("2")),
            (bson!({"$toString": true}), bson!("true")),
            (
                bson!({"$toDate": Bson::Int64(0)}),
                Bson::DateTime(bson::DateTime::from_millis(0)),
            ),
            (bson!({"$isNumber": "1"}), bson!(false)),
            (bson!({"$strcasecmp": ["ABC", "abd"]}), bson!(-1)),
            (bson!({"$min": [3, null, 1]}), bson!(1)),
            (bson!({"$avg": [1, 2, "x"]}), bson!(1.5)),
            (
                bson!({"$subtract": [Bson::DateTime(bson::DateTime::from_millis(5)), 2]}),
                Bson::DateTime(bson::DateTime::from_millis(3)),
            ),
            (
                bson!({"$add": [Bson::DateTime(bson::DateTime::from_millis(5)), 2]}),
                Bson::DateTime(bson::DateTime::from_millis(7)),
            ),
            (bson!({"$concat": ["a", null]}), Bson::Null),
            (bson!({"$eq": ["$nope", null]}), bson!(false)),
            (bson!({"$lt": ["$nope", null]}), bson!(true)),
            (
                bson!({"$ltrim": {"input": "xxaxx", "chars": "x"}}),
                bson!("axx"),
            ),
            (bson!({"$substrBytes": ["héllo", 0, 1]}), bson!("h")),
        ];
        for (expr, expected) in cases {
            assert_eq!(ok(expr.clone(), &d), expected, "{expr}");
        }
        assert_eq!(code(bson!({"$substrBytes": ["héllo", 0, 2]}), &d), 28657);
        assert_eq!(code(bson!({"$sqrt": -1}), &d), 28714);
        assert_eq!(code(bson!({"$range": [0, 1, 0]}), &d), 34449);
    }

    #[test]
    fn numbers_widen_like_mongodb() {
        assert_eq!(Num::I32(i32::MAX).add(Num::I32(1)), Num::I64(2_147_483_648));
        assert_eq!(Num::I32(1).add(Num::I32(2)), Num::I32(3));
        assert_eq!(Num::I64(1).add(Num::I32(2)), Num::I64(3));
        assert_eq!(
            Num::I64(i64::MAX).add(Num::I64(1)),
            Num::F64(i64::MAX as f64 + 1.0)
        );
        assert_eq!(Num::F64(1.5).mul(Num::I32(2)), Num::F64(3.0));
        assert_eq!(Num::F64(2.0).as_whole(), Some(2));
        assert_eq!(Num::F64(2.5).as_whole(), None);
    }

    #[test]
    fn truthiness() {
        for falsy in [
            None,
            Some(Bson::Null),
            Some(bson!(false)),
            Some(bson!(0)),
            Some(bson!(0.0)),
            Some(Bson::Int64(0)),
        ] {
            assert!(!truthy(falsy.as_ref()), "{falsy:?}");
        }
        for truthy_value in [bson!(""), bson!([]), bson!({}), bson!(true), bson!(-1)] {
            assert!(truthy(Some(&truthy_value)), "{truthy_value:?}");
        }
    }
}
