//! Calendar arithmetic: `$dateAdd`, `$dateSubtract`, `$dateDiff` and `$dateTrunc`, following
//! MongoDB's date library. Days and larger units move the wall clock in the time zone (so a day
//! across a daylight saving change keeps the local time of day), hours and smaller units move
//! the instant; months clamp to the last day of a shorter month; differences count boundaries
//! crossed, not elapsed periods (2021-01-31 to 2021-02-01 is one month).

use bson::Bson;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, Timelike};

use super::date::{Zone, as_date, eval_timezone};
use super::date_parts::civil_date;
use super::named::{self, NamedOp, eval_slot, slot};
use super::{Ctx, Expr, Num, Value, eval, nullish, type_of};
use crate::error::{LocationCode, QueryError, Result};

const MILLIS_PER_SECOND: i64 = 1000;
const MILLIS_PER_MINUTE: i64 = 60 * MILLIS_PER_SECOND;
const MILLIS_PER_HOUR: i64 = 60 * MILLIS_PER_MINUTE;
const MILLIS_PER_DAY: i64 = 24 * MILLIS_PER_HOUR;
/// `$dateTrunc`'s reference point, 2000-01-01T00:00:00Z (a Saturday).
const REFERENCE_MILLIS: i64 = 946_684_800_000;
/// The largest `binSize` `$dateTrunc` takes for calendar units.
const CALENDAR_BIN_SIZE_MAX: i64 = 100_000_000_000;
/// The day-count bound behind MongoDB's `amount` limits (`u64::MAX` ms in days, plus one).
const AMOUNT_DAYS_MAX: i64 = 213_503_982_335;

/// A time unit argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

const UNITS: &[(&str, Unit)] = &[
    ("year", Unit::Year),
    ("quarter", Unit::Quarter),
    ("month", Unit::Month),
    ("week", Unit::Week),
    ("day", Unit::Day),
    ("hour", Unit::Hour),
    ("minute", Unit::Minute),
    ("second", Unit::Second),
    ("millisecond", Unit::Millisecond),
];

impl Unit {
    fn name(self) -> &'static str {
        UNITS
            .iter()
            .find(|(_, u)| *u == self)
            .map_or("millisecond", |(name, _)| *name)
    }

    /// Milliseconds in one unit, for the units that have a fixed length.
    fn fixed_millis(self) -> Option<i64> {
        match self {
            Unit::Hour => Some(MILLIS_PER_HOUR),
            Unit::Minute => Some(MILLIS_PER_MINUTE),
            Unit::Second => Some(MILLIS_PER_SECOND),
            Unit::Millisecond => Some(1),
            _ => None,
        }
    }

    /// The largest |amount| `$dateAdd` accepts for this unit (MongoDB's 5976500 bound).
    fn amount_max(self) -> i64 {
        let years = AMOUNT_DAYS_MAX / 365 + 1;
        match self {
            Unit::Year => years,
            Unit::Quarter => years * 4,
            Unit::Month => years * 12,
            Unit::Week => AMOUNT_DAYS_MAX / 7,
            Unit::Day => AMOUNT_DAYS_MAX,
            Unit::Hour => AMOUNT_DAYS_MAX * 24,
            Unit::Minute => AMOUNT_DAYS_MAX * 24 * 60,
            Unit::Second => AMOUNT_DAYS_MAX * 24 * 60 * 60,
            Unit::Millisecond => i64::MAX,
        }
    }
}

/// `unit` for `$dateDiff`/`$dateTrunc` (5439013, 5439014).
fn parse_unit(value: &Bson, name: &str) -> Result<Unit> {
    let Bson::String(text) = value else {
        return Err(QueryError::location(
            LocationCode(5439013),
            format!(
                "{name} requires 'unit' to be a string, but got {}",
                type_of(Some(value))
            ),
        ));
    };
    UNITS
        .iter()
        .find(|(n, _)| n == text)
        .map(|(_, unit)| *unit)
        .ok_or_else(|| {
            QueryError::location(
                LocationCode(5439014),
                format!(
                    "{name} parameter 'unit' value cannot be recognized as a time unit: {text}"
                ),
            )
        })
}

/// `startOfWeek`, case-insensitive, as an ISO weekday number (Monday 1 ... Sunday 7).
fn parse_start_of_week(value: &Bson, name: &str) -> Result<u32> {
    const DAYS: [(&str, &str); 7] = [
        ("monday", "mon"),
        ("tuesday", "tue"),
        ("wednesday", "wed"),
        ("thursday", "thu"),
        ("friday", "fri"),
        ("saturday", "sat"),
        ("sunday", "sun"),
    ];
    let Bson::String(text) = value else {
        return Err(QueryError::location(
            LocationCode(5439015),
            format!(
                "{name} requires 'startOfWeek' to be a string, but got {}",
                type_of(Some(value))
            ),
        ));
    };
    let lower = text.to_lowercase();
    DAYS.iter()
        .position(|(long, short)| lower == *long || lower == *short)
        .and_then(|i| u32::try_from(i + 1).ok())
        .ok_or_else(|| {
            QueryError::location(
                LocationCode(5439016),
                format!(
                    "{name} parameter 'startOfWeek' value cannot be recognized as a day of a week: {text}"
                ),
            )
        })
}

/// The value unless it is null, undefined or missing (which make these operators answer null).
fn present(value: Value) -> Option<Bson> {
    value.filter(|v| !matches!(v, Bson::Null | Bson::Undefined))
}

fn overflow(code: i32, what: &str) -> QueryError {
    QueryError::location(LocationCode(code), format!("{what} overflowed"))
}

/// `months` added to a wall-clock time, the day clamped to the target month's length.
fn add_months(local: NaiveDateTime, months: i64) -> Option<NaiveDateTime> {
    let total = i64::from(local.year())
        .checked_mul(12)?
        .checked_add(i64::from(local.month0()))?
        .checked_add(months)?;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month = u32::try_from(total.rem_euclid(12) + 1).ok()?;
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = civil_date(i64::from(year), i64::from(month) + 1, 1)?;
    let length = u32::try_from((next - first).num_days()).ok()?;
    let day = local.day().min(length);
    Some(NaiveDate::from_ymd_opt(year, month, day)?.and_time(local.time()))
}

/// MongoDB's `dateAdd`: the result in milliseconds.
fn date_add(millis: i64, unit: Unit, amount: i64, zone: &Zone) -> Result<i64> {
    let failed = || overflow(5166406, "dateAdd");
    if let Some(unit_millis) = unit.fixed_millis() {
        return amount
            .checked_mul(unit_millis)
            .and_then(|delta| millis.checked_add(delta))
            .ok_or_else(failed);
    }
    if !(-unit.amount_max() < amount && amount < unit.amount_max()) {
        return Err(QueryError::location(
            LocationCode(5976500),
            format!(
                "invalid dateAdd 'amount' parameter value: {amount} {}",
                unit.name()
            ),
        ));
    }
    let date = bson::DateTime::from_millis(millis);
    let local = zone.localize(date).naive_local();
    let moved = match unit {
        Unit::Year => amount.checked_mul(12).and_then(|m| add_months(local, m)),
        Unit::Quarter => amount.checked_mul(3).and_then(|m| add_months(local, m)),
        Unit::Month => add_months(local, amount),
        Unit::Week => amount
            .checked_mul(7)
            .and_then(TimeDelta::try_days)
            .and_then(|d| local.checked_add_signed(d)),
        _ => TimeDelta::try_days(amount).and_then(|d| local.checked_add_signed(d)),
    };
    let moved = moved.ok_or_else(failed)?;
    Ok(zone.resolve(moved))
}

/// The argument as a date (or timestamp or ObjectId), with the operator's own error.
fn date_arg(value: &Bson, code: i32, message: impl FnOnce(&str) -> String) -> Result<i64> {
    as_date(value)
        .map(|d| d.timestamp_millis())
        .ok_or_else(|| QueryError::location(LocationCode(code), message(type_of(Some(value)))))
}

/// `$dateAdd` and `$dateSubtract`: `{startDate, unit, amount, timezone}`.
pub(super) fn eval_add(op: NamedOp, slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    let name = named::name(op);
    let null = Ok(Some(Bson::Null));
    let Some(start) = present(eval_slot(slots, 0, ctx)?) else {
        return null;
    };
    let Some(unit) = present(eval_slot(slots, 1, ctx)?) else {
        return null;
    };
    let Some(amount) = present(eval_slot(slots, 2, ctx)?) else {
        return null;
    };
    let Some(zone) = eval_timezone(slot(slots, 3), ctx)? else {
        return null;
    };
    let start = date_arg(&start, 5166403, |_| {
        format!("{name} requires startDate to be convertible to a date")
    })?;
    let Bson::String(unit_name) = &unit else {
        return Err(QueryError::location(
            LocationCode(5166404),
            format!("{name} expects string defining the time unit"),
        ));
    };
    let unit = UNITS
        .iter()
        .find(|(n, _)| n == unit_name)
        .map(|(_, u)| *u)
        .ok_or_else(|| {
            QueryError::FailedToParse(format!("unknown time unit value: {unit_name}"))
        })?;
    let Some(amount) = Num::of(&amount).and_then(Num::as_whole) else {
        return Err(QueryError::location(
            LocationCode(5166405),
            format!("{name} expects integer amount of time units"),
        ));
    };
    let amount = if op == NamedOp::DateSubtract {
        amount.checked_neg().ok_or_else(|| {
            QueryError::location(
                LocationCode(6045000),
                format!("invalid $dateSubtract 'amount' parameter value: {amount}"),
            )
        })?
    } else {
        amount
    };
    let millis = date_add(start, unit, amount, &zone)?;
    Ok(Some(Bson::DateTime(bson::DateTime::from_millis(millis))))
}

/// Adds context to a time zone error the way `$dateDiff`/`$dateTrunc` report it.
fn zone_context(err: QueryError, name: &str) -> QueryError {
    match err {
        QueryError::Location { code, message } => QueryError::Location {
            code,
            message: format!(
                "{name} parameter 'timezone' value parsing failed :: caused by :: {message}"
            ),
        },
        other => other,
    }
}

/// Evaluates `startOfWeek` when the unit is "week" and the argument is given: `Err(None)`-like
/// null handling is left to the caller through the `Option` layers.
fn eval_start_of_week(
    slots: &[Option<Expr>],
    index: usize,
    unit: &Bson,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Option<Bson>>> {
    let active = matches!(unit, Bson::String(u) if u == "week");
    match slot(slots, index) {
        Some(expr) if active => match eval(expr, ctx)? {
            value if nullish(&value) => Ok(None),
            value => Ok(Some(value)),
        },
        _ => Ok(Some(None)),
    }
}

/// Days between two local dates.
fn day_diff(start: NaiveDate, end: NaiveDate) -> i64 {
    (end - start).num_days()
}

/// Position of a date in a week starting on `start_of_week` (0 = first day).
fn day_of_week(date: NaiveDate, start_of_week: u32) -> i64 {
    let iso = i64::from(date.weekday().number_from_monday());
    (iso - i64::from(start_of_week) + 7) % 7
}

fn week_diff(start: NaiveDate, end: NaiveDate, start_of_week: u32) -> i64 {
    (day_diff(start, end) + day_of_week(start, start_of_week) - day_of_week(end, start_of_week)) / 7
}

fn month_diff(start: NaiveDate, end: NaiveDate) -> i64 {
    i64::from(end.month()) - i64::from(start.month())
        + (i64::from(end.year()) - i64::from(start.year())) * 12
}

fn quarter_diff(start: NaiveDate, end: NaiveDate) -> i64 {
    i64::from(end.month0() / 3) - i64::from(start.month0() / 3)
        + (i64::from(end.year()) - i64::from(start.year())) * 4
}

/// MongoDB's `dateDiff` for two instants already in the zone's wall clock.
fn date_diff(
    start: &DateTime<FixedOffset>,
    end: &DateTime<FixedOffset>,
    unit: Unit,
    start_of_week: u32,
) -> i64 {
    let (start_day, end_day) = (start.date_naive(), end.date_naive());
    let offset_change =
        i64::from(start.offset().local_minus_utc()) - i64::from(end.offset().local_minus_utc());
    let hours = i64::from(end.hour()) - i64::from(start.hour()) + day_diff(start_day, end_day) * 24;
    let minutes = i64::from(end.minute()) - i64::from(start.minute()) + hours * 60;
    match unit {
        Unit::Year => i64::from(end.year()) - i64::from(start.year()),
        Unit::Quarter => quarter_diff(start_day, end_day),
        Unit::Month => month_diff(start_day, end_day),
        Unit::Week => week_diff(start_day, end_day, start_of_week),
        Unit::Day => day_diff(start_day, end_day),
        Unit::Hour => hours + offset_change / 3600,
        Unit::Minute => minutes + offset_change / 60,
        _ => i64::from(end.second()) - i64::from(start.second()) + minutes * 60 + offset_change,
    }
}

/// `$dateDiff`: `{startDate, endDate, unit, timezone, startOfWeek}`.
pub(super) fn eval_diff(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    const NAME: &str = "$dateDiff";
    let null = Ok(Some(Bson::Null));
    let Some(start) = present(eval_slot(slots, 0, ctx)?) else {
        return null;
    };
    let Some(end) = present(eval_slot(slots, 1, ctx)?) else {
        return null;
    };
    let Some(unit) = present(eval_slot(slots, 2, ctx)?) else {
        return null;
    };
    let Some(start_of_week) = eval_start_of_week(slots, 4, &unit, ctx)? else {
        return null;
    };
    let Some(zone) = eval_timezone(slot(slots, 3), ctx).map_err(|e| zone_context(e, NAME))? else {
        return null;
    };
    let message = |which: &'static str| {
        move |kind: &str| format!("$dateDiff requires '{which}' to be a date, but got {kind}")
    };
    let start = date_arg(&start, 5166307, message("startDate"))?;
    let end = date_arg(&end, 5166307, message("endDate"))?;
    let unit = parse_unit(&unit, NAME)?;
    let start_of_week = match start_of_week {
        Some(day) => parse_start_of_week(&day, NAME)?,
        None => 7,
    };
    let diff = if unit == Unit::Millisecond {
        end.checked_sub(start)
            .ok_or_else(|| overflow(5166308, "dateDiff"))?
    } else {
        let local = |millis| zone.localize(bson::DateTime::from_millis(millis));
        date_diff(&local(start), &local(end), unit, start_of_week)
    };
    Ok(Some(Bson::Int64(diff)))
}

/// `$dateTrunc`: `{date, unit, binSize, timezone, startOfWeek}`.
pub(super) fn eval_trunc(slots: &[Option<Expr>], ctx: &mut Ctx<'_>) -> Result<Value> {
    const NAME: &str = "$dateTrunc";
    let null = Ok(Some(Bson::Null));
    let Some(date) = present(eval_slot(slots, 0, ctx)?) else {
        return null;
    };
    let Some(unit) = present(eval_slot(slots, 1, ctx)?) else {
        return null;
    };
    let bin_size = match slot(slots, 2) {
        None => None,
        Some(expr) => match eval(expr, ctx)? {
            value if nullish(&value) => return null,
            value => value,
        },
    };
    let Some(start_of_week) = eval_start_of_week(slots, 4, &unit, ctx)? else {
        return null;
    };
    let Some(zone) = eval_timezone(slot(slots, 3), ctx).map_err(|e| zone_context(e, NAME))? else {
        return null;
    };
    let date = date_arg(&date, 5439012, |kind| {
        format!("$dateTrunc requires 'date' to be a date, but got {kind}")
    })?;
    let unit = parse_unit(&unit, NAME)?;
    let bin_size = match bin_size {
        None => 1,
        Some(value) => parse_bin_size(&value)?,
    };
    let start_of_week = match start_of_week {
        Some(day) => parse_start_of_week(&day, NAME)?,
        None => 7,
    };
    let millis = truncate(date, unit, bin_size, &zone, start_of_week)?;
    Ok(Some(Bson::DateTime(bson::DateTime::from_millis(millis))))
}

fn parse_bin_size(value: &Bson) -> Result<i64> {
    let Some(size) = Num::of(value).and_then(Num::as_whole) else {
        return Err(QueryError::location(
            LocationCode(5439017),
            format!(
                "$dateTrunc requires 'binSize' to be a 64-bit integer, but got value '{value}' of type {}",
                type_of(Some(value))
            ),
        ));
    };
    if size <= 0 {
        return Err(QueryError::location(
            LocationCode(5439018),
            format!("$dateTrunc requires 'binSize' to be greater than 0, but got value {size}"),
        ));
    }
    Ok(size)
}

/// MongoDB's `truncateDate`: bins of `bin_size` units counted from 2000-01-01 in the zone (the
/// first `start_of_week` on or after it for weeks).
fn truncate(
    millis: i64,
    unit: Unit,
    bin_size: i64,
    zone: &Zone,
    start_of_week: u32,
) -> Result<i64> {
    let offset_millis = i64::from(zone.offset_at_millis(REFERENCE_MILLIS).local_minus_utc()) * 1000;
    let mut reference = REFERENCE_MILLIS - offset_millis;
    let mut reference_day = 1;
    if unit == Unit::Week {
        // 2000-01-01 is a Saturday (ISO 6).
        let position = (6 - i64::from(start_of_week) + 7) % 7;
        let adjust = (7 - position) % 7;
        reference += adjust * MILLIS_PER_DAY;
        reference_day += adjust;
    }
    if let Some(unit_millis) = unit.fixed_millis() {
        let bin = bin_size
            .checked_mul(unit_millis)
            .ok_or_else(|| overflow(5439002, "dateTrunc"))?;
        let shifted = millis
            .checked_sub(reference)
            .ok_or_else(|| overflow(5439000, "dateTrunc"))?;
        return millis
            .checked_sub(shifted.rem_euclid(bin))
            .ok_or_else(|| overflow(5439001, "dateTrunc"));
    }
    if bin_size > CALENDAR_BIN_SIZE_MAX {
        return Err(QueryError::location(
            LocationCode(5439006),
            "dateTrunc unsupported binSize value",
        ));
    }
    let reference_date =
        NaiveDate::from_ymd_opt(2000, 1, u32::try_from(reference_day).unwrap_or(1))
            .ok_or_else(|| overflow(5439004, "dateTrunc"))?;
    let local = zone
        .localize(bson::DateTime::from_millis(millis))
        .date_naive();
    let distance = match unit {
        Unit::Day => day_diff(reference_date, local),
        Unit::Week => week_diff(reference_date, local, start_of_week),
        Unit::Month => month_diff(reference_date, local),
        Unit::Quarter => quarter_diff(reference_date, local),
        _ => i64::from(local.year()) - 2000,
    };
    let lower = distance - distance.rem_euclid(bin_size);
    date_add(reference, unit, lower, zone)
}
