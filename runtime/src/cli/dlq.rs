//! `eventhost dlq`: look at, replay and purge a handler's dead letters.

use anyhow::{Result, bail};
use chrono::Utc;
use clap::Subcommand;

use eventhost::dead_letter_queue::{DeadLetterQueue, StoredDeadLetter};
use eventhost::jetstream::endpoint::NatsEndpoint;
use eventhost::outcome::dead_letter::{self, header};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: sequence, event id, type, attempts, age, error.
    List { handler: String },
    /// Everything about one dead letter: why it failed, then the original
    /// message's headers and payload.
    Show { handler: String, sequence: u64 },
    /// Republish dead letters to their original subjects, then remove them.
    Replay {
        handler: String,
        /// Replay only the dead letter at this sequence.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Replay every dead letter of the handler.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter of the handler.
    Purge { handler: String },
}

pub async fn execute(command: DlqCommand, nats: &NatsEndpoint) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let queue = DeadLetterQueue::open(&js).await?;
    match command {
        DlqCommand::List { handler } => {
            let letters = queue.list(&handler).await?;
            if letters.is_empty() {
                eprintln!("no dead letters for {handler}");
                return Ok(());
            }
            println!(
                "{:>8}  {:<36}  {:<30}  {:>8}  {:>8}  ERROR",
                "SEQ", "EVENT ID", "TYPE", "ATTEMPTS", "AGE"
            );
            for letter in &letters {
                println!("{}", row(letter));
            }
            println!("{} dead letter(s) for {handler}", letters.len());
        }
        DlqCommand::Show { handler, sequence } => {
            print!("{}", describe(&queue.get(&handler, sequence).await?));
        }
        DlqCommand::Replay { handler, seq, all } => {
            let letters = match (seq, all) {
                (Some(sequence), _) => vec![queue.get(&handler, sequence).await?],
                (None, true) => queue.list(&handler).await?,
                (None, false) => bail!("say which: --seq N or --all"),
            };
            for letter in &letters {
                let subject = queue.replay(letter).await?;
                println!("replayed {} to {subject}", letter.sequence);
            }
            eprintln!("{} dead letter(s) replayed", letters.len());
        }
        DlqCommand::Purge { handler } => {
            let purged = queue.purge(&handler).await?;
            println!("purged {purged} dead letter(s) of {handler}");
        }
    }
    Ok(())
}

fn row(letter: &StoredDeadLetter) -> String {
    let (id, ty) = letter
        .event_id_and_type()
        .unwrap_or_else(|| ("-".into(), "(not a CloudEvent)".into()));
    let kind = letter.fact(header::ERROR_KIND).unwrap_or("?");
    let error = letter.fact(header::ERROR).unwrap_or("");
    let mut error = format!("{kind}: {error}");
    if error.chars().count() > 60 {
        error = error.chars().take(59).collect::<String>() + "…";
    }
    let age = (Utc::now() - letter.stored).to_std().unwrap_or_default();
    let age = humantime::format_duration(std::time::Duration::from_secs(age.as_secs()));
    format!(
        "{:>8}  {:<36}  {:<30}  {:>8}  {:>8}  {error}",
        letter.sequence,
        id,
        ty,
        letter.fact(header::ATTEMPTS).unwrap_or("?"),
        age.to_string(),
    )
}

fn describe(letter: &StoredDeadLetter) -> String {
    let mut out = format!(
        "dead letter {} (stored {})\n",
        letter.sequence, letter.stored
    );
    for name in dead_letter::story_headers() {
        out += &format!("  {name}: {}\n", letter.fact(name).unwrap_or("-"));
    }
    out += "original headers:\n";
    for (name, values) in letter.original_headers().iter() {
        for value in values {
            out += &format!("  {name}: {}\n", value.as_str());
        }
    }
    out += "original payload:\n";
    let payload = match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&letter.payload).into_owned(),
    };
    out + &payload + "\n"
}
