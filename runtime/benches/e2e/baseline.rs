//! The native baselines: the same consumer without the sandbox, with the
//! runtime's guarantees or without them.
//!
//! Both pull from a durable consumer of the same shape as the runtime's
//! ([`ConsumerBinding`]), decode each message with the runtime's decoder,
//! run the handler's logic as plain Rust ([`Workload::handle`]), publish the
//! outputs with the runtime's encoder and deterministic `Nats-Msg-Id`s, wait
//! for their acks, then ack the input; up to `concurrency` events at once.
//!
//! [`Guarantees::ExactlyOnce`] also claims and records each event in the
//! same idempotency bucket the runtime uses, so what it leaves out is
//! exactly wasm plus the runtime's per-event logs, metrics and spans.
//! [`Guarantees::AtLeastOnce`] is the consumer most people would write by
//! hand: no records, so a redelivery runs the logic again (its outputs are
//! deduplicated by JetStream for the stream's duplicate window only). The
//! runtime against it is the price of exactly-once, in the host.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, AckKind, Message};
use cloudevents::{AttributesReader, Event};
use eventhost::event::decode;
use eventhost::event::trace::TraceContext;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::ledger::processed::{self, Claim, ProcessedEvents};
use eventhost::outcome::outputs::{Completion, encode_emitted};
use eventhost::sandbox::EmittedEvent;
use eventhost::sandbox::emit::EmitGrant;
use eventhost::source::{self, ConsumerBinding};
use eventhost::store::publish_all;
use eventhost::store::{NatsStore, Store, kv};
use tokio::sync::Semaphore;

use crate::native::{self, Workload};

/// What a baseline promises about each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantees {
    /// The runtime's: claim and `done` records around every event.
    ExactlyOnce,
    /// A plain consumer's: handle, publish, ack.
    AtLeastOnce,
}

impl Guarantees {
    pub fn arg(self) -> &'static str {
        match self {
            Guarantees::ExactlyOnce => "exactly-once",
            Guarantees::AtLeastOnce => "at-least-once",
        }
    }

    pub fn from_arg(arg: &str) -> Result<Self> {
        match arg {
            "exactly-once" => Ok(Guarantees::ExactlyOnce),
            "at-least-once" => Ok(Guarantees::AtLeastOnce),
            other => anyhow::bail!("unknown guarantees {other:?}"),
        }
    }
}

/// Serves until killed; prints `baseline ready` once consuming.
pub async fn serve(
    nats_url: &str,
    workload: Workload,
    manifest: &str,
    guarantees: Guarantees,
) -> Result<()> {
    anyhow::ensure!(
        workload != Workload::State || guarantees == Guarantees::AtLeastOnce,
        "the state workload has an at-least-once baseline only: an exactly-once one \
         would need the runtime's commit plan"
    );
    let name = workload.name();
    let manifest = HandlerManifest::parse(manifest, name)?;
    let concurrency = manifest.limits.concurrency;
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let consumer = manifest.consumer_name(name);
    processed::declare(&js, &consumer, manifest.idempotency.window, 1).await?;
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
        guarantees,
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
    guarantees: Guarantees,
}

impl Shared {
    async fn handle(&self, message: &Message) -> Result<()> {
        let input = decode::decode(message.headers.as_ref(), &message.payload)?;
        let lease = match self.guarantees {
            Guarantees::AtLeastOnce => None,
            Guarantees::ExactlyOnce => match self.processed.claim(&input.event).await? {
                Claim::Acquired(lease) => Some(lease),
                Claim::AlreadyHandled => return ack(message).await,
                _ => anyhow::bail!("claimed elsewhere"),
            },
        };
        let emitted = match self.workload {
            Workload::State => self.count(&input.event).await?,
            logic => logic
                .handle(&input.event)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        let trace = TraceContext::for_event(&input.event);
        let with = Completion {
            handler: self.workload.name(),
            emit: &self.emit,
            input: &input,
            trace: &trace,
        };
        let outputs = encode_emitted(&with, emitted)?.into_iter().map(Into::into);
        publish_all(&*self.store, outputs).await?;
        if let Some(lease) = lease {
            self.processed.done(lease, "native").await?;
        }
        ack(message).await
    }

    /// `examples/counter`'s common path as a plain consumer would write it:
    /// read the key, write it back incremented (unconditionally), emit.
    async fn count(&self, event: &Event) -> Result<Vec<EmittedEvent>> {
        #[derive(serde::Deserialize)]
        struct Command {
            key: String,
        }
        let command: Command = serde_json::from_slice(&native::data_bytes(event))?;
        let entry = kv::entry(&*self.store, "counters", &command.key).await?;
        let value: u64 = match entry.value {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => 0,
        } + 1;
        let write = kv::write(
            "counters",
            &command.key,
            Some(serde_json::to_vec(&value)?.into()),
        );
        self.store.publish(write).await?;
        let data = serde_json::json!({
            "key": command.key, "value": value, "input": event.id(), "attempt": 1
        });
        Ok(vec![native::emitted(
            "counter.updated",
            "com.example.counter.updated",
            None,
            serde_json::to_vec(&data)?,
        )])
    }
}

async fn ack(message: &Message) -> Result<()> {
    message
        .ack_with(AckKind::Ack)
        .await
        .map_err(|e| anyhow::anyhow!("acking: {e}"))
}
