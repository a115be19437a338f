//! What the nats-server eventhost talks to can do, decided in one place from
//! its version.
//!
//! The runtime reads the version of the server it connected to and, by
//! connecting to each briefly (a server sends its `INFO`, version included,
//! before any authentication), of every other server of the cluster it can
//! reach. The oldest decides. A configuration the servers cannot keep
//! eventhost's promises on is refused at start with the reason, rather than
//! run in a weaker form:
//!
//! | version | what it brings eventhost                                       |
//! |---------|----------------------------------------------------------------|
//! | 2.9.10  | the oldest supported: everything on a single server            |
//! | 2.11.0  | compare-and-set replicated safely: `replicas` > 1              |
//! | 2.14.0  | consumer reset: a new lease holder's rewind in one request      |
//! | 2.14.4  | atomic batches with sound per-subject checks ([`super::batch`]) |
//!
//! Compare-and-set (`Nats-Expected-Last-Subject-Sequence`) on a replicated
//! stream was unsafe before three fixes: nats-io/nats-server#4320 (2.9.21),
//! #5794 (expected sequence 0, 2.10.20) and #6194 (a follower storing both of
//! two competing writes, 2.11.0, not backported). A three-node cluster of
//! 2.9.10 counted wrong in this project's own fleet test. Every state write,
//! idempotency record and lease is such a write.
//!
//! What does *not* depend on the version: the order in which a server checks
//! a publish's `Nats-Msg-Id` and its expected sequence changed after 2.9
//! (see [`crate::store::CheckOrder`]); the commit reads its writes back
//! instead of trusting either order.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A nats-server release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl ServerVersion {
    /// The oldest server eventhost runs on (Debian 12's package).
    pub const OLDEST: ServerVersion = ServerVersion::new(2, 9, 10);
    /// The first release that replicates compare-and-set safely.
    pub const REPLICATED_COMPARE_AND_SET: ServerVersion = ServerVersion::new(2, 11, 0);
    /// The first release with `$JS.API.CONSUMER.RESET`.
    pub const CONSUMER_RESET: ServerVersion = ServerVersion::new(2, 14, 0);
    /// Atomic batches came in 2.12.0; the fixes to the expected
    /// subject-sequence checks inside a batch, which a one-write commit
    /// relies on, in 2.14.4 (and 2.12.14, a branch eventhost does not
    /// single out).
    pub const ATOMIC_BATCH: ServerVersion = ServerVersion::new(2, 14, 4);

    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        ServerVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `2.15.1`, `v2.10.20-beta.3` and the like.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        Some(ServerVersion::new(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }

    pub fn replicates_compare_and_set(self) -> bool {
        self >= Self::REPLICATED_COMPARE_AND_SET
    }

    pub fn resets_consumers(self) -> bool {
        self >= Self::CONSUMER_RESET
    }

    pub fn commits_atomic_batches(self) -> bool {
        self >= Self::ATOMIC_BATCH
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why the servers cannot run the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedServer {
    #[error(
        "nats-server {found} is older than {oldest}, the oldest eventhost supports; \
         upgrade the server"
    )]
    TooOld {
        found: ServerVersion,
        oldest: ServerVersion,
    },
    #[error(
        "`replicas = {replicas}` needs nats-server {needed} or newer on every server of the \
         cluster, and {found} is older: its replicated streams can store two competing \
         compare-and-set writes (nats-io/nats-server#4320, #5794, #6194), which would apply \
         an event twice or lose an update; upgrade the servers, or set `replicas = 1`"
    )]
    CannotReplicate {
        replicas: usize,
        found: ServerVersion,
        needed: ServerVersion,
    },
    #[error(
        "cannot tell the version of nats-server from {text:?}, so `replicas = {replicas}` \
         cannot be checked to be safe; set `replicas = 1` or use a released server"
    )]
    UnknownVersion { replicas: usize, text: String },
}

/// The servers a runtime talks to, as far as it could see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// Each reachable server's address and version text.
    pub seen: Vec<(String, String)>,
}

impl Servers {
    /// The oldest version among the servers seen; `Err` holds a version text
    /// that does not parse.
    pub fn oldest(&self) -> Result<Option<ServerVersion>, String> {
        let mut oldest = None;
        for (_, text) in &self.seen {
            let version = ServerVersion::parse(text).ok_or_else(|| text.clone())?;
            oldest = Some(oldest.map_or(version, |o: ServerVersion| o.min(version)));
        }
        Ok(oldest)
    }

    /// Checks that `replicas` copies can be kept with eventhost's promises,
    /// and returns the oldest server's version.
    pub fn check(&self, replicas: usize) -> Result<ServerVersion, UnsupportedServer> {
        let oldest = match self.oldest() {
            Ok(Some(version)) => version,
            Ok(None) | Err(_) if replicas <= 1 => return Ok(ServerVersion::OLDEST),
            Ok(None) => {
                let text = String::new();
                return Err(UnsupportedServer::UnknownVersion { replicas, text });
            }
            Err(text) => return Err(UnsupportedServer::UnknownVersion { replicas, text }),
        };
        if oldest < ServerVersion::OLDEST {
            return Err(UnsupportedServer::TooOld {
                found: oldest,
                oldest: ServerVersion::OLDEST,
            });
        }
        if replicas > 1 && !oldest.replicates_compare_and_set() {
            return Err(UnsupportedServer::CannotReplicate {
                replicas,
                found: oldest,
                needed: ServerVersion::REPLICATED_COMPARE_AND_SET,
            });
        }
        Ok(oldest)
    }
}

/// Reads the version of the server `client` is connected to and of every
/// other server it can reach: those in the connection's URL list and those
/// the server advertises. Unreachable ones are left out (a cluster may be
/// missing a node at start); each seen one is logged.
pub async fn discover(client: &async_nats::Client, configured: &str) -> Servers {
    let info = client.server_info();
    let mut seen = vec![(format!("{}:{}", info.host, info.port), info.version.clone())];
    let mut addresses: Vec<String> = configured
        .split(',')
        .filter_map(|url| host_port(url.trim()))
        .collect();
    addresses.extend(info.connect_urls.iter().filter_map(|url| host_port(url)));
    addresses.sort();
    addresses.dedup();
    for address in addresses {
        if seen.iter().any(|(a, _)| *a == address) {
            continue;
        }
        if let Some(version) = version_at(&address).await {
            seen.push((address, version));
        }
    }
    for (address, version) in &seen {
        tracing::info!(server = %address, version = %version, "nats-server");
    }
    Servers { seen }
}

/// `host:port` of a server URL (`nats://user:pw@host:4222`, `host:4222`).
fn host_port(url: &str) -> Option<String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("nats://{url}")
    };
    let parsed = url::Url::parse(&with_scheme).ok()?;
    Some(format!(
        "{}:{}",
        parsed.host_str()?,
        parsed.port().unwrap_or(4222)
    ))
}

/// The version in the `INFO` a server sends on connect, within a second.
async fn version_at(address: &str) -> Option<String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?).ok()?;
        Some(info.get("version")?.as_str()?.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(versions: &[&str]) -> Servers {
        let seen = versions.iter().enumerate();
        let seen = seen.map(|(i, v)| (format!("127.0.0.1:{i}"), v.to_string()));
        Servers {
            seen: seen.collect(),
        }
    }

    #[test]
    fn versions_parse_and_order() {
        let v = |t| ServerVersion::parse(t).unwrap();
        assert_eq!(v("2.15.1"), ServerVersion::new(2, 15, 1));
        assert_eq!(v("v2.10.20-beta.3"), ServerVersion::new(2, 10, 20));
        assert_eq!(v("2.11"), ServerVersion::new(2, 11, 0));
        assert!(ServerVersion::parse("").is_none());
        assert!(ServerVersion::parse("two").is_none());
        assert!(v("2.10.20") < v("2.11.0") && v("2.9.10") < v("2.10.0"));
        assert!(!v("2.10.29").replicates_compare_and_set());
        assert!(v("2.11.0").replicates_compare_and_set());
        assert!(!v("2.13.9").resets_consumers() && v("2.14.0").resets_consumers());
        assert!(!v("2.14.3").commits_atomic_batches() && v("2.14.4").commits_atomic_batches());
        assert!(!v("2.12.14").commits_atomic_batches() && v("2.15.1").commits_atomic_batches());
    }

    #[test]
    fn one_copy_runs_on_any_supported_server() {
        for version in ["2.9.10", "2.10.20", "2.15.1"] {
            assert!(servers(&[version]).check(1).is_ok(), "{version}");
        }
        let too_old = servers(&["2.8.4"]).check(1);
        assert!(matches!(too_old, Err(UnsupportedServer::TooOld { .. })));
    }

    #[test]
    fn replicas_are_refused_while_any_server_cannot_replicate_compare_and_set() {
        assert_eq!(
            servers(&["2.15.1", "2.11.0", "2.14.4"]).check(3),
            Ok(ServerVersion::new(2, 11, 0))
        );
        let mixed = servers(&["2.15.1", "2.10.20", "2.15.1"]).check(3);
        let Err(err) = mixed else { panic!("accepted") };
        assert!(matches!(err, UnsupportedServer::CannotReplicate { .. }));
        let message = err.to_string();
        assert!(
            message.contains("2.10.20") && message.contains("2.11.0"),
            "{message}"
        );
        assert!(message.contains("replicas = 1"), "{message}");
    }

    #[test]
    fn an_unreadable_version_is_refused_only_where_it_matters() {
        assert!(servers(&["nightly"]).check(1).is_ok());
        let refused = servers(&["nightly"]).check(3);
        assert!(matches!(
            refused,
            Err(UnsupportedServer::UnknownVersion { .. })
        ));
    }

    #[test]
    fn server_urls_become_addresses() {
        assert_eq!(
            host_port("nats://u:p@127.0.0.1:4333").as_deref(),
            Some("127.0.0.1:4333")
        );
        assert_eq!(
            host_port("127.0.0.1:4222").as_deref(),
            Some("127.0.0.1:4222")
        );
        assert_eq!(
            host_port("tls://nats.local").as_deref(),
            Some("nats.local:4222")
        );
    }

    #[tokio::test]
    async fn the_version_is_read_from_the_info_a_server_sends_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let info = "INFO {\"server_id\":\"x\",\"version\":\"2.15.1\",\"go\":\"go1.25\"}\r\n";
            socket.write_all(info.as_bytes()).await.unwrap();
        });
        assert_eq!(version_at(&address).await.as_deref(), Some("2.15.1"));
        assert_eq!(version_at("127.0.0.1:1").await, None);
    }
}
