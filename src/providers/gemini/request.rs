//! An OpenAI chat request -> a Gemini generateContent request body.
//!
//! OpenAI messages become `contents` turns (`user`/`model`), system and developer messages become
//! `systemInstruction`, sampling options become `generationConfig`, and tools become
//! `functionDeclarations`. The body is written as bytes (see `crate::providers::json_out`).

use std::collections::HashMap;

use crate::api::openai::chat::{ChatRequest, Message, Messages, PlainRole};
use crate::error::GatewayError;
use crate::providers::json_out::{trees, write_items, write_list, write_members, Item};
use crate::providers::RequestContext;
use serde_json::{json, Map, Value};

/// The model goes in the URL path, not the body (the proxy builds the path).
/// OpenAI chat request -> Gemini generateContent request body (JSON bytes).
pub fn chat_request(req: &ChatRequest, _ctx: &RequestContext) -> Result<Vec<u8>, GatewayError> {
    encode_request(req, &req.messages()?)
}

fn encode_request(req: &ChatRequest, messages: &Messages) -> Result<Vec<u8>, GatewayError> {
    let messages = translate_messages(messages)?;
    let req_size_hint = req.size_hint();
    let req = req.fields();
    let mut rest = Map::new();
    let config = generation_config(req)?;
    if !config.is_empty() {
        rest.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = tools(req.get("tools"))? {
        rest.insert("tools".into(), tools);
    }
    if let Some(tool_config) = tool_config(req.get("tool_choice"))? {
        rest.insert("toolConfig".into(), tool_config);
    }
    // The turns are written straight from the client's request, plain texts as the client
    // wrote them, rather than built as a JSON tree; the few other members are small trees.
    let mut out = Vec::with_capacity(req_size_hint + 512);
    out.extend_from_slice(b"{\"contents\":");
    write_list(&mut out, &messages.contents, |out, turn| {
        out.extend_from_slice(b"{\"role\":\"");
        out.extend_from_slice(turn.role.as_bytes());
        out.extend_from_slice(b"\",\"parts\":");
        write_items(out, &turn.parts, TEXT_PART_HEAD)?;
        out.push(b'}');
        Ok(())
    })?;
    if !messages.system.is_empty() {
        out.extend_from_slice(b",\"systemInstruction\":{\"parts\":");
        write_items(&mut out, &messages.system, TEXT_PART_HEAD)?;
        out.push(b'}');
    }
    write_members(&mut out, &rest)?;
    out.push(b'}');
    Ok(out)
}

/// A text part up to its text.
const TEXT_PART_HEAD: &[u8] = b"{\"text\":";

/// One `contents` turn; `role` is `user` or `model`. A plain text becomes a text part.
struct Turn<'m> {
    role: &'static str,
    parts: Vec<Item<'m>>,
}

// ---------------------------------------------------------------------------------------------
// Request: messages

/// The translated conversation: `systemInstruction` parts and `contents` turns.
struct Conversation<'m> {
    system: Vec<Item<'m>>,
    contents: Vec<Turn<'m>>,
    /// Gemini's functionResponse needs the function's name, but OpenAI tool messages only carry
    /// the call id: the name of every call seen so far.
    call_names: HashMap<String, String>,
}

fn translate_messages<'m>(messages: &'m Messages) -> Result<Conversation<'m>, GatewayError> {
    let messages = match messages {
        Messages::List(items) if !items.is_empty() => items,
        Messages::List(_) => {
            return Err(bad_param("`messages` must not be empty", "messages"));
        }
        Messages::NotAList(_) => return Err(bad_param("`messages` must be an array", "messages")),
        Messages::Missing => return Err(bad_param("`messages` is required", "messages")),
    };

    let mut out = Conversation {
        system: Vec::new(),
        contents: Vec::new(),
        call_names: HashMap::new(),
    };
    for (i, message) in messages.iter().enumerate() {
        match message {
            // The common case: the text goes out as the client wrote it. Gemini rejects empty
            // text parts ("empty text parameter"), so an empty string gives none.
            Message::Plain(plain) => {
                let parts = match plain.is_empty() {
                    true => Vec::new(),
                    false => vec![Item::Text(plain.content)],
                };
                match plain.role {
                    PlainRole::System => out.system.extend(parts),
                    PlainRole::User => push_turn(&mut out.contents, "user", parts),
                    PlainRole::Assistant => push_turn(&mut out.contents, "model", parts),
                }
            }
            Message::Parsed(message) => translate_parsed_message(message, i, &mut out)?,
        }
    }
    Ok(out)
}

/// Any message other than a plain one.
fn translate_parsed_message(
    message: &Value,
    i: usize,
    out: &mut Conversation,
) -> Result<(), GatewayError> {
    let param = format!("messages[{i}]");
    let message = message
        .as_object()
        .ok_or_else(|| bad_param(format!("`{param}` must be an object"), &param))?;
    let content = message.get("content");
    let content_param = format!("{param}.content");
    match message.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => {
            let parts = content_parts(content, &content_param, false)?;
            out.system.extend(trees(parts));
        }
        Some("user") => {
            let parts = content_parts(content, &content_param, true)?;
            push_turn(&mut out.contents, "user", trees(parts));
        }
        Some("assistant") => {
            let mut parts = content_parts(content, &content_param, true)?;
            parts.extend(tool_call_parts(message, &param, &mut out.call_names)?);
            push_turn(&mut out.contents, "model", trees(parts));
        }
        Some("tool") => {
            let part = tool_result_part(message, &param, &out.call_names)?;
            push_turn(&mut out.contents, "user", vec![Item::Tree(part)]);
        }
        Some(other) => {
            return Err(bad_param(
                format!("`{param}.role` `{other}` is not supported"),
                format!("{param}.role"),
            ));
        }
        None => {
            return Err(bad_param(
                format!("`{param}.role` must be a string"),
                format!("{param}.role"),
            ));
        }
    }
    Ok(())
}

/// Appends parts as a turn, merging into the previous turn when the role repeats: Gemini wants
/// user and model turns to alternate, and tool results arrive as separate OpenAI messages.
fn push_turn<'m>(contents: &mut Vec<Turn<'m>>, role: &'static str, parts: Vec<Item<'m>>) {
    // A turn without parts is rejected by Gemini; an empty message carries nothing anyway.
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(Turn { role, parts }),
    }
}

/// Message content (string, array of parts, or null) -> Gemini parts.
fn content_parts(
    content: Option<&Value>,
    param: &str,
    allow_images: bool,
) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text_part(text).into_iter().collect()),
        Some(Value::Array(items)) => {
            let mut parts = Vec::new();
            for (j, item) in items.iter().enumerate() {
                let item_param = format!("{param}[{j}]");
                parts.extend(content_item(item, &item_param, allow_images)?);
            }
            Ok(parts)
        }
        Some(_) => Err(bad_param(
            format!("`{param}` must be a string or an array of content parts"),
            param,
        )),
    }
}

/// One OpenAI content part -> at most one Gemini part.
fn content_item(
    item: &Value,
    param: &str,
    allow_images: bool,
) -> Result<Option<Value>, GatewayError> {
    match item.get("type").and_then(Value::as_str) {
        Some("text") => match item.get("text") {
            Some(Value::String(text)) => Ok(text_part(text)),
            _ => Err(bad_param(
                format!("`{param}.text` must be a string"),
                format!("{param}.text"),
            )),
        },
        Some("image_url") if allow_images => image_part(item.get("image_url"), param).map(Some),
        Some(other) => Err(bad_param(
            format!("content part type `{other}` is not supported here by Gemini"),
            param,
        )),
        None => Err(bad_param(
            format!("`{param}.type` must be a string"),
            format!("{param}.type"),
        )),
    }
}

/// Gemini rejects empty text parts ("empty text parameter"), so empty strings produce none.
fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

/// `image_url` -> `inlineData` for base64 data URIs, `fileData` for anything else.
fn image_part(image_url: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    let url_param = format!("{param}.image_url.url");
    // The object form is OpenAI's; a bare string is accepted because some clients send it.
    let url = match image_url {
        Some(Value::String(url)) => Some(url.as_str()),
        Some(Value::Object(obj)) => obj.get("url").and_then(Value::as_str),
        _ => None,
    }
    .ok_or_else(|| bad_param(format!("`{url_param}` must be a string"), &url_param))?;

    if let Some(rest) = url.strip_prefix("data:") {
        let (mime_type, data) = parse_data_uri(rest).ok_or_else(|| {
            bad_param(
                format!("`{url_param}` must be a base64 data URI (data:<mime>;base64,<data>)"),
                &url_param,
            )
        })?;
        return Ok(json!({ "inlineData": { "mimeType": mime_type, "data": data } }));
    }
    let mut file_data = Map::new();
    file_data.insert("fileUri".into(), json!(url));
    if let Some(mime_type) = mime_from_extension(url) {
        file_data.insert("mimeType".into(), json!(mime_type));
    }
    Ok(json!({ "fileData": file_data }))
}

/// `image/png;base64,XXX` (the part after `data:`) -> (`image/png`, `XXX`).
fn parse_data_uri(rest: &str) -> Option<(&str, &str)> {
    let (meta, data) = rest.split_once(',')?;
    let mut fields = meta.split(';');
    let mime_type = fields.next().filter(|m| !m.is_empty())?;
    // Gemini's inlineData is base64 only; percent-encoded data URIs would need re-encoding.
    if !fields.any(|f| f == "base64") || data.is_empty() {
        return None;
    }
    Some((mime_type, data))
}

/// A MIME type from the URL's file extension, for the types Gemini accepts as images or documents.
fn mime_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = file.rsplit_once('.')?;
    match ext.to_ascii_lowercase().as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "webp" => Some("image/webp"),
        "gif" => Some("image/gif"),
        "heic" => Some("image/heic"),
        "heif" => Some("image/heif"),
        "pdf" => Some("application/pdf"),
        _ => None,
    }
}

/// Assistant `tool_calls` -> `functionCall` parts, recording each call's name by id.
fn tool_call_parts(
    message: &Map<String, Value>,
    param: &str,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, GatewayError> {
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            let p = format!("{param}.tool_calls");
            return Err(bad_param(format!("`{p}` must be an array"), p));
        }
    };
    let mut parts = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let call_param = format!("{param}.tool_calls[{j}]");
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                let p = format!("{call_param}.function.name");
                bad_param(format!("`{p}` must be a string"), p)
            })?;
        let args = parse_arguments(
            function.and_then(|f| f.get("arguments")),
            &format!("{call_param}.function.arguments"),
        )?;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.insert(id.to_string(), name.to_string());
        }
        parts.push(json!({ "functionCall": { "name": name, "args": args } }));
    }
    Ok(parts)
}

/// OpenAI's `arguments` JSON string -> Gemini's `args` object (a Struct, so it must be an object).
fn parse_arguments(arguments: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    let invalid = || {
        bad_param(
            format!("`{param}` must be a JSON object encoded as a string"),
            param,
        )
    };
    match arguments {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(json!({})),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(parsed @ Value::Object(_)) => Ok(parsed),
            _ => Err(invalid()),
        },
        // Already decoded: some clients send the object itself.
        Some(obj @ Value::Object(_)) => Ok(obj.clone()),
        Some(_) => Err(invalid()),
    }
}

/// A `tool` message -> a `functionResponse` part named after the call it answers.
fn tool_result_part(
    message: &Map<String, Value>,
    param: &str,
    call_names: &HashMap<String, String>,
) -> Result<Value, GatewayError> {
    let id_param = format!("{param}.tool_call_id");
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_param(format!("`{id_param}` must be a string"), &id_param))?;
    let name = call_names.get(id).ok_or_else(|| {
        bad_param(
            format!("`{id_param}` `{id}` matches no earlier assistant tool call"),
            &id_param,
        )
    })?;
    let text = content_text(message.get("content"), &format!("{param}.content"))?;
    // Gemini's `response` is a Struct: a JSON object result is passed as is, anything else wrapped.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(obj @ Value::Object(_)) => obj,
        _ => json!({ "content": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
}

/// A tool message's content (string, text parts, or null) as one string.
fn content_text(content: Option<&Value>, param: &str) -> Result<String, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(items)) => {
            let mut text = String::new();
            for (j, item) in items.iter().enumerate() {
                match (
                    item.get("type").and_then(Value::as_str),
                    item.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        let p = format!("{param}[{j}]");
                        return Err(bad_param(format!("`{p}` must be a text part"), p));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(bad_param(
            format!("`{param}` must be a string or an array of text parts"),
            param,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Request: generation options and tools

/// How an OpenAI sampling field is checked before it is copied.
#[derive(Clone, Copy)]
enum Kind {
    Number,
    Integer,
}

/// OpenAI field, Gemini `generationConfig` field, and expected kind.
const COPIED_FIELDS: [(&str, &str, Kind); 7] = [
    ("temperature", "temperature", Kind::Number),
    ("top_p", "topP", Kind::Number),
    ("top_k", "topK", Kind::Integer),
    ("seed", "seed", Kind::Integer),
    ("n", "candidateCount", Kind::Integer),
    ("presence_penalty", "presencePenalty", Kind::Number),
    ("frequency_penalty", "frequencyPenalty", Kind::Number),
];

fn generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    let mut config = Map::new();
    for (from, to, kind) in COPIED_FIELDS {
        if let Some(value) = numeric_field(req, from, kind)? {
            config.insert(to.into(), value);
        }
    }
    let max_tokens = match numeric_field(req, "max_completion_tokens", Kind::Integer)? {
        Some(value) => Some(value),
        None => numeric_field(req, "max_tokens", Kind::Integer)?,
    };
    if let Some(value) = max_tokens {
        config.insert("maxOutputTokens".into(), value);
    }
    if let Some(stops) = stop_sequences(req.get("stop"))? {
        config.insert("stopSequences".into(), stops);
    }
    apply_response_format(req.get("response_format"), &mut config)?;
    Ok(config)
}

/// A numeric field copied verbatim (so `0.7` stays `0.7`); null counts as absent, as in OpenAI.
fn numeric_field(
    req: &Map<String, Value>,
    key: &str,
    kind: Kind,
) -> Result<Option<Value>, GatewayError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Number(n)) => match kind {
            Kind::Number => Ok(Some(value.clone())),
            Kind::Integer if n.is_i64() || n.is_u64() => Ok(Some(value.clone())),
            Kind::Integer => Err(bad_param(format!("`{key}` must be an integer"), key)),
        },
        Some(_) => Err(bad_param(format!("`{key}` must be a number"), key)),
    }
}

/// `stop` (a string or a list of strings) -> `stopSequences`.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let invalid = || bad_param("`stop` must be a string or an array of strings", "stop");
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Ok((!items.is_empty()).then(|| Value::Array(items.clone())))
        }
        Some(_) => Err(invalid()),
    }
}

/// `response_format` -> `responseMimeType` (and `responseSchema` for json_schema).
fn apply_response_format(
    format: Option<&Value>,
    config: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| !s.is_null());
            if let Some(schema) = schema {
                config.insert("responseSchema".into(), schema.clone());
            }
        }
        _ => {
            return Err(bad_param(
                "`response_format.type` must be `text`, `json_object` or `json_schema`",
                "response_format.type",
            ));
        }
    }
    Ok(())
}

/// `tools[].function` -> one Gemini tool holding every function declaration.
fn tools(tools: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(bad_param("`tools` must be an array", "tools")),
    };
    let mut declarations = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        declarations.push(function_declaration(tool, &format!("tools[{i}]"))?);
    }
    if declarations.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!([{ "functionDeclarations": declarations }])))
}

fn function_declaration(tool: &Value, param: &str) -> Result<Value, GatewayError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") | None => {}
        Some(other) => {
            let p = format!("{param}.type");
            return Err(bad_param(
                format!("tool type `{other}` is not supported by Gemini"),
                p,
            ));
        }
    }
    let function = tool.get("function").and_then(Value::as_object);
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            let p = format!("{param}.function.name");
            bad_param(format!("`{p}` must be a string"), p)
        })?;
    let mut declaration = Map::new();
    declaration.insert("name".into(), json!(name));
    if let Some(description) = function
        .and_then(|f| f.get("description"))
        .and_then(Value::as_str)
    {
        declaration.insert("description".into(), json!(description));
    }
    if let Some(parameters) = function
        .and_then(|f| f.get("parameters"))
        .filter(|p| !p.is_null())
    {
        declaration.insert("parameters".into(), parameters.clone());
    }
    Ok(Value::Object(declaration))
}

/// `tool_choice` -> `toolConfig.functionCallingConfig`.
fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "required" => json!({ "mode": "ANY" }),
            "none" => json!({ "mode": "NONE" }),
            _ => {
                return Err(bad_param(
                    "`tool_choice` must be `auto`, `required`, `none` or a named function",
                    "tool_choice",
                ));
            }
        },
        Some(choice) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad_param(
                        "`tool_choice` must be {\"type\":\"function\",\"function\":{\"name\":...}}",
                        "tool_choice",
                    )
                })?;
            json!({ "mode": "ANY", "allowedFunctionNames": [name] })
        }
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}

fn bad_param(message: impl Into<String>, param: impl Into<String>) -> GatewayError {
    GatewayError::bad_request(message).with_param(param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::gemini::testing::{fixture, parse};

    const REQ_CTX: RequestContext<'static> = RequestContext {
        upstream_model: "gemini-2.5-flash",
        default_max_tokens: 4096,
    };

    fn request(req: &Value) -> Value {
        let bytes =
            ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect("request translates");
        serde_json::from_slice(&bytes).expect("output is JSON")
    }

    fn request_err(req: Value) -> GatewayError {
        ChatRequest::with_tree(&req, |r| chat_request(r, &REQ_CTX))
            .expect_err("request is rejected")
    }

    fn user(text: &str) -> Value {
        json!({ "role": "user", "content": text })
    }

    // --- request fixtures -------------------------------------------------------------------

    #[test]
    fn plain_messages_translate_as_parsed_ones_do() {
        let fixtures = [
            fixture!("request_text_system", "openai", "gemini").0,
            fixture!("request_images", "openai", "gemini").0,
            fixture!("request_tools", "openai", "gemini").0,
            fixture!("request_tool_results", "openai", "gemini").0,
            fixture!("request_generation_config", "openai", "gemini").0,
        ]
        .map(|f| f.to_string());
        crate::test_support::assert_plain_path_matches(encode_request, &fixtures);
    }

    #[test]
    fn plain_texts_go_out_as_the_client_wrote_them() {
        let body = br#"{"messages":[{"role":"system","content":"x\/y"},{"role":"user","content":"caf\u00e9 \"q\""}]}"#;
        let req = ChatRequest::parse(body).expect("parses");
        let out =
            String::from_utf8(chat_request(&req, &REQ_CTX).expect("translates")).expect("UTF-8");
        assert!(
            out.contains(r#"{"role":"user","parts":[{"text":"caf\u00e9 \"q\""}]}"#),
            "{out}"
        );
        assert!(
            out.contains(r#""systemInstruction":{"parts":[{"text":"x\/y"}]}"#),
            "{out}"
        );
    }

    #[test]
    fn text_and_system_messages() {
        let (input, expected) = fixture!("request_text_system", "openai", "gemini");
        assert_eq!(request(&parse(input)), expected);
    }

    #[test]
    fn images_data_uri_and_urls() {
        let (input, expected) = fixture!("request_images", "openai", "gemini");
        assert_eq!(request(&parse(input)), expected);
    }

    #[test]
    fn tool_definitions_and_named_tool_choice() {
        let (input, expected) = fixture!("request_tools", "openai", "gemini");
        assert_eq!(request(&parse(input)), expected);
    }

    #[test]
    fn each_tool_choice_form() {
        let (input, _) = fixture!("request_tools", "openai", "gemini");
        let cases = [
            (json!("auto"), json!({ "mode": "AUTO" })),
            (json!("required"), json!({ "mode": "ANY" })),
            (json!("none"), json!({ "mode": "NONE" })),
            (
                json!({ "type": "function", "function": { "name": "get_time" } }),
                json!({ "mode": "ANY", "allowedFunctionNames": ["get_time"] }),
            ),
        ];
        for (choice, expected) in cases {
            let mut req = parse(input);
            req["tool_choice"] = choice;
            let out = request(&req);
            assert_eq!(
                out["toolConfig"],
                json!({ "functionCallingConfig": expected })
            );
        }
        let mut req = parse(input);
        req.as_object_mut().unwrap().remove("tool_choice");
        assert!(request(&req).get("toolConfig").is_none());
    }

    #[test]
    fn tool_calls_and_results_map_names_and_merge() {
        let (input, expected) = fixture!("request_tool_results", "openai", "gemini");
        assert_eq!(request(&parse(input)), expected);
    }

    #[test]
    fn generation_config_and_json_schema() {
        let (input, expected) = fixture!("request_generation_config", "openai", "gemini");
        assert_eq!(request(&parse(input)), expected);
    }

    // --- request details --------------------------------------------------------------------

    #[test]
    fn max_tokens_fallback_stop_string_and_json_object() {
        let out = request(&json!({
            "messages": [user("hi")],
            "max_tokens": 256,
            "stop": "END",
            "response_format": { "type": "json_object" },
        }));
        assert_eq!(
            out["generationConfig"],
            json!({
                "maxOutputTokens": 256,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
            })
        );
    }

    #[test]
    fn empty_generation_config_and_tools_are_omitted() {
        let out = request(&json!({
            "messages": [user("hi")],
            "temperature": null,
            "stop": [],
            "response_format": { "type": "text" },
            "tools": [],
        }));
        assert_eq!(
            out,
            json!({ "contents": [{ "role": "user", "parts": [{ "text": "hi" }] }] })
        );
    }

    #[test]
    fn tool_result_with_text_parts_and_object_arguments() {
        let out = request(&json!({
            "messages": [
                user("go"),
                { "role": "assistant", "content": "", "tool_calls": [
                    { "id": "a", "type": "function",
                      "function": { "name": "f", "arguments": { "x": 1 } } }
                ]},
                { "role": "tool", "tool_call_id": "a",
                  "content": [{ "type": "text", "text": "[1," }, { "type": "text", "text": "2]" }] },
                user("next"),
            ]
        }));
        assert_eq!(
            out["contents"],
            json!([
                { "role": "user", "parts": [{ "text": "go" }] },
                { "role": "model", "parts": [{ "functionCall": { "name": "f", "args": { "x": 1 } } }] },
                // A JSON array is not an object, so it is wrapped; the user text joins the turn.
                { "role": "user", "parts": [
                    { "functionResponse": { "name": "f", "response": { "content": "[1,2]" } } },
                    { "text": "next" },
                ]},
            ])
        );
    }

    #[test]
    fn file_uri_mime_types() {
        assert_eq!(
            mime_from_extension("gs://bucket/doc.pdf"),
            Some("application/pdf")
        );
        assert_eq!(
            mime_from_extension("https://x.test/a.webp#frag"),
            Some("image/webp")
        );
        assert_eq!(mime_from_extension("https://x.test/a.png/view"), None);
        assert_eq!(
            mime_from_extension("https://www.youtube.com/watch?v=x.png"),
            None
        );
        assert_eq!(mime_from_extension("https://x.test/archive.tar.gz"), None);
    }

    // --- request errors ---------------------------------------------------------------------

    fn assert_bad_request(err: GatewayError, param: &str) {
        assert_eq!(err.status, 400, "{err}");
        assert_eq!(err.param.as_deref(), Some(param), "{err}");
    }

    #[test]
    fn invalid_messages_are_rejected() {
        assert_bad_request(request_err(json!({})), "messages");
        assert_bad_request(request_err(json!({ "messages": "hi" })), "messages");
        assert_bad_request(request_err(json!({ "messages": [] })), "messages");
        assert_bad_request(
            request_err(json!({ "messages": [user("hi"), "hello"] })),
            "messages[1]",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "role": "function", "content": "x" }] })),
            "messages[0].role",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "content": "x" }] })),
            "messages[0].role",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "role": "user", "content": 3 }] })),
            "messages[0].content",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "role": "user",
                "content": [{ "type": "input_audio", "input_audio": {} }] }] })),
            "messages[0].content[0]",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "role": "system",
                "content": [{ "type": "image_url", "image_url": { "url": "https://x/a.png" } }] }] })),
            "messages[0].content[0]",
        );
        assert_bad_request(
            request_err(json!({ "messages": [{ "role": "user",
                "content": [{ "type": "image_url", "image_url": { "url": "data:image/png,abc" } }] }] })),
            "messages[0].content[0].image_url.url",
        );
        assert_eq!(
            request_err(json!("not an object")).status,
            400,
            "a non-object body"
        );
    }

    #[test]
    fn unparseable_tool_arguments_name_the_field() {
        for arguments in [json!("{not json"), json!("[1,2]"), json!(7)] {
            let err = request_err(json!({ "messages": [
                user("go"),
                { "role": "assistant", "tool_calls": [
                    { "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                    { "id": "b", "type": "function", "function": { "name": "g", "arguments": arguments } },
                ]},
            ]}));
            assert_bad_request(err, "messages[1].tool_calls[1].function.arguments");
        }
    }

    #[test]
    fn tool_result_without_a_matching_call_is_rejected() {
        let err = request_err(json!({ "messages": [
            user("go"),
            { "role": "tool", "tool_call_id": "call_missing", "content": "x" },
        ]}));
        assert_bad_request(err, "messages[1].tool_call_id");
        // A call that only appears later does not count.
        let err = request_err(json!({ "messages": [
            { "role": "tool", "tool_call_id": "a", "content": "x" },
            { "role": "assistant", "tool_calls": [
                { "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } }
            ]},
        ]}));
        assert_bad_request(err, "messages[0].tool_call_id");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let cases = [
            ("temperature", json!("hot"), "temperature"),
            ("top_k", json!(1.5), "top_k"),
            (
                "max_completion_tokens",
                json!("10"),
                "max_completion_tokens",
            ),
            ("stop", json!([1]), "stop"),
            (
                "response_format",
                json!({ "type": "xml" }),
                "response_format.type",
            ),
            ("tools", json!({}), "tools"),
            (
                "tools",
                json!([{ "type": "function" }]),
                "tools[0].function.name",
            ),
            ("tools", json!([{ "type": "web_search" }]), "tools[0].type"),
            ("tool_choice", json!("sometimes"), "tool_choice"),
            ("tool_choice", json!({ "type": "function" }), "tool_choice"),
        ];
        for (field, value, param) in cases {
            let mut req = json!({ "messages": [user("hi")] });
            req[field] = value;
            assert_bad_request(request_err(req), param);
        }
    }

    // --- robustness -------------------------------------------------------------------------

    #[test]
    fn odd_requests_never_panic() {
        let msg = |m: Value| json!({ "messages": [m] });
        let inputs = [
            Value::Null,
            json!(1),
            json!("x"),
            json!([]),
            json!({}),
            json!({ "messages": null }),
            json!({ "messages": {} }),
            json!({ "messages": [null] }),
            json!({ "messages": [[]] }),
            msg(json!({ "role": null })),
            msg(json!({ "role": 1, "content": "x" })),
            msg(json!({ "role": "user", "content": [null] })),
            msg(json!({ "role": "user", "content": [{ "type": 1 }] })),
            msg(json!({ "role": "user", "content": [{ "type": "text", "text": null }] })),
            msg(json!({ "role": "user", "content": [{ "type": "image_url" }] })),
            msg(json!({ "role": "user", "content": [{ "type": "image_url", "image_url": 5 }] })),
            msg(
                json!({ "role": "user", "content": [{ "type": "image_url", "image_url": "data:" }] }),
            ),
            msg(
                json!({ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "data:;base64," } }] }),
            ),
            msg(
                json!({ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "" } }] }),
            ),
            msg(
                json!({ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "." } }] }),
            ),
            msg(json!({ "role": "system", "content": {} })),
            msg(json!({ "role": "assistant", "tool_calls": 5 })),
            msg(json!({ "role": "assistant", "tool_calls": [null] })),
            msg(json!({ "role": "assistant", "tool_calls": [{ "function": null }] })),
            msg(
                json!({ "role": "assistant", "tool_calls": [{ "id": 3, "function": { "name": "f" } }] }),
            ),
            msg(json!({ "role": "tool" })),
            msg(json!({ "role": "tool", "tool_call_id": [] })),
            json!({ "messages": [user("x")], "temperature": [] }),
            json!({ "messages": [user("x")], "n": -1 }),
            json!({ "messages": [user("x")], "stop": {} }),
            json!({ "messages": [user("x")], "response_format": 1 }),
            json!({ "messages": [user("x")], "response_format": { "type": "json_schema" } }),
            json!({ "messages": [user("x")], "response_format": { "type": "json_schema", "json_schema": 1 } }),
            json!({ "messages": [user("x")], "tools": [null, 1] }),
            json!({ "messages": [user("x")], "tools": [{ "function": { "name": "f", "parameters": null } }] }),
            json!({ "messages": [user("x")], "tool_choice": 5 }),
            json!({ "messages": [user("x")], "tool_choice": { "type": "function", "function": 1 } }),
        ];
        for input in &inputs {
            let _ = ChatRequest::with_tree(input, |r| chat_request(r, &REQ_CTX));
        }
    }
}
