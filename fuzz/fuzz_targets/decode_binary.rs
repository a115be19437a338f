//! Binary mode: attributes in `ce-` headers, data in the payload. The input
//! is the message as text (header lines, an empty line, the payload; see
//! `eventhost_fuzz::message`). Whatever decodes in binary mode must encode
//! and decode back to the same event.
#![no_main]

use eventhost::event::decode::{ContentMode, decode};
use eventhost::event::encode::encode;
use eventhost_fuzz::{assert_same, message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, payload) = message(data);
    let Ok(decoded) = decode(Some(&headers), payload) else {
        return;
    };
    let mode = decoded.mode;
    let (headers, body) = encode(decoded.event.clone(), mode).expect("a decoded event encodes");
    let again = decode(Some(&headers), &body).expect("an encoded event decodes");
    assert_eq!(again.mode, mode);
    assert_same(&decoded.event, &again.event, "round trip");
    if mode == ContentMode::Binary {
        // Header values go on the wire as they are: nothing outside
        // U+0021..U+007E (the binding's rule, and no line breaks).
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            for value in values.iter().filter(|_| name.starts_with("ce-")) {
                assert!(
                    value.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "{name}: {:?}",
                    value.as_str()
                );
            }
        }
    }
});
