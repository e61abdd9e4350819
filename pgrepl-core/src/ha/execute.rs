//! The executor: carries out any [`Plan`], step by step.
//!
//! Steps run in the plan's groups ([`Plan::groups`]): the steps of one group run at the
//! same time, except that the steps on one node keep their order and a record of the
//! cluster runs after the steps before it in its group and before those after it. Right
//! before a step runs its guards are checked against a look at the nodes they read: the
//! planning observation for the first guarded group, then a look taken while the steps
//! before run (the write gap does not wait for it), with what this operation established
//! itself (a node it stopped and confirmed stopped) taking precedence. The operation
//! lock is checked with every guard.
//!
//! A step that fails before the point of no return (the step marked `commits`) abandons
//! the plan: the steps done are undone in reverse order (their `undo`), the topology
//! record goes back to what it was, and the error says why. A best-effort step's failure
//! is a warning. Past the point of no return a failure is a problem in the report and the
//! plan goes on. What each action does is [`Exec::act`]; operations never branch on a
//! backend's name.

use std::sync::Mutex;

use super::*;
use crate::observe::{Observed, ServerState};
use crate::plan::{Action as Do, Plan, Step};

/// Why a step failed, and what follows.
pub(super) enum Fail {
    /// Abandon the plan (undo what was done).
    Abandon(Error),
    /// Abandon the plan, undoing this step too (it was confirmed not to have happened,
    /// and its undo puts the node back: a promotion confirmed not done).
    AbandonWithIt(Error),
    /// Stop here and undo nothing: the state is unknown (a promotion that may still finish).
    Final(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Abandon(e)
    }
}

/// Whether an action runs forward or undoes a step.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Forward,
    Undo,
}

/// What the steps established so far.
pub(super) struct State {
    pub(super) report: OperationReport,
    /// Nodes this operation stopped (and confirmed stopped) or demoted on disk.
    pub(super) settled: Vec<Observed>,
    /// Nodes whose settings as the primary changed (reloaded at the promotion).
    pub(super) reload: Vec<String>,
    /// Standbys whose new settings were written ahead (reloaded when repointed).
    pub(super) prewritten: Vec<String>,
    /// Background stops (the old primary's clean stop), to be waited for.
    pub(super) stop_tasks: Vec<(String, tokio::task::JoinHandle<Result<(), Error>>)>,
    /// When the stop of the write gap started.
    pub(super) gap_started: Option<Instant>,
    /// When the promotion was confirmed.
    pub(super) promoted_at: Option<Instant>,
    /// Nodes whose slots were made.
    pub(super) slots_made: Vec<String>,
    /// Where the new timeline starts.
    pub(super) new_timeline_start: Option<Lsn>,
}

/// A plan being carried out.
pub(super) struct Exec<'a> {
    pub(super) op: &'a Op<'a>,
    pub(super) plan: &'a Plan,
    pub(super) obs: &'a ObservedCluster,
    /// The cluster as it is.
    pub(super) before: &'a Cluster,
    /// The cluster as the plan leaves it.
    pub(super) after: Cluster,
    pub(super) t0: Instant,
    /// The topology as recorded so far (saved by the record steps, one at a time).
    pub(super) topo: tokio::sync::Mutex<Topology>,
    pub(super) st: Mutex<State>,
}

impl<'a> Exec<'a> {
    pub(super) fn new(op: &'a Op<'a>, plan: &'a Plan, obs: &'a ObservedCluster, t0: Instant) -> Exec<'a> {
        let after = plan.after.clone().unwrap_or_else(|| op.cluster.clone());
        let mut report = OperationReport::new(&op.cluster, op.major(), plan);
        report.old_timeline = obs.get(&plan.primary).timeline;
        for (n, e) in &op.unreachable {
            if !report.warnings.iter().any(|w| w.starts_with(&format!("{n}:"))) {
                report.warnings.push(format!("{n}: cannot be reached ({e})"));
            }
        }
        Exec {
            op,
            plan,
            obs,
            before: &op.cluster,
            after,
            t0,
            topo: tokio::sync::Mutex::new(op.topology.clone()),
            st: Mutex::new(State {
                report,
                settled: Vec::new(),
                reload: Vec::new(),
                prewritten: Vec::new(),
                stop_tasks: Vec::new(),
                gap_started: None,
                promoted_at: None,
                slots_made: Vec::new(),
                new_timeline_start: None,
            }),
        }
    }

    /// The state, for a short look or change (never held across an await).
    pub(super) fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries the plan out. On success the report is in the state.
    pub(super) async fn run(&self) -> Result<(), Error> {
        let steps = &self.plan.steps;
        let groups = self.plan.groups();
        let guarded: Vec<usize> = (0..groups.len()).filter(|&g| steps[groups[g].clone()].iter().any(|s| !s.guards.is_empty())).collect();
        let mut probes: Vec<(usize, Vec<Observed>)> = Vec::new();
        if let Some(&first) = guarded.first() {
            probes.push((first, self.obs.nodes.clone()));
        }
        let mut records: Vec<Option<StepRecord>> = vec![None; steps.len()];
        let mut done: Vec<usize> = Vec::new();
        let mut committed = false;
        let mut outcome: Result<(), Error> = Ok(());
        for (gi, g) in groups.iter().enumerate() {
            // The look the next guarded group's guards read, taken while this one (guarded
            // too) and those between run.
            let next = guarded.iter().position(|&x| x == gi).and_then(|k| guarded.get(k + 1)).copied();
            let prefetch = async {
                match next {
                    Some(x) => {
                        let skip = self.settled_by(&groups[gi..x]);
                        Some((x, self.look(&guards_of(steps, &groups[x]), &skip).await))
                    }
                    None => None,
                }
            };
            let probed = probes.iter().position(|(p, _)| *p == gi).map(|i| probes.swap_remove(i).1).unwrap_or_default();
            let (results, pre) = tokio::join!(self.run_group(g.clone(), &probed), prefetch);
            if let Some(p) = pre {
                probes.push(p);
            }
            let mut failure: Option<(usize, Fail)> = None;
            for (i, r) in results {
                let s = &steps[i];
                let (outcome, detail, seconds) = match &r {
                    Ok((d, secs)) => (StepOutcome::Done, d.clone(), *secs),
                    Err((f, secs)) => (StepOutcome::Failed, Some(fail_error(f).to_string()), *secs),
                };
                records[i] = Some(StepRecord { node: s.node.clone(), action: s.action.clone(), outcome, detail, seconds });
                match r {
                    Ok(_) => {
                        done.push(i);
                        committed |= s.commits;
                    }
                    Err((f, _)) if s.best_effort || committed => {
                        let e = fail_error(&f).to_string();
                        let mut st = self.st();
                        if committed {
                            st.report.problems.push(e);
                        } else {
                            st.report.warnings.push(format!("{}: {} failed ({e}); going on", s.node, s.action));
                        }
                    }
                    Err((f, _)) => {
                        if failure.is_none() {
                            failure = Some((i, f));
                        }
                    }
                }
            }
            if let Some((i, f)) = failure {
                outcome = Err(self.abandon(i, f, &done, &mut records).await);
                break;
            }
        }
        let mut st = self.st();
        st.report.steps = records
            .into_iter()
            .zip(steps)
            .map(|(r, s)| {
                r.unwrap_or_else(|| StepRecord {
                    node: s.node.clone(),
                    action: s.action.clone(),
                    outcome: StepOutcome::NotRun,
                    detail: None,
                    seconds: 0.0,
                })
            })
            .collect();
        outcome
    }

    /// Runs one group: per node in order, records of the cluster as barriers. Each
    /// step's guards are checked right before it runs. Returns each step's result.
    #[allow(clippy::type_complexity)]
    async fn run_group(&self, g: std::ops::Range<usize>, probed: &[Observed]) -> Vec<(usize, Result<(Option<String>, f64), (Fail, f64)>)> {
        let steps = &self.plan.steps;
        let mut out = Vec::new();
        // Waves: split at the cluster's records.
        let mut waves: Vec<Vec<usize>> = vec![Vec::new()];
        for i in g {
            if steps[i].node == self.before.name {
                waves.push(vec![i]);
                waves.push(Vec::new());
            } else {
                waves.last_mut().expect("one").push(i);
            }
        }
        for wave in waves.into_iter().filter(|w| !w.is_empty()) {
            let mut chains: Vec<Vec<usize>> = Vec::new();
            for i in wave {
                match chains.iter_mut().find(|c| steps[c[0]].node == steps[i].node) {
                    Some(c) => c.push(i),
                    None => chains.push(vec![i]),
                }
            }
            let results = join_all(chains.into_iter().map(|chain| async move {
                let mut rs = Vec::new();
                for i in chain {
                    let t = Instant::now();
                    let r = match self.check(&steps[i], probed).await {
                        Ok(()) => self.act(&steps[i].node, &steps[i].action, Mode::Forward).await,
                        Err(e) => Err(Fail::Abandon(e)),
                    };
                    let failed = r.is_err();
                    rs.push((i, r.map(|d| (d, t.elapsed().as_secs_f64())).map_err(|f| (f, t.elapsed().as_secs_f64()))));
                    if failed {
                        break;
                    }
                }
                rs
            }))
            .await;
            let failed = results.iter().flatten().any(|(i, r)| r.is_err() && !steps[*i].best_effort);
            out.extend(results.into_iter().flatten());
            if failed {
                break;
            }
        }
        out
    }

    /// Nodes the steps of `groups` settle themselves (stopped, demoted on disk) or change
    /// underway (readied for a clone): a look taken meanwhile skips them.
    fn settled_by(&self, groups: &[std::ops::Range<usize>]) -> Vec<String> {
        let mut v = Vec::new();
        for g in groups {
            for s in &self.plan.steps[g.clone()] {
                // A node readied for its clone is changing while the look would be taken
                // (its data directory made and removed): skipped, it is looked at when its
                // next guarded step comes.
                let settles = matches!(s.action, Do::Stop | Do::StopClean | Do::Fence | Do::PrepareClone)
                    || (matches!(s.action, Do::WriteStandbySettings { .. })
                        && s.guards.iter().any(|g| matches!(g, plan::Guard::NotRunning { .. })));
                if settles && !v.contains(&s.node) {
                    v.push(s.node.clone());
                }
            }
        }
        v
    }

    /// A look at the nodes `guards` read, but not at `skip`.
    async fn look(&self, guards: &[plan::Guard], skip: &[String]) -> Vec<Observed> {
        let mut v = self.op.probe_guards(guards, skip).await;
        v.retain(|o| !skip.contains(&o.node));
        v
    }

    /// Checks a step's guards (and the operation lock) against `probed` and what this
    /// operation settled; a node skipped by the look and not settled is looked at now.
    async fn check(&self, step: &Step, probed: &[Observed]) -> Result<(), Error> {
        if step.guards.is_empty() {
            return Ok(());
        }
        let settled = self.st().settled.clone();
        let mut nodes: Vec<Observed> = probed.to_vec();
        let wanted: Option<Vec<String>> = step.guards.iter().try_fold(Vec::new(), |mut acc, g| {
            g.nodes().map(|n| {
                acc.extend(n.into_iter().map(String::from));
                acc
            })
        });
        let missing: Vec<String> = self
            .before
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| wanted.as_ref().is_none_or(|w| w.contains(n)))
            .filter(|n| !nodes.iter().any(|o| o.node == *n) && !settled.iter().any(|o| o.node == *n))
            .collect();
        if !missing.is_empty() {
            let skip: Vec<String> = self.before.nodes.iter().map(|n| n.name.clone()).filter(|n| !missing.contains(n)).collect();
            nodes.extend(self.look(&step.guards, &skip).await);
        }
        self.op.check_guards(&step.guards, nodes, &settled)
    }

    /// Abandons the plan at step `at`: what was done is undone in reverse order, the
    /// topology record goes back to what it was. Returns the error to report.
    async fn abandon(&self, at: usize, f: Fail, done: &[usize], records: &mut [Option<StepRecord>]) -> Error {
        let steps = &self.plan.steps;
        let (e, with_it) = match f {
            Fail::Final(e) => return e,
            // A restart plan stops where it failed: a restart cannot be undone, and a
            // switchover it made is recorded (the record must not go back).
            Fail::Abandon(e) | Fail::AbandonWithIt(e) if matches!(self.plan.operation, plan::Operation::Restart { .. }) => return e,
            Fail::Abandon(e) => (e, false),
            Fail::AbandonWithIt(e) => (e, true),
        };
        // A background stop finishes first (the old primary is then started again).
        let tasks: Vec<_> = std::mem::take(&mut self.st().stop_tasks);
        for (_, t) in tasks {
            let _ = t.await;
        }
        let mut undo: Vec<usize> = Vec::new();
        if with_it {
            undo.push(at);
        }
        undo.extend(done.iter().rev().copied());
        let mut failed = Vec::new();
        for i in undo {
            let s = &steps[i];
            let Some(u) = &s.undo else { continue };
            match self.act(&s.node, u, Mode::Undo).await {
                Ok(_) => {
                    if let Some(r) = records[i].as_mut() {
                        r.outcome = StepOutcome::Undone;
                    }
                }
                Err(f) => failed.push(format!("{}: {u}: {}", s.node, fail_error(&f))),
            }
        }
        let topo_back = self.op.save(&self.op.topology).await;
        if let Err(se) = topo_back {
            failed.push(format!("the topology record could not be put back: {se}"));
        }
        match &self.plan.operation {
            plan::Operation::Switchover { .. } => {
                let old = &self.plan.primary;
                Error::node(
                    old,
                    format!(
                        "the switchover was abandoned before any promotion: {e}; {}",
                        if failed.is_empty() {
                            format!("{old} runs as the primary, nothing changed")
                        } else {
                            format!("putting things back failed ({}): run `pgrepl status`, then `pgrepl up`", failed.join("; "))
                        }
                    ),
                )
            }
            _ if failed.is_empty() => e,
            _ => Error::node(&steps[at].node, format!("{e}; and putting things back failed: {}", failed.join("; "))),
        }
    }

    /// The epilogue once the plan ran: the new primary's timeline and position recorded.
    pub(super) async fn settle_records(&self) {
        if self.st().promoted_at.is_none() {
            return;
        }
        let primary = self.after.primary().clone();
        let Some(h) = self.op.handle(&primary.name) else { return };
        let caps = self.op.caps;
        let tli = primary_timeline(h, primary.port, &caps).await.ok().flatten();
        let start = match tli {
            Some(t) => read_history(h, &caps, t).await.ok().and_then(|h| h.last().map(|e| e.switchpoint)),
            None => None,
        };
        let lsn = current_lsn(h, primary.port, &caps).await.ok().flatten();
        {
            let mut st = self.st();
            st.report.new_timeline = tli;
            st.new_timeline_start = start;
        }
        let promoted_at = self.st().promoted_at;
        let mut topo = self.topo.lock().await;
        if tli.is_some() {
            topo.timeline = tli;
        }
        if let Some(l) = lsn.or(start) {
            topo.last_primary_lsn = Some(l.to_string());
        }
        topo.record_promotion(crate::topology::Promotion {
            node: primary.name.clone(),
            from: self.plan.primary.clone(),
            kind: match self.plan.operation {
                plan::Operation::Switchover { .. } => crate::topology::PromotionKind::Switchover,
                _ => crate::topology::PromotionKind::Failover,
            },
            timeline: tli,
            lsn: start.map(|s| s.to_string()),
            at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            millis: promoted_at.map(|p| p.saturating_duration_since(self.t0).as_millis() as u64).unwrap_or(0),
        });
        let _ = self.op.save(&topo).await;
    }
}

fn guards_of(steps: &[Step], g: &std::ops::Range<usize>) -> Vec<plan::Guard> {
    steps[g.clone()].iter().flat_map(|s| s.guards.iter().cloned()).collect()
}

pub(super) fn fail_error(f: &Fail) -> &Error {
    match f {
        Fail::Abandon(e) | Fail::AbandonWithIt(e) | Fail::Final(e) => e,
    }
}

/// An observation of a node this operation stopped (and confirmed stopped).
pub(super) fn settled_stopped(node: &str, standby_configured: Option<bool>) -> Observed {
    let mut o = Observed::unknown(node);
    o.host_reachable = true;
    o.server = ServerState::Stopped;
    o.standby_configured = standby_configured;
    o
}
