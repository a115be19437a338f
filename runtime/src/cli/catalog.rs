//! `eventhost catalog`: the event flow of a set of handlers, drawn from
//! their manifests and the event contracts, as a table, an AsyncAPI
//! document, or a diagram ([`eventhost::catalog`]).
//!
//! Where the handlers come from is one function, returning [`Sources`]:
//! [`from_directories`] reads a plugins directory and a contracts folder,
//! [`from_deploy_bucket`] what a fleet runs (`--deployed`). Every other
//! step (building, writing) works on the sources alone. Only the manifests
//! are read, not the components: a directory of `<name>.toml` files is
//! enough. A manifest that does not parse is reported and left out; the
//! rest are still catalogued.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;

use eventhost::catalog::{Catalog, OUTSIDE, asyncapi, dot};
use eventhost::contract::Contracts;
use eventhost::fleet::deploy::DeployBucket;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::jetstream::endpoint::NatsEndpoint;

use super::checks::handlers_in;

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// The handlers: every `<name>.toml` manifest in DIR (the `.wasm`
    /// components are not read).
    #[arg(long, value_name = "DIR", default_value = "plugins")]
    plugins: PathBuf,
    /// Draw the handlers and schemas deployed to the deploy bucket
    /// instead of a directory's.
    #[arg(long, conflicts_with_all = ["plugins", "schemas"])]
    deployed: bool,
    /// The event contracts. Default: `schemas` beside the plugins directory.
    #[arg(long, value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// Write an AsyncAPI 3.0.0 document (JSON) to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    asyncapi: Option<PathBuf>,
    /// Write a Graphviz DOT graph to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    dot: Option<PathBuf>,
    /// Draw the graph as SVG into FILE with Graphviz's `dot`, which must be
    /// on PATH.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write a Mermaid flowchart to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    mermaid: Option<PathBuf>,
}

/// What a catalog is drawn from: each handler's name and manifest, and the
/// contracts.
pub struct Sources {
    pub handlers: Vec<(String, HandlerManifest)>,
    pub contracts: Contracts,
}

pub async fn execute(args: CatalogArgs, nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    let sources = match args.deployed {
        true => from_deploy_bucket(nats, bucket).await?,
        false => {
            let schemas =
                (args.schemas.clone()).unwrap_or_else(|| super::schema::beside(&args.plugins));
            from_directories(&args.plugins, &schemas)?
        }
    };
    let catalog = Catalog::build(&sources.handlers, &sources.contracts);
    for note in &catalog.notes {
        eprintln!("note: {note}");
    }
    write_outputs(&args, &catalog)
}

/// The handlers of the plugins directory `plugins` (each `<name>.toml`)
/// and the contracts folder `schemas`. A manifest or a contract that
/// cannot be read is reported on stderr and left out; only a directory
/// that cannot be read at all fails.
pub fn from_directories(plugins: &Path, schemas: &Path) -> Result<Sources> {
    let handlers = handlers_in(plugins)?;
    if handlers.is_empty() {
        eprintln!(
            "warning: no handler manifest (<name>.toml) in {}",
            plugins.display()
        );
    }
    let (contracts, problems) = Contracts::load_each(schemas)
        .with_context(|| format!("reading the contracts in {}", schemas.display()))?;
    for problem in problems {
        eprintln!("warning: a contract left out of the catalog: {problem}");
    }
    Ok(Sources {
        handlers,
        contracts,
    })
}

/// The handlers deployed to `bucket` as they run now, and its schemas.
pub async fn from_deploy_bucket(nats: &NatsEndpoint, bucket: &str) -> Result<Sources> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let deployed = DeployBucket::open(&js, bucket).await?;
    let handlers = deployed.current_manifests().await?;
    let (contracts, problems) = deployed.schemas().contracts().await?;
    for problem in problems {
        eprintln!("warning: a contract left out of the catalog: {problem}");
    }
    Ok(Sources {
        handlers,
        contracts,
    })
}

fn write_outputs(args: &CatalogArgs, catalog: &Catalog) -> Result<()> {
    let files = [&args.asyncapi, &args.dot, &args.svg, &args.mermaid];
    if files.iter().all(|file| file.is_none()) {
        print!("{}", table(catalog));
        return Ok(());
    }
    if let Some(path) = &args.asyncapi {
        let document = serde_json::to_string_pretty(&asyncapi::to_asyncapi(catalog))?;
        write(path, &(document + "\n"), "AsyncAPI document")?;
    }
    if let Some(path) = &args.dot {
        write(path, &dot::to_dot(catalog), "Graphviz graph")?;
    }
    if let Some(path) = &args.mermaid {
        write(path, &dot::to_mermaid(catalog), "Mermaid flowchart")?;
    }
    if let Some(path) = &args.svg {
        render_svg(&dot::to_dot(catalog), path)?;
        eprintln!("wrote {} (SVG, drawn by dot)", path.display());
    }
    Ok(())
}

fn write(path: &Path, text: &str, what: &str) -> Result<()> {
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {} ({what})", path.display());
    Ok(())
}

/// Runs `dot -Tsvg`, the graph on its stdin.
fn render_svg(graph: &str, path: &Path) -> Result<()> {
    let mut command = Command::new("dot");
    command.arg("-Tsvg");
    if path != Path::new("-") {
        command.arg("-o").arg(path);
    }
    let spawned = (command.stdin(Stdio::piped()).stderr(Stdio::piped())).spawn();
    let mut child = match spawned {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "--svg runs Graphviz's `dot`, which is not on PATH: install graphviz \
             (apt install graphviz, brew install graphviz), or write the graph with \
             --dot FILE and draw it elsewhere"
        ),
        other => other.context("running dot -Tsvg")?,
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(graph.as_bytes())
            .context("writing the graph to dot")?;
    }
    let output = child.wait_with_output().context("running dot -Tsvg")?;
    if !output.status.success() {
        bail!(
            "dot -Tsvg failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The catalog as two plain-text tables: subjects, then event types.
fn table(catalog: &Catalog) -> String {
    let who = |links: &[eventhost::catalog::Link], subject: &str| -> String {
        let names: Vec<String> = (links.iter())
            .map(|l| match l.via == subject {
                true => l.handler.clone(),
                false => format!("{} ({})", l.handler, l.via),
            })
            .collect();
        names.join(", ")
    };
    let mut subjects = vec![row([
        "SUBJECT",
        "PUBLISHED BY",
        "CONSUMED BY",
        "EVENT TYPES",
    ])];
    for s in &catalog.subjects {
        let producers = match s.producers.is_empty() {
            true => format!("({OUTSIDE})"),
            false => who(&s.producers, &s.subject),
        };
        let consumers = who(&s.consumers, &s.subject);
        subjects.push(vec![
            s.subject.clone(),
            producers,
            consumers,
            s.types.join(", "),
        ]);
    }
    let dead_letters = &catalog.dead_letters;
    subjects.push(vec![
        dead_letters.subjects.clone(),
        "every handler (dlq.<handler>)".into(),
        "eventhost dlq".into(),
        format!("dead letters ({})", dead_letters.stream),
    ]);
    let pins = |pins: &[eventhost::catalog::Pin]| -> String {
        let names: Vec<String> = (pins.iter())
            .map(|pin| match pin.version {
                Some(version) => format!("{}@{version}", pin.handler),
                None => pin.handler.clone(),
            })
            .collect();
        names.join(", ")
    };
    let mut types = vec![row(["EVENT TYPE", "SCHEMA", "EMITTED BY", "READ BY"])];
    for t in &catalog.types {
        let schema = match &t.schema {
            Some(schema) => format!("v{}", schema.newest),
            None => "none".into(),
        };
        let producers = match t.from_outside() {
            true => format!("({OUTSIDE})"),
            false => pins(&t.producers),
        };
        types.push(vec![
            t.event_type.clone(),
            schema,
            producers,
            pins(&t.consumers),
        ]);
    }
    format!(
        "{}\n{}\nSCHEMA is the newest version; handler@N pinned version N, a bare name follows the newest.\n",
        columns(&subjects),
        columns(&types)
    )
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Rows as left-aligned columns two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (at, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(at) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = (row.iter().zip(&widths))
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
