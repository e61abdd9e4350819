//! The switchover planner: a planned move of the primary role with no acknowledged write
//! lost (the candidate replays the old primary's shutdown checkpoint before its promotion).

use serde::Serialize;

use super::{Action, Guard, Operation, Plan, Refusal, Step, together};
use crate::cluster::Cluster;
use crate::observe::ObservedCluster;

/// A switchover candidate may be at most this far behind the primary (replay), so the
/// write-unavailable window stays short.
pub const SWITCHOVER_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;

/// What `pgrepl switchover` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchoverRequest {
    /// The standby that becomes the primary.
    pub to: String,
}

/// Plans a switchover of `cluster` (the current one) to `req.to` from `obs`. A switchover
/// to the node that already is the only writable one converges the others (a plan of
/// repoints, `noop` when nothing would change is the executor's to find).
pub fn switchover(cluster: &Cluster, obs: &ObservedCluster, req: &SwitchoverRequest) -> Result<Plan, Refusal> {
    let to = req.to.as_str();
    let target = cluster
        .node(to)
        .ok_or_else(|| Refusal::UnknownNode { node: to.to_string(), known: cluster.nodes.iter().map(|n| n.name.clone()).collect() })?;
    let old = cluster.primary().name.clone();
    let writable = obs.writable();
    let fenced = &obs.topology.fenced;
    let base = |steps: Vec<Step>, noop: bool, after: Cluster| Plan {
        cluster: cluster.name.clone(),
        operation: Operation::Switchover { to: to.to_string() },
        primary: old.clone(),
        steps,
        warnings: Vec::new(),
        failover: None,
        target_lsn: None,
        noop,
        pending: Vec::new(),
        after: Some(after),
    };
    match writable.as_slice() {
        [w] if w == to => {
            // Already the primary (again, or after an interrupted switchover): converge.
            let (new, _) = crate::cluster::retarget(cluster, to, fenced)
                .map_err(|e| Refusal::NotEligible { node: to.to_string(), why: e.to_string() })?;
            let mut steps = vec![Step::new(to, Action::RecordPrimary), Step::new(to, Action::WritePrimarySettings)];
            if cluster.ha.is_some() && old != to {
                // The key follows the writable node (an interrupted switchover).
                steps.insert(0, Step::new(&cluster.name, Action::MoveLeaderKey { from: old.clone(), to: to.to_string() }));
            }
            let mut group = Vec::new();
            for n in new.nodes.iter().filter(|n| n.name != to && !fenced.contains(&n.name)) {
                group.push(Step::new(&n.name, Action::Repoint { upstream: n.upstream.clone().unwrap_or_default() }));
            }
            steps.extend(together(group));
            steps.extend(together(
                new.nodes.iter().filter(|n| !fenced.contains(&n.name)).map(|n| Step::new(&n.name, Action::DropStaleSlots)).collect(),
            ));
            return Ok(base(steps, old == to, new));
        }
        [w] if *w == old => {}
        [] => {
            let why = obs.get(&old).error.clone().unwrap_or_else(|| "not running".into());
            return Err(Refusal::NoRunningPrimary { primary: old, why });
        }
        [w] => return Err(Refusal::UnrecordedPrimary { node: w.clone(), recorded: old }),
        many => return Err(Refusal::SplitBrain { nodes: many.to_vec() }),
    }
    if obs.topology.is_fenced(to) {
        return Err(Refusal::Fenced { node: to.to_string() });
    }
    let co = obs.get(to);
    let po = obs.get(&old);
    if !co.standby() {
        return Err(Refusal::NotAStandby { node: to.to_string(), why: co.error.clone().unwrap_or_else(|| "not running".into()) });
    }
    let up = target.upstream.clone().unwrap_or_default();
    if !(obs.get(&up).streams_to(to) || co.receiver.as_deref() == Some("streaming")) {
        return Err(Refusal::NotStreaming { node: to.to_string(), upstream: up });
    }
    if let (Some(a), Some(b)) = (co.timeline, po.timeline) {
        if a != b {
            return Err(Refusal::OtherTimeline { node: to.to_string(), node_timeline: a, primary_timeline: b });
        }
    }
    let lag = match (po.lsn, co.lsn) {
        (Some(p), Some(c)) => p.bytes_after(c),
        _ => 0,
    };
    if lag > SWITCHOVER_MAX_LAG_BYTES {
        return Err(Refusal::TooFarBehind { node: to.to_string(), primary: old, lag_bytes: lag, max_bytes: SWITCHOVER_MAX_LAG_BYTES });
    }
    let (new, degraded) =
        crate::cluster::retarget(cluster, to, fenced).map_err(|e| Refusal::NotEligible { node: to.to_string(), why: e.to_string() })?;
    // Ahead of the stop, together: the slots the candidate's standbys will use (physical
    // slots can be made in recovery), the other standbys' new settings (applied after the
    // promotion; put back if it is abandoned).
    let mut steps = Vec::new();
    let mut group = Vec::new();
    let slots: Vec<String> = new.downstream(to).filter_map(|d| d.slot.clone()).collect();
    if !slots.is_empty() {
        group.push(Step::new(to, Action::CreateSlots { slots: slots.clone() }).best_effort());
    }
    let others: Vec<&crate::cluster::Node> =
        new.nodes.iter().filter(|n| n.name != old && n.name != to && !fenced.contains(&n.name) && obs.get(&n.name).standby()).collect();
    for n in &others {
        let was = cluster.node(&n.name).and_then(|c| c.upstream.clone()).unwrap_or_else(|| old.clone());
        group.push(
            Step::new(&n.name, Action::WriteStandbySettings { upstream: n.upstream.clone().unwrap_or_default() })
                .undo(Action::WriteStandbySettings { upstream: was }),
        );
    }
    steps.extend(together(group));
    steps.push(Step::new(&old, Action::Checkpoint).best_effort());
    // The write-unavailable window: the clean stop; then, together, the old primary's data
    // directory made a standby's (a crash of pgrepl past this point leaves no
    // primary-shaped directory behind) and the candidate's replay of the shutdown checkpoint.
    steps.push(Step::new(&old, Action::StopClean).guarded([Guard::IsStandby { node: to.to_string() }]).undo(Action::Start));
    steps.push(
        Step::new(&old, Action::WriteStandbySettings { upstream: to.to_string() })
            .guarded([Guard::NotRunning { node: old.clone() }])
            .undo(Action::WritePrimarySettings),
    );
    steps.push(
        Step::new(to, Action::WaitReplayShutdownCheckpoint { of: old.clone() })
            .guarded([Guard::IsStandby { node: to.to_string() }])
            .alongside(),
    );
    // Then (in the same group, so the guards read the look taken during the stop): the new
    // primary's synchronous standbys recorded, its settings written, promoted.
    let new_sync = crate::topology::SyncRecord::of(to, &new.replication.sync);
    steps.push(Step::new(&cluster.name, new_sync.action()).alongside());
    // `[ha]`: the leader key goes to the candidate before it accepts a write (its agent,
    // even paused, would stop a writable node another holds the key of), and back if the
    // switchover is abandoned before the promotion.
    if cluster.ha.is_some() {
        steps.push(
            Step::new(&cluster.name, Action::MoveLeaderKey { from: old.clone(), to: to.to_string() })
                .undo(Action::MoveLeaderKey { from: to.to_string(), to: old.clone() })
                .alongside(),
        );
    }
    steps.push(
        Step::new(to, Action::WritePrimarySettings)
            .guarded([Guard::IsStandby { node: to.to_string() }])
            .undo(Action::WriteStandbySettings { upstream: up.clone() })
            .alongside(),
    );
    steps.push(
        Step::new(to, Action::Promote)
            .guarded([
                Guard::NoOtherWritable { except: None },
                Guard::NotWritable { node: old.clone() },
                Guard::IsStandby { node: to.to_string() },
            ])
            .undo(Action::Start)
            .commits()
            .alongside(),
    );
    // After it: the record, then the old primary and the others following it, together.
    steps.push(Step::new(to, Action::RecordPrimary));
    let mut group = Vec::new();
    if !slots.is_empty() {
        group.push(Step::new(to, Action::CreateSlots { slots }));
    }
    group.push(Step::new(&old, Action::StartAsStandby { upstream: to.to_string() }));
    for n in &others {
        group.push(Step::new(&n.name, Action::Repoint { upstream: n.upstream.clone().unwrap_or_default() }));
    }
    if new_sync.synchronous() {
        group.push(Step::new(to, Action::WaitSyncStandbys { count: new_sync.count }));
    }
    steps.extend(together(group));
    steps.extend(together(
        std::iter::once(to.to_string())
            .chain(std::iter::once(old.clone()))
            .chain(others.iter().map(|n| n.name.clone()))
            .map(|n| Step::new(n, Action::DropStaleSlots))
            .collect(),
    ));
    steps.extend(super::archive_old_timeline(cluster, to));
    steps.push(Step::new(to, Action::CheckpointAfterPromotion));
    let mut plan = base(steps, false, new);
    plan.target_lsn = po.lsn;
    if let Some(d) = degraded {
        plan.warnings.push(d);
    }
    for o in obs.nodes.iter().filter(|o| !o.host_reachable) {
        plan.warnings.push(format!("{}: cannot be reached; `pgrepl up` points it at {to} later", o.node));
    }
    Ok(plan)
}
