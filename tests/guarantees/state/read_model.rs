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

/// Whether `model` holds every order of `orders` in its final status, its
/// stock held or given back (the reservations of paid orders are not part
/// of the status).
fn all_final(model: &BTreeMap<String, Value>, orders: &[usize]) -> bool {
    orders.iter().all(|i| {
        let stock = if i % 5 == 3 { "released" } else { "reserved" };
        model
            .get(&format!("order.o-{i}"))
            .is_some_and(|o| o["status"] == expected_status(*i) && o["stock"] == stock)
    })
}

/// Per-user totals: every order counted, paid ones summed in cents.
fn expected_user_totals(orders: &[usize]) -> BTreeMap<String, (u64, u64, i64)> {
    let mut totals: BTreeMap<String, (u64, u64, i64)> = BTreeMap::new();
    for i in orders {
        let entry = totals.entry(format!("user.u-{}", i % 4)).or_default();
        entry.0 += 1;
        if i % 5 < 3 {
            entry.1 += 1;
            entry.2 += 2450;
        }
    }
    totals
}

/// Whether `model` holds every order final and every user's totals. A
/// plain client reads the order's key and its user's, written by one
/// commit, one after the other: it may see the first before the second.
fn settled(model: &BTreeMap<String, Value>, orders: &[usize]) -> bool {
    let totals = expected_user_totals(orders);
    all_final(model, orders)
        && totals.iter().all(|(key, (orders, paid, spent))| {
            model.get(key).is_some_and(|user| {
                user["orders"] == *orders
                    && user["paid_orders"] == *paid
                    && user["spent_cents"] == *spent
            })
        })
}

fn assert_user_totals(model: &BTreeMap<String, Value>, orders: &[usize]) {
    for (key, (orders, paid, spent)) in &expected_user_totals(orders) {
        let user = &model[key];
        assert_eq!(user["orders"], *orders, "{key}: {user}");
        assert_eq!(user["paid_orders"], *paid, "{key}: {user}");
        assert_eq!(user["spent_cents"], *spent, "{key}: {user}");
    }
}

async fn publish_order(js: &async_nats::jetstream::Context, i: usize) {
    let event = TestEvent::new(format!("order-{i}"), "com.example.order.created", order(i));
    publish(js, "orders.created", event.structured()).await;
}

/// The durable consumers of the projection handler, over every stream.
async fn projection_consumers(js: &async_nats::jetstream::Context) -> Vec<String> {
    use futures::TryStreamExt;
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mut names = Vec::new();
    for name in streams {
        let stream = js.get_stream(&name).await.unwrap();
        let consumers: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
        names.extend(consumers.into_iter().filter(|c| c.contains("projection")));
    }
    names
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
    let first: Vec<usize> = (0..ORDERS).collect();
    for i in &first {
        publish_order(&js, *i).await;
    }
    let live = eventually(
        "every order's final status and every user's totals",
        SETTLE,
        || summaries(&js, "order-summary"),
        |model| settled(model, &first),
    )
    .await;
    assert_user_totals(&live, &first);
    // Stock: two units for each order still held, none for released ones.
    let stock = bucket_json(&js, "inventory").await;
    let held = (0..ORDERS)
        .filter(|i| i % 5 != 3)
        .map(|i| if i % 5 == 4 { 1 } else { 2 })
        .sum::<u64>();
    assert_eq!(stock["stock.sku-1"], 100 - held, "{stock:?}");

    // Rebuild from the stream while orders keep coming: the new generation
    // holds every order, the ones before the rebuild as the live model had
    // them, and is swapped in.
    let during: Vec<usize> = (200..210).collect();
    let publisher = tokio::spawn({
        let (js, during) = (js.clone(), during.clone());
        async move {
            for i in during {
                publish_order(&js, i).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    let plugins_dir = plugins.path().to_str().unwrap();
    let rebuild = [
        "projection",
        "rebuild",
        "projection",
        "--plugins",
        plugins_dir,
    ];
    let output = eventhost_ok(&nats, &rebuild);
    assert!(output.contains("generation 1 swapped in"), "{output}");
    publisher.await.unwrap();
    wait_until("the runtime to take the new generation", SETTLE, || {
        let (_, handlers) = runtime.admin_get("/handlers");
        handlers.contains("-g1\"") && handlers.contains("\"consuming\"")
    });
    let every: Vec<usize> = first.iter().chain(&during).copied().collect();
    let rebuilt = eventually(
        "every order in the new generation",
        SETTLE,
        || summaries(&js, "order-summary_g1"),
        |model| settled(model, &every),
    )
    .await;
    for i in &first {
        let key = format!("order.o-{i}");
        assert_eq!(rebuilt[&key], live[&key], "{key}");
    }
    assert_user_totals(&rebuilt, &every);

    // The old generation is retired: its consumers are deleted once
    // drained, and a late order reaches only the new one.
    eventually(
        "the old generation's consumers to be deleted",
        SETTLE,
        || projection_consumers(&js),
        |names| !names.is_empty() && names.iter().all(|n| n.contains("_g1")),
    )
    .await;
    publish_order(&js, 100).await;
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
