//! Why a planner refused: one variant per reason, with its data.

use serde::Serialize;

use crate::lsn::Lsn;

/// Why a plan was refused. Each variant's message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
#[non_exhaustive]
pub enum Refusal {
    /// The request names a node the cluster does not have.
    #[error("\"{node}\" is not a node of this cluster (expected one of: {})", known.join(", "))]
    UnknownNode {
        /// The name given.
        node: String,
        /// The cluster's nodes.
        known: Vec<String>,
    },
    /// The PostgreSQL major is not known.
    #[error("the PostgreSQL major is not known: set `postgres` in the spec")]
    MajorUnknown,
    /// No standby can be promoted.
    #[error("no standby can be promoted ({})", if why.is_empty() { "the cluster has no standby".to_string() } else { why.iter().map(|(n, w)| format!("{n}: {w}")).collect::<Vec<_>>().join("; ") })]
    NoCandidate {
        /// Each standby and why it cannot be promoted.
        why: Vec<(String, String)>,
    },
    /// The requested standby cannot be promoted.
    #[error("{node} cannot be promoted: {why}")]
    NotEligible {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
    /// The requested standby has less WAL than another eligible one.
    #[error(
        "{node} is {behind_bytes} bytes behind {best} ({node} has {node_lsn}, {best} has {best_lsn}): promoting it would discard WAL {best} has. Fail over to {best}, or pass --force to accept the loss"
    )]
    CandidateBehind {
        /// The requested node.
        node: String,
        /// Its position.
        node_lsn: Lsn,
        /// The most advanced eligible standby.
        best: String,
        /// Its position.
        best_lsn: Lsn,
        /// The difference.
        behind_bytes: u64,
    },
    /// Another node accepts writes.
    #[error("{node} accepts writes: pgrepl never promotes while another node accepts writes. {}", if *is_primary { format!("For a planned change use `pgrepl switchover --to {candidate}`; to stop {node} and fail over anyway, pass --force") } else { format!("{node} is not the recorded primary: see `pgrepl status`; --force stops it first") })]
    OtherWritable {
        /// The writable node.
        node: String,
        /// The candidate.
        candidate: String,
        /// It is the recorded primary.
        is_primary: bool,
    },
    /// A node's server runs but does not answer; it may accept writes.
    #[error("{node}: its server runs but does not answer, and it may accept writes again; pass --force to stop it and fail over")]
    Unresponsive {
        /// The node.
        node: String,
    },
    /// A node cannot be reached but shows signs of life: it cannot be fenced.
    #[error("{node} cannot be reached but looks alive ({}): it may still accept writes, and pgrepl cannot stop it{}. Restore access so pgrepl can stop it (then --force), or stop it yourself (power it off, or cut it off); once nothing streams from it, `pgrepl failover` proceeds", evidence.join("; "), if *forced { " (--force fences by stopping, which is impossible here)" } else { "" })]
    AliveButUnreachable {
        /// The node.
        node: String,
        /// The signs of life.
        evidence: Vec<String>,
        /// --force was given (it cannot help).
        forced: bool,
    },
    /// The old primary cannot be reached and nothing shows whether it is dead.
    #[error(
        "{node} cannot be reached and nothing shows that it is down: if it is only cut off it may still accept writes, and when its host comes back its server may start again. Make sure it is down (power it off or cut it off from its clients), then pass --force: it is recorded as fenced, and `pgrepl rejoin {node}` makes it a standby once it can be reached"
    )]
    UnreachableWithoutEvidence {
        /// The node.
        node: String,
    },
    /// Synchronous mode: the candidate is not one of the standbys the primary ran with as synchronous.
    #[error("{node} was not a synchronous standby of {primary} (it ran with {count} of ({})): it may lack commits that were acknowledged. Fail over to one of those, or pass --force to accept the loss", set.join(", "))]
    NotInSyncSet {
        /// The candidate.
        node: String,
        /// The primary.
        primary: String,
        /// The synchronous standbys the primary ran with.
        set: Vec<String>,
        /// How many confirmed each commit.
        count: u32,
    },
    /// Synchronous mode: the reachable standbys do not cover every acknowledged commit.
    #[error("acknowledged commits may exist only on {} ({primary} ran with {count} synchronous of ({})), which cannot be compared now: promoting {candidate} may lose acknowledged commits. Bring {} back, or pass --force to accept the loss", may_hold.join(", "), set.join(", "), may_hold.join(" or "))]
    SyncNotCovered {
        /// The best reachable candidate.
        candidate: String,
        /// The primary.
        primary: String,
        /// The synchronous standbys the primary ran with.
        set: Vec<String>,
        /// How many confirmed each commit.
        count: u32,
        /// The standbys of the set that may hold acknowledged commits and cannot be compared.
        may_hold: Vec<String>,
    },
    /// A switchover needs a running primary.
    #[error(
        "no node accepts writes ({primary}: {why}): a switchover needs a running primary; use `pgrepl failover` when the primary is gone"
    )]
    NoRunningPrimary {
        /// The recorded primary.
        primary: String,
        /// What was observed.
        why: String,
    },
    /// A node accepts writes that is not the recorded primary.
    #[error(
        "{node} accepts writes but the recorded primary is {recorded}: record the real primary first with `pgrepl switchover --to {node}`"
    )]
    UnrecordedPrimary {
        /// The writable node.
        node: String,
        /// The recorded primary.
        recorded: String,
    },
    /// More than one node accepts writes.
    #[error("{} nodes accept writes ({}): split brain. Decide which one is the primary, then `pgrepl rejoin` the others", nodes.len(), nodes.join(", "))]
    SplitBrain {
        /// The writable nodes.
        nodes: Vec<String>,
    },
    /// The node is fenced.
    #[error("{node} is fenced by a failover: bring it back with `pgrepl rejoin {node}` first")]
    Fenced {
        /// The node.
        node: String,
    },
    /// The candidate is not a running standby.
    #[error("{node} is not a running standby ({why})")]
    NotAStandby {
        /// The node.
        node: String,
        /// What it is instead.
        why: String,
    },
    /// The candidate does not stream.
    #[error("{node} does not stream from {upstream}: fix replication first (see `pgrepl status`)")]
    NotStreaming {
        /// The node.
        node: String,
        /// Its upstream.
        upstream: String,
    },
    /// The candidate is on another timeline.
    #[error("{node} is on timeline {node_timeline}, the primary on {primary_timeline}: `pgrepl rejoin {node}` first")]
    OtherTimeline {
        /// The node.
        node: String,
        /// Its timeline.
        node_timeline: u32,
        /// The primary's.
        primary_timeline: u32,
    },
    /// The candidate is too far behind for a switchover.
    #[error("{node} has replayed {lag_bytes} bytes less than {primary} (at most {max_bytes} for a switchover): wait until it catches up")]
    TooFarBehind {
        /// The node.
        node: String,
        /// The primary.
        primary: String,
        /// How far behind.
        lag_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// Rejoin: the node is the primary.
    #[error("{node} is the current primary: there is nothing to rejoin (use `pgrepl switchover` to move the primary role)")]
    IsPrimary {
        /// The node.
        node: String,
    },
    /// Rejoin: the primary does not accept writes.
    #[error("the primary {primary} does not accept writes: run `pgrepl failover` first, then rejoin {node}")]
    PrimaryDown {
        /// The primary.
        primary: String,
        /// The node to rejoin.
        node: String,
    },
    /// Rejoin: another node accepts writes too.
    #[error("{other} accepts writes too: rejoin {other} first")]
    OtherAlsoWritable {
        /// The other writable node.
        other: String,
    },
    /// The node's host cannot be reached.
    #[error("{node}: its host cannot be reached")]
    Unreachable {
        /// The node.
        node: String,
    },
    /// The node's data directory is not what its role in the spec needs, and changing it
    /// could destroy data (a former primary's directory where a standby is asked for).
    #[error("{node}: {why}")]
    WrongDataDirectory {
        /// The node.
        node: String,
        /// What it holds and what to do.
        why: String,
    },
    /// Files that are not a cluster would be overwritten.
    #[error("{path} holds files but no PostgreSQL cluster; pgrepl will not clone over them (move them away first)")]
    ForeignFiles {
        /// The node.
        node: String,
        /// The data directory.
        path: String,
    },
    /// A major upgrade's checks failed: every problem found, each with its reason.
    /// Nothing was changed.
    #[error("the upgrade to PostgreSQL {to} is refused; nothing was changed:{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    UpgradeChecks {
        /// The major asked for.
        to: String,
        /// What the checks found.
        problems: Vec<super::upgrade::UpgradeProblem>,
    },
    /// A restart would leave a hot standby with a smaller value of one of
    /// [`STANDBY_LIMITS`](crate::observe::STANDBY_LIMITS) than its primary's.
    #[error(
        "{node} would run with {setting} = {value}, below the primary {primary}'s {primary_value}: a hot standby needs at least its primary's value (before 14 it stops, from 14 its replay pauses). {hint}"
    )]
    UnsafeRestartOrder {
        /// The standby.
        node: String,
        /// The parameter.
        setting: String,
        /// Its value there.
        value: i64,
        /// The primary.
        primary: String,
        /// The primary's value.
        primary_value: i64,
        /// What to do.
        hint: String,
    },
    /// A node to restart does not run.
    #[error("{node} does not run: `pgrepl up` starts it (with its new settings); restart restarts running servers only")]
    NotRunning {
        /// The node.
        node: String,
    },
    /// A minor upgrade whose binaries are of another major than the data directory.
    #[error(
        "{node}: the binaries in {path} are PostgreSQL {binaries} but its data directory is PostgreSQL {data}: a minor upgrade keeps the major (a major upgrade is `pgrepl upgrade --to`)"
    )]
    MajorMismatch {
        /// The node.
        node: String,
        /// Where its binaries are.
        path: String,
        /// Their major (`postgres --version`; `unknown` when it did not run).
        binaries: String,
        /// The data directory's (`PG_VERSION`).
        data: String,
    },
    /// A rolling restart of the primary has no standby to switch over to.
    #[error(
        "a rolling restart of {primary} needs a running, streaming standby to switch over to ({why}); `pgrepl restart` without --rolling restarts {primary} in place"
    )]
    NoRollingCandidate {
        /// The primary.
        primary: String,
        /// Why no standby qualifies.
        why: String,
    },
}

impl Refusal {
    /// The node the refusal is about (the cluster's primary for cluster-wide ones is the
    /// caller's to name; here the first node the reason names).
    pub fn node(&self) -> Option<&str> {
        Some(match self {
            Refusal::UnknownNode { node, .. }
            | Refusal::NotEligible { node, .. }
            | Refusal::CandidateBehind { node, .. }
            | Refusal::OtherWritable { node, .. }
            | Refusal::Unresponsive { node }
            | Refusal::AliveButUnreachable { node, .. }
            | Refusal::UnreachableWithoutEvidence { node }
            | Refusal::NotInSyncSet { node, .. }
            | Refusal::UnrecordedPrimary { node, .. }
            | Refusal::Fenced { node }
            | Refusal::NotAStandby { node, .. }
            | Refusal::NotStreaming { node, .. }
            | Refusal::OtherTimeline { node, .. }
            | Refusal::TooFarBehind { node, .. }
            | Refusal::IsPrimary { node }
            | Refusal::PrimaryDown { node, .. }
            | Refusal::Unreachable { node }
            | Refusal::ForeignFiles { node, .. }
            | Refusal::WrongDataDirectory { node, .. }
            | Refusal::UnsafeRestartOrder { node, .. }
            | Refusal::NotRunning { node }
            | Refusal::MajorMismatch { node, .. } => node,
            Refusal::NoRollingCandidate { primary, .. } => primary,
            Refusal::SyncNotCovered { primary, .. } | Refusal::NoRunningPrimary { primary, .. } => primary,
            Refusal::OtherAlsoWritable { other } => other,
            Refusal::SplitBrain { nodes } => nodes.first()?,
            Refusal::MajorUnknown | Refusal::NoCandidate { .. } | Refusal::UpgradeChecks { .. } => return None,
        })
    }
}
