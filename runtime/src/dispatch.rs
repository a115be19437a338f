//! One handler's event loop: source → decode → policy → sandbox → outcome.
//!
//! Each subscribed subject has its own pull loop; all of a handler's loops
//! share one semaphore of `limits.concurrency` permits, and a message is only
//! pulled off the stream once a permit is free, so the runtime never holds
//! more fetched-but-unstarted messages than a batch.
//!
//! Shutdown stops the pulls, hands messages that were fetched but not started
//! back to JetStream (a NAK, so another replica gets them within seconds
//! rather than after the ack wait), then waits for every started event to
//! finish and settle.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Message};
use cloudevents::AttributesReader;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::decode::{self, Decoded};
use crate::outcome::{self, Settle};
use crate::policy;
use crate::sandbox::HandlerComponent;
use crate::source::ConsumerBinding;

/// Longest pause between attempts to (re)open a consumer.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);

/// A loaded handler and what it consumes.
pub struct Dispatcher {
    component: HandlerComponent,
    bindings: Vec<ConsumerBinding>,
    js: jetstream::Context,
}

impl Dispatcher {
    pub fn new(
        component: HandlerComponent,
        bindings: Vec<ConsumerBinding>,
        js: jetstream::Context,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            component,
            bindings,
            js,
        })
    }

    pub fn name(&self) -> &str {
        &self.component.identity().name
    }

    /// Consumes until `shutdown`, then drains in-flight events.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(
            self.component.identity().limits().concurrency,
        ));
        let in_flight = TaskTracker::new();
        let pulls: Vec<_> = (0..self.bindings.len())
            .map(|i| {
                let this = self.clone();
                let (permits, in_flight, shutdown) =
                    (permits.clone(), in_flight.clone(), shutdown.clone());
                tokio::spawn(async move { this.pull(i, permits, in_flight, shutdown).await })
            })
            .collect();
        futures::future::join_all(pulls).await;
        in_flight.close();
        if !in_flight.is_empty() {
            tracing::info!(
                handler = self.name(),
                events = in_flight.len(),
                "draining in-flight events"
            );
        }
        in_flight.wait().await;
        tracing::info!(handler = self.name(), "stopped");
    }

    async fn pull(
        self: Arc<Self>,
        binding: usize,
        permits: Arc<Semaphore>,
        in_flight: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let binding = &self.bindings[binding];
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let mut messages = match binding.open(&self.js).await {
                Ok(messages) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(handler = self.name(), consumer = %binding.durable,
                        stream = %binding.stream, subject = %binding.filter_subject, "consuming");
                    messages
                }
                Err(err) => {
                    tracing::warn!(handler = self.name(), error = format!("{err:#}"), retry_in = ?backoff,
                        "cannot open the consumer");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
                    continue;
                }
            };
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return release_prefetched(messages).await,
                    permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                };
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return release_prefetched(messages).await,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let this = self.clone();
                        in_flight.spawn(async move {
                            this.process(message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(err)) => {
                        // Missed heartbeats, a deleted consumer, a restarted
                        // server: start over with a fresh consumer and pull.
                        tracing::warn!(handler = self.name(), error = %err, "consumer stream failed; reopening");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// Takes one message all the way to its settlement.
    async fn process(&self, message: Message) {
        let identity = self.component.identity();
        let (stream_sequence, attempt) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or_default();
        let decoded = match decode::decode(message.headers.as_ref(), &message.payload) {
            Ok(decoded) => decoded,
            Err(reason) => {
                tracing::warn!(handler = %identity.name, version = %identity.version,
                    nats_subject = %message.subject, stream_sequence, outcome = "invalid",
                    %reason, "not a valid CloudEvent; terminating it");
                outcome::settle(&message, policy::after_invalid_event()).await;
                return;
            }
        };
        let span = tracing::info_span!("event",
            handler = %identity.name,
            version = %identity.version,
            event_id = %decoded.event.id(),
            event_type = %decoded.event.ty(),
            nats_subject = %message.subject,
            attempt,
        );
        self.handle(&message, decoded).instrument(span).await;
    }

    async fn handle(&self, message: &Message, input: Decoded) {
        let identity = self.component.identity();
        let invocation = self.component.invoke(&input.event).await;
        let duration_us = invocation.elapsed.as_micros() as u64;
        let emitted = match invocation.result {
            Ok(emitted) => emitted,
            Err(failure) => {
                tracing::warn!(outcome = "failed", kind = %failure.kind, error = %failure.message,
                    duration_us, "handler failed");
                outcome::settle(message, policy::after_failure(&failure)).await;
                return;
            }
        };
        let stored = outcome::publish_emitted(&self.js, identity, &input, emitted).await;
        match stored {
            Ok(emitted) => {
                outcome::settle(message, Settle::Ack).await;
                tracing::info!(
                    outcome = "succeeded",
                    emitted,
                    duration_us,
                    peak_memory = invocation.peak_memory,
                    "handled"
                );
            }
            Err(err) => {
                let settle = policy::after_output_error();
                tracing::warn!(
                    outcome = "retried",
                    error = format!("{err:#}"),
                    ?settle,
                    "handled, but the outputs were not stored"
                );
                outcome::settle(message, settle).await;
            }
        }
    }
}

/// NAKs every message already buffered in the pull, without waiting for more.
///
/// NATS 2.9 cannot cancel our open pull request and keeps delivering to it
/// even once we stop reading, so an immediate NAK would bounce the message
/// straight back to this process. Delaying the redelivery past the request's
/// lifetime sends it to another replica (or our successor) instead.
async fn release_prefetched(mut messages: async_nats::jetstream::consumer::pull::Stream) {
    let mut released = 0;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let delay = crate::source::PULL_EXPIRES;
        outcome::settle(&message, Settle::Retry { delay }).await;
        released += 1;
    }
    if released > 0 {
        tracing::info!(released, "returned prefetched messages to JetStream");
    }
}
