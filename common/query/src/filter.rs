//! Query filters (`find`'s `filter`, `$match`, update/delete `q`): parsed once into a tree of
//! logical nodes over per-path conditions, then matched against documents.
//!
//! MongoDB's array rule lives in the split between [`Node`] and [`Leaf`]: a path condition holds
//! when *some* value the path reaches (see `path::any_leaf`) satisfies the leaf, and a leaf
//! facing an array also tries each element. Logical operators sit above that "some", which is
//! why `{a: {$gt: 1, $lt: 5}}` matches `[0, 10]` (each bound met by a different element) and why
//! `$ne`/`$nin` mean "no reached value is equal".

use std::cmp::Ordering;

use bson::{Bson, Document, Regex as BsonRegex};
use shoal_common::bsonorder::{self, canonical_rank};

use crate::error::{LocationCode, QueryError, Result};
use crate::expr::{Expression, truthy};
use crate::path;

/// The largest compiled program a `$regex` may produce, so one pattern cannot exhaust memory.
const REGEX_PROGRAM_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A parsed query filter.
#[derive(Clone, Debug)]
pub struct Filter {
    root: Node,
}

#[derive(Clone, Debug)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    /// A condition on the values a path reaches.
    Path {
        parts: Vec<String>,
        leaf: Leaf,
    },
    Expr(Expression),
    Const(bool),
}

/// A condition on one value, used where no path is involved: `$elemMatch`'s value form.
#[derive(Clone, Debug)]
pub(crate) enum ValueNode {
    And(Vec<ValueNode>),
    Not(Box<ValueNode>),
    Leaf(Leaf),
    Const(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A compiled regular expression with the BSON pattern/options it came from.
#[derive(Clone, Debug)]
pub(crate) struct Re {
    pattern: String,
    options: String,
    compiled: regex::Regex,
}

/// A `$type` selector: a BSON type code (MongoDB numbering) or "number".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TypeSel {
    Number,
    Code(i32),
}

#[derive(Clone, Debug)]
pub(crate) enum Leaf {
    Eq(Bson),
    Cmp(CmpOp, Bson),
    /// `values` is sorted in `bsonorder` so membership is a binary search.
    In {
        values: Vec<Bson>,
        has_null: bool,
        regexes: Vec<Re>,
    },
    Exists,
    Type(Vec<TypeSel>),
    Regex(Re),
    Mod {
        divisor: i64,
        remainder: i64,
    },
    Size(usize),
    ElemMatchObject(Box<Node>),
    ElemMatchValue(Box<ValueNode>),
}

impl Filter {
    /// Parses a filter document.
    pub fn parse(filter: &Document) -> Result<Filter> {
        crate::nesting::check_document(filter)?;
        Ok(Filter {
            root: parse_document(filter)?,
        })
    }

    /// The filter `{}`.
    pub fn match_all() -> Filter {
        Filter {
            root: Node::Const(true),
        }
    }

    /// Whether `doc` matches. A `$expr` that fails to evaluate counts as no match; use
    /// [`Filter::try_matches`] to see the error.
    pub fn matches(&self, doc: &Document) -> bool {
        self.try_matches(doc).unwrap_or(false)
    }

    /// Whether `doc` matches, reporting `$expr` evaluation errors.
    pub fn try_matches(&self, doc: &Document) -> Result<bool> {
        self.root.matches(doc)
    }

    /// Whether the filter matches every document (it is `{}` or made only of `$comment`).
    pub fn is_match_all(&self) -> bool {
        match &self.root {
            Node::Const(value) => *value,
            Node::And(children) => children.iter().all(|c| matches!(c, Node::Const(true))),
            _ => false,
        }
    }

    /// Whether some path condition looks at `prefix` or below it (used by positional `$`).
    pub(crate) fn references_prefix(&self, prefix: &[String]) -> bool {
        self.root.references_prefix(prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn and_of(mut children: Vec<Node>) -> Node {
    if children.len() == 1 {
        return children.pop().unwrap_or(Node::Const(true));
    }
    if children.is_empty() {
        return Node::Const(true);
    }
    Node::And(children)
}

pub(crate) fn parse_document(filter: &Document) -> Result<Node> {
    let mut children = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        if let Some(operator) = key.strip_prefix('$') {
            children.push(parse_top_operator(operator, value)?);
        } else {
            children.push(parse_path_condition(key, value)?);
        }
    }
    Ok(and_of(children))
}

fn parse_top_operator(operator: &str, value: &Bson) -> Result<Node> {
    match operator {
        "and" | "or" | "nor" => {
            let children = parse_logical_list(operator, value)?;
            Ok(match operator {
                "and" => Node::And(children),
                "or" => Node::Or(children),
                _ => Node::Nor(children),
            })
        }
        "expr" => Ok(Node::Expr(Expression::parse(value)?)),
        "comment" => Ok(Node::Const(true)),
        "alwaysTrue" => Ok(Node::Const(true)),
        "alwaysFalse" => Ok(Node::Const(false)),
        // No collection has a text index, so `$text` fails the way MongoDB fails without one.
        "text" => Err(QueryError::IndexNotFound(
            "text index required for $text query".to_owned(),
        )),
        "where" | "jsonSchema" | "sampleRate" => Err(QueryError::bad_value(format!(
            "${operator} is not supported by this server"
        ))),
        other => Err(QueryError::bad_value(format!(
            "unknown top level operator: ${other}"
        ))),
    }
}

fn parse_logical_list(operator: &str, value: &Bson) -> Result<Vec<Node>> {
    let Bson::Array(items) = value else {
        return Err(QueryError::bad_value(format!(
            "${operator} must be an array"
        )));
    };
    if items.is_empty() {
        return Err(QueryError::bad_value(
            "$and/$or/$nor must be a nonempty array",
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(doc) => parse_document(doc),
            _ => Err(QueryError::bad_value(
                "$or/$and/$nor entries need to be full objects",
            )),
        })
        .collect()
}

/// Whether a document is an operator document (`{$gt: 1}`) rather than a value to compare.
fn is_operator_document(doc: &Document) -> bool {
    doc.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn parse_path_condition(path: &str, value: &Bson) -> Result<Node> {
    let parts = path::split(path);
    let value_node = match value {
        Bson::RegularExpression(regex) => ValueNode::Leaf(Leaf::Regex(Re::from_bson(regex)?)),
        Bson::Document(doc) if is_operator_document(doc) => parse_operators(doc)?,
        other => ValueNode::Leaf(Leaf::Eq(other.clone())),
    };
    Ok(value_node.at_path(&parts))
}

/// Parses `{$gt: 1, $lt: 5, ...}`: the conjunction of its operators.
pub(crate) fn parse_operators(doc: &Document) -> Result<ValueNode> {
    let mut children = Vec::with_capacity(doc.len());
    let regex_options = doc.get("$options");
    if regex_options.is_some() && !doc.contains_key("$regex") {
        return Err(QueryError::bad_value("$options needs a $regex"));
    }
    for (key, value) in doc {
        match key.as_str() {
            "$options" => {}
            "$regex" => children.push(ValueNode::Leaf(Leaf::Regex(parse_regex_operator(
                value,
                regex_options,
            )?))),
            _ => children.push(parse_operator(key, value)?),
        }
    }
    if children.len() == 1 {
        return Ok(children.pop().unwrap_or(ValueNode::Const(true)));
    }
    Ok(ValueNode::And(children))
}

fn parse_operator(key: &str, value: &Bson) -> Result<ValueNode> {
    let leaf = |l: Leaf| Ok(ValueNode::Leaf(l));
    match key {
        "$eq" => leaf(Leaf::Eq(value.clone())),
        "$ne" => {
            if matches!(value, Bson::RegularExpression(_)) {
                return Err(QueryError::bad_value("Can't have regex as arg to $ne."));
            }
            Ok(ValueNode::Not(Box::new(ValueNode::Leaf(Leaf::Eq(
                value.clone(),
            )))))
        }
        "$gt" => leaf(Leaf::Cmp(CmpOp::Gt, value.clone())),
        "$gte" => leaf(Leaf::Cmp(CmpOp::Gte, value.clone())),
        "$lt" => leaf(Leaf::Cmp(CmpOp::Lt, value.clone())),
        "$lte" => leaf(Leaf::Cmp(CmpOp::Lte, value.clone())),
        "$in" => leaf(parse_in("$in", value)?),
        "$nin" => Ok(ValueNode::Not(Box::new(ValueNode::Leaf(parse_in(
            "$nin", value,
        )?)))),
        "$exists" => {
            let exists = ValueNode::Leaf(Leaf::Exists);
            Ok(if truthy(Some(value)) {
                exists
            } else {
                ValueNode::Not(Box::new(exists))
            })
        }
        "$type" => leaf(Leaf::Type(parse_type_selectors(value)?)),
        "$mod" => leaf(parse_mod(value)?),
        "$size" => leaf(Leaf::Size(parse_size(value)?)),
        "$all" => parse_all(value),
        "$elemMatch" => leaf(parse_elem_match(value)?),
        "$not" => Ok(ValueNode::Not(Box::new(parse_not(value)?))),
        other => Err(QueryError::bad_value(format!("unknown operator: {other}"))),
    }
}

fn parse_in(name: &str, value: &Bson) -> Result<Leaf> {
    let Bson::Array(items) = value else {
        return Err(QueryError::bad_value(format!("{name} needs an array")));
    };
    let mut values = Vec::new();
    let mut regexes = Vec::new();
    for item in items {
        match item {
            Bson::RegularExpression(regex) => regexes.push(Re::from_bson(regex)?),
            Bson::Document(doc) if is_operator_document(doc) => {
                return Err(QueryError::bad_value(format!("cannot nest $ under {name}")));
            }
            other => values.push(other.clone()),
        }
    }
    values.sort_by(bsonorder::compare);
    let has_null = values.iter().any(|v| matches!(v, Bson::Null));
    Ok(Leaf::In {
        values,
        has_null,
        regexes,
    })
}

fn parse_regex_operator(value: &Bson, options: Option<&Bson>) -> Result<Re> {
    let extra = match options {
        None => "",
        Some(Bson::String(o)) => o.as_str(),
        Some(_) => return Err(QueryError::bad_value("$options has to be a string")),
    };
    match value {
        Bson::String(pattern) => Re::new(pattern, extra),
        Bson::RegularExpression(regex) if regex.options.is_empty() || extra.is_empty() => {
            Re::new(&regex.pattern, &format!("{}{extra}", regex.options))
        }
        Bson::RegularExpression(_) => Err(QueryError::location(
            LocationCode(51075),
            "options set in both $regex and $options",
        )),
        _ => Err(QueryError::bad_value("$regex has to be a string")),
    }
}

fn parse_not(value: &Bson) -> Result<ValueNode> {
    match value {
        Bson::RegularExpression(regex) => Ok(ValueNode::Leaf(Leaf::Regex(Re::from_bson(regex)?))),
        Bson::Document(doc) if doc.is_empty() => Err(QueryError::bad_value("$not cannot be empty")),
        Bson::Document(doc) => parse_operators(doc),
        _ => Err(QueryError::bad_value("$not needs a regex or a document")),
    }
}

fn parse_mod(value: &Bson) -> Result<Leaf> {
    let Bson::Array(items) = value else {
        return Err(QueryError::bad_value("malformed mod, needs to be an array"));
    };
    if items.len() < 2 {
        return Err(QueryError::bad_value("malformed mod, not enough elements"));
    }
    if items.len() > 2 {
        return Err(QueryError::bad_value("malformed mod, too many elements"));
    }
    let as_int = |v: &Bson, what: &str| {
        crate::expr::Num::of(v)
            .map(|n| n.as_f64())
            .filter(|f| f.is_finite())
            .map(|f| f.trunc() as i64)
            .ok_or_else(|| QueryError::bad_value(format!("malformed mod, {what} not a number")))
    };
    let divisor = as_int(&items[0], "divisor")?;
    let remainder = as_int(&items[1], "remainder")?;
    if divisor == 0 {
        return Err(QueryError::bad_value("divisor cannot be 0"));
    }
    Ok(Leaf::Mod { divisor, remainder })
}

fn parse_size(value: &Bson) -> Result<usize> {
    let Some(number) = crate::expr::Num::of(value) else {
        return Err(QueryError::bad_value("$size needs a number"));
    };
    let Some(whole) = number.as_whole() else {
        return Err(QueryError::bad_value(format!(
            "$size must be a whole number: {value}"
        )));
    };
    usize::try_from(whole)
        .map_err(|_| QueryError::bad_value(format!("$size may not be negative: {whole}")))
}

fn parse_all(value: &Bson) -> Result<ValueNode> {
    let Bson::Array(items) = value else {
        return Err(QueryError::bad_value("$all needs an array"));
    };
    if items.is_empty() {
        return Ok(ValueNode::Const(false));
    }
    let mut children = Vec::with_capacity(items.len());
    for item in items {
        let child = match item {
            Bson::RegularExpression(regex) => Leaf::Regex(Re::from_bson(regex)?),
            Bson::Document(doc) if is_operator_document(doc) => match doc.get("$elemMatch") {
                Some(spec) if doc.len() == 1 => parse_elem_match(spec)?,
                _ => return Err(QueryError::bad_value("no $ expressions in $all")),
            },
            other => Leaf::Eq(other.clone()),
        };
        children.push(ValueNode::Leaf(child));
    }
    Ok(ValueNode::And(children))
}

fn parse_elem_match(value: &Bson) -> Result<Leaf> {
    let Bson::Document(spec) = value else {
        return Err(QueryError::bad_value("$elemMatch needs an Object"));
    };
    let value_form = spec.keys().next().is_some_and(|k| {
        k.starts_with('$')
            && !matches!(
                k.as_str(),
                "$and" | "$or" | "$nor" | "$expr" | "$where" | "$text" | "$comment"
            )
    });
    if value_form {
        Ok(Leaf::ElemMatchValue(Box::new(parse_operators(spec)?)))
    } else {
        Ok(Leaf::ElemMatchObject(Box::new(parse_document(spec)?)))
    }
}

const TYPE_ALIASES: &[(&str, i32)] = &[
    ("double", 1),
    ("string", 2),
    ("object", 3),
    ("array", 4),
    ("binData", 5),
    ("undefined", 6),
    ("objectId", 7),
    ("bool", 8),
    ("date", 9),
    ("null", 10),
    ("regex", 11),
    ("dbPointer", 12),
    ("javascript", 13),
    ("symbol", 14),
    ("javascriptWithScope", 15),
    ("int", 16),
    ("timestamp", 17),
    ("long", 18),
    ("decimal", 19),
    ("minKey", -1),
    ("maxKey", 127),
];

fn parse_type_selectors(value: &Bson) -> Result<Vec<TypeSel>> {
    match value {
        Bson::Array(items) => items.iter().map(parse_type_selector).collect(),
        single => Ok(vec![parse_type_selector(single)?]),
    }
}

fn parse_type_selector(value: &Bson) -> Result<TypeSel> {
    if let Bson::String(name) = value {
        if name == "number" {
            return Ok(TypeSel::Number);
        }
        return TYPE_ALIASES
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, code)| TypeSel::Code(*code))
            .ok_or_else(|| QueryError::bad_value(format!("Unknown type name alias: {name}")));
    }
    let Some(number) = crate::expr::Num::of(value) else {
        return Err(QueryError::TypeMismatch(
            "type must be represented as a number or a string".to_owned(),
        ));
    };
    let code = number.as_whole().and_then(|w| i32::try_from(w).ok());
    match code {
        Some(code) if TYPE_ALIASES.iter().any(|(_, c)| *c == code) => Ok(TypeSel::Code(code)),
        _ => Err(QueryError::bad_value(format!(
            "Invalid numerical type code: {value}"
        ))),
    }
}

/// MongoDB's numeric code for a value's BSON type (MinKey is -1).
pub(crate) fn type_code(value: &Bson) -> i32 {
    match value.element_type() as u8 {
        0xFF => -1,
        code => i32::from(code),
    }
}

/// Compiles a BSON regex with MongoDB's options (i, m, s, x; u is accepted and ignored).
/// Patterns use the `regex` crate's syntax, which lacks PCRE's look-around and back-references.
pub(crate) fn compile_regex(pattern: &str, options: &str) -> Result<regex::Regex> {
    let mut builder = regex::RegexBuilder::new(pattern);
    builder.size_limit(REGEX_PROGRAM_BYTES_MAX);
    for flag in options.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            'u' => &mut builder,
            other => {
                return Err(QueryError::location(
                    LocationCode(51108),
                    format!("invalid flag in regex options: {other}"),
                ));
            }
        };
    }
    builder.build().map_err(|err| {
        QueryError::location(
            LocationCode::INVALID_REGEX,
            format!("Regular expression is invalid: {err}"),
        )
    })
}

impl Re {
    fn new(pattern: &str, options: &str) -> Result<Re> {
        Ok(Re {
            pattern: pattern.to_owned(),
            options: options.to_owned(),
            compiled: compile_regex(pattern, options)?,
        })
    }

    fn from_bson(regex: &BsonRegex) -> Result<Re> {
        Re::new(&regex.pattern, &regex.options)
    }

    fn matches(&self, value: &Bson) -> bool {
        match value {
            Bson::String(text) | Bson::Symbol(text) => self.compiled.is_match(text),
            Bson::RegularExpression(regex) => {
                regex.pattern == self.pattern && regex.options == self.options
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

impl ValueNode {
    /// Turns a single-value condition into one on the values a path reaches.
    fn at_path(self, parts: &[String]) -> Node {
        match self {
            ValueNode::And(children) => {
                Node::And(children.into_iter().map(|c| c.at_path(parts)).collect())
            }
            ValueNode::Not(child) => Node::Not(Box::new(child.at_path(parts))),
            ValueNode::Leaf(leaf) => Node::Path {
                parts: parts.to_vec(),
                leaf,
            },
            ValueNode::Const(value) => Node::Const(value),
        }
    }

    /// Whether one value (no array expansion) satisfies the condition.
    pub(crate) fn matches_single(&self, value: Option<&Bson>) -> bool {
        match self {
            ValueNode::And(children) => children.iter().all(|c| c.matches_single(value)),
            ValueNode::Not(child) => !child.matches_single(value),
            ValueNode::Leaf(leaf) => leaf.matches_single(value),
            ValueNode::Const(constant) => *constant,
        }
    }

    /// Whether a value satisfies the condition the way a field holding it would (arrays also
    /// match through their elements); `$pull` conditions use this.
    pub(crate) fn matches_as_field(&self, value: Option<&Bson>) -> bool {
        match self {
            ValueNode::And(children) => children.iter().all(|c| c.matches_as_field(value)),
            ValueNode::Not(child) => !child.matches_as_field(value),
            ValueNode::Leaf(leaf) => leaf.matches_path(value),
            ValueNode::Const(constant) => *constant,
        }
    }
}

impl Node {
    pub(crate) fn matches(&self, doc: &Document) -> Result<bool> {
        match self {
            Node::And(children) => {
                for child in children {
                    if !child.matches(doc)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Or(children) => {
                for child in children {
                    if child.matches(doc)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Node::Nor(children) => Node::Or(children.clone()).matches(doc).map(|m| !m),
            Node::Not(child) => child.matches(doc).map(|m| !m),
            Node::Path { parts, leaf } => Ok(path::any_leaf(doc, parts, &mut |value| {
                leaf.matches_path(value)
            })),
            Node::Expr(expression) => Ok(truthy(expression.evaluate(doc)?.as_ref())),
            Node::Const(value) => Ok(*value),
        }
    }

    fn references_prefix(&self, prefix: &[String]) -> bool {
        match self {
            Node::And(children) | Node::Or(children) | Node::Nor(children) => {
                children.iter().any(|c| c.references_prefix(prefix))
            }
            Node::Not(child) => child.references_prefix(prefix),
            Node::Path { parts, .. } => parts.starts_with(prefix),
            Node::Expr(_) | Node::Const(_) => false,
        }
    }
}

fn is_nan(value: &Bson) -> bool {
    matches!(value, Bson::Double(v) if v.is_nan())
}

fn values_equal(a: &Bson, b: &Bson) -> bool {
    canonical_rank(a) == canonical_rank(b) && bsonorder::compare(a, b) == Ordering::Equal
}

impl Leaf {
    /// The leaf applied to a value a path reached: arrays match as a whole or by an element,
    /// except for the operators that are about the array itself.
    fn matches_path(&self, value: Option<&Bson>) -> bool {
        match (self, value) {
            (Leaf::Exists, _) => value.is_some(),
            (Leaf::Size(_) | Leaf::ElemMatchObject(_) | Leaf::ElemMatchValue(_), _) => {
                self.matches_single(value)
            }
            (Leaf::Type(selectors), Some(Bson::Array(items))) => {
                selectors.contains(&TypeSel::Code(4))
                    || items.iter().any(|item| type_matches(selectors, item))
            }
            (_, Some(Bson::Array(items))) => {
                self.matches_single(value)
                    || items.iter().any(|item| self.matches_single(Some(item)))
            }
            _ => self.matches_single(value),
        }
    }

    fn matches_single(&self, value: Option<&Bson>) -> bool {
        match self {
            Leaf::Eq(expected) => match value {
                None => matches!(expected, Bson::Null),
                Some(actual) => values_equal(actual, expected),
            },
            Leaf::Cmp(op, bound) => compare_matches(*op, value, bound),
            Leaf::In {
                values,
                has_null,
                regexes,
            } => match value {
                None => *has_null,
                Some(v) => {
                    values
                        .binary_search_by(|probe| bsonorder::compare(probe, v))
                        .is_ok()
                        || regexes.iter().any(|re| re.matches(v))
                }
            },
            Leaf::Exists => value.is_some(),
            Leaf::Type(selectors) => value.is_some_and(|v| type_matches(selectors, v)),
            Leaf::Regex(re) => value.is_some_and(|v| re.matches(v)),
            Leaf::Mod { divisor, remainder } => {
                value.is_some_and(|v| mod_matches(v, *divisor, *remainder))
            }
            Leaf::Size(size) => matches!(value, Some(Bson::Array(items)) if items.len() == *size),
            Leaf::ElemMatchObject(node) => match value {
                Some(Bson::Array(items)) => items.iter().any(|item| match item {
                    Bson::Document(doc) => node.matches(doc).unwrap_or(false),
                    _ => false,
                }),
                _ => false,
            },
            Leaf::ElemMatchValue(node) => match value {
                Some(Bson::Array(items)) => {
                    items.iter().any(|item| node.matches_single(Some(item)))
                }
                _ => false,
            },
        }
    }
}

fn compare_matches(op: CmpOp, value: Option<&Bson>, bound: &Bson) -> bool {
    let inclusive = matches!(op, CmpOp::Gte | CmpOp::Lte);
    let Some(value) = value else {
        return inclusive && matches!(bound, Bson::Null);
    };
    let any_type = matches!(bound, Bson::MinKey | Bson::MaxKey);
    if !any_type && canonical_rank(value) != canonical_rank(bound) {
        return false;
    }
    if is_nan(value) || is_nan(bound) {
        return inclusive && is_nan(value) && is_nan(bound);
    }
    let order = bsonorder::compare(value, bound);
    match op {
        CmpOp::Gt => order == Ordering::Greater,
        CmpOp::Gte => order != Ordering::Less,
        CmpOp::Lt => order == Ordering::Less,
        CmpOp::Lte => order != Ordering::Greater,
    }
}

fn type_matches(selectors: &[TypeSel], value: &Bson) -> bool {
    let code = type_code(value);
    selectors.iter().any(|selector| match selector {
        TypeSel::Number => matches!(code, 1 | 16 | 18 | 19),
        TypeSel::Code(wanted) => *wanted == code,
    })
}

fn mod_matches(value: &Bson, divisor: i64, remainder: i64) -> bool {
    let dividend = match value {
        Bson::Int32(v) => i64::from(*v),
        Bson::Int64(v) => *v,
        Bson::Double(v) if v.is_finite() => v.trunc() as i64,
        Bson::Decimal128(_) => match crate::expr::Num::of(value).map(|n| n.as_f64()) {
            Some(f) if f.is_finite() => f.trunc() as i64,
            _ => return false,
        },
        _ => return false,
    };
    dividend.wrapping_rem(divisor) == remainder
}

#[cfg(test)]
mod tests {
    use bson::{Bson, bson, doc, oid::ObjectId};

    use super::*;

    fn check(filter: Document, doc: Document, expected: bool) {
        let parsed = Filter::parse(&filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(parsed.matches(&doc), expected, "filter {filter} on {doc}");
    }

    fn parse_code(filter: Document) -> i32 {
        match Filter::parse(&filter) {
            Err(err) => err.code().0,
            Ok(_) => panic!("{filter} parsed"),
        }
    }

    fn parse_message(filter: Document) -> String {
        match Filter::parse(&filter) {
            Err(err) => err.to_string(),
            Ok(_) => panic!("{filter} parsed"),
        }
    }

    #[test]
    fn equality_and_missing() {
        let cases = [
            (doc! {"qty": 20}, doc! {"qty": 20}, true),
            (doc! {"qty": 20}, doc! {"qty": 20.0}, true),
            (doc! {"qty": 20}, doc! {"qty": Bson::Int64(20)}, true),
            (doc! {"qty": 20}, doc! {"qty": "20"}, false),
            (
                doc! {"item.name": "ab"},
                doc! {"item": {"name": "ab", "code": "123"}},
                true,
            ),
            (doc! {"tags": "B"}, doc! {"tags": ["A", "B"]}, true),
            (doc! {"tags": ["A", "B"]}, doc! {"tags": ["A", "B"]}, true),
            (doc! {"tags": ["A", "B"]}, doc! {"tags": ["B", "A"]}, false),
            (
                doc! {"tags": ["A", "B"]},
                doc! {"tags": [["A", "B"], "C"]},
                true,
            ),
            (
                doc! {"item": {"a": 1, "b": 2}},
                doc! {"item": {"a": 1, "b": 2}},
                true,
            ),
            (
                doc! {"item": {"a": 1, "b": 2}},
                doc! {"item": {"b": 2, "a": 1}},
                false,
            ),
            (doc! {"x": null}, doc! {"y": 1}, true),
            (doc! {"x": null}, doc! {"x": null}, true),
            (doc! {"x": null}, doc! {"x": 0}, false),
            (doc! {"a.b": null}, doc! {"a": [{"b": 1}, {"c": 2}]}, true),
            (doc! {"a.b": null}, doc! {"a": [{"b": 1}]}, false),
            (doc! {"a.b": 1}, doc! {"a": [{"b": [0, 1]}]}, true),
            (doc! {"a.0": 5}, doc! {"a": [5, 6]}, true),
            (doc! {"a.1": 5}, doc! {"a": [5, 6]}, false),
            (doc! {"a.0.b": 2}, doc! {"a": [{"b": 2}]}, true),
            (doc! {"a.b.c": 3}, doc! {"a": [{"b": [{"c": 3}]}]}, true),
            (doc! {"$comment": "hi", "a": 1}, doc! {"a": 1}, true),
            (doc! {}, doc! {"a": 1}, true),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn comparison_operators_respect_type_brackets() {
        let cases = [
            (doc! {"qty": {"$eq": 20}}, doc! {"qty": 20}, true),
            (doc! {"qty": {"$gt": 20}}, doc! {"qty": 25}, true),
            (doc! {"qty": {"$gt": 20}}, doc! {"qty": 20}, false),
            (doc! {"qty": {"$gt": 20}}, doc! {"qty": "zzz"}, false),
            (doc! {"qty": {"$gte": 20}}, doc! {"qty": 20.0}, true),
            (doc! {"qty": {"$lt": 20}}, doc! {"qty": 19.5}, true),
            (doc! {"qty": {"$lt": 20}}, doc! {"qty": null}, false),
            (doc! {"qty": {"$lte": 20}}, doc! {"qty": [30, 10]}, true),
            (
                doc! {"qty": {"$gt": 1, "$lt": 5}},
                doc! {"qty": [0, 10]},
                true,
            ),
            (
                doc! {"qty": {"$elemMatch": {"$gt": 1, "$lt": 5}}},
                doc! {"qty": [0, 10]},
                false,
            ),
            (doc! {"name": {"$gt": "b"}}, doc! {"name": "c"}, true),
            (doc! {"name": {"$gt": "b"}}, doc! {"name": 5}, false),
            (doc! {"x": {"$gte": null}}, doc! {"y": 1}, true),
            (doc! {"x": {"$gt": null}}, doc! {"x": null}, false),
            (doc! {"x": {"$gt": Bson::MinKey}}, doc! {"x": "s"}, true),
            (
                doc! {"x": {"$lt": Bson::MaxKey}},
                doc! {"x": {"a": 1}},
                true,
            ),
            (doc! {"x": {"$lt": 5}}, doc! {"x": f64::NAN}, false),
            (doc! {"x": {"$gte": f64::NAN}}, doc! {"x": f64::NAN}, true),
            (doc! {"x": {"$eq": f64::NAN}}, doc! {"x": f64::NAN}, true),
            (
                doc! {"d": {"$gt": bson::DateTime::from_millis(5)}},
                doc! {"d": bson::DateTime::from_millis(6)},
                true,
            ),
            (doc! {"qty": {"$ne": 20}}, doc! {"qty": 21}, true),
            (doc! {"qty": {"$ne": 20}}, doc! {"other": 1}, true),
            (doc! {"qty": {"$ne": 20}}, doc! {"qty": [20, 21]}, false),
            (doc! {"x": {"$ne": null}}, doc! {"y": 1}, false),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn in_and_nin() {
        let cases = [
            (doc! {"qty": {"$in": [5, 15]}}, doc! {"qty": 15}, true),
            (doc! {"qty": {"$in": [5, 15]}}, doc! {"qty": 6}, false),
            (
                doc! {"tags": {"$in": ["a", "b"]}},
                doc! {"tags": ["c", "b"]},
                true,
            ),
            (
                doc! {"tags": {"$in": [Bson::RegularExpression(BsonRegex { pattern: "^be".into(), options: String::new() })]}},
                doc! {"tags": ["best"]},
                true,
            ),
            (doc! {"x": {"$in": [null]}}, doc! {"y": 1}, true),
            (doc! {"qty": {"$nin": [5, 15]}}, doc! {"qty": 6}, true),
            (doc! {"qty": {"$nin": [5, 15]}}, doc! {"none": 6}, true),
            (
                doc! {"tags": {"$nin": ["a"]}},
                doc! {"tags": ["a", "b"]},
                false,
            ),
            (doc! {"qty": {"$in": []}}, doc! {"qty": 1}, false),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn in_lists_mix_types() {
        let filter = doc! {"a": {"$in": [3, "x", null, [1, 2], {"b": 1}, 2.5, Bson::Int64(7)]}};
        let cases = [
            (doc! {"a": 7}, true),
            (doc! {"a": 7.0}, true),
            (doc! {"a": "x"}, true),
            (doc! {"a": [1, 2]}, true),
            (doc! {"a": [9, 2.5]}, true),
            (doc! {"a": {"b": 1}}, true),
            (doc! {"b": 1}, true),
            (doc! {"a": "y"}, false),
            (doc! {"a": 1}, false),
        ];
        for (doc, expected) in cases {
            check(filter.clone(), doc, expected);
        }
    }

    #[test]
    fn logical_operators() {
        let cases = [
            (
                doc! {"$and": [{"a": 1}, {"b": 2}]},
                doc! {"a": 1, "b": 2},
                true,
            ),
            (
                doc! {"$and": [{"a": 1}, {"b": 2}]},
                doc! {"a": 1, "b": 3},
                false,
            ),
            (
                doc! {"$or": [{"a": 1}, {"b": 2}]},
                doc! {"a": 0, "b": 2},
                true,
            ),
            (doc! {"$or": [{"a": 1}, {"b": 2}]}, doc! {"a": 0}, false),
            (
                doc! {"$nor": [{"price": 1.99}, {"sale": true}]},
                doc! {"price": 2},
                true,
            ),
            (
                doc! {"$nor": [{"price": 1.99}, {"sale": true}]},
                doc! {"sale": true},
                false,
            ),
            (
                doc! {"price": {"$not": {"$gt": 1.99}}},
                doc! {"price": 1.5},
                true,
            ),
            (
                doc! {"price": {"$not": {"$gt": 1.99}}},
                doc! {"item": 1},
                true,
            ),
            (
                doc! {"price": {"$not": {"$gt": 1.99}}},
                doc! {"price": 3},
                false,
            ),
            (
                doc! {"item": {"$not": Bson::RegularExpression(BsonRegex { pattern: "^p.*".into(), options: String::new() })}},
                doc! {"item": "pen"},
                false,
            ),
            (
                doc! {"item": {"$not": Bson::RegularExpression(BsonRegex { pattern: "^p.*".into(), options: String::new() })}},
                doc! {"item": "ink"},
                true,
            ),
            (doc! {"$alwaysFalse": 1}, doc! {}, false),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn element_operators() {
        let cases = [
            (doc! {"qty": {"$exists": true}}, doc! {"qty": null}, true),
            (doc! {"qty": {"$exists": true}}, doc! {"other": 1}, false),
            (doc! {"qty": {"$exists": false}}, doc! {"other": 1}, true),
            (
                doc! {"a.b": {"$exists": false}},
                doc! {"a": [{"b": 1}, {"c": 1}]},
                false,
            ),
            (
                doc! {"a.b": {"$exists": true}},
                doc! {"a": [{"c": 1}, {"b": null}]},
                true,
            ),
            (
                doc! {"zip": {"$type": "string"}},
                doc! {"zip": "10001"},
                true,
            ),
            (doc! {"zip": {"$type": 2}}, doc! {"zip": "10001"}, true),
            (
                doc! {"zip": {"$type": "number"}},
                doc! {"zip": Bson::Int64(1)},
                true,
            ),
            (doc! {"zip": {"$type": "number"}}, doc! {"zip": "1"}, false),
            (
                doc! {"zip": {"$type": ["double", "string"]}},
                doc! {"zip": 1.5},
                true,
            ),
            (doc! {"zip": {"$type": "int"}}, doc! {"zip": [1.5, 2]}, true),
            (doc! {"zip": {"$type": "array"}}, doc! {"zip": []}, true),
            (doc! {"zip": {"$type": "array"}}, doc! {"zip": 5}, false),
            (doc! {"zip": {"$type": "null"}}, doc! {"other": 5}, false),
            (
                doc! {"o": {"$type": "objectId"}},
                doc! {"o": ObjectId::new()},
                true,
            ),
            (
                doc! {"o": {"$type": "minKey"}},
                doc! {"o": Bson::MinKey},
                true,
            ),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn evaluation_operators() {
        let regex = |p: &str, o: &str| {
            Bson::RegularExpression(BsonRegex {
                pattern: p.into(),
                options: o.into(),
            })
        };
        let cases = [
            (doc! {"qty": {"$mod": [4, 0]}}, doc! {"qty": 12}, true),
            (doc! {"qty": {"$mod": [4, 0]}}, doc! {"qty": 13}, false),
            (doc! {"qty": {"$mod": [4, 1]}}, doc! {"qty": 13.9}, true),
            (doc! {"qty": {"$mod": [4, -1]}}, doc! {"qty": -5}, true),
            (
                doc! {"sku": {"$regex": "789$"}},
                doc! {"sku": "abc789"},
                true,
            ),
            (
                doc! {"sku": {"$regex": "^ABC", "$options": "i"}},
                doc! {"sku": "abc789"},
                true,
            ),
            (
                doc! {"sku": {"$regex": "^ABC"}},
                doc! {"sku": "abc789"},
                false,
            ),
            (
                doc! {"sku": regex("^abc", "")},
                doc! {"sku": "abc789"},
                true,
            ),
            (
                doc! {"sku": {"$regex": regex("^ABC", "i")}},
                doc! {"sku": "abc"},
                true,
            ),
            (
                doc! {"d": {"$regex": "^S", "$options": "m"}},
                doc! {"d": "First\nSecond"},
                true,
            ),
            (
                doc! {"d": {"$regex": "^S"}},
                doc! {"d": "First\nSecond"},
                false,
            ),
            (
                doc! {"d": {"$regex": "a.b", "$options": "s"}},
                doc! {"d": "a\nb"},
                true,
            ),
            (
                doc! {"d": {"$regex": "a b", "$options": "x"}},
                doc! {"d": "ab"},
                true,
            ),
            (
                doc! {"tags": regex("^b", "")},
                doc! {"tags": ["a", "bc"]},
                true,
            ),
            (doc! {"n": regex("1", "")}, doc! {"n": 1}, false),
            (
                doc! {"r": {"$eq": regex("x", "i")}},
                doc! {"r": regex("x", "i")},
                true,
            ),
            (
                doc! {"$expr": {"$gt": ["$spent", "$budget"]}},
                doc! {"spent": 400, "budget": 300},
                true,
            ),
            (
                doc! {"$expr": {"$gt": ["$spent", "$budget"]}},
                doc! {"spent": 100, "budget": 300},
                false,
            ),
            (doc! {"$expr": {"$divide": [1, 0]}}, doc! {}, false),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn array_operators() {
        let cases = [
            (
                doc! {"tags": {"$all": ["ssl", "security"]}},
                doc! {"tags": ["security", "x", "ssl"]},
                true,
            ),
            (
                doc! {"tags": {"$all": ["ssl", "security"]}},
                doc! {"tags": ["ssl"]},
                false,
            ),
            (doc! {"tags": {"$all": ["ssl"]}}, doc! {"tags": "ssl"}, true),
            (
                doc! {"tags": {"$all": [["ssl", "x"]]}},
                doc! {"tags": [["ssl", "x"], "y"]},
                true,
            ),
            (doc! {"tags": {"$all": []}}, doc! {"tags": []}, false),
            (
                doc! {"qty": {"$all": [{"$elemMatch": {"size": "M", "num": {"$gt": 50}}}, {"$elemMatch": {"num": 100, "color": "green"}}]}},
                doc! {"qty": [{"size": "M", "num": 100, "color": "green"}]},
                true,
            ),
            (
                doc! {"results": {"$elemMatch": {"$gte": 80, "$lt": 85}}},
                doc! {"results": [82, 90]},
                true,
            ),
            (
                doc! {"results": {"$elemMatch": {"$gte": 80, "$lt": 85}}},
                doc! {"results": [75, 88]},
                false,
            ),
            (
                doc! {"results": {"$elemMatch": {"product": "xyz", "score": {"$gte": 8}}}},
                doc! {"results": [{"product": "abc", "score": 10}, {"product": "xyz", "score": 9}]},
                true,
            ),
            (
                doc! {"results": {"$elemMatch": {"product": "xyz", "score": {"$gte": 8}}}},
                doc! {"results": [{"product": "abc", "score": 10}, {"product": "xyz", "score": 5}]},
                false,
            ),
            (
                doc! {"results": {"$elemMatch": {"$or": [{"a": 1}, {"b": 1}]}}},
                doc! {"results": [{"b": 1}]},
                true,
            ),
            (
                doc! {"results": {"$elemMatch": {"$not": {"$gt": 5}}}},
                doc! {"results": [6, 3]},
                true,
            ),
            (
                doc! {"results": {"$elemMatch": {"$gt": 1}}},
                doc! {"results": 5},
                false,
            ),
            (doc! {"a": {"$size": 2}}, doc! {"a": [1, 2]}, true),
            (doc! {"a": {"$size": 1}}, doc! {"a": [1, 2]}, false),
            (doc! {"a": {"$size": 0}}, doc! {"a": 1}, false),
            (doc! {"a.b": {"$size": 1}}, doc! {"a": [{"b": [1]}]}, true),
        ];
        for (filter, doc, expected) in cases {
            check(filter, doc, expected);
        }
    }

    #[test]
    fn parse_errors_are_bad_value_with_mongodb_messages() {
        assert_eq!(
            parse_message(doc! {"a": {"$foo": 1}}),
            "unknown operator: $foo"
        );
        assert_eq!(parse_code(doc! {"a": {"$foo": 1}}), 2);
        assert_eq!(parse_code(doc! {"$text": {"$search": "journal"}}), 27);
        assert_eq!(
            parse_message(doc! {"$text": {"$search": "journal"}}),
            "text index required for $text query"
        );
        assert_eq!(
            parse_message(doc! {"$foo": 1}),
            "unknown top level operator: $foo"
        );
        assert_eq!(parse_message(doc! {"a": {"$in": 5}}), "$in needs an array");
        assert_eq!(
            parse_message(doc! {"a": {"$nin": 5}}),
            "$nin needs an array"
        );
        assert_eq!(parse_message(doc! {"$and": 5}), "$and must be an array");
        assert_eq!(
            parse_message(doc! {"$or": []}),
            "$and/$or/$nor must be a nonempty array"
        );
        assert_eq!(
            parse_message(doc! {"$or": [1]}),
            "$or/$and/$nor entries need to be full objects"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$all": 1}}),
            "$all needs an array"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$size": "x"}}),
            "$size needs a number"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$elemMatch": 1}}),
            "$elemMatch needs an Object"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$mod": [0, 1]}}),
            "divisor cannot be 0"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$mod": [1]}}),
            "malformed mod, not enough elements"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$not": 5}}),
            "$not needs a regex or a document"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$type": "nope"}}),
            "Unknown type name alias: nope"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$options": "i"}}),
            "$options needs a $regex"
        );
        assert_eq!(
            parse_message(doc! {"a": {"$gt": 1, "b": 1}}),
            "unknown operator: b"
        );
        assert_eq!(parse_code(doc! {"a": {"$regex": "("}}), 51091);
        assert_eq!(parse_code(doc! {"$expr": {"$nope": 1}}), 168);
    }

    #[test]
    fn match_all_and_references() {
        assert!(Filter::match_all().matches(&doc! {"x": 1}));
        assert!(Filter::parse(&doc! {}).unwrap().is_match_all());
        assert!(!Filter::parse(&doc! {"a": 1}).unwrap().is_match_all());
        let filter = Filter::parse(&doc! {"a.b": 1, "$or": [{"c": 1}]}).unwrap();
        assert!(filter.references_prefix(&path::split("a")));
        assert!(filter.references_prefix(&path::split("c")));
        assert!(!filter.references_prefix(&path::split("b")));
        let _ = bson!(1);
    }
}
