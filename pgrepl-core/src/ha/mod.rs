//! Switchover, failover and rejoin: moving the primary role without losing an
//! acknowledged write, on every supported major.
//!
//! - [`Deployment::switchover`] (planned): the primary is stopped cleanly, so its
//!   shutdown checkpoint (the last record of its WAL, read from `global/pg_control`) reaches
//!   the standbys; the candidate is promoted only once it has replayed that record, so the
//!   new timeline forks exactly at the old primary's end of WAL: nothing is lost and the
//!   old primary follows the new one as a standby without a rewind or a clone.
//! - [`Deployment::failover`] (the primary is gone): the standby with the most WAL is
//!   promoted after the old primary is fenced (stopped when its host answers, demoted on
//!   disk, and recorded so that nothing starts it as a primary again). The report says how
//!   much WAL the old primary had that the new timeline lacks, and where that figure came
//!   from (the old primary's own WAL read from its data directory when reachable).
//! - [`Deployment::rejoin`] brings a former primary or a diverged standby back as a
//!   standby: as it is when its WAL is a prefix of the primary's history (timelines and
//!   content both checked: its last record must be the same bytes in the primary's WAL),
//!   with `pg_rewind` when it diverged onto a timeline of its own, with a fresh clone when
//!   rewind is impossible (no pg_rewind, a divergence on a shared timeline that pg_rewind
//!   cannot see, or a failed rewind). It is never started writable.
//!
//! Observe, decide, act: each operation takes one observation of every node
//! ([`crate::observe`]), asks its planner in [`crate::plan`] (pure: [`crate::plan::failover()`],
//! [`crate::plan::switchover()`], [`crate::plan::rejoin()`]) for a plan or a typed refusal,
//! and carries the plan out, re-checking the guards of the promotion on a fresh look right
//! before it. The modules here only act: `switchover`, `failover`, `rejoin` (the three
//! executors), `converge` (fencing, and pointing the others at a new primary), `server`
//! (one server: pg_control, WAL, stop, promote, waits), `report` (what they return), and
//! `decisions` (pure accounting after the fact: [`account_loss`], [`divergence`],
//! [`mark_nodes`]).
//!
//! Safety rules, enforced by the planners and checked again before every promotion:
//! pgrepl never promotes while another node accepts writes, unless `--force`, and then it
//! stops those nodes first (and refuses to promote if one keeps running). A primary that
//! looks alive (a standby still streams from it, its port answers) but cannot be reached
//! cannot be fenced, so it blocks the promotion even with `--force`: pgrepl never makes a
//! second writable primary it knows of. An unreachable primary without signs of life or
//! death needs `--force`; it is then recorded as fenced, and demoted on disk as soon as
//! pgrepl can reach it (`rejoin`). In synchronous mode only a member of the set the
//! primary ran with is promoted, and only when the reachable members cover every
//! acknowledged commit (unless forced). Operations on one cluster are serialised by the
//! operation lock ([`crate::oplock`]).

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

pub use crate::cluster::exclude_from_sync;
use crate::cluster::{Cluster, Node, Sync};
use crate::deploy::{Action, DataDir, Deployment, Progress, Run, Topology, is_running, sqlerr, tr};
use crate::error::{Error, Refusal};
use crate::observe::ObservedCluster;
use crate::pgcontrol::{self, ControlFile, HistoryEntry, Lsn, WalEnd, WalScanner};
use crate::plan;
use crate::provider::NodeHandle;
use crate::render::{self, Promote, RenderedNode, conninfo_quote, render_node, sql_ident, sql_literal};
use crate::secret::Secrets;
use crate::spec::{Role, SyncMode};
use crate::sql;
use crate::status::{NodeState, StatusReport};
use crate::transport::{Command, TransportExt};
use crate::version::{Capabilities, ChangeContext};

pub use crate::plan::failover::{Candidate as CandidateView, FencePlan, PeerState, choose_candidate, plan_fencing, sync_guarantee};
pub use crate::plan::switchover::SWITCHOVER_MAX_LAG_BYTES;

/// How often the waits of the write-unavailable window poll (catch-up, promotion).
pub const FAST_POLL: Duration = Duration::from_millis(10);
pub use crate::observe::probe::PROBE_TIMEOUT;
/// Time limit of the clean stop of the old primary in a switchover.
pub const SWITCHOVER_STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of a fencing stop (fast mode); past it, immediate mode.
pub const FENCE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the candidate may take to replay the old primary's shutdown checkpoint.
pub const CATCHUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a promotion may take (it replays what the standby received first).
pub const PROMOTE_DEADLINE: Duration = Duration::from_secs(90);
/// How long the new primary may wait for its synchronous standbys to connect.
pub const SYNC_READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node being brought back as a standby may take to reach a consistent state
/// (to shut it down cleanly before pg_rewind).
pub const CLEAN_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(120);
/// Time limit of pg_rewind.
pub const REWIND_TIMEOUT: Duration = Duration::from_secs(3600);
/// Time limit of a start or stop of a server.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(330);
/// Attempts at reading pg_control (a read may catch it mid-write).
pub const CONTROL_READ_ATTEMPTS: usize = 5;
/// Most WAL segments read to find the end of a node's WAL.
pub const MAX_WAL_SCAN_SEGMENTS: usize = 256;
/// The WAL segment size assumed before the first segment says otherwise.
const DEFAULT_SEG_SIZE: u64 = 16 * 1024 * 1024;

mod agent_exec;
mod decisions;
mod execute;
mod failover;
mod rejoin;
mod report;
mod restart;
mod server;
mod steps;
mod switchover;
#[cfg(test)]
mod tests;
mod up;

pub use crate::plan::{StepOutcome, StepRecord};
pub use decisions::{account_loss, divergence, mark_nodes};
use execute::Exec;
pub use report::*;
pub use restart::parse_version_major;
use server::*;

// =======================================================================================
// The executor

/// Everything an operation works with.
pub(super) struct Op<'a> {
    pub(super) d: &'a Deployment,
    pub(super) cluster: Cluster,
    pub(super) handles: Vec<NodeHandle>,
    pub(super) unreachable: Vec<(String, String)>,
    pub(super) caps: Capabilities,
    pub(super) secrets: Secrets,
    pub(super) progress: &'a dyn Progress,
    pub(super) topology: Topology,
    /// The operation lock held for this operation: checked again before a promotion.
    pub(super) lock: Option<&'a crate::oplock::OperationLock>,
}

impl<'a> Op<'a> {
    pub(super) async fn open(d: &'a Deployment, progress: &'a dyn Progress) -> Result<Op<'a>, Error> {
        let topology = d.topology().await?;
        // A host that cannot be reached must not stop a failover: each is connected on its own.
        let (cluster, handles, failed) = d.connect_partial().await?;
        let unreachable: Vec<(String, String)> = failed.into_iter().map(|(n, e)| (n, e.to_string())).collect();
        let caps =
            cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
        let secrets = d.secrets(false).await?;
        Ok(Op { d, cluster, handles, unreachable, caps, secrets, progress, topology, lock: None })
    }

    pub(super) fn run<'b>(&'b self, cluster: &'b Cluster) -> Run<'b> {
        Run { cluster, handles: &self.handles, secrets: &self.secrets, progress: self.progress, local_ports: self.d.local_ports }
    }

    pub(super) fn handle(&self, name: &str) -> Option<&NodeHandle> {
        self.handles.iter().find(|h| h.name == name)
    }

    pub(super) fn major(&self) -> String {
        self.caps.major.to_string()
    }

    pub(super) async fn observe(&self) -> ObservedCluster {
        self.progress.started("cluster", "observe every node");
        let obs = crate::observe::probe::observe_cluster(&self.cluster, &self.handles, &self.unreachable, &self.caps, &self.topology).await;
        self.progress.finished("cluster", "observe every node", "done");
        obs
    }

    /// A fresh observation of the reachable nodes the guards read (no search for signs of
    /// life of the others), but not of `skip`: nodes whose state this operation settles
    /// itself (see [`Op::check_guards`]). Taken while the step before the guarded one runs
    /// (fencing, the old primary's clean stop), so the write gap does not wait for it.
    pub(super) async fn probe_guards(&self, guards: &[plan::Guard], skip: &[String]) -> Vec<crate::observe::Observed> {
        let nodes: Option<Vec<&str>> = guards.iter().try_fold(Vec::new(), |mut acc, g| {
            g.nodes().map(|n| {
                acc.extend(n);
                acc
            })
        });
        let nodes = &nodes;
        join_all(self.cluster.nodes.iter().filter(|n| !skip.contains(&n.name)).map(|n| async move {
            let wanted = nodes.as_ref().is_none_or(|w| w.contains(&n.name.as_str()));
            match (wanted, self.handle(&n.name)) {
                (true, Some(h)) => crate::observe::probe::probe_node(h, n.port, &self.caps).await,
                _ => crate::observe::Observed::unknown(&n.name),
            }
        }))
        .await
    }

    /// Checks a step's guards against `probed` (from [`Op::probe_guards`]) and `settled`:
    /// nodes whose state this operation has just established itself (a node it stopped and
    /// confirmed stopped, a primary whose pg_control shows its shutdown checkpoint). And
    /// that the operation lock is still this operation's (a partition longer than the lease
    /// lets another admin machine take it).
    pub(super) fn check_guards(
        &self,
        guards: &[plan::Guard],
        probed: Vec<crate::observe::Observed>,
        settled: &[crate::observe::Observed],
    ) -> Result<(), Error> {
        if let Some(l) = self.lock {
            l.check()?;
        }
        let mut nodes = probed;
        nodes.retain(|o| !settled.iter().any(|s| s.node == o.node));
        nodes.extend(settled.iter().cloned());
        let obs = ObservedCluster { nodes, topology: self.topology.clone() };
        for g in guards {
            g.check(&obs)?;
        }
        Ok(())
    }

    pub(super) fn render(&self, cluster: &Cluster, node: &str) -> Result<RenderedNode, Error> {
        let h = self.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))?;
        Ok(render_node(cluster, node, &h.layout, Some(&self.secrets))?)
    }

    pub(super) async fn save(&self, t: &Topology) -> Result<(), Error> {
        self.d.save_topology(t).await
    }

    /// Every slot name pgrepl manages in this cluster (so it never drops a user's slot).
    pub(super) fn managed_slots(&self, other: &Cluster) -> Vec<String> {
        let mut v: Vec<String> = self.cluster.nodes.iter().chain(other.nodes.iter()).filter_map(|n| n.slot.clone()).collect();
        v.extend(self.cluster.nodes.iter().map(|n| crate::default_slot_name(&n.name)));
        v.sort();
        v.dedup();
        v
    }
}

pub(super) fn refused(node: &str, reason: impl Into<String>) -> Error {
    Error::Refused(Refusal { node: node.to_string(), reason: reason.into() })
}

pub(super) fn act(actions: &mut Vec<Action>, node: &str, what: impl Into<String>, since: Instant) {
    actions.push(Action { node: node.to_string(), what: what.into(), seconds: since.elapsed().as_secs_f64() });
}

pub(super) async fn query_one(h: &NodeHandle, port: u16, q: &str, action: &str) -> Result<Option<String>, Error> {
    sql::query_one(&*h.transport, &h.layout, port, q, PROBE_TIMEOUT).await.map_err(|e| sqlerr(&h.name, action, e))
}
