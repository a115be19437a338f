//! The soak: events streamed without pause into two replicas of the
//! `counter` handler while one replica or the other is SIGKILLed at random
//! moments and restarted, and nats-server is killed and restarted a few
//! times; then every promise of "Delivery guarantees" is checked at once.
//!
//! Each event gets its own key in the `counters` bucket, so the bucket says
//! how often each event's effects were applied: exactly once, or (for the
//! events designed to fail for good) never. The events are a seeded mix:
//! most succeed; some fail permanently and must be in the dead-letter queue
//! once each; some fail retryably twice and then succeed; some are
//! published twice, in both content modes.
//!
//! Runs are counted from every incarnation's log, the killed ones' too
//! (saved in `target/soak/seed-<seed>/`). docs/guarantees.md promises at-least-once
//! *invocations* but one committed outcome: a run cut off before its commit
//! may run again, so what is counted is the `succeeded` lines, which a
//! runtime writes only after the commit and the ack (a successor that
//! finishes a cut-off commit without running the handler writes one too,
//! marked `resumed`, which is not a run). At most one run per event, and
//! none missing except where a kill cut off the line of a commit that had
//! landed: at most the events a killed runtime had in flight.
//!
//! Availability: the longest time in which no replica settled any event
//! while events were pending, outside the windows where nats-server itself
//! was down, must stay below the consumer's ack wait. Publishing goes on for
//! longer than the ack wait after the last kill, so that what the last
//! victim held comes back while fresh events still flow: the gap measures the
//! replicas, not JetStream's redelivery timer.
//!
//! `EVENTHOST_SOAK_KILLS` (default 6), `EVENTHOST_SOAK_NATS_RESTARTS`
//! (default 1) and `EVENTHOST_SOAK_SEED` (default random, printed) set the
//! run; `scripts/soak` runs it by hand with 100 kills.
//! `EVENTHOST_SOAK_CLUSTER=1` runs it on a three-node cluster with three
//! copies of everything, where each commit is one atomic batch; a server
//! restart there kills and restarts one node, in turn.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, jetstream};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::*;

/// The consumer's ack wait: `max(2 × timeout, 30 s)` (`source::ack_wait`),
/// with the counter's 5 s timeout.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The counter's `limits.concurrency`: the most events a killed runtime can
/// have had in flight.
const CONCURRENCY: usize = 32;
const PUBLISH_EVERY: Duration = Duration::from_millis(12);
const SETTLE: Duration = Duration::from_secs(180);

/// A span of time in which nats-server was down.
type Outage = (DateTime<Utc>, DateTime<Utc>);

/// The kind of each published event, which says what must become of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Succeeds: its key counts 1.
    Applied,
    /// Fails permanently after writing: dead-lettered once, key absent.
    Doomed,
    /// Fails retryably on attempts 1 and 2, then succeeds: key counts 1.
    Flaky,
}

#[derive(Default)]
struct Published {
    events: Vec<(String, Kind)>,
    /// Events published a second time.
    twice: BTreeSet<String>,
}

impl Published {
    fn of(&self, kind: Kind) -> impl Iterator<Item = &str> {
        let matching = self.events.iter().filter(move |(_, k)| *k == kind);
        matching.map(|(id, _)| id.as_str())
    }
}

struct Settings {
    kills: usize,
    nats_restarts: usize,
    seed: u64,
    cluster: bool,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.parse().expect(name));
        Settings {
            kills: var("EVENTHOST_SOAK_KILLS").unwrap_or(6) as usize,
            nats_restarts: var("EVENTHOST_SOAK_NATS_RESTARTS").unwrap_or(1) as usize,
            seed: var("EVENTHOST_SOAK_SEED").unwrap_or_else(|| fastrand::u64(..)),
            cluster: var("EVENTHOST_SOAK_CLUSTER") == Some(1),
        }
    }

    /// Whether nats-server restarts just before kill `k` (spread evenly).
    fn restart_before(&self, k: usize) -> bool {
        (1..=self.nats_restarts).any(|i| i * self.kills / (self.nats_restarts + 1) == k)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_kills_and_restarts_apply_every_event_once() {
    let settings = Settings::from_env();
    let (kills, restarts, seed) = (settings.kills, settings.nats_restarts, settings.seed);
    eprintln!(
        "soak: {kills} kills, {restarts} nats-server restarts, seed {seed} (EVENTHOST_SOAK_SEED={seed} repeats its choices){}",
        if settings.cluster {
            ", three-node cluster"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let mut fleet = Fleet::start(seed, settings.cluster).await;
    let js = fleet.nats.jetstream().await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let first_publish = Utc::now();
    let publisher = tokio::spawn(stream_events(js.clone(), seed, stop.clone(), count.clone()));

    let mut rng = fastrand::Rng::with_seed(seed);
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.u64(200..2500)));
        if settings.restart_before(k) {
            fleet.restart_nats().await;
        }
        let victim = rng.usize(..2);
        fleet.kill_and_replace(victim);
        let published = count.load(Relaxed);
        eprintln!(
            "kill {}/{kills}: replica {victim}; {published} events published",
            k + 1
        );
    }
    // What the last victim held comes back after the ack wait.
    std::thread::sleep(ACK_WAIT + Duration::from_secs(5));
    stop.store(true, Relaxed);
    let published = publisher.await.unwrap();
    consumer_settled(&js, "COUNTER", "counter", SETTLE).await;
    let (lines, outages) = fleet.stop_replicas();
    // A fresh client: the publisher's rode out the restarts, but need not
    // have come through them whole.
    let js = fleet.nats.jetstream().await;

    check_state(&js, &published).await;
    check_outputs(&js, &published).await;
    check_dead_letters(&js, &published).await;
    let unlogged = check_runs(&lines, &published, kills);
    let redelivered = redeliveries(&lines, &published);
    assert!(
        redelivered > 0 || kills + restarts == 0,
        "no kill or outage cut an event off: the soak tested nothing"
    );
    let gap = longest_gap(&lines, first_publish, &outages);
    eprintln!(
        "soak: {} events ({} dead-lettered by design, {} failed twice then succeeded, {} published twice), \
         {kills} kills, {restarts} nats-server restarts, {redelivered} events cut off and redelivered, \
         {unlogged} commits whose log line a kill cut off; longest time without a settled event {:.1} s \
         (ack wait {} s); {:.0} s in all; seed {seed}",
        published.events.len(),
        published.of(Kind::Doomed).count(),
        published.of(Kind::Flaky).count(),
        published.twice.len(),
        gap.as_secs_f64(),
        ACK_WAIT.as_secs(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        gap < ACK_WAIT,
        "no event was settled for {gap:?} while events were pending"
    );
}

// ---------------------------------------------------------------- the run

/// Where the soak's JetStream runs.
enum Nats {
    One(NatsServer),
    /// A three-node cluster, and the node to restart next.
    Cluster(support::cluster::NatsCluster, usize),
}

impl Nats {
    fn url(&self) -> String {
        match self {
            Nats::One(nats) => nats.url(),
            Nats::Cluster(cluster, _) => cluster.url(),
        }
    }

    async fn jetstream(&self) -> jetstream::Context {
        match self {
            Nats::One(nats) => nats.jetstream().await,
            Nats::Cluster(cluster, _) => cluster.jetstream().await,
        }
    }

    /// The runtime config: three copies of everything on the cluster.
    fn config(&self) -> String {
        match self {
            Nats::One(_) => TEST_STREAMS.to_string(),
            Nats::Cluster(..) => format!("replicas = 3\n{TEST_STREAMS}"),
        }
    }
}

/// The server, the two replicas, and the logs of every incarnation so far.
struct Fleet {
    nats: Nats,
    plugins: Plugins,
    replicas: Vec<Runtime>,
    /// Incarnations started per replica, for the saved logs' names.
    started: [usize; 2],
    /// Saved logs, one per incarnation.
    logs: Vec<PathBuf>,
    outages: Vec<Outage>,
    /// Server (or node) restarts so far.
    restarts: usize,
    log_dir: PathBuf,
}

impl Fleet {
    async fn start(seed: u64, cluster: bool) -> Self {
        let log_dir = repo_root().join(format!("target/soak/seed-{seed}"));
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir).unwrap();
        let nats = match cluster {
            true => Nats::Cluster(support::cluster::NatsCluster::start(3).await, 0),
            false => Nats::One(NatsServer::start()),
        };
        let plugins = Plugins::new();
        let manifest =
            std::fs::read_to_string(repo_root().join("examples/counter/handler.toml")).unwrap();
        // Enough attempts that events cut off by kills are not taken for
        // poison, and short backoffs so retries settle within the run.
        let retry =
            "[retry]\nmax_attempts = 10\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"";
        plugins.install("counter", "counter", &format!("{manifest}\n{retry}\n"));
        let start = |_| Runtime::start_configured(&nats.url(), &plugins, 1, &nats.config(), &[]);
        let replicas = (0..2).map(start).collect();
        Fleet {
            nats,
            plugins,
            replicas,
            started: [1, 1],
            logs: Vec::new(),
            outages: Vec::new(),
            restarts: 0,
            log_dir,
        }
    }

    /// SIGKILLs replica `which`, keeps its log, and starts its successor
    /// (the other replica serves meanwhile).
    fn kill_and_replace(&mut self, which: usize) {
        self.replicas[which].kill();
        let log = self.replicas[which].raw_log();
        self.save_log(which, &log);
        let (url, config) = (self.nats.url(), self.nats.config());
        self.replicas[which] = Runtime::start_configured(&url, &self.plugins, 1, &config, &[]);
        self.started[which] += 1;
    }

    /// Kills nats-server (as a crash would) and starts it again a second
    /// later on the same store; on the cluster, the next node in turn,
    /// waiting until it has caught up (so the next loss leaves a quorum).
    async fn restart_nats(&mut self) {
        let down = Utc::now();
        match &mut self.nats {
            Nats::One(nats) => {
                nats.stop();
                std::thread::sleep(Duration::from_secs(1));
                nats.restart();
                self.outages.push((down, Utc::now()));
            }
            Nats::Cluster(cluster, next) => {
                let node = cluster.names()[*next % 3].clone();
                *next += 1;
                cluster.kill(&node);
                std::thread::sleep(Duration::from_secs(1));
                cluster.restart(&node);
                // The others served meanwhile: no outage to leave out.
                let js = cluster.jetstream().await;
                let streams = ["COUNTER", "KV_counters", "KV_processed-counter"];
                cluster.wait_current(&js, &streams).await;
            }
        }
        self.restarts += 1;
        eprintln!("nats-server restarted ({} so far)", self.restarts);
    }

    fn save_log(&mut self, which: usize, log: &str) {
        let name = format!("replica-{which}-{}.log", self.started[which]);
        let path = self.log_dir.join(name);
        std::fs::write(&path, log).unwrap();
        self.logs.push(path);
    }

    /// Stops the live replicas gracefully; returns every incarnation's log
    /// lines and the server's outages. (Their logs are saved, so a failing
    /// check need not dump them.)
    fn stop_replicas(&mut self) -> (Vec<Value>, Vec<Outage>) {
        let replicas = std::mem::take(&mut self.replicas);
        for (which, mut replica) in replicas.into_iter().enumerate() {
            let status = replica.terminate();
            assert!(status.success(), "a graceful stop exits 0: {status}");
            self.save_log(which, &replica.raw_log());
        }
        eprintln!("soak: logs in {}", self.log_dir.display());
        let read = |path: &PathBuf| parse_log(&std::fs::read_to_string(path).unwrap());
        let lines = self.logs.iter().flat_map(read).collect();
        (lines, std::mem::take(&mut self.outages))
    }
}

/// Publishes a seeded mix of events, one every [`PUBLISH_EVERY`], until
/// `stop`, riding out nats-server restarts.
async fn stream_events(
    js: jetstream::Context,
    seed: u64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Published {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(1));
    let mut published = Published::default();
    while !stop.load(Relaxed) {
        let id = format!("s-{}", published.events.len());
        // A pause inside the handler keeps events in flight when a kill lands.
        let mut data = json!({ "key": id, "sleep_ms": rng.u64(0..50) });
        let kind = match rng.u8(..100) {
            0..90 => Kind::Applied,
            90..95 => Kind::Doomed,
            _ => Kind::Flaky,
        };
        match kind {
            Kind::Applied => {}
            Kind::Doomed => data["then"] = json!("fail-permanent"),
            Kind::Flaky => data["fail_until_attempt"] = json!(3),
        }
        let event = TestEvent::new(id.clone(), "com.example.count", data);
        let (first, second) = match rng.bool() {
            true => (event.structured(), event.binary()),
            false => (event.binary(), event.structured()),
        };
        publish_through_outages(&js, first).await;
        if rng.u8(..100) < 3 {
            publish_through_outages(&js, second).await;
            published.twice.insert(id.clone());
        }
        published.events.push((id, kind));
        count.store(published.events.len(), Relaxed);
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    published
}

/// Publishes until JetStream stores the message. A publish whose ack was
/// lost may have been stored; its second copy is the host's to recognise.
async fn publish_through_outages(
    js: &jetstream::Context,
    (headers, payload): (HeaderMap, Vec<u8>),
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = js
            .publish_with_headers("counter.in", headers.clone(), payload.clone().into())
            .await;
        if let Ok(ack) = sent
            && ack.await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "nats-server did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- checks

/// One committed outcome per event, counted by runs (see the module doc);
/// returns how many successes had their log line cut off by a kill.
fn check_runs(lines: &[Value], published: &Published, kills: usize) -> usize {
    let runs = successful_runs_in(lines, "counter");
    let doomed_ran: Vec<_> = published
        .of(Kind::Doomed)
        .filter(|id| runs.contains_key(*id))
        .collect();
    assert!(
        doomed_ran.is_empty(),
        "events designed to fail succeeded: {doomed_ran:?}"
    );
    let unlogged = (published.events.iter())
        .filter(|(id, kind)| *kind != Kind::Doomed && !runs.contains_key(id))
        .count();
    assert!(
        unlogged <= kills * CONCURRENCY,
        "{unlogged} successes have no logged run, more than {kills} kills can have cut off"
    );
    // The flaky events succeeded on their third attempt or later (a kill
    // can use one up), never before.
    let kinds: BTreeMap<&str, Kind> = published
        .events
        .iter()
        .map(|(id, k)| (id.as_str(), *k))
        .collect();
    for line in lines.iter().filter(|l| l["outcome"] == "succeeded") {
        let id = line["span"]["event_id"].as_str().unwrap();
        if kinds.get(id) == Some(&Kind::Flaky) && line["resumed"] != true {
            let attempt = line["attempt"].as_u64().unwrap();
            assert!(attempt >= 3, "{id} succeeded on attempt {attempt}: {line}");
        }
    }
    let mut dead: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines.iter().filter(|l| l["outcome"] == "dead_lettered") {
        *dead
            .entry(line["span"]["event_id"].as_str().unwrap())
            .or_default() += 1;
    }
    let wrong: Vec<_> = (dead.iter())
        .filter(|(id, n)| **n > 1 || kinds.get(**id) != Some(&Kind::Doomed))
        .collect();
    assert!(
        wrong.is_empty(),
        "dead-lettered twice, or not designed to fail: {wrong:?}"
    );
    unlogged
}

/// The state: every event's key counts 1, or is absent for those that failed.
async fn check_state(js: &jetstream::Context, published: &Published) {
    let state = bucket_json(js, "counters").await;
    let mut expected = BTreeMap::new();
    for (id, kind) in &published.events {
        if *kind != Kind::Doomed {
            expected.insert(id.clone(), json!(1));
        }
    }
    if state != expected {
        let wrong: Vec<_> = (published.events.iter())
            .filter(|(id, _)| state.get(id) != expected.get(id))
            .map(|(id, kind)| (id, kind, state.get(id)))
            .collect();
        panic!(
            "{} events' effects not applied exactly once: {wrong:?}",
            wrong.len()
        );
    }
}

/// Each success stored one `counter.updated`, built on a count of 0.
async fn check_outputs(js: &jetstream::Context, published: &Published) {
    let outputs = stored_messages(js, "COUNTER", "counter.updated").await;
    let mut by_input: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for output in &outputs {
        let data = output.cloudevent()["data"].clone();
        by_input
            .entry(data["input"].as_str().unwrap().to_string())
            .or_default()
            .push(data["value"].clone());
    }
    let wrong: Vec<_> = (published.events.iter())
        .filter(|(id, kind)| {
            let values = by_input.get(id).cloned().unwrap_or_default();
            values
                != if *kind == Kind::Doomed {
                    vec![]
                } else {
                    vec![json!(1)]
                }
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "outputs missing, doubled or wrong for {wrong:?}"
    );
    assert_eq!(
        outputs.len(),
        published.events.len() - published.of(Kind::Doomed).count()
    );
}

/// The dead-letter queue holds the designed-to-fail events, once each.
async fn check_dead_letters(js: &jetstream::Context, published: &Published) {
    let doomed: Vec<&str> = published.of(Kind::Doomed).collect();
    let letters = dead_letters(js, "counter", doomed.len(), SETTLE).await;
    let mut ids: Vec<String> = (letters.iter())
        .map(|l| l.cloudevent()["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = doomed.iter().map(|id| id.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected, "the dead letters");
    for letter in &letters {
        assert_eq!(letter.header("Eventhost-Error-Kind"), "permanent");
    }
}

/// Events published once that were delivered again without a retry being
/// asked for: cut off by a kill or an outage.
fn redeliveries(lines: &[Value], published: &Published) -> usize {
    let once = |id: &&str| !published.twice.contains(*id);
    let applied: BTreeSet<&str> = published.of(Kind::Applied).filter(once).collect();
    let cut_off: BTreeSet<&str> = (lines.iter())
        .filter(|l| l["span"]["delivery"].as_u64() >= Some(2))
        .filter_map(|l| l["span"]["event_id"].as_str())
        .filter(|id| applied.contains(id))
        .collect();
    cut_off.len()
}

/// The longest time without a settled event between the first publish and
/// the last settlement, not counting time nats-server was down.
fn longest_gap(lines: &[Value], start: DateTime<Utc>, outages: &[Outage]) -> Duration {
    let settled = ["succeeded", "dead_lettered", "duplicate"];
    let mut times: Vec<DateTime<Utc>> = (lines.iter())
        .filter(|l| settled.iter().any(|s| l["outcome"] == *s))
        .map(log_time)
        .collect();
    times.push(start);
    times.sort();
    let down = |from: DateTime<Utc>, to: DateTime<Utc>| {
        let overlap = |(a, b): &Outage| (to.min(*b) - from.max(*a)).max(chrono::TimeDelta::zero());
        outages.iter().map(overlap).sum::<chrono::TimeDelta>()
    };
    let gaps = times.windows(2).map(|w| (w[1] - w[0]) - down(w[0], w[1]));
    gaps.max().unwrap_or_default().to_std().unwrap_or_default()
}
