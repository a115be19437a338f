//! The key-value capability without wasm or NATS: grants, read-your-writes,
//! conditional writes, limits, and reads of a commit still under way.

use std::sync::Arc;

use bytes::Bytes;
use bytesize::ByteSize;

use super::*;
use crate::ledger::record::{COMMIT_HEADER, CommitPlan, PENDING_HEADER, Record};
use crate::store::{MemoryStore, Publish};

fn section() -> KeyValueSection {
    KeyValueSection {
        read_write: vec!["rw".into()],
        read_only: vec!["ro".into()],
        max_value_size: ByteSize::b(8),
        max_keys_written: 2,
        max_bytes_written: ByteSize::b(12),
    }
}

fn setup() -> (Arc<MemoryStore>, KeyValueState) {
    let store = Arc::new(MemoryStore::new());
    for bucket in ["rw", "ro", "processed-other"] {
        store.add_bucket(bucket);
    }
    let grants = KeyValueGrants::new(&section(), store.clone(), |b| b.to_string());
    (store, KeyValueState::new(Some(Arc::new(grants))))
}

async fn put(store: &MemoryStore, bucket: &str, key: &str, value: &str) -> u64 {
    let publish = kv::write(bucket, key, Some(Bytes::from(value.to_string())));
    store.publish(publish).await.unwrap().sequence
}

#[tokio::test]
async fn only_granted_buckets_open_and_read_only_ones_refuse_writes() {
    let (_, mut kv) = setup();
    assert!(matches!(kv.open("elsewhere"), Err(KvError::AccessDenied)));
    let ro = kv.open("ro").unwrap();
    assert!(matches!(
        kv.set(ro, "k", "v".into()).await,
        Err(KvError::AccessDenied)
    ));
    assert!(matches!(
        kv.delete(ro, "k").await,
        Err(KvError::AccessDenied)
    ));
    let usage = kv.usage();
    assert_eq!(usage[1].0, "ro");
    assert_eq!(usage[1].1.denied, 2);
    assert_eq!(
        usage[2],
        (
            NOT_GRANTED.to_string(),
            BucketUsage {
                reads: 0,
                denied: 1
            }
        )
    );
    assert!(kv.refused.is_none(), "a denial is the guest's to handle");
    assert!(kv.into_writes().is_empty());

    let mut none = KeyValueState::new(None);
    assert!(matches!(none.open("rw"), Err(KvError::AccessDenied)));
}

#[tokio::test]
async fn reads_see_the_invocations_own_writes() {
    let (store, mut kv) = setup();
    put(&store, "rw", "a", "1").await;
    let rw = kv.open("rw").unwrap();
    assert_eq!(kv.get(rw, "a").await.unwrap().as_deref(), Some(&b"1"[..]));
    kv.set(rw, "a", "2".into()).await.unwrap();
    assert_eq!(kv.get(rw, "a").await.unwrap().as_deref(), Some(&b"2"[..]));
    kv.delete(rw, "a").await.unwrap();
    assert_eq!(kv.get(rw, "a").await.unwrap(), None);
    kv.set(rw, "b", "x".into()).await.unwrap();
    let (keys, cursor) = kv.list_keys(rw, None).await.unwrap();
    assert_eq!((keys, cursor), (vec!["b".to_string()], None));
    // Nothing reached the store yet.
    assert_eq!(
        kv::entry(&*store, "rw", "a")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some(&b"1"[..])
    );
}

#[tokio::test]
async fn writes_are_conditional_on_the_first_revision_seen() {
    let (store, mut kv) = setup();
    let first = put(&store, "rw", "a", "1").await;
    let rw = kv.open("rw").unwrap();
    kv.get(rw, "a").await.unwrap();
    // Someone writes after our read: our write must still expect `first`.
    put(&store, "rw", "a", "9").await;
    kv.set(rw, "a", "2".into()).await.unwrap();
    kv.set(rw, "new", "3".into()).await.unwrap();
    let writes = kv.into_writes();
    let expected: Vec<_> = writes
        .iter()
        .map(|w| match w {
            PlannedWrite::Key {
                key,
                expected,
                prior,
                ..
            } => (key.as_str(), *expected, prior.value.clone()),
            PlannedWrite::Event { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(
        expected,
        [
            ("a", first, Some(Bytes::from_static(b"1"))),
            ("new", 0, None)
        ]
    );
}

#[tokio::test]
async fn deleting_a_key_that_never_existed_writes_nothing() {
    let (_, mut kv) = setup();
    let rw = kv.open("rw").unwrap();
    kv.delete(rw, "ghost").await.unwrap();
    assert!(kv.into_writes().is_empty());
}

#[tokio::test]
async fn limits_refuse_the_call_and_fail_the_invocation() {
    let (_, mut kv) = setup();
    let rw = kv.open("rw").unwrap();
    let err = kv.set(rw, "big", "123456789".into()).await.unwrap_err();
    assert!(matches!(err, KvError::Other(m) if m.contains("max_value_size")));
    assert_eq!(kv.refused.take().unwrap().kind, FailureKind::LimitExceeded);

    kv.set(rw, "a", "1234567".into()).await.unwrap();
    let err = kv.set(rw, "b", "123456".into()).await.unwrap_err();
    assert!(matches!(err, KvError::Other(m) if m.contains("max_bytes_written")));
    // Rewriting a key replaces its bytes rather than adding to them.
    kv.set(rw, "a", "1".into()).await.unwrap();
    kv.set(rw, "b", "1".into()).await.unwrap();
    let err = kv.set(rw, "c", "1".into()).await.unwrap_err();
    assert!(matches!(err, KvError::Other(m) if m.contains("max_keys_written")));
    assert!(kv.refused.is_some());
}

#[tokio::test]
async fn bad_keys_are_the_guests_error() {
    let (_, mut kv) = setup();
    let rw = kv.open("rw").unwrap();
    for bad in ["", "a b", "a..b", "ü"] {
        assert!(
            matches!(kv.get(rw, bad).await, Err(KvError::Other(_))),
            "{bad:?}"
        );
        assert!(matches!(
            kv.set(rw, bad, "v".into()).await,
            Err(KvError::Other(_))
        ));
    }
}

#[tokio::test]
async fn increments_count_in_decimal() {
    let (store, mut kv) = setup();
    put(&store, "rw", "n", "41").await;
    put(&store, "rw", "text", "hello").await;
    let rw = kv.open("rw").unwrap();
    assert_eq!(kv.increment(rw, "n", 1).await.unwrap(), 42);
    assert_eq!(kv.increment(rw, "fresh", 5).await.unwrap(), 5);
    assert!(matches!(
        kv.increment(rw, "text", 1).await,
        Err(KvError::Other(_))
    ));
    assert_eq!(kv.get(rw, "n").await.unwrap().as_deref(), Some(&b"42"[..]));
}

#[tokio::test]
async fn a_value_of_a_commit_under_way_interrupts_the_reader() {
    let (store, mut kv) = setup();
    // A pending write whose record says its commit is still going on.
    let plan = CommitPlan {
        id: "rec1.abc".into(),
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
        .publish(kv::write("processed-other", "rec1", Some(json.into())))
        .await
        .unwrap();
    let pending = Publish::new("$KV.rw.p", "v")
        .header(COMMIT_HEADER, "rec1.abc")
        .header(PENDING_HEADER, "processed-other/rec1");
    store.publish(pending).await.unwrap();

    let rw = kv.open("rw").unwrap();
    assert!(matches!(kv.get(rw, "p").await, Err(KvError::Interrupted)));
    let Some(Interruption::Conflict(conflict)) = kv.interrupted.take() else {
        panic!("not a conflict")
    };
    assert_eq!(conflict.store, "rw");

    // Once the commit is over, the same value reads normally.
    let done = Record::Done {
        version: "v".into(),
        at: chrono::Utc::now(),
    };
    let json = serde_json::to_vec(&done).unwrap();
    store
        .publish(kv::write("processed-other", "rec1", Some(json.into())))
        .await
        .unwrap();
    let (_, mut kv) = (store.clone(), KeyValueState::new(kv.grants.clone()));
    assert_eq!(kv.get(rw, "p").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_read_cut_off_by_the_deadline_is_the_stores_trouble_not_a_timeout() {
    let (store, mut kv) = setup();
    store.silence();
    let rw = kv.open("rw").unwrap();
    let deadline = std::time::Duration::from_millis(20);
    let cut = tokio::time::timeout(deadline, kv.get(rw, "a")).await;
    assert!(cut.is_err(), "a silent store answered");
    assert!(matches!(
        KeyValue::take_interruption(&mut kv),
        Some(Interruption::StoreUnavailable(_))
    ));
}

#[tokio::test]
async fn an_unreachable_store_interrupts_rather_than_answers() {
    let (store, mut kv) = setup();
    store.cut_after(0);
    let rw = kv.open("rw").unwrap();
    assert!(matches!(kv.get(rw, "a").await, Err(KvError::Interrupted)));
    assert!(matches!(
        kv.interrupted,
        Some(Interruption::StoreUnavailable(_))
    ));
}
