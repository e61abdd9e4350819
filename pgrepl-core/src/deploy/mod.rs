//! The executor: applies the rendered plan to a cluster's hosts, step by step.
//!
//! Every step observes first and acts only if needed, so `up` on a healthy cluster
//! changes nothing, and `up` after a failure midway resumes and converges. Destructive
//! steps are guarded at run time: a data directory is only ever removed when it holds a
//! standby clone that pgrepl itself started and did not finish (its marker is present)
//! and no server runs on it; a primary's data directory is never touched.
//!
//! The pieces: [`Deployment`] here (its builders and accessors, the topology record,
//! connecting to the nodes, rendering); `secrets` (the replication password); `run` (the
//! per-node steps of `up` and of the HA executor, with `primary` and `standby` for each
//! role's); `destroy` (`down`, `destroy`); `created` (the record of what pgrepl created on
//! a host); `conf_edits` (pgrepl's edits to files it shares with the distribution);
//! `report` (progress and what `up` did).

pub mod clone_size;
mod conf_edits;
mod created;
mod destroy;
mod primary;
mod report;
mod run;
mod secrets;
mod standby;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::cluster::{Cluster, Node};
use crate::error::Error;
use crate::layout::Binaries;
use crate::provider::{Connector, Host, NodeHandle, Provider};
use crate::render::{RenderedNode, render_node};
use crate::sql::QueryError;
use crate::transport::{Transport, TransportError, TransportExt};

use crate::observe::ObservedCluster;
use crate::observe::probe::observe_cluster;
pub use crate::observe::server_state::{SERVER_STATE_SCRIPT, ServerState, is_running, parse_server_state, server_state};
pub use crate::topology::Topology;
pub use conf_edits::merge_hba_block;
pub(crate) use created::read_created;
pub use created::{CREATED_DIR, Created};
pub use report::{Action, NoProgress, Progress, UpReport};
pub(crate) use run::{DataDir, Run};

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

/// A cluster bound to where its nodes live: the entry point for `up`, `status`,
/// `verify`, `down` and `destroy`.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub(crate) cluster: Cluster,
    provider: Arc<dyn Provider>,
    pub(crate) connector: Arc<dyn Connector>,
    state_dir: PathBuf,
    binaries: Option<Binaries>,
    pub(crate) local_ports: bool,
    pub(crate) lock_options: crate::oplock_options::LockOptions,
    records: Option<Arc<dyn TopologyRecords>>,
    pub(crate) shared_lock: Option<Arc<dyn crate::oplock_holder::SharedLock>>,
    /// The agents' store (`[ha]`): operations pause the agents in it and move the leader
    /// key with the primary role ([`crate::store::operator`]).
    pub(crate) consensus: Option<Arc<dyn crate::store::ConsensusStore>>,
}

/// Where the topology is recorded: a file in the state directory by default; keys in the
/// consensus store when agents run the cluster ([`crate::agent::StoreRecords`]).
#[async_trait::async_trait]
pub trait TopologyRecords: Send + Sync + std::fmt::Debug {
    /// The topology as recorded (the default when nothing is).
    async fn load(&self) -> Result<Topology, Error>;
    /// Records it.
    async fn save(&self, t: &Topology) -> Result<(), Error>;
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
            records: None,
            shared_lock: None,
            consensus: None,
        }
    }

    /// Records the topology through `records` instead of the state directory's file.
    pub fn with_records(mut self, records: Arc<dyn TopologyRecords>) -> Self {
        self.records = Some(records);
        self
    }

    /// The agents' store, when bound ([`Deployment::with_consensus_store`]).
    pub fn consensus_store(&self) -> Option<&Arc<dyn crate::store::ConsensusStore>> {
        self.consensus.as_ref()
    }

    /// Holds the agents paused for an operation (its lock held): `None` without a store.
    pub(crate) async fn hold_agents(&self) -> Result<Option<crate::store::operator::AgentHold>, Error> {
        let (Some(store), Some(ha)) = (&self.consensus, &self.cluster.ha) else { return Ok(None) };
        let keys = crate::store::Keys::new(&self.cluster.name);
        Ok(Some(crate::store::operator::AgentHold::pause(store.clone(), keys, ha.settings.clone()).await?))
    }

    /// Runs `f` (an operation, its lock held) with the agents held paused, the flag put
    /// back as it was afterwards; a failure says what became of them.
    pub(crate) async fn with_agents_held<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match self.hold_agents().await? {
            Some(h) => h.release_after(f.await).await,
            None => f.await,
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
        if let Some(r) = &self.records {
            return r.load().await;
        }
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
        if let Some(r) = &self.records {
            return r.save(t).await;
        }
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

    /// The deployment with the addresses of the hosts that exist now filled in where the
    /// spec names none (EC2: the instances' private addresses; witnesses too), without
    /// reading the recorded topology: what renders etcd's member list and endpoints.
    pub async fn with_host_addresses(mut self, create: bool) -> Result<Deployment, Error> {
        let hosts = if create { self.provider.ensure_hosts(&self.cluster).await? } else { self.provider.list_hosts(&self.cluster).await? };
        let address = |name: &str| hosts.iter().find(|h| h.node == name).and_then(|h| h.address.clone());
        for n in &mut self.cluster.nodes {
            if n.address.is_none() {
                n.address = address(&n.name);
            }
        }
        for w in &mut self.cluster.witnesses {
            if w.address.is_none() {
                w.address = address(&w.name);
            }
        }
        Ok(self)
    }

    /// A transport to every host of the cluster, data nodes then witnesses, without
    /// reading the recorded topology (what runs before the store does: the etcd members
    /// pgrepl deploys). Each is connected on its own: one that cannot be reached is
    /// returned as a failure.
    pub async fn host_transports(&self) -> Result<Vec<(String, Result<Arc<dyn Transport>, Error>)>, Error> {
        let mut cluster = self.cluster.clone();
        let hosts = self.provider.list_hosts(&cluster).await?;
        for n in &mut cluster.nodes {
            if n.address.is_none() {
                n.address = hosts.iter().find(|h| h.node == n.name).and_then(|h| h.address.clone());
            }
        }
        let cref = &cluster;
        let nodes = join_all(cluster.nodes.iter().map(|n| {
            let host = hosts.iter().find(|h| h.node == n.name);
            async move {
                let r = match host {
                    Some(h) => self.connector.connect(cref, n, h).await.map(|h| h.transport),
                    None => Err(Error::node(&n.name, "the provider lists no host for it")),
                };
                (n.name.clone(), r)
            }
        }))
        .await;
        // Witnesses: at the address the provider lists (EC2), else the spec's.
        let witnesses = join_all(cluster.witnesses.iter().map(|w| {
            let listed = hosts.iter().find(|h| h.node == w.name).and_then(|h| h.admin_address.clone().or_else(|| h.address.clone()));
            async move {
                let r = match listed.or_else(|| w.ssh_host.clone()).or_else(|| w.address.clone()) {
                    Some(a) => self.connector.connect_bare(&w.name, &a).await,
                    None => Err(Error::node(&w.name, "the witness's host has no address yet")),
                };
                (w.name.clone(), r)
            }
        }))
        .await;
        let mut all = nodes;
        all.extend(witnesses);
        Ok(all)
    }

    /// Renders every node with its real layout (dry run: without secrets).
    pub async fn render(&self) -> Result<Vec<RenderedNode>, Error> {
        let (cluster, handles) = self.connect(false).await?;
        handles.iter().map(|h| render_node(&cluster, &h.name, &h.layout, None).map_err(Error::from)).collect()
    }
}

/// An [`Error::Transport`] on `node` while doing `action`.
pub(crate) fn tr(node: &str, action: &str, e: TransportError) -> Error {
    Error::Transport { host: node.to_string(), action: action.to_string(), source: e }
}

/// An [`Error::Sql`] on `node` while doing `action` (an [`Error::Transport`] when the
/// query did not reach the server).
pub(crate) fn sqlerr(node: &str, action: &str, e: QueryError) -> Error {
    match e {
        QueryError::Transport(t) => tr(node, action, t),
        QueryError::Sql(s) => Error::Sql { node: node.to_string(), action: action.to_string(), source: s },
    }
}
