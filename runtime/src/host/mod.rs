//! The function host as a whole: connect, declare streams, load every
//! handler in the plugins directory (or deployed to a deploy bucket), run
//! them until shutdown, follow the directory or bucket while running (hot
//! reload), and announce what runs to the fleet.
//!
//! A handler that cannot load (bad manifest, broken component, a subject no
//! stream captures) is reported and skipped; the others still run. A broken
//! new version of a running handler is refused the same way, and the running
//! version keeps serving.

mod admin;
mod handlers;
mod reload;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::console::{Console, Tokens};
use crate::contract::LiveContracts;
use crate::dispatch::Services;
use crate::fleet;
use crate::fleet::announce::{self, Announcement, ConsumerRef, HandlerState};
use crate::fleet::deploy::{self, DeployBucket};
use crate::fleet::follow::{Mirror, Synced};
use crate::fleet::lease::Leases;
use crate::jetstream::config_file::RuntimeConfig;
use crate::jetstream::declare::Replication;
use crate::jetstream::endpoint::NatsEndpoint;
use crate::metrics::Metrics;
use crate::outcome::trail::Trail;
use crate::sandbox::{CompiledCache, Sandbox};
use crate::store::{NatsStore, Store};
use handlers::{Board, HandlerSet};

/// Everything `eventhost run` needs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub plugins_dir: PathBuf,
    /// The event contracts (`<type>/<version>.json`); a missing folder
    /// holds none.
    pub schemas_dir: PathBuf,
    /// Refuse events of types with no schema (dead-lettered as
    /// `schema_invalid`; emits refused) instead of letting them through.
    pub require_schemas: bool,
    /// Run the handlers deployed to this deploy bucket instead of the
    /// plugins directory.
    pub deploy_bucket: Option<String>,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Reload when the plugins directory changes.
    pub watch: bool,
    /// Where the admin HTTP server listens; `None` serves none.
    pub admin_addr: Option<SocketAddr>,
    /// Who may act through the console the admin server serves.
    pub console_tokens: Tokens,
    /// Whether the admin server serves the console at `/ui`.
    pub serve_console: bool,
    pub nats: NatsEndpoint,
    pub config: RuntimeConfig,
}

/// Runs until `shutdown` is cancelled, then lets in-flight events finish and
/// settle before returning.
pub async fn run(options: RuntimeOptions, shutdown: CancellationToken) -> Result<()> {
    let client = options.nats.connect().await?;
    tracing::info!(url = %options.nats.display_url(), "connected to NATS");
    let js = jetstream::new(client.clone());
    let replication =
        Replication::for_client(options.config.replicas, &client, &options.nats.url).await?;
    declare_patiently(&js, &options.config, replication, &shutdown).await?;

    let host = deploy::host_name();
    let id = fleet::runtime_id(&host);
    let cache = options.cache_dir.clone().map(CompiledCache::new);
    let sandbox = Arc::new(Sandbox::new(cache)?);
    let store: Arc<dyn Store> = Arc::new(NatsStore::new(js.clone()));
    let leases = Leases::new(store.clone(), &id, &host);
    let (mut mirror, dir, source) = handler_source(&options, &js, replication).await?;
    let metrics = Arc::new(Metrics::new());
    let contracts = open_contracts(&options, mirror.as_ref(), &metrics)?;
    let services = Services {
        js: js.clone(),
        store: store.clone(),
        metrics,
        replicas: replication.copies,
        unclaimed_runs: replication.oldest.commits_atomic_batches(),
        atomic_commits: options.config.atomic_commits && replication.commits_in_one_batch(),
        leases: Some(leases.clone()),
        contracts: Arc::new(contracts),
        trail: Trail::new(client.clone(), &options.config.story, &id),
    };
    let mut handlers = HandlerSet::new(sandbox, services.clone(), shutdown.clone());
    // Up before the handlers load, so probes see "not ready" rather than
    // nothing while components compile.
    let admin_stop = CancellationToken::new();
    let admin = serve_admin(&options, &services, handlers.board(), &client, &admin_stop).await?;
    handlers.reconcile(&dir).await;
    if handlers.names().is_empty() {
        tracing::warn!(from = %source, "no handlers loaded");
    }
    tracing::info!(runtime = %id, handlers = ?handlers.names(), from = %source, "runtime ready");

    let announcing = CancellationToken::new();
    let identity = Identity {
        runtime: id.clone(),
        host,
        source,
        started_at: chrono::Utc::now(),
    };
    let announcer = identity.announce(store, handlers.board(), leases, announcing.clone());

    let watch_dir = options.watch && mirror.is_none();
    follow(
        &client,
        &mut handlers,
        &mut mirror,
        &dir,
        watch_dir,
        &shutdown,
    )
    .await?;
    handlers.wait().await;
    announcing.cancel();
    let _ = announcer.await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Acks are sent without waiting for the server; make sure they left.
    client
        .flush()
        .await
        .context("flushing final acks to NATS")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Starts the admin server, with the console it serves, unless it is off.
async fn serve_admin(
    options: &RuntimeOptions,
    services: &Services,
    board: Board,
    client: &async_nats::Client,
    stop: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = options.admin_addr else {
        return Ok(None);
    };
    let console = options.serve_console.then(|| {
        let deploy_bucket =
            (options.deploy_bucket.clone()).unwrap_or_else(|| deploy::DEFAULT_BUCKET.to_string());
        let tokens = options.console_tokens.clone();
        if !tokens.any() {
            tracing::info!("no operator token: the console only reads (replay and purge are off)");
        }
        let (js, store) = (services.js.clone(), services.store.clone());
        Arc::new(Console::new(js, store, deploy_bucket, tokens, addr))
    });
    let state = admin::AdminState {
        metrics: services.metrics.clone(),
        board,
        client: client.clone(),
        js: services.js.clone(),
        console,
    };
    Ok(Some(admin::serve(addr, state, stop.clone()).await?))
}

/// The contracts the host enforces: the deploy bucket's, mirrored, or the
/// schemas folder's.
fn open_contracts(
    options: &RuntimeOptions,
    mirror: Option<&Mirror>,
    metrics: &Metrics,
) -> Result<LiveContracts> {
    let dir = match mirror {
        Some(mirror) => mirror.schemas_dir(),
        None => options.schemas_dir.clone(),
    };
    let checks = metrics.contract_checks.clone();
    LiveContracts::open(dir, options.require_schemas, checks).context("reading the event contracts")
}

/// Where the handlers come from: the deploy bucket (mirrored into a
/// directory) or the plugins directory. Returns the mirror, the directory
/// to load from, and how to name the source in logs.
async fn handler_source(
    options: &RuntimeOptions,
    js: &jetstream::Context,
    replication: Replication,
) -> Result<(Option<Mirror>, PathBuf, String)> {
    let Some(bucket) = &options.deploy_bucket else {
        let dir = options.plugins_dir.clone();
        let source = format!("plugins directory {}", dir.display());
        return Ok((None, dir, source));
    };
    let bucket = DeployBucket::declare(js, bucket, replication).await?;
    let mut mirror = Mirror::new(bucket)?;
    mirror.sync().await;
    let dir = mirror.dir();
    let source = format!("deploy bucket {}", mirror.bucket().name());
    Ok((Some(mirror), dir, source))
}

/// Reloads the handlers whenever something asks for it (a change of the
/// directory or the deploy bucket, SIGHUP, `eventhost reload`), until
/// `shutdown`.
async fn follow(
    client: &async_nats::Client,
    handlers: &mut HandlerSet,
    mirror: &mut Option<Mirror>,
    dir: &Path,
    watch_dir: bool,
    shutdown: &CancellationToken,
) -> Result<()> {
    let deploy_changes = mirror.as_ref().map(|m| m.bucket().changes_subject());
    let mut triggers =
        reload::Triggers::start(client, dir.to_path_buf(), watch_dir, deploy_changes).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            trigger = triggers.next() => {
                let synced = match mirror {
                    Some(mirror) => mirror.sync().await,
                    None => Synced::Changed,
                };
                let due = match synced {
                    Synced::Changed => true,
                    Synced::Unchanged => !trigger.is_deploy_bucket(),
                    // A half-mirrored schemas folder is never loaded.
                    Synced::Failed => false,
                };
                if due {
                    tracing::info!(%trigger, "reloading handlers");
                    handlers.reload_contracts();
                    handlers.reconcile(dir).await;
                }
            }
        }
    }
}

/// How long start-up waits for JetStream to take the declarations.
const DECLARE_PATIENCE: Duration = Duration::from_secs(60);

/// [`declare`], tried again for a while: a cluster starting at the same
/// time as the runtime answers only once it has elected its leaders, and a
/// busy server may time a request out. A declaration JetStream keeps
/// refusing (a subject another stream captures, say) fails after
/// [`DECLARE_PATIENCE`] with its error.
async fn declare_patiently(
    js: &jetstream::Context,
    config: &RuntimeConfig,
    replication: Replication,
    shutdown: &CancellationToken,
) -> Result<()> {
    let what = "JetStream did not take the declarations yet";
    let declare = || declare(js, config, replication);
    crate::jetstream::patiently(what, DECLARE_PATIENCE, shutdown, declare).await
}

/// Declares every stream and bucket the runtime needs, with the configured
/// replicas. Idempotent.
async fn declare(
    js: &jetstream::Context,
    config: &RuntimeConfig,
    replication: Replication,
) -> Result<()> {
    use crate::jetstream::declare::{CommitRecords, ensure_buckets, ensure_streams};
    let Replication { copies, .. } = replication;
    let records = match config.atomic_commits && replication.commits_in_one_batch() {
        true => CommitRecords::Beside,
        false => CommitRecords::Elsewhere,
    };
    ensure_streams(js, &config.streams, copies, records).await?;
    crate::outcome::dead_letter::ensure_stream(js, copies).await?;
    crate::outcome::trail::ensure_stream(js, &config.story, copies).await?;
    ensure_buckets(js, &config.buckets, copies, records).await?;
    crate::projection::declare(js, copies).await?;
    fleet::lease::declare(js, copies).await?;
    announce::declare(js, copies).await
}

/// Who this runtime is, for its announcements.
struct Identity {
    runtime: String,
    host: String,
    source: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl Identity {
    /// Announces what this runtime runs to the fleet until `stop`.
    fn announce(
        self,
        store: Arc<dyn Store>,
        board: Board,
        leases: Arc<Leases>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let id = self.runtime.clone();
        let describe = move || self.describe(&board, &leases);
        tokio::spawn(announce::announce(store, id, describe, stop))
    }

    fn describe(&self, board: &Board, leases: &Leases) -> Announcement {
        let handlers = {
            let board = board.lock().expect("never poisoned");
            (board.iter())
                .map(|(name, slot)| {
                    let current = slot.current.as_ref();
                    HandlerState {
                        name: name.clone(),
                        version: current.map(|d| d.version().to_string()),
                        in_flight: current.map_or(0, |d| d.in_flight()),
                        refused: slot.refused.clone(),
                        stats: current.map(|d| d.stats()),
                        consumers: (current.map(|d| d.bindings()).unwrap_or_default().iter())
                            .map(|b| ConsumerRef {
                                stream: b.stream.clone(),
                                consumer: b.durable.clone(),
                            })
                            .collect(),
                    }
                })
                .collect()
        };
        Announcement {
            runtime: self.runtime.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            eventhost: env!("CARGO_PKG_VERSION").to_string(),
            source: self.source.clone(),
            started_at: self.started_at,
            at: chrono::Utc::now(),
            handlers,
            leases: leases.held(),
        }
    }
}
