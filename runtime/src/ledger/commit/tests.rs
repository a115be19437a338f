//! The commit protocol against the in-memory store: what it writes, what a
//! lost race leaves (nothing), and what a crash after any number of writes
//! leaves once the next holder of the event has resumed (everything, once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::{EventBuilder, EventBuilderV10};

use super::*;
use crate::ledger::processed::{Claim, Interrupted, bucket_name};
use crate::ledger::record::{PlannedMessage, PriorValue, Record, is_settled};
use crate::store::{CheckOrder, MemoryStore};

const LEASE: Duration = Duration::from_millis(20);

/// Both orders a supported nats-server checks a publish's conditions in.
const ORDERS: [CheckOrder; 2] = [CheckOrder::DuplicateFirst, CheckOrder::ExpectationFirst];

struct World {
    store: Arc<MemoryStore>,
    records: ProcessedEvents,
}

impl World {
    fn new() -> Self {
        Self::with(CheckOrder::default())
    }

    fn with(order: CheckOrder) -> Self {
        let store = Arc::new(MemoryStore::with_order(order));
        store.add_bucket("state");
        store.add_bucket(&bucket_name("c"));
        store.add_stream("EVENTS", &["ev.>"]);
        store.add_stream("OUT", &["out.>"]);
        let records = ProcessedEvents::new(store.clone(), "c", LEASE);
        World { store, records }
    }

    fn committer(&self) -> Committer<'_> {
        Committer {
            store: &*self.store,
            records: &self.records,
            max_record: 1 << 20,
        }
    }

    async fn lease(&self) -> Lease {
        match self.records.claim(&event()).await.unwrap() {
            Claim::Acquired(lease) => lease,
            other => panic!("not acquired: {other:?}"),
        }
    }

    async fn value(&self, key: &str) -> Option<Bytes> {
        kv::entry(&*self.store, "state", key).await.unwrap().value
    }

    async fn put(&self, key: &str, value: &str) -> u64 {
        let write = kv::write("state", key, Some(Bytes::from(value.to_string())));
        self.store.publish(write).await.unwrap().sequence
    }

    async fn record(&self) -> Record {
        let key = ProcessedEvents::key(&event());
        let entry = kv::entry(&*self.store, &bucket_name("c"), &key)
            .await
            .unwrap();
        serde_json::from_slice(&entry.value.unwrap()).unwrap()
    }

    fn outputs(&self) -> usize {
        self.store.messages("OUT").len()
    }

    fn events(&self) -> Vec<String> {
        let messages = self.store.messages("EVENTS");
        messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }
}

fn event() -> cloudevents::Event {
    EventBuilderV10::new()
        .id("e1")
        .source("/t")
        .ty("t")
        .build()
        .unwrap()
}

fn set(key: &str, value: &str, expected: u64, prior: Option<&str>) -> PlannedWrite {
    PlannedWrite::Key {
        bucket: "state".into(),
        key: key.into(),
        value: Some(Bytes::from(value.to_string())),
        expected,
        prior: PriorValue {
            value: prior.map(|p| Bytes::from(p.to_string())),
            headers: vec![],
        },
    }
}

fn append(subject: &str, payload: &str, expected: Option<u64>) -> PlannedWrite {
    PlannedWrite::Event {
        stream: "EVENTS".into(),
        expected,
        message: message(subject, payload),
    }
}

fn message(subject: &str, payload: &str) -> PlannedMessage {
    PlannedMessage {
        subject: subject.into(),
        headers: Default::default(),
        msg_id: Some(format!("out-{payload}")),
        payload: Bytes::from(payload.to_string()),
    }
}

fn plan(lease: &Lease, writes: Vec<PlannedWrite>) -> CommitPlan {
    CommitPlan {
        id: new_commit_id(lease.key()),
        writes,
        outputs: vec![message("out.a", "o1"), message("out.b", "o2")],
    }
}

#[tokio::test]
async fn a_single_write_commits_with_its_outputs() {
    let w = World::new();
    let rev = w.put("counter", "1").await;
    let lease = w.lease().await;
    let plan = plan(&lease, vec![set("counter", "2", rev, Some("1"))]);
    w.committer()
        .commit(lease, plan.clone(), "v1")
        .await
        .unwrap();
    assert_eq!(w.value("counter").await.as_deref(), Some(&b"2"[..]));
    assert_eq!(w.outputs(), 2);
    assert!(matches!(w.record().await, Record::Done { .. }));
    // A single write is its own decision, and pending until it is done.
    let entry = kv::entry(&*w.store, "state", "counter").await.unwrap();
    assert_eq!(entry.header(COMMIT_HEADER), Some(plan.id.as_str()));
    assert!(entry.header(PENDING_HEADER).is_some());
    assert!(is_settled(&*w.store, &entry.headers).await.unwrap());
}

#[tokio::test]
async fn a_single_applied_write_stays_unreadable_until_a_resumer_finishes_it() {
    // The defect current servers exposed: a counter's write applied, the
    // runtime killed before `done`, another commit built on the value, and
    // the resumer (refused as a wrong sequence, since the key had moved on)
    // took its own write for a lost race and ran the handler again.
    for order in ORDERS {
        let w = World::with(order);
        let rev = w.put("counter", "10").await;
        let lease = w.lease().await;
        let plan = plan(&lease, vec![set("counter", "11", rev, Some("10"))]);
        w.store.cut_after(2); // the plan and the write land; then the runtime dies
        assert!(w.committer().commit(lease, plan, "v1").await.is_err());
        w.store.reconnect();
        let entry = kv::entry(&*w.store, "state", "counter").await.unwrap();
        let settled = is_settled(&*w.store, &entry.headers).await.unwrap();
        assert!(!settled, "{order:?}: another commit could build on it");
        tokio::time::sleep(LEASE * 2).await;
        let Claim::Resume(lease, Interrupted::Committing(found)) =
            w.records.claim(&event()).await.unwrap()
        else {
            panic!("{order:?}: not resumed")
        };
        w.committer().finish(lease, &found, "v1").await.unwrap();
        assert_eq!(w.value("counter").await.as_deref(), Some(&b"11"[..]));
        assert_eq!(w.outputs(), 2, "{order:?}");
        assert!(is_settled(&*w.store, &entry.headers).await.unwrap());
    }
}

#[tokio::test]
async fn a_commit_whose_success_cannot_be_recorded_is_not_reported_done() {
    // Its writes stay pending until the record says done: acking the input
    // now would leave them unreadable for the whole idempotency window.
    let w = World::new();
    let lease = w.lease().await;
    let plan = plan(&lease, vec![set("a", "1", 0, None)]);
    w.store.cut_after(4); // the plan, the write, both outputs; not `done`
    let result = w.committer().commit(lease, plan, "v1").await;
    assert!(matches!(result, Err(CommitError::Unavailable(_))));
}

#[tokio::test]
async fn a_lost_race_applies_nothing_and_holds_the_event_again() {
    let w = World::new();
    let read = w.put("a", "1").await;
    let lease = w.lease().await;
    let (rev_b, _) = (w.put("b", "1").await, ());
    // Between the invocation's read and its commit, someone writes `b`.
    let moved = w.put("b", "changed").await;
    assert!(moved > rev_b);
    let writes = vec![
        set("a", "2", read, Some("1")),
        set("b", "2", rev_b, Some("1")),
    ];
    let plan = plan(&lease, writes);
    let Err(CommitError::Conflict { lease, lost }) =
        w.committer().commit(lease, plan.clone(), "v1").await
    else {
        panic!("no conflict")
    };
    assert_eq!(lost.store, "state");
    assert!(lost.what.contains("\"b\""), "{}", lost.what);
    // `a` was applied first, then put back; nothing was published.
    assert_eq!(w.value("a").await.as_deref(), Some(&b"1"[..]));
    assert_eq!(w.value("b").await.as_deref(), Some(&b"changed"[..]));
    assert_eq!(w.outputs(), 0);
    assert!(matches!(w.record().await, Record::Claimed { .. }));
    // The renewed lease is the one that counts now.
    w.records.done(lease, "v1").await.unwrap();
}

#[tokio::test]
async fn several_writes_are_pending_until_the_commit_is_over() {
    let w = World::new();
    let lease = w.lease().await;
    let plan = plan(&lease, vec![set("a", "1", 0, None), set("b", "1", 0, None)]);
    let lease = w.records.begin_commit(lease, &plan).await.unwrap();
    w.store.cut_after(2); // both writes land, then the runtime "dies"
    assert!(w.committer().finish(lease, &plan, "v1").await.is_err());
    w.store.reconnect();
    let entry = kv::entry(&*w.store, "state", "a").await.unwrap();
    assert!(entry.header(PENDING_HEADER).is_some());
    assert!(!is_settled(&*w.store, &entry.headers).await.unwrap());
    // The next holder finishes it; then the same value reads as committed.
    tokio::time::sleep(LEASE * 2).await;
    let Claim::Resume(lease, Interrupted::Committing(found)) =
        w.records.claim(&event()).await.unwrap()
    else {
        panic!("not resumed")
    };
    w.committer().finish(lease, &found, "v1").await.unwrap();
    assert!(is_settled(&*w.store, &entry.headers).await.unwrap());
    assert_eq!(w.outputs(), 2);
}

/// The plan every crash test cuts through: two key writes, two appends to
/// one subject, two outputs.
async fn crash_plan(w: &World, lease: &Lease) -> CommitPlan {
    let counter = w.put("counter", "10").await;
    plan(
        lease,
        vec![
            set("counter", "11", counter, Some("10")),
            set("total", "5", 0, None),
            append("ev.acct", "opened", Some(0)),
            append("ev.acct", "deposited", None),
        ],
    )
}

async fn recover(w: &World) {
    w.store.reconnect();
    tokio::time::sleep(LEASE * 2).await;
    match w.records.claim(&event()).await.unwrap() {
        Claim::Resume(lease, Interrupted::Committing(plan)) => {
            w.committer().finish(lease, &plan, "v1").await.unwrap()
        }
        Claim::Acquired(lease) => {
            // Cut before the plan was recorded: the handler runs again,
            // with the state it read unchanged.
            let plan = crash_plan(w, &lease).await;
            w.committer()
                .commit(lease, plan.clone(), "v1")
                .await
                .unwrap()
        }
        Claim::AlreadyHandled => {}
        other => panic!("unexpected {other:?}"),
    }
}

async fn assert_applied_once(w: &World) {
    assert_eq!(w.value("counter").await.as_deref(), Some(&b"11"[..]));
    assert_eq!(w.value("total").await.as_deref(), Some(&b"5"[..]));
    assert_eq!(w.events(), ["opened", "deposited"]);
    assert_eq!(w.outputs(), 2);
    assert!(matches!(w.record().await, Record::Done { .. }));
}

#[tokio::test]
async fn a_crash_after_any_write_is_finished_exactly_once() {
    // Writes a full commit makes: the plan, 4 state writes, 2 outputs, done.
    // Losing only the last (`done`) is a failure too: the writes stay
    // pending until a later copy of the event re-applies the plan.
    for order in ORDERS {
        for cut in 0..8 {
            let w = World::with(order);
            let lease = w.lease().await;
            let plan = crash_plan(&w, &lease).await;
            w.store.cut_after(cut);
            let first = w.committer().commit(lease, plan.clone(), "v1").await;
            assert!(first.is_err(), "{order:?}: cut after {cut} writes");
            recover(&w).await;
            assert_applied_once(&w).await;
        }
    }
}

#[tokio::test]
async fn a_resumed_commit_recognises_its_writes_past_the_duplicate_window() {
    for order in ORDERS {
        let w = World::with(order);
        let lease = w.lease().await;
        let plan = crash_plan(&w, &lease).await;
        w.store.cut_after(5); // plan + 4 writes; no outputs
        assert!(
            w.committer()
                .commit(lease, plan.clone(), "v1")
                .await
                .is_err()
        );
        w.store.forget_ids();
        recover(&w).await;
        assert_applied_once(&w).await;
    }
}

#[tokio::test]
async fn an_append_that_loses_undoes_the_writes_before_it() {
    let w = World::new();
    let lease = w.lease().await;
    w.store
        .publish(crate::store::Publish::new("ev.acct", "someone-else"))
        .await
        .unwrap();
    let writes = vec![
        set("total", "5", 0, None),
        append("ev.acct", "mine", Some(0)),
    ];
    let plan = plan(&lease, writes);
    let result = w.committer().commit(lease, plan.clone(), "v1").await;
    assert!(matches!(result, Err(CommitError::Conflict { .. })));
    assert_eq!(w.value("total").await, None, "the key write was undone");
    assert_eq!(w.events(), ["someone-else"]);
}

#[tokio::test]
async fn appends_to_several_subjects_each_follow_their_own_last_event() {
    let w = World::new();
    let lease = w.lease().await;
    let writes = vec![
        append("ev.a", "a1", Some(0)),
        append("ev.b", "b1", Some(0)),
        append("ev.a", "a2", None),
        append("ev.b", "b2", None),
        append("ev.a", "a3", None),
    ];
    let plan = plan(&lease, writes);
    w.committer().commit(lease, plan, "v1").await.unwrap();
    assert_eq!(w.events(), ["a1", "b1", "a2", "b2", "a3"]);
}

#[test]
fn an_undo_restores_the_prior_value_with_its_own_headers_only() {
    let headers = [
        ("Nats-Msg-Id", "their-write"),
        ("KV-Operation", "DEL"),
        ("Traceparent", "00-abc"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()));
    let restore = restore_prior("state", "k", Some(Bytes::from("old")), &headers);
    assert_eq!(restore.payload, Bytes::from("old"));
    let kept: Vec<&str> = restore.headers.iter().map(|(n, _)| n.as_ref()).collect();
    assert_eq!(kept, ["Traceparent"], "{:?}", restore.headers);
}

#[tokio::test]
async fn a_crash_while_undoing_is_undone_by_the_next_holder() {
    for cut in 0..4 {
        let w = World::new();
        let lease = w.lease().await;
        w.put("b", "theirs").await; // makes the second write lose
        let writes = vec![
            set("a", "mine", 0, None),
            append("ev.x", "mine", Some(0)),
            set("b", "mine", 0, None),
        ];
        let plan = plan(&lease, writes);
        let lease = w.records.begin_commit(lease, &plan).await.unwrap();
        // Apply, lose on `b`, then die part-way through the undo.
        w.store.cut_after(2 + 1 + cut);
        let _ = w.committer().finish(lease, &plan, "v1").await;
        w.store.reconnect();
        tokio::time::sleep(LEASE * 2).await;
        match w.records.claim(&event()).await.unwrap() {
            Claim::Resume(lease, Interrupted::Aborting(plan)) => {
                w.committer().undo_and_renew(lease, &plan).await.unwrap();
            }
            Claim::Resume(lease, Interrupted::Committing(plan)) => {
                let again = w.committer().finish(lease, &plan, "v1").await;
                assert!(matches!(again, Err(CommitError::Conflict { .. })));
            }
            Claim::Acquired(_) => {} // the undo had finished
            other => panic!("cut {cut}: unexpected {other:?}"),
        }
        assert_eq!(w.value("a").await, None, "cut {cut}");
        assert!(w.events().is_empty(), "cut {cut}");
        assert_eq!(w.value("b").await.as_deref(), Some(&b"theirs"[..]));
        assert_eq!(w.outputs(), 0);
    }
}

#[tokio::test]
async fn a_plan_too_large_for_a_record_is_refused_before_anything_is_written() {
    let w = World::new();
    let lease = w.lease().await;
    let big = "x".repeat(2000);
    let plan = plan(&lease, vec![set("big", &big, 0, None)]);
    let committer = Committer {
        max_record: 1000,
        ..w.committer()
    };
    let writes = w.store.writes();
    let Err(CommitError::Refused { failure, .. }) =
        committer.commit(lease, plan.clone(), "v1").await
    else {
        panic!("not refused")
    };
    assert_eq!(failure.kind, FailureKind::LimitExceeded);
    assert_eq!(w.store.writes(), writes);

    // A plan of exactly the limit fits.
    let w = World::new();
    let lease = w.lease().await;
    let fitting = self::plan(&lease, vec![set("big", &big, 0, None)]);
    let exact = Committer {
        max_record: serde_json::to_vec(&fitting).unwrap().len(),
        ..w.committer()
    };
    exact.commit(lease, fitting, "v1").await.unwrap();
    assert_eq!(w.value("big").await.as_deref(), Some(big.as_bytes()));
}

#[tokio::test]
async fn an_unclaimed_run_stores_its_outputs_once_and_may_not_change_state() {
    let w = World::new();
    let key = ProcessedEvents::key(&event());
    let outputs = vec![message("out.a", "o1")];
    let with_state = CommitPlan {
        id: new_commit_id(&key),
        writes: vec![set("k", "v", 0, None)],
        outputs: outputs.clone(),
    };
    let failure = (w.committer().commit_unclaimed(&key, with_state, "v1").await).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Output);
    assert_eq!((w.outputs(), w.value("k").await), (0, None));

    let outputs_only = || CommitPlan {
        id: new_commit_id(&key),
        writes: vec![],
        outputs: outputs.clone(),
    };
    let first = w
        .committer()
        .commit_unclaimed(&key, outputs_only(), "v1")
        .await;
    assert!(matches!(first, Ok(UnclaimedRun::Counted)));
    assert_eq!(w.outputs(), 1);
    // A copy run at the same time records second: discarded, its outputs
    // deduplicated by their ids.
    let copy = w
        .committer()
        .commit_unclaimed(&key, outputs_only(), "v1")
        .await;
    assert!(matches!(copy, Ok(UnclaimedRun::Discarded)));
    assert_eq!(w.outputs(), 1);
}
