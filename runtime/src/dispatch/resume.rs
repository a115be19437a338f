//! Resuming an event whose commit was cut off (its runtime died part-way):
//! a commit found recorded as under way is finished without running the
//! handler again, and one found being undone is undone, after which the
//! handler runs anew. Either way the successor does what the dead runtime
//! would have, so the event's effects happen once.

use super::attempt::Attempts;
use super::settle::{Delivery, Settlement};
use crate::event::decode::Decoded;
use crate::failure::chain;
use crate::ledger::{CommitError, Interrupted, Lease};
use crate::metrics::Outcome;
use crate::outcome::trail::Step;
use crate::sandbox::Written;

impl Attempts {
    /// A commit of this event was cut off (its runtime died): finish it
    /// without running the handler, or undo it and run the handler anew.
    pub(super) async fn resume(
        &self,
        (delivery, input): (&Delivery, &Decoded),
        lease: Lease,
        interrupted: Interrupted,
    ) -> Result<Lease, Settlement> {
        let committer = self.committer();
        let attempt = lease.history.attempts;
        let resumed = match interrupted {
            Interrupted::Committing(plan) => {
                tracing::info!(commit = %plan.id, "finishing a commit its runtime did not finish");
                match committer.finish(lease, &plan, self.version()).await {
                    Ok(()) => {
                        self.count_commit(&Written::of(&plan));
                        let mut step = Step::new(Outcome::Succeeded, attempt);
                        step.emitted = plan.outputs.len();
                        self.settled(delivery, Some(input), step).await;
                        tracing::info!(
                            outcome = Outcome::Succeeded.as_str(),
                            emitted = plan.outputs.len(),
                            resumed = true,
                            "handled"
                        );
                        return Err(Settlement::Ack);
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
                self.metrics.conflict(&self.store_label(&lost.store)).inc();
                tracing::info!(conflict = %lost.what, "the interrupted commit lost a race; running the handler again");
                Ok(lease)
            }
            CommitError::Refused { lease, failure } => {
                // Only a fresh commit is refused; a recorded plan never is.
                tracing::warn!(error = %failure, "cannot resume the interrupted commit");
                self.release(lease).await;
                Err(Settlement::host_trouble())
            }
            CommitError::Unavailable(err) => {
                tracing::warn!(
                    error = chain(&err),
                    "cannot resume the interrupted commit; retrying"
                );
                Err(Settlement::host_trouble())
            }
        }
    }
}
