//! One handler's event loop: source → decode → policy → sandbox → outcome.
//!
//! Each subscribed subject has its own pull loop; all of a handler's loops
//! share one semaphore of `limits.concurrency` permits, and a message is only
//! pulled off the stream once a permit is free, so the runtime never holds
//! more fetched-but-unstarted messages than a batch.
//!
//! An event that fails is retried after its backoff. Without ordering this is
//! a delayed NAK: JetStream keeps the event meanwhile and redelivers it here
//! or to another replica, and other events keep flowing. With
//! `ordering = "key"` the event's worker retries it in place while its key's
//! later events wait (see [`keyed`]).
//!
//! An ordered handler's consumer is pulled by one runtime of the fleet at a
//! time, the holder of its lease (see [`owned`] and [`crate::fleet::lease`]).
//!
//! Shutdown stops the pulls, hands messages that were fetched but not started
//! back to JetStream (a NAK, so another replica gets them within seconds
//! rather than after the ack wait), then waits for every started attempt to
//! finish and settle.
//!
//! The [`Dispatcher`] pulls, holds permits, orders and leases; an attempt at
//! one event is [`attempt::Attempts`]'s, and returns what should become of
//! the message; every message is settled in one place, [`settle`].

mod attempt;
mod give_up;
mod keyed;
mod owned;
mod receive;
mod resume;
mod settle;
mod unclaimed;

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

use crate::contract::LiveContracts;
use crate::event::decode::Decoded;
use crate::event::trace::TraceContext;
use crate::fleet::lease::Leases;
use crate::handler::manifest::{HandlerManifest, Ordering};
use crate::ledger::processed::{self, ProcessedEvents};
use crate::ledger::record::CommitRecords;
use crate::metrics::{HandlerStats, Metrics};
use crate::outcome::trail::Trail;
use crate::policy::ordering::KeyedQueue;
use crate::sandbox::{Capabilities, HandlerComponent};
use crate::source::{self, ConsumerBinding, PULL_EXPIRES, Pull};
use crate::store::Store;
use attempt::Attempts;
use receive::Work;
use settle::{Delivery, Settlement};

/// Longest pause between attempts to (re)open a consumer.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);
/// How often held messages' ack timers are reset; well under the shortest
/// ack wait (30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What every handler of one runtime shares.
#[derive(Clone)]
pub struct Services {
    pub js: jetstream::Context,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Replicas of the idempotency bucket a dispatcher declares (see
    /// [`crate::jetstream::declare::Replication`]).
    pub replicas: usize,
    /// Whether handlers that need no claim ([`Capabilities::need_claim`],
    /// `[idempotency] claim`) may run without one: the servers are new
    /// enough (nats-server 2.14.4) for the protocol of one decisive write.
    /// Older ones keep the claim for every event.
    ///
    /// [`Capabilities::need_claim`]: crate::sandbox::Capabilities::need_claim
    pub unclaimed_runs: bool,
    /// Whether a handler whose state lives in one stream commits in one
    /// atomic batch there, if that stream is shaped for it (see
    /// [`crate::ledger::batch`]).
    pub atomic_commits: bool,
    /// Leases of ordered consumers. `None` consumes them without one, for a
    /// single process such as `eventhost projection rebuild`.
    pub leases: Option<Arc<Leases>>,
    /// The event contracts inputs are checked against before they run.
    pub contracts: Arc<LiveContracts>,
    /// Where each attempt's outcome is told, for the story of an event.
    pub trail: Trail,
}

/// Where a handler's commit records live: the one stream its grants let
/// it write state to, if that stream holds commit records (captures their
/// subjects). Records are looked for there on every takeover, whatever
/// this runtime does: another runtime of the fleet may have left one. This
/// one commits there in one batch itself only with `atomic_commits` and a
/// stream that takes batches and TTLs. Not knowing the stream's shape (NATS
/// did not answer for [`SHAPE_PATIENCE`]) fails the load: guessing "no
/// records" would skip those lookups.
async fn commit_records(
    store: &dyn Store,
    capabilities: &Capabilities,
    consumer: &str,
    (manifest, atomic_commits): (&HandlerManifest, bool),
) -> Result<Option<CommitRecords>> {
    let Ok([stream]) = <[String; 1]>::try_from(capabilities.written_streams()) else {
        return Ok(None);
    };
    let subjects = crate::store::commit_records_subjects(&stream);
    let what = "cannot tell yet which stream holds the commit records";
    let never = CancellationToken::new();
    let ask = || store.stream_capturing(&subjects);
    let found = (crate::jetstream::patiently(what, SHAPE_PATIENCE, &never, ask).await)
        .with_context(|| format!("reading the shape of stream {stream}"))?;
    let shape = match found {
        Some(shape) if shape.name == stream => shape,
        found => {
            tracing::info!(%stream, ?found, "state commits take the record protocol: \
                the stream holds no commit records");
            return Ok(None);
        }
    };
    let records = CommitRecords::new(&stream, consumer, manifest.idempotency.window);
    if atomic_commits && shape.atomic_commits {
        tracing::info!(%stream, "state commits are made in one atomic batch");
        return Ok(Some(records));
    }
    tracing::info!(%stream, "state commits take the record protocol; \
        commit records other runtimes leave are resumed");
    Ok(Some(records.read_only()))
}

/// How long a load waits for NATS to say which stream holds its commit
/// records before it fails (a failed load waits for the next reload).
const SHAPE_PATIENCE: Duration = Duration::from_secs(30);

/// A loaded handler and what it consumes.
pub struct Dispatcher {
    attempts: Attempts,
    bindings: Vec<ConsumerBinding>,
    leases: Option<Arc<Leases>>,
    /// Events waiting behind an earlier one with their key (`ordering = "key"`).
    waiting: KeyedQueue<Held>,
    /// Whether each binding's pull is open (readiness).
    consuming: Vec<AtomicBool>,
    /// Cancelled once `run` has drained and returned.
    stopped: CancellationToken,
}

/// A decoded event held until its key's worker gets to it.
struct Held {
    delivery: Delivery,
    input: Decoded,
    trace: TraceContext,
    span: Span,
}

impl Dispatcher {
    pub async fn new(
        component: HandlerComponent,
        manifest: HandlerManifest,
        bindings: Vec<ConsumerBinding>,
        services: &Services,
    ) -> Result<Arc<Self>> {
        let Services {
            js,
            store,
            metrics,
            replicas,
            unclaimed_runs,
            atomic_commits,
            leases,
            contracts,
            trail,
        } = services.clone();
        let spec = component.spec();
        let consumer = manifest.consumer_name(&spec.name);
        processed::declare(&js, &consumer, manifest.idempotency.window, replicas).await?;
        let lease = source::claim_lease(&manifest.limits);
        let with = (&manifest, atomic_commits);
        let records = commit_records(&*store, &spec.capabilities, &consumer, with).await?;
        let processed =
            ProcessedEvents::new(store.clone(), &consumer, lease).with_commit_records(records);
        let metrics = metrics.for_handler(&spec.name, &spec.version, &spec.capabilities);
        // The record around the plan (lease, history) and the message's
        // headers take a little of the server's limit.
        let max_record = js.client().server_info().max_payload.saturating_sub(4096);
        let claims =
            !unclaimed_runs || manifest.idempotency.claim || spec.capabilities.need_claim();
        let attempts = Attempts {
            claims,
            component,
            manifest,
            js,
            store,
            processed,
            max_record,
            metrics,
            contracts,
            trail,
            last_error: Mutex::new(None),
        };
        Ok(Arc::new(Dispatcher {
            consuming: bindings.iter().map(|_| AtomicBool::new(false)).collect(),
            attempts,
            bindings,
            leases,
            waiting: KeyedQueue::default(),
            stopped: CancellationToken::new(),
        }))
    }

    pub fn name(&self) -> &str {
        self.attempts.name()
    }

    /// The content hash of the component and manifest this dispatcher runs.
    pub fn version(&self) -> &str {
        self.attempts.version()
    }

    pub fn manifest(&self) -> &HandlerManifest {
        &self.attempts.manifest
    }

    /// The durable consumer name (before the per-subject suffix).
    pub fn consumer(&self) -> String {
        self.attempts.manifest.consumer_name(self.name())
    }

    /// Resolves once [`Dispatcher::run`] has drained and returned.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    /// The consumers this handler pulls from.
    pub fn bindings(&self) -> &[ConsumerBinding] {
        &self.bindings
    }

    /// Whether every one of the handler's pulls is open.
    pub fn is_consuming(&self) -> bool {
        self.consuming
            .iter()
            .all(|c| c.load(AtomicOrdering::Relaxed))
    }

    /// Events taken and not yet settled.
    pub fn in_flight(&self) -> i64 {
        self.attempts.metrics.in_flight.get()
    }

    /// What this version has done since it loaded.
    pub fn stats(&self) -> HandlerStats {
        self.attempts.metrics.stats()
    }

    /// The most recent failure's description, if any.
    pub fn last_error(&self) -> Option<String> {
        self.attempts
            .last_error
            .lock()
            .expect("never poisoned")
            .clone()
    }

    fn ordered(&self) -> bool {
        self.attempts.manifest.ordering == Ordering::Key
    }

    /// Consumes until `shutdown`, then drains in-flight events.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.attempts.manifest.limits.concurrency));
        let in_flight = TaskTracker::new();
        let drained = CancellationToken::new();
        let keep_alive = self
            .ordered()
            .then(|| tokio::spawn(self.clone().keep_waiting_alive(drained.clone())));
        let pulls: Vec<_> = (0..self.bindings.len())
            .map(|i| {
                let this = self.clone();
                let (permits, in_flight, shutdown) =
                    (permits.clone(), in_flight.clone(), shutdown.clone());
                // Logs of the pull (prefetched messages handed back, say)
                // name the handler version they belong to.
                let span = tracing::info_span!(
                    "consumer",
                    handler = this.name(),
                    version = this.version()
                );
                tokio::spawn(
                    async move { this.pull(i, permits, in_flight, shutdown).await }
                        .instrument(span),
                )
            })
            .collect();
        futures::future::join_all(pulls).await;
        in_flight.close();
        if !in_flight.is_empty() {
            tracing::info!(
                handler = self.name(),
                version = self.version(),
                events = in_flight.len(),
                "draining in-flight events"
            );
        }
        in_flight.wait().await;
        drained.cancel();
        if let Some(task) = keep_alive {
            let _ = task.await;
        }
        tracing::info!(handler = self.name(), version = self.version(), "stopped");
        self.stopped.cancel();
    }

    /// Consumes one binding until `shutdown`: at once, or for an ordered
    /// handler in a fleet, whenever this runtime holds its lease.
    async fn pull(
        self: Arc<Self>,
        binding: usize,
        permits: Arc<Semaphore>,
        in_flight: TaskTracker,
        shutdown: CancellationToken,
    ) {
        match self.leases.clone() {
            Some(leases) if self.ordered() => {
                self.pull_owned(&leases, binding, permits, shutdown).await
            }
            _ => self.consume(binding, permits, &in_flight, shutdown).await,
        }
    }

    /// Pulls from one binding's consumer until `shutdown`, spawning each
    /// message's processing on `in_flight`.
    async fn consume(
        self: &Arc<Self>,
        binding: usize,
        permits: Arc<Semaphore>,
        in_flight: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let consuming = &self.consuming[binding];
        let binding = &self.bindings[binding];
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            consuming.store(false, AtomicOrdering::Relaxed);
            let mut messages = match binding.open(&self.attempts.js).await {
                Ok(messages) => {
                    consuming.store(true, AtomicOrdering::Relaxed);
                    backoff = Duration::from_millis(100);
                    tracing::info!(handler = self.name(), version = self.version(), consumer = %binding.durable,
                        stream = %binding.stream, subject = %binding.filter_subject, "consuming");
                    messages
                }
                Err(err) => {
                    tracing::warn!(handler = self.name(), version = self.version(), error = format!("{err:#}"), retry_in = ?backoff,
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
                    Ok(message) => {
                        // Read here, in delivery order: the tasks spawned
                        // below may start in any order.
                        let Some(work) = self.receive(Delivery::new(message)) else {
                            continue; // Queued behind its key; the permit goes back.
                        };
                        let this = self.clone();
                        let (permits, shutdown) = (permits.clone(), shutdown.clone());
                        in_flight.spawn(async move {
                            this.process(work, permits, permit, shutdown).await;
                        });
                    }
                    Err(err) => {
                        // A deleted consumer, a restarted server, a lost
                        // connection: the server holds no open request for
                        // this pull any more. Start over with a fresh one.
                        tracing::warn!(handler = self.name(), version = self.version(), error = %err, "consumer pull failed; reopening");
                        break;
                    }
                }
            }
        }
    }

    /// Takes one received message to its settlement (with ordering: its
    /// key's events, one after another).
    async fn process(
        &self,
        work: Work,
        permits: Arc<Semaphore>,
        permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let in_flight = self.attempts.metrics.in_flight.clone();
        in_flight.inc();
        let _done = scopeguard(move || {
            in_flight.dec();
        });
        let held = match work {
            Work::Unreadable(unreadable) => return self.refuse(*unreadable).await,
            Work::Key(key, held) => {
                return self.work_key(&key, held, permits, permit, &shutdown).await;
            }
            Work::Event(held) => held,
        };
        let Held {
            delivery,
            input,
            trace,
            span,
        } = held;
        let settlement = (self.attempts.attempt(&delivery, &input, &trace, 0))
            .instrument(span)
            .await;
        delivery.settle(settlement).await;
    }
}

/// Runs `f` when dropped, however the scope is left.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// NAKs every message already buffered in the pull, without waiting for more.
///
/// The pull's last request may still be open on the server, and it keeps
/// delivering to it until the subscription is gone, so an immediate NAK
/// could bounce the message straight back to this process. Delaying the
/// redelivery past the request's lifetime sends it to another replica (or
/// our successor) instead.
async fn release_prefetched(mut messages: Pull) {
    let buffered = messages.take_buffered();
    let released = buffered.len();
    for message in buffered {
        let delivery = Delivery::new(message);
        delivery.settle(Settlement::hand_back(PULL_EXPIRES)).await;
    }
    if released > 0 {
        tracing::info!(released, "returned prefetched messages to JetStream");
    }
}
