//! The console's side of the tests: plain HTTP gets, `eventhost console`
//! as a child process, and a real browser (Debian's Chromium, driven
//! through its ChromeDriver over WebDriver).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// One HTTP/1.1 answer, read whole.
pub struct Reply {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl Reply {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path` on `127.0.0.1:port`.
pub fn http_get(port: u16, path: &str) -> Reply {
    request(port, "GET", path, &[], "")
}

/// `GET path` on `127.0.0.1:port` with `headers` (a `Host` among them
/// replaces the default one).
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(port, "GET", path, headers, "")
}

/// `POST path` on `127.0.0.1:port` with `headers` and `body`.
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    request(port, "POST", path, headers, body)
}

fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head += &format!("Host: 127.0.0.1:{port}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Reply {
        status: head[9..12].parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `eventhost console` against `nats`, on a free loopback port.
pub struct ConsoleProcess {
    child: Child,
    pub port: u16,
}

impl ConsoleProcess {
    pub fn start(nats: &NatsServer) -> Self {
        let port = free_port();
        let child = eventhost(nats)
            .args(["console", "--addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the console to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        ConsoleProcess { child, port }
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row of `handler` in the fleet view at `port`, once `ready` holds
/// for it (polled; the runtimes announce every two seconds).
pub fn fleet_row(port: u16, handler: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = (0..300).find_map(|_| {
        let view = http_get(port, "/ui/api/fleet").json();
        let row = (view["handlers"].as_array().unwrap().iter())
            .find(|row| row["handler"] == handler)
            .cloned();
        match row {
            Some(row) if ready(&row) => Some(row),
            _ => {
                last = view;
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        }
    });
    found.unwrap_or_else(|| panic!("{handler}'s row never got ready; last view: {last:#}"))
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium, driven through its own ChromeDriver process.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
}

impl Browser {
    pub async fn start() -> Self {
        for needed in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(needed).exists(),
                "{needed} is missing: scripts/test installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("chromedriver to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let options = json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1600,900"],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser { client, driver }
    }

    /// The text of the first element matching `css`, once `ready` holds
    /// for it (waiting up to `timeout`).
    pub async fn text_once(
        &self,
        css: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(element) = self.client.find(fantoccini::Locator::Css(css)).await {
                last = element.text().await.unwrap_or_default();
                if ready(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{css} never became ready; its text was {last:?}")
    }

    /// The first element matching `css`, once the page has one (pages
    /// draw what they fetch a moment after they load).
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        let wait = self.client.wait().at_most(Duration::from_secs(30));
        let found = wait.for_element(fantoccini::Locator::Css(css)).await;
        found.unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Types `text` into the first input matching `css`, replacing what
    /// it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Saves a screenshot as `target/test-artifacts/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = repo_root().join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
