//! One attempt at one event: claim it, run it, act on the verdict.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};

use super::Dispatcher;
use crate::decode::{ContentMode, Decoded};
use crate::metrics::Outcome;
use crate::outcome::{self, DeadLetter, Settle};
use crate::policy::dedup::{Claim, Lease};
use crate::policy::{self, HOST_RETRY_DELAY, Verdict};
use crate::sandbox::{Failure, FailureKind, Invocation};
use crate::trace::TraceContext;

/// Where an event stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Acked (handled, a duplicate, or dead-lettered): nothing more to do.
    Settled,
    /// Not settled: it must be tried again after `delay`. `failed` says
    /// whether the handler failed (an attempt was used up) or the host
    /// could not proceed.
    Again { delay: Duration, failed: bool },
}

impl Dispatcher {
    /// Makes one attempt. `failed_in_place` counts the failed attempts this
    /// process already made on this delivery (ordered handlers retry in
    /// place, where JetStream's delivery count does not move).
    pub(super) async fn attempt(
        &self,
        message: &Message,
        input: &Decoded,
        trace: &TraceContext,
        failed_in_place: u32,
    ) -> Next {
        let identity = self.component.identity();
        let lease = match self.processed.claim(&input.event).await {
            Ok(Claim::Acquired(lease)) => lease,
            Ok(Claim::AlreadyHandled) => {
                outcome::settle(message, Settle::Ack).await;
                self.count(Outcome::Duplicate);
                tracing::info!(
                    outcome = Outcome::Duplicate.as_str(),
                    "already handled; skipped"
                );
                return Next::Settled;
            }
            Ok(Claim::Busy(wait)) => {
                tracing::debug!(?wait, "another run holds this event; waiting for it");
                let delay = wait.clamp(Duration::from_millis(100), HOST_RETRY_DELAY * 5);
                return Next::Again {
                    delay,
                    failed: false,
                };
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot claim the event; retrying"
                );
                return Next::Again {
                    delay: HOST_RETRY_DELAY,
                    failed: false,
                };
            }
        };

        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let attempt =
            policy::attempt_number(delivered, lease.history.failures).max(failed_in_place + 1);
        tracing::Span::current().record("attempt", attempt);
        let retry = &identity.manifest.retry;
        if attempt > retry.max_attempts {
            // Earlier deliveries ended without an outcome we could record (a
            // crash, a kill) or the dead letter could not be written then.
            let kind = lease.history.last_kind.clone();
            let error = lease.history.last_error.clone();
            let (kind, error) = match (kind, error) {
                (Some(kind), Some(error)) => (kind, error),
                _ => (
                    "no_outcome".to_string(),
                    format!(
                        "delivered {attempt} times; earlier attempts ended without an outcome (runtime crash or kill?)"
                    ),
                ),
            };
            return self
                .dead_letter_claimed(message, input, lease, &kind, &error, attempt - 1)
                .await;
        }

        let invocation = self.component.invoke(&input.event, attempt).await;
        let duration_us = invocation.elapsed.as_micros() as u64;
        self.record_invocation(&invocation);
        let failure = match invocation.result {
            Ok(emitted) => {
                match outcome::publish_emitted(&self.js, identity, input, trace, emitted).await {
                    Ok(emitted) => {
                        if let Err(err) = self.processed.done(lease, &identity.version).await {
                            tracing::warn!(
                                error = format!("{err:#}"),
                                "could not record the success"
                            );
                        }
                        outcome::settle(message, Settle::Ack).await;
                        self.count(Outcome::Succeeded);
                        self.metrics.emitted.inc_by(emitted as u64);
                        tracing::info!(
                            outcome = Outcome::Succeeded.as_str(),
                            attempt,
                            emitted,
                            duration_us,
                            peak_memory = invocation.peak_memory,
                            "handled"
                        );
                        return Next::Settled;
                    }
                    Err(err) => Failure {
                        kind: FailureKind::Output,
                        message: format!("the outputs were not stored: {err:#}"),
                    },
                }
            }
            Err(failure) => failure,
        };
        self.metrics.failure(failure.kind.as_str()).inc();
        self.set_last_error(failure.to_string());

        match policy::after_failure(retry, &failure, attempt) {
            Verdict::Retry(delay) => {
                let kind = failure.kind.as_str();
                if let Err(err) = self.processed.failed(lease, kind, &failure.message).await {
                    tracing::warn!(error = format!("{err:#}"), "could not record the failure");
                }
                self.count(Outcome::Retried);
                tracing::warn!(outcome = Outcome::Retried.as_str(), kind, error = %failure.message, attempt,
                    retry_in_ms = delay.as_millis() as u64, duration_us, "attempt failed; will retry");
                Next::Again {
                    delay,
                    failed: true,
                }
            }
            Verdict::DeadLetter => {
                self.dead_letter_claimed(
                    message,
                    input,
                    lease,
                    failure.kind.as_str(),
                    &failure.message,
                    attempt,
                )
                .await
            }
        }
    }

    fn record_invocation(&self, invocation: &Invocation) {
        let m = &self.metrics;
        m.duration.observe(invocation.elapsed.as_secs_f64());
        m.instantiation
            .observe(invocation.instantiation.as_secs_f64());
        // A maximum across concurrent invocations: one atomic step.
        let peak = i64::try_from(invocation.peak_memory).unwrap_or(i64::MAX);
        m.peak_memory.inner().fetch_max(peak, Relaxed);
    }

    /// Dead-letters a claimed event, then acks it and drops its record.
    async fn dead_letter_claimed(
        &self,
        message: &Message,
        input: &Decoded,
        lease: Lease,
        kind: &str,
        error: &str,
        attempts: u32,
    ) -> Next {
        let first_failure = lease.history.first_failure;
        match self
            .dead_letter(
                message,
                Some(input.mode),
                kind,
                error,
                attempts,
                first_failure,
            )
            .await
        {
            Next::Settled => {
                if let Err(err) = self.processed.forget(lease).await {
                    tracing::warn!(error = format!("{err:#}"), "could not clear the record");
                }
                Next::Settled
            }
            again => {
                if let Err(err) = self.processed.release(lease).await {
                    tracing::warn!(error = format!("{err:#}"), "could not release the claim");
                }
                again
            }
        }
    }

    /// Parks `message` in the dead-letter queue, then acks it. If the dead
    /// letter cannot be stored the message is kept for another try.
    pub(super) async fn dead_letter(
        &self,
        message: &Message,
        mode: Option<ContentMode>,
        kind: &str,
        error: &str,
        attempts: u32,
        first_failure: Option<DateTime<Utc>>,
    ) -> Next {
        let identity = self.component.identity();
        let now = Utc::now();
        let letter = DeadLetter {
            handler: &identity.name,
            version: &identity.version,
            error_kind: kind,
            error,
            attempts,
            first_failure: first_failure.unwrap_or(now),
            last_failure: now,
            mode,
        };
        match letter.publish(&self.js, message).await {
            Ok(()) => {
                outcome::settle(message, Settle::Ack).await;
                let outcome = if kind == INVALID_EVENT || kind == TOO_LARGE {
                    Outcome::Invalid
                } else {
                    Outcome::DeadLettered
                };
                self.count(outcome);
                tracing::warn!(
                    outcome = outcome.as_str(),
                    kind,
                    error,
                    attempts,
                    "moved to the dead-letter queue"
                );
                Next::Settled
            }
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    kind,
                    "could not store the dead letter; the event stays in its stream for now"
                );
                Next::Again {
                    delay: HOST_RETRY_DELAY,
                    failed: false,
                }
            }
        }
    }
}

/// Dead-letter kind of a message that is not a CloudEvent.
pub(super) const INVALID_EVENT: &str = "invalid_event";
/// Dead-letter kind of an event over `limits.max_event_size`.
pub(super) const TOO_LARGE: &str = "too_large";
