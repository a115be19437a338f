//! `eventhost deploy`, `ls`, `undeploy`, `rollback` and `status`: handlers
//! deployed through NATS, and the fleet of runtimes running them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use eventhost::fleet::announce;
use eventhost::fleet::deploy::DeployBucket;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::jetstream::declare::Replication;
use eventhost::jetstream::endpoint::NatsEndpoint;
use eventhost::store::NatsStore;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The handler's name (what `plugins/<name>.wasm` would be called).
    pub name: String,
    /// The component.
    #[arg(long)]
    pub wasm: PathBuf,
    /// Its manifest (checked here; the component is checked by each runtime).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Replicas of the deploy bucket, if this deploy creates it (runtimes
    /// declare it with their config's `replicas`).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Deploy even if the version would break the handlers that read what
    /// it emits, or emit what it cannot read (the blast-radius check).
    #[arg(long)]
    pub force: bool,
}

pub async fn deploy(args: DeployArgs, nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    let manifest = std::fs::read(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let client = nats.connect().await?;
    let replication = Replication::for_client(args.replicas, &client, &nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let bucket = DeployBucket::declare(&js, bucket, replication).await?;
    check_blast_radius(&bucket, &args, &manifest).await?;
    let deployment = bucket.deploy(&args.name, &wasm, &manifest).await?;
    println!(
        "{} {} deployed to {} ({} bytes){}",
        args.name,
        deployment.version,
        bucket.name(),
        wasm.len(),
        match deployment.previous.first() {
            Some(previous) => format!("; previous version {previous} kept for rollback"),
            None => String::new(),
        }
    );
    Ok(())
}

/// Refuses a version that would break the deployed handlers, against the
/// deployed schemas, unless `--force`.
async fn check_blast_radius(
    bucket: &DeployBucket,
    args: &DeployArgs,
    manifest: &[u8],
) -> Result<()> {
    let text = std::str::from_utf8(manifest).context("the manifest is not UTF-8")?;
    let manifest = HandlerManifest::parse(text, &args.name).context("invalid manifest")?;
    let (contracts, _) = bucket.schemas().contracts().await?;
    let handlers = bucket.current_manifests().await?;
    let verdict = super::checks::report_blast_radius(&contracts, &args.name, &manifest, &handlers);
    match (verdict, args.force) {
        (Ok(()), _) => Ok(()),
        (Err(err), true) => {
            eprintln!("warning: deploying anyway (--force): {err:#}");
            Ok(())
        }
        (Err(err), false) => Err(err.context("deploy refused (--force deploys anyway)")),
    }
}

pub async fn ls(nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let deployed = DeployBucket::open(&js, bucket).await?.list().await?;
    if deployed.is_empty() {
        println!("nothing deployed to {bucket}");
        return Ok(());
    }
    println!(
        "{:<20} {:<14} {:<21} {:<16} PREVIOUS",
        "HANDLER", "VERSION", "DEPLOYED", "BY"
    );
    for (name, d) in deployed {
        println!(
            "{:<20} {:<14} {:<21} {:<16} {}",
            name,
            d.version,
            d.deployed_at.format("%Y-%m-%d %H:%M:%S"),
            d.deployed_by,
            d.previous.join(" ")
        );
    }
    Ok(())
}

pub async fn undeploy(name: &str, nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let gone = DeployBucket::open(&js, bucket)
        .await?
        .undeploy(name)
        .await?;
    println!(
        "{name} {} undeployed; runtimes finish its in-flight events and stop it",
        gone.version
    );
    Ok(())
}

pub async fn rollback(name: &str, nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let now = DeployBucket::open(&js, bucket)
        .await?
        .rollback(name)
        .await?;
    println!("{name} rolled back to {}", now.version);
    Ok(())
}

pub async fn status(nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let store = NatsStore::new(js.clone());
    let fleet = announce::fleet(&store)
        .await
        .context("reading the runtimes' announcements (has any runtime started?)")?;
    let deployed = DeployBucket::versions(&js, bucket).await?;
    print!("{}", announce::render(&fleet, deployed.as_ref()));
    Ok(())
}
