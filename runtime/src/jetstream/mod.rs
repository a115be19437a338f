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

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self as nats_jetstream, ErrorCode};

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
