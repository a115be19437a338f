use std::path::Path;

use serde_json::{Value, json};

use super::compat::Compatibility;
use super::{
    ContractCheckLabels, ContractError, Contracts, Direction, LiveContracts, LoadError, Payload,
};

/// The checkout's order, version 1.
pub(super) fn order_v1() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "items", "total"],
        "properties": {
            "order_id": { "type": "string", "minLength": 1 },
            "items": {
                "type": "array",
                "minItems": 1,
                "items": { "$ref": "#/$defs/item" }
            },
            "total": { "type": "number", "minimum": 0 },
            "currency": { "enum": ["EUR", "USD"] }
        },
        "$defs": {
            "item": {
                "type": "object",
                "required": ["sku", "quantity", "price"],
                "properties": {
                    "sku": { "type": "string" },
                    "quantity": { "type": "integer", "minimum": 1 },
                    "price": { "type": "number", "minimum": 0 }
                }
            }
        }
    })
}

pub(super) fn folder(files: &[(&str, Value)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, document) in files {
        write(
            dir.path(),
            path,
            &serde_json::to_vec_pretty(document).unwrap(),
        );
    }
    dir
}

fn write(dir: &Path, path: &str, bytes: &[u8]) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

const ORDER: &str = "com.example.order.created";

/// Whether a load error is the one a case expects.
type IsExpected = fn(&LoadError) -> bool;

/// The order at v1 and a v2 that adds an optional note (with `v2_id` as
/// its `$id`, if any), loaded; and an order both accept.
fn orders_v1_v2(v2_id: Option<&str>) -> (Contracts, &'static [u8]) {
    let mut v2 = order_v1();
    if let Some(id) = v2_id {
        v2["$id"] = json!(id);
    }
    v2["properties"]["note"] = json!({ "type": "string" });
    let dir = folder(&[
        (&format!("{ORDER}/1.json"), order_v1()),
        (&format!("{ORDER}/2.json"), v2),
    ]);
    let good = br#"{"order_id":"o-1","items":[{"sku":"a","quantity":1,"price":2}],"total":2}"#;
    (Contracts::load(dir.path()).unwrap(), good)
}

#[test]
fn a_handler_pin_rules_over_the_claim_and_the_newest() {
    let (contracts, good) = orders_v1_v2(None);
    let v2_id = "urn:eventhost:schema:com.example.order.created:2";
    let read = contracts.check_input(ORDER, Some(v2_id), Payload::Bytes(good), Some(1));
    assert_eq!(read.unwrap().unwrap().version, 1, "the reader's version");
    let unknown = contracts.check_input(ORDER, Some("urn:x:9"), Payload::Bytes(good), Some(1));
    assert_eq!(
        unknown.unwrap().unwrap().version,
        1,
        "a claim not known yet"
    );
    let missing = (contracts.check_input(ORDER, None, Payload::Bytes(good), Some(3))).unwrap_err();
    assert!(matches!(missing, ContractError::Broken { .. }), "{missing}");
    let emitted = contracts.check_emitted(ORDER, None, Some(good), Some(1));
    assert_eq!(
        emitted.unwrap(),
        Some("urn:eventhost:schema:com.example.order.created:1")
    );
    let other = contracts.check_emitted(ORDER, Some(v2_id), Some(good), Some(1));
    assert!(
        matches!(other, Err(ContractError::NotPinned { .. })),
        "{other:?}"
    );
    let no_contract = contracts.check_input("com.example.none", None, Payload::Absent, Some(1));
    assert!(
        matches!(no_contract, Ok(None)),
        "a type with no contract is not checked"
    );
}

#[test]
fn data_is_checked_against_the_claimed_version_or_the_newest() {
    let (contracts, good) = orders_v1_v2(Some("https://example.com/schemas/order/2"));
    let newest = contracts
        .check_input(ORDER, None, Payload::Bytes(good), None)
        .unwrap();
    assert_eq!(newest.unwrap().id, "https://example.com/schemas/order/2");
    let claimed = (contracts.check_input(
        ORDER,
        Some("urn:eventhost:schema:com.example.order.created:1"),
        Payload::Bytes(good),
        None,
    ))
    .unwrap();
    assert_eq!(claimed.unwrap().version, 1);
    assert!(
        contracts
            .check_input("com.example.other", None, Payload::Bytes(b"not json"), None)
            .unwrap()
            .is_none()
    );

    let unknown = contracts
        .check_input(ORDER, Some("urn:nope"), Payload::Bytes(good), None)
        .unwrap_err();
    assert!(
        matches!(unknown, ContractError::UnknownSchema { .. }),
        "{unknown}"
    );
    let not_json = contracts
        .check_input(ORDER, None, Payload::Bytes(b"{"), None)
        .unwrap_err();
    assert!(matches!(not_json, ContractError::NotJson(..)), "{not_json}");
    assert!(
        contracts
            .check_input(ORDER, None, Payload::Absent, None)
            .is_err(),
        "absent data is null"
    );
}

#[test]
fn every_violation_is_a_pointer_and_a_message() {
    let dir = folder(&[(&format!("{ORDER}/1.json"), order_v1())]);
    let contracts = Contracts::load(dir.path()).unwrap();
    let bad = br#"{"order_id":"","items":[{"sku":"a","quantity":0,"price":2}],"total":-1,"currency":"XYZ"}"#;
    let ContractError::Invalid {
        violations,
        more,
        schema,
    } = contracts
        .check_input(ORDER, None, Payload::Bytes(bad), None)
        .unwrap_err()
    else {
        panic!("not a violation")
    };
    assert_eq!(schema, "urn:eventhost:schema:com.example.order.created:1");
    let pointers: Vec<_> = violations.iter().map(|v| v.pointer.as_str()).collect();
    assert_eq!(pointers.len(), 4, "{violations:?}");
    for pointer in ["/order_id", "/items/0/quantity", "/total", "/currency"] {
        assert!(
            pointers.contains(&pointer),
            "{pointer} missing from {pointers:?}"
        );
    }
    assert_eq!(more, 0);
    let minimum = violations.iter().find(|v| v.pointer == "/total").unwrap();
    assert!(
        minimum.message.contains("minimum of 0"),
        "{}",
        minimum.message
    );
}

#[test]
fn long_lists_of_violations_are_cut() {
    let schema = json!({ "type": "array", "items": { "type": "string" } });
    let dir = folder(&[("t/1.json", schema)]);
    let contracts = Contracts::load(dir.path()).unwrap();
    let data = serde_json::to_vec(&(0..25).collect::<Vec<_>>()).unwrap();
    let err = contracts
        .check_input("t", None, Payload::Bytes(&data), None)
        .unwrap_err();
    let ContractError::Invalid {
        violations, more, ..
    } = &err
    else {
        panic!()
    };
    assert_eq!((violations.len(), *more), (10, 15));
    assert!(err.to_string().ends_with("; and 15 more"), "{err}");
}

#[test]
fn a_missing_folder_holds_no_contract() {
    let contracts = Contracts::load(Path::new("/nonexistent/schemas")).unwrap();
    assert!(contracts.is_empty());
}

#[test]
fn bad_folders_are_refused_naming_the_file() {
    let remote = json!({ "properties": { "a": { "$ref": "https://example.com/a.json" } } });
    let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        ("t/1.json", b"{".to_vec(), |e| {
            matches!(e, LoadError::NotJson { .. })
        }),
        ("t/01.json", b"{}".to_vec(), |e| {
            matches!(e, LoadError::Layout { .. })
        }),
        ("t/0.json", b"{}".to_vec(), |e| {
            matches!(e, LoadError::Layout { .. })
        }),
        ("t/v1.json", b"{}".to_vec(), |e| {
            matches!(e, LoadError::Layout { .. })
        }),
        ("stray.json", b"{}".to_vec(), |e| {
            matches!(e, LoadError::Layout { .. })
        }),
        ("t/1.json", serde_json::to_vec(&remote).unwrap(), |e| {
            matches!(e, LoadError::RemoteRef { .. })
        }),
        ("t/1.json", br#"{"type": 5}"#.to_vec(), |e| {
            matches!(e, LoadError::Invalid { .. })
        }),
        (
            "t/1.json",
            br#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#.to_vec(),
            |e| matches!(e, LoadError::Draft { .. }),
        ),
        (
            "t/1.json",
            br#"{"x-eventhost-compatibility": "sideways"}"#.to_vec(),
            |e| matches!(e, LoadError::Mode { .. }),
        ),
        ("t/1.json", vec![b' '; 256 * 1024 + 1], |e| {
            matches!(e, LoadError::TooLarge { .. })
        }),
    ];
    for (path, bytes, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), path, &bytes);
        let err = Contracts::load(dir.path()).unwrap_err();
        assert!(expected(&err), "{path}: {err:?}");
        let file = dir.path().join(path);
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    write(dir.path(), "README.md", b"notes are allowed");
    assert!(matches!(
        Contracts::load(dir.path()),
        Err(LoadError::Layout { .. })
    ));
}

#[test]
fn a_folder_whose_versions_break_their_mode_is_refused() {
    let mut v2 = order_v1();
    v2["required"] = json!(["order_id", "items", "total", "currency"]);
    let dir = folder(&[
        (&format!("{ORDER}/1.json"), order_v1()),
        (&format!("{ORDER}/2.json"), v2.clone()),
    ]);
    let err = Contracts::load(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(
        err,
        LoadError::Breaking {
            older: 1,
            newer: 2,
            mode: Compatibility::Backward,
            ..
        }
    ));
    assert!(text.contains("v2 requires property \"currency\""), "{text}");
    v2["x-eventhost-compatibility"] = json!("forward");
    let dir = folder(&[
        (&format!("{ORDER}/1.json"), order_v1()),
        (&format!("{ORDER}/2.json"), v2),
    ]);
    let forward = Contracts::load(dir.path()).unwrap();
    assert_eq!(forward.get(ORDER).unwrap().mode, Compatibility::Forward);
}

#[test]
fn ids_are_absolute_uris_as_events_carry_them_and_each_versions_own() {
    let mut v1 = order_v1();
    v1["$id"] = json!("https://example.com");
    v1["$schema"] = json!("https://json-schema.org/draft/2020-12/schema#");
    // A `$ref` that is only data is not a reference.
    v1["examples"] = json!([{ "$ref": "https://example.com/not-a-schema" }]);
    let dir = folder(&[("t/1.json", v1.clone()), ("t/README.md", json!("notes"))]);
    let contracts = Contracts::load(dir.path()).unwrap();
    assert_eq!(
        contracts.get("t").unwrap().newest().id,
        "https://example.com/"
    );

    let dir = folder(&[("t/1.json", v1.clone()), ("t/2.json", v1)]);
    let err = Contracts::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::SameId { other: 1, .. }), "{err}");

    let mut relative = order_v1();
    relative["$id"] = json!("order.json");
    let dir = folder(&[("t/1.json", relative)]);
    assert!(matches!(
        Contracts::load(dir.path()),
        Err(LoadError::Id { .. })
    ));
}

#[test]
fn a_runtime_keeps_the_types_it_could_load_and_names_the_broken_ones() {
    let dir = folder(&[
        ("good/1.json", order_v1()),
        ("bad/1.json", json!({ "type": 5 })),
    ]);
    let (contracts, problems) = Contracts::load_each(dir.path()).unwrap();
    assert_eq!(problems.len(), 1);
    assert!(contracts.get("good").is_some());
    assert!(
        contracts
            .broken_reason("bad")
            .unwrap()
            .contains("not a valid JSON Schema")
    );
    let held = contracts
        .check_input("bad", None, Payload::Absent, None)
        .unwrap_err();
    assert!(matches!(held, ContractError::Broken { .. }), "{held}");
    assert!(
        Contracts::load(dir.path()).is_err(),
        "`schema check` refuses the folder"
    );
}

#[test]
fn a_runtime_that_requires_schemas_refuses_types_without_one_and_counts_them_bounded() {
    let dir = folder(&[(&format!("{ORDER}/1.json"), order_v1())]);
    let checks = prometheus_client::metrics::family::Family::default();
    let live = LiveContracts::open(dir.path().to_path_buf(), true, checks.clone()).unwrap();
    let contracts = live.current();
    let verdict = contracts.check_input("com.example.anything", None, Payload::Absent, None);
    assert!(
        matches!(verdict, Err(ContractError::Unregistered { .. })),
        "{verdict:?}"
    );
    live.count("h", "com.example.anything", Direction::Input, &verdict);
    let good = br#"{"order_id":"o-1","items":[{"sku":"a","quantity":1,"price":2}],"total":2}"#;
    let kept = contracts.check_input(ORDER, None, Payload::Bytes(good), None);
    live.count("h", ORDER, Direction::Input, &kept);
    let label = |event_type: &str, result: &'static str| ContractCheckLabels {
        handler: "h".into(),
        event_type: event_type.into(),
        direction: "input",
        result,
    };
    assert_eq!(
        checks
            .get_or_create(&label("(unregistered)", "invalid"))
            .get(),
        1
    );
    assert_eq!(checks.get_or_create(&label(ORDER, "valid")).get(), 1);

    let allowing = LiveContracts::open(dir.path().to_path_buf(), false, Default::default());
    let unchecked = (allowing.unwrap().current())
        .check_input("com.example.anything", None, Payload::Absent, None)
        .map(|schema| schema.is_none());
    assert_eq!(unchecked, Ok(true), "allowed by default");
}
