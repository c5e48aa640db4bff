//! Gemini generateContent (AI Studio, v1beta) <-> OpenAI chat completions.
//!
//! Requests: OpenAI messages become `contents` turns (`user`/`model`), system and developer messages
//! become `systemInstruction`, sampling options become `generationConfig`, and tools become
//! `functionDeclarations`. Responses: each candidate becomes a choice; Gemini sends no tool-call ids,
//! so fresh ones are generated. Streams: `streamGenerateContent?alt=sse` events become
//! `chat.completion.chunk` objects ([`GeminiChunkSource`]).

use std::collections::HashMap;

use crate::api::openai::chat::{ChatRequest, Message, Messages, PlainRole};
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::ids::new_id;
use crate::providers::json_out::{trees, write_items, write_list, write_members, Item};
use crate::providers::openai::encode_component;
use crate::providers::{
    AuthPlacement, Dialect, EmbeddingsRequest, RequestContext, ResponseContext, UpstreamPaths,
};
use crate::stream::chunk::{ChunkSource, ChunkStamp, StreamContext, StreamOut, TextField};
use crate::stream::sse::SseEvent;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Gemini's generateContent API (AI Studio, v1beta).
pub struct Gemini;

impl Dialect for Gemini {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://generativelanguage.googleapis.com")
    }

    fn default_auth(&self) -> AuthPlacement {
        // The header, not `?key=`: query strings end up in access logs.
        AuthPlacement::Header {
            name: "x-goog-api-key".into(),
            prefix: String::new(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        None
    }

    fn paths(&self, upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        let id = encode_component(upstream_model);
        UpstreamPaths {
            chat: format!("/v1beta/models/{id}:generateContent"),
            chat_stream: Some(format!("/v1beta/models/{id}:streamGenerateContent?alt=sse")),
            embeddings: Some(format!("/v1beta/models/{id}:embedContent")),
            embeddings_batch: Some(format!("/v1beta/models/{id}:batchEmbedContents")),
            count_tokens: None,
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
        Box::new(GeminiChunkSource::new(ctx))
    }

    fn embeddings_request(
        &self,
        request: &Value,
        upstream_model: &str,
    ) -> Result<EmbeddingsRequest, GatewayError> {
        embed_request(request, upstream_model)
    }

    fn embeddings_response(
        &self,
        body: &[u8],
        model: &str,
        base64: bool,
    ) -> Result<Value, GatewayError> {
        embed_response(body, model, base64)
    }
}

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

/// Gemini generateContent response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_upstream(format!("Gemini returned a body that is not JSON: {e}"))
    })?;
    let resp = value.as_object().ok_or_else(|| {
        GatewayError::bad_upstream("Gemini returned a body that is not an object")
    })?;

    let id = match resp.get("responseId").and_then(Value::as_str) {
        Some(response_id) if !response_id.is_empty() => format!("chatcmpl-{response_id}"),
        _ => new_id("chatcmpl-"),
    };
    let model = resp
        .get("modelVersion")
        .and_then(Value::as_str)
        .unwrap_or(ctx.upstream_model);
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": choices(resp)?,
        "usage": usage(resp.get("usageMetadata")),
    }))
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

// ---------------------------------------------------------------------------------------------
// Response

fn choices(resp: &Map<String, Value>) -> Result<Vec<Value>, GatewayError> {
    let candidates = match resp.get("candidates") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(candidates)) => candidates.as_slice(),
        Some(_) => {
            return Err(GatewayError::bad_upstream(
                "Gemini `candidates` is not an array",
            ))
        }
    };
    if candidates.is_empty() {
        // A blocked prompt comes back without candidates. Clients index `choices[0]`, so answer
        // with one empty choice either way.
        let blocked = resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some_and(|r| !r.is_null());
        let finish_reason = if blocked { "content_filter" } else { "stop" };
        return Ok(vec![choice(0, Value::Null, None, None, finish_reason)]);
    }
    candidates
        .iter()
        .enumerate()
        .map(|(position, candidate)| translate_candidate(position, candidate))
        .collect()
}

fn translate_candidate(position: usize, candidate: &Value) -> Result<Value, GatewayError> {
    let candidate = candidate
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini candidate is not an object"))?;
    // Gemini omits `index` for a lone candidate.
    let index = candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64);
    let parts = candidate_parts(candidate)?;

    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for part in parts {
        if let Some(call) = part.get("functionCall") {
            tool_calls.push(tool_call(call)?);
        } else if let Some(t) = part.get("text").and_then(Value::as_str) {
            let is_thought = part.get("thought").and_then(Value::as_bool) == Some(true);
            let target = if is_thought {
                &mut reasoning
            } else {
                &mut text
            };
            target.get_or_insert_with(String::new).push_str(t);
        }
        // Other parts (inlineData, executableCode, ...) have no chat.completion equivalent.
    }
    let finish_reason = finish_reason(
        candidate.get("finishReason").and_then(Value::as_str),
        !tool_calls.is_empty(),
    );
    let content = text.map_or(Value::Null, Value::String);
    let tool_calls = (!tool_calls.is_empty()).then_some(tool_calls);
    Ok(choice(index, content, tool_calls, reasoning, finish_reason))
}

/// `content.parts`, or none when the candidate has no content (e.g. stopped by a safety filter).
fn candidate_parts(candidate: &Map<String, Value>) -> Result<&[Value], GatewayError> {
    let parts = match candidate.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::Object(content)) => content.get("parts"),
        Some(_) => {
            return Err(GatewayError::bad_upstream(
                "a Gemini candidate's `content` is not an object",
            ))
        }
    };
    match parts {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(parts)) => Ok(parts),
        Some(_) => Err(GatewayError::bad_upstream(
            "a Gemini candidate's `content.parts` is not an array",
        )),
    }
}

/// A `functionCall` part -> an OpenAI tool call with a generated id (Gemini sends none).
fn tool_call(call: &Value) -> Result<Value, GatewayError> {
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini functionCall has no name"))?;
    let arguments = match call.get("args") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(args) => args.to_string(),
    };
    Ok(json!({
        "id": new_id("call_"),
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    }))
}

/// Gemini's `finishReason` -> OpenAI's. Gemini says STOP after a function call, but clients only
/// run tools on `tool_calls`.
fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "RECITATION" | "IMAGE_SAFETY",
        ) => "content_filter",
        Some("STOP") if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn choice(
    index: u64,
    content: Value,
    tool_calls: Option<Vec<Value>>,
    reasoning: Option<String>,
    finish_reason: &str,
) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), content);
    if let Some(tool_calls) = tool_calls {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if let Some(reasoning) = reasoning {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    json!({
        "index": index,
        "message": message,
        "finish_reason": finish_reason,
        "logprobs": null,
    })
}

/// `usageMetadata` -> OpenAI usage; thinking tokens are billed as output, so they count as
/// completion tokens.
fn usage(meta: Option<&Value>) -> Value {
    let count = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let prompt = count("promptTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let completion = count("candidatesTokenCount").saturating_add(thoughts);
    let total = meta
        .and_then(|m| m.get("totalTokenCount"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| prompt.saturating_add(completion));
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": { "cached_tokens": count("cachedContentTokenCount") },
        "completion_tokens_details": { "reasoning_tokens": thoughts },
    })
}

/// OpenAI `/v1/embeddings` request -> Gemini `embedContent` (one input) or `batchEmbedContents`.
pub fn embed_request(req: &Value, upstream_model: &str) -> Result<EmbeddingsRequest, GatewayError> {
    let inputs: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                GatewayError::bad_request(
                    "Gemini embeddings take text inputs only: 'input' must be a string or a list of strings",
                )
                .with_param("input")
            })?,
        _ => {
            return Err(GatewayError::bad_request(
                "'input' must be a non-empty string or list of strings",
            )
            .with_param("input"))
        }
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(GatewayError::bad_request(
                "'encoding_format' must be \"float\" or \"base64\"",
            )
            .with_param("encoding_format"))
        }
    };
    let dimensions = req.get("dimensions").and_then(Value::as_u64);
    let content = |text: &str| {
        let mut one = json!({"content": {"parts": [{"text": text}]}});
        if let Some(d) = dimensions {
            one["outputDimensionality"] = json!(d);
        }
        one
    };
    let batch = inputs.len() > 1;
    let body = if batch {
        let model = format!("models/{upstream_model}");
        let requests: Vec<Value> = inputs
            .iter()
            .map(|t| {
                let mut one = content(t);
                one["model"] = json!(model);
                one
            })
            .collect();
        json!({ "requests": requests })
    } else {
        content(inputs[0])
    };
    Ok(EmbeddingsRequest {
        body: body.to_string().into_bytes(),
        batch,
        base64,
    })
}

/// Gemini `embedContent` / `batchEmbedContents` response -> OpenAI embedding list.
pub fn embed_response(body: &[u8], model: &str, base64: bool) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_upstream(format!("invalid JSON from Gemini: {e}")))?;
    let vectors: Vec<&Value> = if let Some(list) = value.get("embeddings").and_then(Value::as_array)
    {
        list.iter().collect()
    } else if let Some(one) = value.get("embedding") {
        vec![one]
    } else {
        return Err(GatewayError::bad_upstream(
            "Gemini answered without embeddings",
        ));
    };
    let mut data = Vec::with_capacity(vectors.len());
    for (index, v) in vectors.into_iter().enumerate() {
        let values = v
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| GatewayError::bad_upstream("Gemini embedding without values"))?;
        let embedding = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for x in values {
                let f = x.as_f64().ok_or_else(|| {
                    GatewayError::bad_upstream("Gemini embedding value is not a number")
                })? as f32;
                bytes.extend_from_slice(&f.to_le_bytes());
            }
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(values)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
}

// ---------------------------------------------------------------------------------------------
// Stream

/// Turns one Gemini `streamGenerateContent?alt=sse` stream into OpenAI `chat.completion.chunk`
/// objects.
///
/// Every event's data is a whole `GenerateContentResponse`. Gemini sends each function call whole
/// in one part, sends no call ids, and has no terminal event: the stream is complete once a
/// `finishReason` was seen and the bytes end. Only candidate 0 is translated.
#[derive(Debug)]
pub struct GeminiChunkSource {
    /// Id, model and `created` of every chunk; the id and model come from the first event.
    stamp: ChunkStamp,
    /// The latest `usageMetadata`: Gemini's counts are cumulative, so it replaces, never adds.
    usage: Option<Value>,
    /// OpenAI tool call index of the next function call, counted across the whole stream.
    next_tool: usize,
    /// A functionCall appeared somewhere in the stream: STOP then means `tool_calls`. Newer models
    /// send the calls and the STOP in different events.
    saw_function_call: bool,
    /// The finish chunk went out; the stream may end now.
    finish_sent: bool,
    /// `Done` or `Error` went out; nothing more may follow.
    finished: bool,
}

impl GeminiChunkSource {
    pub fn new(ctx: StreamContext) -> Self {
        GeminiChunkSource {
            stamp: ChunkStamp::new(ctx),
            usage: None,
            next_tool: 0,
            saw_function_call: false,
            finish_sent: false,
            finished: false,
        }
    }

    /// Sends the role chunk once, taking the id and model from the first event.
    fn start(&mut self, data: &Map<String, Value>, out: &mut Vec<StreamOut>) {
        if self.stamp.id.is_some() {
            return;
        }
        let id = match data.get("responseId").and_then(Value::as_str) {
            Some(response_id) if !response_id.is_empty() => format!("chatcmpl-{response_id}"),
            _ => new_id("chatcmpl-"),
        };
        self.stamp.id = Some(id);
        self.stamp.model = match data.get("modelVersion").and_then(Value::as_str) {
            Some(model) if !model.is_empty() => model.to_string(),
            _ => self.stamp.ctx.upstream_model.clone(),
        };
        out.push(self.stamp.role());
    }

    fn fail(&mut self, error: GatewayError, out: &mut Vec<StreamOut>) {
        self.finished = true;
        out.push(StreamOut::Error(error));
    }

    /// `{"error": {"code", "message", "status"}}` in the stream: the status is Gemini's `code`
    /// when it is an HTTP error status, else 500.
    fn error_event(&mut self, error: &Value, raw: &str, out: &mut Vec<StreamOut>) {
        let status = error
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..=599).contains(code))
            .unwrap_or(500);
        let error = crate::error::from_upstream(status, raw.as_bytes(), "");
        self.fail(error, out);
    }

    /// One `GenerateContentResponse`.
    fn response(&mut self, data: &Map<String, Value>, out: &mut Vec<StreamOut>) {
        self.start(data, out);
        if let Some(meta) = data.get("usageMetadata").filter(|m| m.is_object()) {
            self.usage = Some(meta.clone());
        }
        let candidates = match data.get("candidates") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(candidates)) => candidates.as_slice(),
            Some(_) => {
                let error = GatewayError::bad_upstream("Gemini `candidates` is not an array");
                return self.fail(error, out);
            }
        };
        // With `candidateCount` > 1 the events interleave candidates; only the first is read.
        let candidate = candidates.iter().enumerate().find_map(|(position, c)| {
            let index = c
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            (index == 0).then_some(c)
        });
        let Some(candidate) = candidate else {
            let blocked = candidates.is_empty()
                && data
                    .get("promptFeedback")
                    .and_then(|f| f.get("blockReason"))
                    .is_some_and(|r| !r.is_null());
            if blocked {
                self.finish("content_filter", out);
            }
            return;
        };
        let Some(candidate) = candidate.as_object() else {
            let error = GatewayError::bad_upstream("a Gemini candidate is not an object");
            return self.fail(error, out);
        };
        let parts = match candidate_parts(candidate) {
            Ok(parts) => parts,
            Err(error) => return self.fail(error, out),
        };
        for part in parts {
            if let Err(error) = self.part(part, out) {
                return self.fail(error, out);
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            let reason = finish_reason(Some(reason), self.saw_function_call);
            self.finish(reason, out);
        }
    }

    /// One part of candidate 0: text, thought text or a whole function call.
    fn part(&mut self, part: &Value, out: &mut Vec<StreamOut>) -> Result<(), GatewayError> {
        // Content after the finish chunk would break OpenAI's stream shape; Gemini sends none.
        if self.finish_sent {
            return Ok(());
        }
        if let Some(call) = part.get("functionCall") {
            let mut call = tool_call(call)?;
            if let Some(obj) = call.as_object_mut() {
                obj.insert("index".into(), json!(self.next_tool));
            }
            self.next_tool += 1;
            self.saw_function_call = true;
            out.push(self.stamp.delta(json!({ "tool_calls": [call] }), None));
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            // Gemini ends some streams with an empty text part carrying only a thoughtSignature.
            if text.is_empty() {
                return Ok(());
            }
            let field = if part.get("thought").and_then(Value::as_bool) == Some(true) {
                TextField::Reasoning
            } else {
                TextField::Content
            };
            out.push(self.stamp.text(field, text.to_string()));
        }
        // Other parts (inlineData, executableCode, ...) have no chunk equivalent.
        Ok(())
    }

    fn finish(&mut self, reason: &str, out: &mut Vec<StreamOut>) {
        if self.finish_sent {
            return;
        }
        self.finish_sent = true;
        out.push(self.stamp.delta(json!({}), Some(reason)));
    }
}

impl ChunkSource for GeminiChunkSource {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        let data = match serde_json::from_str::<Value>(&event.data) {
            Ok(Value::Object(data)) => data,
            _ => {
                let error = GatewayError::bad_upstream("invalid stream event from upstream");
                return self.fail(error, out);
            }
        };
        match data.get("error") {
            None | Some(Value::Null) => self.response(&data, out),
            Some(error) => self.error_event(error, &event.data, out),
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        if !self.finish_sent {
            let error = GatewayError::new(502, "upstream stream ended before its final event")
                .with_code("stream_truncated");
            return self.fail(error, out);
        }
        if self.stamp.ctx.include_usage {
            let mut chunk = self.stamp.envelope(json!([]));
            chunk.insert("usage".into(), usage(self.usage.as_ref()));
            out.push(StreamOut::Chunk(Value::Object(chunk)));
        }
        self.finished = true;
        out.push(StreamOut::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{mutations, normalize_jsonl, render, splits};
    use std::collections::HashSet;

    const REQ_CTX: RequestContext<'static> = RequestContext {
        upstream_model: "gemini-2.5-flash",
        default_max_tokens: 4096,
    };
    const RESP_CTX: ResponseContext<'static> = ResponseContext {
        upstream_model: "gemini-2.5-flash",
        created: 1_750_000_000,
    };
    /// Stands in for generated ids in expected fixtures.
    const GENERATED: &str = "<generated>";

    /// Loads an (input, expected) fixture pair from tests/fixtures/gemini/.
    macro_rules! fixture {
        ($name:literal, $from:literal, $to:literal) => {
            (
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
                    $name,
                    ".",
                    $from,
                    ".json"
                )),
                parse(include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
                    $name,
                    ".",
                    $to,
                    ".json"
                ))),
            )
        };
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("fixture is valid JSON")
    }

    fn request(req: &Value) -> Value {
        let bytes =
            ChatRequest::with_tree(req, |r| chat_request(r, &REQ_CTX)).expect("request translates");
        serde_json::from_slice(&bytes).expect("output is JSON")
    }

    fn request_err(req: Value) -> GatewayError {
        ChatRequest::with_tree(&req, |r| chat_request(r, &REQ_CTX))
            .expect_err("request is rejected")
    }

    fn response(body: &str) -> Value {
        chat_response(body.as_bytes(), &RESP_CTX).expect("response translates")
    }

    fn user(text: &str) -> Value {
        json!({ "role": "user", "content": text })
    }

    /// Checks the prefix and uniqueness of generated ids (the response id when it is generated,
    /// every tool call id) and swaps them for placeholders so the rest compares exactly.
    fn normalize_ids(mut out: Value, response_id_generated: bool) -> Value {
        if response_id_generated {
            let id = out["id"].as_str().unwrap();
            assert!(
                id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(),
                "{id}"
            );
            out["id"] = json!(format!("chatcmpl-{GENERATED}"));
        }
        let mut seen = HashSet::new();
        for choice in out["choices"].as_array_mut().unwrap() {
            let Some(Value::Array(calls)) = choice["message"].get_mut("tool_calls") else {
                continue;
            };
            for call in calls {
                let id = call["id"].as_str().unwrap().to_string();
                assert!(id.starts_with("call_") && id.len() > "call_".len(), "{id}");
                assert!(seen.insert(id), "tool call ids must be unique");
                call["id"] = json!(format!("call_{GENERATED}"));
            }
        }
        out
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

    // --- response fixtures ------------------------------------------------------------------

    #[test]
    fn text_response() {
        let (input, expected) = fixture!("response_text", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn two_function_calls_with_stop_become_tool_calls() {
        let (input, expected) = fixture!("response_function_call", "gemini", "openai");
        let first = response(input);
        let second = response(input);
        assert_ne!(first["id"], second["id"], "generated response ids repeat");
        assert_ne!(
            first["choices"][0]["message"]["tool_calls"][0]["id"],
            second["choices"][0]["message"]["tool_calls"][0]["id"],
            "generated call ids repeat across responses"
        );
        assert_eq!(normalize_ids(first, true), expected);
    }

    #[test]
    fn thought_parts_and_cached_usage() {
        let (input, expected) = fixture!("response_thinking", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn blocked_prompt() {
        let (input, expected) = fixture!("response_blocked", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn multiple_candidates_without_content() {
        let (input, expected) = fixture!("response_multiple_candidates", "gemini", "openai");
        assert_eq!(normalize_ids(response(input), true), expected);
    }

    // --- response details -------------------------------------------------------------------

    #[test]
    fn every_finish_reason() {
        let cases = [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("RECITATION", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("LANGUAGE", "stop"),
            ("OTHER", "stop"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
            ("FINISH_REASON_UNSPECIFIED", "stop"),
        ];
        for (gemini, openai) in cases {
            let body = json!({ "candidates": [{
                "content": { "role": "model", "parts": [{ "text": "x" }] },
                "finishReason": gemini,
            }]});
            let out = response(&body.to_string());
            assert_eq!(out["choices"][0]["finish_reason"], openai, "{gemini}");
        }
        let absent = response(r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#);
        assert_eq!(absent["choices"][0]["finish_reason"], "stop");
        // Only STOP is upgraded to `tool_calls`; other reasons keep their own mapping.
        let other = response(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]},"finishReason":"OTHER"}]}"#,
        );
        assert_eq!(other["choices"][0]["finish_reason"], "stop");
        // A call cut off by the token limit is incomplete: it stays `length`, not `tool_calls`.
        let cut = response(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]},"finishReason":"MAX_TOKENS"}]}"#,
        );
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        assert_eq!(
            cut["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn usage_defaults_and_fallback_total() {
        let out = response(
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"thoughtsTokenCount":2}}"#,
        );
        assert_eq!(out["usage"]["completion_tokens"], 5);
        assert_eq!(out["usage"]["total_tokens"], 10);
        assert_eq!(
            out["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        // No candidates and no block reason: still one (empty) choice for clients to read.
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["model"], "gemini-2.5-flash");
        let out = response("{}");
        assert_eq!(out["usage"]["total_tokens"], 0);
    }

    #[test]
    fn bad_upstream_bodies() {
        for body in [
            &b"not json"[..],
            b"",
            b"[]",
            b"\"text\"",
            b"null",
            br#"{"candidates":5}"#,
        ] {
            let err = chat_response(body, &RESP_CTX).expect_err("rejected");
            assert_eq!(err.status, 502);
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"));
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

    #[test]
    fn odd_responses_never_panic() {
        let deep = "[".repeat(10_000);
        let inputs: Vec<&[u8]> = vec![
            b"",
            b"\xff\xfe",
            b"{",
            deep.as_bytes(),
            b"null",
            b"{}",
            br#"{"candidates":null}"#,
            br#"{"candidates":[null]}"#,
            br#"{"candidates":[{}]}"#,
            br#"{"candidates":[{"content":5}]}"#,
            br#"{"candidates":[{"content":{"parts":5}}]}"#,
            br#"{"candidates":[{"content":{"parts":[null,1,"x",[]]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":5}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":5}}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":[1]}}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"text":5,"thought":"yes"}]}}]}"#,
            br#"{"candidates":[{"index":-1,"finishReason":5}]}"#,
            br#"{"candidates":[],"promptFeedback":5}"#,
            br#"{"usageMetadata":"x"}"#,
            br#"{"usageMetadata":{"promptTokenCount":-1,"candidatesTokenCount":1.5}}"#,
            br#"{"usageMetadata":{"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":9}}"#,
            br#"{"modelVersion":5,"responseId":[]}"#,
        ];
        for input in inputs {
            let _ = chat_response(input, &RESP_CTX);
        }
    }

    // --- streams ----------------------------------------------------------------------------

    const CREATED: u64 = 1_750_000_000;

    fn stream_ctx(include_usage: bool) -> StreamContext {
        StreamContext {
            upstream_model: "gemini-2.5-flash".into(),
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
                    "/tests/fixtures/gemini/",
                    $sse
                ))
                .as_slice(),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
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
                "stream_function_calls.sse",
                "stream_function_calls.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_function_calls.sse",
                "stream_function_calls.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_thinking.sse",
                "stream_thinking.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_max_tokens.sse",
                "stream_max_tokens.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_safety.sse",
                "stream_safety.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_prompt_blocked.sse",
                "stream_prompt_blocked.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_error.sse",
                "stream_error.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_truncated.sse",
                "stream_truncated.include_usage.openai.jsonl",
                true
            ),
        ]
    }

    /// Runs upstream bytes, delivered in `pieces`, through the SSE parser and the translator.
    fn run_pieces(pieces: &[&[u8]], include_usage: bool) -> Vec<StreamOut> {
        let mut source = GeminiChunkSource::new(stream_ctx(include_usage));
        crate::test_support::run_pieces(&mut source, pieces)
    }

    fn run_stream(bytes: &[u8], include_usage: bool) -> Vec<StreamOut> {
        run_pieces(&[bytes], include_usage)
    }

    /// Checks that every chunk carries the same `chatcmpl-` id and that tool call ids are
    /// `call_` ids unique in the stream, then swaps the generated ones for placeholders: the
    /// chunk id when `id_generated` (no responseId upstream), every tool call id always.
    fn normalize_stream(mut outs: Vec<StreamOut>, id_generated: bool) -> Vec<String> {
        let mut stream_id: Option<String> = None;
        let mut call_ids = HashSet::new();
        for out in &mut outs {
            if let StreamOut::Text(text) = out {
                *out = StreamOut::Chunk(text.to_chunk());
            }
            let StreamOut::Chunk(chunk) = out else {
                continue;
            };
            let id = chunk["id"].as_str().expect("chunk id").to_string();
            assert!(
                id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(),
                "{id}"
            );
            assert_eq!(
                stream_id.get_or_insert_with(|| id.clone()),
                &id,
                "ids differ"
            );
            if id_generated {
                chunk["id"] = json!(format!("chatcmpl-{GENERATED}"));
            }
            let calls = chunk["choices"]
                .get_mut(0)
                .and_then(|c| c["delta"].get_mut("tool_calls"))
                .and_then(Value::as_array_mut);
            for call in calls.into_iter().flatten() {
                let call_id = call["id"].as_str().expect("tool call id").to_string();
                assert!(
                    call_id.starts_with("call_") && call_id.len() > 5,
                    "{call_id}"
                );
                assert!(call_ids.insert(call_id), "tool call ids must be unique");
                call["id"] = json!(format!("call_{GENERATED}"));
            }
        }
        render(&outs)
    }

    fn id_generated(expected: &str) -> bool {
        expected.contains(&format!("chatcmpl-{GENERATED}"))
    }

    fn chunks(outs: &[StreamOut]) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| o.chunk().map(std::borrow::Cow::into_owned))
            .collect()
    }

    fn data_event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    fn feed(source: &mut GeminiChunkSource, events: &[&str]) -> Vec<StreamOut> {
        let mut out = Vec::new();
        for data in events {
            source.on_event(&data_event(data), &mut out);
        }
        out
    }

    fn finishes(outs: &[StreamOut]) -> Vec<Value> {
        chunks(outs)
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| c["finish_reason"].clone())
            .filter(|f| !f.is_null())
            .collect()
    }

    const TEXT: &str = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"index":0}],"responseId":"r1","modelVersion":"gemini-x"}"#;
    const CALL: &str = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"index":0}]}"#;
    const STOP: &str = r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}]}"#;

    #[test]
    fn stream_golden_fixtures() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            assert_eq!(
                normalize_stream(run_stream(bytes, include_usage), id_generated(expected)),
                normalize_jsonl(expected),
                "fixture {name}, include_usage {include_usage}"
            );
        }
    }

    #[test]
    fn stream_fixtures_are_gemini_wire_format() {
        for (name, bytes, _, _) in stream_fixtures() {
            let text = std::str::from_utf8(bytes).expect("UTF-8");
            assert!(text.ends_with("}\r\n\r\n"), "{name}");
            for event in text.split_terminator("\r\n\r\n") {
                let data = event.strip_prefix("data: ").expect("data: prefix");
                assert!(!data.contains('\n') && !data.contains('\r'), "{name}");
                serde_json::from_str::<Value>(data).expect("one JSON object per event");
            }
        }
    }

    #[test]
    fn stream_chunks_share_id_model_created_and_follow_openai_shape() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let outs = run_stream(bytes, include_usage);
            let chunks = chunks(&outs);
            let first = chunks.first().expect("a first chunk");
            assert_eq!(
                first["choices"][0]["delta"],
                json!({"role": "assistant", "content": ""}),
                "{name}"
            );
            for c in &chunks {
                assert_eq!(c["id"], first["id"], "{name}");
                assert_eq!(c["model"], first["model"], "{name}");
                assert_eq!(c["created"], CREATED, "{name}");
                assert_eq!(c["object"], "chat.completion.chunk", "{name}");
                let choices = c["choices"].as_array().expect("choices is a list");
                if let Some(choice) = choices.first() {
                    assert_eq!(choices.len(), 1, "{name}");
                    assert_eq!(choice["index"], 0);
                    assert!(choice["delta"].is_object());
                    assert!(choice["logprobs"].is_null());
                    assert!(choice.get("finish_reason").is_some());
                    assert_eq!(c.get("usage"), include_usage.then_some(&Value::Null));
                } else {
                    assert!(include_usage, "{name}: usage chunk without include_usage");
                    assert!(c["usage"].is_object(), "{name}: empty choices carry usage");
                }
            }
            let roles = chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"].get("role").is_some())
                .count();
            assert_eq!(roles, 1, "{name}: one role chunk");
            assert!(finishes(&outs).len() <= 1, "{name}: one finish at most");
            let terminals = outs.iter().filter(|o| o.is_terminal()).count();
            assert_eq!(terminals, 1, "{name}: one terminal output");
            assert!(outs.last().is_some_and(|o| o.is_terminal()), "{name}");
            // The usage chunk, when asked for, is the last chunk of a finished stream.
            if include_usage && outs.last() == Some(&StreamOut::Done) {
                let last = chunks.last().expect("a usage chunk");
                assert_eq!(last["choices"], json!([]), "{name}");
            }
        }
    }

    #[test]
    fn function_calls_in_earlier_events_turn_a_later_stop_into_tool_calls() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[TEXT, CALL, TEXT, CALL, TEXT, STOP]);
        source.on_end(&mut out);
        let calls: Vec<Value> = chunks(&out)
            .into_iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[1]["index"], 1);
        assert_eq!(calls[0]["function"]["arguments"], r#"{"a":1}"#);
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(finishes(&out), vec![json!("tool_calls")]);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Without any call, STOP stays `stop`; a call never upgrades other reasons.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(&mut source, &[TEXT, STOP]);
        assert_eq!(finishes(&out), vec![json!("stop")]);
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let max = STOP.replace("STOP", "MAX_TOKENS");
        let out = feed(&mut source, &[CALL, &max]);
        assert_eq!(finishes(&out), vec![json!("length")]);
    }

    #[test]
    fn generated_call_ids_differ_between_streams() {
        let (_, bytes, _, _) = stream_fixtures()[2];
        let ids = |outs: &[StreamOut]| -> Vec<Value> {
            chunks(outs)
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
                .map(|call| call["id"].clone())
                .collect()
        };
        let (a, b) = (run_stream(bytes, false), run_stream(bytes, false));
        assert_eq!(ids(&a).len(), 2);
        assert!(ids(&a).iter().all(|id| !ids(&b).contains(id)));
        assert_ne!(
            chunks(&a)[0]["id"],
            chunks(&b)[0]["id"],
            "generated stream ids"
        );
    }

    #[test]
    fn stream_every_finish_reason() {
        let cases = [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("RECITATION", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("LANGUAGE", "stop"),
            ("OTHER", "stop"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
            ("FINISH_REASON_UNSPECIFIED", "stop"),
        ];
        for (gemini, openai) in cases {
            let mut source = GeminiChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[TEXT, &STOP.replace("STOP", gemini)]);
            source.on_end(&mut out);
            assert_eq!(finishes(&out), vec![json!(openai)], "{gemini}");
            assert_eq!(out.last(), Some(&StreamOut::Done), "{gemini}");
        }
    }

    #[test]
    fn usage_is_set_not_added_and_only_sent_when_asked() {
        let with_usage = |prompt: u64, candidates: u64, thoughts: u64| {
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}},"index":0}}],"usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"thoughtsTokenCount":{thoughts},"cachedContentTokenCount":4}}}}"#
            )
        };
        let stop_usage = r#"{"candidates":[{"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":7,"thoughtsTokenCount":3,"totalTokenCount":20}}"#;
        let events = [with_usage(10, 2, 3), with_usage(10, 5, 3)];
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[&events[0], &events[1], stop_usage]);
        // A usage-only event after the finish still updates the counts.
        out.extend(feed(
            &mut source,
            &[r#"{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":8,"thoughtsTokenCount":3,"totalTokenCount":21}}"#],
        ));
        source.on_end(&mut out);
        assert_eq!(
            chunks(&out).last().map(|c| c["usage"].clone()),
            Some(json!({
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 3},
            }))
        );
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Without include_usage: no usage chunk and no `usage` key at all.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[&events[0], stop_usage]);
        source.on_end(&mut out);
        assert!(chunks(&out).iter().all(|c| c.get("usage").is_none()));
        assert!(chunks(&out).iter().all(|c| c["choices"].get(0).is_some()));
        // include_usage but Gemini sent no usage: zeros rather than a missing chunk.
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[STOP]);
        source.on_end(&mut out);
        assert_eq!(
            chunks(&out)
                .last()
                .map(|c| c["usage"]["total_tokens"].clone()),
            Some(json!(0))
        );
    }

    #[test]
    fn id_and_model_come_from_the_first_event_or_defaults() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[
                TEXT,
                r#"{"candidates":[{"content":{"parts":[{"text":"y"}]},"index":0}],"responseId":"other","modelVersion":"gemini-y"}"#,
            ],
        );
        for c in chunks(&out) {
            assert_eq!(c["id"], "chatcmpl-r1");
            assert_eq!(c["model"], "gemini-x");
        }
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(&mut source, &[CALL, TEXT]);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            assert_eq!(c["id"], chunks[0]["id"]);
            assert_eq!(c["model"], "gemini-2.5-flash");
        }
        assert_ne!(chunks[0]["id"], "chatcmpl-r1");
    }

    #[test]
    fn other_candidates_and_parts_are_skipped() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"second"}]},"index":1}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"b"}]},"index":1},{"content":{"parts":[{"text":"a"},{"inlineData":{"mimeType":"image/png","data":"AA=="}},{"executableCode":{"code":"1"}},{"text":""}]},"index":0}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"z"}]},"index":1,"finishReason":"STOP"}]}"#,
            ],
        );
        let contents: Vec<Value> = chunks(&out)
            .into_iter()
            .skip(1)
            .map(|c| c["choices"][0]["delta"]["content"].clone())
            .collect();
        assert_eq!(contents, vec![json!("a")]);
        assert!(
            finishes(&out).is_empty(),
            "candidate 1's finish is not ours"
        );
    }

    #[test]
    fn error_events_map_status_kind_and_message() {
        let cases = [
            (
                r#"{"code":503,"message":"Overloaded","status":"UNAVAILABLE"}"#,
                503,
                "overloaded_error",
            ),
            (
                r#"{"code":429,"message":"Quota","status":"RESOURCE_EXHAUSTED"}"#,
                429,
                "rate_limit_error",
            ),
            (
                r#"{"code":400,"message":"Bad","status":"INVALID_ARGUMENT"}"#,
                400,
                "invalid_request_error",
            ),
            (
                r#"{"message":"No code","status":"INTERNAL"}"#,
                500,
                "api_error",
            ),
            (r#"{"code":200,"message":"Odd code"}"#, 500, "api_error"),
            (r#"{"code":70000,"message":"Huge code"}"#, 500, "api_error"),
            (r#""plain text""#, 500, "api_error"),
        ];
        for (error, status, kind) in cases {
            let mut source = GeminiChunkSource::new(stream_ctx(true));
            let data = format!(r#"{{"error":{error}}}"#);
            let mut out = feed(&mut source, &[TEXT, &data]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("{error}: no error, got {out:?}");
            };
            assert_eq!(e.status, status, "{error}");
            assert_eq!(e.kind(), kind, "{error}");
            assert!(!e.message.is_empty());
            let n = out.len();
            out.extend(feed(&mut source, &[TEXT, STOP]));
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "{error}: output after the error");
        }
        // An error as the very first event: no role chunk, just the error.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#],
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], StreamOut::Error(e) if e.message == "Quota exceeded"));
    }

    #[test]
    fn unparseable_event_data_is_a_502_and_ends_the_stream() {
        for data in ["{\"candidates\":", "[DONE]", "", "null", "[1]", "\"x\""] {
            let mut source = GeminiChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[TEXT, data]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("data {data:?}: no error, got {out:?}");
            };
            assert_eq!(e.status, 502);
            assert_eq!(e.code.as_deref(), Some("bad_upstream_response"));
            let n = out.len();
            out.extend(feed(&mut source, &[STOP]));
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "data {data:?}: output after the error");
        }
    }

    #[test]
    fn truncated_stream_is_an_error_once_and_a_finished_one_is_not() {
        let truncated = StreamOut::Error(
            GatewayError::new(502, "upstream stream ended before its final event")
                .with_code("stream_truncated"),
        );
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = Vec::new();
        source.on_end(&mut out);
        source.on_end(&mut out);
        assert_eq!(out, vec![truncated.clone()]);
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[TEXT, CALL]);
        source.on_end(&mut out);
        assert_eq!(out.last(), Some(&truncated));
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[TEXT, STOP]);
        source.on_end(&mut out);
        source.on_end(&mut out);
        source.on_event(&data_event(TEXT), &mut out);
        assert_eq!(out.len(), 5, "role, text, finish, usage, done: {out:?}");
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn a_second_finish_and_content_after_the_finish_are_dropped() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[TEXT, STOP, TEXT, CALL, STOP]);
        source.on_end(&mut out);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(finishes(&out), vec![json!("stop")]);
    }

    #[test]
    fn blocked_prompt_without_candidates_is_content_filter() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[r#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}"#],
        );
        source.on_end(&mut out);
        assert_eq!(finishes(&out), vec![json!("content_filter")]);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Feedback without a block reason, or with candidates, is not a finish.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                r#"{"promptFeedback":{"safetyRatings":[]}}"#,
                r#"{"promptFeedback":{"blockReason":null}}"#,
            ],
        );
        source.on_end(&mut out);
        assert!(finishes(&out).is_empty());
        assert!(matches!(out.last(), Some(StreamOut::Error(e)) if e.status == 502));
    }

    #[test]
    fn any_byte_split_gives_the_same_output() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            let generated = id_generated(expected);
            let whole = normalize_stream(run_stream(bytes, include_usage), generated);
            for (n, pieces) in splits(bytes, 0x6e31, 300).iter().enumerate() {
                let got = normalize_stream(run_pieces(pieces, include_usage), generated);
                assert_eq!(
                    got,
                    whole,
                    "{name}: split {n}: {:?}",
                    pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Values that break assumptions about types and ranges.
    fn odd_values() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!([]),
            json!([null]),
            json!({}),
        ]
    }

    #[test]
    fn odd_stream_payloads_do_not_panic() {
        let odd = odd_values();
        let templates = [
            json!({"candidates":[{"content":{"parts":[{"text":"a","thought":true},{"text":"b"},{"functionCall":{"name":"f","args":{"x":[1]}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2,"thoughtsTokenCount":3,"cachedContentTokenCount":1,"totalTokenCount":6},"modelVersion":"m","responseId":"r"}),
            json!({"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}),
            json!({"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}),
            json!({"candidates":[{"content":{"parts":[{"functionCall":{"name":"g","args":{}}},{"text":"","thoughtSignature":"s"}]},"finishReason":"MAX_TOKENS","safetyRatings":[{"category":"c","probability":"LOW"}]},{"content":{"parts":[{"text":"other"}]},"index":1}],"usageMetadata":{"promptTokenCount":4}}),
        ];
        let mut count = 0;
        for template in &templates {
            for variant in mutations(template, &odd) {
                let data = variant.to_string();
                for (started, include_usage) in [(false, false), (true, true)] {
                    let mut source = GeminiChunkSource::new(stream_ctx(include_usage));
                    let mut out = Vec::new();
                    if started {
                        source.on_event(&data_event(CALL), &mut out);
                    }
                    source.on_event(&data_event(&data), &mut out);
                    source.on_event(&data_event(&data), &mut out);
                    source.on_end(&mut out);
                    let terminal = out.iter().position(|o| o.is_terminal());
                    assert_eq!(terminal, Some(out.len() - 1), "{data}");
                    count += 1;
                }
            }
        }
        for data in [
            "",
            "{",
            "\u{0}",
            "[",
            "{\"candidates\":[{\"content\":",
            "1e999",
        ] {
            let mut source = GeminiChunkSource::new(stream_ctx(true));
            let mut out = feed(&mut source, &[data]);
            source.on_end(&mut out);
            assert_eq!(out.len(), 1);
        }
        assert!(count > 1000, "only {count} variants");
    }
}
