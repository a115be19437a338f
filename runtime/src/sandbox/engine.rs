//! The wasm engines: one per fuel setting, each with its instance pool and
//! epoch ticker.
//!
//! Fuel metering is a property of the whole engine and costs every call a
//! little, so handlers that set `limits.fuel` get their own engine and the
//! others do not pay for it.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::EPOCH_TICK;
use super::limiter::MAX_TABLE_ELEMENTS;

/// Instances that can exist at once per engine, across all handlers.
pub const POOL_SLOTS: u32 = 512;
/// Linear memory each idle slot keeps mapped: the pages a guest dirtied
/// there are reset with `memset` instead of `madvise`, so the next instance
/// in the slot takes no page faults on them. 256 KiB holds the whole memory
/// of a small handler built with a 64 KiB stack (see `examples/.cargo`);
/// larger values measured slower, because more has to be reset.
const KEEP_RESIDENT: usize = 256 << 10;

pub struct EngineSet {
    pub engine: Engine,
    /// One permit per pool slot: invocations wait for a free slot rather
    /// than fail when every slot is busy.
    pub slots: Arc<Semaphore>,
}

/// The pooling allocator: instances reuse pre-reserved slots (memory, tables,
/// fiber stack) instead of mapping and unmapping their own, which is most of
/// what a fresh instance costs.
fn pooling() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_SLOTS)
        // A wasm32-wasip2 component holds a few core instances (the guest,
        // wit-component's shims) and tables but one memory; leave headroom.
        .total_core_instances(POOL_SLOTS * 8)
        .total_tables(POOL_SLOTS * 8)
        .table_elements(MAX_TABLE_ELEMENTS)
        .total_memories(POOL_SLOTS * 2)
        .total_stacks(POOL_SLOTS)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10);
    pool
}

impl EngineSet {
    pub fn new(fuel: bool) -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        // Component-model async is unused; without it a call is cheaper.
        config.concurrency_support(false);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling()));
        // The pool reserves terabytes of address space up front (a 4 GiB
        // reservation per memory slot, never touched). Where that is not
        // allowed (`ulimit -v`, valgrind) run without it, only slower.
        let engine = Engine::new(&config).or_else(|err| {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot reserve the instance pool; allocating each instance on demand"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)
        });
        let engine = engine
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        spawn_epoch_ticker(&engine);
        Ok(EngineSet {
            engine,
            slots: Arc::new(Semaphore::new(POOL_SLOTS as usize)),
        })
    }
}

/// Advances the epoch until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("eventhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
