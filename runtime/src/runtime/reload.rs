//! What makes the runtime look at the plugins directory again.
//!
//! Three triggers, any of which may fire at any time:
//! - the directory changes (on unless `--no-watch`). It is polled rather
//!   than watched with inotify: polling works the same on every filesystem,
//!   in containers and with ConfigMap-style symlink swaps, and one `readdir`
//!   a half second costs nothing. A change fires only once the directory has
//!   stayed the same for one more poll, so a file still being copied is not
//!   picked up half-written (and if it is, loading it fails and the running
//!   version keeps serving until the copy completes);
//! - SIGHUP;
//! - a message on [`RELOAD_SUBJECT`], which `eventhost reload` sends, for
//!   places where neither files nor signals reach the runtime.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::plugins;

/// Core NATS subject every runtime listens on for reload requests.
pub const RELOAD_SUBJECT: &str = "eventhost.control.reload";
/// How often the plugins directory is looked at.
const POLL: Duration = Duration::from_millis(500);

/// The reload triggers of one runtime; dropping it stops them.
pub struct Triggers {
    fired: mpsc::Receiver<&'static str>,
    tasks: Vec<JoinHandle<()>>,
}

impl Triggers {
    pub async fn start(client: &async_nats::Client, dir: PathBuf, watch: bool) -> Result<Self> {
        let (fire, fired) = mpsc::channel(16);
        let mut tasks = Vec::new();

        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let tx = fire.clone();
        tasks.push(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let _ = tx.send("SIGHUP").await;
            }
        }));

        let mut requests = client
            .subscribe(RELOAD_SUBJECT)
            .await
            .context("subscribing to reload requests")?;
        let tx = fire.clone();
        tasks.push(tokio::spawn(async move {
            while requests.next().await.is_some() {
                let _ = tx.send("eventhost reload").await;
            }
        }));

        if watch {
            tasks.push(tokio::spawn(poll_directory(dir, fire)));
        }
        Ok(Triggers { fired, tasks })
    }

    /// Waits for the next trigger and says which it was.
    pub async fn next(&mut self) -> &'static str {
        self.fired.recv().await.unwrap_or("closed")
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn poll_directory(dir: PathBuf, fire: mpsc::Sender<&'static str>) {
    let mut settled = plugins::fingerprint(&dir);
    let mut last = settled.clone();
    loop {
        tokio::time::sleep(POLL).await;
        let now = plugins::fingerprint(&dir);
        // Fire once a change has held still for a whole poll.
        if now == last && now != settled {
            settled = now.clone();
            if fire.send("plugins directory changed").await.is_err() {
                return;
            }
        }
        last = now;
    }
}
