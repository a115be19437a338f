//! The flow's contracts across handlers and a fleet: a handler version
//! that would break the handlers reading what it emits is refused at
//! deploy and at reload (with its readers named, unless forced), and the
//! schemas put to the deploy bucket are checked before they are stored and
//! enforced by every `--deployed` runtime.

use std::path::{Path, PathBuf};

use super::{COMPLETED, ORDER, WAIT, example_schema, good_order, order};
use crate::support::*;
use serde_json::{Value, json};

/// `eventhost ARGS` against `nats`: (success, stdout + stderr).
fn run_cli(nats: &NatsServer, args: &[&str]) -> (bool, String) {
    run_to_end(eventhost(nats).args(args))
}

fn write_json(dir: &Path, name: &str, document: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    path
}

/// Version 2 of the order: `total` no longer required. Backward compatible
/// (v2 reads every v1 order), but a v1 reader such as payment may be handed
/// an order without a total.
fn order_without_total() -> Value {
    let mut v2 = example_schema(ORDER);
    v2["required"] = json!(["order_id", "items"]);
    v2
}

/// A shop that emits orders at version `version` (the relay component:
/// what it runs does not matter to a check made before it runs).
fn shop_manifest(version: u32) -> String {
    format!(
        r#"
subscribe = ["chaos.shop"]
publish = ["orders.created"]
[contract]
emits = ["{ORDER}@{version}"]
[config]
to = "orders.created"
"#
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_that_would_break_a_reader_is_refused_at_deploy_unless_forced() {
    let nats = NatsServer::start();
    let files = tempfile::tempdir().unwrap();
    let v1 = write_json(files.path(), "order-1.json", &example_schema(ORDER));
    let v2 = write_json(files.path(), "order-2.json", &order_without_total());
    let payment = repo_root().join("examples/payment/handler.toml");
    let relay = components_dir().join("relay.wasm");
    let deploy = |name: &str, manifest: &Path, force: bool| {
        let wasm = components_dir().join(format!("{name}.wasm"));
        let wasm = if wasm.exists() { wasm } else { relay.clone() };
        let mut args = vec!["deploy", name, "--wasm", path_str(&wasm), "--manifest"];
        args.push(path_str(manifest));
        if force {
            args.push("--force");
        }
        run_cli(&nats, &args)
    };
    for version in [&v1, &v2] {
        let (ok, text) = run_cli(&nats, &["schema", "put", ORDER, path_str(version)]);
        assert!(ok, "{text}");
    }
    let (ok, text) = deploy("payment", &payment, false);
    assert!(ok, "payment reads v1, which nothing emits yet: {text}");

    let shop_v1 = files.path().join("shop-1.toml");
    std::fs::write(&shop_v1, shop_manifest(1)).unwrap();
    let (ok, text) = deploy("shop", &shop_v1, false);
    assert!(ok, "a shop emitting v1 breaks nobody: {text}");

    let shop_v2 = files.path().join("shop-2.toml");
    std::fs::write(&shop_v2, shop_manifest(2)).unwrap();
    let (ok, text) = deploy("shop", &shop_v2, false);
    assert!(!ok, "{text}");
    for expected in [
        "payment reads com.example.order.created v1 but shop emits v2",
        "v1 requires property \"total\", which v2 data may leave out",
        "affected handlers: payment",
        "--force deploys anyway",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }
    let listed = eventhost_ok(&nats, &["ls"]);
    let shop_line = listed.lines().find(|l| l.starts_with("shop")).unwrap();
    // HANDLER VERSION DEPLOYED(date, time) BY, and no PREVIOUS: still v1.
    assert_eq!(shop_line.split_whitespace().count(), 5, "{listed}");

    let (ok, text) = deploy("shop", &shop_v2, true);
    assert!(ok && text.contains("deploying anyway (--force)"), "{text}");

    // The reader's side: payment pinned to a version that is not there.
    let pinned_v3 = files.path().join("payment-3.toml");
    let manifest = std::fs::read_to_string(&payment).unwrap();
    std::fs::write(
        &pinned_v3,
        manifest.replace(&format!("{ORDER}@1"), &format!("{ORDER}@3")),
    )
    .unwrap();
    let (ok, text) = deploy("payment", &pinned_v3, false);
    assert!(
        !ok && text.contains("pins com.example.order.created v3, which is not registered"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_that_would_break_a_reader_is_refused_at_reload_and_by_check() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_example("payment");
    plugins.schema(ORDER, 1, &example_schema(ORDER));
    plugins.schema(ORDER, 2, &order_without_total());
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    // Asked before: `schema check --handler` names the reader.
    let files = tempfile::tempdir().unwrap();
    let shop = files.path().join("shop.toml");
    std::fs::write(&shop, shop_manifest(2)).unwrap();
    let schemas = plugins.schemas();
    let check = [
        "schema",
        "check",
        "--handler",
        "shop",
        "--manifest",
        path_str(&shop),
        "--plugins",
        path_str(plugins.path()),
        "--schemas",
        path_str(&schemas),
    ];
    let (ok, text) = run_cli(&nats, &check);
    assert!(!ok && text.contains("affected handlers: payment"), "{text}");
    std::fs::write(&shop, shop_manifest(1)).unwrap();
    let (ok, text) = run_cli(&nats, &check);
    assert!(ok, "{text}");

    // Dropped in anyway: refused at reload, payment keeps serving.
    plugins.install("shop", "relay", &shop_manifest(2));
    eventhost_ok(&nats, &["reload"]);
    wait_until("the shop refused", WAIT, || {
        runtime
            .logs_with_message("handler not loaded")
            .iter()
            .any(|l| {
                let error = l["error"].as_str().unwrap_or_default();
                error.contains("would break the event flow") && error.contains("payment reads")
            })
    });
    publish(&js, "orders.created", good_order("o-1").structured()).await;
    let completed = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    assert_eq!(completed[0].event["data"]["order_id"], "o-1");
    let (_, handlers) = runtime.admin_get("/handlers");
    assert!(
        handlers.contains("would break the event flow"),
        "{handlers}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_put_to_the_deploy_bucket_are_checked_then_enforced_by_deployed_runtimes() {
    let nats = NatsServer::start();
    let files = tempfile::tempdir().unwrap();
    let order_v1 = write_json(files.path(), "order.json", &example_schema(ORDER));
    let completed_v1 = write_json(files.path(), "completed.json", &example_schema(COMPLETED));
    let out = eventhost_ok(&nats, &["schema", "put", ORDER, path_str(&order_v1)]);
    assert!(out.contains("com.example.order.created v1 stored"), "{out}");
    eventhost_ok(
        &nats,
        &["schema", "put", COMPLETED, path_str(&completed_v1)],
    );
    let payment = repo_root().join("examples/payment/handler.toml");
    let wasm = components_dir().join("payment.wasm");
    eventhost_ok(
        &nats,
        &[
            "deploy",
            "payment",
            "--wasm",
            path_str(&wasm),
            "--manifest",
            path_str(&payment),
        ],
    );

    // A breaking version is refused before it is stored, its readers named.
    let mut breaking = example_schema(ORDER);
    breaking["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("currency"));
    let breaking = write_json(files.path(), "breaking.json", &breaking);
    let (ok, text) = run_cli(&nats, &["schema", "put", ORDER, path_str(&breaking)]);
    assert!(!ok, "{text}");
    assert!(text.contains("v2 requires property \"currency\""), "{text}");
    assert!(
        text.contains("handlers reading com.example.order.created: payment (v1)"),
        "{text}"
    );
    // A version a deployed writer would start emitting, unreadable by a
    // pinned reader, is refused too: shop follows the order's newest.
    let shop = files.path().join("shop.toml");
    let newest = shop_manifest(1).replace(&format!("{ORDER}@1"), ORDER);
    std::fs::write(&shop, newest).unwrap();
    let relay = components_dir().join("relay.wasm");
    let deploy_shop = [
        "deploy",
        "shop",
        "--wasm",
        path_str(&relay),
        "--manifest",
        path_str(&shop),
    ];
    eventhost_ok(&nats, &deploy_shop);
    let no_total = write_json(files.path(), "no-total.json", &order_without_total());
    let (ok, text) = run_cli(&nats, &["schema", "put", ORDER, path_str(&no_total)]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("payment reads com.example.order.created v1 but shop emits v2"),
        "{text}"
    );
    assert!(text.contains("affected handlers: payment, shop"), "{text}");
    eventhost_ok(&nats, &["undeploy", "shop"]);

    let stored = eventhost_ok(&nats, &["schema", "get", ORDER]);
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap(),
        example_schema(ORDER)
    );
    let catalog = eventhost_ok(&nats, &["catalog", "--deployed"]);
    let orders = catalog
        .lines()
        .find(|l| l.starts_with(ORDER))
        .unwrap_or_default();
    assert!(
        orders.contains("v1") && orders.contains("payment@1"),
        "{catalog}"
    );
    let listed = eventhost_ok(&nats, &["schema", "ls", "--deployed"]);
    assert!(
        listed.contains("com.example.order.created (backward)") && !listed.contains("v2"),
        "{listed}"
    );

    let runtime = Runtime::launch(&nats.url(), &["--deployed"], TEST_STREAMS, &[]);
    runtime.wait_consuming(1);
    let js = nats.jetstream().await;
    let broken = order(
        "o-bad",
        json!({ "order_id": "o-bad", "items": [], "total": 1 }),
    );
    publish(&js, "orders.created", broken.structured()).await;
    publish(&js, "orders.created", good_order("o-1").structured()).await;
    let letters = dead_letters(&js, "payment", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "schema_invalid");
    assert!(letters[0].header("Eventhost-Error").contains("/items:"));
    let completed = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    assert_eq!(
        completed[0].event["dataschema"],
        "urn:eventhost:schema:com.example.payment.completed:1"
    );
    let checks = |event_type: &str, direction: &str, result: &str| {
        runtime.metric(
            "eventhost_contract_checks_total",
            &[
                ("handler", "payment"),
                ("event_type", event_type),
                ("direction", direction),
                ("result", result),
            ],
        )
    };
    wait_until("the checks counted", WAIT, || {
        checks(COMPLETED, "emit", "valid") == 1.0
    });
    assert_eq!(checks(ORDER, "input", "valid"), 1.0);
    assert_eq!(checks(ORDER, "input", "invalid"), 1.0);
    assert_eq!(runtime.handler_runs("payment"), 1.0);

    // A compatible version is stored, followed, and can be taken back.
    let mut optional = example_schema(ORDER);
    optional["properties"]["currency"] = json!({ "enum": ["EUR", "USD"] });
    let optional = write_json(files.path(), "optional.json", &optional);
    let out = eventhost_ok(&nats, &["schema", "put", ORDER, path_str(&optional)]);
    assert!(out.contains("v2 stored"), "{out}");
    wait_until("the runtime to mirror v2", WAIT, || {
        runtime.logs_with_message("deployed schemas mirrored").len() >= 2
    });
    let out = eventhost_ok(&nats, &["schema", "rm", ORDER]);
    assert!(out.contains("v2 removed"), "{out}");
    let (ok, text) = run_cli(&nats, &["schema", "get", ORDER, "--version", "2"]);
    assert!(!ok && text.contains("has no version 2"), "{text}");
    // Its number is free again.
    let out = eventhost_ok(&nats, &["schema", "put", ORDER, path_str(&optional)]);
    assert!(out.contains("v2 stored"), "{out}");
}

/// A relay manifest for the `[contract]` lines given.
fn relay_manifest(subscribe: &str, publish: &str, contract: &str) -> String {
    format!(
        "subscribe = [\"{subscribe}\"]\npublish = [\"{publish}\"]\n[contract]\n{contract}\n[config]\nto = \"{publish}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_refused_for_a_reader_moving_in_the_same_reload_starts_once_the_reader_has() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.schema(ORDER, 1, &example_schema(ORDER));
    plugins.schema(ORDER, 2, &order_without_total());
    // alpha writes orders, zeta reads them; both at v1.
    let alpha = |v: u32| {
        relay_manifest(
            "chaos.alpha",
            "chaos.orders",
            &format!("emits = [\"{ORDER}@{v}\"]"),
        )
    };
    let zeta = |v: u32| {
        relay_manifest(
            "chaos.orders",
            "chaos.done",
            &format!("consumes = [\"{ORDER}@{v}\"]"),
        )
    };
    plugins.install("alpha", "relay", &alpha(1));
    plugins.install("zeta", "relay", &zeta(1));
    // One reload, asked by hand: the directory watch would add a second.
    let runtime = Runtime::start_with(&nats.url(), &plugins, 2, &["--no-watch"]);

    // Both move to v2 in one reload: alpha comes first and meets zeta at v1.
    plugins.write("alpha.toml", alpha(2).as_bytes());
    plugins.write("zeta.toml", zeta(2).as_bytes());
    eventhost_ok(&nats, &["reload"]);
    wait_until("both at v2", WAIT, || {
        let reloaded = runtime.logs_with_message("handler reloaded");
        ["alpha", "zeta"]
            .iter()
            .all(|h| reloaded.iter().any(|l| l["handler"] == *h))
    });
    let refused =
        runtime.logs_with_message("new version refused; the running version keeps serving");
    assert!(
        refused.iter().any(|l| l["handler"] == "alpha"),
        "alpha was first refused, then started: {}",
        runtime.raw_log()
    );
}
