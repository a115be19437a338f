//! `wasi:keyvalue` (store, atomics, batch) as the guest calls it, over
//! [`KeyValueState`].
//!
//! A bucket resource is the index of its grant: opening checks the grant
//! once, and every call through the handle reaches that bucket only.

use wasmtime::component::{HasSelf, Linker, Resource};

use super::{KeyValue, KeyValueState, KvError};
use crate::sandbox::capability::View;
use crate::sandbox::wasi::keyvalue::{atomics, batch, store};

/// The host side of a `bucket` handle: its rep is the grant index.
pub struct BucketRef;

fn index(bucket: &Resource<BucketRef>) -> usize {
    bucket.rep() as usize
}

impl store::Host for KeyValueState {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketRef>, KvError> {
        let index = KeyValueState::open(self, &identifier)?;
        Ok(Resource::new_own(index as u32))
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        match err {
            KvError::NoSuchStore => Ok(store::Error::NoSuchStore),
            KvError::AccessDenied => Ok(store::Error::AccessDenied),
            KvError::Other(message) => Ok(store::Error::Other(message)),
            // Traps the guest; the dispatcher reads why from the state.
            KvError::Interrupted => Err(wasmtime::format_err!(
                "the invocation was interrupted by the host"
            )),
        }
    }
}

impl store::HostBucket for KeyValueState {
    async fn get(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let value = KeyValueState::get(self, index(&bucket), &key).await?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        KeyValueState::set(self, index(&bucket), &key, value.into()).await
    }

    async fn delete(&mut self, bucket: Resource<BucketRef>, key: String) -> Result<(), KvError> {
        KeyValueState::delete(self, index(&bucket), &key).await
    }

    async fn exists(&mut self, bucket: Resource<BucketRef>, key: String) -> Result<bool, KvError> {
        Ok(KeyValueState::get(self, index(&bucket), &key)
            .await?
            .is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketRef>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let (keys, cursor) = KeyValueState::list_keys(self, index(&bucket), cursor).await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, _bucket: Resource<BucketRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl atomics::Host for KeyValueState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        KeyValueState::increment(self, index(&bucket), &key, delta).await
    }
}

impl batch::Host for KeyValueState {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketRef>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = KeyValueState::get(self, index(&bucket), &key).await?;
            values.push(value.map(|v| (key, v.to_vec())));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketRef>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        for (key, value) in key_values {
            KeyValueState::set(self, index(&bucket), &key, value.into()).await?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketRef>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        for key in keys {
            KeyValueState::delete(self, index(&bucket), &key).await?;
        }
        Ok(())
    }
}

/// Links `wasi:keyvalue` for a handler granted buckets.
pub(super) fn add_to_linker<T: View<KeyValue>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn get<T: View<KeyValue>>(t: &mut T) -> &mut KeyValueState {
        View::<KeyValue>::state(t)
    }
    store::add_to_linker::<_, HasSelf<KeyValueState>>(linker, get::<T>)?;
    atomics::add_to_linker::<_, HasSelf<KeyValueState>>(linker, get::<T>)?;
    batch::add_to_linker::<_, HasSelf<KeyValueState>>(linker, get::<T>)?;
    Ok(())
}
