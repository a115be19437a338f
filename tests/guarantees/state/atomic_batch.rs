//! The atomic batch the one-write commit is built on (ADR-50), against the
//! pinned server: all of a batch is stored, or none of it. Counted in the
//! stream itself.

use std::time::Duration;

use crate::support::*;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use eventhost::store::batch::{AtomicBatchErrorKind, BatchMessage, publish_atomic};
use futures::StreamExt;

async fn batch_stream(js: &jetstream::Context, name: &str, atomic: bool) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        allow_atomic_publish: atomic,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn message(subject: &str, headers: &[(&str, &str)]) -> BatchMessage {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    BatchMessage {
        subject: subject.to_string(),
        headers: map,
        payload: subject.as_bytes().to_vec().into(),
    }
}

async fn stored(stream: &mut stream::Stream) -> u64 {
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_stored_whole_or_not_at_all() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let client = js.client();
    let mut stream = batch_stream(&js, "BATCH", true).await;

    // Stored whole: three messages on two subjects, in one commit.
    let expect_new = [("Nats-Expected-Last-Subject-Sequence", "0")];
    let batch = vec![
        message("batch.a", &expect_new),
        message("batch.b", &expect_new),
        message("batch.c", &[("Nats-Msg-Id", "c-1")]),
    ];
    let ack = publish_atomic(&client, "b1", batch).await.unwrap();
    assert_eq!(
        (ack.stream.as_str(), ack.last_sequence, ack.count),
        ("BATCH", 3, 3)
    );
    assert_eq!(stored(&mut stream).await, 3);

    // One expectation fails (batch.a exists now): nothing is stored, not
    // even the messages whose own checks hold.
    let batch = vec![
        message("batch.d", &expect_new),
        message("batch.a", &expect_new),
    ];
    let err = publish_atomic(&client, "b2", batch).await.unwrap_err();
    assert_eq!(err.kind(), AtomicBatchErrorKind::Conflict, "{err}");
    assert_eq!(stored(&mut stream).await, 3);

    // A message id stored before: nothing is stored.
    let batch = vec![
        message("batch.e", &[]),
        message("batch.f", &[("Nats-Msg-Id", "c-1")]),
    ];
    let err = publish_atomic(&client, "b3", batch).await.unwrap_err();
    assert_eq!(err.kind(), AtomicBatchErrorKind::Duplicate, "{err}");
    assert_eq!(stored(&mut stream).await, 3);

    // A stream without `allow_atomic` stores none of it.
    let mut plain = batch_stream(&js, "PLAIN", false).await;
    let batch = vec![message("plain.a", &[]), message("plain.b", &[])];
    let err = publish_atomic(&client, "b4", batch).await.unwrap_err();
    assert_eq!(err.kind(), AtomicBatchErrorKind::Disabled, "{err}");
    assert_eq!(stored(&mut plain).await, 0);

    let err = publish_atomic(&client, "b5", Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), AtomicBatchErrorKind::Size);
}

/// A publisher that dies half way leaves nothing: the server drops the
/// batch once it has been idle for its timeout, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_batch_leaves_nothing() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let client = js.client();
    let mut stream = batch_stream(&js, "HALF", true).await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.STREAM.BATCH_ABANDONED.HALF")
        .await
        .unwrap();
    for sequence in ["1", "2"] {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", "half");
        headers.insert("Nats-Batch-Sequence", sequence);
        client
            .publish_with_headers("half.a", headers, "x".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let advisory = tokio::time::timeout(Duration::from_secs(60), advisories.next())
        .await
        .expect("the server abandons the batch after its idle timeout")
        .unwrap();
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
    assert_eq!(advisory["batch"], "half", "{advisory}");
    assert_eq!(advisory["reason"], "timeout", "{advisory}");
    assert_eq!(stored(&mut stream).await, 0);
}
