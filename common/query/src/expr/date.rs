//! Date operators (`$year` ... `$dateToString`, `$toDate`). Dates are BSON milliseconds since the
//! epoch; calendar fields are computed in UTC or in a fixed offset ("+05:30"). Named time zones
//! need a zone database, which this crate does not carry, so they are rejected with MongoDB's
//! "unrecognized time zone identifier" error rather than silently treated as UTC.

use bson::Bson;
use chrono::{DateTime, Datelike, FixedOffset, Timelike};

use super::{Ctx, DatePart, Expr, Value, eval, type_of};
use crate::error::{LocationCode, QueryError, Result};

/// MongoDB's default `$dateToString` format.
const DEFAULT_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%LZ";

/// ISO-8601 with milliseconds in UTC, as `$toString` prints dates.
pub(crate) fn iso_string(date: bson::DateTime) -> String {
    date.to_chrono()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A value usable as a date: a date, a timestamp (its seconds) or an ObjectId (its creation time).
fn as_date(value: &Bson) -> Option<bson::DateTime> {
    match value {
        Bson::DateTime(date) => Some(*date),
        Bson::Timestamp(ts) => Some(bson::DateTime::from_millis(i64::from(ts.time) * 1000)),
        Bson::ObjectId(oid) => Some(oid.timestamp()),
        _ => None,
    }
}

/// `$toDate`'s conversion.
pub(super) fn to_date(value: &Bson) -> Result<bson::DateTime> {
    if let Some(date) = as_date(value) {
        return Ok(date);
    }
    match value {
        Bson::Int64(millis) => Ok(bson::DateTime::from_millis(*millis)),
        Bson::Double(millis) if millis.is_finite() => {
            Ok(bson::DateTime::from_millis(*millis as i64))
        }
        Bson::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|parsed| bson::DateTime::from_millis(parsed.timestamp_millis()))
            .map_err(|_| {
                QueryError::ConversionFailure(format!("Error parsing date string '{text}'"))
            }),
        other => Err(QueryError::ConversionFailure(format!(
            "Unsupported conversion from {} to date in $convert with no onError value",
            type_of(Some(other))
        ))),
    }
}

/// Parses "UTC"/"GMT"/"Z" or a fixed offset "+hh", "+hhmm", "+hh:mm".
fn parse_timezone(name: &str) -> Result<FixedOffset> {
    let unrecognized = || {
        QueryError::location(
            LocationCode::TIMEZONE,
            format!("unrecognized time zone identifier: \"{name}\""),
        )
    };
    if matches!(name, "UTC" | "GMT" | "Z" | "Etc/UTC" | "Etc/GMT") {
        return FixedOffset::east_opt(0).ok_or_else(unrecognized);
    }
    let (sign, digits) = match name.as_bytes().first() {
        Some(b'+') => (1, &name[1..]),
        Some(b'-') => (-1, &name[1..]),
        _ => return Err(unrecognized()),
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return Err(unrecognized());
    }
    let hours: i32 = digits[..2].parse().map_err(|_| unrecognized())?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().map_err(|_| unrecognized())?
    } else {
        0
    };
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or_else(unrecognized)
}

fn eval_timezone(timezone: Option<&Expr>, ctx: &mut Ctx<'_>) -> Result<Option<FixedOffset>> {
    let Some(timezone) = timezone else {
        return parse_timezone("UTC").map(Some);
    };
    match eval(timezone, ctx)? {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(name)) => parse_timezone(&name).map(Some),
        Some(other) => Err(QueryError::location(
            LocationCode::TIMEZONE,
            format!(
                "timezone must evaluate to a string, found {}",
                type_of(Some(&other))
            ),
        )),
    }
}

fn localize(date: bson::DateTime, offset: FixedOffset) -> DateTime<FixedOffset> {
    date.to_chrono().with_timezone(&offset)
}

pub(super) fn eval_date_part(
    part: DatePart,
    date: &Expr,
    timezone: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let value = match eval(date, ctx)? {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(value) => value,
    };
    let Some(date) = as_date(&value) else {
        return Err(QueryError::location(
            LocationCode::DATE_TYPE,
            format!(
                "can't convert from BSON type {} to Date",
                type_of(Some(&value))
            ),
        ));
    };
    let Some(offset) = eval_timezone(timezone, ctx)? else {
        return Ok(Some(Bson::Null));
    };
    let local = localize(date, offset);
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

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// `%U`: the week of the year with weeks starting on Sunday (0-53).
fn sunday_week(local: &DateTime<FixedOffset>) -> i32 {
    let day_of_year = to_i32(local.ordinal0());
    let weekday = to_i32(local.weekday().num_days_from_sunday());
    (day_of_year + 7 - weekday) / 7
}

pub(super) fn eval_date_to_string(
    date: &Expr,
    format: Option<&Expr>,
    timezone: Option<&Expr>,
    on_null: Option<&Expr>,
    ctx: &mut Ctx<'_>,
) -> Result<Value> {
    let value = eval(date, ctx)?;
    let value = match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => {
            return match on_null {
                Some(on_null) => eval(on_null, ctx),
                None => Ok(Some(Bson::Null)),
            };
        }
        Some(value) => value,
    };
    let Some(date) = as_date(&value) else {
        return Err(QueryError::location(
            LocationCode::DATE_TYPE,
            format!(
                "can't convert from BSON type {} to Date",
                type_of(Some(&value))
            ),
        ));
    };
    let format = match format {
        None => DEFAULT_FORMAT.to_owned(),
        Some(format) => match eval(format, ctx)? {
            None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
            Some(Bson::String(text)) => text,
            Some(other) => {
                return Err(QueryError::location(
                    LocationCode(18533),
                    format!(
                        "$dateToString requires that 'format' be a string, found: {}",
                        type_of(Some(&other))
                    ),
                ));
            }
        },
    };
    let Some(offset) = eval_timezone(timezone, ctx)? else {
        return Ok(Some(Bson::Null));
    };
    Ok(Some(Bson::String(format_date(
        &localize(date, offset),
        &format,
    )?)))
}

fn format_date(local: &DateTime<FixedOffset>, format: &str) -> Result<String> {
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
        let err = Expression::parse(
            &bson!({"$dateToString": {"date": "$date", "timezone": "Europe/Paris"}}),
        )
        .unwrap()
        .evaluate(&d)
        .unwrap_err();
        assert_eq!(err.code().0, 40485);
    }
}
