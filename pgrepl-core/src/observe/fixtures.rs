//! Observed nodes for the tests of the planners and of the agent's decision.

use super::{Observed, ServerState};
use crate::cluster::Cluster;
use crate::lsn::Lsn;

/// A validated 3-node cluster "t" of PostgreSQL 16: db1 primary, db2 and db3 its
/// standbys; `extra` is more TOML at the top level (after `postgres`).
pub(crate) fn three_nodes(extra: &str) -> Cluster {
    crate::ClusterSpec::from_toml(&format!(
        "name = \"t\"\npostgres = \"16\"\n{extra}\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap()
}

/// A primary on timeline 1 at `lsn`.
pub(crate) fn primary(name: &str, lsn: u64) -> Observed {
    let mut o = Observed::unknown(name);
    o.host_reachable = true;
    o.server = ServerState::Running;
    o.in_recovery = Some(false);
    o.timeline = Some(1);
    o.lsn = Some(Lsn(lsn));
    o
}

/// A standby on timeline 1 that received and replayed up to `lsn`, streaming.
pub(crate) fn standby(name: &str, lsn: u64) -> Observed {
    let mut o = primary(name, lsn);
    o.in_recovery = Some(true);
    o.receive_lsn = Some(Lsn(lsn));
    o.receiver = Some("streaming".into());
    o
}
