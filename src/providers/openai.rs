//! OpenAI and OpenAI-compatible upstreams (and Azure OpenAI, which shares the bodies): the request
//! passes through with only `model` rewritten, spliced into the client's bytes without re-serialising.

use std::ops::Range;

/// The client's body with the bytes at `model_span` (the JSON value of the top-level `model` field)
/// replaced by `model_json` (an encoded JSON string). Everything else, unknown fields included,
/// is kept byte for byte.
pub fn splice_model(body: &[u8], model_span: Range<usize>, model_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - model_span.len() + model_json.len());
    out.extend_from_slice(&body[..model_span.start]);
    out.extend_from_slice(model_json);
    out.extend_from_slice(&body[model_span.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_only_the_model_value() {
        let body = br#"{"model":"alias","messages":[],"x_unknown":{"a":[1,2]}}"#;
        let start = body.windows(7).position(|w| w == b"\"alias\"").unwrap();
        let out = splice_model(body, start..start + 7, br#""meta/llama-3""#);
        assert_eq!(
            out,
            br#"{"model":"meta/llama-3","messages":[],"x_unknown":{"a":[1,2]}}"#
        );
    }
}
