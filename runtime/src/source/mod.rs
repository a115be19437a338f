//! Where events come from: one durable JetStream pull consumer per
//! (handler, subscribed subject).
//!
//! Consumers are durable and named after the handler, so every runtime
//! process running the same handler pulls from the same consumer and the
//! server splits the work between them. Acks are explicit: a message leaves
//! the consumer only when the host says so, after the handler's outcome is
//! settled.
//!
//! NATS 2.9 has no multi-filter consumers, so a handler subscribing to several
//! subjects gets one consumer per subject (`<consumer>-<subject token>`).
//! Messages come off a consumer through a [`Pull`].

mod pull;

pub use pull::{Pull, PullError, PullShape};

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::pull as pull_consumer};

use crate::event::subject;
use crate::handler::manifest::{HandlerManifest, Limits};
use crate::jetstream::server::ServerVersion;

/// Idle heartbeats let the client notice a dead pull (server restart, lost
/// connection) after two missed beats, instead of waiting forever. Short,
/// because no event moves until it is noticed; an idle beat costs the
/// server next to nothing.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request stays open on the server. Kept short because
/// NATS 2.9 cannot cancel a pull request: at shutdown, messages handed back
/// must wait this long so they go to another requester, not back to us (see
/// [`crate::dispatch`]).
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Unacked messages one consumer may have out, across every replica. Above
/// the server's default of 1000 because messages waiting for a delayed retry
/// count too, and they must not stop fresh events from flowing.
const MAX_ACK_PENDING: i64 = 10_000;

/// A durable consumer's lag as JetStream counts it; `None` when the
/// consumer (or its stream) cannot be read.
pub async fn lag(js: &jetstream::Context, stream: &str, durable: &str) -> Option<Lag> {
    let stream = js.get_stream(stream).await.ok()?;
    let mut consumer = (stream.get_consumer::<pull_consumer::Config>(durable).await).ok()?;
    let info = consumer.info().await.ok()?;
    Some(Lag {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
    })
}

/// How far a consumer is behind its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered and not yet settled.
    pub ack_pending: u64,
}

/// How long JetStream waits for a settlement before redelivering. Long
/// enough that a slow invocation, plus waiting its turn behind `concurrency`
/// others, is not redelivered meanwhile.
pub fn ack_wait(limits: &Limits) -> Duration {
    (limits.timeout * 2).max(Duration::from_secs(30))
}

/// How long an idempotency claim holds: a little less than the ack wait,
/// so that when JetStream redelivers the message of a runtime that died
/// holding it, the claim has already expired and the successor takes over
/// at once. Still far longer than a run can take (`timeout` is at most half
/// the ack wait).
pub fn claim_lease(limits: &Limits) -> Duration {
    ack_wait(limits) - Duration::from_secs(2)
}

/// What a handler's consumer on one subject looks like.
#[derive(Debug, Clone)]
pub struct ConsumerBinding {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    config: pull_consumer::Config,
    batch: usize,
}

impl ConsumerBinding {
    /// Finds the stream capturing each subscribed subject. A subject no
    /// stream captures is an error naming it: the handler cannot load.
    pub async fn resolve(
        js: &jetstream::Context,
        handler_name: &str,
        manifest: &HandlerManifest,
    ) -> Result<Vec<ConsumerBinding>> {
        let base = manifest.consumer_name(handler_name);
        let limits = &manifest.limits;
        let mut bindings = Vec::new();
        for filter in &manifest.subscribe {
            let stream = js.stream_by_subject(filter.as_str()).await.with_context(|| {
                format!("no JetStream stream captures subject {filter:?}; declare one in the runtime config")
            })?;
            let durable = if manifest.subscribe.len() == 1 {
                base.clone()
            } else {
                format!("{base}-{}", subject::to_name_token(filter))
            };
            let config = pull_consumer::Config {
                durable_name: Some(durable.clone()),
                description: Some(format!("eventhost handler {handler_name}")),
                filter_subject: filter.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ack_wait(limits),
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            };
            bindings.push(ConsumerBinding {
                stream,
                durable,
                filter_subject: filter.clone(),
                config,
                // Prefetch little: fetched messages' ack timers are running.
                batch: limits.concurrency.clamp(1, 256),
            });
        }
        Ok(bindings)
    }

    /// Creates the consumer, or updates it to this shape. Idempotent, and
    /// shared by every runtime process that runs the handler.
    async fn create(&self, js: &jetstream::Context) -> Result<()> {
        let stream = js
            .get_stream(&self.stream)
            .await
            .with_context(|| format!("looking up stream {}", self.stream))?;
        let mut config = self.config.clone();
        // A rewound consumer starts at a sequence, and the server does not
        // let a deliver policy change: keep the one it has.
        if let Ok(existing) = stream.consumer_info(&self.durable).await {
            config.deliver_policy = existing.config.deliver_policy;
        }
        stream.create_consumer(config).await.with_context(|| {
            format!(
                "creating consumer {} on stream {} for {:?}",
                self.durable, self.stream, self.filter_subject
            )
        })?;
        Ok(())
    }

    /// Makes the consumer deliver again everything past its ack floor, in
    /// stream order, if anything past it was delivered: a new lease holder
    /// of an ordered handler takes over what its predecessor held (see
    /// [`crate::dispatch`]). A missing consumer is left for `open` to create.
    ///
    /// Servers with consumer reset (2.14+) do it in place, in one request;
    /// older ones (or a reset refused) get the consumer deleted and created
    /// again at the ack floor.
    pub async fn rewind(&self, js: &jetstream::Context) -> Result<()> {
        let stream = js
            .get_stream(&self.stream)
            .await
            .with_context(|| format!("looking up stream {}", self.stream))?;
        let Ok(info) = stream.consumer_info(&self.durable).await else {
            return Ok(());
        };
        let floor = info.ack_floor.stream_sequence;
        if info.delivered.stream_sequence <= floor {
            return Ok(());
        }
        let server = ServerVersion::parse(&js.client().server_info().version);
        if server.is_some_and(ServerVersion::resets_consumers) {
            match self.reset_to_ack_floor(js).await {
                Ok(()) => {
                    tracing::info!(consumer = %self.durable, from = floor + 1,
                        unacked = info.num_ack_pending, "reset the consumer to its ack floor");
                    return Ok(());
                }
                Err(err) => tracing::warn!(consumer = %self.durable, error = format!("{err:#}"),
                    "consumer reset refused; recreating the consumer at its ack floor instead"),
            }
        }
        stream
            .delete_consumer(&self.durable)
            .await
            .with_context(|| format!("deleting consumer {} to rewind it", self.durable))?;
        let mut config = self.config.clone();
        config.deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: floor + 1,
        };
        stream
            .create_consumer(config)
            .await
            .with_context(|| format!("recreating consumer {} at {}", self.durable, floor + 1))?;
        tracing::info!(consumer = %self.durable, from = floor + 1,
            unacked = info.num_ack_pending, "rewound the consumer to its ack floor");
        Ok(())
    }

    /// `$JS.API.CONSUMER.RESET` with no sequence: back to the ack floor.
    /// Sent by hand: async-nats has it only behind its `server_2_14`
    /// feature, which changes requests older servers must still accept.
    async fn reset_to_ack_floor(&self, js: &jetstream::Context) -> Result<()> {
        let subject = format!("CONSUMER.RESET.{}.{}", self.stream, self.durable);
        let answer: serde_json::Value = js
            .request(subject, &serde_json::json!({}))
            .await
            .context("consumer reset request")?;
        match answer.get("error") {
            Some(error) => anyhow::bail!("the server refused the reset: {error}"),
            None => Ok(()),
        }
    }

    /// Creates the consumer and opens a continuous pull on it.
    pub async fn open(&self, js: &jetstream::Context) -> Result<Pull> {
        self.create(js).await?;
        let shape = PullShape {
            batch: self.batch,
            expires: PULL_EXPIRES,
            heartbeat: HEARTBEAT,
        };
        Pull::open(js, &self.stream, &self.durable, shape)
            .await
            .with_context(|| format!("pulling from consumer {}", self.durable))
    }
}
