//! [`RedisCluster`] and [`RedisSentinel`]: throw-away Redis Cluster and Sentinel set-ups on
//! `127.0.0.1`, from the same `redis-server` binary as [`RedisServer`](crate::RedisServer)
//! (and the `redis-cli` beside it), for tests of the shared replay store on those
//! topologies. Nothing is persisted; every process is killed when the handle is dropped.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::process::{free_port, log_path, read_tail, wait_ready};

/// How long a node or sentinel gets to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster or the replication gets to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// One `redis-server` child (a cluster node, a primary, a replica or a sentinel).
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Files to delete with the node (cluster state, sentinel configuration).
    files: Vec<PathBuf>,
}

impl Node {
    /// Starts `binary ARGS...` (a configuration file, when used, must come first in
    /// `args`), waits until it listens on `port`.
    async fn start(
        binary: &Path,
        port: u16,
        args: &[String],
        name: &str,
        files: Vec<PathBuf>,
    ) -> io::Result<Self> {
        let log = log_path(name);
        let out = File::create(&log)?;
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", binary.display()))
            })?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_ready(&mut child, addr, READY_TIMEOUT, &log).await?;
        Ok(Self {
            port,
            child: Some(child),
            log,
            files,
        })
    }

    /// SIGKILL, as in a crash.
    fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = fs::remove_file(&self.log);
        let _ = fs::remove_file(std::env::temp_dir().join(rdb_name(self.port)));
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
    }
}

/// The node's own RDB file name in the temporary directory. Nothing is saved, but a replica
/// writes the copy it receives from its primary there, and a node started later would
/// load it (and a cluster node holding keys cannot join a new cluster).
fn rdb_name(port: u16) -> String {
    format!("dpop-test-{}-{port}.rdb", std::process::id())
}

/// The common server arguments: loopback, no persistence, quiet.
fn server_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--dir",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        std::env::temp_dir().display().to_string(),
        "--dbfilename".to_owned(),
        rdb_name(port),
    ])
    .collect()
}

/// `redis-cli` beside the server binary, else the first on `PATH`.
fn find_cli(server: &Path) -> Option<PathBuf> {
    let beside = server.with_file_name("redis-cli");
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-cli"))
        .find(|p| p.is_file())
}

/// Runs `redis-cli ARGS...` (blocking; call from `spawn_blocking`), its standard output.
fn cli(binary: &Path, args: &[String]) -> io::Result<String> {
    let out = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "redis-cli {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn cli_async(binary: &Path, args: Vec<String>) -> io::Result<String> {
    let binary = binary.to_owned();
    tokio::task::spawn_blocking(move || cli(&binary, &args))
        .await
        .map_err(io::Error::other)?
}

/// Polls `redis-cli -p PORT ARGS...` until its output contains `wanted`.
async fn wait_for_output(
    cli_binary: &Path,
    port: u16,
    args: &[&str],
    wanted: &str,
    log: &Path,
) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut full = vec!["-p".to_owned(), port.to_string()];
    full.extend(args.iter().map(|s| (*s).to_owned()));
    loop {
        let out = cli_async(cli_binary, full.clone())
            .await
            .unwrap_or_default();
        if out.contains(wanted) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no {wanted:?} in `redis-cli {full:?}` within {SETTLE_TIMEOUT:?}; last output: {out}\nlog:\n{}",
                    read_tail(log, 8 * 1024)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis Cluster of three primaries on `127.0.0.1`, each node with
/// `--cluster-enabled yes`, joined with `redis-cli --cluster create`; with
/// [`spawn_with_replicas`](Self::spawn_with_replicas), each primary also has one replica,
/// promoted when its primary dies. Killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    cli: PathBuf,
    binary: PathBuf,
    /// Each node's arguments, to start it again.
    args: Vec<Vec<String>>,
}

impl RedisCluster {
    /// Starts three primaries without replicas, creates the cluster and waits until every
    /// node reports `cluster_state:ok` (a node is declared down after 2 s). `Ok(None)` when
    /// there is no `redis-server` or no `redis-cli` (see [`RedisServer::find_binary`]), so a
    /// test can skip.
    ///
    /// # Errors
    /// When a node does not start or the cluster does not form.
    pub async fn spawn() -> io::Result<Option<Self>> {
        Self::start(0, 2000).await
    }

    /// Starts six nodes, three primaries with one replica each (`redis-cli --cluster create
    /// ... --cluster-replicas 1`), and waits until every node reports `cluster_state:ok`
    /// and every replica is in sync with its primary. A primary is declared down after
    /// 1 s (`cluster-node-timeout 1000`), and its replica then takes over its slots.
    /// `Ok(None)` when there is no `redis-server` or no `redis-cli`.
    ///
    /// # Errors
    /// When a node does not start or the cluster does not form.
    pub async fn spawn_with_replicas() -> io::Result<Option<Self>> {
        Self::start(1, 1000).await
    }

    async fn start(replicas: usize, node_timeout_ms: u32) -> io::Result<Option<Self>> {
        let Some(binary) = RedisServer::find_binary() else {
            return Ok(None);
        };
        let Some(cli) = find_cli(&binary) else {
            return Ok(None);
        };
        let mut nodes = Vec::new();
        let mut all_args = Vec::new();
        for i in 0..3 * (1 + replicas) {
            let port = free_port();
            let state = log_path(&format!("redis-cluster-node{i}.conf"));
            let mut args = server_args(port);
            args.extend([
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-port".to_owned(),
                free_port().to_string(),
                "--cluster-config-file".to_owned(),
                state.display().to_string(),
                // How soon a silent node is declared down (15 s by default).
                "--cluster-node-timeout".to_owned(),
                node_timeout_ms.to_string(),
                // A replica takes over however long ago it last heard from its primary: on a
                // busy test machine the default (ten node time-outs) could forbid it.
                "--cluster-replica-validity-factor".to_owned(),
                "0".to_owned(),
            ]);
            nodes.push(
                Node::start(
                    &binary,
                    port,
                    &args,
                    &format!("redis-cluster-node{i}"),
                    vec![state],
                )
                .await?,
            );
            all_args.push(args);
        }
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        cli_async(&cli, create).await?;
        let cluster = Self {
            nodes,
            cli,
            binary,
            args: all_args,
        };
        for node in &cluster.nodes {
            wait_for_output(
                &cluster.cli,
                node.port,
                &["cluster", "info"],
                "cluster_state:ok",
                &node.log,
            )
            .await?;
        }
        for node in &cluster.nodes {
            let role = cli_async(
                &cluster.cli,
                vec!["-p".to_owned(), node.port.to_string(), "role".to_owned()],
            )
            .await?;
            if role.starts_with("slave") {
                wait_for_output(
                    &cluster.cli,
                    node.port,
                    &["info", "replication"],
                    "master_link_status:up",
                    &node.log,
                )
                .await?;
            }
        }
        Ok(Some(cluster))
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../`, every node.
    #[must_use]
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    /// `redis://127.0.0.1:PORT` of each node, to talk to one node directly. Without
    /// replicas, every node is a primary; with them, which node is which is up to
    /// `redis-cli --cluster create` (ask the node with `ROLE`).
    #[must_use]
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Kills node `index` (SIGKILL, as in a crash). Without replicas its slots have no
    /// primary any more; with them, its replica takes over once the cluster has declared
    /// it failed.
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn kill_node(&mut self, index: usize) -> io::Result<()> {
        match self.nodes.get_mut(index) {
            Some(node) => node.kill(),
            None => Ok(()),
        }
    }

    /// Starts node `index` again after [`kill_node`](Self::kill_node), on its port and with
    /// its cluster state file, without data (nothing is persisted): it rejoins the cluster,
    /// as a replica of the node that took over its slots if one did.
    ///
    /// # Errors
    /// When the node is running or does not start.
    pub async fn restart_node(&mut self, index: usize) -> io::Result<()> {
        let (Some(node), Some(args)) = (self.nodes.get_mut(index), self.args.get(index)) else {
            return Err(io::Error::other(format!("no node {index}")));
        };
        if node.child.is_some() {
            return Err(io::Error::other(format!("node {index} is running")));
        }
        // The state file must outlive the old handle: the new one deletes it when dropped.
        let files = std::mem::take(&mut node.files);
        *node = Node::start(
            &self.binary,
            node.port,
            args,
            &format!("redis-cluster-node{index}-again"),
            files,
        )
        .await?;
        Ok(())
    }

    /// Waits until every node still running reports `cluster_state:ok`: after a failover,
    /// every slot has a primary again.
    ///
    /// # Errors
    /// When that does not happen within 20 s.
    pub async fn wait_until_ok(&self) -> io::Result<()> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            wait_for_output(
                &self.cli,
                node.port,
                &["cluster", "info"],
                "cluster_state:ok",
                &node.log,
            )
            .await?;
        }
        Ok(())
    }
}

/// A primary, one replica and one sentinel watching them (quorum 1, a primary is declared
/// down after 1 s), on `127.0.0.1`. Killed when dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    primary: Node,
    replica: Node,
    sentinel: Node,
    service: String,
    cli: PathBuf,
    /// `redis-cli` options that log in to the sentinel, if it asks for a password.
    sentinel_login: CliLogin,
}

/// `redis-cli` login options; `Debug` does not show them.
struct CliLogin(Vec<String>);

impl std::fmt::Debug for CliLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "none" } else { "***" })
    }
}

/// How clients must log in to a [`RedisSentinel`]'s sentinel (the primary and replica ask
/// for nothing).
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelAuth {
    /// `None`: `requirepass PASSWORD` in the sentinel's configuration (the `default` user).
    /// `Some(name)`: an ACL user `name` with that password, and the `default` user off.
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for SentinelAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RedisSentinel {
    /// Starts the primary, the replica (waiting until it is in sync) and the sentinel
    /// (`redis-server CONFIG --sentinel`, waiting until it knows the replica), the service
    /// named `service`. `Ok(None)` when there is no `redis-server` or no `redis-cli`.
    ///
    /// # Errors
    /// When a process does not start or replication does not settle.
    pub async fn spawn(service: &str) -> io::Result<Option<Self>> {
        Self::spawn_with(service, None).await
    }

    /// As [`spawn`](Self::spawn), with a sentinel that refuses clients that do not log in
    /// as `auth` says.
    ///
    /// # Errors
    /// When a process does not start or replication does not settle.
    pub async fn spawn_with_auth(service: &str, auth: SentinelAuth) -> io::Result<Option<Self>> {
        Self::spawn_with(service, Some(auth)).await
    }

    async fn spawn_with(service: &str, auth: Option<SentinelAuth>) -> io::Result<Option<Self>> {
        let Some(binary) = RedisServer::find_binary() else {
            return Ok(None);
        };
        let Some(cli) = find_cli(&binary) else {
            return Ok(None);
        };
        let primary_port = free_port();
        let primary = Node::start(
            &binary,
            primary_port,
            &server_args(primary_port),
            "redis-primary",
            Vec::new(),
        )
        .await?;
        let replica_port = free_port();
        let mut args = server_args(replica_port);
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary_port.to_string(),
        ]);
        let replica =
            Node::start(&binary, replica_port, &args, "redis-replica", Vec::new()).await?;
        wait_for_output(
            &cli,
            replica_port,
            &["info", "replication"],
            "master_link_status:up",
            &replica.log,
        )
        .await?;
        let sentinel_port = free_port();
        // The sentinel rewrites its configuration file, so it gets one of its own.
        let config = log_path("redis-sentinel.conf");
        let (login_config, sentinel_login) = match &auth {
            None => (String::new(), Vec::new()),
            Some(SentinelAuth {
                username: None,
                password,
            }) => (
                format!("requirepass {password}\n"),
                vec!["-a".to_owned(), password.clone()],
            ),
            Some(SentinelAuth {
                username: Some(user),
                password,
            }) => (
                format!("user default off\nuser {user} on >{password} allchannels +@all\n"),
                vec![
                    "--user".to_owned(),
                    user.clone(),
                    "--pass".to_owned(),
                    password.clone(),
                ],
            ),
        };
        let sentinel_login: Vec<String> = sentinel_login
            .into_iter()
            .chain((!login_config.is_empty()).then(|| "--no-auth-warning".to_owned()))
            .collect();
        fs::write(
            &config,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {dir}\n{login_config}\
                 sentinel monitor {service} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 5000\n",
                dir = std::env::temp_dir().display()
            ),
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;
        }
        let args = vec![config.display().to_string(), "--sentinel".to_owned()];
        let sentinel = Node::start(
            &binary,
            sentinel_port,
            &args,
            "redis-sentinel",
            vec![config],
        )
        .await?;
        let mut ask: Vec<&str> = sentinel_login.iter().map(String::as_str).collect();
        ask.extend(["sentinel", "replicas", service]);
        wait_for_output(
            &cli,
            sentinel_port,
            &ask,
            &replica_port.to_string(),
            &sentinel.log,
        )
        .await?;
        Ok(Some(Self {
            primary,
            replica,
            sentinel,
            service: service.to_owned(),
            cli,
            sentinel_login: CliLogin(sentinel_login),
        }))
    }

    /// `redis+sentinel://127.0.0.1:DOWN,127.0.0.1:SENTINEL/SERVICE`: a sentinel address
    /// where nothing listens comes first, so clients must skip sentinels that are down.
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{}/{}",
            free_port(),
            self.sentinel.port,
            self.service
        )
    }

    /// `127.0.0.1:PORT` of the sentinel, as errors name it.
    #[must_use]
    pub fn sentinel_addr(&self) -> String {
        format!("127.0.0.1:{}", self.sentinel.port)
    }

    /// `redis://127.0.0.1:PORT` of the first primary.
    #[must_use]
    pub fn primary_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.primary.port)
    }

    /// `redis://127.0.0.1:PORT` of the replica (the primary after a failover).
    #[must_use]
    pub fn replica_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.replica.port)
    }

    /// Kills the primary (SIGKILL, as in a crash).
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn kill_primary(&mut self) -> io::Result<()> {
        self.primary.kill()
    }

    /// Waits until the sentinel names the replica as the primary and the replica says it
    /// is one.
    ///
    /// # Errors
    /// When that does not happen within 20 s.
    pub async fn wait_for_failover(&self) -> io::Result<()> {
        let mut ask: Vec<&str> = self.sentinel_login.0.iter().map(String::as_str).collect();
        ask.extend(["sentinel", "get-master-addr-by-name", &self.service]);
        wait_for_output(
            &self.cli,
            self.sentinel.port,
            &ask,
            &self.replica.port.to_string(),
            &self.sentinel.log,
        )
        .await?;
        wait_for_output(
            &self.cli,
            self.replica.port,
            &["role"],
            "master",
            &self.replica.log,
        )
        .await
    }
}
