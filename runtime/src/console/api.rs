//! The console's JSON endpoints under `/ui/api/`: what the pages' scripts
//! call. Reads answer anyone; actions ([`act`]) need an operator token
//! ([`super::auth`]). Every failure is a JSON `{"error": …}` whose status
//! says whose fault it is: 4xx the caller's (a bad filter, an unknown
//! letter, a missing token), 502 the servers behind the console.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::auth::Refusal;
use super::dlq::{self, Action, Filter, FilterError, Selection};
use super::state::{self, StateError};
use super::story::{self, SearchError};
use super::{Console, fleet, security_headers};
use crate::dead_letter_queue::LetterError;
use crate::outcome::trail::SearchBy;

/// An answer that is not the one asked for.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, Json(body)).into_response();
        security_headers(&mut response);
        response
    }
}

/// Whether an error is the caller's (a bad filter, an unknown letter or
/// key), and which status says so; `None` is the console's or NATS's.
fn callers_fault(err: &anyhow::Error) -> Option<StatusCode> {
    if err.downcast_ref::<FilterError>().is_some() || err.downcast_ref::<SearchError>().is_some() {
        return Some(StatusCode::BAD_REQUEST);
    }
    if let Some(err) = err.downcast_ref::<StateError>() {
        return Some(match err {
            StateError::Bad { .. } | StateError::Name(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::NOT_FOUND,
        });
    }
    match err.downcast_ref::<LetterError>() {
        Some(LetterError::NotFound { .. } | LetterError::OtherHandler { .. }) => {
            Some(StatusCode::NOT_FOUND)
        }
        _ => None,
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        match callers_fault(&err) {
            Some(status) => ApiError {
                status,
                message: format!("{err:#}"),
            },
            None => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "console: a read or action failed"
                );
                ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("NATS could not answer: {err:#}"),
                }
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError {
            status: refusal.status(),
            message: refusal.to_string(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        bad_request(rejection.body_text())
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message,
    }
}

/// How long a read may take before the page is told NATS did not answer.
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// An action over many letters takes longer; letters done before the
/// deadline stay done (and logged).
const ACTION_DEADLINE: Duration = Duration::from_secs(120);

/// `work`, or a 504 once `deadline` has passed.
async fn within<T>(
    deadline: Duration,
    work: impl Future<Output = anyhow::Result<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!("NATS did not answer within {} s", deadline.as_secs()),
        }),
    }
}

/// JSON that no cache keeps: every answer is about now.
fn fresh(value: impl Serialize) -> Response {
    let mut response = Json(value).into_response();
    security_headers(&mut response);
    (response.headers_mut()).insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn fleet(State(console): State<Arc<Console>>) -> Result<Response, ApiError> {
    let view = within(READ_DEADLINE, async { Ok(fleet::read(&console).await) }).await?;
    Ok(fresh(view))
}

pub async fn queues(State(console): State<Arc<Console>>) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct Queue {
        handler: String,
        waiting: u64,
    }
    let queues = within(READ_DEADLINE, dlq::queues(&console.js)).await?;
    let queues: Vec<Queue> = (queues.into_iter())
        .map(|(handler, waiting)| Queue { handler, waiting })
        .collect();
    Ok(fresh(queues))
}

pub async fn letters(
    State(console): State<Arc<Console>>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter?;
    Ok(fresh(
        within(READ_DEADLINE, dlq::list(&console.js, &filter)).await?,
    ))
}

pub async fn letter(
    State(console): State<Arc<Console>>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((handler, sequence)) = path?;
    let story = dlq::story(&console.js, &handler, sequence);
    Ok(fresh(within(READ_DEADLINE, story).await?))
}

#[derive(Deserialize)]
pub struct RecordQuery {
    #[serde(rename = "ref")]
    record: String,
}

pub async fn record(
    State(console): State<Arc<Console>>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let fate = dlq::outcome_of(&console.js, &query.record);
    Ok(fresh(within(READ_DEADLINE, fate).await?))
}

#[derive(Deserialize)]
pub struct StoryQuery {
    q: String,
    /// `id`, `key`, `subject` or `correlation`; each in turn when absent.
    by: Option<SearchBy>,
}

pub async fn story(
    State(console): State<Arc<Console>>,
    query: Result<Query<StoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let story = story::search(&console.js, &query.q, query.by);
    Ok(fresh(within(READ_DEADLINE, story).await?))
}

/// Who the token in the request belongs to: the page checks a token here
/// before it offers actions.
pub async fn whoami(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let operator = console.tokens.authorise(&headers)?;
    Ok(fresh(serde_json::json!({ "operator": operator.0 })))
}

pub async fn replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    act(&console, &headers, &body, Action::Replay).await
}

pub async fn purge(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    act(&console, &headers, &body, Action::Purge).await
}

/// The token first, then the body: nobody learns anything from a request
/// they may not make.
async fn act(
    console: &Console,
    headers: &HeaderMap,
    body: &[u8],
    action: Action,
) -> Result<Response, ApiError> {
    let operator = console.tokens.authorise_json(headers)?;
    let selection: Selection = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the selection is not valid JSON: {e}")))?;
    let work = dlq::act(&console.js, &operator, action, &selection);
    Ok(fresh(within(ACTION_DEADLINE, work).await?))
}

#[derive(Deserialize)]
pub struct KeysQuery {
    bucket: String,
    #[serde(default)]
    prefix: String,
}

pub async fn buckets(State(console): State<Arc<Console>>) -> Result<Response, ApiError> {
    Ok(fresh(
        within(READ_DEADLINE, state::buckets(&console.js)).await?,
    ))
}

pub async fn keys(
    State(console): State<Arc<Console>>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let keys = state::keys(console.store.as_ref(), &query.bucket, &query.prefix);
    let keys = within(READ_DEADLINE, keys).await?;
    Ok(fresh(keys))
}

#[derive(Deserialize)]
pub struct ValueQuery {
    bucket: String,
    key: String,
}

pub async fn value(
    State(console): State<Arc<Console>>,
    query: Result<Query<ValueQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let value = state::value(console.store.as_ref(), &query.bucket, &query.key);
    let value = within(READ_DEADLINE, value).await?;
    Ok(fresh(value))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    subject: String,
}

pub async fn events(
    State(console): State<Arc<Console>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let events = state::events(&console.js, console.store.as_ref(), &query.subject);
    let events = within(READ_DEADLINE, events).await?;
    Ok(fresh(events))
}
