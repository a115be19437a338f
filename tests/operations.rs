//! Running the runtime as an operator does: stopping it with SIGINT (the
//! first signal drains, a second one exits at once) and connecting with a
//! `token@` URL to a server that requires a token, and with a creds file
//! to one in operator mode.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::chaos::*;
use support::*;

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
