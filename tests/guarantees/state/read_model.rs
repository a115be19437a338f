//! The checkout's read model: the saga's events projected into KV, stock
//! really reserved and released, and a rebuild from the stream ending equal
//! to the live projection before it is swapped in.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(90);
const ORDERS: usize = 30;

/// Order `i`: most pay, every 5th+3 is over the charge limit (payment
/// fails, stock is released), every 5th+4 has a wrong total (no payment).
fn order(i: usize) -> Value {
    let (quantity, price, total) = match i % 5 {
        3 => (1, 6000.0, 6000.0),
        4 => (1, 10.0, 99.0),
        _ => (2, 12.25, 24.5),
    };
    json!({
        "order_id": format!("o-{i}"), "user_id": format!("u-{}", i % 4),
        "items": [{ "product_id": "sku-1", "quantity": quantity, "price": price }],
        "total": total,
    })
}

fn expected_status(i: usize) -> &'static str {
    match i % 5 {
        3 => "compensated",
        4 => "created",
        _ => "confirmed",
    }
}

async fn summaries(js: &async_nats::jetstream::Context, bucket: &str) -> BTreeMap<String, Value> {
    bucket_json(js, bucket).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_model_follows_the_saga_and_a_rebuild_equals_it() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    for name in ["payment", "notification", "inventory", "projection"] {
        plugins.install_example(name);
    }
    // payment 1 + notification 1 + inventory 2 + projection 4 consumers.
    let runtime = Runtime::start(&nats, &plugins, 8);
    let js = nats.jetstream().await;
    for i in 0..ORDERS {
        let event = TestEvent::new(format!("order-{i}"), "com.example.order.created", order(i));
        publish(&js, "orders.created", event.structured()).await;
    }
    // Final: every order's status, and its stock held or given back (the
    // reservations of paid orders are not part of the status).
    let all_final = |model: &BTreeMap<String, Value>| {
        (0..ORDERS).all(|i| {
            let stock = if i % 5 == 3 { "released" } else { "reserved" };
            model
                .get(&format!("order.o-{i}"))
                .is_some_and(|o| o["status"] == expected_status(i) && o["stock"] == stock)
        })
    };
    let live = eventually(
        "every order's final status",
        SETTLE,
        || summaries(&js, "order-summary"),
        all_final,
    )
    .await;

    // Per-user totals: every order counted, paid ones summed in cents.
    let mut totals: BTreeMap<String, (u64, u64, i64)> = BTreeMap::new();
    for i in 0..ORDERS {
        let entry = totals.entry(format!("user.u-{}", i % 4)).or_default();
        entry.0 += 1;
        if i % 5 < 3 {
            entry.1 += 1;
            entry.2 += 2450;
        }
    }
    for (key, (orders, paid, spent)) in &totals {
        let user = &live[key];
        assert_eq!(user["orders"], *orders, "{key}: {user}");
        assert_eq!(user["paid_orders"], *paid, "{key}: {user}");
        assert_eq!(user["spent_cents"], *spent, "{key}: {user}");
    }
    // Stock: two units for each order still held, none for released ones.
    let stock = bucket_json(&js, "inventory").await;
    let held = (0..ORDERS)
        .filter(|i| i % 5 != 3)
        .map(|i| if i % 5 == 4 { 1 } else { 2 })
        .sum::<u64>();
    assert_eq!(stock["stock.sku-1"], 100 - held, "{stock:?}");

    // Rebuild from the stream: equal to the live model, then swapped in.
    let output = eventhost_ok(
        &nats,
        &[
            "projection",
            "rebuild",
            "projection",
            "--plugins",
            plugins.path().to_str().unwrap(),
        ],
    );
    assert!(output.contains("generation 1 swapped in"), "{output}");
    let rebuilt = summaries(&js, "order-summary_g1").await;
    assert_eq!(rebuilt.len(), live.len());
    assert_eq!(rebuilt, live);
    wait_until("the runtime to take the new generation", SETTLE, || {
        let (_, handlers) = runtime.admin_get("/handlers");
        handlers.contains("-g1\"") && handlers.contains("\"consuming\"")
    });
    let late = TestEvent::new("order-late", "com.example.order.created", order(100));
    publish(&js, "orders.created", late.structured()).await;
    let rebuilt = eventually(
        "the late order in the new generation",
        SETTLE,
        || summaries(&js, "order-summary_g1"),
        |m| {
            m.get("order.o-100")
                .is_some_and(|o| o["status"] == "confirmed")
        },
    )
    .await;
    let old = summaries(&js, "order-summary").await;
    assert!(
        !old.contains_key("order.o-100"),
        "the old generation is retired"
    );
    let read = eventhost_ok(&nats, &["kv", "get", "order-summary", "order.o-100"]);
    let read: Value = serde_json::from_str(&read).unwrap();
    assert_eq!(
        read, rebuilt["order.o-100"],
        "eventhost kv follows the generation"
    );
}
