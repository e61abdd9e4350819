//! What the operations report: typed, `Serialize`, and readable as text.

use super::*;

// =======================================================================================
// Reports

/// Options of [`Deployment::failover`].
#[derive(Debug, Clone, Default)]
pub struct FailoverOptions {
    /// Promote this standby; default: the one with the most WAL.
    pub to: Option<String>,
    /// Stop a node that accepts writes (or runs but does not answer) before promoting, and
    /// accept a requested candidate that is behind another standby. A node that looks alive
    /// but cannot be reached still blocks the promotion: it cannot be stopped.
    pub force: bool,
}

impl FailoverOptions {
    /// The planner's request.
    pub fn request(&self) -> plan::FailoverRequest {
        plan::FailoverRequest { to: self.to.clone(), force: self.force }
    }
}

/// How a standby was pointed at the new primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Repoint {
    /// It already followed it: nothing changed.
    Unchanged,
    /// New settings, reloaded (13+: `primary_conninfo` takes effect on reload).
    Reloaded,
    /// New settings, restarted (≤12).
    Restarted,
    /// It was stopped and was started as a standby.
    Started,
    /// Left alone (see the warning).
    Skipped,
}

/// One standby after the operation.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyReport {
    /// The node.
    pub node: String,
    /// The node it streams from now.
    pub upstream: String,
    /// What was done.
    pub method: Repoint,
    /// How long it took, seconds.
    pub seconds: f64,
    /// It streams from its upstream.
    pub streaming: bool,
    /// What went wrong.
    pub error: Option<String>,
}

/// Synchronous replication after the operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// `synchronous_standby_names` on the new primary (`None`: asynchronous).
    pub standby_names: Option<String>,
    /// `synchronous_commit` there.
    pub commit: Option<String>,
    /// Why fewer synchronous standbys than the spec asks are configured, if so.
    pub degraded: Option<String>,
    /// Seconds from the promotion until enough synchronous standbys confirmed commits.
    pub ready_seconds: Option<f64>,
}

/// How a node was fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceOutcome {
    /// Its server was running and was stopped.
    Stopped,
    /// Its server was not running.
    NotRunning,
    /// Its host could not be reached: recorded as fenced only.
    RecordedOnly,
}

/// One fenced node.
#[derive(Debug, Clone, Serialize)]
pub struct FenceReport {
    /// The node.
    pub node: String,
    /// What happened.
    pub outcome: FenceOutcome,
    /// Standby settings were written into its data directory (it cannot start writable).
    pub demoted: bool,
    /// Seconds.
    pub seconds: f64,
    /// Details.
    pub detail: Option<String>,
}

/// Where the old primary's last WAL position came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LsnSource {
    /// Its own WAL, read from its data directory: exact.
    OldPrimaryWal,
    /// The last position pgrepl recorded for the primary (a lower bound).
    Recorded,
    /// The furthest position a standby received (a lower bound).
    StandbyReceived,
}

/// WAL the new primary does not have.
#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    /// The last position the old primary is known to have written.
    pub last_primary_lsn: Option<Lsn>,
    /// Where that came from.
    pub source: Option<LsnSource>,
    /// `last_primary_lsn` is the old primary's actual end of WAL.
    pub exact: bool,
    /// Where the new timeline starts (the new primary has every byte before it).
    pub new_timeline_start: Option<Lsn>,
    /// Bytes of WAL after `new_timeline_start` that only the old primary has.
    pub wal_lost_bytes: Option<u64>,
    /// Synchronous replication guaranteed that every acknowledged commit is on the new
    /// primary.
    pub sync_held: bool,
    /// Acknowledged commits lost, as WAL bytes: 0 when synchronous replication held,
    /// otherwise up to `wal_lost_bytes`.
    pub acknowledged_lost_bytes: Option<u64>,
    /// In words.
    pub explanation: String,
}

/// How a node was brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejoinMethod {
    /// It already streamed from its upstream.
    AlreadyStreaming,
    /// Its WAL was a prefix of the new history: started as a standby as it was.
    Restarted,
    /// pg_rewind, then started as a standby.
    Rewound,
    /// A fresh clone (pg_basebackup).
    Recloned,
}

/// Whether a node's WAL fits the primary's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Divergence {
    /// Its WAL is a prefix of the primary's history: it can stream as it is.
    Follows,
    /// It has WAL past the point where its timeline ended in the primary's history.
    Diverged {
        /// How far past, bytes.
        bytes: u64,
    },
    /// Its timeline is not in the primary's history.
    ForeignTimeline,
    /// Its last record differs from the primary's WAL at the same position: it wrote WAL of
    /// its own on a timeline it shares with the primary (started as a primary by hand).
    Conflicting,
    /// The timelines fit, but the primary no longer has the WAL to compare its last record with.
    Unverifiable,
}

/// Timings, seconds (those an operation does not have stay 0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Observing every node and choosing (failover).
    pub observe_seconds: f64,
    /// Fencing (failover).
    pub fence_seconds: f64,
    /// Stopping: the old primary's clean stop (switchover), the node (rejoin).
    pub stop_seconds: f64,
    /// Until the candidate replayed the old primary's shutdown checkpoint (switchover).
    pub catchup_seconds: f64,
    /// Promotion, until the new primary accepted writes.
    pub promote_seconds: f64,
    /// Switchover: from the stop until the new primary accepts writes (with synchronous
    /// replication: until its synchronous standbys confirm commits).
    pub write_unavailable_seconds: f64,
    /// Failover: from the start of the command until the new primary accepts writes (with
    /// synchronous replication: until its synchronous standbys confirm commits).
    pub write_available_seconds: f64,
    /// Bringing it to a clean shutdown for pg_rewind (rejoin).
    pub prepare_seconds: f64,
    /// pg_rewind (rejoin).
    pub rewind_seconds: f64,
    /// The clone (rejoin).
    pub clone_seconds: f64,
    /// From its start until it streamed (rejoin).
    pub streaming_seconds: f64,
    /// The whole operation.
    pub total_seconds: f64,
}

/// What a failover found and did beyond the other operations.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverDetails {
    /// Every standby considered, and why it was or was not chosen.
    pub candidates: Vec<CandidateView>,
    /// Nodes fenced.
    pub fencing: Vec<FenceReport>,
    /// WAL not on the new primary.
    pub loss: LossReport,
}

/// How a rejoin went.
#[derive(Debug, Clone, Serialize)]
pub struct RejoinDetails {
    /// The node.
    pub node: String,
    /// Its upstream now.
    pub upstream: String,
    /// How.
    pub method: RejoinMethod,
    /// Why that way.
    pub reason: String,
    /// Its WAL against the primary's history, when checked.
    pub divergence: Option<Divergence>,
    /// The end of its WAL before the rejoin.
    pub node_wal_end: Option<Lsn>,
    /// Its timeline before the rejoin.
    pub node_timeline: Option<u32>,
    /// The primary's timeline.
    pub primary_timeline: Option<u32>,
    /// It streams now.
    pub streaming: bool,
}

/// What [`Deployment::switchover`], [`Deployment::failover`] and [`Deployment::rejoin`] did:
/// one report for the three.
#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// The operation.
    pub operation: plan::Operation,
    /// The primary before.
    pub from: String,
    /// The primary after.
    pub to: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Timeline before.
    pub old_timeline: Option<u32>,
    /// Timeline after.
    pub new_timeline: Option<u32>,
    /// Switchover: the old primary's shutdown checkpoint, which the new primary replayed
    /// before its promotion.
    pub shutdown_checkpoint: Option<Lsn>,
    /// Timings.
    pub timings: Timings,
    /// The plan's steps as they ran.
    pub steps: Vec<StepRecord>,
    /// Every other node, once pointed at the primary.
    pub standbys: Vec<StandbyReport>,
    /// Slots created (`node:slot`).
    pub slots_created: Vec<String>,
    /// Slots dropped (`node:slot`), left over on former upstreams.
    pub slots_dropped: Vec<String>,
    /// Synchronous replication.
    pub sync: SyncReport,
    /// Failover: candidates, fencing, loss.
    pub failover: Option<FailoverDetails>,
    /// Rejoin: how the node came back.
    pub rejoin: Option<RejoinDetails>,
    /// Everything done, in order, with what it did in words.
    pub actions: Vec<Action>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// Things left to fix (the new primary is in place; see each line).
    pub problems: Vec<String>,
    /// Restart: the switchovers it made, each as its own report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switchovers: Vec<OperationReport>,
    /// Restart: what it left pending (see [`plan::PendingRestart`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<plan::PendingRestart>,
}

impl OperationReport {
    /// An empty report of `plan` on `cluster`.
    pub(super) fn new(cluster: &Cluster, major: String, plan: &plan::Plan) -> OperationReport {
        let to = match &plan.operation {
            plan::Operation::Switchover { to } | plan::Operation::Failover { to, .. } => to.clone(),
            plan::Operation::Rejoin { .. } | plan::Operation::Up | plan::Operation::Restart { .. } => plan.primary.clone(),
        };
        OperationReport {
            cluster: cluster.name.clone(),
            major,
            operation: plan.operation.clone(),
            from: plan.primary.clone(),
            to,
            changed: false,
            old_timeline: None,
            new_timeline: None,
            shutdown_checkpoint: None,
            timings: Timings::default(),
            steps: Vec::new(),
            standbys: Vec::new(),
            slots_created: Vec::new(),
            slots_dropped: Vec::new(),
            sync: SyncReport::default(),
            failover: None,
            rejoin: None,
            actions: Vec::new(),
            warnings: plan.warnings.clone(),
            problems: Vec::new(),
            switchovers: Vec::new(),
            pending: plan.pending.clone(),
        }
    }

    /// The failover's loss account (`None` for the other operations).
    pub fn loss(&self) -> Option<&LossReport> {
        self.failover.as_ref().map(|f| &f.loss)
    }

    /// The nodes a failover fenced (empty for the other operations).
    pub fn fencing(&self) -> &[FenceReport] {
        self.failover.as_ref().map(|f| f.fencing.as_slice()).unwrap_or_default()
    }
}

/// What status should show about a node beyond its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMark {
    /// The node.
    pub node: String,
    /// Fenced by a failover: `pgrepl rejoin` brings it back.
    pub fenced: bool,
    /// It accepts writes but is not the primary, or it cannot follow the primary.
    pub diverged: bool,
    /// It runs on a timeline older than the primary's.
    pub old_timeline: bool,
    /// In words.
    pub note: String,
}

// =======================================================================================
// Text output

pub(super) fn secs(s: f64) -> String {
    format!("{s:.3}s")
}

pub(super) fn standby_lines(f: &mut fmt::Formatter<'_>, standbys: &[StandbyReport]) -> fmt::Result {
    for s in standbys {
        let what = match s.method {
            Repoint::Unchanged => "already pointed there".to_string(),
            Repoint::Reloaded => format!("re-pointed, reloaded ({})", secs(s.seconds)),
            Repoint::Restarted => format!("re-pointed, restarted ({})", secs(s.seconds)),
            Repoint::Started => format!("started as a standby ({})", secs(s.seconds)),
            Repoint::Skipped => "left alone".to_string(),
        };
        let state = if s.streaming { "streaming".to_string() } else { format!("NOT streaming: {}", s.error.clone().unwrap_or_default()) };
        writeln!(f, "  {:<10} standby of {}: {what}; {state}", s.node, s.upstream)?;
    }
    Ok(())
}

pub(super) fn sync_line(f: &mut fmt::Formatter<'_>, s: &SyncReport) -> fmt::Result {
    match &s.standby_names {
        Some(names) => {
            write!(f, "  sync: synchronous_standby_names = '{names}', synchronous_commit = {}", s.commit.clone().unwrap_or_default())?
        }
        None => write!(f, "  sync: asynchronous replication")?,
    }
    if let Some(r) = s.ready_seconds {
        write!(f, "; confirming commits {} after the promotion", secs(r))?;
    }
    writeln!(f)?;
    if let Some(d) = &s.degraded {
        writeln!(f, "  sync DEGRADED: {d}")?;
    }
    Ok(())
}

pub(super) fn tail_lines(f: &mut fmt::Formatter<'_>, warnings: &[String], problems: &[String]) -> fmt::Result {
    for w in warnings {
        writeln!(f, "  warning: {w}")?;
    }
    for p in problems {
        writeln!(f, "  problem: {p}")?;
    }
    Ok(())
}

pub(super) fn tl(t: Option<u32>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

impl fmt::Display for OperationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.operation {
            plan::Operation::Switchover { .. } => self.fmt_switchover(f),
            plan::Operation::Failover { .. } => self.fmt_failover(f),
            plan::Operation::Rejoin { .. } => self.fmt_rejoin(f),
            plan::Operation::Up => {
                writeln!(f, "cluster {} (PostgreSQL {}): {} action(s)", self.cluster, self.major, self.actions.len())?;
                tail_lines(f, &self.warnings, &self.problems)
            }
            plan::Operation::Restart { how } => {
                let restarts = self.steps.iter().filter(|s| matches!(s.action, plan::Action::Restart { .. })).count();
                writeln!(
                    f,
                    "restart, {how}, of cluster {} (PostgreSQL {}): {restarts} restart(s), {} switchover(s) in {}; primary {} -> {}",
                    self.cluster,
                    self.major,
                    self.switchovers.len(),
                    secs(self.timings.total_seconds),
                    self.from,
                    self.to
                )?;
                if self.timings.write_unavailable_seconds > 0.0 {
                    writeln!(f, "  writes unavailable for {} in all", secs(self.timings.write_unavailable_seconds))?;
                }
                for a in &self.actions {
                    writeln!(f, "  {:<10} {} ({})", a.node, a.what, secs(a.seconds))?;
                }
                for p in &self.pending {
                    writeln!(f, "  pending restart: {p}")?;
                }
                tail_lines(f, &self.warnings, &self.problems)
            }
        }
    }
}

impl OperationReport {
    /// What the step closing pgBackRest's failover gap did (see `backup::timeline_gap`).
    fn archive_lines(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self.steps.iter().filter(|s| s.action == plan::Action::ArchiveOldTimeline && s.outcome == plan::StepOutcome::Done) {
            writeln!(f, "  archive    {}: {}", s.node, s.detail.as_deref().unwrap_or("checked"))?;
        }
        Ok(())
    }

    fn fmt_switchover(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.changed {
            writeln!(
                f,
                "{} is already the primary of cluster {} (PostgreSQL {}, timeline {}): nothing to do ({})",
                self.to,
                self.cluster,
                self.major,
                tl(self.new_timeline),
                secs(self.timings.total_seconds)
            )?;
            return tail_lines(f, &self.warnings, &self.problems);
        }
        let t = &self.timings;
        writeln!(
            f,
            "switchover {} -> {} (cluster {}, PostgreSQL {}): done in {}",
            self.from,
            self.to,
            self.cluster,
            self.major,
            secs(t.total_seconds)
        )?;
        if self.shutdown_checkpoint.is_some() {
            writeln!(
                f,
                "  writes unavailable for {} (clean stop {}, catch-up {}, promotion {})",
                secs(t.write_unavailable_seconds),
                secs(t.stop_seconds),
                secs(t.catchup_seconds),
                secs(t.promote_seconds)
            )?;
            writeln!(
                f,
                "  timeline {} -> {}; {} replayed {}'s shutdown checkpoint {}: no WAL lost",
                tl(self.old_timeline),
                tl(self.new_timeline),
                self.to,
                self.from,
                self.shutdown_checkpoint.map(|l| l.to_string()).unwrap_or_default()
            )?;
        }
        standby_lines(f, &self.standbys)?;
        if !self.slots_created.is_empty() || !self.slots_dropped.is_empty() {
            writeln!(f, "  slots: created [{}], dropped [{}]", self.slots_created.join(", "), self.slots_dropped.join(", "))?;
        }
        sync_line(f, &self.sync)?;
        self.archive_lines(f)?;
        tail_lines(f, &self.warnings, &self.problems)
    }

    fn fmt_failover(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.timings;
        writeln!(
            f,
            "failover {} -> {} (cluster {}, PostgreSQL {}): writes accepted {} after the command started",
            self.from,
            self.to,
            self.cluster,
            self.major,
            secs(t.write_available_seconds)
        )?;
        writeln!(
            f,
            "  observe {}, fence {}, promotion {}; timeline {} -> {}",
            secs(t.observe_seconds),
            secs(t.fence_seconds),
            secs(t.promote_seconds),
            tl(self.old_timeline),
            tl(self.new_timeline)
        )?;
        if let Some(d) = &self.failover {
            for c in &d.candidates {
                let pos = c.position().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                let why = if c.node == self.to { "promoted".to_string() } else { c.note.clone().unwrap_or_else(|| "eligible".into()) };
                writeln!(f, "  candidate {:<10} at {pos}: {why}", c.node)?;
            }
            for x in &d.fencing {
                let what = match x.outcome {
                    FenceOutcome::Stopped => "stopped",
                    FenceOutcome::NotRunning => "was not running",
                    FenceOutcome::RecordedOnly => "unreachable, recorded as fenced",
                };
                writeln!(
                    f,
                    "  fenced {:<10} {what}{}{}",
                    x.node,
                    if x.demoted { "; standby settings written (it cannot start as a primary)" } else { "" },
                    x.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
                )?;
            }
            writeln!(f, "  loss: {}", d.loss.explanation)?;
        }
        standby_lines(f, &self.standbys)?;
        sync_line(f, &self.sync)?;
        self.archive_lines(f)?;
        tail_lines(f, &self.warnings, &self.problems)
    }

    fn fmt_rejoin(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = &self.rejoin else {
            return tail_lines(f, &self.warnings, &self.problems);
        };
        let how = match r.method {
            RejoinMethod::AlreadyStreaming => "already a streaming standby",
            RejoinMethod::Restarted => "started as a standby as it was (no rewind needed)",
            RejoinMethod::Rewound => "rewound with pg_rewind",
            RejoinMethod::Recloned => "cloned afresh",
        };
        writeln!(
            f,
            "rejoin {} as a standby of {} (cluster {}, PostgreSQL {}): {how} in {}",
            r.node,
            r.upstream,
            self.cluster,
            self.major,
            secs(self.timings.total_seconds)
        )?;
        writeln!(f, "  why: {}", r.reason)?;
        if let Some(e) = r.node_wal_end {
            writeln!(
                f,
                "  its WAL ended at {e} on timeline {}; the primary is on timeline {}",
                tl(r.node_timeline),
                tl(r.primary_timeline)
            )?;
        }
        writeln!(f, "  {}", if r.streaming { format!("streaming from {}", r.upstream) } else { "NOT streaming".to_string() })?;
        tail_lines(f, &self.warnings, &self.problems)
    }
}

// =======================================================================================
