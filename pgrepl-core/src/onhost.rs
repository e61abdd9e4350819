//! An agent on its own host (SSH and EC2 clusters): the cluster file `pgrepl up` wrote
//! there, its own node reached through the [`LocalTransport`] with the layout detected
//! on the host (the same as over SSH), and every other node out of reach: an agent acts
//! on its own node only, and learns of the others through the store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::cluster::{Cluster, Node};
use crate::deploy::Deployment;
use crate::error::Error;
use crate::hosts::{ExistingHosts, HostFacts, detect, remote_layout};
use crate::machine::LocalTransport;
use crate::provider::{Connector, Host, NodeHandle};
use crate::spec::{ClusterSpec, ProviderSpec, SshProviderSpec};
use crate::version::PgMajor;
use crate::{SpecError, SpecErrors};

/// Connects node `me` on this machine; every other node is refused.
#[derive(Debug)]
pub struct OnHostConnector {
    me: String,
    cluster: String,
    settings: SshProviderSpec,
    pg_bin: Option<String>,
    major: PgMajor,
    facts: Mutex<Option<HostFacts>>,
}

#[async_trait]
impl Connector for OnHostConnector {
    async fn connect(&self, _cluster: &Cluster, node: &Node, _host: &Host) -> Result<NodeHandle, Error> {
        if node.name != self.me {
            return Err(Error::node(&node.name, format!("not this host: the agent of {} acts on its own node only", self.me)));
        }
        let cached = self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let facts = match cached {
            Some(f) => f,
            None => {
                let f = detect(&LocalTransport).await.map_err(|source| Error::Transport {
                    host: self.me.clone(),
                    action: "detect this host's OS and PostgreSQL".into(),
                    source,
                })?;
                *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone());
                f
            }
        };
        let layout = remote_layout(&self.settings, self.pg_bin.as_deref(), &self.cluster, self.major, &facts)
            .map_err(|p| Error::node(&node.name, p))?;
        Ok(NodeHandle { name: node.name.clone(), transport: Arc::new(LocalTransport), layout, install_script: None })
    }
}

/// The deployment an agent on `me`'s host works with: `spec` is the cluster file `pgrepl
/// up` wrote on the host (provider `ssh`, the major named), `state_dir` the agent's state
/// directory there (the replication password).
pub fn open_on_host(spec: &ClusterSpec, me: &str, state_dir: impl Into<PathBuf>) -> Result<Deployment, Error> {
    let settings = match &spec.provider {
        ProviderSpec::Ssh(s) => s.clone(),
        other => {
            return Err(Error::Spec(SpecErrors::one(SpecError::new(
                "provider.kind",
                format!("\"{}\" in the cluster file of an agent on its host", other.kind()),
                "\"ssh\" (the file `pgrepl up` writes on each host)",
            ))));
        }
    };
    let major = spec.validate()?.major.ok_or_else(|| {
        Error::Spec(SpecErrors::one(SpecError::new("postgres", "not set", "the major, as `pgrepl up` writes it on each host")))
    })?;
    let cluster = spec.validate_for(major)?;
    if cluster.node(me).is_none() && !cluster.witnesses.iter().any(|w| w.name == me) {
        return Err(Error::node(me, format!("not a node or witness of cluster {}", cluster.name)));
    }
    let connector = OnHostConnector {
        me: me.to_string(),
        cluster: cluster.name.clone(),
        settings,
        pg_bin: spec.pg_bin.as_ref().map(|p| p.to_string_lossy().into_owned()),
        major,
        facts: Mutex::new(None),
    };
    Ok(Deployment::new(cluster, Arc::new(ExistingHosts), Arc::new(connector), state_dir))
}
