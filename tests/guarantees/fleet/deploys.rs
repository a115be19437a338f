//! Handlers deployed through NATS: a switch, a refusal, a rollback and an
//! undeploy seen by every `--deployed` runtime, and the deploy bucket's
//! own promises (kept versions, tampered files, racing deploys).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{deploy, eventhost_at};
use crate::support::chaos::{chaos_manifest, done_outputs, outputs_by_input};
use crate::support::*;
use async_nats::jetstream;
use serde_json::json;

/// A chaos manifest tagged `tag`, written next to the test's files.
fn chaos_version(dir: &Path, tag: &str) -> std::path::PathBuf {
    let path = dir.join(format!("chaos-{tag}.toml"));
    let manifest = chaos_manifest("").replace("tag = \"v1\"", &format!("tag = \"{tag}\""));
    std::fs::write(&path, manifest).unwrap();
    path
}

/// Publishes `count` chaos events that succeed, `pace` apart.
async fn send_ok(js: &jetstream::Context, prefix: &str, count: usize, pace: Duration) {
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let event = TestEvent::new(&id, "com.example.chaos", json!({"action": "ok"}));
        publish(js, "chaos.in", event.structured()).await;
        tokio::time::sleep(pace).await;
    }
}

/// The tag of the output of each input.
async fn tags(js: &jetstream::Context, expected: usize) -> BTreeMap<String, String> {
    (done_outputs(js, expected).await.iter())
        .map(|s| {
            let data = s.data();
            (
                data["input"].as_str().unwrap().to_string(),
                data["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn reloads_to(runtime: &Runtime, version: &str) -> usize {
    (runtime.logs_with_message("handler reloaded").iter())
        .filter(|l| l["to"] == version)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_switch_refuse_rollback_and_undeploy_on_every_runtime() {
    let nats = NatsServer::start();
    let url = nats.url();
    let files = tempfile::tempdir().unwrap();
    let wasm = components_dir().join("chaos.wasm");
    let v1 = deploy(&url, "chaos", &wasm, &chaos_version(files.path(), "v1"));
    let a = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    let b = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    a.wait_consuming(1);
    b.wait_consuming(1);
    let js = nats.jetstream().await;
    send_ok(&js, "first", 40, Duration::ZERO).await;
    let seen = tags(&js, 40).await;
    assert!(seen.values().all(|t| t == "v1"), "{seen:?}");

    // v2 under load: both switch, nothing lost or doubled.
    let load = {
        let js = js.clone();
        tokio::spawn(async move { send_ok(&js, "load", 600, Duration::from_millis(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = deploy(&url, "chaos", &wasm, &chaos_version(files.path(), "v2"));
    assert_ne!(v1, v2);
    wait_until("both runtimes to run v2", Duration::from_secs(60), || {
        reloads_to(&a, &v2) == 1 && reloads_to(&b, &v2) == 1
    });
    load.await.unwrap();
    let outputs = outputs_by_input(&js, 640).await;
    assert_eq!(outputs.len(), 640);
    assert!(outputs.values().all(|n| *n == 1), "an output doubled");
    assert_eq!(successful_runs(&[&a, &b], "chaos").len(), 640);
    let seen = tags(&js, 640).await;
    assert!(
        seen.values().any(|t| t == "v2"),
        "v2 never handled an event"
    );

    // A runtime started after the deploy picks the handler up.
    let mut late = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    late.wait_consuming(1);
    wait_until(
        "status to list three runtimes on v2",
        Duration::from_secs(20),
        || eventhost_at(&url, &["status"]).matches(&v2).count() == 3,
    );
    // Killed, it cannot say goodbye: its announcement expires (10 s).
    late.kill();
    assert_eq!(eventhost_at(&url, &["status"]).matches(&v2).count(), 3);
    wait_until(
        "status to list both runtimes on v2",
        Duration::from_secs(30),
        || {
            let status = eventhost_at(&url, &["status"]);
            status.matches(&v2).count() == 2 && !status.contains("warning")
        },
    );

    // A broken artifact: both refuse it and keep serving v2.
    let broken = files.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm but not a component").unwrap();
    let v3 = deploy(&url, "chaos", &broken, &chaos_version(files.path(), "v3"));
    wait_until(
        "both runtimes to refuse it",
        Duration::from_secs(30),
        || {
            [&a, &b].iter().all(|r| {
                !r.logs_with_message("new version refused; the running version keeps serving")
                    .is_empty()
            })
        },
    );
    let status = eventhost_at(&url, &["status"]);
    assert_eq!(status.matches(&v2).count(), 2, "{status}");
    assert!(
        status.contains(&format!("deployed version is {v3}")),
        "{status}"
    );
    send_ok(&js, "after-broken", 20, Duration::ZERO).await;
    let seen = tags(&js, 660).await;
    assert!(
        (0..20).all(|i| seen[&format!("after-broken-{i}")] == "v2"),
        "{seen:?}"
    );

    // Rolling back past the broken version to v2 changes nothing that
    // runs; once more, back to v1, and both switch.
    eventhost_at(&url, &["rollback", "chaos"]);
    let listed = eventhost_at(&url, &["ls"]);
    assert!(
        listed.contains(&v2) && listed.contains(&v1) && !listed.contains(&v3),
        "{listed}"
    );
    eventhost_at(&url, &["rollback", "chaos"]);
    wait_until(
        "both runtimes to run v1 again",
        Duration::from_secs(60),
        || reloads_to(&a, &v1) == 1 && reloads_to(&b, &v1) == 1,
    );
    send_ok(&js, "rolled-back", 20, Duration::ZERO).await;
    let seen = tags(&js, 680).await;
    assert!((0..20).all(|i| seen[&format!("rolled-back-{i}")] == "v1"));

    // Undeploy: it drains and stops everywhere.
    eventhost_at(&url, &["undeploy", "chaos"]);
    wait_until("both runtimes to stop it", Duration::from_secs(30), || {
        [&a, &b].iter().all(|r| removed_and_stopped(r, "chaos"))
    });
    assert!(eventhost_at(&url, &["ls"]).contains("nothing deployed"));
    // No dispatcher of it is left anywhere to pull these: they stay pending.
    send_ok(&js, "after-undeploy", 5, Duration::ZERO).await;
    let (pending, ack_pending, _) = consumer_state(&js, "CHAOS", "chaos").await;
    assert_eq!((pending, ack_pending), (5, 0));
    assert_eq!(successful_runs(&[&a, &b], "chaos").len(), 680);
}

/// Whether `runtime` removed `handler` and the dispatcher it removed has
/// stopped: it no longer pulls, and its in-flight events are settled.
fn removed_and_stopped(runtime: &Runtime, handler: &str) -> bool {
    let logs = runtime.logs();
    let removal = "handler removed; finishing its in-flight events";
    let is_of =
        |l: &serde_json::Value, message: &str| l["message"] == message && l["handler"] == handler;
    let Some(at) = logs.iter().rposition(|l| is_of(l, removal)) else {
        return false;
    };
    let version = &logs[at]["version"];
    logs[at..]
        .iter()
        .any(|l| is_of(l, "stopped") && &l["version"] == version)
}

/// The deploy bucket's own promises: the last four earlier versions are
/// kept for rollback and older ones deleted; files that do not hash to
/// their version are refused; deploys of one handler racing each other
/// never win silently (each one reported deployed is current or in the
/// history).
#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_bucket_keeps_four_versions_refuses_tampered_files_and_races_safely() {
    use eventhost::fleet::deploy::DeployBucket;
    use eventhost::jetstream::declare::Replication;
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let bucket = DeployBucket::declare(&js, "deploys", Replication::single())
        .await
        .unwrap();
    let wasm = b"\0asm the files are only checked by the runtimes".to_vec();
    let manifest = |tag: &str| chaos_manifest("").replace("v1", tag).into_bytes();

    let mut versions = Vec::new();
    for i in 0..6 {
        let deployed = bucket
            .deploy("chaos", &wasm, &manifest(&format!("t{i}")))
            .await;
        versions.push(deployed.unwrap().version);
    }
    let current = &bucket.list().await.unwrap()["chaos"];
    let kept: Vec<String> = versions[1..5].iter().rev().cloned().collect();
    assert_eq!((&current.version, &current.previous), (&versions[5], &kept));
    assert!(bucket.fetch("chaos", &versions[1]).await.is_ok());
    let dropped = bucket.fetch("chaos", &versions[0]).await;
    assert!(
        dropped.is_err(),
        "the fifth earlier version's files were kept"
    );

    // Files changed behind the bucket's back are refused.
    let objects = js.get_object_store("deploys").await.unwrap();
    let name = format!("chaos/{}.toml", versions[5]);
    objects
        .put(name.as_str(), &mut &manifest("evil")[..])
        .await
        .unwrap();
    let tampered = bucket.fetch("chaos", &versions[5]).await;
    let error = format!("{:#}", tampered.err().expect("tampered files were taken"));
    assert!(error.contains("refusing them"), "{error}");

    // Four deploys at once (as many as the history shows): whichever win,
    // none is lost without an error.
    let racing = (0..4).map(|i| {
        let (bucket, wasm, manifest) = (&bucket, &wasm, manifest(&format!("race{i}")));
        async move { bucket.deploy("chaos", wasm, &manifest).await }
    });
    let results = futures::future::join_all(racing).await;
    let current = &bucket.list().await.unwrap()["chaos"];
    let mut refused = 0;
    for result in results {
        match result {
            Ok(won) => assert!(
                current.version == won.version || current.previous.contains(&won.version),
                "a deploy reported done was lost: {won:?} vs {current:?}"
            ),
            Err(err) => {
                assert!(
                    format!("{err:#}").contains("changed by someone else"),
                    "{err:#}"
                );
                refused += 1;
            }
        }
    }
    println!("{refused} of 4 racing deploys were refused");
}
