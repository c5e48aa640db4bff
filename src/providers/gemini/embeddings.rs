//! OpenAI `/v1/embeddings` <-> Gemini `embedContent` (one input) and `batchEmbedContents`.

use super::wire::{EmbedContentResponse, Field};
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
    let resp = serde_json::from_slice::<Field<EmbedContentResponse>>(body)
        .map_err(|e| GatewayError::bad_upstream(format!("invalid JSON from Gemini: {e}")))?;
    // A body that is not an object has neither member.
    let resp = match resp {
        Field::Present(resp) => resp,
        Field::Absent | Field::Null | Field::Wrong => EmbedContentResponse::default(),
    };
    let vectors = match (resp.embeddings, resp.embedding) {
        (Field::Present(list), _) => list,
        (_, Field::Absent) => {
            return Err(GatewayError::bad_upstream(
                "Gemini answered without embeddings",
            ))
        }
        // Even a null `embedding`, which has no values.
        (_, one) => vec![one],
    };
    let mut data = Vec::with_capacity(vectors.len());
    for (index, vector) in vectors.into_iter().enumerate() {
        let Some(values) = vector.ok().and_then(|vector| vector.values.ok()) else {
            return Err(GatewayError::bad_upstream(
                "Gemini embedding without values",
            ));
        };
        let embedding = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for x in &values {
                let f = x.as_f64().ok_or_else(|| {
                    GatewayError::bad_upstream("Gemini embedding value is not a number")
                })? as f32;
                bytes.extend_from_slice(&f.to_le_bytes());
            }
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            // The values as read: an integer stays an integer.
            Value::Array(values)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(req: Value) -> (Value, bool, bool) {
        let out = embed_request(&req, "text-embedding-004").expect("request translates");
        let body = serde_json::from_slice(&out.body).expect("body is JSON");
        (body, out.batch, out.base64)
    }

    fn response_err(body: &str) -> GatewayError {
        embed_response(body.as_bytes(), "embed", false).expect_err("answer is rejected")
    }

    #[test]
    fn one_input_or_a_batch() {
        let (body, batch, base64) = request(json!({"input": "hi", "dimensions": 8}));
        assert_eq!(
            body,
            json!({"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 8})
        );
        assert!(!batch && !base64);
        let (body, batch, base64) =
            request(json!({"input": ["a", "b"], "encoding_format": "base64"}));
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}},
            ]})
        );
        assert!(batch && base64);
    }

    #[test]
    fn invalid_requests_name_the_field() {
        for (req, param) in [
            (json!({}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": [1, 2]}), "input"),
            (
                json!({"input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
        ] {
            let err = embed_request(&req, "m").expect_err("request is rejected");
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some(param)),
                "{req}"
            );
        }
    }

    #[test]
    fn values_pass_as_read_or_as_base64_floats() {
        let body = br#"{"embedding":{"values":[0.5,-2,1e2]}}"#;
        let out = embed_response(body, "embed", false).expect("answer translates");
        assert_eq!(
            out,
            json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -2, 100.0]}],
                "model": "embed",
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            })
        );
        let out = embed_response(body, "embed", true).expect("answer translates");
        let bytes: Vec<u8> = [0.5f32, -2.0, 100.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(out["data"][0]["embedding"], json!(encoded));
        let batch = br#"{"embeddings":[{"values":[1]},{"values":[2]}]}"#;
        let out = embed_response(batch, "embed", false).expect("answer translates");
        assert_eq!(
            out["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [2]})
        );
    }

    #[test]
    fn bad_upstream_answers() {
        for (body, message) in [
            ("{}", "Gemini answered without embeddings"),
            ("[]", "Gemini answered without embeddings"),
            (r#"{"embeddings":5}"#, "Gemini answered without embeddings"),
            (r#"{"embedding":null}"#, "Gemini embedding without values"),
            (
                r#"{"embeddings":[{"values":[1]},{}]}"#,
                "Gemini embedding without values",
            ),
            (
                r#"{"embedding":{"values":{}}}"#,
                "Gemini embedding without values",
            ),
        ] {
            let err = response_err(body);
            assert_eq!(err.status, 502, "{body}");
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"), "{body}");
            assert_eq!(err.message, message, "{body}");
        }
        assert!(response_err("{")
            .message
            .starts_with("invalid JSON from Gemini: "));
        let err = embed_response(br#"{"embedding":{"values":["x"]}}"#, "embed", true)
            .expect_err("a value that is not a number has no base64 form");
        assert_eq!(err.message, "Gemini embedding value is not a number");
    }
}
