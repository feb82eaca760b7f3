//! String search operators: `$indexOfBytes`, `$indexOfCP`, `$regexFind`, `$regexFindAll`,
//! `$regexMatch`, `$replaceOne` and `$replaceAll`. Indexes follow MongoDB exactly: byte offsets
//! for `$indexOfBytes`, code points for `$indexOfCP` and for a regex match's `idx`.

use bson::{Bson, Document};

use super::named::{self, NamedOp, eval_slot};
use super::{Ctx, Expr, Num, Op, Value, nullish, op_name, type_label};
use crate::error::{LocationCode, QueryError, Result};
use crate::filter::compile_regex;

/// The most bytes of match documents `$regexFindAll` may produce (MongoDB's 64 MB buffer limit).
const REGEX_FIND_ALL_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A start or end index argument: a non-negative 32-bit integer (40096, 40097).
pub(super) fn index_arg(name: &str, value: &Value, what: &str) -> Result<usize> {
    let whole = value
        .as_ref()
        .and_then(Num::of)
        .and_then(Num::as_whole)
        .filter(|v| i32::try_from(*v).is_ok());
    let Some(whole) = whole else {
        return Err(QueryError::location(
            LocationCode(40096),
            format!(
                "{name} requires an integral {what}, found a value of type: {}, with value: {}",
                type_label(value),
                value.as_ref().map_or("missing".to_owned(), Bson::to_string)
            ),
        ));
    };
    usize::try_from(whole).map_err(|_| {
        QueryError::location(
            LocationCode(40097),
            format!("{name} requires a nonnegative {what}, found: {whole}"),
        )
    })
}

/// `$indexOfBytes` and `$indexOfCP`.
pub(super) fn index_of(op: Op, args: Vec<Value>) -> Result<Value> {
    let name = op_name(op);
    let cp = op == Op::IndexOfCP;
    let input = match &args[0] {
        value if nullish(value) => return Ok(Some(Bson::Null)),
        Some(Bson::String(input)) => input,
        other => {
            return Err(QueryError::location(
                LocationCode(if cp { 40093 } else { 40091 }),
                format!(
                    "{name} requires a string as the first argument, found: {}",
                    type_label(other)
                ),
            ));
        }
    };
    let Some(Bson::String(token)) = &args[1] else {
        return Err(QueryError::location(
            LocationCode(if cp { 40094 } else { 40092 }),
            format!(
                "{name} requires a string as the second argument, found: {}",
                type_label(&args[1])
            ),
        ));
    };
    let start = match args.get(2) {
        Some(value) => index_arg(name, value, "starting index")?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(value) => Some(index_arg(name, value, "ending index")?),
        None => None,
    };
    let found = if cp {
        index_of_code_point(input, token, start, end)
    } else {
        index_of_byte(input, token, start, end)
    };
    Ok(Some(Bson::Int32(
        found.and_then(|i| i32::try_from(i).ok()).unwrap_or(-1),
    )))
}

fn index_of_byte(input: &str, token: &str, start: usize, end: Option<usize>) -> Option<usize> {
    let end = end.map_or(input.len(), |e| e.min(input.len()));
    if start > input.len() || end < start {
        return None;
    }
    let haystack = &input.as_bytes()[..end];
    let needle = token.as_bytes();
    if needle.is_empty() {
        return Some(start);
    }
    haystack[start..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|offset| start + offset)
}

fn index_of_code_point(
    input: &str,
    token: &str,
    start: usize,
    end: Option<usize>,
) -> Option<usize> {
    let length = input.chars().count();
    let end = end.map_or(length, |e| e.min(length));
    if end < start {
        return None;
    }
    if input.is_empty() && token.is_empty() && start == 0 {
        return Some(0);
    }
    input
        .char_indices()
        .enumerate()
        .skip(start)
        .take(end.saturating_sub(start))
        .find(|(_, (byte, _))| input[*byte..].starts_with(token))
        .map(|(index, _)| index)
}

// ---------------------------------------------------------------------------------------------
// $regexFind, $regexFindAll, $regexMatch
// ---------------------------------------------------------------------------------------------

/// What a regex operator runs on: `None` when the input or the pattern is null or missing.
struct RegexRun {
    input: String,
    regex: regex::Regex,
}

/// Reads and compiles the operator's arguments in MongoDB's order of checks: a bad pattern or
/// option fails even when the input is null.
fn regex_run(op: NamedOp, slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Option<RegexRun>> {
    let name = named::name(op);
    let input = eval_slot(slots, 0, ctx)?;
    let pattern = eval_slot(slots, 1, ctx)?;
    let options = eval_slot(slots, 2, ctx)?;
    let input = match input {
        value if nullish(&value) => None,
        Some(Bson::String(text)) => Some(text),
        _ => {
            return Err(QueryError::location(
                LocationCode(51104),
                format!("{name} needs 'input' to be of type string"),
            ));
        }
    };
    let (pattern, mut flags) = match pattern {
        value if nullish(&value) => (None, None),
        Some(Bson::String(text)) => (Some(text), None),
        Some(Bson::RegularExpression(regex)) => {
            if !nullish(&options) && !regex.options.is_empty() {
                return Err(QueryError::location(
                    LocationCode(51107),
                    format!(
                        "{name}: found regex option(s) specified in both 'regex' and 'option' fields"
                    ),
                ));
            }
            let flags = (!regex.options.is_empty()).then_some(regex.options);
            (Some(regex.pattern), flags)
        }
        _ => {
            return Err(QueryError::location(
                LocationCode(51105),
                format!("{name} needs 'regex' to be of type string or regex"),
            ));
        }
    };
    match options {
        value if nullish(&value) => {}
        Some(Bson::String(text)) => flags = Some(text),
        _ => {
            return Err(QueryError::location(
                LocationCode(51106),
                format!("{name} needs 'options' to be of type string"),
            ));
        }
    }
    let Some(pattern) = pattern else {
        return Ok(None);
    };
    let regex = compile(name, &pattern, flags.as_deref().unwrap_or_default())?;
    Ok(input.map(|input| RegexRun { input, regex }))
}

fn compile(name: &str, pattern: &str, flags: &str) -> Result<regex::Regex> {
    if pattern.contains('\0') {
        return Err(QueryError::location(
            LocationCode(51109),
            format!("{name}: regular expression cannot contain an embedded null byte"),
        ));
    }
    if flags.contains('\0') {
        return Err(QueryError::location(
            LocationCode(51110),
            format!("{name}: regular expression options cannot contain an embedded null byte"),
        ));
    }
    if let Some(bad) = flags.chars().find(|c| !"imsxu".contains(*c)) {
        return Err(QueryError::location(
            LocationCode(51108),
            format!("{name} invalid flag in regex options: {bad}"),
        ));
    }
    compile_regex(pattern, flags).map_err(|err| {
        QueryError::location(
            LocationCode(51111),
            format!("Invalid Regex in {name}: {err}"),
        )
    })
}

/// The match document `{match, idx, captures}`; unmatched groups capture null.
fn match_document(captures: &regex::Captures<'_>, code_point: i64) -> Document {
    let whole = captures.get(0).map_or("", |m| m.as_str());
    let groups: Vec<Bson> = captures
        .iter()
        .skip(1)
        .map(|group| group.map_or(Bson::Null, |m| Bson::String(m.as_str().to_owned())))
        .collect();
    let mut doc = Document::new();
    doc.insert("match", whole);
    doc.insert(
        "idx",
        Bson::Int32(i32::try_from(code_point).unwrap_or(i32::MAX)),
    );
    doc.insert("captures", groups);
    doc
}

pub(super) fn eval_regex(op: NamedOp, slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let run = regex_run(op, slots, ctx)?;
    let Some(RegexRun { input, regex }) = run else {
        return Ok(Some(match op {
            NamedOp::RegexMatch => Bson::Boolean(false),
            NamedOp::RegexFindAll => Bson::Array(Vec::new()),
            _ => Bson::Null,
        }));
    };
    match op {
        NamedOp::RegexMatch => Ok(Some(Bson::Boolean(regex.is_match(&input)))),
        NamedOp::RegexFind => Ok(Some(match regex.captures(&input) {
            Some(captures) => {
                let start = captures.get(0).map_or(0, |m| m.start());
                let code_point = code_points(&input[..start]);
                Bson::Document(match_document(&captures, code_point))
            }
            None => Bson::Null,
        })),
        _ => find_all(&input, &regex).map(|all| Some(Bson::Array(all))),
    }
}

fn code_points(text: &str) -> i64 {
    i64::try_from(text.chars().count()).unwrap_or(i64::MAX)
}

/// Every non-overlapping match; an empty match moves the search on by one code point.
fn find_all(input: &str, regex: &regex::Regex) -> Result<Vec<Bson>> {
    let mut out = Vec::new();
    let mut position = 0;
    let mut output_bytes = 0;
    while let Some(captures) = regex.captures_at(input, position) {
        let Some(whole) = captures.get(0) else {
            break;
        };
        let doc = match_document(&captures, code_points(&input[..whole.start()]));
        output_bytes += whole.len() + 64;
        if output_bytes > REGEX_FIND_ALL_BYTES_MAX {
            return Err(QueryError::location(
                LocationCode(51151),
                "$regexFindAll: the size of buffer to store output exceeded the 64MB limit",
            ));
        }
        out.push(Bson::Document(doc));
        position = if whole.is_empty() {
            let next = input[whole.start()..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            whole.start() + next
        } else {
            whole.end()
        };
        if position >= input.len() {
            break;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// $replaceOne, $replaceAll
// ---------------------------------------------------------------------------------------------

pub(super) fn eval_replace(
    op: NamedOp,
    slots: &[Option<Expr>],
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let name = named::name(op);
    let input = eval_slot(slots, 0, ctx)?;
    let find = eval_slot(slots, 1, ctx)?;
    let replacement = eval_slot(slots, 2, ctx)?;
    for (value, field, code) in [
        (&input, "input", 51746),
        (&find, "find", 51745),
        (&replacement, "replacement", 51744),
    ] {
        if !nullish(value) && !matches!(value, Some(Bson::String(_))) {
            return Err(QueryError::location(
                LocationCode(code),
                format!(
                    "{name} requires that '{field}' be a string, found: {}",
                    value.as_ref().map_or("missing".to_owned(), Bson::to_string)
                ),
            ));
        }
    }
    let (Some(Bson::String(input)), Some(Bson::String(find)), Some(Bson::String(replacement))) =
        (input, find, replacement)
    else {
        return Ok(Some(Bson::Null));
    };
    let replaced = if op == NamedOp::ReplaceOne {
        input.replacen(&find, &replacement, 1)
    } else {
        input.replace(&find, &replacement)
    };
    Ok(Some(Bson::String(replaced)))
}
