//! The command line as users drive it: `publish` and `tail`, `invoke`
//! without NATS, `new` in each language, and `catalog`.

mod catalog;
mod invoke;
mod scaffold;
mod tail;
