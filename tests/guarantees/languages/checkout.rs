//! The checkout flow from the seeds, end to end on a real nats-server with
//! the real example components: orders in, payments, notifications and
//! compensations out, in both CloudEvents content modes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const CHECKOUT_HANDLERS: [&str; 3] = ["payment", "notification", "inventory"];

fn checkout_plugins() -> Plugins {
    let plugins = Plugins::new();
    for name in CHECKOUT_HANDLERS {
        plugins.install_example(name);
    }
    plugins
}

/// The checkout handlers written in `lang` ("python" or "js").
fn guest_checkout_plugins(lang: &str) -> Plugins {
    let plugins = Plugins::new();
    for name in CHECKOUT_HANDLERS {
        plugins.install_guest(lang, name);
    }
    plugins
}

/// Order `i`: most are fine, every 5th+3 is over the charge limit, every
/// 5th+4 has a total that does not match its items.
fn order(i: usize) -> (String, serde_json::Value) {
    let id = format!("order-{i}");
    let (price, total) = match i % 5 {
        3 => (6000.0, 6000.0),
        4 => (10.0, 99.0),
        _ => (12.25, 24.5),
    };
    let quantity = if i % 5 == 3 || i % 5 == 4 { 1 } else { 2 };
    let data = json!({
        "order_id": id, "user_id": format!("user-{}", i % 7),
        "items": [{ "product_id": "sku-1", "quantity": quantity, "price": price }],
        "total": total,
    });
    (id, data)
}

fn order_ids(stored: &[Stored]) -> BTreeSet<String> {
    data_values(stored, "order_id")
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_flow_in_both_content_modes() {
    checkout_flow(checkout_plugins()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_flow_with_the_python_handlers() {
    checkout_flow(guest_checkout_plugins("python")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_flow_with_the_typescript_handlers() {
    checkout_flow(guest_checkout_plugins("js")).await;
}

/// Orders in both content modes through payment, notification and
/// inventory: every output matched to its order, in its order's mode, with
/// lineage; mismatched totals dead-lettered with their reason.
async fn checkout_flow(plugins: Plugins) {
    let nats = NatsServer::start();
    let runtime = Runtime::start(&nats, &plugins, 4);
    let js = nats.jetstream().await;

    const ORDERS: usize = 40;
    let mut binary_orders = BTreeSet::new();
    for i in 0..ORDERS {
        let (id, data) = order(i);
        let event = TestEvent::new(format!("evt-{id}"), "com.example.order.created", data);
        let wire = if i % 2 == 1 {
            binary_orders.insert(id);
            event.binary()
        } else {
            event.structured()
        };
        publish(&js, "orders.created", wire).await;
    }

    let ok: BTreeSet<String> = (0..ORDERS)
        .filter(|i| i % 5 < 3)
        .map(|i| order(i).0)
        .collect();
    let over: BTreeSet<String> = (0..ORDERS)
        .filter(|i| i % 5 == 3)
        .map(|i| order(i).0)
        .collect();

    let completed = collect(&js, "CHECKOUT", "payments.completed", ok.len(), WAIT).await;
    let failed = collect(&js, "CHECKOUT", "payments.failed", over.len(), WAIT).await;
    let notified = collect(&js, "CHECKOUT", "notifications.sent", ok.len(), WAIT).await;
    let released = collect(&js, "CHECKOUT", "inventory.released", over.len(), WAIT).await;

    assert_eq!(completed.len(), ok.len());
    assert_eq!(order_ids(&completed), ok);
    assert_eq!(order_ids(&notified), ok);
    assert_eq!(failed.len(), over.len());
    assert_eq!(order_ids(&failed), over);
    assert_eq!(order_ids(&released), over);
    assert_eq!(released.len(), over.len());

    for c in &completed {
        let id = c.data()["order_id"].as_str().unwrap();
        assert_eq!(c.event["type"], "com.example.payment.completed");
        assert_eq!(c.event["source"], "/eventhost/payment");
        assert_eq!(c.event["subject"], id);
        assert_eq!(c.data()["payment_id"], format!("pay-{id}"));
        assert_eq!(c.data()["amount"], 24.5);
    }
    for n in &notified {
        assert_eq!(n.data()["channel"], "email");
        assert_eq!(n.data()["template"], "order_confirmation");
    }
    // Lineage down the chain: each output names what caused it, and the
    // order's id (no correlation was set) correlates them all.
    let payment_ids: BTreeMap<&str, &str> = (completed.iter())
        .map(|c| {
            (
                c.data()["order_id"].as_str().unwrap(),
                c.event["id"].as_str().unwrap(),
            )
        })
        .collect();
    for c in completed.iter().chain(&failed) {
        let order = c.data()["order_id"].as_str().unwrap();
        assert_eq!(c.event["causationid"], format!("evt-{order}"));
        assert_eq!(c.event["correlationid"], format!("evt-{order}"));
    }
    for n in &notified {
        let order = n.data()["order_id"].as_str().unwrap();
        assert_eq!(n.event["causationid"], payment_ids[order]);
        assert_eq!(n.event["correlationid"], format!("evt-{order}"));
    }
    for f in &failed {
        assert!(f.data()["reason"].as_str().unwrap().contains("exceeds"));
    }

    // Each output goes out in the content mode of the event that caused it,
    // all the way down the chain.
    for stored in completed
        .iter()
        .chain(&failed)
        .chain(&notified)
        .chain(&released)
    {
        let id = stored.data()["order_id"].as_str().unwrap();
        assert_eq!(
            stored.binary_mode,
            binary_orders.contains(id),
            "{} for {id}",
            stored.subject
        );
        assert!(stored.headers.get("Nats-Msg-Id").is_some());
    }

    // Mismatched totals are permanent failures: dead-lettered at once, with
    // the reason.
    let mismatched = (0..ORDERS).filter(|i| i % 5 == 4).count();
    let letters = dead_letters(&js, "payment", mismatched, WAIT).await;
    assert_eq!(letters.len(), mismatched);
    assert!(
        letters
            .iter()
            .all(|l| l.header("Eventhost-Error-Kind") == "permanent"
                && l.header("Eventhost-Error").contains("items sum to")
                && l.header("Eventhost-Attempts") == "1")
    );
    assert!(runtime.outcomes("retried").is_empty());
    // Every delivery was settled: nothing pending, nothing redelivered.
    assert_eq!(consumer_state(&js, "CHECKOUT", "payment").await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_ids_are_deterministic_and_lineage_is_carried() {
    let nats = NatsServer::start();
    let plugins = checkout_plugins();
    let runtime = Runtime::start(&nats, &plugins, 4);
    let js = nats.jetstream().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut live = client.subscribe("payments.completed").await.unwrap();
    client.flush().await.unwrap();

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, data) = order(0);
    let traced = TestEvent::new("evt-traced", "com.example.order.created", data)
        .ext("correlationid", "checkout-42")
        .ext("traceparent", traceparent);
    // The same event published twice (a producer retry): the handler runs
    // once, and its output id is derived from the input, so a re-run after a
    // crash would emit the same one.
    publish(&js, "orders.created", traced.binary()).await;
    publish(&js, "orders.created", traced.binary()).await;
    let (_, data) = order(1);
    publish(
        &js,
        "orders.created",
        TestEvent::new("evt-plain", "com.example.order.created", data).structured(),
    )
    .await;

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut live))
            .await
            .unwrap()
            .unwrap();
        let raw = RawMessage {
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        };
        let event = raw.cloudevent();
        let causation = event["causationid"].as_str().unwrap().to_string();
        seen.entry(causation)
            .or_default()
            .push(event["id"].as_str().unwrap().to_string());
    }
    // The id is the documented UUIDv5 of (handler, input source and id,
    // position), computed here from the rule, not by the runtime.
    let expected = documented_emit_id("payment", "/tests", "evt-traced", 0);
    assert_eq!(seen["evt-traced"], [expected]);
    assert_ne!(seen["evt-plain"][0], seen["evt-traced"][0]);
    // Inventory consumes the orders too; count the payment handler's skip.
    wait_until("the copy to be skipped", WAIT, || {
        let skipped = runtime.outcomes("duplicate");
        skipped
            .iter()
            .filter(|l| l["span"]["handler"] == "payment")
            .count()
            == 1
    });

    let stored = collect(&js, "CHECKOUT", "payments.completed", 2, WAIT).await;
    assert_eq!(stored.len(), 2);

    let payment = stored
        .iter()
        .find(|s| s.event["causationid"] == "evt-traced")
        .unwrap();
    assert_eq!(payment.event["correlationid"], "checkout-42");
    // The payment handling is a span in the producer's trace: same trace
    // id, and the payment's span (as logged) is the output's parent.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Inventory handles the same input in a span of its own: pick the
    // payment handler's.
    let handled = runtime
        .outcomes("succeeded")
        .into_iter()
        .find(|l| l["span"]["event_id"] == "evt-traced" && l["span"]["handler"] == "payment")
        .unwrap();
    assert_eq!(handled["span"]["trace_id"], trace_id);
    assert_eq!(handled["span"]["parent_span_id"], "00f067aa0ba902b7");
    let payment_span = handled["span"]["span_id"].as_str().unwrap();
    assert_eq!(
        payment.event["traceparent"],
        format!("00-{trace_id}-{payment_span}-01")
    );
    let plain = stored
        .iter()
        .find(|s| s.event["causationid"] == "evt-plain")
        .unwrap();
    assert_eq!(
        plain.event["correlationid"], "evt-plain",
        "without one, the input id starts the correlation"
    );
    // Without one, the handling starts a trace of its own.
    let plain_trace = plain.event["traceparent"].as_str().unwrap();
    assert!(plain_trace.starts_with("00-") && !plain_trace.contains(trace_id));

    // One hop further: the notification is caused by the payment event and
    // still carries the original correlation and trace.
    let notified = collect(&js, "CHECKOUT", "notifications.sent", 2, WAIT).await;
    let notification = notified
        .iter()
        .find(|n| n.event["causationid"] == payment.event["id"])
        .unwrap();
    assert_eq!(notification.event["correlationid"], "checkout-42");
    let hop = notification.event["traceparent"].as_str().unwrap();
    assert!(
        hop.starts_with(&format!("00-{trace_id}-")),
        "one trace: {hop}"
    );
    assert!(!hop.contains(payment_span), "a span of its own: {hop}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_built_against_the_0_1_contract_still_runs() {
    // Built from examples/payment before eventhost:handler@0.2.0 existed
    // (tests/fixtures/handler-0.1.0/README.md): it imports the 0.1.0
    // interfaces.
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let fixture = repo_root().join("tests/fixtures/handler-0.1.0/payment.wasm");
    std::fs::copy(&fixture, plugins.path().join("payment.wasm")).unwrap();
    let manifest = std::fs::read(repo_root().join("examples/payment/handler.toml")).unwrap();
    plugins.write("payment.toml", &manifest);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    for i in [0, 3] {
        let (id, data) = order(i);
        let event = TestEvent::new(format!("evt-{id}"), "com.example.order.created", data);
        publish(&js, "orders.created", event.binary()).await;
    }
    let completed = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    let failed = collect(&js, "CHECKOUT", "payments.failed", 1, WAIT).await;
    assert_eq!(completed[0].data()["order_id"], "order-0");
    assert_eq!(failed[0].data()["order_id"], "order-3");
    assert_eq!(runtime.outcomes("succeeded").len(), 2);
}
