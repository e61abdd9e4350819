//! The deploy planner: what `up` would do to reach the spec from what was observed.
//!
//! Files are compared with what is rendered only when `up` runs (a probe does not read
//! them), so settings appear as "write settings where they differ"; everything else (which
//! node is initialised, cloned, started, refused) is decided here.

use super::{Action, Guard, Operation, Plan, Refusal, Step, together};
use crate::cluster::Cluster;
use crate::observe::{DataDirState, ObservedCluster};
use crate::spec::Role;

/// Plans `up` of `cluster` (the current one: the recorded primary applied) from `obs`:
/// the primary's steps first, then each level of standbys together (a node's steps in
/// order), then, together, the waits until every standby streams. Each step re-reads what
/// it acts on when it runs (the data directory, whether the server runs), so what a probe
/// cannot see (an unfinished clone, an unused cluster the host came with) is handled there.
pub fn up(cluster: &Cluster, obs: &ObservedCluster) -> Result<Plan, Refusal> {
    let primary = cluster.primary().name.clone();
    let mut plan = Plan::new(&cluster.name, Operation::Up, &primary);
    let mut levels: Vec<Vec<&crate::cluster::Node>> = vec![vec![cluster.primary()]];
    levels.extend(cluster.standbys_in_order());
    let mut waits = Vec::new();
    // Standbys to be cloned into an empty data directory get ready for it (directories,
    // passfile, the layout's configuration: seconds with Debian's pg_createcluster) while
    // the primary is set up, in the first group.
    let mut prepares: Vec<Step> = levels[1..]
        .iter()
        .flatten()
        .filter(|n| {
            let o = obs.get(&n.name);
            o.host_reachable && !o.fenced && !o.answered() && !o.unfinished_clone && o.data_dir == Some(DataDirState::Missing)
        })
        .map(|n| Step::new(&n.name, Action::PrepareClone).guarded([Guard::NotRunning { node: n.name.clone() }]))
        .collect();
    for level in levels {
        let mut group = Vec::new();
        for n in level {
            let o = obs.get(&n.name);
            if !o.host_reachable {
                return Err(Refusal::Unreachable { node: n.name.clone() });
            }
            if o.fenced {
                plan.warnings.push(format!("{}: fenced by a failover: left as it is (`pgrepl rejoin {}` brings it back)", n.name, n.name));
                continue;
            }
            let name = n.name.as_str();
            let slots: Vec<String> = cluster.downstream(name).filter_map(|d| d.slot.clone()).collect();
            if n.role == Role::Primary {
                match (o.answered(), o.data_dir) {
                    (false, Some(DataDirState::Foreign)) => {
                        return Err(Refusal::ForeignFiles { node: n.name.clone(), path: "its data directory".into() });
                    }
                    (false, Some(DataDirState::Missing)) => {
                        group.push(Step::new(name, Action::Initdb).guarded([Guard::NotRunning { node: n.name.clone() }]));
                        group.push(Step::new(name, Action::WriteSettings));
                        group.push(Step::new(name, Action::Start));
                    }
                    (false, Some(DataDirState::Cluster)) if o.standby_configured == Some(true) && !o.runs() => {
                        return Err(Refusal::WrongDataDirectory {
                            node: n.name.clone(),
                            why: "the spec makes it the primary but its data directory holds a standby (standby.signal or recovery.conf); after a failover, update the spec's roles or use `pgrepl switchover`".into(),
                        });
                    }
                    _ if o.standby() => {
                        return Err(Refusal::WrongDataDirectory {
                            node: n.name.clone(),
                            why: "the spec makes it the primary but it runs as a standby: use `pgrepl switchover` or `pgrepl failover`"
                                .into(),
                        });
                    }
                    _ => {
                        group.push(Step::new(name, Action::WriteSettings));
                        if !o.runs() {
                            group.push(Step::new(name, Action::Start));
                        }
                    }
                }
                group.push(Step::new(name, Action::EnsureReplicationRole));
            } else {
                let upstream = n.upstream.clone().unwrap_or_else(|| primary.clone());
                if o.writable() {
                    // Replaced only if it was never used: the step finds out and refuses otherwise.
                    group.push(Step::new(name, Action::Clone { from: upstream.clone() }));
                    group.push(Step::new(name, Action::Start));
                    plan.warnings.push(format!(
                        "{name} runs as a primary: `up` replaces it only if it was never used (no database, table or role of its own); otherwise it refuses and `pgrepl rejoin {name}` is the way"
                    ));
                } else if !o.answered() && o.unfinished_clone {
                    // A clone was interrupted: cloned again (whatever it left is replaced).
                    group.push(
                        Step::new(name, Action::Clone { from: upstream.clone() }).guarded([Guard::NotRunning { node: n.name.clone() }]),
                    );
                    group.push(Step::new(name, Action::Start));
                } else {
                    match (o.answered(), o.data_dir, o.standby_configured) {
                        (false, Some(DataDirState::Foreign), _) => {
                            return Err(Refusal::ForeignFiles { node: n.name.clone(), path: "its data directory".into() });
                        }
                        (false, Some(DataDirState::Cluster), Some(false)) if !o.runs() => {
                            return Err(Refusal::WrongDataDirectory {
                                node: n.name.clone(),
                                why: format!(
                                    "its data directory holds a cluster that is not a standby (a former primary?): pgrepl will not overwrite it; use `pgrepl rejoin {name}`"
                                ),
                            });
                        }
                        (false, Some(DataDirState::Missing), _) => {
                            group.push(
                                Step::new(name, Action::Clone { from: upstream.clone() })
                                    .guarded([Guard::NotRunning { node: n.name.clone() }]),
                            );
                            group.push(Step::new(name, Action::Start));
                        }
                        _ => {
                            group.push(Step::new(name, Action::WriteSettings));
                            if !o.runs() {
                                group.push(Step::new(name, Action::Start));
                            }
                        }
                    }
                }
                if !obs.get(&upstream).streams_to(name) {
                    waits.push(Step::new(name, Action::WaitStreaming { from: upstream }));
                }
            }
            if !slots.is_empty() {
                group.push(Step::new(name, Action::CreateSlots { slots }));
            }
        }
        group.append(&mut prepares);
        plan.steps.extend(together(group));
    }
    plan.steps.extend(together(waits));
    plan.noop = plan.steps.iter().all(|s| {
        matches!(
            s.action,
            Action::WriteSettings | Action::WriteStandbySettings { .. } | Action::EnsureReplicationRole | Action::CreateSlots { .. }
        )
    });
    Ok(plan)
}
