//! A nats-server cluster on loopback: one process per node, each with its
//! own client port, route port and store directory, routed to every other.

use std::process::{Child, Command, Stdio};
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
        let child = Command::new("nats-server")
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
        let urls: Vec<async_nats::ServerAddr> = (self.url().split(','))
            .map(|u| u.parse().unwrap())
            .collect();
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
