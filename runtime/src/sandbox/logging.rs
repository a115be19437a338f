//! The logging capability: `eventhost:handler/logging`, granted to every
//! handler.
//!
//! A guest's lines go to the host's `tracing` log with target `guest`,
//! inside the invocation's span, so every line carries the handler's name
//! and version, the event id and the attempt, with the handler's secrets
//! removed (see [`super::secrets`]). There is nothing to resolve,
//! nothing to buffer and nothing to commit.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::capability::{Capability, InvocationContext, View};
use super::eventhost::handler::logging;
use super::secrets::Redactor;
use super::types::Level;
use super::v0_1;

/// The logging capability's per-invocation state: what to redact.
#[derive(Default)]
pub struct LoggingState {
    pub redactor: Redactor,
}

/// The longest guest line the log takes; longer ones are cut, so a guest
/// cannot flood the host's log (or its disk) with one call.
pub const MAX_LINE: usize = 16 << 10;

impl LoggingState {
    /// Writes one guest line at `level`, secrets removed, cut at
    /// [`MAX_LINE`] bytes.
    pub fn log(&self, level: Level, message: &str) {
        write(level, &self.redactor.redact(&cut(message)));
    }
}

fn cut(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_LINE {
        return message.into();
    }
    let end = message.floor_char_boundary(MAX_LINE);
    format!("{}… [cut: {} bytes in all]", &message[..end], message.len()).into()
}

fn write(level: Level, message: &str) {
    match level {
        Level::Trace => tracing::trace!(target: "guest", "{message}"),
        Level::Debug => tracing::debug!(target: "guest", "{message}"),
        Level::Info => tracing::info!(target: "guest", "{message}"),
        Level::Warn => tracing::warn!(target: "guest", "{message}"),
        Level::Error => tracing::error!(target: "guest", "{message}"),
    }
}

impl logging::Host for LoggingState {
    fn log(&mut self, level: Level, message: String) {
        LoggingState::log(self, level, &message);
    }
}

/// The logging capability.
pub struct Logging;

impl Capability for Logging {
    type Grant = ();
    type State = LoggingState;
    const GRANTED_BY: Option<&'static str> = None;
    const IMPORTS: &'static [&'static str] = &["eventhost:handler/logging@"];
    type Usage = ();
    type Metrics = ();
    type Series = ();

    fn state(_: Option<&Arc<()>>, invocation: &InvocationContext) -> LoggingState {
        LoggingState {
            redactor: invocation.redactor.clone(),
        }
    }

    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        logging::add_to_linker::<_, HasSelf<LoggingState>>(linker, |t| View::<Logging>::state(t))?;
        // The 0.1.0 contract's name for the same interface.
        linker.instance(&v0_1("logging"))?.func_wrap(
            "log",
            |mut store, (level, message): (Level, String)| {
                View::<Logging>::state(store.data_mut()).log(level, &message);
                Ok(())
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_LINE); // two bytes each
        let line = cut(&long);
        assert!(line.len() < MAX_LINE + 40, "{}", line.len());
        assert!(line.ends_with(&format!("[cut: {} bytes in all]", long.len())));
    }
}
