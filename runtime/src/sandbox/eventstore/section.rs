//! The `[eventstore]` section of a handler manifest, checked at load.

use anyhow::{Result, bail, ensure};
use serde::Deserialize;

use crate::event::subject;

/// The `[eventstore]` section of a handler manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventStoreSection {
    /// Subject patterns the handler may read.
    pub read: Vec<String>,
    /// Subject patterns the handler may append to (and read).
    pub append: Vec<String>,
    /// Most events one invocation may read.
    pub max_events_read: usize,
    /// Most events one invocation may append.
    pub max_events_appended: usize,
}

impl Default for EventStoreSection {
    fn default() -> Self {
        EventStoreSection {
            read: Vec::new(),
            append: Vec::new(),
            max_events_read: 1000,
            max_events_appended: 100,
        }
    }
}

impl EventStoreSection {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.read.is_empty() || !self.append.is_empty(),
            "`eventstore` grants no subject: list some in `read` or `append`"
        );
        for pattern in self.read.iter().chain(&self.append) {
            subject::validate(pattern)
                .map_err(|e| anyhow::anyhow!("`eventstore` subject {pattern:?}: {e}"))?;
        }
        if !(1..=100_000).contains(&self.max_events_read) {
            bail!(
                "`eventstore.max_events_read` must be between 1 and 100000, got {}",
                self.max_events_read
            );
        }
        if !(1..=1000).contains(&self.max_events_appended) {
            bail!(
                "`eventstore.max_events_appended` must be between 1 and 1000, got {}",
                self.max_events_appended
            );
        }
        Ok(())
    }

    /// Every granted pattern, with whether it may be appended to.
    pub fn patterns(&self) -> impl Iterator<Item = (&String, bool)> {
        let appends = self.append.iter().map(|p| (p, true));
        appends.chain(self.read.iter().map(|p| (p, false)))
    }
}
