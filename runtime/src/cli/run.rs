//! `eventhost run`: the function host itself.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Global;
use super::console::ConsoleMode;
use eventhost::host::{self, RuntimeOptions};
use eventhost::jetstream::config_file::RuntimeConfig;
use eventhost::sandbox::CompiledCache;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of `<name>.wasm` + `<name>.toml` handler pairs.
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
    /// Run the handlers deployed through NATS (`eventhost deploy`) to
    /// the deploy bucket, and follow it, instead of a directory.
    #[arg(long, conflicts_with = "plugins")]
    deployed: bool,
    /// The event contracts: `<event type>/<version>.json` JSON Schemas.
    /// Default: `schemas` beside the plugins directory.
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// Refuse events of a type with no schema: inputs are dead-lettered
    /// (`schema_invalid`), emits refused. By default they pass unchecked.
    #[arg(long, env = "EVENTHOST_REQUIRE_SCHEMAS")]
    require_schemas: bool,
    /// Runtime config file (NATS URL, streams and buckets to declare).
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
    /// /handlers, and the console at /ui), or `off`.
    #[arg(long, default_value = "127.0.0.1:9898", env = "EVENTHOST_ADMIN_ADDR")]
    admin_addr: String,
    /// Serve the operator console at /ui on the admin server: `auto` only
    /// when the admin address is loopback.
    #[arg(long, value_enum, default_value_t = ConsoleMode::Auto, env = "EVENTHOST_CONSOLE")]
    console: ConsoleMode,
    #[command(flatten)]
    console_access: super::console::ConsoleAccess,
    /// Export event spans to this OTLP/HTTP collector (e.g.
    /// http://127.0.0.1:4318). Off when absent.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

pub async fn execute(args: RunArgs, global: &Global, shutdown: CancellationToken) -> Result<()> {
    let admin_addr = match args.admin_addr.as_str() {
        "off" => None,
        addr => Some(
            addr.parse()
                .with_context(|| format!("--admin-addr {addr:?}: expected HOST:PORT or `off`"))?,
        ),
    };
    let config = match args.config {
        Some(path) => RuntimeConfig::load(&path)?,
        None => RuntimeConfig::default(),
    };
    let console_tokens = args.console_access.tokens()?;
    let serve_console = match args.console {
        ConsoleMode::Auto => admin_addr.is_some_and(|a: std::net::SocketAddr| a.ip().is_loopback()),
        ConsoleMode::On => true,
        ConsoleMode::Off => false,
    };
    let schemas_dir = (args.schemas).unwrap_or_else(|| super::schema::beside(&args.plugins));
    let options = RuntimeOptions {
        schemas_dir,
        require_schemas: args.require_schemas,
        plugins_dir: args.plugins,
        deploy_bucket: args.deployed.then(|| global.deploy_bucket.clone()),
        watch: !args.no_watch,
        admin_addr,
        console_tokens,
        serve_console,
        cache_dir: match args.no_cache {
            true => None,
            false => args.cache_dir.or_else(CompiledCache::default_dir),
        },
        nats: global.endpoint(&config),
        config,
    };
    host::run(options, shutdown).await
}
