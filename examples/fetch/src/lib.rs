//! Fetch: an outbound-HTTP probe for the runtime's own tests.
//!
//! The event's data lists requests to make (`{"urls": [...]}`); each is a
//! GET whose outcome (status and body length, or the error) goes into one
//! `fetch.done` event. With `"follow": true` a 3xx is followed once, as a
//! client library would, which is a new request the host checks like any
//! other. With `"fail": true` the first error fails the invocation (the SDK's
//! mapping decides retryable or permanent) instead of being reported. With
//! `"leak": "<config key>"` the handler logs that config value and fails
//! with it in the message: what a careless handler does with a secret.
//! With `"key": "<value>"` every request carries that `Idempotency-Key`,
//! set by the guest, which the host must leave as it is.
use eventhost_sdk::{Emit, Event, HandlerError, Level, http, log};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    fail: bool,
    leak: Option<String>,
    key: Option<String>,
}

fn get(url: &str, follow: bool, key: Option<&str>) -> Result<http::Response, http::HttpError> {
    let mut request = http::Request::get(url);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send()?;
    match response.header("location") {
        Some(next) if follow && (300..400).contains(&response.status) => {
            http::Request::get(next).send()
        }
        _ => Ok(response),
    }
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let probe: Probe = event.json()?;
    if let Some(key) = &probe.leak {
        let secret = eventhost_sdk::config(key).unwrap_or_default();
        log(Level::Warn, &format!("about to leak {key}={secret}"));
        return Err(HandlerError::permanent(format!("leaked {key}={secret}")));
    }
    let mut results = Vec::new();
    for url in &probe.urls {
        match get(url, probe.follow, probe.key.as_deref()) {
            Ok(response) => results.push(json!({
                "status": response.status,
                "bytes": response.body.len(),
            })),
            Err(err) if probe.fail => return Err(err.into()),
            Err(err) => results.push(json!({ "error": err.to_string() })),
        }
    }
    Emit::new("fetch.done", "com.example.fetch.done")
        .json(&json!({ "input": event.id(), "results": Value::from(results) }))?
        .send()
}

eventhost_sdk::export_handler!(handle);
