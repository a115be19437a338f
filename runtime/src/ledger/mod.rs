//! The ledger: what the runtime knows of every event it handled, and the
//! commit that applies an invocation's effects exactly once.
//!
//! An event's identity is its CloudEvents `source` + `id`; its record lives
//! in a key-value bucket per consumer (`processed-<consumer>`), kept for the
//! handler's idempotency window. The record is a state machine; each move
//! is a compare-and-set on the record's revision, so only the
//! holder of the current lease can make it:
//!
//! ```text
//!    │ run without a claim, outputs published (created only if none)
//!    ├────────────────────────────────────────────────────────────┐
//!    │                  one atomic batch, outputs published       │
//!    │                ├──────────────────────────────────────────▶│
//!    │       claim    │          plan written          all applied ▼
//!  (none) ─────────▶ claimed ─────────────▶ committing ───────────▶ done
//!                     │  ▲                      │
//!       failed attempt│  │re-run                │conflict
//!                     ▼  │                      ▼
//!                    failed ◀────────────── aborting (undo what was applied)
//!                     │
//!   out of attempts,  ▼ or a permanent failure
//!          claimed, gave_up ───────────────────▶ dead_lettered
//!                            letter stored
//! ```
//!
//! The top edge is a run without a claim (see [`commit`]): a handler that
//! only emits, on its event's first delivery. Its record is written once,
//! already `done`; a copy that finds the record made first is discarded.
//! The second is a commit in one atomic batch (see [`batch`]): its
//! decision is a commit record beside the state, not a record state, and
//! a holder that takes over a `claimed` record finds it there and resumes
//! as from `committing` with nothing left to write.
//!
//! Giving up is recorded (`gave_up`, still claimed) before the dead letter
//! is stored, and the letter is named after that decision: a holder killed
//! between storing the letter and recording `dead_lettered` leaves its
//! successor the same letter to store (the queue keeps one) and no run to
//! make, so an event never gets both a dead letter and a success.
//!
//! - [`record`]: the record's shape, and the commit plan it carries while
//!   `committing` or `aborting` (so whoever takes the event over after a
//!   crash finishes or undoes exactly the same commit);
//! - [`processed`]: the transitions, as methods of [`ProcessedEvents`]
//!   (claim, begin a commit, done, failed, dead-lettered, release);
//! - [`commit`]: the protocol that drives a commit through them;
//! - [`batch`]: the commit in one atomic batch, where a handler's state
//!   lives in one replicated stream: its writes and a commit record beside
//!   them, decided by one request, with none of the plan's states.
//!
//! The retry policy and per-key ordering, which decide *when* an event is
//! tried, are [`crate::policy`]'s; what is committed (the plan made from an
//! invocation's effects) is [`crate::outcome`]'s.

pub mod batch;
pub mod commit;
pub mod processed;
pub mod record;

pub use commit::{CommitError, Committer, UnclaimedRun};
pub use processed::{Claim, Interrupted, Lease, ProcessedEvents};

use crate::store::StoreError;

/// Why the ledger could not record a step. Callers branch on the kind: a
/// lost lease means another holder owns the event now; the others are the
/// store's trouble, worth trying again later.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// JetStream failed while the ledger was `doing` something.
    #[error("{doing}")]
    Store {
        doing: &'static str,
        #[source]
        source: StoreError,
    },
    /// The record moved on under this holder: its lease ran out and another
    /// runtime took the event over.
    #[error("the record changed under this holder (its claim expired)")]
    LeaseLost,
    /// Claims kept losing compare-and-set races.
    #[error("the idempotency record kept changing under {0} claim attempts")]
    Contended(usize),
    #[error("encoding the record")]
    Encode(#[source] serde_json::Error),
}

/// The ledger's result.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// `doing` failed in the store.
pub(crate) fn store_error(doing: &'static str) -> impl FnOnce(StoreError) -> LedgerError {
    move |source| LedgerError::Store { doing, source }
}
