//! The pull under every handler, against a real server: it keeps messages
//! coming whatever its batch, rides out idle requests expiring, and says so
//! when the server has lost it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::NatsServer;
use async_nats::jetstream::{self, consumer, stream};
use eventhost::source::{Pull, PullError, PullShape};

/// A stream capturing `subject` (named after it) with one durable consumer.
async fn consumer_of(js: &jetstream::Context, subject: &str) -> (String, String) {
    let stream = subject.replace('.', "-").to_uppercase();
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![subject.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .create_consumer(consumer::pull::Config {
        durable_name: Some("pull".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    })
    .await
    .unwrap();
    (stream, "pull".into())
}

async fn publish(js: &jetstream::Context, subject: &str, count: usize) {
    let mut acks = Vec::new();
    for i in 0..count {
        acks.push(
            js.publish(subject.to_string(), i.to_string().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Threads that keep every core busy until dropped, so that tasks get
/// descheduled at awkward moments.
struct BusyMachine(Arc<AtomicBool>);

impl BusyMachine {
    fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..threads {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        BusyMachine(stop)
    }
}

impl Drop for BusyMachine {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn shape(batch: usize, expires_ms: u64, heartbeat_ms: u64) -> PullShape {
    PullShape {
        batch,
        expires: Duration::from_millis(expires_ms),
        heartbeat: Duration::from_millis(heartbeat_ms),
    }
}

/// async-nats' own pull stream stalls here about every other run: on a
/// busy machine its background task books a request only after some of the
/// request's messages were read, the stream then waits for messages nobody
/// asked for, and a missed heartbeat is all that comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_delivers_every_message_at_any_batch_without_stalling() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let _busy = BusyMachine::start(3);
    const EVENTS: usize = 3000;
    for batch in [1, 2, 8] {
        let subject = format!("pulled.batch{batch}");
        let (stream, consumer) = consumer_of(&js, &subject).await;
        // Half waits in the stream; the other half arrives while pulling.
        publish(&js, &subject, EVENTS / 2).await;
        let late = tokio::spawn({
            let (js, subject) = (js.clone(), subject.clone());
            async move { publish(&js, &subject, EVENTS / 2).await }
        });
        let mut pull = Pull::open(&js, &stream, &consumer, shape(batch, 5000, 500))
            .await
            .unwrap();
        let mut seen = BTreeSet::new();
        // A stalled pull (what this test is about) must fail it, not hang it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < EVENTS {
            let next = tokio::time::timeout_at(deadline, pull.next()).await;
            let message = next
                .unwrap_or_else(|_| panic!("batch {batch}: stalled after {} messages", seen.len()))
                .unwrap_or_else(|err| {
                    panic!("batch {batch}: failed after {} messages: {err}", seen.len())
                });
            message.ack().await.unwrap();
            assert!(seen.insert(message.info().unwrap().stream_sequence));
        }
        late.await.unwrap();
    }
}

/// An idle request expires on the server with a 408 saying how many
/// messages it did not deliver; the pull must book that and ask again, or
/// it would wait on nothing.
#[tokio::test]
async fn an_idle_pull_outlives_its_requests() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let (stream, consumer) = consumer_of(&js, "pulled.idle").await;
    let mut pull = Pull::open(&js, &stream, &consumer, shape(4, 300, 100))
        .await
        .unwrap();
    let idle = tokio::time::timeout(Duration::from_secs(2), pull.next()).await;
    assert!(idle.is_err(), "nothing was published, yet: {idle:?}");
    publish(&js, "pulled.idle", 1).await;
    let message = tokio::time::timeout(Duration::from_secs(2), pull.next())
        .await
        .expect("the message published after the idle spell arrives")
        .unwrap();
    assert_eq!(&message.payload[..], b"0");
}

#[tokio::test]
async fn a_pull_the_server_lost_reports_it() {
    let mut nats = NatsServer::start();
    let js = nats.jetstream().await;
    let (stream, consumer) = consumer_of(&js, "pulled.lost").await;
    let mut pull = Pull::open(&js, &stream, &consumer, shape(4, 5000, 200))
        .await
        .unwrap();
    nats.stop();
    let err = tokio::time::timeout(Duration::from_secs(5), pull.next())
        .await
        .expect("a lost pull is noticed within a few heartbeats")
        .unwrap_err();
    assert!(matches!(err, PullError::MissedHeartbeat(_)), "{err}");
}
