//! The JSON context to CEL values by each parameter's declared type, and the write-time check.
//!
//! This is SpiceDB's `ConvertContextToParameters`: numbers from integral floats or numeric
//! strings, base64 bytes, Go `time.ParseDuration` durations, strict RFC 3339 timestamps, lists
//! and string-keyed maps converted element-wise, `any` passed as is (JSON numbers as doubles, as
//! Go's `structpb` gives them).

use std::collections::HashMap;
use std::sync::Arc;

use ::cel::Value;
use base64::Engine as _;
use chrono::TimeZone as _;
use serde_json::Value as Json;

use crate::engine::cel::ipaddress::IpAddress;
use crate::model::Context;
use crate::schema::{CaveatDef, CaveatType};

/// Checks, before writing a relationship, that its context fits `caveat`: every key must be a
/// parameter of the caveat (SpiceDB refuses unknown keys on write) and convert to its type.
pub fn check_context_types(caveat: &CaveatDef, context: &Context) -> Result<(), String> {
    for (key, value) in context {
        let Some(param) = caveat.parameter(key) else {
            return Err(format!(
                "unknown parameter `{key}` for caveat `{}`",
                caveat.name
            ));
        };
        convert(&param.type_, value)
            .map_err(|e| type_error(&caveat.name, key, &param.type_, &e))?;
    }
    Ok(())
}

/// A parameter of the wrong type, as reported on write and on evaluation.
pub(super) fn type_error(caveat: &str, param: &str, type_: &CaveatType, why: &str) -> String {
    format!("parameter `{param}` of caveat `{caveat}` expects {type_}, {why}")
}

/// A short description of a JSON value for error messages.
fn describe(v: &Json) -> String {
    let kind = match v {
        Json::Null => return "null".to_string(),
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "list",
        Json::Object(_) => "map",
    };
    let mut text = v.to_string();
    if text.len() > 64 {
        let mut end = 64;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("{kind} `{text}`")
}

fn got(v: &Json) -> String {
    format!("got {}", describe(v))
}

/// Converts `v` to a CEL value of type `t`; the error says what was found instead.
pub(super) fn convert(t: &CaveatType, v: &Json) -> Result<Value, String> {
    Ok(match t {
        CaveatType::Any => any_value(v)?,
        CaveatType::Bool => match v {
            Json::Bool(b) => Value::Bool(*b),
            _ => return Err(got(v)),
        },
        CaveatType::String => match v {
            Json::String(s) => Value::String(Arc::new(s.clone())),
            _ => return Err(got(v)),
        },
        CaveatType::Int => Value::Int(to_int(v)?),
        CaveatType::Uint => Value::UInt(to_uint(v)?),
        CaveatType::Double => Value::Float(to_double(v)?),
        CaveatType::Bytes => match v {
            Json::String(s) => {
                let cleaned: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(cleaned.as_bytes())
                    .map_err(|e| format!("{}: not base64 ({e})", got(v)))?;
                Value::Bytes(Arc::new(bytes))
            }
            _ => return Err(format!("{} (bytes are a base64 string)", got(v))),
        },
        CaveatType::Duration => match v {
            Json::String(s) => {
                let nanos = parse_go_duration(s).map_err(|e| format!("{}: {e}", got(v)))?;
                Value::Duration(chrono::Duration::nanoseconds(nanos))
            }
            _ => return Err(format!("{} (a duration is a string like `1h30m`)", got(v))),
        },
        CaveatType::Timestamp => match v {
            Json::String(s) => Value::Timestamp(
                parse_rfc3339(s).ok_or_else(|| format!("{}: not an RFC 3339 timestamp", got(v)))?,
            ),
            _ => return Err(format!("{} (a timestamp is an RFC 3339 string)", got(v))),
        },
        CaveatType::IpAddress => match v {
            Json::String(s) => {
                let ip =
                    IpAddress::parse(s).ok_or_else(|| format!("{}: not an IP address", got(v)))?;
                Value::Opaque(Arc::new(ip))
            }
            _ => return Err(got(v)),
        },
        CaveatType::List(item) => match v {
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.push(
                        convert(item, x)
                            .map_err(|e| format!("item at index {i} expects {item}, {e}"))?,
                    );
                }
                Value::List(Arc::new(out))
            }
            _ => return Err(got(v)),
        },
        CaveatType::Map(item) => match v {
            Json::Object(entries) => {
                let mut out = HashMap::with_capacity(entries.len());
                for (k, x) in entries {
                    out.insert(
                        k.clone(),
                        convert(item, x)
                            .map_err(|e| format!("value at key `{k}` expects {item}, {e}"))?,
                    );
                }
                Value::from(out)
            }
            _ => return Err(got(v)),
        },
    })
}

/// An `any` parameter: JSON as is, numbers as doubles (Go's `structpb` has only doubles).
/// A number without a double value (possible only under serde_json's `arbitrary_precision`)
/// is refused as of the wrong type, never read as some other number.
fn any_value(v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().ok_or_else(|| got(v))?),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(
            items.iter().map(any_value).collect::<Result<_, _>>()?,
        )),
        Json::Object(entries) => Value::from(
            entries
                .iter()
                .map(|(k, x)| Ok((k.clone(), any_value(x)?)))
                .collect::<Result<HashMap<String, Value>, String>>()?,
        ),
    })
}

/// A JSON number or numeric string, as SpiceDB reads numbers (`big.ParseFloat` in base 10).
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

fn number(v: &Json) -> Result<Num, String> {
    match v {
        Json::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Num::I(i)
        } else if let Some(u) = n.as_u64() {
            Num::U(u)
        } else {
            // no double value (only under serde_json's `arbitrary_precision`): refused, never
            // read as some other number
            Num::F(n.as_f64().ok_or_else(|| got(v))?)
        }),
        Json::String(s) => {
            if let Ok(i) = s.parse::<i64>() {
                return Ok(Num::I(i));
            }
            if let Ok(u) = s.parse::<u64>() {
                return Ok(Num::U(u));
            }
            if is_decimal_float(s)
                && let Ok(f) = s.parse::<f64>()
            {
                return Ok(Num::F(f));
            }
            Err(format!("{} (not a number)", got(v)))
        }
        _ => Err(got(v)),
    }
}

/// `[+-]?(digits[.digits?]|.digits)([eE][+-]?digits)?` or `[+-]?(inf|Inf)`.
fn is_decimal_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    if matches!(&s[i..], "inf" | "Inf") {
        return true;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn to_int(v: &Json) -> Result<i64, String> {
    match number(v)? {
        Num::I(i) => Ok(i),
        // Go's big.Float.Int64 saturates
        Num::U(_) => Ok(i64::MAX),
        Num::F(f) if f.is_finite() && f.fract() == 0.0 => Ok(f as i64),
        Num::F(_) => Err(format!("{} (not an integer)", got(v))),
    }
}

fn to_uint(v: &Json) -> Result<u64, String> {
    match number(v)? {
        Num::I(i) => u64::try_from(i).map_err(|_| format!("{} (negative)", got(v))),
        Num::U(u) => Ok(u),
        Num::F(f) if f.is_finite() && f.fract() == 0.0 && f >= 0.0 => Ok(f as u64),
        Num::F(f) if f < 0.0 => Err(format!("{} (negative)", got(v))),
        Num::F(_) => Err(format!("{} (not an integer)", got(v))),
    }
}

fn to_double(v: &Json) -> Result<f64, String> {
    Ok(match number(v)? {
        Num::I(i) => i as f64,
        Num::U(u) => u as f64,
        Num::F(f) => f,
    })
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` or `0`, units `ns`, `us`
/// (`µs`, `μs`), `ms`, `s`, `m`, `h`; nanoseconds, at most ±2^63-1.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // leading integer
        let mut i = 0;
        let mut v: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(b[i] - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            i += 1;
        }
        let pre = i > 0;
        // fraction
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let start = i;
            let mut overflow = false;
            while i < b.len() && b[i].is_ascii_digit() {
                if !overflow {
                    if f > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(b[i] - b'0');
                        if y > LIMIT {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            post = i > start;
        }
        if !pre && !post {
            return Err(invalid());
        }
        // unit
        let start = i;
        while i < b.len() && !(b[i] == b'.' || b[i].is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return Err(format!("missing unit in duration {orig:?}"));
        }
        let unit: u64 = match &s[start..i] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("unknown unit {u:?} in duration {orig:?}")),
        };
        s = &s[i..];
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // -2^63 is representable
        Ok(0i64.wrapping_sub_unsigned(total))
    } else {
        i64::try_from(total).map_err(|_| invalid())
    }
}

/// Go's `time.Parse(time.RFC3339, s)`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, upper-case `T`
/// and `Z`, fraction separated by `.` or `,` (digits past nanoseconds ignored); the result is
/// in UTC.
fn parse_rfc3339(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if (at(i, b'.') || at(i, b',')) && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        let mut n = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if n < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
                n += 1;
            }
            i += 1;
        }
        nanos *= 10u32.pow(9 - n);
    }
    // Go accepts offsets up to 24:60 ("some people do write offsets of 24 hours")
    let offset = if at(i, b'Z') && b.len() == i + 1 {
        0
    } else if (at(i, b'+') || at(i, b'-')) && at(i + 3, b':') && b.len() == i + 6 {
        let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
        if oh > 24 || om > 60 {
            return None;
        }
        let secs = i64::from(oh * 3600 + om * 60);
        if at(i, b'-') { -secs } else { secs }
    } else {
        return None;
    };
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    // in UTC: cel-go's `getHours()` and friends read a timestamp in UTC
    let utc = naive.checked_sub_signed(chrono::Duration::seconds(offset))?;
    chrono::FixedOffset::east_opt(0)?
        .from_local_datetime(&utc)
        .single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cel::testing::*;
    use serde_json::json;

    #[test]
    fn int_parameters() {
        let c = caveat(&[("a", T::Int)], "a == 100");
        assert_eq!(eval(&c, json!({"a": 100})), t());
        assert_eq!(eval(&c, json!({"a": 100.0})), t());
        assert_eq!(eval(&c, json!({"a": "100"})), t());
        assert_eq!(eval(&c, json!({"a": "1e2"})), t());
        assert_eq!(eval(&c, json!({"a": "+100"})), t());
        assert_eq!(eval(&c, json!({"a": "100.0"})), t());
        assert_eq!(eval(&c, json!({"a": 7})), f());
        assert_eq!(eval(&c, json!({"a": 1e19})), f());
        for bad in [
            json!(1.5),
            json!("x"),
            json!(" 100"),
            json!("0x64"),
            json!(true),
            json!(null),
            json!([1]),
        ] {
            let err = eval(&c, json!({ "a": bad })).unwrap_err();
            assert!(
                err.contains("parameter `a` of caveat `c` expects int"),
                "{err}"
            );
        }
        // overflow is an evaluation error
        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a + b > 3");
        assert!(
            eval(&c, json!({"a": i64::MAX, "b": 5}))
                .unwrap_err()
                .contains("evaluation error")
        );
    }

    #[test]
    fn uint_double_bool_string() {
        let c = caveat(&[("a", T::Uint)], "a > 3");
        assert_eq!(eval(&c, json!({"a": 5})), t());
        assert_eq!(eval(&c, json!({"a": "7"})), t());
        assert_eq!(eval(&c, json!({"a": 2})), f());
        assert!(eval(&c, json!({"a": -1})).is_err());
        assert!(eval(&c, json!({"a": -1.0})).is_err());
        let c = caveat(&[("a", T::Uint)], "a == 18446744073709551615u");
        assert_eq!(eval(&c, json!({"a": 1e20})), t());

        let c = caveat(&[("a", T::Double)], "a > 1.5");
        assert_eq!(eval(&c, json!({"a": 2})), t());
        assert_eq!(eval(&c, json!({"a": "2.5"})), t());
        assert_eq!(eval(&c, json!({"a": 1.2})), f());
        assert!(eval(&c, json!({"a": false})).is_err());

        let c = caveat(&[("a", T::Bool), ("b", T::Bool)], "!(a && b)");
        assert_eq!(eval(&c, json!({"a": false})), t());
        assert_eq!(eval(&c, json!({"a": true})), missing(&["b"]));
        assert_eq!(eval(&c, json!({"a": true, "b": true})), f());
        assert!(eval(&c, json!({"a": "true"})).is_err());
        assert!(eval(&c, json!({"a": 1})).is_err());

        let c = caveat(&[("s", T::String)], "s.startsWith('ab')");
        assert_eq!(eval(&c, json!({"s": "abc"})), t());
        assert_eq!(eval(&c, json!({"s": "x"})), f());
        assert!(eval(&c, json!({"s": 5})).is_err());
    }

    #[test]
    fn bytes_parameters() {
        let c = caveat(&[("b", T::Bytes)], "b == b'hi'");
        assert_eq!(eval(&c, json!({"b": "aGk="})), t());
        assert_eq!(eval(&c, json!({"b": "aGk=\n"})), t());
        assert_eq!(eval(&c, json!({"b": "aGo="})), f());
        for bad in [json!("!!"), json!("aGk"), json!("aG-_"), json!(3)] {
            assert!(eval(&c, json!({ "b": bad })).is_err());
        }
    }

    #[test]
    fn duration_parameters() {
        let c = caveat(&[("d", T::Duration)], "d == duration('90m')");
        for ok in [
            "1h30m",
            "5400s",
            "+1.5h",
            "5400000ms",
            "5400000000us",
            "5400000000µs",
            "5400000000μs",
            ".5h60m",
        ] {
            assert_eq!(eval(&c, json!({ "d": ok })), t(), "{ok}");
        }
        for bad in [
            json!("1h 30m"),
            json!("90"),
            json!("bad"),
            json!(5),
            json!(""),
        ] {
            assert!(eval(&c, json!({ "d": bad })).is_err(), "{bad}");
        }
        let c = caveat(&[("d", T::Duration)], "d > duration('1h')");
        assert_eq!(eval(&c, json!({"d": "3600000000001ns"})), t());
        assert_eq!(eval(&c, json!({"d": "-2h"})), f());
        assert_eq!(eval(&c, json!({"d": "0"})), f());
        assert_eq!(parse_go_duration("-2562047h47m16.854775808s"), Ok(i64::MIN));
        assert!(parse_go_duration("2562047h47m16.854775808s").is_err());
        assert_eq!(parse_go_duration("1.000000001s"), Ok(1_000_000_001));
    }

    #[test]
    fn timestamp_parameters() {
        let c = caveat(&[("t", T::Timestamp), ("now", T::Timestamp)], "t > now");
        let stored = json!({"t": "2030-01-01T00:00:00Z"});
        let with = |now: &str| {
            let mut v = stored.clone();
            v["now"] = json!(now);
            v
        };
        assert_eq!(eval(&c, with("2020-01-01T00:00:00Z")), t());
        assert_eq!(eval(&c, with("2031-01-01T00:00:00+01:00")), f());
        assert_eq!(eval(&c, with("2030-01-01T00:00:00.5Z")), f());
        assert_eq!(eval(&c, with("2029-12-31T23:59:59.999999999999Z")), t());
        assert_eq!(eval(&c, stored.clone()), missing(&["now"]));
        for bad in [
            "2020-01-01",
            "2030-06-01t00:00:00z",
            "2030-06-01 00:00:00Z",
            "2030-02-30T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:00:00+2400",
            "2030-01-01T00:00:00+25:00",
        ] {
            assert!(eval(&c, with(bad)).is_err(), "{bad}");
        }
        // read in UTC, as cel-go; offsets up to 24:60 as Go's time.Parse
        let c = caveat(&[("t", T::Timestamp)], "t.getHours() == 1");
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00+01:00"})), f());
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00Z"})), t());
        assert_eq!(eval(&c, json!({"t": "2030-06-02T01:00:00+24:00"})), t());
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00,5Z"})), t());
        let c = caveat(
            &[("t", T::Timestamp), ("d", T::Duration)],
            "t + d > timestamp('2030-01-01T00:00:00Z') && t.getFullYear() == 2029",
        );
        assert_eq!(
            eval(&c, json!({"t": "2029-12-31T23:00:00Z", "d": "2h"})),
            t()
        );
        assert_eq!(
            eval(&c, json!({"t": "2029-12-31T23:00:00Z", "d": "30m"})),
            f()
        );
    }

    #[test]
    fn list_map_any_parameters() {
        let c = caveat(
            &[("l", T::List(Box::new(T::String))), ("x", T::String)],
            "x in l",
        );
        assert_eq!(eval(&c, json!({"l": ["a", "b"], "x": "a"})), t());
        assert_eq!(eval(&c, json!({"l": ["a"], "x": "z"})), f());
        assert_eq!(eval(&c, json!({"x": "a"})), missing(&["l"]));
        let err = eval(&c, json!({"l": ["a", 1], "x": "a"})).unwrap_err();
        assert!(err.contains("index 1"), "{err}");
        assert!(eval(&c, json!({"l": "a", "x": "a"})).is_err());

        let c = caveat(&[("l", T::List(Box::new(T::Int)))], "2 in l");
        assert_eq!(eval(&c, json!({"l": [1, 2]})), t());
        assert_eq!(eval(&c, json!({"l": [1.0, 2.0]})), t());
        assert_eq!(eval(&c, json!({"l": []})), f());

        let c = caveat(&[("m", T::Map(Box::new(T::Int)))], "m['a'] == 1");
        assert_eq!(eval(&c, json!({"m": {"a": 1}})), t());
        assert_eq!(eval(&c, json!({"m": {"a": 2}})), f());
        assert!(
            eval(&c, json!({"m": {"b": 1}}))
                .unwrap_err()
                .contains("evaluation error")
        );
        assert!(
            eval(&c, json!({"m": {"a": "x"}}))
                .unwrap_err()
                .contains("key `a`")
        );
        assert!(eval(&c, json!({"m": [1]})).is_err());

        let c = caveat(
            &[("m", T::Map(Box::new(T::String)))],
            "has(m.k) && m.k == 'v'",
        );
        assert_eq!(eval(&c, json!({"m": {"k": "v"}})), t());
        assert_eq!(eval(&c, json!({"m": {}})), f());
        assert_eq!(eval(&c, json!({})), missing(&["m"]));

        let c = caveat(
            &[("m", T::Map(Box::new(T::List(Box::new(T::Int)))))],
            "3 in m['k']",
        );
        assert_eq!(eval(&c, json!({"m": {"k": [3]}})), t());
        assert!(eval(&c, json!({"m": {"k": ["a"]}})).is_err());

        let c = caveat(&[("a", T::Any)], "a == 1");
        assert_eq!(eval(&c, json!({"a": 1})), t());
        assert_eq!(eval(&c, json!({"a": "1"})), f());
        assert_eq!(eval(&c, json!({"a": [1]})), f());
        assert_eq!(eval(&c, json!({"a": 1.5})), f());
        let c = caveat(&[("l", T::List(Box::new(T::Any)))], "size(l) > 1");
        assert_eq!(eval(&c, json!({"l": [1, "a"]})), t());
        let c = caveat(&[("m", T::Map(Box::new(T::Any)))], "m.a == 1 && m.b == 'x'");
        assert_eq!(eval(&c, json!({"m": {"a": 1, "b": "x"}})), t());
        assert!(eval(&c, json!({"m": {"a": 1}})).is_err());
    }

    #[test]
    fn write_time_checks() {
        let c = caveat(
            &[("a", T::Int), ("l", T::List(Box::new(T::String)))],
            "a == 1 && 'x' in l",
        );
        assert!(check_context_types(&c, &ctx(json!({"a": 1, "l": ["x"]}))).is_ok());
        assert!(check_context_types(&c, &ctx(json!({"a": "5"}))).is_ok());
        assert!(check_context_types(&c, &ctx(json!({}))).is_ok());
        let err = check_context_types(&c, &ctx(json!({"a": "x"}))).unwrap_err();
        assert!(
            err.starts_with("parameter `a` of caveat `c` expects int, got string"),
            "{err}"
        );
        assert!(check_context_types(&c, &ctx(json!({"a": 1.5}))).is_err());
        assert!(check_context_types(&c, &ctx(json!({"a": null}))).is_err());
        assert!(check_context_types(&c, &ctx(json!({"l": [1]}))).is_err());
        let err = check_context_types(&c, &ctx(json!({"zzz": 1}))).unwrap_err();
        assert!(err.contains("unknown parameter `zzz`"), "{err}");
    }
}
