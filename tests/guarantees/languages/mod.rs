//! Handlers in every language: the checkout saga in Rust, Python and
//! TypeScript, and the probe handlers failing like a Rust one.

mod checkout;
mod probe;
