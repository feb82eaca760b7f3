//! Date operators (`$year` ... `$dateToString`) and the time zones every date operator takes.
//! Dates are BSON milliseconds since the epoch; calendar fields are computed in UTC, a fixed
//! offset ("+05:30", "-0800", "+03") or a named IANA zone ("America/New_York", through
//! chrono-tz), which applies daylight saving time at each instant exactly as MongoDB's zone
//! database does.

use std::str::FromStr;

use bson::Bson;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::{Ctx, DatePart, Expr, Value, eval, nullish, type_of};
use crate::error::{LocationCode, QueryError, Result};

/// MongoDB's default `$dateToString` format.
const DEFAULT_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%LZ";

/// The `%` specifiers `$dateToString` accepts.
pub(super) const TO_STRING_SPECIFIERS: &str = "bBdGHjLmMSwuUVYzZ";

/// Month names for `%b` and `%B`.
pub(super) const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// ISO-8601 with milliseconds in UTC, as `$toString` prints dates.
pub(crate) fn iso_string(date: bson::DateTime) -> String {
    date.to_chrono()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A value usable as a date: a date, a timestamp (its seconds) or an ObjectId (its creation time).
pub(super) fn as_date(value: &Bson) -> Option<bson::DateTime> {
    match value {
        Bson::DateTime(date) => Some(*date),
        Bson::Timestamp(ts) => Some(bson::DateTime::from_millis(i64::from(ts.time) * 1000)),
        Bson::ObjectId(oid) => Some(oid.timestamp()),
        _ => None,
    }
}

/// [`as_date`] or MongoDB's 16006 "can't convert from BSON type ... to Date".
pub(super) fn coerce_date(value: &Bson) -> Result<bson::DateTime> {
    as_date(value).ok_or_else(|| {
        QueryError::location(
            LocationCode::DATE_TYPE,
            format!(
                "can't convert from BSON type {} to Date",
                type_of(Some(value))
            ),
        )
    })
}

/// A time zone argument: UTC, a fixed offset, or a named zone with its daylight saving rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

impl Zone {
    /// UTC, the zone of every date operator without a `timezone`.
    pub(crate) fn utc() -> Zone {
        Zone::Fixed(Utc.fix())
    }

    /// Parses a zone the way MongoDB does: an Olson identifier ("UTC" included) or a UTC
    /// offset "+hh", "+hhmm" or "+hh:mm"; anything else is 40485.
    pub(crate) fn parse(name: &str) -> Result<Zone> {
        if name == "UTC" {
            return Ok(Zone::utc());
        }
        if let Ok(zone) = Tz::from_str(name) {
            return Ok(Zone::Named(zone));
        }
        parse_offset(name).map(Zone::Fixed).ok_or_else(|| {
            QueryError::location(
                LocationCode::TIMEZONE,
                format!("unrecognized time zone identifier: \"{name}\""),
            )
        })
    }

    /// Whether this is MongoDB's UTC zone (a zero fixed offset).
    pub(crate) fn is_utc(&self) -> bool {
        matches!(self, Zone::Fixed(offset) if offset.local_minus_utc() == 0)
    }

    /// The offset from UTC in effect at an instant.
    pub(crate) fn offset_at_millis(&self, millis: i64) -> FixedOffset {
        match self {
            Zone::Fixed(offset) => *offset,
            Zone::Named(zone) => {
                let instant = bson::DateTime::from_millis(millis).to_chrono();
                zone.offset_from_utc_datetime(&instant.naive_utc()).fix()
            }
        }
    }

    /// The wall-clock time of a date in this zone.
    pub(crate) fn localize(&self, date: bson::DateTime) -> DateTime<FixedOffset> {
        let offset = self.offset_at_millis(date.timestamp_millis());
        date.to_chrono().with_timezone(&offset)
    }

    /// The instant (milliseconds) a wall-clock time denotes in this zone. A time that occurs
    /// twice (autumn) is its first occurrence; one skipped by a spring-forward gap takes the
    /// offset in effect after the gap, as MongoDB's zone library resolves it.
    pub(crate) fn resolve(&self, local: NaiveDateTime) -> i64 {
        let offset = match self {
            Zone::Fixed(offset) => *offset,
            Zone::Named(zone) => match zone.from_local_datetime(&local) {
                chrono::LocalResult::Single(at) => at.offset().fix(),
                chrono::LocalResult::Ambiguous(first, _) => first.offset().fix(),
                chrono::LocalResult::None => {
                    let as_utc = local.and_utc().timestamp_millis();
                    let current = self.offset_at_millis(as_utc);
                    let shifted = as_utc - i64::from(current.local_minus_utc()) * 1000;
                    self.offset_at_millis(shifted)
                }
            },
        };
        local.and_utc().timestamp_millis() - i64::from(offset.local_minus_utc()) * 1000
    }
}

/// "+hh", "+hhmm" or "+hh:mm" (or with "-"), MongoDB's UTC offset forms.
fn parse_offset(text: &str) -> Option<FixedOffset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    let (hours, minutes) = match rest.len() {
        2 if digits(rest) => (rest, "00"),
        4 if digits(&rest[..2]) && digits(&rest[2..]) => (&rest[..2], &rest[2..]),
        5 if digits(&rest[..2]) && &rest[2..3] == ":" && digits(&rest[3..]) => {
            (&rest[..2], &rest[3..])
        }
        _ => return None,
    };
    let seconds = hours.parse::<i32>().ok()? * 3600 + minutes.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * seconds)
}

/// Evaluates a `timezone` argument: UTC when absent, `None` when it evaluates to null.
pub(super) fn eval_timezone(timezone: Option<&Expr>, ctx: &mut Ctx<'_>) -> Result<Option<Zone>> {
    let Some(timezone) = timezone else {
        return Ok(Some(Zone::utc()));
    };
    match eval(timezone, ctx)? {
        value if nullish(&value) => Ok(None),
        Some(Bson::String(name)) => Zone::parse(&name).map(Some),
        other => Err(QueryError::location(
            LocationCode(40517),
            format!(
                "timezone must evaluate to a string, found {}",
                type_of(other.as_ref())
            ),
        )),
    }
}

/// Checks a format string's `%` specifiers against those an operator accepts (18535, 18536).
pub(super) fn validate_format(format: &str, allowed: &str) -> Result<()> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            None => {
                return Err(QueryError::location(
                    LocationCode(18535),
                    "Unmatched '%' at end of format string",
                ));
            }
            Some(spec) if spec == '%' || allowed.contains(spec) => {}
            Some(spec) => {
                return Err(QueryError::location(
                    LocationCode::DATE_FORMAT,
                    format!("Invalid format character '%{spec}' in format string"),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn eval_date_part(
    part: DatePart,
    date: &Expr,
    timezone: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let value = match eval(date, ctx)? {
        value if nullish(&value) => return Ok(Some(Bson::Null)),
        Some(value) => value,
        None => return Ok(Some(Bson::Null)),
    };
    let Some(zone) = eval_timezone(timezone, ctx)? else {
        return Ok(Some(Bson::Null));
    };
    let local = zone.localize(coerce_date(&value)?);
    let number = match part {
        DatePart::Year => local.year(),
        DatePart::Month => to_i32(local.month()),
        DatePart::DayOfMonth => to_i32(local.day()),
        DatePart::Hour => to_i32(local.hour()),
        DatePart::Minute => to_i32(local.minute()),
        DatePart::Second => to_i32(local.second()),
        DatePart::Millisecond => to_i32(local.timestamp_subsec_millis() % 1000),
        DatePart::DayOfWeek => to_i32(local.weekday().number_from_sunday()),
        DatePart::DayOfYear => to_i32(local.ordinal()),
        DatePart::Week => sunday_week(&local),
        DatePart::IsoWeek => to_i32(local.iso_week().week()),
        DatePart::IsoWeekYear => local.iso_week().year(),
        DatePart::IsoDayOfWeek => to_i32(local.weekday().number_from_monday()),
    };
    Ok(Some(Bson::Int32(number)))
}

fn month_name(month: u32) -> &'static str {
    let index = usize::try_from(month.saturating_sub(1)).unwrap_or(0);
    MONTH_NAMES.get(index).copied().unwrap_or("January")
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// `%U`: the week of the year with weeks starting on Sunday (0-53).
fn sunday_week(local: &DateTime<FixedOffset>) -> i32 {
    let day_of_year = to_i32(local.ordinal0());
    let weekday = to_i32(local.weekday().num_days_from_sunday());
    (day_of_year + 7 - weekday) / 7
}

/// `$dateToString`, checking in MongoDB 7.0's order: the format first (even for a null date),
/// then the time zone, then the date (null gives `onNull`).
pub(super) fn eval_date_to_string(
    date: &Expr,
    format: Option<&Expr>,
    timezone: Option<&Expr>,
    on_null: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let value = eval(date, ctx)?;
    let format = match format {
        None => Some(DEFAULT_FORMAT.to_owned()),
        Some(format) => match eval(format, ctx)? {
            text if nullish(&text) => None,
            Some(Bson::String(text)) => {
                validate_format(&text, TO_STRING_SPECIFIERS)?;
                Some(text)
            }
            other => {
                return Err(QueryError::location(
                    LocationCode(18533),
                    format!(
                        "$dateToString requires that 'format' be a string, found: {}",
                        type_of(other.as_ref())
                    ),
                ));
            }
        },
    };
    let zone = eval_timezone(timezone, ctx)?;
    let value = match value {
        value if nullish(&value) => {
            return match on_null {
                Some(on_null) => eval(on_null, ctx),
                None => Ok(Some(Bson::Null)),
            };
        }
        Some(value) => value,
        None => return Ok(Some(Bson::Null)),
    };
    let (Some(zone), Some(format)) = (zone, format) else {
        return Ok(Some(Bson::Null));
    };
    let local = zone.localize(coerce_date(&value)?);
    Ok(Some(Bson::String(format_date(&local, &format)?)))
}

/// Formats a wall-clock time with `$dateToString`'s specifiers.
pub(super) fn format_date(local: &DateTime<FixedOffset>, format: &str) -> Result<String> {
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(QueryError::location(
                LocationCode(18535),
                "Unmatched '%' at end of format string",
            ));
        };
        format_spec(local, spec, &mut out)?;
    }
    Ok(out)
}

fn format_spec(local: &DateTime<FixedOffset>, spec: char, out: &mut String) -> Result<()> {
    let offset_seconds = local.offset().local_minus_utc();
    let text = match spec {
        'Y' => format!("{:04}", local.year()),
        'b' => month_name(local.month())[..3].to_owned(),
        'B' => month_name(local.month()).to_owned(),
        'G' => format!("{:04}", local.iso_week().year()),
        'm' => format!("{:02}", local.month()),
        'd' => format!("{:02}", local.day()),
        'H' => format!("{:02}", local.hour()),
        'M' => format!("{:02}", local.minute()),
        'S' => format!("{:02}", local.second()),
        'L' => format!("{:03}", local.timestamp_subsec_millis() % 1000),
        'j' => format!("{:03}", local.ordinal()),
        'w' => local.weekday().number_from_sunday().to_string(),
        'u' => local.weekday().number_from_monday().to_string(),
        'U' => format!("{:02}", sunday_week(local)),
        'V' => format!("{:02}", local.iso_week().week()),
        'z' => {
            let sign = if offset_seconds < 0 { '-' } else { '+' };
            let minutes = offset_seconds.abs() / 60;
            format!("{sign}{:02}{:02}", minutes / 60, minutes % 60)
        }
        'Z' => (offset_seconds / 60).to_string(),
        '%' => "%".to_owned(),
        other => {
            return Err(QueryError::location(
                LocationCode::DATE_FORMAT,
                format!("Invalid format character '%{other}' in format string"),
            ));
        }
    };
    out.push_str(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc};

    use crate::expr::Expression;

    fn eval(expr: bson::Bson, doc: &bson::Document) -> bson::Bson {
        Expression::parse(&expr)
            .unwrap()
            .evaluate(doc)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn date_parts_in_utc_and_fixed_offsets() {
        // 2014-01-01T08:15:39.736Z, a Wednesday.
        let d = doc! {"date": bson::DateTime::from_millis(1_388_564_139_736)};
        assert_eq!(eval(bson!({"$year": "$date"}), &d), bson!(2014));
        assert_eq!(eval(bson!({"$month": "$date"}), &d), bson!(1));
        assert_eq!(eval(bson!({"$dayOfMonth": "$date"}), &d), bson!(1));
        assert_eq!(eval(bson!({"$hour": "$date"}), &d), bson!(8));
        assert_eq!(eval(bson!({"$minute": "$date"}), &d), bson!(15));
        assert_eq!(eval(bson!({"$second": "$date"}), &d), bson!(39));
        assert_eq!(eval(bson!({"$millisecond": "$date"}), &d), bson!(736));
        assert_eq!(eval(bson!({"$dayOfWeek": "$date"}), &d), bson!(4));
        assert_eq!(eval(bson!({"$dayOfYear": "$date"}), &d), bson!(1));
        assert_eq!(eval(bson!({"$week": "$date"}), &d), bson!(0));
        assert_eq!(
            eval(
                bson!({"$hour": {"date": "$date", "timezone": "+05:30"}}),
                &d
            ),
            bson!(13)
        );
        assert_eq!(eval(bson!({"$year": "$missing"}), &d), bson::Bson::Null);
    }

    #[test]
    fn date_to_string_formats_like_the_manual() {
        let d = doc! {"date": bson::DateTime::from_millis(1_388_564_139_736)};
        let formatted = eval(
            bson!({"$dateToString": {"format": "%Y-%m-%d", "date": "$date"}}),
            &d,
        );
        assert_eq!(formatted, bson!("2014-01-01"));
        let formatted = eval(
            bson!({"$dateToString": {"format": "%H:%M:%S:%L%z", "date": "$date", "timezone": "-05:00"}}),
            &d,
        );
        assert_eq!(formatted, bson!("03:15:39:736-0500"));
        let default = eval(bson!({"$dateToString": {"date": "$date"}}), &d);
        assert_eq!(default, bson!("2014-01-01T08:15:39.736Z"));
        let on_null = eval(
            bson!({"$dateToString": {"date": "$nope", "onNull": "none"}}),
            &d,
        );
        assert_eq!(on_null, bson!("none"));
        let paris = eval(
            bson!({"$dateToString": {"date": "$date", "format": "%H:%M %z", "timezone": "Europe/Paris"}}),
            &d,
        );
        assert_eq!(paris, bson!("09:15 +0100"));
        let err = Expression::parse(
            &bson!({"$dateToString": {"date": "$date", "timezone": "Mars/Olympus"}}),
        )
        .unwrap()
        .evaluate(&d)
        .unwrap_err();
        assert_eq!(err.code().0, 40485);
    }
}
