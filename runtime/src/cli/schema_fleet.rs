//! `eventhost schema put|get|ls --deployed|rm`: a fleet's event contracts,
//! kept in the deploy bucket beside the handlers ([`SchemaBucket`]).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::checks::{
    candidate_verdict, flow_findings, print_contracts, readers_of, refuse_new_findings,
};
use eventhost::fleet::deploy::DeployBucket;
use eventhost::fleet::schemas::{PutError, SchemaBucket, StoredSchema};
use eventhost::jetstream::declare::Replication;
use eventhost::jetstream::endpoint::NatsEndpoint;

async fn open(nats: &NatsEndpoint, bucket: &str) -> Result<(DeployBucket, SchemaBucket)> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let deploy = DeployBucket::open(&js, bucket).await?;
    let schemas = deploy.schemas();
    Ok((deploy, schemas))
}

pub async fn put(
    nats: &NatsEndpoint,
    bucket: &str,
    (event_type, file): (&str, &Path),
    replicas: usize,
    force: bool,
) -> Result<()> {
    let document = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let client = nats.connect().await?;
    let replication = Replication::for_client(replicas, &client, &nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let deploy = DeployBucket::declare(&js, bucket, replication).await?;
    let schemas = deploy.schemas();
    // Handlers that follow the newest version start writing (or reading)
    // this one as soon as it is stored: the flow must still hold with it.
    let mut after = schemas.list().await?;
    let newest = (after.iter().rfind(|s| s.event_type == event_type)).map_or(0, |s| s.version);
    after.push(StoredSchema {
        event_type: event_type.to_string(),
        version: newest + 1,
        document: document.clone().into(),
    });
    check_flow_after(&deploy, &schemas, &after, force).await?;
    match schemas.put(event_type, &document).await {
        Ok(version) => {
            println!("{event_type} v{version} stored in {bucket}; runtimes enforce it now");
            Ok(())
        }
        Err(PutError::Refused(refused)) => {
            // The same verdict `schema check --candidate` gives, with the
            // deployed handlers that read the type named.
            let readers = match deploy.current_manifests().await {
                Ok(handlers) => readers_of(&handlers, event_type),
                Err(err) => vec![format!(
                    "(the deployed handlers could not be read: {err:#})"
                )],
            };
            let (contracts, _) = schemas.contracts().await?;
            let origin = file.to_path_buf();
            candidate_verdict(&contracts, event_type, &document, origin, &readers)?;
            // The candidate itself passes, so the refusal was about the type.
            Err(refused).context("refused")
        }
        Err(other) => Err(other.into()),
    }
}

/// Refuses a change to the schemas that would leave a deployed handler
/// emitting what another cannot read, or pinning a version that is gone,
/// unless `force`.
async fn check_flow_after(
    deploy: &DeployBucket,
    schemas: &SchemaBucket,
    after: &[StoredSchema],
    force: bool,
) -> Result<()> {
    let handlers = deploy.current_manifests().await?;
    let (now, _) = schemas.contracts().await?;
    let (then, _) = schemas.contracts_of(after);
    let before = flow_findings(&now, &handlers);
    let verdict = refuse_new_findings(&before, flow_findings(&then, &handlers));
    match (verdict, force) {
        (Ok(()), _) => Ok(()),
        (Err(err), true) => {
            eprintln!("warning: changing the schemas anyway (--force): {err:#}");
            Ok(())
        }
        (Err(err), false) => Err(err.context("refused (--force changes the schemas anyway)")),
    }
}

pub async fn get(
    nats: &NatsEndpoint,
    bucket: &str,
    event_type: &str,
    version: Option<u32>,
) -> Result<()> {
    let (_, schemas) = open(nats, bucket).await?;
    let version = match version {
        Some(version) => version,
        None => (schemas.list().await?.iter())
            .rfind(|s| s.event_type == event_type)
            .map(|s| s.version)
            .with_context(|| format!("{event_type} has no schema in {bucket}"))?,
    };
    let Some(document) = schemas.get(event_type, version).await? else {
        bail!("{event_type} has no version {version} in {bucket}");
    };
    println!("{}", String::from_utf8_lossy(&document));
    Ok(())
}

pub async fn ls(nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let (_, schemas) = open(nats, bucket).await?;
    let (contracts, problems) = schemas.contracts().await?;
    for problem in &problems {
        eprintln!("broken: {problem}");
    }
    print_contracts(&contracts, bucket)
}

pub async fn rm(nats: &NatsEndpoint, bucket: &str, event_type: &str, force: bool) -> Result<()> {
    let (deploy, schemas) = open(nats, bucket).await?;
    let mut after = schemas.list().await?;
    if let Some(at) = after.iter().rposition(|s| s.event_type == event_type) {
        after.remove(at);
    }
    check_flow_after(&deploy, &schemas, &after, force).await?;
    let version = schemas.remove_newest(event_type).await?;
    println!("{event_type} v{version} removed from {bucket}");
    Ok(())
}
