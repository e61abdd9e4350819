//! The agent's decision: a pure function of its node as observed, the store as read, and
//! its own lease clock. It returns what to do in the store (race for the leader key,
//! adopt it, release it) and a [`Plan`] of steps on its own node, built by the planners
//! the CLI uses ([`plan::failover()`] for a promotion, [`plan::rejoin()`] to come back as a
//! standby) and carried out by the one executor.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::lsn::Lsn;
use crate::observe::{DataDirState, Observed, ObservedCluster, ServerState};
use crate::plan::{self, Action, FailoverRequest, Operation, Plan, RejoinRequest, Step};
use crate::store::{MemberRecord, MemberRole, StoreView};

/// What an agent knows when it decides.
#[derive(Debug, Clone)]
pub struct AgentInput<'a> {
    /// Its node.
    pub me: &'a str,
    /// The cluster as the spec says it (its primary: the spec's).
    pub cluster: &'a Cluster,
    /// Its node, observed now.
    pub local: &'a Observed,
    /// The store as read now, or why it could not be read.
    pub store: Result<&'a StoreView, &'a str>,
    /// Its lease.
    pub lease: LeaseClock,
    /// What it remembers between loops.
    pub memory: &'a AgentMemory,
}

/// The agent's lease as its own monotonic clock sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseClock {
    /// Its lease, once granted.
    pub id: Option<crate::store::LeaseId>,
    /// Time since the last successful renewal was sent (`None`: never renewed).
    pub since_renewal: Option<Duration>,
}

impl LeaseClock {
    /// The node may still accept writes: renewed within `deadline`.
    pub fn fresh(&self, deadline: Duration) -> bool {
        self.id.is_some() && self.since_renewal.is_some_and(|s| s < deadline)
    }
}

/// What an agent remembers from one loop to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentMemory {
    /// The upstream its standby settings were last written for.
    pub pointed_at: Option<String>,
    /// Starts as the leader that failed in a row.
    pub start_failures: u32,
    /// Attempts in a row to follow the leader that did not end streaming.
    pub repoint_failures: u32,
    /// A leader key was seen since this agent started.
    pub saw_leader: bool,
}

/// A change to the store the agent makes before its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Create the leader key (absent) with this node and its lease.
    TakeLeader,
    /// Bind the leader key (this node's already, on another lease: written by `up`, or
    /// by an earlier run of this agent) to its own lease.
    AdoptLeader {
        /// The key's `mod_revision`.
        mod_revision: crate::store::Revision,
    },
    /// Delete the leader key (this node's) so a standby takes over.
    ReleaseLeader {
        /// The key's `mod_revision`.
        mod_revision: crate::store::Revision,
    },
    /// Give the leader key (this node's, its server stopped cleanly) to the standby a
    /// switchover asked for, bound to that standby's lease.
    HandOver {
        /// The standby.
        to: String,
        /// Its agent's lease (its member key's).
        lease: crate::store::LeaseId,
        /// The leader key's `mod_revision`.
        mod_revision: crate::store::Revision,
    },
    /// Remove a switchover request that is done (this node, its target, leads) or whose
    /// premise is gone (another node led when it was asked).
    ClearSwitchover {
        /// The request's `mod_revision`.
        mod_revision: crate::store::Revision,
    },
    /// Answer a switchover request with a refusal.
    RefuseSwitchover {
        /// The request's `mod_revision`.
        mod_revision: crate::store::Revision,
        /// Why.
        reason: String,
    },
}

/// Whether the guard enforces the write deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Fence at the write deadline unless renewed: the node is (or is about to become)
    /// the writable primary.
    Arm,
    /// Nothing to enforce.
    Disarm,
}

/// What the agent does in this loop.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What and why, one line.
    pub why: String,
    /// First, in the store.
    pub store: Option<StoreOp>,
    /// Then, on the node (only its own steps, and records of the cluster).
    pub plan: Option<Plan>,
    /// The guard.
    pub guard: GuardMode,
    /// What it publishes as its member key.
    pub member: MemberRecord,
    /// The observation the plan was made from (this node and the members' reports).
    pub observed: Option<ObservedCluster>,
}

impl Decision {
    fn new(why: impl Into<String>, member: MemberRecord) -> Decision {
        Decision { why: why.into(), store: None, plan: None, guard: GuardMode::Disarm, member, observed: None }
    }
    fn store(mut self, op: StoreOp) -> Decision {
        self.store = Some(op);
        self
    }
    fn plan(mut self, p: Plan) -> Decision {
        self.plan = Some(p);
        self
    }
    fn seen(mut self, (p, o): (Plan, ObservedCluster)) -> Decision {
        self.plan = Some(p);
        self.observed = Some(o);
        self
    }
    fn armed(mut self) -> Decision {
        self.guard = GuardMode::Arm;
        self
    }
}

/// Decides one loop. Never plans a writable node without a fresh lease and the leader
/// key; never races for the key while another member may hold more WAL, or outside the
/// synchronous set in synchronous mode.
pub fn decide(i: &AgentInput<'_>) -> Decision {
    let me = i.me;
    let local = i.local;
    let member = member_record(i);
    let writable = local.writable();
    let view =
        match i.store {
            Ok(v) => v,
            Err(why) => {
                // No promotion anywhere; a primary keeps writes only until its deadline.
                let settings = i.memory_settings();
                if writable && !i.lease.fresh(settings.write_deadline()) {
                    return Decision::new(format!("the store cannot be reached ({why}) and the lease ran out: stop writes"), member)
                        .plan(own(i, Operation::Up, vec![Step::new(me, Action::Fence)]));
                }
                if writable {
                    return Decision::new(format!("the store cannot be reached ({why}): writes go on until the lease deadline"), member)
                        .armed();
                }
                if local.stopped() && local.standby_configured == Some(true) {
                    return Decision::new(format!("the store cannot be reached ({why}): start as a standby (reads)"), member).plan(own(
                        i,
                        Operation::Up,
                        vec![Step::new(me, Action::Start)],
                    ));
                }
                return Decision::new(format!("the store cannot be reached ({why}): no promotion"), member);
            }
        };
    let settings = view.settings();
    let fresh = i.lease.fresh(settings.write_deadline());
    let leader = view.leader.as_ref();
    let leader_node = view.leader_node();

    if writable && !(fresh && leader_node == Some(me)) && leader_node.is_some() {
        // Another node holds the key, or this one's lease is not fresh: nothing may commit here.
        let why = match leader_node {
            Some(l) if l != me => format!("{l} holds the leader key: stop writes here at once"),
            _ => "the lease was not renewed in time: stop writes at once".into(),
        };
        return Decision::new(why, member).plan(own(i, Operation::Up, vec![Step::new(me, Action::Fence)]));
    }
    if writable && leader_node.is_none() && !fresh {
        return Decision::new("no leader and no fresh lease: stop writes at once", member).plan(own(
            i,
            Operation::Up,
            vec![Step::new(me, Action::Fence)],
        ));
    }
    if settings.paused {
        let d = Decision::new("paused: observing only", member);
        return if leader_node == Some(me) && writable { d.armed() } else { d };
    }

    match leader {
        Some(l) if l.value.node == me => {
            if l.lease != i.lease.id && i.lease.id.is_some() {
                return Decision::new("the leader key is this node's on another lease: adopt it", member)
                    .store(StoreOp::AdoptLeader { mod_revision: l.mod_revision })
                    .armed();
            }
            if let Some(r) = view.switchover.as_ref().filter(|r| r.value.from == me && r.value.to != me && r.value.refused.is_none()) {
                let to = r.value.to.clone();
                if writable {
                    return match switchover_check(i, view, &to) {
                        Ok(()) => Decision::new(format!("switchover to {to}: stop cleanly (its last WAL reaches {to})"), member)
                            .plan(own(
                                i,
                                Operation::Switchover { to: to.clone() },
                                vec![Step::new(me, Action::Checkpoint).best_effort(), Step::new(me, Action::StopClean)],
                            ))
                            .armed(),
                        Err(reason) => Decision::new(format!("switchover to {to} refused: {reason}"), member)
                            .store(StoreOp::RefuseSwitchover { mod_revision: r.mod_revision, reason })
                            .armed(),
                    };
                }
                if local.stopped() && local.control_state == Some(crate::pgcontrol::DbState::ShutDown) {
                    if let Some(lease) = view.members.get(&to).and_then(|m| m.lease) {
                        return Decision::new(format!("switchover: stopped cleanly; the leader key goes to {to}"), member)
                            .store(StoreOp::HandOver { to, lease, mod_revision: l.mod_revision });
                    }
                }
            }
            if let Some(r) = view.switchover.as_ref().filter(|r| r.value.refused.is_none() && (r.value.to == me || r.value.from != me)) {
                if writable {
                    let why = if r.value.to == me { "switchover done" } else { "a switchover asked of another leader: dropped" };
                    return Decision::new(why, member).store(StoreOp::ClearSwitchover { mod_revision: r.mod_revision }).armed();
                }
            }
            if writable {
                if let Some(p) = sync_update(i, view) {
                    return Decision::new("the primary: its synchronous standbys change (a node came back, or one is fenced)", member)
                        .plan(p)
                        .armed();
                }
                return Decision::new("the primary, holding the lease", member).armed();
            }
            if local.standby() {
                return match promotion(i, view) {
                    Ok(p) => Decision::new("won the leader key: promote", member).seen(p).armed(),
                    Err(why) => Decision::new(format!("won the leader key but cannot promote ({why}): release it"), member)
                        .store(StoreOp::ReleaseLeader { mod_revision: l.mod_revision }),
                };
            }
            if local.runs() {
                return Decision::new("the leader; its server is starting", member).armed();
            }
            let release = || StoreOp::ReleaseLeader { mod_revision: l.mod_revision };
            if !local.host_reachable {
                return Decision::new("the leader; its server cannot be looked at: release the key", member).store(release());
            }
            if local.data_dir != Some(DataDirState::Cluster) || local.unfinished_clone || view.topology().is_fenced(me) {
                return Decision::new("the leader without a usable data directory: release the key", member).store(release());
            }
            if i.memory.start_failures >= MAX_START_FAILURES {
                return Decision::new(
                    format!("the leader; its server failed to start {} times: release the key", i.memory.start_failures),
                    member,
                )
                .store(release());
            }
            Decision::new("the leader; its server stopped: start it in place (crash recovery keeps every commit)", member)
                .plan(own(i, Operation::Up, vec![Step::new(me, Action::Start)]))
                .armed()
        }
        Some(l) => {
            let leader = l.value.node.clone();
            if local.standby() || (local.stopped() && local.standby_configured == Some(true) && !view.topology().is_fenced(me)) {
                if i.memory.pointed_at.as_deref() != Some(leader.as_str()) || local.stopped() {
                    if view.member(&leader).is_none_or(|m| m.role != MemberRole::Primary) {
                        return Decision::new(
                            format!("{leader} holds the leader key; waiting for it to accept writes before following it"),
                            member,
                        );
                    }
                    // Pointed at the leader before and it did not stream, on an older
                    // timeline: its WAL goes past where the leader's timeline forked (it
                    // received more of the old primary's than the leader did). Following
                    // cannot work: back through a rejoin (pg_rewind, or a fresh clone).
                    let behind = matches!(
                        (local.timeline, view.member(&leader).and_then(|m| m.timeline)),
                        (Some(t), Some(lt)) if t < lt
                    );
                    // Known at once when its WAL goes past the fork point the promotion
                    // recorded; else once following did not stream.
                    let past_fork = behind && past_the_fork(i, view, &leader);
                    if (past_fork || i.memory.repoint_failures > 0) && behind && local.standby() {
                        return match rejoin(i, view, &leader) {
                            Ok(p) => Decision::new(
                                format!("{leader} leads; following it did not stream from an older timeline: rejoin (pg_rewind or a fresh clone)"),
                                member,
                            )
                            .seen(p),
                            Err(why) => Decision::new(format!("{leader} leads; cannot rejoin yet ({why})"), member),
                        };
                    }
                    let up = upstream_of(i.cluster, me, &leader);
                    let mut p =
                        own(i, Operation::Rejoin { node: me.into() }, vec![Step::new(me, Action::Repoint { upstream: up.clone() })]);
                    // Rendered for the cluster led by `leader`, whatever the topology
                    // record says yet.
                    p.primary = leader.clone();
                    p.after = i.cluster.with_primary(&leader).ok();
                    return Decision::new(format!("follow {leader} (upstream {up})"), member).plan(p);
                }
                let streams = local.receiver.as_deref() == Some("streaming");
                let same_timeline = view.member(&leader).is_some_and(|m| m.timeline.is_some() && m.timeline == local.timeline);
                if view.topology().is_fenced(me) && streams && same_timeline {
                    // Back as a standby of the leader on its timeline: the fence mark goes.
                    return Decision::new(format!("a standby of {leader}, streaming on its timeline: no longer fenced"), member).plan(own(
                        i,
                        Operation::Rejoin { node: me.into() },
                        vec![Step::new(me, Action::Unfence)],
                    ));
                }
                return Decision::new(format!("a standby of {leader}"), member);
            }
            if local.runs() {
                return Decision::new(format!("{leader} leads; this server is starting"), member);
            }
            if !local.host_reachable {
                return Decision::new(format!("{leader} leads; this node cannot be looked at"), member);
            }
            match rejoin(i, view, &leader) {
                Ok(p) => Decision::new(format!("{leader} leads: come back as its standby"), member).seen(p),
                Err(why) => Decision::new(format!("{leader} leads; cannot rejoin yet ({why})"), member),
            }
        }
        None => {
            if writable {
                return Decision::new("no leader key: take it (this node accepts writes)", member).store(StoreOp::TakeLeader).armed();
            }
            if local.standby() {
                return match race(i, view, &settings) {
                    Ok(()) => {
                        Decision::new("no leader: the most advanced eligible standby races for the key", member).store(StoreOp::TakeLeader)
                    }
                    Err(why) => Decision::new(format!("no leader; not racing: {why}"), member),
                };
            }
            if local.stopped() && local.standby_configured == Some(true) {
                return Decision::new("no leader: start as a standby", member).plan(own(
                    i,
                    Operation::Up,
                    vec![Step::new(me, Action::Start)],
                ));
            }
            let topo = view.topology();
            let recorded = topo.primary.clone().unwrap_or_else(|| i.cluster.primary().name.clone());
            if local.stopped() && local.data_dir == Some(DataDirState::Cluster) && recorded == me && !topo.is_fenced(me) {
                // A stopped server's timeline is not observed: the recorded primary's is the
                // one its last promotion recorded.
                let mine = local.timeline.or_else(|| recorded_timeline(&topo));
                if let Some(w) = view.members.values().find(|m| m.value.node != me && m.value.timeline > mine) {
                    return Decision::new(format!("no leader; {} is on a newer timeline: waiting", w.value.node), member);
                }
                return Decision::new("no leader: the recorded primary takes the key to start again", member).store(StoreOp::TakeLeader);
            }
            Decision::new("no leader; nothing to do here", member)
        }
    }
}

/// Starts as the leader that may fail in a row before the key is released.
pub const MAX_START_FAILURES: u32 = 2;

impl AgentInput<'_> {
    fn memory_settings(&self) -> crate::store::HaSettings {
        self.cluster.ha.as_ref().map(|h| h.settings.clone()).unwrap_or_default()
    }
}

/// The member record this loop publishes.
fn member_record(i: &AgentInput<'_>) -> MemberRecord {
    let o = i.local;
    let mut m = MemberRecord::new(i.me, MemberRole::of(o));
    m.timeline = o.timeline;
    m.lsn = o.position();
    m.replay_lsn = if o.standby() { o.lsn } else { None };
    m.streaming = o.receiver.as_deref() == Some("streaming");
    m.upstream = if o.standby() { i.memory.pointed_at.clone() } else { None };
    m.leader_seen = i.store.ok().and_then(|v| v.leader_node().map(String::from));
    if let Ok(v) = i.store {
        if v.topology().is_fenced(i.me) {
            m.note = Some("fenced".into());
        } else if v.settings().paused {
            m.note = Some("paused".into());
        }
    }
    m
}

/// A plan of steps on this node (and records of the cluster).
fn own(i: &AgentInput<'_>, operation: Operation, steps: Vec<Step>) -> Plan {
    let mut p = Plan::new(&i.cluster.name, operation, &i.cluster.primary().name);
    p.steps = steps;
    p
}

/// Keeps the steps of `plan` on `me` and the cluster's records: the other nodes' steps
/// are their agents' to take.
fn only_mine(mut plan: Plan, me: &str, cluster: &str) -> Plan {
    plan.steps.retain(|s| s.node == me || s.node == cluster);
    // Waits for other nodes are theirs: a new primary does not wait for its standbys here
    // (commits wait for them anyway in synchronous mode).
    plan.steps.retain(|s| !matches!(s.action, Action::WaitSyncStandbys { .. } | Action::UpdateSyncStandbys));
    plan
}

/// The primary's synchronous standbys as the cluster wants them now (the spec's, fenced
/// nodes left out), when the sync key says otherwise: the key widened first when a
/// standby is added (it must cover every standby that may acknowledge a commit), the
/// settings rewritten, then the key narrowed to what they say.
fn sync_update(i: &AgentInput<'_>, view: &StoreView) -> Option<Plan> {
    let topo = view.topology();
    let recorded = topo.sync.clone()?;
    let mut want = i.cluster.with_primary(i.me).ok()?;
    crate::cluster::exclude_from_sync(&mut want, &topo.fenced);
    let want_rec = crate::topology::SyncRecord::of(i.me, &want.replication.sync);
    let norm = |r: &crate::topology::SyncRecord| {
        let mut v = r.standbys.clone();
        v.sort();
        (r.primary.clone(), r.synchronous(), r.count, v)
    };
    if recorded.primary != i.me || norm(&recorded) == norm(&want_rec) {
        return None;
    }
    let mut p = own(i, Operation::Up, Vec::new());
    p.primary = i.me.to_string();
    p.steps = vec![
        Step::new(&i.cluster.name, recorded.widened(&want_rec).action()),
        Step::new(i.me, Action::UpdateSyncStandbys),
        Step::new(&i.cluster.name, want_rec.action()),
    ];
    p.after = Some(want);
    Some(p)
}

/// Whether the leader may hand over to `to` now: a standby that reports, streams from
/// it, and is caught up to within the switchover's limit.
fn switchover_check(i: &AgentInput<'_>, view: &StoreView, to: &str) -> Result<(), String> {
    if i.cluster.node(to).is_none() {
        return Err(format!("{to} is not a node of the cluster"));
    }
    if view.topology().is_fenced(to) {
        return Err(format!("{to} is fenced"));
    }
    let m = view.member(to).ok_or_else(|| format!("{to} does not report (its agent is not running)"))?;
    if m.role != MemberRole::Standby || !m.streaming {
        return Err(format!("{to} is not a streaming standby"));
    }
    let lag = i.local.lsn.map(|l| l.0.saturating_sub(m.lsn.map(|x| x.0).unwrap_or(0))).unwrap_or(u64::MAX);
    if lag > plan::switchover::SWITCHOVER_MAX_LAG_BYTES {
        return Err(format!("{to} is {lag} bytes behind"));
    }
    Ok(())
}

/// Where `me` streams from when `leader` is the primary.
fn upstream_of(cluster: &Cluster, me: &str, leader: &str) -> String {
    cluster.with_primary(leader).ok().and_then(|c| c.node(me).and_then(|n| n.upstream.clone())).unwrap_or_else(|| leader.to_string())
}

/// The cluster as the store says it is (its primary: the recorded one) and an observation
/// made of this node and the members' reports.
fn as_observed(i: &AgentInput<'_>, view: &StoreView, primary: &str) -> Result<(Cluster, ObservedCluster), String> {
    let topology = view.topology();
    let cluster = i.cluster.with_primary(primary).map_err(|e| e.to_string())?;
    let nodes = i
        .cluster
        .nodes
        .iter()
        .map(|n| {
            let mut o = if n.name == i.me {
                i.local.clone()
            } else {
                match view.member(&n.name) {
                    Some(m) => observed_of(m),
                    None => Observed::unknown(&n.name),
                }
            };
            o.fenced = topology.is_fenced(&n.name);
            o
        })
        .collect();
    Ok((cluster, ObservedCluster { nodes, topology }))
}

/// What a member's report says of it, as an observation.
fn observed_of(m: &MemberRecord) -> Observed {
    let mut o = Observed::unknown(&m.node);
    o.host_reachable = true;
    match m.role {
        MemberRole::Primary | MemberRole::Standby => {
            o.server = ServerState::Running;
            o.in_recovery = Some(m.role == MemberRole::Standby);
        }
        MemberRole::Stopped => o.server = ServerState::Stopped,
        // No PostgreSQL: nothing to observe (witnesses are not among the nodes).
        MemberRole::Witness => {}
    }
    o.timeline = m.timeline;
    o.receive_lsn = if m.role == MemberRole::Standby { m.lsn } else { None };
    o.lsn = if m.role == MemberRole::Standby { m.replay_lsn.or(m.lsn) } else { m.lsn };
    if m.streaming {
        o.receiver = Some("streaming".into());
    }
    o
}

/// The promotion of this node (it holds the leader key and runs as a standby): the
/// failover planner's plan with this node as the candidate, its own steps. The old
/// primary's lease has run out, so it has stopped writes by its own clock (and its
/// guard); it is recorded as fenced.
fn promotion(i: &AgentInput<'_>, view: &StoreView) -> Result<(Plan, ObservedCluster), String> {
    let topo = view.topology();
    let old = topo.primary.clone().unwrap_or_else(|| i.cluster.primary().name.clone());
    if old == i.me {
        // The recorded primary came back in recovery (a cold start): promote it as it is.
        let mut p = own(i, Operation::Failover { to: i.me.into(), force: false }, Vec::new());
        p.steps = vec![
            Step::new(i.me, Action::WritePrimarySettings),
            Step::new(i.me, Action::Promote).commits(),
            Step::new(i.me, Action::RecordPrimary),
            Step::new(i.me, Action::CheckpointAfterPromotion).best_effort(),
        ];
        let (_, obs) = as_observed(i, view, &old)?;
        return Ok((p, obs));
    }
    let (cluster, obs) = as_observed(i, view, &old)?;
    let mut plan =
        plan::failover(&cluster, &obs, &FailoverRequest { to: Some(i.me.to_string()), force: true }).map_err(|r| r.to_string())?;
    // The key handed over by a leader that stopped cleanly: the promotion ends a switchover.
    if view.switchover.as_ref().is_some_and(|r| r.value.to == i.me && r.value.from == old && r.value.refused.is_none()) {
        plan.operation = Operation::Switchover { to: i.me.to_string() };
    }
    Ok((only_mine(plan, i.me, &i.cluster.name), obs))
}

/// This node back as a standby of `leader` (pg_rewind, else a fresh clone; examined by
/// the executor once it is stopped).
fn rejoin(i: &AgentInput<'_>, view: &StoreView, leader: &str) -> Result<(Plan, ObservedCluster), String> {
    match view.member(leader) {
        Some(m) if m.role == MemberRole::Primary => {}
        _ => return Err(format!("{leader} does not report as a writable primary yet")),
    }
    let (cluster, obs) = as_observed(i, view, leader)?;
    let plan = plan::rejoin(&cluster, &obs, &RejoinRequest { node: i.me.to_string() }, None).map_err(|r| r.to_string())?;
    Ok((only_mine(plan, i.me, &i.cluster.name), obs))
}

/// Whether this node's WAL goes past the point where `leader`'s promotion forked its
/// timeline (recorded with the promotion): it cannot follow `leader` as it is.
fn past_the_fork(i: &AgentInput<'_>, view: &StoreView, leader: &str) -> bool {
    let topo = view.topology();
    let Some(fork) = topo.history.iter().rev().find(|p| p.node == leader).and_then(|p| p.lsn.as_deref()?.parse::<Lsn>().ok()) else {
        return false;
    };
    i.local.position().is_some_and(|mine| mine > fork)
}

/// The cluster's timeline as its last recorded promotion left it.
fn recorded_timeline(topo: &crate::topology::Topology) -> Option<u32> {
    topo.history.iter().rev().find_map(|h| h.timeline)
}

/// Whether this standby may race for the leader key: every other standby that reported
/// since the leader went away is not further ahead (a tie goes to one in the old
/// primary's location, then the higher priority, then the first name); it is within `maximum_lag_on_failover` of the last primary
/// position known; in synchronous mode it is in the set, and the positions compared
/// cover every acknowledged commit.
fn race(i: &AgentInput<'_>, view: &StoreView, settings: &crate::store::HaSettings) -> Result<(), String> {
    let me = i.me;
    let topo = view.topology();
    if topo.is_fenced(me) {
        return Err("recorded as fenced".into());
    }
    if let Some(p) = view.members.values().find(|m| m.value.node != me && m.value.role == MemberRole::Primary) {
        return Err(format!("{} reports as a writable primary", p.value.node));
    }
    // An agent that has seen no leader yet (the cluster's agents starting) while its
    // standby streams from a live primary leaves the key to that primary's agent: racing
    // would promote a second primary beside one that still accepts writes.
    if !i.memory.saw_leader && i.local.receiver.as_deref() == Some("streaming") {
        return Err("it streams from a live primary and no leader was seen yet: that primary's agent takes the key".into());
    }
    let mine = i.local.position().ok_or("its WAL position is not known")?;
    // A standby left behind on an older timeline cannot be promoted: racing for the key
    // would only take it from one that can.
    if let (Some(t), Some(c)) = (i.local.timeline, recorded_timeline(&topo)) {
        if t < c {
            return Err(format!("on timeline {t}, the cluster is on {c}"));
        }
    }
    // Ties: a standby in the old primary's location first, then the priority.
    let old = topo.primary.clone().unwrap_or_else(|| i.cluster.primary().name.clone());
    let old_location = i.cluster.node(&old).and_then(|n| n.location.as_deref());
    let prio = |n: &str| {
        let node = i.cluster.node(n);
        (old_location.is_some() && node.and_then(|n| n.location.as_deref()) == old_location, node.map(|n| n.priority).unwrap_or(0))
    };
    let mut compared = vec![me.to_string()];
    for (name, m) in &view.members {
        let m = &m.value;
        if name == me || m.role != MemberRole::Standby || topo.is_fenced(name) {
            continue;
        }
        if m.leader_seen.is_some() {
            return Err(format!("{name} has not reported since the leader went away"));
        }
        let theirs = m.lsn.unwrap_or(Lsn(0));
        let ahead = theirs > mine || (theirs == mine && (prio(name), std::cmp::Reverse(name.as_str())) > (prio(me), std::cmp::Reverse(me)));
        if ahead && !view.topology().sync.as_ref().is_some_and(|s| s.synchronous() && !s.standbys.contains(name)) {
            return Err(format!("{name} is further ahead ({theirs} against {mine}) or wins the tie"));
        }
        if theirs <= mine {
            compared.push(name.clone());
        }
    }
    if let Some(last) = view.position.as_ref().map(|p| p.value.lsn) {
        let behind = last.0.saturating_sub(mine.0);
        if behind > settings.maximum_lag_on_failover {
            return Err(format!(
                "{behind} bytes behind the last primary position {last} (maximum_lag_on_failover {})",
                settings.maximum_lag_on_failover
            ));
        }
    }
    if let Some(sync) = topo.sync.as_ref().filter(|s| s.synchronous()) {
        if !sync.standbys.iter().any(|s| s == me) {
            return Err(format!("not in the synchronous set ({})", sync.standbys.join(", ")));
        }
        if !plan::failover::sync_guarantee(sync, &compared) {
            return Err(format!(
                "the positions reported ({}) do not cover every acknowledged commit of {} of ({})",
                compared.join(", "),
                sync.count,
                sync.standbys.join(", ")
            ));
        }
    }
    Ok(())
}
