//! JetStream as the runtime uses it: where the servers are and how to
//! reach them ([`endpoint`]), which versions they run and what each can
//! keep safely ([`server`]), and the streams and buckets declared at start
//! ([`declare`]), as the runtime's config file says ([`config_file`]).
//! The atomic batch publish current servers offer is the store's
//! ([`crate::store::batch`]).

pub mod config_file;
pub mod declare;
pub mod endpoint;
pub mod server;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self as nats_jetstream, ErrorCode};
use tokio_util::sync::CancellationToken;

/// Whether a stream lookup failed because the stream does not exist (as
/// opposed to the server not answering).
pub fn stream_not_found(err: &GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Whether stream `name` exists; `Err` when the server could not say.
pub async fn stream_exists(
    js: &nats_jetstream::Context,
    name: &str,
) -> Result<bool, GetStreamError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(err) if stream_not_found(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// `ask`, tried again with a growing pause (250 ms up to 5 s) while it fails,
/// for up to `patience`: a cluster electing its leaders, or a busy server,
/// answers a moment later. Gives up with the last error after `patience`,
/// or at once when `shutdown` is cancelled.
pub async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    patience: Duration,
    shutdown: &CancellationToken,
    mut ask: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    loop {
        let err = match ask().await {
            Ok(answer) => return Ok(answer),
            Err(err) if tokio::time::Instant::now() + pause > deadline => return Err(err),
            Err(err) => err,
        };
        tracing::warn!(error = format!("{err:#}"), retry_in = ?pause, "{what}");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(err),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
