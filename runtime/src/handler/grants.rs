//! What a manifest grants, resolved at load: the one resolver that the
//! runtime, `eventhost invoke` and a projection rebuild all use.
//!
//! Grants are checked against the store they will use (JetStream, or the
//! in-memory store `invoke` fills from the manifest): a bucket or event-store
//! subject that nothing stores fails the load, naming it, rather than the
//! first event. `physical` maps a granted bucket's name to the bucket that
//! holds it (a rebuilt read model's generation moves it).

use std::sync::Arc;

use anyhow::Result;

use super::manifest::HandlerManifest;
use crate::contract::LiveContracts;
use crate::sandbox::{Capabilities, eventstore, http, keyvalue};
use crate::store::Store;

/// The capabilities `manifest` grants handler `name`; what it emits is
/// held to `contracts`.
pub async fn resolve(
    name: &str,
    manifest: &HandlerManifest,
    contracts: Arc<LiveContracts>,
    store: Arc<dyn Store>,
    physical: &dyn Fn(&str) -> String,
) -> Result<Capabilities> {
    let keyvalue = match &manifest.keyvalue {
        Some(section) => Some(keyvalue::resolve(section, store.clone(), physical).await?),
        None => None,
    };
    let eventstore = match &manifest.eventstore {
        Some(section) => Some(eventstore::resolve(section, store).await?),
        None => None,
    };
    let http = match &manifest.http {
        Some(section) => Some(http::resolve(section, name)?),
        None => None,
    };
    Ok(Capabilities {
        emit: Some(Arc::new(manifest.emit_grant(name, contracts))),
        logging: None,
        config: Some(Arc::new(manifest.config_values()?)),
        keyvalue,
        eventstore,
        http,
    })
}
