//! The `eventhost` command line: `run` the host, the `publish` / `tail`
//! helpers that drive a walkthrough by hand, `dlq` for dead letters, `kv`
//! for handler state, `invoke` to run a handler locally, `schema` for event
//! contracts, `catalog` for the event flow, `story` for what became of an
//! event, `console` for the operator console, and `deploy`, `ls`, `undeploy`, `rollback` and `status` for a
//! fleet.

mod catalog;
mod checks;
mod console;
mod dlq;
mod events;
mod fleet;
mod invoke;
mod kv;
mod new;
mod projection;
mod run;
mod schema;
mod schema_fleet;
mod story;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use eventhost::jetstream::config_file::RuntimeConfig;
use eventhost::jetstream::endpoint::NatsEndpoint;

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// A WebAssembly function host for CloudEvents on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "eventhost", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// NATS server URL (`nats://user:pass@host:port`, `tls://…` for TLS);
    /// several servers of a cluster separated by commas. Default:
    /// nats://127.0.0.1:4222 (for `run`, the config file's `nats_url` first).
    #[arg(long, global = true, env = "EVENTHOST_NATS_URL")]
    pub nats: Option<String>,
    /// NATS credentials file.
    #[arg(long, global = true, env = "EVENTHOST_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the NATS server (implies TLS).
    #[arg(long, global = true, env = "EVENTHOST_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The deploy bucket (`deploy`, `ls`, `undeploy`, `rollback`, `status`,
    /// and `run --deployed`).
    #[arg(long, global = true, default_value = eventhost::fleet::deploy::DEFAULT_BUCKET, env = "EVENTHOST_DEPLOY_BUCKET")]
    pub deploy_bucket: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EVENTHOST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the function host: consume, dispatch to handlers, publish outputs.
    Run(run::RunArgs),
    /// Publish one CloudEvent to JetStream and print its id.
    Publish(events::PublishArgs),
    /// Print the CloudEvents published on SUBJECTs as JSON lines.
    Tail(events::TailArgs),
    /// Ask every runtime connected to this NATS to reload its plugins.
    Reload,
    /// Inspect, replay or purge a handler's dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Read and write key-value buckets (handler state) by hand.
    Kv {
        #[command(subcommand)]
        command: kv::KvCommand,
    },
    /// Run a handler on one event locally, with no NATS: prints what it
    /// emitted and would write, and the outcome; fails unless it succeeded.
    Invoke(invoke::InvokeArgs),
    /// Create a handler project (Rust, Python or JavaScript/TypeScript) that
    /// builds with `./build.sh` and tests itself with `./test.sh`.
    New(new::NewArgs),
    /// Store a handler version in the deploy bucket; every runtime started
    /// with `run --deployed` switches to it (or refuses it, if broken).
    Deploy(fleet::DeployArgs),
    /// List the deployed handlers, their versions and the ones kept.
    Ls,
    /// Stop a deployed handler on every runtime, and delete its versions.
    Undeploy { name: String },
    /// Go back to a deployed handler's previous version.
    Rollback { name: String },
    /// Print the runtimes on this NATS and what each runs.
    Status,
    /// Tell what became of an event: every handler's attempts at it and at
    /// what it caused, found by its id, an order id (a `[story]` key), its
    /// subject or its correlation id.
    Story(story::StoryArgs),
    /// Serve the operator console (the fleet, live) from a NATS connection
    /// alone; every runtime's admin server also serves it at `/ui`.
    Console(console::ConsoleArgs),
    /// Event contracts: check a schema folder, a new version before it is
    /// added or a handler before it is deployed; put, get, list and remove
    /// a fleet's schemas in the deploy bucket.
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
    /// Read models: rebuild a projection from its source stream.
    Projection {
        #[command(subcommand)]
        command: projection::ProjectionCommand,
    },
    /// The event flow of the handlers (subjects, event types, who produces
    /// and consumes each): a table, an AsyncAPI document, or a diagram.
    Catalog(catalog::CatalogArgs),
}

impl Global {
    /// Flags (and their environment variables) win over the config file,
    /// which wins over the defaults.
    fn endpoint(&self, config: &RuntimeConfig) -> NatsEndpoint {
        NatsEndpoint {
            url: (self.nats.clone())
                .or_else(|| config.nats_url.clone())
                .unwrap_or_else(|| DEFAULT_NATS_URL.into()),
            creds: self.creds.clone().or_else(|| config.creds.clone()),
            tls_ca: self.tls_ca.clone().or_else(|| config.tls_ca.clone()),
        }
    }
}

impl Cli {
    pub async fn execute(self, shutdown: CancellationToken) -> Result<()> {
        let global = &self.global;
        let nats = global.endpoint(&RuntimeConfig::default());
        let bucket = &global.deploy_bucket;
        match self.command {
            Command::Run(args) => run::execute(args, global, shutdown).await,
            Command::Publish(args) => events::publish(args, &nats).await,
            Command::Tail(args) => events::tail(args, &nats, shutdown).await,
            Command::Reload => events::reload(&nats).await,
            Command::Dlq { command } => dlq::execute(command, &nats).await,
            Command::Kv { command } => kv::execute(command, &nats).await,
            Command::Invoke(args) => invoke::execute(args).await,
            Command::Deploy(args) => fleet::deploy(args, &nats, bucket).await,
            Command::Ls => fleet::ls(&nats, bucket).await,
            Command::Undeploy { name } => fleet::undeploy(&name, &nats, bucket).await,
            Command::Rollback { name } => fleet::rollback(&name, &nats, bucket).await,
            Command::Status => fleet::status(&nats, bucket).await,
            Command::Story(args) => story::execute(args, &nats).await,
            Command::Console(args) => console::execute(args, &nats, bucket, shutdown).await,
            Command::New(args) => new::execute(args),
            Command::Schema { command } => schema::execute(command, &nats, bucket).await,
            Command::Projection { command } => projection::execute(command, &nats).await,
            Command::Catalog(args) => catalog::execute(args, &nats, bucket).await,
        }
    }
}
