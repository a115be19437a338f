//! Chaos: a fault-injection handler for the runtime's own tests.
//!
//! The event's data says what to do: `{"action": "ok"}` emits one
//! `chaos.done` event (carrying the input id, `seq`, the attempt number, the
//! `partitionkey` and the manifest's `tag`, so tests can see who handled
//! what, when); the other actions misbehave in the ways a real
//! handler can, so tests can check that the host contains each of them.
use eventhost_sdk::{Emit, Event, HandlerError};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
enum Action {
    /// Emit one `chaos.done` event carrying the input's `seq` and the
    /// manifest's `tag` config value.
    Ok {
        seq: Option<u64>,
    },
    /// Sleep (through WASI's clock), then behave like `ok`.
    Sleep {
        ms: u64,
        seq: Option<u64>,
    },
    FailRetryable,
    FailPermanent,
    /// Fail with a retryable error on attempts before `attempt`, then
    /// behave like `ok`: a dependency that comes back.
    FailUntil {
        attempt: u32,
        seq: Option<u64>,
    },
    /// Fail permanently while the manifest's `broken` config is `true`,
    /// else behave like `ok`: a bug an operator fixes before a replay.
    FailIfBroken {
        seq: Option<u64>,
    },
    /// Panic: the guest traps.
    Trap,
    /// Spin forever: only the host's timeout stops it.
    Loop,
    /// Allocate `mib` MiB, touching every page.
    Alloc {
        mib: usize,
    },
    /// Emit to an allowed subject, then to one outside the manifest.
    EmitForbidden,
    /// Count this call in a global and emit the count: in a fresh instance
    /// per event it is always 1.
    CountCalls,
    /// Recurse without end: the guest's stack overflows.
    Recurse,
    /// Log one line of `bytes` bytes, then behave like `ok`.
    LogFlood {
        bytes: usize,
    },
    /// Emit `count` events (the host takes at most 1000).
    EmitFlood {
        count: usize,
    },
    // Hostile guests (tests/guarantees/sandbox/hostile.rs).
    /// Grow memory a page at a time, and keep asking once refused.
    GrowLoop,
    /// Emit `total` bytes of data split over `count` events (the host
    /// takes at most 16 MiB in all).
    EmitBytes {
        count: usize,
        total: usize,
    },
    /// Look up a config key of `bytes` bytes (nobody set it), then behave
    /// like `ok`.
    ConfigKey {
        bytes: usize,
    },
    /// Emit on chaos.done with the extension `name` = "x", ignoring a
    /// refusal (reserved names are refused, tests/guarantees/delivery/outputs.rs).
    EmitExtension {
        name: String,
    },
}

/// Each frame keeps a buffer alive so that the recursion is not turned
/// into a loop.
#[allow(unconditional_recursion, reason = "the point: a stack overflow")]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[(depth % 64) as usize]
}

/// Survives from one call to the next only if the instance does.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn done(event: &Event, seq: Option<u64>) -> Result<(), HandlerError> {
    let tag = eventhost_sdk::config("tag").unwrap_or_default();
    Emit::new("chaos.done", "com.example.chaos.done")
        .json(&json!({
            "input": event.id(),
            "seq": seq,
            "tag": tag,
            "attempt": event.attempt(),
            "key": event.extension("partitionkey"),
        }))?
        .send()
}

fn handle(event: Event) -> Result<(), HandlerError> {
    match event.json::<Action>()? {
        Action::Ok { seq } => done(&event, seq),
        Action::Sleep { ms, seq } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            done(&event, seq)
        }
        Action::FailRetryable => Err(HandlerError::retryable("asked to fail (retryable)")),
        Action::FailPermanent => Err(HandlerError::permanent("asked to fail (permanent)")),
        Action::FailUntil { attempt, seq } if event.attempt() >= attempt => done(&event, seq),
        Action::FailUntil { attempt, .. } => Err(HandlerError::retryable(format!(
            "attempt {} of the {attempt} needed",
            event.attempt()
        ))),
        Action::FailIfBroken { seq } => match eventhost_sdk::config("broken").as_deref() {
            Some("true") => Err(HandlerError::permanent("the handler is broken")),
            _ => done(&event, seq),
        },
        Action::Trap => panic!("asked to trap"),
        Action::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Action::Alloc { mib } => {
            let mut blocks = Vec::new();
            for _ in 0..mib {
                blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            Err(HandlerError::permanent(format!(
                "allocated {} MiB without hitting a limit",
                blocks.len()
            )))
        }
        Action::Recurse => {
            let depth = recurse(0);
            Err(HandlerError::permanent(format!(
                "recursed {depth} deep and came back"
            )))
        }
        Action::LogFlood { bytes } => {
            eventhost_sdk::log(eventhost_sdk::Level::Warn, &"x".repeat(bytes));
            done(&event, None)
        }
        Action::EmitFlood { count } => {
            for i in 0..count {
                Emit::new("chaos.done", "com.example.chaos.flood")
                    .json(&json!({ "input": event.id(), "i": i }))?
                    .send()?;
            }
            Ok(())
        }
        Action::GrowLoop => loop {
            std::hint::black_box(core::arch::wasm32::memory_grow(0, 1));
        },
        Action::EmitBytes { count, total } => {
            let each = total / count;
            for i in 0..count {
                let bytes = if i + 1 == count {
                    total - each * i
                } else {
                    each
                };
                Emit::new("chaos.done", "com.example.chaos.bytes")
                    .data("text/plain", vec![b'x'; bytes])
                    .send()?;
            }
            Ok(())
        }
        Action::ConfigKey { bytes } => match eventhost_sdk::config(&"k".repeat(bytes)) {
            None => done(&event, None),
            Some(_) => Err(HandlerError::permanent("a key nobody set has a value")),
        },
        Action::CountCalls => {
            let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            Emit::new("chaos.done", "com.example.chaos.done")
                .json(&json!({ "input": event.id(), "calls": calls }))?
                .send()
        }
        Action::EmitExtension { name } => {
            let _ = Emit::new("chaos.done", "com.example.chaos.extended")
                .json(&json!({ "input": event.id() }))?
                .extension(&name, "x")
                .send();
            Ok(())
        }
        Action::EmitForbidden => {
            done(&event, None)?;
            // Ignore the refusal: the host must fail the invocation anyway.
            let _ = Emit::new("forbidden.subject", "com.example.chaos.sneaky").send();
            Ok(())
        }
    }
}

eventhost_sdk::export_handler!(handle);
