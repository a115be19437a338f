//! Outbound half of the CloudEvents NATS protocol binding: a
//! [`cloudevents::Event`] becomes NATS headers and a payload.
//!
//! We emit the specification's form (binding 1.0.3 for binary mode):
//! `ce-<name>` headers with percent-encoded values and `ce-datacontenttype`;
//! structured mode is a JSON body with `Content-Type:
//! application/cloudevents+json`.

use async_nats::HeaderMap;
use bytes::Bytes;
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::event::decode::ContentMode;

pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Characters the binding requires to be percent-encoded in header values:
/// space, `"`, `%` and anything outside U+0021–U+007E (controls and non-ASCII
/// are always encoded by `utf8_percent_encode`).
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Why an event could not be encoded: only a structured event's JSON can
/// fail (an extension value serde cannot write, say).
#[derive(Debug, thiserror::Error)]
#[error("serialising a structured CloudEvent")]
pub struct EncodeError(#[from] serde_json::Error);

/// Encodes `event` in `mode`. Adds no transport headers (like `Nats-Msg-Id`);
/// callers add those.
pub fn encode(event: Event, mode: ContentMode) -> Result<(HeaderMap, Bytes), EncodeError> {
    match mode {
        ContentMode::Structured => encode_structured(event),
        ContentMode::Binary => Ok(encode_binary(event)),
    }
}

/// `value` percent-encoded as the binding requires of `ce-` header values.
pub fn header_value(value: &str) -> String {
    utf8_percent_encode(value, HEADER_VALUE).to_string()
}

fn encode_structured(mut event: Event) -> Result<(HeaderMap, Bytes), EncodeError> {
    // JSON data travels as JSON, not base64, so consumers can read it.
    if let Some(Data::Binary(bytes)) = event.data()
        && event.datacontenttype().is_some_and(read_back_as_json)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
    {
        event.set_data_unchecked(Data::Json(value));
    }
    let body = serde_json::to_vec(&event)?;
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", STRUCTURED_CONTENT_TYPE);
    Ok((headers, Bytes::from(body)))
}

fn encode_binary(mut event: Event) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in event.iter() {
        headers.insert(
            format!("ce-{name}").as_str(),
            header_value(&value.to_string()).as_str(),
        );
    }
    let (_, _, data) = event.take_data();
    let payload = match data {
        None => Bytes::new(),
        Some(Data::Binary(bytes)) => Bytes::from(bytes),
        Some(Data::String(s)) => Bytes::from(s),
        Some(Data::Json(value)) => Bytes::from(value.to_string()),
    };
    (headers, payload)
}

/// Whether JSON data inlined in a structured event with this content type
/// is read back as JSON: by our rule, and by the CloudEvents SDK's, which is
/// case-sensitive and keeps parameters. Inlining it where the SDK expects a
/// string would make an event no SDK consumer (nor this runtime) can
/// decode; such data travels as `data_base64` instead.
fn read_back_as_json(content_type: &str) -> bool {
    let sdk = content_type.starts_with("application/json")
        || content_type.starts_with("text/json")
        || content_type.ends_with("+json");
    sdk && is_json(content_type)
}

/// `application/json`, `text/json` and any `+json` suffix.
pub fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode::decode;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn sample() -> Event {
        EventBuilderV10::new()
            .id("e-1")
            .source("/test")
            .ty("com.example.t")
            .subject("needs \"encoding\" 100% ✓")
            .time("2026-11-22T10:00:00Z")
            .extension("correlationid", "c-1")
            .data("application/json", Data::Binary(br#"{"a":1}"#.to_vec()))
            .build()
            .unwrap()
    }

    #[test]
    fn binary_round_trips_and_encodes_header_values() {
        let event = sample();
        let (headers, payload) = encode(event.clone(), ContentMode::Binary).unwrap();
        let subject = headers.get("ce-subject").unwrap().as_str();
        assert_eq!(subject, "needs%20%22encoding%22%20100%25%20%E2%9C%93");
        assert!(subject.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(
            headers.get("ce-datacontenttype").unwrap().as_str(),
            "application/json"
        );
        assert_eq!(&payload[..], br#"{"a":1}"#);
        let back = decode(Some(&headers), &payload).unwrap();
        assert_eq!(back.mode, ContentMode::Binary);
        assert_eq!(back.event, event);
    }

    #[test]
    fn structured_round_trips_with_json_data_inline() {
        let event = sample();
        let (headers, payload) = encode(event.clone(), ContentMode::Structured).unwrap();
        assert_eq!(
            headers.get("Content-Type").unwrap().as_str(),
            STRUCTURED_CONTENT_TYPE
        );
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["data"]["a"], 1);
        let back = decode(Some(&headers), &payload).unwrap();
        assert_eq!(back.mode, ContentMode::Structured);
        assert_eq!(back.event.id(), "e-1");
        assert_eq!(back.event.subject(), event.subject());
    }

    /// Found by the emitted_event fuzz target: inlining JSON data parses and
    /// writes it again, and the default parser's rounding could change a
    /// number on the way (3333…330, 43 digits, came back one unit off in
    /// the last place). The numbers a consumer reads must be the guest's.
    #[test]
    fn inlined_json_data_keeps_the_value_of_every_number() {
        let bytes = format!("[{}0,2,3,0.1,1e-300,123456789.123456789]", "3".repeat(42));
        let event = EventBuilderV10::new()
            .id("e-1")
            .source("/test")
            .ty("t")
            .data("application/json", Data::Binary(bytes.clone().into_bytes()))
            .build()
            .unwrap();
        let (headers, payload) = encode(event, ContentMode::Structured).unwrap();
        let back = decode(Some(&headers), &payload).unwrap();
        let Some(Data::Json(value)) = back.event.data() else {
            panic!("not inlined: {:?}", back.event.data())
        };
        let sent: serde_json::Value = serde_json::from_slice(bytes.as_bytes()).unwrap();
        assert_eq!(value, &sent);
        // And the value is the nearest double to the text, as any correct
        // JSON reader computes it.
        assert_eq!(
            value[0].as_f64(),
            Some(bytes[1..44].parse::<f64>().unwrap())
        );
    }

    /// Found by the emitted_event fuzz target: JSON data with the content
    /// type `applIcation/json` was inlined (our test ignores case), and the
    /// SDK, which does not, refused to decode the event.
    #[test]
    fn json_data_is_inlined_only_where_it_is_read_back_as_json() {
        for content_type in ["applIcation/json", "application/json", "text/plain"] {
            let event = EventBuilderV10::new()
                .id("e-1")
                .source("/test")
                .ty("t")
                .data(content_type, Data::Binary(b"[1,2,3]".to_vec()))
                .build()
                .unwrap();
            let (headers, payload) = encode(event, ContentMode::Structured).unwrap();
            let back =
                decode(Some(&headers), &payload).unwrap_or_else(|e| panic!("{content_type}: {e}"));
            let data = match back.event.data() {
                Some(Data::Json(value)) => value.to_string().into_bytes(),
                Some(Data::Binary(bytes)) => bytes.clone(),
                other => panic!("{content_type}: {other:?}"),
            };
            assert_eq!(data, b"[1,2,3]", "{content_type}");
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
    }
}
