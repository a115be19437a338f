//! Crash points for the tests that kill a runtime at each step of a commit.
//!
//! Compiled in only with the `failpoints` feature (the test build turns it
//! on); otherwise [`hit`] is an empty inline function. With the feature,
//! `EVENTHOST_FAILPOINTS="commit.planned:3"` aborts the process (SIGABRT, no
//! destructors, no flush: a crash) the third time the point is reached.

/// Reached a named point; crash here if the environment says so.
#[inline(always)]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether `name` is armed: lets a point first make the state it is about
/// (a message flushed to the server, say) without costing unarmed builds.
#[inline(always)]
pub fn armed(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return armed::points()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(name);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::OnceLock;

    /// Point name → hits left before the crash.
    pub(super) fn points() -> &'static Mutex<HashMap<String, u64>> {
        static POINTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("EVENTHOST_FAILPOINTS").unwrap_or_default();
            let points = spec.split(',').filter(|s| !s.is_empty()).map(|item| {
                let (name, count) = item.split_once(':').unwrap_or((item, "1"));
                (name.to_string(), count.parse().unwrap_or(1))
            });
            Mutex::new(points.collect())
        })
    }

    pub fn hit(name: &str) {
        let mut points = points().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(left) = points.get_mut(name) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                eprintln!("failpoint {name}: crashing");
                std::process::abort();
            }
        }
    }
}
