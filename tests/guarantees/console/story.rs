//! The story of an event, through the console's API: the checkout's
//! handlers (payment and notification calling the example provider,
//! inventory keeping stock) handle two orders, one of them after a failed
//! call; each order's story is then found by its order id, by its event id
//! and by a later event of its chain, and tells every handler's attempts in
//! the order they happened, counted against the runs the runtime made.

use std::time::Duration;

use crate::support::web::*;
use crate::support::*;
use eventhost_provider::{Control, RunningProvider};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The checkout (payment, notification, inventory) on a runtime whose
/// trail keys events by `order_id`, the provider declining charges over
/// 1,000 and failing every call until told otherwise.
pub async fn checkout() -> (NatsServer, Plugins, RunningProvider, Runtime) {
    let provider = crate::http::provider(Some("k")).await;
    provider.set_control(Control {
        fail_rate: 1.0,
        decline_over: Some(1000.0),
        ..Control::default()
    });
    let nats = NatsServer::start();
    let plugins = crate::http::provider_plugins(provider.address.port());
    plugins.install(
        "inventory",
        "inventory",
        "subscribe = [\"orders.created\", \"payments.failed\"]\n\
         publish = [\"inventory.reserved\", \"inventory.rejected\", \"inventory.released\"]\n\
         [keyvalue]\nread_write = [\"inventory\"]\n",
    );
    let config = format!("{TEST_STREAMS}\n[story]\nkeys = [\"order_id\"]\n");
    let env = [("PAYMENT_API_KEY", "k")];
    let runtime = Runtime::start_configured(&nats.url(), &plugins, 4, &config, &env);
    (nats, plugins, provider, runtime)
}

/// Publishes the two orders: `ok` (charged after failed calls) and `big`
/// (declined, its stock released); returns once both are settled.
pub async fn two_orders(nats: &NatsServer, provider: &RunningProvider, runtime: &Runtime) {
    let js = nats.jetstream().await;
    let order = |id: &str, total: f64| crate::http::order(id, total).structured();
    publish(&js, "orders.created", order("ok", 10.0)).await;
    wait_until("a failed payment attempt", WAIT, || {
        !runtime.outcomes("retried").is_empty()
    });
    provider.set_control(Control {
        decline_over: Some(1000.0),
        ..Control::default()
    });
    publish(&js, "orders.created", order("big", 5000.0)).await;
    collect(&js, "CHECKOUT", "notifications.sent", 1, WAIT).await;
    collect(&js, "CHECKOUT", "inventory.released", 1, WAIT).await;
}

/// The story of `query`, once it tells `events` events whose last handler
/// outcomes are all final.
pub fn story_of(port: u16, query: &str, events: usize) -> Value {
    let path = format!("/ui/api/story?q={query}");
    let mut story = Value::Null;
    wait_until("the story to be told", WAIT, || {
        let reply = http_get(port, &path);
        assert_eq!(reply.status, 200, "{}", reply.body);
        story = reply.json();
        let told = story["events"].as_array().map_or(0, Vec::len);
        told == events && !told_in_order(&story).iter().any(|(_, _, o)| o == "retried")
    });
    story
}

/// (event type, handler, last outcome) for each handler of each event,
/// sorted: the handlers of one event run side by side, in any order.
fn handler_outcomes(story: &Value) -> Vec<(String, String, String)> {
    let mut told = told_in_order(story);
    told.sort();
    told
}

/// (event type, handler, last outcome) in the story's order.
fn told_in_order(story: &Value) -> Vec<(String, String, String)> {
    let events = story["events"].as_array().into_iter().flatten();
    events
        .flat_map(|e| {
            let handlers = e["handlers"].as_array().into_iter().flatten();
            handlers.map(|h| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&e["type"]), text(&h["handler"]), text(&h["outcome"]))
            })
        })
        .collect()
}

fn attempts_of<'a>(story: &'a Value, event_type: &str, handler: &str) -> Vec<&'a Value> {
    let events = story["events"].as_array().unwrap();
    let event = events.iter().find(|e| e["type"] == event_type).unwrap();
    let handlers = event["handlers"].as_array().unwrap();
    let told = handlers.iter().find(|h| h["handler"] == handler).unwrap();
    told["attempts"].as_array().unwrap().iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orders_story_tells_each_handlers_attempts_in_order() {
    let (nats, _plugins, provider, runtime) = checkout().await;
    two_orders(&nats, &provider, &runtime).await;
    let port = runtime.admin_port();

    let story = story_of(port, "ok", 2);
    assert_eq!(story["found_by"], "key", "{story:#}");
    let order = "com.example.order.created";
    let paid = "com.example.payment.completed";
    assert_eq!(
        handler_outcomes(&story),
        [
            (order.into(), "inventory".into(), "succeeded".into()),
            (order.into(), "payment".into(), "succeeded".into()),
            (paid.into(), "notification".into(), "succeeded".into()),
        ],
        "{story:#}"
    );
    let events = story["events"].as_array().unwrap();
    assert_eq!(
        (&events[0]["type"], &events[1]["type"]),
        (&json!(order), &json!(paid))
    );
    assert_eq!(
        (events[0]["depth"].as_u64(), events[1]["depth"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(events[1]["causation"], events[0]["id"], "{story:#}");
    assert_eq!(events[0]["key"], json!(["order_id", "ok"]));
    assert_eq!(
        events[0]["stored"]["data"]["order_id"], "ok",
        "the event as stored"
    );

    // Every run of the payment handler on this order is told, in order:
    // the failed ones, then the one that succeeded and what it emitted.
    let payment = attempts_of(&story, order, "payment");
    let runs = runtime.handler_runs("payment") as usize - 1; // `big` ran once
    assert_eq!(payment.len(), runs, "{payment:#?}");
    let (last, failed) = payment.split_last().unwrap();
    assert!(
        failed.iter().all(|a| a["outcome"] == "retried"
            && a["kind"] == "retryable"
            && a["duration_us"].is_u64()),
        "{failed:#?}"
    );
    let numbers: Vec<u64> = payment
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=runs as u64).collect::<Vec<_>>());
    assert_eq!(
        (last["outcome"].as_str(), last["emitted"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    assert!(
        last["duration_us"].as_u64().is_some_and(|us| us > 0),
        "{last:#}"
    );
    // Each handler's idempotency record, as it is now.
    let records: Vec<(&Value, &Value)> = (events.iter())
        .flat_map(|e| e["handlers"].as_array().unwrap())
        .map(|h| (&h["handler"], &h["record"]))
        .collect();
    assert!(
        records.iter().all(|(_, r)| *r == "succeeded"),
        "{records:?}"
    );
    let handlers = events[0]["handlers"].as_array().unwrap();
    let payment = handlers.iter().find(|h| h["handler"] == "payment").unwrap();
    assert_eq!(payment["emitted"], 1, "{story:#}");
    assert_eq!(events[0]["caused"], 1, "the payment it emitted, told below");

    // The same story by the order event's id, and by the later event's.
    let by_id = story_of(port, events[0]["id"].as_str().unwrap(), 2);
    assert_eq!(by_id["found_by"], "id");
    assert_eq!(handler_outcomes(&by_id), handler_outcomes(&story));
    let by_child = story_of(port, events[1]["id"].as_str().unwrap(), 2);
    assert_eq!(handler_outcomes(&by_child), handler_outcomes(&story));
    let matched: Vec<&Value> = by_child["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["matched"])
        .collect();
    assert_eq!(matched, [false, true]);

    // The declined order: payment failed it, inventory gave the stock back.
    let big = story_of(port, "big", 2);
    let failed = "com.example.payment.failed";
    assert_eq!(
        handler_outcomes(&big),
        [
            (order.into(), "inventory".into(), "succeeded".into()),
            (order.into(), "payment".into(), "succeeded".into()),
            (failed.into(), "inventory".into(), "succeeded".into()),
        ],
        "{big:#}"
    );
    assert_eq!(
        big["events"][1]["type"], failed,
        "after the order that caused it"
    );

    // The same story as text, from the command line.
    let text = eventhost_ok(&nats, &["story", "ok"]);
    assert!(text.starts_with("\"ok\" found by key: 2 events"), "{text}");
    let lines: Vec<&str> = (text.lines())
        .filter(|l| l.contains(" payment ") && l.contains("attempt"))
        .collect();
    assert_eq!(lines.len(), runs, "{text}");
    assert!(
        lines[0].contains("attempt 1") && lines[0].contains("retried"),
        "{text}"
    );
    assert!(text.contains("↳ com.example.payment.completed"), "{text}");
    let (ok, unknown) = run_to_end(eventhost(&nats).args(["story", "nothing-like-it"]));
    assert!(
        !ok && unknown.contains("nothing in the trail matches"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_story_search_answers_bad_and_unknown_queries_clearly() {
    let nats = NatsServer::start();
    let console = ConsoleProcess::start(&nats);
    let before = http_get(console.port, "/ui/api/story?q=o-1").json();
    assert_eq!(before["trail"], false, "no runtime has written a trail yet");

    let plugins = Plugins::new();
    let config = format!("{TEST_STREAMS}\n[story]\nkeys = [\"order_id\"]\n");
    let _runtime = Runtime::start_configured(&nats.url(), &plugins, 0, &config, &[]);
    let unknown = http_get(console.port, "/ui/api/story?q=o-unknown");
    assert_eq!(unknown.status, 200, "{}", unknown.body);
    assert_eq!(
        (
            unknown.json()["trail"].as_bool(),
            unknown.json()["found_by"].is_null()
        ),
        (Some(true), true)
    );
    for (query, says) in [
        ("q=", "the search is empty"),
        ("q=%20%20", "the search is empty"),
        ("q=a%07b", "control characters"),
        ("q=o-1&by=order", "unknown variant"),
        ("by=id", "missing field"),
    ] {
        let reply = http_get(console.port, &format!("/ui/api/story?{query}"));
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(says), "{query}: {error}");
    }
    let long = format!("/ui/api/story?q={}", "x".repeat(600));
    assert_eq!(http_get(console.port, &long).status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_with_the_story_off_writes_no_trail() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install(
        "chaos",
        "chaos",
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n",
    );
    let config = format!("{TEST_STREAMS}\n[story]\nenabled = false\n");
    let runtime = Runtime::start_configured(&nats.url(), &plugins, 1, &config, &[]);
    let js = nats.jetstream().await;
    crate::support::chaos::send(&js, "quiet", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    let story = http_get(runtime.admin_port(), "/ui/api/story?q=quiet").json();
    assert_eq!(story["trail"], false, "{story:#}");
    assert!(js.get_stream("EVENTHOST_TRAIL").await.is_err());
}
