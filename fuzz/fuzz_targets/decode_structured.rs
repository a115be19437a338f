//! Structured mode: the payload is a JSON CloudEvent, with or without a
//! `Content-Type` header. Whatever decodes must re-encode (as the runtime
//! does for `tail` and `invoke`) and decode back to the same event.
#![no_main]

use async_nats::HeaderMap;
use eventhost::event::decode::{ContentMode, decode};
use eventhost::event::encode::encode;
use eventhost_fuzz::assert_same;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let mut explicit = HeaderMap::new();
    explicit.insert(
        "Content-Type",
        "application/cloudevents+json; charset=utf-8",
    );
    for headers in [None, Some(&explicit)] {
        let Ok(decoded) = decode(headers, payload) else {
            continue;
        };
        assert_eq!(decoded.mode, ContentMode::Structured);
        let (headers, body) = encode(decoded.event.clone(), ContentMode::Structured)
            .expect("a decoded event encodes");
        let again = decode(Some(&headers), &body).expect("an encoded event decodes");
        assert_eq!(again.mode, ContentMode::Structured);
        assert_same(&decoded.event, &again.event, "structured round trip");
    }
});
