//! The delivery policy: what becomes of an event after an attempt.
//!
//! Keeping every such decision here, apart from the mechanics of acking in
//! [`crate::outcome`], is what lets retry, dead-lettering, deduplication and
//! ordering grow without touching the rest of the pipeline.
//!
//! Today's policy is deliberately plain: an event that cannot succeed as it
//! stands is terminated (never redelivered), and a failure of the host's own
//! work — storing the outputs — is retried, because the handler's part
//! succeeded and a re-run is harmless (outputs are deduplicated by id).

use std::time::Duration;

use crate::outcome::Settle;
use crate::sandbox::Failure;

/// Redelivery delay after the outputs of a successful invocation could not
/// be stored (NATS unavailable, stream full).
pub const OUTPUT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The handler failed. Retryable failures are terminated as well until the
/// retry policy lands: redelivering them forever would be worse.
pub fn after_failure(_failure: &Failure) -> Settle {
    Settle::Terminate
}

/// The message is not a CloudEvent: no handler can ever accept it.
pub fn after_invalid_event() -> Settle {
    Settle::Terminate
}

/// The handler succeeded but its outputs were not stored.
pub fn after_output_error() -> Settle {
    Settle::Retry {
        delay: OUTPUT_RETRY_DELAY,
    }
}
