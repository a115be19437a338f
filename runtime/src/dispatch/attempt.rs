//! One attempt at one event: claim → run → commit, ending in a
//! [`Settlement`] that the caller carries out (see [`super::settle`]).
//! (Handlers that need no claim run an event's first delivery without one:
//! [`super::unclaimed`].)
//!
//! - **claim** the event's record: a copy already handled or dead-lettered
//!   is a duplicate (acked); a commit found half done is finished (or
//!   undone) before anything else ([`super::resume`]);
//! - **run** the handler in a fresh instance;
//! - **commit** its effects ([`crate::ledger::commit`]); a lost race runs
//!   the handler again with fresh state, without using up an attempt;
//! - **decide**: ack, or hand the failure to the retry policy (a delayed
//!   NAK, or the dead-letter queue: [`super::give_up`]).
//!
//! Every outcome (succeeded, retried, dead-lettered, duplicate, invalid)
//! passes through [`Attempts::settled`], which counts it and tells it to
//! the trail ([`crate::outcome::trail`]), so the metrics and the story of
//! an event count the same outcomes.
//!
//! [`Attempts`] holds what an attempt needs (the component, the manifest's
//! retry policy, the idempotency records, the store) and nothing of
//! pulling or ordering, which stay with the [`super::Dispatcher`].

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use cloudevents::AttributesReader;

use super::settle::{Delivery, Settlement};
use crate::contract::{ContractError, Direction, LiveContracts};
use crate::event::decode::Decoded;
use crate::event::trace::TraceContext;
use crate::failure::{Conflict, DeadLetterReason, Failure, FailureKind, chain};
use crate::handler::manifest::HandlerManifest;
use crate::ledger::{Claim, CommitError, Committer, Lease, ProcessedEvents};
use crate::metrics::{HandlerMetrics, Outcome};
use crate::outcome;
use crate::outcome::outputs::Completion;
use crate::outcome::trail::{Step, Teller, Trail};
use crate::policy::{self, HOST_RETRY_DELAY, MAX_CONFLICT_RERUNS, Verdict};
use crate::sandbox::Written;
use crate::sandbox::emit::EmitGrant;
use crate::sandbox::{Effects, HandlerComponent, Interruption, Invocation, Stop};
use crate::store::Store;

/// How long an event whose contract is broken waits before it is looked at
/// again: long enough not to flood the log, short enough to follow a fix.
const CONTRACT_WAIT: Duration = Duration::from_secs(10);

/// Everything one handler's attempts need.
pub(super) struct Attempts {
    /// Whether every event is claimed before it runs; if not, first
    /// deliveries run without one ([`super::unclaimed`]).
    pub(super) claims: bool,
    pub(super) component: HandlerComponent,
    pub(super) manifest: HandlerManifest,
    pub(super) js: jetstream::Context,
    pub(super) store: Arc<dyn Store>,
    pub(super) processed: ProcessedEvents,
    /// The largest message the server takes: a commit plan must fit.
    pub(super) max_record: usize,
    pub(super) metrics: HandlerMetrics,
    /// The event contracts inputs are held to.
    pub(super) contracts: Arc<LiveContracts>,
    /// Where each outcome is told, for the story of an event.
    pub(super) trail: Trail,
    /// The last failure, for `GET /handlers`.
    pub(super) last_error: Mutex<Option<String>>,
}

/// What the commit step came to.
enum Committed {
    Done {
        emitted: usize,
    },
    /// A race was lost; the lease is held again for a re-run.
    Lost(Lease, Conflict),
    Failed(Lease, Failure),
    /// JetStream failed part-way (logged); whoever holds the event next
    /// finishes the commit.
    Unavailable,
}

impl Attempts {
    pub(super) fn name(&self) -> &str {
        &self.component.spec().name
    }

    pub(super) fn version(&self) -> &str {
        &self.component.spec().version
    }

    pub(super) fn committer(&self) -> Committer<'_> {
        Committer {
            store: &*self.store,
            records: &self.processed,
            max_record: self.max_record,
        }
    }

    /// Counts an outcome and tells the trail about it: every outcome an
    /// event comes to passes here. `input`: the event, if the message was
    /// one.
    pub(super) async fn settled(
        &self,
        delivery: &Delivery,
        input: Option<&Decoded>,
        step: Step<'_>,
    ) {
        self.metrics.outcome(step.outcome).inc();
        let Some(input) = input else { return };
        let who = Teller {
            handler: self.name(),
            version: self.version(),
            records: self.processed.bucket(),
        };
        let message = delivery.message();
        self.trail.record(who, &input.event, message, step).await;
    }

    fn set_last_error(&self, error: String) {
        *self.last_error.lock().expect("never poisoned") = Some(error);
    }

    /// Checks the input against its type's contract as it is now (every
    /// attempt, so an event held while its contract was broken, or retried
    /// across a reload, meets the contract in force): data that breaks it
    /// is dead-lettered unrun; a broken contract hands the event back.
    async fn keeps_contract(&self, delivery: &Delivery, input: &Decoded) -> Result<(), Settlement> {
        let event = &input.event;
        let dataschema = event.dataschema().map(|url| url.as_str());
        let contracts = self.contracts.current();
        let pinned = self.manifest.contract.consumed(event.ty()).flatten();
        let verdict = contracts.check_input(event.ty(), dataschema, event.data().into(), pinned);
        (self.contracts).count(self.name(), event.ty(), Direction::Input, &verdict);
        match verdict {
            Ok(_) => Ok(()),
            Err(ContractError::Broken { why, .. }) => {
                tracing::warn!(
                    error = why,
                    "the event's contract is broken; it waits for a fix (a reload reads the folder again)"
                );
                Err(Settlement::hand_back(CONTRACT_WAIT))
            }
            Err(err) => {
                let reason = (DeadLetterReason::SchemaInvalid, Some(input));
                let attempts = delivery.count();
                Err(self
                    .dead_letter_unread(delivery, reason, &err.to_string(), attempts)
                    .await)
            }
        }
    }

    /// Makes one attempt. `failed_in_place` counts the failed attempts this
    /// process already made on this delivery (ordered handlers retry in
    /// place, where JetStream's delivery count does not move).
    pub(super) async fn attempt(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        trace: &TraceContext,
        failed_in_place: u32,
    ) -> Settlement {
        if let Err(settlement) = self.keeps_contract(delivery, input).await {
            return settlement;
        }
        let unclaimed = self.run_unclaimed(delivery, input, trace, failed_in_place);
        if let Some(settlement) = unclaimed.await {
            return settlement;
        }
        let lease = match self.claim(delivery, input).await {
            Ok(lease) => lease,
            Err(settlement) => return settlement,
        };
        // The record counts every run started, across restarts and replicas;
        // ordered handlers retrying in place also count their own.
        let attempt = lease.history.attempts.max(failed_in_place + 1);
        tracing::Span::current().record("attempt", attempt);
        // A permanent failure is only on record when its dead letter could
        // not be stored: running the handler again would not change it.
        // A decision to give up is on record when its holder died before
        // recording the dead letter's outcome.
        let history = &lease.history;
        let hopeless =
            history.gave_up.is_some() || history.last_kind.is_some_and(|k| k.is_permanent());
        if attempt > self.manifest.retry.max_attempts || hopeless {
            // Earlier deliveries ended without an outcome we could record (a
            // crash, a kill) or the dead letter could not be written then.
            let history = &lease.history;
            let (reason, error) = match (history.last_kind, &history.last_error) {
                (Some(kind), Some(error)) => (DeadLetterReason::Failed(kind), error.clone()),
                _ => (
                    DeadLetterReason::NoOutcome,
                    format!(
                        "delivered {attempt} times; earlier attempts ended without an outcome (runtime crash or kill?)"
                    ),
                ),
            };
            let attempts = attempt - 1;
            return self
                .dead_letter_claimed(delivery, input, lease, (reason, &error), (attempts, None))
                .await;
        }
        self.run_and_commit(delivery, input, trace, lease, attempt)
            .await
    }

    /// Claims the event, finishing or undoing a commit found half done.
    /// `Err` is a settled copy or a claim to try again later.
    pub(super) async fn claim(
        &self,
        delivery: &Delivery,
        input: &Decoded,
    ) -> Result<Lease, Settlement> {
        let duplicate = async |why: &str| {
            let step = Step::new(Outcome::Duplicate, 0);
            self.settled(delivery, Some(input), step).await;
            tracing::info!(outcome = Outcome::Duplicate.as_str(), "{why}; skipped");
            Settlement::Ack
        };
        match self.processed.claim(&input.event).await {
            Ok(Claim::Acquired(lease)) => Ok(lease),
            Ok(Claim::Resume(lease, interrupted)) => {
                self.resume((delivery, input), lease, interrupted).await
            }
            Ok(Claim::AlreadyHandled) => Err(duplicate("already handled").await),
            Ok(Claim::AlreadyDeadLettered) => Err(duplicate(
                "already dead-lettered (`eventhost dlq replay` gives it a fresh start)",
            )
            .await),
            Ok(Claim::Busy(wait)) => {
                tracing::debug!(?wait, "another run holds this event; waiting for it");
                let delay = wait.clamp(Duration::from_millis(100), HOST_RETRY_DELAY * 5);
                Err(Settlement::Retry {
                    delay,
                    failed: false,
                })
            }
            Err(err) => {
                tracing::warn!(error = chain(&err), "cannot claim the event; retrying");
                Err(Settlement::host_trouble())
            }
        }
    }

    /// Runs the handler and commits what it did, again with fresh state
    /// after each lost race, up to [`MAX_CONFLICT_RERUNS`] times (then the
    /// attempt fails). A read of state an unfinished commit wrote is waited
    /// out instead, and never fails the attempt.
    async fn run_and_commit(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        trace: &TraceContext,
        mut lease: Lease,
        attempt: u32,
    ) -> Settlement {
        let (mut conflicts, mut waits) = (0, 0);
        loop {
            let invocation = self
                .component
                .invoke(&input.event, attempt, Some(trace))
                .await;
            self.record_invocation(&invocation);
            let lost = match invocation.result {
                Ok(effects) => match self.commit(lease, input, trace, effects).await {
                    Committed::Done { emitted } => {
                        let used = (invocation.elapsed, invocation.peak_memory);
                        let ran = (attempt, emitted, used, conflicts);
                        return self.handled(delivery, input, ran).await;
                    }
                    Committed::Lost(again, lost) => {
                        lease = again;
                        lost
                    }
                    Committed::Failed(lease, failure) => {
                        let run = (attempt, Some(invocation.elapsed));
                        return self.failed(delivery, input, lease, failure, run).await;
                    }
                    Committed::Unavailable => return Settlement::host_trouble(),
                },
                Err(Stop::Failed(failure)) => {
                    let run = (attempt, Some(invocation.elapsed));
                    return self.failed(delivery, input, lease, failure, run).await;
                }
                Err(Stop::Interrupted(Interruption::Conflict(under_way))) => {
                    // It read a value of a commit still under way, which is
                    // no race of its own to lose: wait for that commit in
                    // place. One whose runtime died ends only when its
                    // event's claim runs out (about the ack wait), so past a
                    // few waits the event goes back, as the host's trouble,
                    // without counting an attempt.
                    waits += 1;
                    self.metrics
                        .conflict(&self.store_label(&under_way.store))
                        .inc();
                    if waits > MAX_CONFLICT_RERUNS {
                        tracing::info!(waiting_for = %under_way.what, "state of an unfinished commit; retrying later");
                        self.release(lease).await;
                        return Settlement::host_trouble();
                    }
                    tokio::time::sleep(policy::conflict_delay(waits)).await;
                    delivery.keep_alive().await;
                    continue;
                }
                Err(Stop::Interrupted(Interruption::StoreUnavailable(why))) => {
                    let why = anyhow::Error::from(why);
                    tracing::warn!(error = format!("{why:#}"), "state unavailable; retrying");
                    self.release(lease).await;
                    return Settlement::host_trouble();
                }
            };
            conflicts += 1;
            self.metrics.conflict(&self.store_label(&lost.store)).inc();
            if conflicts > MAX_CONFLICT_RERUNS {
                let why = format!("lost {conflicts} races in a row; last: {}", lost.what);
                let failure = Failure::new(FailureKind::Conflict, why);
                let run = (attempt, None);
                return self.failed(delivery, input, lease, failure, run).await;
            }
            tracing::debug!(conflict = %lost.what, conflicts, "lost a race; running again with fresh state");
            tokio::time::sleep(policy::conflict_delay(conflicts)).await;
            delivery.keep_alive().await;
        }
    }

    /// Counts and logs a handled event; its message is acked. `ran`: the
    /// attempt, the events emitted, the run's time and peak memory, the
    /// races lost on the way.
    pub(super) async fn handled(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        ran: (u32, usize, (Duration, usize), u32),
    ) -> Settlement {
        let (attempt, emitted, (elapsed, peak_memory), conflicts) = ran;
        let step = Step::new(Outcome::Succeeded, attempt).ran(elapsed, emitted);
        self.settled(delivery, Some(input), step).await;
        let duration_us = elapsed.as_micros() as u64;
        tracing::info!(
            outcome = Outcome::Succeeded.as_str(),
            attempt,
            emitted,
            duration_us,
            peak_memory,
            conflicts,
            "handled"
        );
        Settlement::Ack
    }

    /// What completes and encodes this handler's outputs for `input`.
    pub(super) fn completion<'a>(
        &'a self,
        input: &'a Decoded,
        trace: &'a TraceContext,
    ) -> Completion<'a> {
        let spec = self.component.spec();
        Completion {
            handler: &spec.name,
            emit: EmitGrant::or_nothing(spec.capabilities.emit.as_ref()),
            input,
            trace,
        }
    }

    /// Commits a successful invocation's effects.
    async fn commit(
        &self,
        lease: Lease,
        input: &Decoded,
        trace: &TraceContext,
        effects: Effects,
    ) -> Committed {
        let started = Instant::now();
        let with = self.completion(input, trace);
        let committer = self.committer();
        let committed = outcome::commit(&committer, lease, &with, effects, self.version()).await;
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(written) => {
                self.count_commit(&written);
                Committed::Done {
                    emitted: written.emitted,
                }
            }
            Err(CommitError::Conflict { lease, lost }) => Committed::Lost(lease, lost),
            Err(CommitError::Refused { lease, failure }) => Committed::Failed(lease, failure),
            Err(CommitError::Unavailable(err)) => {
                tracing::warn!(
                    error = chain(&err),
                    "the commit could not finish; whoever holds the event next finishes it"
                );
                Committed::Unavailable
            }
        }
    }

    /// The metric label of a store named by its physical name.
    pub(super) fn store_label(&self, physical: &str) -> String {
        self.component.spec().capabilities.store_label(physical)
    }

    /// Counts what a finished commit changed.
    pub(super) fn count_commit(&self, written: &Written) {
        self.metrics.capabilities.committed(written);
        self.metrics.emitted.inc_by(written.emitted as u64);
    }

    /// The attempt failed: retry after the backoff, or dead-letter. `run`:
    /// the attempt's number, and how long the handler ran if it did.
    pub(super) async fn failed(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        lease: Lease,
        failure: Failure,
        (attempt, ran_for): (u32, Option<Duration>),
    ) -> Settlement {
        self.metrics.record_failure(failure.kind);
        self.set_last_error(failure.to_string());
        match policy::after_failure(&self.manifest.retry, &failure, attempt) {
            Verdict::Retry(delay) => {
                let kind = failure.kind;
                if let Err(err) = self.processed.failed(lease, kind, &failure.message).await {
                    tracing::warn!(error = chain(&err), "could not record the failure");
                }
                let mut step = Step::new(Outcome::Retried, attempt);
                step.ran_for = ran_for;
                let step = step.failed(kind.as_str(), &failure.message);
                self.settled(delivery, Some(input), step).await;
                tracing::warn!(outcome = Outcome::Retried.as_str(), kind = kind.as_str(), error = %failure.message,
                    attempt, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                Settlement::Retry {
                    delay,
                    failed: true,
                }
            }
            Verdict::DeadLetter => {
                let reason = DeadLetterReason::Failed(failure.kind);
                let mut lease = lease;
                lease.history.record_failure(failure.kind, &failure.message);
                let why = (reason, failure.message.as_str());
                self.dead_letter_claimed(delivery, input, lease, why, (attempt, ran_for))
                    .await
            }
        }
    }

    pub(super) async fn release(&self, lease: Lease) {
        if let Err(err) = self.processed.release(lease).await {
            tracing::warn!(error = chain(&err), "could not release the claim");
        }
    }

    pub(super) fn record_invocation(&self, invocation: &Invocation) {
        let m = &self.metrics;
        m.record_duration(invocation.elapsed.as_secs_f64());
        m.instantiation
            .observe(invocation.instantiation.as_secs_f64());
        // A maximum across concurrent invocations: one atomic step.
        let peak = i64::try_from(invocation.peak_memory).unwrap_or(i64::MAX);
        m.peak_memory.inner().fetch_max(peak, Relaxed);
        m.capabilities.record(&invocation.usage);
    }
}
