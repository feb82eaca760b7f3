//! Array and set operators added on top of the basic array family: `$indexOfArray`, the set
//! operators (`$setEquals` ... `$allElementsTrue`), `$zip` and `$sortArray`, plus the object field
//! accessors `$getField`/`$setField`/`$unsetField`. Set results come back sorted in MongoDB's
//! value order with duplicates removed, as MongoDB's ordered value sets produce them.

use std::cmp::Ordering;

use bson::{Bson, Document};
use shoal_common::bsonorder;

use super::strings::index_arg;
use super::{
    Ctx, Expr, Op, Value, compare_values, eval, nullish, op_name, parse_expr, truthy, type_label,
    type_of,
};
use crate::error::{LocationCode, QueryError, Result};

fn located(code: i32, message: impl Into<String>) -> QueryError {
    QueryError::location(LocationCode(code), message)
}

fn same(a: &Bson, b: &Bson) -> bool {
    bsonorder::compare(a, b) == Ordering::Equal
}

/// Distinct values in MongoDB's value order (1 and 1.0 are one value).
pub(crate) fn sorted_set(values: impl IntoIterator<Item = Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = values.into_iter().collect();
    out.sort_by(bsonorder::compare);
    out.dedup_by(|a, b| same(a, b));
    out
}

fn contains(set: &[Bson], value: &Bson) -> bool {
    set.binary_search_by(|probe| bsonorder::compare(probe, value))
        .is_ok()
}

/// `$indexOfArray`: the first position in `[start, end)` whose element equals the search value.
pub(super) fn index_of_array(args: Vec<Value>) -> Result<Value> {
    let items = match &args[0] {
        value if nullish(value) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(located(
                40090,
                format!(
                    "$indexOfArray requires an array as a first argument, found: {}",
                    type_label(other)
                ),
            ));
        }
    };
    let name = op_name(Op::IndexOfArray);
    let start = match args.get(2) {
        Some(value) => index_arg(name, value, "starting index")?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(value) => index_arg(name, value, "ending index")?.min(items.len()),
        None => items.len(),
    };
    let found = (start..end)
        .find(|i| compare_values(Some(&items[*i]), args[1].as_ref()) == Ordering::Equal)
        .and_then(|i| i32::try_from(i).ok());
    Ok(Some(Bson::Int32(found.unwrap_or(-1))))
}

/// The argument as an array, or MongoDB's error for this operator and position.
fn array_arg(op: Op, value: &Value, position: usize) -> Result<&[Bson]> {
    if let Some(Bson::Array(items)) = value {
        return Ok(items);
    }
    let kind = type_label(value);
    let name = op_name(op);
    let which = if position == 0 { "First" } else { "Second" };
    let two_operands =
        || format!("both operands of {name} must be arrays. {which} argument is of type: {kind}");
    let (code, message) = match (op, position) {
        (Op::SetEquals, _) => (
            17044,
            format!(
                "All operands of $setEquals must be arrays. {}-th argument is of type: {kind}",
                position + 1
            ),
        ),
        (Op::SetIsSubset, 0) => (17046, two_operands()),
        (Op::SetIsSubset, _) => (17042, two_operands()),
        (Op::SetDifference, 0) => (17048, two_operands()),
        (Op::SetDifference, _) => (17049, two_operands()),
        (Op::SetIntersection, _) => (
            17047,
            format!(
                "All operands of $setIntersection must be arrays. One argument is of type: {kind}"
            ),
        ),
        (Op::AnyElementTrue, _) => (
            17041,
            format!("{name}'s argument must be an array, but is {kind}"),
        ),
        _ => (
            17040,
            format!("{name}'s argument must be an array, but is {kind}"),
        ),
    };
    Err(located(code, message))
}

pub(super) fn set_op(op: Op, args: Vec<Value>) -> Result<Value> {
    let result = match op {
        Op::SetEquals => {
            let first = sorted_set(array_arg(op, &args[0], 0)?.iter().cloned());
            let mut equal = true;
            for (position, arg) in args.iter().enumerate().skip(1) {
                let other = sorted_set(array_arg(op, arg, position)?.iter().cloned());
                equal &=
                    other.len() == first.len() && other.iter().zip(&first).all(|(a, b)| same(a, b));
            }
            Bson::Boolean(equal)
        }
        Op::SetIsSubset => {
            let subset = array_arg(op, &args[0], 0)?;
            let superset = sorted_set(array_arg(op, &args[1], 1)?.iter().cloned());
            Bson::Boolean(subset.iter().all(|v| contains(&superset, v)))
        }
        Op::SetDifference => {
            if nullish(&args[0]) || nullish(&args[1]) {
                return Ok(Some(Bson::Null));
            }
            let left = array_arg(op, &args[0], 0)?;
            let mut seen = sorted_set(array_arg(op, &args[1], 1)?.iter().cloned());
            let mut out = Vec::new();
            for value in left {
                if !contains(&seen, value) {
                    out.push(value.clone());
                    seen = sorted_set(seen.into_iter().chain([value.clone()]));
                }
            }
            Bson::Array(out)
        }
        Op::SetIntersection => return intersection(op, &args),
        _ => {
            let items = array_arg(op, &args[0], 0)?;
            let any = op == Op::AnyElementTrue;
            Bson::Boolean(if any {
                items.iter().any(|v| truthy(Some(v)))
            } else {
                items.iter().all(|v| truthy(Some(v)))
            })
        }
    };
    Ok(Some(result))
}

fn intersection(op: Op, args: &[Value]) -> Result<Value> {
    let mut current: Option<Vec<Bson>> = None;
    for (position, arg) in args.iter().enumerate() {
        if nullish(arg) {
            return Ok(Some(Bson::Null));
        }
        let set = sorted_set(array_arg(op, arg, position)?.iter().cloned());
        current = Some(match current {
            None => set,
            Some(previous) => previous.into_iter().filter(|v| contains(&set, v)).collect(),
        });
    }
    Ok(Some(Bson::Array(current.unwrap_or_default())))
}

// ---------------------------------------------------------------------------------------------
// $zip
// ---------------------------------------------------------------------------------------------

fn expression_list(
    value: &Bson,
    code: i32,
    what: &str,
    scope: &mut Vec<String>,
) -> Result<Vec<Expr>> {
    let Bson::Array(items) = value else {
        return Err(located(
            code,
            format!(
                "{what} must be an array of expressions, found {}",
                type_of(Some(value))
            ),
        ));
    };
    items.iter().map(|item| parse_expr(item, scope)).collect()
}

pub(super) fn parse_zip(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let Bson::Document(spec) = arg else {
        return Err(located(
            34460,
            format!(
                "$zip only supports an object as an argument, found {}",
                type_of(Some(arg))
            ),
        ));
    };
    let mut inputs = Vec::new();
    let mut defaults = Vec::new();
    let mut longest = false;
    for (key, value) in spec {
        match key.as_str() {
            "inputs" => inputs = expression_list(value, 34461, "inputs", scope)?,
            "defaults" => defaults = expression_list(value, 34462, "defaults", scope)?,
            "useLongestLength" => {
                let Bson::Boolean(flag) = value else {
                    return Err(located(
                        34463,
                        format!(
                            "useLongestLength must be a bool, found {}",
                            type_of(Some(value))
                        ),
                    ));
                };
                longest = *flag;
            }
            other => {
                return Err(located(
                    34464,
                    format!("$zip found an unknown argument: {other}"),
                ));
            }
        }
    }
    if inputs.is_empty() {
        return Err(located(34465, "$zip requires at least one input array"));
    }
    if !longest && !defaults.is_empty() {
        return Err(located(
            34466,
            "cannot specify defaults unless useLongestLength is true",
        ));
    }
    if !defaults.is_empty() && defaults.len() != inputs.len() {
        return Err(located(
            34467,
            "defaults and inputs must have the same length",
        ));
    }
    Ok(Expr::Zip {
        inputs,
        defaults,
        longest,
    })
}

pub(super) fn eval_zip(
    inputs: &[Expr],
    defaults: &[Expr],
    longest: bool,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let mut arrays = Vec::with_capacity(inputs.len());
    for input in inputs {
        match eval(input, ctx)? {
            value if nullish(&value) => return Ok(Some(Bson::Null)),
            Some(Bson::Array(items)) => arrays.push(items),
            Some(other) => {
                return Err(located(
                    34468,
                    format!("$zip found a non-array expression in input: {other}"),
                ));
            }
            None => return Ok(Some(Bson::Null)),
        }
    }
    let shortest = arrays.iter().map(Vec::len).min().unwrap_or(0);
    let widest = arrays.iter().map(Vec::len).max().unwrap_or(0);
    let mut fill = vec![Bson::Null; arrays.len()];
    if shortest != widest {
        for (slot, default) in fill.iter_mut().zip(defaults) {
            *slot = eval(default, ctx)?.unwrap_or(Bson::Null);
        }
    }
    let length = if longest { widest } else { shortest };
    let rows = (0..length)
        .map(|row| {
            let tuple = arrays
                .iter()
                .zip(&fill)
                .map(|(array, default)| array.get(row).unwrap_or(default).clone())
                .collect();
            Bson::Array(tuple)
        })
        .collect();
    Ok(Some(Bson::Array(rows)))
}

// ---------------------------------------------------------------------------------------------
// $sortArray
// ---------------------------------------------------------------------------------------------

/// How `$sortArray` orders elements: whole values, or documents by fields.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SortBy {
    Whole { ascending: bool },
    Fields(Vec<(Vec<String>, bool)>),
}

fn direction(value: &Bson) -> Option<bool> {
    match super::Num::of(value).map(super::Num::as_f64) {
        Some(1.0) => Some(true),
        Some(-1.0) => Some(false),
        _ => None,
    }
}

fn parse_sort_by(value: &Bson) -> Result<SortBy> {
    match value {
        Bson::Document(pattern) => {
            if pattern.is_empty() {
                return Err(located(
                    2942505,
                    "BadValue: The $sort pattern is empty when it should be a set of fields.",
                ));
            }
            let mut keys = Vec::with_capacity(pattern.len());
            for (field, order) in pattern {
                let ascending = direction(order).ok_or_else(|| {
                    located(
                        2942505,
                        "BadValue: The $sort element value must be either 1 or -1",
                    )
                })?;
                keys.push((field.split('.').map(str::to_owned).collect(), ascending));
            }
            Ok(SortBy::Fields(keys))
        }
        number if super::Num::of(number).is_some() => direction(number)
            .map(|ascending| SortBy::Whole { ascending })
            .ok_or_else(|| located(2942506, "The $sort element value must be either 1 or -1")),
        _ => Err(located(
            2942507,
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )),
    }
}

pub(super) fn parse_sort_array(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    let Bson::Document(spec) = arg else {
        return Err(located(
            2942500,
            format!(
                "$sortArray requires an object as an argument, found: {}",
                type_of(Some(arg))
            ),
        ));
    };
    let mut input = None;
    let mut sort_by = None;
    for (key, value) in spec {
        match key.as_str() {
            "input" => input = Some(Box::new(parse_expr(value, scope)?)),
            "sortBy" => sort_by = Some(parse_sort_by(value)?),
            other => {
                return Err(located(
                    2942501,
                    format!("$sortArray found an unknown argument: {other}"),
                ));
            }
        }
    }
    let input =
        input.ok_or_else(|| located(2942502, "$sortArray requires 'input' to be specified"))?;
    let sort_by =
        sort_by.ok_or_else(|| located(2942503, "$sortArray requires 'sortBy' to be specified"))?;
    Ok(Expr::SortArray { input, sort_by })
}

/// The value at a dotted path through documents (and numeric array positions); null if absent.
fn dotted(value: &Bson, parts: &[String]) -> Bson {
    let Some((head, rest)) = parts.split_first() else {
        return value.clone();
    };
    let child = match value {
        Bson::Document(doc) => doc.get(head),
        Bson::Array(items) => head.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    };
    child.map_or(Bson::Null, |child| dotted(child, rest))
}

fn sort_key(value: &Bson, keys: &[(Vec<String>, bool)]) -> Vec<Bson> {
    keys.iter()
        .map(|(parts, _)| match value {
            Bson::Document(_) => dotted(value, parts),
            _ => Bson::Null,
        })
        .collect()
}

pub(super) fn eval_sort_array(input: &Expr, sort_by: &SortBy, ctx: &mut Ctx<'_>) -> Result<Value> {
    let mut items = match eval(input, ctx)? {
        value if nullish(&value) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(located(
                2942504,
                format!(
                    "The input argument to $sortArray must be an array, but was of type: {}",
                    type_label(&other)
                ),
            ));
        }
    };
    match sort_by {
        SortBy::Whole { ascending } => {
            items.sort_by(|a, b| {
                let order = bsonorder::compare(a, b);
                if *ascending { order } else { order.reverse() }
            });
        }
        SortBy::Fields(keys) => {
            let mut keyed: Vec<(Vec<Bson>, Bson)> =
                items.into_iter().map(|v| (sort_key(&v, keys), v)).collect();
            keyed.sort_by(|(a, _), (b, _)| compare_keys(a, b, keys));
            items = keyed.into_iter().map(|(_, v)| v).collect();
        }
    }
    Ok(Some(Bson::Array(items)))
}

fn compare_keys(a: &[Bson], b: &[Bson], keys: &[(Vec<String>, bool)]) -> Ordering {
    for ((left, right), (_, ascending)) in a.iter().zip(b).zip(keys) {
        let order = bsonorder::compare(left, right);
        let order = if *ascending { order } else { order.reverse() };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

// ---------------------------------------------------------------------------------------------
// $getField, $setField, $unsetField
// ---------------------------------------------------------------------------------------------

/// The `field` argument: a constant string, with MongoDB's errors for a path or non-constant.
fn constant_field(
    name: &str,
    value: &Bson,
    scope: &mut Vec<String>,
    codes: [i32; 3],
) -> Result<String> {
    if let Bson::String(text) = value
        && text.starts_with('$')
    {
        return Err(located(
            codes[0],
            format!(
                "'{text}' is a field path reference which is not allowed in this context. Did you mean {{$literal: '{text}'}}?"
            ),
        ));
    }
    match parse_expr(value, scope)? {
        Expr::Literal(Bson::String(field)) => Ok(field),
        Expr::Literal(other) => Err(located(
            codes[2],
            format!(
                "{name} requires 'field' to evaluate to type String, but got {}",
                type_of(Some(&other))
            ),
        )),
        _ => Err(located(
            codes[1],
            format!(
                "{name} requires 'field' to evaluate to a constant, but got a non-constant argument"
            ),
        )),
    }
}

fn current() -> Expr {
    Expr::Var("CURRENT".to_owned(), Vec::new())
}

pub(super) fn parse_get_field(arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    const CODES: [i32; 3] = [5654600, 5654601, 5654602];
    let mut field = None;
    let mut input = None;
    match arg {
        Bson::Document(spec) if spec.keys().next().is_some_and(|k| k.starts_with('$')) => {
            field = Some(constant_field("$getField", arg, scope, CODES)?);
            input = Some(current());
        }
        Bson::Document(spec) => {
            for (key, value) in spec {
                match key.as_str() {
                    "field" => field = Some(constant_field("$getField", value, scope, CODES)?),
                    "input" => input = Some(parse_expr(value, scope)?),
                    other => {
                        return Err(located(
                            3041701,
                            format!("$getField found an unknown argument: {other}"),
                        ));
                    }
                }
            }
        }
        other => {
            field = Some(constant_field("$getField", other, scope, CODES)?);
            input = Some(current());
        }
    }
    let field =
        field.ok_or_else(|| located(3041702, "$getField requires 'field' to be specified"))?;
    let input =
        input.ok_or_else(|| located(3041703, "$getField requires 'input' to be specified"))?;
    Ok(Expr::GetField {
        field,
        input: Box::new(input),
    })
}

pub(super) fn eval_get_field(field: &str, input: &Expr, ctx: &mut Ctx<'_>) -> Result<Value> {
    match eval(input, ctx)? {
        Some(Bson::Document(doc)) => Ok(doc.get(field).cloned()),
        Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
        _ => Ok(None),
    }
}

pub(super) fn parse_set_field(name: &str, arg: &Bson, scope: &mut Vec<String>) -> Result<Expr> {
    const CODES: [i32; 3] = [4161108, 4161106, 4161107];
    let unset = name == "$unsetField";
    let Bson::Document(spec) = arg else {
        return Err(located(
            4161100,
            format!("{name} only supports an object as its argument"),
        ));
    };
    let mut field = None;
    let mut input = None;
    let mut value = unset.then(|| Expr::Var("REMOVE".to_owned(), Vec::new()));
    for (key, argument) in spec {
        match key.as_str() {
            "field" => field = Some(constant_field(name, argument, scope, CODES)?),
            "input" => input = Some(parse_expr(argument, scope)?),
            "value" if !unset => value = Some(parse_expr(argument, scope)?),
            other => {
                return Err(located(
                    4161101,
                    format!("{name} found an unknown argument: {other}"),
                ));
            }
        }
    }
    let field = field
        .ok_or_else(|| located(4161102, format!("{name} requires 'field' to be specified")))?;
    let value = value
        .ok_or_else(|| located(4161103, format!("{name} requires 'value' to be specified")))?;
    let input = input
        .ok_or_else(|| located(4161109, format!("{name} requires 'input' to be specified")))?;
    Ok(Expr::SetField {
        field,
        input: Box::new(input),
        value: Box::new(value),
    })
}

pub(super) fn eval_set_field(
    field: &str,
    input: &Expr,
    value: &Expr,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let mut doc: Document = match eval(input, ctx)? {
        value if nullish(&value) => return Ok(Some(Bson::Null)),
        Some(Bson::Document(doc)) => doc,
        _ => {
            return Err(located(
                4161105,
                "$setField requires 'input' to evaluate to type Object",
            ));
        }
    };
    match eval(value, ctx)? {
        Some(new_value) => {
            doc.insert(field.to_owned(), new_value);
        }
        None => {
            doc.remove(field);
        }
    }
    Ok(Some(Bson::Document(doc)))
}
