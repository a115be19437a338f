//! The operator console: web pages over what the fleet announces and what
//! JetStream holds, served at `/ui` by a runtime's admin server and by
//! `eventhost console` beside a fleet.
//!
//! - **Everything shown is read from NATS** (the runtimes' announcements,
//!   consumer info, the dead-letter stream), never from the serving
//!   process's memory: any runtime's `/ui`, or a console that runs no
//!   handler, shows the same fleet.
//! - **No build step, no network at run time.** The page is static HTML,
//!   CSS and one small script compiled into the binary; the script polls
//!   JSON under `/ui/api/` and redraws. What is derived (rates, quantiles,
//!   warnings) is computed here, in Rust, where it is unit-tested, so the
//!   script only lays it out.
//! - **Reading is free, acting is not**: anyone who reaches the console
//!   may look; a replay or a purge needs an operator token ([`auth`]) and
//!   is logged with the operator's name. So reaching it is guarded: a
//!   runtime serves it only on a loopback admin address unless told to
//!   (`--console on`), and a console on loopback answers only requests
//!   addressed to a loopback name ([`loopback_host`]), so a web page that
//!   points its own name at 127.0.0.1 (DNS rebinding) cannot read it. The
//!   browser is held strict: no inline script, no framing, no sniffing
//!   ([`security_headers`]).
//!
//! Pages: `/ui` the fleet ([`fleet`]), `/ui/dlq` dead-letter triage
//! ([`dlq`]), `/ui/story` the story of an event ([`story`]), `/ui/state`
//! buckets and event-store subjects ([`state`]); their JSON is in [`api`].

mod api;
pub mod auth;
pub mod dlq;
mod fleet;
pub mod state;
pub mod story;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
pub use auth::Tokens;
pub use fleet::{FleetView, HandlerRow, RuntimeView, latency_label};

/// What the console reads, and what it remembers between two reads.
pub struct Console {
    js: jetstream::Context,
    store: Arc<dyn Store>,
    /// The deploy bucket whose versions the fleet is compared with.
    deploy_bucket: String,
    /// Who may act.
    tokens: Tokens,
    /// Served on a loopback address: answer loopback names only.
    loopback_only: bool,
    rates: fleet::Rates,
}

impl Console {
    /// A console over `js`, comparing the fleet with `deploy_bucket`,
    /// acting for `tokens`, served on `addr`.
    pub fn new(
        js: jetstream::Context,
        store: Arc<dyn Store>,
        deploy_bucket: String,
        tokens: Tokens,
        addr: SocketAddr,
    ) -> Self {
        Console {
            js,
            store,
            deploy_bucket,
            tokens,
            loopback_only: addr.ip().is_loopback(),
            rates: fleet::Rates::default(),
        }
    }
}

const HTML: &str = "text/html; charset=utf-8";
const SCRIPT: &str = "text/javascript; charset=utf-8";

/// The console's routes, all under `/ui`, to serve alone or beside others.
pub fn router(console: Arc<Console>) -> Router {
    let asset =
        |body: &'static str, content_type: &'static str| get(move || page(body, content_type));
    Router::new()
        .route("/ui", asset(include_str!("assets/index.html"), HTML))
        .route("/ui/", asset(include_str!("assets/index.html"), HTML))
        .route("/ui/dlq", asset(include_str!("assets/dlq.html"), HTML))
        .route(
            "/ui/common.js",
            asset(include_str!("assets/common.js"), SCRIPT),
        )
        .route(
            "/ui/fleet.js",
            asset(include_str!("assets/fleet.js"), SCRIPT),
        )
        .route("/ui/dlq.js", asset(include_str!("assets/dlq.js"), SCRIPT))
        .route("/ui/story", asset(include_str!("assets/story.html"), HTML))
        .route(
            "/ui/story.js",
            asset(include_str!("assets/story.js"), SCRIPT),
        )
        .route("/ui/state", asset(include_str!("assets/state.html"), HTML))
        .route(
            "/ui/state.js",
            asset(include_str!("assets/state.js"), SCRIPT),
        )
        .route(
            "/ui/console.css",
            asset(
                include_str!("assets/console.css"),
                "text/css; charset=utf-8",
            ),
        )
        .route("/ui/api/fleet", get(api::fleet))
        .route("/ui/api/whoami", get(api::whoami))
        .route("/ui/api/dlq", get(api::letters))
        .route("/ui/api/dlq/queues", get(api::queues))
        .route("/ui/api/dlq/replay", post(api::replay))
        .route("/ui/api/dlq/purge", post(api::purge))
        .route("/ui/api/dlq/{handler}/{sequence}", get(api::letter))
        .route("/ui/api/record", get(api::record))
        .route("/ui/api/story", get(api::story))
        .route("/ui/api/state/buckets", get(api::buckets))
        .route("/ui/api/state/keys", get(api::keys))
        .route("/ui/api/state/value", get(api::value))
        .route("/ui/api/state/events", get(api::events))
        .route_layer(middleware::from_fn_with_state(console.clone(), same_host))
        .with_state(console)
}

/// Refuses a request to a loopback console that names another host.
async fn same_host(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    if console.loopback_only && !loopback_host(request.headers()) {
        let why = "this console answers requests to localhost, 127.0.0.1 or [::1] only";
        let mut response = (StatusCode::MISDIRECTED_REQUEST, why).into_response();
        security_headers(&mut response);
        return response;
    }
    next.run(request).await
}

/// Whether the request's `Host` is a loopback name.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Serves the console alone (`eventhost console`) on `listener` until
/// `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Arc<Console>,
    shutdown: CancellationToken,
) -> Result<()> {
    let app = Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .merge(router(console));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the console")
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    security_headers(&mut response);
    response
}

/// Scripts only from the console itself, never in a frame, types as
/// declared: what a page that will carry actions needs from the browser.
fn security_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_reach_a_loopback_console() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().unwrap());
            loopback_host(&headers)
        };
        for ok in [
            "127.0.0.1:9898",
            "localhost:9899",
            "LOCALHOST",
            "[::1]:9898",
            "127.0.0.2",
        ] {
            assert!(host(ok), "{ok}");
        }
        for refused in [
            "evil.example:9898",
            "10.0.0.5:9898",
            "[fe80::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!host(refused), "{refused}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }
}
