//! The compatibility rules ([`super::compat`]): one case per breaking
//! change the check catches, the edits it allows, and the modes'
//! directions.

use serde_json::{Value, json};

use super::compat::{Change, Compatibility, breaking};
use super::tests::{folder, order_v1};

/// A change made to a copy of a schema.
type Edit = fn(&mut Value);

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

#[test]
fn a_recursive_schema_is_compared_once_per_pair_of_definitions() {
    // A tree: every node refers back to the root twice. Walking every path
    // to the depth limit would take about 2^33 comparisons.
    let tree = |required: Value| {
        json!({
            "type": "object",
            "required": required,
            "properties": { "left": { "$ref": "#" }, "right": { "$ref": "#" }, "label": {} }
        })
    };
    let started = std::time::Instant::now();
    let found = breaking(&tree(json!(["label"])), &tree(json!([])));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let added = Change::RequiredAdded {
        at: String::new(),
        property: "label".into(),
    };
    assert_eq!(found, vec![added]);
}

#[test]
fn a_writer_that_accepts_anything_is_compared_as_such() {
    let reader = json!({ "properties": { "x": { "type": "string" } } });
    let writer = json!({ "properties": { "x": true } });
    let found = breaking(&reader, &writer);
    assert!(
        matches!(&found[..], [Change::TypeNarrowed { at, writer: None, .. }] if at == "/x"),
        "{found:?}"
    );
    assert_eq!(
        breaking(&writer, &reader),
        vec![],
        "a `true` reader reads everything"
    );
}
