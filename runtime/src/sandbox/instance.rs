//! A compiled, linked handler, and one invocation of it: a fresh instance
//! per event, with its bounds (memory, fuel, a deadline) and the turns that
//! keep long runners from starving the others (see [`super::turns`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloudevents::Event;
use tokio::sync::Semaphore;
use wasmtime::{Engine, Store, UpdateDeadline};

use super::capability::InvocationContext;
use super::config::Config;
use super::secrets::Redactor;
use super::state::InvocationState;
use super::{
    EPOCH_TICK, Effects, EmittedEvent, Handler, HandlerPre, HandlerSpec, Invocation, Stop, to_wit,
    turns, types,
};
use crate::event::trace::TraceContext;
use crate::failure::{Failure, FailureKind};

/// A compiled, linked handler, ready to instantiate per event.
pub struct HandlerComponent {
    engine: Engine,
    slots: Arc<Semaphore>,
    pre: HandlerPre<InvocationState>,
    spec: Arc<HandlerSpec>,
    /// The handler's secrets, kept out of its failure messages and logs.
    secrets: Redactor,
}

impl HandlerComponent {
    pub(super) fn new(
        engine: &Engine,
        slots: Arc<Semaphore>,
        pre: HandlerPre<InvocationState>,
        spec: HandlerSpec,
    ) -> Self {
        // Secrets are `[config]` values: the config capability knows them.
        let secrets = Config::secrets(spec.capabilities.config.as_deref());
        HandlerComponent {
            engine: engine.clone(),
            slots,
            pre,
            spec: Arc::new(spec),
            secrets,
        }
    }

    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// Runs `event` (attempt number `attempt`) through a fresh instance;
    /// `trace` is the handling's span, named in outbound calls.
    /// Never panics and never returns an error of its own: every way a guest
    /// can fail becomes a [`Stop`].
    pub async fn invoke(
        &self,
        event: &Event,
        attempt: u32,
        trace: Option<&TraceContext>,
    ) -> Invocation {
        // Waiting for a slot is not the guest's time: it starts the clock
        // only once it has one. The semaphore is never closed.
        let _slot = self.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let timeout = self.spec.bounds.timeout;
        let invocation = InvocationContext {
            started,
            deadline: started + timeout,
            event: Some(event),
            trace,
            redactor: &self.secrets,
        };
        let mut store = self.new_store(&invocation);

        let input = to_wit(event, attempt);
        let mut instantiation = Duration::ZERO;
        let call = async {
            let handler = self.pre.instantiate_async(&mut store).await?;
            instantiation = started.elapsed();
            handler.call_handle(&mut store, &input).await
        };
        // The epoch callback stops guest code on time; this also bounds time
        // spent inside host calls such as a WASI sleep.
        let outcome = tokio::time::timeout(timeout + EPOCH_TICK * 2, call).await;

        let mut state = store.into_data();
        let usage = state.usage();
        let result = self
            .verdict(outcome, &mut state)
            .map_err(|stop| match stop {
                // A failure's message goes to the log and the dead letter.
                Stop::Failed(mut failure) => {
                    let redacted = self.secrets.redact(&failure.message);
                    if let std::borrow::Cow::Owned(clean) = redacted {
                        failure.message = clean;
                    }
                    Stop::Failed(failure)
                }
                interrupted => interrupted,
            });
        Invocation {
            result,
            elapsed: started.elapsed(),
            instantiation,
            peak_memory: state.memory.peak,
            usage,
        }
    }

    fn verdict(
        &self,
        outcome: Result<
            wasmtime::Result<Result<(), types::HandlerError>>,
            tokio::time::error::Elapsed,
        >,
        state: &mut InvocationState,
    ) -> Result<Effects, Stop> {
        let failed = |kind, message: String| Err(Stop::Failed(Failure::new(kind, message)));
        let bounds = &self.spec.bounds;
        // A refusal fails the invocation whatever the guest returned.
        if let Some(refused) = state.take_refusal() {
            return Err(Stop::Failed(refused));
        }
        if let Some(interruption) = state.take_interruption() {
            return Err(Stop::Interrupted(interruption));
        }
        let stopped = match outcome {
            Ok(Ok(Ok(()))) => {
                return Ok(state.hand_over());
            }
            Ok(Ok(Err(types::HandlerError::Retryable(m)))) => {
                return failed(FailureKind::Retryable, m);
            }
            Ok(Ok(Err(types::HandlerError::Permanent(m)))) => {
                return failed(FailureKind::Permanent, m);
            }
            Err(_) => Failure::new(
                FailureKind::Timeout,
                format!("still running after {:?}", bounds.timeout),
            ),
            Ok(Err(_)) if state.timed_out => Failure::new(
                FailureKind::Timeout,
                format!("interrupted after {:?}", bounds.timeout),
            ),
            Ok(Err(trap)) if trap.downcast_ref() == Some(&wasmtime::Trap::OutOfFuel) => {
                Failure::new(
                    FailureKind::Fuel,
                    format!("used up its fuel ({})", bounds.fuel.unwrap_or_default()),
                )
            }
            Ok(Err(trap)) => Failure::new(FailureKind::Trap, describe_trap(&trap, state)),
        };
        // A refused growth is why a guest fails afterwards: it aborts, or
        // keeps asking until its time or its fuel is up.
        match state.memory.refusal() {
            Some(refusal) => failed(
                FailureKind::MemoryLimit,
                format!("{refusal}; then {stopped}"),
            ),
            None => Err(Stop::Failed(stopped)),
        }
    }

    /// A store for one invocation: fresh state, the memory cap, fuel if
    /// metered, and an epoch callback that yields every tick (queueing for
    /// a turn after the first) and interrupts the guest after `deadline`.
    fn new_store(&self, invocation: &InvocationContext) -> Store<InvocationState> {
        let bounds = &self.spec.bounds;
        let memory = usize::try_from(bounds.memory).unwrap_or(usize::MAX);
        turns::invocation_started(invocation.started);
        let grants = &self.spec.capabilities;
        let state = InvocationState::new(grants, memory, invocation);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        if let Some(fuel) = bounds.fuel {
            store
                .set_fuel(fuel)
                .expect("handlers with fuel limits load into the metered engine");
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let now = Instant::now();
            if now >= ctx.data().deadline {
                ctx.data_mut().timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Past its first tick a guest runs only in turns (see `turns`).
            if now < ctx.data().started + EPOCH_TICK {
                return Ok(UpdateDeadline::Yield(1));
            }
            let turn = ctx.data().turn.clone();
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(turn.next())))
        });
        store
    }

    /// One instance kept for many calls. The runtime never does this (see
    /// the module docs); it exists so the sandbox benchmark can show what a
    /// fresh instance per event costs against reusing one.
    pub async fn reused_instance(&self) -> Result<ReusedInstance> {
        let now = Instant::now();
        let invocation = InvocationContext {
            started: now,
            deadline: now + Duration::from_secs(24 * 60 * 60),
            event: None,
            trace: None,
            redactor: &self.secrets,
        };
        let mut store = self.new_store(&invocation);
        let handler = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)
            .context("instantiating the handler")?;
        Ok(ReusedInstance { store, handler })
    }
}

/// See [`HandlerComponent::reused_instance`].
pub struct ReusedInstance {
    store: Store<InvocationState>,
    handler: Handler,
}

impl ReusedInstance {
    /// Calls `handle` on the kept instance; returns what it emitted.
    pub async fn call(&mut self, event: &Event) -> Result<Vec<EmittedEvent>> {
        let input = to_wit(event, 1);
        let result = self
            .handler
            .call_handle(&mut self.store, &input)
            .await
            .map_err(anyhow::Error::from)
            .context("the guest trapped")?;
        let emitted = self.store.data_mut().hand_over().emitted;
        result.map_err(|e| anyhow::anyhow!("the handler failed: {e:?}"))?;
        Ok(emitted)
    }
}

/// The trap, plus what the guest wrote to stderr (a Rust panic message, say).
fn describe_trap(trap: &wasmtime::Error, state: &InvocationState) -> String {
    let stderr = state.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    // The outermost message is wasmtime's "error while executing at wasm
    // backtrace"; the reason is the trap code (or the innermost cause).
    let reason = match trap.downcast_ref::<wasmtime::Trap>() {
        Some(code) => code.to_string(), // "wasm trap: …"
        None => trap.root_cause().to_string(),
    };
    if stderr.is_empty() {
        reason
    } else {
        format!("{reason}; guest stderr: {stderr}")
    }
}
