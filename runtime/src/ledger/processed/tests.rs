//! The record's transitions against the in-memory store.
use super::*;
use crate::store::MemoryStore;
use cloudevents::{EventBuilder, EventBuilderV10};

fn event(source: &str, id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source(source)
        .ty("t")
        .build()
        .unwrap()
}

fn records(lease: Duration) -> (Arc<MemoryStore>, ProcessedEvents) {
    let store = Arc::new(MemoryStore::new());
    store.add_bucket(&bucket_name("c"));
    let records = ProcessedEvents::new(store.clone(), "c", lease);
    (store, records)
}

#[test]
fn the_key_is_source_and_id() {
    let key = ProcessedEvents::key(&event("/a", "1"));
    assert_eq!(key.len(), 32);
    assert_eq!(key, ProcessedEvents::key(&event("/a", "1")));
    assert_ne!(key, ProcessedEvents::key(&event("/b", "1")));
    // The separator keeps ("/a1", "") and ("/a", "1") apart.
    assert_ne!(key, ProcessedEvents::key(&event("/a1", "")));
}

#[tokio::test]
async fn a_lease_names_its_record_and_a_claim_makes_one() {
    // The bucket name is part of the operator's interface (`KV_processed-…`).
    assert_eq!(bucket_name("payment"), "processed-payment");
    let config = bucket_config("payment", Duration::from_secs(86400), 3);
    assert_eq!(config.name, "KV_processed-payment");
    assert_eq!(config.max_age, Duration::from_secs(86400));
    assert_eq!(config.storage, stream::StorageType::File);
    let (store, records) = records(Duration::from_secs(30));
    let e = event("/a", "1");
    let key = ProcessedEvents::key(&e);
    assert!(!records.has_record(&key).await.unwrap());
    let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
        panic!("first claim")
    };
    assert!(records.has_record(&key).await.unwrap());
    let named = lease.record_ref(&records);
    assert_eq!(named, format!("processed-c/{key}"));
    let read = crate::ledger::record::read_record(&*store, &named).await;
    assert!(matches!(read, Ok(Some(Record::Claimed { .. }))), "{read:?}");
}

#[tokio::test]
async fn one_holder_at_a_time_and_one_outcome() {
    let (_, records) = records(Duration::from_secs(30));
    let e = event("/a", "1");
    let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
        panic!("first claim")
    };
    assert!(matches!(records.claim(&e).await.unwrap(), Claim::Busy(_)));
    records.done(lease, "v1").await.unwrap();
    assert!(matches!(
        records.claim(&e).await.unwrap(),
        Claim::AlreadyHandled
    ));

    let other = event("/a", "2");
    let Claim::Acquired(lease) = records.claim(&other).await.unwrap() else {
        panic!("claim")
    };
    let reason = DeadLetterReason::Failed(FailureKind::Permanent);
    records.dead_lettered(lease, "v1", reason).await.unwrap();
    assert!(matches!(
        records.claim(&other).await.unwrap(),
        Claim::AlreadyDeadLettered
    ));
}

#[tokio::test]
async fn an_expired_commit_is_resumed_not_rerun() {
    let (_, records) = records(Duration::from_millis(1));
    let e = event("/a", "1");
    let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
        panic!("claim")
    };
    let plan = CommitPlan {
        id: "c1".into(),
        writes: vec![],
        outputs: vec![],
    };
    let stale = records.begin_commit(lease, &plan).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Claim::Resume(_, Interrupted::Committing(found)) = records.claim(&e).await.unwrap() else {
        panic!("not resumed")
    };
    assert_eq!(found, plan);
    // The holder whose lease was taken over can no longer write.
    assert!(records.done(stale, "v1").await.is_err());

    // A run cut off before its plan was written counts as an attempt.
    let other = event("/a", "2");
    let Claim::Acquired(first) = records.claim(&other).await.unwrap() else {
        panic!("claim")
    };
    assert_eq!(first.history.attempts, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Claim::Acquired(second) = records.claim(&other).await.unwrap() else {
        panic!("takeover")
    };
    assert_eq!(second.history.attempts, 2);
}

#[tokio::test]
async fn a_released_claim_gives_its_attempt_back() {
    let (_, records) = records(Duration::from_secs(30));
    let e = event("/a", "1");
    for _ in 0..3 {
        let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
            panic!("claim")
        };
        assert_eq!(lease.history.attempts, 1, "host trouble used up an attempt");
        records.release(lease).await.unwrap();
    }
}

#[tokio::test]
async fn failures_and_attempts_accumulate_across_claims() {
    let (_, records) = records(Duration::from_secs(30));
    let e = event("/a", "1");
    for expected in 0..3 {
        let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
            panic!("claim")
        };
        // A copy arriving meanwhile waits; it is not an attempt.
        assert!(matches!(records.claim(&e).await.unwrap(), Claim::Busy(_)));
        assert_eq!(lease.history.failures, expected);
        assert_eq!(lease.history.attempts, expected + 1);
        records
            .failed(lease, FailureKind::Trap, "boom")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_decision_to_give_up_outlives_its_holder() {
    let (_, records) = records(Duration::from_millis(1));
    let e = event("/a", "1");
    let Claim::Acquired(mut lease) = records.claim(&e).await.unwrap() else {
        panic!("claim")
    };
    lease
        .history
        .record_failure(FailureKind::Permanent, "bad order");
    let decided = records.give_up(lease).await.unwrap();
    let decision = decided
        .history
        .gave_up
        .expect("the decision is on the lease");
    // The holder dies after storing the letter; its successor finds the
    // decision with the failure behind it, and deciding again keeps it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Claim::Acquired(successor) = records.claim(&e).await.unwrap() else {
        panic!("takeover")
    };
    assert_eq!(successor.history.gave_up, Some(decision));
    assert_eq!(successor.history.last_error.as_deref(), Some("bad order"));
    let again = records.give_up(successor).await.unwrap();
    assert_eq!(again.history.gave_up, Some(decision));
    let reason = DeadLetterReason::Failed(FailureKind::Permanent);
    records.dead_lettered(again, "v1", reason).await.unwrap();
    // The dead holder can no longer write.
    assert!(records.done(decided, "v1").await.is_err());
}

#[tokio::test]
async fn an_event_set_aside_keeps_its_run_counted_and_its_decision() {
    let (_, records) = records(Duration::from_secs(30));
    let e = event("/a", "1");
    let Claim::Acquired(lease) = records.claim(&e).await.unwrap() else {
        panic!("claim")
    };
    let decided = records.give_up(lease).await.unwrap();
    records.set_aside(decided).await.unwrap();
    // Taken over at once (no lease to wait out), the first run still counted.
    let Claim::Acquired(next) = records.claim(&e).await.unwrap() else {
        panic!("takeover")
    };
    assert_eq!(next.history.attempts, 2);
    assert!(next.history.gave_up.is_some());
}
