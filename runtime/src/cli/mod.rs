//! The `eventhost` command line: `run` the host, the `publish` / `tail`
//! helpers that drive a walkthrough by hand, `dlq` for dead letters, `kv`
//! for handler state, `invoke` to run a handler locally, and `deploy`,
//! `ls`, `undeploy`, `rollback` and `status` for a fleet.

mod dlq;
mod fleet;
mod invoke;
mod kv;
mod new;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use eventhost::config::RuntimeConfig;
use eventhost::decode::{ContentMode, decode};
use eventhost::encode::encode;
use eventhost::nats::NatsEndpoint;
use eventhost::runtime::{self, RuntimeOptions};
use eventhost::sandbox::CompiledCache;

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
    /// several servers of a cluster separated by commas. Default: the config
    /// file's `nats_url`, else nats://127.0.0.1:4222.
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
    Run {
        /// Directory of `<name>.wasm` + `<name>.toml` handler pairs.
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
        /// Run the handlers deployed through NATS (`eventhost deploy`) to
        /// the deploy bucket, and follow it, instead of a directory.
        #[arg(long, conflicts_with = "plugins")]
        deployed: bool,
        /// Runtime config file (NATS URL, streams to declare).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where compiled components are cached across restarts.
        /// Default: $XDG_CACHE_HOME/eventhost, else ~/.cache/eventhost.
        #[arg(long, env = "EVENTHOST_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Compile every component at every start instead.
        #[arg(long, conflicts_with = "cache_dir")]
        no_cache: bool,
        /// Do not reload when the plugins directory changes (SIGHUP and
        /// `eventhost reload` still work).
        #[arg(long)]
        no_watch: bool,
        /// Address of the admin HTTP server (/metrics, /healthz, /readyz,
        /// /handlers), or `off`.
        #[arg(long, default_value = "127.0.0.1:9898", env = "EVENTHOST_ADMIN_ADDR")]
        admin_addr: String,
        /// Export event spans to this OTLP/HTTP collector (e.g.
        /// http://127.0.0.1:4318). Off when absent.
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
    /// Publish one CloudEvent to JetStream and print its id.
    Publish {
        /// NATS subject to publish to.
        subject: String,
        /// CloudEvents `type`.
        #[arg(long = "type")]
        ty: String,
        /// CloudEvents `source`.
        #[arg(long, default_value = "/eventhost/cli")]
        source: String,
        /// CloudEvents `id` (default: a random UUID).
        #[arg(long)]
        id: Option<String>,
        /// JSON data.
        #[arg(long)]
        data: Option<String>,
        /// Extension attribute as name=value (repeatable).
        #[arg(long = "ext", value_name = "NAME=VALUE")]
        extensions: Vec<String>,
        /// Binary content mode (ce- headers) instead of structured JSON.
        #[arg(long)]
        binary: bool,
    },
    /// Print the CloudEvents published on SUBJECTs as JSON lines.
    Tail {
        #[arg(required = true)]
        subjects: Vec<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Exit with an error if `--count` events have not arrived after
        /// this long (e.g. `30s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// One short human-readable line per event instead of JSON.
        #[arg(long)]
        pretty: bool,
    },
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
    /// Read models: rebuild a projection from its source stream.
    Projection {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionCommand {
    /// Replay HANDLER's subjects from the start of the stream into fresh
    /// buckets, and swap them in once caught up (the current read model keeps
    /// serving meanwhile; runtimes reload to the new generation).
    Rebuild {
        handler: String,
        /// Directory holding HANDLER.wasm and HANDLER.toml.
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
    },
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
        let nats = self.global.endpoint(&RuntimeConfig::default());
        match self.command {
            Command::Run {
                plugins,
                deployed,
                config,
                cache_dir,
                no_cache,
                no_watch,
                admin_addr,
                otlp_endpoint: _,
            } => {
                let admin_addr = match admin_addr.as_str() {
                    "off" => None,
                    addr => Some(addr.parse().with_context(|| {
                        format!("--admin-addr {addr:?}: expected HOST:PORT or `off`")
                    })?),
                };
                let config = match config {
                    Some(path) => RuntimeConfig::load(&path)?,
                    None => RuntimeConfig::default(),
                };
                let options = RuntimeOptions {
                    plugins_dir: plugins,
                    deploy_bucket: deployed.then(|| self.global.deploy_bucket.clone()),
                    watch: !no_watch,
                    admin_addr,
                    cache_dir: match no_cache {
                        true => None,
                        false => cache_dir.or_else(CompiledCache::default_dir),
                    },
                    nats: self.global.endpoint(&config),
                    config,
                };
                runtime::run(options, shutdown).await
            }
            Command::Publish {
                subject,
                ty,
                source,
                id,
                data,
                extensions,
                binary,
            } => {
                let client = nats.connect().await?;
                let mut builder = EventBuilderV10::new()
                    .id(id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
                    .source(source)
                    .ty(ty)
                    .time(chrono::Utc::now());
                for ext in &extensions {
                    let Some((name, value)) = ext.split_once('=') else {
                        bail!("--ext {ext:?}: expected NAME=VALUE");
                    };
                    builder = builder.extension(name, value);
                }
                if let Some(data) = data {
                    let json: serde_json::Value =
                        serde_json::from_str(&data).context("--data must be JSON")?;
                    builder = builder.data("application/json", Data::Json(json));
                }
                let event = builder.build().context("building the event")?;
                let mode = if binary {
                    ContentMode::Binary
                } else {
                    ContentMode::Structured
                };
                let id = event.id().to_string();
                let (headers, payload) = encode(event, mode)?;
                let js = async_nats::jetstream::new(client);
                js.publish_with_headers(subject.clone(), headers, payload)
                    .await?
                    .await
                    .with_context(|| format!("no JetStream stream stored {subject:?}"))?;
                println!("{id}");
                Ok(())
            }
            Command::Tail {
                subjects,
                count,
                timeout,
                pretty,
            } => {
                let client = nats.connect().await?;
                let mut merged = futures::stream::SelectAll::new();
                for subject in &subjects {
                    merged.push(client.subscribe(subject.clone()).await?);
                }
                client.flush().await?;
                eprintln!("tail: listening on {}", subjects.join(" "));
                let deadline = async {
                    match timeout {
                        Some(t) => tokio::time::sleep(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(deadline);
                let mut seen = 0;
                while count.is_none_or(|c| seen < c) {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = &mut deadline => bail!("timed out after {seen} events"),
                        m = merged.next() => match m { Some(m) => m, None => break },
                    };
                    match decode(message.headers.as_ref(), &message.payload) {
                        Ok(decoded) => {
                            let (_, json) = encode(decoded.event, ContentMode::Structured)?;
                            if pretty {
                                println!("{}", one_line(&message.subject, &json, decoded.mode));
                            } else {
                                println!("{}", String::from_utf8_lossy(&json));
                            }
                            seen += 1;
                        }
                        Err(err) => eprintln!("{}: not a CloudEvent: {err}", message.subject),
                    }
                }
                Ok(())
            }
            Command::Reload => {
                let client = nats.connect().await?;
                client
                    .publish(runtime::RELOAD_SUBJECT, "".into())
                    .await
                    .context("sending the reload request")?;
                client.flush().await?;
                println!("asked every runtime on {} to reload", nats.display_url());
                Ok(())
            }
            Command::Dlq { command } => dlq::execute(command, &nats).await,
            Command::Kv { command } => kv::execute(command, &nats).await,
            Command::Invoke(args) => invoke::execute(args).await,
            Command::Deploy(args) => fleet::deploy(args, &nats, &self.global.deploy_bucket).await,
            Command::Ls => fleet::ls(&nats, &self.global.deploy_bucket).await,
            Command::Undeploy { name } => {
                fleet::undeploy(&name, &nats, &self.global.deploy_bucket).await
            }
            Command::Rollback { name } => {
                fleet::rollback(&name, &nats, &self.global.deploy_bucket).await
            }
            Command::Status => fleet::status(&nats, &self.global.deploy_bucket).await,
            Command::New(args) => new::execute(args),
            Command::Projection {
                command: ProjectionCommand::Rebuild { handler, plugins },
            } => {
                let js = async_nats::jetstream::new(nats.connect().await?);
                eprintln!("rebuilding {handler} from the start of its subjects…");
                let mut last = None;
                let progress = |p: eventhost::projection::Progress| {
                    let now = (p.pending, p.unsettled);
                    if last != Some(now) {
                        eprintln!("  {} events to go, {} in hand", p.pending, p.unsettled);
                        last = Some(now);
                    }
                };
                let generation =
                    eventhost::projection::rebuild(&js, &plugins, &handler, progress).await?;
                println!("{handler}: generation {} swapped in", generation.number);
                for (name, physical) in &generation.buckets {
                    println!("  bucket {name} is now stored in {physical}");
                }
                println!(
                    "  consumer {}; runtimes were asked to reload",
                    generation.consumer
                );
                Ok(())
            }
        }
    }
}

/// `payments.completed  [binary]  com.example.payment.completed  {"amount":…}`
fn one_line(subject: &str, structured_json: &[u8], mode: ContentMode) -> String {
    let event: serde_json::Value = serde_json::from_slice(structured_json).unwrap_or_default();
    let mode = match mode {
        ContentMode::Structured => "structured",
        ContentMode::Binary => "binary",
    };
    format!(
        "{subject:<22} {mode:<10} {:<34} {}",
        event["type"].as_str().unwrap_or_default(),
        event.get("data").map(|d| d.to_string()).unwrap_or_default()
    )
}
