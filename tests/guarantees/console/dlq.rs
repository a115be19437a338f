//! Dead-letter triage through the console's API: a filter finds the
//! letters, a letter's story is whole, bad input gets a clear answer, an
//! action without a known token (or from another site) is refused and
//! changes nothing, and a replay after a fix is handled once per event,
//! its new fate read from the event's record.

use std::time::Duration;

use crate::support::chaos::*;
use crate::support::web::*;
use crate::support::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
pub const OPERATOR: &str = "ops";
pub const TOKEN: &str = "console-test-token-0001";

pub fn manifest(broken: bool) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n\
         [retry]\nmax_attempts = 1\n[config]\ntag = \"v1\"\nbroken = {broken}\n"
    )
}

/// A runtime whose console knows the operator token.
pub fn runtime_with_token(nats: &NatsServer, plugins: &Plugins) -> Runtime {
    let token = format!("{OPERATOR}:{TOKEN}");
    Runtime::start_env(
        &nats.url(),
        plugins,
        1,
        &[],
        &[("EVENTHOST_CONSOLE_TOKEN", &token)],
    )
}

fn letters(port: u16, query: &str) -> Value {
    let reply = http_get(port, &format!("/ui/api/dlq?handler=chaos{query}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn act(port: u16, action: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    http_post(
        port,
        &format!("/ui/api/dlq/{action}"),
        headers,
        &body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_found_opened_replayed_and_purged() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &manifest(true));
    let runtime = runtime_with_token(&nats, &plugins);
    let js = nats.jetstream().await;
    for id in ["broken-1", "broken-2", "broken-3"] {
        send(&js, id, json!({"action": "fail-if-broken"})).await;
    }
    send(&js, "rejected", json!({"action": "fail-permanent"})).await;
    send(&js, "flaky", json!({"action": "fail-retryable"})).await;
    dead_letters(&js, "chaos", 5, WAIT).await;
    let port = runtime.admin_port();

    // Filters, each seen to keep some letters and drop others.
    assert_eq!(letters(port, "")["matching"], 5);
    let broken = letters(port, "&text=IS%20BROKEN");
    assert_eq!(broken["matching"], 3, "{broken:#}");
    assert_eq!(letters(port, "&kind=permanent")["matching"], 4);
    assert_eq!(letters(port, "&kind=retryable")["matching"], 1);
    assert_eq!(letters(port, "&older_than=1h")["matching"], 0);
    assert_eq!(letters(port, "&newer_than=1h")["matching"], 5);
    assert_eq!(letters(port, "&type=com.example.chaos")["matching"], 5);
    assert_eq!(letters(port, "&type=com.example.other")["matching"], 0);

    // One letter's story.
    let sequence = broken["letters"][0]["sequence"].as_u64().unwrap();
    let story = http_get(port, &format!("/ui/api/dlq/chaos/{sequence}")).json();
    assert_eq!(
        story["payload"]["data"]["action"], "fail-if-broken",
        "{story:#}"
    );
    assert_eq!(story["error_kind"], "permanent", "{story:#}");
    assert_eq!(story["record_state"], "dead_lettered", "{story:#}");
    let facts = story["facts"].to_string();
    assert!(facts.contains("Eventhost-Original-Subject"), "{story:#}");

    // Bad input: a clear answer, never a trace.
    for (path, status, says) in [
        (
            "/ui/api/dlq?handler=chaos&older_than=banana",
            400,
            "not a duration",
        ),
        ("/ui/api/dlq?handler=../etc", 400, "handler"),
        (
            "/ui/api/dlq/chaos/999999",
            404,
            "no dead letter at sequence 999999",
        ),
        ("/ui/api/dlq/chaos/abc", 400, "abc"),
        ("/ui/api/record?ref=nonsense", 400, "not a record reference"),
    ] {
        let reply = http_get(port, path);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(says), "{path}: {error}");
    }
    let long = "x".repeat(300);
    let reply = http_get(port, &format!("/ui/api/dlq?handler=chaos&text={long}"));
    assert_eq!(reply.status, 400, "{}", reply.body);

    // Refused, and nothing changes: no token, an unknown one, another
    // site, not JSON; a console given no token acts for nobody.
    let selection = json!({"filter": {"handler": "chaos", "text": "is broken"}});
    let bearer = format!("Bearer {TOKEN}");
    let json_type = ("Content-Type", "application/json");
    for (headers, status) in [
        (vec![json_type], 401),
        (
            vec![json_type, ("Authorization", "Bearer not-the-right-token")],
            401,
        ),
        (
            vec![
                json_type,
                ("Authorization", &bearer),
                ("Origin", "http://evil.example"),
            ],
            403,
        ),
        (
            vec![
                json_type,
                ("Authorization", &bearer),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            403,
        ),
        (
            vec![("Content-Type", "text/plain"), ("Authorization", &bearer)],
            415,
        ),
    ] {
        let reply = act(port, "replay", &headers, &selection);
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.body);
    }
    let reader = ConsoleProcess::start(&nats);
    let reply = act(
        reader.port,
        "purge",
        &[json_type, ("Authorization", &bearer)],
        &selection,
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("actions are off"), "{}", reply.body);
    assert_eq!(
        letters(port, "")["matching"],
        5,
        "a refused action changed the queue"
    );

    // Fix the handler, then replay what the filter finds.
    drop(runtime);
    plugins.install("chaos", "chaos", &manifest(false));
    let runtime = runtime_with_token(&nats, &plugins);
    let port = runtime.admin_port();
    let auth = [json_type, ("Authorization", bearer.as_str())];
    let report = act(port, "replay", &auth, &selection);
    assert_eq!(report.status, 200, "{}", report.body);
    let report = report.json();
    assert_eq!(report["done"].as_array().unwrap().len(), 3, "{report:#}");
    assert_eq!(report["failed"], json!([]), "{report:#}");
    let counts = outputs_by_input(&js, 3).await;
    let once: std::collections::BTreeMap<String, usize> =
        [("broken-1", 1), ("broken-2", 1), ("broken-3", 1)]
            .map(|(id, n)| (id.to_string(), n))
            .into();
    assert_eq!(counts, once, "each replayed event is handled once");
    for done in report["done"].as_array().unwrap() {
        let record = done["record"].as_str().unwrap();
        let path = format!("/ui/api/record?ref={record}");
        wait_until("the replayed event's record to say done", WAIT, || {
            http_get(port, &path).json()["state"] == "succeeded"
        });
    }
    let actions = runtime.logs_with_message("console action on dead letters");
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["operator"], OPERATOR);
    assert_eq!(actions[0]["action"], "replay");
    assert_eq!(actions[0]["done"], 3);
    let each = runtime.logs_with_message("console action on a dead letter");
    assert_eq!(
        each.len(),
        3,
        "logged letter by letter, as it goes: {each:?}"
    );
    assert!(
        each.iter()
            .all(|line| line["operator"] == OPERATOR && line["ok"] == true)
    );

    // The rest, purged by selection: a letter named twice is taken once,
    // one that is gone is reported and the others still go.
    let left = letters(port, "");
    assert_eq!(left["matching"], 2, "{left:#}");
    let first = left["letters"][0]["sequence"].clone();
    let second = left["letters"][1]["sequence"].clone();
    let purge = json!({"handler": "chaos", "sequences": [first, first, second, 999999]});
    let report = act(port, "purge", &auth, &purge).json();
    assert_eq!(report["done"].as_array().unwrap().len(), 2, "{report:#}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["sequence"], 999999, "{report:#}");
    assert_eq!(letters(port, "")["matching"], 0);
}
