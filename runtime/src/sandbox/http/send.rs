//! Sending one granted request: resolve, check the address, connect, TLS,
//! HTTP/1.1, with every wait bounded by the request's deadlines and the
//! response body capped.
//!
//! This replaces wasmtime-wasi-http's default sender because that one
//! connects to whatever the name resolves to at connect time (the address
//! could not be checked), trusts only the bundled web PKI roots, and has no
//! body cap or overall deadline.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Uri;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use super::origin::{AllowedOrigin, RequestOrigin};

/// The deadlines of one request, already clipped to the invocation's.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub connect: Instant,
    pub first_byte: Instant,
    pub total: Instant,
}

/// Why a granted request did not get a response.
pub enum SendError {
    /// Every address the name resolved to is private and not granted.
    AddressNotGranted(Vec<IpAddr>),
    Failed(Error),
}

impl From<Error> for SendError {
    fn from(err: Error) -> Self {
        SendError::Failed(err)
    }
}

/// Sends `request` to `origin` under `grant`; the response body is cut at
/// `max_body` bytes and at `deadlines.total`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    origin: &RequestOrigin,
    grant: &AllowedOrigin,
    tls: Arc<rustls::ClientConfig>,
    deadlines: Deadlines,
    max_body: u64,
) -> Result<http::Response<WasiBody>, SendError> {
    let addresses = resolve(origin, deadlines.connect).await?;
    let (allowed, refused): (Vec<_>, Vec<_>) = addresses
        .into_iter()
        .partition(|address| grant.may_reach(address.ip()));
    if allowed.is_empty() {
        return Err(SendError::AddressNotGranted(
            refused.iter().map(SocketAddr::ip).collect(),
        ));
    }
    let tcp = connect(&allowed, deadlines.connect).await?;
    let io: Box<dyn Stream> = if origin.https {
        let name =
            ServerName::try_from(origin.host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls = tokio_rustls::TlsConnector::from(tls);
        let stream = tokio::time::timeout_at(deadlines.connect, tls.connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = tokio::time::timeout_at(
        deadlines.connect,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;
    // The connection ends when the response (or the wait for it) is dropped.
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "outbound connection closed with an error");
        }
    });
    // On the wire, the request line holds only the path; Host is a header.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    *request.uri_mut() = Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let first_byte = deadlines.first_byte.min(deadlines.total);
    let response = tokio::time::timeout_at(first_byte, sender.send_request(request))
        .await
        .map_err(|_| Error::HttpResponseTimeout)?
        .map_err(Error::from)?;
    Ok(response.map(|incoming| {
        CappedBody {
            inner: incoming,
            remaining: max_body,
            cap: max_body,
            deadline: Box::pin(tokio::time::sleep_until(deadlines.total)),
        }
        .boxed_unsync()
    }))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T> Stream for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

async fn resolve(origin: &RequestOrigin, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = origin.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, origin.port)]);
    }
    let lookup = tokio::net::lookup_host((origin.host.as_str(), origin.port));
    match tokio::time::timeout_at(deadline, lookup).await {
        Err(_) => Err(Error::DnsTimeout),
        Ok(Err(err)) => Err(Error::DnsError {
            rcode: Some(err.to_string()),
            info_code: None,
        }),
        Ok(Ok(addresses)) => {
            let addresses: Vec<_> = addresses.collect();
            match addresses.is_empty() {
                true => Err(Error::DestinationNotFound),
                false => Ok(addresses),
            }
        }
    }
}

/// Tries the checked addresses in turn until one accepts.
async fn connect(addresses: &[SocketAddr], deadline: Instant) -> Result<TcpStream, Error> {
    let mut last = Error::ConnectionRefused;
    for address in addresses {
        match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last = Error::Connect(err),
        }
    }
    Err(last)
}

/// A response body that fails once it passes `cap` bytes or its deadline.
struct CappedBody {
    inner: hyper::body::Incoming,
    remaining: u64,
    cap: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        tracing::warn!(cap = this.cap, "outbound response body cut at its cap");
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.cap)))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::HttpResponseTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `min(now + bound, deadline)` for each bound.
pub fn deadlines(
    connect: Duration,
    first_byte: Duration,
    total: Duration,
    invocation: Instant,
) -> Deadlines {
    let now = Instant::now();
    let clip = |bound: Duration| (now + bound).min(invocation);
    Deadlines {
        connect: clip(connect),
        first_byte: clip(first_byte),
        total: clip(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wait_is_clipped_to_what_remains_of_the_invocation() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        // Little is left: every bound ends with the invocation.
        let invocation = now + ms(500);
        let clipped = deadlines(ms(10_000), ms(30_000), ms(60_000), invocation);
        assert_eq!(clipped.connect, invocation);
        assert_eq!(clipped.first_byte, invocation);
        assert_eq!(clipped.total, invocation);
        // Plenty is left: each bound is its own.
        let invocation = now + ms(60_000);
        let own = deadlines(ms(100), ms(200), ms(300), invocation);
        assert!(own.connect < own.first_byte && own.first_byte < own.total);
        assert!(own.total <= Instant::now() + ms(300) && own.total < invocation);
        assert!(own.connect >= now + ms(100));
    }
}
