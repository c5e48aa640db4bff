//! OpenAI `/v1/embeddings` <-> Gemini `embedContent` (one input) and `batchEmbedContents`.

use crate::error::GatewayError;
use crate::providers::EmbeddingsRequest;
use base64::Engine as _;
use serde_json::{json, Value};

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
