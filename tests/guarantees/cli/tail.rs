//! The command line as a user drives it: `publish` and `tail`, and
//! connecting with credentials in the NATS URL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use async_nats::jetstream::stream;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn publish_and_tail_round_trip_in_both_content_modes() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    js.create_stream(stream::Config {
        name: "DEMO".into(),
        subjects: vec!["demo.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    let mut tail = eventhost(&nats)
        .args(["tail", "demo.>", "--count", "2", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tail_err = BufReader::new(tail.stderr.take().unwrap());
    let mut line = String::new();
    tail_err.read_line(&mut line).unwrap();
    assert!(line.starts_with("tail: listening on demo.>"), "{line}");

    let publish = |extra: &[&str]| {
        let output = eventhost(&nats)
            .args([
                "publish",
                "demo.orders",
                "--type",
                "com.example.demo",
                "--source",
                "/cli-test",
            ])
            .args(["--data", r#"{"n":1}"#, "--ext", "correlationid=c-7"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let structured_id = publish(&[]);
    let binary_id = publish(&["--binary", "--id", "chosen-id"]);
    assert_eq!(binary_id, "chosen-id");
    assert_eq!(
        structured_id.len(),
        36,
        "a UUID by default: {structured_id}"
    );

    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    for (event, id) in events.iter().zip([&structured_id, &binary_id]) {
        assert_eq!(&event["id"], id);
        assert_eq!(event["type"], "com.example.demo");
        assert_eq!(event["source"], "/cli-test");
        assert_eq!(event["correlationid"], "c-7");
        assert_eq!(event["data"], json!({"n": 1}));
    }

    // Both were stored by JetStream, one in each content mode.
    let stored = collect(&js, "DEMO", "demo.>", 2, Duration::from_secs(10)).await;
    assert_eq!(stored.iter().filter(|s| s.binary_mode).count(), 1);

    // A subject no stream captures is an error, not a silent drop.
    let output = eventhost(&nats)
        .args(["publish", "nowhere.x", "--type", "t"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere.x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_url_are_used_and_never_logged() {
    let nats = NatsServer::start_with(&["--user", "eh", "--pass", "s3cret"]);
    let plugins = Plugins::new();
    plugins.install_example("payment");
    let url = format!("nats://eh:s3cret@127.0.0.1:{}", nats.port);
    let runtime = Runtime::start_at(&url, &plugins, 1);
    assert!(!runtime.raw_log().contains("s3cret"));
    assert!(runtime.raw_log().contains("nats://eh:***@127.0.0.1"));

    let wrong = format!("nats://eh:wrong@127.0.0.1:{}", nats.port);
    let output = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(["run", "--nats", &wrong, "--plugins"])
        .arg(plugins.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to NATS at nats://eh:***@"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        cert_path.to_str().unwrap(),
        "--tlskey",
        key_path.to_str().unwrap(),
    ]);
    let tls_url = format!("tls://127.0.0.1:{}", nats.port);

    // Trusting the CA: the runtime connects over TLS and runs its handlers.
    let plugins = Plugins::new();
    plugins.install_example("payment");
    let config = dir.path().join("eventhost.toml");
    std::fs::write(&config, TEST_STREAMS).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventhost"));
    command
        .args(["run", "--admin-addr", "off", "--nats", &tls_url, "--tls-ca"])
        .arg(&cert_path)
        .arg("--config")
        .arg(&config)
        .arg("--plugins")
        .arg(plugins.path())
        .stderr(Stdio::piped());
    let mut runtime = command.spawn().unwrap();
    let mut log = BufReader::new(runtime.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("runtime ready") {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "runtime exited: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(seen.contains("handler loaded"), "{seen}");

    // An order in over TLS, its payment out over TLS.
    let over_tls = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_eventhost"));
        command
            .args(args)
            .args(["--nats", &tls_url, "--tls-ca"])
            .arg(&cert_path);
        command
    };
    let tail_log = dir.path().join("tail.err");
    let tail = over_tls(&[
        "tail",
        "payments.completed",
        "--count",
        "1",
        "--timeout",
        "30s",
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&tail_log).unwrap())
    .spawn()
    .unwrap();
    wait_until("tail to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&tail_log).is_ok_and(|t| t.contains("listening"))
    });
    let order = r#"{"order_id":"tls-1","items":[{"quantity":1,"price":5.0}],"total":5.0}"#;
    let published = over_tls(&["publish", "orders.created", "--type", "t", "--data", order])
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let tailed = tail.wait_with_output().unwrap();
    assert!(
        tailed.status.success(),
        "{}",
        std::fs::read_to_string(&tail_log).unwrap()
    );
    let payment: Value = serde_json::from_slice(&tailed.stdout).unwrap();
    assert_eq!(payment["data"]["order_id"], "tls-1");
    runtime.kill().unwrap();
    runtime.wait().unwrap();

    // Without the CA the certificate is not trusted, and the error says so.
    let output = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args([
            "publish",
            "orders.created",
            "--type",
            "t",
            "--nats",
            &tls_url,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to NATS at tls://127.0.0.1"),
        "{stderr}"
    );
}
