//! Handler state: key-value counts exact under every fault, an
//! event-sourced account, and the checkout's read model.

mod counts;
mod event_sourcing;
mod read_model;
