//! `eventhost kv`: look at and change key-value buckets by hand.
//!
//! For operators: a value written here does not go through a handler's
//! commit, so a handler that read the key earlier loses its race and runs
//! again (as it would against any other writer). JSON values are printed
//! pretty; anything else as text. A bucket rebuilt by `eventhost projection
//! rebuild` is found in its current generation.

use std::io::Read;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use clap::Subcommand;
use futures::StreamExt;

use eventhost::jetstream::endpoint::NatsEndpoint;

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print the value at KEY.
    Get { bucket: String, key: String },
    /// Set KEY to VALUE (`-` reads the value from stdin).
    Put {
        bucket: String,
        key: String,
        value: String,
    },
    /// Delete KEY.
    Del { bucket: String, key: String },
    /// List the bucket's keys.
    Ls { bucket: String },
    /// Print every change to the bucket (or to keys matching KEY, which may
    /// hold `*` and `>`) as it happens, starting with the current values.
    Watch { bucket: String, key: Option<String> },
}

pub async fn execute(command: KvCommand, nats: &NatsEndpoint) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    // A rebuilt read model lives in its current generation's bucket.
    let open = |bucket: String| {
        let js = js.clone();
        async move {
            let physical = eventhost::projection::resolve_bucket(&js, &bucket).await?;
            js.get_key_value(&physical)
                .await
                .with_context(|| format!("no key-value bucket {bucket:?}"))
        }
    };
    match command {
        KvCommand::Get { bucket, key } => {
            let store = open(bucket.clone()).await?;
            match store.get(&key).await.context("reading the key")? {
                Some(value) => println!("{}", render(&value, true)),
                None => bail!("no key {key:?} in bucket {bucket:?}"),
            }
        }
        KvCommand::Put { bucket, key, value } => {
            let store = open(bucket).await?;
            let value = match value.as_str() {
                "-" => {
                    let mut stdin = Vec::new();
                    std::io::stdin().read_to_end(&mut stdin)?;
                    Bytes::from(stdin)
                }
                _ => Bytes::from(value),
            };
            let revision = store.put(&key, value).await.context("writing the key")?;
            println!("{key} = revision {revision}");
        }
        KvCommand::Del { bucket, key } => {
            open(bucket)
                .await?
                .delete(&key)
                .await
                .context("deleting the key")?;
            println!("deleted {key}");
        }
        KvCommand::Ls { bucket } => {
            let mut keys = keys(&open(bucket).await?).await?;
            keys.sort();
            for key in keys {
                println!("{key}");
            }
        }
        KvCommand::Watch { bucket, key } => {
            let store = open(bucket).await?;
            let mut watch = match &key {
                Some(key) => store.watch_with_history(key).await?,
                None => store.watch_all_from_revision(1).await?,
            };
            while let Some(entry) = watch.next().await {
                let entry = entry.context("watching the bucket")?;
                let value = match entry.operation {
                    Operation::Put => render(&entry.value, false),
                    Operation::Delete => "(deleted)".into(),
                    Operation::Purge => "(purged)".into(),
                };
                println!("{} {} {value}", entry.revision, entry.key);
            }
        }
    }
    Ok(())
}

async fn keys(store: &Store) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut listed = store.keys().await.context("listing the keys")?;
    while let Some(key) = listed.next().await {
        keys.push(key?);
    }
    Ok(keys)
}

/// JSON pretty (or on one line), anything else as text.
fn render(value: &[u8], pretty: bool) -> String {
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(json) if pretty => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}
