//! On a replicated bucket (a three-node cluster, nats-server 2.14.4 or
//! later) a commit is one atomic batch: the state writes and the event's
//! commit record, beside the state. Counted in the streams themselves.

use std::time::Duration;

use crate::support::cluster::NatsCluster;
use crate::support::*;
use serde_json::json;

const EVENTS: usize = 40;
const KEYS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn on_a_replicated_bucket_each_event_commits_in_one_batch_with_its_record_beside_the_state() {
    let cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let runtime = Runtime::start_configured(&cluster.url(), &plugins, 1, &config, &[]);
    // Ten events per key, each holding its read for 30 ms before writing:
    // commits race on each key.
    for i in 0..EVENTS {
        let data = json!({ "key": format!("k{}", i % KEYS), "sleep_ms": 30 });
        let event = TestEvent::new(format!("e{i}"), "com.example.count", data);
        publish(&js, "counter.in", event.structured()).await;
    }
    consumer_settled(&js, "COUNTER", "counter", Duration::from_secs(120)).await;

    // Exactly once: each key counted once per event of it, one output each.
    let state = bucket_json(&js, "counters").await;
    for k in 0..KEYS {
        assert_eq!(state[&format!("k{k}")], EVENTS / KEYS, "{state:?}");
    }
    let outputs = stored_messages(&js, "COUNTER", "counter.updated").await;
    assert_eq!(outputs.len(), EVENTS, "one output per event");

    // One batch per commit: a commit record per event beside the state,
    // and none of the record protocol's pending marks on the state.
    let records = stored_messages(&js, "KV_counters", "$EHC.>").await;
    assert_eq!(records.len(), EVENTS, "one commit record per event");
    for record in &records {
        assert!(
            record.subject.starts_with("$EHC.KV_counters.counter."),
            "{}",
            record.subject
        );
        let ttl = record.headers.get("Nats-TTL");
        assert!(ttl.is_some(), "a record expires");
    }
    let writes = stored_messages(&js, "KV_counters", "$KV.counters.>").await;
    assert!(!writes.is_empty());
    for write in &writes {
        let pending = write.headers.get("Eventhost-Pending");
        assert!(pending.is_none(), "{} is marked pending", write.subject);
    }
    // Races were lost and run again: a refused batch left nothing behind.
    let conflicts = runtime.metric(
        "eventhost_state_conflicts_total",
        &[("handler", "counter"), ("store", "counters")],
    );
    assert!(conflicts > 0.0, "ten events per key raced");
    println!("{conflicts} batches refused on a lost race and run again");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_atomic_commits_off_a_replicated_bucket_keeps_the_record_protocol() {
    let cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let config = format!("replicas = 3\natomic_commits = false\n{TEST_STREAMS}");
    let _runtime = Runtime::start_configured(&cluster.url(), &plugins, 1, &config, &[]);
    let event = TestEvent::new("e0", "com.example.count", json!({ "key": "k" }));
    publish(&js, "counter.in", event.structured()).await;
    consumer_settled(&js, "COUNTER", "counter", Duration::from_secs(60)).await;
    assert_eq!(bucket_json(&js, "counters").await["k"], 1);
    let mut stream = js.get_stream("KV_counters").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert!(
        !config.allow_atomic_publish,
        "the bucket was left as declared"
    );
    let write = stored_messages(&js, "KV_counters", "$KV.counters.k").await;
    let pending = write[0].headers.get("Eventhost-Pending");
    assert!(pending.is_some(), "the record protocol marks its write");
}
