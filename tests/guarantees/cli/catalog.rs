//! `eventhost catalog`: the checkout flow drawn from the examples'
//! manifests and contracts, as an AsyncAPI document the official parser
//! accepts (`tools/asyncapi/validate.mjs`, installed by the scripts'
//! `ensure_prerequisites`), and a manifest that does not parse left out
//! without stopping the others.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;
use serde_json::Value;

const CHECKOUT: [&str; 4] = ["payment", "inventory", "notification", "projection"];

/// A plugins directory holding the checkout's example manifests (the
/// catalog reads no component).
fn checkout_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in CHECKOUT {
        let manifest = repo_root().join(format!("examples/{name}/handler.toml"));
        std::fs::copy(manifest, plugins.join(format!("{name}.toml"))).unwrap();
    }
    plugins
}

fn catalog(plugins: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .arg("catalog")
        .arg("--plugins")
        .arg(plugins)
        .arg("--schemas")
        .arg(repo_root().join("examples/schemas"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_checkout_flow_is_an_asyncapi_document_the_official_parser_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = checkout_plugins(dir.path());
    let out = dir.path().join("checkout.asyncapi.json");
    let run = catalog(&plugins, &["--asyncapi", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));

    let tool = repo_root().join("tools/asyncapi");
    assert!(
        tool.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run `cd tools/asyncapi && npm ci` \
         (any script's ensure_prerequisites does)"
    );
    let validated = Command::new("node")
        .arg(tool.join("validate.mjs"))
        .arg(&out)
        .output()
        .expect("running node (the validator needs Node.js 20 or later)");
    assert!(
        validated.status.success(),
        "the parser refused the document:\n{}{}",
        text(&validated.stdout),
        text(&validated.stderr)
    );

    let document: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(
        document["channels"]["orders_created"]["address"],
        "orders.created"
    );
    let receive = &document["operations"]["payment_receive_orders_created"];
    assert_eq!(receive["action"], "receive", "{document:#}");
    assert_eq!(receive["channel"]["$ref"], "#/channels/orders_created");
    assert_eq!(
        receive["messages"][0]["$ref"],
        "#/channels/orders_created/messages/com_example_order_created"
    );
    let schema: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("examples/schemas/com.example.order.created/1.json"))
            .unwrap(),
    )
    .unwrap();
    let message = &document["components"]["messages"]["com_example_order_created"];
    assert_eq!(message["name"], "com.example.order.created");
    let payload = &message["payload"];
    assert_eq!(payload["title"], schema["title"]);
    assert_eq!(payload["required"], schema["required"]);
    assert_eq!(payload["$defs"], schema["$defs"]);
    assert_eq!(
        payload["properties"]["items"]["items"]["$ref"],
        "#/components/messages/com_example_order_created/payload/$defs/item",
        "the schema's own $ref, pointing where the schema now is"
    );
}

#[test]
fn a_broken_manifest_is_reported_and_the_others_still_catalogued() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = checkout_plugins(dir.path());
    std::fs::write(
        plugins.join("broken.toml"),
        "subscribe = [\"a\"]\nbogus = 1\n",
    )
    .unwrap();
    let run = catalog(&plugins, &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(
        stderr.contains("broken left out") && stderr.contains("bogus"),
        "{stderr}"
    );
    let orders = (stdout.lines())
        .find(|line| line.starts_with("orders.created "))
        .unwrap_or_else(|| panic!("no orders.created row in\n{stdout}"));
    assert!(
        orders.contains("(outside)")
            && orders.contains("inventory, payment, projection")
            && orders.contains("com.example.order.created"),
        "{orders}"
    );
    assert!(stdout.contains("dlq.>"), "{stdout}");
}

#[test]
fn the_readmes_checkout_diagram_is_what_the_catalog_draws() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = checkout_plugins(dir.path());
    let run = catalog(&plugins, &["--mermaid", "-"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let drawn = text(&run.stdout);
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = (readme.split("```mermaid\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("a mermaid block in the README");
    assert_eq!(
        block.trim(),
        drawn.trim(),
        "the README's diagram is stale: regenerate it with `eventhost catalog --mermaid -`"
    );
}
