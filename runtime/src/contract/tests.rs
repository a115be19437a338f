use std::path::Path;

use serde_json::{Value, json};

use super::compat::{Change, Compatibility, breaking};
use super::{ContractError, Contracts, LoadError, Payload};

/// The checkout's order, version 1.
fn order_v1() -> Value {
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

fn folder(files: &[(&str, Value)]) -> tempfile::TempDir {
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
/// A change made to a copy of a schema.
type Edit = fn(&mut Value);

#[test]
fn data_is_checked_against_the_claimed_version_or_the_newest() {
    let mut v2 = order_v1();
    v2["$id"] = json!("https://example.com/schemas/order/2");
    v2["properties"]["note"] = json!({ "type": "string" });
    let dir = folder(&[
        (&format!("{ORDER}/1.json"), order_v1()),
        (&format!("{ORDER}/2.json"), v2),
    ]);
    let contracts = Contracts::load(dir.path()).unwrap();
    let good = br#"{"order_id":"o-1","items":[{"sku":"a","quantity":1,"price":2}],"total":2}"#;
    let newest = contracts
        .check_input(ORDER, None, Payload::Bytes(good))
        .unwrap();
    assert_eq!(newest.unwrap().id, "https://example.com/schemas/order/2");
    let claimed = (contracts.check_input(
        ORDER,
        Some("urn:eventhost:schema:com.example.order.created:1"),
        Payload::Bytes(good),
    ))
    .unwrap();
    assert_eq!(claimed.unwrap().version, 1);
    assert!(
        contracts
            .check_input("com.example.other", None, Payload::Bytes(b"not json"))
            .unwrap()
            .is_none()
    );

    let unknown = contracts
        .check_input(ORDER, Some("urn:nope"), Payload::Bytes(good))
        .unwrap_err();
    assert!(
        matches!(unknown, ContractError::UnknownSchema { .. }),
        "{unknown}"
    );
    let not_json = contracts
        .check_input(ORDER, None, Payload::Bytes(b"{"))
        .unwrap_err();
    assert!(matches!(not_json, ContractError::NotJson(..)), "{not_json}");
    assert!(
        contracts.check_input(ORDER, None, Payload::Absent).is_err(),
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
        .check_input(ORDER, None, Payload::Bytes(bad))
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
        .check_input("t", None, Payload::Bytes(&data))
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

/// `reader` and `writer` as the same order with one change applied to the
/// reader.
fn changed(edit: impl FnOnce(&mut Value)) -> Vec<Change> {
    let mut reader = order_v1();
    edit(&mut reader);
    breaking(&reader, &order_v1())
}

#[test]
fn the_common_breaking_changes_are_caught_where_they_are() {
    let at = |change: &Change| match change {
        Change::RequiredAdded { at, .. }
        | Change::PropertyRemoved { at, .. }
        | Change::TypeNarrowed { at, .. }
        | Change::EnumValueRemoved { at, .. }
        | Change::Narrowed { at, .. } => at.clone(),
    };
    for (edit, expected_at, expected_kind) in breaking_edits() {
        let found = changed(edit);
        assert_eq!(
            found.len(),
            1,
            "{expected_kind} at {expected_at:?}: {found:?}"
        );
        assert_eq!(at(&found[0]), expected_at, "{found:?}");
        assert!(
            format!("{:?}", found[0]).starts_with(expected_kind),
            "{found:?}"
        );
    }
}

/// One breaking edit of the reader each: the edit, where it shows, and the
/// change it is.
fn breaking_edits() -> Vec<(Edit, &'static str, &'static str)> {
    vec![
        (
            |s| {
                s["required"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("currency"))
            },
            "",
            "RequiredAdded",
        ),
        (
            |s| {
                s["$defs"]["item"]["required"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("note"))
            },
            "/items/*",
            "RequiredAdded",
        ),
        (
            |s| s["properties"]["total"]["type"] = json!("integer"),
            "/total",
            "TypeNarrowed",
        ),
        (
            |s| s["properties"]["order_id"]["type"] = json!("number"),
            "/order_id",
            "TypeNarrowed",
        ),
        (
            |s| s["properties"]["currency"]["enum"] = json!(["EUR"]),
            "/currency",
            "EnumValueRemoved",
        ),
        (
            |s| s["properties"]["order_id"]["enum"] = json!(["a"]),
            "/order_id",
            "Narrowed",
        ),
        (
            |s| s["properties"]["total"]["minimum"] = json!(1),
            "/total",
            "Narrowed",
        ),
        (
            |s| s["properties"]["total"]["maximum"] = json!(100),
            "/total",
            "Narrowed",
        ),
        (
            |s| s["properties"]["order_id"]["maxLength"] = json!(8),
            "/order_id",
            "Narrowed",
        ),
        (
            |s| s["properties"]["order_id"]["pattern"] = json!("^o-"),
            "/order_id",
            "Narrowed",
        ),
        (
            |s| s["properties"]["items"]["maxItems"] = json!(3),
            "/items",
            "Narrowed",
        ),
        (
            |s| s["$defs"]["item"]["properties"]["quantity"]["minimum"] = json!(2),
            "/items/*/quantity",
            "Narrowed",
        ),
        (|s| s["additionalProperties"] = json!(false), "", "Narrowed"),
        (
            |s| s["properties"]["currency"] = json!(false),
            "/currency",
            "Narrowed",
        ),
    ]
}

#[test]
fn a_property_removed_from_a_closed_object_is_named() {
    let mut writer = order_v1();
    writer["additionalProperties"] = json!(false);
    let mut reader = writer.clone();
    reader["properties"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    let removed = Change::PropertyRemoved {
        at: String::new(),
        property: "currency".into(),
    };
    assert_eq!(breaking(&reader, &writer), vec![removed]);
}

#[test]
fn widening_and_optional_additions_are_compatible() {
    let compatible: [fn(&mut Value); 7] = [
        |_| {},
        |s| s["properties"]["note"] = json!({ "type": "string" }),
        |s| s["properties"]["currency"]["enum"] = json!(["EUR", "USD", "GBP"]),
        |s| s["properties"]["total"]["minimum"] = json!(-1),
        |s| {
            s["properties"]["total"]
                .as_object_mut()
                .unwrap()
                .remove("minimum");
        },
        |s| s["required"] = json!(["order_id", "items"]),
        |s| s["$defs"]["item"]["properties"]["quantity"]["type"] = json!("number"),
    ];
    for edit in compatible {
        assert_eq!(changed(edit), vec![]);
    }
}

#[test]
fn modes_pick_the_direction() {
    let mut v2 = order_v1();
    v2["required"] = json!(["order_id", "items", "total", "currency"]);
    let dir = folder(&[("a/1.json", order_v1()), ("a/2.json", v2)]);
    let v1 = super::load::read_schema("a", 1, dir.path().join("a/1.json")).unwrap();
    let v2 = super::load::read_schema("a", 2, dir.path().join("a/2.json")).unwrap();
    use super::compat::check;
    // A new required property: new readers break on old data, old readers
    // read new data.
    assert_eq!(check(Compatibility::Backward, &v1, &v2).len(), 1);
    assert!(check(Compatibility::Forward, &v1, &v2).is_empty());
    assert_eq!(check(Compatibility::Full, &v1, &v2).len(), 1);
    assert!(check(Compatibility::None, &v1, &v2).is_empty());
    // Dropping it again is the mirror image.
    let back = check(Compatibility::Forward, &v2, &v1);
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].to_string(),
        "/: v2 requires property \"currency\", which v1 data may leave out"
    );
    for name in ["backward", "forward", "full", "none"] {
        assert_eq!(name.parse::<Compatibility>().unwrap().as_str(), name);
    }
}
