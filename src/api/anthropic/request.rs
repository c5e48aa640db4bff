//! The Anthropic Messages front door: clients speak `/v1/messages`, any backend answers.
//!
//! Requests: a Messages body becomes an OpenAI chat request, which the gateway then sends like any
//! other. Responses: a `chat.completion` becomes a Messages `message`; the common stream form
//! (OpenAI chunks) becomes Anthropic's named SSE events. These are the inverse of
//! `providers::anthropic`, and use the same mapping tables (stop reasons, tool choice, usage).
//!
//! Client input is untrusted: malformed requests are 400s whose `param` names the field in
//! Anthropic's dotted form (`messages.1.content.0.source`); a malformed upstream answer is a 502.

use crate::error::GatewayError;
use crate::ids;
use crate::stream::chunk::StreamOut;
use bytes::Bytes;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Request: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// Anthropic Messages request (JSON object) -> OpenAI chat completions request (JSON object).
/// `model` is copied as given (the caller rewrites it). Validates like Anthropic does (400s).
pub fn request_to_openai(req: &Value) -> Result<Value, GatewayError> {
    let req = req
        .as_object()
        .ok_or_else(|| GatewayError::bad_request("The request body must be a JSON object"))?;
    let mut out = Map::new();

    match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {
            out.insert("model".into(), json!(m));
        }
        None | Some(Value::Null) => return Err(invalid("model", "Field required")),
        Some(_) => return Err(invalid("model", "Input should be a non-empty string")),
    }

    let mut messages = Vec::new();
    if let Some(system) = system_text(req.get("system"))? {
        messages.push(json!({ "role": "system", "content": system }));
    }
    translate_messages(req.get("messages"), &mut messages)?;
    out.insert("messages".into(), Value::Array(messages));

    match req.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("max_tokens", "Field required")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => {
                out.insert("max_tokens".into(), json!(n));
            }
            _ => {
                return Err(invalid(
                    "max_tokens",
                    "Input should be an integer greater than or equal to 1",
                ))
            }
        },
    }
    if let Some(stop) = stop_sequences(req.get("stop_sequences"))? {
        out.insert("stop".into(), stop);
    }
    for key in ["temperature", "top_p", "top_k"] {
        match req.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.is_number() => {
                out.insert(key.into(), v.clone());
            }
            Some(_) => return Err(invalid(key, "Input should be a valid number")),
        }
    }
    match req.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => match meta.get("user_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(user)) => {
                if !user.is_empty() {
                    out.insert("user".into(), json!(user));
                }
            }
            Some(_) => {
                return Err(invalid(
                    "metadata.user_id",
                    "Input should be a valid string",
                ))
            }
        },
        Some(_) => return Err(invalid("metadata", "Input should be a valid dictionary")),
    }
    match req.get("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), Value::Bool(*stream));
            if *stream {
                // The event sink needs usage for `message_delta`.
                out.insert("stream_options".into(), json!({ "include_usage": true }));
            }
        }
        Some(_) => return Err(invalid("stream", "Input should be a valid boolean")),
    }
    insert_tools(req, &mut out)?;
    // `thinking`, `service_tier`, `container`, `mcp_servers` and other Anthropic-only fields have
    // no OpenAI counterpart and are dropped.
    Ok(Value::Object(out))
}

/// A 400 naming the field, worded like Anthropic's validation errors (`max_tokens: Field required`).
fn invalid(param: impl Into<String>, why: &str) -> GatewayError {
    let param = param.into();
    GatewayError::bad_request(format!("{param}: {why}"))
        .with_param(param)
        .with_kind("invalid_request_error")
}

fn system_text(system: Option<&Value>) -> Result<Option<String>, GatewayError> {
    let text = match system {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                let param = format!("system.{i}");
                if block_type(block, &param)? != "text" {
                    return Err(invalid(
                        format!("{param}.type"),
                        "system blocks must be of type `text`",
                    ));
                }
                texts.push(block_text(block, &param)?);
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(invalid(
                "system",
                "Input should be a string or a list of text blocks",
            ))
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|s| !s.is_string()) {
                return Err(invalid(
                    format!("stop_sequences.{i}"),
                    "Input should be a valid string",
                ));
            }
            // An empty list is the same as none; OpenAI rejects `stop: []` on some backends.
            Ok((!items.is_empty()).then(|| Value::Array(items.clone())))
        }
        Some(_) => Err(invalid("stop_sequences", "Input should be a valid list")),
    }
}

// --- tools ---------------------------------------------------------------------------------------

/// Adds `tools`, `tool_choice` and `parallel_tool_calls`. Without tools neither of the latter is
/// sent: OpenAI rejects both when `tools` is absent, and there is nothing to choose.
fn insert_tools(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let tools = match req.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, tool)| translate_tool(tool, i))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid("tools", "Input should be a valid list")),
    };
    let choice = req.get("tool_choice").filter(|c| !c.is_null());
    let (choice, parallel) = match choice {
        None => (None, None),
        Some(choice) => translate_tool_choice(choice)?,
    };
    if tools.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(tools));
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    if parallel == Some(false) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

fn translate_tool(tool: &Value, i: usize) -> Result<Value, GatewayError> {
    let param = format!("tools.{i}");
    let tool = tool
        .as_object()
        .ok_or_else(|| invalid(param.clone(), "Input should be a valid dictionary"))?;
    match tool.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "custom" => {}
        Some(Value::String(t)) => {
            return Err(invalid(
                format!("{param}.type"),
                &format!("server tools (`{t}`) are not supported by this backend; only client tools with `input_schema` are"),
            ))
        }
        Some(_) => return Err(invalid(format!("{param}.type"), "Input should be a valid string")),
    }
    let name = match tool.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        None | Some(Value::Null) => return Err(invalid(format!("{param}.name"), "Field required")),
        Some(_) => {
            return Err(invalid(
                format!("{param}.name"),
                "Input should be a non-empty string",
            ))
        }
    };
    let schema = match tool.get("input_schema") {
        Some(schema @ Value::Object(_)) => schema,
        None | Some(Value::Null) => {
            return Err(invalid(format!("{param}.input_schema"), "Field required"))
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.input_schema"),
                "Input should be a JSON Schema object",
            ))
        }
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    match tool.get("description") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => {
            function.insert("description".into(), json!(d));
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.description"),
                "Input should be a valid string",
            ))
        }
    }
    function.insert("parameters".into(), schema.clone());
    Ok(json!({ "type": "function", "function": function }))
}

/// Anthropic's `tool_choice` -> (OpenAI `tool_choice`, `parallel_tool_calls`).
fn translate_tool_choice(choice: &Value) -> Result<(Option<Value>, Option<bool>), GatewayError> {
    let bad = || {
        invalid(
            "tool_choice.type",
            "Input should be 'auto', 'any', 'tool' or 'none'",
        )
    };
    let obj = choice
        .as_object()
        .ok_or_else(|| invalid("tool_choice", "Input should be a valid dictionary"))?;
    let parallel = match obj.get("disable_parallel_tool_use") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(disable)) => Some(!disable),
        Some(_) => {
            return Err(invalid(
                "tool_choice.disable_parallel_tool_use",
                "Input should be a valid boolean",
            ))
        }
    };
    let out = match obj.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match obj.get("name") {
            Some(Value::String(name)) if !name.is_empty() => {
                json!({ "type": "function", "function": { "name": name } })
            }
            None | Some(Value::Null) => return Err(invalid("tool_choice.name", "Field required")),
            Some(_) => {
                return Err(invalid(
                    "tool_choice.name",
                    "Input should be a non-empty string",
                ))
            }
        },
        _ => return Err(bad()),
    };
    Ok((Some(out), parallel))
}

// --- messages ------------------------------------------------------------------------------------

fn translate_messages(messages: Option<&Value>, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let messages = match messages {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(invalid("messages", "Field required")),
        Some(_) => return Err(invalid("messages", "Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    let last = messages.len() - 1;
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages.{i}");
        let msg = message
            .as_object()
            .ok_or_else(|| invalid(param.clone(), "Input should be a valid dictionary"))?;
        let role = match msg.get("role") {
            Some(Value::String(r)) if r == "user" || r == "assistant" => r.as_str(),
            None | Some(Value::Null) => {
                return Err(invalid(format!("{param}.role"), "Field required"))
            }
            Some(_) => {
                return Err(invalid(
                    format!("{param}.role"),
                    "Input should be 'user' or 'assistant'",
                ))
            }
        };
        let content_param = format!("{param}.content");
        let blocks: Vec<Value> = match msg.get("content") {
            Some(Value::String(s)) => vec![json!({ "type": "text", "text": s })],
            Some(Value::Array(blocks)) => blocks.clone(),
            None | Some(Value::Null) => return Err(invalid(content_param, "Field required")),
            Some(_) => {
                return Err(invalid(
                    content_param,
                    "Input should be a string or a list of content blocks",
                ))
            }
        };
        // Anthropic accepts empty content only in a final assistant turn (an empty prefill).
        let is_empty = blocks.is_empty() || blocks == [json!({ "type": "text", "text": "" })];
        if is_empty && !(role == "assistant" && i == last) {
            return Err(invalid(
                content_param,
                "all messages must have non-empty content except for the optional final assistant message",
            ));
        }
        if role == "user" {
            user_messages(&blocks, &content_param, out)?;
        } else {
            out.extend(assistant_message(&blocks, &content_param)?);
        }
    }
    Ok(())
}

fn block_type<'a>(block: &'a Value, param: &str) -> Result<&'a str, GatewayError> {
    if !block.is_object() {
        return Err(invalid(param, "Input should be a valid dictionary"));
    }
    match block.get("type") {
        Some(Value::String(t)) => Ok(t),
        None | Some(Value::Null) => Err(invalid(format!("{param}.type"), "Field required")),
        Some(_) => Err(invalid(
            format!("{param}.type"),
            "Input should be a valid string",
        )),
    }
}

fn block_text(block: &Value, param: &str) -> Result<String, GatewayError> {
    match block.get("text") {
        Some(Value::String(t)) => Ok(t.clone()),
        None | Some(Value::Null) => Err(invalid(format!("{param}.text"), "Field required")),
        Some(_) => Err(invalid(
            format!("{param}.text"),
            "Input should be a valid string",
        )),
    }
}

fn text_part(text: String) -> Value {
    json!({ "type": "text", "text": text })
}

/// An Anthropic `image` block -> an OpenAI `image_url` part.
fn image_part(block: &Value, param: &str) -> Result<Value, GatewayError> {
    let source_param = format!("{param}.source");
    let source = match block.get("source") {
        Some(s @ Value::Object(_)) => s,
        None | Some(Value::Null) => return Err(invalid(source_param, "Field required")),
        Some(_) => return Err(invalid(source_param, "Input should be a valid dictionary")),
    };
    let field = |key: &str| -> Result<&str, GatewayError> {
        source
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(
                    format!("{source_param}.{key}"),
                    "Field required (a non-empty string)",
                )
            })
    };
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = field("media_type")?;
            let data = field("data")?;
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => field("url")?.to_string(),
        _ => {
            return Err(invalid(
                format!("{source_param}.type"),
                "image sources must be of type 'base64' or 'url'",
            ))
        }
    };
    Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
}

/// Text and image parts as OpenAI message content: a single text part becomes a plain string.
fn parts_content(parts: Vec<Value>) -> Value {
    if let [part] = parts.as_slice() {
        if part.get("type").and_then(Value::as_str) == Some("text") {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                return json!(text);
            }
        }
    }
    Value::Array(parts)
}

/// One Anthropic user turn -> `tool` messages (one per `tool_result`, first) and then a `user`
/// message with the rest of the turn, if any.
fn user_messages(blocks: &[Value], param: &str, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let mut tool_messages = Vec::new();
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("{param}.{j}");
        match block_type(block, &param)? {
            "text" => parts.push(text_part(block_text(block, &param)?)),
            "image" => parts.push(image_part(block, &param)?),
            "tool_result" => {
                let (message, images) = tool_message(block, &param)?;
                tool_messages.push(message);
                // OpenAI tool messages hold only text: images a tool returned follow in the
                // user message of the same turn.
                parts.extend(images);
            }
            other => {
                return Err(invalid(
                    format!("{param}.type"),
                    &format!("content blocks of type `{other}` are not supported in user messages by this backend"),
                ))
            }
        }
    }
    out.extend(tool_messages);
    // Empty text carries nothing (and OpenAI-style backends may reject an empty user message).
    parts.retain(|p| p.get("text").and_then(Value::as_str) != Some(""));
    if !parts.is_empty() {
        out.push(json!({ "role": "user", "content": parts_content(parts) }));
    }
    Ok(())
}

/// A `tool_result` block -> (`tool` message, image parts it carried).
fn tool_message(block: &Value, param: &str) -> Result<(Value, Vec<Value>), GatewayError> {
    let id = match block.get("tool_use_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        None | Some(Value::Null) => {
            return Err(invalid(format!("{param}.tool_use_id"), "Field required"))
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.tool_use_id"),
                "Input should be a non-empty string",
            ))
        }
    };
    let mut images = Vec::new();
    let content = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let mut texts = Vec::new();
            for (k, item) in items.iter().enumerate() {
                let param = format!("{param}.content.{k}");
                match block_type(item, &param)? {
                    "text" => texts.push(block_text(item, &param)?),
                    "image" => images.push(image_part(item, &param)?),
                    _ => {
                        return Err(invalid(
                            format!("{param}.type"),
                            "tool results may contain only `text` and `image` blocks",
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.content"),
                "Input should be a string or a list of content blocks",
            ))
        }
    };
    let message = json!({ "role": "tool", "tool_call_id": id, "content": content });
    Ok((message, images))
}

/// One Anthropic assistant turn -> an OpenAI assistant message (none if nothing is left once
/// thinking blocks are dropped).
fn assistant_message(blocks: &[Value], param: &str) -> Result<Option<Value>, GatewayError> {
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("{param}.{j}");
        match block_type(block, &param)? {
            "text" => {
                let text = block_text(block, &param)?;
                if !text.is_empty() {
                    parts.push(text_part(text));
                }
            }
            "tool_use" => tool_calls.push(tool_call(block, &param)?),
            // Signed reasoning means nothing to another model.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(invalid(
                    format!("{param}.type"),
                    &format!("content blocks of type `{other}` are not supported in assistant messages by this backend"),
                ))
            }
        }
    }
    if parts.is_empty() && tool_calls.is_empty() {
        return Ok(None);
    }
    let content = if parts.is_empty() {
        Value::Null
    } else {
        parts_content(parts)
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    Ok(Some(message))
}

fn tool_call(block: &Value, param: &str) -> Result<Value, GatewayError> {
    let string_field = |key: &str| -> Result<&str, GatewayError> {
        match block.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            None | Some(Value::Null) => Err(invalid(format!("{param}.{key}"), "Field required")),
            Some(_) => Err(invalid(
                format!("{param}.{key}"),
                "Input should be a non-empty string",
            )),
        }
    };
    let id = string_field("id")?;
    let name = string_field("name")?;
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(input @ Value::Object(_)) => input.to_string(),
        Some(_) => {
            return Err(invalid(
                format!("{param}.input"),
                "Input should be a valid dictionary",
            ))
        }
    };
    Ok(json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    }))
}

// ---------------------------------------------------------------------------------------------
// Response: OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------------

/// OpenAI `chat.completion` object -> Anthropic Message object. `model` is the model name to report.
pub fn response_from_openai(completion: &Value, model: &str) -> Result<Value, GatewayError> {
    let obj = completion
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("chat completion is not a JSON object"))?;
    let choice = obj
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .filter(|c| c.is_object())
        .ok_or_else(|| GatewayError::bad_upstream("chat completion has no choices"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| GatewayError::bad_upstream("chat completion choice has no message"))?;

    let mut content = Vec::new();
    if let Some(thinking) = reasoning_text(message) {
        content.push(json!({ "type": "thinking", "thinking": thinking, "signature": "" }));
    }
    let text = message_text(message);
    if !text.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    let mut has_tool_use = false;
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls.iter().filter(|c| c.is_object()) {
            content.push(tool_use_block(call));
            has_tool_use = true;
        }
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    Ok(json!({
        "id": message_id(obj.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish, has_tool_use),
        "stop_sequence": null,
        "usage": Usage::from_openai(obj.get("usage")).to_anthropic(),
    }))
}

/// `msg_` + the completion id without OpenAI's `chatcmpl-` prefix; a fresh id when there is none.
fn message_id(completion_id: Option<&str>) -> String {
    match completion_id.filter(|id| !id.is_empty()) {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{}", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        None => ids::new_id("msg_"),
    }
}

/// `reasoning_content` (DeepSeek, vLLM, this gateway's own providers) or `reasoning` (OpenRouter,
/// Ollama), when non-empty.
fn reasoning_text(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().find_map(|key| {
        message
            .get(*key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
}

/// `content` as text: a string, or text parts concatenated; a refusal when there is no content.
fn message_text(message: &Value) -> String {
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if text.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            return refusal.to_string();
        }
    }
    text
}

fn tool_use_block(call: &Value) -> Value {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("toolu_"));
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let input = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(args)) => match serde_json::from_str::<Value>(args) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => json!({}),
        },
        // Some servers send the object itself.
        Some(obj @ Value::Object(_)) => obj.clone(),
        _ => json!({}),
    };
    json!({ "type": "tool_use", "id": id, "name": name, "input": input })
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`, the inverse of `providers::anthropic`'s table.
/// Backends that answer tool calls with `stop` (Ollama, some vLLM versions) still get `tool_use`,
/// since Anthropic clients run tools on that reason.
fn stop_reason(finish: Option<&str>, has_tool_use: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        // stop, null, and reasons added after this was written.
        _ if has_tool_use => "tool_use",
        _ => "end_turn",
    }
}

/// Token counts in Anthropic's terms: cached prompt tokens are not part of `input_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    input: u64,
    output: u64,
    cache_read: u64,
}

impl Usage {
    fn from_openai(usage: Option<&Value>) -> Usage {
        let count = |pointer: &str| {
            usage
                .and_then(|u| u.pointer(pointer))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let cache_read = count("/prompt_tokens_details/cached_tokens");
        Usage {
            input: count("/prompt_tokens").saturating_sub(cache_read),
            output: count("/completion_tokens"),
            cache_read,
        }
    }

    fn to_anthropic(self) -> Value {
        let mut usage = json!({ "input_tokens": self.input, "output_tokens": self.output });
        if self.cache_read > 0 {
            usage["cache_read_input_tokens"] = json!(self.cache_read);
        }
        usage
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Anthropic's error type names.
const ANTHROPIC_ERROR_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

fn error_type(e: &GatewayError) -> &str {
    if let Some(kind) = e.kind.as_deref() {
        if ANTHROPIC_ERROR_TYPES.contains(&kind) {
            return kind;
        }
    }
    match e.status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// GatewayError -> Anthropic error body `{"type":"error","error":{"type":..,"message":..}}`.
pub fn error_body(e: &GatewayError) -> Bytes {
    Bytes::from(error_json(e))
}

/// The error body with Anthropic's key order.
fn error_json(e: &GatewayError) -> String {
    let kind = Value::String(error_type(e).to_string());
    let message = Value::String(e.message.clone());
    format!(r#"{{"type":"error","error":{{"type":{kind},"message":{message}}}}}"#)
}

// ---------------------------------------------------------------------------------------------
// Stream: OpenAI chunks -> Anthropic events
// ---------------------------------------------------------------------------------------------

/// The content block currently open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call: its OpenAI index (when the backend sent one) and id.
    Tool {
        index: Option<u64>,
        id: String,
    },
}

/// Encodes the common stream (OpenAI chunks) as Anthropic SSE events.
///
/// Event order: `message_start`, `ping`, then per content block `content_block_start`,
/// `content_block_delta`s, `content_block_stop`; finally `message_delta` and `message_stop` (or
/// `error`). The finish reason is held until usage arrives (the usage-only chunk after it) or
/// the stream ends, so `message_delta` can carry the real token counts.
#[derive(Debug)]
pub struct AnthropicEventSink {
    model: String,
    message_id: String,
    started: bool,
    /// `message_stop` or `error` was written: nothing more is.
    ended: bool,
    open: Option<Block>,
    /// The next Anthropic block index.
    next_index: u64,
    /// Tool calls already given a block: (OpenAI index, id).
    tools_seen: Vec<(Option<u64>, String)>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    /// Usage arrived with or after the finish reason: the message can end.
    usage_final: bool,
}

impl AnthropicEventSink {
    pub fn new(model: &str, message_id: String) -> Self {
        AnthropicEventSink {
            model: model.to_string(),
            message_id,
            started: false,
            ended: false,
            open: None,
            next_index: 0,
            tools_seen: Vec::new(),
            stop_reason: None,
            usage: None,
            usage_final: false,
        }
    }

    /// Appends zero or more complete SSE events (`event: NAME\ndata: JSON\n\n`) to `out`.
    pub fn write(&mut self, item: &StreamOut, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        match item {
            StreamOut::Chunk(chunk) => self.chunk(chunk, out),
            StreamOut::Text(text) => self.chunk(&text.to_chunk(), out),
            StreamOut::Done => self.finish(out),
            StreamOut::Error(e) => self.error(e, out),
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        // Some OpenAI-compatible servers report failures as a chunk `{"error": {...}}`.
        if let Some(err) = chunk.get("error").filter(|e| e.is_object()) {
            if chunk.get("choices").is_none() {
                return self.error(&chunk_error(err), out);
            }
        }
        self.start(out);
        let choices = chunk.get("choices").and_then(Value::as_array);
        // With several choices (n > 1), only the first is an Anthropic message.
        let choice = choices.and_then(|c| {
            c.iter()
                .find(|ch| ch.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(delta) = choice.and_then(|c| c.get("delta")) {
            if let Some(thinking) = reasoning_text(delta) {
                self.ensure_open(Block::Thinking, out);
                self.delta(
                    json!({ "type": "thinking_delta", "thinking": thinking }),
                    out,
                );
            }
            if let Some(text) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.ensure_open(Block::Text, out);
                self.delta(json!({ "type": "text_delta", "text": text }), out);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls.iter().filter(|c| c.is_object()) {
                    self.tool_delta(call, out);
                }
            }
        }
        let finish = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(finish) = finish {
            let has_tool_use = !self.tools_seen.is_empty();
            self.stop_reason = Some(stop_reason(Some(finish), has_tool_use));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage::from_openai(Some(usage)));
            let usage_only = choices.is_none_or(|c| c.is_empty());
            if usage_only || finish.is_some() || self.stop_reason.is_some() {
                self.usage_final = true;
            }
        }
        if self.stop_reason.is_some() && self.usage_final {
            self.end_message(out);
        }
    }

    fn tool_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let index = call.get("index").and_then(Value::as_u64);
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let continues_open = match &self.open {
            Some(Block::Tool {
                index: open_index,
                id: open_id,
            }) => match index {
                Some(_) => index == *open_index,
                // Without an index, a new id is a new call.
                None => id.is_none_or(|id| id == open_id),
            },
            _ => false,
        };
        if !continues_open {
            let seen = self
                .tools_seen
                .iter()
                .any(|(seen_index, seen_id)| match index {
                    Some(_) => index == *seen_index,
                    None => id.is_some_and(|id| id == seen_id),
                });
            if seen {
                // A late fragment of a call whose block is closed: Anthropic cannot reopen it.
                return;
            }
            let id = id
                .map(str::to_string)
                .unwrap_or_else(|| ids::new_id("toolu_"));
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            self.tools_seen.push((index, id.clone()));
            self.open_block(
                Block::Tool {
                    index,
                    id: id.clone(),
                },
                json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                out,
            );
        }
        if let Some(args) = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.delta(
                json!({ "type": "input_json_delta", "partial_json": args }),
                out,
            );
        }
    }

    /// `message_start` and `ping`, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = format!(
            r#"{{"type":"message_start","message":{{"id":{},"type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":0,"output_tokens":0}}}}}}"#,
            Value::String(self.message_id.clone()),
            Value::String(self.model.clone()),
        );
        event(out, "message_start", &message);
        event(out, "ping", r#"{"type":"ping"}"#);
    }

    fn ensure_open(&mut self, block: Block, out: &mut Vec<u8>) {
        if self.open.as_ref() == Some(&block) {
            return;
        }
        let start = match block {
            Block::Text => json!({ "type": "text", "text": "" }),
            Block::Thinking => json!({ "type": "thinking", "thinking": "", "signature": "" }),
            Block::Tool { .. } => return,
        };
        self.open_block(block, start, out);
    }

    fn open_block(&mut self, block: Block, start: Value, out: &mut Vec<u8>) {
        self.close_block(out);
        let data = format!(
            r#"{{"type":"content_block_start","index":{},"content_block":{}}}"#,
            self.next_index,
            ordered_block(&start)
        );
        event(out, "content_block_start", &data);
        self.open = Some(block);
        self.next_index += 1;
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        let index = self.next_index.saturating_sub(1);
        let data = format!(
            r#"{{"type":"content_block_delta","index":{index},"delta":{}}}"#,
            ordered_block(&delta)
        );
        event(out, "content_block_delta", &data);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let index = self.next_index.saturating_sub(1);
            let data = format!(r#"{{"type":"content_block_stop","index":{index}}}"#);
            event(out, "content_block_stop", &data);
        }
    }

    /// Closes the open block, then `message_delta` and `message_stop`.
    fn end_message(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close_block(out);
        let has_tool_use = !self.tools_seen.is_empty();
        let reason = self
            .stop_reason
            .unwrap_or_else(|| stop_reason(None, has_tool_use));
        let usage = match self.usage {
            None => r#"{"output_tokens":0}"#.to_string(),
            Some(u) if u.cache_read > 0 => format!(
                r#"{{"input_tokens":{},"cache_read_input_tokens":{},"output_tokens":{}}}"#,
                u.input, u.cache_read, u.output
            ),
            Some(u) => format!(
                r#"{{"input_tokens":{},"output_tokens":{}}}"#,
                u.input, u.output
            ),
        };
        let data = format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}","stop_sequence":null}},"usage":{usage}}}"#
        );
        event(out, "message_delta", &data);
        event(out, "message_stop", r#"{"type":"message_stop"}"#);
        self.ended = true;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.end_message(out);
    }

    fn error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        self.close_block(out);
        event(out, "error", &error_json(e));
        self.ended = true;
    }
}

/// An error carried inside a chunk (`{"error": {"message", "type", "code"}}`).
fn chunk_error(err: &Value) -> GatewayError {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream reported an error mid-stream");
    let status = err
        .get("code")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(500);
    let mut e = GatewayError::new(status, message);
    if let Some(kind) = err.get("type").and_then(Value::as_str) {
        e = e.with_kind(kind);
    }
    e
}

/// A small JSON object with `type` first, as Anthropic writes its events (serde_json's map sorts
/// keys otherwise).
fn ordered_block(block: &Value) -> String {
    let Some(map) = block.as_object() else {
        return block.to_string();
    };
    let mut fields = Vec::with_capacity(map.len());
    if let Some(t) = map.get("type") {
        fields.push(format!(r#""type":{t}"#));
    }
    // Remaining keys in a fixed, Anthropic-like order, then any others.
    const ORDER: [&str; 8] = [
        "id",
        "name",
        "input",
        "text",
        "thinking",
        "signature",
        "partial_json",
        "citations",
    ];
    for key in ORDER {
        if let Some(v) = map.get(key) {
            fields.push(format!("{}:{v}", Value::String(key.to_string())));
        }
    }
    for (key, v) in map {
        if key != "type" && !ORDER.contains(&key.as_str()) {
            fields.push(format!("{}:{v}", Value::String(key.clone())));
        }
    }
    format!("{{{}}}", fields.join(","))
}

fn event(out: &mut Vec<u8>, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::mutations;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/anthropic_api");

    fn fixture_text(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn fixture(name: &str) -> Value {
        serde_json::from_str(&fixture_text(name))
            .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
    }

    fn translate(req: &Value) -> Value {
        request_to_openai(req).expect("request translates")
    }

    fn translate_err(req: &Value) -> GatewayError {
        request_to_openai(req).expect_err("request is rejected")
    }

    /// A minimal valid request with `extra` fields merged on top (`null` removes a field).
    fn request_with(extra: Value) -> Value {
        let mut req = json!({
            "model": "claude-fast",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hi"}],
        });
        if let (Some(req), Some(extra)) = (req.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    req.remove(k);
                } else {
                    req.insert(k.clone(), v.clone());
                }
            }
        }
        req
    }

    fn weather_tool() -> Value {
        json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}])
    }

    // --- request golden fixtures ---

    #[test]
    fn request_fixtures() {
        for name in [
            "request_text_system",
            "request_images",
            "request_tools",
            "request_tool_result_image",
        ] {
            let got = translate(&fixture(&format!("{name}.anthropic.json")));
            let want = fixture(&format!("{name}.openai.json"));
            assert_eq!(got, want, "fixture {name}:\n{got:#}");
        }
    }

    // --- request field rules ---

    #[test]
    fn tool_choice_forms() {
        let cases = [
            (json!({"type": "auto"}), json!("auto"), None),
            (json!({"type": "any"}), json!("required"), None),
            (json!({"type": "none"}), json!("none"), None),
            (
                json!({"type": "tool", "name": "get_weather"}),
                json!({"type": "function", "function": {"name": "get_weather"}}),
                None,
            ),
            (
                json!({"type": "auto", "disable_parallel_tool_use": true}),
                json!("auto"),
                Some(false),
            ),
            (
                json!({"type": "auto", "disable_parallel_tool_use": false}),
                json!("auto"),
                None,
            ),
        ];
        for (choice, expected, parallel) in cases {
            let out = translate(&request_with(
                json!({"tools": weather_tool(), "tool_choice": choice}),
            ));
            assert_eq!(out["tool_choice"], expected, "tool_choice {choice}");
            assert_eq!(
                out.get("parallel_tool_calls").and_then(Value::as_bool),
                parallel,
                "tool_choice {choice}"
            );
        }
        // No tools: nothing to choose, and OpenAI rejects a choice without tools.
        for tools in [json!([]), json!(null)] {
            let mut req = request_with(
                json!({"tool_choice": {"type": "any", "disable_parallel_tool_use": true}}),
            );
            req["tools"] = tools;
            let out = translate(&req);
            for key in ["tools", "tool_choice", "parallel_tool_calls"] {
                assert!(out.get(key).is_none(), "{key} in {out}");
            }
        }
    }

    #[test]
    fn stream_options_only_when_streaming() {
        let out = translate(&request_with(json!({"stream": true})));
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        let out = translate(&request_with(json!({"stream": false})));
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());
        assert!(translate(&request_with(json!({}))).get("stream").is_none());
    }

    #[test]
    fn empty_optional_fields_are_left_out() {
        let out = translate(&request_with(json!({
            "system": "", "stop_sequences": [], "metadata": {"user_id": null},
        })));
        assert_eq!(out["messages"], json!([{"role": "user", "content": "Hi"}]));
        for key in ["stop", "user"] {
            assert!(out.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn assistant_turn_of_only_thinking_is_skipped() {
        let out = translate(&request_with(json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
            {"role": "user", "content": "Again"},
        ]})));
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}])
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (json!({"max_tokens": null}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": "100"}), "max_tokens"),
            (json!({"model": null}), "model"),
            (json!({"model": 5}), "model"),
            (json!({"messages": null}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": ["hi"]}), "messages.0"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (json!({"messages": [{"content": "x"}]}), "messages.0.role"),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages.0.content",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages.0.content",
            ),
            (
                json!({"messages": [{"role": "user", "content": []}]}),
                "messages.0.content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}]}),
                "messages.1.content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages.0.content.0.text",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                "messages.0.content.0.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
                "messages.0.content.0.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "messages.0.content.0.source.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]}),
                "messages.0.content.0.source.media_type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}),
                "messages.0.content.0.tool_use_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]}]}),
                "messages.0.content.0.content.0.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]}),
                "messages.1.content.0.input",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]}),
                "messages.1.content.0.id",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
                "messages.0.content.0.type",
            ),
            (json!({"system": 5}), "system"),
            (json!({"system": [{"type": "image"}]}), "system.0.type"),
            (json!({"stop_sequences": "END"}), "stop_sequences"),
            (json!({"stop_sequences": ["a", 1]}), "stop_sequences.1"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_k": [1]}), "top_k"),
            (json!({"metadata": "u"}), "metadata"),
            (json!({"metadata": {"user_id": 7}}), "metadata.user_id"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"tools": {}}), "tools"),
            (json!({"tools": [{"input_schema": {}}]}), "tools.0.name"),
            (json!({"tools": [{"name": "f"}]}), "tools.0.input_schema"),
            (
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools.0.type",
            ),
            (
                json!({"tools": weather_tool(), "tool_choice": "auto"}),
                "tool_choice",
            ),
            (
                json!({"tools": weather_tool(), "tool_choice": {"type": "sometimes"}}),
                "tool_choice.type",
            ),
            (
                json!({"tools": weather_tool(), "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (
                json!({"tools": weather_tool(), "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}),
                "tool_choice.disable_parallel_tool_use",
            ),
        ];
        for (fields, param) in cases {
            let err = translate_err(&request_with(fields.clone()));
            assert_eq!(err.status, 400, "fields {fields}");
            assert_eq!(err.param.as_deref(), Some(param), "fields {fields}");
            assert!(err.message.starts_with(param), "message {}", err.message);
        }
        let err = translate_err(&request_with(json!({"max_tokens": null})));
        assert_eq!(err.message, "max_tokens: Field required");
        assert_eq!(translate_err(&json!([1])).status, 400);
    }

    // --- responses ---

    #[test]
    fn response_fixtures() {
        for name in ["response_text", "response_thinking", "response_tool_calls"] {
            let got = response_from_openai(
                &fixture(&format!("{name}.openai.json")),
                "claude-sonnet-4-5",
            )
            .expect("response translates");
            let want = fixture(&format!("{name}.anthropic.json"));
            assert_eq!(got, want, "fixture {name}:\n{got:#}");
        }
    }

    #[test]
    fn every_finish_reason() {
        let cases = [
            (json!("stop"), "end_turn"),
            (json!("length"), "max_tokens"),
            (json!("tool_calls"), "tool_use"),
            (json!("function_call"), "tool_use"),
            (json!("content_filter"), "refusal"),
            (json!(null), "end_turn"),
            (json!(""), "end_turn"),
            (json!("something_new"), "end_turn"),
        ];
        let mut body = fixture("response_text.openai.json");
        for (reason, expected) in cases {
            body["choices"][0]["finish_reason"] = reason.clone();
            let out = response_from_openai(&body, "m").expect("translates");
            assert_eq!(out["stop_reason"], expected, "finish_reason {reason}");
        }
        // Tool calls answered with `stop` (Ollama, some vLLM versions) are still `tool_use`.
        let mut body = fixture("response_tool_calls.openai.json");
        body["choices"][0]["finish_reason"] = json!("stop");
        let out = response_from_openai(&body, "m").expect("translates");
        assert_eq!(out["stop_reason"], "tool_use");
    }

    #[test]
    fn response_ids_usage_and_refusal() {
        let body = json!({
            "choices": [{"message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}],
        });
        let out = response_from_openai(&body, "m").expect("translates");
        assert!(out["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(
            out["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(out["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        // Empty content gives an empty content list, and an id that is already a message id is kept.
        let body = json!({"id": "msg_x", "choices": [{"message": {"content": ""}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 9}}});
        let out = response_from_openai(&body, "m").expect("translates");
        assert_eq!(out["id"], "msg_x");
        assert_eq!(out["content"], json!([]));
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 9})
        );
    }

    #[test]
    fn invalid_completions_are_502() {
        for body in [
            json!(null),
            json!([]),
            json!({}),
            json!({"choices": []}),
            json!({"choices": [1]}),
            json!({"choices": [{"message": "hi"}]}),
        ] {
            let err = response_from_openai(&body, "m").expect_err("rejected");
            assert_eq!(err.status, 502, "body {body}");
        }
    }

    // --- errors ---

    #[test]
    fn error_bodies() {
        let cases = [
            (GatewayError::bad_request("bad"), "invalid_request_error"),
            (GatewayError::new(401, "x"), "authentication_error"),
            (GatewayError::new(402, "x"), "billing_error"),
            (GatewayError::new(403, "x"), "permission_error"),
            (GatewayError::model_not_found("m"), "not_found_error"),
            (
                GatewayError::new(405, "x").with_kind("invalid_request_error"),
                "invalid_request_error",
            ),
            (GatewayError::new(413, "x"), "request_too_large"),
            (GatewayError::new(422, "x"), "invalid_request_error"),
            (
                GatewayError::new(429, "x").with_kind("requests"),
                "rate_limit_error",
            ),
            (
                GatewayError::new(500, "x").with_kind("server_error"),
                "api_error",
            ),
            (GatewayError::bad_upstream("x"), "api_error"),
            (GatewayError::new(503, "x"), "api_error"),
            (
                GatewayError::new(503, "x").with_kind("overloaded_error"),
                "overloaded_error",
            ),
            (GatewayError::new(504, "x"), "timeout_error"),
            (GatewayError::new(529, "x"), "overloaded_error"),
        ];
        for (e, kind) in cases {
            let body: Value = serde_json::from_slice(&error_body(&e)).expect("JSON");
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": kind, "message": e.message}}),
                "status {}",
                e.status
            );
        }
        assert_eq!(
            &error_body(&GatewayError::new(529, "Over \"loaded\""))[..],
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Over \"loaded\""}}"#
        );
    }

    // --- streams ---

    /// Reads a `*.chunks.jsonl` fixture: one chunk per line, then `DONE` or `ERROR <status> <message>`.
    fn stream_items(text: &str) -> Vec<StreamOut> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                if line == "DONE" {
                    StreamOut::Done
                } else if let Some(rest) = line.strip_prefix("ERROR ") {
                    let (status, message) = rest.split_once(' ').expect("ERROR <status> <message>");
                    StreamOut::Error(GatewayError::new(status.parse().expect("status"), message))
                } else {
                    StreamOut::Chunk(serde_json::from_str(line).expect("chunk is JSON"))
                }
            })
            .collect()
    }

    fn run_sink(items: &[StreamOut]) -> String {
        let mut sink = AnthropicEventSink::new("claude-sonnet-4-5", "msg_test".to_string());
        let mut out = Vec::new();
        for item in items {
            sink.write(item, &mut out);
        }
        String::from_utf8(out).expect("UTF-8")
    }

    /// Every event is `event: NAME\ndata: JSON\n\n` with the data's `type` equal to NAME; block
    /// indexes start, stream and stop in order; the stream ends with one terminal event.
    fn check_event_grammar(sse: &str) {
        assert!(sse.ends_with("\n\n"), "{sse}");
        let mut open: Option<u64> = None;
        let mut next = 0;
        let mut names = Vec::new();
        for raw in sse.trim_end_matches("\n\n").split("\n\n") {
            let (name_line, data_line) = raw.split_once('\n').expect("two lines");
            let name = name_line.strip_prefix("event: ").expect("event line");
            let data: Value =
                serde_json::from_str(data_line.strip_prefix("data: ").expect("data line"))
                    .expect("data is JSON");
            assert_eq!(data["type"], name, "{raw}");
            match name {
                "content_block_start" => {
                    assert_eq!(open, None, "block opened inside another: {sse}");
                    assert_eq!(data["index"], next);
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => assert_eq!(data["index"].as_u64(), open, "{sse}"),
                "content_block_stop" => {
                    assert_eq!(data["index"].as_u64(), open, "{sse}");
                    open = None;
                }
                "message_delta" | "message_stop" | "error" => {
                    assert_eq!(open, None, "block left open: {sse}")
                }
                _ => {}
            }
            names.push(name.to_string());
        }
        assert!(names.iter().filter(|n| *n == "message_start").count() <= 1);
        let last = names.last().map(String::as_str);
        assert!(matches!(last, Some("message_stop" | "error")), "{sse}");
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "message_stop" || *n == "error")
                .count(),
            1
        );
    }

    #[test]
    fn stream_fixtures() {
        let bless = std::env::var_os("BLESS_FIXTURES").is_some();
        for name in [
            "stream_text",
            "stream_parallel_tools",
            "stream_reasoning_text",
            "stream_finish_no_usage",
            "stream_error",
            "stream_empty",
        ] {
            let items = stream_items(&fixture_text(&format!("{name}.chunks.jsonl")));
            let got = run_sink(&items);
            check_event_grammar(&got);
            let path = format!("{FIXTURES}/{name}.sse");
            if bless {
                std::fs::write(&path, &got).expect("write fixture");
                continue;
            }
            assert_eq!(got, fixture_text(&format!("{name}.sse")), "fixture {name}");
        }
    }

    #[test]
    fn message_ends_when_usage_arrives_and_nothing_follows() {
        let items = stream_items(&fixture_text("stream_text.chunks.jsonl"));
        let mut sink = AnthropicEventSink::new("m", "msg_1".into());
        let mut out = Vec::new();
        // Up to and including the finish chunk: no message_delta yet.
        for item in &items[..4] {
            sink.write(item, &mut out);
        }
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(!text.contains("message_delta"), "{text}");
        assert!(!text.contains("content_block_stop"), "{text}");
        // The usage chunk ends the message.
        sink.write(&items[4], &mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let len = out.len();
        sink.write(&StreamOut::Done, &mut out);
        sink.write(&items[1], &mut out);
        sink.write(&StreamOut::Error(GatewayError::new(500, "late")), &mut out);
        assert_eq!(out.len(), len, "nothing after message_stop");
    }

    #[test]
    fn error_before_anything_and_after_error() {
        let got = run_sink(&[
            StreamOut::Error(GatewayError::new(429, "slow down")),
            StreamOut::Done,
        ]);
        assert_eq!(
            got,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}\n\n"
        );
    }

    #[test]
    fn error_object_in_a_chunk_is_an_error_event() {
        let got = run_sink(&[
            StreamOut::Chunk(json!({"choices": [{"index": 0, "delta": {"content": "a"}}]})),
            StreamOut::Chunk(
                json!({"error": {"message": "model crashed", "type": "server_error", "code": 503}}),
            ),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert!(got.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"model crashed\"}}\n\n"
        ), "{got}");
    }

    #[test]
    fn tool_calls_without_index_and_late_fragments() {
        let chunk = |calls: Value| {
            StreamOut::Chunk(json!({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}))
        };
        let got = run_sink(&[
            chunk(json!([{"id": "a", "function": {"name": "f", "arguments": "{}"}}])),
            chunk(json!([{"id": "b", "function": {"name": "g", "arguments": "{"}}])),
            chunk(json!([{"function": {"arguments": "}"}}])),
            // A fragment for a closed call is dropped rather than sent to a closed block.
            chunk(json!([{"id": "a", "function": {"arguments": "x"}}])),
            StreamOut::Chunk(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert_eq!(
            got.matches("event: content_block_start").count(),
            2,
            "{got}"
        );
        assert!(got.contains(r#""partial_json":"}""#), "{got}");
        assert!(!got.contains(r#""partial_json":"x""#), "{got}");
        // `stop` with tool calls is still `tool_use`.
        assert!(got.contains(r#""stop_reason":"tool_use""#), "{got}");
    }

    #[test]
    fn other_choices_are_ignored() {
        let got = run_sink(&[
            StreamOut::Chunk(json!({"choices": [
                {"index": 1, "delta": {"content": "second"}},
                {"index": 0, "delta": {"content": "first"}},
            ]})),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert!(got.contains("first") && !got.contains("second"), "{got}");
    }

    // --- robustness ---

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
            json!([]),
            json!([null]),
            json!({}),
            json!({"type": null}),
            json!({"type": "text"}),
            json!({"type": "image", "source": {}}),
            json!({"type": "tool_result"}),
        ]
    }

    #[test]
    fn no_input_panics() {
        let odd = odd_values();
        let mut count = 0;
        for name in [
            "request_text_system",
            "request_images",
            "request_tools",
            "request_tool_result_image",
        ] {
            for variant in mutations(&fixture(&format!("{name}.anthropic.json")), &odd) {
                let _ = request_to_openai(&variant);
                count += 1;
            }
        }
        for name in ["response_text", "response_thinking", "response_tool_calls"] {
            for variant in mutations(&fixture(&format!("{name}.openai.json")), &odd) {
                let _ = response_from_openai(&variant, "m");
                count += 1;
            }
        }
        for name in [
            "stream_text",
            "stream_parallel_tools",
            "stream_reasoning_text",
        ] {
            let items = stream_items(&fixture_text(&format!("{name}.chunks.jsonl")));
            for (i, item) in items.iter().enumerate() {
                let StreamOut::Chunk(chunk) = item else {
                    continue;
                };
                for variant in mutations(chunk, &odd) {
                    let mut mutated = items.clone();
                    mutated[i] = StreamOut::Chunk(variant);
                    check_event_grammar(&run_sink(&mutated));
                    count += 1;
                }
            }
        }
        for status in [0, 99, 200, 599, 600, u16::MAX] {
            let _ = error_body(&GatewayError::new(status, ""));
        }
        assert!(count > 2000, "only {count} variants");
    }
}
