//! The wasm engines: one per fuel setting, each with its instance pool and
//! epoch ticker.
//!
//! Fuel metering is a property of the whole engine and costs every call a
//! little, so handlers that set `limits.fuel` get their own engine and the
//! others do not pay for it.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::EPOCH_TICK;
use super::limiter::MAX_TABLE_ELEMENTS;

/// Instances that can exist at once per engine, across all handlers.
pub const POOL_SLOTS: u32 = 512;
/// Linear memory each idle slot keeps mapped: the pages a guest touched
/// there are reset in place (only the dirty ones, found with the kernel's
/// `PAGEMAP_SCAN` where it has one, Linux 6.7 and later) instead of being
/// dropped with `madvise`, so the next instance in the slot does not fault
/// them in again. A Rust handler touches about 128 KiB; an interpreter's
/// snapshot (Python, JavaScript) 9 to 13 MiB, which it faulted in afresh for
/// every event before: keeping 32 MiB took the JavaScript payment handler
/// from 834 to 500 µs per event and Python from 2.0 to 1.55 ms, and left
/// small guests as they were (BENCHMARKS.md). The price is memory: a slot
/// keeps what its last instance touched, up to this much.
const KEEP_RESIDENT: usize = 32 << 20;
/// Without `PAGEMAP_SCAN` the kept region is reset whole with `memset` after
/// every instance, so it is kept to what a small handler uses: larger
/// values measured slower for Rust guests.
const KEEP_RESIDENT_WITHOUT_PAGEMAP: usize = 256 << 10;

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
    let keep_resident = if pagemap_scan_available() {
        KEEP_RESIDENT
    } else {
        KEEP_RESIDENT_WITHOUT_PAGEMAP
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_SLOTS)
        // A wasm32-wasip2 component holds a few core instances (the guest,
        // wit-component's shims) and tables but one memory; leave headroom.
        .total_core_instances(POOL_SLOTS * 8)
        .total_tables(POOL_SLOTS * 8)
        .table_elements(MAX_TABLE_ELEMENTS)
        .total_memories(POOL_SLOTS * 2)
        .total_stacks(POOL_SLOTS)
        .linear_memory_keep_resident(keep_resident)
        // Without the ioctl (older kernels) the whole kept region would be
        // reset with `memset` per instance: see `keep_resident`.
        .pagemap_scan(Enabled::Auto)
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

/// Whether the kernel has the `PAGEMAP_SCAN` ioctl (Linux 6.7 and later),
/// which `Enabled::Auto` makes wasmtime use. Wasmtime does not say whether
/// it found it, so the kernel's release is read here.
fn pagemap_scan_available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kernel_at_least(&release, (6, 7))
}

/// Whether a kernel release like `6.18.0-1-amd64` is `minimum` or later.
fn kernel_at_least(release: &str, minimum: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= minimum,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.18.0-1-amd64\n", (6, 7)));
        assert!(kernel_at_least("6.7.0", (6, 7)));
        assert!(kernel_at_least("7.0", (6, 7)));
        assert!(!kernel_at_least("6.6.87-generic", (6, 7)));
        assert!(!kernel_at_least("5.15.0", (6, 7)));
        assert!(!kernel_at_least("", (6, 7)));
    }
}
