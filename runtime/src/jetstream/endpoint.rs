//! Where NATS is and how to authenticate to it.
//!
//! A runtime in a cluster is given every server's URL (comma-separated), so
//! it can connect while any of them is up; the client then learns the rest
//! of the cluster from the server it reached. Passwords and tokens in a URL
//! never reach a log ([`redact`]).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Where NATS is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct NatsEndpoint {
    /// `nats://[user:pass@|token@]host:port`; `tls://` requires TLS. Several
    /// servers of one cluster are separated by commas.
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
        let urls: Vec<String> = self.url.split(',').map(|u| redact(u.trim())).collect();
        urls.join(",")
    }

    /// Connects. After the first connection the client reconnects on its own;
    /// losing and regaining the server is logged.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let url = urls[0];
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
        if urls.iter().any(|u| u.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let servers = urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .with_context(|| format!("invalid NATS URL {}", redact(u)))
            })
            .collect::<Result<Vec<_>>>()?;
        options
            .connect(servers)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", self.display_url()))
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
