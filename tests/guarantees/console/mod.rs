//! The operator console: the fleet view counted against a known workload,
//! the same from a runtime's `/ui` and from `eventhost console` (which
//! reads NATS alone), served with the headers that keep a browser strict;
//! dead-letter triage ([`dlq`]) and state ([`state`]) through its API; and
//! the pages driven in a real browser ([`browser`]).

mod browser;
mod dlq;
mod state;
mod story;

use std::time::Duration;

use crate::support::chaos::*;
use crate::support::web::*;
use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_view_counts_what_the_handlers_did() {
    let ChaosHost {
        nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start("[retry]\nmax_attempts = 1").await;
    for i in 0..3 {
        send(&js, &format!("ok-{i}"), json!({"action": "ok"})).await;
    }
    send(&js, "rejected", json!({"action": "fail-permanent"})).await;
    assert_eq!(collect(&js, "CHAOS", "chaos.done", 3, WAIT).await.len(), 3);
    dead_letters(&js, "chaos", 1, WAIT).await;

    let settled = |row: &serde_json::Value| row["succeeded"] == 3 && row["dead_lettered"] == 1;
    let row = fleet_row(runtime.admin_port(), "chaos", settled);
    assert_eq!(row["received"], 4, "{row:#}");
    assert_eq!(row["failed"], 1, "{row:#}");
    assert_eq!(row["retried"], 0, "{row:#}");
    assert_eq!(row["state"], "serving", "{row:#}");
    // What JetStream holds: the one dead letter waits, nothing is behind.
    assert_eq!(row["dead_letters"], 1, "{row:#}");
    assert_eq!(row["lag"]["pending"], 0, "{row:#}");

    // A console that runs no handler reads the same from NATS alone.
    let console = ConsoleProcess::start(&nats);
    let same = fleet_row(console.port, "chaos", settled);
    assert_eq!(same["dead_letters"], 1, "{same:#}");
    let view = http_get(console.port, "/ui/api/fleet").json();
    assert_eq!(view["runtimes"].as_array().unwrap().len(), 1, "{view:#}");

    // Traffic between two announcements gives a rate and a latency (sent
    // until it shows, so no window can fall between the events).
    let sending = tokio::spawn({
        let js = js.clone();
        async move {
            for i in 3.. {
                send(&js, &format!("ok-{i}"), json!({"action": "ok"})).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let moving = fleet_row(console.port, "chaos", |row| {
        row["per_second"].as_f64().is_some_and(|r| r > 0.0) && row["p50"].is_string()
    });
    sending.abort();
    let p50 = moving["p50"].as_str().unwrap_or_default();
    assert!(p50.starts_with('≤'), "{moving:#}");
}

#[test]
fn the_console_keeps_the_browser_strict_and_the_page_small() {
    let nats = NatsServer::start();
    let console = ConsoleProcess::start(&nats);
    let page = http_get(console.port, "/ui");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<table id=\"handlers\">"),
        "{}",
        page.body
    );
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("script-src 'self'"), "{}", page.head);
    assert!(policy.contains("frame-ancestors 'none'"), "{}", page.head);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    // Each page with everything it loads: under 200 KiB.
    let pages = [
        ("/ui", "fleet"),
        ("/ui/dlq", "dlq"),
        ("/ui/story", "story"),
        ("/ui/state", "state"),
    ];
    for (page, script) in pages {
        let script = format!("/ui/{script}.js");
        let total: usize = [page, "/ui/common.js", &script, "/ui/console.css"]
            .iter()
            .map(|path| http_get(console.port, path))
            .inspect(|reply| assert_eq!(reply.status, 200, "{}", reply.head))
            .map(|reply| reply.body.len())
            .sum();
        assert!(total < 200 * 1024, "{page}: {total} bytes");
    }
    // A loopback console answers loopback names only: a page whose own
    // name was pointed at 127.0.0.1 (DNS rebinding) cannot read it.
    let rebound = http_get_with(console.port, "/ui/api/fleet", &[("Host", "evil.example")]);
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    let named = http_get_with(console.port, "/ui", &[("Host", "localhost")]);
    assert_eq!(named.status, 200, "{}", named.head);
    // No runtime yet: an empty fleet, said plainly.
    let view = http_get(console.port, "/ui/api/fleet").json();
    assert_eq!(view["handlers"], json!([]), "{view:#}");
    assert_eq!(view["unreadable"], json!([]), "nothing is wrong: {view:#}");
    let queue = http_get(console.port, "/ui/api/dlq?handler=payment").json();
    assert_eq!(
        queue["matching"], 0,
        "no queue yet, so no letter: {queue:#}"
    );
}

/// An admin server opened to the network (for Prometheus) does not open
/// the console with it, unless asked.
#[test]
fn a_runtime_serves_the_console_on_loopback_or_when_asked() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let open = format!("0.0.0.0:{}", free_port());
    let runtime = Runtime::start_with(&nats.url(), &plugins, 0, &["--admin-addr", &open]);
    wait_until("the admin server", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", runtime.admin_port())).is_ok()
    });
    assert_eq!(http_get(runtime.admin_port(), "/metrics").status, 200);
    assert_eq!(http_get(runtime.admin_port(), "/ui").status, 404);
    drop(runtime);

    let open = format!("0.0.0.0:{}", free_port());
    let args = ["--admin-addr", &open, "--console", "on"];
    let runtime = Runtime::start_with(&nats.url(), &plugins, 0, &args);
    wait_until("the admin server", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", runtime.admin_port())).is_ok()
    });
    let page = http_get_with(runtime.admin_port(), "/ui", &[("Host", "console.example")]);
    assert_eq!(page.status, 200, "asked for, on any name: {}", page.head);
}
