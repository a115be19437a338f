//! A run without a claim, for handlers whose every effect can be discarded
//! (emitted events only): the protocol and its promise are the ledger's
//! ([`crate::ledger::commit`]).
//!
//! Only an event's first delivery with no record yet runs unclaimed. Every
//! other case takes the claim as before: a redelivery (its first run may
//! have been cut off half way), a failed run (so that the failure is
//! recorded, attempts are counted and dead letters are written as always),
//! a record of any kind. The common case costs one read and one record
//! write, against a claim and a `done` write; the rare ones keep the
//! protocol they had.

use std::time::Instant;

use super::attempt::Attempts;
use super::settle::{Delivery, Settlement};
use crate::event::decode::Decoded;
use crate::event::trace::TraceContext;
use crate::failure::{Failure, FailureKind, chain};
use crate::ledger::UnclaimedRun;
use crate::ledger::processed::ProcessedEvents;
use crate::metrics::Outcome;
use crate::outcome::plan;
use crate::outcome::trail::Step;
use crate::sandbox::{Effects, Stop, Written};

impl Attempts {
    /// Runs `input` without a claim where it may; `None` sends it to the
    /// claim.
    pub(super) async fn run_unclaimed(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        trace: &TraceContext,
        failed_in_place: u32,
    ) -> Option<Settlement> {
        if self.claims || delivery.count() > 1 || failed_in_place > 0 {
            return None;
        }
        // The record key is a hash of the event's source and id: made once.
        let key = ProcessedEvents::key(&input.event);
        match self.processed.has_record(&key).await {
            Ok(false) => {}
            Ok(true) => return None,
            Err(err) => {
                tracing::warn!(
                    error = chain(&err),
                    "cannot read the event's record; retrying"
                );
                return Some(Settlement::host_trouble());
            }
        }
        tracing::Span::current().record("attempt", 1);
        let invocation = (self.component).invoke(&input.event, 1, Some(trace)).await;
        self.record_invocation(&invocation);
        let used = (invocation.elapsed, invocation.peak_memory);
        let failure = match invocation.result {
            Ok(effects) => match self.commit_unclaimed(&key, input, trace, effects).await {
                Ok((UnclaimedRun::Counted, emitted)) => {
                    return Some(self.handled(delivery, input, (1, emitted, used, 0)).await);
                }
                Ok((UnclaimedRun::Discarded, _)) => {
                    // It ran, and its effects were discarded.
                    let step = Step::new(Outcome::Duplicate, 1).ran(used.0, 0);
                    self.settled(delivery, Some(input), step).await;
                    tracing::info!(
                        outcome = Outcome::Duplicate.as_str(),
                        "a copy of this event in flight at the same moment recorded its run \
                         first; this run is discarded"
                    );
                    return Some(Settlement::Ack);
                }
                Err(failure) => failure,
            },
            Err(Stop::Failed(failure)) => failure,
            Err(Stop::Interrupted(_)) => {
                // Only capabilities that need a claim interrupt a run.
                let why = "a run without a claim was interrupted for state it cannot have";
                Failure::new(FailureKind::Output, why)
            }
        };
        // A failed run is recorded under a claim, as every attempt is.
        Some(match self.claim(delivery, input).await {
            Ok(lease) => {
                let attempt = lease.history.attempts.max(1);
                let run = (attempt, Some(used.0));
                self.failed(delivery, input, lease, failure, run).await
            }
            Err(settlement) => settlement,
        })
    }

    /// Commits an unclaimed run's effects; returns what became of it and
    /// how many events it emitted.
    async fn commit_unclaimed(
        &self,
        key: &str,
        input: &Decoded,
        trace: &TraceContext,
        effects: Effects,
    ) -> Result<(UnclaimedRun, usize), Failure> {
        let started = Instant::now();
        let with = self.completion(input, trace);
        let plan = plan::plan(key, &with, effects)
            .map_err(|err| Failure::new(FailureKind::EmitRefused, chain(&err)))?;
        let written = Written::of(&plan);
        let committer = self.committer();
        let run = committer.commit_unclaimed(key, plan, self.version()).await;
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        if run == Ok(UnclaimedRun::Counted) {
            self.count_commit(&written);
        }
        Ok((run?, written.emitted))
    }
}
