//! `eventhost console`: the operator console beside a fleet, from a NATS
//! connection alone. It runs no handler; every runtime's admin server
//! serves the same pages at `/ui`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use eventhost::console::{self, Console, Tokens};
use eventhost::jetstream::endpoint::NatsEndpoint;
use eventhost::store::NatsStore;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where to serve the console. Loopback by default: give another
    /// address only behind something that controls who reaches it.
    #[arg(long, default_value = "127.0.0.1:9899", env = "EVENTHOST_CONSOLE_ADDR")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub access: ConsoleAccess,
}

/// Whether `eventhost run`'s admin server serves the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleMode {
    /// Only on a loopback admin address: an admin server opened to the
    /// network for metrics does not open the console with it.
    Auto,
    On,
    Off,
}

/// Who may act (replay, purge) through the console, for `console` and
/// `run` alike. Without a token the console only reads.
#[derive(Debug, Args)]
pub struct ConsoleAccess {
    /// File of operator tokens, one `name:token` per line (tokens of 16
    /// characters or more); each action is logged with the name.
    #[arg(long, env = "EVENTHOST_CONSOLE_TOKENS_FILE")]
    pub console_tokens: Option<PathBuf>,
}

impl ConsoleAccess {
    /// The tokens of the file and of `EVENTHOST_CONSOLE_TOKEN` (one
    /// `name:token`), read from the environment rather than a flag so
    /// that it never shows in a process listing.
    pub fn tokens(&self) -> Result<Tokens> {
        let variable = std::env::var("EVENTHOST_CONSOLE_TOKEN").ok();
        Ok(Tokens::load(
            self.console_tokens.as_deref(),
            variable.as_deref(),
        )?)
    }
}

pub async fn execute(
    args: ConsoleArgs,
    nats: &NatsEndpoint,
    bucket: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let store = Arc::new(NatsStore::new(js.clone()));
    let tokens = args.access.tokens()?;
    let actions = match tokens.any() {
        true => "replay and purge need an operator token",
        false => "read-only: no operator token given",
    };
    let listener = (tokio::net::TcpListener::bind(args.addr).await)
        .with_context(|| format!("binding the console to {} (--addr)", args.addr))?;
    let addr = listener.local_addr()?;
    let console = Arc::new(Console::new(js, store, bucket.to_string(), tokens, addr));
    println!(
        "console at http://{addr}/ui (reading {}; {actions}; Ctrl-C stops it)",
        nats.display_url()
    );
    console::serve(listener, console, shutdown).await
}
