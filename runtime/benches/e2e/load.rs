//! Offering load and measuring what came out.
//!
//! Every figure comes from JetStream's own timestamps: an event's latency is
//! the time its first output was stored minus the time the event itself was
//! stored, both read off the same server clock. The bench process's own
//! scheduling (it shares the two cores) therefore cannot bend the numbers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use cloudevents::{EventBuilder, EventBuilderV10};
use eventhost::event::decode::ContentMode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::native::{self, Workload};
use crate::neighbour::HOSTILE_SUBJECT;

pub const INPUT_STREAM: &str = "BENCH_IN";
pub const OUTPUT_STREAM: &str = "BENCH_OUT";

/// The subject a workload's events are published to.
pub fn input_subject(workload: Workload) -> &'static str {
    match workload {
        Workload::Relay => "relay.in",
        Workload::Payment => "orders.created",
        Workload::State => "counter.in",
    }
}

/// Keys the state workload spreads its writes over: few enough that keys
/// are rewritten, many enough that 16 in flight rarely race.
const STATE_KEYS: u64 = 1024;

/// Deletes every stream (inputs, outputs, idempotency buckets, dead letters)
/// and declares the benchmark's two, so each measurement starts from empty.
pub async fn reset(js: &jetstream::Context) -> Result<()> {
    reset_with_replicas(js, 1).await
}

/// Like [`reset`], with streams and bucket of `replicas` copies (a cluster).
pub async fn reset_with_replicas(js: &jetstream::Context, replicas: usize) -> Result<()> {
    let mut names = js.stream_names();
    let mut all = Vec::new();
    while let Some(name) = names.next().await {
        all.push(name?);
    }
    for name in all {
        js.delete_stream(&name).await?;
    }
    for (name, subjects) in [
        (
            INPUT_STREAM,
            vec!["relay.in", "orders.created", "counter.in", HOSTILE_SUBJECT],
        ),
        (
            OUTPUT_STREAM,
            vec!["relay.out", "payments.>", "counter.updated", "chaos.done"],
        ),
    ] {
        js.create_stream(jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.into_iter().map(String::from).collect(),
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
    }
    // The state workload's bucket, laid out as the runtime declares one.
    let bucket = eventhost::jetstream::config_file::BucketDeclaration {
        name: "counters".into(),
        history: 1,
        storage: eventhost::jetstream::config_file::Storage::File,
        max_age: None,
        max_value_size: None,
    };
    use eventhost::jetstream::declare::{CommitRecords, ensure_buckets};
    // Shaped for commit records on a cluster, as the runtime declares it.
    let records = match replicas > 1 {
        true => CommitRecords::Beside,
        false => CommitRecords::Elsewhere,
    };
    ensure_buckets(js, &[bucket], replicas, records).await?;
    Ok(())
}

/// Event `n` of a run, as binary-mode CloudEvent headers and payload.
fn event(workload: Workload, run: &str, n: u64) -> Result<(HeaderMap, Bytes)> {
    let (ty, data) = match workload {
        Workload::State => {
            let key = format!("{{\"key\":\"k{}\"}}", n % STATE_KEYS);
            ("com.example.count", key.into_bytes())
        }
        _ => ("com.example.order.created", native::order_json(n)),
    };
    let event = EventBuilderV10::new()
        .id(format!("{run}-{n}"))
        .source("/bench")
        .ty(ty)
        .data("application/json", data)
        .build()?;
    Ok(eventhost::event::encode::encode(
        event,
        ContentMode::Binary,
    )?)
}

/// What one measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub events: usize,
    /// Offered rate in events/s; `None` for "as fast as possible".
    pub offered: Option<f64>,
    /// Events handled per second, first input stored to last output stored.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU µs per event: [the system under test, nats-server]. Measured
    /// for saturation runs only.
    pub cpu_us_per_event: Option<[f64; 2]>,
}

/// Publishes `events` events as fast as JetStream takes them (up to 256
/// unacknowledged), then waits for every output.
pub async fn saturation(
    js: &jetstream::Context,
    workload: Workload,
    events: usize,
) -> Result<Measurement> {
    let run = format!("sat-{}", uuid::Uuid::new_v4().simple());
    let start = Start::now(js).await?;
    let mut acks = FuturesUnordered::new();
    for n in 0..events as u64 {
        let (headers, payload) = event(workload, &run, n)?;
        let ack = js
            .publish_with_headers(input_subject(workload), headers, payload)
            .await?;
        acks.push(ack.into_future());
        if acks.len() >= 256 {
            acks.next().await.expect("not empty")?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    start.measure(js, events, None).await
}

/// Publishes at `rate` events/s for `duration`, each event at its own due
/// time (an open-loop load: a slow system does not slow the offer down).
pub async fn fixed_rate(
    js: &jetstream::Context,
    workload: Workload,
    rate: f64,
    duration: Duration,
) -> Result<Measurement> {
    ensure!(rate > 0.0, "offered rate must be above zero");
    let run = format!("fix-{}", uuid::Uuid::new_v4().simple());
    let events = (rate * duration.as_secs_f64()).ceil() as usize;
    let start = Start::now(js).await?;
    let began = tokio::time::Instant::now();
    let mut acks = Vec::with_capacity(events);
    for n in 0..events as u64 {
        let due = began + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (headers, payload) = event(workload, &run, n)?;
        let ack = js
            .publish_with_headers(input_subject(workload), headers, payload)
            .await?;
        acks.push(tokio::spawn(ack.into_future()));
    }
    for ack in acks {
        ack.await??;
    }
    start.measure(js, events, Some(rate)).await
}

/// Where the streams stood before a measurement.
struct Start {
    input: u64,
    output: u64,
}

impl Start {
    async fn now(js: &jetstream::Context) -> Result<Self> {
        Ok(Start {
            input: last_sequence(js, INPUT_STREAM).await?,
            output: last_sequence(js, OUTPUT_STREAM).await?,
        })
    }

    /// Waits for `events` outputs past the start, then reads both streams'
    /// timestamps and computes the figures.
    async fn measure(
        &self,
        js: &jetstream::Context,
        events: usize,
        offered: Option<f64>,
    ) -> Result<Measurement> {
        let wanted = self.output + events as u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let stored = last_sequence(js, OUTPUT_STREAM).await?;
            if stored >= wanted {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {events} outputs after 300 s",
                    stored - self.output
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inputs = read(js, INPUT_STREAM, self.input + 1, events, "ce-id").await?;
        let outputs = read(js, OUTPUT_STREAM, self.output + 1, events, "ce-causationid").await?;
        let stored_at: HashMap<String, i128> = inputs.into_iter().collect();
        let mut latencies = Vec::with_capacity(events);
        let (mut first, mut last) = (i128::MAX, i128::MIN);
        for (cause, out_at) in outputs {
            let in_at = *stored_at
                .get(&cause)
                .with_context(|| format!("an output names an unknown input {cause:?}"))?;
            first = first.min(in_at);
            last = last.max(out_at);
            latencies.push((out_at - in_at) as f64 / 1e6);
        }
        ensure!(
            latencies.len() == events,
            "{} outputs for {events} events",
            latencies.len()
        );
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((q * events as f64).ceil() as usize).clamp(1, events) - 1];
        Ok(Measurement {
            events,
            offered,
            throughput: events as f64 / ((last - first) as f64 / 1e9),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            cpu_us_per_event: None,
        })
    }
}

async fn last_sequence(js: &jetstream::Context, stream: &str) -> Result<u64> {
    let mut stream = js.get_stream(stream).await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// `count` messages of `stream` from sequence `from`: the value of header
/// `key` and the time the message was stored (ns since the epoch).
async fn read(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    count: usize,
    key: &str,
) -> Result<Vec<(String, i128)>> {
    // On a cluster, a new consumer's first pull can find no leader yet
    // ("no responders"): read again with a fresh consumer.
    let mut tries = 1;
    loop {
        match read_once(js, stream, from, count, key).await {
            Err(e) if tries < 5 => {
                eprintln!("   reading {stream} again ({e:#})");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

async fn read_once(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    count: usize,
    key: &str,
) -> Result<Vec<(String, i128)>> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?.take(count);
    let mut found = Vec::with_capacity(count);
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("reading {stream}: {e}"))?;
        let value = message
            .headers
            .as_ref()
            .and_then(|h| h.get(key))
            .with_context(|| format!("a message in {stream} has no {key} header"))?
            .to_string();
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        found.push((
            value,
            i128::from(info.published.timestamp_nanos_opt().unwrap_or_default()),
        ));
    }
    Ok(found)
}
