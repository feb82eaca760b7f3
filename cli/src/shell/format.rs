//! Output formatting in mongosh's style: BSON values printed the way Node's `util.inspect`
//! prints mongosh's objects (2-space indentation, small objects on one line, `ObjectId('..')`,
//! `ISODate('..')`, `Long('..')`, single-quoted strings), plus the text tables for
//! `show dbs` and `sh.status()`.
//!
//! The line-breaking rules follow Node's `reduceToSingleString`/`groupArrayElements` with
//! `compact: 3` and `breakLength: 80`, so output looks familiar to mongosh users and golden
//! tests can pin it. Everything here is pure string building.

use std::{collections::BTreeMap, fmt::Write as _};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bson::{Bson, Document, spec::BinarySubtype};

/// Line width Node's inspect tries to stay within when joining entries on one line.
const BREAK_LENGTH: usize = 80;
/// How many innermost nesting levels may be combined on one line (Node's `compact: 3`).
const COMPACT_LEVELS: usize = 3;
/// Arrays longer than this are considered for column grouping, as in Node.
const GROUP_ARRAY_ENTRIES_MIN: usize = 7;
/// Upper bound on grouped columns, as in Node.
const GROUP_COLUMNS_MAX: usize = 15;
/// Number of chunks `sh.status()` lists per collection before summarising, as mongosh does.
pub const STATUS_CHUNKS_SHOWN_MAX: usize = 20;

/// Formats a value the way mongosh prints a statement result: a top-level string is
/// printed raw, everything else through [`inspect`].
pub fn format_result(value: &Bson) -> String {
    match value {
        Bson::String(text) => text.clone(),
        other => inspect(other),
    }
}

/// Formats a value like Node's `util.inspect` formats the equivalent mongosh object.
pub fn inspect(value: &Bson) -> String {
    let mut ctx = InspectContext {
        indentation: 0,
        current_depth: 0,
    };
    ctx.format_value(value, 0)
}

/// Formats a document like [`inspect`].
pub fn inspect_document(doc: &Document) -> String {
    let mut ctx = InspectContext {
        indentation: 0,
        current_depth: 0,
    };
    ctx.format_document(doc, 0)
}

struct InspectContext {
    /// Spaces of indentation of the value being formatted (Node's `indentationLvl`).
    indentation: usize,
    /// Depth of the most recently entered non-empty container (Node's `currentDepth`).
    current_depth: usize,
}

impl InspectContext {
    fn format_value(&mut self, value: &Bson, depth: usize) -> String {
        match value {
            Bson::Document(doc) => self.format_document(doc, depth),
            Bson::Array(items) => self.format_array(items, depth),
            other => format_scalar(other),
        }
    }

    fn format_document(&mut self, doc: &Document, depth: usize) -> String {
        if doc.is_empty() {
            return "{}".to_string();
        }
        let depth = depth + 1;
        self.current_depth = depth;
        let output: Vec<String> = doc
            .iter()
            .map(|(key, value)| format!("{}: {}", format_key(key), self.format_child(value, depth)))
            .collect();
        self.reduce_to_single_string(output, ('{', '}'), depth, None)
    }

    fn format_array(&mut self, items: &[Bson], depth: usize) -> String {
        if items.is_empty() {
            return "[]".to_string();
        }
        let depth = depth + 1;
        self.current_depth = depth;
        let output: Vec<String> = items
            .iter()
            .map(|item| self.format_child(item, depth))
            .collect();
        self.reduce_to_single_string(output, ('[', ']'), depth, Some(items))
    }

    fn format_child(&mut self, value: &Bson, depth: usize) -> String {
        self.indentation += 2;
        let text = self.format_value(value, depth);
        self.indentation -= 2;
        text
    }

    fn reduce_to_single_string(
        &mut self,
        output: Vec<String>,
        braces: (char, char),
        depth: usize,
        array: Option<&[Bson]>,
    ) -> String {
        let entries = output.len();
        let output = match array {
            Some(items) if entries >= GROUP_ARRAY_ENTRIES_MIN => {
                group_array_elements(output, items, self.indentation)
            }
            _ => output,
        };
        let combinable = self.current_depth - depth < COMPACT_LEVELS && entries == output.len();
        if combinable {
            let start = output.len() + self.indentation + 1 + 10;
            if is_below_break_length(&output, start) {
                let joined = output.join(", ");
                if !joined.contains('\n') {
                    return format!("{} {joined} {}", braces.0, braces.1);
                }
            }
        }
        let indentation = format!("\n{}", " ".repeat(self.indentation));
        format!(
            "{}{indentation}  {}{indentation}{}",
            braces.0,
            output.join(&format!(",{indentation}  ")),
            braces.1
        )
    }
}

fn text_width(text: &str) -> usize {
    text.chars().count()
}

fn is_below_break_length(output: &[String], start: usize) -> bool {
    let mut total = output.len() + start;
    if total + output.len() > BREAK_LENGTH {
        return false;
    }
    for entry in output {
        total += text_width(entry);
        if total > BREAK_LENGTH {
            return false;
        }
    }
    true
}

/// Node's `groupArrayElements`: lays out many short array entries in aligned columns.
#[allow(clippy::cast_precision_loss)] // reason: widths are tiny; this mirrors Node's float math.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // reason: rounded positives.
fn group_array_elements(output: Vec<String>, items: &[Bson], indentation: usize) -> Vec<String> {
    const SEPARATOR_SPACE: usize = 2;
    const APPROX_CHAR_HEIGHTS: f64 = 2.5;
    let data_len: Vec<usize> = output.iter().map(|entry| text_width(entry)).collect();
    let total_length: usize = data_len.iter().map(|len| len + SEPARATOR_SPACE).sum();
    let max_length = data_len.iter().copied().max().unwrap_or(0);
    let actual_max = max_length + SEPARATOR_SPACE;
    let fits_three = actual_max * 3 + indentation < BREAK_LENGTH;
    let similar = total_length as f64 / actual_max as f64 > 5.0 || max_length <= 6;
    if !(fits_three && similar) {
        return output;
    }
    let average_bias = (actual_max as f64 - total_length as f64 / output.len() as f64).sqrt();
    let biased_max = (actual_max as f64 - 3.0 - average_bias).max(1.0);
    let square_columns =
        ((APPROX_CHAR_HEIGHTS * biased_max * output.len() as f64).sqrt() / biased_max).round();
    let columns = (square_columns as usize)
        .min(BREAK_LENGTH.saturating_sub(indentation) / actual_max)
        .min(COMPACT_LEVELS * 4)
        .min(GROUP_COLUMNS_MAX);
    if columns <= 1 {
        return output;
    }
    let max_line_length: Vec<usize> = (0..columns)
        .map(|column| {
            let widest = data_len.iter().skip(column).step_by(columns).max().copied();
            widest.unwrap_or(0) + SEPARATOR_SPACE
        })
        .collect();
    let pad_start = items
        .iter()
        .all(|item| matches!(item, Bson::Int32(_) | Bson::Double(_)));
    output
        .chunks(columns)
        .map(|row| group_row(row, &max_line_length, pad_start))
        .collect()
}

fn group_row(row: &[String], max_line_length: &[usize], pad_start: bool) -> String {
    let mut line = String::new();
    let last = row.len() - 1;
    for (column, entry) in row.iter().enumerate() {
        let width = max_line_length[column];
        match (column == last, pad_start) {
            (false, true) => line.push_str(&format!("{:>width$}", format!("{entry}, "))),
            (false, false) => line.push_str(&format!("{:<width$}", format!("{entry}, "))),
            (true, true) => line.push_str(&format!("{entry:>pad$}", pad = width - 2)),
            (true, false) => line.push_str(entry),
        }
    }
    line
}

/// Keys that are plain identifiers print bare; anything else is quoted like a string.
fn format_key(key: &str) -> String {
    let mut chars = key.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        key.to_string()
    } else {
        quote_string(key)
    }
}

/// Quotes a string as Node does: single quotes unless the text contains one, then double
/// quotes or backticks, escaping control characters.
pub fn quote_string(text: &str) -> String {
    let quote = if !text.contains('\'') {
        '\''
    } else if !text.contains('"') {
        '"'
    } else if !text.contains('`') && !text.contains("${") {
        '`'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\\' => out.push_str("\\\\"),
            '\'' if quote == '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Formats a non-container value with mongosh's helper notation.
fn format_scalar(value: &Bson) -> String {
    match value {
        Bson::Double(number) => js_number(*number),
        Bson::String(text) => quote_string(text),
        Bson::Boolean(flag) => flag.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Int32(number) => number.to_string(),
        Bson::Int64(number) => format!("Long('{number}')"),
        Bson::ObjectId(oid) => format!("ObjectId('{}')", oid.to_hex()),
        Bson::DateTime(date) => format!("ISODate('{}')", iso_date(*date)),
        Bson::Timestamp(ts) => format!("Timestamp({{ t: {}, i: {} }})", ts.time, ts.increment),
        Bson::Decimal128(decimal) => format!("Decimal128('{decimal}')"),
        Bson::RegularExpression(regex) => format!("/{}/{}", regex.pattern, regex.options),
        Bson::Binary(binary) => format_binary(binary.subtype, &binary.bytes),
        Bson::MinKey => "MinKey()".to_string(),
        Bson::MaxKey => "MaxKey()".to_string(),
        Bson::JavaScriptCode(code) => format!("Code({})", quote_string(code)),
        Bson::JavaScriptCodeWithScope(code) => format!(
            "Code({}, {})",
            quote_string(&code.code),
            inspect_document(&code.scope)
        ),
        Bson::Symbol(symbol) => quote_string(symbol),
        Bson::DbPointer(_) => "DBPointer()".to_string(),
        Bson::Document(_) | Bson::Array(_) => inspect(value),
    }
}

/// Formats a date as mongosh does, always with milliseconds.
pub fn iso_date(date: bson::DateTime) -> String {
    date.to_chrono()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn format_binary(subtype: BinarySubtype, bytes: &[u8]) -> String {
    if subtype == BinarySubtype::Uuid && bytes.len() == 16 {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return format!(
            "UUID('{}-{}-{}-{}-{}')",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
    }
    format!(
        "Binary.createFromBase64('{}', {})",
        STANDARD.encode(bytes),
        u8::from(subtype)
    )
}

/// Formats a double as JavaScript's `Number.prototype.toString` does.
pub fn js_number(number: f64) -> String {
    if number.is_nan() {
        return "NaN".to_string();
    }
    if number.is_infinite() {
        return if number > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
        .to_string();
    }
    if number == 0.0 {
        return if number.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let magnitude = number.abs();
    if (1e-6..1e21).contains(&magnitude) {
        return format!("{number}");
    }
    let exponent_form = format!("{number:e}");
    match exponent_form.split_once('e') {
        Some((mantissa, exponent)) if !exponent.starts_with('-') => {
            format!("{mantissa}e+{exponent}")
        }
        _ => exponent_form,
    }
}

/// Formats a byte count for `show dbs`.
#[allow(clippy::cast_precision_loss)] // reason: display only.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Formats the `show dbs` table: names left-aligned, sizes right-aligned.
pub fn format_database_table(databases: &[(String, i64)]) -> String {
    let sizes: Vec<String> = databases
        .iter()
        .map(|(_, size)| format_bytes(*size))
        .collect();
    let name_width = databases
        .iter()
        .map(|(name, _)| text_width(name))
        .max()
        .unwrap_or(0);
    let size_width = sizes.iter().map(|size| text_width(size)).max().unwrap_or(0);
    databases
        .iter()
        .zip(&sizes)
        .map(|((name, _), size)| format!("{name:<name_width$}  {size:>size_width$}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything `sh.status()` prints, read from the `config` database by the evaluator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardingStatus {
    /// `config.shards` documents, sorted by `_id`.
    pub shards: Vec<Document>,
    /// The `balancerStatus` reply, if the command succeeded.
    pub balancer: Option<Document>,
    /// The `config.settings` document `{_id: "balancer"}`; `None` when absent (the balancer
    /// then runs, as MongoDB reads it).
    pub balancer_settings: Option<Document>,
    /// The last (up to 5) `balancer.round` documents of `config.actionlog`, newest first.
    pub balancer_rounds: Vec<Document>,
    /// The `moveChunk.commit` and `moveChunk.error` documents of `config.actionlog` from the
    /// last 24 hours.
    pub migrations: Vec<Document>,
    /// `config.databases` documents, sorted by `_id`.
    pub databases: Vec<Document>,
    /// Sharded collections from `config.collections` with their chunks.
    pub collections: Vec<CollectionStatus>,
}

/// One sharded collection and its chunks (sorted by `min`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionStatus {
    /// The `config.collections` document.
    pub collection: Document,
    /// Its `config.chunks` documents, sorted by `min`.
    pub chunks: Vec<Document>,
    /// Its zone ranges (`config.tags` documents), sorted by `min`.
    pub zones: Vec<Document>,
}

/// Formats `sh.status()` output in the style of the legacy mongo shell.
pub fn format_sharding_status(status: &ShardingStatus) -> String {
    let mut out = String::from("--- Sharding Status ---\nshards:\n");
    for shard in &status.shards {
        let mut summary = Document::new();
        for field in ["_id", "host", "state", "draining", "tags"] {
            if let Some(value) = shard.get(field) {
                summary.insert(field, value.clone());
            }
        }
        let _ = writeln!(out, "  {}", inspect_document(&summary));
    }
    out.push_str("balancer:\n");
    out.push_str(&format_balancer(status));
    out.push_str("databases:\n");
    for database in &status.databases {
        format_database(&mut out, database, &status.collections);
    }
    out.trim_end().to_string()
}

fn format_balancer(status: &ShardingStatus) -> String {
    let mut out = String::new();
    let settings = status.balancer_settings.as_ref();
    let stopped = settings.is_some_and(|doc| {
        doc.get_bool("stopped").unwrap_or(false) || doc.get_str("mode") == Ok("off")
    });
    let enabled = if stopped { "no" } else { "yes" };
    let running = match status
        .balancer
        .as_ref()
        .map(|reply| reply.get_bool("inBalancerRound"))
    {
        Some(Ok(true)) => "yes",
        Some(Ok(false)) => "no",
        _ => "unknown",
    };
    let _ = writeln!(out, "  Currently enabled: {enabled}");
    let _ = writeln!(out, "  Currently running: {running}");
    if let Some(Ok(window)) = settings.map(|doc| doc.get_document("activeWindow")) {
        let _ = writeln!(
            out,
            "  Balancer active window is set between {} and {} server local time",
            window.get_str("start").unwrap_or("?"),
            window.get_str("stop").unwrap_or("?")
        );
    }
    format_balancer_rounds(&mut out, &status.balancer_rounds);
    format_migrations(&mut out, &status.migrations);
    out
}

/// "Failed balancer rounds in last 5 attempts" and the newest failure, as mongosh prints them.
fn format_balancer_rounds(out: &mut String, rounds: &[Document]) {
    let failed: Vec<&Document> = rounds
        .iter()
        .filter(|round| {
            round.get_document("details").is_ok_and(|details| {
                // mongosh reads the server's historical misspelling too.
                details.get_bool("errorOccurred").unwrap_or(false)
                    || details.get_bool("errorOccured").unwrap_or(false)
            })
        })
        .collect();
    let _ = writeln!(
        out,
        "  Failed balancer rounds in last 5 attempts: {}",
        failed.len()
    );
    if let Some(last) = failed.first() {
        let details = last.get_document("details").ok();
        let errmsg = details.and_then(|d| d.get_str("errmsg").ok()).unwrap_or("");
        let _ = writeln!(out, "  Last reported error: {errmsg}");
        let time = last.get("time").map(inspect).unwrap_or_default();
        let _ = writeln!(out, "  Time of Reported error: {time}");
    }
}

/// "Migration Results for the last 24 hours": successes, then failures grouped by error and
/// shards, as the legacy shell and mongosh count them.
fn format_migrations(out: &mut String, migrations: &[Document]) {
    out.push_str("  Migration Results for the last 24 hours:\n");
    let mut successes = 0_usize;
    let mut failures: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for migration in migrations {
        let details = migration.get_document("details").ok();
        let field = |name: &str| {
            details
                .and_then(|d| d.get_str(name).ok())
                .unwrap_or("?")
                .to_string()
        };
        match migration.get_str("what") {
            Ok("moveChunk.commit") => successes += 1,
            Ok("moveChunk.error") => {
                *failures
                    .entry((field("errmsg"), field("from"), field("to")))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    if successes == 0 && failures.is_empty() {
        out.push_str("    No recent migrations\n");
        return;
    }
    if successes > 0 {
        let _ = writeln!(out, "    {successes} : Success");
    }
    for ((errmsg, from, to), count) in &failures {
        let _ = writeln!(
            out,
            "    {count} : Failed with error '{errmsg}', from {from} to {to}"
        );
    }
}

fn format_database(out: &mut String, database: &Document, collections: &[CollectionStatus]) {
    let name = database.get_str("_id").unwrap_or_default();
    let mut summary = Document::new();
    for field in ["_id", "primary", "partitioned"] {
        if let Some(value) = database.get(field) {
            summary.insert(field, value.clone());
        }
    }
    let _ = writeln!(out, "  {}", inspect_document(&summary));
    let prefix = format!("{name}.");
    for collection in collections {
        let namespace = collection.collection.get_str("_id").unwrap_or_default();
        if namespace.starts_with(&prefix) {
            format_collection(out, namespace, collection);
        }
    }
}

fn format_collection(out: &mut String, namespace: &str, status: &CollectionStatus) {
    let _ = writeln!(out, "    {namespace}");
    let key = status.collection.get("key").cloned().unwrap_or(Bson::Null);
    let _ = writeln!(out, "      shard key: {}", inspect(&key));
    let unique = status.collection.get_bool("unique").unwrap_or(false);
    let _ = writeln!(out, "      unique: {unique}");
    let balancing = !status.collection.get_bool("noBalance").unwrap_or(false);
    let _ = writeln!(out, "      balancing: {balancing}");
    let _ = writeln!(out, "      chunks:");
    let mut per_shard: BTreeMap<&str, usize> = BTreeMap::new();
    for chunk in &status.chunks {
        *per_shard
            .entry(chunk.get_str("shard").unwrap_or("?"))
            .or_default() += 1;
    }
    let width = per_shard
        .keys()
        .map(|shard| text_width(shard))
        .max()
        .unwrap_or(0);
    for (shard, count) in &per_shard {
        let _ = writeln!(out, "        {shard:<width$}  {count}");
    }
    for chunk in status.chunks.iter().take(STATUS_CHUNKS_SHOWN_MAX) {
        let _ = writeln!(out, "        {}", format_chunk(chunk));
    }
    if status.chunks.len() > STATUS_CHUNKS_SHOWN_MAX {
        let hidden = status.chunks.len() - STATUS_CHUNKS_SHOWN_MAX;
        let _ = writeln!(out, "        ... {hidden} more chunks");
    }
    for zone in &status.zones {
        let bound = |field: &str| zone.get(field).map(inspect).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "        tag: {}  {} -->> {}",
            zone.get_str("tag").unwrap_or("?"),
            bound("min"),
            bound("max")
        );
    }
}

fn format_chunk(chunk: &Document) -> String {
    let bound = |field: &str| {
        chunk
            .get(field)
            .map(inspect)
            .unwrap_or_else(|| "?".to_string())
    };
    let mut line = format!(
        "{} -->> {} on: {}",
        bound("min"),
        bound("max"),
        chunk.get_str("shard").unwrap_or("?")
    );
    if let Some(lastmod) = chunk.get("lastmod") {
        let _ = write!(line, " {}", inspect(lastmod));
    }
    if chunk.get_bool("jumbo").unwrap_or(false) {
        line.push_str(" jumbo");
    }
    line
}

#[cfg(test)]
mod tests;
