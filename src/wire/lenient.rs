//! Tolerant serde reading of upstream JSON.
//!
//! A translator that walked a `serde_json::Value` read `obj.get("text").and_then(Value::as_str)`:
//! a missing field, a `null` and a number all read as "no text", and the rest of the body was
//! still used. Typed reading keeps that: a field declared
//!
//! ```ignore
//! #[serde(default, deserialize_with = "lenient")]
//! text: Option<String>,
//! ```
//!
//! is `Some` only for a value of its type (here a string) and `None` for anything else, without
//! failing the body. [`read_object`] reads a whole document the same way and says whether it was
//! JSON at all, and whether it was an object.

use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{
    self, Deserialize, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor,
};
use serde::de::{IntoDeserializer, SeqAccess};
use std::fmt;
use std::marker::PhantomData;

/// A type read from the JSON values it accepts; every other value reads as `None`. The default
/// methods accept nothing.
pub trait Lenient<'de>: Sized {
    fn from_text<E: de::Error>(_text: &str) -> Result<Option<Self>, E> {
        Ok(None)
    }

    fn from_owned_text<E: de::Error>(text: String) -> Result<Option<Self>, E> {
        Self::from_text(&text)
    }

    fn from_u64(_n: u64) -> Option<Self> {
        None
    }

    fn from_i64(_n: i64) -> Option<Self> {
        None
    }

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// For `#[serde(default, deserialize_with = "lenient")]` on an `Option<T>` field.
pub fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Lenient<'de>,
{
    deserializer.deserialize_any(LenientVisitor(PhantomData))
}

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(T::from_i64(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(T::from_u64(n))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        T::from_text(text)
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        T::from_owned_text(text)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::from_seq(seq)
    }
}

impl<'de> Lenient<'de> for String {
    fn from_text<E: de::Error>(text: &str) -> Result<Option<Self>, E> {
        Ok(Some(text.to_owned()))
    }

    fn from_owned_text<E: de::Error>(text: String) -> Result<Option<Self>, E> {
        Ok(Some(text))
    }
}

/// What `Value::as_u64` accepts: non-negative integers, not floats.
impl<'de> Lenient<'de> for u64 {
    fn from_u64(n: u64) -> Option<Self> {
        Some(n)
    }

    fn from_i64(n: i64) -> Option<Self> {
        u64::try_from(n).ok()
    }
}

/// A list whose items are read leniently: items of another type are left out.
impl<'de, T: Lenient<'de>> Lenient<'de> for Vec<T> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Item<T>>()? {
            items.extend(item.0);
        }
        Ok(Some(items))
    }
}

/// One list item, `None` if it is of another type.
struct Item<T>(Option<T>);

impl<'de, T: Lenient<'de>> Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient(deserializer).map(Item)
    }
}

/// Reads a struct (with `#[derive(Deserialize)]`) from a JSON object, anything else as `None`.
pub fn struct_from_map<'de, T, A>(map: A) -> Result<Option<T>, A::Error>
where
    T: Deserialize<'de>,
    A: MapAccess<'de>,
{
    T::deserialize(MapAccessDeserializer::new(map)).map(Some)
}

/// Reads a unit-variant enum (with `#[derive(Deserialize)]` and a `#[serde(other)]` variant)
/// from a JSON string, anything else as `None`.
pub fn enum_from_str<'de, T, E>(text: &str) -> Result<Option<T>, E>
where
    T: Deserialize<'de>,
    E: de::Error,
{
    let deserializer: StrDeserializer<'_, E> = text.into_deserializer();
    T::deserialize(deserializer).map(Some)
}

/// Implements [`Lenient`] for structs read from JSON objects.
macro_rules! lenient_structs {
    ($($ty:ty),+ $(,)?) => {$(
        impl<'de> $crate::wire::lenient::Lenient<'de> for $ty {
            fn from_map<A: serde::de::MapAccess<'de>>(
                map: A,
            ) -> Result<Option<Self>, A::Error> {
                $crate::wire::lenient::struct_from_map(map)
            }
        }
    )+};
}

/// Implements [`Lenient`] for unit-variant enums read from JSON strings.
macro_rules! lenient_enums {
    ($($ty:ty),+ $(,)?) => {$(
        impl<'de> $crate::wire::lenient::Lenient<'de> for $ty {
            fn from_text<E: serde::de::Error>(text: &str) -> Result<Option<Self>, E> {
                $crate::wire::lenient::enum_from_str(text)
            }
        }
    )+};
}

pub(crate) use {lenient_enums, lenient_structs};

/// Why a document could not be read as an object.
#[derive(Debug)]
pub enum ReadError {
    /// Not JSON: the parser's error, as parsing a `serde_json::Value` reports it.
    Syntax(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
}

/// Reads a JSON object as `T`, leniently, with the outcomes parsing it into a `serde_json::Value`
/// and looking fields up had: a syntax error is reported as the tree parser words it, and a key
/// given twice takes its last value.
///
/// The typed read is tried first, on text that opens an object; only when it fails (a syntax
/// error, a repeated key) or the text is not an object is it parsed as a tree to tell which, and
/// read from the tree. Values of fields `T` does not read are skipped unparsed, as serde skips
/// them: an out-of-range number or a lone surrogate escape there goes unnoticed, as on the stream
/// translator's typed fast path before.
pub fn read_object<T>(text: &str) -> Result<T, ReadError>
where
    T: DeserializeOwned + for<'de> Lenient<'de>,
{
    // A derived struct reads a JSON list too (field by position): only an object is read typed.
    let opens_object = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(b'{');
    if opens_object {
        if let Ok(doc) = serde_json::from_str::<T>(text) {
            return Ok(doc);
        }
    }
    let tree: serde_json::Value = serde_json::from_str(text).map_err(ReadError::Syntax)?;
    from_tree(tree)
}

/// [`read_object`] for bytes, which must be UTF-8 (as a tree parser requires).
pub fn read_object_bytes<T>(bytes: &[u8]) -> Result<T, ReadError>
where
    T: DeserializeOwned + for<'de> Lenient<'de>,
{
    match std::str::from_utf8(bytes) {
        Ok(text) => read_object(text),
        // Not UTF-8: not JSON either, and the tree parser says where.
        Err(_) => {
            let tree: serde_json::Value =
                serde_json::from_slice(bytes).map_err(ReadError::Syntax)?;
            from_tree(tree)
        }
    }
}

fn from_tree<T>(tree: serde_json::Value) -> Result<T, ReadError>
where
    T: for<'de> Lenient<'de>,
{
    match lenient(tree) {
        Ok(Some(doc)) => Ok(doc),
        _ => Err(ReadError::NotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "lenient")]
        text: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        count: Option<u64>,
        #[serde(default, deserialize_with = "lenient")]
        inner: Option<Probe2>,
        #[serde(default, deserialize_with = "lenient")]
        items: Option<Vec<Probe2>>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Probe2 {
        #[serde(default, deserialize_with = "lenient")]
        text: Option<String>,
    }

    lenient_structs!(Probe, Probe2);

    fn probe(text: &str) -> Probe {
        read_object(text).expect("an object")
    }

    #[test]
    fn wrong_types_read_as_absent() {
        let p = probe(
            r#"{"text":5,"count":"7","inner":[1],"items":{"text":"x"},"other":{"deep":[1e3]}}"#,
        );
        assert_eq!(p, Probe::default());
        let p = probe(r#"{"text":null,"count":-1,"inner":null,"items":null}"#);
        assert_eq!(p, Probe::default());
        assert_eq!(probe(r#"{"count":1.0}"#).count, None);
        assert_eq!(
            probe(r#"{"count":18446744073709551615}"#).count,
            Some(u64::MAX)
        );
    }

    #[test]
    fn values_of_the_right_type_are_read() {
        let p = probe(
            r#"{"text":"a\"b","count":3,"inner":{"text":"i"},"items":[{"text":"x"},7,null,{"text":2},{}]}"#,
        );
        assert_eq!(p.text.as_deref(), Some("a\"b"));
        assert_eq!(p.count, Some(3));
        assert_eq!(p.inner.and_then(|i| i.text).as_deref(), Some("i"));
        let items = p.items.expect("a list");
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0].text.as_deref(), Some("x"));
        assert_eq!(items[1].text, None);
    }

    #[test]
    fn repeated_keys_take_the_last_value_as_a_tree_does() {
        assert_eq!(
            probe(r#"{"text":"a","text":"b"}"#).text.as_deref(),
            Some("b")
        );
        let p = probe(r#"{"inner":{"text":"a","text":"b"}}"#);
        assert_eq!(p.inner.and_then(|i| i.text).as_deref(), Some("b"));
    }

    #[test]
    fn syntax_errors_read_as_the_tree_parser_words_them() {
        for text in ["", "{", "{\"text\":", "not json", "{} x", "1e999"] {
            let tree = serde_json::from_str::<serde_json::Value>(text).expect_err("not JSON");
            match read_object::<Probe>(text) {
                Err(ReadError::Syntax(e)) => assert_eq!(e.to_string(), tree.to_string()),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        for text in ["null", "[]", "[1]", "\"x\"", "5", "true"] {
            assert!(
                matches!(read_object::<Probe>(text), Err(ReadError::NotAnObject)),
                "{text}"
            );
        }
        let bytes = b"{\"text\":\"\xff\"}";
        let tree = serde_json::from_slice::<serde_json::Value>(bytes).expect_err("not UTF-8");
        match read_object_bytes::<Probe>(bytes) {
            Err(ReadError::Syntax(e)) => assert_eq!(e.to_string(), tree.to_string()),
            other => panic!("{other:?}"),
        }
    }
}
