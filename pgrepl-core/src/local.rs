//! The local provider: every node on this machine, in its own directory under the
//! cluster's work directory, on its own port of a loopback address.
//!
//! ```text
//! <work_dir>/
//!   pgrepl.toml              the spec (written for the built-in default cluster)
//!   secrets/replication      the replication password (0600, owned by the invoking user)
//!   <node>/                  owned by the PostgreSQL OS user, 0700
//!     data/                  PGDATA (postgresql.conf, pgrepl.conf, pg_hba.conf inside)
//!     run/                   the Unix socket
//!     log/postgresql.log     the server log
//!     pgrepl/pgpass          the replication passfile (0600)
//!     pgrepl/clone-in-progress   present only while a standby is being cloned
//! ```
//!
//! Run as root, PostgreSQL runs as an unprivileged OS user (`postgres` by default), as on
//! a real host; commands for it go through `runuser`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{Backend, OpenOptions};
use crate::cluster::{Cluster, Node};
use crate::deploy::Deployment;
use crate::discovery::{DiscoveryOptions, discover};
use crate::error::Error;
use crate::layout::{Binaries, NodeLayout};
use crate::provider::{Connector, Host, NodeHandle, Provider};
use crate::spec::{ClusterSpec, ProviderSpec};
use crate::transport::{Command, Transport, TransportError, TransportExt};

pub use crate::machine::{LocalTransport, current_user, default_work_dir, port_in_use, running_as_root};

/// The local provider: node directories under a work directory.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    work_dir: PathBuf,
    os_user: String,
}

impl LocalProvider {
    /// A provider rooted at `work_dir`, running PostgreSQL as `os_user`.
    pub fn new(work_dir: impl Into<PathBuf>, os_user: impl Into<String>) -> Self {
        LocalProvider { work_dir: work_dir.into(), os_user: os_user.into() }
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.work_dir.join(node)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn ensure_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error> {
        let t = LocalTransport;
        let wd = self.work_dir.to_string_lossy().into_owned();
        let map = |action: &str, e: TransportError| Error::Transport { host: "localhost".into(), action: action.to_string(), source: e };
        t.mkdir(&wd, 0o755, None).await.map_err(|e| map(&format!("create work directory {wd}"), e))?;
        let mut hosts = Vec::new();
        for n in &cluster.nodes {
            let dir = self.node_dir(&n.name).to_string_lossy().into_owned();
            let owner = (self.os_user != current_user()).then_some(self.os_user.as_str());
            t.mkdir(&dir, 0o700, owner).await.map_err(|e| map(&format!("create node directory {dir}"), e))?;
            // The server's user must reach its directory through every parent.
            let reach = Command::new("test").args(["-w", &dir]).user(self.os_user.clone());
            if !t.exec(&reach).await.map_err(|e| map("check directory access", e))?.success() {
                return Err(Error::node(
                    &n.name,
                    format!(
                        "OS user \"{}\" cannot reach {dir}: a parent directory of the work directory is not searchable by it (choose a work directory under a path it can traverse, e.g. /var/lib/pgrepl or /tmp)",
                        self.os_user
                    ),
                ));
            }
            hosts.push(self.host_of(n));
        }
        Ok(hosts)
    }

    async fn list_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error> {
        Ok(cluster.nodes.iter().filter(|n| self.node_dir(&n.name).is_dir()).map(|n| self.host_of(n)).collect())
    }

    async fn destroy_hosts(&self, cluster: &Cluster) -> Result<(), Error> {
        for n in &cluster.nodes {
            let dir = self.node_dir(&n.name);
            if dir.is_dir() {
                LocalTransport.remove_tree(&dir.to_string_lossy()).await.map_err(|e| Error::Transport {
                    host: "localhost".into(),
                    action: format!("remove {}", dir.display()),
                    source: e,
                })?;
            }
        }
        Ok(())
    }
}

impl LocalProvider {
    fn host_of(&self, n: &Node) -> Host {
        Host {
            node: n.name.clone(),
            address: n.address.clone(),
            admin_address: None,
            id: Some(self.node_dir(&n.name).to_string_lossy().into_owned()),
            state: "present".into(),
        }
    }
}

/// Connects nodes of the local provider: a [`LocalTransport`] and [`NodeLayout::local`].
#[derive(Debug, Clone)]
pub struct LocalConnector {
    work_dir: PathBuf,
    os_user: String,
    binaries: Binaries,
}

#[async_trait]
impl Connector for LocalConnector {
    async fn connect(&self, _cluster: &Cluster, node: &Node, _host: &Host) -> Result<NodeHandle, Error> {
        Ok(NodeHandle {
            name: node.name.clone(),
            transport: Arc::new(LocalTransport),
            layout: NodeLayout::local(&self.work_dir.to_string_lossy(), &node.name, &self.binaries, &self.os_user),
            install_script: None,
        })
    }
}

/// Options for a local deployment beyond the spec (the older form of [`OpenOptions`]).
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Binaries: explicit directories or a major.
    pub discovery: DiscoveryOptions,
    /// Overrides the spec's work directory.
    pub work_dir: Option<PathBuf>,
}

/// The OS user PostgreSQL runs as by default: `postgres` as root, else the current user.
pub fn default_os_user() -> String {
    if running_as_root() { "postgres".into() } else { current_user().to_string() }
}

/// The local provider's [`Backend`]: every node on this machine. Reads
/// [`OpenOptions`]' `major`, `pg_bin`, `pg_client_bin` (over the spec's), `work_dir`
/// (over the spec's `provider.work_dir`) and `state_dir` (default `<work dir>/secrets`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalBackend;

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// Validates `spec`, finds binaries (the options', else the spec's `pg_bin` and
    /// `postgres`, else the newest installed), and returns the deployment. Nothing is
    /// created until [`Deployment::up`].
    async fn open(&self, spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error> {
        let local = match &spec.provider {
            ProviderSpec::Local(l) => l.clone(),
            other => {
                return Err(Error::Spec(crate::SpecErrors::one(crate::SpecError::new(
                    "provider.kind",
                    format!("\"{}\" given to the local deployment", other.kind()),
                    "\"local\"",
                ))));
            }
        };
        // Structure first, so a broken spec is reported before binaries are looked for.
        let unversioned = spec.validate()?;
        let mut d = opts.discovery();
        d.pg_bin = d.pg_bin.or_else(|| spec.pg_bin.clone());
        d.pg_client_bin = d.pg_client_bin.or_else(|| spec.pg_client_bin.clone());
        d.major = d.major.or(unversioned.major);
        let binaries = discover(&d)?;
        let cluster = spec.validate_for(binaries.major)?;
        let work_dir = opts.work_dir.clone().or(local.work_dir.clone()).unwrap_or_else(|| default_work_dir(&spec.name));
        let os_user = local.os_user.clone().unwrap_or_else(default_os_user);
        if os_user == "root" || (running_as_root() && os_user == current_user()) {
            return Err(Error::Spec(crate::SpecErrors::one(crate::SpecError::new(
                "provider.os_user",
                "PostgreSQL refuses to run as root",
                "an unprivileged OS user such as \"postgres\"",
            ))));
        }
        let provider = Arc::new(LocalProvider::new(&work_dir, &os_user));
        let connector = Arc::new(LocalConnector { work_dir: work_dir.clone(), os_user, binaries: binaries.clone() });
        let state_dir = opts.state_dir.clone().unwrap_or_else(|| work_dir.join("secrets"));
        Ok(Deployment::new(cluster, provider, connector, state_dir).with_binaries(binaries).with_local_ports())
    }
}

impl From<&LocalOptions> for OpenOptions {
    fn from(o: &LocalOptions) -> Self {
        OpenOptions {
            major: o.discovery.major,
            pg_bin: o.discovery.pg_bin.clone(),
            pg_client_bin: o.discovery.pg_client_bin.clone(),
            work_dir: o.work_dir.clone(),
            state_dir: None,
        }
    }
}

/// Builds a [`Deployment`] on the local provider (the older entry point; see
/// [`Deployment::open`] with [`LocalBackend`]).
#[derive(Debug)]
pub struct LocalDeployment;

impl LocalDeployment {
    /// [`LocalBackend`]'s open with these options: kept for existing callers; new code
    /// calls [`Deployment::open`] with the backends it has.
    pub async fn open(spec: &ClusterSpec, opts: &LocalOptions) -> Result<Deployment, Error> {
        LocalBackend.open(spec, &opts.into()).await
    }
}
