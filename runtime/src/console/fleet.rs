//! The fleet page's data: every runtime and handler as the runtimes
//! announce them, with each handler's consumer lag and waiting dead letters
//! read from JetStream, and its rate and latency over the last interval.
//!
//! Announcements carry running totals ([`HandlerStats`]); a rate or a
//! quantile needs two of them. [`Rates`] keeps the last announcement seen
//! of each handler on each runtime and the window it gave: the same
//! announcement read twice (the page polls about as often as runtimes
//! announce) shows the same window, a newer one moves it on. A new version
//! starts its totals at zero, so no window spans two versions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Console;
use crate::fleet::announce::{self, Announcement, ConsumerRef, HandlerState};
use crate::fleet::deploy::DeployBucket;
use crate::metrics::{HandlerStats, difference, quantile};
use crate::outcome::dead_letter;
use crate::source::{self, Lag};

/// How long the page waits for JetStream before showing what it has.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ui/api/fleet` answers.
#[derive(Debug, Serialize)]
pub struct FleetView {
    pub runtimes: Vec<RuntimeView>,
    /// One row per handler per runtime running it, by handler name.
    pub handlers: Vec<HandlerRow>,
    /// As `eventhost status` prints them.
    pub warnings: Vec<String>,
    /// What could not be read this time (the page says so rather than
    /// showing zeros).
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuntimeView {
    pub runtime: String,
    pub host: String,
    pub pid: u32,
    pub eventhost: String,
    pub source: String,
    pub up_seconds: i64,
    pub handlers: usize,
    pub leases: usize,
    pub announced: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct HandlerRow {
    pub handler: String,
    pub runtime: String,
    pub version: Option<String>,
    /// serving | refused | not loaded
    pub state: &'static str,
    /// Why its last load or reload was refused.
    pub refused: Option<String>,
    pub in_flight: i64,
    /// Totals since the version loaded; `None` when its runtime does not
    /// announce them (older than the console).
    pub received: Option<u64>,
    pub succeeded: Option<u64>,
    pub failed: Option<u64>,
    pub retried: Option<u64>,
    pub dead_lettered: Option<u64>,
    /// Deliveries per second over the last interval.
    pub per_second: Option<f64>,
    /// `≤ 1.6 ms`: the quantile's latency bucket over the last interval.
    pub p50: Option<String>,
    pub p99: Option<String>,
    /// Summed over the handler's consumers; shared by its runtimes.
    pub lag: Option<Lag>,
    /// Dead letters of the handler waiting in the queue.
    pub dead_letters: Option<u64>,
}

/// Reads the fleet as it is now.
pub async fn read(console: &Console) -> FleetView {
    let mut unreadable = Vec::new();
    let fleet = match announce::fleet(console.store.as_ref()).await {
        Ok(fleet) => {
            console.rates.forget_all_but(&fleet);
            fleet
        }
        Err(err) => {
            // No runtime ever announced itself: an empty fleet, not trouble.
            let bucket = crate::store::kv::stream(announce::BUCKET);
            let exists = crate::jetstream::stream_exists(&console.js, &bucket).await;
            if !matches!(exists, Ok(false)) {
                unreadable.push(format!("the runtimes' announcements: {err:#}"));
            }
            Vec::new()
        }
    };
    let deployed = match DeployBucket::versions(&console.js, &console.deploy_bucket).await {
        Ok(deployed) => deployed,
        Err(err) => {
            unreadable.push(format!("deploy bucket {}: {err:#}", console.deploy_bucket));
            None
        }
    };
    let (lags, depths) = match tokio::time::timeout(READ_TIMEOUT, jetstream_side(console, &fleet))
        .await
    {
        Ok((lags, depths)) => (lags, depths),
        Err(_) => {
            unreadable
                .push("consumer lag and dead letters (JetStream did not answer in time)".into());
            (HashMap::new(), None)
        }
    };
    if depths.is_none() {
        unreadable.push("the dead-letter queue".into());
    }
    let mut handlers = Vec::new();
    for a in &fleet {
        for h in &a.handlers {
            let window = console.rates.window(&a.runtime, h, a.at);
            handlers.push(row(a, h, window, &lags, depths.as_ref()));
        }
    }
    handlers.sort_by(|x, y| (&x.handler, &x.runtime).cmp(&(&y.handler, &y.runtime)));
    FleetView {
        runtimes: fleet.iter().map(runtime_view).collect(),
        handlers,
        warnings: announce::warnings(&fleet, deployed.as_ref()),
        unreadable,
    }
}

/// Each announced consumer's lag, and the dead letters waiting per handler.
async fn jetstream_side(
    console: &Console,
    fleet: &[Announcement],
) -> (HashMap<ConsumerRef, Lag>, Option<HashMap<String, u64>>) {
    let consumers: BTreeSet<&ConsumerRef> = (fleet.iter())
        .flat_map(|a| a.handlers.iter().flat_map(|h| &h.consumers))
        .collect();
    let mut lags = HashMap::new();
    for c in consumers {
        if let Some(lag) = source::lag(&console.js, &c.stream, &c.consumer).await {
            lags.insert(c.clone(), lag);
        }
    }
    (lags, dead_letter::depths(&console.js).await.ok())
}

fn runtime_view(a: &Announcement) -> RuntimeView {
    RuntimeView {
        runtime: a.runtime.clone(),
        host: a.host.clone(),
        pid: a.pid,
        eventhost: a.eventhost.clone(),
        source: a.source.clone(),
        up_seconds: Utc::now()
            .signed_duration_since(a.started_at)
            .num_seconds()
            .max(0),
        handlers: a.handlers.len(),
        leases: a.leases.len(),
        announced: a.at,
    }
}

fn row(
    a: &Announcement,
    h: &HandlerState,
    window: Option<Window>,
    lags: &HashMap<ConsumerRef, Lag>,
    depths: Option<&HashMap<String, u64>>,
) -> HandlerRow {
    let lag = (h.consumers.iter())
        .map(|c| lags.get(c))
        .try_fold(Lag::default(), |sum, lag| {
            let lag = lag?;
            Some(Lag {
                pending: sum.pending + lag.pending,
                ack_pending: sum.ack_pending + lag.ack_pending,
            })
        })
        .filter(|_| !h.consumers.is_empty());
    let s = h.stats.as_ref();
    HandlerRow {
        handler: h.name.clone(),
        runtime: a.runtime.clone(),
        version: h.version.clone(),
        state: match (&h.version, &h.refused) {
            (Some(_), None) => "serving",
            (_, Some(_)) => "refused",
            (None, None) => "not loaded",
        },
        refused: h.refused.clone(),
        in_flight: h.in_flight,
        received: s.map(|s| s.received),
        succeeded: s.map(|s| s.succeeded),
        failed: s.map(|s| s.failed),
        retried: s.map(|s| s.retried),
        dead_lettered: s.map(|s| s.dead_lettered),
        per_second: window.map(|w| w.per_second),
        p50: window.and_then(|w| w.p50).map(latency_label),
        p99: window.and_then(|w| w.p99).map(latency_label),
        lag,
        dead_letters: depths.map(|d| d.get(&h.name).copied().unwrap_or(0)),
    }
}

/// A quantile's bucket as a reader takes it: `≤ 1.6 ms`, `> 13.1 s`.
pub fn latency_label(seconds: f64) -> String {
    if seconds.is_infinite() {
        let slowest = crate::metrics::latency_bounds().last().unwrap_or_default();
        return format!("> {}", human(slowest));
    }
    format!("≤ {}", human(seconds))
}

fn human(seconds: f64) -> String {
    match seconds {
        s if s < 0.001 => format!("{:.0} µs", s * 1e6),
        s if s < 1.0 => format!("{:.1} ms", s * 1e3),
        s => format!("{s:.1} s"),
    }
}

/// A handler's rate and latency between two of its announcements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub per_second: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The last announcement seen of each handler on each runtime.
#[derive(Default)]
pub struct Rates {
    last: Mutex<BTreeMap<(String, String), Sample>>,
}

struct Sample {
    at: DateTime<Utc>,
    version: Option<String>,
    stats: HandlerStats,
    window: Option<Window>,
}

impl Rates {
    /// `handler`'s window on `runtime`, as announced at `at`.
    pub fn window(
        &self,
        runtime: &str,
        handler: &HandlerState,
        at: DateTime<Utc>,
    ) -> Option<Window> {
        let key = (runtime.to_string(), handler.name.clone());
        let mut last = self.last.lock().expect("never poisoned");
        let before = last.get(&key);
        if let Some(before) = before.filter(|b| b.at >= at) {
            return before.window;
        }
        let stats = handler.stats.clone()?;
        let window = before.and_then(|before| between(before, &stats, handler, at));
        let sample = Sample {
            at,
            version: handler.version.clone(),
            stats,
            window,
        };
        last.insert(key, sample);
        window
    }

    /// Drops what runtimes and handlers no longer announced left behind.
    fn forget_all_but(&self, fleet: &[Announcement]) {
        let live: BTreeSet<(&str, &str)> = (fleet.iter())
            .flat_map(|a| {
                a.handlers
                    .iter()
                    .map(|h| (a.runtime.as_str(), h.name.as_str()))
            })
            .collect();
        let mut last = self.last.lock().expect("never poisoned");
        last.retain(|(runtime, handler), _| live.contains(&(runtime.as_str(), handler.as_str())));
    }
}

fn between(
    before: &Sample,
    stats: &HandlerStats,
    now: &HandlerState,
    at: DateTime<Utc>,
) -> Option<Window> {
    if before.version != now.version {
        return None;
    }
    let seconds = (at - before.at).num_milliseconds() as f64 / 1000.0;
    let received = stats.received.checked_sub(before.stats.received)?;
    let latency = difference(&stats.latency, &before.stats.latency)?;
    Some(Window {
        per_second: received as f64 / seconds,
        p50: quantile(&latency, 0.5),
        p99: quantile(&latency, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LatencyCounts;

    fn handler(version: &str, received: u64, latency: &LatencyCounts) -> HandlerState {
        HandlerState {
            name: "payment".into(),
            version: Some(version.into()),
            in_flight: 0,
            refused: None,
            stats: Some(HandlerStats {
                received,
                latency: latency.totals(),
                ..Default::default()
            }),
            consumers: vec![],
        }
    }

    #[test]
    fn a_window_needs_two_announcements_of_one_version() {
        let rates = Rates::default();
        let latency = LatencyCounts::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(2);
        assert_eq!(rates.window("r1", &handler("v1", 10, &latency), t0), None);
        for _ in 0..30 {
            latency.observe(0.002);
        }
        let window = rates
            .window("r1", &handler("v1", 40, &latency), t1)
            .unwrap();
        assert_eq!(window.per_second, 15.0);
        assert_eq!(window.p50.map(latency_label).as_deref(), Some("≤ 3.2 ms"));
        // The same announcement read again: the same window.
        let again = rates.window("r1", &handler("v1", 40, &latency), t1);
        assert_eq!(again, Some(window));
        // A new version starts from zero: no window across the two.
        let t2 = t1 + chrono::Duration::seconds(2);
        let fresh = LatencyCounts::default();
        assert_eq!(rates.window("r1", &handler("v2", 3, &fresh), t2), None);
    }

    #[test]
    fn latency_labels_say_which_side_of_a_bound() {
        assert_eq!(latency_label(0.0004), "≤ 400 µs");
        assert_eq!(latency_label(0.0016), "≤ 1.6 ms");
        assert_eq!(latency_label(1.6384), "≤ 1.6 s");
        assert_eq!(latency_label(f64::INFINITY), "> 13.1 s");
    }
}
