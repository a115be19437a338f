//! Shared by the fuzz targets: how fuzz bytes become the structured inputs
//! the host receives, and how two events are compared.
//!
//! A NATS message is written as text, the way it travels: header lines
//! (`Name: value`), an empty line, then the payload. The lines are read the
//! way the NATS client reads a message's header block (split at the first
//! `:`, value trimmed, names the client would refuse skipped), so the
//! targets see only header maps a real subscriber can be handed, and seeds
//! are readable files.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use cloudevents::Event;
use cloudevents::event::Data;

/// Splits `data` into its header block and its payload.
pub fn split(data: &[u8]) -> (String, &[u8]) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(end) => (
            String::from_utf8_lossy(&data[..end]).into_owned(),
            &data[end + 2..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// `name: value` lines, in order; lines without a `:` are skipped.
pub fn fields(block: &str) -> impl Iterator<Item = (&str, &str)> {
    block.split(['\n', '\r']).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name, value.trim()))
    })
}

/// A NATS message: its headers (as the client would build them) and payload.
pub fn message(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (block, payload) = split(data);
    let mut headers = HeaderMap::new();
    for (name, value) in fields(&block) {
        let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>())
        else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, payload)
}

/// Every attribute and extension, as text, sorted by name.
pub fn attributes(event: &Event) -> Vec<(String, String)> {
    let mut all: Vec<_> = (event.iter())
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    all.sort();
    all
}

/// The data, as a value that compares equal across content modes: data
/// that is JSON is compared as JSON, the rest as bytes. Structured mode
/// inlines JSON data, and the CloudEvents SDK reads `data_base64` as JSON
/// whenever the content type looks like JSON to it (no `datacontenttype`,
/// or one that merely starts with `application/json`), so the same bytes
/// may come back as a JSON value.
pub fn data(event: &Event) -> Option<Result<serde_json::Value, Vec<u8>>> {
    let bytes = match event.data()? {
        Data::Json(value) => return Some(Ok(value.clone())),
        Data::Binary(bytes) => bytes.clone(),
        Data::String(text) => text.clone().into_bytes(),
    };
    match serde_json::from_slice(&bytes) {
        Ok(value) => Some(Ok(value)),
        Err(_) => Some(Err(bytes)),
    }
}

/// Panics, showing both, unless `a` and `b` are the same event.
pub fn assert_same(a: &Event, b: &Event, context: &str) {
    assert_eq!(attributes(a), attributes(b), "{context}: attributes differ");
    assert_eq!(data(a), data(b), "{context}: data differs");
}

/// Headers as (lower-cased name, value) pairs, sorted, for comparisons.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            pairs.push((name.to_ascii_lowercase(), value.as_str().to_string()));
        }
    }
    pairs.sort();
    pairs
}
