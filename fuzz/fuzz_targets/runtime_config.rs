//! The runtime's config file: any text parses or fails with an error, and
//! what parses says what it means: every duration reaches the server as
//! written (JetStream takes them as signed 64-bit nanoseconds, and the
//! client casts without a check).
#![no_main]

use std::time::Duration;

use eventhost::jetstream::config_file::RuntimeConfig;
use libfuzzer_sys::fuzz_target;

fn fits(duration: Option<Duration>, what: &str) {
    if let Some(d) = duration {
        assert!(
            d.as_nanos() <= i64::MAX as u128,
            "{what} {d:?} was accepted but reaches the server as another value"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = RuntimeConfig::parse(text) else {
        return;
    };
    for stream in &config.streams {
        fits(stream.max_age, "stream max_age");
        fits(stream.duplicate_window, "stream duplicate_window");
    }
    for bucket in &config.buckets {
        fits(bucket.max_age, "bucket max_age");
        let _ = eventhost::store::kv::stream(&bucket.name);
    }
});
