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
//!   places where neither files nor signals reach the runtime;
//! - with `--deployed`, a change to the deploy bucket's pointers: the
//!   runtime listens on their subject (every JetStream write is also a
//!   core NATS message), and also looks every [`DEPLOY_POLL`] in case it
//!   missed one while disconnected.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::fleet::RELOAD_SUBJECT;
use crate::handler::plugins;

/// How often the plugins directory is looked at.
const POLL: Duration = Duration::from_millis(500);
/// How often the deploy bucket is looked at without being told.
const DEPLOY_POLL: Duration = Duration::from_secs(30);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hangup,
    /// `eventhost reload`, on [`RELOAD_SUBJECT`].
    Request,
    DirectoryChanged,
    DeployBucketChanged,
    DeployBucketPoll,
}

impl Trigger {
    /// Whether the trigger only says "look at the deploy bucket": it calls
    /// for a reload only if the mirror changed, unlike one asked for by hand.
    pub fn is_deploy_bucket(self) -> bool {
        matches!(
            self,
            Trigger::DeployBucketChanged | Trigger::DeployBucketPoll
        )
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::Request => "eventhost reload",
            Trigger::DirectoryChanged => "plugins directory changed",
            Trigger::DeployBucketChanged => "deploy bucket changed",
            Trigger::DeployBucketPoll => "deploy bucket poll",
        })
    }
}

/// The reload triggers of one runtime; dropping it stops them.
pub struct Triggers {
    fired: mpsc::Receiver<Trigger>,
    tasks: Vec<JoinHandle<()>>,
}

impl Triggers {
    /// `deploy_changes`: the subject of the deploy bucket's pointers, when
    /// the runtime runs deployed handlers.
    pub async fn start(
        client: &async_nats::Client,
        dir: PathBuf,
        watch: bool,
        deploy_changes: Option<String>,
    ) -> Result<Self> {
        let (fire, fired) = mpsc::channel(16);
        let mut tasks = Vec::new();

        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let tx = fire.clone();
        tasks.push(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let _ = tx.send(Trigger::Hangup).await;
            }
        }));

        let mut requests = client
            .subscribe(RELOAD_SUBJECT)
            .await
            .context("subscribing to reload requests")?;
        let tx = fire.clone();
        tasks.push(tokio::spawn(async move {
            while requests.next().await.is_some() {
                let _ = tx.send(Trigger::Request).await;
            }
        }));

        if let Some(subject) = deploy_changes {
            let mut changes = client
                .subscribe(subject)
                .await
                .context("subscribing to deploy bucket changes")?;
            let tx = fire.clone();
            tasks.push(tokio::spawn(async move {
                let mut poll = tokio::time::interval(DEPLOY_POLL);
                poll.tick().await;
                loop {
                    let trigger = tokio::select! {
                        change = changes.next() => match change {
                            Some(_) => Trigger::DeployBucketChanged,
                            None => return,
                        },
                        _ = poll.tick() => Trigger::DeployBucketPoll,
                    };
                    if tx.send(trigger).await.is_err() {
                        return;
                    }
                }
            }));
        }
        if watch {
            tasks.push(tokio::spawn(poll_directory(dir, fire)));
        }
        Ok(Triggers { fired, tasks })
    }

    /// Waits for the next trigger and says which it was. The SIGHUP task
    /// never ends, so the channel never closes while `self` lives; should it
    /// close, no trigger comes again.
    pub async fn next(&mut self) -> Trigger {
        match self.fired.recv().await {
            Some(trigger) => trigger,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn poll_directory(dir: PathBuf, fire: mpsc::Sender<Trigger>) {
    let mut settle = Settle::new(plugins::fingerprint(&dir));
    loop {
        tokio::time::sleep(POLL).await;
        if settle.changed(plugins::fingerprint(&dir))
            && fire.send(Trigger::DirectoryChanged).await.is_err()
        {
            return;
        }
    }
}

/// The debounce: a change counts once it has held still for a whole poll.
struct Settle<T> {
    /// What the last reload saw.
    settled: T,
    /// What the previous poll saw.
    last: T,
}

impl<T: Clone + PartialEq> Settle<T> {
    fn new(now: T) -> Self {
        Settle {
            settled: now.clone(),
            last: now,
        }
    }

    /// Takes one poll's view; `true` when a reload is due.
    fn changed(&mut self, now: T) -> bool {
        let due = now == self.last && now != self.settled;
        if due {
            self.settled = now.clone();
        }
        self.last = now;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::Settle;

    #[test]
    fn a_change_fires_once_after_holding_still_for_a_poll() {
        let mut settle = Settle::new("v1");
        assert!(!settle.changed("v1"), "nothing changed");
        assert!(!settle.changed("v2"), "just changed: may still be copying");
        assert!(settle.changed("v2"), "held still for a poll");
        assert!(!settle.changed("v2"), "already reloaded");
    }

    #[test]
    fn a_file_still_growing_does_not_fire() {
        let mut settle = Settle::new(0);
        for size in [10, 20, 30] {
            assert!(!settle.changed(size), "still growing at {size}");
        }
        assert!(settle.changed(30));
    }

    #[test]
    fn a_change_undone_before_it_settles_does_not_fire() {
        let mut settle = Settle::new("v1");
        assert!(!settle.changed("tmp"));
        assert!(!settle.changed("v1"));
        assert!(!settle.changed("v1"));
    }
}
