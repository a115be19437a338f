//! `eventhost story`: what became of an event, from the trail — every event
//! of its chain, each after the one that caused it, with every handler's
//! attempts. The same story as the console's `/ui/story`, as text (or its
//! JSON with `--json`).

use anyhow::{Result, bail};
use clap::Args;

use eventhost::console::story::{self, Story, StoryEvent};
use eventhost::jetstream::endpoint::NatsEndpoint;
use eventhost::outcome::trail::SearchBy;

#[derive(Debug, Args)]
pub struct StoryArgs {
    /// An event id, a story key's value (an order id), a CloudEvents
    /// subject or a correlation id.
    query: String,
    /// Search only by this; otherwise by each in turn (id, key, subject,
    /// correlation).
    #[arg(long, value_enum)]
    by: Option<By>,
    /// Print the story as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum By {
    Id,
    Key,
    Subject,
    Correlation,
}

pub async fn execute(args: StoryArgs, nats: &NatsEndpoint) -> Result<()> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let by = args.by.map(|by| match by {
        By::Id => SearchBy::Id,
        By::Key => SearchBy::Key,
        By::Subject => SearchBy::Subject,
        By::Correlation => SearchBy::Correlation,
    });
    let story = story::search(&js, &args.query, by).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&story)?);
        return Ok(());
    }
    print!("{}", told(&story)?);
    Ok(())
}

/// The story as text; an error when there is none to tell.
fn told(story: &Story) -> Result<String> {
    if !story.trail {
        bail!("no trail on this NATS: no runtime with [story] on has started here");
    }
    let Some(found_by) = story.found_by else {
        bail!(
            "nothing in the trail matches {:?} (entries expire after [story] max_age)",
            story.query
        );
    };
    let mut text = format!(
        "{:?} found by {}: {} events{}\n",
        story.query,
        serde_json::to_value(found_by)?.as_str().unwrap_or_default(),
        story.events.len(),
        if story.more {
            " (cut: more entries exist)"
        } else {
            ""
        }
    );
    for event in &story.events {
        event_lines(&mut text, event);
    }
    Ok(text)
}

fn event_lines(text: &mut String, event: &StoryEvent) {
    let indent = "    ".repeat(event.depth);
    let arrow = if event.depth > 0 { "↳ " } else { "" };
    let mark = if event.matched { "  ◀" } else { "" };
    text.push_str(&format!(
        "\n{indent}{arrow}{}  id {}  on {}  {}{mark}\n",
        event.event_type,
        event.id,
        event.nats_subject,
        event.first_seen.format("%H:%M:%S%.3f")
    ));
    for handler in &event.handlers {
        for attempt in &handler.attempts {
            let number = match attempt.attempt {
                0 => "not run".to_string(),
                n => format!("attempt {n}"),
            };
            let mut line = format!(
                "{indent}  {:<14} {number:<10} {:<14}",
                handler.handler, attempt.outcome
            );
            if let Some(us) = attempt.duration_us {
                line.push_str(&format!(" ran {:.1} ms", us as f64 / 1000.0));
            }
            if attempt.emitted > 0 {
                line.push_str(&format!(" emitted {}", attempt.emitted));
            }
            if let (Some(kind), Some(error)) = (&attempt.kind, &attempt.error) {
                line.push_str(&format!(" {kind}: {error}"));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        if let Some(record) = &handler.record {
            text.push_str(&format!(
                "{indent}  {:<14} record now: {record}\n",
                handler.handler
            ));
        }
    }
}
