//! The protocol-correct answers of [`Behaviour::Reply`], per path, after the auth check.
//!
//! Content is deterministic so tests can assert it exactly: the reply text is
//! `"mock reply to: <text of the last user message>"`, `created` is 1700000000, ids are fixed
//! (`chatcmpl-mock`, `msg_mock`, `mock-response`), usage is 10 prompt + 5 completion tokens, and
//! the model is the request's (Azure: the deployment; Gemini: the model in the path).
//!
//! | route | kind (auth, error shape) |
//! |---|---|
//! | `POST /openai/deployments/{d}/chat/completions?api-version=V` | Azure OpenAI |
//! | `POST /openai/deployments/{d}/embeddings?api-version=V` | Azure OpenAI |
//! | `POST {any}/chat/completions` | OpenAI |
//! | `POST {any}/v1/messages` | Anthropic |
//! | `POST {any}/v1/messages/count_tokens` | Anthropic (`{"input_tokens": 10}`) |
//! | `POST {any}/embeddings` | OpenAI |
//! | `POST {any}/models/{m}:generateContent`, `:streamGenerateContent`, `:embedContent`, `:batchEmbedContents` | Gemini |
//! | `GET {any}/models` | OpenAI (Azure under `/openai/`) |
//!
//! Anything else: 404 `{"error":"not found"}`.
//!
//! Streams: OpenAI sends a role chunk, two content chunks (`"mock reply to: "`, then the user text
//! when not empty), a finish chunk, a usage chunk (`choices: []`) when
//! `stream_options.include_usage` is true, then `data: [DONE]`. Anthropic sends message_start,
//! content_block_start, ping, one content_block_delta, content_block_stop, message_delta,
//! message_stop. Gemini (`alt=sse`) sends two chunks, the second with `finishReason` and full usage;
//! without `alt=sse` the same chunks come as one JSON array.

use serde_json::{json, Value};

use super::behaviour::Behaviour;
use super::server::Keys;
use super::RecordedRequest;
use crate::ProviderKind;

pub const CREATED: u64 = 1700000000;
pub const CHAT_ID: &str = "chatcmpl-mock";
pub const MESSAGE_ID: &str = "msg_mock";
pub const GEMINI_RESPONSE_ID: &str = "mock-response";
pub const MODEL_ID: &str = "mock-model";
/// The embedding returned for every input.
pub const EMBEDDING: [f32; 3] = [0.1, 0.2, 0.3];
const PROMPT_TOKENS: u64 = 10;
const COMPLETION_TOKENS: u64 = 5;

/// The reply text for a user message.
pub fn reply_text(user_text: &str) -> String {
    format!("mock reply to: {user_text}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    OpenaiChat,
    AzureChat(String),
    OpenaiEmbeddings,
    AzureEmbeddings(String),
    Models { azure: bool },
    AnthropicMessages,
    AnthropicCountTokens,
    GeminiGenerate(String),
    GeminiStream(String),
    GeminiEmbed(String),
    GeminiBatchEmbed(String),
}

impl Route {
    fn kind(&self) -> ProviderKind {
        match self {
            Route::OpenaiChat | Route::OpenaiEmbeddings | Route::Models { azure: false } => {
                ProviderKind::Openai
            }
            Route::AzureChat(_) | Route::AzureEmbeddings(_) | Route::Models { azure: true } => {
                ProviderKind::AzureOpenai
            }
            Route::AnthropicMessages | Route::AnthropicCountTokens => ProviderKind::Anthropic,
            Route::GeminiGenerate(_)
            | Route::GeminiStream(_)
            | Route::GeminiEmbed(_)
            | Route::GeminiBatchEmbed(_) => ProviderKind::Gemini,
        }
    }
}

fn route(method: &str, path: &str) -> Option<Route> {
    match method {
        "POST" => {
            if let Some(rest) = path.strip_prefix("/openai/deployments/") {
                let deployment =
                    |d: &str| (!d.is_empty() && !d.contains('/')).then(|| d.to_owned());
                if let Some(d) = rest.strip_suffix("/chat/completions") {
                    return deployment(d).map(Route::AzureChat);
                }
                if let Some(d) = rest.strip_suffix("/embeddings") {
                    return deployment(d).map(Route::AzureEmbeddings);
                }
                return None;
            }
            if path.ends_with("/chat/completions") {
                return Some(Route::OpenaiChat);
            }
            if path.ends_with("/v1/messages") {
                return Some(Route::AnthropicMessages);
            }
            if path.ends_with("/v1/messages/count_tokens") {
                return Some(Route::AnthropicCountTokens);
            }
            if path.ends_with("/embeddings") {
                return Some(Route::OpenaiEmbeddings);
            }
            let idx = path.rfind("/models/")?;
            let (model, action) = path[idx + "/models/".len()..].rsplit_once(':')?;
            if model.is_empty() || model.contains('/') {
                return None;
            }
            let model = percent_decode(model);
            match action {
                "generateContent" => Some(Route::GeminiGenerate(model)),
                "streamGenerateContent" => Some(Route::GeminiStream(model)),
                "embedContent" => Some(Route::GeminiEmbed(model)),
                "batchEmbedContents" => Some(Route::GeminiBatchEmbed(model)),
                _ => None,
            }
        }
        "GET" if path.ends_with("/models") => Some(Route::Models {
            azure: path.starts_with("/openai/"),
        }),
        _ => None,
    }
}

/// The protocol-correct answer to `req`. Never `Reply` or `Delay`.
pub(crate) fn reply(req: &RecordedRequest, keys: &Keys) -> Behaviour {
    let (path, _) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let Some(route) = route(&req.method, path) else {
        return Behaviour::json(404, json!({"error": "not found"}));
    };
    let kind = route.kind();
    if let Some(key) = keys.get(kind) {
        if let Err(e) = check_auth(kind, key, req) {
            return e;
        }
    }
    if kind == ProviderKind::AzureOpenai && req.query("api-version").is_none() {
        return bad_request(kind, "Missing required query parameter: api-version");
    }
    if kind == ProviderKind::Anthropic && req.header("anthropic-version").is_none() {
        return bad_request(kind, "anthropic-version: header is required");
    }
    if let Route::Models { .. } = route {
        return models_list();
    }
    let body = match serde_json::from_slice::<Value>(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request(kind, "the request body must be a JSON object"),
        Err(e) => return bad_request(kind, &format!("the request body is not valid JSON: {e}")),
    };
    let result = match route {
        Route::OpenaiChat => chat(&body, None),
        Route::AzureChat(d) => chat(&body, Some(d)),
        Route::OpenaiEmbeddings => embeddings(&body, None),
        Route::AzureEmbeddings(d) => embeddings(&body, Some(d)),
        Route::AnthropicMessages => messages(&body),
        Route::AnthropicCountTokens => count_tokens(&body),
        Route::GeminiGenerate(m) => generate(&body, &m, None),
        Route::GeminiStream(m) => {
            generate(&body, &m, Some(req.query("alt").as_deref() == Some("sse")))
        }
        Route::GeminiEmbed(_) => gemini_embed(&body),
        Route::GeminiBatchEmbed(_) => gemini_batch_embed(&body),
        Route::Models { .. } => Ok(models_list()),
    };
    result.unwrap_or_else(|msg| bad_request(kind, &msg))
}

fn models_list() -> Behaviour {
    Behaviour::json(
        200,
        json!({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "mock"}
        ]}),
    )
}

fn check_auth(kind: ProviderKind, key: &str, req: &RecordedRequest) -> Result<(), Behaviour> {
    let (given, what) = match kind {
        ProviderKind::Openai => (
            req.header("authorization")
                .map(|v| v.strip_prefix("Bearer ").unwrap_or("")),
            "an Authorization: Bearer header",
        ),
        ProviderKind::AzureOpenai => (req.header("api-key"), "an api-key header"),
        ProviderKind::Anthropic => (req.header("x-api-key"), "an x-api-key header"),
        ProviderKind::Gemini => {
            let header = req.header("x-goog-api-key");
            if header == Some(key) || req.query("key").as_deref() == Some(key) {
                return Ok(());
            }
            (header, "an x-goog-api-key header or key query parameter")
        }
    };
    if given == Some(key) {
        return Ok(());
    }
    let message = match given {
        None => format!("No API key provided: send {what}."),
        Some(_) => "Incorrect API key provided.".to_owned(),
    };
    let body = match kind {
        ProviderKind::Openai | ProviderKind::AzureOpenai => json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null,
            "code": "invalid_api_key"}}),
        ProviderKind::Anthropic => json!({"type": "error", "error": {
            "type": "authentication_error", "message": message}}),
        ProviderKind::Gemini => json!({"error": {
            "code": 401, "message": message, "status": "UNAUTHENTICATED"}}),
    };
    Err(Behaviour::json(401, body))
}

/// A 400 in `kind`'s error shape.
pub fn bad_request(kind: ProviderKind, message: &str) -> Behaviour {
    let body = match kind {
        ProviderKind::Openai | ProviderKind::AzureOpenai => json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null, "code": null}}),
        ProviderKind::Anthropic => json!({"type": "error", "error": {
            "type": "invalid_request_error", "message": message}}),
        ProviderKind::Gemini => json!({"error": {
            "code": 400, "message": message, "status": "INVALID_ARGUMENT"}}),
    };
    Behaviour::json(400, body)
}

/// Text of a content that is a string or a list of `{"type":"text","text":..}` parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Text of the last message with role `user` (OpenAI and Anthropic shapes).
fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

fn model_field(body: &Value) -> Option<String> {
    body.get("model").and_then(Value::as_str).map(str::to_owned)
}

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

fn sse_events(items: impl IntoIterator<Item = Value>) -> Vec<String> {
    items
        .into_iter()
        .map(|v| format!("data: {v}\n\n"))
        .collect()
}

fn stream_of(events: Vec<String>) -> Behaviour {
    Behaviour::Sse {
        events,
        interval: std::time::Duration::ZERO,
        hold_after: None,
    }
}

fn openai_usage() -> Value {
    json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
           "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS})
}

fn chat(body: &Value, deployment: Option<String>) -> Result<Behaviour, String> {
    let model = match deployment {
        Some(d) => d,
        None => model_field(body).ok_or("you must provide a model parameter")?,
    };
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("'messages' is a required property and must be an array")?;
    let user = last_user_text(messages);
    if !is_stream(body) {
        return Ok(Behaviour::json(
            200,
            json!({
                "id": CHAT_ID, "object": "chat.completion", "created": CREATED, "model": model,
                "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": reply_text(&user)},
                    "logprobs": null, "finish_reason": "stop"}],
                "usage": openai_usage(),
            }),
        ));
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut chunks = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": reply_text("")}), Value::Null),
    ];
    if !user.is_empty() {
        chunks.push(chunk(json!({"content": user}), Value::Null));
    }
    chunks.push(chunk(json!({}), json!("stop")));
    if include_usage {
        chunks.push(json!({
            "id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [], "usage": openai_usage(),
        }));
    }
    let mut events = sse_events(chunks);
    events.push("data: [DONE]\n\n".to_owned());
    Ok(stream_of(events))
}

/// Number of inputs in an OpenAI embeddings `input`.
fn embedding_inputs(input: &Value) -> Option<usize> {
    match input {
        Value::String(_) => Some(1),
        // A list of token ids is one input; a list of strings or of token lists is many.
        Value::Array(a) if a.first().is_some_and(Value::is_number) => Some(1),
        Value::Array(a) if !a.is_empty() => Some(a.len()),
        _ => None,
    }
}

fn embeddings(body: &Value, deployment: Option<String>) -> Result<Behaviour, String> {
    let model = match deployment {
        Some(d) => d,
        None => model_field(body).ok_or("you must provide a model parameter")?,
    };
    let n = body
        .get("input")
        .and_then(embedding_inputs)
        .ok_or("'input' must be a non-empty string or array")?;
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let embedding = if base64 {
        let bytes: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64_encode(&bytes))
    } else {
        json!(EMBEDDING)
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": embedding}))
        .collect();
    Ok(Behaviour::json(
        200,
        json!({"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}}),
    ))
}

fn messages(body: &Value) -> Result<Behaviour, String> {
    let model = model_field(body).ok_or("model: Field required")?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    match body.get("max_tokens").and_then(Value::as_u64) {
        Some(n) if n > 0 => {}
        _ => return Err("max_tokens: Field required (a positive integer)".to_owned()),
    }
    let text = reply_text(&last_user_text(messages));
    if !is_stream(body) {
        return Ok(Behaviour::json(
            200,
            json!({
                "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
            }),
        ));
    }
    let events = [
        json!({"type": "message_start", "message": {
            "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": text}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": COMPLETION_TOKENS}}),
        json!({"type": "message_stop"}),
    ];
    let events = events
        .into_iter()
        .map(|e| {
            let name = e["type"].as_str().unwrap_or("").to_owned();
            format!("event: {name}\ndata: {e}\n\n")
        })
        .collect();
    Ok(stream_of(events))
}

/// Anthropic's token count of a Messages request (model and messages required, as Anthropic's
/// API does; no `max_tokens`): the prompt tokens every reply's usage reports.
fn count_tokens(body: &Value) -> Result<Behaviour, String> {
    model_field(body).ok_or("model: Field required")?;
    body.get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    Ok(Behaviour::json(200, json!({"input_tokens": PROMPT_TOKENS})))
}

/// Text of the last Gemini content with role `user` (or no role).
fn gemini_last_user_text(contents: &[Value]) -> String {
    contents
        .iter()
        .rev()
        .find(|c| matches!(c.get("role").and_then(Value::as_str), None | Some("user")))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// `stream`: None = not streaming; Some(true) = SSE; Some(false) = one JSON array.
fn generate(body: &Value, model: &str, stream: Option<bool>) -> Result<Behaviour, String> {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let user = gemini_last_user_text(contents);
    let candidate = |text: &str, finish: bool| {
        let mut c = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if finish {
            c["finishReason"] = json!("STOP");
        }
        c
    };
    let full_usage = json!({"promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": COMPLETION_TOKENS,
        "totalTokenCount": PROMPT_TOKENS + COMPLETION_TOKENS});
    let response = |cand: Value, usage: Value| {
        json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": model,
               "responseId": GEMINI_RESPONSE_ID})
    };
    let Some(sse) = stream else {
        return Ok(Behaviour::json(
            200,
            response(candidate(&reply_text(&user), true), full_usage),
        ));
    };
    let chunks = vec![
        response(
            candidate(&reply_text(""), false),
            json!({"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS}),
        ),
        response(candidate(&user, true), full_usage),
    ];
    if sse {
        Ok(stream_of(sse_events(chunks)))
    } else {
        Ok(Behaviour::json(200, Value::Array(chunks)))
    }
}

fn gemini_embedding() -> Value {
    json!({"values": EMBEDDING})
}

fn gemini_embed(body: &Value) -> Result<Behaviour, String> {
    if !body.get("content").is_some_and(Value::is_object) {
        return Err("* EmbedContentRequest.content: content is not specified".to_owned());
    }
    Ok(Behaviour::json(
        200,
        json!({"embedding": gemini_embedding()}),
    ))
}

fn gemini_batch_embed(body: &Value) -> Result<Behaviour, String> {
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("* BatchEmbedContentsRequest.requests: requests is not specified")?;
    let embeddings: Vec<Value> = requests.iter().map(|_| gemini_embedding()).collect();
    Ok(Behaviour::json(200, json!({"embeddings": embeddings})))
}

/// The percent-decoded value of query parameter `name` in `path` (which may hold no query).
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(query_param("/p?a=1&key=k%3D", "key").as_deref(), Some("k="));
        assert_eq!(query_param("/p", "key"), None);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("POST", "/v1/chat/completions"),
            Some(Route::OpenaiChat)
        );
        assert_eq!(
            route("POST", "/openai/deployments/gpt/chat/completions"),
            Some(Route::AzureChat("gpt".into()))
        );
        assert_eq!(
            route(
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Some(Route::GeminiStream("gemini-2.0-flash".into()))
        );
        assert_eq!(
            route("POST", "/v1/messages/count_tokens"),
            Some(Route::AnthropicCountTokens)
        );
        assert_eq!(route("POST", "/v1beta/models/x:nope"), None);
        assert_eq!(route("GET", "/v1/chat/completions"), None);
        assert_eq!(
            route("GET", "/v1/models"),
            Some(Route::Models { azure: false })
        );
    }
}
