//! Anthropic Messages request -> OpenAI chat request.

use crate::error::GatewayError;
use serde_json::{json, Map, Value};

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

#[cfg(test)]
mod tests {
    use super::super::test_helpers::fixture;
    use super::*;

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
}
