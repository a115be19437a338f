//! The event-sourced account under random concurrent deposits and
//! withdrawals from two replicas. The stored events are read back with a
//! plain consumer and folded here, independently of the handler: the balance
//! never goes negative, every command is accounted for exactly once, and
//! every snapshot agrees with the fold.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(150);
const ACCOUNTS: [&str; 4] = ["a1", "a2", "a3", "a4"];

fn command(id: String, data: Value) -> TestEvent {
    TestEvent::new(id, "com.example.account.command", data)
}

/// A stored account event: (sequence order is stream order) type and amount.
struct Stored {
    ty: String,
    amount: u64,
}

fn parse(message: &RawMessage) -> (String, Stored) {
    let event = message.payload_json();
    let account = message.subject.rsplit('.').next().unwrap().to_string();
    let stored = Stored {
        ty: event["type"].as_str().unwrap().to_string(),
        amount: event["data"]["amount"].as_u64().unwrap_or(0),
    };
    (account, stored)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commands_from_two_replicas_keep_every_account_consistent() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    // Without ordering, so that both replicas take commands of one account
    // at once and the event store's optimistic concurrency is what keeps
    // each account consistent. (With the example's `ordering = "key"` one
    // replica at a time holds the consumer: tests/guarantees/fleet/leases.rs.)
    let manifest = std::fs::read_to_string(repo_root().join("examples/account/handler.toml"))
        .unwrap()
        .replace("ordering = \"key\"", "ordering = \"none\"");
    plugins.install("account", "account", &manifest);
    let a = Runtime::start(&nats, &plugins, 1);
    let b = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    for account in ACCOUNTS {
        let open = json!({ "command": "open", "account": account, "owner": account });
        publish(
            &js,
            "accounts.commands",
            command(format!("open-{account}"), open).structured(),
        )
        .await;
    }
    collect_raw(&js, "ACCOUNTS", "accounts.events.>", ACCOUNTS.len(), SETTLE).await;

    // Withdrawals average more than deposits, so many are refused.
    let mut deposits: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut withdrawals: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for i in 0..400 {
        let account = ACCOUNTS[fastrand::usize(..ACCOUNTS.len())];
        let (kind, amount) = match fastrand::bool() {
            true => ("deposit", fastrand::u64(1..=100)),
            false => ("withdraw", fastrand::u64(1..=150)),
        };
        let list = if kind == "deposit" {
            &mut deposits
        } else {
            &mut withdrawals
        };
        list.entry(account).or_default().push(amount);
        let data = json!({ "command": kind, "account": account, "amount": amount });
        let message = command(format!("cmd-{i}"), data);
        let wire = if i % 2 == 0 {
            message.structured()
        } else {
            message.binary()
        };
        publish(&js, "accounts.commands", wire).await;
    }
    eventually(
        "the commands to settle",
        SETTLE,
        || consumer_state(&js, "ACCOUNTS", "account"),
        |(pending, ack_pending, _)| *pending == 0 && *ack_pending == 0,
    )
    .await;

    let expected_events = ACCOUNTS.len()
        + deposits.values().map(Vec::len).sum::<usize>()
        + withdrawals.values().map(Vec::len).sum::<usize>();
    // Every event and every refusal, as stored once all settled.
    let events = stored_messages(&js, "ACCOUNTS", "accounts.events.>").await;
    let refused = stored_messages(&js, "ACCOUNTS", "accounts.withdrawal-rejected").await;
    assert_eq!(events.len() + refused.len(), expected_events);

    let mut history: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for message in &events {
        let (account, stored) = parse(message);
        history.entry(account).or_default().push(stored);
    }
    let mut refusals: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for message in &refused {
        let data = &message.cloudevent()["data"];
        let account = data["account"].as_str().unwrap().to_string();
        refusals
            .entry(account)
            .or_default()
            .push(data["amount"].as_u64().unwrap());
    }

    let snapshots = bucket_json(&js, "account-snapshots").await;
    assert!(!snapshots.is_empty(), "snapshots were written");
    for account in ACCOUNTS {
        let events = &history[account];
        assert_eq!(events[0].ty, "com.example.account.opened");
        let mut balance: i64 = 0;
        let (mut deposited, mut withdrawn) = (Vec::new(), Vec::new());
        for event in &events[1..] {
            match event.ty.as_str() {
                "com.example.account.deposited" => {
                    balance += event.amount as i64;
                    deposited.push(event.amount);
                }
                "com.example.account.withdrawn" => {
                    balance -= event.amount as i64;
                    withdrawn.push(event.amount);
                }
                other => panic!("unexpected {other}"),
            }
            assert!(balance >= 0, "{account} went negative: {balance}");
        }
        // Each command became exactly one event or one refusal.
        let sorted = |mut v: Vec<u64>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(deposited),
            sorted(deposits.get(account).cloned().unwrap_or_default())
        );
        let mut decided = withdrawn;
        decided.extend(refusals.get(account).cloned().unwrap_or_default());
        assert_eq!(
            sorted(decided),
            sorted(withdrawals.get(account).cloned().unwrap_or_default())
        );
        if let Some(snapshot) = snapshots.get(account) {
            assert_snapshot_agrees(&js, account, snapshot).await;
        }
    }
    let conflicts: f64 = [&a, &b]
        .iter()
        .map(|r| r.metric("eventhost_state_conflicts_total", &[]))
        .sum();
    assert!(conflicts > 0.0, "the replicas raced on accounts");
    // Every stored event was counted once, by the replica that committed it.
    let appended: f64 = [&a, &b]
        .iter()
        .map(|r| r.metric("eventhost_eventstore_events_appended_total", &[]))
        .sum();
    assert_eq!(appended, events.len() as f64);
}

/// A snapshot's balance is the fold of the events up to its version.
async fn assert_snapshot_agrees(
    js: &async_nats::jetstream::Context,
    account: &str,
    snapshot: &Value,
) {
    let version = snapshot["version"].as_u64().unwrap();
    let subject = format!("accounts.events.{account}");
    let stream = js.get_stream("ACCOUNTS").await.unwrap();
    let mut balance = 0i64;
    let mut after = 0;
    loop {
        let Ok(message) = stream
            .direct_get_next_for_subject(subject.as_str(), Some(after + 1))
            .await
        else {
            break;
        };
        if message.sequence > version {
            break;
        }
        after = message.sequence;
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        let amount = event["data"]["amount"].as_i64().unwrap_or(0);
        match event["type"].as_str().unwrap() {
            "com.example.account.deposited" => balance += amount,
            "com.example.account.withdrawn" => balance -= amount,
            _ => {}
        }
    }
    assert_eq!(
        after, version,
        "{account}: the snapshot names a stored event"
    );
    assert_eq!(
        snapshot["balance"].as_i64().unwrap(),
        balance,
        "{account}: snapshot {snapshot}"
    );
}
