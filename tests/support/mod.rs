//! Shared fixtures for the integration tests: a private `nats-server`, the
//! example components built for real, a plugins directory, and the
//! `eventhost` binary run as a child process.
//!
//! Every test gets its own server on a free port with its own store, so tests
//! run in parallel and may stop or restart their server freely.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod chaos;
pub mod cluster;
pub mod web;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- NATS

/// The nats-server the tests run: the one `scripts/lib.sh` pins and names in
/// `EVENTHOST_NATS_SERVER` (the compatibility run points it at Debian's
/// 2.9.10), else whichever `nats-server` is on PATH.
pub fn nats_server_command() -> Command {
    let binary = std::env::var_os("EVENTHOST_NATS_SERVER").unwrap_or_else(|| "nats-server".into());
    Command::new(binary)
}

/// A `nats-server -js` of the test's own, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra command-line options (such as `--user`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = nats_server_command()
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        let child = self.child.as_mut().unwrap();
        // A server that could not bind exits; another process answering on
        // the port must not pass for ours.
        wait_until(
            "nats-server to accept connections",
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("nats-server on port {port} exited at start: {status}");
                }
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
    }

    /// Kills the server (as a crash would) and starts it again on the same
    /// port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .unwrap_or_else(|err| panic!("connecting to {}: {err}", self.url()));
        jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- components

/// Builds the guest workspace once per test process and returns the folder
/// holding the `.wasm` components.
pub fn components_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        // From inside examples/, so its .cargo/config.toml applies.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(root.join("examples"))
            .status()
            .expect("running cargo to build the example components");
        assert!(status.success(), "building the example components failed");
        root.join("examples/target/wasm32-wasip2/release")
    })
}

/// A temporary plugins directory, `plugins/` in a folder of its own so that
/// the runtime's default contracts folder beside it (`schemas/`) is the
/// test's too.
pub struct Plugins {
    root: TempDir,
    path: PathBuf,
}

impl Plugins {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("plugins");
        std::fs::create_dir(&path).unwrap();
        Plugins { root, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contracts folder the runtime reads by default: `schemas/`
    /// beside the plugins.
    pub fn schemas(&self) -> PathBuf {
        self.root.path().join("schemas")
    }

    /// Adds version `version` of `event_type`'s schema.
    pub fn schema(&self, event_type: &str, version: u32, document: &Value) -> &Self {
        let dir = self.schemas().join(event_type);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = serde_json::to_vec_pretty(document).unwrap();
        std::fs::write(dir.join(format!("{version}.json")), bytes).unwrap();
        self
    }

    /// Installs the example `name` with its own manifest.
    pub fn install_example(&self, name: &str) -> &Self {
        let manifest =
            std::fs::read_to_string(repo_root().join(format!("examples/{name}/handler.toml")))
                .unwrap();
        self.install(name, name, &manifest)
    }

    /// Installs the `lang` ("python" or "js") example `name`, built by
    /// `scripts/build-examples` into examples/target/LANG/, with its own
    /// manifest.
    pub fn install_guest(&self, lang: &str, name: &str) -> &Self {
        let root = repo_root();
        let wasm = root.join(format!("examples/target/{lang}/{name}.wasm"));
        assert!(
            wasm.exists(),
            "{} is missing: scripts/build-examples (run by scripts/test) builds it",
            wasm.display()
        );
        std::fs::copy(&wasm, self.path().join(format!("{name}.wasm"))).unwrap();
        let manifest = root.join(format!("examples/{lang}/{name}/handler.toml"));
        std::fs::copy(&manifest, self.path().join(format!("{name}.toml"))).unwrap();
        self
    }

    /// Installs `component` (an example's build) as handler `name` with `manifest`.
    pub fn install(&self, name: &str, component: &str, manifest: &str) -> &Self {
        let wasm = components_dir().join(format!("{component}.wasm"));
        std::fs::copy(&wasm, self.path().join(format!("{name}.wasm"))).unwrap();
        self.write(&format!("{name}.toml"), manifest.as_bytes())
    }

    pub fn write(&self, file: &str, bytes: &[u8]) -> &Self {
        std::fs::write(self.path().join(file), bytes).unwrap();
        self
    }
}

// ---------------------------------------------------------------- runtime

/// Streams and buckets every test declares: the checkout flow's, the chaos
/// handler's, and the state examples'.
pub const TEST_STREAMS: &str = r#"
[[streams]]
name = "CHECKOUT"
subjects = ["orders.>", "payments.>", "notifications.>", "inventory.>"]

[[streams]]
name = "CHAOS"
subjects = ["chaos.>"]

[[streams]]
name = "FETCH"
subjects = ["fetch.>"]

[[streams]]
name = "PROBE"
subjects = ["probe.>"]

[[streams]]
name = "COUNTER"
subjects = ["counter.>"]

[[streams]]
name = "ACCOUNTS"
subjects = ["accounts.>"]

[[buckets]]
name = "counters"

[[buckets]]
name = "lookup"

[[buckets]]
name = "inventory"

[[buckets]]
name = "order-summary"

[[buckets]]
name = "account-snapshots"
"#;

/// `eventhost run` as a child process, logging JSON to a file.
/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Runtime {
    child: Child,
    admin_port: u16,
    log_path: PathBuf,
    _log: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
}

impl Runtime {
    /// Starts the runtime and waits until it has loaded its handlers and
    /// opened `consumers` consumers.
    pub fn start(nats: &NatsServer, plugins: &Plugins, consumers: usize) -> Self {
        Self::start_at(&nats.url(), plugins, consumers)
    }

    /// Like [`Runtime::start`], with an explicit NATS URL.
    pub fn start_at(url: &str, plugins: &Plugins, consumers: usize) -> Self {
        Self::start_with(url, plugins, consumers, &[])
    }

    /// Like [`Runtime::start_at`], with extra `eventhost run` arguments.
    pub fn start_with(url: &str, plugins: &Plugins, consumers: usize, args: &[&str]) -> Self {
        Self::start_env(url, plugins, consumers, args, &[])
    }

    /// Like [`Runtime::start_with`], with extra environment variables.
    pub fn start_env(
        url: &str,
        plugins: &Plugins,
        consumers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(url, plugins, consumers, args, TEST_STREAMS, env)
    }

    /// Like [`Runtime::start_env`], with the runtime config `config` instead
    /// of [`TEST_STREAMS`] and no extra arguments.
    pub fn start_configured(
        url: &str,
        plugins: &Plugins,
        consumers: usize,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(url, plugins, consumers, &[], config, env)
    }

    fn start_full(
        url: &str,
        plugins: &Plugins,
        consumers: usize,
        args: &[&str],
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let plugins = plugins.path().to_str().unwrap();
        let args = [&["--plugins", plugins], args].concat();
        let runtime = Self::launch(url, &args, config, env);
        runtime.wait_consuming(consumers);
        runtime
    }

    /// How many times this runtime has invoked `handler`, over every version
    /// it ran (the invocation histogram's count). The series exists from
    /// load, so a missing or relabelled one fails instead of reading as 0.
    pub fn handler_runs(&self, handler: &str) -> f64 {
        self.metric(
            "eventhost_handler_duration_seconds_count",
            &[("handler", handler)],
        )
    }

    /// Waits until the runtime has opened `consumers` consumers and is
    /// ready: every handler of its directory has been loaded or refused (a
    /// refused one is on `/handlers` only from then on). A Python or
    /// JavaScript component takes about half a minute to compile on first
    /// use (then the shared cache has it).
    pub fn wait_consuming(&self, consumers: usize) {
        wait_until(
            "the runtime to start consuming",
            Duration::from_secs(240),
            || {
                self.logs_with_message("consuming").len() >= consumers
                    && !self.logs_with_message("runtime ready").is_empty()
            },
        );
    }

    /// Starts `eventhost run` with `args` and the runtime config `config`,
    /// without waiting for anything.
    pub fn launch(url: &str, args: &[&str], config: &str, env: &[(&str, &str)]) -> Self {
        remember_panics();
        // One compiled-code cache for the whole test run, inside target/,
        // unless the test brings its own.
        let shared_cache = repo_root().join("target/compiled-cache");
        let mut args: Vec<&str> = args.to_vec();
        if !args.contains(&"--cache-dir") {
            args.extend(["--cache-dir", shared_cache.to_str().unwrap()]);
        }
        // The admin server on a free loopback port, unless the test names
        // its own address.
        let given = args.iter().position(|a| *a == "--admin-addr");
        let given = given.and_then(|i| args.get(i + 1)).map(|a| a.to_string());
        let admin_port = match &given {
            Some(addr) => addr.rsplit(':').next().unwrap().parse().unwrap(),
            None => free_port(),
        };
        let admin_addr = format!("127.0.0.1:{admin_port}");
        if given.is_none() {
            args.extend(["--admin-addr", &admin_addr]);
        }
        let config_text = config;
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), config_text).unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let log_path = log.path().to_path_buf();
        let child = Command::new(env!("CARGO_BIN_EXE_eventhost"))
            .args(["--log-format", "json", "run", "--nats", url])
            .arg("--config")
            .arg(config.path())
            .args(args)
            .env("RUST_LOG", "info,async_nats=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Runtime {
            child,
            admin_port,
            log_path,
            _log: log,
            _config: config,
        }
    }

    /// `GET` on the admin server: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let reply = web::http_get(self.admin_port, path);
        (reply.status, reply.body)
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `eventhost_events_total{handler="chaos",version="…",outcome="retried"}`
    /// given as a name and the label pairs to match (others are ignored).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.admin_get("/metrics");
        parse_metric(&text, name, labels)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far. The runtime logs JSON; any other line (a
    /// panic message, a crash) fails the test rather than being skipped.
    pub fn logs(&self) -> Vec<Value> {
        parse_log(&self.raw_log())
    }

    pub fn logs_with_message(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Log lines of finished events with this outcome.
    pub fn outcomes(&self, outcome: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["outcome"] == outcome)
            .collect()
    }

    pub fn raw_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to end on its own (a crash).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no chance to finish, settle or flush anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runtime did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- runtime log ({}) ----\n{}",
                self.log_path.display(),
                self.raw_log()
            );
            // CI shows a failure's last lines only, which the logs above
            // fill: say again why the test failed, after them.
            if let Some(why) = PANIC.try_with(|p| p.borrow().clone()).ok().flatten() {
                eprintln!("---- the test failed (above the runtime logs): {why}");
            }
        }
    }
}

thread_local! {
    /// The last panic on this thread, for [`Runtime`]'s drop to repeat.
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each thread's last panic message in [`PANIC`] (then panics as
/// usual). Installed once, by the first runtime launched.
fn remember_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_with: a thread tearing its locals down may still panic.
            let _ = PANIC.try_with(|p| *p.borrow_mut() = Some(info.to_string()));
            default(info);
        }));
    });
}

/// The `eventhost` binary, pointed at `nats`, for CLI commands.
pub fn eventhost(nats: &NatsServer) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventhost"));
    command.env("EVENTHOST_NATS_URL", nats.url());
    command
}

/// Runs an `eventhost` CLI command to success and returns its stdout.
pub fn eventhost_ok(nats: &NatsServer, args: &[&str]) -> String {
    let output = eventhost(nats).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "eventhost {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `command` to its end: whether it succeeded, and its stdout then
/// its stderr (for commands whose refusals a test reads).
pub fn run_to_end(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The lines of a JSON log (a runtime's, or one saved from it) up to its
/// last complete line. Any other line (a panic message, a crash) fails the
/// test rather than being skipped.
pub fn parse_log(text: &str) -> Vec<Value> {
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("a log line that is not JSON (a panic?): {line}"))
        })
        .collect()
}

/// Successful runs of `handler` per event id, counted from the `succeeded`
/// lines of every runtime's log. Outputs cannot show a second run: it emits
/// the same ids, which the stream's duplicate window drops. Panics if any
/// event ran successfully twice.
///
/// A line marked `resumed` is not a run: a runtime that found the event's
/// commit recorded but not finished applied that plan again without running
/// the handler. It happens after a crash, and also when the first runtime
/// could not record the success (a node down) and the input came again. Its
/// event is in the map (it succeeded) without adding a run.
pub fn successful_runs(runtimes: &[&Runtime], handler: &str) -> BTreeMap<String, usize> {
    let lines: Vec<Value> = runtimes.iter().flat_map(|r| r.logs()).collect();
    successful_runs_in(&lines, handler)
}

/// Like [`successful_runs`], over log lines already read (of runtimes that
/// are gone, say).
pub fn successful_runs_in(lines: &[Value], handler: &str) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for line in lines {
        if line["outcome"] == "succeeded" && line["span"]["handler"] == handler {
            let id = line["span"]["event_id"].as_str().unwrap().to_string();
            let ran = usize::from(line["resumed"] != true);
            *runs.entry(id).or_insert(0) += ran;
        }
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "ran successfully more than once: {twice:?}"
    );
    runs
}

/// The time stamp of a JSON log line.
pub fn log_time(line: &Value) -> chrono::DateTime<chrono::Utc> {
    line["timestamp"].as_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- events

/// A CloudEvent written by hand (not with the runtime's encoder), so the
/// tests check the wire format independently.
pub struct TestEvent {
    pub id: String,
    pub ty: String,
    pub data: Value,
    pub extensions: Vec<(String, String)>,
}

impl TestEvent {
    pub fn new(id: impl Into<String>, ty: &str, data: Value) -> Self {
        TestEvent {
            id: id.into(),
            ty: ty.into(),
            data,
            extensions: vec![],
        }
    }

    pub fn ext(mut self, name: &str, value: &str) -> Self {
        self.extensions.push((name.into(), value.into()));
        self
    }

    pub fn structured(&self) -> (HeaderMap, Vec<u8>) {
        let mut body = json!({
            "specversion": "1.0", "id": self.id, "source": "/tests", "type": self.ty,
            "datacontenttype": "application/json", "data": self.data,
        });
        for (k, v) in &self.extensions {
            body[k] = json!(v);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/cloudevents+json");
        (headers, serde_json::to_vec(&body).unwrap())
    }

    pub fn binary(&self) -> (HeaderMap, Vec<u8>) {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", &self.id),
            ("source", "/tests"),
            ("type", &self.ty),
        ]
        .into_iter()
        .chain(
            self.extensions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            headers.insert(format!("ce-{k}").as_str(), v);
        }
        headers.insert("ce-datacontenttype", "application/json");
        (headers, serde_json::to_vec(&self.data).unwrap())
    }
}

/// `%XX` sequences decoded, as the binding requires of `ce-` header values.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Publishes raw headers and payload and waits for JetStream to store them.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    (headers, payload): (HeaderMap, Vec<u8>),
) -> u64 {
    js.publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A message stored in a stream, with its CloudEvent decoded.
pub struct Stored {
    pub subject: String,
    pub headers: HeaderMap,
    pub event: Value,
    pub binary_mode: bool,
}

impl Stored {
    pub fn data(&self) -> &Value {
        &self.event["data"]
    }
}

/// The distinct values of a string field of the stored events' data.
pub fn data_values(stored: &[Stored], field: &str) -> std::collections::BTreeSet<String> {
    stored
        .iter()
        .map(|s| s.data()[field].as_str().unwrap().to_string())
        .collect()
}

/// A message as a stream stored it.
pub struct RawMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
}

impl RawMessage {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// The payload as JSON (a structured CloudEvent, or binary-mode data).
    pub fn payload_json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_default()
    }

    /// The CloudEvent as structured JSON, read by hand in either mode (the
    /// NATS binding's rules, not the runtime's decoder): a binary-mode
    /// event's `ce-` headers, percent-decoded, become its attributes, and
    /// its payload its data.
    pub fn cloudevent(&self) -> Value {
        if self.headers.get("ce-specversion").is_none() {
            return self.payload_json();
        }
        let data = serde_json::from_slice(&self.payload)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&self.payload)));
        let mut event = json!({ "data": data });
        for (name, values) in self.headers.iter() {
            let name: &str = name.as_ref();
            if let Some(attribute) = name.to_ascii_lowercase().strip_prefix("ce-") {
                event[attribute] = json!(percent_decode(values[0].as_str()));
            }
        }
        event
    }
}

/// Reads `filter` in `stream` from the start until `expected` messages
/// arrived (panicking after `timeout`), then keeps listening for a short
/// while so that extra, unexpected messages are caught too.
pub async fn collect_raw(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<RawMessage> {
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut stored = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut quiet_until = None;
    loop {
        let wait_until = quiet_until.unwrap_or(deadline);
        let next = tokio::time::timeout_at(wait_until, messages.next()).await;
        match next {
            Ok(Some(Ok(message))) => {
                stored.push(RawMessage {
                    subject: message.subject.to_string(),
                    headers: message.headers.clone().unwrap_or_default(),
                    payload: message.payload.clone(),
                });
                if stored.len() == expected && quiet_until.is_none() {
                    quiet_until = Some(tokio::time::Instant::now() + Duration::from_millis(750));
                }
            }
            Ok(Some(Err(err))) => panic!("reading {filter}: {err}"),
            Ok(None) => break,
            Err(_) if quiet_until.is_some() => break,
            Err(_) => panic!(
                "expected {expected} messages on {filter}, got {} within {timeout:?}",
                stored.len()
            ),
        }
    }
    stored
}

/// Every message `stream` holds on `filter` right now, oldest first.
pub async fn stored_messages(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<RawMessage> {
    let consumer: consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = consumer;
    let total = consumer.info().await.unwrap().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap();
    let mut stored = Vec::with_capacity(total);
    while stored.len() < total {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next()).await;
        let message = next.expect("reading stored messages").unwrap().unwrap();
        stored.push(RawMessage {
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        });
    }
    stored
}

/// Like [`collect_raw`], with each message read as a CloudEvent by hand
/// ([`RawMessage::cloudevent`]), not with the runtime's own decoder.
pub async fn collect(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Stored> {
    let raw = collect_raw(js, stream, filter, expected, timeout).await;
    raw.into_iter()
        .map(|message| {
            let event = message.cloudevent();
            assert_eq!(event["specversion"], "1.0", "not a CloudEvent: {event}");
            Stored {
                binary_mode: message.headers.get("ce-specversion").is_some(),
                subject: message.subject,
                headers: message.headers,
                event,
            }
        })
        .collect()
}

/// The id the host gives the `index`-th event `handler` emits for the
/// input (`source`, `id`), by the rule `wit/README.md` documents (not by
/// the runtime's own function).
pub fn documented_emit_id(handler: &str, source: &str, id: &str, index: usize) -> String {
    let namespace = uuid::Uuid::parse_str("6576656e-7468-6f73-742d-69642d763100").unwrap();
    let name = format!("{handler}\n{source}\n{id}\n{index}");
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

/// The dead letters of `handler`, as stored.
pub async fn dead_letters(
    js: &jetstream::Context,
    handler: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<RawMessage> {
    collect_raw(
        js,
        "EVENTHOST_DLQ",
        &format!("dlq.{handler}"),
        expected,
        timeout,
    )
    .await
}

/// The consumer's view: (pending, ack pending, redelivered).
pub async fn consumer_state(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> (u64, usize, usize) {
    let mut c: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(consumer)
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    (info.num_pending, info.num_ack_pending, info.num_redelivered)
}

/// Waits until `consumer` has nothing left to deliver or settle.
pub async fn consumer_settled(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) {
    eventually(
        &format!("{consumer} to settle every event"),
        timeout,
        || consumer_state(js, stream, consumer),
        |(pending, ack_pending, _)| *pending == 0 && *ack_pending == 0,
    )
    .await;
}

/// Waits (up to 10 s) until at least `n` of the consumer's messages are out
/// for handling, unacked; panics if they never are.
pub async fn wait_for_ack_pending(js: &jetstream::Context, stream: &str, consumer: &str, n: usize) {
    for _ in 0..500 {
        if consumer_state(js, stream, consumer).await.1 >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} messages of {consumer} were out for handling after 10 s");
}

/// Sums the samples of `name` whose labels include all of `labels`. A
/// series that does not exist is a failure, not a zero: a check that a gauge
/// is 0 must not pass because the gauge is missing.
pub fn parse_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .collect();
    assert!(
        !samples.is_empty(),
        "no series {name} with {labels:?} in /metrics:\n{text}"
    );
    samples.into_iter().sum()
}

// ---------------------------------------------------------------- state

/// Every key of key-value bucket `bucket` with its value as JSON (a value
/// that is not JSON as a string), read with a plain NATS client (not the
/// runtime's code).
/// A read that fails while a cluster elects a leader is tried again, for up
/// to a minute.
pub async fn bucket_json(
    js: &jetstream::Context,
    bucket: &str,
) -> std::collections::BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match read_bucket_json(js, bucket).await {
            Ok(all) => return all,
            Err(err) if Instant::now() < deadline => {
                eprintln!("reading bucket {bucket} failed ({err}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("reading bucket {bucket}: {err}"),
        }
    }
}

async fn read_bucket_json(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<std::collections::BTreeMap<String, Value>, async_nats::Error> {
    let store = js.get_key_value(bucket).await?;
    let mut keys = store.keys().await?;
    let mut all = std::collections::BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(value) = store.get(&key).await? {
            let json = serde_json::from_slice(&value);
            let text = || Value::String(String::from_utf8_lossy(&value).into_owned());
            all.insert(key, json.unwrap_or_else(|_| text()));
        }
    }
    Ok(all)
}

/// Waits until `check` holds for the async value `read` produces.
pub async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    timeout: Duration,
    mut read: impl FnMut() -> F,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
