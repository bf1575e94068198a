//! [`Json`]: a JSON document kept as its exact text. A leaf of the module graph.
//!
//! Job inputs, results and checkpoints pass through the kit without being reinterpreted: parsing into
//! `serde_json::Value` would turn `12345678901234567890123` into `1.2345678901234568e29`, and a hash over
//! the re-serialized value would no longer be a hash over what the client sent. So payloads stay text
//! (validated, with insignificant whitespace removed) and are decoded once, by the handler, into the type
//! it declares.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A valid JSON document, minified, exactly as submitted otherwise (numbers keep every digit).
#[derive(Clone)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Validates and minifies `text`.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Self::checked(raw)
    }

    /// Validates what a `RawValue` only skims: serde_json skips over a raw value without its nesting
    /// limit (128) or its check of `\u` escapes, so a hostile document could nest 65,000 deep (and
    /// overflow the stack of whatever walks it) or carry lone surrogates. Parsing it once as a `Value`
    /// applies both checks.
    fn checked(raw: &RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde_json::Value>(raw.get())?;
        Ok(Self(RawValue::from_string(minify(raw.get()))?))
    }

    /// Serializes `value` (numbers as the type writes them: exact for integers of any width it has).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::value::to_raw_value(value)?))
    }

    /// Decodes into the type a handler declares.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// As a `Value` (numbers beyond f64 lose precision there: prefer [`Self::decode`] to a typed value).
    pub fn to_value(&self) -> serde_json::Value {
        self.decode().expect("a Json is valid JSON")
    }

    /// A canonical text of the same document, for hashing: object keys sorted (the last of duplicate
    /// keys kept, as any JSON reader does), strings re-escaped one way, numbers exactly as written. Two
    /// requests that differ only in key order or escaping hash the same; two that differ in a digit do
    /// not.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(self.len());
        canonical_into(&self.0, &mut out);
        out
    }

    /// The text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Its size in bytes, as stored (never 0: the shortest JSON document is one character).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.0.get().len()
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Self::encode(&v).expect("a Value always serializes")
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Equality of the minified text is an equivalence (records holding a `Json` can derive `Eq`).
impl Eq for Json {}

/// Compares as JSON values (for tests and assertions: `job.input == json!({..})`).
impl PartialEq<serde_json::Value> for Json {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// Written verbatim into the enclosing document.
impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Any JSON document: a handler taking or returning `Json` accepts or produces anything.
impl schemars::JsonSchema for Json {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        true.into()
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Self::checked(&raw).map_err(serde::de::Error::custom)
    }
}

fn canonical_into(raw: &RawValue, out: &mut String) {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let map: std::collections::BTreeMap<String, &RawValue> =
                serde_json::from_str(text).expect("a Json object reads as a map");
            out.push('{');
            for (i, (k, v)) in map.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&k).expect("a string serializes"));
                out.push(':');
                canonical_into(v, out);
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).expect("a Json array reads as a list");
            out.push('[');
            for (i, v) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_into(v, out);
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).expect("a Json string reads as a string");
            out.push_str(&serde_json::to_string(&s).expect("a string serializes"));
        }
        _ => out.push_str(text),
    }
}

/// `text` (valid JSON) without whitespace outside strings.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Serde adapter for storage: a [`Json`] stored as a string (DynamoDB maps nest at most 32 deep and its
/// numbers are not JSON's).
pub mod as_string {
    use super::Json;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Json, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.get())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        let raw = String::deserialize(d)?;
        Json::parse(&raw).map_err(D::Error::custom)
    }

    /// [`as_string`](self) for optional fields.
    pub mod opt {
        use super::Json;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<Json>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Json>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Json);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_keep_every_digit_and_whitespace_goes() {
        let j = Json::parse("{ \"n\" : 12345678901234567890123 , \"s\": \"a b\\\" c\" }").unwrap();
        assert_eq!(j.get(), r#"{"n":12345678901234567890123,"s":"a b\" c"}"#);
        let back: Json = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
        assert_ne!(
            Json::parse("12345678901234567890123").unwrap(),
            Json::parse("12345678901234567890124").unwrap()
        );
    }

    #[test]
    fn the_canonical_form_ignores_key_order_and_escapes_but_not_digits() {
        let a =
            Json::parse(r#"{"b":[1,{"y":2,"x":"\u0041"}],"a":12345678901234567890123}"#).unwrap();
        let b = Json::parse(r#"{"a":12345678901234567890123,"b":[1,{"x":"A","y":2}]}"#).unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.canonical(),
            r#"{"a":12345678901234567890123,"b":[1,{"x":"A","y":2}]}"#
        );
        let c = Json::parse(r#"{"a":12345678901234567890124,"b":[1,{"x":"A","y":2}]}"#).unwrap();
        assert_ne!(a.canonical(), c.canonical());
    }

    #[test]
    fn invalid_json_is_rejected() {
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(
            Json::parse(&deep).is_err(),
            "nesting beyond serde_json's limit"
        );
        assert!(Json::parse(r#""\ud800""#).is_err(), "a lone surrogate");
        assert!(
            Json::parse(r#"{"\udc00":1}"#).is_err(),
            "a lone surrogate in a key"
        );
        let wrapped: Result<serde_json::Map<String, serde_json::Value>, _> =
            serde_json::from_str(&format!(r#"{{"input":{deep}}}"#));
        assert!(wrapped.is_err());
        #[derive(serde::Deserialize, Debug)]
        struct Req {
            #[allow(dead_code)]
            input: Json,
        }
        assert!(serde_json::from_str::<Req>(&format!(r#"{{"input":{deep}}}"#)).is_err());
        assert!(serde_json::from_str::<Req>(r#"{"input":"\ud800"}"#).is_err());
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("").is_err());
        assert!(Json::parse("1 2").is_err());
    }
}
