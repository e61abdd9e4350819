//! The failover executor: carries out [`crate::plan::failover`]'s plan.

use super::*;

// =======================================================================================
// Failover

impl Deployment {
    /// Failover when the primary is gone: the standby with the most WAL (or `opts.to`) is
    /// promoted after the old primary is fenced (stopped if it answers, demoted on disk
    /// where its host answers, always recorded as fenced). Refused while a node accepts
    /// writes or the old primary looks alive but cannot be reached, unless `opts.force`.
    /// The report says how much WAL only the old primary had, and whether synchronous
    /// replication guaranteed that no acknowledged commit was in it.
    pub async fn failover(&self, opts: FailoverOptions, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let lock = self.lock_operation("failover", self.lock_wait()).await?;
        let t0 = Instant::now();
        let result = async {
            let mut op = Op::open(self, progress).await?;
            op.lock = Some(&lock);
            let obs = op.observe().await;
            let plan = plan::failover(&op.cluster, &obs, &opts.request())?;
            let exec = Exec::new(&op, &plan, &obs, t0);
            exec.st().report.timings.observe_seconds = t0.elapsed().as_secs_f64();
            exec.run().await?;
            exec.settle_records().await;
            let start = exec.st().new_timeline_start;
            let mut report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
            account_failover(&op, &plan, &obs, start, &mut report).await;
            report.timings.total_seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        .await;
        lock.release().await;
        result
    }

    /// The plan `switchover --to` would carry out now (observes, decides, touches nothing).
    pub async fn plan_switchover(&self, to: &str) -> Result<plan::Plan, Error> {
        let op = Op::open(self, &crate::deploy::NoProgress).await?;
        let obs = op.observe().await;
        Ok(plan::switchover(&op.cluster, &obs, &plan::SwitchoverRequest { to: to.to_string() })?)
    }

    /// The plan `rejoin` would carry out now (observes, decides, touches nothing; how its
    /// WAL lets it back is examined when the rejoin runs).
    pub async fn plan_rejoin(&self, node: &str) -> Result<plan::Plan, Error> {
        let op = Op::open(self, &crate::deploy::NoProgress).await?;
        let obs = op.observe().await;
        Ok(plan::rejoin(&op.cluster, &obs, &plan::RejoinRequest { node: node.to_string() }, None)?)
    }

    /// The plan `failover` would carry out now (observes, decides, touches nothing).
    pub async fn plan_failover(&self, opts: &FailoverOptions) -> Result<plan::Plan, Error> {
        let op = Op::open(self, &crate::deploy::NoProgress).await?;
        let obs = op.observe().await;
        Ok(plan::failover(&op.cluster, &obs, &opts.request())?)
    }
}

/// The failover's own part of the report: the candidates, how each node was fenced
/// (from the steps as they ran), and the loss account (the old primary's own WAL read
/// when its host answers; it is stopped now).
async fn account_failover(op: &Op<'_>, plan: &plan::Plan, obs: &ObservedCluster, new_start: Option<Lsn>, report: &mut OperationReport) {
    let d = plan.failover.as_ref().expect("a failover plan carries its decision");
    let old = &plan.primary;
    if let Some(s) = report.sync.ready_seconds {
        report.timings.write_available_seconds += s;
    }
    report.sync.degraded = d.degraded.clone();
    report.old_timeline = d.timeline;
    let mut fencing = Vec::new();
    for name in &d.fence.record {
        let on = |pred: fn(&plan::Action) -> bool| report.steps.iter().find(|s| s.node == *name && pred(&s.action));
        let stop = on(|a| matches!(a, plan::Action::Stop));
        let demote = on(|a| matches!(a, plan::Action::WriteStandbySettings { .. }));
        let outcome = if stop.is_some_and(|s| s.outcome == StepOutcome::Done) {
            FenceOutcome::Stopped
        } else if obs.get(name).host_reachable {
            FenceOutcome::NotRunning
        } else {
            FenceOutcome::RecordedOnly
        };
        let demoted = demote.is_some_and(|s| s.outcome == StepOutcome::Done);
        let detail = match demote {
            Some(s) if s.outcome == StepOutcome::Failed => s.detail.clone().map(|e| format!("standby settings not written: {e}")),
            _ if outcome == FenceOutcome::RecordedOnly => obs.get(name).error.clone(),
            _ => None,
        };
        let seconds = stop.map(|s| s.seconds).unwrap_or(0.0) + demote.map(|s| s.seconds).unwrap_or(0.0);
        report.timings.fence_seconds = report.timings.fence_seconds.max(seconds);
        fencing.push(FenceReport { node: name.clone(), outcome, demoted, seconds, detail });
    }
    let old_end = match op.handle(old) {
        Some(h) if !is_running(h).await.unwrap_or(true) => match read_control(h, &op.caps).await {
            Ok(c) => match scan_wal_end(h, &op.caps, &c).await {
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
    let recorded = op.topology.last_primary_lsn();
    let standby_max = d.candidates.iter().filter(|v| v.answered && v.in_recovery).filter_map(|v| v.position()).max();
    let mut loss = account_loss(old_end, recorded, standby_max, new_start, d.sync_held);
    if d.sync_in_force.synchronous() && !d.sync_held {
        loss.explanation = loss.explanation.replace(
            "(asynchronous replication)",
            &format!("(forced: {} was not covered by the synchronous standbys {old} ran with)", d.candidate),
        );
    }
    report.failover = Some(FailoverDetails { candidates: d.candidates.clone(), fencing, loss });
}
