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
//! The decisions are plain functions over observed values ([`choose_candidate`],
//! [`plan_fencing`], [`account_loss`], [`sync_guarantee`], [`divergence`],
//! [`exclude_from_sync`], [`mark_nodes`]); the executor only observes and acts.
//!
//! Safety rules, enforced by [`plan_fencing`] and checked again before every promotion:
//! pgrepl never promotes while another node accepts writes, unless `--force`, and then it
//! stops those nodes first (and refuses to promote if one keeps running). A primary that
//! looks alive (a standby still streams from it, its port answers) but cannot be reached
//! cannot be fenced, so it blocks the promotion even with `--force`: pgrepl never makes a
//! second writable primary it knows of. An unreachable primary without signs of life is
//! recorded as fenced, and demoted on disk as soon as pgrepl can reach it (`rejoin`).

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use crate::cluster::{Cluster, Node, Sync};
use crate::deploy::{Action, DataDir, Deployment, Progress, Run, Topology, is_running, sqlerr, tr};
use crate::error::{Error, Refusal};
use crate::pgcontrol::{self, ControlFile, HistoryEntry, Lsn, WalEnd, WalScanner};
use crate::provider::NodeHandle;
use crate::render::{self, Promote, RenderedNode, conninfo_quote, render_node, sql_ident, sql_literal};
use crate::secret::Secrets;
use crate::spec::{Role, SyncMode};
use crate::sql;
use crate::status::{NodeState, StatusReport};
use crate::transport::{Command, TransportExt};
use crate::version::{Capabilities, ChangeContext};

/// How often the waits of the write-unavailable window poll (catch-up, promotion).
pub const FAST_POLL: Duration = Duration::from_millis(10);
/// Time limit of one observation query.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A switchover candidate may be at most this far behind the primary (replay), so the
/// write-unavailable window stays short.
pub const SWITCHOVER_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;
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

/// Timings of a switchover, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchoverTimings {
    /// Clean stop of the old primary (its shutdown checkpoint is sent to the standbys).
    pub stop_seconds: f64,
    /// Until the candidate replayed the shutdown checkpoint.
    pub catchup_seconds: f64,
    /// Promotion, until the candidate accepted writes.
    pub promote_seconds: f64,
    /// From the stop until the new primary accepts writes (with synchronous
    /// replication: until its synchronous standbys confirm commits).
    pub write_unavailable_seconds: f64,
    /// The whole operation.
    pub total_seconds: f64,
}

/// What [`Deployment::switchover`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// The primary before.
    pub from: String,
    /// The primary after.
    pub to: String,
    /// Whether anything changed (a switchover to the primary changes nothing).
    pub changed: bool,
    /// Timeline before.
    pub old_timeline: Option<u32>,
    /// Timeline after.
    pub new_timeline: Option<u32>,
    /// The old primary's shutdown checkpoint, which the new primary replayed before its
    /// promotion.
    pub shutdown_checkpoint: Option<Lsn>,
    /// Timings.
    pub timings: SwitchoverTimings,
    /// Every other node.
    pub standbys: Vec<StandbyReport>,
    /// Slots created (`node:slot`).
    pub slots_created: Vec<String>,
    /// Slots dropped (`node:slot`), left over on former upstreams.
    pub slots_dropped: Vec<String>,
    /// Synchronous replication.
    pub sync: SyncReport,
    /// Every step, in order.
    pub actions: Vec<Action>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// Things left to fix (the new primary is in place; see each line).
    pub problems: Vec<String>,
}

/// A standby as the failover decision saw it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    /// The node.
    pub node: String,
    /// Its priority (higher wins a tie).
    pub priority: u32,
    /// It answered.
    pub answered: bool,
    /// It is in recovery (a standby).
    pub in_recovery: bool,
    /// Recorded as fenced.
    pub fenced: bool,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// Last WAL position received (flushed).
    pub receive_lsn: Option<Lsn>,
    /// Last WAL position replayed.
    pub replay_lsn: Option<Lsn>,
    /// It could be promoted.
    pub eligible: bool,
    /// Why not, when not.
    pub note: Option<String>,
}

impl CandidateView {
    /// The most WAL it has: received or replayed, whichever is further.
    pub fn position(&self) -> Option<Lsn> {
        self.receive_lsn.max(self.replay_lsn)
    }
}

/// A node other than the candidate, as the fencing decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PeerState {
    /// It answered and accepts writes.
    Writable,
    /// It answered and is in recovery.
    ReadOnly,
    /// Its host answered; no server runs.
    Stopped,
    /// Its host answered and its server runs, but it did not answer a query (hung,
    /// starting, or overloaded): it may accept writes again.
    Unresponsive,
    /// It could not be reached; `evidence` lists signs that its server still runs.
    Unreachable {
        /// Signs of life seen from elsewhere.
        evidence: Vec<String>,
    },
}

/// What fencing does before a promotion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FencePlan {
    /// Stop these servers (they must be confirmed stopped before the promotion).
    pub stop: Vec<String>,
    /// Write standby settings into these data directories, so a restart comes up
    /// read-only.
    pub demote: Vec<String>,
    /// Record these as fenced (`up` leaves them alone; `rejoin` brings them back).
    pub record: Vec<String>,
    /// What could not be made safe.
    pub warnings: Vec<String>,
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

/// Timings of a failover, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverTimings {
    /// Observing every node and choosing.
    pub observe_seconds: f64,
    /// Fencing.
    pub fence_seconds: f64,
    /// Promotion, until the new primary accepted writes.
    pub promote_seconds: f64,
    /// From the start of the command until the new primary accepts writes (with
    /// synchronous replication: until its synchronous standbys confirm commits).
    pub write_available_seconds: f64,
    /// The whole operation.
    pub total_seconds: f64,
}

/// What [`Deployment::failover`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// The primary that failed.
    pub old_primary: String,
    /// The promoted standby.
    pub new_primary: String,
    /// Timeline before.
    pub old_timeline: Option<u32>,
    /// Timeline after.
    pub new_timeline: Option<u32>,
    /// Every standby considered, and why it was or was not chosen.
    pub candidates: Vec<CandidateView>,
    /// Nodes fenced.
    pub fencing: Vec<FenceReport>,
    /// WAL not on the new primary.
    pub loss: LossReport,
    /// Timings.
    pub timings: FailoverTimings,
    /// Every other node.
    pub standbys: Vec<StandbyReport>,
    /// Slots created (`node:slot`).
    pub slots_created: Vec<String>,
    /// Synchronous replication.
    pub sync: SyncReport,
    /// Every step, in order.
    pub actions: Vec<Action>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// Things left to fix (the new primary is in place).
    pub problems: Vec<String>,
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

/// Timings of a rejoin, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RejoinTimings {
    /// Stopping it.
    pub stop_seconds: f64,
    /// Bringing it to a clean shutdown for pg_rewind.
    pub prepare_seconds: f64,
    /// pg_rewind.
    pub rewind_seconds: f64,
    /// The clone.
    pub clone_seconds: f64,
    /// From its start until it streamed.
    pub streaming_seconds: f64,
    /// The whole operation.
    pub total_seconds: f64,
}

/// What [`Deployment::rejoin`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RejoinReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// The node.
    pub node: String,
    /// The current primary.
    pub primary: String,
    /// Its upstream now.
    pub upstream: String,
    /// Whether anything changed.
    pub changed: bool,
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
    /// Timings.
    pub timings: RejoinTimings,
    /// Every step, in order.
    pub actions: Vec<Action>,
    /// Things to know.
    pub warnings: Vec<String>,
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
// Decisions (pure)

/// Marks each standby eligible or not, and chooses the one to promote: the most WAL
/// (received, then replayed), then the highest priority, then the first name. With
/// `requested`, that node, refused (unless `force`) when another eligible standby has more
/// WAL: promoting it would discard WAL that standby has. Returns the index in `views`.
pub fn choose_candidate(views: &mut [CandidateView], timeline: Option<u32>, requested: Option<&str>, force: bool) -> Result<usize, String> {
    for v in views.iter_mut() {
        v.note = if !v.answered {
            Some("not reachable".into())
        } else if !v.in_recovery {
            Some("not in recovery (it accepts writes)".into())
        } else if v.fenced {
            Some("fenced: bring it back with `pgrepl rejoin` first".into())
        } else if v.position().is_none() {
            Some("reports no WAL position".into())
        } else {
            match (v.timeline, timeline) {
                (Some(t), Some(c)) if t != c => Some(format!("on timeline {t}, the cluster is on {c}")),
                _ => None,
            }
        };
        v.eligible = v.note.is_none();
    }
    let order = |a: &CandidateView, b: &CandidateView| {
        a.position().cmp(&b.position()).then(a.replay_lsn.cmp(&b.replay_lsn)).then(a.priority.cmp(&b.priority)).then(b.node.cmp(&a.node))
    };
    let best = views.iter().enumerate().filter(|(_, v)| v.eligible).max_by(|a, b| order(a.1, b.1)).map(|(i, _)| i);
    match requested {
        None => best.ok_or_else(|| {
            let why = views.iter().map(|v| format!("{}: {}", v.node, v.note.clone().unwrap_or_default())).collect::<Vec<_>>().join("; ");
            format!("no standby can be promoted ({})", if why.is_empty() { "the cluster has no standby".into() } else { why })
        }),
        Some(r) => {
            let i = views.iter().position(|v| v.node == r).ok_or_else(|| format!("\"{r}\" is not a standby of this cluster"))?;
            if !views[i].eligible {
                return Err(format!("{r} cannot be promoted: {}", views[i].note.clone().unwrap_or_default()));
            }
            if let Some(b) = best {
                let (bp, rp) = (views[b].position(), views[i].position());
                if bp > rp && !force {
                    return Err(format!(
                        "{r} is {} bytes behind {} ({} received, {} has {}): promoting it would discard WAL {} has. Fail over to {}, or pass --force to accept the loss",
                        bp.unwrap_or_default().bytes_after(rp.unwrap_or_default()),
                        views[b].node,
                        rp.map(|l| l.to_string()).unwrap_or_default(),
                        views[b].node,
                        bp.map(|l| l.to_string()).unwrap_or_default(),
                        views[b].node,
                        views[b].node
                    ));
                }
            }
            Ok(i)
        }
    }
}

/// Decides what must be fenced before `candidate` is promoted. Refuses (without
/// `force`) while another node accepts writes, or while the old primary is unreachable
/// but shows signs of life; with `force`, writable nodes are stopped first (the caller
/// must confirm they stopped before promoting). The old primary is always recorded as
/// fenced, and demoted on disk where its host answers.
pub fn plan_fencing(old_primary: &str, candidate: &str, peers: &[(String, PeerState)], force: bool) -> Result<FencePlan, String> {
    let mut plan = FencePlan::default();
    let mut refusals = Vec::new();
    for (p, st) in peers.iter().filter(|(p, _)| p != candidate) {
        let is_old = p == old_primary;
        match st {
            PeerState::Writable if !force => refusals.push(format!(
                "{p} accepts writes: pgrepl never promotes while another node accepts writes. {}",
                if is_old {
                    format!("For a planned change use `pgrepl switchover --to {candidate}`; to stop {p} and fail over anyway, pass --force")
                } else {
                    format!("{p} is not the recorded primary ({old_primary}): see `pgrepl status`; --force stops it first")
                }
            )),
            PeerState::Writable => {
                plan.stop.push(p.clone());
                plan.demote.push(p.clone());
                plan.record.push(p.clone());
            }
            PeerState::Unresponsive if !force => refusals.push(format!(
                "{p}: its server runs but does not answer, and it may accept writes again; pass --force to stop it and fail over"
            )),
            PeerState::Unresponsive => {
                plan.stop.push(p.clone());
                plan.demote.push(p.clone());
                plan.record.push(p.clone());
            }
            // Alive but out of reach: it cannot be fenced, so even --force does not promote
            // (that would make two writable primaries).
            PeerState::Unreachable { evidence } if !evidence.is_empty() => refusals.push(format!(
                "{p} cannot be reached but looks alive ({}): it may still accept writes, and pgrepl cannot stop it{}. Restore access so pgrepl can stop it (then --force), or stop it yourself (power it off, or cut it off); once nothing streams from it, `pgrepl failover` proceeds",
                evidence.join("; "),
                if force { " (--force fences by stopping, which is impossible here)" } else { "" }
            )),
            PeerState::Unreachable { .. } if is_old => {
                plan.record.push(p.clone());
                plan.warnings.push(format!(
                    "{p} could not be reached: it is recorded as fenced; if it comes back, `pgrepl rejoin {p}` makes it a standby"
                ));
            }
            PeerState::Stopped if is_old => {
                plan.demote.push(p.clone());
                plan.record.push(p.clone());
            }
            PeerState::ReadOnly if is_old => {
                plan.stop.push(p.clone());
                plan.demote.push(p.clone());
                plan.record.push(p.clone());
            }
            _ => {}
        }
    }
    if !refusals.is_empty() {
        return Err(refusals.join("; "));
    }
    if !plan.record.iter().any(|p| p == old_primary) && old_primary != candidate {
        plan.record.push(old_primary.to_string());
    }
    Ok(plan)
}

/// Whether synchronous replication guarantees that the most advanced of the `compared`
/// standbys has every acknowledged commit: an acknowledged commit is on at least `count`
/// of the `n` named standbys, so any `n - count + 1` of them include one that has it.
pub fn sync_guarantee(sync: &Sync, compared: &[String]) -> bool {
    if sync.mode == SyncMode::Off || sync.standbys.is_empty() || sync.count == 0 {
        return false;
    }
    let n = sync.standbys.len();
    let reached = sync.standbys.iter().filter(|s| compared.contains(s)).count();
    reached + sync.count as usize > n
}

/// The loss of a failover from what is known: the old primary's end of WAL (exact, read
/// from its data directory), the position pgrepl recorded, the furthest position a standby
/// received (both lower bounds); the furthest wins.
pub fn account_loss(
    old_wal_end: Option<Lsn>,
    recorded: Option<Lsn>,
    standby_max: Option<Lsn>,
    new_start: Option<Lsn>,
    sync_held: bool,
) -> LossReport {
    let sources = [(LsnSource::OldPrimaryWal, old_wal_end), (LsnSource::Recorded, recorded), (LsnSource::StandbyReceived, standby_max)];
    let mut best: Option<(LsnSource, Lsn)> = None;
    for (s, l) in sources {
        if let Some(l) = l {
            if best.is_none_or(|(_, b)| l > b) {
                best = Some((s, l));
            }
        }
    }
    let exact = matches!(best, Some((LsnSource::OldPrimaryWal, _)));
    let lost = match (best, new_start) {
        (Some((_, l)), Some(s)) => Some(l.bytes_after(s)),
        _ => None,
    };
    let acknowledged = if sync_held { Some(0) } else { lost };
    let from = match best.map(|b| b.0) {
        Some(LsnSource::OldPrimaryWal) => "read from its own WAL",
        Some(LsnSource::Recorded) => "the last position pgrepl recorded; a lower bound",
        Some(LsnSource::StandbyReceived) => "the furthest position a standby received; a lower bound",
        None => "unknown",
    };
    let explanation = match (best, new_start, lost) {
        (Some((_, l)), Some(s), Some(b)) => {
            let ack = if sync_held {
                "no acknowledged commit lost (synchronous replication held)".to_string()
            } else if b == 0 {
                "no WAL lost".to_string()
            } else {
                format!("commits acknowledged in those {b} bytes are lost (asynchronous replication)")
            };
            format!(
                "the old primary's WAL ended at {l} ({from}); the new timeline starts at {s}: {b} bytes only the old primary had; {ack}"
            )
        }
        _ => format!(
            "the old primary's end of WAL is unknown{}",
            if sync_held { "; no acknowledged commit lost (synchronous replication held)" } else { "" }
        ),
    };
    LossReport {
        last_primary_lsn: best.map(|b| b.1),
        source: best.map(|b| b.0),
        exact,
        new_timeline_start: new_start,
        wal_lost_bytes: lost,
        sync_held,
        acknowledged_lost_bytes: acknowledged,
        explanation,
    }
}

/// Whether a node on timeline `node_tli`, whose WAL ends at `node_end`, can follow a
/// primary on `primary_tli` whose history file lists `history`.
pub fn divergence(node_tli: u32, node_end: Lsn, primary_tli: u32, history: &[HistoryEntry]) -> Divergence {
    if node_tli == primary_tli {
        return Divergence::Follows;
    }
    if node_tli > primary_tli {
        return Divergence::ForeignTimeline;
    }
    match history.iter().find(|h| h.parent == node_tli) {
        None => Divergence::ForeignTimeline,
        Some(h) if node_end <= h.switchpoint => Divergence::Follows,
        Some(h) => Divergence::Diverged { bytes: node_end.bytes_after(h.switchpoint) },
    }
}

/// Leaves `excluded` nodes (fenced, or gone) out of the synchronous standbys: the count
/// shrinks to what is left, and replication is asynchronous when nothing is, so commits
/// do not wait forever for standbys that cannot confirm. Returns what was degraded.
pub fn exclude_from_sync(cluster: &mut Cluster, excluded: &[String]) -> Option<String> {
    let s = &mut cluster.replication.sync;
    if s.mode == SyncMode::Off || excluded.is_empty() {
        return None;
    }
    let gone: Vec<String> = s.standbys.iter().filter(|n| excluded.contains(n)).cloned().collect();
    if gone.is_empty() {
        return None;
    }
    let available = s.standbys.len() - gone.len();
    if s.strict {
        // The spec asks for no acknowledged write without `count` standbys: keep waiting.
        return (available < s.count as usize).then(|| {
            format!(
                "{} synchronous standby(s) asked but only {available} available ({} fenced or unreachable): commits wait until enough are back (replication.sync.strict = true)",
                s.count,
                gone.join(", ")
            )
        });
    }
    s.standbys.retain(|n| !excluded.contains(n));
    let left = s.standbys.len() as u32;
    if left >= s.count {
        return None;
    }
    let asked = s.count;
    if left == 0 {
        s.mode = SyncMode::Off;
        s.count = 0;
        return Some(format!(
            "{asked} synchronous standby(s) asked but none is available ({} fenced or unreachable): commits are asynchronous until `pgrepl rejoin` brings a standby back",
            gone.join(", ")
        ));
    }
    s.count = left;
    Some(format!(
        "{asked} synchronous standbys asked but only {left} available ({} fenced or unreachable): commits wait for {left} until `pgrepl rejoin` brings the others back",
        gone.join(", ")
    ))
}

/// What status should mark: fenced nodes (from the recorded topology), nodes that accept
/// writes without being the primary (split brain), standbys on an older timeline than the
/// primary that do not stream (they cannot follow: `pgrepl rejoin`).
pub fn mark_nodes(status: &StatusReport, topology: &Topology) -> Vec<NodeMark> {
    let primary_name =
        topology.primary.clone().or_else(|| status.nodes.iter().find(|n| n.spec_role == Role::Primary).map(|n| n.name.clone()));
    let primary_tl = status.nodes.iter().find(|n| Some(&n.name) == primary_name.as_ref()).and_then(|n| n.timeline).or(topology.timeline);
    let mut out = Vec::new();
    for n in &status.nodes {
        let fenced = topology.fenced.contains(&n.name);
        let writable = n.state == NodeState::Running && n.role.as_deref() == Some("primary");
        let is_primary = Some(&n.name) == primary_name.as_ref();
        let old_timeline = n.role.as_deref() == Some("standby") && matches!((n.timeline, primary_tl), (Some(t), Some(p)) if t < p);
        let diverged = (writable && !is_primary) || (old_timeline && n.streaming != Some(true));
        let mut notes = Vec::new();
        if fenced {
            notes.push(format!("fenced by a failover: `pgrepl rejoin {}` brings it back as a standby", n.name));
        }
        if writable && !is_primary {
            notes.push(format!(
                "accepts writes but is not the primary ({}): split brain, `pgrepl rejoin {}` demotes it",
                primary_name.clone().unwrap_or_default(),
                n.name
            ));
        }
        if old_timeline {
            notes.push(format!(
                "on timeline {} while the primary is on {}{}",
                n.timeline.unwrap_or_default(),
                primary_tl.unwrap_or_default(),
                if n.streaming == Some(true) { "" } else { ": it does not follow, `pgrepl rejoin` it" }
            ));
        }
        if fenced || diverged || old_timeline {
            out.push(NodeMark { node: n.name.clone(), fenced, diverged, old_timeline, note: notes.join("; ") });
        }
    }
    out
}

// =======================================================================================
// Observation

#[derive(Debug, Clone, Default)]
struct Obs {
    host_ok: bool,
    running: bool,
    answered: bool,
    in_recovery: Option<bool>,
    timeline: Option<u32>,
    /// Primary: current position; standby: last replayed.
    lsn: Option<Lsn>,
    /// Standby: last received (flushed).
    receive: Option<Lsn>,
    /// Standby: walreceiver status (9.6+).
    receiver: Option<String>,
    senders: Vec<SenderRow>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct SenderRow {
    name: String,
    state: String,
}

impl Obs {
    fn writable(&self) -> bool {
        self.answered && self.in_recovery == Some(false)
    }

    fn standby(&self) -> bool {
        self.answered && self.in_recovery == Some(true)
    }

    fn streams_to(&self, name: &str) -> bool {
        self.senders.iter().any(|s| s.name == name && s.state == "streaming")
    }
}

fn probe_sql(caps: &Capabilities) -> String {
    let l = &caps.lsn;
    // A standby's timeline: what its walreceiver receives; while that restarts (the
    // primary just died), the newest timeline of the WAL segments it holds; else its last
    // restartpoint's (which lags behind a timeline switch).
    let received =
        if caps.wal_receiver_view { "(SELECT nullif(received_tli, 0)::text FROM pg_catalog.pg_stat_wal_receiver)" } else { "NULL" };
    let segments = format!(
        "(SELECT max(('x' || substr(f, 1, 8))::bit(32)::int)::text FROM pg_catalog.pg_ls_dir({}) f WHERE f ~ '^[0-9A-F]{{24}}$')",
        sql_literal(caps.wal_dir)
    );
    let restartpoint = if caps.control_functions { "(pg_catalog.pg_control_checkpoint()).timeline_id::text" } else { "NULL" };
    let tli = format!("coalesce({received}, {segments}, {restartpoint})");
    let status = if caps.wal_receiver_view { "(SELECT status FROM pg_catalog.pg_stat_wal_receiver)" } else { "NULL" };
    format!(
        "SELECT 'n', pg_catalog.pg_is_in_recovery(), \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{replay}()::text ELSE pg_catalog.{current}()::text END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{receive}()::text END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN {tli} ELSE 'x' || substr(pg_catalog.{walfile}(pg_catalog.{current}()), 1, 8) END, \
           {status};\n\
         SELECT 'r', application_name, state FROM pg_catalog.pg_stat_replication;\n",
        replay = l.last_replay,
        current = l.current,
        receive = l.last_receive,
        walfile = l.walfile_name,
    )
}

fn lsn_of(s: Option<String>) -> Option<Lsn> {
    s.and_then(|s| s.parse().ok())
}

async fn probe(h: &NodeHandle, port: u16, caps: &Capabilities) -> Obs {
    let mut o = Obs::default();
    // The query first: a server that answers runs. Only when it does not, ask its service.
    let answer = sql::query(&*h.transport, &h.layout, port, &probe_sql(caps), PROBE_TIMEOUT).await;
    if let Err(sql::QueryError::Transport(
        e @ (crate::transport::TransportError::Connect(_)
        | crate::transport::TransportError::Auth(_)
        | crate::transport::TransportError::HostKey(_)
        | crate::transport::TransportError::Io(_)),
    )) = &answer
    {
        // The host itself cannot be reached (asking its service would fail the same way).
        o.error = Some(format!("host unreachable: {e}"));
        return o;
    }
    if answer.is_err() {
        match is_running(h).await {
            Err(e) => {
                o.error = Some(format!("host unreachable: {e}"));
                return o;
            }
            Ok(r) => {
                o.host_ok = true;
                o.running = r;
            }
        }
    } else {
        o.host_ok = true;
        o.running = true;
    }
    if !o.running {
        return o;
    }
    match answer {
        Err(e) => o.error = Some(e.to_string()),
        Ok(rows) => {
            for r in rows {
                let f = |i: usize| r.get(i).cloned().flatten();
                match f(0).as_deref() {
                    Some("n") => {
                        o.answered = true;
                        o.in_recovery = Some(f(1).as_deref() == Some("t"));
                        o.lsn = lsn_of(f(2));
                        o.receive = lsn_of(f(3));
                        o.timeline = f(4).and_then(|t| match t.strip_prefix('x') {
                            Some(hex) => u32::from_str_radix(hex, 16).ok(),
                            None => t.parse().ok(),
                        });
                        o.receiver = f(5);
                    }
                    Some("r") => o.senders.push(SenderRow { name: f(1).unwrap_or_default(), state: f(2).unwrap_or_default() }),
                    _ => {}
                }
            }
        }
    }
    o
}

/// Observations in cluster order.
struct Observed(Vec<(String, Obs)>);

impl Observed {
    fn get(&self, name: &str) -> &Obs {
        static NONE: std::sync::OnceLock<Obs> = std::sync::OnceLock::new();
        self.0.iter().find(|(n, _)| n == name).map(|(_, o)| o).unwrap_or_else(|| NONE.get_or_init(Obs::default))
    }

    fn writable(&self) -> Vec<String> {
        self.0.iter().filter(|(_, o)| o.writable()).map(|(n, _)| n.clone()).collect()
    }
}

// =======================================================================================
// The executor

/// Everything an operation works with.
struct Op<'a> {
    d: &'a Deployment,
    cluster: Cluster,
    handles: Vec<NodeHandle>,
    unreachable: Vec<(String, String)>,
    caps: Capabilities,
    secrets: Secrets,
    progress: &'a dyn Progress,
    topology: Topology,
}

impl<'a> Op<'a> {
    async fn open(d: &'a Deployment, progress: &'a dyn Progress) -> Result<Op<'a>, Error> {
        let topology = d.topology().await?;
        // A host that cannot be reached must not stop a failover: each is connected on its own.
        let (cluster, handles, failed) = d.connect_partial().await?;
        let unreachable: Vec<(String, String)> = failed.into_iter().map(|(n, e)| (n, e.to_string())).collect();
        let caps =
            cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
        let secrets = d.secrets(false).await?;
        Ok(Op { d, cluster, handles, unreachable, caps, secrets, progress, topology })
    }

    fn run<'b>(&'b self, cluster: &'b Cluster) -> Run<'b> {
        Run { cluster, handles: &self.handles, secrets: &self.secrets, progress: self.progress, local_ports: self.d.local_ports }
    }

    fn handle(&self, name: &str) -> Option<&NodeHandle> {
        self.handles.iter().find(|h| h.name == name)
    }

    fn major(&self) -> String {
        self.caps.major.to_string()
    }

    async fn observe(&self) -> Observed {
        self.progress.started("cluster", "observe every node");
        let obs = join_all(self.cluster.nodes.iter().map(|n| async move {
            let o = match self.handle(&n.name) {
                Some(h) => probe(h, n.port, &self.caps).await,
                None => Obs {
                    error: Some(
                        self.unreachable
                            .iter()
                            .find(|(u, _)| *u == n.name)
                            .map(|(_, e)| format!("host unreachable: {e}"))
                            .unwrap_or_else(|| "no host".into()),
                    ),
                    ..Obs::default()
                },
            };
            (n.name.clone(), o)
        }))
        .await;
        self.progress.finished("cluster", "observe every node", "done");
        Observed(obs)
    }

    /// The cluster with `primary` as its primary, addresses kept, `excluded` nodes out of
    /// the synchronous standbys; and what was degraded.
    fn retarget(&self, primary: &str, excluded: &[String]) -> Result<(Cluster, Option<String>), Error> {
        let mut c = self.cluster.with_primary(primary)?;
        for n in &mut c.nodes {
            if n.address.is_none() {
                n.address = self.cluster.node(&n.name).and_then(|o| o.address.clone());
            }
        }
        let degraded = exclude_from_sync(&mut c, excluded);
        Ok((c, degraded))
    }

    fn render(&self, cluster: &Cluster, node: &str) -> Result<RenderedNode, Error> {
        let h = self.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))?;
        render_node(cluster, node, &h.layout, Some(&self.secrets))
    }

    async fn save(&self, t: &Topology) -> Result<(), Error> {
        self.d.save_topology(t).await
    }

    /// Every slot name pgrepl manages in this cluster (so it never drops a user's slot).
    fn managed_slots(&self, other: &Cluster) -> Vec<String> {
        let mut v: Vec<String> = self.cluster.nodes.iter().chain(other.nodes.iter()).filter_map(|n| n.slot.clone()).collect();
        v.extend(self.cluster.nodes.iter().map(|n| crate::default_slot_name(&n.name)));
        v.sort();
        v.dedup();
        v
    }
}

fn refused(node: &str, reason: impl Into<String>) -> Error {
    Error::Refused(Refusal { node: node.to_string(), reason: reason.into() })
}

fn unknown_node(cluster: &Cluster, name: &str) -> Error {
    refused(
        name,
        format!("no such node (the cluster has: {})", cluster.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")),
    )
}

fn act(actions: &mut Vec<Action>, node: &str, what: impl Into<String>, since: Instant) {
    actions.push(Action { node: node.to_string(), what: what.into(), seconds: since.elapsed().as_secs_f64() });
}

async fn query_one(h: &NodeHandle, port: u16, q: &str, action: &str) -> Result<Option<String>, Error> {
    sql::query_one(&*h.transport, &h.layout, port, q, PROBE_TIMEOUT).await.map_err(|e| sqlerr(&h.name, action, e))
}

/// Reads and checks pg_control (read again when caught mid-write).
async fn read_control(h: &NodeHandle, caps: &Capabilities) -> Result<ControlFile, Error> {
    let path = format!("{}/global/pg_control", h.layout.data_dir);
    let mut last = String::new();
    for _ in 0..CONTROL_READ_ATTEMPTS {
        match h.transport.read_file(&path).await.map_err(|e| tr(&h.name, "read pg_control", e))? {
            None => return Err(Error::node(&h.name, format!("{path} does not exist: there is no cluster in {}", h.layout.data_dir))),
            Some(b) => match pgcontrol::parse_control(&b, &caps.pg_control) {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            },
        }
        tokio::time::sleep(FAST_POLL).await;
    }
    Err(Error::node(&h.name, format!("could not read {path}: {last}")))
}

/// The newest timeline's file of each WAL segment in a node's WAL directory.
async fn wal_index(h: &NodeHandle, caps: &Capabilities, seg_size: u64) -> Result<std::collections::BTreeMap<u64, u32>, Error> {
    let dir = format!("{}/{}", h.layout.data_dir, caps.wal_dir);
    let ls = h
        .transport
        .run(&Command::new("ls").args(["-1", dir.as_str()]).user(h.layout.os_user.clone()))
        .await
        .map_err(|e| tr(&h.name, "list the WAL directory", e))?;
    let mut m = std::collections::BTreeMap::new();
    for n in ls.stdout.lines() {
        if let Some((tli, segno)) = pgcontrol::parse_wal_file_name(n.trim(), seg_size) {
            let e = m.entry(segno).or_insert(tli);
            *e = (*e).max(tli);
        }
    }
    Ok(m)
}

async fn read_wal_file(h: &NodeHandle, caps: &Capabilities, tli: u32, segno: u64, seg_size: u64) -> Result<Option<Vec<u8>>, Error> {
    let path = format!("{}/{}/{}", h.layout.data_dir, caps.wal_dir, pgcontrol::wal_file_name(tli, segno, seg_size));
    h.transport.read_file(&path).await.map_err(|e| tr(&h.name, &format!("read {path}"), e))
}

/// `n` bytes of a node's WAL at `at` (from the newest timeline's file of each segment);
/// `None` when a segment is not on disk any more.
async fn read_wal_bytes(h: &NodeHandle, caps: &Capabilities, at: Lsn, n: u64, seg_size: u64) -> Result<Option<Vec<u8>>, Error> {
    let files = wal_index(h, caps, seg_size).await?;
    let mut out = Vec::new();
    let mut pos = at.0;
    while (out.len() as u64) < n {
        let segno = pos / seg_size;
        let Some(&tli) = files.get(&segno) else { return Ok(None) };
        let Some(data) = read_wal_file(h, caps, tli, segno, seg_size).await? else { return Ok(None) };
        if data.len() as u64 != seg_size {
            return Ok(None);
        }
        let off = (pos % seg_size) as usize;
        let take = ((n - out.len() as u64) as usize).min(data.len() - off);
        out.extend_from_slice(&data[off..off + take]);
        pos += take as u64;
    }
    Ok(Some(out))
}

/// The end of a stopped node's WAL: records read forward from its last checkpoint, with
/// the timeline of the segment file it ends in and the segment size. `None` when this
/// major's WAL format is not read by pgrepl (≤9.4) or the checkpoint record is not on disk.
async fn scan_wal_end(h: &NodeHandle, caps: &Capabilities, control: &ControlFile) -> Result<Option<(WalEnd, u32, u64)>, Error> {
    if !caps.wal_end_scan {
        return Ok(None);
    }
    let mut seg_size = DEFAULT_SEG_SIZE;
    let mut files = wal_index(h, caps, seg_size).await?;
    let start = control.checkpoint.0 / seg_size;
    let Some(&tli) = files.get(&start) else { return Ok(None) };
    let Some(first) = read_wal_file(h, caps, tli, start, seg_size).await? else { return Ok(None) };
    if first.len() as u64 != seg_size {
        // Another segment size (initdb --wal-segsize): the file itself says which.
        let len = first.len() as u64;
        if !len.is_power_of_two() || !(1 << 20..=1 << 30).contains(&len) {
            return Ok(None);
        }
        seg_size = len;
        files = wal_index(h, caps, seg_size).await?;
    }
    let mut scanner = WalScanner::new(control.checkpoint, seg_size);
    let mut seg_tli: Vec<(u64, u32)> = Vec::new();
    for _ in 0..MAX_WAL_SCAN_SEGMENTS {
        let segno = scanner.next_segment();
        let Some(&tli) = files.get(&segno) else {
            scanner.finish();
            break;
        };
        let data = if segno == start && first.len() as u64 == seg_size {
            Some(first.clone())
        } else {
            read_wal_file(h, caps, tli, segno, seg_size).await?
        };
        let Some(data) = data else {
            scanner.finish();
            break;
        };
        seg_tli.push((segno, tli));
        if !scanner.feed(segno, &data) {
            break;
        }
    }
    Ok(scanner.end().map(|e| {
        let seg = e.last_record.0 / seg_size;
        let tli = seg_tli.iter().find(|(s, _)| *s == seg).map(|(_, t)| *t).unwrap_or(e.timeline).max(e.timeline);
        (e, tli, seg_size)
    }))
}

/// The history of timeline `tli` (empty for timeline 1), from the node's WAL directory.
async fn read_history(h: &NodeHandle, caps: &Capabilities, tli: u32) -> Result<Vec<HistoryEntry>, Error> {
    if tli <= 1 {
        return Ok(Vec::new());
    }
    let path = format!("{}/{}/{}", h.layout.data_dir, caps.wal_dir, pgcontrol::history_file_name(tli));
    match h.transport.read_file(&path).await.map_err(|e| tr(&h.name, "read the timeline history", e))? {
        Some(b) => Ok(pgcontrol::parse_history(&String::from_utf8_lossy(&b))),
        None => Err(Error::node(&h.name, format!("{path} is missing: the timeline history of timeline {tli} is unknown"))),
    }
}

/// The primary's timeline, from the WAL file name of its current position.
async fn primary_timeline(h: &NodeHandle, port: u16, caps: &Capabilities) -> Result<Option<u32>, Error> {
    let q = format!("SELECT substr(pg_catalog.{}(pg_catalog.{}()), 1, 8);", caps.lsn.walfile_name, caps.lsn.current);
    Ok(query_one(h, port, &q, "read the timeline").await?.and_then(|t| u32::from_str_radix(&t, 16).ok()))
}

async fn current_lsn(h: &NodeHandle, port: u16, caps: &Capabilities) -> Result<Option<Lsn>, Error> {
    let q = format!("SELECT pg_catalog.{}()::text;", caps.lsn.current);
    Ok(lsn_of(query_one(h, port, &q, "read the WAL position").await?))
}

/// The stop command in immediate mode (no shutdown checkpoint; for fencing only).
fn immediate_stop(r: &RenderedNode) -> Command {
    let mut c = Command::from_line(&r.commands.stop);
    for a in &mut c.args {
        if a == "fast" {
            *a = "immediate".into();
        }
    }
    c
}

/// Stops a node's server through its own service command; with `escalate`, in immediate
/// mode when the fast stop does not finish in time. Confirms it stopped.
async fn stop_server(h: &NodeHandle, r: &RenderedNode, timeout: Duration, escalate: bool) -> Result<(), Error> {
    let _ = h.transport.exec(&Command::from_line(&r.commands.stop).timeout(timeout)).await;
    if !is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
        return Ok(());
    }
    if escalate {
        let _ = h.transport.exec(&immediate_stop(r).timeout(timeout)).await;
        if !is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
            return Ok(());
        }
    }
    Err(Error::node(&h.name, "its server still runs after the stop command"))
}

/// A CHECKPOINT on a freshly promoted primary, once writes flow again (outside the write
/// gap). Until its first checkpoint the control file still names the old timeline (up to
/// 15 the end-of-recovery checkpoint is spread out), and a later `pg_rewind` against this
/// node would pick a wrong divergence point and fall back to a re-clone.
async fn checkpoint_after_promotion(h: &NodeHandle, port: u16, actions: &mut Vec<Action>, warnings: &mut Vec<String>) {
    let t = Instant::now();
    match sql::query(&*h.transport, &h.layout, port, "CHECKPOINT;", PROMOTE_DEADLINE).await {
        Ok(_) => act(actions, &h.name, "CHECKPOINT after the promotion", t),
        Err(e) => warnings.push(format!("{}: CHECKPOINT after the promotion failed: {e}", h.name)),
    }
}

/// Promotes a standby the way its major does (`r` rendered for it as a standby) and
/// waits until it accepts writes. The rendered command (`pg_promote(true, …)`, `pg_ctl
/// promote -w`) itself waits in 100 ms steps, so it runs in the background while the end of
/// recovery is polled every [`FAST_POLL`].
///
/// With `reload`, its configuration is reloaded first (in the same session when the
/// promotion is SQL), so the primary's settings written just before are in effect when it
/// accepts its first write.
async fn promote(h: &NodeHandle, port: u16, r: &RenderedNode, reload: bool) -> Result<(), Error> {
    if reload && !matches!(r.commands.promote, Some(Promote::Sql { .. })) {
        h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&h.name, "reload the configuration", e))?;
    }
    let call: tokio::task::JoinHandle<Result<(), Error>> = match &r.commands.promote {
        Some(Promote::Sql { sql: q }) => {
            let q = if reload { format!("SELECT pg_catalog.pg_reload_conf();\n{q}") } else { q.clone() };
            let h = h.clone();
            tokio::spawn(async move {
                let rows =
                    sql::query(&*h.transport, &h.layout, port, &q, PROMOTE_DEADLINE).await.map_err(|e| sqlerr(&h.name, "promote", e))?;
                if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("f") {
                    return Err(Error::Timeout { node: h.name.clone(), waited: PROMOTE_DEADLINE, waiting_for: "the promotion".into() });
                }
                Ok(())
            })
        }
        Some(Promote::Command { command }) => {
            let (h, c) = (h.clone(), Command::from_line(command).timeout(PROMOTE_DEADLINE));
            tokio::spawn(async move { h.transport.run(&c).await.map(|_| ()).map_err(|e| tr(&h.name, "promote (pg_ctl promote)", e)) })
        }
        Some(Promote::TriggerFile { path }) => {
            h.transport
                .write_file(path, b"promote\n", 0o600, Some(&h.layout.os_user))
                .await
                .map_err(|e| tr(&h.name, "create the trigger file", e))?;
            tokio::spawn(async { Ok(()) })
        }
        None => return Err(Error::node(&h.name, "no promotion method rendered (it is not a standby)")),
    };
    let start = Instant::now();
    let mut call = Some(call);
    loop {
        if let Ok(Some(v)) = sql::query_one(&*h.transport, &h.layout, port, "SELECT pg_catalog.pg_is_in_recovery();", PROBE_TIMEOUT).await {
            if v == "f" {
                return Ok(());
            }
        }
        if call.as_ref().is_some_and(|c| c.is_finished()) {
            // The command ended and recovery did not (yet): its error, if any, is the answer.
            match call.take().expect("checked").await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(Error::node(&h.name, format!("the promotion task failed: {e}"))),
            }
        }
        if start.elapsed() > PROMOTE_DEADLINE {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: "the end of recovery after promotion".into(),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until pg_control says the server shut down cleanly (its shutdown checkpoint is
/// written: nothing can write WAL any more), while its stop command runs in `stop`.
async fn wait_shutdown_checkpoint(
    h: &NodeHandle,
    caps: &Capabilities,
    stop: &tokio::task::JoinHandle<Result<(), Error>>,
    deadline: Duration,
) -> Result<ControlFile, Error> {
    let path = format!("{}/global/pg_control", h.layout.data_dir);
    let start = Instant::now();
    loop {
        let finished = stop.is_finished();
        if let Ok(Some(b)) = h.transport.read_file(&path).await {
            if let Ok(c) = pgcontrol::parse_control(&b, &caps.pg_control) {
                if c.state == pgcontrol::DbState::ShutDown {
                    return Ok(c);
                }
                if finished {
                    return Err(Error::node(&h.name, format!("its stop ended but pg_control says \"{}\", not a clean shutdown", c.state)));
                }
            }
        }
        if finished && start.elapsed() > Duration::from_secs(1) {
            return Err(Error::node(&h.name, "its stop command ended without a readable clean shutdown in pg_control"));
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout { node: h.name.clone(), waited: start.elapsed(), waiting_for: "the shutdown checkpoint".into() });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until the standby has replayed past `target`; returns its replay position.
async fn wait_replayed_past(h: &NodeHandle, port: u16, caps: &Capabilities, target: Lsn, deadline: Duration) -> Result<Lsn, Error> {
    let q = format!("SELECT pg_catalog.{}()::text;", caps.lsn.last_replay);
    let start = Instant::now();
    loop {
        if let Ok(Some(l)) = sql::query_one(&*h.transport, &h.layout, port, &q, PROBE_TIMEOUT).await.map(lsn_of) {
            if l > target {
                return Ok(l);
            }
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: format!("replay of the old primary's shutdown checkpoint at {target}"),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until at least `sync.count` synchronous standbys confirm commits on the primary.
async fn wait_sync_ready(h: &NodeHandle, port: u16, sync: &Sync, deadline: Duration) -> Result<(), Error> {
    if sync.mode == SyncMode::Off || sync.count == 0 {
        return Ok(());
    }
    let q = "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum');";
    let start = Instant::now();
    loop {
        if let Ok(Some(c)) = sql::query_one(&*h.transport, &h.layout, port, q, PROBE_TIMEOUT).await {
            if c.parse::<u32>().unwrap_or(0) >= sync.count {
                return Ok(());
            }
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: format!("{} synchronous standby(s) to confirm commits", sync.count),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Creates on `n` (a primary, or a standby about to be promoted: physical slots can be made
/// in recovery) the slots its standbys in `run.cluster` use, where missing, in one
/// statement. Returns the actions (`create slot <name>`).
async fn make_slots(run: &Run<'_>, n: &Node, h: &NodeHandle) -> Result<Vec<Action>, Error> {
    let wanted: Vec<String> = run.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).map(sql_literal).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let t = Instant::now();
    let q = format!(
        "SELECT (pg_catalog.pg_create_physical_replication_slot(w)).slot_name FROM unnest(ARRAY[{}]::text[]) w \
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = w);",
        wanted.join(", ")
    );
    let rows = run.sql(h, n.port, &q, "create replication slots").await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .map(|s| Action { node: n.name.clone(), what: format!("create slot {s}"), seconds: t.elapsed().as_secs_f64() })
        .collect())
}

/// Drops, on `n`, inactive physical slots pgrepl manages that none of its standbys uses
/// (a former primary keeps its standbys' slots, which would hold WAL forever).
async fn drop_stale_slots(run: &Run<'_>, n: &Node, h: &NodeHandle, managed: &[String]) -> Result<Vec<String>, Error> {
    let wanted: Vec<&str> = run.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).collect();
    let rows = run
        .sql(h, n.port, "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT active;", "list slots")
        .await?;
    let mut dropped = Vec::new();
    for s in rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        if managed.contains(&s) && !wanted.contains(&s.as_str()) {
            run.sql(h, n.port, &format!("SELECT pg_catalog.pg_drop_replication_slot({});", sql_literal(&s)), "drop a stale slot").await?;
            dropped.push(format!("{}:{s}", n.name));
        }
    }
    Ok(dropped)
}

/// Points a running or stopped standby at its upstream in `run.cluster`: files rewritten,
/// then a reload (13+) or a restart (≤12) when they changed, or a start when stopped.
async fn repoint(run: &Run<'_>, n: &Node, h: &NodeHandle, caps: &Capabilities, running: bool, prewritten: bool) -> Result<Repoint, Error> {
    let r = render_node(run.cluster, &n.name, &h.layout, Some(run.secrets))?;
    let changed = run.write_files(h, &r, true).await? || prewritten;
    if !running {
        run.start(n, h, &r).await?;
        return Ok(Repoint::Started);
    }
    if !changed {
        return Ok(Repoint::Unchanged);
    }
    match caps.conninfo_change {
        ChangeContext::Reload => {
            h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&n.name, "reload the configuration", e))?;
            Ok(Repoint::Reloaded)
        }
        ChangeContext::Restart => {
            h.transport
                .run(&Command::from_line(&r.commands.stop).timeout(SERVICE_TIMEOUT))
                .await
                .map_err(|e| tr(&n.name, "stop the server", e))?;
            run.start(n, h, &r).await?;
            Ok(Repoint::Restarted)
        }
    }
}

/// The `synchronous_standby_names` and `synchronous_commit` rendered for the primary.
fn sync_settings(r: &RenderedNode) -> (Option<String>, Option<String>) {
    let get = |k: &str| r.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim_matches('\'').to_string());
    (get("synchronous_standby_names"), get("synchronous_commit"))
}

/// The standbys' reports once the new primary is in place: each non-fenced node pointed
/// at its upstream (`known_follow` nodes are started without checking their WAL; other
/// stopped nodes only when their WAL fits the new history), slots made and cleaned, the
/// synchronous standbys waited for, streaming confirmed.
struct Converged {
    standbys: Vec<StandbyReport>,
    created: Vec<String>,
    dropped: Vec<String>,
    sync_ready: Option<Duration>,
    warnings: Vec<String>,
    problems: Vec<String>,
}

impl Op<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn converge(
        &self,
        new: &Cluster,
        obs: &Observed,
        fenced: &[String],
        known_follow: &[String],
        prewritten: &[String],
        promoted_at: Instant,
        actions: &mut Vec<Action>,
    ) -> Converged {
        let run = self.run(new);
        let primary = new.primary();
        let mut out = Converged {
            standbys: Vec::new(),
            created: Vec::new(),
            dropped: Vec::new(),
            sync_ready: None,
            warnings: Vec::new(),
            problems: Vec::new(),
        };
        let Some(ph) = self.handle(&primary.name) else {
            out.problems.push(format!("{}: its host cannot be reached", primary.name));
            return out;
        };
        // Slots (normally made before the promotion already).
        match make_slots(&run, primary, ph).await {
            Ok(a) => {
                out.created.extend(a.iter().map(|a| format!("{}:{}", a.node, a.what.trim_start_matches("create slot "))));
                actions.extend(a);
            }
            Err(e) => out.problems.push(format!("{}: creating slots failed: {e}", primary.name)),
        }
        let others: Vec<&Node> = new.nodes.iter().filter(|n| n.name != primary.name).collect();
        let repoints = join_all(others.iter().map(|n| {
            let run = &run;
            async move {
                let t = Instant::now();
                let upstream = n.upstream.clone().unwrap_or_default();
                let mut rep =
                    StandbyReport { node: n.name.clone(), upstream, method: Repoint::Skipped, seconds: 0.0, streaming: false, error: None };
                if fenced.contains(&n.name) {
                    rep.error = Some(format!("fenced: `pgrepl rejoin {}` brings it back", n.name));
                    return (rep, None);
                }
                let Some(h) = self.handle(&n.name) else {
                    rep.error = Some("its host cannot be reached; `pgrepl up` points it at the new primary once it can".into());
                    return (rep, None);
                };
                let o = obs.get(&n.name);
                let running = is_running(h).await.unwrap_or(o.running);
                if !running && !known_follow.contains(&n.name) {
                    // A stopped node starts only if its WAL fits the new history.
                    match self.fits_history(h, primary, ph).await {
                        Ok((Divergence::Follows, _)) => {}
                        Ok((d, _)) => {
                            rep.error =
                                Some(format!("its WAL does not fit the new primary's history ({d:?}): run `pgrepl rejoin {}`", n.name));
                            return (rep, None);
                        }
                        Err(e) => {
                            rep.error = Some(format!("left stopped: {e}"));
                            return (rep, None);
                        }
                    }
                }
                if running && o.answered && o.in_recovery == Some(false) {
                    rep.error = Some(format!("it accepts writes: run `pgrepl rejoin {}`", n.name));
                    return (rep, None);
                }
                let mut running = running;
                if running && known_follow.contains(&n.name) {
                    // The old primary's stop is still finishing: wait for it before starting it again.
                    let t = Instant::now();
                    while running && t.elapsed() < SERVICE_TIMEOUT {
                        tokio::time::sleep(FAST_POLL).await;
                        running = is_running(h).await.unwrap_or(true);
                    }
                }
                match repoint(run, n, h, &self.caps, running, prewritten.contains(&n.name)).await {
                    Ok(m) => {
                        rep.method = m;
                        rep.seconds = t.elapsed().as_secs_f64();
                        let what = match m {
                            Repoint::Unchanged => None,
                            Repoint::Reloaded => Some(format!("point at {} (reload)", rep.upstream)),
                            Repoint::Restarted => Some(format!("point at {} (restart)", rep.upstream)),
                            Repoint::Started => Some(format!("start as a standby of {}", rep.upstream)),
                            Repoint::Skipped => None,
                        };
                        (rep, what.map(|w| Action { node: n.name.clone(), what: w, seconds: t.elapsed().as_secs_f64() }))
                    }
                    Err(e) => {
                        rep.error = Some(e.to_string());
                        (rep, None)
                    }
                }
            }
        }));
        // Meanwhile: when synchronous standbys confirm commits, writes are possible again.
        let sync_wait = async {
            let r = wait_sync_ready(ph, primary.port, &new.replication.sync, SYNC_READY_DEADLINE).await;
            (r, promoted_at.elapsed())
        };
        let (results, (sync_res, sync_at)) = tokio::join!(repoints, sync_wait);
        for (rep, a) in results {
            actions.extend(a);
            out.standbys.push(rep);
        }
        match sync_res {
            Ok(()) => {
                if new.replication.sync.mode != SyncMode::Off {
                    out.sync_ready = Some(sync_at);
                }
            }
            Err(e) => out.problems.push(format!("{e}: commits wait until enough synchronous standbys stream")),
        }
        let waits = join_all(out.standbys.iter().filter(|s| s.method != Repoint::Skipped).map(|s| {
            let n = new.node(&s.node).expect("known").clone();
            let run = &run;
            async move { (n.name.clone(), run.wait_streaming(&n).await) }
        }))
        .await;
        for (name, w) in waits {
            let rep = out.standbys.iter_mut().find(|s| s.node == name).expect("known");
            match w {
                Ok(()) => rep.streaming = true,
                Err(e) => {
                    rep.error = Some(e.to_string());
                    out.problems.push(format!("{name}: not streaming: {e}"));
                }
            }
        }
        for s in &out.standbys {
            if s.method == Repoint::Skipped {
                if let Some(e) = &s.error {
                    out.warnings.push(format!("{}: {e}", s.node));
                }
            }
        }
        // Slots left on former upstreams hold WAL: drop them.
        let managed = self.managed_slots(new);
        for s in out.standbys.iter().filter(|s| s.streaming) {
            let n = new.node(&s.node).expect("known");
            if let Some(h) = self.handle(&n.name) {
                match drop_stale_slots(&run, n, h, &managed).await {
                    Ok(d) => out.dropped.extend(d),
                    Err(e) => out.warnings.push(format!("{}: stale slots not dropped: {e}", n.name)),
                }
            }
        }
        match drop_stale_slots(&run, primary, ph, &managed).await {
            Ok(d) => out.dropped.extend(d),
            Err(e) => out.warnings.push(format!("{}: stale slots not dropped: {e}", primary.name)),
        }
        for d in &out.dropped {
            actions.push(Action {
                node: d.split(':').next().unwrap_or_default().into(),
                what: format!("drop stale slot {d}"),
                seconds: 0.0,
            });
        }
        out
    }

    /// Fences one node as `plan` says: stopped (and confirmed stopped), standby settings
    /// written into its data directory. Refuses when it still accepts writes afterwards.
    async fn fence_node(&self, name: &str, plan: &FencePlan, new: &Cluster, obs: &Observed) -> Result<(FenceReport, Vec<Action>), Error> {
        let t = Instant::now();
        let mut actions = Vec::new();
        let n = self.cluster.node(name).expect("known");
        let mut fr =
            FenceReport { node: name.to_string(), outcome: FenceOutcome::RecordedOnly, demoted: false, seconds: 0.0, detail: None };
        let Some(h) = self.handle(name) else {
            fr.detail = obs.get(name).error.clone();
            return Ok((fr, actions));
        };
        if plan.stop.iter().any(|s| s == name) {
            self.progress.started(name, "fence: stop");
            let r = self.render(&self.cluster, name)?;
            let stopped = stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await;
            self.progress.finished(name, "fence: stop", if stopped.is_ok() { "stopped" } else { "FAILED" });
            if let Err(e) = stopped {
                return Err(refused(
                    name,
                    format!("it could not be stopped ({e}); nothing was promoted, because it may still accept writes"),
                ));
            }
            fr.outcome = FenceOutcome::Stopped;
            act(&mut actions, name, "fence: stop", t);
        } else if obs.get(name).host_ok {
            fr.outcome = FenceOutcome::NotRunning;
        }
        if plan.demote.iter().any(|s| s == name) {
            // Standby settings in its data directory: if anything starts it, it is read-only.
            let demoted = async {
                if is_running(h).await.map_err(|e| tr(name, "check whether the server runs", e))? {
                    return Err(Error::node(name, "its server runs"));
                }
                if !matches!(self.run(new).data_dir(h).await?, DataDir::Cluster { .. }) {
                    return Err(Error::node(name, "no cluster in its data directory"));
                }
                let r = self.render(new, name)?;
                self.run(new).write_files(h, &r, true).await
            }
            .await;
            match demoted {
                Ok(_) => {
                    fr.demoted = true;
                    act(&mut actions, name, "fence: standby settings written (it cannot start as a primary)", t);
                }
                Err(e) => fr.detail = Some(format!("standby settings not written: {e}")),
            }
        }
        // Never promote while it still answers as a primary.
        if fr.outcome == FenceOutcome::Stopped
            && is_running(h).await.unwrap_or(false)
            && query_one(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check").await.ok().flatten().as_deref() == Some("f")
        {
            return Err(refused(name, "it still accepts writes after fencing; nothing was promoted"));
        }
        fr.seconds = t.elapsed().as_secs_f64();
        Ok((fr, actions))
    }

    /// Whether a stopped node's WAL fits the history of `primary` (running); with its end of WAL.
    async fn fits_history(&self, h: &NodeHandle, primary: &Node, ph: &NodeHandle) -> Result<(Divergence, Option<(Lsn, u32)>), Error> {
        let control = read_control(h, &self.caps).await?;
        let ptl =
            primary_timeline(ph, primary.port, &self.caps).await?.ok_or_else(|| Error::node(&primary.name, "its timeline is unknown"))?;
        let history = read_history(ph, &self.caps, ptl).await?;
        let scanned = scan_wal_end(h, &self.caps, &control).await?;
        let end = match &scanned {
            Some((e, tli, _)) => Some((e.end, *tli)),
            // Without a scan, a clean shutdown's checkpoint is its last record.
            None if control.state.is_clean_shutdown() => Some((Lsn(control.checkpoint.0 + 1), control.timeline)),
            None => None,
        };
        let Some((end_lsn, tli)) = end else {
            return Err(Error::node(&h.name, "the end of its WAL could not be read"));
        };
        let mut verdict = divergence(tli, end_lsn, ptl, &history);
        // Timelines can agree while the contents do not: a standby started without its
        // standby settings becomes a primary on the same timeline and writes its own WAL.
        if let (Divergence::Follows, Some((e, _, seg_size))) = (verdict, &scanned) {
            let plsn = current_lsn(ph, primary.port, &self.caps).await?;
            verdict = if tli == ptl && plsn.is_some_and(|p| p < e.end) {
                // Ahead of the primary on its own timeline: WAL nobody else wrote.
                Divergence::Conflicting
            } else {
                // Its last record (the header holds the previous record's position and a CRC
                // of the whole record) must be the same bytes in the primary's WAL.
                let n = e.end.bytes_after(e.last_record).min(64);
                let mine = read_wal_bytes(h, &self.caps, e.last_record, n, *seg_size).await?;
                let theirs = read_wal_bytes(ph, &self.caps, e.last_record, n, *seg_size).await?;
                match (mine, theirs) {
                    (Some(a), Some(b)) if a == b => Divergence::Follows,
                    (Some(_), Some(_)) => Divergence::Conflicting,
                    _ => Divergence::Unverifiable,
                }
            };
        }
        Ok((verdict, Some((end_lsn, tli))))
    }
}

// =======================================================================================
// Switchover

impl SwitchoverReport {
    fn new(cluster: &Cluster, major: String, from: &str, to: &str) -> Self {
        SwitchoverReport {
            cluster: cluster.name.clone(),
            major,
            from: from.to_string(),
            to: to.to_string(),
            changed: false,
            old_timeline: None,
            new_timeline: None,
            shutdown_checkpoint: None,
            timings: SwitchoverTimings::default(),
            standbys: Vec::new(),
            slots_created: Vec::new(),
            slots_dropped: Vec::new(),
            sync: SyncReport::default(),
            actions: Vec::new(),
            warnings: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn absorb(&mut self, c: Converged) {
        self.standbys = c.standbys;
        self.slots_created.extend(c.created);
        self.slots_dropped = c.dropped;
        self.sync.ready_seconds = c.sync_ready.map(|d| d.as_secs_f64());
        self.warnings.extend(c.warnings);
        self.problems.extend(c.problems);
    }
}

impl Deployment {
    /// Planned switchover to standby `to`, with no acknowledged write lost: the candidate
    /// must be streaming and caught up; the primary is stopped cleanly (its shutdown
    /// checkpoint reaches the standbys); once the candidate has replayed that checkpoint
    /// it is promoted; the other standbys follow it (reload 13+, restart before) and the
    /// old primary restarts as its standby, without re-cloning; slots and synchronous
    /// standbys move with it. A switchover to the current primary converges the standbys
    /// and otherwise changes nothing. If the candidate cannot take over before its
    /// promotion, the old primary is started again as the primary.
    pub async fn switchover(&self, to: &str, progress: &dyn Progress) -> Result<SwitchoverReport, Error> {
        let t0 = Instant::now();
        let op = Op::open(self, progress).await?;
        let cluster = &op.cluster;
        let caps = op.caps;
        let target = cluster.node(to).ok_or_else(|| unknown_node(cluster, to))?.clone();
        let old = cluster.primary().name.clone();
        let obs = op.observe().await;
        let writable = obs.writable();
        let mut report = SwitchoverReport::new(cluster, op.major(), &old, to);
        let mut topo = op.topology.clone();

        match writable.as_slice() {
            [w] if w == to => {
                // Already the primary (again, or after an interrupted switchover): converge.
                report.from = if old == to { to.to_string() } else { old.clone() };
                let (new, degraded) = op.retarget(to, &topo.fenced)?;
                let h = op.handle(to).expect("it answered");
                report.new_timeline = primary_timeline(h, target.port, &caps).await?;
                report.old_timeline = report.new_timeline;
                if old != to || topo.primary.as_deref() != Some(to) || topo.timeline != report.new_timeline {
                    topo.primary = Some(to.to_string());
                    topo.timeline = report.new_timeline;
                    op.save(&topo).await?;
                }
                let r = op.render(&new, to)?;
                let run = op.run(&new);
                if run.write_files(h, &r, false).await? {
                    let t = Instant::now();
                    run.apply_config(&target, h, &r, &mut report.actions).await?;
                    act(&mut report.actions, to, "settings of the primary", t);
                }
                (report.sync.standby_names, report.sync.commit) = sync_settings(&r);
                report.sync.degraded = degraded;
                let c = op.converge(&new, &obs, &topo.fenced, &[], &[], Instant::now(), &mut report.actions).await;
                report.absorb(c);
                report.changed = old != to || !report.actions.is_empty();
                report.timings.total_seconds = t0.elapsed().as_secs_f64();
                return Ok(report);
            }
            [w] if *w == old => {}
            [] => {
                return Err(refused(
                    &old,
                    format!(
                        "no node accepts writes ({}: {}): a switchover needs a running primary; use `pgrepl failover` when the primary is gone",
                        old,
                        obs.get(&old).error.clone().unwrap_or_else(|| "not running".into())
                    ),
                ));
            }
            [w] => {
                return Err(refused(
                    w,
                    format!(
                        "{w} accepts writes but the recorded primary is {old}: record the real primary first with `pgrepl switchover --to {w}`"
                    ),
                ));
            }
            many => {
                return Err(refused(
                    to,
                    format!(
                        "{} nodes accept writes ({}): split brain. Decide which one is the primary, then `pgrepl rejoin` the others",
                        many.len(),
                        many.join(", ")
                    ),
                ));
            }
        }

        // Preflight: the candidate is a healthy, caught-up standby on the primary's timeline.
        if topo.fenced.iter().any(|f| f == to) {
            return Err(refused(to, format!("{to} is fenced by a failover: bring it back with `pgrepl rejoin {to}` first")));
        }
        let co = obs.get(to);
        let po = obs.get(&old);
        if !co.standby() {
            return Err(refused(
                to,
                format!("{to} is not a running standby ({})", co.error.clone().unwrap_or_else(|| "not running".into())),
            ));
        }
        let up = target.upstream.clone().unwrap_or_default();
        let streaming = obs.get(&up).streams_to(to) || co.receiver.as_deref() == Some("streaming");
        if !streaming {
            return Err(refused(to, format!("{to} does not stream from {up}: fix replication first (see `pgrepl status`)")));
        }
        if let (Some(a), Some(b)) = (co.timeline, po.timeline) {
            if a != b {
                return Err(refused(to, format!("{to} is on timeline {a}, the primary on {b}: `pgrepl rejoin {to}` first")));
            }
        }
        let lag = match (po.lsn, co.lsn) {
            (Some(p), Some(c)) => p.bytes_after(c),
            _ => 0,
        };
        if lag > SWITCHOVER_MAX_LAG_BYTES {
            return Err(refused(
                to,
                format!(
                    "{to} has replayed {lag} bytes less than {old} (at most {SWITCHOVER_MAX_LAG_BYTES} for a switchover): wait until it catches up"
                ),
            ));
        }
        report.old_timeline = po.timeline;
        for (n, e) in &op.unreachable {
            report.warnings.push(format!("{n}: cannot be reached ({e}); `pgrepl up` points it at {to} later"));
        }
        let fenced = topo.fenced.clone();
        let (new, degraded) = op.retarget(to, &fenced)?;
        report.sync.degraded = degraded;
        let run_new = op.run(&new);
        let ph = op.handle(&old).expect("it answered");
        let ch = op.handle(to).expect("it answered");
        let r_old_primary = op.render(cluster, &old)?;
        let r_candidate_standby = op.render(cluster, to)?;
        let r_candidate_primary = op.render(&new, to)?;
        (report.sync.standby_names, report.sync.commit) = sync_settings(&r_candidate_primary);

        // Slots the candidate's future standbys use, made while it is still a standby
        // (physical slots can be created in recovery), so they connect at once.
        match make_slots(&run_new, &target, ch).await {
            Ok(a) => {
                report.slots_created.extend(a.iter().map(|a| format!("{}:{}", a.node, a.what.trim_start_matches("create slot "))));
                report.actions.extend(a);
            }
            Err(e) => report.warnings.push(format!("{to}: slots not made before the promotion ({e}); made after it")),
        }

        // The other standbys' new settings, written now (applied after the promotion).
        let mut prewritten = Vec::new();
        for n in new.nodes.iter().filter(|n| n.name != old && n.name != to && !fenced.contains(&n.name) && obs.get(&n.name).standby()) {
            if let Some(h) = op.handle(&n.name) {
                let r = op.render(&new, &n.name)?;
                if run_new.write_files(h, &r, true).await? {
                    prewritten.push(n.name.clone());
                }
            }
        }
        // Puts every file back as it was before the switchover (when it is abandoned).
        let restore = |why: String| {
            let (op, cluster, prewritten, old, ph, r_old_primary) = (&op, cluster, &prewritten, &old, ph, &r_old_primary);
            async move {
                for name in prewritten {
                    if let (Some(h), Ok(r)) = (op.handle(name), op.render(cluster, name)) {
                        let _ = op.run(cluster).write_files(h, &r, true).await;
                    }
                }
                let back = if is_running(ph).await.unwrap_or(true) {
                    Ok(())
                } else {
                    op.run(cluster).start(cluster.node(old).expect("known"), ph, r_old_primary).await
                };
                Error::node(
                    old,
                    format!(
                        "the switchover was abandoned before any promotion: {why}; {old} {}",
                        if back.is_ok() { "runs as the primary, nothing changed" } else { "could NOT be started again: run `pgrepl up`" }
                    ),
                )
            }
        };
        // Little left to write at the shutdown checkpoint: a short window.
        let t = Instant::now();
        match op.run(cluster).sql(ph, cluster.node(&old).expect("known").port, "CHECKPOINT;", "checkpoint before the stop").await {
            Ok(_) => act(&mut report.actions, &old, "CHECKPOINT (a short shutdown checkpoint)", t),
            Err(e) => report.warnings.push(format!("{old}: CHECKPOINT before the stop failed: {e}")),
        }

        // The write-unavailable window starts: clean stop of the primary, in the background
        // while pg_control is watched for its shutdown checkpoint.
        progress.started(&old, "stop (clean: the shutdown checkpoint goes to the standbys)");
        let t_stop = Instant::now();
        let stop_task = {
            let (h, c) = (ph.clone(), Command::from_line(&r_old_primary.commands.stop).timeout(SWITCHOVER_STOP_TIMEOUT));
            tokio::spawn(async move { h.transport.run(&c).await.map(|_| ()).map_err(|e| tr(&h.name, "stop the primary", e)) })
        };
        let control = match wait_shutdown_checkpoint(ph, &caps, &stop_task, SWITCHOVER_STOP_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                progress.finished(&old, "stop (clean: the shutdown checkpoint goes to the standbys)", "failed");
                let stopped = stop_task.await;
                let why = match stopped {
                    Ok(Err(se)) => format!("{e} ({se})"),
                    _ => e.to_string(),
                };
                return Err(restore(why).await);
            }
        };
        report.timings.stop_seconds = t_stop.elapsed().as_secs_f64();
        progress.finished(&old, "stop (clean: the shutdown checkpoint goes to the standbys)", "shutdown checkpoint written");
        act(&mut report.actions, &old, format!("stop cleanly (shutdown checkpoint {})", control.checkpoint), t_stop);
        report.shutdown_checkpoint = Some(control.checkpoint);

        // The candidate replays the shutdown checkpoint: it then has every byte of WAL.
        progress.started(to, "replay the old primary's shutdown checkpoint");
        let t_catch = Instant::now();
        let caught = wait_replayed_past(ch, target.port, &caps, control.checkpoint, CATCHUP_DEADLINE).await;
        report.timings.catchup_seconds = t_catch.elapsed().as_secs_f64();
        progress.finished(to, "replay the old primary's shutdown checkpoint", if caught.is_ok() { "done" } else { "timed out" });
        if let Err(e) = caught {
            let _ = stop_task.await;
            return Err(restore(e.to_string()).await);
        }
        act(&mut report.actions, to, format!("replayed the shutdown checkpoint {}", control.checkpoint), t_catch);

        // Its settings as the primary (synchronous standbys, no primary_conninfo), then the promotion.
        let t_prom = Instant::now();
        progress.started(to, "promote");
        let reload = run_new.write_files(ch, &r_candidate_primary, false).await?;
        let promoted = promote(ch, target.port, &r_candidate_standby, reload).await;
        progress.finished(to, "promote", if promoted.is_ok() { "done" } else { "failed" });
        if let Err(e) = promoted {
            // Promoted after all (a slow confirmation)? Then go on; if not, the old primary takes back.
            let now_primary =
                query_one(ch, target.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the promotion").await.ok().flatten().as_deref()
                    == Some("f");
            if !now_primary {
                let _ = run_new.write_files(ch, &r_candidate_standby, false).await;
                let _ = ch.transport.run(&Command::from_line(&r_candidate_standby.commands.reload)).await;
                let _ = stop_task.await;
                return Err(restore(format!("the promotion of {to} failed ({e})")).await);
            }
        }
        report.timings.promote_seconds = t_prom.elapsed().as_secs_f64();
        report.timings.write_unavailable_seconds = t_stop.elapsed().as_secs_f64();
        let promoted_at = Instant::now();
        act(&mut report.actions, to, "promote", t_prom);
        topo.primary = Some(to.to_string());
        topo.timeline = report.old_timeline.map(|t| t + 1);
        topo.last_primary_lsn = Some(control.checkpoint.to_string());
        op.save(&topo).await?;
        report.changed = true;

        // The old primary follows the new one (it stopped cleanly at the fork point), the
        // other standbys are pointed at it.
        let c = op.converge(&new, &obs, &fenced, std::slice::from_ref(&old), &prewritten, promoted_at, &mut report.actions).await;
        report.absorb(c);
        if let Ok(Err(e)) = stop_task.await {
            report.warnings.push(format!("{old}: its stop command reported: {e}"));
        }
        report.new_timeline = primary_timeline(ch, target.port, &caps).await.ok().flatten();
        if report.new_timeline != topo.timeline {
            topo.timeline = report.new_timeline;
            let _ = op.save(&topo).await;
        }
        if let Some(s) = report.sync.ready_seconds {
            report.timings.write_unavailable_seconds = (t_stop.elapsed() - promoted_at.elapsed()).as_secs_f64() + s;
        }
        if let Ok(Some(l)) = current_lsn(ch, target.port, &caps).await {
            topo.last_primary_lsn = Some(l.to_string());
            let _ = op.save(&topo).await;
        }
        checkpoint_after_promotion(ch, target.port, &mut report.actions, &mut report.warnings).await;
        report.timings.total_seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}

// =======================================================================================
// Failover

impl Deployment {
    /// Failover when the primary is gone: the standby with the most WAL (or `opts.to`) is
    /// promoted after the old primary is fenced (stopped if it answers, demoted on disk
    /// where its host answers, always recorded as fenced). Refused while a node accepts
    /// writes or the old primary looks alive but cannot be reached, unless `opts.force`.
    /// The report says how much WAL only the old primary had, and whether synchronous
    /// replication guaranteed that no acknowledged commit was in it.
    pub async fn failover(&self, opts: FailoverOptions, progress: &dyn Progress) -> Result<FailoverReport, Error> {
        let t0 = Instant::now();
        let op = Op::open(self, progress).await?;
        let cluster = &op.cluster;
        let caps = op.caps;
        let old = cluster.primary().name.clone();
        if let Some(t) = &opts.to {
            if cluster.node(t).is_none() {
                return Err(unknown_node(cluster, t));
            }
        }
        let obs = op.observe().await;
        let mut topo = op.topology.clone();

        // Signs that an unreachable old primary still runs.
        let old_node = cluster.node(&old).expect("known").clone();
        let oo = obs.get(&old);
        let mut evidence = Vec::new();
        if !oo.host_ok {
            for n in cluster.downstream(&old) {
                if obs.get(&n.name).receiver.as_deref() == Some("streaming") {
                    evidence.push(format!("{} still streams from it", n.name));
                }
            }
            if let Some(a) = &old_node.address {
                if crate::local::port_in_use(a, old_node.port).await {
                    evidence.push(format!("its port {a}:{} accepts connections", old_node.port));
                }
            }
        }
        let mut standby_dirs = Vec::new();
        for n in &cluster.nodes {
            let o = obs.get(&n.name);
            if let (true, true, false, Some(h)) = (o.host_ok, o.running, o.answered, op.handle(&n.name)) {
                if n.name != old && matches!(op.run(cluster).data_dir(h).await, Ok(DataDir::Cluster { standby: true })) {
                    standby_dirs.push(n.name.clone());
                }
            }
        }
        let peers: Vec<(String, PeerState)> = cluster
            .nodes
            .iter()
            .map(|n| {
                let o = obs.get(&n.name);
                let st = if o.writable() {
                    PeerState::Writable
                } else if o.standby() {
                    PeerState::ReadOnly
                } else if o.host_ok && !o.running {
                    PeerState::Stopped
                } else if o.host_ok && o.running {
                    // Its server runs but did not answer: a standby (by its data directory)
                    // cannot accept writes; anything else may.
                    if standby_dirs.contains(&n.name) { PeerState::ReadOnly } else { PeerState::Unresponsive }
                } else {
                    PeerState::Unreachable { evidence: if n.name == old { evidence.clone() } else { Vec::new() } }
                };
                (n.name.clone(), st)
            })
            .collect();

        // The candidate: the most WAL among reachable standbys.
        // The cluster's timeline: the newest known (a standby on an older one did not follow).
        let cluster_tl = [topo.timeline, oo.timeline, obs.0.iter().filter(|(_, o)| o.standby()).filter_map(|(_, o)| o.timeline).max()]
            .into_iter()
            .flatten()
            .max();
        let mut views: Vec<CandidateView> = cluster
            .nodes
            .iter()
            .filter(|n| n.name != old)
            .map(|n| {
                let o = obs.get(&n.name);
                CandidateView {
                    node: n.name.clone(),
                    priority: n.priority,
                    answered: o.answered,
                    in_recovery: o.in_recovery == Some(true),
                    fenced: topo.fenced.contains(&n.name),
                    timeline: o.timeline,
                    receive_lsn: o.receive,
                    replay_lsn: o.lsn,
                    eligible: false,
                    note: None,
                }
            })
            .collect();
        let chosen = choose_candidate(&mut views, cluster_tl, opts.to.as_deref(), opts.force)
            .map_err(|e| refused(opts.to.as_deref().unwrap_or(&old), e))?;
        let cand = views[chosen].node.clone();
        let cand_node = cluster.node(&cand).expect("known").clone();
        let plan = plan_fencing(&old, &cand, &peers, opts.force).map_err(|e| refused(&old, e))?;
        let observe_seconds = t0.elapsed().as_secs_f64();

        let mut report = FailoverReport {
            cluster: cluster.name.clone(),
            major: op.major(),
            old_primary: old.clone(),
            new_primary: cand.clone(),
            old_timeline: cluster_tl,
            new_timeline: None,
            candidates: views.clone(),
            fencing: Vec::new(),
            loss: account_loss(None, None, None, None, false),
            timings: FailoverTimings { observe_seconds, ..Default::default() },
            standbys: Vec::new(),
            slots_created: Vec::new(),
            sync: SyncReport::default(),
            actions: Vec::new(),
            warnings: plan.warnings.clone(),
            problems: Vec::new(),
        };

        // Fencing: record first (so nothing restarts it as a primary), then stop and demote.
        let t_fence = Instant::now();
        let mut fenced = topo.fenced.clone();
        for r in &plan.record {
            if !fenced.contains(r) {
                fenced.push(r.clone());
            }
        }
        // Standbys that cannot confirm commits now are left out of the synchronous ones.
        let mut excluded = fenced.clone();
        excluded.extend(cluster.nodes.iter().filter(|n| n.name != cand && !obs.get(&n.name).standby()).map(|n| n.name.clone()));
        let (new, degraded) = op.retarget(&cand, &excluded)?;
        report.sync.degraded = degraded;
        topo.fenced = fenced.clone();
        op.save(&topo).await?;
        // Fencing, and meanwhile the candidate's preparation: its standbys' slots (physical
        // slots can be made in recovery) and its settings as the primary (not applied yet).
        let ch = op.handle(&cand).expect("it answered");
        let run_new = op.run(&new);
        let r_standby = op.render(cluster, &cand)?;
        let r_primary = op.render(&new, &cand)?;
        (report.sync.standby_names, report.sync.commit) = sync_settings(&r_primary);
        let fencing = async {
            let mut out = Vec::new();
            for name in &plan.record {
                out.push(op.fence_node(name, &plan, &new, &obs).await?);
            }
            Ok::<_, Error>(out)
        };
        // The other standbys' settings pointing at the candidate, written now (applied
        // after the promotion; put back if nothing is promoted).
        let others: Vec<&Node> =
            new.nodes.iter().filter(|n| n.name != cand && !fenced.contains(&n.name) && obs.get(&n.name).standby()).collect();
        let prewrite = async {
            let mut done = Vec::new();
            for n in &others {
                if let (Some(h), Ok(r)) = (op.handle(&n.name), op.render(&new, &n.name)) {
                    if run_new.write_files(h, &r, true).await.unwrap_or(false) {
                        done.push(n.name.clone());
                    }
                }
            }
            done
        };
        let put_back = |names: Vec<String>| {
            let op = &op;
            async move {
                for name in names {
                    if let (Some(h), Ok(r)) = (op.handle(&name), op.render(cluster, &name)) {
                        let _ = op.run(cluster).write_files(h, &r, true).await;
                    }
                }
            }
        };
        let prepare = async { tokio::join!(make_slots(&run_new, &cand_node, ch), run_new.write_files(ch, &r_primary, false), prewrite) };
        let (fenced_nodes, (slots, written, prewritten)) = tokio::join!(fencing, prepare);
        let reload = match (fenced_nodes, written) {
            (Ok(f), Ok(w)) => {
                for (fr, a) in f {
                    report.actions.extend(a);
                    report.fencing.push(fr);
                }
                w
            }
            (f, _) => {
                // Nothing is promoted: the candidate and the standbys keep their settings.
                let _ = run_new.write_files(ch, &r_standby, false).await;
                put_back(prewritten).await;
                return Err(f.err().unwrap_or_else(|| Error::node(&cand, "its settings as the primary could not be written")));
            }
        };
        report.timings.fence_seconds = t_fence.elapsed().as_secs_f64();
        match slots {
            Ok(a) => {
                report.slots_created.extend(a.iter().map(|a| format!("{}:{}", a.node, a.what.trim_start_matches("create slot "))));
                report.actions.extend(a);
            }
            Err(e) => report.warnings.push(format!("{cand}: slots not made before the promotion ({e}); made after it")),
        }

        // Promotion.
        let t_prom = Instant::now();
        progress.started(&cand, "promote");
        let promoted = promote(ch, cand_node.port, &r_standby, reload).await;
        progress.finished(&cand, "promote", if promoted.is_ok() { "done" } else { "failed" });
        if let Err(e) = promoted {
            let now_primary = query_one(ch, cand_node.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the promotion")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("f");
            if !now_primary {
                let _ = run_new.write_files(ch, &r_standby, false).await;
                put_back(prewritten).await;
                return Err(Error::node(
                    &cand,
                    format!("promotion failed ({e}); the old primary stays fenced; run `pgrepl failover` again"),
                ));
            }
        }
        report.timings.promote_seconds = t_prom.elapsed().as_secs_f64();
        report.timings.write_available_seconds = t0.elapsed().as_secs_f64();
        let promoted_at = Instant::now();
        act(&mut report.actions, &cand, "promote", t_prom);
        report.new_timeline = primary_timeline(ch, cand_node.port, &caps).await.ok().flatten();
        let new_start = match report.new_timeline {
            Some(tli) => read_history(ch, &caps, tli).await.ok().and_then(|h| h.last().map(|e| e.switchpoint)),
            None => None,
        };
        topo.primary = Some(cand.clone());
        topo.timeline = report.new_timeline;
        topo.last_primary_lsn = new_start.map(|l| l.to_string());
        op.save(&topo).await?;

        // The other standbys follow the new primary.
        let c = op.converge(&new, &obs, &fenced, &[], &prewritten, promoted_at, &mut report.actions).await;
        report.standbys = c.standbys;
        report.slots_created.extend(c.created);
        report.sync.ready_seconds = c.sync_ready.map(|d| d.as_secs_f64());
        if let Some(s) = c.sync_ready {
            report.timings.write_available_seconds += s.as_secs_f64();
        }
        report.warnings.extend(c.warnings);
        report.problems.extend(c.problems);

        // Loss: the old primary's own WAL when its host answers (it is stopped now).
        let old_end = match op.handle(&old) {
            Some(h) if !is_running(h).await.unwrap_or(true) => match read_control(h, &caps).await {
                Ok(c) => match scan_wal_end(h, &caps, &c).await {
                    Ok(e) => e.map(|(e, _, _)| e.end),
                    Err(e) => {
                        report.warnings.push(format!("{old}: its WAL could not be read ({e})"));
                        None
                    }
                },
                Err(e) => {
                    report.warnings.push(format!("{old}: {e}"));
                    None
                }
            },
            _ => None,
        };
        let recorded = op.topology.last_primary_lsn.as_deref().and_then(|l| l.parse().ok());
        let standby_max = views.iter().filter(|v| v.answered && v.in_recovery).filter_map(|v| v.position()).max();
        let chosen_pos = views[chosen].position();
        let compared: Vec<String> =
            views.iter().filter(|v| v.answered && v.in_recovery && v.position() <= chosen_pos).map(|v| v.node.clone()).collect();
        let held = sync_guarantee(&cluster.replication.sync, &compared);
        report.loss = account_loss(old_end, recorded, standby_max, new_start, held);
        if let Ok(Some(l)) = current_lsn(ch, cand_node.port, &caps).await {
            topo.last_primary_lsn = Some(l.to_string());
            let _ = op.save(&topo).await;
        }
        checkpoint_after_promotion(ch, cand_node.port, &mut report.actions, &mut report.warnings).await;
        report.timings.total_seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}

// =======================================================================================
// Rejoin

impl Deployment {
    /// Brings `node` (a former primary, a fenced node, a diverged or stopped standby) back
    /// as a standby of its upstream: as it is when its WAL is a prefix of the primary's
    /// history, with pg_rewind when it diverged onto its own timeline (the cluster has
    /// checksums or wal_log_hints), with a fresh clone when rewind is impossible (no
    /// pg_rewind of its major, a superuser-only source across hosts on ≤10, a divergence on
    /// the timeline it shares with the primary) or fails. It is only ever started with
    /// standby settings, never writable. A node that already streams is left as it is.
    pub async fn rejoin(&self, node: &str, progress: &dyn Progress) -> Result<RejoinReport, Error> {
        let t0 = Instant::now();
        let op = Op::open(self, progress).await?;
        let cluster = &op.cluster;
        let caps = op.caps;
        let n = cluster.node(node).ok_or_else(|| unknown_node(cluster, node))?.clone();
        let primary = cluster.primary().clone();
        if n.name == primary.name {
            return Err(refused(
                node,
                format!("{node} is the current primary: there is nothing to rejoin (use `pgrepl switchover` to move the primary role)"),
            ));
        }
        let obs = op.observe().await;
        let writable = obs.writable();
        if !writable.contains(&primary.name) {
            return Err(refused(
                node,
                format!("the primary {} does not accept writes: run `pgrepl failover` first, then rejoin {node}", primary.name),
            ));
        }
        if let Some(w) = writable.iter().find(|w| **w != primary.name && **w != node) {
            return Err(refused(w, format!("{w} accepts writes too: rejoin {w} first")));
        }
        let h = op.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))?;
        let ph = op.handle(&primary.name).expect("it answered");
        let mut topo = op.topology.clone();
        let was_fenced = topo.fenced.iter().any(|f| f == node);
        // The cluster once it is back: it counts as a synchronous standby again.
        let remaining: Vec<String> = topo.fenced.iter().filter(|f| *f != node).cloned().collect();
        let mut target = cluster.clone();
        target.replication.sync =
            op.d.cluster.clone().with_primary(&primary.name).map(|c| c.replication.sync).unwrap_or(target.replication.sync);
        exclude_from_sync(&mut target, &remaining);
        let upstream = n.upstream.clone().unwrap_or_else(|| primary.name.clone());
        let mut report = RejoinReport {
            cluster: cluster.name.clone(),
            major: op.major(),
            node: node.to_string(),
            primary: primary.name.clone(),
            upstream: upstream.clone(),
            changed: false,
            method: RejoinMethod::AlreadyStreaming,
            reason: String::new(),
            divergence: None,
            node_wal_end: None,
            node_timeline: None,
            primary_timeline: obs.get(&primary.name).timeline,
            streaming: false,
            timings: RejoinTimings::default(),
            actions: Vec::new(),
            warnings: Vec::new(),
        };
        let run = op.run(&target);
        let o = obs.get(node);

        // Already a streaming standby: only the record changes.
        if o.standby() && obs.get(&upstream).streams_to(node) && o.timeline.is_none_or(|t| Some(t) == report.primary_timeline) {
            report.streaming = true;
            report.reason = format!("it already streams from {upstream}");
            if was_fenced {
                topo.fenced.retain(|f| f != node);
                op.save(&topo).await?;
                report.changed = true;
                report.reason.push_str("; it is no longer fenced");
                self.restore_sync(&op, &target, ph, &mut report).await;
            }
            report.timings.total_seconds = t0.elapsed().as_secs_f64();
            return Ok(report);
        }

        // Stop it (a writable former primary is demoted here).
        let r = op.render(&target, node)?;
        if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
            let t = Instant::now();
            progress.started(node, "stop");
            stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
            progress.finished(node, "stop", "stopped");
            report.timings.stop_seconds = t.elapsed().as_secs_f64();
            act(&mut report.actions, node, "stop", t);
            report.changed = true;
        }
        let un = cluster.node(&upstream).expect("known").clone();

        // How: as it is, rewind, or clone.
        let mut method = match run.data_dir(h).await? {
            DataDir::Missing => {
                report.reason = "its data directory is empty".into();
                RejoinMethod::Recloned
            }
            DataDir::Unknown => {
                return Err(refused(
                    node,
                    format!(
                        "{} holds files but no PostgreSQL cluster; pgrepl will not clone over them (move them away first)",
                        h.layout.data_dir
                    ),
                ));
            }
            DataDir::Cluster { .. } => {
                let pc = read_control(ph, &caps).await;
                let nc = read_control(h, &caps).await;
                match (pc, nc) {
                    (Ok(pc), Ok(nc)) if pc.system_identifier != nc.system_identifier => {
                        report.reason = format!(
                            "it is another database system (identifier {} vs the primary's {})",
                            nc.system_identifier, pc.system_identifier
                        );
                        RejoinMethod::Recloned
                    }
                    (_, Err(e)) => {
                        report.reason = format!("its pg_control could not be read ({e})");
                        RejoinMethod::Recloned
                    }
                    _ => match op.fits_history(h, &primary, ph).await {
                        Ok((d, end)) => {
                            report.divergence = Some(d);
                            report.node_wal_end = end.map(|e| e.0);
                            report.node_timeline = end.map(|e| e.1);
                            match d {
                                Divergence::Follows => {
                                    report.reason = "its WAL is a prefix of the primary's history".into();
                                    RejoinMethod::Restarted
                                }
                                Divergence::Diverged { bytes } => {
                                    report.reason =
                                        format!("its WAL goes {bytes} bytes past where its timeline ends in the primary's history");
                                    RejoinMethod::Rewound
                                }
                                Divergence::ForeignTimeline => {
                                    report.reason = "its timeline is not in the primary's history".into();
                                    RejoinMethod::Rewound
                                }
                                // pg_rewind finds divergence through timeline histories only: on
                                // a shared timeline it sees none and would leave the node's own
                                // WAL in place. A fresh clone is the only safe way back.
                                Divergence::Conflicting => {
                                    report.reason = "it has WAL of its own on a timeline it shares with the primary (it was written to as a primary): pg_rewind cannot see that divergence".into();
                                    RejoinMethod::Recloned
                                }
                                Divergence::Unverifiable => {
                                    report.reason =
                                        "whether its WAL matches the primary's cannot be checked (the primary no longer has that WAL)"
                                            .into();
                                    RejoinMethod::Recloned
                                }
                            }
                        }
                        Err(e) => {
                            report.reason = format!("whether it diverged is unknown ({e})");
                            RejoinMethod::Rewound
                        }
                    },
                }
            }
        };
        report.changed = true;
        let rewind_tool = self.rewind_tool(&op, h).await;
        if method == RejoinMethod::Rewound {
            if let Err(why) = &rewind_tool {
                report.reason.push_str(&format!("; {why}"));
                method = RejoinMethod::Recloned;
            }
        }

        // Its slot on the upstream, before it connects.
        if let Some(un_h) = op.handle(&upstream) {
            run.ensure_slots(&un, un_h).await.map(|a| report.actions.extend(a))?;
        }

        if method == RejoinMethod::Restarted {
            let t = Instant::now();
            run.write_files(h, &r, true).await?;
            run.start(&n, h, &r).await?;
            act(&mut report.actions, node, format!("start as a standby of {upstream}"), t);
            match run.wait_streaming(&n).await {
                Ok(()) => {
                    report.timings.streaming_seconds = t.elapsed().as_secs_f64();
                    report.streaming = true;
                }
                Err(e) => {
                    report.warnings.push(format!("it did not stream as it was ({e}); trying pg_rewind or a clone"));
                    stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                    method = if rewind_tool.is_ok() { RejoinMethod::Rewound } else { RejoinMethod::Recloned };
                }
            }
        }

        if method == RejoinMethod::Rewound {
            let tool = rewind_tool.as_ref().expect("checked").clone();
            match self.rewind(&op, &target, &n, h, &primary, ph, &r, &tool, &mut report).await {
                Ok(()) => {
                    let t = Instant::now();
                    run.start(&n, h, &r).await?;
                    act(&mut report.actions, node, format!("start as a standby of {upstream}"), t);
                    match run.wait_streaming(&n).await {
                        Ok(()) => {
                            report.timings.streaming_seconds = t.elapsed().as_secs_f64();
                            report.streaming = true;
                        }
                        Err(e) => {
                            report.warnings.push(format!("after pg_rewind it did not stream ({e}); cloning afresh"));
                            stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                            method = RejoinMethod::Recloned;
                        }
                    }
                }
                Err(e) => {
                    report.warnings.push(format!("pg_rewind failed ({e}); cloning afresh"));
                    if is_running(h).await.unwrap_or(true) {
                        stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                    }
                    method = RejoinMethod::Recloned;
                }
            }
        }

        if method == RejoinMethod::Recloned {
            if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
                return Err(refused(node, "its server runs; pgrepl will not clone over it"));
            }
            let t = Instant::now();
            run.prepare_dirs(h).await?;
            run.clone_standby(&n, h, &r, &mut report.actions).await?;
            report.timings.clone_seconds = t.elapsed().as_secs_f64();
            let t = Instant::now();
            run.start(&n, h, &r).await?;
            act(&mut report.actions, node, format!("start as a standby of {upstream}"), t);
            run.wait_streaming(&n).await?;
            report.timings.streaming_seconds = t.elapsed().as_secs_f64();
            report.streaming = true;
        }
        report.method = method;

        // Slots copied from its old life hold WAL: drop them.
        let managed = op.managed_slots(&target);
        match drop_stale_slots(&run, &n, h, &managed).await {
            Ok(d) => {
                for s in d {
                    report.actions.push(Action { node: node.into(), what: format!("drop stale slot {s}"), seconds: 0.0 });
                }
            }
            Err(e) => report.warnings.push(format!("stale slots not dropped: {e}")),
        }
        if was_fenced {
            topo.fenced.retain(|f| f != node);
            op.save(&topo).await?;
        }
        self.restore_sync(&op, &target, ph, &mut report).await;
        report.timings.total_seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The primary's synchronous standbys include the rejoined node again.
    async fn restore_sync(&self, op: &Op<'_>, target: &Cluster, ph: &NodeHandle, report: &mut RejoinReport) {
        let primary = target.primary();
        let res = async {
            let r = op.render(target, &primary.name)?;
            let run = op.run(target);
            if run.write_files(ph, &r, false).await? {
                let t = Instant::now();
                run.apply_config(primary, ph, &r, &mut report.actions).await?;
                act(&mut report.actions, &primary.name, "synchronous standbys updated", t);
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = res {
            report.warnings.push(format!("{}: settings not updated: {e}", primary.name));
        }
    }

    /// The pg_rewind of the node's own major on its host, or why there is none.
    async fn rewind_tool(&self, op: &Op<'_>, h: &NodeHandle) -> Result<String, String> {
        if op.caps.rewind.is_none() {
            return Err(format!("PostgreSQL {} has no pg_rewind", op.caps.major));
        }
        if let Some(b) = self.binaries() {
            if !b.has_rewind {
                return Err(format!("no pg_rewind of PostgreSQL {} is installed", op.caps.major));
            }
        }
        let mut paths = vec![h.layout.server_tool("pg_rewind")];
        if self.binaries().is_none_or(|b| b.has_rewind) {
            paths.push(h.layout.client_tool("pg_rewind"));
        }
        for p in paths {
            if h.transport.exists(&p, None).await.unwrap_or(false) {
                return Ok(p);
            }
        }
        Err(format!("pg_rewind is not installed at {}", h.layout.server_tool("pg_rewind")))
    }

    /// pg_rewind of `n` from the primary: a clean shutdown first (started in recovery and
    /// stopped, so it is never writable), a CHECKPOINT on the source where the major needs
    /// one, then the rewind over a normal connection, then pgrepl's settings written again
    /// (pg_rewind copied the source's).
    #[allow(clippy::too_many_arguments)]
    async fn rewind(
        &self,
        op: &Op<'_>,
        target: &Cluster,
        n: &Node,
        h: &NodeHandle,
        primary: &Node,
        ph: &NodeHandle,
        r: &RenderedNode,
        tool: &str,
        report: &mut RejoinReport,
    ) -> Result<(), Error> {
        let caps = &op.caps;
        let rc = caps.rewind.expect("checked");
        let run = op.run(target);
        // A target that did not shut down cleanly (a killed primary): start it in recovery
        // (standby settings) to replay its own WAL, then stop it: "shut down in recovery".
        let control = read_control(h, caps).await?;
        if !control.state.is_clean_shutdown() {
            let t = Instant::now();
            op.progress.started(&n.name, "clean shutdown in recovery (for pg_rewind)");
            run.write_files(h, r, true).await?;
            let _ = h.transport.exec(&Command::from_line(&r.commands.start).timeout(CLEAN_SHUTDOWN_DEADLINE)).await;
            stop_server(h, r, FENCE_STOP_TIMEOUT, false).await?;
            op.progress.finished(&n.name, "clean shutdown in recovery (for pg_rewind)", "done");
            let c = read_control(h, caps).await?;
            if !c.state.is_clean_shutdown() {
                return Err(Error::node(&n.name, format!("it could not be shut down cleanly (pg_control: {})", c.state)));
            }
            report.timings.prepare_seconds = t.elapsed().as_secs_f64();
            act(&mut report.actions, &n.name, "replay its own WAL in recovery, shut down cleanly", t);
        }
        // ≤15: a freshly promoted source's pg_control names its new timeline only after a checkpoint.
        if rc.checkpoint_source_first {
            let t = Instant::now();
            run.sql(ph, primary.port, "CHECKPOINT;", "checkpoint on the rewind source").await?;
            act(&mut report.actions, &primary.name, "CHECKPOINT (pg_rewind source)", t);
        }
        let source = if !rc.source_grants.is_empty() {
            let user = &target.replication.user;
            let grants: String = rc
                .source_grants
                .iter()
                .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {};", sql_ident(user)))
                .collect::<Vec<_>>()
                .join(" ");
            run.sql(
                ph,
                primary.port,
                &format!("SET synchronous_commit = local; {grants}"),
                "grant pg_rewind's functions to the replication role",
            )
            .await?;
            format!(
                "host={} port={} user={} dbname=postgres passfile={} connect_timeout=10",
                conninfo_quote(&primary.address_or_placeholder()),
                primary.port,
                conninfo_quote(user),
                conninfo_quote(&h.layout.passfile())
            )
        } else if op.d.provider().kind() == "local" {
            // ≤10: a superuser source; on one machine, over the primary's Unix socket.
            format!(
                "host={} port={} user={} dbname=postgres",
                conninfo_quote(&ph.layout.socket_dir),
                primary.port,
                conninfo_quote(&ph.layout.superuser)
            )
        } else {
            return Err(Error::node(
                &n.name,
                format!(
                    "pg_rewind of PostgreSQL {} needs a superuser source connection, which pgrepl does not open across hosts",
                    caps.major
                ),
            ));
        };
        let mut args = vec![format!("--target-pgdata={}", h.layout.data_dir), format!("--source-server={source}")];
        if rc.config_file && h.layout.config_dir != h.layout.data_dir {
            args.push(format!("--config-file={}/postgresql.conf", h.layout.config_dir));
        }
        let mut cmd = Command::new(tool).args(args).user(h.layout.os_user.clone()).timeout(REWIND_TIMEOUT);
        for (k, v) in render::server_env(&h.layout) {
            cmd = cmd.env(k, v);
        }
        let t = Instant::now();
        op.progress.started(&n.name, &format!("pg_rewind from {}", primary.name));
        let out = h.transport.exec(&cmd).await.map_err(|e| tr(&n.name, "pg_rewind", e))?;
        op.progress.finished(&n.name, &format!("pg_rewind from {}", primary.name), if out.success() { "done" } else { "failed" });
        if !out.success() {
            return Err(Error::node(&n.name, format!("pg_rewind exited with status {}: {}", out.status, out.tail())));
        }
        if format!("{}{}", out.stdout, out.stderr).contains("no rewind required") {
            // pgrepl found a divergence that pg_rewind does not see: nothing was rewound.
            return Err(Error::node(&n.name, "pg_rewind found no divergence although its WAL diverged"));
        }
        report.timings.rewind_seconds = t.elapsed().as_secs_f64();
        act(&mut report.actions, &n.name, format!("pg_rewind from {}", primary.name), t);
        // pg_rewind copied the source's configuration: pgrepl's, for this node, again.
        run.write_files(h, r, true).await?;
        Ok(())
    }

    /// What status should mark (fenced, diverged, old timeline), from a status report and
    /// the recorded topology.
    pub async fn ha_marks(&self, status: &StatusReport) -> Result<Vec<NodeMark>, Error> {
        Ok(mark_nodes(status, &self.topology().await?))
    }
}

// =======================================================================================
// Text output

fn secs(s: f64) -> String {
    format!("{s:.3}s")
}

fn standby_lines(f: &mut fmt::Formatter<'_>, standbys: &[StandbyReport]) -> fmt::Result {
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

fn sync_line(f: &mut fmt::Formatter<'_>, s: &SyncReport) -> fmt::Result {
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

fn tail_lines(f: &mut fmt::Formatter<'_>, warnings: &[String], problems: &[String]) -> fmt::Result {
    for w in warnings {
        writeln!(f, "  warning: {w}")?;
    }
    for p in problems {
        writeln!(f, "  problem: {p}")?;
    }
    Ok(())
}

fn tl(t: Option<u32>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

impl fmt::Display for SwitchoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        standby_lines(f, &self.standbys)?;
        if !self.slots_created.is_empty() || !self.slots_dropped.is_empty() {
            writeln!(f, "  slots: created [{}], dropped [{}]", self.slots_created.join(", "), self.slots_dropped.join(", "))?;
        }
        sync_line(f, &self.sync)?;
        tail_lines(f, &self.warnings, &self.problems)
    }
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.timings;
        writeln!(
            f,
            "failover {} -> {} (cluster {}, PostgreSQL {}): writes accepted {} after the command started",
            self.old_primary,
            self.new_primary,
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
        for c in &self.candidates {
            let pos = c.position().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
            let why = if c.node == self.new_primary { "promoted".to_string() } else { c.note.clone().unwrap_or_else(|| "eligible".into()) };
            writeln!(f, "  candidate {:<10} at {pos}: {why}", c.node)?;
        }
        for x in &self.fencing {
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
        writeln!(f, "  loss: {}", self.loss.explanation)?;
        standby_lines(f, &self.standbys)?;
        sync_line(f, &self.sync)?;
        tail_lines(f, &self.warnings, &self.problems)
    }
}

impl fmt::Display for RejoinReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.method {
            RejoinMethod::AlreadyStreaming => "already a streaming standby",
            RejoinMethod::Restarted => "started as a standby as it was (no rewind needed)",
            RejoinMethod::Rewound => "rewound with pg_rewind",
            RejoinMethod::Recloned => "cloned afresh",
        };
        writeln!(
            f,
            "rejoin {} as a standby of {} (cluster {}, PostgreSQL {}): {how} in {}",
            self.node,
            self.upstream,
            self.cluster,
            self.major,
            secs(self.timings.total_seconds)
        )?;
        writeln!(f, "  why: {}", self.reason)?;
        if let Some(e) = self.node_wal_end {
            writeln!(
                f,
                "  its WAL ended at {e} on timeline {}; the primary is on timeline {}",
                tl(self.node_timeline),
                tl(self.primary_timeline)
            )?;
        }
        writeln!(f, "  {}", if self.streaming { format!("streaming from {}", self.upstream) } else { "NOT streaming".to_string() })?;
        tail_lines(f, &self.warnings, &[])
    }
}

// =======================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SyncCommit;

    /// A small deterministic generator for property tests (no extra dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn view(name: &str, recv: Option<u64>, replay: Option<u64>, prio: u32) -> CandidateView {
        CandidateView {
            node: name.into(),
            priority: prio,
            answered: true,
            in_recovery: true,
            fenced: false,
            timeline: Some(1),
            receive_lsn: recv.map(Lsn),
            replay_lsn: replay.map(Lsn),
            eligible: false,
            note: None,
        }
    }

    #[test]
    fn the_most_wal_wins_then_replay_then_priority_then_name() {
        let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(120), Some(80), 50)];
        let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
        assert_eq!(v[i].node, "db3");
        let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(100), Some(95), 50)];
        let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
        assert_eq!(v[i].node, "db3");
        let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(100), Some(90), 150)];
        let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
        assert_eq!(v[i].node, "db3");
        let mut v = vec![view("db3", Some(100), Some(90), 100), view("db2", Some(100), Some(90), 100)];
        let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
        assert_eq!(v[i].node, "db2");
    }

    #[test]
    fn ineligible_standbys_are_explained() {
        let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(500), None, 100), view("db4", Some(900), None, 100)];
        v[1].timeline = Some(0);
        v[2].fenced = true;
        let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
        assert_eq!(v[i].node, "db2");
        assert!(v[1].note.as_deref().unwrap().contains("timeline"));
        assert!(v[2].note.as_deref().unwrap().contains("fenced"));
        let mut none: Vec<CandidateView> = vec![];
        assert!(choose_candidate(&mut none, None, None, false).unwrap_err().contains("no standby"));
    }

    #[test]
    fn a_requested_candidate_behind_another_is_refused_unless_forced() {
        let mut v = vec![view("db2", Some(100), Some(100), 100), view("db3", Some(300), Some(300), 100)];
        let e = choose_candidate(&mut v, Some(1), Some("db2"), false).unwrap_err();
        assert!(e.contains("db2 is 200 bytes behind db3"), "{e}");
        assert_eq!(choose_candidate(&mut v, Some(1), Some("db2"), true).unwrap(), 0);
        assert_eq!(choose_candidate(&mut v, Some(1), Some("db3"), false).unwrap(), 1);
        assert!(choose_candidate(&mut v, Some(1), Some("nope"), false).is_err());
    }

    /// Property: without --force, the promoted standby is never behind another reachable,
    /// eligible standby.
    #[test]
    fn never_promote_a_candidate_behind_another_reachable_standby() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let n = 1 + rng.below(5) as usize;
            let mut v: Vec<CandidateView> = (0..n)
                .map(|i| {
                    let mut c = view(&format!("db{i}"), None, None, rng.below(3) as u32 * 50);
                    c.receive_lsn = (rng.below(5) > 0).then(|| Lsn(rng.below(8)));
                    c.replay_lsn = (rng.below(5) > 0).then(|| Lsn(rng.below(8)));
                    c.answered = rng.below(6) > 0;
                    c.in_recovery = rng.below(8) > 0;
                    c.fenced = rng.below(8) == 0;
                    c.timeline = Some(1 + (rng.below(6) == 0) as u32);
                    c
                })
                .collect();
            let requested = (rng.below(2) == 0).then(|| format!("db{}", rng.below(n as u64)));
            if let Ok(i) = choose_candidate(&mut v, Some(1), requested.as_deref(), false) {
                assert!(v[i].eligible);
                for o in v.iter().filter(|o| o.eligible) {
                    assert!(
                        o.position() <= v[i].position(),
                        "{} at {:?} is ahead of chosen {} at {:?}",
                        o.node,
                        o.position(),
                        v[i].node,
                        v[i].position()
                    );
                }
            }
        }
    }

    fn random_state(rng: &mut Rng) -> PeerState {
        match rng.below(6) {
            0 => PeerState::Writable,
            1 => PeerState::ReadOnly,
            2 => PeerState::Stopped,
            3 => PeerState::Unreachable { evidence: vec![] },
            4 => PeerState::Unresponsive,
            _ => PeerState::Unreachable { evidence: vec!["db2 still streams from it".into()] },
        }
    }

    /// Property: whatever was observed, a fencing plan that allows a promotion stops every
    /// other writable (or hung) node first, and only with --force; a node that looks alive
    /// but cannot be reached never lets a promotion through, even with --force; the old
    /// primary is always recorded as fenced.
    #[test]
    fn never_two_writable_nodes() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let n = 2 + rng.below(4) as usize;
            let peers: Vec<(String, PeerState)> = (0..n).map(|i| (format!("db{i}"), random_state(&mut rng))).collect();
            let old = "db0";
            let cand = format!("db{}", 1 + rng.below(n as u64 - 1));
            let force = rng.below(2) == 0;
            match plan_fencing(old, &cand, &peers, force) {
                Ok(plan) => {
                    for (p, st) in &peers {
                        if *p == cand {
                            continue;
                        }
                        if *st == PeerState::Writable || *st == PeerState::Unresponsive {
                            assert!(force, "a writable {p} passed without --force");
                            assert!(plan.stop.contains(p), "writable {p} is not stopped before the promotion");
                        }
                        assert!(
                            !matches!(st, PeerState::Unreachable { evidence } if !evidence.is_empty()),
                            "{p} looks alive, cannot be stopped, and a promotion was planned"
                        );
                    }
                    assert!(plan.record.iter().any(|p| p == old));
                    assert!(!plan.stop.contains(&cand) && !plan.record.contains(&cand));
                }
                Err(e) => {
                    assert!(!e.is_empty());
                    let stoppable =
                        peers.iter().any(|(p, st)| *p != cand && (*st == PeerState::Writable || *st == PeerState::Unresponsive));
                    let unstoppable =
                        peers.iter().any(|(p, st)| *p != cand && matches!(st, PeerState::Unreachable { evidence } if !evidence.is_empty()));
                    assert!(unstoppable || (stoppable && !force), "refused without a reason: {e}");
                }
            }
        }
    }

    #[test]
    fn fencing_of_a_dead_primary_demotes_it_on_disk() {
        let peers = vec![("db1".to_string(), PeerState::Stopped), ("db2".into(), PeerState::ReadOnly), ("db3".into(), PeerState::ReadOnly)];
        let plan = plan_fencing("db1", "db2", &peers, false).unwrap();
        assert_eq!(plan.demote, vec!["db1"]);
        assert_eq!(plan.record, vec!["db1"]);
        assert!(plan.stop.is_empty());
        let peers = vec![("db1".to_string(), PeerState::Unreachable { evidence: vec![] }), ("db2".into(), PeerState::ReadOnly)];
        let plan = plan_fencing("db1", "db2", &peers, false).unwrap();
        assert_eq!(plan.record, vec!["db1"]);
        assert!(plan.warnings[0].contains("recorded as fenced"));
        let peers = vec![("db1".to_string(), PeerState::Writable), ("db2".into(), PeerState::ReadOnly)];
        let e = plan_fencing("db1", "db2", &peers, false).unwrap_err();
        assert!(e.contains("pgrepl switchover --to db2"), "{e}");
    }

    fn sync(mode: SyncMode, count: u32, names: &[&str]) -> Sync {
        Sync { mode, count, standbys: names.iter().map(|s| s.to_string()).collect(), commit: SyncCommit::On, strict: false }
    }

    #[test]
    fn sync_guarantee_needs_a_quorum_intersection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(sync_guarantee(&sync(SyncMode::First, 1, &["db2", "db3"]), &s(&["db2", "db3"])));
        assert!(!sync_guarantee(&sync(SyncMode::First, 1, &["db2", "db3"]), &s(&["db2"])));
        assert!(sync_guarantee(&sync(SyncMode::Any, 2, &["db2", "db3"]), &s(&["db3"])));
        assert!(sync_guarantee(&sync(SyncMode::Any, 2, &["db2", "db3", "db4"]), &s(&["db2", "db4"])));
        assert!(!sync_guarantee(&sync(SyncMode::Any, 1, &["db2", "db3", "db4"]), &s(&["db2", "db4"])));
        assert!(!sync_guarantee(&sync(SyncMode::Off, 1, &["db2"]), &s(&["db2"])));
    }

    #[test]
    fn loss_takes_the_furthest_known_position_and_says_where_from() {
        let l = account_loss(Some(Lsn(0x5000)), Some(Lsn(0x4000)), Some(Lsn(0x4800)), Some(Lsn(0x4800)), false);
        assert_eq!(l.source, Some(LsnSource::OldPrimaryWal));
        assert!(l.exact);
        assert_eq!(l.wal_lost_bytes, Some(0x800));
        assert_eq!(l.acknowledged_lost_bytes, Some(0x800));
        let l = account_loss(None, Some(Lsn(0x4000)), Some(Lsn(0x4800)), Some(Lsn(0x4800)), true);
        assert_eq!(l.source, Some(LsnSource::StandbyReceived));
        assert!(!l.exact);
        assert_eq!(l.wal_lost_bytes, Some(0));
        assert_eq!(l.acknowledged_lost_bytes, Some(0));
        assert!(l.explanation.contains("synchronous replication held"));
        let l = account_loss(Some(Lsn(0x5000)), None, None, Some(Lsn(0x4000)), true);
        assert_eq!(l.wal_lost_bytes, Some(0x1000));
        assert_eq!(l.acknowledged_lost_bytes, Some(0), "unacknowledged WAL may be lost, acknowledged commits are not");
        let l = account_loss(None, None, None, None, false);
        assert_eq!(l.wal_lost_bytes, None);
        assert!(l.explanation.contains("unknown"));
    }

    #[test]
    fn divergence_against_the_history() {
        let h = vec![HistoryEntry { parent: 1, switchpoint: Lsn(0x3000) }, HistoryEntry { parent: 2, switchpoint: Lsn(0x5000) }];
        assert_eq!(divergence(3, Lsn(0x9000), 3, &h), Divergence::Follows);
        assert_eq!(divergence(1, Lsn(0x3000), 3, &h), Divergence::Follows);
        assert_eq!(divergence(1, Lsn(0x3100), 3, &h), Divergence::Diverged { bytes: 0x100 });
        assert_eq!(divergence(2, Lsn(0x4000), 3, &h), Divergence::Follows);
        assert_eq!(divergence(4, Lsn(0x4000), 3, &h), Divergence::ForeignTimeline);
        assert_eq!(divergence(7, Lsn(0x10), 9, &h), Divergence::ForeignTimeline);
    }

    fn cluster(sync_mode: &str) -> Cluster {
        let spec = crate::ClusterSpec::from_toml(&format!(
            "name = \"t\"\npostgres = \"16\"\n[replication]\nsync = {sync_mode}\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
        ))
        .unwrap();
        spec.validate().unwrap()
    }

    #[test]
    fn fenced_nodes_leave_the_synchronous_standbys() {
        let mut c = cluster("{ mode = \"first\", count = 1 }").with_primary("db2").unwrap();
        assert_eq!(c.replication.sync.standbys, vec!["db1", "db3"]);
        assert_eq!(exclude_from_sync(&mut c, &["db1".into()]), None, "one left is enough for count 1");
        assert_eq!(c.replication.sync.standbys, vec!["db3"]);
        let d = exclude_from_sync(&mut c, &["db3".into()]).unwrap();
        assert!(d.contains("asynchronous"), "{d}");
        assert_eq!(c.replication.sync.mode, SyncMode::Off);

        let mut c = cluster("{ mode = \"any\", count = 2 }");
        let d = exclude_from_sync(&mut c, &["db3".into()]).unwrap();
        assert!(d.contains("only 1 available"), "{d}");
        assert_eq!((c.replication.sync.count, c.replication.sync.standbys.clone()), (1, vec!["db2".to_string()]));
        let mut c = cluster("{ mode = \"any\", count = 1 }");
        assert_eq!(exclude_from_sync(&mut c, &[]), None);
    }

    #[test]
    fn marks_for_status() {
        use crate::status::{ConnectionStrings, NodeStatus};
        let node = |name: &str, role: &str, tl: u32, streaming: Option<bool>| NodeStatus {
            name: name.into(),
            spec_role: if name == "db1" { Role::Primary } else { Role::Standby },
            endpoint: String::new(),
            state: NodeState::Running,
            role: Some(role.into()),
            timeline: Some(tl),
            lsn: None,
            receive_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            streaming,
            sync_state: None,
            slot: None,
            slot_active: None,
            upstream: None,
            error: None,
        };
        let status = StatusReport {
            cluster: "t".into(),
            major: None,
            nodes: vec![node("db1", "primary", 1, None), node("db2", "primary", 2, None), node("db3", "standby", 1, Some(false))],
            problems: vec![],
            connections: ConnectionStrings { read_write: String::new(), read_only: String::new() },
        };
        let topo = Topology { primary: Some("db2".into()), timeline: Some(2), fenced: vec!["db1".into()], last_primary_lsn: None };
        let m = mark_nodes(&status, &topo);
        assert_eq!(m.len(), 2);
        assert!(m[0].fenced && m[0].diverged, "{m:?}");
        assert!(m[1].old_timeline && m[1].diverged, "{m:?}");
    }
}
