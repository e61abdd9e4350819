//! The switchover executor: carries out [`crate::plan::switchover`]'s plan.

use super::*;

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
        let lock = self.lock_operation("switchover", self.lock_wait()).await?;
        let result = self.switchover_locked(to, progress, &lock).await;
        lock.release().await;
        result
    }

    async fn switchover_locked(
        &self,
        to: &str,
        progress: &dyn Progress,
        lock: &crate::oplock::OperationLock,
    ) -> Result<SwitchoverReport, Error> {
        let t0 = Instant::now();
        let mut op = Op::open(self, progress).await?;
        op.lock = Some(lock);
        let cluster = &op.cluster;
        let caps = op.caps;
        let target = cluster.node(to).ok_or_else(|| unknown_node(cluster, to))?.clone();
        let old = cluster.primary().name.clone();
        let obs = op.observe().await;
        let plan = plan::switchover(cluster, &obs, &plan::SwitchoverRequest { to: to.to_string() })?;
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
            _ => {}
        }
        // The planner checked the rest: the candidate is a healthy, caught-up standby on the
        // primary's timeline, the primary the only writable node.
        let po = obs.get(&old);
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
        let r_old_standby = op.render(&new, &old)?;
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
                // Its data directory was made a standby's once it stopped: a primary's again.
                let back = if is_running(ph).await.unwrap_or(true) {
                    Ok(())
                } else {
                    match remove_standby_signal(ph).await {
                        Ok(()) => match op.run(cluster).write_files(ph, r_old_primary, false).await {
                            Ok(_) => op.run(cluster).start(cluster.node(old).expect("known"), ph, r_old_primary).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
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
        // Meanwhile the nodes the promotion's guards read are asked (the old primary is
        // settled by its own pg_control).
        let promote_guards: Vec<plan::Guard> =
            plan.steps.iter().find(|s| s.action == plan::Action::Promote).map(|s| s.guards.clone()).unwrap_or_default();
        let (control, probed) = tokio::join!(
            wait_shutdown_checkpoint(ph, &caps, &stop_task, SWITCHOVER_STOP_TIMEOUT),
            op.probe_guards(&promote_guards, std::slice::from_ref(&old))
        );
        let control = match control {
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
        // Meanwhile, all before the promotion: the old primary's data directory becomes a
        // standby's of the candidate (no primary-shaped directory is left behind from here
        // on), the promotion's guards are checked on a fresh look (the old primary is
        // settled: pg_control shows its shutdown checkpoint), and the synchronous standbys
        // of the new primary are recorded.
        progress.started(to, "replay the old primary's shutdown checkpoint");
        let t_catch = Instant::now();
        let sync_before = topo.sync.clone();
        topo.sync = Some(crate::topology::SyncRecord::of(to, &new.replication.sync));
        let mut old_settled = crate::observe::Observed::unknown(&old);
        old_settled.host_reachable = true;
        old_settled.server = crate::observe::ServerState::Stopped;
        old_settled.standby_configured = Some(true);
        let settled = [old_settled];
        let run_demote = op.run(&new);
        let demote = async {
            let t = Instant::now();
            run_demote
                .write_files(ph, &r_old_standby, true)
                .await
                .map(|_| t)
                .map_err(|e| Error::node(&old, format!("its standby settings could not be written ({e})")))
        };
        let guards_ok = op.check_guards(&promote_guards, probed, &settled);
        let (caught, demoted, recorded) =
            tokio::join!(wait_replayed_past(ch, target.port, &caps, control.checkpoint, CATCHUP_DEADLINE), demote, op.save(&topo));
        if let Ok(t) = &demoted {
            act(&mut report.actions, &old, format!("standby settings written (upstream {to})"), *t);
        }
        let caught = match (caught, demoted, guards_ok, recorded) {
            (Ok(l), Ok(_), Ok(()), Ok(())) => Ok(l),
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => Err(e),
        };
        if caught.is_err() {
            topo.sync = sync_before;
            let _ = op.save(&topo).await;
        }
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
            // Promoted after all (a slow confirmation)? Then go on. Confirmed not promoted
            // (stopped in recovery)? The old primary takes back. Unknown: it may still
            // finish promoting, so the old primary is NOT started writable.
            match resolve_promotion(ch, target.port, &r_candidate_standby, &caps).await {
                PromotionOutcome::Promoted => {
                    report.warnings.push(format!("{to}: the promotion was slow to confirm ({e}); it is promoted"))
                }
                PromotionOutcome::NotPromoted => {
                    let _ = run_new.write_files(ch, &r_candidate_standby, false).await;
                    let _ = op.run(cluster).start(&target, ch, &r_candidate_standby).await;
                    let _ = stop_task.await;
                    topo.sync = op.topology.sync.clone();
                    let _ = op.save(&topo).await;
                    return Err(restore(format!(
                        "the promotion of {to} failed ({e}); {to} was stopped in recovery and started again as a standby"
                    ))
                    .await);
                }
                PromotionOutcome::Unknown(why) => {
                    let _ = stop_task.await;
                    return Err(Error::node(
                        to,
                        format!(
                            "its promotion was requested but not confirmed ({e}) and its state is unknown ({why}): it may be the primary. {old} is stopped with standby settings and was NOT started again; check {to}, then `pgrepl switchover --to {to}` (if it is the primary) or `pgrepl up`"
                        ),
                    ));
                }
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
