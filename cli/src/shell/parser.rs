//! Parser for the shell's small JavaScript subset: mongosh-style statements (`use db`,
//! `show dbs`, `db.coll.find({..}).sort({..})`, `sh.status()`) and the object literals they
//! take, written as relaxed Extended JSON plus the shell's type helpers (`ObjectId('..')`,
//! `ISODate('..')`, `NumberLong(..)`, `/re/i`, ...).
//!
//! A hand-written recursive-descent parser is used instead of `json5` because the helper calls
//! and the method chains are not JSON, and because errors must point at a line and column.
//! The parser does no I/O: it turns text into [`Statement`]s whose literals are already
//! `bson::Bson`, so the evaluator never sees JavaScript syntax.

use std::fmt;

use bson::{Bson, Document, Regex};

/// Nesting depth limit for literals and call chains, so hostile input cannot overflow the stack.
const NESTING_DEPTH_MAX: usize = 200;

/// A syntax error with a 1-based position in the parsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What was expected or what was wrong.
    pub message: String,
    /// 1-based line of the offending character.
    pub line: usize,
    /// 1-based column (in characters) of the offending character.
    pub column: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SyntaxError: {} ({}:{})",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for ParseError {}

/// One top-level shell statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `use <db>`.
    Use(String),
    /// `show <what>` (dbs, databases, collections, tables).
    Show(String),
    /// `exit` / `quit` (optionally called as functions).
    Exit,
    /// `help`.
    Help,
    /// Any expression; its value is printed.
    Expr(Expr),
}

/// An expression: a literal value or a chain of member accesses and calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal, already converted to BSON.
    Literal(Bson),
    /// `root.member(args)[..]...`.
    Chain(Chain),
}

/// A member/call chain starting at an identifier such as `db`, `sh` or `printjson`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The identifier the chain starts from.
    pub root: String,
    /// Member accesses and calls, in source order.
    pub steps: Vec<Step>,
}

/// One link of a [`Chain`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name` or `["name"]`.
    Member(String),
    /// `[index]` on an array value.
    Index(usize),
    /// `(args)`.
    Call(Vec<Expr>),
}

/// Parses a whole script (statements separated by `;` or newlines).
pub fn parse_script(source: &str) -> Result<Vec<Statement>, ParseError> {
    let mut parser = Parser::new(source);
    let mut statements = Vec::new();
    loop {
        parser.skip_separators();
        if parser.at_end() {
            return Ok(statements);
        }
        statements.push(parser.statement()?);
        parser.skip_inline_ws();
        match parser.peek() {
            None | Some(';') | Some('\n') => {}
            Some(_) => return Err(parser.error("expected ';' or a new line after the statement")),
        }
    }
}

/// Parses exactly one literal value (object, array, string, number, helper call, ...).
/// Statements parse arguments with the same grammar; tests use this entry point to check
/// literals in isolation.
#[cfg(test)]
pub fn parse_literal(source: &str) -> Result<Bson, ParseError> {
    let mut parser = Parser::new(source);
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if !parser.at_end() {
        return Err(parser.error("unexpected text after the value"));
    }
    Ok(value)
}

/// Returns true while `source` has unclosed brackets, strings or block comments, so the
/// interactive shell keeps reading lines before parsing. Mismatched brackets count as
/// complete, so the parser reports them instead of the shell waiting for more input.
pub fn is_incomplete(source: &str) -> bool {
    let chars: Vec<char> = source.chars().collect();
    let mut open_brackets: Vec<char> = Vec::new();
    let mut idx = 0;
    let mut last_significant = '\0';
    while idx < chars.len() {
        let ch = chars[idx];
        match ch {
            '\'' | '"' | '`' => match skip_quoted(&chars, idx) {
                Some(end) => idx = end,
                None => return true,
            },
            '/' if chars.get(idx + 1) == Some(&'/') => {
                while idx < chars.len() && chars[idx] != '\n' {
                    idx += 1;
                }
                continue;
            }
            '/' if chars.get(idx + 1) == Some(&'*') => {
                match find_block_comment_end(&chars, idx + 2) {
                    Some(end) => idx = end,
                    None => return true,
                }
                continue;
            }
            '/' if "(,:[{=!&|?;\0".contains(last_significant) => {
                idx = skip_regex(&chars, idx);
            }
            '(' | '[' | '{' => open_brackets.push(ch),
            ')' | ']' | '}' => {
                let opener = match ch {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open_brackets.pop() != Some(opener) {
                    return false;
                }
            }
            _ => {}
        }
        if !ch.is_whitespace() {
            last_significant = ch;
        }
        idx += 1;
    }
    !open_brackets.is_empty()
}

/// Returns the index of the closing quote of the string starting at `start`, if any.
fn skip_quoted(chars: &[char], start: usize) -> Option<usize> {
    let quote = chars[start];
    let mut idx = start + 1;
    while idx < chars.len() {
        match chars[idx] {
            '\\' => idx += 2,
            ch if ch == quote => return Some(idx),
            '\n' if quote != '`' => return None,
            _ => idx += 1,
        }
    }
    None
}

/// Returns the index just past `*/`, searching from `from`.
fn find_block_comment_end(chars: &[char], from: usize) -> Option<usize> {
    let mut idx = from;
    while idx + 1 < chars.len() {
        if chars[idx] == '*' && chars[idx + 1] == '/' {
            return Some(idx + 2);
        }
        idx += 1;
    }
    None
}

/// Returns the index of the closing `/` of a regex literal (or the line end if unclosed).
fn skip_regex(chars: &[char], start: usize) -> usize {
    let mut idx = start + 1;
    let mut in_class = false;
    while idx < chars.len() && chars[idx] != '\n' {
        match chars[idx] {
            '\\' => idx += 1,
            '[' => in_class = true,
            ']' => in_class = false,
            '/' if !in_class => return idx,
            _ => {}
        }
        idx += 1;
    }
    idx.saturating_sub(1)
}

/// Identifiers that start a literal value rather than a member chain.
const LITERAL_IDENTS: &[&str] = &[
    "true",
    "false",
    "null",
    "undefined",
    "Infinity",
    "NaN",
    "new",
    "ObjectId",
    "ISODate",
    "Date",
    "NumberLong",
    "NumberInt",
    "NumberDecimal",
    "Long",
    "Int32",
    "Double",
    "Decimal128",
    "UUID",
    "Timestamp",
    "MinKey",
    "MaxKey",
    "BinData",
    "Binary",
];

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(source: &str) -> Self {
        Parser {
            chars: source.chars().collect(),
            pos: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> ParseError {
        let mut line = 1;
        let mut column = 1;
        for ch in self.chars.iter().take(pos) {
            if *ch == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        ParseError {
            message: message.into(),
            line,
            column,
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "end of input".to_string(),
            Some('\n') => "end of line".to_string(),
            Some(ch) => format!("'{ch}'"),
        }
    }

    /// Skips spaces, tabs and comments, but stops at a newline (a statement separator).
    fn skip_inline_ws(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r') => self.pos += 1,
                Some('/') if self.peek_at(1) == Some('/') => {
                    while !matches!(self.peek(), None | Some('\n')) {
                        self.pos += 1;
                    }
                }
                Some('/') if self.peek_at(1) == Some('*') => {
                    match find_block_comment_end(&self.chars, self.pos + 2) {
                        Some(end) => self.pos = end,
                        None => self.pos = self.chars.len(),
                    }
                }
                _ => return,
            }
        }
    }

    /// Skips all whitespace including newlines, and comments.
    fn skip_ws(&mut self) {
        loop {
            self.skip_inline_ws();
            if self.peek() == Some('\n') {
                self.pos += 1;
            } else {
                return;
            }
        }
    }

    fn skip_separators(&mut self) {
        loop {
            self.skip_ws();
            if self.peek() == Some(';') {
                self.pos += 1;
            } else {
                return;
            }
        }
    }

    fn expect(&mut self, expected: char) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == Some(expected) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!(
                "expected '{expected}' but found {}",
                self.describe_next()
            )))
        }
    }

    fn eat(&mut self, expected: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(expected) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek() {
            Some(ch) if ch.is_alphabetic() || ch == '_' || ch == '$' => self.pos += 1,
            _ => return None,
        }
        while let Some(ch) = self.peek() {
            if ch.is_alphanumeric() || ch == '_' || ch == '$' {
                self.pos += 1;
            } else {
                break;
            }
        }
        Some(self.chars[start..self.pos].iter().collect())
    }

    fn peek_ident(&mut self) -> Option<String> {
        let saved = self.pos;
        let ident = self.ident();
        self.pos = saved;
        ident
    }

    /// Reads a bare word for `use`/`show` (anything up to whitespace or `;`).
    fn bare_word(&mut self) -> String {
        let start = self.pos;
        while let Some(ch) = self.peek() {
            if ch.is_whitespace() || ch == ';' {
                break;
            }
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn statement(&mut self) -> Result<Statement, ParseError> {
        let start = self.pos;
        if let Some(word) = self.ident() {
            if let Some(statement) = self.keyword_statement(&word, start)? {
                return Ok(statement);
            }
            self.pos = start;
        }
        Ok(Statement::Expr(self.expr(0)?))
    }

    /// Recognises `use`, `show`, `exit`, `quit` and `help`; returns None for anything else.
    fn keyword_statement(
        &mut self,
        word: &str,
        start: usize,
    ) -> Result<Option<Statement>, ParseError> {
        let followed_by_space = matches!(self.peek(), Some(' ' | '\t'));
        match word {
            "use" | "show" if followed_by_space => {
                self.skip_inline_ws();
                let argument_pos = self.pos;
                let argument = self.bare_word();
                if argument.is_empty() {
                    return Err(self.error_at(argument_pos, format!("'{word}' needs an argument")));
                }
                Ok(Some(if word == "use" {
                    Statement::Use(argument)
                } else {
                    Statement::Show(argument)
                }))
            }
            "exit" | "quit" | "help" => {
                self.skip_inline_ws();
                if self.peek() == Some('(') && self.peek_at(1) == Some(')') {
                    self.pos += 2;
                    self.skip_inline_ws();
                }
                if !matches!(self.peek(), None | Some(';' | '\n')) {
                    self.pos = start;
                    return Ok(None);
                }
                Ok(Some(if word == "help" {
                    Statement::Help
                } else {
                    Statement::Exit
                }))
            }
            _ => Ok(None),
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), ParseError> {
        if depth < NESTING_DEPTH_MAX {
            Ok(())
        } else {
            Err(self.error(format!("nesting deeper than {NESTING_DEPTH_MAX} levels")))
        }
    }

    /// An expression: a literal, or an identifier followed by member accesses and calls.
    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.check_depth(depth)?;
        self.skip_ws();
        let ident = self.peek_ident();
        let starts_chain = ident
            .as_deref()
            .is_some_and(|name| !LITERAL_IDENTS.contains(&name));
        if !starts_chain {
            return Ok(Expr::Literal(self.value(depth)?));
        }
        let root = self.ident().unwrap_or_default();
        let mut steps = Vec::new();
        while let Some(step) = self.step(depth)? {
            steps.push(step);
        }
        Ok(Expr::Chain(Chain { root, steps }))
    }

    /// Parses the next chain step, allowing a leading `.` on the following line.
    fn step(&mut self, depth: usize) -> Result<Option<Step>, ParseError> {
        let saved = self.pos;
        self.skip_inline_ws();
        if self.peek() == Some('\n') {
            self.skip_ws();
            if self.peek() != Some('.') {
                self.pos = saved;
                return Ok(None);
            }
        }
        match self.peek() {
            Some('.') => {
                self.pos += 1;
                self.skip_ws();
                match self.ident() {
                    Some(name) => Ok(Some(Step::Member(name))),
                    None => Err(self.error("expected a property name after '.'")),
                }
            }
            Some('(') => {
                self.pos += 1;
                Ok(Some(Step::Call(self.call_args(depth)?)))
            }
            Some('[') => {
                self.pos += 1;
                self.index_step(depth).map(Some)
            }
            _ => {
                self.pos = saved;
                Ok(None)
            }
        }
    }

    fn call_args(&mut self, depth: usize) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(args);
            }
            args.push(self.expr(depth + 1)?);
            if !self.eat(',') {
                self.expect(')')?;
                return Ok(args);
            }
        }
    }

    fn index_step(&mut self, depth: usize) -> Result<Step, ParseError> {
        self.skip_ws();
        let index_pos = self.pos;
        let step = match self.value(depth + 1)? {
            Bson::String(name) => Step::Member(name),
            Bson::Int32(index) if index >= 0 => Step::Index(usize::try_from(index).unwrap_or(0)),
            _ => return Err(self.error_at(index_pos, "expected a string or a non-negative index")),
        };
        self.expect(']')?;
        Ok(step)
    }

    /// A literal value.
    fn value(&mut self, depth: usize) -> Result<Bson, ParseError> {
        self.check_depth(depth)?;
        self.skip_ws();
        match self.peek() {
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('\'' | '"') => Ok(Bson::String(self.string()?)),
            Some('/') => self.regex(),
            Some(ch) if ch.is_ascii_digit() || matches!(ch, '-' | '+' | '.') => self.number(),
            Some(ch) if ch.is_alphabetic() || ch == '_' || ch == '$' => self.ident_value(depth),
            _ => Err(self.error(format!(
                "expected a value but found {}",
                self.describe_next()
            ))),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Bson, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut doc = Document::new();
        loop {
            if self.eat('}') {
                break;
            }
            self.skip_ws();
            let key = self.key()?;
            self.expect(':')?;
            let value = self.value(depth + 1)?;
            doc.insert(key, value);
            if !self.eat(',') {
                self.expect('}')?;
                break;
            }
        }
        convert_extended_json(doc).map_err(|message| self.error_at(start, message))
    }

    fn key(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some('\'' | '"') => self.string(),
            Some(ch) if ch.is_ascii_digit() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => self.ident().ok_or_else(|| {
                self.error(format!(
                    "expected a property name but found {}",
                    self.describe_next()
                ))
            }),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Bson, ParseError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(']') {
                return Ok(Bson::Array(items));
            }
            items.push(self.value(depth + 1)?);
            if !self.eat(',') {
                self.expect(']')?;
                return Ok(Bson::Array(items));
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let quote = self.chars[self.pos];
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error_at(start, "unterminated string")),
                Some(ch) if ch == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(ch) => {
                    out.push(ch);
                    self.pos += 1;
                }
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let escape_pos = self.pos;
        let Some(ch) = self.peek() else {
            return Err(self.error("unterminated string"));
        };
        self.pos += 1;
        match ch {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '0' => out.push('\0'),
            '\n' => {}
            'x' => out.push(self.hex_escape(2, escape_pos)?),
            'u' if self.peek() == Some('{') => {
                self.pos += 1;
                let digits = self.take_while(|c| c.is_ascii_hexdigit());
                if !self.eat('}') {
                    return Err(self.error_at(escape_pos, "invalid unicode escape"));
                }
                out.push(
                    code_point(&digits)
                        .ok_or_else(|| self.error_at(escape_pos, "invalid unicode escape"))?,
                );
            }
            'u' => out.push(self.hex_escape(4, escape_pos)?),
            other => out.push(other),
        }
        Ok(())
    }

    fn hex_escape(&mut self, len: usize, escape_pos: usize) -> Result<char, ParseError> {
        let end = self.pos + len;
        if end > self.chars.len() {
            return Err(self.error_at(escape_pos, "invalid escape sequence"));
        }
        let digits: String = self.chars[self.pos..end].iter().collect();
        self.pos = end;
        code_point(&digits).ok_or_else(|| self.error_at(escape_pos, "invalid escape sequence"))
    }

    fn take_while(&mut self, predicate: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&predicate) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn regex(&mut self) -> Result<Bson, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut pattern = String::new();
        let mut in_class = false;
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error_at(start, "unterminated regex")),
                Some('/') if !in_class => break,
                Some('\\') => {
                    pattern.push('\\');
                    self.pos += 1;
                    match self.peek() {
                        None | Some('\n') => {
                            return Err(self.error_at(start, "unterminated regex"));
                        }
                        Some(ch) => pattern.push(ch),
                    }
                }
                Some(ch) => {
                    in_class = match ch {
                        '[' => true,
                        ']' => false,
                        _ => in_class,
                    };
                    pattern.push(ch);
                }
            }
            self.pos += 1;
        }
        self.pos += 1;
        let flags_pos = self.pos;
        let flags = self.take_while(|c| c.is_ascii_alphabetic());
        if let Some(bad) = flags.chars().find(|c| !"gimsuxyl".contains(*c)) {
            return Err(self.error_at(flags_pos, format!("invalid regex flag '{bad}'")));
        }
        let options: String = flags.chars().filter(|c| *c != 'g' && *c != 'y').collect();
        Ok(regex_bson(pattern, &options))
    }

    fn number(&mut self) -> Result<Bson, ParseError> {
        let start = self.pos;
        let negative = self.peek() == Some('-');
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
            self.skip_inline_ws();
        }
        if self.peek_ident().as_deref() == Some("Infinity") {
            self.pos += "Infinity".len();
            return Ok(Bson::Double(if negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }));
        }
        if self.peek() == Some('0') && matches!(self.peek_at(1), Some('x' | 'X')) {
            self.pos += 2;
            let digits = self.take_while(|c| c.is_ascii_hexdigit());
            let magnitude = i64::from_str_radix(&digits, 16)
                .map_err(|_| self.error_at(start, "invalid hexadecimal number"))?;
            return Ok(integer_bson(if negative { -magnitude } else { magnitude }));
        }
        let digits = self.take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E'));
        let digits = if digits.ends_with(['e', 'E']) && matches!(self.peek(), Some('-' | '+')) {
            let sign = self.peek().unwrap_or('+');
            self.pos += 1;
            format!("{digits}{sign}{}", self.take_while(|c| c.is_ascii_digit()))
        } else {
            digits
        };
        if self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Err(self.error(format!("unexpected {} in number", self.describe_next())));
        }
        number_from_text(&digits, negative).ok_or_else(|| self.error_at(start, "invalid number"))
    }

    /// `true`, `null`, `ObjectId(..)`, `new Date(..)`, `MinKey`, ...
    fn ident_value(&mut self, depth: usize) -> Result<Bson, ParseError> {
        let start = self.pos;
        let mut name = self.ident().unwrap_or_default();
        if name == "new" {
            self.skip_ws();
            name = self
                .ident()
                .ok_or_else(|| self.error("expected a type name after 'new'"))?;
        }
        match name.as_str() {
            "true" => return Ok(Bson::Boolean(true)),
            "false" => return Ok(Bson::Boolean(false)),
            "null" | "undefined" => return Ok(Bson::Null),
            "Infinity" => return Ok(Bson::Double(f64::INFINITY)),
            "NaN" => return Ok(Bson::Double(f64::NAN)),
            _ => {}
        }
        if name == "Binary" {
            self.expect('.')?;
            self.skip_ws();
            let method = self.ident().unwrap_or_default();
            if method != "createFromBase64" {
                return Err(self.error_at(start, "expected Binary.createFromBase64(..)"));
            }
        }
        let has_args = self.peek_non_ws() == Some('(');
        let args = if has_args {
            self.expect('(')?;
            self.literal_args(depth)?
        } else {
            Vec::new()
        };
        helper_value(&name, has_args, args).map_err(|message| self.error_at(start, message))
    }

    fn peek_non_ws(&mut self) -> Option<char> {
        let saved = self.pos;
        self.skip_ws();
        let next = self.peek();
        self.pos = saved;
        next
    }

    fn literal_args(&mut self, depth: usize) -> Result<Vec<Bson>, ParseError> {
        let mut args = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(args);
            }
            args.push(self.value(depth + 1)?);
            if !self.eat(',') {
                self.expect(')')?;
                return Ok(args);
            }
        }
    }
}

/// A BSON regex with its options sorted, as the BSON spec requires.
fn regex_bson(pattern: impl Into<String>, options: &str) -> Bson {
    let mut flags: Vec<char> = options.chars().collect();
    flags.sort_unstable();
    flags.dedup();
    Bson::RegularExpression(Regex {
        pattern: pattern.into(),
        options: flags.into_iter().collect(),
    })
}

use helpers::{convert_extended_json, helper_value};

fn code_point(hex_digits: &str) -> Option<char> {
    u32::from_str_radix(hex_digits, 16)
        .ok()
        .and_then(char::from_u32)
}

/// Integers that fit in 32 bits are Int32 and other integers Int64, as mongosh does for
/// integer literals; anything with a fraction or out of range is a Double.
fn number_from_text(text: &str, negative: bool) -> Option<Bson> {
    let is_plain_integer = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
    if is_plain_integer {
        let signed = if negative {
            format!("-{text}")
        } else {
            text.to_string()
        };
        if let Ok(value) = signed.parse::<i64>() {
            return Some(integer_bson(value));
        }
    }
    let magnitude: f64 = text.parse().ok()?;
    let value = if negative { -magnitude } else { magnitude };
    Some(double_or_integer(value))
}

fn integer_bson(value: i64) -> Bson {
    match i32::try_from(value) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(value),
    }
}

/// Bounds of the f64 values that convert exactly to i64 (2^63 is not representable as i64).
const I64_AS_F64_MIN: f64 = -9_223_372_036_854_775_808.0;
const I64_AS_F64_END: f64 = 9_223_372_036_854_775_808.0;

#[allow(clippy::cast_possible_truncation)] // reason: checked integral and in range first.
fn double_or_integer(value: f64) -> Bson {
    let integral = value.is_finite() && value.fract() == 0.0;
    let in_range = (I64_AS_F64_MIN..I64_AS_F64_END).contains(&value);
    let negative_zero = value == 0.0 && value.is_sign_negative();
    if integral && in_range && !negative_zero {
        integer_bson(value as i64)
    } else {
        Bson::Double(value)
    }
}

mod helpers;
#[cfg(test)]
mod tests;
