//! Reading the event time into epoch milliseconds UTC, following [`TimeFormat`]
//! (see there for the rules, including the 1e11 seconds-versus-milliseconds cut-off).

use chrono::{DateTime, NaiveDateTime};
use serde_json::{Number, Value};

use crate::TimeFormat;

/// Numbers below this are epoch seconds in `auto` mode, the rest epoch milliseconds.
const SECONDS_BELOW: i128 = 100_000_000_000;

/// Naive date-time layouts, read as UTC; `%.f` also matches an absent fraction.
const NAIVE_FORMATS: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];

/// Why a time value was refused; rendered after the offending value in a rejection detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimeError {
    #[error("is not {0}")]
    Unrecognised(&'static str),
    #[error("is out of range")]
    OutOfRange,
}

/// The unit of a numeric time.
#[derive(Clone, Copy)]
enum Unit {
    Auto,
    Ms,
    S,
}

/// Epoch milliseconds UTC for `value`, read as `format` says.
pub(crate) fn parse(value: &Value, format: TimeFormat) -> Result<i64, TimeError> {
    let unrecognised = TimeError::Unrecognised(match format {
        TimeFormat::Auto => "epoch ms, epoch s or RFC 3339",
        TimeFormat::Ms => "epoch ms",
        TimeFormat::S => "epoch s",
        TimeFormat::Rfc3339 => "RFC 3339",
    });
    let unit = match format {
        TimeFormat::Auto => Some(Unit::Auto),
        TimeFormat::Ms => Some(Unit::Ms),
        TimeFormat::S => Some(Unit::S),
        TimeFormat::Rfc3339 => None,
    };
    let ms = match (value, unit) {
        (Value::Number(n), Some(unit)) => number_ms(n, unit)?,
        (Value::String(s), Some(unit)) if is_decimal(s) => decimal_ms(s, unit)?,
        (Value::String(s), None | Some(Unit::Auto)) => date_time_ms(s).ok_or(unrecognised)?,
        _ => return Err(unrecognised),
    };
    // Refuse what chrono cannot represent, so consumers can always convert the time back.
    DateTime::from_timestamp_millis(ms)
        .map(|_| ms)
        .ok_or(TimeError::OutOfRange)
}

fn number_ms(n: &Number, unit: Unit) -> Result<i64, TimeError> {
    if let Some(i) = n.as_i64() {
        integer_ms(i128::from(i), unit)
    } else if let Some(u) = n.as_u64() {
        integer_ms(i128::from(u), unit)
    } else {
        // Always Some without serde_json's arbitrary_precision feature.
        n.as_f64()
            .map_or(Err(TimeError::OutOfRange), |f| float_ms(f, unit))
    }
}

fn integer_ms(i: i128, unit: Unit) -> Result<i64, TimeError> {
    let ms = if is_seconds(unit, i < SECONDS_BELOW) {
        i.checked_mul(1000).ok_or(TimeError::OutOfRange)?
    } else {
        i
    };
    i64::try_from(ms).map_err(|_| TimeError::OutOfRange)
}

fn float_ms(f: f64, unit: Unit) -> Result<i64, TimeError> {
    let micros = if is_seconds(unit, f < SECONDS_BELOW as f64) {
        f * 1e6
    } else {
        f * 1e3
    };
    if !micros.is_finite() {
        return Err(TimeError::OutOfRange);
    }
    // Rounding at the microsecond first absorbs binary representation error
    // (1700000000.123 is stored as ...122.99999), then round down to the millisecond.
    // The float-to-int cast saturates; an out-of-range result is caught by try_from.
    let ms = (micros.round() as i128).div_euclid(1000);
    i64::try_from(ms).map_err(|_| TimeError::OutOfRange)
}

fn is_seconds(unit: Unit, below_cutoff: bool) -> bool {
    match unit {
        Unit::Auto => below_cutoff,
        Unit::Ms => false,
        Unit::S => true,
    }
}

/// `digits` or `digits.digits`.
fn is_decimal(s: &str) -> bool {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && all_digits(fraction)
}

fn decimal_ms(s: &str, unit: Unit) -> Result<i64, TimeError> {
    if s.contains('.') {
        let f: f64 = s.parse().map_err(|_| TimeError::OutOfRange)?;
        float_ms(f, unit)
    } else {
        // Only digits, so the parse can fail only by overflow.
        let i: i128 = s.parse().map_err(|_| TimeError::OutOfRange)?;
        integer_ms(i, unit)
    }
}

/// RFC 3339 with offset, else a naive date-time read as UTC.
fn date_time_ms(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    NAIVE_FORMATS.iter().find_map(|format| {
        NaiveDateTime::parse_from_str(s, format)
            .ok()
            .map(|t| t.and_utc().timestamp_millis())
    })
}
