//! An OpenAI chat request as the translators read it: parsed once, borrowing from the body.
//!
//! Message text is most of a chat request's bytes, and a translated request carries it over
//! unchanged. So a plain message (a `system`, `developer`, `user` or `assistant` role, a string
//! `content`, no `tool_calls`) keeps its content as the client's own JSON string literal: the
//! translators write it out again as it came, with no decoding, allocation or re-escaping.
//! Every other message (content parts, tool calls, tool results, anything malformed) is parsed
//! into a `serde_json::Value` and takes the translators' general path, where the rules and the
//! error messages for it live.
//!
//! The body is read once: [`RawChatRequest`] keeps each top-level member as raw JSON, which is
//! enough to route the request, and becomes a [`ChatRequest`] only when it must be translated.
//! Before, a translated request was parsed twice into `serde_json::Value` trees and rebuilt: on a
//! 4 KB request that was most of the gateway's instructions (callgrind, BENCHMARKS.md).

use crate::error::GatewayError;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

pub struct ChatRequest<'a> {
    /// Every top-level member except `messages`.
    fields: Map<String, Value>,
    /// `messages`; `None` when absent.
    messages: Option<MessagesMember<'a>>,
}

/// Where a request's `messages` come from.
enum MessagesMember<'a> {
    /// As it is in the client's body.
    Raw(&'a RawValue),
    /// Built by an adapter (Anthropic's Messages API, `/v1/complete`) as a tree.
    Tree(Value),
}

/// The `messages` member.
pub enum Messages<'a> {
    List(Vec<Message<'a>>),
    Missing,
    /// Present but not a list (`null` included).
    NotAList(Value),
}

pub enum Message<'a> {
    Plain(PlainMessage<'a>),
    /// Any other message, parsed.
    Parsed(Value),
}

/// A message with one of the four plain roles and a string `content`.
pub struct PlainMessage<'a> {
    pub role: PlainRole,
    /// The content, a JSON string literal exactly as the client wrote it.
    pub content: &'a RawValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainRole {
    /// `system` or `developer`.
    System,
    User,
    Assistant,
}

impl PlainMessage<'_> {
    /// True for `""`; any escape decodes to at least one character, so nothing else is empty.
    pub fn is_empty(&self) -> bool {
        self.content.get() == "\"\""
    }

    /// The content decoded; borrowed unless it has escapes.
    pub fn text(&self) -> Cow<'_, str> {
        let raw = self.content.get();
        let inner = &raw[1..raw.len() - 1];
        if !inner.contains('\\') {
            return Cow::Borrowed(inner);
        }
        // The literal was validated when the body was parsed, so this cannot fail.
        serde_json::from_str::<String>(raw).map_or(Cow::Borrowed(inner), Cow::Owned)
    }
}

impl<'a> ChatRequest<'a> {
    /// Parses a client's request body; the errors are those of [`crate::api::parse_chat_tree`].
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        match RawChatRequest::read(body) {
            Some(raw) => raw.to_request(),
            // Errors only: the tree parse words them as every other endpoint does.
            None => Err(crate::api::parse_chat_tree(body).err().unwrap_or_else(|| {
                GatewayError::bad_request("The request body is not valid JSON")
            })),
        }
    }

    /// A request built as a tree (from Anthropic's Messages API or `/v1/complete`) rather than
    /// received: its messages all take the translators' general path.
    pub fn from_tree(tree: Value) -> Result<ChatRequest<'static>, GatewayError> {
        let Value::Object(mut fields) = tree else {
            return Err(GatewayError::bad_request(
                "The request body must be a JSON object",
            ));
        };
        let messages = fields.remove("messages").map(MessagesMember::Tree);
        Ok(ChatRequest { fields, messages })
    }

    /// Runs `f` on the request a tree stands for, for tests that write requests as trees.
    pub fn with_tree<T>(
        tree: &Value,
        f: impl FnOnce(&ChatRequest<'_>) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        f(&ChatRequest::from_tree(tree.clone())?)
    }

    /// About how many bytes the request takes: the messages, most of it.
    pub fn size_hint(&self) -> usize {
        match &self.messages {
            Some(MessagesMember::Raw(raw)) => raw.get().len(),
            // Built by an adapter: no bytes to measure; a typical small request.
            Some(MessagesMember::Tree(_)) => 1024,
            None => 0,
        }
    }

    /// A top-level member other than `messages`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The top-level members other than `messages`.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The messages, plain ones kept raw. Fails only on nesting too deep for a tree.
    pub fn messages(&self) -> Result<Messages<'a>, GatewayError> {
        let raw = match &self.messages {
            None => return Ok(Messages::Missing),
            Some(MessagesMember::Tree(tree)) => return Ok(tree_messages(tree.clone())),
            Some(MessagesMember::Raw(raw)) => *raw,
        };
        match serde_json::from_str::<Vec<RawMembers<'a>>>(raw.get()) {
            Ok(messages) => messages
                .into_iter()
                .map(into_message)
                .collect::<Result<_, _>>()
                .map(Messages::List),
            // Not a list of objects: every message takes the general path, which says what is
            // wrong with it.
            Err(_) => parsed_messages(raw),
        }
    }

    /// Every message as [`Message::Parsed`]: the general path, for tests that check the plain
    /// path against it.
    #[cfg(test)]
    pub fn messages_all_parsed(&self) -> Result<Messages<'a>, GatewayError> {
        match &self.messages {
            None => Ok(Messages::Missing),
            Some(MessagesMember::Tree(tree)) => Ok(tree_messages(tree.clone())),
            Some(MessagesMember::Raw(raw)) => parsed_messages(raw),
        }
    }
}

/// The `messages` member with every message parsed.
fn parsed_messages<'a>(raw: &RawValue) -> Result<Messages<'a>, GatewayError> {
    Ok(tree_messages(parse_tree(raw)?))
}

fn tree_messages<'a>(messages: Value) -> Messages<'a> {
    match messages {
        Value::Array(items) => Messages::List(items.into_iter().map(Message::Parsed).collect()),
        other => Messages::NotAList(other),
    }
}

/// Raw JSON as a tree. The raw text is valid JSON, so only its depth can make this fail.
fn parse_tree(raw: &RawValue) -> Result<Value, GatewayError> {
    serde_json::from_str(raw.get())
        .map_err(|e| GatewayError::bad_request(format!("The request body is not valid JSON: {e}")))
}

/// Plain when the role is one of the four (written without escapes), the content is a string
/// and there are no `tool_calls`. The translators read only `role`, `content` and `tool_calls`
/// from these roles (`tool_call_id` only from `tool` messages), so every other member can be
/// left behind.
fn into_message(message: RawMembers<'_>) -> Result<Message<'_>, GatewayError> {
    let role = match message.last("role").map(RawValue::get) {
        Some(r#""system""# | r#""developer""#) => Some(PlainRole::System),
        Some(r#""user""#) => Some(PlainRole::User),
        Some(r#""assistant""#) => Some(PlainRole::Assistant),
        _ => None,
    };
    let text = message.last("content").filter(|c| c.get().starts_with('"'));
    let tool_calls = message.last("tool_calls").is_some();
    if let (Some(role), Some(content), false) = (role, text, tool_calls) {
        return Ok(Message::Plain(PlainMessage { role, content }));
    }
    let mut tree = Map::new();
    // A repeated member replaces the earlier one, as in a tree.
    for (key, raw) in message.0 {
        tree.insert(key.into_owned(), parse_tree(raw)?);
    }
    Ok(Message::Parsed(Value::Object(tree)))
}

/// An object's members in order, each as raw JSON: one pass, no trees.
struct RawMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawMembers<'a> {
    /// The member's value; the last one when it is repeated, as in a tree.
    fn last(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, raw)| *raw)
    }
}

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                Ok(RawMembers(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// An object key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A chat request's top-level members, each as raw JSON: one pass over the body, enough to route
/// it ([`Self::envelope`]) and, when it must be translated, to read it ([`Self::to_request`])
/// without a second pass.
pub struct RawChatRequest<'a> {
    text: &'a str,
    members: RawMembers<'a>,
}

impl<'a> RawChatRequest<'a> {
    /// Parses a client's request body; the errors are those of
    /// [`crate::api::parse_chat_envelope`].
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        Self::read(body).ok_or_else(|| envelope_error(body))
    }

    /// The one pass over the body; `None` when it is not a UTF-8 JSON object, whose error each
    /// caller words as its own parse would.
    fn read(body: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let members = serde_json::from_str(text).ok()?;
        Some(RawChatRequest { text, members })
    }

    /// One top-level member's raw JSON (the last, if repeated, as in a tree).
    pub fn member(&self, name: &str) -> Option<&'a RawValue> {
        self.members.last(name)
    }

    /// The same request for `model`, without the members named in `without`: each model's own
    /// request of a compare. The other members are copied as they came.
    pub fn for_model(&self, model: &str, without: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + model.len() + 16);
        out.extend_from_slice(b"{\"model\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, model);
        for (key, raw) in &self.members.0 {
            if key == "model" || without.contains(&key.as_ref()) {
                continue;
            }
            out.push(b',');
            let _ = serde_json::to_writer(&mut out, key.as_ref());
            out.push(b':');
            out.extend_from_slice(raw.get().as_bytes());
        }
        out.push(b'}');
        out
    }

    /// What routing reads: `model` (and where it is, for splicing) and `stream`.
    pub fn envelope(&self) -> Result<crate::api::ChatEnvelope, GatewayError> {
        let mut model = None;
        let mut stream = None;
        for (key, raw) in &self.members.0 {
            let slot = match key.as_ref() {
                "model" => &mut model,
                "stream" => &mut stream,
                _ => continue,
            };
            // The envelope's own parse rejects a repeated member; it words the error.
            if slot.replace(*raw).is_some() {
                return Err(envelope_error(self.text.as_bytes()));
            }
        }
        // As in a typed `Option` member, `null` is absent.
        let model = model.filter(|raw| raw.get() != "null");
        let stream = match stream {
            None => None,
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| envelope_error(self.text.as_bytes()))?,
        };
        crate::api::envelope_of(self.text, model, stream)
    }

    /// The request as the translators read it.
    pub fn to_request(&self) -> Result<ChatRequest<'a>, GatewayError> {
        let mut request = ChatRequest {
            fields: Map::new(),
            messages: None,
        };
        // A repeated member replaces the earlier one, as in a tree.
        for (key, raw) in &self.members.0 {
            if key == "messages" {
                request.messages = Some(MessagesMember::Raw(raw));
            } else {
                request
                    .fields
                    .insert(key.clone().into_owned(), parse_tree(raw)?);
            }
        }
        Ok(request)
    }

    /// The whole request as a tree, for adapters that rewrite it.
    pub fn to_tree(&self) -> Result<Value, GatewayError> {
        let mut tree = Map::new();
        // A repeated member replaces the earlier one, as in a tree.
        for (key, raw) in &self.members.0 {
            tree.insert(key.clone().into_owned(), parse_tree(raw)?);
        }
        Ok(Value::Object(tree))
    }
}

/// The envelope parse's error for a body the raw parse rejected.
fn envelope_error(body: &[u8]) -> GatewayError {
    crate::api::parse_chat_envelope(body)
        .err()
        .unwrap_or_else(|| GatewayError::bad_request("The request body is not a valid request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(body: &str) -> Vec<&'static str> {
        let req = ChatRequest::parse(body.as_bytes()).expect("parses");
        match req.messages().expect("messages parse") {
            Messages::List(list) => list
                .iter()
                .map(|m| match m {
                    Message::Plain(p) => match p.role {
                        PlainRole::System => "system",
                        PlainRole::User => "user",
                        PlainRole::Assistant => "assistant",
                    },
                    Message::Parsed(_) => "parsed",
                })
                .collect(),
            Messages::Missing => vec!["missing"],
            Messages::NotAList(_) => vec!["not a list"],
        }
    }

    #[test]
    fn only_the_common_shape_is_plain() {
        let body = r#"{"messages":[
            {"role":"system","content":"s"}, {"role":"developer","content":"d"},
            {"role":"user","content":"u","name":"ann"}, {"content":"a","role":"assistant"},
            {"role":"assistant","content":"a","tool_calls":[]}, {"role":"assistant","content":null},
            {"role":"user","content":[{"type":"text","text":"t"}]}, {"role":"tool","content":"r"},
            {"role":"us\u0065r","content":"e"}, {"r\u006fle":"user","content":"k"},
            {"role":"tool","role":"user","content":"r"}, {"role":"user","content":[],"content":"c"},
            {"role":"user"}, {"content":"x"}, {"role":5,"content":"x"}
        ]}"#;
        assert_eq!(
            kinds(body),
            [
                "system",
                "system",
                "user",
                "assistant",
                "parsed",
                "parsed",
                "parsed",
                "parsed",
                "parsed",
                "user",
                "user",
                "user",
                "parsed",
                "parsed",
                "parsed"
            ]
        );
        // One message that is not an object sends the whole list down the general path.
        let body = r#"{"messages":[{"role":"user","content":"u"},"text",7,null,[]]}"#;
        assert_eq!(kinds(body), ["parsed"; 5]);
        assert_eq!(kinds(r#"{"model":"m"}"#), ["missing"]);
        assert_eq!(kinds(r#"{"messages":null}"#), ["not a list"]);
        assert_eq!(kinds(r#"{"messages":{"role":"user"}}"#), ["not a list"]);
    }

    #[test]
    fn plain_text_is_kept_raw_and_decodes() {
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"caf\u00e9 \"q\""},{"role":"user","content":""},{"role":"user","content":"\\"}]}"#,
        )
        .expect("parses");
        let Ok(Messages::List(list)) = req.messages() else {
            panic!("a list")
        };
        let plain: Vec<&PlainMessage> = list
            .iter()
            .filter_map(|m| match m {
                Message::Plain(p) => Some(p),
                Message::Parsed(_) => None,
            })
            .collect();
        assert_eq!(plain.len(), 3);
        assert_eq!(plain[0].content.get(), r#""caf\u00e9 \"q\"""#);
        assert_eq!(plain[0].text(), "café \"q\"");
        assert!(!plain[0].is_empty());
        assert!(plain[1].is_empty());
        assert_eq!(plain[1].text(), "");
        assert_eq!(plain[2].text(), "\\");
        assert!(!plain[2].is_empty());
    }

    #[test]
    fn other_members_are_kept_as_a_tree() {
        let req =
            ChatRequest::parse(br#"{"model":"m","t\u0065mperature":0.5,"stream_options":{"include_usage":true},"messages":[]}"#)
                .expect("parses");
        assert_eq!(req.get("model"), Some(&Value::from("m")));
        assert_eq!(req.get("temperature"), Some(&Value::from(0.5)));
        assert_eq!(req.get("messages"), None);
        assert_eq!(req.fields().len(), 3);
    }

    #[test]
    fn bad_bodies_fail_as_the_tree_parse_does() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"\"text\"",
            b"{\"messages\":[}",
            b"{\"a\":1} trailing",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"a\x01b\"}]}",
        ] {
            let typed = ChatRequest::parse(body).err().expect("rejected");
            let tree = crate::api::parse_chat_tree(body).expect_err("rejected");
            assert_eq!(typed, tree, "body {}", String::from_utf8_lossy(body));
        }
    }

    /// Routing reads the raw members where it used to run its own parse: same envelopes, same
    /// errors, for good and bad bodies alike.
    #[test]
    fn the_raw_envelope_is_the_envelope_parse() {
        let bodies: [&[u8]; 18] = [
            br#" { "messages": [], "model" : "gpt-4o", "stream": true } "#,
            br#"{"model":"gpt\u002d4o","stream":null}"#,
            br#"{"mod\u0065l":"a","stream":false,"tools":[{"type":"function"}]}"#,
            br#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
            b"{not json",
            b"[1,2]",
            b"\"model\"",
            b"{}",
            br#"{"model": 42}"#,
            br#"{"model": ""}"#,
            br#"{"model": null}"#,
            br#"{"model": "a", "stream": "yes"}"#,
            br#"{"model": "a", "stream": 1}"#,
            br#"{"model": "a", "model": "b"}"#,
            br#"{"model": "a", "stream": true, "stream": true}"#,
            br#"{"model": "a"} trailing"#,
            b"\xff\xfe",
            br#"{"model":"a","messages":[{"role":"user","content":"\ud800"}]}"#,
        ];
        for body in bodies {
            let raw = RawChatRequest::parse(body).and_then(|r| r.envelope());
            let parsed = crate::api::parse_chat_envelope(body);
            assert_eq!(raw, parsed, "{}", String::from_utf8_lossy(body));
        }
    }

    /// Every prefix of a request, and every single-byte corruption of it, parses (or fails) as
    /// the envelope and tree parses do, and never panics.
    #[test]
    fn cut_and_corrupted_bodies_agree_with_the_reference_parses() {
        let body = br#"{"model":"gpt\u002d4o","stream":true,"messages":[{"role":"system","content":"Be \"brief\"."},{"role":"user","content":"caf\u00e9","name":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"ok"}],"temperature":0.5}"#;
        let mut variants: Vec<Vec<u8>> = (0..=body.len()).map(|i| body[..i].to_vec()).collect();
        for i in 0..body.len() {
            for b in [
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'x', b'1', b' ', 0xff,
            ] {
                let mut v = body.to_vec();
                v[i] = b;
                variants.push(v);
            }
        }
        for v in &variants {
            let text = String::from_utf8_lossy(v);
            let raw = RawChatRequest::parse(v).and_then(|r| r.envelope());
            assert_eq!(raw, crate::api::parse_chat_envelope(v), "{text}");
            let request = ChatRequest::parse(v);
            let tree = crate::api::parse_chat_tree(v);
            assert_eq!(request.is_ok(), tree.is_ok(), "{text}");
            if let (Err(a), Err(b)) = (&request, &tree) {
                assert_eq!(a, b, "{text}");
            }
            if let Ok(request) = request {
                let _ = request.messages();
            }
        }
    }

    #[test]
    fn deep_messages_are_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"messages":[{{"role":"user","content":{}1{}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let req = ChatRequest::parse(deep.as_bytes()).expect("the top level parses");
        assert!(req.messages().is_err());
    }
}
