//! Where a cluster's hosts come from.
//!
//! A [`Provider`] creates, lists and destroys the hosts of a cluster; it does not run
//! anything on them. A [`Connector`] turns a host into a [`NodeHandle`]: a transport to
//! act through and the node's layout on that host. The two are paired by the caller, so
//! the EC2 provider does not depend on SSH and either can be swapped.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::cluster::{Cluster, Node};
use crate::error::Error;
pub use crate::node_handle::NodeHandle;

/// A host that carries one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The node it carries.
    pub node: String,
    /// The address PostgreSQL listens and replicates on.
    pub address: Option<String>,
    /// The address pgrepl reaches the host at (SSH), when it differs.
    pub admin_address: Option<String>,
    /// The provider's id for it (an EC2 instance id), if any.
    pub id: Option<String>,
    /// The provider's word for its state (`running`, `present`, ...).
    pub state: String,
}

/// Creates, lists and destroys a cluster's hosts.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// `local`, `ssh`, `aws`.
    fn kind(&self) -> &'static str;

    /// Makes sure every node has a host, creating what is missing; idempotent.
    async fn ensure_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error>;

    /// The hosts that exist now (none created).
    async fn list_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error>;

    /// Removes what this provider created for the cluster, and nothing else.
    async fn destroy_hosts(&self, cluster: &Cluster) -> Result<(), Error>;
}

/// Turns a host into a [`NodeHandle`] (opens the transport, detects the layout).
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// Connects to the host of `node`.
    async fn connect(&self, cluster: &Cluster, node: &Node, host: &Host) -> Result<NodeHandle, Error>;

    /// A transport to a host that runs no PostgreSQL (a witness holding an etcd member),
    /// named `name` in messages, at `address`. The default: this connector has none.
    async fn connect_bare(&self, name: &str, address: &str) -> Result<Arc<dyn crate::transport::Transport>, Error> {
        let _ = address;
        Err(Error::node(name, "this provider reaches no host without PostgreSQL (witnesses need SSH or EC2)"))
    }
}
