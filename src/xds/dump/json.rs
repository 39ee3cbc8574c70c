//! Reading protobuf-JSON (Envoy's config dump form): field look-up under
//! either key casing (the admin endpoint writes snake_case, istioctl
//! camelCase), scalars as the protobuf JSON mapping writes them (64-bit
//! integers may be strings, durations are "1.5s"), and the record of keys
//! a converter did not understand.

use envoy_types::pb::google::protobuf::{
    value::Kind, BoolValue, Duration, ListValue, Struct, UInt32Value, Value as PbValue,
};
use serde_json::Value;

/// The field `snake` of an object, under its snake_case or camelCase key.
pub fn field<'a>(v: &'a Value, snake: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(snake).or_else(|| obj.get(&camel(snake)))
}

/// camelCase of a snake_case name (`route_config_name` -> `routeConfigName`).
pub fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// snake_case of a key in either casing.
pub fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn string(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub fn strings(v: &Value, name: &str) -> Vec<String> {
    items(v, name)
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

pub fn items<'a>(v: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    field(v, name)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

/// An unsigned integer written as a number or a decimal string.
pub fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub fn u32_field(v: &Value, name: &str) -> Option<u32> {
    field(v, name)
        .and_then(uint)
        .and_then(|n| u32::try_from(n).ok())
}

/// A wrapped uint32 (`UInt32Value`): a bare number in JSON, or `{"value": n}`.
pub fn u32_wrapper(v: &Value, name: &str) -> Option<UInt32Value> {
    let f = field(v, name)?;
    let n = uint(f).or_else(|| f.get("value").and_then(uint))?;
    u32::try_from(n).ok().map(|value| UInt32Value { value })
}

pub fn bool_field(v: &Value, name: &str) -> bool {
    field(v, name).and_then(Value::as_bool).unwrap_or(false)
}

pub fn bool_wrapper(v: &Value, name: &str) -> Option<BoolValue> {
    let f = field(v, name)?;
    f.as_bool()
        .or_else(|| f.get("value").and_then(Value::as_bool))
        .map(|value| BoolValue { value })
}

/// A protobuf JSON duration ("10s", "0.250s", "0s").
pub fn duration(v: &Value, name: &str) -> Option<Duration> {
    let s = field(v, name)?.as_str()?;
    parse_duration(s)
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let body = s.strip_suffix('s')?;
    let (neg, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    let seconds: i64 = secs.parse().ok()?;
    let nanos: i32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse().ok()?
    };
    let sign = if neg { -1 } else { 1 };
    Some(Duration {
        seconds: sign * seconds,
        nanos: sign as i32 * nanos,
    })
}

/// An enum written by name (or number); `names` lists the values in order.
pub fn enum_field(v: &Value, name: &str, names: &[&str]) -> i32 {
    match field(v, name) {
        Some(Value::String(s)) => names.iter().position(|n| n == s).unwrap_or(0) as i32,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
        _ => 0,
    }
}

/// JSON as a google.protobuf.Struct (TypedStruct values, metadata).
pub fn to_struct(v: &Value) -> Struct {
    let mut s = Struct::default();
    if let Some(obj) = v.as_object() {
        for (k, x) in obj {
            s.fields.insert(k.clone(), to_pb_value(x));
        }
    }
    s
}

fn to_pb_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_pb_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(to_struct(v)),
    };
    PbValue { kind: Some(kind) }
}

/// Keys of `v` (an object) that are in neither `converted` nor `ignored`
/// (snake_case names), each recorded as `path.key` into `unparsed`.
pub fn note_unknown(
    v: &Value,
    path: &str,
    known: &[&str],
    ignored: &[&str],
    unparsed: &mut Vec<String>,
) {
    let Some(obj) = v.as_object() else { return };
    for key in obj.keys() {
        let k = snake(key);
        if k == "@type" || known.contains(&k.as_str()) || ignored.contains(&k.as_str()) {
            continue;
        }
        unparsed.push(format!("{path}.{k}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_casings_and_protobuf_scalars() {
        let v: Value = serde_json::json!({"routeConfigName": "a", "port_value": "80", "t": "1.5s"});
        assert_eq!(string(&v, "route_config_name"), "a");
        assert_eq!(u32_field(&v, "port_value"), Some(80));
        let d = duration(&v, "t").unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        assert_eq!(parse_duration("0s").unwrap().seconds, 0);
        assert!(parse_duration("10").is_none());
        assert_eq!(snake("routeConfigName"), "route_config_name");
    }
}
