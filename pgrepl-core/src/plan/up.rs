//! The deploy planner: what `up` would do to reach the spec from what was observed.
//!
//! Files are compared with what is rendered only when `up` runs (a probe does not read
//! them), so settings appear as "write settings where they differ"; everything else (which
//! node is initialised, cloned, started, refused) is decided here.

use super::{Action, Guard, Operation, Plan, Refusal, Step};
use crate::cluster::Cluster;
use crate::observe::{DataDirState, ObservedCluster};
use crate::spec::Role;

/// Plans `up` of `cluster` (the current one: the recorded primary applied) from `obs`.
pub fn up(cluster: &Cluster, obs: &ObservedCluster) -> Result<Plan, Refusal> {
    let primary = cluster.primary().name.clone();
    let mut plan = Plan::new(&cluster.name, Operation::Up, &primary);
    let mut order: Vec<&crate::cluster::Node> = vec![cluster.primary()];
    order.extend(cluster.standbys_in_order().into_iter().flatten());
    for n in order {
        let o = obs.get(&n.name);
        if !o.host_reachable {
            return Err(Refusal::Unreachable { node: n.name.clone() });
        }
        if o.fenced {
            plan.warnings.push(format!("{}: fenced by a failover: left as it is (`pgrepl rejoin {}` brings it back)", n.name, n.name));
            continue;
        }
        let name = n.name.as_str();
        let mut steps = Vec::new();
        if n.role == Role::Primary {
            match (o.answered(), o.data_dir) {
                (false, Some(DataDirState::Foreign)) => {
                    return Err(Refusal::ForeignFiles { node: n.name.clone(), path: "its data directory".into() });
                }
                (false, Some(DataDirState::Missing)) => {
                    steps.push(Step::new(name, Action::Initdb).guarded([Guard::NotRunning { node: n.name.clone() }]));
                    steps.push(Step::new(name, Action::WriteSettings));
                    steps.push(Step::new(name, Action::Start));
                }
                _ if o.standby() => {
                    return Err(Refusal::NotEligible {
                        node: n.name.clone(),
                        why: "the spec makes it the primary but it runs as a standby: use `pgrepl switchover` or `pgrepl failover`".into(),
                    });
                }
                _ => {
                    steps.push(Step::new(name, Action::WriteSettings));
                    if !o.runs() {
                        steps.push(Step::new(name, Action::Start));
                    }
                }
            }
            steps.push(Step::new(name, Action::EnsureReplicationRole));
            let slots: Vec<String> = cluster.downstream(name).filter_map(|d| d.slot.clone()).collect();
            if !slots.is_empty() {
                steps.push(Step::new(name, Action::CreateSlots { slots }));
            }
        } else {
            let upstream = n.upstream.clone().unwrap_or_else(|| primary.clone());
            if o.writable() {
                steps
                    .push(Step::new(name, Action::Clone { from: upstream.clone() }).guarded([Guard::NotWritable { node: n.name.clone() }]));
                plan.warnings.push(format!(
                    "{name} runs as a primary: `up` replaces it only if it was never used (no database, table or role of its own); otherwise it refuses and `pgrepl rejoin {name}` is the way"
                ));
            } else {
                match (o.answered(), o.data_dir, o.standby_configured) {
                    (false, Some(DataDirState::Foreign), _) => {
                        return Err(Refusal::ForeignFiles { node: n.name.clone(), path: "its data directory".into() });
                    }
                    (false, Some(DataDirState::Cluster), Some(false)) if !o.runs() => {
                        return Err(Refusal::NotEligible {
                            node: n.name.clone(),
                            why: format!(
                                "its data directory holds a cluster that is not a standby (a former primary?): pgrepl will not overwrite it; use `pgrepl rejoin {name}`"
                            ),
                        });
                    }
                    (false, Some(DataDirState::Missing), _) => {
                        steps.push(
                            Step::new(name, Action::Clone { from: upstream.clone() }).guarded([Guard::NotRunning { node: n.name.clone() }]),
                        );
                        steps.push(Step::new(name, Action::WriteStandbySettings { upstream: upstream.clone() }));
                        steps.push(Step::new(name, Action::Start));
                    }
                    _ => {
                        steps.push(Step::new(name, Action::WriteStandbySettings { upstream: upstream.clone() }));
                        if !o.runs() {
                            steps.push(Step::new(name, Action::Start));
                        }
                    }
                }
            }
            if !obs.get(&upstream).streams_to(name) {
                steps.push(Step::new(name, Action::WaitStreaming { from: upstream }));
            }
        }
        plan.steps.extend(steps);
    }
    plan.noop = plan.steps.iter().all(|s| {
        matches!(
            s.action,
            Action::WriteSettings | Action::WriteStandbySettings { .. } | Action::EnsureReplicationRole | Action::CreateSlots { .. }
        )
    });
    Ok(plan)
}
