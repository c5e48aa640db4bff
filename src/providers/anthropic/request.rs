//! OpenAI chat request -> Anthropic Messages request body.

use crate::api::openai::chat::{ChatRequest, Message, Messages, PlainRole};
use crate::error::GatewayError;
use crate::providers::json_out::{trees, write_items, write_list, write_members, write_tree, Item};
use crate::providers::RequestContext;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

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

#[cfg(test)]
mod tests {
    use super::super::test_helpers::REQ_CTX;
    use super::*;

    fn translate(req: &Value) -> Value {
        let bytes =
            ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect("request translates");
        serde_json::from_slice(&bytes).expect("request body is JSON")
    }

    fn translate_err(req: &Value) -> GatewayError {
        ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect_err("request is rejected")
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
}
