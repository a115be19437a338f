//! The event-store capability without wasm or NATS: grants, reads by
//! subject from a sequence, buffered appends and their expectation, limits,
//! and events of a commit still under way.

use std::sync::Arc;

use super::*;
use crate::ledger::record::{COMMIT_HEADER, CommitPlan, PENDING_HEADER, Record};
use crate::store::{MemoryStore, Publish, kv};

fn section() -> EventStoreSection {
    EventStoreSection {
        read: vec!["orders.events.*".into()],
        append: vec!["accounts.events.*".into()],
        max_events_read: 3,
        max_events_appended: 2,
    }
}

fn setup() -> (Arc<MemoryStore>, EventStoreState) {
    let store = Arc::new(MemoryStore::new());
    store.add_stream("ACCOUNTS", &["accounts.>"]);
    store.add_stream("ORDERS", &["orders.>"]);
    store.add_bucket("processed-other");
    let grant = |pattern: &str, stream: &str, append| SubjectGrant {
        pattern: pattern.into(),
        stream: stream.into(),
        append,
    };
    let grants = EventStoreGrants {
        subjects: vec![
            grant("accounts.events.*", "ACCOUNTS", true),
            grant("orders.events.*", "ORDERS", false),
        ],
        limits: section(),
        store: store.clone(),
    };
    (store, EventStoreState::new(Some(Arc::new(grants))))
}

/// A structured CloudEvent of type `ty`, stored on `subject`.
async fn store_event(store: &MemoryStore, subject: &str, ty: &str) -> u64 {
    let json = format!(r#"{{"specversion":"1.0","id":"{ty}","source":"/t","type":"{ty}"}}"#);
    let publish =
        Publish::new(subject, json).header("Content-Type", "application/cloudevents+json");
    store.publish(publish).await.unwrap().sequence
}

fn event(destination: &str) -> OutgoingEvent {
    OutgoingEvent {
        destination: destination.into(),
        type_: "t".into(),
        id: None,
        source: None,
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        extensions: vec![],
        data: None,
    }
}

fn refused(result: Result<impl std::fmt::Debug, EventStoreError>) -> event_store::Error {
    match result {
        Err(EventStoreError::Refused(error)) => error,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn reads_follow_the_subject_from_a_sequence() {
    let (store, mut events) = setup();
    let first = store_event(&store, "accounts.events.a1", "opened").await;
    store_event(&store, "accounts.events.a2", "other").await;
    let second = store_event(&store, "accounts.events.a1", "deposited").await;
    assert_eq!(
        events.last_sequence("accounts.events.a1").await.unwrap(),
        second
    );
    assert_eq!(events.last_sequence("accounts.events.a9").await.unwrap(), 0);
    let all = events.read("accounts.events.a1", 0, 10).await.unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|e| (e.sequence, e.event.type_.as_str()))
        .collect();
    assert_eq!(seen, [(first, "opened"), (second, "deposited")]);
    let after = events.read("accounts.events.a1", first, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event.attempt, 0);
}

#[tokio::test]
async fn grants_separate_reading_from_appending() {
    let (store, mut events) = setup();
    store_event(&store, "orders.events.o1", "created").await;
    assert_eq!(
        events.read("orders.events.o1", 0, 10).await.unwrap().len(),
        1
    );
    let err = refused(events.append(0, vec![event("orders.events.o1")]));
    assert!(
        matches!(err, event_store::Error::AccessDenied(_)),
        "{err:?}"
    );
    let err = refused(events.read("payments.events.p1", 0, 10).await);
    assert!(
        matches!(err, event_store::Error::AccessDenied(_)),
        "{err:?}"
    );
    let err = refused(events.last_sequence("accounts.events.*").await);
    assert!(matches!(err, event_store::Error::Invalid(_)), "{err:?}");
    assert_eq!(events.usage().1, 2, "two calls denied");
    assert!(
        events.refused.is_none(),
        "a denial is the guest's to handle"
    );
}

#[tokio::test]
async fn appends_are_buffered_per_subject_under_one_expectation() {
    let (_, mut events) = setup();
    events.append(7, vec![event("accounts.events.a1")]).unwrap();
    events.append(7, vec![event("accounts.events.a1")]).unwrap();
    let err = refused(events.append(8, vec![event("accounts.events.a1")]));
    assert!(matches!(err, event_store::Error::Invalid(_)), "{err:?}");
    let mixed = vec![event("accounts.events.a2"), event("accounts.events.a3")];
    assert!(matches!(
        refused(events.append(0, mixed)),
        event_store::Error::Invalid(_)
    ));
    let mut bad = event("accounts.events.a2");
    bad.type_.clear();
    assert!(matches!(
        refused(events.append(0, vec![bad])),
        event_store::Error::Invalid(_)
    ));
    let appends = events.into_appends();
    assert_eq!(appends.len(), 1);
    assert_eq!((appends[0].expected, appends[0].events.len()), (7, 2));
    assert_eq!(appends[0].stream, "ACCOUNTS");
}

#[tokio::test]
async fn limits_fail_the_invocation() {
    let (store, mut events) = setup();
    for ty in ["a", "b", "c", "d"] {
        store_event(&store, "accounts.events.a1", ty).await;
    }
    let err = refused(events.read("accounts.events.a1", 0, 10).await);
    assert!(
        matches!(err, event_store::Error::LimitExceeded(_)),
        "{err:?}"
    );
    assert_eq!(
        events.refused.take().unwrap().kind,
        FailureKind::LimitExceeded
    );

    let (_, mut events) = setup();
    let three = vec![event("accounts.events.a1"); 3];
    assert!(matches!(
        refused(events.append(0, three)),
        event_store::Error::LimitExceeded(_)
    ));
    assert!(events.refused.is_some());
}

#[tokio::test]
async fn an_event_of_a_commit_under_way_interrupts_the_reader() {
    let (store, mut events) = setup();
    let plan = CommitPlan {
        id: "rec.c1".into(),
        writes: vec![],
        outputs: vec![],
    };
    let record = Record::Committing {
        owner: "o".into(),
        until: chrono::Utc::now(),
        history: Default::default(),
        plan,
    };
    let json = serde_json::to_vec(&record).unwrap();
    store
        .publish(kv::write("processed-other", "rec", Some(json.into())))
        .await
        .unwrap();
    let json = r#"{"specversion":"1.0","id":"x","source":"/t","type":"t"}"#;
    let pending = Publish::new("accounts.events.a1", json)
        .header(COMMIT_HEADER, "rec.c1")
        .header(PENDING_HEADER, "processed-other/rec");
    store.publish(pending).await.unwrap();
    assert!(matches!(
        events.read("accounts.events.a1", 0, 10).await,
        Err(EventStoreError::Interrupted)
    ));
    let Some(Interruption::Conflict(conflict)) = events.interrupted.take() else {
        panic!("not a conflict")
    };
    assert_eq!(conflict.store, "ACCOUNTS", "the stream, a bounded label");
}
