//! Account: an event-sourced bank account (the seeds' event sourcing).
//!
//! Commands arrive on `accounts.commands`; the account's history is the
//! events on `accounts.events.<id>`. The handler loads the latest snapshot
//! (a key of the `account-snapshots` bucket) and folds the events after it,
//! decides, and appends the new event on condition that nothing was
//! appended since it read. A withdrawal over the balance is refused with an
//! `accounts.withdrawal-rejected` event. Every `snapshot_every` events it
//! stores a snapshot, so loading never replays the whole history.
use eventhost_sdk::{Emit, Event, HandlerError, config_or, events, kv::Bucket};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
enum Command {
    Open { account: String, owner: String },
    Deposit { account: String, amount: u64 },
    Withdraw { account: String, amount: u64 },
}

/// The account as of event `version` (a stream sequence).
#[derive(Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
    version: u64,
}

impl Account {
    fn apply(&mut self, event: &Event) -> Result<(), HandlerError> {
        let data: serde_json::Value = event.json()?;
        let amount = data["amount"].as_u64().unwrap_or(0);
        match event.ty() {
            "com.example.account.opened" => self.owner = data["owner"].as_str().map(String::from),
            "com.example.account.deposited" => self.balance += amount,
            "com.example.account.withdrawn" => {
                let overdrawn = || HandlerError::permanent("the history overdraws the account");
                self.balance = self.balance.checked_sub(amount).ok_or_else(overdrawn)?
            }
            other => return Err(HandlerError::permanent(format!("unknown event {other}"))),
        }
        Ok(())
    }
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let command: Command = event.json()?;
    let (Command::Open { account: id, .. }
    | Command::Deposit { account: id, .. }
    | Command::Withdraw { account: id, .. }) = &command;
    let subject = format!("accounts.events.{id}");

    // Load: the snapshot, then the events after it.
    let snapshots = Bucket::open("account-snapshots")?;
    let mut account: Account = snapshots.get(id)?.unwrap_or_default();
    let history = events::read(&subject, account.version)?;
    for stored in &history {
        account.apply(&stored.event)?;
        account.version = stored.sequence;
    }
    if history.len() as u64 >= config_or("snapshot_every", 5)? {
        snapshots.put(id, &account)?;
    }

    // Decide.
    let new = |ty, data| Emit::new(&subject, ty).json(&data);
    let decided = match (&command, &account.owner) {
        (Command::Open { owner, .. }, None) => {
            new("com.example.account.opened", json!({ "owner": owner }))?
        }
        (Command::Open { .. }, Some(_)) => {
            return Err(HandlerError::permanent(format!("{id} is already open")));
        }
        (_, None) => return Err(HandlerError::permanent(format!("{id} is not open"))),
        (Command::Deposit { amount, .. }, _) => {
            new("com.example.account.deposited", json!({ "amount": amount }))?
        }
        (Command::Withdraw { amount, .. }, _) if *amount > account.balance => {
            let refusal = json!({ "account": id, "amount": amount, "balance": account.balance });
            return Emit::new(
                "accounts.withdrawal-rejected",
                "com.example.account.withdrawal-rejected",
            )
            .json(&refusal)?
            .send();
        }
        (Command::Withdraw { amount, .. }, _) => {
            new("com.example.account.withdrawn", json!({ "amount": amount }))?
        }
    };
    events::append(account.version, [decided])
}

eventhost_sdk::export_handler!(handle);
