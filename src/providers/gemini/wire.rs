//! Gemini's own answers, typed: a `GenerateContentResponse` (a whole answer, or one stream event)
//! and the embeddings answers, as far as the translators read them.
//!
//! Reading is as lenient as walking a `serde_json::Value` tree was, so the translators keep their
//! errors and their order:
//!
//! - a member of another JSON type than the format says reads as [`Field::Wrong`] instead of
//!   failing the whole body: the translators decide which of those are errors (a `candidates`
//!   that is not a list) and which are ignored (a `responseId` that is not a string);
//! - unknown members and unknown enum values are skipped, since Gemini adds them;
//! - a repeated member counts once, the last one, as in a `Value` map;
//! - what is skipped is still parsed as strictly as a `Value` would be (UTF-8 and escapes of
//!   strings, the range of numbers): `serde::de::IgnoredAny` checks neither, which would let
//!   through bodies that were rejected as not JSON before.
//!
//! Strings borrow from the body unless they hold escapes. `functionCall.args` stays a tree: its
//! re-encoding (keys sorted, numbers normalised) is what clients receive.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// Defines a typed JSON object of Gemini's format: its members, each under its JSON name, read
/// by [`Shape::from_map`]; every other member is skipped. Not `#[derive(Deserialize)]`, which
/// fails a whole body on a repeated member ("duplicate field") where a `Value` map kept the last.
macro_rules! wire_object {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(<$lt:lifetime>)? {
            $($(#[$field_meta:meta])* $key:literal => $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name $(<$lt>)? {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        wire_object!(@impl $name $(<$lt>)? { $($key => $field,)* });
    };
    (@impl $name:ident <$lt:lifetime> { $($key:literal => $field:ident,)* }) => {
        impl<$lt> Shape<$lt> for $name<$lt> {
            fn from_map<A: MapAccess<$lt>>(map: A) -> Result<Option<Self>, A::Error> {
                wire_object!(@read map, $lt { $($key => $field,)* })
            }
        }
    };
    (@impl $name:ident { $($key:literal => $field:ident,)* }) => {
        impl<'de> Shape<'de> for $name {
            fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                wire_object!(@read map, 'de { $($key => $field,)* })
            }
        }
    };
    (@read $map:ident, $lt:lifetime { $($key:literal => $field:ident,)* }) => {{
        let mut map = $map;
        let mut out = Self::default();
        while let Some(Key(key)) = map.next_key::<Key<$lt>>()? {
            match &*key {
                $($key => out.$field = map.next_value()?,)*
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(out))
    }};
}

// ---------------------------------------------------------------------------------------------
// generateContent

wire_object! {
    /// A `GenerateContentResponse`: the whole answer of `generateContent`, and the data of each
    /// `streamGenerateContent?alt=sse` event.
    pub struct GenerateContentResponse<'a> {
        "candidates" => candidates: Field<Vec<Field<Candidate<'a>>>>,
        /// Why the prompt was refused; a blocked prompt comes without candidates.
        "promptFeedback" => prompt_feedback: Field<PromptFeedback>,
        /// Token counts; in a stream they are cumulative.
        "usageMetadata" => usage_metadata: Field<UsageMetadata>,
        "modelVersion" => model_version: Field<Cow<'a, str>>,
        "responseId" => response_id: Field<Cow<'a, str>>,
        /// Not in Gemini's schema of the answer: a stream that fails midway sends an error body,
        /// `{"error": {"code", "message", "status"}}`, as an event.
        "error" => error: Field<StreamError>,
    }
}

impl GenerateContentResponse<'_> {
    /// `promptFeedback.blockReason` is set (to any value but null).
    pub fn prompt_blocked(&self) -> bool {
        self.prompt_feedback
            .get()
            .is_some_and(|feedback| feedback.block_reason.is_given())
    }
}

wire_object! {
    /// One answer; `candidateCount` asks for several.
    pub struct Candidate<'a> {
        /// Missing when the candidate was stopped before any content (a safety filter).
        "content" => content: Field<Content<'a>>,
        "finishReason" => finish_reason: Field<FinishReason>,
        /// Omitted for a lone candidate.
        "index" => index: Field<u64>,
    }
}

wire_object! {
    /// A candidate's content (its `role`, always `model`, is not read).
    pub struct Content<'a> {
        "parts" => parts: Field<Vec<Field<Part<'a>>>>,
    }
}

wire_object! {
    /// One part of a content. A part holds one kind of data; those the translators read are
    /// text (`thought` marks thinking text) and `functionCall`. Others (`inlineData`,
    /// `executableCode`, ...) and a text part's `thoughtSignature` are skipped.
    pub struct Part<'a> {
        "text" => text: Field<Cow<'a, str>>,
        "thought" => thought: Field<bool>,
        "functionCall" => function_call: Field<FunctionCall<'a>>,
    }
}

wire_object! {
    /// A function call, always whole in one part, without a call id.
    pub struct FunctionCall<'a> {
        "name" => name: Field<Cow<'a, str>>,
        /// The arguments object, as a tree (`None` when missing or null).
        "args" => args: Option<Value>,
    }
}

/// Why a candidate stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinishReason {
    #[serde(rename = "FINISH_REASON_UNSPECIFIED")]
    Unspecified,
    Stop,
    MaxTokens,
    Safety,
    Recitation,
    Language,
    Other,
    Blocklist,
    ProhibitedContent,
    Spii,
    MalformedFunctionCall,
    ImageSafety,
    UnexpectedToolCall,
    TooManyToolCalls,
    /// A reason newer than this list.
    #[serde(other)]
    Unknown,
}

wire_object! {
    /// Feedback on the prompt (its `safetyRatings` are not read).
    pub struct PromptFeedback {
        "blockReason" => block_reason: Field<BlockReason>,
    }
}

/// Why a prompt was blocked. Any block reason (a value Gemini has not documented, even one of
/// another type) means the prompt was blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BlockReason {
    #[serde(rename = "BLOCK_REASON_UNSPECIFIED")]
    Unspecified,
    Safety,
    Other,
    Blocklist,
    ProhibitedContent,
    ImageSafety,
    /// A reason newer than this list.
    #[serde(other)]
    Unknown,
}

wire_object! {
    /// Token counts (the per-modality details are not read).
    #[derive(Clone, Copy)]
    pub struct UsageMetadata {
        "promptTokenCount" => prompt_token_count: Field<u64>,
        "candidatesTokenCount" => candidates_token_count: Field<u64>,
        /// Of the prompt's tokens, those read from a cached content.
        "cachedContentTokenCount" => cached_content_token_count: Field<u64>,
        /// Thinking tokens, billed as output but not part of `candidatesTokenCount`.
        "thoughtsTokenCount" => thoughts_token_count: Field<u64>,
        "totalTokenCount" => total_token_count: Field<u64>,
    }
}

wire_object! {
    /// An error body sent as a stream event; its `message` and `status` are read by
    /// `crate::error::from_upstream` from the event's raw data.
    pub struct StreamError {
        /// The HTTP status the error would have had.
        "code" => code: Field<u64>,
    }
}

// ---------------------------------------------------------------------------------------------
// embedContent and batchEmbedContents

wire_object! {
    /// The answer of `embedContent` (`embedding`) or of `batchEmbedContents` (`embeddings`).
    pub struct EmbedContentResponse {
        "embedding" => embedding: Field<ContentEmbedding>,
        "embeddings" => embeddings: Field<Vec<Field<ContentEmbedding>>>,
    }
}

wire_object! {
    /// One embedding vector.
    pub struct ContentEmbedding {
        /// The numbers as Gemini wrote them (kept as trees: the float answer passes them on).
        "values" => values: Field<Vec<Value>>,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A member as the translators read it: missing, `null`, of another JSON type than the format
/// says, or the typed value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Wrong,
    Present(T),
}

impl<T> Field<T> {
    /// The typed value, if the member has the type the format says.
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Present(value) => Some(value),
            Field::Absent | Field::Null | Field::Wrong => None,
        }
    }

    /// The typed value, if the member has the type the format says.
    pub fn ok(self) -> Option<T> {
        match self {
            Field::Present(value) => Some(value),
            Field::Absent | Field::Null | Field::Wrong => None,
        }
    }

    /// The member is missing (`null` is not missing).
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// The member is there and not `null` (whatever its type).
    pub fn is_given(&self) -> bool {
        matches!(self, Field::Wrong | Field::Present(_))
    }
}

/// What a typed value is read from: each method takes one JSON type, and gives `None` (the
/// member reads as [`Field::Wrong`]) for a type the value is not read from, which is all of them
/// unless overridden.
pub trait Shape<'de>: Sized {
    fn from_str(_text: Cow<'de, str>) -> Option<Self> {
        None
    }

    fn from_u64(_number: u64) -> Option<Self> {
        None
    }

    fn from_bool(_flag: bool) -> Option<Self> {
        None
    }

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        skip_map(map).map(|()| None)
    }

    fn from_seq<A: SeqAccess<'de>>(seq: A) -> Result<Option<Self>, A::Error> {
        skip_seq(seq).map(|()| None)
    }
}

impl<'de> Shape<'de> for Cow<'de, str> {
    fn from_str(text: Cow<'de, str>) -> Option<Self> {
        Some(text)
    }
}

/// A count: a non-negative integer (`-1` and `1.5` are of the wrong type).
impl Shape<'_> for u64 {
    fn from_u64(number: u64) -> Option<Self> {
        Some(number)
    }
}

impl Shape<'_> for bool {
    fn from_bool(flag: bool) -> Option<Self> {
        Some(flag)
    }
}

impl<'de, T: Deserialize<'de>> Shape<'de> for Vec<T> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Some(items))
    }
}

/// Enums of names read from a string; a name not in the enum is its `#[serde(other)]` variant.
macro_rules! named_shape {
    ($($name:ty),*) => {$(
        impl Shape<'_> for $name {
            fn from_str(text: Cow<'_, str>) -> Option<Self> {
                use serde::de::IntoDeserializer;
                let text: de::value::StrDeserializer<'_, de::value::Error> =
                    text.as_ref().into_deserializer();
                <$name>::deserialize(text).ok()
            }
        }
    )*};
}

named_shape!(FinishReason, BlockReason);

impl<'de, T: Shape<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<T>(PhantomData<T>);

impl<T> FieldVisitor<T> {
    fn typed(value: Option<T>) -> Field<T> {
        value.map_or(Field::Wrong, Field::Present)
    }
}

impl<'de, T: Shape<'de>> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Field<T>, E> {
        Ok(Field::Null)
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Field<T>, E> {
        Ok(Self::typed(T::from_bool(flag)))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Field<T>, E> {
        Ok(Self::typed(T::from_u64(number)))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Field<T>, E> {
        Ok(Field::Wrong)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Field<T>, E> {
        Ok(Field::Wrong)
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Field<T>, E> {
        Ok(Self::typed(T::from_str(Cow::Borrowed(text))))
    }

    fn visit_str<E>(self, text: &str) -> Result<Field<T>, E> {
        Ok(Self::typed(T::from_str(Cow::Owned(text.to_owned()))))
    }

    fn visit_string<E>(self, text: String) -> Result<Field<T>, E> {
        Ok(Self::typed(T::from_str(Cow::Owned(text))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<T>, A::Error> {
        T::from_map(map).map(Self::typed)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<T>, A::Error> {
        T::from_seq(seq).map(Self::typed)
    }
}

/// A member name, borrowed unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A skipped value, parsed as strictly as a `serde_json::Value` but kept nowhere.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
        skip_map(map).map(|()| Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
        skip_seq(seq).map(|()| Skip)
    }
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<Skip>()?.is_some() {
        map.next_value::<Skip>()?;
    }
    Ok(())
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> GenerateContentResponse<'_> {
        match serde_json::from_str::<Field<GenerateContentResponse>>(body) {
            Ok(Field::Present(resp)) => resp,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn first_part<'r, 'a>(resp: &'r GenerateContentResponse<'a>) -> &'r Part<'a> {
        let candidate = resp
            .candidates
            .get()
            .and_then(|c| c[0].get())
            .expect("a candidate");
        let parts = candidate.content.get().and_then(|c| c.parts.get());
        parts.and_then(|p| p[0].get()).expect("a part")
    }

    #[test]
    fn a_whole_answer_reads_typed() {
        let resp = read(
            r#"{"candidates":[{"content":{"parts":[{"text":"hi","thought":true},{"functionCall":{"name":"f","args":{"b":1,"a":2}}}],"role":"model"},"finishReason":"MAX_TOKENS","index":2,"safetyRatings":[]}],"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"cachedContentTokenCount":1,"thoughtsTokenCount":2,"totalTokenCount":9,"promptTokensDetails":[{"modality":"TEXT","tokenCount":3}]},"modelVersion":"gemini-x","responseId":"r1"}"#,
        );
        let candidate = resp
            .candidates
            .get()
            .and_then(|c| c[0].get())
            .expect("a candidate");
        assert_eq!(
            candidate.finish_reason,
            Field::Present(FinishReason::MaxTokens)
        );
        assert_eq!(candidate.index, Field::Present(2));
        let parts = candidate
            .content
            .get()
            .and_then(|c| c.parts.get())
            .expect("parts");
        let text = parts[0].get().expect("a text part");
        assert_eq!(text.text.get().map(|t| t.as_ref()), Some("hi"));
        assert_eq!(text.thought, Field::Present(true));
        let call = parts[1]
            .get()
            .and_then(|p| p.function_call.get())
            .expect("a call");
        assert_eq!(call.name.get().map(|n| n.as_ref()), Some("f"));
        assert_eq!(call.args, Some(serde_json::json!({"a": 2, "b": 1})));
        assert!(resp.prompt_blocked());
        let usage = resp.usage_metadata.get().expect("usage");
        assert_eq!(
            [
                usage.prompt_token_count,
                usage.candidates_token_count,
                usage.cached_content_token_count,
                usage.thoughts_token_count,
                usage.total_token_count
            ],
            [3, 4, 1, 2, 9].map(Field::Present)
        );
        assert_eq!(
            resp.model_version.get().map(|m| m.as_ref()),
            Some("gemini-x")
        );
        assert_eq!(resp.response_id.get().map(|r| r.as_ref()), Some("r1"));
        assert!(resp.error.is_absent());
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let resp = read(
            r#"{"candidates":[{"content":{"parts":[{"text":"plain"}]}}],"responseId":"caf\u00e9"}"#,
        );
        assert!(matches!(
            first_part(&resp).text,
            Field::Present(Cow::Borrowed("plain"))
        ));
        assert!(matches!(&resp.response_id, Field::Present(Cow::Owned(id)) if id == "café"));
    }

    #[test]
    fn wrong_types_null_and_absence_are_told_apart() {
        let resp = read(
            r#"{"candidates":{},"promptFeedback":null,"usageMetadata":{"promptTokenCount":-1,"candidatesTokenCount":1.5,"totalTokenCount":"9"},"responseId":7}"#,
        );
        assert_eq!(resp.candidates.get().map(Vec::len), None);
        assert!(matches!(resp.candidates, Field::Wrong));
        assert!(matches!(resp.prompt_feedback, Field::Null));
        assert!(matches!(resp.model_version, Field::Absent));
        assert!(matches!(resp.response_id, Field::Wrong));
        let usage = resp.usage_metadata.get().expect("usage");
        assert_eq!(usage.prompt_token_count, Field::Wrong);
        assert_eq!(usage.candidates_token_count, Field::Wrong);
        assert_eq!(usage.total_token_count, Field::Wrong);
        assert_eq!(usage.thoughts_token_count, Field::Absent);
        let resp =
            read(r#"{"candidates":[null,5,{"content":[]}],"promptFeedback":{"blockReason":0}}"#);
        let candidates = resp.candidates.get().expect("a list");
        assert!(matches!(candidates[0], Field::Null));
        assert!(matches!(candidates[1], Field::Wrong));
        assert!(matches!(
            candidates[2].get().map(|c| &c.content),
            Some(Field::Wrong)
        ));
        assert!(resp.prompt_blocked(), "a block reason of any type");
    }

    #[test]
    fn unknown_members_and_values_are_skipped_and_the_last_repeat_wins() {
        let resp = read(
            r#"{"newMember":{"deep":[1,{"x":null}]},"candidates":[{"finishReason":"A_NEW_REASON","content":{"parts":[{"text":"a","text":"b","newKind":{}}]}}],"responseId":"1","responseId":"2","promptFeedback":{"blockReason":"A_NEW_REASON"}}"#,
        );
        let candidate = resp
            .candidates
            .get()
            .and_then(|c| c[0].get())
            .expect("a candidate");
        assert_eq!(
            candidate.finish_reason,
            Field::Present(FinishReason::Unknown)
        );
        assert_eq!(first_part(&resp).text.get().map(|t| t.as_ref()), Some("b"));
        assert_eq!(resp.response_id.get().map(|r| r.as_ref()), Some("2"));
        assert!(matches!(
            resp.prompt_feedback.get().map(|f| f.block_reason),
            Some(Field::Present(BlockReason::Unknown))
        ));
    }

    #[test]
    fn skipped_values_are_checked_as_strictly_as_a_value_tree() {
        for body in [
            r#"{"unknown":"\ud800"}"#,
            r#"{"unknown":1e999}"#,
            r#"{"unknown":"\x"}"#,
            r#"{"unknown":[1,]}"#,
        ] {
            let typed = serde_json::from_str::<Field<GenerateContentResponse>>(body);
            let tree = serde_json::from_str::<Value>(body);
            assert_eq!(
                typed.map(|_| ()).map_err(|e| e.to_string()),
                tree.map(|_| ()).map_err(|e| e.to_string()),
                "{body}"
            );
        }
        let body = b"{\"unknown\":\"\xff\"}";
        assert!(serde_json::from_slice::<Field<GenerateContentResponse>>(body).is_err());
    }

    #[test]
    fn embeddings_read_typed() {
        let read = |body: &str| match serde_json::from_str::<Field<EmbedContentResponse>>(body) {
            Ok(Field::Present(resp)) => resp,
            other => panic!("{body}: {other:?}"),
        };
        let one = read(r#"{"embedding":{"values":[0.5,1]}}"#);
        let values = one.embedding.get().and_then(|e| e.values.get());
        assert_eq!(
            values,
            Some(&vec![serde_json::json!(0.5), serde_json::json!(1)])
        );
        assert!(one.embeddings.is_absent());
        let batch = read(r#"{"embeddings":[{"values":[]},null]}"#);
        let list = batch.embeddings.get().expect("a list");
        assert!(list[0]
            .get()
            .is_some_and(|e| e.values.get() == Some(&Vec::new())));
        assert!(matches!(list[1], Field::Null));
    }
}
