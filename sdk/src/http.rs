//! Outbound HTTP through the standard `wasi:http/outgoing-handler` (0.2),
//! for handlers whose manifest grants origins in an `[http]` section.
//!
//! ```no_run
//! use eventhost_sdk::{HandlerError, http};
//! # fn charge() -> Result<(), HandlerError> {
//! let response = http::Request::post("https://pay.example.com/charges")
//!     .header("authorization", "Bearer ...")
//!     .json(&serde_json::json!({ "amount": 42 }))?
//!     .send()?                // a timeout or refused connection: retryable
//!     .error_for_status()?;   // 5xx and 429 retryable, other 4xx permanent
//! let receipt: serde_json::Value = response.json()?;
//! # Ok(()) }
//! ```
//!
//! A request is sent when `send` is called, whatever the handler returns
//! afterwards, and it is sent again when the event is retried. The host
//! adds an `Idempotency-Key` header (unless the request has one) that is
//! the same on every retry of the same event, so a provider that honours
//! such keys performs the effect once. Redirects are returned, not
//! followed.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use wasip2::io::streams::StreamError;

use crate::HandlerError;

/// The largest write the host takes in one call.
const WRITE_CHUNK: usize = 4096;

/// An outgoing request, built up and then [`send`](Request::send)t.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A response, its body read in full (up to the host's cap).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// The host refused it: an origin or address not granted, or too many
    /// requests in one invocation. No retry changes that.
    Denied(String),
    /// A timeout, a refused or broken connection: worth retrying.
    Unavailable(String),
    /// The request itself is malformed.
    Invalid(String),
    /// The response body passed the host's cap (`http.max_response_body`).
    TooLarge(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(why) => write!(f, "request denied: {why}"),
            HttpError::Unavailable(why) => write!(f, "request failed: {why}"),
            HttpError::Invalid(why) => write!(f, "invalid request: {why}"),
            HttpError::TooLarge(why) => write!(f, "response too large: {why}"),
        }
    }
}

impl From<HttpError> for HandlerError {
    fn from(err: HttpError) -> Self {
        match err {
            HttpError::Unavailable(_) => HandlerError::retryable(err.to_string()),
            HttpError::Denied(_) | HttpError::Invalid(_) | HttpError::TooLarge(_) => {
                HandlerError::permanent(err.to_string())
            }
        }
    }
}

impl Request {
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        };
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with its content type.
    pub fn json<T: Serialize>(self, value: &T) -> Result<Self, HandlerError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| HandlerError::permanent(format!("encoding the request body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| HttpError::Invalid(format!("headers: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| HttpError::Invalid(format!("{what} of {}", self.url));
        request
            .set_method(&self.method)
            .map_err(|_| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|_| invalid("authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|_| invalid("path"))?;
        let body = request.body().map_err(|_| invalid("body"))?;
        let future = outgoing_handler::handle(request, None).map_err(classify)?;
        let written = write_body(body, &self.body);
        let response = loop {
            match future.get() {
                Some(result) => break result,
                None => future.subscribe().block(),
            }
        };
        // A request the host refuses has its body stream closed: the
        // response's error says why (a denied origin, say), so it comes
        // before the write's.
        let response = response
            .map_err(|()| HttpError::Unavailable("response already taken".into()))?
            .map_err(classify)?;
        written?;
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Unavailable("response body unavailable".into()))?;
        let body = read_body(body)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

impl Response {
    /// The response if it is a success; otherwise the handler error a
    /// provider's answer calls for: 5xx, 408 and 429 are worth retrying,
    /// other 4xx are not (the request itself is wrong).
    pub fn error_for_status(self) -> Result<Self, HandlerError> {
        let why = || {
            let text = String::from_utf8_lossy(&self.body);
            format!(
                "HTTP {}: {}",
                self.status,
                text.chars().take(200).collect::<String>()
            )
        };
        match self.status {
            200..=399 => Ok(self),
            408 | 429 | 500..=599 => Err(HandlerError::retryable(why())),
            _ => Err(HandlerError::permanent(why())),
        }
    }

    /// The body as JSON; a body that is not is a permanent error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HandlerError::permanent(format!("response body is not the JSON expected: {e}"))
        })
    }

    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let invalid = || HttpError::Invalid(format!("{url:?} is not an absolute http(s) URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], &rest[at..]),
        Some(_) => return Err(invalid()),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(invalid());
    }
    Ok((scheme, authority, path))
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    let failed = |e: String| HttpError::Unavailable(format!("sending the body: {e}"));
    {
        let stream = body.write().map_err(|()| failed("no stream".into()))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| failed(format!("{e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(classify)
}

fn read_body(body: IncomingBody) -> Result<Vec<u8>, HttpError> {
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| HttpError::Unavailable("no body stream".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(match http_error_code(&e) {
                        Some(code @ ErrorCode::HttpResponseBodySize(_)) => {
                            HttpError::TooLarge(format!("{code:?}"))
                        }
                        Some(code) => classify(code),
                        None => {
                            // The host's error, without the backtrace it may carry.
                            let text = e.to_debug_string();
                            let text = text.lines().next().unwrap_or_default().to_string();
                            match text.contains("body size exceeds") {
                                true => HttpError::TooLarge(text),
                                false => HttpError::Unavailable(format!(
                                    "reading the response body: {text}"
                                )),
                            }
                        }
                    });
                }
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn classify(code: ErrorCode) -> HttpError {
    let text = format!("{code:?}");
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
            HttpError::Denied(text)
        }
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriTooLong => HttpError::Invalid(text),
        _ => HttpError::Unavailable(text),
    }
}
