//! Turning a successful invocation's effects into a [`CommitPlan`].
//!
//! The plan is the commit written down in full before any of it is applied:
//! the key-value writes as the capability buffered them, the appended events
//! and the emitted events completed (ids, source, lineage) and encoded
//! (appended events always in structured mode, emitted ones in the
//! handler's emit mode). A
//! resumed commit publishes exactly these bytes, so ids and `Nats-Msg-Id`s
//! never change between tries.

use super::outputs::{Completion, OutputError, appended_event_id, complete, encode_emitted};
use crate::event::decode::ContentMode;
use crate::ledger::commit::new_commit_id;
use crate::ledger::record::{CommitPlan, PlannedWrite};
use crate::sandbox::{Effects, Written};

/// The plan for `effects` of the event whose record key is `record_key`.
/// Only a plan that changes state gets a commit id: the others are never
/// recorded.
pub fn plan(
    record_key: &str,
    with: &Completion,
    effects: Effects,
) -> Result<CommitPlan, OutputError> {
    let id = match effects.changes_state() {
        true => new_commit_id(record_key),
        false => String::new(),
    };
    let Effects {
        emitted,
        mut writes,
        appends,
    } = effects;
    let mut index = 0;
    for append in appends {
        for (position, event) in append.events.into_iter().enumerate() {
            let derived = appended_event_id(with.handler, &with.input.event, index);
            index += 1;
            let mut output = complete(with, derived, event)?;
            // The store holds self-describing events whatever mode the
            // input came in: any client can read them back.
            output.mode = ContentMode::Structured;
            let message = output.encode()?;
            // The first event of a batch carries the batch's expectation;
            // the next ones follow the event before them.
            let expected = (position == 0).then_some(append.expected);
            writes.push(PlannedWrite::Event {
                stream: append.stream.clone(),
                expected,
                message,
            });
        }
    }
    Ok(CommitPlan {
        id,
        writes,
        outputs: encode_emitted(with, emitted)?,
    })
}

/// Taken from the plan before the commit consumes it.
impl Written {
    pub fn of(plan: &CommitPlan) -> Self {
        let mut written = Written {
            emitted: plan.outputs.len(),
            ..Written::default()
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
