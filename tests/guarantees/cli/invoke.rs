//! `eventhost invoke`: one event through the real sandbox with no NATS, as
//! handler authors test their components. What it prints is what the
//! runtime would publish and commit; its exit status says whether the
//! handler succeeded.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::chaos::chaos_manifest;
use crate::support::*;
use serde_json::{Value, json};

struct Invoked {
    output: Output,
    report: Value,
}

/// Runs `eventhost invoke --json` on the example `component` with `event`
/// on stdin and the extra `args`.
fn invoke(component: &str, manifest: &str, event: &Value, args: &[&str]) -> Invoked {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("handler.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .arg("invoke")
        .arg(components_dir().join(format!("{component}.wasm")))
        .arg("--manifest")
        .arg(&manifest_path)
        .args(["--event", "-", "--json"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(event.to_string().as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Invoked { output, report }
}

fn example_manifest(name: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!("examples/{name}/handler.toml"))).unwrap()
}

fn order(id: &str, quantity: u32, price: f64, total: f64) -> Value {
    json!({
        "specversion": "1.0", "id": format!("evt-{id}"), "source": "/shop",
        "type": "com.example.order.created", "datacontenttype": "application/json",
        "data": { "order_id": id, "items": [{ "product_id": "sku-1", "quantity": quantity,
            "price": price }], "total": total },
    })
}

#[test]
fn a_good_order_prints_the_completed_event_as_the_runtime_would_publish_it() {
    let run = invoke(
        "payment",
        &example_manifest("payment"),
        &order("o-1", 2, 12.25, 24.5),
        &[],
    );
    assert!(run.output.status.success(), "{:?}", run.output);
    assert_eq!(run.report["outcome"], "ok");
    let emitted = run.report["emitted"].as_array().unwrap();
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0]["destination"], "payments.completed");
    let event = &emitted[0]["event"];
    assert_eq!(event["type"], "com.example.payment.completed");
    assert_eq!(event["data"]["payment_id"], "pay-o-1");
    assert_eq!(event["causationid"], "evt-o-1");
    assert_eq!(event["source"], "/eventhost/payment");
    // The id the runtime would give it, by the documented rule.
    assert_eq!(
        event["id"],
        documented_emit_id("payment", "/shop", "evt-o-1", 0)
    );
}

#[test]
fn a_failing_handler_exits_non_zero_with_its_kind_and_message() {
    let run = invoke(
        "payment",
        &example_manifest("payment"),
        &order("o-2", 1, 10.0, 99.0),
        &[],
    );
    assert!(!run.output.status.success());
    assert_eq!(run.report["outcome"], "permanent");
    assert!(
        run.report["message"]
            .as_str()
            .unwrap()
            .contains("items sum to")
    );
    assert_eq!(run.report["emitted"], json!([]), "a failure emits nothing");
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("the handler failed (permanent)"),
        "{stderr}"
    );
}

#[test]
fn with_schemas_the_event_and_the_emits_keep_their_contracts() {
    let schemas = repo_root().join("examples/schemas");
    let schemas = ["--schemas", schemas.to_str().unwrap()];
    let manifest = example_manifest("payment");
    let run = invoke(
        "payment",
        &manifest,
        &order("o-1", 2, 12.25, 24.5),
        &schemas,
    );
    assert!(run.output.status.success(), "{:?}", run.output);
    let event = &run.report["emitted"][0]["event"];
    assert_eq!(
        event["dataschema"], "urn:eventhost:schema:com.example.payment.completed:1",
        "stamped as the runtime stamps it"
    );
    // Zero items: the schema refuses it before the handler runs.
    let mut empty = order("o-2", 1, 1.0, 1.0);
    empty["data"]["items"] = json!([]);
    let run = invoke("payment", &manifest, &empty, &schemas);
    assert!(!run.output.status.success());
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("schema_invalid") && stderr.contains("/items:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("invoke: loading"),
        "refused before compiling: {stderr}"
    );
}

#[test]
fn config_can_be_overridden() {
    let run = invoke(
        "payment",
        &example_manifest("payment"),
        &order("o-3", 2, 12.25, 24.5),
        &["--config", "max_charge=10"],
    );
    assert!(run.output.status.success(), "{:?}", run.output);
    assert_eq!(run.report["emitted"][0]["destination"], "payments.failed");
}

#[test]
fn state_is_seeded_and_writes_are_shown_not_committed() {
    let inventory = example_manifest("inventory");
    let plenty = invoke("inventory", &inventory, &order("o-4", 2, 1.0, 2.0), &[]);
    assert!(plenty.output.status.success(), "{:?}", plenty.output);
    assert_eq!(
        plenty.report["emitted"][0]["destination"],
        "inventory.reserved"
    );
    let writes = plenty.report["writes"].as_array().unwrap();
    assert!(
        writes.contains(&json!({ "bucket": "inventory", "key": "stock.sku-1", "value": "98" })),
        "{writes:?}"
    );

    let scarce = invoke(
        "inventory",
        &inventory,
        &order("o-5", 2, 1.0, 2.0),
        &["--state", "inventory/stock.sku-1=1"],
    );
    assert_eq!(
        scarce.report["emitted"][0]["destination"],
        "inventory.rejected"
    );
    assert_eq!(scarce.report["emitted"][0]["event"]["data"]["available"], 1);

    let ungranted = invoke(
        "inventory",
        &inventory,
        &order("o-6", 1, 1.0, 1.0),
        &["--state", "elsewhere/k=v"],
    );
    assert!(!ungranted.output.status.success());
    let stderr = String::from_utf8_lossy(&ungranted.output.stderr);
    assert!(
        stderr.contains("does not grant bucket \"elsewhere\""),
        "{stderr}"
    );
}

#[test]
fn traps_and_timeouts_are_reported_as_such() {
    let manifest = chaos_manifest("[limits]\ntimeout = \"300ms\"");
    let chaos = |action: Value| {
        let event = json!({ "specversion": "1.0", "id": "c-1", "source": "/t",
            "type": "com.example.chaos", "data": action });
        invoke("chaos", &manifest, &event, &[])
    };
    let trap = chaos(json!({ "action": "trap" }));
    assert!(!trap.output.status.success());
    assert_eq!(trap.report["outcome"], "trap");
    assert!(
        trap.report["message"]
            .as_str()
            .unwrap()
            .contains("asked to trap")
    );
    let timeout = chaos(json!({ "action": "loop" }));
    assert_eq!(timeout.report["outcome"], "timeout");
}

#[test]
fn bad_input_is_a_clear_error() {
    let run = invoke(
        "payment",
        &example_manifest("payment"),
        &json!({ "id": "x" }),
        &[],
    );
    assert!(!run.output.status.success());
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(stderr.contains("not a structured CloudEvent"), "{stderr}");

    let bad_manifest = invoke("payment", "subscribe = []", &order("o-7", 1, 1.0, 1.0), &[]);
    let stderr = String::from_utf8_lossy(&bad_manifest.output.stderr);
    assert!(stderr.contains("invalid manifest"), "{stderr}");
}
