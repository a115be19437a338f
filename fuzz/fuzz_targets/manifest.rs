//! The handler manifest: any text either parses into a manifest whose
//! derived values (consumer, grants, bounds, retry delays, HTTP origins)
//! can be computed, or fails with an error; it never panics.
#![no_main]

use eventhost::handler::manifest::HandlerManifest;
use eventhost::sandbox::http::AllowedOrigin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = HandlerManifest::parse(text, "fuzzed") else {
        return;
    };
    // What loading a handler computes from it (config values are left
    // out: a secret's `file` would read any path on this machine).
    let _ = manifest.consumer_name("fuzzed");
    let grant = manifest.emit_grant("fuzzed", Default::default());
    let _ = grant.may_publish("orders.created");
    let _ = manifest.bounds();
    for attempt in 0..=manifest.retry.max_attempts {
        let _ = manifest.retry.allows_another(attempt);
        let _ = manifest.retry.delay_after(attempt);
    }
    if let Some(http) = &manifest.http {
        for origin in &http.allowed_outbound_hosts {
            AllowedOrigin::parse(origin).expect("a validated origin parses");
        }
    }
});
