//! Handler state: key-value counts exact under every fault, an
//! event-sourced account, the checkout's read model, and the atomic batch
//! a one-write commit is built on.

mod atomic_batch;
mod counts;
mod event_sourcing;
mod read_model;
