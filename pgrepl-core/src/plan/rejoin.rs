//! The rejoin planner: how a former primary, a fenced node or a diverged standby comes
//! back as a standby (as it is, by pg_rewind, or by a fresh clone), never writable.

use serde::Serialize;

use super::{Action, Guard, Operation, Plan, Refusal, RejoinHow, Step};
use crate::cluster::Cluster;
use crate::observe::ObservedCluster;

/// What `pgrepl rejoin` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejoinRequest {
    /// The node to bring back.
    pub node: String,
}

/// What a rejoin needs to know beyond the observation (read from the node's data
/// directory and WAL, which a probe does not read): the method its WAL allows, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejoinFacts {
    /// How its WAL allows it back.
    pub how: RejoinHow,
    /// Why.
    pub reason: String,
    /// Its data directory holds files that are not a cluster.
    pub foreign_files: Option<String>,
}

/// Plans bringing `req.node` back as a standby. `facts` is `None` while its WAL has not
/// been examined (a dry run that did not read it): the plan then says "as its WAL allows".
pub fn rejoin(cluster: &Cluster, obs: &ObservedCluster, req: &RejoinRequest, facts: Option<&RejoinFacts>) -> Result<Plan, Refusal> {
    let node = req.node.as_str();
    let n = cluster
        .node(node)
        .ok_or_else(|| Refusal::UnknownNode { node: node.to_string(), known: cluster.nodes.iter().map(|n| n.name.clone()).collect() })?;
    let primary = cluster.primary().name.clone();
    if node == primary {
        return Err(Refusal::IsPrimary { node: node.to_string() });
    }
    let writable = obs.writable();
    if !writable.contains(&primary) {
        return Err(Refusal::PrimaryDown { primary, node: node.to_string() });
    }
    if let Some(w) = writable.iter().find(|w| **w != primary && **w != node) {
        return Err(Refusal::OtherAlsoWritable { other: w.clone() });
    }
    let o = obs.get(node);
    if !o.host_reachable {
        return Err(Refusal::Unreachable { node: node.to_string() });
    }
    if let Some(f) = facts.and_then(|f| f.foreign_files.clone()) {
        return Err(Refusal::ForeignFiles { node: node.to_string(), path: f });
    }
    let upstream = n.upstream.clone().unwrap_or_else(|| primary.clone());
    let mut plan = Plan::new(&cluster.name, Operation::Rejoin { node: node.to_string() }, &primary);
    let streaming = o.standby() && obs.get(&upstream).streams_to(node) && o.timeline.is_none_or(|t| Some(t) == obs.get(&primary).timeline);
    if streaming {
        if o.fenced {
            plan.steps.push(Step::new(node, Action::Unfence));
            plan.steps.push(Step::new(&primary, Action::UpdateSyncStandbys));
        } else {
            plan.noop = true;
        }
        return Ok(plan);
    }
    if o.runs() {
        plan.steps.push(Step::new(node, Action::Stop));
    }
    let how = facts.map(|f| f.how);
    if let Some(f) = facts {
        plan.warnings.push(format!("{}: {}", node, f.reason));
    } else {
        plan.warnings.push(format!("{node}: its WAL is examined when the rejoin runs: as it is, pg_rewind or a fresh clone, as it allows"));
    }
    plan.steps.push(
        Step::new(node, Action::WriteStandbySettings { upstream: upstream.clone() })
            .guarded([Guard::NotRunning { node: node.to_string() }])
            .best_effort(),
    );
    plan.steps.push(
        Step::new(node, Action::Rejoin { how, upstream: upstream.clone() })
            .guarded([Guard::NotRunning { node: node.to_string() }, Guard::NoOtherWritable { except: Some(primary.clone()) }])
            .commits(),
    );
    plan.steps.push(Step::new(node, Action::DropStaleSlots));
    if o.fenced {
        plan.steps.push(Step::new(node, Action::Unfence));
    }
    plan.steps.push(Step::new(&primary, Action::UpdateSyncStandbys));
    Ok(plan)
}
