//! A nats-server cluster on loopback: one process per node, each with its
//! own client port, route port and store directory, routed to every other.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use tempfile::TempDir;

use super::{free_port, wait_until};

struct Node {
    name: String,
    port: u16,
    route_port: u16,
    store: TempDir,
    child: Option<Child>,
}

/// A JetStream cluster of its own, killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream can place an R`size`
    /// stream (a meta leader is elected and every node has joined).
    pub async fn start(size: usize) -> Self {
        let nodes = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                route_port: free_port(),
                store: tempfile::tempdir().unwrap(),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_until_placeable(size).await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = (self.nodes.iter())
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &mut self.nodes[i];
        let child = super::nats_server_command()
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js"])
            .args([
                "--server_name",
                &node.name,
                "--cluster_name",
                "eventhost-test",
            ])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.route_port))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("-sd")
            .arg(node.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        node.child = Some(child);
        let port = node.port;
        wait_until(
            "a cluster node to accept connections",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    async fn wait_until_placeable(&self, replicas: usize) {
        let js = self.jetstream().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = stream::Config {
                name: "CLUSTER_PROBE".into(),
                subjects: vec!["cluster.probe".into()],
                num_replicas: replicas,
                storage: stream::StorageType::Memory,
                ..Default::default()
            };
            match js.create_or_update_stream(probe).await {
                Ok(_) => break,
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "the cluster never became ready for R{replicas}: {err}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = js.delete_stream("CLUSTER_PROBE").await;
    }

    /// Every node's URL, comma-separated, as the runtime takes them.
    pub fn url(&self) -> String {
        let urls: Vec<String> = (self.nodes.iter())
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect();
        urls.join(",")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        self.jetstream_at(&self.url()).await
    }

    /// A client of the servers in `url` (comma-separated) only, at first.
    pub async fn jetstream_at(&self, url: &str) -> jetstream::Context {
        let urls: Vec<async_nats::ServerAddr> =
            (url.split(',')).map(|u| u.parse().unwrap()).collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .unwrap();
        jetstream::new(client)
    }

    /// The name of the node leading `stream` now.
    pub async fn leader_of(&self, js: &jetstream::Context, stream: &str) -> String {
        let mut stream = js.get_stream(stream).await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a clustered stream has a leader")
    }

    /// Kills node `name` as a crash would.
    pub fn kill(&mut self, name: &str) {
        let node = self.nodes.iter_mut().find(|n| n.name == name).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again with its store.
    pub fn restart(&mut self, name: &str) {
        let i = self.nodes.iter().position(|n| n.name == name).unwrap();
        self.spawn(i);
    }

    /// Stops node `name` as an operator would (SIGTERM: it hands its
    /// leaderships over and exits cleanly).
    pub fn terminate(&mut self, name: &str) {
        let node = self.nodes.iter_mut().find(|n| n.name == name).unwrap();
        if let Some(mut child) = node.child.take() {
            signal(child.id(), "-TERM");
            let _ = child.wait();
        }
    }

    /// Freezes node `name` (SIGSTOP): its connections stay open and nothing
    /// answers, as on the far side of a network partition.
    pub fn pause(&self, name: &str) {
        signal(self.pid(name), "-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, name: &str) {
        signal(self.pid(name), "-CONT");
    }

    fn pid(&self, name: &str) -> u32 {
        let node = self.nodes.iter().find(|n| n.name == name).unwrap();
        node.child.as_ref().expect("the node runs").id()
    }

    /// The names of the nodes, in order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Node `name`'s URL alone.
    pub fn node_url(&self, name: &str) -> String {
        let node = self.nodes.iter().find(|n| n.name == name).unwrap();
        format!("nats://127.0.0.1:{}", node.port)
    }

    /// Waits until each of `streams` has a leader and two followers that
    /// are current: a node that came back has caught up, so losing another
    /// one leaves a quorum.
    pub async fn wait_current(&self, js: &jetstream::Context, streams: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for name in streams {
            loop {
                let current = match js.get_stream(*name).await {
                    Ok(mut stream) => stream.info().await.ok().and_then(|info| {
                        let cluster = info.cluster.as_ref()?;
                        cluster.leader.as_ref()?;
                        Some(
                            cluster.replicas.len() == 2
                                && cluster.replicas.iter().all(|p| p.current),
                        )
                    }),
                    Err(_) => None,
                };
                if current == Some(true) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} never had three current copies again"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Sends signal `which` (`-STOP`, `-CONT`, …) to process `pid`.
pub fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
