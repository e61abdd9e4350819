//! Deploying onto hosts reached over SSH: [`SshConnector`] turns a host into a node
//! handle (a shared [`SshTransport`] plus the layout detected on the host), and
//! [`SshBackend`] opens a [`Deployment`] of a spec whose provider is `ssh` (through
//! [`Deployment::open`]; [`open`] is the older entry point).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::join_all;
use pgrepl_core::cluster::{Cluster, Node};
use pgrepl_core::deploy::Deployment;
use pgrepl_core::hosts::{ExistingHosts, HostFacts, choose_major, detect};
use pgrepl_core::open::{Backend, OpenOptions};
use pgrepl_core::provider::{Connector, Host, NodeHandle, Provider};
use pgrepl_core::spec::{ClusterSpec, ProviderSpec, SshProviderSpec, VersionChoice};
use pgrepl_core::transport::Transport;
use pgrepl_core::{Error, PgMajor, SpecError, SpecErrors};

use crate::{HostKeyPolicy, SshAuth, SshConfig, SshTransport};

/// Connects nodes over SSH with the provider's settings.
#[derive(Debug)]
pub struct SshConnector {
    cluster: String,
    settings: SshProviderSpec,
    major: PgMajor,
    transports: Mutex<HashMap<String, Arc<SshTransport>>>,
    facts: Mutex<HashMap<String, HostFacts>>,
    /// Hosts that could not be reached or detected in this process: not tried again.
    failed: Mutex<HashMap<String, String>>,
    /// The spec's `pg_bin` (the plain layout's binaries on the hosts).
    pg_bin: Option<String>,
}

impl SshConnector {
    /// A connector for `cluster`'s nodes running PostgreSQL `major`.
    pub fn new(cluster: &str, settings: SshProviderSpec, major: PgMajor) -> Self {
        SshConnector {
            cluster: cluster.to_string(),
            settings,
            major,
            transports: Mutex::new(HashMap::new()),
            facts: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            pg_bin: None,
        }
    }

    /// The SSH settings of a host (`field` names the spec field for errors).
    pub fn config_for(settings: &SshProviderSpec, host: &str) -> Result<SshConfig, Error> {
        let spec_err =
            |field: &str, problem: String, expected: &str| Error::Spec(SpecErrors::one(SpecError::new(field, problem, expected)));
        let auth = match &settings.key_file {
            Some(k) => SshAuth::KeyFile(k.clone()),
            None => SshAuth::Agent,
        };
        let policy = match settings.host_key_policy.as_deref() {
            None | Some("strict") => HostKeyPolicy::Strict,
            Some("accept-new") => HostKeyPolicy::AcceptNew,
            Some(other) => return Err(spec_err("provider.host_key_policy", format!("\"{other}\""), "\"strict\" or \"accept-new\"")),
        };
        let mut b = SshConfig::builder(host)
            .with_user(settings.user.clone().unwrap_or_else(|| "root".into()))
            .with_auth(auth)
            .with_port(settings.port.unwrap_or(22))
            .with_host_key_policy(policy);
        if let Some(k) = &settings.known_hosts {
            b = b.with_known_hosts(k.clone());
        }
        if let Some(t) = settings.connect_timeout_secs {
            b = b.with_connect_timeout(std::time::Duration::from_secs(t));
        }
        b.build().map_err(|e| spec_err("provider", e.to_string(), "complete SSH settings"))
    }

    fn transport(&self, node: &str, address: &str) -> Result<Arc<SshTransport>, Error> {
        let mut map = self.transports.lock().expect("transport map");
        if let Some(t) = map.get(node) {
            return Ok(t.clone());
        }
        let t = Arc::new(SshTransport::new(Self::config_for(&self.settings, address)?));
        map.insert(node.to_string(), t.clone());
        Ok(t)
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn connect(&self, _cluster: &Cluster, node: &Node, host: &Host) -> Result<NodeHandle, Error> {
        let address = host
            .admin_address
            .clone()
            .or_else(|| host.address.clone())
            .ok_or_else(|| Error::node(&node.name, "the host has no address to reach it at"))?;
        if let Some(why) = self.failed.lock().expect("failed map").get(&node.name) {
            return Err(Error::node(&node.name, format!("unreachable at {address}: {why}")));
        }
        let t = self.transport(&node.name, &address)?;
        let cached = self.facts.lock().expect("facts map").get(&node.name).cloned();
        let facts = match cached {
            Some(f) => f,
            None => {
                let f = match detect(&*t).await {
                    Ok(f) => f,
                    Err(e) => {
                        self.failed.lock().expect("failed map").insert(node.name.clone(), e.to_string());
                        return Err(Error::Transport {
                            host: format!("{} ({address})", node.name),
                            action: "detect the host's OS and PostgreSQL".into(),
                            source: e,
                        });
                    }
                };
                self.facts.lock().expect("facts map").insert(node.name.clone(), f.clone());
                f
            }
        };
        let layout = pgrepl_core::hosts::remote_layout(&self.settings, self.pg_bin.as_deref(), &self.cluster, self.major, &facts)
            .map_err(|p| Error::node(&node.name, p))?;
        Ok(NodeHandle { name: node.name.clone(), transport: t, layout, install_script: facts.install_script(self.major) })
    }

    async fn connect_bare(&self, name: &str, address: &str) -> Result<Arc<dyn Transport>, Error> {
        Ok(self.transport(name, address)?)
    }
}

/// Options beyond the spec (the older form of [`OpenOptions`]).
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Where pgrepl keeps the cluster's secrets and topology on this machine; default
    /// the local provider's work directory for the cluster name, `/secrets`.
    pub state_dir: Option<PathBuf>,
    /// The major to deploy (overrides detection).
    pub major: Option<PgMajor>,
}

impl From<&SshOptions> for OpenOptions {
    fn from(o: &SshOptions) -> Self {
        OpenOptions { major: o.major, state_dir: o.state_dir.clone(), ..OpenOptions::default() }
    }
}

/// Opens a deployment of `spec` (provider `ssh`) with [`SshBackend`]: kept for existing
/// callers; new code calls [`Deployment::open`] with the backends it has.
pub async fn open(spec: &ClusterSpec, opts: &SshOptions) -> Result<Deployment, Error> {
    SshBackend.open(spec, &opts.into()).await
}

/// The [`Backend`] of existing hosts reached over SSH (provider kind `ssh`). Reads
/// [`OpenOptions`]' `major` (over the spec's `postgres`) and `state_dir` (default
/// `<work_dir>/secrets`, see [`OpenOptions::remote_state_dir`]); local binaries do not
/// apply to remote hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct SshBackend;

#[async_trait]
impl Backend for SshBackend {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    /// Validates the spec, connects to every host, detects what runs there and chooses
    /// one major for all of them (the options', the spec's, or the newest installed
    /// everywhere; mixing majors is refused). Nothing is changed on the hosts until
    /// [`Deployment::up`].
    async fn open(&self, spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error> {
        open_ssh(spec, opts).await
    }
}

async fn open_ssh(spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error> {
    let settings = match &spec.provider {
        ProviderSpec::Ssh(s) => s.clone(),
        other => {
            return Err(Error::Spec(SpecErrors::one(SpecError::new(
                "provider.kind",
                format!("\"{}\" given to the SSH deployment", other.kind()),
                "\"ssh\"",
            ))));
        }
    };
    let unversioned = spec.validate()?;
    let requested = opts.major.or(match spec.postgres {
        VersionChoice::Major(m) => Some(m),
        VersionChoice::Detect => None,
    });
    let hosts = ExistingHosts.list_hosts(&unversioned).await?;
    // Detect every host (in parallel) to choose the major.
    let probe = SshConnector::new(&spec.name, settings.clone(), requested.unwrap_or(PgMajor::NEWEST));
    let mut facts = Vec::new();
    let handles = join_all(unversioned.nodes.iter().map(|n| {
        let h = hosts.iter().find(|h| h.node == n.name).expect("one host per node").clone();
        let probe = &probe;
        let cluster = &unversioned;
        async move { (n.name.clone(), probe.connect(cluster, n, &h).await) }
    }))
    .await;
    for (name, h) in handles {
        match h {
            Ok(_) => {
                let f = probe.facts.lock().expect("facts map").get(&name).cloned().expect("detected");
                facts.push((name, f));
            }
            // With the major known, an unreachable host does not stop the opening: status
            // reports it, and up fails on it with the same error.
            Err(_) if requested.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    let major = choose_major(requested, &facts).map_err(|e| match (settings.layout.as_deref(), e) {
        (Some("plain"), Error::Discovery(m)) => Error::Discovery(format!("{m}; with layout = \"plain\" set `postgres` in the spec")),
        (_, e) => e,
    })?;
    let cluster = spec.validate_for(major)?;
    let connector = SshConnector {
        cluster: spec.name.clone(),
        settings,
        major,
        transports: Mutex::new(probe.transports.lock().expect("transport map").clone()),
        facts: Mutex::new(probe.facts.lock().expect("facts map").clone()),
        failed: Mutex::new(probe.failed.lock().expect("failed map").clone()),
        pg_bin: spec.pg_bin.as_ref().map(|p| p.to_string_lossy().into_owned()),
    };
    Ok(Deployment::new(cluster, Arc::new(ExistingHosts), Arc::new(connector), opts.remote_state_dir(spec)))
}
