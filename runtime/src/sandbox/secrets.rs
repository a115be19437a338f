//! The handler's secrets, kept out of what a guest sends out through the
//! host.
//!
//! Secret `[config]` values (see [`super::config`]) are known to the host,
//! which removes them from every text a guest can send out through the
//! host: its log lines and the messages of its failures (which become log
//! lines and dead letters). What it emits or sends over HTTP is its own
//! business.

use std::sync::Arc;

/// What a secret value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Replaces a handler's secret values in text with [`REDACTED`].
#[derive(Debug, Clone, Default)]
pub struct Redactor(Arc<Vec<String>>);

impl Redactor {
    pub fn new(mut secrets: Vec<String>) -> Self {
        // An empty secret would match everywhere; longest first so that a
        // secret containing another is removed whole.
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor(Arc::new(secrets))
    }

    /// `text` without the secrets; borrowed when it holds none (the
    /// usual case: every guest log line passes through here).
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut text = std::borrow::Cow::Borrowed(text);
        for secret in self.0.iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED).into();
            }
        }
        text
    }
}
