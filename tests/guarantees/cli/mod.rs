//! The command line as users drive it: `publish` and `tail`, `invoke`
//! without NATS, and `new` in each language.

mod invoke;
mod scaffold;
mod tail;
