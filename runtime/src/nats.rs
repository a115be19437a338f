//! Connecting to NATS and declaring the configured streams.

use std::path::PathBuf;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};

use crate::config::{BucketDeclaration, Storage, StreamDeclaration};

/// Where NATS is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct NatsEndpoint {
    /// `nats://[user:pass@|token@]host:port`; `tls://` requires TLS.
    pub url: String,
    /// A credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the server's certificate,
    /// besides the system's. Implies TLS.
    pub tls_ca: Option<PathBuf>,
}

impl NatsEndpoint {
    pub fn new(url: impl Into<String>) -> Self {
        NatsEndpoint {
            url: url.into(),
            creds: None,
            tls_ca: None,
        }
    }

    /// The URL without secrets, for logs.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }

    /// Connects. After the first connection the client reconnects on its own;
    /// losing and regaining the server is logged.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let url = self.url.as_str();
        let mut options = async_nats::ConnectOptions::new()
            .name("eventhost")
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connection (re)established")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS client event"),
                }
            });
        // async-nats parses credentials in the URL but does not send them.
        let parsed =
            url::Url::parse(url).with_context(|| format!("invalid NATS URL {}", redact(url)))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        match (parsed.username(), parsed.password()) {
            ("", _) => {}
            (user, Some(password)) => {
                options = options.user_and_password(decode(user), decode(password))
            }
            (token, None) => options = options.token(decode(token)),
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        options
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", redact(url)))
    }
}

/// The URL with any password or token replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(mut parsed) if !parsed.username().is_empty() => {
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Creates each stream, or updates it to the declared shape. Idempotent.
pub async fn ensure_streams(js: &jetstream::Context, streams: &[StreamDeclaration]) -> Result<()> {
    for declared in streams {
        let mut config = stream::Config {
            name: declared.name.clone(),
            subjects: declared.subjects.clone(),
            storage: storage(declared.storage),
            // Reads by subject (the event store, `eventhost dlq`) use
            // direct gets: any replica answers, no consumer is made.
            allow_direct: true,
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

fn storage(storage: Storage) -> stream::StorageType {
    match storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    }
}

/// Creates each key-value bucket, or updates it to the declared shape. The
/// stream is declared by hand, as NATS clients lay buckets out, because
/// async-nats' own bucket creation first queries account info in a shape
/// NATS 2.9 does not answer with.
pub async fn ensure_buckets(js: &jetstream::Context, buckets: &[BucketDeclaration]) -> Result<()> {
    for declared in buckets {
        let name = &declared.name;
        let max_age = declared.max_age.unwrap_or_default();
        let mut config = stream::Config {
            name: crate::store::kv::stream(name),
            description: Some(format!("eventhost: key-value bucket {name}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: declared.history,
            max_age,
            storage: storage(declared.storage),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        if let Some(size) = declared.max_value_size {
            config.max_message_size = i32::try_from(size.as_u64()).unwrap_or(i32::MAX);
        }
        // The window in which a re-applied commit write is recognised as a
        // duplicate; past it, by its id in the stored message.
        if !max_age.is_zero() {
            config.duplicate_window = max_age.min(std::time::Duration::from_secs(120));
        }
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("declaring key-value bucket {name}"))?;
        tracing::info!(bucket = %name, history = declared.history, "bucket ready");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_never_reach_logs() {
        assert_eq!(
            redact("nats://eh:s3cret@127.0.0.1:4222"),
            "nats://eh:***@127.0.0.1:4222"
        );
        assert_eq!(
            redact("nats://t0ken@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
