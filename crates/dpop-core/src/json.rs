//! A strict JSON object reader for JOSE headers, claims and JWKs.
//!
//! `serde_json::Value` silently keeps the last of two members with the same name; a
//! JOSE parser must refuse them instead (RFC 7515 §5.2 step 4, RFC 8725 §3.6), or two
//! parsers (ours and the client's) could read different claims from one token. This
//! reader refuses duplicates at every depth, bounds member counts, and borrows strings
//! from the input when they hold no escapes, so the common case allocates little.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most members accepted in one object: keeps duplicate detection linear-cheap.
const MAX_MEMBERS: usize = 64;
/// Most elements accepted in one array.
const MAX_ELEMENTS: usize = 256;
/// Marker put in the serde error message so the caller can tell a duplicate member from
/// any other syntax error.
const DUPLICATE_MARKER: &str = "dpop-core: duplicate member";
const TOO_MANY_MARKER: &str = "dpop-core: too many members";

/// A JSON number as written: integers stay exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Number {
    U(u64),
    I(i64),
    F(f64),
}

/// A parsed JSON value borrowing from its input.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object with unique member names, in input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

/// Why a JSON text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON, or not UTF-8, or trailing data.
    Syntax,
    /// Valid JSON but the top level is not an object.
    NotObject,
    /// Some object has the same member twice.
    Duplicate,
    /// An object or array is larger than this reader accepts.
    TooLarge,
}

impl<'a> Object<'a> {
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl Json<'_> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to an owned `serde_json::Value` (for exposing extra claims).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::Number(Number::U(n)) => serde_json::Value::from(*n),
            Self::Number(Number::I(n)) => serde_json::Value::from(*n),
            Self::Number(Number::F(n)) => serde_json::Number::from_f64(*n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Self::String(s) => serde_json::Value::String(s.to_string()),
            Self::Array(a) => serde_json::Value::Array(a.iter().map(Json::to_value).collect()),
            Self::Object(o) => serde_json::Value::Object(
                o.members()
                    .map(|(k, v)| (k.to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Parses `bytes` as one JSON object, refusing duplicate members anywhere inside.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Object<'_>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match de::Deserialize::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => return Err(classify(&e)),
    };
    if de.end().is_err() {
        return Err(JsonError::Syntax);
    }
    match value {
        Json::Object(o) => Ok(o),
        _ => Err(JsonError::NotObject),
    }
}

fn classify(e: &serde_json::Error) -> JsonError {
    let msg = e.to_string();
    if msg.contains(DUPLICATE_MARKER) {
        JsonError::Duplicate
    } else if msg.contains(TOO_MANY_MARKER) {
        JsonError::TooLarge
    } else {
        JsonError::Syntax
    }
}

/// A member name that borrows when it can.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(Number::U(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(Number::I(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Number(Number::F(v)))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() == MAX_ELEMENTS {
                return Err(de::Error::custom(TOO_MANY_MARKER));
            }
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some(Key(name)) = map.next_key()? {
            if members.iter().any(|(k, _)| *k == name) {
                return Err(de::Error::custom(DUPLICATE_MARKER));
            }
            if members.len() == MAX_MEMBERS {
                return Err(de::Error::custom(TOO_MANY_MARKER));
            }
            let value = map.next_value()?;
            members.push((name, value));
        }
        Ok(Json::Object(Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_borrows() {
        let o = parse_object(br#"{"a":"x","b":1,"c":-2,"d":1.5,"e":[true,null],"f":{"g":"h"}}"#)
            .unwrap();
        assert!(matches!(o.get("a"), Some(Json::String(Cow::Borrowed("x")))));
        assert_eq!(o.get("b"), Some(&Json::Number(Number::U(1))));
        assert_eq!(o.get("c"), Some(&Json::Number(Number::I(-2))));
        assert_eq!(o.get("d"), Some(&Json::Number(Number::F(1.5))));
        assert!(o.contains("e") && o.contains("f") && !o.contains("z"));
        // Escaped strings are decoded.
        let o = parse_object(br#"{"a":"\u0041\n"}"#).unwrap();
        assert_eq!(o.get("a").and_then(Json::as_str), Some("A\n"));
    }

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        assert_eq!(parse_object(br#"{"a":1,"a":2}"#), Err(JsonError::Duplicate));
        assert_eq!(
            parse_object(br#"{"a":{"b":1,"b":1}}"#),
            Err(JsonError::Duplicate)
        );
        assert_eq!(
            parse_object(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::Duplicate)
        );
        // An escaped spelling of the same name is the same name.
        assert_eq!(
            parse_object(br#"{"alg":1,"\u0061lg":2}"#),
            Err(JsonError::Duplicate)
        );
    }

    #[test]
    fn refuses_non_objects_and_bad_text() {
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"\"x\""), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"{"), Err(JsonError::Syntax));
        assert_eq!(parse_object(b"{} {}"), Err(JsonError::Syntax));
        assert_eq!(parse_object(b"{\"a\":1,}"), Err(JsonError::Syntax));
        assert_eq!(parse_object(b"{\"a\":\"\xff\"}"), Err(JsonError::Syntax));
        assert_eq!(
            parse_object(br#"{"a":"\ud800"}"#),
            Err(JsonError::Syntax),
            "lone surrogate"
        );
        assert_eq!(parse_object(b""), Err(JsonError::Syntax));
    }

    #[test]
    fn bounds_sizes() {
        let many: String = (0..=MAX_MEMBERS)
            .map(|i| format!("\"k{i}\":0"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            parse_object(format!("{{{many}}}").as_bytes()),
            Err(JsonError::TooLarge)
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(
            parse_object(format!("{{\"a\":{deep}}}").as_bytes()),
            Err(JsonError::Syntax),
            "recursion limit"
        );
    }
}
