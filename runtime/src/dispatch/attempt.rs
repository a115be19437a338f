//! One attempt at one event: claim → run → commit → settle.
//!
//! - **claim** the event's record: a copy already handled or dead-lettered
//!   is acked and counted as a duplicate; a commit found half done is
//!   finished (or undone) before anything else;
//! - **run** the handler in a fresh instance;
//! - **commit** its effects ([`crate::outcome::commit`]); a lost race runs
//!   the handler again with fresh state, without using up an attempt;
//! - **settle**: ack, or hand the failure to the retry policy (a delayed
//!   NAK, or the dead-letter queue: [`super::dead_letter`]).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;

use super::Dispatcher;
use crate::decode::Decoded;
use crate::failure::{Conflict, DeadLetterReason, Failure, FailureKind};
use crate::metrics::Outcome;
use crate::outcome::outputs::Completion;
use crate::outcome::{self, CommitError, Settle, plan};
use crate::policy::dedup::{Claim, Interrupted, Lease};
use crate::policy::{self, HOST_RETRY_DELAY, MAX_CONFLICT_RERUNS, Verdict};
use crate::sandbox::{Effects, Interruption, Invocation, Stop};
use crate::store::record::{CommitPlan, PlannedWrite};
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

impl Next {
    /// The host's own trouble: try again soon, without counting an attempt.
    pub(super) fn host_trouble() -> Next {
        Next::Again {
            delay: HOST_RETRY_DELAY,
            failed: false,
        }
    }
}

/// What a commit changes, for the metrics once it has: taken from the plan
/// before the commit consumes it.
struct Written {
    /// (bucket, value bytes) per key written.
    keys: Vec<(String, u64)>,
    appended: u64,
    emitted: usize,
}

impl Written {
    fn of(plan: &CommitPlan) -> Self {
        let mut written = Written {
            keys: Vec::new(),
            appended: 0,
            emitted: plan.outputs.len(),
        };
        for write in &plan.writes {
            match write {
                PlannedWrite::Key { bucket, value, .. } => {
                    let bytes = value.as_ref().map_or(0, |v| v.len() as u64);
                    written.keys.push((bucket.clone(), bytes));
                }
                PlannedWrite::Event { .. } => written.appended += 1,
            }
        }
        written
    }
}

/// What the commit step came to.
enum Committed {
    Done {
        emitted: usize,
    },
    /// A race was lost; the lease is held again for a re-run.
    Lost(Lease, Conflict),
    Failed(Lease, Failure),
    Unavailable(anyhow::Error),
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
        let lease = match self.claim(message, input).await {
            Ok(lease) => lease,
            Err(next) => return next,
        };
        // The record counts every run started, across restarts and replicas;
        // ordered handlers retrying in place also count their own.
        let attempt = lease.history.attempts.max(failed_in_place + 1);
        tracing::Span::current().record("attempt", attempt);
        // A permanent failure is only on record when its dead letter could
        // not be stored: running the handler again would not change it.
        let hopeless = lease.history.last_kind.is_some_and(|k| k.is_permanent());
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
                .dead_letter_claimed(message, input, lease, reason, &error, attempts)
                .await;
        }
        self.run_and_commit(message, input, trace, lease, attempt)
            .await
    }

    /// Claims the event, finishing or undoing a commit found half done.
    /// `Err` is a settled copy or a claim to try again later.
    async fn claim(&self, message: &Message, input: &Decoded) -> Result<Lease, Next> {
        let duplicate = |why: &str| {
            self.count(Outcome::Duplicate);
            tracing::info!(outcome = Outcome::Duplicate.as_str(), "{why}; skipped");
            Next::Settled
        };
        match self.processed.claim(&input.event).await {
            Ok(Claim::Acquired(lease)) => Ok(lease),
            Ok(Claim::Resume(lease, interrupted)) => self.resume(message, lease, interrupted).await,
            Ok(Claim::AlreadyHandled) => {
                outcome::settle(message, Settle::Ack).await;
                Err(duplicate("already handled"))
            }
            Ok(Claim::AlreadyDeadLettered) => {
                outcome::settle(message, Settle::Ack).await;
                Err(duplicate(
                    "already dead-lettered (`eventhost dlq replay` gives it a fresh start)",
                ))
            }
            Ok(Claim::Busy(wait)) => {
                tracing::debug!(?wait, "another run holds this event; waiting for it");
                let delay = wait.clamp(Duration::from_millis(100), HOST_RETRY_DELAY * 5);
                Err(Next::Again {
                    delay,
                    failed: false,
                })
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot claim the event; retrying"
                );
                Err(Next::host_trouble())
            }
        }
    }

    /// A commit of this event was cut off (its runtime died): finish it
    /// without running the handler, or undo it and run the handler anew.
    async fn resume(
        &self,
        message: &Message,
        lease: Lease,
        interrupted: Interrupted,
    ) -> Result<Lease, Next> {
        let committer = self.committer();
        let resumed = match interrupted {
            Interrupted::Committing(plan) => {
                tracing::info!(commit = %plan.id, "finishing a commit its runtime did not finish");
                match committer.finish(lease, &plan, self.version()).await {
                    Ok(()) => {
                        outcome::settle(message, Settle::Ack).await;
                        self.count_commit(&Written::of(&plan));
                        self.count(Outcome::Succeeded);
                        tracing::info!(
                            outcome = Outcome::Succeeded.as_str(),
                            emitted = plan.outputs.len(),
                            resumed = true,
                            "handled"
                        );
                        return Err(Next::Settled);
                    }
                    Err(err) => err,
                }
            }
            Interrupted::Aborting(plan) => {
                tracing::info!(commit = %plan.id, "undoing a commit its runtime did not finish undoing");
                match committer.undo_and_renew(lease, &plan).await {
                    Ok(lease) => return Ok(lease),
                    Err(err) => err,
                }
            }
        };
        match resumed {
            CommitError::Conflict { lease, lost } => {
                self.metrics.conflict(self.store_label(&lost.store)).inc();
                tracing::info!(conflict = %lost.what, "the interrupted commit lost a race; running the handler again");
                Ok(lease)
            }
            CommitError::Refused { lease, failure } => {
                // Only a fresh commit is refused; a recorded plan never is.
                tracing::warn!(error = %failure, "cannot resume the interrupted commit");
                self.release(lease).await;
                Err(Next::host_trouble())
            }
            CommitError::Unavailable(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot resume the interrupted commit; retrying"
                );
                Err(Next::host_trouble())
            }
        }
    }

    /// Runs the handler and commits what it did, again with fresh state
    /// after each lost race, up to [`MAX_CONFLICT_RERUNS`] times (then the
    /// attempt fails). A read of state an unfinished commit wrote is waited
    /// out instead, and never fails the attempt.
    async fn run_and_commit(
        &self,
        message: &Message,
        input: &Decoded,
        trace: &TraceContext,
        mut lease: Lease,
        attempt: u32,
    ) -> Next {
        let (mut conflicts, mut waits) = (0, 0);
        loop {
            let invocation = self
                .component
                .invoke(&input.event, attempt, Some(trace))
                .await;
            self.record_invocation(&invocation);
            let duration_us = invocation.elapsed.as_micros() as u64;
            let lost = match invocation.result {
                Ok(effects) => match self.commit(lease, input, trace, effects).await {
                    Committed::Done { emitted } => {
                        outcome::settle(message, Settle::Ack).await;
                        self.count(Outcome::Succeeded);
                        tracing::info!(
                            outcome = Outcome::Succeeded.as_str(),
                            attempt,
                            emitted,
                            duration_us,
                            peak_memory = invocation.peak_memory,
                            conflicts,
                            "handled"
                        );
                        return Next::Settled;
                    }
                    Committed::Lost(again, lost) => {
                        lease = again;
                        lost
                    }
                    Committed::Failed(lease, failure) => {
                        return self.failed(message, input, lease, failure, attempt).await;
                    }
                    Committed::Unavailable(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "the commit could not finish; whoever holds the event next finishes it"
                        );
                        return Next::host_trouble();
                    }
                },
                Err(Stop::Failed(failure)) => {
                    return self.failed(message, input, lease, failure, attempt).await;
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
                        .conflict(self.store_label(&under_way.store))
                        .inc();
                    if waits > MAX_CONFLICT_RERUNS {
                        tracing::info!(waiting_for = %under_way.what, "state of an unfinished commit; retrying later");
                        self.release(lease).await;
                        return Next::host_trouble();
                    }
                    tokio::time::sleep(policy::conflict_delay(waits)).await;
                    outcome::keep_alive(message).await;
                    continue;
                }
                Err(Stop::Interrupted(Interruption::StoreUnavailable(why))) => {
                    tracing::warn!(error = %why, "state unavailable; retrying");
                    self.release(lease).await;
                    return Next::host_trouble();
                }
            };
            conflicts += 1;
            self.metrics.conflict(self.store_label(&lost.store)).inc();
            if conflicts > MAX_CONFLICT_RERUNS {
                let why = format!("lost {conflicts} races in a row; last: {}", lost.what);
                let failure = Failure::new(FailureKind::Conflict, why);
                return self.failed(message, input, lease, failure, attempt).await;
            }
            tracing::debug!(conflict = %lost.what, conflicts, "lost a race; running again with fresh state");
            tokio::time::sleep(policy::conflict_delay(conflicts)).await;
            outcome::keep_alive(message).await;
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
        let spec = self.component.spec();
        let with = Completion {
            handler: &spec.name,
            emit: &spec.capabilities.emit,
            input,
            trace,
        };
        let plan = match plan::plan(lease.key(), &with, effects) {
            Ok(plan) => plan,
            Err(err) => {
                let failure = Failure::new(FailureKind::EmitRefused, format!("{err:#}"));
                return Committed::Failed(lease, failure);
            }
        };
        let written = Written::of(&plan);
        let committed = self.committer().commit(lease, plan, self.version()).await;
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                self.count_commit(&written);
                Committed::Done {
                    emitted: written.emitted,
                }
            }
            Err(CommitError::Conflict { lease, lost }) => Committed::Lost(lease, lost),
            Err(CommitError::Refused { lease, failure }) => Committed::Failed(lease, failure),
            Err(CommitError::Unavailable(err)) => Committed::Unavailable(err),
        }
    }

    /// Counts a finished commit's writes per bucket and its events.
    fn count_commit(&self, written: &Written) {
        for (bucket, bytes) in &written.keys {
            self.metrics.kv_written(self.store_label(bucket), *bytes);
        }
        self.metrics.events_appended.inc_by(written.appended);
        self.metrics.emitted.inc_by(written.emitted as u64);
    }

    /// The metric label of a bucket or stream: a bucket by the name its
    /// grant gives it, which a rebuilt read model's new generation keeps.
    fn store_label<'a>(&'a self, store: &'a str) -> &'a str {
        let grants = self.component.spec().capabilities.keyvalue.as_ref();
        let bucket = grants.and_then(|g| g.buckets.iter().find(|b| b.physical == store));
        bucket.map_or(store, |b| b.name.as_str())
    }

    /// The attempt failed: retry after the backoff, or dead-letter.
    async fn failed(
        &self,
        message: &Message,
        input: &Decoded,
        lease: Lease,
        failure: Failure,
        attempt: u32,
    ) -> Next {
        self.metrics.failure(failure.kind).inc();
        self.set_last_error(failure.to_string());
        match policy::after_failure(&self.manifest.retry, &failure, attempt) {
            Verdict::Retry(delay) => {
                let kind = failure.kind;
                if let Err(err) = self.processed.failed(lease, kind, &failure.message).await {
                    tracing::warn!(error = format!("{err:#}"), "could not record the failure");
                }
                self.count(Outcome::Retried);
                tracing::warn!(outcome = Outcome::Retried.as_str(), kind = kind.as_str(), error = %failure.message,
                    attempt, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                Next::Again {
                    delay,
                    failed: true,
                }
            }
            Verdict::DeadLetter => {
                let reason = DeadLetterReason::Failed(failure.kind);
                self.dead_letter_claimed(message, input, lease, reason, &failure.message, attempt)
                    .await
            }
        }
    }

    pub(super) async fn release(&self, lease: Lease) {
        if let Err(err) = self.processed.release(lease).await {
            tracing::warn!(error = format!("{err:#}"), "could not release the claim");
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
        for (bucket, usage) in &invocation.keyvalue {
            m.kv_used(bucket, usage);
        }
        m.events_read.inc_by(invocation.events_read as u64);
        m.events_denied.inc_by(invocation.events_denied);
        for call in &invocation.http {
            m.http.record(call);
        }
    }
}
