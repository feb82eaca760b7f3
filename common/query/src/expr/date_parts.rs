//! `$dateFromParts`, `$dateToParts` and `$dateFromString`: dates built from calendar fields or
//! text in a time zone, and taken apart into fields. Out-of-range parts carry over the way
//! MongoDB's calendar does (month 14 is February of the next year, day 0 the last day of the
//! previous month); text is read in ISO-8601 style or with an explicit `format`.

use bson::{Bson, Document};
use chrono::{
    Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeDelta, Timelike, Utc, Weekday,
};

use super::date::{MONTH_NAMES, Zone, coerce_date, eval_timezone, validate_format};
use super::named::{eval_slot, slot};
use super::{Ctx, Expr, Num, Value, eval, nullish, type_of};
use crate::error::{LocationCode, QueryError, Result};

/// `$dateFromParts`' argument names, in slot order.
pub(super) const FROM_PARTS_FIELDS: &[&str] = &[
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
    "isoWeekYear",
    "isoWeek",
    "isoDayOfWeek",
    "timezone",
];
const YEAR: usize = 0;
const MONTH: usize = 1;
const DAY: usize = 2;
const HOUR: usize = 3;
const MINUTE: usize = 4;
const SECOND: usize = 5;
const MILLISECOND: usize = 6;
const ISO_WEEK_YEAR: usize = 7;
const ISO_WEEK: usize = 8;
const ISO_DAY_OF_WEEK: usize = 9;
const TIMEZONE: usize = 10;

/// The range MongoDB allows for month, day, hour, minute and the ISO week fields.
const DATE_PART_MIN: i64 = -32768;
const DATE_PART_MAX: i64 = 32767;

/// The `%` specifiers `$dateFromString`'s `format` accepts.
const FROM_STRING_SPECIFIERS: &str = "bBdGHjLmMSuVYzZ";

/// Parse-time checks: a year or an ISO week year, never both calendars mixed.
pub(super) fn check_from_parts(slots: &[Option<Expr>]) -> Result<()> {
    let has = |index: usize| slot(slots, index).is_some();
    if !has(YEAR) && !has(ISO_WEEK_YEAR) {
        return Err(QueryError::location(
            LocationCode(40516),
            "$dateFromParts requires either 'year' or 'isoWeekYear' to be present",
        ));
    }
    if has(YEAR) && (has(ISO_WEEK_YEAR) || has(ISO_WEEK) || has(ISO_DAY_OF_WEEK)) {
        return Err(QueryError::location(
            LocationCode(40489),
            "$dateFromParts does not allow mixing natural dates with ISO dates",
        ));
    }
    if has(ISO_WEEK_YEAR) && (has(YEAR) || has(MONTH) || has(DAY)) {
        return Err(QueryError::location(
            LocationCode(40525),
            "$dateFromParts does not allow mixing ISO dates with natural dates",
        ));
    }
    Ok(())
}

/// One part: its default when absent, `None` when null, 40515 when not an integer, 31034 when
/// `bounded` and outside [-32768, 32767].
fn part(
    slots: &[Option<Expr>],
    index: usize,
    default: i64,
    bounded: bool,
    ctx: &mut Ctx<'_>,
) -> Result<Option<i64>> {
    let Some(expr) = slot(slots, index) else {
        return Ok(Some(default));
    };
    let name = FROM_PARTS_FIELDS[index];
    let value = match eval(expr, ctx)? {
        value if nullish(&value) => return Ok(None),
        Some(value) => value,
        None => return Ok(None),
    };
    let Some(whole) = Num::of(&value).and_then(Num::as_whole) else {
        return Err(QueryError::location(
            LocationCode(40515),
            format!(
                "'{name}' must evaluate to an integer, found {} with value {value}",
                type_of(Some(&value))
            ),
        ));
    };
    if bounded && !(DATE_PART_MIN..=DATE_PART_MAX).contains(&whole) {
        return Err(QueryError::location(
            LocationCode(31034),
            format!(
                "'{name}' must evaluate to a value in the range [{DATE_PART_MIN}, {DATE_PART_MAX}]; value {whole} is not in range"
            ),
        ));
    }
    Ok(Some(whole))
}

/// Midnight of a date plus a time of day that may overflow into other days.
fn with_time(
    date: NaiveDate,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
) -> Option<NaiveDateTime> {
    let time = TimeDelta::try_minutes(hour.checked_mul(60)?.checked_add(minute)?)?
        .checked_add(&TimeDelta::try_seconds(second)?)?
        .checked_add(&TimeDelta::try_milliseconds(millis)?)?;
    date.and_hms_opt(0, 0, 0)?.checked_add_signed(time)
}

/// A calendar date with carries: months past 12 roll into years, days past a month's end into
/// the next month.
pub(super) fn civil_date(year: i64, month: i64, day: i64) -> Option<NaiveDate> {
    let months = year.checked_mul(12)?.checked_add(month.checked_sub(1)?)?;
    let first = NaiveDate::from_ymd_opt(
        i32::try_from(months.div_euclid(12)).ok()?,
        u32::try_from(months.rem_euclid(12) + 1).ok()?,
        1,
    )?;
    first.checked_add_signed(TimeDelta::try_days(day.checked_sub(1)?)?)
}

fn iso_date(year: i64, week: i64, day_of_week: i64) -> Option<NaiveDate> {
    let monday = NaiveDate::from_isoywd_opt(i32::try_from(year).ok()?, 1, Weekday::Mon)?;
    let days = week
        .checked_sub(1)?
        .checked_mul(7)?
        .checked_add(day_of_week.checked_sub(1)?)?;
    monday.checked_add_signed(TimeDelta::try_days(days)?)
}

fn out_of_range() -> QueryError {
    QueryError::bad_value("$dateFromParts: the date is out of the supported range")
}

pub(super) fn eval_from_parts(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let null = Ok(Some(Bson::Null));
    let Some(hour) = part(slots, HOUR, 0, true, ctx)? else {
        return null;
    };
    let Some(minute) = part(slots, MINUTE, 0, true, ctx)? else {
        return null;
    };
    let Some(second) = part(slots, SECOND, 0, false, ctx)? else {
        return null;
    };
    let Some(millis) = part(slots, MILLISECOND, 0, false, ctx)? else {
        return null;
    };
    let Some(zone) = eval_timezone(slot(slots, TIMEZONE), ctx)? else {
        return null;
    };
    let date = if slot(slots, YEAR).is_some() {
        let (Some(year), Some(month), Some(day)) = (
            part(slots, YEAR, 1970, false, ctx)?,
            part(slots, MONTH, 1, true, ctx)?,
            part(slots, DAY, 1, true, ctx)?,
        ) else {
            return null;
        };
        check_year(year, 40523, "year")?;
        civil_date(year, month, day)
    } else {
        let (Some(year), Some(week), Some(day)) = (
            part(slots, ISO_WEEK_YEAR, 1970, false, ctx)?,
            part(slots, ISO_WEEK, 1, true, ctx)?,
            part(slots, ISO_DAY_OF_WEEK, 1, true, ctx)?,
        ) else {
            return null;
        };
        check_year(year, 31095, "isoWeekYear")?;
        iso_date(year, week, day)
    };
    let local = date
        .and_then(|date| with_time(date, hour, minute, second, millis))
        .ok_or_else(out_of_range)?;
    Ok(Some(Bson::DateTime(bson::DateTime::from_millis(
        zone.resolve(local),
    ))))
}

fn check_year(year: i64, code: i32, name: &str) -> Result<()> {
    if (1..=9999).contains(&year) {
        return Ok(());
    }
    Err(QueryError::location(
        LocationCode(code),
        format!("'{name}' must evaluate to an integer in the range 1 to 9999, found {year}"),
    ))
}

/// `$dateToParts`: `{date, timezone, iso8601}`.
pub(super) fn eval_to_parts(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let value = eval_slot(slots, 0, ctx)?;
    let Some(zone) = eval_timezone(slot(slots, 1), ctx)? else {
        return Ok(Some(Bson::Null));
    };
    let iso = match slot(slots, 2) {
        None => false,
        Some(expr) => match eval(expr, ctx)? {
            flag if nullish(&flag) => return Ok(Some(Bson::Null)),
            Some(Bson::Boolean(flag)) => flag,
            other => {
                return Err(QueryError::location(
                    LocationCode(40521),
                    format!(
                        "iso8601 must evaluate to a bool, found {}",
                        type_of(other.as_ref())
                    ),
                ));
            }
        },
    };
    let value = match value {
        value if nullish(&value) => return Ok(Some(Bson::Null)),
        Some(value) => value,
        None => return Ok(Some(Bson::Null)),
    };
    let local = zone.localize(coerce_date(&value)?);
    let int = |v: u32| Bson::Int32(i32::try_from(v).unwrap_or(i32::MAX));
    let mut parts = Document::new();
    if iso {
        parts.insert("isoWeekYear", local.iso_week().year());
        parts.insert("isoWeek", int(local.iso_week().week()));
        parts.insert("isoDayOfWeek", int(local.weekday().number_from_monday()));
    } else {
        parts.insert("year", local.year());
        parts.insert("month", int(local.month()));
        parts.insert("day", int(local.day()));
    }
    parts.insert("hour", int(local.hour()));
    parts.insert("minute", int(local.minute()));
    parts.insert("second", int(local.second()));
    parts.insert("millisecond", int(local.timestamp_subsec_millis() % 1000));
    Ok(Some(Bson::Document(parts)))
}

// ---------------------------------------------------------------------------------------------
// $dateFromString
// ---------------------------------------------------------------------------------------------

/// `$dateFromString`: `{dateString, format, timezone, onNull, onError}`. Argument errors (format,
/// time zone) are not conversion failures, so `onError` does not catch them.
pub(super) fn eval_from_string(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let text = eval_slot(slots, 0, ctx)?;
    let format = match slot(slots, 2) {
        None => None,
        Some(expr) => Some(match eval(expr, ctx)? {
            value if nullish(&value) => None,
            Some(Bson::String(format)) => {
                validate_format(&format, FROM_STRING_SPECIFIERS)?;
                Some(format)
            }
            Some(other) => {
                return Err(QueryError::location(
                    LocationCode(40684),
                    format!(
                        "$dateFromString requires that 'format' be a string, found: {} with value {other}",
                        type_of(Some(&other))
                    ),
                ));
            }
            None => None,
        }),
    };
    let zone = eval_timezone(slot(slots, 1), ctx)?;
    if nullish(&text) {
        return match slot(slots, 3) {
            Some(on_null) => eval(on_null, ctx),
            None => Ok(Some(Bson::Null)),
        };
    }
    let parsed = from_string(text, zone, format);
    match parsed {
        Ok(value) => Ok(Some(value)),
        Err(QueryError::ConversionFailure(message)) => match slot(slots, 4) {
            Some(on_error) => eval(on_error, ctx),
            None => Err(QueryError::ConversionFailure(message)),
        },
        Err(other) => Err(other),
    }
}

/// The part of `$dateFromString` whose failures `onError` catches.
fn from_string(text: Value, zone: Option<Zone>, format: Option<Option<String>>) -> Result<Bson> {
    let text = match text {
        Some(Bson::String(text)) => text,
        other => {
            return Err(QueryError::ConversionFailure(format!(
                "$dateFromString requires that 'dateString' be a string, found: {} with value {}",
                type_of(other.as_ref()),
                other.map_or("missing".to_owned(), |v| v.to_string())
            )));
        }
    };
    let Some(zone) = zone else {
        return Ok(Bson::Null);
    };
    let format = match format {
        Some(None) => return Ok(Bson::Null),
        Some(Some(format)) => Some(format),
        None => None,
    };
    let millis = parse_date_string(&text, &zone, format.as_deref())?;
    Ok(Bson::DateTime(bson::DateTime::from_millis(millis)))
}

/// Calendar and clock fields read from a date string; absent ones are `None`.
#[derive(Debug, Default)]
struct Fields {
    year: Option<i64>,
    month: Option<i64>,
    day: Option<i64>,
    day_of_year: Option<i64>,
    iso_year: Option<i64>,
    iso_week: Option<i64>,
    iso_day: Option<i64>,
    hour: Option<i64>,
    minute: Option<i64>,
    second: Option<i64>,
    millis: Option<i64>,
    /// A UTC offset or zone the string itself names ("Z", "+01:00").
    offset: Option<FixedOffset>,
}

fn parse_error(text: &str, detail: &str) -> QueryError {
    QueryError::ConversionFailure(format!("Error parsing date string '{text}'; {detail}"))
}

/// Parses a date string (`format` as `$dateFromString` takes it, or ISO-8601 style without
/// one) into milliseconds, reading a zone-less string in `zone`.
pub(super) fn parse_date_string(text: &str, zone: &Zone, format: Option<&str>) -> Result<i64> {
    let fields = match format {
        Some(format) => parse_with_format(text, format)?,
        None => parse_free(text)?,
    };
    if fields.offset.is_some() && !zone.is_utc() {
        return Err(QueryError::ConversionFailure(
            "you cannot pass in a date/time string with GMT offset together with a timezone argument"
                .to_owned(),
        ));
    }
    let local = local_time(text, &fields)?;
    Ok(match fields.offset {
        Some(offset) => {
            local.and_utc().timestamp_millis() - i64::from(offset.local_minus_utc()) * 1000
        }
        None => zone.resolve(local),
    })
}

fn local_time(text: &str, fields: &Fields) -> Result<NaiveDateTime> {
    let incomplete = || {
        QueryError::ConversionFailure(format!(
            "an incomplete date/time string has been found, with elements missing: \"{text}\""
        ))
    };
    let invalid = || parse_error(text, "The parsed date was invalid");
    let date = if let (Some(year), Some(week)) = (fields.iso_year, fields.iso_week) {
        iso_date(year, week, fields.iso_day.unwrap_or(1)).ok_or_else(invalid)?
    } else if let (Some(year), Some(ordinal)) = (fields.year, fields.day_of_year) {
        let first = NaiveDate::from_yo_opt(i32::try_from(year).map_err(|_| invalid())?, 1)
            .ok_or_else(invalid)?;
        first
            .checked_add_signed(TimeDelta::try_days(ordinal - 1).ok_or_else(invalid)?)
            .ok_or_else(invalid)?
    } else {
        let (Some(year), Some(month), Some(day)) = (fields.year, fields.month, fields.day) else {
            return Err(incomplete());
        };
        let valid = |v: i64, max: i64| (1..=max).contains(&v);
        if !valid(month, 12) || !valid(day, 31) {
            return Err(invalid());
        }
        NaiveDate::from_ymd_opt(
            i32::try_from(year).map_err(|_| invalid())?,
            u32::try_from(month).map_err(|_| invalid())?,
            u32::try_from(day).map_err(|_| invalid())?,
        )
        .ok_or_else(invalid)?
    };
    let (hour, minute, second) = match (fields.hour, fields.minute, fields.second) {
        (None, None, None) => (0, 0, 0),
        (Some(hour), minute, second) => (hour, minute.unwrap_or(0), second.unwrap_or(0)),
        _ => return Err(incomplete()),
    };
    if hour > 23 || minute > 59 || second > 59 {
        return Err(parse_error(text, "The parsed time was invalid"));
    }
    with_time(date, hour, minute, second, fields.millis.unwrap_or(0)).ok_or_else(invalid)
}

/// A cursor over the date string.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            return true;
        }
        false
    }

    /// Up to `max` ASCII digits (at least one), with how many were read.
    fn number(&mut self, max: usize) -> Option<(i64, usize)> {
        let digits = self
            .rest()
            .bytes()
            .take(max)
            .take_while(u8::is_ascii_digit)
            .count();
        if digits == 0 {
            return None;
        }
        let value = self.rest()[..digits].parse().ok()?;
        self.at += digits;
        Some((value, digits))
    }

    fn skip_spaces(&mut self) {
        while self.eat(' ') {}
    }
}

/// ISO-8601-style strings: "2017-02-08", "2017/02/08" or "02/08/2017", then optionally a time
/// "12:10[:40[.787]]" after 'T' or spaces, then optionally "Z", "UTC", "GMT" or an offset.
fn parse_free(text: &str) -> Result<Fields> {
    let mut cursor = Cursor { text, at: 0 };
    let mut fields = Fields::default();
    let failed = |what: &str| parse_error(text, what);
    cursor.skip_spaces();
    let (first, width) = cursor
        .number(4)
        .ok_or_else(|| failed("Unexpected character"))?;
    if width == 4 {
        let separator = if cursor.eat('-') {
            '-'
        } else if cursor.eat('/') {
            '/'
        } else {
            return Err(failed("Unexpected character"));
        };
        fields.year = Some(first);
        fields.month = cursor.number(2).map(|(v, _)| v);
        if !cursor.eat(separator) {
            return Err(failed("Unexpected character"));
        }
        fields.day = cursor.number(2).map(|(v, _)| v);
    } else {
        fields.month = Some(first);
        let ok = cursor.eat('/');
        fields.day = cursor.number(2).map(|(v, _)| v);
        if !ok || !cursor.eat('/') {
            return Err(failed("Unexpected character"));
        }
        fields.year = cursor.number(4).map(|(v, _)| v);
    }
    if fields.month.is_none() || fields.day.is_none() || fields.year.is_none() {
        return Err(failed("Unexpected character"));
    }
    let separated = cursor.eat('T') || cursor.peek() == Some(' ');
    cursor.skip_spaces();
    if separated && cursor.peek().is_some_and(|c| c.is_ascii_digit()) {
        parse_clock(&mut cursor, &mut fields).ok_or_else(|| failed("Unexpected character"))?;
    }
    cursor.skip_spaces();
    if !cursor.rest().is_empty() {
        fields.offset = Some(parse_zone_suffix(text, cursor.rest())?);
    }
    Ok(fields)
}

/// "HH:MM[:SS[.fraction]]".
fn parse_clock(cursor: &mut Cursor<'_>, fields: &mut Fields) -> Option<()> {
    fields.hour = Some(cursor.number(2)?.0);
    if !cursor.eat(':') {
        return None;
    }
    fields.minute = Some(cursor.number(2)?.0);
    if cursor.eat(':') {
        fields.second = Some(cursor.number(2)?.0);
        if cursor.eat('.') {
            // Only the first three fraction digits count: MongoDB keeps milliseconds.
            let digits = cursor.rest().bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let kept: String = cursor.rest()[..digits.min(3)].chars().collect();
            let padded = format!("{kept:0<3}");
            fields.millis = Some(padded.parse().ok()?);
            cursor.at += digits;
        }
    }
    Some(())
}

/// The zone a string ends with: "Z", "UTC", "GMT" or "+hh[:mm]"; a zone name is refused.
fn parse_zone_suffix(text: &str, suffix: &str) -> Result<FixedOffset> {
    if matches!(suffix, "Z" | "UTC" | "GMT") {
        return Ok(Utc.fix());
    }
    if suffix.starts_with(['+', '-']) {
        return parse_offset_text(suffix).ok_or_else(|| parse_error(text, "Unexpected character"));
    }
    if suffix.chars().next().is_some_and(char::is_alphabetic) {
        return Err(parse_error(
            text,
            "passing a time zone identifier as part of the string is not allowed",
        ));
    }
    Err(parse_error(text, "Trailing data"))
}

/// "+hh", "+hhmm", "+hh:mm" (or "-").
fn parse_offset_text(text: &str) -> Option<FixedOffset> {
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let mut cursor = Cursor { text, at: 1 };
    let (hours, width) = cursor.number(4)?;
    let (hours, minutes) = if width > 2 {
        (hours / 100, hours % 100)
    } else if cursor.eat(':') {
        (hours, cursor.number(2)?.0)
    } else {
        (hours, 0)
    };
    if !cursor.rest().is_empty() || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * i32::try_from(hours * 3600 + minutes * 60).ok()?)
}

/// Reads a string with `$dateFromString`'s format specifiers; other format characters must
/// appear literally.
fn parse_with_format(text: &str, format: &str) -> Result<Fields> {
    let mut cursor = Cursor { text, at: 0 };
    let mut fields = Fields::default();
    let mut specs = format.chars();
    while let Some(c) = specs.next() {
        if c != '%' {
            if !cursor.eat(c) {
                return Err(parse_error(
                    text,
                    "The separation symbol could not be found",
                ));
            }
            continue;
        }
        let spec = specs.next().unwrap_or('%');
        read_spec(&mut cursor, spec, &mut fields)
            .ok_or_else(|| parse_error(text, &format!("Unexpected data found for '%{spec}'")))?;
    }
    if !cursor.rest().is_empty() {
        return Err(parse_error(text, "Trailing data"));
    }
    Ok(fields)
}

fn read_spec(cursor: &mut Cursor<'_>, spec: char, fields: &mut Fields) -> Option<()> {
    let mut number = |max: usize| cursor.number(max).map(|(v, _)| v);
    match spec {
        'Y' => fields.year = Some(number(4)?),
        'G' => fields.iso_year = Some(number(4)?),
        'm' => fields.month = Some(number(2)?),
        'd' => fields.day = Some(number(2)?),
        'H' => fields.hour = Some(number(2)?),
        'M' => fields.minute = Some(number(2)?),
        'S' => fields.second = Some(number(2)?),
        'L' => fields.millis = Some(number(3)?),
        'j' => fields.day_of_year = Some(number(3)?),
        'V' => fields.iso_week = Some(number(2)?),
        'u' => fields.iso_day = Some(number(1)?),
        'b' | 'B' => fields.month = Some(read_month(cursor, spec == 'B')?),
        'z' => fields.offset = Some(read_offset(cursor)?),
        'Z' => {
            let sign = if cursor.eat('-') {
                -1
            } else {
                cursor.eat('+');
                1
            };
            let minutes = i32::try_from(cursor.number(4)?.0).ok()?;
            fields.offset = Some(FixedOffset::east_opt(sign * minutes * 60)?);
        }
        _ => {
            if !cursor.eat('%') {
                return None;
            }
        }
    }
    Some(())
}

fn read_month(cursor: &mut Cursor<'_>, full: bool) -> Option<i64> {
    let rest = cursor.rest();
    for (index, name) in MONTH_NAMES.iter().enumerate() {
        let wanted = if full { name } else { &name[..3] };
        if rest.len() >= wanted.len() && rest[..wanted.len()].eq_ignore_ascii_case(wanted) {
            cursor.at += wanted.len();
            return i64::try_from(index + 1).ok();
        }
    }
    None
}

fn read_offset(cursor: &mut Cursor<'_>) -> Option<FixedOffset> {
    if cursor.eat('Z') {
        return FixedOffset::east_opt(0);
    }
    let start = cursor.at;
    let sign = cursor.peek()?;
    if sign != '+' && sign != '-' {
        return None;
    }
    cursor.at += 1;
    let length = cursor
        .rest()
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b':')
        .count();
    cursor.at += length;
    parse_offset_text(&cursor.text[start..cursor.at])
}
