//! Inbound half of the CloudEvents NATS protocol binding: a JetStream message
//! becomes a [`cloudevents::Event`].
//!
//! Both content modes are accepted:
//! - **structured**: the payload is a JSON CloudEvent. The released binding
//!   (1.0.x) defines only this mode, with no headers at all, so a message with
//!   no CloudEvents headers is read as structured. A `Content-Type` of
//!   `application/cloudevents+json` says so explicitly.
//! - **binary** (binding 1.0.3 draft): attributes are `ce-<name>` headers,
//!   percent-encoded, and the payload is the data. The draft maps
//!   `datacontenttype` to `ce-datacontenttype`; the Go and Python SDKs write
//!   an unprefixed `content-type` instead, and do not percent-encode. Both are
//!   accepted (decoding a value that was never encoded leaves it unchanged
//!   unless it holds a `%XX` sequence).
//!
//! Only CloudEvents 1.0 is accepted. Every failure is a [`DecodeError`] that
//! says what was wrong, so an operator can fix the producer.

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use cloudevents::event::{Data, SpecVersion};
use cloudevents::{AttributesReader, AttributesWriter, Event, EventBuilder, EventBuilderV10};

/// How an event was (or will be) laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Structured,
    Binary,
}

/// A message that is not a usable CloudEvent. The message is never handed to
/// a handler; the reason is logged and the message taken out of the stream's
/// delivery (dead-lettered once the delivery guarantees land).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("structured-mode event is not valid CloudEvents JSON: {0}")]
    Structured(String),
    #[error("binary-mode event: {0}")]
    Binary(String),
    #[error(
        "content type {0:?} is not supported (structured mode must be application/cloudevents+json)"
    )]
    UnsupportedFormat(String),
    #[error("specversion {0:?} is not supported (only \"1.0\")")]
    SpecVersion(String),
    #[error("attribute `{0}` must not be empty")]
    EmptyAttribute(&'static str),
    #[error("header {0:?} is given twice, in different cases, with different values")]
    AmbiguousHeader(String),
}

/// A decoded event and the mode it arrived in.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub event: Event,
    pub mode: ContentMode,
}

/// Decodes one NATS message.
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Decoded, DecodeError> {
    let headers = Headers::lowercased(headers)?;
    let content_type = headers.get("content-type");
    let (event, mode) = match content_type.map(|ct| (ct, media_type(ct))) {
        Some((ct, media)) if media.starts_with("application/cloudevents") => {
            if media != "application/cloudevents+json" {
                return Err(DecodeError::UnsupportedFormat(ct.to_string()));
            }
            (decode_structured(payload)?, ContentMode::Structured)
        }
        _ if headers.get("ce-specversion").is_some() => {
            (decode_binary(&headers, payload)?, ContentMode::Binary)
        }
        _ => (decode_structured(payload)?, ContentMode::Structured),
    };
    for (name, value) in [
        ("id", event.id()),
        ("source", event.source().as_str()),
        ("type", event.ty()),
    ] {
        if value.is_empty() {
            return Err(DecodeError::EmptyAttribute(name));
        }
    }
    Ok(Decoded { event, mode })
}

fn decode_structured(payload: &[u8]) -> Result<Event, DecodeError> {
    match serde_json::from_slice::<Event>(payload) {
        // The SDK also reads 0.3 events; we take only 1.0.
        Ok(event) if event.specversion() != SpecVersion::V10 => {
            Err(DecodeError::SpecVersion(event.specversion().to_string()))
        }
        Ok(event) => Ok(event),
        Err(err) => {
            Err(unknown_version(payload)
                .unwrap_or_else(|| DecodeError::Structured(err.to_string())))
        }
    }
}

/// On the error path only: a `specversion` the SDK does not know at all
/// makes a clearer error than the SDK's own.
fn unknown_version(payload: &[u8]) -> Option<DecodeError> {
    #[derive(serde::Deserialize)]
    struct Version {
        specversion: serde_json::Value,
    }
    let Version { specversion } = serde_json::from_slice(payload).ok()?;
    (specversion != "1.0")
        .then(|| DecodeError::SpecVersion(specversion.to_string().trim_matches('"').into()))
}

fn decode_binary(headers: &Headers<'_>, payload: &[u8]) -> Result<Event, DecodeError> {
    let bad = DecodeError::Binary;
    let mut builder = EventBuilderV10::new();
    let mut datacontenttype = None;
    let mut dataschema = None;
    for (name, raw) in &headers.0 {
        let Some(attribute) = name.strip_prefix("ce-") else {
            continue;
        };
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| bad(format!("header ce-{attribute} is not UTF-8 once decoded")))?
            .into_owned();
        builder = match attribute {
            "specversion" if value != "1.0" => return Err(DecodeError::SpecVersion(value)),
            "specversion" => builder,
            "id" => builder.id(value),
            "source" => builder.source(value),
            "type" => builder.ty(value),
            "subject" => builder.subject(value),
            "time" => {
                let time = DateTime::parse_from_rfc3339(&value)
                    .map_err(|e| bad(format!("ce-time {value:?} is not RFC 3339: {e}")))?;
                builder.time(time.with_timezone(&Utc))
            }
            "dataschema" => {
                let url = url::Url::parse(&value)
                    .map_err(|e| bad(format!("ce-dataschema {value:?} is not a URI: {e}")))?;
                dataschema = Some(url);
                builder
            }
            "datacontenttype" => {
                datacontenttype = Some(value);
                builder
            }
            extension => {
                validate_attribute_name(extension).map_err(|e| bad(e.to_string()))?;
                builder.extension(extension, value)
            }
        };
    }
    let mut event = builder
        .build()
        .map_err(|e| bad(format!("{e} (as a ce- header)")))?;
    event.set_dataschema(dataschema);
    let datacontenttype = datacontenttype.or_else(|| headers.get("content-type").map(String::from));
    event.set_datacontenttype(datacontenttype);
    if !payload.is_empty() {
        event.set_data_unchecked(Data::Binary(payload.to_vec()));
    }
    Ok(event)
}

/// CloudEvents attribute names are lower-case ASCII letters and digits.
pub fn validate_attribute_name(name: &str) -> Result<(), InvalidAttributeName> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(InvalidAttributeName(name.to_string()));
    }
    Ok(())
}

/// A CloudEvents attribute name that is not lower-case letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attribute name {0:?} is invalid (lower-case letters and digits only)")]
pub struct InvalidAttributeName(pub String);

/// `application/json; charset=utf-8` → `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Header names are case-insensitive in the binding; NATS keeps their case.
/// When a header repeats, the last value wins. A header the decoder reads
/// given under two spellings (`ce-id` and `Ce-Id`) with different values is
/// refused: NATS keeps them apart in no fixed order, so picking one would
/// make the event's identity depend on a hash map's order (found by the
/// dead_letter fuzz target: the queue's listing and the decoder disagreed).
struct Headers<'a>(Vec<(String, &'a str)>);

impl<'a> Headers<'a> {
    fn lowercased(headers: Option<&'a HeaderMap>) -> Result<Self, DecodeError> {
        let mut out: Vec<(String, &'a str)> = Vec::new();
        for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
            if let Some(value) = values.last() {
                let name: &str = name.as_ref();
                let name = name.to_ascii_lowercase();
                // Only headers the decoder reads are compared, so the
                // common message pays one prefix check per header.
                let read = name.starts_with("ce-") || name == "content-type";
                if read && out.iter().any(|(n, v)| *n == name && *v != value.as_str()) {
                    return Err(DecodeError::AmbiguousHeader(name));
                }
                out.push((name, value.as_str()));
            }
        }
        Ok(Headers(out))
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, *v);
        }
        map
    }

    const STRUCTURED: &str = r#"{"specversion":"1.0","id":"o-1","source":"/shop","type":"com.example.order.created",
        "datacontenttype":"application/json","partitionkey":"user-7","data":{"order_id":"o-1"}}"#;

    #[test]
    fn structured_with_and_without_content_type() {
        let ct = headers(&[(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        for h in [Some(&ct), None] {
            let d = decode(h, STRUCTURED.as_bytes()).unwrap();
            assert_eq!(d.mode, ContentMode::Structured);
            assert_eq!(d.event.id(), "o-1");
            assert_eq!(d.event.ty(), "com.example.order.created");
            assert_eq!(
                d.event.extension("partitionkey").map(|v| v.to_string()),
                Some("user-7".into())
            );
            assert!(matches!(d.event.data(), Some(Data::Json(_))));
        }
    }

    #[test]
    fn an_attribute_given_twice_in_different_cases_is_refused_unless_equal() {
        let mut map = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "a"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        map.insert("Ce-Id", "a");
        assert_eq!(decode(Some(&map), b"").unwrap().event.id(), "a");
        map.insert("Ce-Id", "b");
        let err = decode(Some(&map), b"").unwrap_err();
        assert!(
            matches!(err, DecodeError::AmbiguousHeader(ref n) if n == "ce-id"),
            "{err}"
        );
        // Headers the decoder does not read may differ.
        let mut map = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "a"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("x-app", "1"),
        ]);
        map.insert("X-App", "2");
        assert!(decode(Some(&map), b"").is_ok());
    }

    #[test]
    fn binary_spec_form_is_percent_decoded() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "b-1"),
            ("ce-source", "/shop"),
            ("ce-type", "com.example.order.created"),
            ("ce-subject", "order%20o-1%25"),
            ("ce-time", "2026-11-22T10:00:00Z"),
            ("ce-datacontenttype", "application/json"),
            ("ce-dataschema", "https://example.com/order.json"),
            (
                "ce-traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ]);
        let d = decode(Some(&h), br#"{"order_id":"o-1"}"#).unwrap();
        assert_eq!(d.mode, ContentMode::Binary);
        assert_eq!(d.event.subject(), Some("order o-1%"));
        assert_eq!(d.event.datacontenttype(), Some("application/json"));
        assert_eq!(
            d.event.dataschema().map(|u| u.as_str()),
            Some("https://example.com/order.json")
        );
        assert!(d.event.time().is_some());
        assert!(d.event.extension("traceparent").is_some());
        match d.event.data() {
            Some(Data::Binary(b)) => assert_eq!(b, br#"{"order_id":"o-1"}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_go_sdk_form_with_mixed_case_and_unprefixed_content_type() {
        let h = headers(&[
            ("Ce-Specversion", "1.0"),
            ("Ce-Id", "g-1"),
            ("Ce-Source", "/go"),
            ("Ce-Type", "t"),
            ("Content-Type", "application/json"),
        ]);
        let d = decode(Some(&h), b"{}").unwrap();
        assert_eq!(d.mode, ContentMode::Binary);
        assert_eq!(d.event.datacontenttype(), Some("application/json"));
    }

    fn error_of(h: Option<&HeaderMap>, payload: &[u8]) -> String {
        decode(h, payload).unwrap_err().to_string()
    }

    #[test]
    fn bad_inputs_have_clear_reasons() {
        assert!(error_of(None, b"\x00\xffgarbage").contains("not valid CloudEvents JSON"));
        assert!(error_of(None, br#"{"specversion":"1.0","id":"x""#).contains("JSON"));
        let missing_id = br#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        assert!(
            error_of(None, missing_id).contains("id"),
            "{}",
            error_of(None, missing_id)
        );
        let v03 = br#"{"specversion":"0.3","id":"x","source":"/s","type":"t"}"#;
        assert!(error_of(None, v03).contains("0.3"));
        // A version the SDK does not know at all: named, not the SDK's error.
        let v2 = br#"{"specversion":"2.0","id":"x","source":"/s","type":"t"}"#;
        let err = decode(None, v2).unwrap_err();
        assert!(
            matches!(err, DecodeError::SpecVersion(ref v) if v == "2.0"),
            "{err}"
        );
        let empty_id = br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#;
        assert!(error_of(None, empty_id).contains("`id`"));

        let batch = headers(&[("content-type", "application/cloudevents-batch+json")]);
        assert!(error_of(Some(&batch), b"[]").contains("not supported"));

        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
        ];
        let no_type = headers(&base);
        assert!(error_of(Some(&no_type), b"").contains("type"));
        let mut bad_time = base.to_vec();
        bad_time.extend([("ce-type", "t"), ("ce-time", "yesterday")]);
        assert!(error_of(Some(&headers(&bad_time)), b"").contains("RFC 3339"));
        let mut bad_name = base.to_vec();
        bad_name.extend([("ce-type", "t"), ("ce-trace_id", "x")]);
        assert!(error_of(Some(&headers(&bad_name)), b"").contains("trace_id"));
        let mut not_utf8 = base.to_vec();
        not_utf8.extend([("ce-type", "%FF%FE")]);
        assert!(error_of(Some(&headers(&not_utf8)), b"").contains("UTF-8"));
        let wrong_version = headers(&[("ce-specversion", "2.0")]);
        assert!(error_of(Some(&wrong_version), b"").contains("2.0"));
    }
}
