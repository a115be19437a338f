use serde_json::json;

use super::*;

/// The checkout flow, as the examples declare it (trimmed to what the
/// catalog reads).
const CHECKOUT: [(&str, &str); 4] = [
    (
        "payment",
        r#"subscribe = ["orders.created"]
        publish = ["payments.completed", "payments.failed"]
        [contract]
        consumes = ["com.example.order.created@1"]
        emits = ["com.example.payment.completed@1", "com.example.payment.failed@1"]"#,
    ),
    (
        "inventory",
        r#"subscribe = ["orders.created", "payments.failed"]
        publish = ["inventory.reserved", "inventory.rejected", "inventory.released"]
        [contract]
        consumes = ["com.example.order.created@1", "com.example.payment.failed@1"]
        emits = ["com.example.inventory.reserved", "com.example.inventory.rejected", "com.example.inventory.released"]"#,
    ),
    (
        "notification",
        r#"subscribe = ["payments.completed"]
        publish = ["notifications.sent"]
        [contract]
        consumes = ["com.example.payment.completed@1"]
        emits = ["com.example.notification.sent"]"#,
    ),
    (
        "projection",
        r#"subscribe = ["orders.created", "payments.*", "notifications.sent", "inventory.*"]
        [contract]
        consumes = ["com.example.order.created@1", "com.example.payment.completed@1", "com.example.payment.failed@1", "com.example.notification.sent", "com.example.inventory.reserved", "com.example.inventory.rejected", "com.example.inventory.released"]
        emits = []"#,
    ),
];

fn manifests(list: &[(&str, &str)]) -> Vec<(String, HandlerManifest)> {
    (list.iter())
        .map(|(name, text)| {
            (
                name.to_string(),
                HandlerManifest::parse(text, name).unwrap(),
            )
        })
        .collect()
}

/// Contracts read from a folder holding `schemas` (type, version, document).
fn contracts(schemas: &[(&str, u32, Value)]) -> Contracts {
    let dir = tempfile::tempdir().unwrap();
    for (event_type, version, document) in schemas {
        let folder = dir.path().join(event_type);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("{version}.json")), document.to_string()).unwrap();
    }
    Contracts::load(dir.path()).unwrap()
}

fn object(required: &[&str]) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": required,
        "properties": { "items": { "type": "array", "items": { "$ref": "#/$defs/item" } } },
        "$defs": { "item": { "type": "object" } },
    })
}

fn checkout() -> Catalog {
    let contracts = contracts(&[
        ("com.example.order.created", 1, object(&["order_id"])),
        ("com.example.payment.completed", 1, object(&[])),
        ("com.example.payment.completed", 2, object(&[])),
        ("com.example.payment.failed", 1, object(&[])),
    ]);
    Catalog::build(&manifests(&CHECKOUT), &contracts)
}

fn handlers(links: &[Link]) -> Vec<&str> {
    links.iter().map(|l| l.handler.as_str()).collect()
}

#[test]
fn each_subject_has_its_producers_consumers_and_types() {
    let catalog = checkout();
    let orders = catalog.subject("orders.created").unwrap();
    assert!(orders.producers.is_empty(), "published from outside");
    assert_eq!(
        handlers(&orders.consumers),
        ["inventory", "payment", "projection"]
    );
    assert_eq!(orders.types, ["com.example.order.created"]);
    let failed = catalog.subject("payments.failed").unwrap();
    assert_eq!(handlers(&failed.producers), ["payment"]);
    assert_eq!(handlers(&failed.consumers), ["inventory", "projection"]);
    assert_eq!(failed.consumers[1].via, "payments.*");
    assert_eq!(failed.types, ["com.example.payment.failed"]);
    let completed = catalog.subject("payments.completed").unwrap();
    assert_eq!(
        handlers(&completed.consumers),
        ["notification", "projection"]
    );
    assert_eq!(completed.types, ["com.example.payment.completed"]);
    // Three types could travel on each inventory subject: the name decides.
    let reserved = catalog.subject("inventory.reserved").unwrap();
    assert_eq!(reserved.types, ["com.example.inventory.reserved"]);
    // The wildcards matched concrete subjects, so are not listed themselves.
    assert!(
        catalog.subjects.iter().all(|s| !s.wildcard),
        "{:?}",
        catalog.subjects
    );
    assert!(catalog.notes.is_empty(), "{:?}", catalog.notes);
}

#[test]
fn each_type_has_its_pins_schema_and_subjects() {
    let catalog = checkout();
    let order = catalog.event_type("com.example.order.created").unwrap();
    assert!(order.from_outside());
    assert_eq!(order.subjects, ["orders.created"]);
    let payment_pin = order.consumers.iter().find(|p| p.handler == "payment");
    assert_eq!(payment_pin.unwrap().version, Some(1));
    let schema = order.schema.as_ref().unwrap();
    assert_eq!((schema.newest, schema.versions.clone()), (1, vec![1]));
    assert_eq!(
        schema.id,
        "urn:eventhost:schema:com.example.order.created:1"
    );
    let completed = catalog.event_type("com.example.payment.completed").unwrap();
    assert_eq!(completed.producers[0].handler, "payment");
    assert_eq!(completed.schema.as_ref().unwrap().newest, 2);
    assert_eq!(
        pinned_label(completed, Some(1)),
        "com.example.payment.completed@1"
    );
    assert_eq!(
        pinned_label(completed, None),
        "com.example.payment.completed@2 (newest)"
    );
    let sent = catalog.event_type("com.example.notification.sent").unwrap();
    assert!(sent.schema.is_none());
    assert_eq!(pinned_label(sent, None), "com.example.notification.sent");
}

#[test]
fn every_handler_can_dead_letter() {
    let catalog = checkout();
    let dead_letters = &catalog.dead_letters;
    assert_eq!(dead_letters.stream, "EVENTHOST_DLQ");
    assert_eq!(dead_letters.subjects, "dlq.>");
    assert_eq!(dead_letters.per_handler.len(), 4);
    assert!(
        dead_letters
            .per_handler
            .contains(&("payment".into(), "dlq.payment".into()))
    );
}

#[test]
fn wildcard_grants_reach_subscriptions_and_unmatched_wildcards_stay() {
    let catalog = Catalog::build(
        &manifests(&[
            (
                "alerter",
                "subscribe = [\"metrics.in\"]\npublish = [\"alerts.*\"]",
            ),
            ("pager", "subscribe = [\"alerts.fired\"]"),
            ("archive", "subscribe = [\"audit.>\"]"),
        ]),
        &Contracts::default(),
    );
    let fired = catalog.subject("alerts.fired").unwrap();
    assert_eq!(
        fired.producers,
        [Link {
            handler: "alerter".into(),
            via: "alerts.*".into()
        }]
    );
    assert_eq!(handlers(&fired.consumers), ["pager"]);
    assert!(fired.types.is_empty(), "nothing declared, nothing inferred");
    let audit = catalog.subject("audit.>").unwrap();
    assert!(audit.wildcard && audit.producers.is_empty());
    assert_eq!(handlers(&audit.consumers), ["archive"]);
    assert!(
        catalog.subject("alerts.*").is_none(),
        "the grant matched alerts.fired"
    );
}

#[test]
fn a_producer_and_consumer_that_do_not_meet_are_noted() {
    let catalog = Catalog::build(
        &manifests(&[
            (
                "a",
                "subscribe = [\"in\"]\npublish = [\"x\"]\n[contract]\nemits = [\"t.one\"]",
            ),
            (
                "b",
                "subscribe = [\"x\"]\n[contract]\nconsumes = [\"t.two@3\"]",
            ),
        ]),
        &Contracts::default(),
    );
    assert_eq!(catalog.subject("x").unwrap().types, ["t.one"]);
    let notes = catalog.notes.join("\n");
    assert!(
        notes.contains("x: its producers emit t.one but its consumers read t.two"),
        "{notes}"
    );
    assert!(
        notes.contains("b: pins t.two@3, which has no schema"),
        "{notes}"
    );
}

#[test]
fn the_diagrams_draw_every_edge() {
    let catalog = checkout();
    let dot = dot::to_dot(&catalog);
    for edge in [
        "\"outside\" -> \"subject:orders.created\" [label=\"com.example.order.created@1 (newest)\"]",
        "\"subject:orders.created\" -> \"handler:payment\" [label=\"com.example.order.created@1\"]",
        "\"handler:payment\" -> \"subject:payments.completed\" [label=\"com.example.payment.completed@1\"]",
        "\"subject:notifications.sent\" -> \"handler:projection\" [label=\"com.example.notification.sent\"]",
        "\"handler:payment\" -> \"dead-letters\" [label=\"dlq.payment\", style=dashed",
    ] {
        assert!(dot.contains(edge), "{edge} not in\n{dot}");
    }
    assert!(dot.contains("\"handler:payment\" [shape=box"), "{dot}");
    assert!(
        dot.contains("\"subject:orders.created\" [shape=ellipse"),
        "{dot}"
    );
    assert!(dot.contains("\"dead-letters\" [shape=cylinder"), "{dot}");
    let mermaid = dot::to_mermaid(&catalog);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    for edge in [
        "outside -->|\"com.example.order.created@1 (newest)\"| s_orders_created",
        "s_orders_created -->|\"com.example.order.created@1\"| h_payment",
        "h_payment -->|\"com.example.payment.failed@1\"| s_payments_failed",
        "s_payments_completed -->|\"com.example.payment.completed@1\"| h_projection",
        "h_inventory -.->|\"dlq.inventory\"| dlq",
        "dlq[(\"dead-letter queue<br/>EVENTHOST_DLQ (dlq.#gt;)\")]",
    ] {
        assert!(mermaid.contains(edge), "{edge} not in\n{mermaid}");
    }
}

#[test]
fn the_asyncapi_document_has_safe_ids_and_rebased_refs() {
    let mut handlers = manifests(&CHECKOUT);
    handlers.extend(manifests(&[("archive", "subscribe = [\"audit.>\"]")]));
    let catalog = Catalog::build(&handlers, &checkout_contracts());
    let document = asyncapi::to_asyncapi(&catalog);
    assert_eq!(document["asyncapi"], "3.0.0");
    let safe = |key: &String| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    for section in ["channels", "operations"] {
        let keys: Vec<&String> = document[section].as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| safe(k)), "{section}: {keys:?}");
    }
    assert!(
        document["components"]["messages"]
            .as_object()
            .unwrap()
            .keys()
            .all(safe)
    );
    assert_eq!(document["channels"]["audit_all"]["address"], "audit.>");
    assert_eq!(
        document["channels"]["dead_letters"]["address"],
        "dlq.{handler}"
    );
    let receive = &document["operations"]["payment_receive_orders_created"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(receive["channel"]["$ref"], "#/channels/orders_created");
    assert_eq!(
        receive["messages"][0]["$ref"],
        "#/channels/orders_created/messages/com_example_order_created"
    );
    let send = &document["operations"]["payment_send_payments_failed"];
    assert_eq!(send["action"], "send");
    assert_eq!(
        document["operations"]["archive_send_dead_letters"]["action"],
        "send"
    );
    let message = &document["components"]["messages"]["com_example_order_created"];
    assert_eq!(message["name"], "com.example.order.created");
    assert_eq!(message["payload"]["required"], json!(["order_id"]));
    assert_eq!(
        message["payload"]["properties"]["items"]["items"]["$ref"],
        "#/components/messages/com_example_order_created/payload/$defs/item"
    );
    let no_schema = &document["components"]["messages"]["com_example_notification_sent"];
    assert_eq!(no_schema["payload"], json!({}));
}

fn checkout_contracts() -> Contracts {
    contracts(&[("com.example.order.created", 1, object(&["order_id"]))])
}

#[test]
fn ids_are_safe_and_never_shared() {
    let mut ids = Ids::default();
    assert_eq!(ids.get("orders.created"), "orders_created");
    assert_eq!(ids.get("orders_created"), "orders_created_2");
    assert_eq!(ids.get("orders.created"), "orders_created", "stable");
    assert_eq!(ids.get("a.*.>"), "a_any_all");
    assert_eq!(ids.get("my-handler"), "my_handler");
    assert_eq!(ids.get(""), "_");
}

#[test]
fn wildcards_overlap_like_nats() {
    assert!(overlaps("a.*", "a.>"));
    assert!(overlaps("a.*.c", "a.b.*"));
    assert!(overlaps(">", "x.y"));
    assert!(!overlaps("a.*", "a.b.c"));
    assert!(!overlaps("a.b", "a.c"));
    assert!(!overlaps("a.>", "a"));
}
