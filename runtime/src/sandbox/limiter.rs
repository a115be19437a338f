//! The memory limiter every invocation runs under.

use wasmtime::ResourceLimiter;

/// Caps the guest's linear memory summed over all its memories
/// (`StoreLimits` caps each memory separately) and records the peak.
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    pub(super) peak: usize,
    pub(super) exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(cap: usize) -> Self {
        MemoryLimiter {
            cap,
            total: 0,
            peak: 0,
            exceeded: false,
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
        Ok(desired <= 100_000)
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
}
