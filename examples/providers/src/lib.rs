//! A payment and mail provider for the examples, the demo and the tests.
//!
//! It behaves like the Stripe-style APIs the seeds' services call: a
//! request carrying an `Idempotency-Key` it has already completed gets the
//! first answer again and changes nothing, so a charge or an email happens
//! once per key however often it is retried. It records every request it
//! receives, so a test can count effects by the provider's own books rather
//! than by what the caller believes. It can be told (`POST /control`) to
//! fail a share of calls with 503 (before or after doing the work, at
//! random), to hang, to answer slowly, or to decline charges above an
//! amount.
//!
//! Endpoints: `POST /charges` {order_id, amount}, `POST /emails` {to,
//! subject, order_id}, `GET /records`, `POST /control`, `GET /redirect?to=`
//! (302), `GET /big?bytes=` (a body of that size), `GET /hang` (never
//! answers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How the provider misbehaves; all off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Control {
    /// Share of charge and email calls answered 503 (0.0 to 1.0).
    pub fail_rate: f64,
    /// Never answer charge and email calls.
    pub hang: bool,
    /// Wait this long before answering charge and email calls.
    pub delay_ms: u64,
    /// Decline charges above this amount (402).
    pub decline_over: Option<f64>,
}

/// One effect the provider performed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effect {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub order_id: String,
    pub body: Value,
}

/// Everything the provider saw and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Records {
    /// Every request to any endpoint.
    pub hits: u64,
    /// Charge and email requests.
    pub requests: u64,
    /// Requests whose `Authorization` was not `Bearer <api key>`.
    pub unauthorized: u64,
    pub charges: Vec<Effect>,
    pub emails: Vec<Effect>,
    /// Every `Idempotency-Key` received, on any endpoint, in order.
    pub idempotency_keys: Vec<String>,
    pub traceparents: Vec<String>,
}

#[derive(Default)]
struct Books {
    control: Control,
    records: Records,
    /// Completed answers by idempotency key, replayed on a repeat.
    answered: HashMap<String, (u16, Value)>,
}

#[derive(Clone)]
struct Provider {
    books: Arc<Mutex<Books>>,
    api_key: Option<String>,
}

/// A provider serving on a bound socket.
pub struct RunningProvider {
    pub address: SocketAddr,
    books: Arc<Mutex<Books>>,
}

impl RunningProvider {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn records(&self) -> Records {
        self.books.lock().expect("never poisoned").records.clone()
    }

    pub fn set_control(&self, control: Control) {
        self.books.lock().expect("never poisoned").control = control;
    }
}

/// Serves on `listener` in a background task. `api_key`: the bearer token
/// callers must present (unchecked if `None`).
pub fn start(listener: tokio::net::TcpListener, api_key: Option<String>) -> RunningProvider {
    let address = listener.local_addr().expect("a bound listener");
    let provider = Provider {
        books: Arc::default(),
        api_key,
    };
    let books = provider.books.clone();
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router(provider)).await {
            eprintln!("provider stopped: {err}");
        }
    });
    RunningProvider { address, books }
}

fn router(provider: Provider) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .route("/emails", post(email))
        .route("/records", get(records))
        .route("/control", post(control))
        .route("/redirect", get(redirect))
        .route("/big", get(big))
        .route("/hang", get(hang))
        .layer(axum::middleware::from_fn_with_state(
            provider.clone(),
            count_hit,
        ))
        .with_state(provider)
}

async fn count_hit(
    State(p): State<Provider>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut books = p.books.lock().expect("never poisoned");
        books.records.hits += 1;
        if let Some(key) = text(request.headers(), "idempotency-key") {
            books.records.idempotency_keys.push(key);
        }
    }
    next.run(request).await
}

async fn hang() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::OK
}

async fn records(State(p): State<Provider>) -> Json<Records> {
    Json(p.books.lock().expect("never poisoned").records.clone())
}

async fn control(State(p): State<Provider>, Json(control): Json<Control>) -> StatusCode {
    p.books.lock().expect("never poisoned").control = control;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct RedirectTo {
    to: String,
}

async fn redirect(Query(q): Query<RedirectTo>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, q.to)]).into_response()
}

#[derive(Deserialize)]
struct Size {
    bytes: usize,
}

async fn big(Query(q): Query<Size>) -> Vec<u8> {
    vec![b'x'; q.bytes]
}

async fn charge(
    State(p): State<Provider>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    p.effect(Kind::Charge, &headers, body).await
}

async fn email(State(p): State<Provider>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    p.effect(Kind::Email, &headers, body).await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Charge,
    Email,
}

/// What to do with one effect request, decided under the lock.
enum Plan {
    Replay(u16, Value),
    Fail,
    Perform { fail_after: bool },
}

impl Provider {
    async fn effect(&self, kind: Kind, headers: &HeaderMap, body: Value) -> Response {
        let key = text(headers, "idempotency-key");
        let (control, plan, authorized) = self.plan(headers, key.as_deref());
        if control.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if control.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(control.delay_ms)).await;
        }
        if !authorized {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "bad api key"})),
            )
                .into_response();
        }
        match plan {
            Plan::Replay(status, answer) => answer_with(status, answer),
            Plan::Fail => unavailable(),
            Plan::Perform { fail_after } => {
                let (status, answer) = self.perform(kind, key, body, &control);
                if fail_after {
                    unavailable()
                } else {
                    answer_with(status, answer)
                }
            }
        }
    }

    fn plan(&self, headers: &HeaderMap, key: Option<&str>) -> (Control, Plan, bool) {
        let mut books = self.books.lock().expect("never poisoned");
        let records = &mut books.records;
        records.requests += 1;
        if let Some(tp) = text(headers, "traceparent") {
            records.traceparents.push(tp);
        }
        let authorized = match &self.api_key {
            Some(expected) => {
                text(headers, "authorization").as_deref() == Some(&format!("Bearer {expected}"))
            }
            None => true,
        };
        if !authorized {
            records.unauthorized += 1;
        }
        let control = books.control.clone();
        let answered = key.and_then(|k| books.answered.get(k));
        let plan = match (fastrand::f64() < control.fail_rate, answered) {
            // An outage fails repeats too.
            (true, Some(_)) => Plan::Fail,
            // Half the failures happen after the work is done: the caller
            // sees an error for an effect that did happen.
            (true, None) if fastrand::bool() => Plan::Perform { fail_after: true },
            (true, None) => Plan::Fail,
            (false, Some((status, answer))) => Plan::Replay(*status, answer.clone()),
            (false, None) => Plan::Perform { fail_after: false },
        };
        (control, plan, authorized)
    }

    fn perform(
        &self,
        kind: Kind,
        key: Option<String>,
        body: Value,
        control: &Control,
    ) -> (u16, Value) {
        let mut books = self.books.lock().expect("never poisoned");
        if let Some((status, answer)) = key.as_ref().and_then(|k| books.answered.get(k)) {
            return (*status, answer.clone()); // a concurrent twin got here first
        }
        let order_id = body["order_id"].as_str().unwrap_or_default().to_string();
        let amount = body["amount"].as_f64().unwrap_or_default();
        let (status, answer) = match kind {
            Kind::Charge if control.decline_over.is_some_and(|limit| amount > limit) => (
                402,
                json!({"declined": format!("amount {amount} is over the card's limit")}),
            ),
            Kind::Charge => {
                let id = record(&mut books.records.charges, "ch", &key, order_id, body);
                (200, json!({"id": id, "amount": amount}))
            }
            Kind::Email => {
                let id = record(&mut books.records.emails, "em", &key, order_id, body);
                (202, json!({"id": id}))
            }
        };
        if let Some(key) = key {
            books.answered.insert(key, (status, answer.clone()));
        }
        (status, answer)
    }
}

/// Books one effect under the next id of its kind (`ch_1`, `em_1`, …).
fn record(
    effects: &mut Vec<Effect>,
    prefix: &str,
    key: &Option<String>,
    order_id: String,
    body: Value,
) -> String {
    let id = format!("{prefix}_{}", effects.len() + 1);
    effects.push(Effect {
        id: id.clone(),
        idempotency_key: key.clone(),
        order_id,
        body,
    });
    id
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

fn answer_with(status: u16, answer: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer)).into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "try again"})),
    )
        .into_response()
}
