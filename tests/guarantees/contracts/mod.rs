//! Event contracts, enforced by the host: input data that breaks its
//! type's schema never reaches the handler, an emit that breaks its type's
//! schema is refused with nothing published, and a breaking schema change
//! is refused before it is added. Real nats-server, the real payment
//! component, the checkout's schemas from `examples/schemas/`. The
//! deploy-time checks (blast radius) and a fleet's schema bucket are in
//! [`flow`].

mod flow;

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const ORDER: &str = "com.example.order.created";
const COMPLETED: &str = "com.example.payment.completed";

/// The checkout's schemas, as `examples/schemas/` has them.
fn example_schema(event_type: &str) -> Value {
    let path = repo_root().join(format!("examples/schemas/{event_type}/1.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn payment_with(schemas: &[(&str, Value)]) -> Plugins {
    let plugins = Plugins::new();
    plugins.install_example("payment");
    for (event_type, document) in schemas {
        plugins.schema(event_type, 1, document);
    }
    plugins
}

fn order(id: &str, data: Value) -> TestEvent {
    TestEvent::new(format!("evt-{id}"), ORDER, data)
}

fn good_order(id: &str) -> TestEvent {
    let items = json!([{ "product_id": "sku-1", "quantity": 2, "price": 12.25 }]);
    order(id, json!({ "order_id": id, "items": items, "total": 24.5 }))
}

#[tokio::test(flavor = "multi_thread")]
async fn data_that_breaks_its_schema_is_dead_lettered_before_the_handler_runs() {
    let nats = NatsServer::start();
    let plugins = payment_with(&[
        (ORDER, example_schema(ORDER)),
        (COMPLETED, example_schema(COMPLETED)),
    ]);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    // Payment would run this one and refuse it itself (its total does not
    // match its items): the contract must stop it first.
    let broken = order(
        "o-bad",
        json!({ "order_id": "o-bad", "items": [], "total": -1 }),
    );
    publish(&js, "orders.created", broken.structured()).await;
    publish(&js, "orders.created", good_order("o-1").structured()).await;
    publish(&js, "orders.created", good_order("o-2").binary()).await;

    let letters = dead_letters(&js, "payment", 1, WAIT).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.header("Eventhost-Error-Kind"), "schema_invalid");
    let error = letter.header("Eventhost-Error");
    for pointer in ["/items:", "/total:"] {
        assert!(error.contains(pointer), "{pointer} missing from {error}");
    }
    assert!(
        error.contains("urn:eventhost:schema:com.example.order.created:1"),
        "{error}"
    );
    assert_eq!(
        letter.payload_json()["id"],
        "evt-o-bad",
        "the original event, as it came"
    );

    let completed = collect(&js, "CHECKOUT", "payments.completed", 2, WAIT).await;
    for output in &completed {
        assert_eq!(
            output.event["dataschema"], "urn:eventhost:schema:com.example.payment.completed:1",
            "an emitted event names the contract it keeps: {}",
            output.event
        );
    }
    // Every event has its outcome now: two runs, none for the broken one.
    assert_eq!(runtime.handler_runs("payment"), 2.0);
    let refused = runtime.metric(
        "eventhost_events_total",
        &[("handler", "payment"), ("outcome", "invalid")],
    );
    assert_eq!(refused, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emit_that_breaks_its_schema_is_refused_and_nothing_is_published() {
    let nats = NatsServer::start();
    // A contract payment does not keep: it emits no currency.
    let mut completed = example_schema(COMPLETED);
    completed["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("currency"));
    let plugins = payment_with(&[(COMPLETED, completed)]);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    publish(&js, "orders.created", good_order("o-1").structured()).await;

    let letters = dead_letters(&js, "payment", 1, WAIT).await;
    let letter = &letters[0];
    assert_eq!(letter.header("Eventhost-Error-Kind"), "emit_refused");
    let error = letter.header("Eventhost-Error");
    assert!(
        error.contains("\"currency\" is a required property"),
        "{error}"
    );
    // The event's outcome is stored, so its outputs were settled too: none.
    let stream = js.get_stream("CHECKOUT").await.unwrap();
    let published = stream
        .get_last_raw_message_by_subject("payments.completed")
        .await;
    assert!(published.is_err(), "a refused emit was published");
    assert_eq!(runtime.handler_runs("payment"), 1.0);
}

/// `eventhost schema check` with a candidate version; (success, output).
fn check_candidate(schemas: &Path, event_type: &str, candidate: &Value) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(candidate).unwrap()).unwrap();
    run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_eventhost"))
            .args(["schema", "check", "--type", event_type, "--schemas"])
            .arg(schemas)
            .arg("--candidate")
            .arg(file.path()),
    )
}

#[test]
fn a_breaking_schema_change_is_refused_naming_it() {
    let schemas = repo_root().join("examples/schemas");
    let mut added_required = example_schema(ORDER);
    added_required["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("currency"));
    let (ok, text) = check_candidate(&schemas, ORDER, &added_required);
    assert!(!ok, "{text}");
    assert!(
        text.contains("v2 requires property \"currency\", which v1 data may leave out"),
        "{text}"
    );
    assert!(text.contains("breaks backward compatibility"), "{text}");

    let mut narrowed = example_schema(ORDER);
    narrowed["$defs"]["item"]["properties"]["quantity"]["maximum"] = json!(10);
    let (ok, text) = check_candidate(&schemas, ORDER, &narrowed);
    assert!(
        !ok && text.contains("/items/*/quantity: `maximum` narrowed"),
        "{text}"
    );

    let mut optional_added = example_schema(ORDER);
    optional_added["properties"]["currency"] = json!({ "enum": ["EUR", "USD"] });
    let (ok, text) = check_candidate(&schemas, ORDER, &optional_added);
    assert!(ok, "{text}");
    assert!(
        text.contains("is backward compatible with version 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_contract_holds_its_events_until_the_folder_is_fixed() {
    let nats = NatsServer::start();
    // Not a schema: the runtime still starts, and payment still loads.
    let plugins = payment_with(&[(ORDER, json!({ "type": 5 }))]);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let problems =
        runtime.logs_with_message("an event contract could not be loaded; events of its type wait");
    assert_eq!(problems.len(), 1, "{}", runtime.raw_log());
    assert!(
        problems[0]["error"]
            .as_str()
            .unwrap()
            .contains("1.json: not a valid JSON Schema")
    );

    publish(&js, "orders.created", good_order("o-1").structured()).await;
    // Held as well, and checked against the fixed contract when it runs.
    let broken = order(
        "o-bad",
        json!({ "order_id": "o-bad", "items": [], "total": 1 }),
    );
    publish(&js, "orders.created", broken.binary()).await;
    let held =
        "the event's contract is broken; it waits for a fix (a reload reads the folder again)";
    wait_until("both events held back", WAIT, || {
        runtime.logs_with_message(held).len() >= 2
    });
    assert_eq!(runtime.handler_runs("payment"), 0.0);
    let letters = js.get_stream("EVENTHOST_DLQ").await.unwrap();
    let letter = letters.get_last_raw_message_by_subject("dlq.payment").await;
    assert!(letter.is_err(), "the host's trouble was dead-lettered");

    plugins.schema(ORDER, 1, &example_schema(ORDER));
    eventhost_ok(&nats, &["reload"]);
    let completed = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    assert_eq!(completed[0].event["data"]["order_id"], "o-1");
    let letters = dead_letters(&js, "payment", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "schema_invalid");
    assert_eq!(letters[0].header("ce-id"), "evt-o-bad");
    assert_eq!(runtime.handler_runs("payment"), 1.0);
}
