//! The outbound HTTP capability: `wasi:http/outgoing-handler` (0.2), for
//! handlers whose manifest grants origins.
//!
//! - Manifest: the `[http]` section ([`HttpSection`]): the allowed origins
//!   (see [`origin`]), timeouts, a response body cap, a cap on requests per
//!   invocation, and an optional CA file trusted beside the system roots.
//! - Resolved at load: [`OutboundGrants`], the parsed origins and the TLS
//!   configuration. No section, no `wasi:http` in the linker: a component
//!   that imports it then fails to load, naming the section.
//! - Per invocation: [`HttpState`], the wasi-http context and the hooks that
//!   check and send each request ([`OutboundHooks`]).
//! - Effects: none buffered. A request leaves when the guest sends it, so it
//!   is at-least-once like any call a retried handler makes. What makes the
//!   effect once is the `Idempotency-Key` the host adds (unless the guest set
//!   one): a UUIDv5 of (handler, event source, event id, index of the request
//!   in the invocation), the same on every retry, re-run and redelivery, so
//!   a provider that honours such keys performs the effect once.
//!
//! A refused request (origin not granted, a private address not granted,
//! one request too many) answers the guest with `HTTP-request-denied` or
//! `destination-IP-prohibited`, is logged and counted; one request too many
//! also fails the invocation, whatever the guest returns. Redirects are not
//! followed by the host: a guest that follows one sends a new request, which
//! is checked like any other.

mod metrics;
mod origin;
mod send;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytesize::ByteSize;
use http::HeaderValue;
use serde::Deserialize;
use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use super::capability::{Capability, EventContext, InvocationContext, View};
use crate::failure::{Failure, FailureKind};
pub use metrics::{HandlerHttpMetrics, HttpMetrics};
pub use origin::{AllowedOrigin, RequestOrigin};

/// The namespace of host-made idempotency keys ("eventhost-http-1").
pub const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6576656e_7468_6f73_742d_687474702d31);

/// The manifest's `[http]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `scheme://host[:port]` entries; see [`origin`].
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default = "defaults::connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::first_byte", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// From sending to the last byte of the response.
    #[serde(default = "defaults::total", with = "humantime_serde")]
    pub total_timeout: Duration,
    #[serde(default = "defaults::max_requests")]
    pub max_requests: u32,
    #[serde(default = "defaults::max_response_body")]
    pub max_response_body: ByteSize,
    /// PEM certificates trusted beside the system's roots.
    pub ca_file: Option<PathBuf>,
}

mod defaults {
    use super::*;
    pub fn connect() -> Duration {
        Duration::from_secs(2)
    }
    pub fn first_byte() -> Duration {
        Duration::from_secs(10)
    }
    pub fn total() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_requests() -> u32 {
        16
    }
    pub fn max_response_body() -> ByteSize {
        ByteSize::mib(1)
    }
}

impl HttpSection {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.allowed_outbound_hosts.is_empty(),
            "`http.allowed_outbound_hosts` is empty; leave the [http] section out to grant no network"
        );
        for entry in &self.allowed_outbound_hosts {
            AllowedOrigin::parse(entry).context("`http.allowed_outbound_hosts`")?;
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("total_timeout", self.total_timeout),
        ] {
            ensure!(
                !value.is_zero(),
                "`http.{name}` must be above zero, got {value:?}"
            );
        }
        ensure!(
            (1..=1000).contains(&self.max_requests),
            "`http.max_requests` must be between 1 and 1000, got {}",
            self.max_requests
        );
        ensure!(
            self.max_response_body >= ByteSize::b(1) && self.max_response_body <= ByteSize::gib(1),
            "`http.max_response_body` must be between 1 B and 1 GiB, got {}",
            self.max_response_body
        );
        Ok(())
    }
}

/// What a handler may call, resolved at load.
pub struct OutboundGrants {
    pub handler: String,
    pub origins: Vec<AllowedOrigin>,
    section: HttpSection,
    tls: Arc<rustls::ClientConfig>,
}

/// Parses the grants and builds the TLS configuration (the CA file must
/// exist and hold certificates).
pub fn resolve(section: &HttpSection, handler: &str) -> Result<Arc<OutboundGrants>> {
    section.validate()?;
    let origins = section
        .allowed_outbound_hosts
        .iter()
        .map(|entry| AllowedOrigin::parse(entry))
        .collect::<Result<_>>()?;
    Ok(Arc::new(OutboundGrants {
        handler: handler.to_string(),
        origins,
        tls: tls_config(section.ca_file.as_deref())?,
        section: section.clone(),
    }))
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    let system = SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("`http.ca_file` {}", path.display()))?;
        ensure!(
            !certs.is_empty(),
            "`http.ca_file` {} holds no certificate",
            path.display()
        );
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("`http.ca_file` {}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a request was refused; the `reason` label of the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotGranted,
    PrivateAddress,
    TooManyRequests,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotGranted => "not_granted",
            Refusal::PrivateAddress => "private_address",
            Refusal::TooManyRequests => "too_many_requests",
        }
    }
}

/// One request of an invocation, for the metrics.
#[derive(Debug, Clone)]
pub enum HttpCall {
    /// Sent under `grant`: the response's status, or none if it failed.
    Sent {
        grant: String,
        status: Option<u16>,
        elapsed: Duration,
    },
    Refused(Refusal),
}

/// The per-invocation state: wasi-http's context and our hooks.
pub struct HttpState {
    pub(super) ctx: WasiHttpCtx,
    pub(super) hooks: OutboundHooks,
}

impl HttpState {
    /// `caller`: the event the requests are made for, which the
    /// idempotency keys and the trace header derive from.
    pub fn new(
        grants: Option<Arc<OutboundGrants>>,
        caller: EventContext,
        deadline: Instant,
    ) -> Self {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                grants,
                caller,
                deadline,
                sent: 0,
                refused: None,
                calls: Arc::new(Mutex::new(Vec::new())),
            },
        }
    }

    /// The requests made so far, for the metrics.
    pub fn calls(&self) -> Vec<HttpCall> {
        self.hooks.calls.lock().expect("never poisoned").clone()
    }

    /// A refusal that fails the invocation.
    pub fn take_refusal(&mut self) -> Option<Failure> {
        self.hooks.refused.take()
    }
}

/// Checks and sends each outgoing request.
pub struct OutboundHooks {
    grants: Option<Arc<OutboundGrants>>,
    caller: EventContext,
    deadline: Instant,
    /// Requests asked for so far: the next one's index.
    sent: u32,
    /// Set from the hook itself (never from a spawned send), so no lock.
    refused: Option<Failure>,
    calls: Arc<Mutex<Vec<HttpCall>>>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl OutboundHooks {
    fn refuse(&self, refusal: Refusal, error: Error) -> SendFuture {
        self.calls
            .lock()
            .expect("never poisoned")
            .push(HttpCall::Refused(refusal));
        Box::new(async move { Err(error) })
    }

    /// The host's headers on request `index`: an `Idempotency-Key` unless
    /// the guest set one, and the handling span's `traceparent`.
    fn add_headers(&self, headers: &mut http::HeaderMap, grants: &OutboundGrants, index: u32) {
        if !headers.contains_key("idempotency-key") {
            let key = self.idempotency_key(grants, index);
            headers.insert(
                "idempotency-key",
                HeaderValue::from_str(&key).expect("a UUID"),
            );
        }
        if let Some(traceparent) = &self.caller.traceparent
            && let Ok(value) = HeaderValue::from_str(traceparent)
        {
            headers.entry("traceparent").or_insert(value);
        }
    }

    /// The key every attempt at this request sends.
    fn idempotency_key(&self, grants: &OutboundGrants, index: u32) -> String {
        let name = format!(
            "{}\n{}\n{}\n{index}",
            grants.handler, self.caller.source, self.caller.id
        );
        uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string()
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        // Never linked without grants; refuse rather than trust that.
        let Some(grants) = self.grants.clone() else {
            return self.refuse(Refusal::NotGranted, Error::HttpRequestDenied);
        };
        let index = self.sent;
        self.sent += 1;
        let uri = request.uri().clone();
        if self.sent > grants.section.max_requests {
            let max = grants.section.max_requests;
            tracing::warn!(
                max,
                host = uri.host().unwrap_or(""),
                "outbound request refused: over the cap per invocation"
            );
            let why = format!("made more than {max} outbound requests (http.max_requests)");
            (self.refused).get_or_insert(Failure::new(FailureKind::LimitExceeded, why));
            return self.refuse(Refusal::TooManyRequests, Error::HttpRequestDenied);
        }
        let Some(origin) = request_origin(&uri) else {
            return Box::new(async { Err(Error::HttpRequestUriInvalid) });
        };
        let Some(grant) = grants.origins.iter().find(|g| g.matches(&origin)).cloned() else {
            tracing::warn!(%origin, "outbound request refused: origin not granted");
            return self.refuse(Refusal::NotGranted, Error::HttpRequestDenied);
        };
        self.add_headers(request.headers_mut(), &grants, index);
        let section = &grants.section;
        let deadlines = send::deadlines(
            section.connect_timeout,
            section.first_byte_timeout,
            section.total_timeout,
            tokio::time::Instant::from_std(self.deadline),
        );
        let max_body = section.max_response_body.as_u64();
        let tls = grants.tls.clone();
        let calls = self.calls.clone();
        let span = tracing::info_span!("http", %origin, grant = %grant.text, method = %request.method(), index);
        Box::new(
            async move {
                let started = Instant::now();
                let result = send::send(request, &origin, &grant, tls, deadlines, max_body).await;
                let elapsed = started.elapsed();
                let (call, result) = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        tracing::debug!(status, elapsed_ms = elapsed.as_millis() as u64, "outbound response");
                        let call = HttpCall::Sent { grant: grant.text.clone(), status: Some(status), elapsed };
                        (call, Ok(response))
                    }
                    Err(send::SendError::AddressNotGranted(addresses)) => {
                        tracing::warn!(?addresses, "outbound request refused: resolves to a private address the grant does not name");
                        (HttpCall::Refused(Refusal::PrivateAddress), Err(Error::DestinationIpProhibited))
                    }
                    Err(send::SendError::Failed(err)) => {
                        tracing::info!(error = %err, elapsed_ms = elapsed.as_millis() as u64, "outbound request failed");
                        let call = HttpCall::Sent { grant: grant.text.clone(), status: None, elapsed };
                        (call, Err(err))
                    }
                };
                calls.lock().expect("never poisoned").push(call);
                let response = result?;
                let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, io))
            }
            .instrument(span),
        )
    }
}

/// The origin of an absolute request URI, with the scheme's default port.
fn request_origin(uri: &http::Uri) -> Option<RequestOrigin> {
    let https = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let host = uri.host()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(RequestOrigin {
        https,
        host: host.to_ascii_lowercase(),
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
    })
}

/// The outbound HTTP capability.
pub struct Http;

impl Capability for Http {
    type Grant = OutboundGrants;
    type State = HttpState;
    const GRANTED_BY: Option<&'static str> = Some("[http] (the origins it may call)");
    const NEEDS_CLAIM: bool = true;
    const IMPORTS: &'static [&'static str] = &["wasi:http/"];

    fn state(grant: Option<&Arc<OutboundGrants>>, invocation: &InvocationContext) -> HttpState {
        // Only outbound calls need to know who calls.
        let caller = match grant {
            Some(_) => EventContext::of(invocation),
            None => EventContext::default(),
        };
        HttpState::new(grant.cloned(), caller, invocation.deadline)
    }

    /// wasi:http reaches its state through the store data's
    /// `WasiHttpView`, which shares WASI's resource table.
    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }

    fn take_refusal(state: &mut HttpState) -> Option<Failure> {
        state.take_refusal()
    }

    type Usage = Vec<HttpCall>;
    type Metrics = HttpMetrics;
    type Series = HandlerHttpMetrics;

    fn usage(state: &HttpState) -> Vec<HttpCall> {
        state.calls()
    }

    fn register(metrics: &HttpMetrics, registry: &mut prometheus_client::registry::Registry) {
        metrics.register(registry);
    }

    fn series(
        metrics: &HttpMetrics,
        handler: &str,
        grant: Option<&OutboundGrants>,
    ) -> HandlerHttpMetrics {
        metrics.for_handler(handler, grant)
    }

    fn record(series: &HandlerHttpMetrics, calls: &Vec<HttpCall>) {
        for call in calls {
            series.record(call);
        }
    }
}
