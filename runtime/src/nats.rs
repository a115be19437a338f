//! Connecting to NATS and declaring the configured streams.

use std::path::Path;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};

use crate::config::{Storage, StreamDeclaration};

/// Connects with the URL's user and password (`nats://user:pass@host`), a
/// credentials file, and TLS when the URL says `tls://`. After the first
/// connection the client reconnects on its own; losing and regaining the
/// server is logged.
pub async fn connect(url: &str, creds: Option<&Path>) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("eventhost")
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                other => tracing::warn!(event = %other, "NATS client event"),
            }
        });
    if let Some(creds) = creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
    }
    if url.starts_with("tls://") {
        options = options.require_tls(true);
    }
    options
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Creates each stream, or updates it to the declared shape. Idempotent.
pub async fn ensure_streams(js: &jetstream::Context, streams: &[StreamDeclaration]) -> Result<()> {
    for declared in streams {
        let mut config = stream::Config {
            name: declared.name.clone(),
            subjects: declared.subjects.clone(),
            storage: match declared.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            ..Default::default()
        };
        if let Some(max_age) = declared.max_age {
            config.max_age = max_age;
        }
        if let Some(window) = declared.duplicate_window {
            config.duplicate_window = window;
        }
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("declaring stream {}", declared.name))?;
        tracing::info!(stream = %declared.name, subjects = ?declared.subjects, "stream ready");
    }
    Ok(())
}
