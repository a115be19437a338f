//! Handler state: key-value counts exact under every fault, races lost and
//! run again, an event-sourced account, the checkout's read model, and the
//! atomic batch a one-write commit is built on, and that commit on a
//! replicated bucket.

mod atomic_batch;
mod batch_commit;
mod counter;
mod counts;
mod event_sourcing;
mod races;
mod read_model;
