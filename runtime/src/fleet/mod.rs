//! Several runtimes on one NATS cluster: a fleet.
//!
//! Runtimes do not talk to each other; everything they share lives in
//! JetStream, replicated as the runtime config's `replicas` says:
//! - [`deploy`]: handler versions deployed through NATS (`eventhost deploy`),
//!   which [`follow`] mirrors into each runtime, where they load and reload
//!   exactly as from a plugins directory;
//! - [`schemas`]: the event contracts deployed beside them (`eventhost
//!   schema put`), mirrored the same way;
//! - [`announce`]: each runtime's account of what it runs, which
//!   `eventhost status` prints as a table;
//! - [`lease`]: which runtime consumes an ordered handler's consumer, so
//!   per-key order holds across the fleet;
//! - [`RELOAD_SUBJECT`]: a reload asked of every runtime at once.

pub mod announce;
pub mod deploy;
pub mod follow;
pub mod lease;
pub mod schemas;

/// Where `eventhost reload` asks every runtime of the fleet to reload now
/// (core NATS: a runtime that is down has nothing to reload).
pub const RELOAD_SUBJECT: &str = "eventhost.control.reload";

/// A runtime's name in the fleet: its host, and a random suffix that tells
/// two processes (or two lives of one) apart.
pub fn runtime_id(host: &str) -> String {
    let short = host.split('.').next().unwrap_or(host);
    let clean: String = (short.chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{clean}-{suffix}")
}
