//! The failover planner: which standby to promote, what to fence first, and whether the
//! promotion can lose acknowledged commits.

use serde::Serialize;

use super::{Action, Guard, Operation, Plan, Refusal, Step, together};
use crate::cluster::{Cluster, Sync};
use crate::lsn::Lsn;
use crate::observe::{Observed, ObservedCluster};
use crate::topology::SyncRecord;

/// What `pgrepl failover` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FailoverRequest {
    /// Promote this standby; default: the one with the most WAL.
    pub to: Option<String>,
    /// Stop nodes that accept writes (or run without answering) first; accept a candidate
    /// behind another standby, or outside the synchronous set; fail over past an
    /// unreachable primary without evidence of its death. Never overrides "alive but
    /// unreachable": such a node cannot be stopped.
    pub force: bool,
}

/// A standby as the failover decision saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// Its priority (higher wins a tie).
    pub priority: u32,
    /// It runs in the old primary's location (wins a tie before the priority).
    pub same_location: bool,
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

impl Candidate {
    /// The most WAL it has: received or replayed, whichever is further.
    pub fn position(&self) -> Option<Lsn> {
        self.receive_lsn.max(self.replay_lsn)
    }

    fn of(n: &crate::cluster::Node, o: &Observed, old_location: Option<&str>) -> Candidate {
        Candidate {
            node: n.name.clone(),
            priority: n.priority,
            same_location: old_location.is_some() && n.location.as_deref() == old_location,
            answered: o.answered(),
            in_recovery: o.in_recovery == Some(true),
            fenced: o.fenced,
            timeline: o.timeline,
            receive_lsn: o.receive_lsn,
            replay_lsn: o.lsn,
            eligible: false,
            note: None,
        }
    }
}

/// A node other than the candidate, as the fencing decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PeerState {
    /// It answered and accepts writes.
    Writable,
    /// It answered and is in recovery (or runs with a standby's data directory).
    ReadOnly,
    /// Its host answered; no server runs.
    Stopped,
    /// Its host answered and its server runs, but it did not answer a query (hung,
    /// starting, or overloaded) and its data directory is not a standby's: it may accept
    /// writes again.
    Unresponsive,
    /// It could not be reached; `evidence` lists signs that its server still runs.
    Unreachable {
        /// Signs of life seen from elsewhere.
        evidence: Vec<String>,
    },
}

impl PeerState {
    /// The fencing view of an observed node.
    pub fn of(o: &Observed) -> PeerState {
        if o.writable() {
            PeerState::Writable
        } else if o.standby() {
            PeerState::ReadOnly
        } else if o.stopped() {
            PeerState::Stopped
        } else if o.host_reachable {
            if o.standby_configured == Some(true) { PeerState::ReadOnly } else { PeerState::Unresponsive }
        } else {
            PeerState::Unreachable { evidence: o.alive_evidence.clone() }
        }
    }
}

/// What fencing does before a promotion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FencePlan {
    /// Stop these servers (they must be confirmed stopped before the promotion).
    pub stop: Vec<String>,
    /// Write standby settings into these data directories, so a restart comes up read-only.
    pub demote: Vec<String>,
    /// Record these as fenced (`up` leaves them alone; `rejoin` brings them back).
    pub record: Vec<String>,
    /// What could not be made safe.
    pub warnings: Vec<String>,
}

/// What the failover planner decided, and on what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverDecision {
    /// The standby promoted.
    pub candidate: String,
    /// Every standby considered, and why it was or was not chosen.
    pub candidates: Vec<Candidate>,
    /// The cluster's timeline before.
    pub timeline: Option<u32>,
    /// Fencing.
    pub fence: FencePlan,
    /// The synchronous standbys the old primary ran with.
    pub sync_in_force: SyncRecord,
    /// Synchronous replication guarantees the candidate has every acknowledged commit.
    pub sync_held: bool,
    /// The new primary's synchronous replication (fenced and absent standbys left out).
    pub new_sync: SyncRecord,
    /// Why fewer synchronous standbys than the spec asks are configured, if so.
    pub degraded: Option<String>,
    /// What may be lost, in words.
    pub loss_note: String,
}

/// Marks each standby eligible or not, and chooses the one to promote: the most WAL
/// (received), then one in the old primary's location, then the most replayed, then the
/// highest priority, then the first name. The location never outranks WAL: promoting a
/// standby with less would discard what the other has. With
/// `requested`, that node, refused (unless `force`) when another eligible standby has more
/// WAL: promoting it would discard WAL that standby has. Returns the index in `views`.
pub fn choose_candidate(views: &mut [Candidate], timeline: Option<u32>, requested: Option<&str>, force: bool) -> Result<usize, Refusal> {
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
    let order = |a: &Candidate, b: &Candidate| {
        a.position()
            .cmp(&b.position())
            .then(a.same_location.cmp(&b.same_location))
            .then(a.replay_lsn.cmp(&b.replay_lsn))
            .then(a.priority.cmp(&b.priority))
            .then(b.node.cmp(&a.node))
    };
    let best = views.iter().enumerate().filter(|(_, v)| v.eligible).max_by(|a, b| order(a.1, b.1)).map(|(i, _)| i);
    match requested {
        None => best.ok_or_else(|| Refusal::NoCandidate {
            why: views.iter().map(|v| (v.node.clone(), v.note.clone().unwrap_or_default())).collect(),
        }),
        Some(r) => {
            let i = views
                .iter()
                .position(|v| v.node == r)
                .ok_or_else(|| Refusal::NotEligible { node: r.to_string(), why: format!("\"{r}\" is not a standby of this cluster") })?;
            if !views[i].eligible {
                return Err(Refusal::NotEligible { node: r.to_string(), why: views[i].note.clone().unwrap_or_default() });
            }
            if let Some(b) = best {
                let (bp, rp) = (views[b].position().unwrap_or_default(), views[i].position().unwrap_or_default());
                if bp > rp && !force {
                    return Err(Refusal::CandidateBehind {
                        node: r.to_string(),
                        node_lsn: rp,
                        best: views[b].node.clone(),
                        best_lsn: bp,
                        behind_bytes: bp.bytes_after(rp),
                    });
                }
            }
            Ok(i)
        }
    }
}

/// Decides what must be fenced before `candidate` is promoted. Refuses (without `force`)
/// while another node accepts writes or runs without answering, or while the old primary
/// cannot be reached and nothing shows it is down; refuses even with `force` while the old
/// primary is unreachable but shows signs of life (it cannot be stopped). With `force`,
/// writable nodes are stopped first (the executor confirms they stopped before
/// promoting). The old primary is always recorded as fenced, and demoted on disk where
/// its host answers.
pub fn plan_fencing(old_primary: &str, candidate: &str, peers: &[(String, PeerState)], force: bool) -> Result<FencePlan, Vec<Refusal>> {
    let mut plan = FencePlan::default();
    let mut refusals = Vec::new();
    for (p, st) in peers.iter().filter(|(p, _)| p != candidate) {
        let is_old = p == old_primary;
        match st {
            PeerState::Writable if !force => {
                refusals.push(Refusal::OtherWritable { node: p.clone(), candidate: candidate.to_string(), is_primary: is_old })
            }
            PeerState::Unresponsive if !force => refusals.push(Refusal::Unresponsive { node: p.clone() }),
            PeerState::Writable | PeerState::Unresponsive => {
                plan.stop.push(p.clone());
                plan.demote.push(p.clone());
                plan.record.push(p.clone());
            }
            // Alive but out of reach: it cannot be fenced, so even --force does not promote
            // (that would make two writable primaries).
            PeerState::Unreachable { evidence } if !evidence.is_empty() => {
                refusals.push(Refusal::AliveButUnreachable { node: p.clone(), evidence: evidence.clone(), forced: force })
            }
            PeerState::Unreachable { .. } if is_old && !force => refusals.push(Refusal::UnreachableWithoutEvidence { node: p.clone() }),
            PeerState::Unreachable { .. } if is_old => {
                plan.record.push(p.clone());
                plan.warnings.push(format!(
                    "{p} could not be reached: it is recorded as fenced. Make sure it stays down; when it can be reached, `pgrepl rejoin {p}` makes it a standby (pgrepl turned its OS's autostart off when it deployed it)"
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
        return Err(refusals);
    }
    if !plan.record.iter().any(|p| p == old_primary) && old_primary != candidate {
        plan.record.push(old_primary.to_string());
    }
    Ok(plan)
}

/// Whether synchronous replication guarantees that the most advanced of the `compared`
/// standbys has every acknowledged commit: an acknowledged commit is on at least `count`
/// of the `n` named standbys, so any `n - count + 1` of them include one that has it.
pub fn sync_guarantee(sync: &SyncRecord, compared: &[String]) -> bool {
    if !sync.synchronous() {
        return false;
    }
    let n = sync.standbys.len();
    let reached = sync.standbys.iter().filter(|s| compared.contains(s)).count();
    reached + sync.count as usize > n
}

/// The same for a resolved [`Sync`] (the spec's).
pub fn sync_guarantee_of(sync: &Sync, compared: &[String]) -> bool {
    sync_guarantee(&SyncRecord::of("", sync), compared)
}

/// Plans a failover of `cluster` (the current one: its primary is the one that failed)
/// from `obs`. Refuses with the first reason found when the promotion could leave two
/// writable nodes or lose acknowledged commits, unless `req.force` and the reason allows it.
pub fn failover(cluster: &Cluster, obs: &ObservedCluster, req: &FailoverRequest) -> Result<Plan, Refusal> {
    let old = cluster.primary().name.clone();
    if let Some(t) = &req.to {
        if cluster.node(t).is_none() {
            return Err(Refusal::UnknownNode { node: t.clone(), known: cluster.nodes.iter().map(|n| n.name.clone()).collect() });
        }
    }
    let oo = obs.get(&old);
    // The cluster's timeline: the newest known (a standby on an older one did not follow).
    let timeline = [obs.topology.timeline, oo.timeline, obs.nodes.iter().filter(|o| o.standby()).filter_map(|o| o.timeline).max()]
        .into_iter()
        .flatten()
        .max();
    let old_location = cluster.node(&old).and_then(|n| n.location.as_deref());
    let mut views: Vec<Candidate> =
        cluster.nodes.iter().filter(|n| n.name != old).map(|n| Candidate::of(n, obs.get(&n.name), old_location)).collect();

    // Synchronous mode: only members of the set the old primary ran with may be promoted,
    // and only when the reachable ones cover every acknowledged commit.
    let in_force = obs.topology.sync_in_force(&old, &cluster.replication.sync);
    let chosen = choose_candidate(&mut views, timeline, req.to.as_deref(), req.force)?;
    let mut chosen = chosen;
    let mut warnings = Vec::new();
    if in_force.synchronous() {
        let reached: Vec<String> =
            views.iter().filter(|v| v.eligible && in_force.standbys.contains(&v.node)).map(|v| v.node.clone()).collect();
        let covered = sync_guarantee(&in_force, &reached);
        if !covered {
            let may_hold: Vec<String> = in_force.standbys.iter().filter(|s| !reached.contains(s)).cloned().collect();
            if !req.force {
                return Err(Refusal::SyncNotCovered {
                    candidate: views[chosen].node.clone(),
                    primary: old.clone(),
                    set: in_force.standbys.clone(),
                    count: in_force.count,
                    may_hold,
                });
            }
            warnings.push(format!(
                "forced: acknowledged commits may exist only on {} ({old} ran with {} synchronous of ({})); they are lost if so",
                may_hold.join(", "),
                in_force.count,
                in_force.standbys.join(", ")
            ));
        }
        if !in_force.standbys.contains(&views[chosen].node) {
            if req.to.is_none() {
                // The most advanced member of the set instead.
                let best_member = views
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.eligible && in_force.standbys.contains(&v.node))
                    .max_by(|a, b| {
                        a.1.position()
                            .cmp(&b.1.position())
                            .then(a.1.same_location.cmp(&b.1.same_location))
                            .then(a.1.priority.cmp(&b.1.priority))
                            .then(b.1.node.cmp(&a.1.node))
                    })
                    .map(|(i, _)| i);
                match best_member {
                    Some(i) => chosen = i,
                    None if !req.force => {
                        return Err(Refusal::NotInSyncSet {
                            node: views[chosen].node.clone(),
                            primary: old.clone(),
                            set: in_force.standbys.clone(),
                            count: in_force.count,
                        });
                    }
                    None => {}
                }
            } else if !req.force {
                return Err(Refusal::NotInSyncSet {
                    node: views[chosen].node.clone(),
                    primary: old.clone(),
                    set: in_force.standbys.clone(),
                    count: in_force.count,
                });
            }
        }
    }
    let cand = views[chosen].node.clone();
    let peers: Vec<(String, PeerState)> = cluster.nodes.iter().map(|n| (n.name.clone(), PeerState::of(obs.get(&n.name)))).collect();
    let fence = plan_fencing(&old, &cand, &peers, req.force).map_err(|mut r| r.remove(0))?;
    warnings.extend(fence.warnings.iter().cloned());

    // Whether the candidate has every acknowledged commit.
    let chosen_pos = views[chosen].position();
    let compared: Vec<String> =
        views.iter().filter(|v| v.answered && v.in_recovery && v.position() <= chosen_pos).map(|v| v.node.clone()).collect();
    let sync_held = in_force.standbys.contains(&cand) && sync_guarantee(&in_force, &compared);

    // The new primary's synchronous standbys: fenced and absent nodes left out.
    let mut fenced_after: Vec<String> = obs.topology.fenced.clone();
    for r in &fence.record {
        if !fenced_after.contains(r) {
            fenced_after.push(r.clone());
        }
    }
    let mut excluded = fenced_after.clone();
    excluded.extend(cluster.nodes.iter().filter(|n| n.name != cand && !obs.get(&n.name).standby()).map(|n| n.name.clone()));
    let (new, degraded) = match crate::cluster::retarget(cluster, &cand, &excluded) {
        Ok(x) => x,
        Err(e) => return Err(Refusal::NotEligible { node: cand, why: e.to_string() }),
    };
    let new_sync = SyncRecord::of(&cand, &new.replication.sync);
    let loss_note = if sync_held {
        "none acknowledged: synchronous replication held (the candidate has every acknowledged commit)".to_string()
    } else if in_force.synchronous() {
        "forced past the synchronous guarantee: acknowledged commits may be lost".to_string()
    } else {
        "asynchronous replication: commits the old primary acknowledged after the candidate's position are lost".to_string()
    };

    // Steps. First the records (nothing restarts a fenced node as a primary; the
    // synchronous standbys the old primary ran with stay on record until the promotion, so
    // a failover abandoned midway, or run again, still knows who may hold acknowledged
    // commits).
    let mut steps = Vec::new();
    let mut fenced_new: Vec<String> = fence.record.iter().filter(|r| !obs.topology.is_fenced(r)).cloned().collect();
    fenced_new.sort();
    if !fenced_new.is_empty() {
        steps.push(Step::new(&cluster.name, Action::RecordFenced { nodes: fenced_new }).undo(Action::Unfence));
    }
    if obs.topology.sync.as_ref() != Some(&in_force) {
        steps.push(Step::new(&cluster.name, in_force.action()));
    }
    // Then, together: fencing (stopped and confirmed stopped, then standby settings in
    // the data directory) and the candidate's preparation (slots, its settings as the
    // primary, the other standbys' new settings written ahead).
    let mut group: Vec<Step> = Vec::new();
    for s in &fence.stop {
        group.push(Step::new(s, Action::Stop).guarded([Guard::Reachable { node: s.clone() }]));
    }
    for d in &fence.demote {
        group.push(
            Step::new(d, Action::WriteStandbySettings { upstream: cand.clone() })
                .guarded([Guard::NotRunning { node: d.clone() }])
                .best_effort(),
        );
    }
    let slots: Vec<String> = new.downstream(&cand).filter_map(|d| d.slot.clone()).collect();
    if !slots.is_empty() {
        group.push(Step::new(&cand, Action::CreateSlots { slots: slots.clone() }).best_effort());
    }
    group.push(
        Step::new(&cand, Action::WritePrimarySettings)
            .guarded([Guard::IsStandby { node: cand.clone() }])
            .undo(Action::WriteStandbySettings { upstream: old.clone() }),
    );
    let followers: Vec<&crate::cluster::Node> =
        new.nodes.iter().filter(|n| n.name != cand && !fenced_after.contains(&n.name) && obs.get(&n.name).standby()).collect();
    for n in &followers {
        let up = n.upstream.clone().unwrap_or_else(|| cand.clone());
        let was = cluster.node(&n.name).and_then(|c| c.upstream.clone()).unwrap_or_else(|| old.clone());
        if up != was {
            group.push(
                Step::new(&n.name, Action::WriteStandbySettings { upstream: up })
                    .undo(Action::WriteStandbySettings { upstream: was })
                    .best_effort(),
            );
        }
    }
    steps.extend(together(group));
    // The promotion, its guards checked on a look taken while fencing ran; the new
    // primary's synchronous standbys recorded right before it.
    let mut guards = vec![Guard::NoOtherWritable { except: None }, Guard::IsStandby { node: cand.clone() }];
    if let Some(p) = views[chosen].position() {
        guards.push(Guard::HasWal { node: cand.clone(), lsn: p });
    }
    for s in &fence.stop {
        guards.push(Guard::NotRunning { node: s.clone() });
    }
    steps.push(Step::new(&cluster.name, new_sync.action()));
    steps.push(Step::new(&cand, Action::Promote).guarded(guards).undo(Action::Start).commits().alongside());
    // After it: the record, then every other node pointed at it, together.
    steps.push(Step::new(&cand, Action::RecordPrimary));
    let mut group = Vec::new();
    if !slots.is_empty() {
        group.push(Step::new(&cand, Action::CreateSlots { slots }));
    }
    for n in new.nodes.iter().filter(|n| n.name != cand && !fenced_after.contains(&n.name)) {
        let up = n.upstream.clone().unwrap_or_else(|| cand.clone());
        group.push(Step::new(&n.name, Action::Repoint { upstream: up }));
    }
    if new_sync.synchronous() {
        group.push(Step::new(&cand, Action::WaitSyncStandbys { count: new_sync.count }));
    }
    steps.extend(together(group));
    steps.extend(together(
        std::iter::once(cand.clone())
            .chain(followers.iter().map(|n| n.name.clone()))
            .map(|n| Step::new(n, Action::DropStaleSlots))
            .collect(),
    ));
    steps.extend(super::archive_old_timeline(cluster, &cand));
    steps.push(Step::new(&cand, Action::CheckpointAfterPromotion));
    if let Some(d) = &degraded {
        warnings.push(d.clone());
    }

    Ok(Plan {
        cluster: cluster.name.clone(),
        operation: Operation::Failover { to: cand.clone(), force: req.force },
        primary: old,
        steps,
        warnings,
        failover: Some(FailoverDecision {
            candidate: cand,
            candidates: views,
            timeline,
            fence,
            sync_in_force: in_force,
            sync_held,
            new_sync,
            degraded,
            loss_note,
        }),
        target_lsn: chosen_pos,
        noop: false,
        pending: Vec::new(),
        after: Some(new),
    })
}
