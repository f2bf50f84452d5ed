//! `NatsCluster`: three nats-servers with JetStream routed into one
//! cluster on loopback, each on its own client and route port and store;
//! a node can be killed and started again on the same ports and store.
//! Optionally each node also takes phones on its own MQTT port, from
//! `deploy/nats-server-mqtt.conf`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use async_nats::jetstream;
use tempfile::TempDir;

use crate::eventually;
use crate::nats::nats_server_bin;
use crate::process::{self, STARTUP_TIMEOUT, free_port, kill_now, spawn};

/// The cluster's name in each node's configuration.
const CLUSTER_NAME: &str = "whereabouts";

struct Node {
    name: String,
    client_port: u16,
    /// With [`NatsCluster::start_phones`]: the node's MQTT listener.
    mqtt_port: Option<u16>,
    child: Option<Child>,
}

/// A 3-node JetStream cluster; every node is killed, and the stores
/// removed, on drop.
pub struct NatsCluster {
    dir: TempDir,
    nodes: Vec<Node>,
    /// User and password of [`NatsCluster::jetstream`] on a cluster with auth.
    credentials: Option<(String, String)>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers (a meta leader
    /// is elected).
    pub async fn start() -> NatsCluster {
        Self::start_inner(false).await
    }

    /// Like [`NatsCluster::start`], each node run from
    /// `deploy/nats-server-mqtt.conf` (its own `server_name` and MQTT port,
    /// [`NatsCluster::mqtt_url`]); [`NatsCluster::jetstream`] connects as
    /// `admin`, the services as their users ([`NatsCluster::urls_as`]).
    pub async fn start_phones() -> NatsCluster {
        Self::start_inner(true).await
    }

    /// Starts the nodes on fresh ports, again when one lost its port to
    /// another test between `free_port` and its own bind.
    async fn start_inner(phones: bool) -> NatsCluster {
        let mut attempt = 1;
        loop {
            match Self::try_start(phones).await {
                Ok(cluster) => return cluster,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    attempt += 1;
                }
                Err(log) => panic!("{log}"),
            }
        }
    }

    async fn try_start(phones: bool) -> Result<NatsCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("whereabouts-cluster-")
            .tempdir()
            .expect("create a temp dir for the cluster");
        if phones {
            for (name, content) in crate::nats::phones_config_files() {
                std::fs::write(dir.path().join(name), content).expect("write a config file");
            }
        }
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client_port, route_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let mqtt_port = phones.then(free_port);
            // The deploy file first; what differs per node overrides it.
            let mut conf = match mqtt_port {
                Some(port) => format!(
                    "include ./nats-server-mqtt.conf\nmqtt {{ host: 127.0.0.1, port: {port} }}\n"
                ),
                None => String::new(),
            };
            conf += &format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{client_port}\"\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            std::fs::write(dir.path().join(format!("{name}.conf")), conf)
                .expect("write a node's configuration");
            nodes.push(Node {
                name,
                client_port: *client_port,
                mqtt_port,
                child: None,
            });
        }
        let credentials = phones.then(|| {
            (
                "admin".to_string(),
                crate::nats::deploy_password("admin").to_string(),
            )
        });
        let mut cluster = NatsCluster {
            dir,
            nodes,
            credentials,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.nodes.len() {
            cluster.try_wait_accepting(i).await?;
        }
        cluster.wait_jetstream().await;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: what `NATS_URL` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client URL as `user` with its deploy password.
    pub fn urls_as(&self, user: &str) -> String {
        let password = crate::nats::deploy_password(user);
        self.nodes
            .iter()
            .map(|n| format!("nats://{user}:{password}@127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s MQTT URL for an example phone user (a cluster from
    /// [`NatsCluster::start_phones`]).
    pub fn mqtt_url(&self, i: usize, user: &str) -> String {
        let port = self.nodes[i].mqtt_port.expect("a cluster with MQTT");
        format!(
            "mqtt://{user}:{}@127.0.0.1:{port}",
            crate::nats::phone_password(user)
        )
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// A JetStream context on a client of the whole cluster (it fails over).
    pub async fn jetstream(&self) -> jetstream::Context {
        let servers: Vec<String> = self.urls().split(',').map(str::to_string).collect();
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &self.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let client = options
            .connect(servers)
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster {}: {e}", self.urls()));
        jetstream::new(client)
    }

    /// SIGKILL node `i`: no chance to flush anything.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            kill_now(&mut child);
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it
    /// accepts clients and JetStream answers through it.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_accepting(i).await;
        self.wait_jetstream().await;
    }

    /// Node `i`'s log (for failure messages).
    pub fn log(&self, i: usize) -> String {
        process::log_tail(&self.log_path(i))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let conf = self.dir.path().join(format!("{}.conf", self.nodes[i].name));
        let log = self.log_path(i);
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(conf);
        let child = spawn(&mut cmd, &log).unwrap_or_else(|e| panic!("spawn nats-server: {e}"));
        self.nodes[i].child = Some(child);
    }

    async fn wait_accepting(&mut self, i: usize) {
        if let Err(why) = self.try_wait_accepting(i).await {
            panic!("{why}");
        }
    }

    /// Waits until node `i` accepts connections; its log when it exited.
    async fn try_wait_accepting(&mut self, i: usize) -> Result<(), String> {
        let port = self.nodes[i].client_port;
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        while !process::accepts(port) {
            let child = self.nodes[i].child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "cluster node {i} exited ({status})\n{}",
                    self.log(i)
                ));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster node {i} did not accept connections\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn wait_jetstream(&self) {
        let js = self.jetstream().await;
        eventually(
            "the cluster's JetStream answers",
            Duration::from_secs(30),
            async || js.query_account().await.ok(),
        )
        .await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill_now(&mut child);
            }
        }
    }
}
