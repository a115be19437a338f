//! Every runtime says what it runs, and `eventhost status` reads it.
//!
//! Each runtime writes an [`Announcement`] to its own key of [`BUCKET`]
//! every [`EVERY`], and deletes it when it stops cleanly. The bucket keeps
//! values for [`TTL`] only, so a runtime that died drops out on its own;
//! `status` also skips announcements older than that, in case the server
//! has not expired them yet.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::jetstream::config_file::{BucketDeclaration, Storage};
use crate::metrics::HandlerStats;
use crate::store::{Store, kv};

/// The key-value bucket of announcements.
pub const BUCKET: &str = "eventhost-runtimes";
/// How often a runtime announces itself.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long an announcement counts.
pub const TTL: Duration = Duration::from_secs(10);

/// What one runtime says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub runtime: String,
    pub host: String,
    pub pid: u32,
    /// The eventhost release.
    pub eventhost: String,
    /// Where its handlers come from: a plugins directory or a deploy bucket.
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    pub handlers: Vec<HandlerState>,
    /// The ordered consumers it owns (`<stream>.<consumer>`).
    pub leases: Vec<String>,
}

/// One handler as a runtime runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerState {
    pub name: String,
    /// The version serving, if one loaded.
    pub version: Option<String>,
    pub in_flight: i64,
    /// Why its last load or reload was refused.
    pub refused: Option<String>,
    /// What the serving version has done since it loaded; `None` from
    /// runtimes older than the console, or with no version serving.
    #[serde(default)]
    pub stats: Option<HandlerStats>,
    /// The durable consumers it pulls from, for reading their lag.
    #[serde(default)]
    pub consumers: Vec<ConsumerRef>,
}

/// A durable consumer, by stream and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConsumerRef {
    pub stream: String,
    pub consumer: String,
}

/// Creates the announcement bucket if missing.
pub async fn declare(js: &jetstream::Context, replicas: usize) -> Result<()> {
    let bucket = BucketDeclaration {
        name: BUCKET.to_string(),
        history: 1,
        storage: Storage::Memory,
        max_age: Some(TTL),
        max_value_size: None,
    };
    crate::jetstream::declare::ensure_buckets(
        js,
        &[bucket],
        replicas,
        crate::jetstream::declare::CommitRecords::Elsewhere,
    )
    .await
}

fn key(runtime: &str) -> String {
    format!("runtime.{runtime}")
}

/// Announces what `describe` returns every [`EVERY`] until `stop`, then
/// withdraws the announcement.
pub async fn announce(
    store: Arc<dyn Store>,
    runtime: String,
    describe: impl Fn() -> Announcement,
    stop: CancellationToken,
) {
    let key = key(&runtime);
    loop {
        let value = serde_json::to_vec(&describe()).expect("serialisable");
        let write = kv::write(BUCKET, &key, Some(value.into()));
        if let Err(err) = store.publish(write).await {
            tracing::debug!(error = %err, "could not announce this runtime");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    let _ = store.publish(kv::write(BUCKET, &key, None)).await;
}

/// Every runtime that announced itself within [`TTL`].
pub async fn fleet(store: &dyn Store) -> Result<Vec<Announcement>> {
    let mut fleet = Vec::new();
    for key in store.keys(BUCKET).await? {
        let entry = kv::entry(store, BUCKET, &key).await?;
        let Some(value) = entry.value else { continue };
        match serde_json::from_slice::<Announcement>(&value) {
            Ok(a) if fresh(&a, Utc::now()) => fleet.push(a),
            Ok(_) => {}
            Err(err) => tracing::warn!(%key, error = %err, "unreadable announcement"),
        }
    }
    fleet.sort_by(|a, b| (&a.host, &a.runtime).cmp(&(&b.host, &b.runtime)));
    Ok(fleet)
}

fn fresh(announcement: &Announcement, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(announcement.at);
    age.to_std().map_or(true, |age| age <= TTL)
}

/// The fleet as two tables (runtimes, then handlers), with a line for each
/// handler whose runtimes disagree on its version. `deployed` is what the
/// deploy bucket says should run, when there is one.
pub fn render(fleet: &[Announcement], deployed: Option<&BTreeMap<String, String>>) -> String {
    let mut out = String::new();
    if fleet.is_empty() {
        out.push_str("no runtime announced itself\n");
    }
    let _ = writeln!(
        out,
        "{:<22} {:<16} {:>7} {:>9} {:>8}  SOURCE",
        "RUNTIME", "HOST", "UP", "HANDLERS", "LEASES"
    );
    for a in fleet {
        let up = Utc::now().signed_duration_since(a.started_at).num_seconds();
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:>6}s {:>9} {:>8}  {}",
            a.runtime,
            a.host,
            up.max(0),
            a.handlers.len(),
            a.leases.len(),
            a.source
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:<14} {:>9}",
        "HANDLER", "RUNTIME", "VERSION", "IN FLIGHT"
    );
    for a in fleet {
        for h in &a.handlers {
            let version = h.version.as_deref().unwrap_or("-");
            let state = match &h.refused {
                Some(why) => format!("  refused: {}", first_line(why)),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<20} {:<22} {:<14} {:>9}{state}",
                h.name, a.runtime, version, h.in_flight
            );
        }
    }
    let warnings = warnings(fleet, deployed);
    if !warnings.is_empty() {
        out.push('\n');
        for warning in warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    out
}

/// What an operator should look at: handlers whose runtimes disagree on
/// their version, and deployed versions not every runtime runs.
pub fn warnings(
    fleet: &[Announcement],
    deployed: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // What runtimes that follow a deploy bucket run: compared with it.
    let mut following: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in fleet {
        for h in &a.handlers {
            let version = h.version.as_deref().unwrap_or("-");
            versions.entry(&h.name).or_default().insert(version);
            if a.source.starts_with("deploy bucket") {
                following.entry(&h.name).or_default().insert(version);
            }
        }
    }
    let mut warnings = Vec::new();
    for (name, seen) in &versions {
        if seen.len() > 1 {
            let list: Vec<&str> = seen.iter().copied().collect();
            warnings.push(format!(
                "{name}: runtimes disagree on its version ({})",
                list.join(", ")
            ));
        }
    }
    for (name, want) in deployed.into_iter().flatten() {
        match following.get(name.as_str()) {
            Some(seen) if seen.iter().any(|v| v != want) => warnings.push(format!(
                "{name}: deployed version is {want}; not every runtime runs it"
            )),
            Some(_) => {}
            None => warnings.push(format!("{name}: deployed ({want}) but no runtime runs it")),
        }
    }
    warnings
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(id: &str, handlers: &[(&str, &str)]) -> Announcement {
        Announcement {
            runtime: id.into(),
            host: "h".into(),
            pid: 1,
            eventhost: "0.1.0".into(),
            source: "deploy bucket eventhost-handlers".into(),
            started_at: Utc::now(),
            at: Utc::now(),
            handlers: (handlers.iter())
                .map(|(name, version)| HandlerState {
                    name: name.to_string(),
                    version: Some(version.to_string()),
                    in_flight: 0,
                    refused: None,
                    stats: None,
                    consumers: vec![],
                })
                .collect(),
            leases: vec![],
        }
    }

    #[test]
    fn disagreement_on_a_version_is_called_out() {
        let fleet = [
            runtime("r1", &[("payment", "aaa"), ("relay", "ccc")]),
            runtime("r2", &[("payment", "bbb"), ("relay", "ccc")]),
        ];
        let deployed = BTreeMap::from([
            ("payment".to_string(), "bbb".to_string()),
            ("relay".to_string(), "ccc".to_string()),
            ("audit".to_string(), "ddd".to_string()),
        ]);
        let table = render(&fleet, Some(&deployed));
        assert!(
            table.contains("payment: runtimes disagree on its version (aaa, bbb)"),
            "{table}"
        );
        assert!(
            table.contains("payment: deployed version is bbb"),
            "{table}"
        );
        assert!(
            table.contains("audit: deployed (ddd) but no runtime runs it"),
            "{table}"
        );
        assert!(!table.contains("relay:"), "{table}");
        assert!(table.contains("r1") && table.contains("r2"), "{table}");
    }

    #[test]
    fn stale_announcements_do_not_count() {
        let mut old = runtime("r1", &[]);
        old.at = Utc::now() - chrono::Duration::seconds(60);
        assert!(!fresh(&old, Utc::now()));
        assert!(fresh(&runtime("r2", &[]), Utc::now()));
    }
}
