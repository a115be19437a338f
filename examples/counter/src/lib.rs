//! Counter: the state tests' handler. Each event adds to a key of the
//! `counters` bucket and reports the new value, so a test can check that
//! every event changed state exactly once, however often it ran.
//!
//! The event's data says what to do (`{"key": "k"}` at its simplest):
//! `sleep_ms` waits between the read and the write (to widen a race),
//! `then` fails after writing (the write must not survive),
//! `fail_until_attempt` fails retryably after writing on the attempts before
//! that one (a dependency that comes back), `bucket` writes
//! elsewhere (to test grants), `fill` writes that many keys of `size` bytes
//! (to test limits), `reports` emits that many reports instead of one (to
//! crash between two outputs).
use eventhost_sdk::kv::Bucket;
use eventhost_sdk::{Emit, Event, HandlerError, config};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Command {
    key: String,
    #[serde(default = "one")]
    by: u64,
    #[serde(default)]
    sleep_ms: u64,
    bucket: Option<String>,
    then: Option<Then>,
    fail_until_attempt: Option<u32>,
    fill: Option<usize>,
    #[serde(default)]
    size: usize,
    reports: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Then {
    FailRetryable,
    FailPermanent,
    Trap,
}

fn one() -> u64 {
    1
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let command: Command = event.json()?;
    let bucket_name = command.bucket.or_else(|| config("bucket"));
    let bucket = Bucket::open(bucket_name.as_deref().unwrap_or("counters"))?;
    for i in 0..command.fill.unwrap_or(0) {
        bucket.put_bytes(&format!("{}.{i}", command.key), &vec![b'x'; command.size])?;
    }
    let value: u64 = bucket.get(&command.key)?.unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(command.sleep_ms));
    let value = value + command.by;
    bucket.put(&command.key, &value)?;
    let attempt = event.attempt();
    if command.fail_until_attempt.is_some_and(|n| attempt < n) {
        return Err(HandlerError::retryable(format!(
            "attempt {attempt} fails, as asked"
        )));
    }
    match command.then {
        Some(Then::FailRetryable) => return Err(HandlerError::retryable("asked to fail")),
        Some(Then::FailPermanent) => return Err(HandlerError::permanent("asked to fail")),
        Some(Then::Trap) => panic!("asked to trap"),
        None => {}
    }
    for report in 0..command.reports.unwrap_or(1) {
        let data = json!({ "key": command.key, "value": value, "input": event.id(),
            "attempt": event.attempt(), "report": report });
        Emit::new("counter.updated", "com.example.counter.updated")
            .json(&data)?
            .send()?;
    }
    Ok(())
}

eventhost_sdk::export_handler!(handle);
