//! Tolerant deserializers: a setting may arrive as a YAML number, a YAML string, an environment
//! variable (which figment may read as a number) or a flag (always a string).

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::Deserializer;

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        // etcd's YAML writes URL lists and log outputs as sequences; join them as flags would.
        let mut parts = Vec::new();
        while let Some(p) = seq.next_element::<serde_json::Value>()? {
            match p {
                serde_json::Value::String(s) => parts.push(s),
                other => parts.push(other.to_string()),
            }
        }
        Ok(parts.join(","))
    }
}

/// A string from a string, number, bool or list (joined with commas).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(StringVisitor)
}

/// A non-negative integer from a number or a decimal string.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = d.deserialize_any(StringVisitor)?;
    s.trim().parse::<u64>().map_err(|_| {
        de::Error::custom(format!(
            "invalid value {s:?}: expected a non-negative integer"
        ))
    })
}

/// An integer from a number or a decimal string.
pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = d.deserialize_any(StringVisitor)?;
    s.trim()
        .parse::<i64>()
        .map_err(|_| de::Error::custom(format!("invalid value {s:?}: expected an integer")))
}

/// A boolean from a bool or the strings `true`/`false` (any case), `1`/`0`.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = d.deserialize_any(StringVisitor)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(de::Error::custom(format!(
            "invalid value {s:?}: expected true or false"
        ))),
    }
}
