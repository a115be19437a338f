//! Key-value state: `wasi:keyvalue` buckets, as the manifest's
//! `[keyvalue]` section grants them.
//!
//! ```no_run
//! use eventhost_sdk::{Event, HandlerError, kv::Bucket};
//!
//! fn handle(event: Event) -> Result<(), HandlerError> {
//!     let counts = Bucket::open("counts")?;
//!     let seen: u64 = counts.get("seen")?.unwrap_or(0);
//!     counts.put("seen", &(seen + 1))
//! }
//! # eventhost_sdk::export_handler!(handle);
//! ```
//!
//! Reads see this invocation's own writes. Writes are buffered by the host
//! and committed only if the handler returns `Ok`, together with its emitted
//! events. If a key changed between this invocation's read and its commit,
//! the host runs the handler again with fresh state: the handler never has
//! to retry a race itself.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::wasi::keyvalue::{atomics, store};
use crate::HandlerError;

/// An open bucket.
pub struct Bucket {
    name: String,
    inner: store::Bucket,
}

impl Bucket {
    /// Opens a bucket the manifest grants. Any other name is refused.
    pub fn open(name: &str) -> Result<Bucket, HandlerError> {
        let inner = store::open(name).map_err(|e| error(name, e))?;
        Ok(Bucket {
            name: name.to_string(),
            inner,
        })
    }

    /// The value at `key` as JSON, or `None` if there is none. A value that
    /// is not the expected JSON is a permanent error.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandlerError> {
        match self.get_bytes(key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                HandlerError::permanent(format_args!(
                    "{}/{key}: not the expected JSON: {e}",
                    self.name
                ))
            })?)),
        }
    }

    /// Stores `value` as JSON at `key`.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(value)?;
        self.put_bytes(key, &bytes)
    }

    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, HandlerError> {
        self.inner.get(key).map_err(|e| error(&self.name, e))
    }

    pub fn put_bytes(&self, key: &str, value: &[u8]) -> Result<(), HandlerError> {
        self.inner.set(key, value).map_err(|e| error(&self.name, e))
    }

    pub fn delete(&self, key: &str) -> Result<(), HandlerError> {
        self.inner.delete(key).map_err(|e| error(&self.name, e))
    }

    pub fn exists(&self, key: &str) -> Result<bool, HandlerError> {
        self.inner.exists(key).map_err(|e| error(&self.name, e))
    }

    /// Adds `delta` to the decimal number at `key` (0 when absent) and
    /// returns the new value.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, HandlerError> {
        atomics::increment(&self.inner, key, delta).map_err(|e| error(&self.name, e))
    }

    /// Every key in the bucket, as this invocation sees it.
    pub fn keys(&self) -> Result<Vec<String>, HandlerError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .inner
                .list_keys(cursor)
                .map_err(|e| error(&self.name, e))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }
}

/// Every error the host returns is deterministic (a grant, a key, a
/// limit): retrying would meet it again. Outages stop the invocation
/// before it sees them.
fn error(bucket: &str, error: store::Error) -> HandlerError {
    match error {
        store::Error::NoSuchStore | store::Error::AccessDenied => {
            HandlerError::permanent(format_args!(
                "key-value bucket {bucket:?}: access denied (see the manifest's [keyvalue] grants)"
            ))
        }
        store::Error::Other(message) => {
            HandlerError::permanent(format_args!("key-value bucket {bucket:?}: {message}"))
        }
    }
}
