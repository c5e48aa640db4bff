//! Anthropic Messages API <-> OpenAI chat completions.
//!
//! Requests: an OpenAI `chat.completions` body becomes a `/v1/messages` body. Responses: a Messages
//! `message` object becomes a `chat.completion`. Streams: Messages SSE events become
//! `chat.completion.chunk` objects ([`AnthropicChunkSource`]). Every input is treated as untrusted: malformed
//! client input is a 400 naming the offending field, a malformed upstream body is a 502.

use crate::api::openai::chat::{ChatRequest, Message, Messages, PlainRole};
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::ids;
use crate::providers::json_out::{trees, write_items, write_list, write_members, write_tree, Item};
use crate::providers::{AuthPlacement, Dialect, RequestContext, ResponseContext, UpstreamPaths};
use crate::stream::chunk::{ChunkSource, ChunkStamp, StreamContext, StreamOut, TextField};
use crate::stream::sse::SseEvent;
use http::{HeaderName, HeaderValue};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// Anthropic's Messages API.
pub struct Anthropic;

impl Dialect for Anthropic {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "x-api-key".into(),
            prefix: String::new(),
        }
    }

    fn fixed_headers(&self, settings: &ProviderSettings) -> Vec<(HeaderName, HeaderValue)> {
        // Validated as a header value when the configuration was loaded.
        HeaderValue::try_from(settings.anthropic_version.as_str())
            .map(|version| vec![(HeaderName::from_static("anthropic-version"), version)])
            .unwrap_or_default()
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::Anthropic)
    }

    fn paths(&self, _upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        UpstreamPaths {
            chat: "/v1/messages".into(),
            count_tokens: Some("/v1/messages/count_tokens".into()),
            ..UpstreamPaths::default()
        }
    }

    fn chat_request(
        &self,
        chat: &ChatRequest,
        ctx: &RequestContext,
    ) -> Result<Vec<u8>, GatewayError> {
        chat_request(chat, ctx)
    }

    fn chat_response(&self, body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
        chat_response(body, ctx)
    }

    fn chunk_source(&self, ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(AnthropicChunkSource::new(ctx))
    }
}

/// Used when the route's configured default is 0, because Anthropic rejects `max_tokens: 0`.
const FALLBACK_MAX_TOKENS: u32 = 4096;

/// OpenAI chat request -> Anthropic Messages request body (JSON bytes).
pub fn chat_request(req: &ChatRequest, ctx: &RequestContext) -> Result<Vec<u8>, GatewayError> {
    encode_request(req, &req.messages()?, ctx)
}

fn encode_request(
    req: &ChatRequest,
    messages: &Messages,
    ctx: &RequestContext,
) -> Result<Vec<u8>, GatewayError> {
    let (rest, turns) = request_body(req.fields(), messages, ctx)?;
    // The turns are written straight from the client's request, plain texts as the client wrote
    // them, rather than built as a JSON tree; the few other members are small trees.
    let mut out = Vec::with_capacity(req.size_hint() + 512);
    out.extend_from_slice(b"{\"messages\":");
    write_list(&mut out, &turns, |out, turn| turn.write_json(out))?;
    write_members(&mut out, &rest)?;
    out.push(b'}');
    Ok(out)
}

/// Anthropic Messages response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let message: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_upstream(format!("Anthropic response is not valid JSON: {e}"))
    })?;
    let message = as_message(&message)?;
    Ok(completion(message, ctx))
}

// ---------------------------------------------------------------------------------------------
// Request: OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------------

/// Every field of the Messages request but `messages`, and the turns.
fn request_body<'m>(
    req: &Map<String, Value>,
    messages: &'m Messages,
    ctx: &RequestContext,
) -> Result<(Map<String, Value>, Vec<Turn<'m>>), GatewayError> {
    check_n(req)?;
    let (system, messages) = translate_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(ctx.upstream_model));
    out.insert("max_tokens".into(), json!(max_tokens(req, ctx)?));
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    if let Some(stop) = stop_sequences(req.get("stop"))? {
        out.insert("stop_sequences".into(), stop);
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(n) = optional_number(req, key)? {
            out.insert(key.into(), n);
        }
    }
    if let Some(user) = optional_string(req, "user")? {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    match req.get("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            out.insert("stream".into(), Value::Bool(*b));
        }
        Some(_) => return Err(bad_param("`stream` must be a boolean", "stream")),
    }
    insert_tools(req, &mut out)?;
    Ok((out, messages))
}

fn bad_param(message: impl Into<String>, param: impl Into<String>) -> GatewayError {
    GatewayError::bad_request(message).with_param(param)
}

/// Anthropic returns exactly one completion, so `n > 1` cannot be honoured.
fn check_n(req: &Map<String, Value>) -> Result<(), GatewayError> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(_) => Err(bad_param(
            "`n` must be 1: Anthropic models return a single choice",
            "n",
        )),
    }
}

/// `max_completion_tokens` wins over the deprecated `max_tokens`; 0 counts as absent because
/// Anthropic requires a positive value.
fn max_tokens(req: &Map<String, Value>, ctx: &RequestContext) -> Result<u64, GatewayError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match req.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(0) => {}
                Some(n) => return Ok(n),
                None => {
                    return Err(bad_param(
                        format!("`{key}` must be a non-negative integer"),
                        key,
                    ))
                }
            },
        }
    }
    let default = match ctx.default_max_tokens {
        0 => FALLBACK_MAX_TOKENS,
        n => n,
    };
    Ok(u64::from(default))
}

fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let invalid = || bad_param("`stop` must be a string or a list of strings", "stop");
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(items)) => {
            if !items.iter().all(Value::is_string) {
                return Err(invalid());
            }
            // An empty list means "no stop sequences", same as absent.
            Ok((!items.is_empty()).then(|| Value::Array(items.clone())))
        }
        Some(_) => Err(invalid()),
    }
}

fn optional_number(req: &Map<String, Value>, key: &str) -> Result<Option<Value>, GatewayError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) if v.is_number() => Ok(Some(v.clone())),
        Some(_) => Err(bad_param(format!("`{key}` must be a number"), key)),
    }
}

fn optional_string<'a>(
    req: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, GatewayError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_param(format!("`{key}` must be a string"), key)),
    }
}

// --- tools ---------------------------------------------------------------------------------------

/// Adds `tools` and `tool_choice`. Both are left out when no tools are defined: Anthropic rejects a
/// `tool_choice` without `tools`, and without tools there is nothing to choose.
fn insert_tools(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let tools = translate_tools(req.get("tools"))?;
    let mut choice = translate_tool_choice(req.get("tool_choice"))?;
    if tools.is_empty() {
        return Ok(());
    }
    if req.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let choice = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        // `{"type":"none"}` takes no other fields, and with no tool calls there is nothing to serialise.
        if choice["type"] != "none" {
            if let Some(map) = choice.as_object_mut() {
                map.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
    }
    out.insert("tools".into(), Value::Array(tools));
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, GatewayError> {
    match tools {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, tool)| translate_tool(tool, i))
            .collect(),
        Some(_) => Err(bad_param("`tools` must be a list", "tools")),
    }
}

fn translate_tool(tool: &Value, i: usize) -> Result<Value, GatewayError> {
    let param = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        _ => {
            return Err(bad_param(
                "only tools of type `function` can be sent to Anthropic models",
                format!("{param}.type"),
            ))
        }
    }
    let function = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| bad_param("tool is missing `function`", format!("{param}.function")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad_param(
                "tool function is missing `name`",
                format!("{param}.function.name"),
            )
        })?;
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out.insert("description".into(), json!(description));
    }
    // Anthropic requires a schema; OpenAI allows omitting it for argument-less functions.
    let schema = match function.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
        Some(_) => {
            return Err(bad_param(
                "`parameters` must be a JSON Schema object",
                format!("{param}.function.parameters"),
            ))
        }
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn translate_tool_choice(choice: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let invalid = || {
        bad_param(
            "`tool_choice` must be \"auto\", \"required\", \"none\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
            "tool_choice",
        )
    };
    let out = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => json!({ "type": "none" }),
            _ => return Err(invalid()),
        },
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| obj.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(invalid)?;
            json!({ "type": "tool", "name": name })
        }
        Some(_) => return Err(invalid()),
    };
    Ok(Some(out))
}

// --- messages ------------------------------------------------------------------------------------

/// One system text, kept apart until we know whether the whole prompt must be sent as blocks.
struct SystemPart {
    text: String,
    cache_control: Option<Value>,
}

/// Splits OpenAI messages into Anthropic's top-level `system` and the alternating `messages`.
fn translate_messages<'m>(
    messages: &'m Messages,
) -> Result<(Option<Value>, Vec<Turn<'m>>), GatewayError> {
    let messages = match messages {
        Messages::List(items) => items,
        Messages::Missing | Messages::NotAList(Value::Null) => {
            return Err(bad_param("`messages` is required", "messages"))
        }
        Messages::NotAList(_) => return Err(bad_param("`messages` must be a list", "messages")),
    };
    if messages.is_empty() {
        return Err(bad_param("`messages` must not be empty", "messages"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match message {
            // The common case: the text goes out as the client wrote it.
            Message::Plain(plain) => match plain.role {
                PlainRole::System => system.push(SystemPart {
                    text: plain.text().into_owned(),
                    cache_control: None,
                }),
                PlainRole::User => push_turn(&mut turns, "user", TurnContent::Text(plain.content)),
                // An assistant turn with nothing in it would be rejected upstream; it carries nothing.
                PlainRole::Assistant if plain.is_empty() => {}
                PlainRole::Assistant => push_turn(
                    &mut turns,
                    "assistant",
                    TurnContent::Blocks(vec![Item::Text(plain.content)]),
                ),
            },
            Message::Parsed(message) => {
                translate_parsed_message(message, i, &mut system, &mut turns)?
            }
        }
    }
    if turns.is_empty() {
        return Err(bad_param(
            "`messages` must contain at least one user or assistant message",
            "messages",
        ));
    }
    Ok((system_value(system), turns))
}

/// Any message other than a plain one.
fn translate_parsed_message<'m>(
    message: &'m Value,
    i: usize,
    system: &mut Vec<SystemPart>,
    turns: &mut Vec<Turn<'m>>,
) -> Result<(), GatewayError> {
    let param = format!("messages[{i}]");
    let msg = message
        .as_object()
        .ok_or_else(|| bad_param("each message must be an object", param.clone()))?;
    match msg.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => system.extend(system_parts(msg, &param)?),
        Some("user") => push_turn(turns, "user", user_content(msg, &param)?),
        Some("assistant") => {
            let blocks = assistant_blocks(msg, &param)?;
            // An assistant turn with nothing in it would be rejected upstream; it carries nothing.
            if !blocks.is_empty() {
                push_turn(turns, "assistant", TurnContent::Blocks(trees(blocks)));
            }
        }
        Some("tool") => push_turn(
            turns,
            "user",
            TurnContent::Blocks(vec![Item::Tree(tool_result(msg, &param)?)]),
        ),
        Some(other) => {
            return Err(bad_param(
                format!("unsupported message role `{other}`"),
                format!("{param}.role"),
            ))
        }
        None => {
            return Err(bad_param(
                "message is missing a string `role`",
                format!("{param}.role"),
            ))
        }
    }
    Ok(())
}

/// One Anthropic turn.
struct Turn<'m> {
    role: &'static str,
    content: TurnContent<'m>,
}

/// A turn's content: the client's own string, or a list of blocks.
enum TurnContent<'m> {
    /// A plain message's content, a JSON string literal as the client wrote it.
    Text(&'m RawValue),
    /// A string from a parsed message.
    Str(&'m str),
    /// Content blocks; a plain text becomes a text block.
    Blocks(Vec<Item<'m>>),
}

/// A text block up to its text.
const TEXT_BLOCK_HEAD: &[u8] = b"{\"type\":\"text\",\"text\":";

impl Turn<'_> {
    /// `{"role":...,"content":...}`; the role is one of two constants and plain texts are
    /// already JSON string literals, so only parsed content goes through the serialiser.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        out.extend_from_slice(b"{\"role\":\"");
        out.extend_from_slice(self.role.as_bytes());
        out.extend_from_slice(b"\",\"content\":");
        match &self.content {
            TurnContent::Text(text) => out.extend_from_slice(text.get().as_bytes()),
            TurnContent::Str(text) => write_tree(out, text)?,
            TurnContent::Blocks(blocks) => write_items(out, blocks, TEXT_BLOCK_HEAD)?,
        }
        out.push(b'}');
        Ok(())
    }
}

/// Appends a turn, merging it into the previous one when the roles match: Anthropic wants turns to
/// alternate, and OpenAI clients send parallel tool results as separate consecutive messages.
fn push_turn<'m>(turns: &mut Vec<Turn<'m>>, role: &'static str, content: TurnContent<'m>) {
    if let Some(last) = turns.last_mut().filter(|t| t.role == role) {
        let previous = std::mem::replace(&mut last.content, TurnContent::Blocks(Vec::new()));
        let mut blocks = turn_blocks(previous);
        blocks.extend(turn_blocks(content));
        last.content = TurnContent::Blocks(blocks);
        return;
    }
    turns.push(Turn { role, content });
}

/// A turn's content as a list of blocks, for merging. Empty texts become no block, since
/// Anthropic rejects empty text blocks.
fn turn_blocks(content: TurnContent<'_>) -> Vec<Item<'_>> {
    match content {
        TurnContent::Blocks(blocks) => blocks,
        TurnContent::Text(raw) if raw.get() == "\"\"" => Vec::new(),
        TurnContent::Text(raw) => vec![Item::Text(raw)],
        TurnContent::Str("") => Vec::new(),
        TurnContent::Str(s) => vec![Item::Tree(text_block(s))],
    }
}

/// Content as a list of blocks; an empty string becomes no block, since Anthropic rejects empty text.
fn into_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks,
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![text_block(s)],
        _ => Vec::new(),
    }
}

fn text_block(text: impl Into<String>) -> Value {
    json!({ "type": "text", "text": text.into() })
}

fn system_parts(msg: &Map<String, Value>, param: &str) -> Result<Vec<SystemPart>, GatewayError> {
    let plain = |text: &str| SystemPart {
        text: text.to_string(),
        cache_control: None,
    };
    match msg.get("content") {
        Some(Value::String(s)) => Ok(vec![plain(s)]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let text = part
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| part.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| {
                        bad_param(
                            "system and developer messages may contain only text parts",
                            format!("{param}.content[{j}]"),
                        )
                    })?;
                Ok(SystemPart {
                    text: text.to_string(),
                    cache_control: part.get("cache_control").filter(|c| !c.is_null()).cloned(),
                })
            })
            .collect(),
        _ => Err(bad_param(
            "system message content must be a string or a list of text parts",
            format!("{param}.content"),
        )),
    }
}

/// A plain string unless some part carries `cache_control`, which only the block form can hold.
fn system_value(parts: Vec<SystemPart>) -> Option<Value> {
    // Empty texts are dropped (Anthropic rejects empty text blocks) unless they carry a cache marker.
    let parts: Vec<SystemPart> = parts
        .into_iter()
        .filter(|p| !p.text.is_empty() || p.cache_control.is_some())
        .collect();
    if parts.is_empty() {
        return None;
    }
    if parts.iter().all(|p| p.cache_control.is_none()) {
        let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
        return Some(json!(texts.join("\n\n")));
    }
    let blocks = parts
        .into_iter()
        .map(|p| {
            let mut block = text_block(p.text);
            if let Some(cc) = p.cache_control {
                block["cache_control"] = cc;
            }
            block
        })
        .collect();
    Some(Value::Array(blocks))
}

fn user_content<'a>(
    msg: &'a Map<String, Value>,
    param: &str,
) -> Result<TurnContent<'a>, GatewayError> {
    match msg.get("content") {
        Some(Value::String(s)) => Ok(TurnContent::Str(s)),
        Some(Value::Array(parts)) => Ok(TurnContent::Blocks(trees(content_blocks(
            parts,
            &format!("{param}.content"),
        )?))),
        _ => Err(bad_param(
            "user message content must be a string or a list of content parts",
            format!("{param}.content"),
        )),
    }
}

/// OpenAI text and image parts -> Anthropic text and image blocks, keeping `cache_control`.
fn content_blocks(parts: &[Value], param: &str) -> Result<Vec<Value>, GatewayError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let param = format!("{param}[{j}]");
            let mut block =
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text_block(part_text(part, &param)?),
                    Some("image_url") => image_block(part, &param)?,
                    _ => return Err(bad_param(
                        "only `text` and `image_url` content parts can be sent to Anthropic models",
                        format!("{param}.type"),
                    )),
                };
            if let Some(cc) = part.get("cache_control").filter(|c| !c.is_null()) {
                block["cache_control"] = cc.clone();
            }
            Ok(block)
        })
        .collect()
}

fn part_text<'a>(part: &'a Value, param: &str) -> Result<&'a str, GatewayError> {
    part.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_param("text part is missing `text`", format!("{param}.text")))
}

fn image_block(part: &Value, param: &str) -> Result<Value, GatewayError> {
    // `image_url` is normally `{"url": ...}`; some older clients send the URL string directly.
    let url = match part.get("image_url") {
        Some(Value::String(url)) => Some(url.as_str()),
        Some(obj) => obj.get("url").and_then(Value::as_str),
        None => None,
    };
    let url_param = format!("{param}.image_url.url");
    let url = url.ok_or_else(|| bad_param("image part is missing `image_url.url`", &url_param))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(',')
            .and_then(|(header, data)| Some((header.strip_suffix(";base64")?, data)))
            .filter(|(media_type, data)| !media_type.is_empty() && !data.is_empty())
            .ok_or_else(|| {
                bad_param(
                    "image data URIs must look like `data:<media type>;base64,<data>`",
                    &url_param,
                )
            })?;
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(bad_param(
        "image URLs must be http(s) URLs or base64 data URIs",
        url_param,
    ))
}

/// Text (non-empty) then `tool_use` blocks. Reasoning fields are dropped: Anthropic only accepts
/// thinking blocks with the signature it issued, which OpenAI clients do not keep.
fn assistant_blocks(msg: &Map<String, Value>, param: &str) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = Vec::new();
    match msg.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => blocks.extend(into_blocks(json!(s))),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let part_param = format!("{param}.content[{j}]");
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part_text(part, &part_param)?,
                    // A past refusal is still what the assistant said.
                    Some("refusal") => part.get("refusal").and_then(Value::as_str).unwrap_or(""),
                    _ => {
                        return Err(bad_param(
                            "assistant content parts must be `text` or `refusal`",
                            format!("{part_param}.type"),
                        ))
                    }
                };
                blocks.extend(into_blocks(json!(text)));
            }
        }
        Some(_) => {
            return Err(bad_param(
                "assistant content must be a string, a list of parts or null",
                format!("{param}.content"),
            ))
        }
    }
    match msg.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use_block(call, &format!("{param}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => {
            return Err(bad_param(
                "`tool_calls` must be a list",
                format!("{param}.tool_calls"),
            ))
        }
    }
    Ok(blocks)
}

fn tool_use_block(call: &Value, param: &str) -> Result<Value, GatewayError> {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_param("tool call is missing `id`", format!("{param}.id")))?;
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad_param(
                "tool call is missing `function.name`",
                format!("{param}.function.name"),
            )
        })?;
    let arguments = function.and_then(|f| f.get("arguments"));
    let input = tool_input(arguments, &format!("{param}.function.arguments"))?;
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// OpenAI carries arguments as a JSON string; Anthropic wants the object itself.
fn tool_input(arguments: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    let invalid = |why: &str| {
        bad_param(
            format!("`{param}` must be a JSON object encoded as a string: {why}"),
            param,
        )
    };
    let parsed = match arguments {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).map_err(|e| invalid(&e.to_string()))?
        }
        // Tolerate clients that send the object itself.
        Some(other) => other.clone(),
    };
    match parsed {
        Value::Object(_) => Ok(parsed),
        _ => Err(invalid("not an object")),
    }
}

fn tool_result(msg: &Map<String, Value>, param: &str) -> Result<Value, GatewayError> {
    let id = msg
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad_param(
                "tool message is missing `tool_call_id`",
                format!("{param}.tool_call_id"),
            )
        })?;
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    match msg.get("content") {
        // Anthropic's `content` is optional; a result with no output is still a result.
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => block["content"] = json!(s),
        Some(Value::Array(parts)) => {
            block["content"] = Value::Array(content_blocks(parts, &format!("{param}.content"))?)
        }
        Some(_) => {
            return Err(bad_param(
                "tool message content must be a string or a list of content parts",
                format!("{param}.content"),
            ))
        }
    }
    Ok(block)
}

// ---------------------------------------------------------------------------------------------
// Response: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// The body as a Messages `message`, or a 502 saying what it was instead.
fn as_message(value: &Value) -> Result<&Map<String, Value>, GatewayError> {
    let obj = value
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("Anthropic response is not a JSON object"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some("error") => {
            let detail = obj
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(GatewayError::bad_upstream(format!(
                "Anthropic answered with an error: {detail}"
            )));
        }
        _ => {
            return Err(GatewayError::bad_upstream(
                "Anthropic response is not a message (`type` is not \"message\")",
            ))
        }
    }
    if !obj.get("content").is_some_and(Value::is_array) {
        return Err(GatewayError::bad_upstream(
            "Anthropic message has no `content` list",
        ));
    }
    Ok(obj)
}

fn completion(msg: &Map<String, Value>, ctx: &ResponseContext) -> Value {
    let id = msg
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("chatcmpl-"));
    let model = msg
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(ctx.upstream_model);
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let stop_reason = msg.get("stop_reason").and_then(Value::as_str);
    json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": assistant_message(blocks),
            "finish_reason": finish_reason(stop_reason),
            "logprobs": null,
        }],
        "usage": usage(msg.get("usage")),
    })
}

fn assistant_message(blocks: &[Value]) -> Value {
    let mut text: Option<String> = None;
    let mut thinking: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in blocks {
        let str_field = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(str_field("text")),
            Some("thinking") => thinking
                .get_or_insert_with(String::new)
                .push_str(str_field("thinking")),
            Some("tool_use") => tool_calls.push(tool_call(block)),
            // redacted_thinking, server tool blocks and future types have no OpenAI counterpart.
            _ => {}
        }
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if let Some(thinking) = thinking {
        message["reasoning_content"] = json!(thinking);
    }
    message
}

fn tool_call(block: &Value) -> Value {
    let id = block
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("call_"));
    let name = block.get("name").and_then(Value::as_str).unwrap_or("");
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(input) => input.to_string(),
    };
    json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    })
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, null and reasons added after this was written.
        _ => "stop",
    }
}

/// Anthropic counts cached prompt tokens apart from `input_tokens`; OpenAI counts them inside
/// `prompt_tokens`, so they are folded back in.
fn usage(usage: Option<&Value>) -> Value {
    let count = |key: &str| {
        usage
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    usage_value(
        count("input_tokens"),
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
        count("output_tokens"),
    )
}

fn usage_value(input: u64, cache_read: u64, cache_creation: u64, completion: u64) -> Value {
    let prompt = input
        .saturating_add(cache_read)
        .saturating_add(cache_creation);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": { "cached_tokens": cache_read },
    })
}

// ---------------------------------------------------------------------------------------------
// Stream: Anthropic Messages events -> chat.completion.chunk
// ---------------------------------------------------------------------------------------------

/// The events this translator reads; other named events (`ping`, future ones) are skipped
/// without parsing their data.
const STREAM_EVENTS: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// Turns one Anthropic Messages SSE stream into OpenAI `chat.completion.chunk` objects.
#[derive(Debug)]
pub struct AnthropicChunkSource {
    /// Id, model and `created` of every chunk; the id and model come from the first event.
    stamp: ChunkStamp,
    input_tokens: u64,
    cache_read: u64,
    cache_creation: u64,
    output_tokens: u64,
    /// Anthropic block index -> OpenAI tool call index. Text and thinking blocks take block
    /// indexes too, so the two numberings differ. Few entries: a Vec beats a map.
    tools: Vec<(u64, usize)>,
    next_tool: usize,
    finish_sent: bool,
    /// `Done` or `Error` went out; nothing more may follow.
    finished: bool,
}

impl AnthropicChunkSource {
    pub fn new(ctx: StreamContext) -> Self {
        AnthropicChunkSource {
            stamp: ChunkStamp::new(ctx),
            input_tokens: 0,
            cache_read: 0,
            cache_creation: 0,
            output_tokens: 0,
            tools: Vec::new(),
            next_tool: 0,
            finish_sent: false,
            finished: false,
        }
    }

    /// Sends the role chunk once. Content before any `message_start` gets a generated id
    /// rather than being dropped.
    fn start(&mut self, id: Option<String>, model: Option<String>, out: &mut Vec<StreamOut>) {
        if self.stamp.id.is_some() {
            return;
        }
        self.stamp.id = Some(id.unwrap_or_else(|| ids::new_id("chatcmpl-")));
        self.stamp.model = model.unwrap_or_else(|| self.stamp.ctx.upstream_model.clone());
        out.push(self.stamp.role());
    }

    /// Usage counts are cumulative in every event that carries them: set, never add.
    fn read_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        let fields = [
            ("input_tokens", &mut self.input_tokens),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("output_tokens", &mut self.output_tokens),
        ];
        for (key, slot) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    fn fail(&mut self, error: GatewayError, out: &mut Vec<StreamOut>) {
        self.finished = true;
        out.push(StreamOut::Error(error));
    }

    fn message_start(&mut self, mut data: Value, out: &mut Vec<StreamOut>) {
        // A repeated message_start must not repeat the role chunk nor reset the usage.
        if self.stamp.id.is_some() {
            return;
        }
        let mut message = data.get_mut("message").map(Value::take).unwrap_or_default();
        self.read_usage(message.get("usage"));
        let id = take_string(&mut message, "id");
        let model = take_string(&mut message, "model");
        self.start(id, model, out);
    }

    fn block_start(&mut self, mut data: Value, out: &mut Vec<StreamOut>) {
        let index = data.get("index").and_then(Value::as_u64);
        let Some(mut block) = data.get_mut("content_block").map(Value::take) else {
            return;
        };
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                if index.is_some_and(|i| self.tool_index(i).is_some()) {
                    return; // the same block started twice
                }
                let t = self.next_tool;
                self.next_tool += 1;
                if let Some(i) = index {
                    self.tools.push((i, t));
                }
                let id = take_string(&mut block, "id").unwrap_or_else(|| ids::new_id("call_"));
                let name = take_string(&mut block, "name").unwrap_or_default();
                self.start(None, None, out);
                let call = json!({
                    "index": t,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                out.push(self.stamp.delta(json!({ "tool_calls": [call] }), None));
            }
            Some("text") => {
                // Anthropic starts text blocks empty; only a non-empty start carries content.
                if let Some(text) = take_string(&mut block, "text").filter(|t| !t.is_empty()) {
                    self.start(None, None, out);
                    out.push(self.stamp.text(TextField::Content, text));
                }
            }
            // thinking, redacted_thinking, server tool blocks: nothing until their deltas.
            _ => {}
        }
    }

    /// The commonest event, a text or thinking delta, read without building a tree. Returns
    /// false for anything else, which then takes the general path.
    fn text_delta(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) -> bool {
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            delta: Delta<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Delta<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            text: Option<String>,
            thinking: Option<String>,
        }
        let Ok(Event { delta }) = serde_json::from_str::<Event>(&event.data) else {
            return false;
        };
        let (field, text) = match (delta.kind, delta.text, delta.thinking) {
            ("text_delta", Some(text), _) => (TextField::Content, text),
            ("thinking_delta", _, Some(text)) => (TextField::Reasoning, text),
            _ => return false,
        };
        self.start(None, None, out);
        out.push(self.stamp.text(field, text));
        true
    }

    fn block_delta(&mut self, mut data: Value, out: &mut Vec<StreamOut>) {
        let index = data.get("index").and_then(Value::as_u64);
        let Some(mut delta) = data.get_mut("delta").map(Value::take) else {
            return;
        };
        let (field, target) = match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => ("text", Some(TextField::Content)),
            Some("thinking_delta") => ("thinking", Some(TextField::Reasoning)),
            Some("input_json_delta") => ("partial_json", None),
            // signature_delta, citations_delta and future deltas have no OpenAI counterpart.
            _ => return,
        };
        let Some(text) = take_string(&mut delta, field) else {
            return;
        };
        let chunk = match target {
            Some(field) => {
                self.start(None, None, out);
                self.stamp.text(field, text)
            }
            None => {
                // Input of a block that is not a client tool call (server tools) is dropped.
                let Some(t) = index.and_then(|i| self.tool_index(i)) else {
                    return;
                };
                self.start(None, None, out);
                let call = json!({ "index": t, "function": { "arguments": text } });
                self.stamp.delta(json!({ "tool_calls": [call] }), None)
            }
        };
        out.push(chunk);
    }

    fn message_delta(&mut self, data: Value, out: &mut Vec<StreamOut>) {
        self.read_usage(data.get("usage"));
        if self.finish_sent {
            return;
        }
        self.finish_sent = true;
        let reason = data
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        self.start(None, None, out);
        out.push(self.stamp.delta(json!({}), Some(finish_reason(reason))));
    }

    fn message_stop(&mut self, out: &mut Vec<StreamOut>) {
        if self.stamp.ctx.include_usage {
            self.start(None, None, out);
            let mut chunk = self.stamp.envelope(json!([]));
            let usage = usage_value(
                self.input_tokens,
                self.cache_read,
                self.cache_creation,
                self.output_tokens,
            );
            chunk.insert("usage".into(), usage);
            out.push(StreamOut::Chunk(Value::Object(chunk)));
        }
        self.finished = true;
        out.push(StreamOut::Done);
    }

    fn error_event(&mut self, data: &Value, raw: &str, out: &mut Vec<StreamOut>) {
        let kind = data
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str);
        let status = match kind {
            Some("overloaded_error") => 529,
            Some("rate_limit_error") => 429,
            Some("invalid_request_error") => 400,
            _ => 500,
        };
        let error = crate::error::from_upstream(status, raw.as_bytes(), "");
        self.fail(error, out);
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }
}

/// Moves a string field out of an object, so its text is not copied.
fn take_string(value: &mut Value, key: &str) -> Option<String> {
    match value.get_mut(key).map(Value::take) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

impl ChunkSource for AnthropicChunkSource {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        if let Some(name) = event.event.as_deref() {
            if !STREAM_EVENTS.contains(&name) {
                return; // an event type added after this was written
            }
        }
        if event.event.as_deref() == Some("content_block_delta") && self.text_delta(event, out) {
            return;
        }
        let data = match serde_json::from_str::<Value>(&event.data) {
            Ok(data @ Value::Object(_)) => data,
            _ => {
                let error = GatewayError::bad_upstream("invalid stream event from upstream");
                return self.fail(error, out);
            }
        };
        // The `event:` name and the data's `type` agree on Anthropic; the name wins, the type
        // serves streams relayed without names.
        let kind = match event.event.as_deref() {
            Some(name) => name,
            None => data.get("type").and_then(Value::as_str).unwrap_or(""),
        };
        match kind {
            "message_start" => self.message_start(data, out),
            "content_block_start" => self.block_start(data, out),
            "content_block_delta" => self.block_delta(data, out),
            "message_delta" => self.message_delta(data, out),
            "message_stop" => self.message_stop(out),
            "error" => self.error_event(&data, &event.data, out),
            // content_block_stop, ping, unknown types.
            _ => {}
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        let error = GatewayError::new(502, "upstream stream ended before its final event")
            .with_code("stream_truncated");
        self.fail(error, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{mutations, normalize_jsonl, render, splits};

    const REQ_CTX: RequestContext = RequestContext {
        upstream_model: "claude-sonnet-4-5-20250929",
        default_max_tokens: 4096,
    };
    const RESP_CTX: ResponseContext = ResponseContext {
        upstream_model: "claude-sonnet-4-5",
        created: 1_748_779_200,
    };

    macro_rules! fixture {
        ($name:literal) => {
            serde_json::from_str::<Value>(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/anthropic/",
                $name
            )))
            .expect(concat!("fixture ", $name, " is valid JSON"))
        };
    }

    fn translate(req: &Value) -> Value {
        let bytes =
            ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect("request translates");
        serde_json::from_slice(&bytes).expect("request body is JSON")
    }

    fn translate_err(req: &Value) -> GatewayError {
        ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect_err("request is rejected")
    }

    fn respond(body: &Value) -> Value {
        chat_response(body.to_string().as_bytes(), &RESP_CTX).expect("response translates")
    }

    /// A minimal valid request with `extra` fields merged on top.
    fn request_with(extra: Value) -> Value {
        let mut req = json!({
            "model": "claude-fast",
            "messages": [{"role": "user", "content": "Hi"}],
        });
        if let (Some(req), Some(extra)) = (req.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                req.insert(k.clone(), v.clone());
            }
        }
        req
    }

    fn weather_tool() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])
    }

    // --- request golden fixtures ---

    #[test]
    fn request_text_with_system_and_developer() {
        assert_eq!(
            translate(&fixture!("request_text_system.openai.json")),
            fixture!("request_text_system.anthropic.json")
        );
    }

    #[test]
    fn request_system_blocks_keep_cache_control() {
        assert_eq!(
            translate(&fixture!("request_system_cache_control.openai.json")),
            fixture!("request_system_cache_control.anthropic.json")
        );
    }

    #[test]
    fn request_images_data_uri_and_url() {
        assert_eq!(
            translate(&fixture!("request_images.openai.json")),
            fixture!("request_images.anthropic.json")
        );
    }

    #[test]
    fn request_tools_parallel_calls_and_merged_results() {
        assert_eq!(
            translate(&fixture!("request_tools.openai.json")),
            fixture!("request_tools.anthropic.json")
        );
    }

    #[test]
    fn request_assistant_text_with_tool_call_and_empty_turn_skipped() {
        assert_eq!(
            translate(&fixture!("request_assistant_text_and_tool.openai.json")),
            fixture!("request_assistant_text_and_tool.anthropic.json")
        );
    }

    // --- request field rules ---

    #[test]
    fn tool_choice_forms() {
        let cases = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "get_weather"}}),
                json!({"type": "tool", "name": "get_weather"}),
            ),
        ];
        for (choice, expected) in cases {
            let out = translate(&request_with(
                json!({"tools": weather_tool(), "tool_choice": choice}),
            ));
            assert_eq!(out["tool_choice"], expected, "tool_choice {choice}");
        }
    }

    #[test]
    fn parallel_tool_calls_false() {
        let out = translate(&request_with(
            json!({"tools": weather_tool(), "parallel_tool_calls": false}),
        ));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        let out = translate(&request_with(json!({
            "tools": weather_tool(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
        })));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        // `none` allows no other fields.
        let out = translate(&request_with(json!({
            "tools": weather_tool(), "tool_choice": "none", "parallel_tool_calls": false,
        })));
        assert_eq!(out["tool_choice"], json!({"type": "none"}));
        // `true` is Anthropic's default: nothing to send.
        let out = translate(&request_with(
            json!({"tools": weather_tool(), "parallel_tool_calls": true}),
        ));
        assert!(out.get("tool_choice").is_none());
    }

    #[test]
    fn tool_choice_without_tools_is_dropped() {
        let out = translate(&request_with(
            json!({"tool_choice": "auto", "parallel_tool_calls": false, "tools": []}),
        ));
        assert!(out.get("tool_choice").is_none());
        assert!(out.get("tools").is_none());
    }

    #[test]
    fn max_tokens_precedence_and_default() {
        let cases = [
            (
                json!({"max_completion_tokens": 100, "max_tokens": 200}),
                100,
            ),
            (json!({"max_tokens": 200}), 200),
            (
                json!({"max_completion_tokens": null, "max_tokens": 200}),
                200,
            ),
            (json!({"max_completion_tokens": 0, "max_tokens": 0}), 4096),
            (json!({"max_tokens": null}), 4096),
            (json!({}), 4096),
        ];
        for (fields, expected) in cases {
            let out = translate(&request_with(fields.clone()));
            assert_eq!(out["max_tokens"], expected, "fields {fields}");
        }
        let ctx = RequestContext {
            upstream_model: "m",
            default_max_tokens: 8192,
        };
        let out: Value = serde_json::from_slice(
            &ChatRequest::with_tree(&request_with(json!({})), |r| chat_request(r, &ctx)).unwrap(),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], 8192);
        // A zero default would be rejected upstream.
        let ctx = RequestContext {
            upstream_model: "m",
            default_max_tokens: 0,
        };
        let out: Value = serde_json::from_slice(
            &ChatRequest::with_tree(&request_with(json!({})), |r| chat_request(r, &ctx)).unwrap(),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], FALLBACK_MAX_TOKENS);
    }

    #[test]
    fn stop_string_list_and_empty() {
        let out = translate(&request_with(json!({"stop": "###"})));
        assert_eq!(out["stop_sequences"], json!(["###"]));
        let out = translate(&request_with(json!({"stop": ["a", "b"]})));
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        for empty in [json!([]), json!(null)] {
            let out = translate(&request_with(json!({ "stop": empty })));
            assert!(out.get("stop_sequences").is_none());
        }
    }

    #[test]
    fn user_becomes_metadata_user_id() {
        let out = translate(&request_with(json!({"user": "u-42"})));
        assert_eq!(out["metadata"], json!({"user_id": "u-42"}));
        let out = translate(&request_with(json!({})));
        assert!(out.get("metadata").is_none());
    }

    #[test]
    fn plain_system_messages_join_with_blank_line() {
        let out = translate(&json!({"messages": [
            {"role": "system", "content": "One."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": "Two."},
        ]}));
        assert_eq!(out["system"], "One.\n\nTwo.");
        assert_eq!(out["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn consecutive_user_strings_merge_into_blocks() {
        let out = translate(&json!({"messages": [
            {"role": "user", "content": "A"},
            {"role": "user", "content": "B"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "A"}, {"type": "text", "text": "B"},
            ]}])
        );
    }

    // --- request errors ---

    #[test]
    fn bad_tool_arguments_name_the_field() {
        let req = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "toolu_01A", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "toolu_01B", "type": "function", "function": {"name": "f", "arguments": "{\"a\": "}},
            ]},
        ]});
        let err = translate_err(&req);
        assert_eq!(err.status, 400);
        assert_eq!(
            err.param.as_deref(),
            Some("messages[1].tool_calls[1].function.arguments")
        );
        assert!(err
            .message
            .contains("messages[1].tool_calls[1].function.arguments"));
    }

    #[test]
    fn message_validation_errors() {
        let cases = [
            (json!({"model": "x"}), "messages"),
            (json!({"messages": null}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "system", "content": "only system"}]}),
                "messages",
            ),
            (json!({"messages": ["hi"]}), "messages[0]"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}
                ]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
        ];
        for (req, param) in cases {
            let err = translate_err(&req);
            assert_eq!(err.status, 400, "request {req}");
            assert_eq!(err.param.as_deref(), Some(param), "request {req}");
        }
        assert_eq!(translate_err(&json!([1, 2])).status, 400);
    }

    #[test]
    fn n_greater_than_one_is_rejected() {
        let err = translate_err(&request_with(json!({"n": 2})));
        assert_eq!(err.status, 400);
        assert_eq!(err.param.as_deref(), Some("n"));
        assert!(translate(&request_with(json!({"n": 1}))).get("n").is_none());
    }

    #[test]
    fn wrong_field_types_are_rejected() {
        for (fields, param) in [
            (json!({"max_tokens": "100"}), "max_tokens"),
            (
                json!({"max_completion_tokens": -5}),
                "max_completion_tokens",
            ),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", 1]}), "stop"),
            (json!({"user": 7}), "user"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"tools": {}}), "tools"),
            (
                json!({"tools": weather_tool(), "tool_choice": "sometimes"}),
                "tool_choice",
            ),
        ] {
            let err = translate_err(&request_with(fields.clone()));
            assert_eq!(err.param.as_deref(), Some(param), "fields {fields}");
        }
    }

    // --- response golden fixtures ---

    #[test]
    fn response_text() {
        assert_eq!(
            respond(&fixture!("response_text.anthropic.json")),
            fixture!("response_text.openai.json")
        );
    }

    #[test]
    fn response_multiple_tool_use_with_cache_usage() {
        assert_eq!(
            respond(&fixture!("response_tool_use.anthropic.json")),
            fixture!("response_tool_use.openai.json")
        );
    }

    #[test]
    fn response_thinking() {
        assert_eq!(
            respond(&fixture!("response_thinking.anthropic.json")),
            fixture!("response_thinking.openai.json")
        );
    }

    #[test]
    fn response_refusal_without_content_or_model() {
        assert_eq!(
            respond(&fixture!("response_refusal_empty.anthropic.json")),
            fixture!("response_refusal_empty.openai.json")
        );
    }

    #[test]
    fn every_stop_reason() {
        let cases = [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("pause_turn"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("model_context_window_exceeded"), "stop"),
            (json!(null), "stop"),
        ];
        let mut body = fixture!("response_text.anthropic.json");
        for (reason, expected) in cases {
            body["stop_reason"] = reason.clone();
            let out = respond(&body);
            assert_eq!(
                out["choices"][0]["finish_reason"], expected,
                "stop_reason {reason}"
            );
        }
    }

    #[test]
    fn invalid_upstream_bodies_are_502() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"<html>502 Bad Gateway</html>",
            b"[]",
            b"\"message\"",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            br#"{"type":"completion","completion":"hi"}"#,
            br#"{"type":"message","content":"hi"}"#,
        ];
        for body in bodies {
            let err = chat_response(body, &RESP_CTX).expect_err("body is rejected");
            assert_eq!(err.status, 502, "body {}", String::from_utf8_lossy(body));
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"));
        }
    }

    // --- robustness ---

    /// Values of every JSON type, including the awkward ones.
    fn odd_values() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!("data:,"),
            json!([]),
            json!([null]),
            json!({}),
            json!({"type": null}),
        ]
    }

    #[test]
    fn plain_messages_translate_as_parsed_ones_do() {
        let fixtures = [
            fixture!("request_text_system.openai.json"),
            fixture!("request_system_cache_control.openai.json"),
            fixture!("request_images.openai.json"),
            fixture!("request_tools.openai.json"),
            fixture!("request_assistant_text_and_tool.openai.json"),
        ]
        .map(|f| f.to_string());
        crate::test_support::assert_plain_path_matches(
            |req, messages| encode_request(req, messages, &REQ_CTX),
            &fixtures,
        );
    }

    #[test]
    fn plain_texts_go_out_as_the_client_wrote_them() {
        let body = br#"{"messages":[{"role":"user","content":"caf\u00e9 \"q\""},{"role":"assistant","content":"x\/y"}]}"#;
        let req = ChatRequest::parse(body).expect("parses");
        let out =
            String::from_utf8(chat_request(&req, &REQ_CTX).expect("translates")).expect("UTF-8");
        assert!(out.contains(r#""content":"caf\u00e9 \"q\"""#), "{out}");
        assert!(out.contains(r#"{"type":"text","text":"x\/y"}"#), "{out}");
    }

    #[test]
    fn no_input_panics() {
        let odd = odd_values();
        let requests = [
            fixture!("request_text_system.openai.json"),
            fixture!("request_system_cache_control.openai.json"),
            fixture!("request_images.openai.json"),
            fixture!("request_tools.openai.json"),
            fixture!("request_assistant_text_and_tool.openai.json"),
        ];
        let mut count = 0;
        for req in &requests {
            for variant in mutations(req, &odd) {
                let _ = ChatRequest::with_tree(&variant, |r| chat_request(r, &REQ_CTX));
                count += 1;
            }
        }
        let responses = [
            fixture!("response_text.anthropic.json"),
            fixture!("response_tool_use.anthropic.json"),
            fixture!("response_thinking.anthropic.json"),
            fixture!("response_refusal_empty.anthropic.json"),
        ];
        for resp in &responses {
            for variant in mutations(resp, &odd) {
                let _ = chat_response(variant.to_string().as_bytes(), &RESP_CTX);
                count += 1;
            }
        }
        for raw in [
            &b"\xff\xfe"[..],
            b"{",
            b"null",
            b"1e999",
            b"{\"content\":[]}",
        ] {
            let _ = chat_response(raw, &RESP_CTX);
        }
        assert!(count > 1000, "only {count} variants");
    }

    // --- streams ---

    const CREATED: u64 = 1_748_779_200;

    fn stream_ctx(include_usage: bool) -> StreamContext {
        StreamContext {
            upstream_model: "claude-sonnet-4-5".into(),
            created: CREATED,
            include_usage,
        }
    }

    macro_rules! stream_fixture {
        ($sse:literal, $expected:literal, $include_usage:expr) => {
            (
                $sse,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/anthropic/",
                    $sse
                ))
                .as_slice(),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/anthropic/",
                    $expected
                )),
                $include_usage,
            )
        };
    }

    /// (name, upstream bytes, expected jsonl, include_usage).
    fn stream_fixtures() -> Vec<(&'static str, &'static [u8], &'static str, bool)> {
        vec![
            stream_fixture!("stream_text.sse", "stream_text.openai.jsonl", false),
            stream_fixture!(
                "stream_text.sse",
                "stream_text.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_parallel_tools.sse",
                "stream_parallel_tools.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!("stream_thinking.sse", "stream_thinking.openai.jsonl", false),
            stream_fixture!(
                "stream_cache_usage.sse",
                "stream_cache_usage.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_cache_usage.sse",
                "stream_cache_usage.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!("stream_error.sse", "stream_error.openai.jsonl", false),
            stream_fixture!(
                "stream_duplicate_start.sse",
                "stream_duplicate_start.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_truncated.sse",
                "stream_truncated.openai.jsonl",
                false
            ),
        ]
    }

    /// Runs upstream bytes, delivered in `pieces`, through the SSE parser and the translator.
    fn run_pieces(pieces: &[&[u8]], include_usage: bool) -> Vec<StreamOut> {
        let mut source = AnthropicChunkSource::new(stream_ctx(include_usage));
        crate::test_support::run_pieces(&mut source, pieces)
    }

    fn run_stream(bytes: &[u8], include_usage: bool) -> Vec<StreamOut> {
        run_pieces(&[bytes], include_usage)
    }

    fn chunks(outs: &[StreamOut]) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| o.chunk().map(std::borrow::Cow::into_owned))
            .collect()
    }

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn feed(source: &mut AnthropicChunkSource, events: &[(&str, &str)]) -> Vec<StreamOut> {
        let mut out = Vec::new();
        for (name, data) in events {
            source.on_event(&event(Some(name), data), &mut out);
        }
        out
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}}"#;

    #[test]
    fn stream_golden_fixtures() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            assert_eq!(
                render(&run_stream(bytes, include_usage)),
                normalize_jsonl(expected),
                "fixture {name}, include_usage {include_usage}"
            );
        }
    }

    #[test]
    fn stream_chunks_share_id_model_created_and_follow_openai_shape() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let outs = run_stream(bytes, include_usage);
            let chunks = chunks(&outs);
            let first = chunks.first().expect("a first chunk");
            assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{name}");
            for c in &chunks {
                assert_eq!(c["id"], first["id"], "{name}");
                assert_eq!(c["model"], first["model"], "{name}");
                assert_eq!(c["created"], CREATED, "{name}");
                assert_eq!(c["object"], "chat.completion.chunk", "{name}");
                let choices = c["choices"].as_array().expect("choices is a list");
                if let Some(choice) = choices.first() {
                    assert_eq!(choice["index"], 0);
                    assert!(choice["delta"].is_object());
                    assert!(choice["logprobs"].is_null());
                    assert!(choice.get("finish_reason").is_some());
                    assert_eq!(c.get("usage").is_some(), include_usage, "{name}");
                } else {
                    assert!(c["usage"].is_object(), "{name}: empty choices carry usage");
                }
            }
            let roles = chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"].get("role").is_some())
                .count();
            assert_eq!(roles, 1, "{name}: one role chunk");
            let terminals = outs.iter().filter(|o| o.is_terminal()).count();
            assert_eq!(terminals, 1, "{name}: one terminal output");
            assert!(outs.last().is_some_and(|o| o.is_terminal()), "{name}");
        }
    }

    #[test]
    fn parallel_tool_calls_count_from_zero_not_block_index() {
        let (_, bytes, _, _) = stream_fixtures()[2];
        let outs = run_stream(bytes, false);
        let starts: Vec<(Value, Value)> = chunks(&outs)
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object())
            .filter(|call| call.contains_key("id"))
            .map(|call| (call["index"].clone(), call["id"].clone()))
            .collect();
        assert_eq!(
            starts,
            vec![
                (json!(0), json!("toolu_01T1x1fJ34qAmk2tNTrN7Up6")),
                (json!(1), json!("toolu_01B7kXq2cZpJ3vWn8sTyRmLd")),
            ]
        );
        // Arguments reassemble per call index.
        let mut args = [String::new(), String::new()];
        for c in chunks(&outs) {
            let call = &c["choices"][0]["delta"]["tool_calls"][0];
            if let (Some(i), Some(a)) = (
                call["index"].as_u64(),
                call["function"]["arguments"].as_str(),
            ) {
                args[i as usize].push_str(a);
            }
        }
        assert_eq!(args[0], r#"{"location": "Paris, France"}"#);
        assert_eq!(args[1], r#"{"location": "Tokyo, Japan"}"#);
    }

    #[test]
    fn stream_every_stop_reason() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/anthropic/stream_text.sse"
        ));
        let cases = [
            ("\"end_turn\"", json!("stop")),
            ("\"stop_sequence\"", json!("stop")),
            ("\"pause_turn\"", json!("stop")),
            ("\"max_tokens\"", json!("length")),
            ("\"tool_use\"", json!("tool_calls")),
            ("\"refusal\"", json!("content_filter")),
            ("\"model_context_window_exceeded\"", json!("stop")),
            ("null", json!("stop")),
        ];
        assert!(text.contains(r#""stop_reason":"end_turn""#));
        for (reason, expected) in cases {
            let stream = text.replace(
                r#""stop_reason":"end_turn""#,
                &format!(r#""stop_reason":{reason}"#),
            );
            let outs = run_stream(stream.as_bytes(), false);
            let finishes: Vec<Value> = chunks(&outs)
                .into_iter()
                .map(|c| c["choices"][0]["finish_reason"].clone())
                .filter(|f| !f.is_null())
                .collect();
            assert_eq!(finishes, vec![expected], "stop_reason {reason}");
            assert_eq!(outs.last(), Some(&StreamOut::Done));
        }
    }

    #[test]
    fn usage_is_set_not_added_and_message_delta_input_counts_override() {
        let mut source = AnthropicChunkSource::new(stream_ctx(true));
        let out = feed(
            &mut source,
            &[
                ("message_start", START),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":6,"cache_read_input_tokens":10,"output_tokens":9}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        let finishes = chunks(&out)
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .count();
        assert_eq!(finishes, 1, "one finish chunk");
        let last = chunks(&out).last().map(|c| c["usage"].clone());
        assert_eq!(
            last,
            Some(json!({
                "prompt_tokens": 16,
                "completion_tokens": 9,
                "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 10},
            }))
        );
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn error_events_map_status_kind_and_message() {
        let cases = [
            ("overloaded_error", 529, "overloaded_error"),
            ("rate_limit_error", 429, "rate_limit_error"),
            ("invalid_request_error", 400, "invalid_request_error"),
            ("api_error", 500, "api_error"),
            ("brand_new_error", 500, "brand_new_error"),
        ];
        for (kind, status, openai_kind) in cases {
            let mut source = AnthropicChunkSource::new(stream_ctx(false));
            let data = format!(
                r#"{{"type":"error","error":{{"type":"{kind}","message":"Boom {kind}"}}}}"#
            );
            let mut out = feed(&mut source, &[("message_start", START), ("error", &data)]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("{kind}: no error, got {out:?}");
            };
            assert_eq!(e.status, status, "{kind}");
            assert_eq!(e.kind(), openai_kind, "{kind}");
            assert_eq!(e.message, format!("Boom {kind}"));
            // Nothing after the error, not even at the end of the bytes.
            let n = out.len();
            source.on_event(
                &event(Some("message_stop"), r#"{"type":"message_stop"}"#),
                &mut out,
            );
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "{kind}: output after the error");
        }
    }

    #[test]
    fn unparseable_event_data_is_a_502_and_ends_the_stream() {
        for data in [
            "{\"type\":",
            "[DONE]",
            "",
            "null",
            "[1]",
            "\"message_start\"",
        ] {
            let mut source = AnthropicChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[("message_start", START)]);
            source.on_event(&event(Some("content_block_delta"), data), &mut out);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("data {data:?}: no error, got {out:?}");
            };
            assert_eq!(e.status, 502);
            assert_eq!(e.message, "invalid stream event from upstream");
            let n = out.len();
            feed(
                &mut source,
                &[("message_stop", r#"{"type":"message_stop"}"#)],
            );
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "data {data:?}: output after the error");
        }
    }

    /// Named `content_block_delta` events take the typed path for text and thinking; unnamed
    /// ones take the general path. Both must give the same chunks for every payload.
    #[test]
    fn typed_text_deltas_match_the_general_path() {
        let payloads = [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"q \" \\ \u00e9 \n"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","text":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"b"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","extra":[1]},"more":{}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":null}"#,
            r#"{"type":"content_block_delta","index":0}"#,
            r#"[1]"#,
            r#"not json"#,
        ];
        for payload in payloads {
            let run = |name: Option<&str>| {
                let mut source = AnthropicChunkSource::new(stream_ctx(true));
                let mut out = Vec::new();
                source.on_event(&event(Some("message_start"), START), &mut out);
                source.on_event(&event(name, payload), &mut out);
                render(&out)
            };
            assert_eq!(run(Some("content_block_delta")), run(None), "{payload}");
        }
    }

    #[test]
    fn truncated_stream_is_an_error_once_and_a_finished_one_is_not() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = Vec::new();
        source.on_end(&mut out);
        source.on_end(&mut out);
        assert_eq!(
            out,
            vec![StreamOut::Error(
                GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code("stream_truncated")
            )]
        );
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                ("message_start", START),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        source.on_end(&mut out);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn unknown_events_pings_and_unnamed_events() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                ("message_start", START),
                ("ping", r#"{"type":"ping"}"#),
                ("future_event", "not even json"),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
                ),
            ],
        );
        assert_eq!(out.len(), 1, "only the role chunk: {out:?}");
        // Without `event:` names, the data's `type` decides.
        let text =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        source.on_event(&event(None, text), &mut out);
        source.on_event(&event(None, r#"{"type":"future"}"#), &mut out);
        source.on_event(&event(None, r#"{"type":"message_stop"}"#), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(chunks(&out)[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn content_without_message_start_still_gets_a_role_chunk_and_an_id() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            )],
        );
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["model"], "claude-sonnet-4-5");
        assert!(chunks[1]["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(chunks[0]["id"], chunks[1]["id"]);
    }

    #[test]
    fn any_byte_split_gives_the_same_output() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let whole = run_stream(bytes, include_usage);
            for (n, pieces) in splits(bytes, 0x5eed, 300).iter().enumerate() {
                let got = run_pieces(pieces, include_usage);
                assert_eq!(
                    got,
                    whole,
                    "{name}: split {n}: {:?}",
                    pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn odd_stream_payloads_do_not_panic() {
        let odd = odd_values();
        let templates = [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":1,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":"pre"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"t"}}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":3,"input_tokens":4}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
            (
                "error",
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            ),
        ];
        let mut count = 0;
        for (name, template) in &templates {
            for variant in mutations(template, &odd) {
                let data = variant.to_string();
                for (started, include_usage) in [(false, false), (true, true)] {
                    for named in [Some(*name), None] {
                        let mut source = AnthropicChunkSource::new(stream_ctx(include_usage));
                        let mut out = Vec::new();
                        if started {
                            source.on_event(&event(Some("message_start"), START), &mut out);
                            source.on_event(&event(Some("content_block_start"), r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#), &mut out);
                        }
                        source.on_event(&event(named, &data), &mut out);
                        source.on_event(&event(named, &data), &mut out);
                        source.on_end(&mut out);
                        let terminal = out.iter().position(|o| o.is_terminal());
                        assert_eq!(terminal, Some(out.len() - 1), "{name} {data}");
                        count += 1;
                    }
                }
            }
        }
        assert!(count > 1000, "only {count} variants");
    }
}
