//! The record on a host of what pgrepl created there ([`Created`]), which `destroy`
//! reads to remove that and nothing else.

use serde::Serialize;

use super::tr;
use crate::error::Error;
use crate::provider::NodeHandle;
use crate::transport::TransportExt;

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

pub(super) fn created_path(cluster: &str, node: &str) -> (String, String) {
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

pub(super) async fn write_created(h: &NodeHandle, cluster: &str, c: &Created) -> Result<(), Error> {
    let (path, dir) = created_path(cluster, &h.name);
    let t = &*h.transport;
    let map = |e| tr(&h.name, &format!("record what pgrepl created in {path}"), e);
    t.mkdir(&dir, 0o700, Some("root")).await.map_err(map)?;
    let body = serde_json::to_vec_pretty(c).expect("a record serializes");
    t.write_file(&path, &body, 0o600, Some("root")).await.map_err(map)
}
