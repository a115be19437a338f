//! Running the runtime as an operator does: stopping it with SIGINT (the
//! first signal drains, a second one exits at once) or SIGTERM, connecting
//! with a `token@` URL to a server that requires a token and with a creds
//! file to one in operator mode, replicas sharing a consumer, a NATS
//! restart, the compiled-code cache across restarts, and declarations
//! JetStream refuses at start tried again.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn interrupt(runtime: &Runtime) {
    let pid = runtime.pid().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_in_flight_events_and_a_second_signal_exits_at_once() {
    let limits = "[limits]\ntimeout = \"10s\"";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(limits).await;
    send(&js, "finishing", json!({"action": "sleep", "ms": 2000})).await;
    wait_for_ack_pending(&js, "CHAOS", "chaos", 1).await;
    interrupt(&runtime);
    let status = runtime.wait_for_exit(WAIT).expect("exits after draining");
    assert_eq!(status.code(), Some(0));
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["finishing".to_string()].into());
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));

    // A second signal does not wait for the event in flight.
    let mut runtime = Runtime::start(&nats, &plugins, 1);
    send(&js, "cut-off", json!({"action": "sleep", "ms": 8000})).await;
    wait_for_ack_pending(&js, "CHAOS", "chaos", 1).await;
    interrupt(&runtime);
    wait_until("the drain to start", WAIT, || {
        !runtime
            .logs_with_message("shutdown requested: finishing in-flight events")
            .is_empty()
    });
    interrupt(&runtime);
    let status = runtime
        .wait_for_exit(WAIT)
        .expect("exits on the second signal");
    assert_eq!(status.code(), Some(130));
    assert!(
        runtime.outcomes("succeeded").is_empty(),
        "the event in flight was not waited for"
    );
    // Unsettled, it is handled by whoever comes next.
    let _next = Runtime::start(&nats, &plugins, 1);
    let done = collect(&js, "CHAOS", "chaos.done", 2, Duration::from_secs(90)).await;
    assert_eq!(inputs_of(&done).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_url_is_used_and_never_logged() {
    const TOKEN: &str = "s3cr3t-t0ken";
    let nats = NatsServer::start_with(&["--auth", TOKEN]);
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &chaos_manifest(""));
    let url = format!("nats://{TOKEN}@127.0.0.1:{}", nats.port);
    let runtime = Runtime::start_at(&url, &plugins, 1);

    let authed = async_nats::ConnectOptions::with_token(TOKEN.into())
        .connect(format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(authed);
    send(&js, "authorised", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["authorised".to_string()].into());
    assert!(!runtime.raw_log().contains(TOKEN), "the token was logged");

    // The control: without the token the server turns a client away.
    let refused = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(["publish", "chaos.in", "--type", "t", "--data", "{}"])
        .env("EVENTHOST_NATS_URL", nats.url())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "connected without the token");
    let wrong = format!("nats://wrong@127.0.0.1:{}", nats.port);
    let refused = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(["publish", "chaos.in", "--type", "t", "--data", "{}"])
        .env("EVENTHOST_NATS_URL", &wrong)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "connected with a wrong token");
}

/// `--creds` with a real creds file, against a server in operator mode
/// (decentralized JWT auth; see tests/fixtures/creds): the runtime connects
/// and handles an event, and without the file the server turns a client
/// away.
#[tokio::test(flavor = "multi_thread")]
async fn a_creds_file_authenticates_against_a_server_in_operator_mode() {
    let fixtures = repo_root().join("tests/fixtures/creds");
    let (conf, creds) = (fixtures.join("server.conf"), fixtures.join("user.creds"));
    let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &chaos_manifest(""));
    let runtime = Runtime::start_with(
        &nats.url(),
        &plugins,
        1,
        &["--creds", creds.to_str().unwrap()],
    );

    let client = async_nats::ConnectOptions::with_credentials_file(creds.clone())
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    send(&js, "with-creds", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["with-creds".to_string()].into());
    let seed = std::fs::read_to_string(&creds).unwrap();
    let seed = seed.lines().find(|l| l.starts_with("SU")).unwrap();
    assert!(!runtime.raw_log().contains(seed), "the seed was logged");

    // The control: without the creds the server turns a client away.
    let refused = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(["publish", "chaos.in", "--type", "t", "--data", "{}"])
        .env("EVENTHOST_NATS_URL", nats.url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "connected without creds");
    assert!(stderr.contains("authorization violation"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runtimes_on_one_consumer_split_the_work_and_handle_each_event_once() {
    let ChaosHost {
        nats,
        plugins,
        runtime: first,
        js,
    } = ChaosHost::start("[limits]\nconcurrency = 4").await;
    let second = Runtime::start(&nats, &plugins, 1);

    const EVENTS: usize = 120;
    for i in 0..EVENTS {
        let action = json!({"action": "sleep", "ms": 15, "seq": i});
        send(&js, &format!("e-{i}"), action).await;
    }
    let done = collect(&js, "CHAOS", "chaos.done", EVENTS, Duration::from_secs(60)).await;
    assert_eq!(done.len(), EVENTS);
    assert_eq!(inputs_of(&done).len(), EVENTS);

    let handled_by = |runtime: &Runtime| -> BTreeSet<String> {
        runtime
            .outcomes("succeeded")
            .iter()
            .map(|l| l["span"]["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (handled_by(&first), handled_by(&second));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both take part: {} and {}",
        a.len(),
        b.len()
    );
    assert!(a.is_disjoint(&b), "no event is handled by both");
    assert_eq!(a.len() + b.len(), EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_events_and_hands_back_the_rest() {
    let limits = "[limits]\ntimeout = \"5s\"\nconcurrency = 4";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(limits).await;
    const EVENTS: usize = 8;
    for i in 0..EVENTS {
        let action = json!({"action": "sleep", "ms": 1500});
        send(&js, &format!("slow-{i}"), action).await;
    }
    // Four are being handled when the signal arrives; the client may have
    // prefetched some of the others.
    wait_for_ack_pending(&js, "CHAOS", "chaos", 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered = consumer_state(&js, "CHAOS", "chaos").await.1;
    assert!(delivered >= 4, "{delivered} delivered");

    let status = runtime.terminate();
    assert!(status.success(), "exit status {status:?}");
    let done = collect(&js, "CHAOS", "chaos.done", 4, WAIT).await;
    assert_eq!(done.len(), 4, "exactly the started events finished");
    assert!(runtime.raw_log().contains("returned prefetched messages") || delivered == 4);

    // A replica taking over gets the rest within seconds, not after the 30 s
    // ack wait.
    let _successor = Runtime::start(&nats, &plugins, 1);
    let done = collect(&js, "CHAOS", "chaos.done", EVENTS, Duration::from_secs(15)).await;
    assert_eq!(inputs_of(&done).len(), EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_rides_out_a_nats_restart() {
    let ChaosHost {
        mut nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("").await;
    send(&js, "before", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;

    nats.restart();
    let js = nats.jetstream().await;
    send(&js, "after", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 2, Duration::from_secs(60)).await;
    assert_eq!(
        inputs_of(&done),
        ["after", "before"].map(String::from).into()
    );
    assert!(runtime.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_code_is_cached_across_restarts_and_a_bad_entry_is_rebuilt() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &chaos_manifest(""));
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let start = || Runtime::start_with(&nats.url(), &plugins, 1, &["--cache-dir", cache_dir]);
    let cache_use = |runtime: &Runtime| {
        runtime.logs_with_message("handler loaded")[0]["compiled_cache"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let mut first = start();
    assert_eq!(cache_use(&first), "miss");
    first.terminate();
    let mut second = start();
    assert_eq!(cache_use(&second), "hit");
    second.terminate();

    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"not compiled code").unwrap();
    let third = start();
    assert_eq!(cache_use(&third), "miss", "a bad entry is compiled afresh");
    assert_eq!(
        third
            .logs_with_message("unusable compiled-code cache entry; compiling again")
            .len(),
        1
    );
    let js = nats.jetstream().await;
    send(&js, "after-rebuild", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn declarations_jetstream_refuses_at_start_are_tried_again() {
    // Another stream captures the chaos handler's subjects, so JetStream
    // refuses the CHAOS stream until that one is gone: a stand-in for a
    // cluster still electing its leaders when the runtime starts.
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let squatter = async_nats::jetstream::stream::Config {
        name: "SQUATTER".into(),
        subjects: vec!["chaos.>".into()],
        ..Default::default()
    };
    js.create_stream(squatter).await.unwrap();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &chaos_manifest(""));
    let args = ["--plugins", plugins.path().to_str().unwrap()];
    let mut runtime = Runtime::launch(&nats.url(), &args, TEST_STREAMS, &[]);

    let refused = "JetStream did not take the declarations yet";
    wait_until("three refused declarations", WAIT, || {
        runtime.logs_with_message(refused).len() >= 3
    });
    assert!(
        runtime.is_running(),
        "it keeps trying:\n{}",
        runtime.raw_log()
    );
    assert!(runtime.logs_with_message("consuming").is_empty());

    js.delete_stream("SQUATTER").await.unwrap();
    runtime.wait_consuming(1);
    send(&js, "after-the-refusals", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["after-the-refusals".to_string()].into());
}
