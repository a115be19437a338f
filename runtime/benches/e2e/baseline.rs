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
//!
//! The other three are issue 24's candidate protocols, measured before the
//! runtime takes one up: no claim, one decisive write per event
//! ([`Guarantees::RecordLast`], [`Guarantees::RecordFirst`],
//! [`Guarantees::OneBatch`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::{HeaderMap, header};
use cloudevents::{AttributesReader, Event};
use eventhost::event::decode;
use eventhost::event::trace::TraceContext;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::ledger::processed::{self, Claim, ProcessedEvents};
use eventhost::outcome::outputs::{Completion, encode_emitted};
use eventhost::sandbox::EmittedEvent;
use eventhost::sandbox::emit::EmitGrant;
use eventhost::source::{self, ConsumerBinding};
use eventhost::store::batch::{AtomicBatchErrorKind, BatchMessage, publish_atomic};
use eventhost::store::publish_all;
use eventhost::store::{NatsStore, Store, StoreError, kv};
use tokio::sync::Semaphore;

use crate::native::{self, Workload};

/// What a baseline promises about each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantees {
    /// The runtime's: claim and `done` records around every event.
    ExactlyOnce,
    /// A plain consumer's: handle, publish, ack.
    AtLeastOnce,
    /// Stateless, outputs first: read the event's record (a copy already
    /// handled is acked), handle, publish the outputs, create the record
    /// (expected subject sequence 0), ack. A crash before the record
    /// re-runs the handler, whose outputs are deduplicated by id, as today
    /// after a crash before `done`. One read and one write per event.
    RecordLast,
    /// Stateless, record first: handle, create the record carrying the
    /// encoded outputs, publish them, ack. One write and no read, so a
    /// weaker promise: every later copy of a handled event runs before its
    /// record write is refused (discarded, but run), where issue 24 allows
    /// a second run only while two copies are in flight at once; and a
    /// copy taking a record over cannot tell whether its outputs went out.
    /// With the read that the promise needs, it costs what `RecordLast`
    /// does. Measured for the comparison issue 24 asks for.
    RecordFirst,
    /// State (`counter`): the key's write, conditional on the revision read,
    /// and the event's record, conditional on not existing, in one atomic
    /// batch in the bucket's stream; then the output; then ack.
    OneBatch,
}

impl Guarantees {
    pub fn arg(self) -> &'static str {
        match self {
            Guarantees::ExactlyOnce => "exactly-once",
            Guarantees::AtLeastOnce => "at-least-once",
            Guarantees::RecordLast => "record-last",
            Guarantees::RecordFirst => "record-first",
            Guarantees::OneBatch => "one-batch",
        }
    }

    pub fn from_arg(arg: &str) -> Result<Self> {
        match arg {
            "exactly-once" => Ok(Guarantees::ExactlyOnce),
            "at-least-once" => Ok(Guarantees::AtLeastOnce),
            "record-last" => Ok(Guarantees::RecordLast),
            "record-first" => Ok(Guarantees::RecordFirst),
            "one-batch" => Ok(Guarantees::OneBatch),
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
    let stateful = matches!(guarantees, Guarantees::AtLeastOnce | Guarantees::OneBatch);
    anyhow::ensure!(
        (workload == Workload::State) == stateful || guarantees == Guarantees::AtLeastOnce,
        "the state workload has the at-least-once and one-batch baselines only (the \
         runtime's commit plan is not reproduced here), and one-batch is for state"
    );
    let name = workload.name();
    let manifest = HandlerManifest::parse(manifest, name)?;
    let concurrency = manifest.limits.concurrency;
    let js = jetstream::new(crate::processes::connect(nats_url).await?);
    let consumer = manifest.consumer_name(name);
    let window = manifest.idempotency.window;
    processed::declare(&js, &consumer, window, 1).await?;
    if guarantees == Guarantees::OneBatch {
        records_beside_state(&js, STATE_BUCKET).await?;
    }
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
        emit: manifest.emit_grant(name, Default::default()),
        workload,
        guarantees,
        js: js.clone(),
        consumer: consumer.clone(),
        window,
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
    js: jetstream::Context,
    consumer: String,
    window: std::time::Duration,
}

impl Shared {
    async fn handle(&self, message: &Message) -> Result<()> {
        let input = decode::decode(message.headers.as_ref(), &message.payload)?;
        let key = ProcessedEvents::key(&input.event);
        if self.guarantees == Guarantees::RecordLast {
            let record = kv::entry(&*self.store, self.processed.bucket(), &key).await?;
            if record.value.is_some() {
                return ack(message).await;
            }
        }
        let lease = match self.guarantees {
            Guarantees::ExactlyOnce => match self.processed.claim(&input.event).await? {
                Claim::Acquired(lease) => Some(lease),
                Claim::AlreadyHandled => return ack(message).await,
                _ => anyhow::bail!("claimed elsewhere"),
            },
            _ => None,
        };
        let (emitted, batch) = match self.workload {
            Workload::State => self.count(&input.event).await?,
            logic => {
                let emitted = logic.handle(&input.event);
                (emitted.map_err(|e| anyhow::anyhow!("{e}"))?, None)
            }
        };
        let trace = TraceContext::for_event(&input.event);
        let with = Completion {
            handler: self.workload.name(),
            emit: &self.emit,
            input: &input,
            trace: &trace,
        };
        let outputs = encode_emitted(&with, emitted)?;
        // The decisive write of the one-write protocols; a duplicate (or,
        // for the batch, a lost race) is acked as a real commit would after
        // reading the record.
        let decided = match self.guarantees {
            Guarantees::RecordFirst => {
                let recorded = serde_json::to_vec(&outputs)?;
                self.create_record(&key, recorded).await?
            }
            Guarantees::OneBatch => {
                let state = batch.context("the state workload writes")?;
                self.commit_batch(&key, state).await?
            }
            _ => true,
        };
        if !decided {
            return ack(message).await;
        }
        publish_all(&*self.store, outputs.into_iter().map(Into::into)).await?;
        match (lease, self.guarantees) {
            (Some(lease), _) => self.processed.done(lease, "native").await?,
            (None, Guarantees::RecordLast) => {
                self.create_record(&key, Vec::new()).await?;
            }
            _ => {}
        }
        ack(message).await
    }

    /// Creates the event's record in the consumer's bucket; `false` if it
    /// was there already (a duplicate).
    async fn create_record(&self, key: &str, payload: Vec<u8>) -> Result<bool> {
        let record = kv::write(self.processed.bucket(), key, Some(payload.into())).expect_last(0);
        match self.store.publish(record).await {
            Ok(_) => Ok(true),
            Err(StoreError::WrongLastSequence) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The state write and the event's record as one atomic batch; `false`
    /// if it was refused (a race lost, or a duplicate: a real commit would
    /// tell them apart by reading the record).
    async fn commit_batch(&self, key: &str, state: BatchMessage) -> Result<bool> {
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert("Nats-TTL", self.window.as_secs().to_string().as_str());
        let record = BatchMessage {
            subject: format!("{RECORDS_PREFIX}.{STATE_BUCKET}.{}.{key}", self.consumer),
            headers,
            payload: "done".into(),
        };
        match publish_atomic(&self.js.client(), key, vec![state, record]).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == AtomicBatchErrorKind::Conflict => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// `examples/counter`'s common path as a plain consumer would write it:
    /// read the key, write it back incremented (unconditionally), emit.
    /// With [`Guarantees::OneBatch`] the write is returned for the batch,
    /// conditional on the revision read; otherwise it is published here.
    async fn count(&self, event: &Event) -> Result<(Vec<EmittedEvent>, Option<BatchMessage>)> {
        #[derive(serde::Deserialize)]
        struct Command {
            key: String,
        }
        let command: Command = serde_json::from_slice(&native::data_bytes(event))?;
        let entry = kv::entry(&*self.store, STATE_BUCKET, &command.key).await?;
        let value: u64 = match entry.value {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => 0,
        } + 1;
        let write = kv::write(
            STATE_BUCKET,
            &command.key,
            Some(serde_json::to_vec(&value)?.into()),
        );
        let batch = match self.guarantees {
            Guarantees::OneBatch => {
                let mut headers = write.headers;
                let revision = entry.revision.to_string();
                headers.insert(
                    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    revision.as_str(),
                );
                Some(BatchMessage {
                    subject: write.subject,
                    headers,
                    payload: write.payload,
                })
            }
            _ => {
                self.store.publish(write).await?;
                None
            }
        };
        let data = serde_json::json!({
            "key": command.key, "value": value, "input": event.id(), "attempt": 1
        });
        let emitted = native::emitted(
            "counter.updated",
            "com.example.counter.updated",
            None,
            serde_json::to_vec(&data)?,
        );
        Ok((vec![emitted], batch))
    }
}

/// The state workload's bucket.
const STATE_BUCKET: &str = "counters";
/// Where [`Guarantees::OneBatch`] keeps records: subjects of the bucket's
/// stream that key-value clients (which read `$KV.<bucket>.>`) never see.
const RECORDS_PREFIX: &str = "$EHR";

/// Lets `bucket`'s stream take atomic batches, per-message TTLs and the
/// records' subjects.
async fn records_beside_state(js: &jetstream::Context, bucket: &str) -> Result<()> {
    let mut stream = js.get_stream(kv::stream(bucket)).await?;
    let mut config = stream.info().await?.config.clone();
    let records = format!("{RECORDS_PREFIX}.{bucket}.>");
    if !config.subjects.contains(&records) {
        config.subjects.push(records);
    }
    config.allow_atomic_publish = true;
    config.allow_message_ttl = true;
    js.update_stream(config).await?;
    Ok(())
}

async fn ack(message: &Message) -> Result<()> {
    message
        .ack_with(AckKind::Ack)
        .await
        .map_err(|e| anyhow::anyhow!("acking: {e}"))
}
