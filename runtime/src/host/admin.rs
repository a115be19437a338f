//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/handlers`,
//! and the operator console under `/ui` ([`crate::console`]).
//!
//! Bound to 127.0.0.1 by default: metrics and handler errors are for
//! operators, not for the network at large. Serving it never touches the
//! event path; the JetStream-side gauges (consumer lag, dead letters) are
//! read from the server at scrape time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::handlers::Board;
use crate::console::{self, Console};
use crate::dispatch::Dispatcher;
use crate::metrics::{ConsumerLabels, Metrics, NameLabels};
use crate::outcome::dead_letter;
use crate::source;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub board: Board,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// The console served at `/ui`, if it is.
    pub console: Option<Arc<Console>>,
}

/// Binds `addr` and serves until `shutdown`. Binding errors are returned at
/// once, so a taken port stops the runtime with a clear message.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server to {addr} (--admin-addr)"))?;
    let console = state.console.clone().map(console::router);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/handlers", get(handlers))
        .with_state(state)
        .merge(console.clone().unwrap_or_default());
    match console {
        Some(_) => tracing::info!(%addr, console = %format!("http://{addr}/ui"),
            "admin server listening (/metrics /healthz /readyz /handlers /ui)"),
        None => tracing::info!(%addr,
            "admin server listening (/metrics /healthz /readyz /handlers; the console is off, see --console)"),
    }
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "admin server stopped");
        }
    }))
}

fn current(board: &Board) -> Vec<Arc<Dispatcher>> {
    let board = board.lock().expect("never poisoned");
    board.values().filter_map(|s| s.current.clone()).collect()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // A slow or absent server must not hang the scrape.
    let refresh = refresh_jetstream_gauges(&state);
    if tokio::time::timeout(Duration::from_secs(2), refresh)
        .await
        .is_err()
    {
        tracing::debug!("JetStream gauges not refreshed in time");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn refresh_jetstream_gauges(state: &AdminState) {
    let m = &state.metrics;
    let dispatchers = current(&state.board);
    for dispatcher in &dispatchers {
        for binding in dispatcher.bindings() {
            if let Some(lag) = source::lag(&state.js, &binding.stream, &binding.durable).await {
                let labels = ConsumerLabels {
                    handler: dispatcher.name().to_string(),
                    consumer: binding.durable.clone(),
                };
                m.consumer_pending
                    .get_or_create(&labels)
                    .set(lag.pending as i64);
                m.consumer_ack_pending
                    .get_or_create(&labels)
                    .set(lag.ack_pending as i64);
            }
        }
    }
    let Ok(depths) = dead_letter::depths(&state.js).await else {
        return;
    };
    for dispatcher in &dispatchers {
        let count = depths.get(dispatcher.name()).copied().unwrap_or(0);
        m.dead_letters
            .get_or_create(&NameLabels::new(dispatcher.name()))
            .set(count as i64);
    }
}

/// Ready when connected to NATS and every loaded handler is consuming.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let idle: Vec<String> = current(&state.board)
        .iter()
        .filter(|d| !d.is_consuming())
        .map(|d| d.name().to_string())
        .collect();
    match (connected, idle.is_empty()) {
        (true, true) => (StatusCode::OK, "ready\n".into()),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to NATS\n".into(),
        ),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not consuming yet: {}\n", idle.join(", ")),
        ),
    }
}

#[derive(Serialize)]
struct HandlerView {
    name: String,
    version: Option<String>,
    subjects: Vec<String>,
    /// consuming | starting | failed
    state: &'static str,
    last_error: Option<String>,
    grants: Option<Grants>,
}

/// What a handler's manifest lets it touch.
#[derive(Serialize)]
struct Grants {
    publish: Vec<String>,
    /// Bucket name → `read-write` | `read-only`.
    keyvalue: std::collections::BTreeMap<String, &'static str>,
    /// Subject pattern → `append` | `read`.
    eventstore: std::collections::BTreeMap<String, &'static str>,
}

impl Grants {
    fn of(manifest: &crate::handler::manifest::HandlerManifest) -> Self {
        let mut keyvalue = std::collections::BTreeMap::new();
        if let Some(section) = &manifest.keyvalue {
            keyvalue.extend(section.read_only.iter().map(|b| (b.clone(), "read-only")));
            keyvalue.extend(section.read_write.iter().map(|b| (b.clone(), "read-write")));
        }
        let mut eventstore = std::collections::BTreeMap::new();
        if let Some(section) = &manifest.eventstore {
            for (pattern, append) in section.patterns() {
                let access = if append { "append" } else { "read" };
                eventstore.entry(pattern.clone()).or_insert(access);
            }
        }
        Grants {
            publish: manifest.publish.clone(),
            keyvalue,
            eventstore,
        }
    }
}

async fn handlers(State(state): State<AdminState>) -> Json<Vec<HandlerView>> {
    let board = state.board.lock().expect("never poisoned");
    let views = board
        .iter()
        .map(|(name, slot)| {
            let current = slot.current.as_ref();
            HandlerView {
                name: name.clone(),
                version: current.map(|d| d.version().to_string()),
                subjects: current
                    .map(|d| {
                        d.bindings()
                            .iter()
                            .map(|b| b.filter_subject.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                state: match current {
                    Some(d) if d.is_consuming() => "consuming",
                    Some(_) => "starting",
                    None => "failed",
                },
                last_error: slot
                    .refused
                    .clone()
                    .or_else(|| current.and_then(|d| d.last_error())),
                grants: current.map(|d| Grants::of(d.manifest())),
            }
        })
        .collect();
    Json(views)
}
