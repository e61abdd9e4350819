//! The executor: applies the rendered plan to a cluster's hosts, step by step.
//!
//! Every step observes first and acts only if needed, so `up` on a healthy cluster
//! changes nothing, and `up` after a failure midway resumes and converges. Destructive
//! steps are guarded at run time: a data directory is only ever removed when it holds a
//! standby clone that pgrepl itself started and did not finish (its marker is present)
//! and no server runs on it; a primary's data directory is never touched.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use crate::cluster::{Cluster, Node};
use crate::error::{Error, Refusal};
use crate::layout::Binaries;
use crate::provider::{Connector, Host, NodeHandle, Provider};
use crate::render::{self, HBA_BEGIN, HBA_END, INCLUDE_LINE, Placement, RenderedNode, render_node};
use crate::secret::{Secret, Secrets};
use crate::spec::{AuthMethod, Role};
use crate::sql::{self, QueryError};
use crate::transport::{Command, Transport, TransportError, TransportExt};

use crate::observe::ObservedCluster;
use crate::observe::probe::observe_cluster;
use crate::observe::server_state::process_alive;
pub use crate::observe::server_state::{SERVER_STATE_SCRIPT, ServerState, is_running, parse_server_state, server_state};
pub use crate::topology::Topology;

/// How long a standby may take to start streaming after it starts.
pub const STREAMING_DEADLINE: Duration = Duration::from_secs(120);
/// How often waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Time limit of a base backup.
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a running clone's progress is reported.
pub const CLONE_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Time limit of one SQL call.
pub const SQL_TIMEOUT: Duration = Duration::from_secs(30);

/// Receives progress of long operations (the CLI draws spinners from it).
pub trait Progress: Send + Sync {
    /// A step began on `node`.
    fn started(&self, node: &str, step: &str);
    /// The step ended; `outcome` says what happened.
    fn finished(&self, node: &str, step: &str, outcome: &str);
    /// How far a running step is (a clone: bytes copied of the source's size).
    fn update(&self, _node: &str, _step: &str, _detail: &str) {}
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: &str, _: &str) {}
    fn finished(&self, _: &str, _: &str, _: &str) {}
}

/// One thing `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The node.
    pub node: String,
    /// What was done.
    pub what: String,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// Every change made, in order; empty when the cluster was already as specified.
    pub actions: Vec<Action>,
    /// The plan's steps as they ran (typed).
    pub steps: Vec<crate::plan::StepRecord>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl UpReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.actions.is_empty()
    }
}

impl fmt::Display for UpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            return writeln!(
                f,
                "cluster {} (PostgreSQL {}) is up as specified: nothing to do ({:.1}s)",
                self.cluster, self.major, self.seconds
            );
        }
        writeln!(f, "cluster {} (PostgreSQL {}): {} change(s) in {:.1}s", self.cluster, self.major, self.actions.len(), self.seconds)?;
        for a in &self.actions {
            writeln!(f, "  {:<10} {} ({:.1}s)", a.node, a.what, a.seconds)?;
        }
        Ok(())
    }
}

/// A cluster bound to where its nodes live: the entry point for `up`, `status`,
/// `verify`, `down` and `destroy`.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub(crate) cluster: Cluster,
    provider: Arc<dyn Provider>,
    connector: Arc<dyn Connector>,
    state_dir: PathBuf,
    binaries: Option<Binaries>,
    pub(crate) local_ports: bool,
    pub(crate) lock_options: crate::oplock_options::LockOptions,
}

/// The state of a node's data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataDir {
    /// Absent or empty.
    Missing,
    /// Holds files but no cluster (`PG_VERSION` missing).
    Unknown,
    /// A cluster; `standby` when standby.signal or recovery.conf is present.
    Cluster { standby: bool },
}

impl Deployment {
    /// A deployment of `cluster` whose hosts come from `provider` and are reached through
    /// `connector`; secrets pgrepl generates are kept in `state_dir` (0600 files).
    pub fn new(cluster: Cluster, provider: Arc<dyn Provider>, connector: Arc<dyn Connector>, state_dir: impl Into<PathBuf>) -> Self {
        Deployment {
            cluster,
            provider,
            connector,
            state_dir: state_dir.into(),
            binaries: None,
            local_ports: false,
            lock_options: Default::default(),
        }
    }

    /// Records the binaries found on this machine (reported by status).
    pub fn with_binaries(mut self, b: Binaries) -> Self {
        self.binaries = Some(b);
        self
    }

    /// Reaches the hosts through what `wrap` makes of the current connector (a decorator:
    /// tracing, or faults injected by a test through `testing::FlakyTransport`).
    pub fn wrap_connector(mut self, wrap: impl FnOnce(Arc<dyn Connector>) -> Arc<dyn Connector>) -> Self {
        self.connector = wrap(self.connector);
        self
    }

    /// Nodes listen on this machine: check their ports before starting them.
    pub fn with_local_ports(mut self) -> Self {
        self.local_ports = true;
        self
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The binaries found, for local deployments.
    pub fn binaries(&self) -> Option<&Binaries> {
        self.binaries.as_ref()
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// The topology pgrepl last recorded (after a switchover or failover); the spec's
    /// roles when none is recorded.
    pub async fn topology(&self) -> Result<Topology, Error> {
        let p = self.state_dir.join("topology.json");
        match tokio::fs::read(&p).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Io {
                path: p.display().to_string(),
                action: "read the recorded topology".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Topology::default()),
            Err(e) => Err(Error::Io { path: p.display().to_string(), action: "read the recorded topology".into(), source: e }),
        }
    }

    /// Records the topology (0600, in the state directory).
    pub async fn save_topology(&self, t: &Topology) -> Result<(), Error> {
        let p = self.state_dir.join("topology.json");
        let tr_local = |action: &str, e: TransportError| Error::Transport { host: "localhost".into(), action: action.into(), source: e };
        crate::machine::LocalTransport
            .mkdir(&self.state_dir.to_string_lossy(), 0o700, None)
            .await
            .map_err(|e| tr_local("create the state directory", e))?;
        let body = serde_json::to_vec_pretty(t).expect("a topology serializes");
        crate::machine::LocalTransport
            .write_file(&p.to_string_lossy(), &body, 0o600, None)
            .await
            .map_err(|e| tr_local("record the topology", e))
    }

    /// The cluster as it is now: the spec's, with the recorded primary (if any) applied,
    /// and fenced nodes left out of the synchronous standbys.
    pub async fn current_cluster(&self) -> Result<Cluster, Error> {
        let topology = self.topology().await?;
        let mut cluster = match &topology.primary {
            Some(p) if *p != self.cluster.primary().name => self.cluster.with_primary(p)?,
            _ => self.cluster.clone(),
        };
        crate::cluster::exclude_from_sync(&mut cluster, &topology.fenced);
        Ok(cluster)
    }

    /// The state directory (secrets, recorded topology).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Hosts (created when `create`) and a handle per node that has one, with the
    /// cluster's addresses filled in from the hosts. The cluster returned is the current
    /// one (the recorded topology applied). Fails if any host cannot be reached.
    pub async fn connect(&self, create: bool) -> Result<(Cluster, Vec<NodeHandle>), Error> {
        let (cluster, results) = self.connect_each(create).await?;
        let handles = results.into_iter().map(|(_, r)| r).collect::<Result<Vec<_>, _>>()?;
        Ok((cluster, handles))
    }

    /// Like [`connect`](Self::connect) without creating hosts, but a node whose host
    /// cannot be reached is returned as a failure instead of failing the whole call (for
    /// status: an unreachable node is reported, the others still are).
    pub async fn connect_partial(&self) -> Result<(Cluster, Vec<NodeHandle>, Vec<(String, Error)>), Error> {
        let (cluster, results) = self.connect_each(false).await?;
        let mut handles = Vec::new();
        let mut failed = Vec::new();
        for (name, r) in results {
            match r {
                Ok(h) => handles.push(h),
                Err(e) => failed.push((name, e)),
            }
        }
        Ok((cluster, handles, failed))
    }

    /// One observation of the whole cluster: the current cluster (recorded primary applied,
    /// addresses from the hosts), a handle per reachable host, and every node observed.
    /// Never fails for a node that cannot be reached: that node is observed as such.
    pub async fn observe(&self) -> Result<(Cluster, Vec<NodeHandle>, ObservedCluster), Error> {
        let topology = self.topology().await?;
        let (cluster, handles, failed) = self.connect_partial().await?;
        let unreachable: Vec<(String, String)> = failed.into_iter().map(|(n, e)| (n, crate::error::chain(&e))).collect();
        let caps =
            cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
        let observed = observe_cluster(&cluster, &handles, &unreachable, &caps, &topology).await;
        Ok((cluster, handles, observed))
    }

    /// The current cluster with addresses from its hosts, and each host's connection.
    async fn connect_each(&self, create: bool) -> Result<(Cluster, Vec<(String, Result<NodeHandle, Error>)>), Error> {
        let mut cluster = self.current_cluster().await?;
        let hosts = if create { self.provider.ensure_hosts(&cluster).await? } else { self.provider.list_hosts(&cluster).await? };
        for n in &mut cluster.nodes {
            if n.address.is_none() {
                n.address = hosts.iter().find(|h| h.node == n.name).and_then(|h| h.address.clone());
            }
        }
        let with_hosts: Vec<(&Node, &Host)> =
            cluster.nodes.iter().filter_map(|n| hosts.iter().find(|h| h.node == n.name).map(|h| (n, h))).collect();
        let cref = &cluster;
        let results =
            join_all(with_hosts.iter().map(|(n, h)| async move { (n.name.clone(), self.connector.connect(cref, n, h).await) })).await;
        Ok((cluster.clone(), results))
    }

    /// Loads the replication password (spec's `password_file`, or pgrepl's own in the
    /// state directory), creating pgrepl's own when `create`.
    pub async fn secrets(&self, create: bool) -> Result<Secrets, Error> {
        let io = |path: &std::path::Path, action: &str, e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            action: action.into(),
            source: e,
        };
        let password = match &self.cluster.replication.password_file {
            Some(p) => {
                let text = tokio::fs::read_to_string(p).await.map_err(|e| io(p, "read the replication password file", e))?;
                Secret::new(text.trim_end_matches(['\n', '\r']))
            }
            None => {
                let p = self.state_dir.join("replication");
                match tokio::fs::read_to_string(&p).await {
                    Ok(t) => Secret::new(t.trim_end()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                        let s = Secret::generate();
                        crate::machine::LocalTransport.mkdir(&self.state_dir.to_string_lossy(), 0o700, None).await.map_err(|e| {
                            Error::Transport { host: "localhost".into(), action: "create the state directory".into(), source: e }
                        })?;
                        crate::machine::LocalTransport
                            .write_file(&p.to_string_lossy(), format!("{}\n", s.expose()).as_bytes(), 0o600, None)
                            .await
                            .map_err(|e| Error::Transport {
                                host: "localhost".into(),
                                action: "store the replication password".into(),
                                source: e,
                            })?;
                        s
                    }
                    Err(e) => {
                        return Err(io(&p, "read the replication password (run `pgrepl up` first)", e));
                    }
                }
            }
        };
        let verifier = match self.cluster.replication.auth.unwrap_or(AuthMethod::ScramSha256) {
            AuthMethod::ScramSha256 => postgres_protocol::password::scram_sha_256(password.expose().as_bytes()),
            AuthMethod::Md5 => postgres_protocol::password::md5(password.expose().as_bytes(), &self.cluster.replication.user),
        };
        Ok(Secrets { replication_password: password, replication_verifier: Secret::new(verifier) })
    }

    /// Only a brand-new cluster may get a generated replication password. When pgrepl's
    /// own password file is missing (pgrepl runs on another machine, or the state directory
    /// was lost) but a node already carries pgrepl's deployment (its `pgrepl.conf` or
    /// passfile, or on this machine's nodes a data directory), generating one would hand the
    /// nodes a password the servers do not know: refused, saying where the password is
    /// looked for and how to bring it over.
    pub(crate) async fn refuse_new_password_for_deployed(&self, handles: &[NodeHandle]) -> Result<(), Error> {
        if self.cluster.replication.password_file.is_some() {
            return Ok(());
        }
        let stored = self.state_dir.join("replication");
        if tokio::fs::symlink_metadata(&stored).await.is_ok() {
            return Ok(());
        }
        for h in handles {
            let l = &h.layout;
            let mut signs = vec![format!("{}/pgrepl.conf", l.config_dir), l.passfile()];
            if self.local_ports {
                signs.push(format!("{}/PG_VERSION", l.data_dir));
            }
            for found in signs {
                if h.transport.exists(&found, None).await.map_err(|e| tr(&h.name, "look for an existing deployment", e))? {
                    return Err(Refusal {
                        node: h.name.clone(),
                        reason: format!(
                            "the cluster is already deployed ({found} exists) but its replication password is not here: pgrepl looks for it in {stored} \
                             (the state directory's `replication` file), and generating a new one would change the password the standbys use. \
                             Copy that file from the machine that deployed the cluster to {stored} (mode 0600), or set replication.password_file \
                             in the spec to a file holding the password; nothing was changed",
                            stored = stored.display()
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Renders every node with its real layout (dry run: without secrets).
    pub async fn render(&self) -> Result<Vec<RenderedNode>, Error> {
        let (cluster, handles) = self.connect(false).await?;
        handles.iter().map(|h| render_node(&cluster, &h.name, &h.layout, None).map_err(Error::from)).collect()
    }

    /// Stops every running node: the primary first (its walsenders hand the last WAL,
    /// including the shutdown checkpoint, to the standbys), then the standbys. Returns
    /// the nodes stopped.
    pub async fn down(&self, progress: &dyn Progress) -> Result<Vec<String>, Error> {
        let (cluster, handles) = self.connect(false).await?;
        let mut order: Vec<&Node> = vec![cluster.primary()];
        order.extend(cluster.nodes.iter().filter(|n| n.role == Role::Standby));
        let mut stopped = Vec::new();
        for n in order {
            let Some(h) = handles.iter().find(|h| h.name == n.name) else {
                continue;
            };
            if is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
                progress.started(&n.name, "stop");
                let r = render_node(&cluster, &n.name, &h.layout, None)?;
                h.transport
                    .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
                    .await
                    .map_err(|e| tr(&n.name, "stop the server", e))?;
                progress.finished(&n.name, "stop", "stopped");
                stopped.push(n.name.clone());
            }
        }
        Ok(stopped)
    }

    /// Stops every node and removes what the provider created for the cluster (the
    /// local provider: the node directories) and pgrepl's stored secrets. On hosts pgrepl
    /// did not create (SSH), it removes only what its record on each host says it created
    /// (see [`Created`]); a cluster that was there before keeps its data. Returns what was
    /// left, one line per thing (`node: what, and why`); empty when everything is gone.
    pub async fn destroy(&self, progress: &dyn Progress) -> Result<Vec<String>, Error> {
        let lock = self.lock_operation("destroy", self.lock_wait()).await?;
        self.down(progress).await?;
        let (_, handles) = self.connect(false).await?;
        for h in &handles {
            if is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
                return Err(Refusal {
                    node: h.name.clone(),
                    reason: "its server still runs after stopping it; nothing was removed".into(),
                }
                .into());
            }
        }
        progress.started("cluster", "destroy");
        let mut left = Vec::new();
        if !self.hosts_on_this_machine() {
            // Every server was checked stopped above.
            let (cluster, handles) = self.connect(false).await?;
            for h in &handles {
                left.extend(self.destroy_on_host(&cluster, h).await?);
            }
        }
        self.provider.destroy_hosts(&self.cluster).await?;
        let secret = self.state_dir.join("replication");
        if self.cluster.replication.password_file.is_none() {
            let _ = tokio::fs::remove_file(&secret).await;
            lock.remove_local_file();
            let _ = tokio::fs::remove_dir(&self.state_dir).await;
        }
        progress.finished("cluster", "destroy", if left.is_empty() { "removed" } else { "removed what pgrepl created" });
        Ok(left)
    }

    /// Removes from a node's host what pgrepl's record there says it created, takes
    /// pgrepl's settings out of a cluster that was there before, removes pgrepl's own
    /// directory and the record; returns what it left.
    async fn destroy_on_host(&self, cluster: &Cluster, h: &NodeHandle) -> Result<Vec<String>, Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let n = h.name.as_str();
        let created = read_created(h, &cluster.name).await?;
        let r = render_node(cluster, n, l, None)?;
        let mut left = Vec::new();
        let exists = |p: String| async move { t.exists(&p, None).await.map_err(|e| tr(n, &format!("inspect {p}"), e)) };
        let data_ours = created.data_dir.as_deref() == Some(l.data_dir.as_str());
        let remove_data = || async {
            if t.exists(&l.data_dir, None).await.map_err(|e| tr(n, "inspect the data directory", e))? {
                t.remove_tree(&l.data_dir).await.map_err(|e| tr(n, "remove the data directory", e))?;
            }
            Ok::<(), Error>(())
        };
        let not_recorded =
            "it is not recorded as created by pgrepl (it was there before pgrepl, or was deployed by a pgrepl that kept no record)";
        match (&l.debian_cluster, &r.commands.drop) {
            (Some((v, c)), Some(drop)) => {
                let registered = exists(format!("{}/postgresql.conf", l.config_dir)).await?;
                if created.debian_cluster.as_ref() == Some(&(v.clone(), c.clone())) {
                    if registered {
                        t.run(&Command::from_line(drop).timeout(Duration::from_secs(120)))
                            .await
                            .map_err(|e| tr(n, "drop the cluster", e))?;
                    }
                    // pg_dropcluster leaves files it does not know: pgrepl's own, then the empty directory.
                    t.remove_file(&format!("{}/pgrepl.conf", l.config_dir)).await.map_err(|e| tr(n, "remove pgrepl.conf", e))?;
                    let _ = t
                        .exec(&Command { user: t.admin_user().map(str::to_string), ..Command::new("rmdir").args([l.config_dir.as_str()]) })
                        .await;
                    if data_ours {
                        remove_data().await?;
                    }
                } else if registered {
                    self.take_settings_out(h).await?;
                    if data_ours {
                        remove_data().await?;
                        left.push(format!(
                            "{n}: Debian cluster {v}/{c}, its registration and configuration in {}: the cluster existed before pgrepl, so it was not dropped; its data directory {} held pgrepl's clone and was removed (`pg_dropcluster {v} {c}` removes the rest)",
                            l.config_dir, l.data_dir
                        ));
                    } else {
                        left.push(format!(
                            "{n}: Debian cluster {v}/{c} with its data in {} (stopped): {not_recorded}; pgrepl took its own settings out, the replication role \"{}\" and slots it made inside are kept",
                            l.data_dir, cluster.replication.user
                        ));
                    }
                } else if data_ours {
                    remove_data().await?;
                } else if exists(l.data_dir.clone()).await? {
                    left.push(format!("{n}: the data directory {}: {not_recorded}", l.data_dir));
                }
            }
            _ => match &l.base_dir {
                Some(base) if created.base_dir.as_deref() == Some(base.as_str()) => {
                    t.remove_tree(base).await.map_err(|e| tr(n, "remove the node's directory", e))?
                }
                _ if data_ours => remove_data().await?,
                _ => {
                    if exists(format!("{}/PG_VERSION", l.data_dir)).await? {
                        self.take_settings_out(h).await?;
                        left.push(format!(
                            "{n}: the cluster in {} (stopped): {not_recorded}; pgrepl took its own settings out, the replication role \"{}\" and slots it made inside are kept",
                            l.data_dir, cluster.replication.user
                        ));
                    } else if exists(l.data_dir.clone()).await? {
                        left.push(format!("{n}: the data directory {}: {not_recorded}", l.data_dir));
                    }
                    if let Some(base) = &l.base_dir {
                        if exists(base.clone()).await? {
                            left.push(format!("{n}: the directory {base}: {not_recorded}"));
                        }
                    }
                }
            },
        }
        // pgrepl's own directory (passfile, markers), named after the cluster.
        t.remove_tree(&l.pgrepl_dir).await.map_err(|e| tr(n, "remove pgrepl's directory", e))?;
        let (path, dir) = created_path(&cluster.name, n);
        t.remove_file(&path).await.map_err(|e| tr(n, &format!("remove pgrepl's record {path}"), e))?;
        let _ = t.exec(&Command { user: t.admin_user().map(str::to_string), ..Command::new("rmdir").args([dir.as_str()]) }).await;
        Ok(left)
    }

    /// Takes pgrepl's settings out of a cluster it did not create: its `pgrepl.conf`, the
    /// include line it appended to `postgresql.conf`, its block in `pg_hba.conf`. The rest
    /// of the configuration is kept as it is.
    async fn take_settings_out(&self, h: &NodeHandle) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let owner = Some(l.os_user.as_str());
        let map = |what: &str, e| tr(&h.name, &format!("take pgrepl's settings out of {what}"), e);
        let conf = format!("{}/postgresql.conf", l.config_dir);
        if let Some(b) = t.read_file(&conf).await.map_err(|e| map(&conf, e))? {
            let text = String::from_utf8_lossy(&b).into_owned();
            let kept: String =
                text.lines().filter(|x| x.trim() != INCLUDE_LINE && x.trim() != INCLUDE_COMMENT).map(|x| format!("{x}\n")).collect();
            if kept != text {
                t.write_file(&conf, kept.as_bytes(), 0o600, owner).await.map_err(|e| map(&conf, e))?;
            }
        }
        let hba = format!("{}/pg_hba.conf", l.config_dir);
        if let Some(b) = t.read_file(&hba).await.map_err(|e| map(&hba, e))? {
            let text = String::from_utf8_lossy(&b).into_owned();
            let kept = merge_hba_block(&text, "");
            if kept != text {
                t.write_file(&hba, kept.as_bytes(), 0o600, owner).await.map_err(|e| map(&hba, e))?;
            }
        }
        let ours = format!("{}/pgrepl.conf", l.config_dir);
        t.remove_file(&ours).await.map_err(|e| map(&ours, e))
    }
}

/// Where a host keeps pgrepl's record of what it created there, per cluster and node:
/// `<CREATED_DIR>/<cluster>/<node>.json`, root's (directory 0700, file 0600), outside every
/// directory the PostgreSQL user can write.
pub const CREATED_DIR: &str = "/var/lib/pgrepl/.created";

/// What pgrepl created on a node's host (not the local provider's), recorded on that host
/// when it created it. `destroy` removes only what is recorded here; a cluster that was
/// there before (adopted) keeps its data and registration, and is reported as left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Created {
    /// The data directory, made by pgrepl's initdb, pg_createcluster or clone.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Debian's cluster `(version, name)`, registered by pgrepl's pg_createcluster.
    #[serde(default)]
    pub debian_cluster: Option<(String, String)>,
    /// The node's own directory (the plain layout), made by pgrepl.
    #[serde(default)]
    pub base_dir: Option<String>,
}

fn created_path(cluster: &str, node: &str) -> (String, String) {
    let dir = format!("{CREATED_DIR}/{cluster}");
    (format!("{dir}/{node}.json"), dir)
}

/// The record of what pgrepl created for `h`'s node on its host (empty when there is none).
pub(crate) async fn read_created(h: &NodeHandle, cluster: &str) -> Result<Created, Error> {
    let (path, _) = created_path(cluster, &h.name);
    let Some(bytes) = h.transport.read_file(&path).await.map_err(|e| tr(&h.name, &format!("read pgrepl's record {path}"), e))? else {
        return Ok(Created::default());
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::node(&h.name, format!("pgrepl's record {path} of what it created on this host is unreadable ({e}); fix or remove it"))
    })
}

async fn write_created(h: &NodeHandle, cluster: &str, c: &Created) -> Result<(), Error> {
    let (path, dir) = created_path(cluster, &h.name);
    let t = &*h.transport;
    let map = |e| tr(&h.name, &format!("record what pgrepl created in {path}"), e);
    t.mkdir(&dir, 0o700, Some("root")).await.map_err(map)?;
    let body = serde_json::to_vec_pretty(c).expect("a record serializes");
    t.write_file(&path, &body, 0o600, Some("root")).await.map_err(map)
}

/// The line pgrepl writes before its include line in postgresql.conf.
const INCLUDE_COMMENT: &str = "# Added by pgrepl: its settings for this node.";

pub(crate) fn tr(node: &str, action: &str, e: TransportError) -> Error {
    Error::Transport { host: node.to_string(), action: action.to_string(), source: e }
}

pub(crate) fn sqlerr(node: &str, action: &str, e: QueryError) -> Error {
    match e {
        QueryError::Transport(t) => tr(node, action, t),
        QueryError::Sql(s) => Error::Sql { node: node.to_string(), action: action.to_string(), source: s },
    }
}

pub(crate) struct Run<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) handles: &'a [NodeHandle],
    pub(crate) secrets: &'a Secrets,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) local_ports: bool,
}

impl Run<'_> {
    pub(crate) fn handle(&self, node: &str) -> Result<&NodeHandle, Error> {
        self.handles.iter().find(|h| h.name == node).ok_or_else(|| Error::node(node, "no host for this node"))
    }

    pub(crate) async fn step<T, F>(&self, node: &str, step: &str, actions: &mut Vec<Action>, f: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let t = Instant::now();
        self.progress.started(node, step);
        let r = f.await;
        self.progress.finished(node, step, if r.is_ok() { "done" } else { "failed" });
        if r.is_ok() {
            actions.push(Action { node: node.to_string(), what: step.to_string(), seconds: t.elapsed().as_secs_f64() });
        }
        r
    }

    pub(crate) async fn data_dir(&self, h: &NodeHandle) -> Result<DataDir, Error> {
        let t = &*h.transport;
        let d = &h.layout.data_dir;
        let map = |e| tr(&h.name, "inspect the data directory", e);
        if t.exists(&format!("{d}/PG_VERSION"), None).await.map_err(map)? {
            let standby = t.exists(&format!("{d}/standby.signal"), None).await.map_err(map)?
                || t.exists(&format!("{d}/recovery.conf"), None).await.map_err(map)?;
            return Ok(DataDir::Cluster { standby });
        }
        let out = t
            .exec(&Command { user: t.admin_user().map(str::to_string), ..Command::new("ls").args(["-A", d.as_str()]) })
            .await
            .map_err(map)?;
        Ok(if out.status != 0 || out.stdout.trim().is_empty() { DataDir::Missing } else { DataDir::Unknown })
    }

    /// Records on the node's host that pgrepl created something there (see [`Created`]), so
    /// that `destroy` removes it and nothing else. Not for the local provider, whose node
    /// directories are pgrepl's whole.
    pub(crate) async fn record_created(&self, h: &NodeHandle, change: impl FnOnce(&mut Created)) -> Result<(), Error> {
        if self.local_ports {
            return Ok(());
        }
        let mut c = read_created(h, &self.cluster.name).await?;
        let before = c.clone();
        change(&mut c);
        if c == before {
            return Ok(());
        }
        write_created(h, &self.cluster.name, &c).await
    }

    pub(crate) async fn prepare_dirs(&self, h: &NodeHandle) -> Result<(), Error> {
        let l = &h.layout;
        let owner = Some(l.os_user.as_str());
        let t = &*h.transport;
        let map = |e| tr(&h.name, "create pgrepl's directories", e);
        if let Some(base) = &l.base_dir {
            let new = !t.exists(base, None).await.map_err(map)?;
            t.mkdir(base, 0o700, owner).await.map_err(map)?;
            if new {
                self.record_created(h, |c| c.base_dir = Some(base.clone())).await?;
            }
        }
        t.mkdir(&l.pgrepl_dir, 0o700, owner).await.map_err(map)?;
        if l.owns_postgresql_conf {
            t.mkdir(&l.socket_dir, 0o700, owner).await.map_err(map)?;
            if let Some(log) = &l.log_file {
                if let Some(dir) = log.rsplit_once('/').map(|(d, _)| d) {
                    t.mkdir(dir, 0o700, owner).await.map_err(map)?;
                }
            }
        }
        if let crate::spec::ArchiveSpec::Dir { path } = &self.cluster.archive {
            t.mkdir(&path.to_string_lossy(), 0o700, owner).await.map_err(map)?;
        }
        Ok(())
    }

    /// Writes every file of `r` that differs from what is on the host; returns whether any changed.
    pub(crate) async fn write_files(&self, h: &NodeHandle, r: &RenderedNode, include_recovery: bool) -> Result<bool, Error> {
        let t = &*h.transport;
        let owner = Some(h.layout.os_user.as_str());
        let mut changed = false;
        for f in &r.files {
            let is_recovery = f.path.ends_with("/recovery.conf") || f.path.ends_with("/standby.signal");
            if is_recovery && !include_recovery {
                continue;
            }
            let map = |e| tr(&h.name, &format!("write {}", f.path), e);
            // A file whose current text is kept (merged) is read as its owner: read as root, a
            // symbolic link planted there would copy, say, /etc/shadow into a file they own.
            let current = match f.placement {
                Placement::Whole => t.read_file(&f.path).await.map_err(map)?,
                Placement::HbaBlock | Placement::IncludeLine => t.read_file_as(&f.path, &h.layout.os_user).await.map_err(map)?,
            }
            .map(|b| String::from_utf8_lossy(&b).into_owned());
            let desired = match f.placement {
                Placement::Whole => f.contents.text.clone(),
                Placement::HbaBlock => merge_hba_block(current.as_deref().unwrap_or(""), &f.contents.text),
                Placement::IncludeLine => {
                    let cur = current.clone().unwrap_or_default();
                    if cur.lines().any(|l| l.trim() == INCLUDE_LINE) {
                        cur
                    } else {
                        let sep = if cur.is_empty() || cur.ends_with('\n') { "" } else { "\n" };
                        format!("{cur}{sep}{INCLUDE_COMMENT}\n{INCLUDE_LINE}\n")
                    }
                }
            };
            if current.as_deref() != Some(desired.as_str()) {
                t.write_file(&f.path, desired.as_bytes(), f.mode, owner).await.map_err(map)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(crate) async fn sql(&self, h: &NodeHandle, port: u16, text: &str, action: &str) -> Result<Vec<sql::Row>, Error> {
        sql::query(&*h.transport, &h.layout, port, text, SQL_TIMEOUT).await.map_err(|e| sqlerr(&h.name, action, e))
    }

    pub(crate) async fn start(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<(), Error> {
        // A postmaster killed and not yet reaped leaves a pid file naming a zombie, which
        // PostgreSQL's own check takes for a live server: such a file is stale.
        // The same holds for the socket's lock file.
        for lock in [format!("{}/postmaster.pid", h.layout.data_dir), format!("{}/.s.PGSQL.{}.lock", h.layout.socket_dir, n.port)] {
            let Some(bytes) = h.transport.read_file(&lock).await.map_err(|e| tr(&n.name, "read a lock file", e))? else { continue };
            let Some(pid) = String::from_utf8_lossy(&bytes).lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { continue };
            let st = h
                .transport
                .exec(&Command::new("ps").args(["-o", "stat=", "-p", &pid.to_string()]))
                .await
                .map_err(|e| tr(&n.name, "inspect the old postmaster", e))?;
            if !process_alive(&st.stdout) {
                h.transport.remove_file(&lock).await.map_err(|e| tr(&n.name, "remove a stale lock file", e))?;
            }
        }
        if self.local_ports {
            if let Some(a) = &n.address {
                if crate::machine::port_in_use(a, n.port).await {
                    return Err(Error::node(
                        &n.name,
                        format!(
                            "port {} on {a} is already in use by another process; choose a free port in the spec (nodes[].port, or provider.base_port)",
                            n.port
                        ),
                    ));
                }
            }
        }
        let out = h
            .transport
            .exec(&Command::from_line(&r.commands.start).timeout(Duration::from_secs(330)))
            .await
            .map_err(|e| tr(&n.name, "start the server", e))?;
        if !out.success() {
            let log = match &h.layout.log_file {
                Some(l) => h.transport.read_file(l).await.ok().flatten().map(|b| {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(6)..].join("\n")
                }),
                None => None,
            };
            return Err(Error::node(
                &n.name,
                format!("the server did not start: {}{}", out.tail(), log.map(|l| format!("\nserver log:\n{l}")).unwrap_or_default()),
            ));
        }
        Ok(())
    }

    /// After a configuration change on a running server: reload, then restart if a
    /// changed setting needs it (pg_settings.pending_restart, 9.5+; before, always).
    pub(crate) async fn apply_config(&self, n: &Node, h: &NodeHandle, r: &RenderedNode, actions: &mut Vec<Action>) -> Result<(), Error> {
        let caps = self.cluster.caps().ok_or_else(|| {
            Error::Discovery(
                "the PostgreSQL major is not known: set `postgres` in the spec, pass --pg-version, or install PostgreSQL".into(),
            )
        })?;
        h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&n.name, "reload the configuration", e))?;
        let restart = if caps.pending_restart {
            // A reload is asynchronous; give the postmaster a moment to process it.
            let mut pending = false;
            for _ in 0..10 {
                tokio::time::sleep(POLL_INTERVAL).await;
                let rows = self
                    .sql(
                        h,
                        n.port,
                        "SELECT count(*) FROM pg_catalog.pg_settings WHERE pending_restart;",
                        "check for settings pending a restart",
                    )
                    .await?;
                pending = rows.first().and_then(|r| r.first().cloned().flatten()).is_some_and(|c| c != "0");
                if pending {
                    break;
                }
            }
            pending
        } else {
            true
        };
        if restart {
            self.step(&n.name, "restart (settings need it)", actions, async {
                h.transport
                    .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
                    .await
                    .map_err(|e| tr(&n.name, "stop the server", e))?;
                self.start(n, h, r).await
            })
            .await?;
        } else {
            actions.push(Action { node: n.name.clone(), what: "reload configuration".into(), seconds: 0.0 });
        }
        Ok(())
    }

    /// `up`'s step `Initdb` on the primary: its directories, then initdb with checksums
    /// when its data directory is empty and no server runs; nothing when it holds a cluster.
    pub(crate) async fn primary_initdb(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        if let DataDir::Missing = self.data_dir(h).await? {
            if running {
                return Err(Refusal { node: n.name.clone(), reason: format!("a server runs but {} is empty", h.layout.data_dir) }.into());
            }
            let init = r.commands.init.as_ref().ok_or_else(|| {
                Error::node(
                    &n.name,
                    format!("no PostgreSQL cluster in {} and this layout has no initdb step; create the cluster first", h.layout.data_dir),
                )
            })?;
            self.step(&n.name, "initdb (data checksums on)", &mut actions, async {
                h.transport.run(&Command::from_line(init).timeout(Duration::from_secs(300))).await.map_err(|e| tr(&n.name, "initdb", e))?;
                Ok(())
            })
            .await?;
            let l = &h.layout;
            self.record_created(h, |c| {
                c.data_dir = Some(l.data_dir.clone());
                if l.debian_cluster.is_some() {
                    c.debian_cluster = l.debian_cluster.clone();
                }
            })
            .await?;
        }
        Ok(actions)
    }

    /// `up`'s step `WriteSettings` on the primary: refused when its data directory is not a
    /// primary's or it runs as a standby; the OS's start at boot turned off; settings and
    /// pg_hba.conf written where they differ and, when it runs, applied.
    pub(crate) async fn primary_settings(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        match self.data_dir(h).await? {
            DataDir::Missing | DataDir::Unknown => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds files but no PostgreSQL cluster; pgrepl will not initialise over them (move them away first)",
                        h.layout.data_dir
                    ),
                }
                .into());
            }
            DataDir::Cluster { standby: true } if !running => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!("the spec makes it the primary but {} holds a standby (standby.signal or recovery.conf); after a failover, update the spec's roles or use `pgrepl switchover`", h.layout.data_dir),
                }
                .into());
            }
            DataDir::Cluster { .. } => {}
        }
        if running {
            let rows = self.sql(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the primary's role").await?;
            if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("t") {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: "the spec makes it the primary but it runs as a standby (in recovery); after a failover, update the spec's roles or use `pgrepl switchover`".into(),
                }
                .into());
            }
        }
        actions.extend(self.ensure_autostart_off(n, h, &r).await?);
        let changed = self.write_files(h, &r, false).await?;
        if changed {
            actions.push(Action { node: n.name.clone(), what: "write settings and pg_hba.conf".into(), seconds: 0.0 });
            if running {
                self.apply_config(n, h, &r, &mut actions).await?;
            }
        }
        Ok(actions)
    }

    /// `up`'s step `Start`: the node's server started when it does not run.
    pub(crate) async fn start_if_stopped(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        if !is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
            let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
            self.step(&n.name, "start", &mut actions, self.start(n, h, &r)).await?;
        }
        Ok(actions)
    }

    /// `up`'s step `EnsureReplicationRole`: created, and given its password, only when missing.
    pub(crate) async fn replication_role(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        let user = &self.cluster.replication.user;
        let rows = self
            .sql(
                h,
                n.port,
                &format!(
                    "SELECT rolreplication AND rolcanlogin AND rolpassword IS NOT NULL FROM pg_catalog.pg_authid WHERE rolname = {};",
                    render::sql_literal(user)
                ),
                "check the replication role",
            )
            .await?;
        if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() != Some("t") {
            let text = r.sql.iter().filter(|s| s.purpose.contains(user.as_str())).map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n");
            self.step(&n.name, &format!("create replication role {user}"), &mut actions, async {
                self.sql(h, n.port, &text, "create the replication role").await.map(|_| ())
            })
            .await?;
        }
        Ok(actions)
    }

    /// Turns off the OS's own start of the node's server at boot (pgrepl starts its nodes
    /// itself: a node fenced while unreachable must not come back writable after a reboot):
    /// Debian's `start.conf` says `manual`, a systemd unit enabled at boot is disabled. What
    /// it changed is recorded on the host in `<pgrepl_dir>/autostart-off`. Nothing to do
    /// when it is off already.
    pub(crate) async fn ensure_autostart_off(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let a = &r.commands.autostart;
        let t = &*h.transport;
        let l = &h.layout;
        let mut start_conf: Option<(&str, String)> = None;
        let mut changes: Vec<String> = Vec::new();
        if let Some(path) = &a.start_conf {
            let current = t.read_file(path).await.map_err(|e| tr(&n.name, "read start.conf", e))?;
            let current = match current {
                Some(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                // Missing means `auto` to postgresql-common, once the cluster's configuration exists.
                None if t
                    .exists(&format!("{}/postgresql.conf", l.config_dir), None)
                    .await
                    .map_err(|e| tr(&n.name, "inspect the configuration", e))? =>
                {
                    Some(String::new())
                }
                None => None,
            };
            if let Some(text) = current {
                if render::start_conf_mode(&text) == "auto" {
                    changes.push(format!("{path}: auto -> manual"));
                    start_conf = Some((path.as_str(), render::start_conf_manual(&text)));
                }
            }
        }
        let mut disable = None;
        if let (Some(check), Some(d)) = (&a.is_enabled, &a.disable) {
            let out =
                t.exec(&Command::from_line(check)).await.map_err(|e| tr(&n.name, "check whether the OS starts the server at boot", e))?;
            if out.stdout.trim() == "enabled" {
                changes.push(format!("systemd unit {}: enabled -> disabled", d.args.last().map(String::as_str).unwrap_or("")));
                disable = Some(d);
            }
        }
        if changes.is_empty() {
            return Ok(actions);
        }
        let step = format!("turn off the OS's start at boot ({})", changes.join("; "));
        self.step(&n.name, &step, &mut actions, async {
            if let Some((path, text)) = &start_conf {
                t.write_file(path, text.as_bytes(), 0o644, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "write start.conf", e))?;
                if let Some(reload) = &a.reload_units {
                    t.run(&Command::from_line(reload)).await.map_err(|e| tr(&n.name, "reload systemd's units", e))?;
                }
            }
            if let Some(d) = disable {
                t.run(&Command::from_line(d)).await.map_err(|e| tr(&n.name, "disable the systemd unit", e))?;
            }
            // The record: what pgrepl changed, so it can be told (and undone) later.
            let record = format!("{}/autostart-off", l.pgrepl_dir);
            t.mkdir(&l.pgrepl_dir, 0o700, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "create pgrepl's directory", e))?;
            let old = t.read_file(&record).await.map_err(|e| tr(&n.name, "read the autostart record", e))?;
            let mut text = match old {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => "# pgrepl starts this node itself (`pgrepl up`); it turned off the OS's start at boot:\n".to_string(),
            };
            for c in &changes {
                text.push_str(c);
                text.push('\n');
            }
            t.write_file(&record, text.as_bytes(), 0o600, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "record the autostart change", e))
        })
        .await?;
        Ok(actions)
    }

    /// Creates on `n` the slots its direct standbys use, where missing.
    pub(crate) async fn ensure_slots(&self, n: &Node, h: &NodeHandle) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let wanted: Vec<&str> = self.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).collect();
        if wanted.is_empty() {
            return Ok(actions);
        }
        let rows = self.sql(h, n.port, "SELECT slot_name FROM pg_catalog.pg_replication_slots;", "list replication slots").await?;
        let have: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        for slot in wanted.into_iter().filter(|s| !have.iter().any(|h| h == s)) {
            self.step(&n.name, &format!("create slot {slot}"), &mut actions, async {
                self.sql(h, n.port, &render::create_slot_sql(slot), "create a replication slot").await.map(|_| ())
            })
            .await?;
        }
        Ok(actions)
    }

    /// `up`'s step `Clone` or `WriteSettings` on a standby: whatever its data directory
    /// (read again now) needs: a clone when it is empty or a clone was left unfinished (an
    /// unused cluster the host came with is replaced; a primary with data of its own, a
    /// former primary's directory, or foreign files are refused), otherwise the OS's start
    /// at boot turned off and its settings written where they differ and applied when it
    /// runs. Starting it is the next step.
    pub(crate) async fn standby_clone_or_settings(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let t = &*h.transport;
        let marker = h.layout.clone_marker();
        let unfinished = t.exists(&marker, None).await.map_err(|e| tr(&n.name, "look for an unfinished clone", e))?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        let mut unfinished = unfinished;
        let mut running = running;
        if running && !unfinished {
            let rows = self.sql(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the standby's role").await?;
            if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() != Some("t") {
                if self.is_pristine(n, h).await? {
                    // A cluster nobody used (as a distribution package creates and starts
                    // one): no user database, table or role. It is replaced by the clone.
                    self.step(&n.name, "stop the unused cluster the host came with", &mut actions, async {
                        h.transport
                            .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
                            .await
                            .map_err(|e| tr(&n.name, "stop the server", e))?;
                        t.write_file(&marker, b"replacing an unused cluster\n", 0o600, Some(&h.layout.os_user))
                            .await
                            .map_err(|e| tr(&n.name, "mark the clone as started", e))
                    })
                    .await?;
                    unfinished = true;
                    running = false;
                } else {
                    return Err(Refusal {
                        node: n.name.clone(),
                        reason: format!(
                            "the spec makes it a standby but it runs as a primary (not in recovery) and holds data of its own; pgrepl will not demote it here: use `pgrepl rejoin {}`",
                            n.name
                        ),
                    }
                    .into());
                }
            }
        }
        let data = self.data_dir(h).await?;
        let needs_clone = match (data, unfinished) {
            (_, true) => {
                if running {
                    return Err(Refusal {
                        node: n.name.clone(),
                        reason: format!(
                            "an unfinished clone is recorded ({marker}) but a server runs on {}; stop it before pgrepl re-clones",
                            h.layout.data_dir
                        ),
                    }
                    .into());
                }
                true
            }
            (DataDir::Missing, false) => true,
            (DataDir::Cluster { standby: true }, false) => false,
            (DataDir::Cluster { standby: false }, false) => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds a cluster that is not a standby (no standby.signal or recovery.conf): it may be a former primary with writes of its own. pgrepl will not overwrite it; use `pgrepl rejoin {}`, or move the directory away to clone afresh",
                        h.layout.data_dir, n.name
                    ),
                }
                .into());
            }
            (DataDir::Unknown, false) => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds files but no PostgreSQL cluster; pgrepl will not clone over them (move them away first)",
                        h.layout.data_dir
                    ),
                }
                .into());
            }
        };
        if needs_clone {
            self.clone_standby(n, h, &r, &mut actions).await?;
        } else {
            actions.extend(self.ensure_autostart_off(n, h, &r).await?);
            let changed = self.write_files(h, &r, true).await?;
            if changed {
                actions.push(Action { node: n.name.clone(), what: "write settings and pg_hba.conf".into(), seconds: 0.0 });
            }
            if running && changed {
                self.apply_config(n, h, &r, &mut actions).await?;
            }
        }
        Ok(actions)
    }

    /// Whether a running, writable cluster was never used: no database besides the
    /// defaults, no table, view or sequence outside the system schemas, no role besides
    /// the bootstrap superuser and the predefined ones.
    pub(crate) async fn is_pristine(&self, n: &Node, h: &NodeHandle) -> Result<bool, Error> {
        let q = "SELECT (SELECT count(*) FROM pg_catalog.pg_database WHERE datname NOT IN ('template0', 'template1', 'postgres')) \
                 + (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
                    WHERE s.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND s.nspname NOT LIKE 'pg\\_%') \
                 + (SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user);";
        let rows = self.sql(h, n.port, q, "check whether the cluster was ever used").await?;
        Ok(rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("0"))
    }

    /// Removes a standby's data directory. Guarded: reached only with pgrepl's
    /// unfinished-clone marker written, and refused while a server runs on it.
    pub(crate) async fn remove_unfinished_data(&self, n: &Node, h: &NodeHandle) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        if t.exists(&l.data_dir, None).await.map_err(|e| tr(&n.name, "inspect the data directory", e))? {
            if is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
                return Err(
                    Refusal { node: n.name.clone(), reason: format!("a server runs on {}; refusing to remove it", l.data_dir) }.into()
                );
            }
            t.remove_tree(&l.data_dir).await.map_err(|e| tr(&n.name, "remove the unfinished clone", e))?;
        }
        Ok(())
    }

    pub(crate) async fn clone_standby(&self, n: &Node, h: &NodeHandle, r: &RenderedNode, actions: &mut Vec<Action>) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let marker = l.clone_marker();
        let upstream = n.upstream.as_deref().expect("a validated standby has an upstream");
        // The passfile first: pg_basebackup reads it.
        let pass = r.files.iter().find(|f| f.path == l.passfile()).expect("rendered passfile");
        t.write_file(&pass.path, pass.contents.text.as_bytes(), 0o600, Some(&l.os_user))
            .await
            .map_err(|e| tr(&n.name, "write the passfile", e))?;
        t.write_file(&marker, format!("cloning from {upstream}\n").as_bytes(), 0o600, Some(&l.os_user))
            .await
            .map_err(|e| tr(&n.name, "mark the clone as started", e))?;
        // Debian: the cluster's configuration comes from pg_createcluster; its data
        // directory is then replaced by the clone.
        if let (Some(_), Some(init)) = (&l.debian_cluster, &r.commands.init) {
            if !t
                .exists(&format!("{}/postgresql.conf", l.config_dir), None)
                .await
                .map_err(|e| tr(&n.name, "inspect the configuration", e))?
            {
                self.remove_unfinished_data(n, h).await?;
                self.step(&n.name, "create the cluster's configuration (pg_createcluster)", actions, async {
                    t.run(&Command::from_line(init).timeout(Duration::from_secs(300)))
                        .await
                        .map_err(|e| tr(&n.name, "pg_createcluster", e))?;
                    Ok(())
                })
                .await?;
                self.record_created(h, |c| c.debian_cluster = l.debian_cluster.clone()).await?;
            }
        }
        // Before the clone: a reboot must not start a copy that has no standby settings yet.
        actions.extend(self.ensure_autostart_off(n, h, r).await?);
        self.remove_unfinished_data(n, h).await?;
        // Whatever the clone leaves in the data directory is pgrepl's (recorded first, so a
        // clone that fails midway is still known as pgrepl's).
        self.record_created(h, |c| c.data_dir = Some(l.data_dir.clone())).await?;
        let clone = r.commands.clone.as_ref().expect("standbys have a clone command");
        // The source's size, to report the clone's progress against (best effort).
        let total = match (self.handle(upstream), self.cluster.node(upstream)) {
            (Ok(uh), Some(un)) => self
                .sql(uh, un.port, "SELECT sum(pg_catalog.pg_database_size(oid))::bigint FROM pg_catalog.pg_database;", "measure the source")
                .await
                .ok()
                .and_then(|rows| rows.first().and_then(|r| r.first().cloned().flatten()))
                .and_then(|v| v.parse::<u64>().ok()),
            _ => None,
        };
        let step = format!("clone from {upstream} (pg_basebackup)");
        self.step(&n.name, &step, actions, async {
            let clone_cmd = Command::from_line(clone).timeout(CLONE_TIMEOUT);
            let run = t.run(&clone_cmd);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(CLONE_PROGRESS_INTERVAL);
            tick.tick().await;
            // Ends with the clone, whose own time limit bounds it.
            loop {
                tokio::select! {
                    r = &mut run => {
                        r.map_err(|e| tr(&n.name, &format!("clone from {upstream}"), e))?;
                        return Ok(());
                    }
                    _ = tick.tick() => {
                        let du = Command { user: t.admin_user().map(str::to_string), ..Command::new("du").args(["-s", "-B1", l.data_dir.as_str()]) };
                        if let Ok(out) = t.exec(&du).await {
                            if let Some(done) = out.stdout.split_whitespace().next().and_then(|b| b.parse::<u64>().ok()) {
                                self.progress.update(&n.name, &step, &clone_progress(done, total));
                            }
                        }
                    }
                }
            }
        })
        .await?;
        self.write_files(h, r, true).await?;
        t.remove_file(&marker).await.map_err(|e| tr(&n.name, "clear the clone marker", e))?;
        actions.push(Action { node: n.name.clone(), what: "write standby settings".into(), seconds: 0.0 });
        Ok(())
    }

    /// Waits until `n` streams from its upstream (pg_stat_replication there).
    pub(crate) async fn wait_streaming(&self, n: &Node) -> Result<(), Error> {
        let upstream = n.upstream.as_deref().expect("standby");
        let uh = self.handle(upstream)?;
        let up = self.cluster.node(upstream).expect("validated");
        let q = format!("SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = {};", render::sql_literal(&n.name));
        self.progress.started(&n.name, "wait until streaming");
        let start = Instant::now();
        let max_polls = (STREAMING_DEADLINE.as_millis() / POLL_INTERVAL.as_millis()) as usize;
        for _ in 0..max_polls {
            let rows = self.sql(uh, up.port, &q, "check replication").await?;
            if rows.iter().any(|r| r.first().cloned().flatten().as_deref() == Some("streaming")) {
                self.progress.finished(&n.name, "wait until streaming", "streaming");
                return Ok(());
            }
            if start.elapsed() > STREAMING_DEADLINE {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.progress.finished(&n.name, "wait until streaming", "timed out");
        Err(Error::Timeout {
            node: n.name.clone(),
            waited: start.elapsed(),
            waiting_for: format!("streaming from {upstream} (see the standby's server log)"),
        })
    }
}

/// "1.2 GB of 3.4 GB (35%)", or only the bytes when the total is unknown.
fn clone_progress(done: u64, total: Option<u64>) -> String {
    let gb = |b: u64| {
        if b >= 1 << 30 { format!("{:.1} GB", b as f64 / (1u64 << 30) as f64) } else { format!("{:.0} MB", b as f64 / (1u64 << 20) as f64) }
    };
    match total {
        Some(t) if t > 0 => format!("{} of {} ({}%)", gb(done), gb(t), (done.saturating_mul(100) / t).min(100)),
        _ => gb(done),
    }
}

/// Replaces pgrepl's block in a pg_hba.conf (or puts it first), keeping every other line.
pub fn merge_hba_block(current: &str, block: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut rest = String::new();
    for line in current.lines() {
        if line.trim() == HBA_BEGIN || line.starts_with("# pgrepl:begin") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim() == HBA_END {
                inside = false;
            }
            continue;
        }
        rest.push_str(line);
        rest.push('\n');
    }
    out.push_str(block);
    out.push_str(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_progress_reads_well() {
        assert_eq!(clone_progress(300 << 20, Some(600 << 20)), "300 MB of 600 MB (50%)");
        assert_eq!(clone_progress(3 << 30, Some(2 << 30)), "3.0 GB of 2.0 GB (100%)");
        assert_eq!(clone_progress(5 << 20, None), "5 MB");
    }

    #[test]
    fn zombies_and_gone_processes_are_not_running() {
        assert!(process_alive("Ss"));
        assert!(process_alive("S+\n"));
        assert!(!process_alive("Z"));
        assert!(!process_alive("Zs"));
        assert!(!process_alive(""));
    }

    /// What the server-state script prints, read into a state: the pid file and the process
    /// it names decide, the service manager's word counts too (running if either says so).
    #[test]
    fn server_state_from_pid_file_process_and_unit() {
        use ServerState::*;
        let live = "pid=4242\npm_status=ready   \nstate=S (sleeping)\nexe=/usr/lib/postgresql/15/bin/postgres\ncomm=postgres\nargv0=/usr/lib/postgresql/15/bin/postgres\ncwd=data_dir\n";
        // A live postmaster in this data directory, whatever systemd says (started by hand).
        assert_eq!(parse_server_state(live), Running);
        assert_eq!(parse_server_state(&format!("unit=inactive\n{live}")), Running);
        assert_eq!(parse_server_state(&format!("unit=\n{live}")), Running, "systemctl absent or no systemd");
        assert_eq!(parse_server_state(&format!("unit=failed\n{live}")), Running);
        // Started in crash recovery at boot: systemd says activating; or the pid file says starting.
        assert_eq!(parse_server_state(&format!("unit=activating\n{live}")), Starting);
        assert_eq!(parse_server_state(&live.replace("ready   ", "starting")), Starting);
        assert_eq!(parse_server_state(&live.replace("ready   ", "stopping")), Stopping);
        assert_eq!(parse_server_state(&live.replace("ready   ", "standby ")), Running);
        // 9.x pid files have no status line.
        assert_eq!(parse_server_state(&live.replace("pm_status=ready   ", "pm_status=")), Running);
        // The binary replaced by a package upgrade while it runs.
        assert_eq!(parse_server_state(&live.replace("bin/postgres\ncomm", "bin/postgres (deleted)\ncomm")), Running);
        // exe unreadable (another user's process): its name and argv[0] still tell.
        assert_eq!(
            parse_server_state(&live.replace("exe=/usr/lib/postgresql/15/bin/postgres", "exe=").replace("cwd=data_dir", "cwd=unknown")),
            Running
        );
        // Killed and not yet reaped: a zombie runs nothing.
        assert_eq!(parse_server_state(&live.replace("S (sleeping)", "Z (zombie)")), Stopped);
        assert_eq!(parse_server_state(&format!("unit=inactive\n{}", live.replace("S (sleeping)", "Z (zombie)"))), Stopped);
        // A stale pid file whose pid is now another program.
        let other = "pid=4242\npm_status=ready\nstate=S (sleeping)\nexe=/usr/bin/sleep\ncomm=sleep\nargv0=sleep\ncwd=other\n";
        assert_eq!(parse_server_state(other), Stopped);
        // ... or another cluster's postgres (its own data directory).
        assert_eq!(parse_server_state(&live.replace("cwd=data_dir", "cwd=other")), Stopped);
        // The pid is gone.
        assert_eq!(parse_server_state("pid=4242\npm_status=ready\nproc=none\n"), Stopped);
        // No pid file: stopped, unless the service manager says otherwise.
        assert_eq!(parse_server_state("pidfile=none\n"), Stopped);
        assert_eq!(parse_server_state("unit=inactive\npidfile=none\n"), Stopped);
        assert_eq!(parse_server_state("unit=active\npidfile=none\n"), Running);
        assert_eq!(parse_server_state("unit=activating\npidfile=none\n"), Starting);
        assert_eq!(parse_server_state("unit=deactivating\npidfile=none\n"), Stopping);
        // A pid file being written (empty) or unreadable: assume a server.
        assert_eq!(parse_server_state("pid=\npm_status=\n"), Starting);
        assert_eq!(parse_server_state("pidfile=unreadable\n"), Running);
        // A standalone backend writes its pid negated.
        assert_eq!(parse_server_state(&live.replace("pid=4242", "pid=-4242")), Running);
        assert!(Starting.is_running() && Stopping.is_running() && Running.is_running() && !Stopped.is_running());
    }

    #[test]
    fn hba_block_is_replaced_in_place_and_first() {
        let block = format!("{HBA_BEGIN}\nhost replication r 10.0.0.2/32 scram-sha-256\n{HBA_END}\n");
        let original = "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let once = merge_hba_block(original, &block);
        assert!(once.starts_with(HBA_BEGIN));
        assert!(once.ends_with(original));
        let twice = merge_hba_block(&once, &block);
        assert_eq!(once, twice, "merging is idempotent");
        let block2 = format!("{HBA_BEGIN}\nhost replication r 10.0.0.3/32 scram-sha-256\n{HBA_END}\n");
        let changed = merge_hba_block(&once, &block2);
        assert!(changed.contains("10.0.0.3") && !changed.contains("10.0.0.2"));
    }
}
