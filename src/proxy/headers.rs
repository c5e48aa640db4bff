//! Removing headers by name from Pingora's request and response heads.
//!
//! A request carries a dozen headers and the gateway strips twenty names. Looking each name up
//! in the map parses and hashes all twenty on every request; scanning the few headers present
//! against a `match` on their (already lowercase) names does a handful of compares instead.

use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

/// A Pingora head whose headers can be read and removed (removal keeps Pingora's map of the
/// original header-name case in step).
pub trait HeadersOf {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
}

impl HeadersOf for RequestHeader {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl HeadersOf for ResponseHeader {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl HeadersOf for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// Edits an answer's head through its `http` parts, with room reserved for `additions` more
/// headers. Pingora's `insert_header` parses each name, copies it into a second map that keeps
/// the upstream's spelling of names, and hashes it into both (about 1,900 instructions a header);
/// a constant name ([`set`]) is one hash into one map. The upstream's spelling goes with that
/// map: names are case-insensitive, HTTP/2 sends them lowercase anyway, and HTTP/1 clients get
/// the standard names in title case and the others lowercase.
pub fn edit_answer_head<R>(
    resp: &mut ResponseHeader,
    additions: usize,
    edit: impl FnOnce(&mut Parts) -> R,
) -> R {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = Parts::from(std::mem::replace(resp, placeholder));
    // Past `http`'s maximum of 32,768 headers the inserts below fail alone.
    let _ = parts.headers.try_reserve(additions);
    let result = edit(&mut parts);
    *resp = ResponseHeader::from(parts);
    result
}

/// Sets `name` to `value` (replacing what was there). Fails only past `http`'s maximum number of
/// headers, which Pingora's own header limits keep any head far below: the header is then left
/// out.
pub fn set(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let _ = headers.try_insert(name, value);
}

/// Removes every header whose lowercase name `doomed` picks, with all its values.
pub fn strip(head: &mut impl HeadersOf, doomed: impl Fn(&str) -> bool) {
    // A removal takes every value of its name, so there are at most as many scans as names
    // `doomed` picks, whatever the client sends.
    while let Some(name) = head.headers().keys().find(|n| doomed(n.as_str())).cloned() {
        head.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str) -> bool {
        matches!(name, "authorization" | "x-api-key" | "cookie")
    }

    #[test]
    fn removes_every_value_of_each_picked_name_and_keeps_the_rest() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.append_header("Authorization", "Bearer a").unwrap();
        req.append_header("X-Api-Key", "k").unwrap();
        req.append_header("cookie", "a=1").unwrap();
        req.append_header("Cookie", "b=2").unwrap();
        req.append_header("Content-Type", "application/json")
            .unwrap();
        req.append_header("X-Trace", "t").unwrap();
        strip(&mut req, secret);
        let mut left: Vec<&str> = req.headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-trace"]);
        // What goes on the wire keeps the client's spelling (removal may reorder, as
        // `HeaderMap` does).
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        let mut lines: Vec<&str> = wire.split_terminator("\r\n").collect();
        lines.sort_unstable();
        assert_eq!(lines, ["Content-Type: application/json", "X-Trace: t"]);
    }

    #[test]
    fn a_response_head_with_nothing_to_remove_is_untouched() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("content-type", "application/json")
            .unwrap();
        strip(&mut resp, secret);
        assert_eq!(resp.headers.len(), 1);
    }
}
