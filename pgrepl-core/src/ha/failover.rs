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
    pub async fn failover(&self, opts: FailoverOptions, progress: &dyn Progress) -> Result<FailoverReport, Error> {
        let lock = self.lock_operation("failover", self.lock_wait()).await?;
        let t0 = Instant::now();
        let result = async {
            let mut op = Op::open(self, progress).await?;
            op.lock = Some(&lock);
            let obs = op.observe().await;
            let plan = plan::failover(&op.cluster, &obs, &opts.request())?;
            op.execute_failover(&obs, &plan, t0).await
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

impl Op<'_> {
    async fn execute_failover(&self, obs: &ObservedCluster, plan: &plan::Plan, t0: Instant) -> Result<FailoverReport, Error> {
        let op = self;
        let progress = self.progress;
        let cluster = &op.cluster;
        let caps = op.caps;
        let d = plan.failover.as_ref().expect("a failover plan carries its decision");
        let old = plan.primary.clone();
        let cand = d.candidate.clone();
        let views = d.candidates.clone();
        let fence = &d.fence;
        let cand_node = cluster.node(&cand).expect("known").clone();
        let observe_seconds = t0.elapsed().as_secs_f64();
        let mut report = FailoverReport {
            cluster: cluster.name.clone(),
            major: op.major(),
            old_primary: old.clone(),
            new_primary: cand.clone(),
            old_timeline: d.timeline,
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

        // Fencing: record first (so nothing restarts it as a primary), with the synchronous
        // standbys the new primary will run with (recorded before it accepts a write); then
        // stop and demote. An abandoned failover puts the record back as it was.
        let t_fence = Instant::now();
        let before = op.topology.clone();
        let mut topo = op.topology.clone();
        for r in &fence.record {
            if !topo.fenced.contains(r) {
                topo.fenced.push(r.clone());
            }
        }
        let fenced = topo.fenced.clone();
        let mut excluded = fenced.clone();
        excluded.extend(cluster.nodes.iter().filter(|n| n.name != cand && !obs.get(&n.name).standby()).map(|n| n.name.clone()));
        let (new, degraded) = op.retarget(&cand, &excluded)?;
        report.sync.degraded = degraded;
        // The old primary's synchronous set stays on record until the promotion: a failover
        // abandoned here, or run again, still knows which standbys may hold acknowledged commits.
        topo.sync = Some(d.sync_in_force.clone());
        op.save(&topo).await?;
        let ch = op.handle(&cand).expect("it answered");
        let run_new = op.run(&new);
        let r_standby = op.render(cluster, &cand)?;
        let r_primary = op.render(&new, &cand)?;
        (report.sync.standby_names, report.sync.commit) = sync_settings(&r_primary);
        let fencing = async {
            let mut out = Vec::new();
            for name in &fence.record {
                out.push(op.fence_node(name, fence, &new, obs).await?);
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
        let put_back = |names: Vec<String>| async move {
            for name in names {
                if let (Some(h), Ok(r)) = (op.handle(&name), op.render(cluster, &name)) {
                    let _ = op.run(cluster).write_files(h, &r, true).await;
                }
            }
        };
        let prepare = async { tokio::join!(make_slots(&run_new, &cand_node, ch), run_new.write_files(ch, &r_primary, false), prewrite) };
        // The promotion's guards read every node but the fenced ones (fencing settles those):
        // they are asked meanwhile.
        let promote_step = plan.steps.iter().find(|s| s.action == plan::Action::Promote).expect("a failover promotes");
        let probe = op.probe_guards(&promote_step.guards, &fence.record);
        let (fenced_nodes, (slots, written, prewritten), probed) = tokio::join!(fencing, prepare, probe);
        let (cand_ref, r_standby_ref, before_ref) = (&cand, &r_standby, &before);
        let abandon = |e: Error, prewritten: Vec<String>| async move {
            let (cand, r_standby, before) = (cand_ref, r_standby_ref, before_ref);
            // Nothing is promoted: the candidate and the standbys keep their settings, and
            // the fence marks go back to what they were (a live primary is never left
            // recorded as fenced).
            let _ = run_new.write_files(ch, r_standby, false).await;
            put_back(prewritten).await;
            match op.save(before).await {
                Ok(()) => e,
                Err(se) => Error::node(cand, format!("{e}; and the fence record could not be rolled back: {se}")),
            }
        };
        let reload = match (fenced_nodes, written) {
            (Ok(f), Ok(w)) => {
                for (fr, a) in f {
                    report.actions.extend(a);
                    report.fencing.push(fr);
                }
                w
            }
            (f, w) => {
                let e = match (f, w) {
                    (Err(e), _) => e,
                    (_, Err(e)) => e,
                    _ => unreachable!("one of them failed"),
                };
                return Err(abandon(e, prewritten).await);
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

        // The promotion's guards: nothing else accepts writes, the fenced nodes stopped, the
        // candidate still a standby with the WAL it was chosen for. Nodes fencing just
        // stopped (confirmed) or found stopped while demoting them are taken as they are.
        let settled: Vec<crate::observe::Observed> = report
            .fencing
            .iter()
            .filter(|f| f.outcome == FenceOutcome::Stopped || f.demoted)
            .map(|f| {
                let mut o = crate::observe::Observed::unknown(&f.node);
                o.host_reachable = true;
                o.server = crate::observe::ServerState::Stopped;
                o.standby_configured = Some(f.demoted);
                o
            })
            .collect();
        if let Err(e) = op.check_guards(&promote_step.guards, probed, &settled) {
            return Err(abandon(e, prewritten).await);
        }
        topo.sync = Some(d.new_sync.clone());
        if let Err(e) = op.save(&topo).await {
            return Err(abandon(e, prewritten).await);
        }

        // Promotion.
        let t_prom = Instant::now();
        progress.started(&cand, "promote");
        let promoted = promote(ch, cand_node.port, &r_standby, reload).await;
        progress.finished(&cand, "promote", if promoted.is_ok() { "done" } else { "failed" });
        if let Err(e) = promoted {
            match resolve_promotion(ch, cand_node.port, &r_standby, &caps).await {
                PromotionOutcome::Promoted => {
                    report.warnings.push(format!("{cand}: the promotion was slow to confirm ({e}); it is promoted"))
                }
                PromotionOutcome::NotPromoted => {
                    topo.sync = Some(d.sync_in_force.clone());
                    let _ = op.save(&topo).await;
                    return Err(abandon(
                        Error::node(&cand, format!("promotion failed ({e}); it was stopped before it could finish; nothing was promoted: run `pgrepl failover` again")),
                        prewritten,
                    )
                    .await);
                }
                PromotionOutcome::Unknown(why) => {
                    // It may still finish promoting: nothing is rolled back (the old primary
                    // stays fenced), nothing else is started.
                    return Err(Error::node(
                        &cand,
                        format!(
                            "its promotion was requested but not confirmed ({e}) and its state is unknown ({why}): it may be the primary. The old primary stays fenced; check {cand} and run `pgrepl failover` or `pgrepl status`"
                        ),
                    ));
                }
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
        let c = op.converge(&new, obs, &fenced, &[], &prewritten, promoted_at, &mut report.actions).await;
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
        let recorded = op.topology.last_primary_lsn();
        let standby_max = views.iter().filter(|v| v.answered && v.in_recovery).filter_map(|v| v.position()).max();
        report.loss = account_loss(old_end, recorded, standby_max, new_start, d.sync_held);
        if d.sync_in_force.synchronous() && !d.sync_held {
            report.loss.explanation = report.loss.explanation.replace(
                "(asynchronous replication)",
                &format!("(forced: {cand} was not covered by the synchronous standbys {} ran with)", old),
            );
        }
        if let Ok(Some(l)) = current_lsn(ch, cand_node.port, &caps).await {
            topo.last_primary_lsn = Some(l.to_string());
            let _ = op.save(&topo).await;
        }
        checkpoint_after_promotion(ch, cand_node.port, &mut report.actions, &mut report.warnings).await;
        report.timings.total_seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}
