//! The last stage: what becomes of an event's effects once the policy has
//! decided.
//!
//! - [`plan`]: a successful invocation's effects written down in full, as a
//!   [`store::record::CommitPlan`](crate::ledger::record::CommitPlan);
//! - [`outputs`]: its emitted (and appended) events completed and encoded;
//! - [`commit`]: an invocation's effects committed whole, in one call (the
//!   commit protocol itself is the [`crate::ledger`]'s);
//! - [`dead_letter`]: an event that cannot be handled, parked byte for byte
//!   with its story;
//! - [`trail`]: each attempt's outcome, told after the fact, for the story
//!   of an event.
//!
//! The input message itself is settled afterwards, in one place:
//! [`crate::dispatch`]'s `settle` module.

pub mod dead_letter;
pub mod outputs;
pub mod plan;
pub mod trail;

use crate::failure::{Failure, FailureKind, chain};
use crate::ledger::{CommitError, Committer, Lease};
use crate::sandbox::{Effects, Written};
pub use dead_letter::DeadLetter;
use outputs::Completion;

/// Commits a successful invocation's `effects` whole: completes and encodes
/// them into a plan ([`plan::plan`]), then has the ledger commit it. Says
/// what was written, for the metrics.
pub async fn commit(
    committer: &Committer<'_>,
    lease: Lease,
    with: &Completion<'_>,
    effects: Effects,
    version: &str,
) -> Result<Written, CommitError> {
    let plan = match plan::plan(lease.key(), with, effects) {
        Ok(plan) => plan,
        Err(err) => {
            let failure = Failure::new(FailureKind::EmitRefused, chain(&err));
            return Err(CommitError::Refused { lease, failure });
        }
    };
    let written = Written::of(&plan);
    committer.commit(lease, plan, version).await?;
    Ok(written)
}
