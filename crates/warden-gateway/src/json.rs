//! Reading JSON bodies that Warden decides on: exactly one reading, shared with every upstream.
//!
//! Parsers disagree on an object with the same key twice (serde_json keeps the last, many keep
//! the first) and on keys that differ only in case (Go's `encoding/json` matches field names
//! case-insensitively). A body where the gateway and an upstream could read different
//! arguments is refused, so what is decided is what the upstream reads.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as one JSON value, refusing an object anywhere in it with a key twice or two
/// keys equal but for case (after unescaping: `"t\u0061ble"` is `"table"`).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Case folding close to what case-insensitive JSON decoders do (Go folds `ſ` to `s` and the
/// Kelvin sign to `k`): upper-case, then lower-case, each character.
fn folded(key: &str) -> String {
    if key.is_ascii() {
        return key.to_ascii_lowercase();
    }
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        let mut folds: Option<HashSet<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key `{}` appears twice in one object",
                    excerpt(&key)
                )));
            }
            let folds = folds.get_or_insert_with(|| object.keys().map(|k| folded(k)).collect());
            if !folds.insert(folded(&key)) {
                return Err(de::Error::custom(format_args!(
                    "the key `{}` differs from another key of its object only in case",
                    excerpt(&key)
                )));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn excerpt(key: &str) -> String {
    key.chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_and_case_colliding_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"table":"customers","table":"scratch"}"#,
            r#"{"table":"customers","t\u0061ble":"scratch"}"#,
            r#"{"name":"get_issue","Name":"delete_repo"}"#,
            r#"{"a":{"b":[{"k":1,"K":2}]}}"#,
            "{\"kind\":1,\"\u{212A}ind\":2}",
            "{\"ss\":1,\"SS\":2}",
            "{\"s\":1,\"\u{17F}\":2}",
        ] {
            let refused = parse_strict(body.as_bytes());
            assert!(refused.is_err(), "{body}");
        }
    }

    #[test]
    fn ordinary_json_reads_as_serde_json_reads_it() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5,-3,null,true],"b":{"c":"d"}}}}"#,
            r#"[{"a":1},{"a":2}]"#,
            r#""text""#,
            "18446744073709551615",
        ] {
            let strict = parse_strict(body.as_bytes()).unwrap();
            let plain: Value = serde_json::from_str(body).unwrap();
            assert_eq!(strict, plain, "{body}");
        }
    }

    #[test]
    fn what_serde_json_refuses_stays_refused() {
        for body in ["1e400", r#""\ud800""#, "{", r#"{"a":1} {"b":2}"#] {
            assert!(parse_strict(body.as_bytes()).is_err(), "{body}");
        }
    }
}
