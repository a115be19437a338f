//! The memory limiter every invocation runs under.
//!
//! A refused growth is not a trap (wasm's `memory.grow` and `table.grow`
//! return -1 and a guest may carry on), so the limiter records it: when
//! the guest then fails anyway (it aborts, or keeps asking until its time
//! is up) the refusal is the reason its dead letter gives.

use wasmtime::ResourceLimiter;

/// Most elements any one table may have. The instance pool reserves this
/// many per table slot (see `engine.rs`), so both allocation strategies
/// enforce the same bound. Rust guests use a few hundred.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Caps the guest's linear memory summed over all its memories
/// (`StoreLimits` caps each memory separately) and records the peak; caps
/// each table at [`MAX_TABLE_ELEMENTS`].
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    pub(super) peak: usize,
    pub(super) exceeded: bool,
    pub(super) table_exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(cap: usize) -> Self {
        MemoryLimiter {
            cap,
            total: 0,
            peak: 0,
            exceeded: false,
            table_exceeded: false,
        }
    }

    /// The growth it refused the guest, if any, for the failure message.
    pub fn refusal(&self) -> Option<String> {
        if self.exceeded {
            let cap = bytesize::ByteSize::b(self.cap as u64);
            Some(format!("tried to grow memory past {cap}"))
        } else if self.table_exceeded {
            Some(format!(
                "tried to grow a table past {MAX_TABLE_ELEMENTS} elements"
            ))
        } else {
            None
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.total - current.min(self.total) + desired;
        if next > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        self.total = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_on_the_sum_of_memories() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        // A second memory of 40 fits; one more byte anywhere does not.
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.memory_growing(40, 41, None).unwrap());
        assert!(limiter.exceeded);
        assert_eq!(limiter.peak, 100);
    }

    #[test]
    fn a_refused_table_growth_is_recorded() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(!limiter.table_exceeded);
        let over = MAX_TABLE_ELEMENTS + 1;
        assert!(
            !limiter
                .table_growing(MAX_TABLE_ELEMENTS, over, None)
                .unwrap()
        );
        assert!(limiter.table_exceeded);
    }
}
