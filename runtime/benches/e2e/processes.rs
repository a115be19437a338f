//! The processes a benchmark run starts: its own `nats-server -js`, the
//! `eventhost` runtime, and the native baseline (this same binary, re-run
//! with `--serve-baseline`, so it is a process of its own like the runtime).

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process stopped (SIGTERM, then SIGKILL) on drop.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output in `log`, and waits until the log
    /// shows `ready`.
    pub fn start(mut command: Command, log: &Path, ready: &str) -> Result<Self> {
        let out = File::create(log)?;
        let child = command
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut process = Process {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(ready) {
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("{command:?} exited ({status}) before it was ready:\n{text}");
            }
            if Instant::now() > deadline {
                process.stop();
                bail!("{command:?} not ready after 120 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, from `/proc/<pid>/status`.
    pub fn rss(&self) -> Result<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib * 1024)
        };
        Ok(Rss {
            current: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// CPU time (user + system) the process has used so far, from
    /// `/proc/<pid>/stat` (in clock ticks of 10 ms, Linux's fixed USER_HZ).
    pub fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("no command name in /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the whole line.
        let field = |i: usize| -> Result<u64> {
            Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse()?)
        };
        let ticks = field(11)? + field(12)?;
        Ok(Duration::from_millis(ticks * 10))
    }

    /// SIGTERM, a graceful stop; SIGKILL if that takes over 30 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop; killing it", self.log.display());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub current: u64,
    pub peak: u64,
}

/// A `nats-server -js` of the benchmark's own, with a temporary store.
pub struct NatsServer {
    pub process: Process,
    pub url: String,
    _store: TempDir,
}

impl NatsServer {
    pub fn start(logs: &Path) -> Result<Self> {
        let port = free_port()?;
        let store = tempfile::tempdir()?;
        let mut command = nats_server();
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path());
        let process = Process::start(command, &logs.join("nats-server.log"), "Server is ready")
            .context("starting nats-server (scripts/bench installs it when missing)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server does not accept connections on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NatsServer {
            process,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        })
    }
}

/// The nats-server to run: the one `scripts/lib.sh` pins and names in
/// `EVENTHOST_NATS_SERVER` (or another named there), else `nats-server`.
fn nats_server() -> Command {
    Command::new(std::env::var_os("EVENTHOST_NATS_SERVER").unwrap_or_else(|| "nats-server".into()))
}

/// A three-node `nats-server` cluster (routes on loopback, a store per
/// node) of the benchmark's own.
pub struct NatsCluster {
    pub nodes: Vec<Process>,
    /// Every node's URL, comma-separated, as the runtime takes them.
    pub url: String,
    _stores: Vec<TempDir>,
}

impl NatsCluster {
    pub fn start(logs: &Path, size: usize) -> Result<Self> {
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let routes: Vec<String> = (ports.iter())
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let (mut nodes, mut stores) = (Vec::new(), Vec::new());
        for (i, (port, route)) in ports.iter().enumerate() {
            let store = tempfile::tempdir()?;
            let mut command = nats_server();
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .args(["--server_name", &format!("n{i}"), "--cluster_name", "bench"])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{route}"))
                .arg("--routes")
                .arg(routes.join(","));
            let log = logs.join(format!("cluster-n{i}.log"));
            nodes.push(Process::start(command, &log, "Server is ready")?);
            stores.push(store);
        }
        let urls: Vec<String> = (ports.iter())
            .map(|(port, _)| format!("nats://127.0.0.1:{port}"))
            .collect();
        Ok(NatsCluster {
            nodes,
            url: urls.join(","),
            _stores: stores,
        })
    }

    /// CPU time all nodes have used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for node in &self.nodes {
            total += node.cpu_time()?;
        }
        Ok(total)
    }
}

/// A client of the server at `url`, or of a cluster's, comma-separated.
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    let urls: Vec<async_nats::ServerAddr> = (url.split(','))
        .map(|u| u.parse())
        .collect::<Result<_, _>>()?;
    Ok(async_nats::ConnectOptions::new().connect(urls).await?)
}
