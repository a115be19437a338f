//! Browsing state through the console: a key-value bucket's keys and a
//! value as the handler left it (pretty JSON in the page), and an
//! event-store subject's events in order; bad names get a clear answer.

use std::time::Duration;

use crate::support::web::*;
use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The counter and the account examples, each after a few events.
pub async fn state_host() -> (NatsServer, Plugins, Runtime) {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_example("counter");
    plugins.install_example("account");
    let runtime = Runtime::start(&nats, &plugins, 2);
    let js = nats.jetstream().await;
    for (i, by) in [3, 4].into_iter().enumerate() {
        let event = TestEvent::new(
            format!("c-{i}"),
            "com.example.count",
            json!({"key": "apples", "by": by}),
        );
        publish(&js, "counter.in", event.structured()).await;
    }
    let commands = [
        json!({"command": "open", "account": "acct-1", "owner": "alice"}),
        json!({"command": "deposit", "account": "acct-1", "amount": 100}),
        json!({"command": "withdraw", "account": "acct-1", "amount": 30}),
    ];
    for (i, command) in commands.into_iter().enumerate() {
        let event = TestEvent::new(format!("a-{i}"), "com.example.account.command", command)
            .ext("partitionkey", "acct-1");
        publish(&js, "accounts.commands", event.structured()).await;
    }
    collect_raw(&js, "ACCOUNTS", "accounts.events.acct-1", 3, WAIT).await;
    collect_raw(&js, "COUNTER", "counter.updated", 2, WAIT).await;
    (nats, plugins, runtime)
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_keys_values_and_subject_events_are_shown_as_stored() {
    let (nats, _plugins, runtime) = state_host().await;
    let port = runtime.admin_port();
    let buckets = http_get(port, "/ui/api/state/buckets").json();
    let names: Vec<&str> = (buckets.as_array().unwrap().iter())
        .filter_map(|b| b["bucket"].as_str())
        .collect();
    assert!(names.contains(&"counters"), "{buckets:#}");

    let keys = http_get(port, "/ui/api/state/keys?bucket=counters").json();
    assert_eq!(keys["keys"], json!(["apples"]), "{keys:#}");
    let value = http_get(port, "/ui/api/state/value?bucket=counters&key=apples").json();
    assert_eq!(value["value"], 7, "{value:#}");
    assert_eq!(value["pending"], false, "{value:#}");
    // What the console shows is what the bucket holds.
    let js = nats.jetstream().await;
    let stored = bucket_json(&js, "counters").await;
    assert_eq!(stored["apples"], value["value"]);

    let events = http_get(port, "/ui/api/state/events?subject=accounts.events.acct-1").json();
    let types: Vec<&str> = (events["events"].as_array().unwrap().iter())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types.len(), 3, "{events:#}");
    assert!(types[0].ends_with("opened"), "{types:?}");
    let amounts: Vec<Value> = (events["events"].as_array().unwrap().iter())
        .map(|e| e["data"]["amount"].clone())
        .collect();
    assert_eq!(amounts[1..], [json!(100), json!(30)], "{events:#}");

    for (path, status) in [
        ("/ui/api/state/keys?bucket=no-such-bucket", 404),
        ("/ui/api/state/value?bucket=counters&key=pears", 404),
        ("/ui/api/state/events?subject=accounts.events.%3E", 400),
        ("/ui/api/state/events?subject=nowhere.at.all", 404),
        ("/ui/api/state/keys", 400),
    ] {
        let reply = http_get(port, path);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{path}: {}", reply.body);
    }
}
