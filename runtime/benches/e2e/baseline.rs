//! The native baseline: the same consumer without the sandbox.
//!
//! It pulls from a durable consumer of the same shape as the runtime's
//! ([`ConsumerBinding`]), decodes each message with the runtime's decoder,
//! claims and records it in the same idempotency bucket, runs the handler's
//! logic as plain Rust ([`Workload::handle`]), publishes the outputs with the
//! runtime's encoder and deterministic `Nats-Msg-Id`s, waits for their acks,
//! then acks the input; up to `concurrency` events at once. What it leaves
//! out is exactly what the comparison is about: wasm, plus the runtime's
//! per-event logs, metrics and trace spans.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, AckKind, Message};
use eventhost::decode;
use eventhost::manifest::HandlerManifest;
use eventhost::outcome::outputs::{Completion, encode_emitted, publish_all};
use eventhost::policy::dedup::{self, Claim, ProcessedEvents};
use eventhost::sandbox::emit::EmitGrant;
use eventhost::source::{self, ConsumerBinding};
use eventhost::store::NatsStore;
use eventhost::trace::TraceContext;
use tokio::sync::Semaphore;

use crate::native::Workload;

/// Serves until killed; prints `baseline ready` once consuming.
pub async fn serve(nats_url: &str, workload: Workload, manifest: &str) -> Result<()> {
    let name = workload.name();
    let manifest = HandlerManifest::parse(manifest, name)?;
    let concurrency = manifest.limits.concurrency;
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let consumer = manifest.consumer_name(name);
    dedup::declare(&js, &consumer, manifest.idempotency.window).await?;
    let store = Arc::new(NatsStore::new(js.clone()));
    let lease = source::claim_lease(&manifest.limits);
    let processed = ProcessedEvents::new(store.clone(), &consumer, lease);
    let bindings = ConsumerBinding::resolve(&js, name, &manifest).await?;
    let binding = bindings
        .first()
        .context("the manifest subscribes to nothing")?;
    let shared = Arc::new(Shared {
        store,
        processed,
        emit: manifest.emit_grant(name),
        workload,
    });
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut announced = false;
    // Like the runtime, a failed pull is replaced by a fresh one.
    loop {
        let mut messages = binding.open(&js).await?;
        if !announced {
            println!("baseline ready");
            announced = true;
        }
        loop {
            let permit = permits.clone().acquire_owned().await?;
            let message = match messages.next().await {
                Ok(message) => message,
                Err(err) => {
                    eprintln!("baseline: pulling: {err}; reopening");
                    break;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(err) = shared.handle(&message).await {
                    eprintln!("baseline: {err:#}");
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                drop(permit);
            });
        }
    }
}

struct Shared {
    store: Arc<NatsStore>,
    processed: ProcessedEvents,
    emit: EmitGrant,
    workload: Workload,
}

impl Shared {
    async fn handle(&self, message: &Message) -> Result<()> {
        let input = decode::decode(message.headers.as_ref(), &message.payload)?;
        let lease = match self.processed.claim(&input.event).await? {
            Claim::Acquired(lease) => lease,
            Claim::AlreadyHandled => return ack(message).await,
            _ => anyhow::bail!("claimed elsewhere"),
        };
        let emitted = self
            .workload
            .handle(&input.event)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let trace = TraceContext::for_event(&input.event);
        let with = Completion {
            handler: self.workload.name(),
            emit: &self.emit,
            input: &input,
            trace: &trace,
        };
        let outputs = encode_emitted(&with, emitted)?.into_iter().map(Into::into);
        publish_all(&*self.store, outputs).await?;
        self.processed.done(lease, "native").await?;
        ack(message).await
    }
}

async fn ack(message: &Message) -> Result<()> {
    message
        .ack_with(AckKind::Ack)
        .await
        .map_err(|e| anyhow::anyhow!("acking: {e}"))
}
