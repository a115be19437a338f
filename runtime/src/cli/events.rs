//! `eventhost publish`, `tail` and `reload`: driving and watching a running
//! system by hand.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use cloudevents::event::Data;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use eventhost::event::decode::{ContentMode, decode};
use eventhost::event::encode::encode;
use eventhost::jetstream::endpoint::NatsEndpoint;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// NATS subject to publish to.
    subject: String,
    /// CloudEvents `type`.
    #[arg(long = "type")]
    ty: String,
    /// CloudEvents `source`.
    #[arg(long, default_value = "/eventhost/cli")]
    source: String,
    /// CloudEvents `id` (default: a random UUID).
    #[arg(long)]
    id: Option<String>,
    /// JSON data.
    #[arg(long)]
    data: Option<String>,
    /// Extension attribute as name=value (repeatable).
    #[arg(long = "ext", value_name = "NAME=VALUE")]
    extensions: Vec<String>,
    /// Binary content mode (ce- headers) instead of structured JSON.
    #[arg(long)]
    binary: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(required = true)]
    subjects: Vec<String>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop listening after this long (e.g. `30s`): an error if `--count`
    /// events have not all arrived by then, else a normal exit.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// One short human-readable line per event instead of JSON.
    #[arg(long)]
    pretty: bool,
}

/// Publishes one event and prints its id once JetStream stored it.
pub async fn publish(args: PublishArgs, nats: &NatsEndpoint) -> Result<()> {
    let client = nats.connect().await?;
    let id = (args.id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut builder = EventBuilderV10::new()
        .id(id)
        .source(args.source)
        .ty(args.ty)
        .time(chrono::Utc::now());
    for ext in &args.extensions {
        let Some((name, value)) = ext.split_once('=') else {
            bail!("--ext {ext:?}: expected NAME=VALUE");
        };
        builder = builder.extension(name, value);
    }
    if let Some(data) = args.data {
        let json: serde_json::Value = serde_json::from_str(&data).context("--data must be JSON")?;
        builder = builder.data("application/json", Data::Json(json));
    }
    let event = builder.build().context("building the event")?;
    let mode = match args.binary {
        true => ContentMode::Binary,
        false => ContentMode::Structured,
    };
    let id = event.id().to_string();
    let (headers, payload) = encode(event, mode)?;
    let js = async_nats::jetstream::new(client);
    let subject = args.subject;
    js.publish_with_headers(subject.clone(), headers, payload)
        .await?
        .await
        .with_context(|| format!("no JetStream stream stored {subject:?}"))?;
    println!("{id}");
    Ok(())
}

/// Prints the events published on the subjects, one per line.
pub async fn tail(args: TailArgs, nats: &NatsEndpoint, shutdown: CancellationToken) -> Result<()> {
    let client = nats.connect().await?;
    let mut merged = futures::stream::SelectAll::new();
    for subject in &args.subjects {
        merged.push(client.subscribe(subject.clone()).await?);
    }
    client.flush().await?;
    eprintln!("tail: listening on {}", args.subjects.join(" "));
    let deadline = async {
        match args.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut seen = 0;
    while args.count.is_none_or(|c| seen < c) {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => match args.count {
                Some(count) => bail!("timed out after {seen} of {count} events"),
                None => break,
            },
            m = merged.next() => match m { Some(m) => m, None => break },
        };
        match decode(message.headers.as_ref(), &message.payload) {
            Ok(decoded) => {
                let (_, json) = encode(decoded.event, ContentMode::Structured)?;
                match args.pretty {
                    true => println!("{}", one_line(&message.subject, &json, decoded.mode)),
                    false => println!("{}", String::from_utf8_lossy(&json)),
                }
                seen += 1;
            }
            Err(err) => eprintln!("{}: not a CloudEvent: {err}", message.subject),
        }
    }
    Ok(())
}

/// Asks every runtime on this NATS to reload now.
pub async fn reload(nats: &NatsEndpoint) -> Result<()> {
    let client = nats.connect().await?;
    client
        .publish(eventhost::fleet::RELOAD_SUBJECT, "".into())
        .await
        .context("sending the reload request")?;
    client.flush().await?;
    println!("asked every runtime on {} to reload", nats.display_url());
    Ok(())
}

/// `payments.completed  [binary]  com.example.payment.completed  {"amount":…}`
fn one_line(subject: &str, structured_json: &[u8], mode: ContentMode) -> String {
    let event: serde_json::Value = serde_json::from_slice(structured_json).unwrap_or_default();
    let mode = match mode {
        ContentMode::Structured => "structured",
        ContentMode::Binary => "binary",
    };
    format!(
        "{subject:<22} {mode:<10} {:<34} {}",
        event["type"].as_str().unwrap_or_default(),
        event.get("data").map(|d| d.to_string()).unwrap_or_default()
    )
}
