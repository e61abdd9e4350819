//! Decisions as data: what to do to a cluster, as a pure function of what was observed.
//!
//! Each planner ([`up()`], [`failover()`], [`switchover()`], [`rejoin()`], [`upgrade()`]) takes the validated
//! [`Cluster`], an [`ObservedCluster`](crate::observe::ObservedCluster)
//! and a request, and returns a [`Plan`] or a typed [`Refusal`]. A plan is an ordered list
//! of [`Step`]s; each step names the guards the executor re-checks right before it runs
//! (against a fresh observation) and, where something can be undone, what undoes it. The
//! CLI (`--dry-run` prints a plan without touching anything), the executor and the agent
//! call the same planners, so they take the same decisions.
//!
//! Pure: no I/O, no clock. Every refusal reason has a table test and the safety properties
//! (never two writable nodes at the end of a plan; in synchronous mode never a candidate
//! outside the set the primary ran with, unless forced) are property-tested.

pub mod failover;
pub mod guard;
pub mod refusal;
pub mod rejoin;
pub mod restart;
pub mod switchover;
#[cfg(test)]
mod tests;
pub mod up;
pub mod upgrade;

use std::fmt;

use serde::Serialize;

pub use failover::{Candidate, FailoverDecision, FailoverRequest, failover};
pub use guard::{Guard, GuardFailure};
pub use refusal::Refusal;
pub use rejoin::{RejoinFacts, RejoinRequest, rejoin};
pub use restart::{BinaryCheck, PendingRestart, RestartMode, RestartRequest, restart};
pub use switchover::{SWITCHOVER_MAX_LAG_BYTES, SwitchoverRequest, switchover};
pub use up::up;
pub use upgrade::{UpgradeFacts, UpgradePlan, UpgradeProblem, UpgradeRequest, UpgradeStep, upgrade};

use crate::cluster::Cluster;
use crate::lsn::Lsn;

/// The operation a plan carries out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "operation")]
pub enum Operation {
    /// A planned move of the primary role.
    Switchover {
        /// The standby that becomes the primary.
        to: String,
    },
    /// Promotion of a standby when the primary is gone.
    Failover {
        /// The standby promoted.
        to: String,
        /// Refusals were overridden.
        force: bool,
    },
    /// A node brought back as a standby.
    Rejoin {
        /// The node.
        node: String,
    },
    /// Deploy or converge the cluster to its spec.
    Up,
    /// Restarts (`pgrepl restart`, the restarts `up` may do, a minor upgrade).
    Restart {
        /// How: `after up`, `in place`, `rolling`, `minor upgrade, rolling`, ...
        how: String,
    },
}

/// How a standby is brought back by a rejoin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejoinHow {
    /// Started with standby settings as it is (its WAL is a prefix of the primary's history).
    AsItIs,
    /// `pg_rewind` from the primary, then started as a standby.
    Rewind,
    /// A fresh clone (its data directory is replaced).
    Reclone,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Record nodes as fenced (nothing starts them as a primary again until a rejoin).
    RecordFenced {
        /// The nodes.
        nodes: Vec<String>,
    },
    /// Record the synchronous standbys the new primary is configured with, before it
    /// accepts a write.
    RecordSync {
        /// The primary.
        primary: String,
        /// `FIRST` or `ANY` (`off`: asynchronous).
        mode: crate::spec::SyncMode,
        /// The standbys named in its `synchronous_standby_names` (empty: asynchronous).
        standbys: Vec<String>,
        /// How many confirm each commit.
        count: u32,
    },
    /// Move the leader key of the agents' store (`[ha]`) from `from` to `to`, bound to
    /// `to`'s agent's lease: a compare-and-set on the key naming `from` (or `to` already),
    /// refused when a third node holds it. In a switchover, after the old primary stopped
    /// cleanly and before the promotion: the writable node and the key always agree, so
    /// no agent, even paused, stops the new primary ([`crate::store::operator`]).
    MoveLeaderKey {
        /// The node the key names now.
        from: String,
        /// The node it names after.
        to: String,
    },
    /// Stop the server (fast, then immediate when it does not stop in time) and confirm it stopped.
    Stop,
    /// Stop at once (immediate shutdown: every session ends, nothing commits after it) and
    /// confirm it stopped: a node that may no longer accept writes (its lease ran out,
    /// another node holds the leader key).
    Fence,
    /// CHECKPOINT, so the shutdown checkpoint that follows is short.
    Checkpoint,
    /// Stop cleanly and wait for the shutdown checkpoint in pg_control (nothing can write WAL after it).
    StopClean,
    /// Write standby settings into the data directory (standby.signal or recovery.conf), so
    /// whatever starts it brings it up read-only.
    WriteStandbySettings {
        /// The upstream they name.
        upstream: String,
    },
    /// Write the primary's settings (synchronous standbys, no upstream) ahead of its promotion.
    WritePrimarySettings,
    /// Create the slots its future standbys use (physical slots can be made in recovery).
    CreateSlots {
        /// Slot names.
        slots: Vec<String>,
    },
    /// Wait until it has replayed past the old primary's shutdown checkpoint.
    WaitReplayShutdownCheckpoint {
        /// The old primary.
        of: String,
    },
    /// Promote it, as its major does, and wait until it accepts writes; a promotion that
    /// is not confirmed is resolved (the node found promoted, or stopped) before anything
    /// else happens.
    Promote,
    /// Record it as the primary, with its timeline.
    RecordPrimary,
    /// Point it at its upstream: reload (13+) or restart (≤12), or start it when stopped.
    Repoint {
        /// Its upstream.
        upstream: String,
    },
    /// Start it as a standby of its upstream (a clean former primary: it stopped at the fork point).
    StartAsStandby {
        /// Its upstream.
        upstream: String,
    },
    /// Wait until enough synchronous standbys confirm commits.
    WaitSyncStandbys {
        /// How many.
        count: u32,
    },
    /// Bring it back as a standby.
    Rejoin {
        /// How (`None`: as its WAL allows, examined once it is stopped).
        how: Option<RejoinHow>,
        /// Its upstream.
        upstream: String,
    },
    /// Remove it from the fenced nodes.
    Unfence,
    /// Rewrite the primary's synchronous standbys (the rejoined node counts again).
    UpdateSyncStandbys,
    /// Drop slots pgrepl manages that no standby uses any more.
    DropStaleSlots,
    /// CHECKPOINT on the new primary once writes flow (so a later pg_rewind sees its timeline).
    CheckpointAfterPromotion,
    /// On the new primary (pgBackRest, `archive_mode = on`: a standby marks what it
    /// streams as archived): the parent timeline's whole segments it holds that the
    /// archive lacks (the old primary had not archived them) handed to its archiver.
    ArchiveOldTimeline,
    /// initdb (data checksums on).
    Initdb,
    /// Ready a standby for its clone while its upstream is still being set up: pgrepl's
    /// directories, the passfile, the clone marker (the clone counts as started), the
    /// layout's configuration (Debian: `pg_createcluster`), the OS's start at boot off.
    PrepareClone,
    /// A base backup from its upstream (pg_basebackup), marked unfinished until done.
    Clone {
        /// The upstream.
        from: String,
    },
    /// Write pgrepl's settings and pg_hba block where they differ (reload, or restart when
    /// a setting needs it).
    WriteSettings,
    /// Start the server.
    Start,
    /// Create or update the replication role.
    EnsureReplicationRole,
    /// Wait until it streams from its upstream.
    WaitStreaming {
        /// The upstream.
        from: String,
    },
    /// Restart its server (stop fast, start with what its files and binaries say now); a
    /// standby first catches up with `upstream` (so it has replayed any change of the
    /// primary's max_* values) and is back when it streams from it again, the primary
    /// when it accepts writes.
    Restart {
        /// The upstream a standby streams from once back (`None`: the primary).
        upstream: Option<String>,
    },
    /// A switchover to it, with no acknowledged write lost: planned by
    /// [`switchover()`] on a fresh observation when the step runs, carried out by the
    /// same executor. The old primary stops and starts again as a standby (so it restarts
    /// with what its files say now).
    Switchover {
        /// The old primary.
        from: String,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The node it acts on (the cluster's name for cluster-wide records).
    pub node: String,
    /// What it does.
    pub action: Action,
    /// Checked right before it runs; a failed guard stops the plan there.
    pub guards: Vec<Guard>,
    /// What undoes it when the plan is abandoned before its point of no return.
    pub undo: Option<Action>,
    /// It is the point of no return: steps before it are undone when the plan is abandoned.
    pub commits: bool,
    /// It runs at the same time as the step before it (steps on one node keep their
    /// order): the executor runs such a group together, its guards checked first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub alongside: bool,
    /// A failure is a warning and the plan goes on (before its point of no return: the
    /// step helps, nothing depends on it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
}

impl Step {
    /// A step with no guard and no undo.
    pub fn new(node: impl Into<String>, action: Action) -> Step {
        Step { node: node.into(), action, guards: Vec::new(), undo: None, commits: false, alongside: false, best_effort: false }
    }

    /// With guards.
    pub fn guarded(mut self, guards: impl IntoIterator<Item = Guard>) -> Step {
        self.guards.extend(guards);
        self
    }

    /// With an undo.
    pub fn undo(mut self, undo: Action) -> Step {
        self.undo = Some(undo);
        self
    }

    /// The point of no return.
    pub fn commits(mut self) -> Step {
        self.commits = true;
        self
    }

    /// Runs at the same time as the step before it.
    pub fn alongside(mut self) -> Step {
        self.alongside = true;
        self
    }

    /// A failure is a warning.
    pub fn best_effort(mut self) -> Step {
        self.best_effort = true;
        self
    }
}

/// What became of a step of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It ran.
    Done,
    /// It failed (see the detail); a best-effort step's failure is a warning.
    Failed,
    /// It ran, and was undone when the plan was abandoned.
    Undone,
    /// It did not run (the plan stopped before it).
    NotRun,
}

/// One step of the plan as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// The node (the cluster's name for records).
    pub node: String,
    /// What it does.
    pub action: Action,
    /// What became of it.
    pub outcome: StepOutcome,
    /// What it found or why it failed.
    pub detail: Option<String>,
    /// Seconds.
    pub seconds: f64,
}

/// What a planner decided: the steps, and what the decision was based on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Cluster name.
    pub cluster: String,
    /// The operation.
    pub operation: Operation,
    /// The primary before.
    pub primary: String,
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Things to know before it runs.
    pub warnings: Vec<String>,
    /// The failover decision (candidates, fencing, loss bound), for a failover.
    pub failover: Option<FailoverDecision>,
    /// The position the candidate must replay past, when known at planning time.
    pub target_lsn: Option<Lsn>,
    /// Nothing to do.
    pub noop: bool,
    /// Restarts the plan leaves for later (a restart planner's): each node, what waits
    /// for its restart, and the command that applies it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingRestart>,
    /// The cluster as the plan leaves it (its primary, upstreams and synchronous
    /// standbys): what the executor renders the nodes' settings from. `None`: as it is.
    #[serde(skip)]
    pub after: Option<Cluster>,
}

/// `steps` as one group: each but the first runs alongside the one before.
pub fn together(steps: Vec<Step>) -> Vec<Step> {
    steps.into_iter().enumerate().map(|(i, s)| if i == 0 { s } else { s.alongside() }).collect()
}

impl crate::topology::SyncRecord {
    /// The step that records it (asynchronous: no standby named).
    pub fn action(&self) -> Action {
        if self.synchronous() {
            Action::RecordSync { primary: self.primary.clone(), mode: self.mode, standbys: self.standbys.clone(), count: self.count }
        } else {
            Action::RecordSync { primary: self.primary.clone(), mode: crate::spec::SyncMode::Off, standbys: Vec::new(), count: 0 }
        }
    }
}

/// The step closing pgBackRest's failover gap on the new primary `node`, when the
/// cluster archives with pgBackRest (`archive_mode = on`; the other tools archive on
/// every node, `always`). Best effort: the promotion is done, and the archive's listing
/// failing leaves the gap as it was (a warning says so).
pub fn archive_old_timeline(cluster: &Cluster, node: &str) -> Option<Step> {
    let b = cluster.backup.as_ref()?;
    (b.tool == crate::spec::BackupTool::Pgbackrest).then(|| Step::new(node, Action::ArchiveOldTimeline).best_effort())
}

impl Plan {
    /// An empty plan of `operation` on `cluster`, whose primary is `primary`.
    pub fn new(cluster: &str, operation: Operation, primary: &str) -> Plan {
        Plan {
            cluster: cluster.to_string(),
            operation,
            primary: primary.to_string(),
            steps: Vec::new(),
            warnings: Vec::new(),
            failover: None,
            target_lsn: None,
            noop: false,
            pending: Vec::new(),
            after: None,
        }
    }

    /// The groups of steps that run together, in order (indices into `steps`): a step
    /// marked `alongside` joins the group of the step before it.
    pub fn groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            match out.last_mut() {
                Some(g) if s.alongside => g.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// The steps acting on `node`.
    pub fn steps_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.node == node)
    }

    /// Whether a step does `pred` on `node`.
    pub fn has(&self, node: &str, pred: impl Fn(&Action) -> bool) -> bool {
        self.steps_on(node).any(|s| pred(&s.action))
    }

    /// The nodes that accept writes once the plan has run, as far as the plan decides it:
    /// for the property tests, and for a reader of `--dry-run`. `writable_before` are the
    /// nodes writable when it was planned.
    pub fn writable_after(&self, writable_before: &[String]) -> Vec<String> {
        let mut w: Vec<String> = writable_before.to_vec();
        for s in &self.steps {
            match &s.action {
                Action::Stop | Action::StopClean | Action::Fence => w.retain(|n| *n != s.node),
                Action::Promote if !w.contains(&s.node) => w.push(s.node.clone()),
                Action::Rejoin { .. } | Action::Clone { .. } => w.retain(|n| *n != s.node),
                Action::Switchover { from } => {
                    w.retain(|n| n != from);
                    if !w.contains(&s.node) {
                        w.push(s.node.clone());
                    }
                }
                _ => {}
            }
        }
        w
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::RecordFenced { nodes } => write!(f, "record {} as fenced", nodes.join(", ")),
            Action::RecordSync { primary, standbys, count, .. } => {
                if standbys.is_empty() || *count == 0 {
                    write!(f, "record {primary}'s replication as asynchronous")
                } else {
                    write!(f, "record {primary}'s synchronous standbys: {count} of ({})", standbys.join(", "))
                }
            }
            Action::MoveLeaderKey { from, to } => write!(
                f,
                "move the agents' leader key from {from} to {to}, bound to {to}'s agent's lease (compare-and-set: refused if another node holds it)"
            ),
            Action::Stop => f.write_str("stop (fast, then immediate) and confirm it stopped"),
            Action::Fence => f.write_str("stop at once (immediate) and confirm it stopped"),
            Action::Checkpoint => f.write_str("CHECKPOINT (a short shutdown checkpoint)"),
            Action::StopClean => f.write_str("stop cleanly; wait for the shutdown checkpoint in pg_control"),
            Action::WriteStandbySettings { upstream } => {
                write!(f, "write standby settings (upstream {upstream}): it cannot start writable")
            }
            Action::WritePrimarySettings => f.write_str("write its settings as the primary (applied at the promotion)"),
            Action::CreateSlots { slots } => write!(f, "create slots {}", slots.join(", ")),
            Action::WaitReplayShutdownCheckpoint { of } => write!(f, "wait until it replayed {of}'s shutdown checkpoint"),
            Action::Promote => f.write_str("promote; wait until it accepts writes"),
            Action::RecordPrimary => f.write_str("record it as the primary"),
            Action::Repoint { upstream } => write!(f, "point it at {upstream} (reload 13+, restart before; start when stopped)"),
            Action::StartAsStandby { upstream } => write!(f, "start it as a standby of {upstream}"),
            Action::WaitSyncStandbys { count } => write!(f, "wait until {count} synchronous standby(s) confirm commits"),
            Action::Rejoin { how, upstream } => match how {
                Some(RejoinHow::AsItIs) => write!(f, "start it as a standby of {upstream} as it is"),
                Some(RejoinHow::Rewind) => write!(f, "pg_rewind from {upstream}, then start it as a standby"),
                Some(RejoinHow::Reclone) => write!(f, "clone it afresh from {upstream}, then start it as a standby"),
                None => write!(
                    f,
                    "examine its WAL against {upstream}'s history; start it as it is, pg_rewind it or clone it afresh, as that allows"
                ),
            },
            Action::Unfence => f.write_str("no longer fenced"),
            Action::UpdateSyncStandbys => f.write_str("rewrite the primary's synchronous standbys"),
            Action::DropStaleSlots => f.write_str("drop slots no standby uses any more"),
            Action::CheckpointAfterPromotion => f.write_str("CHECKPOINT once writes flow"),
            Action::ArchiveOldTimeline => {
                f.write_str("hand the old timeline's segments it streamed and the archive lacks to its archiver (pgBackRest)")
            }
            Action::Initdb => f.write_str("initdb (data checksums on)"),
            Action::PrepareClone => {
                f.write_str("ready it for its clone: directories, passfile, configuration (pg_createcluster on Debian)")
            }
            Action::Clone { from } => write!(f, "clone from {from} (pg_basebackup)"),
            Action::WriteSettings => f.write_str(
                "write settings and pg_hba.conf where they differ; reload (a setting that needs a restart: standbys restarted when the order allows, the primary never; see `pgrepl restart`)",
            ),
            Action::Start => f.write_str("start"),
            Action::EnsureReplicationRole => f.write_str("create or update the replication role"),
            Action::WaitStreaming { from } => write!(f, "wait until it streams from {from}"),
            Action::Restart { upstream: Some(u) } => {
                write!(f, "catch up with {u}, restart (stop fast, start), wait until it streams from {u} again")
            }
            Action::Restart { upstream: None } => {
                f.write_str("restart in place (CHECKPOINT while writes flow, then stop fast, start): writes pause until it accepts them again")
            }
            Action::Switchover { from } => write!(
                f,
                "switchover {from} -> it (no acknowledged write lost; planned on a fresh look when it runs): writes pause for the switchover; {from} starts again as a standby"
            ),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.operation {
            Operation::Switchover { to } => format!("switchover {} -> {to}", self.primary),
            Operation::Failover { to, force } => {
                format!("failover {} -> {to}{}", self.primary, if *force { " (forced)" } else { "" })
            }
            Operation::Rejoin { node } => format!("rejoin {node} (primary {})", self.primary),
            Operation::Up => format!("up (primary {})", self.primary),
            Operation::Restart { how } => format!("restart, {how} (primary {})", self.primary),
        };
        writeln!(f, "plan for cluster {}: {what} (a step numbered with + runs with the one before)", self.cluster)?;
        if self.noop {
            writeln!(f, "  nothing to do{}", if self.steps.is_empty() { "" } else { " but what the steps below find different" })?;
        }
        if let Some(d) = &self.failover {
            for c in &d.candidates {
                writeln!(
                    f,
                    "  candidate {:<8} received {:<12} replayed {:<12} {}",
                    c.node,
                    c.receive_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    c.replay_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    if c.node == d.candidate { "chosen".to_string() } else { c.note.clone().unwrap_or_default() }
                )?;
            }
            writeln!(f, "  loss: {}", d.loss_note)?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "  {:>2}{} {:<10} {}{}{}",
                i + 1,
                if s.alongside { '+' } else { '.' },
                s.node,
                s.action,
                if s.best_effort { "  [best effort]" } else { "" },
                if s.commits { "  [point of no return]" } else { "" }
            )?;
            for g in &s.guards {
                writeln!(f, "        guard: {g}")?;
            }
            if let Some(u) = &s.undo {
                writeln!(f, "        undo:  {u}")?;
            }
        }
        for p in &self.pending {
            writeln!(f, "  pending restart: {p}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
