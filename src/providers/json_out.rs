//! Translated request bodies written straight into bytes.
//!
//! A translated body is a fixed shape: constant keys and roles, plain texts that are already JSON
//! string literals (`crate::api::openai::chat`), and a few small trees. Only the trees go through
//! serde_json; a derived serialisation escaped every key and role of every turn.

use crate::error::GatewayError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A content item: a plain message's text, still the client's JSON string literal, or an item
/// built as a tree.
pub enum Item<'m> {
    Text(&'m RawValue),
    Tree(Value),
}

/// Items built as trees.
pub fn trees<'m>(items: Vec<Value>) -> Vec<Item<'m>> {
    items.into_iter().map(Item::Tree).collect()
}

/// `[item,...]`, each text written as `text_head`, the literal, `}` (`text_head` opens the
/// provider's text object up to its text field, e.g. `{"text":`).
pub fn write_items(
    out: &mut Vec<u8>,
    items: &[Item],
    text_head: &[u8],
) -> Result<(), GatewayError> {
    write_list(out, items, |out, item| {
        match item {
            Item::Text(text) => {
                out.extend_from_slice(text_head);
                out.extend_from_slice(text.get().as_bytes());
                out.push(b'}');
            }
            Item::Tree(value) => write_tree(out, value)?,
        }
        Ok(())
    })
}

/// `[...]` with `write_one` writing each element.
pub fn write_list<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut write_one: impl FnMut(&mut Vec<u8>, &T) -> Result<(), GatewayError>,
) -> Result<(), GatewayError> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_one(out, item)?;
    }
    out.push(b']');
    Ok(())
}

/// `,"key":value` for every member: the rest of an object the caller opened.
pub fn write_members(out: &mut Vec<u8>, members: &Map<String, Value>) -> Result<(), GatewayError> {
    for (key, value) in members {
        out.push(b',');
        write_tree(out, key)?;
        out.push(b':');
        write_tree(out, value)?;
    }
    Ok(())
}

/// A value through serde_json.
pub fn write_tree(
    out: &mut Vec<u8>,
    value: &(impl serde::Serialize + ?Sized),
) -> Result<(), GatewayError> {
    serde_json::to_writer(out, value)
        .map_err(|e| GatewayError::new(500, format!("could not encode the upstream request: {e}")))
}
