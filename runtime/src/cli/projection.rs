//! `eventhost projection rebuild`: a read model rebuilt from its source
//! stream and swapped in (see [`eventhost::projection`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use eventhost::jetstream::endpoint::NatsEndpoint;
use eventhost::projection::{self, Progress};

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

pub async fn execute(command: ProjectionCommand, nats: &NatsEndpoint) -> Result<()> {
    let ProjectionCommand::Rebuild { handler, plugins } = command;
    let js = async_nats::jetstream::new(nats.connect().await?);
    eprintln!("rebuilding {handler} from the start of its subjects…");
    let mut last = None;
    let progress = |p: Progress| {
        let now = (p.pending, p.unsettled);
        if last != Some(now) {
            eprintln!("  {} events to go, {} in hand", p.pending, p.unsettled);
            last = Some(now);
        }
    };
    let generation = projection::rebuild(&js, &plugins, &handler, progress).await?;
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
