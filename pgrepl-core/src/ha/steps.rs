//! What each action of a plan does on the nodes: [`Exec::act`].
//!
//! Forward, an action renders from the cluster as the plan leaves it; undoing, from the
//! cluster as it was. Every action reads and writes through the node's Transport.

use super::execute::{Exec, Fail, Mode, settled_stopped};
use super::*;
use crate::plan::Action as Do;
use crate::topology::SyncRecord;

impl Exec<'_> {
    fn host(&self, node: &str) -> Result<&NodeHandle, Error> {
        self.op.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))
    }

    fn node_of<'c>(cluster: &'c Cluster, node: &str) -> Result<&'c Node, Error> {
        cluster.node(node).ok_or_else(|| Error::node(node, "not a node of the cluster"))
    }

    /// Carries out one action on `node`.
    pub(super) async fn act(&self, node: &str, action: &plan::Action, mode: Mode) -> Result<Option<String>, Fail> {
        let op = self.op;
        let caps = op.caps;
        let cluster = if mode == Mode::Forward { &self.after } else { self.before };
        match action {
            Do::RecordFenced { nodes } => {
                let mut topo = self.topo.lock().await;
                for n in nodes {
                    if !topo.fenced.contains(n) {
                        topo.fenced.push(n.clone());
                    }
                }
                op.save(&topo).await?;
                Ok(None)
            }
            Do::Unfence if mode == Mode::Undo => Ok(None), // the record as a whole goes back
            Do::Unfence => {
                let mut topo = self.topo.lock().await;
                if topo.is_fenced(node) {
                    topo.fenced.retain(|f| f != node);
                    op.save(&topo).await?;
                    self.st().report.changed = true;
                    return Ok(Some("no longer fenced".into()));
                }
                Ok(None)
            }
            Do::RecordSync { primary, mode: m, standbys, count } => {
                let mut topo = self.topo.lock().await;
                topo.sync = Some(SyncRecord { primary: primary.clone(), mode: *m, count: *count, standbys: standbys.clone() });
                op.save(&topo).await?;
                Ok(None)
            }
            Do::MoveLeaderKey { from, to } => {
                let store = op.d.consensus.as_ref().ok_or_else(|| {
                    refused(
                        to,
                        "an [ha] cluster's leader key moves with the primary role: this deployment has no access to the agents' store (Deployment::with_consensus_store)",
                    )
                })?;
                let keys = crate::store::Keys::new(&self.before.name);
                let what = crate::store::operator::move_leader(&**store, &keys, from, to).await?;
                Ok(Some(what))
            }
            Do::RecordPrimary => {
                let was_writable = self.obs.get(node).writable();
                let timeline = if was_writable {
                    self.obs.get(node).timeline
                } else {
                    self.obs.get(&self.plan.primary).timeline.or(self.obs.get(node).timeline).map(|t| t + 1)
                };
                let checkpoint = self.st().report.shutdown_checkpoint;
                let mut topo = self.topo.lock().await;
                if topo.primary.as_deref() != Some(node) || self.plan.primary != node || (was_writable && topo.timeline != timeline) {
                    topo.primary = Some(node.to_string());
                    topo.timeline = timeline;
                    if let Some(c) = checkpoint {
                        topo.last_primary_lsn = Some(c.to_string());
                    }
                    op.save(&topo).await?;
                    self.st().report.changed = true;
                }
                if was_writable {
                    let mut st = self.st();
                    st.report.new_timeline = timeline;
                    st.report.old_timeline = timeline;
                }
                Ok(None)
            }
            Do::Stop => {
                let h = self.host(node)?;
                let t = Instant::now();
                let r = op.render(self.before, node)?;
                op.progress.started(node, "stop");
                let stopped = stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await;
                op.progress.finished(node, "stop", if stopped.is_ok() { "stopped" } else { "FAILED" });
                if let Err(e) = stopped {
                    return Err(Fail::Abandon(refused(
                        node,
                        format!("it could not be stopped ({e}); nothing was promoted, because it may still accept writes"),
                    )));
                }
                let mut st = self.st();
                st.settled.push(settled_stopped(node, None));
                st.report.timings.stop_seconds = st.report.timings.stop_seconds.max(t.elapsed().as_secs_f64());
                act(&mut st.report.actions, node, if self.plan.failover.is_some() { "fence: stop" } else { "stop" }, t);
                Ok(Some("stopped".into()))
            }
            Do::Fence => {
                let h = self.host(node)?;
                let t = Instant::now();
                let r = op.render(self.before, node)?;
                let _ = h.transport.exec(&immediate_stop(&r).timeout(FENCE_STOP_TIMEOUT)).await;
                if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
                    return Err(Fail::Abandon(Error::node(node, "its server still runs after an immediate stop")));
                }
                let mut st = self.st();
                st.settled.push(settled_stopped(node, None));
                act(&mut st.report.actions, node, "fence: stop at once (immediate)", t);
                Ok(Some("stopped at once".into()))
            }
            Do::Checkpoint => {
                let h = self.host(node)?;
                let n = Self::node_of(self.before, node)?;
                let t = Instant::now();
                op.run(self.before).sql(h, n.port, "CHECKPOINT;", "checkpoint before the stop").await?;
                act(&mut self.st().report.actions, node, "CHECKPOINT (a short shutdown checkpoint)", t);
                Ok(None)
            }
            Do::StopClean => {
                let h = self.host(node)?;
                let r = op.render(self.before, node)?;
                let what = "stop (clean: the shutdown checkpoint goes to the standbys)";
                op.progress.started(node, what);
                let t = Instant::now();
                self.st().gap_started = Some(t);
                let task = {
                    let (h, c) = (h.clone(), Command::from_line(&r.commands.stop).timeout(SWITCHOVER_STOP_TIMEOUT));
                    tokio::spawn(async move { h.transport.run(&c).await.map(|_| ()).map_err(|e| tr(&h.name, "stop the primary", e)) })
                };
                match wait_shutdown_checkpoint(h, &caps, &task, SWITCHOVER_STOP_TIMEOUT).await {
                    Ok(c) => {
                        op.progress.finished(node, what, "shutdown checkpoint written");
                        let mut st = self.st();
                        st.stop_tasks.push((node.to_string(), task));
                        st.report.shutdown_checkpoint = Some(c.checkpoint);
                        st.report.timings.stop_seconds = t.elapsed().as_secs_f64();
                        st.settled.push(settled_stopped(node, None));
                        act(&mut st.report.actions, node, format!("stop cleanly (shutdown checkpoint {})", c.checkpoint), t);
                        Ok(Some(format!("shutdown checkpoint {}", c.checkpoint)))
                    }
                    Err(e) => {
                        op.progress.finished(node, what, "failed");
                        let why = match task.await {
                            Ok(Err(se)) => format!("{e} ({se})"),
                            _ => e.to_string(),
                        };
                        Err(Fail::Abandon(Error::node(node, why)))
                    }
                }
            }
            Do::WriteStandbySettings { .. } => {
                let h = self.host(node)?;
                let t = Instant::now();
                let stopped = mode == Mode::Undo || !self.obs.get(node).standby() || self.st().settled.iter().any(|o| o.node == node);
                if stopped && !matches!(op.run(cluster).data_dir(h).await?, DataDir::Cluster { .. }) {
                    return Err(Fail::Abandon(Error::node(node, "no cluster in its data directory: no standby settings written")));
                }
                let r = op.render(cluster, node)?;
                let changed = op.run(cluster).write_files(h, &r, true).await?;
                let mut st = self.st();
                if mode == Mode::Forward {
                    if stopped {
                        st.settled.retain(|o| o.node != node);
                        st.settled.push(settled_stopped(node, Some(true)));
                        let up = Self::node_of(cluster, node).ok().and_then(|n| n.upstream.clone()).unwrap_or_default();
                        act(&mut st.report.actions, node, format!("standby settings written (upstream {up})"), t);
                    } else if changed {
                        st.prewritten.push(node.to_string());
                    }
                }
                Ok(changed.then(|| "written".into()))
            }
            Do::WritePrimarySettings if mode == Mode::Undo => {
                // A stopped former primary's data directory is a primary's again.
                let h = self.host(node)?;
                if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
                    return Ok(None);
                }
                remove_standby_signal(h).await?;
                let r = op.render(self.before, node)?;
                op.run(self.before).write_files(h, &r, false).await?;
                Ok(None)
            }
            Do::WritePrimarySettings => {
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let r = op.render(&self.after, node)?;
                let run = op.run(&self.after);
                let changed = run.write_files(h, &r, false).await?;
                {
                    let mut st = self.st();
                    (st.report.sync.standby_names, st.report.sync.commit) = sync_settings(&r);
                }
                if self.obs.get(node).writable() {
                    // Already the primary: applied now.
                    if changed {
                        let t = Instant::now();
                        let mut actions = Vec::new();
                        run.apply_config(n, h, &r, &mut actions).await?;
                        let mut st = self.st();
                        st.report.actions.extend(actions);
                        act(&mut st.report.actions, node, "settings of the primary", t);
                        st.report.changed = true;
                    }
                } else if changed {
                    self.st().reload.push(node.to_string());
                }
                Ok(changed.then(|| "written".into()))
            }
            Do::CreateSlots { .. } => {
                if self.st().slots_made.iter().any(|n| n == node) {
                    return Ok(Some("made before the promotion".into()));
                }
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let a = make_slots(&op.run(&self.after), n, h).await?;
                let mut st = self.st();
                st.slots_made.push(node.to_string());
                st.report.slots_created.extend(a.iter().map(|a| format!("{}:{}", a.node, a.what.trim_start_matches("create slot "))));
                st.report.actions.extend(a);
                Ok(None)
            }
            Do::WaitReplayShutdownCheckpoint { of } => {
                let h = self.host(node)?;
                let n = Self::node_of(self.before, node)?;
                let Some(c) = self.st().report.shutdown_checkpoint else {
                    return Err(Fail::Abandon(Error::node(of, "its shutdown checkpoint is not known")));
                };
                let t = Instant::now();
                op.progress.started(node, "replay the old primary's shutdown checkpoint");
                let r = wait_replayed_past(h, n.port, &caps, c, CATCHUP_DEADLINE).await;
                op.progress.finished(node, "replay the old primary's shutdown checkpoint", if r.is_ok() { "done" } else { "timed out" });
                r?;
                let mut st = self.st();
                st.report.timings.catchup_seconds = t.elapsed().as_secs_f64();
                act(&mut st.report.actions, node, format!("replayed the shutdown checkpoint {c}"), t);
                Ok(None)
            }
            Do::Promote => self.promote(node).await,
            Do::Start if mode == Mode::Forward => self.up_step(node, |run, n| Box::pin(run.start_if_stopped(n))).await,
            Do::Start => {
                // Undoing: started again as it was (a former primary as the primary, a
                // candidate as a standby), unless it runs.
                let h = self.host(node)?;
                let n = Self::node_of(self.before, node)?;
                let task = {
                    let mut st = self.st();
                    st.stop_tasks.iter().position(|(s, _)| s == node).map(|i| st.stop_tasks.swap_remove(i).1)
                };
                if let Some(task) = task {
                    let _ = task.await;
                }
                if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
                    return Ok(None);
                }
                let r = op.render(self.before, node)?;
                let run = op.run(self.before);
                if self.before.primary().name == node {
                    remove_standby_signal(h).await?;
                }
                run.write_files(h, &r, true).await?;
                run.start(n, h, &r).await?;
                Ok(Some("started again".into()))
            }
            Do::StartAsStandby { .. } | Do::Repoint { .. } => self.repoint(node, matches!(action, Do::StartAsStandby { .. })).await,
            Do::WaitSyncStandbys { .. } => {
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let since = self.st().promoted_at.unwrap_or_else(Instant::now);
                match wait_sync_ready(h, n.port, &self.after.replication.sync, SYNC_READY_DEADLINE).await {
                    Ok(()) => {
                        let mut st = self.st();
                        st.report.sync.ready_seconds = Some(since.elapsed().as_secs_f64());
                        Ok(None)
                    }
                    Err(e) => Err(Fail::Abandon(Error::node(node, format!("{e}: commits wait until enough synchronous standbys stream")))),
                }
            }
            Do::DropStaleSlots => {
                let streaming = {
                    let st = self.st();
                    node == self.after.primary().name
                        || st.report.standbys.iter().any(|s| s.node == node && s.streaming)
                        || st.report.rejoin.as_ref().is_some_and(|r| r.node == node && r.streaming)
                };
                if !streaming {
                    return Ok(Some("not streaming: left as they are".into()));
                }
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let managed = op.managed_slots(&self.after);
                let d = drop_stale_slots(&op.run(&self.after), n, h, &managed).await?;
                let mut st = self.st();
                for s in &d {
                    st.report.actions.push(Action { node: node.into(), what: format!("drop stale slot {s}"), seconds: 0.0 });
                }
                st.report.slots_dropped.extend(d);
                Ok(None)
            }
            Do::CheckpointAfterPromotion => {
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let (mut actions, mut warnings) = (Vec::new(), Vec::new());
                checkpoint_after_promotion(h, n.port, &mut actions, &mut warnings).await;
                let mut st = self.st();
                st.report.actions.extend(actions);
                st.report.warnings.extend(warnings);
                Ok(None)
            }
            Do::ArchiveOldTimeline => {
                let Some(b) = self.after.backup.as_ref() else { return Ok(Some("no [backup]: nothing to archive".into())) };
                let h = self.host(node)?;
                let n = Self::node_of(&self.after, node)?;
                let t = Instant::now();
                let what = crate::backup::archive_gap::hand_old_timeline_to_archiver(b, &self.after.name, h, n.port, &caps).await.map_err(
                    |e| {
                        Fail::Abandon(Error::node(
                            node,
                            format!("{}: the old timeline's unarchived segments may be missing from the archive", crate::error::chain(&e)),
                        ))
                    },
                )?;
                act(&mut self.st().report.actions, node, what.clone(), t);
                Ok(Some(what))
            }
            Do::UpdateSyncStandbys => {
                // synchronous_standby_names takes a reload; a restart of the primary would
                // be a write outage (a setting it carries from its time as a standby, such
                // as recovery_target_timeline, may stay "pending restart" harmlessly).
                let h = self.host(node)?;
                let r = op.render(&self.after, node)?;
                let run = op.run(&self.after);
                if run.write_files(h, &r, false).await? {
                    let t = Instant::now();
                    h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(node, "reload the configuration", e))?;
                    act(&mut self.st().report.actions, node, "synchronous standbys updated (reload)", t);
                }
                Ok(None)
            }
            Do::Rejoin { how, .. } => self.rejoin_node(node, *how).await,
            // `up`'s steps: each re-reads what it acts on (the data directory, whether the
            // server runs) and refuses what the plan could not see.
            Do::Initdb => self.up_step(node, |run, n| Box::pin(run.primary_initdb(n))).await,
            Do::WriteSettings if node == self.after.primary().name => self.up_step(node, |run, n| Box::pin(run.primary_settings(n))).await,
            Do::WriteSettings | Do::Clone { .. } => self.up_step(node, |run, n| Box::pin(run.standby_clone_or_settings(n))).await,
            Do::PrepareClone => self.up_step(node, |run, n| Box::pin(run.standby_prepare_clone(n))).await,
            Do::EnsureReplicationRole => self.up_step(node, |run, n| Box::pin(run.replication_role(n))).await,
            Do::WaitStreaming { .. } => {
                let n = Self::node_of(&self.after, node)?;
                op.run(&self.after).wait_streaming(n).await?;
                Ok(None)
            }
            // Restarts (`pgrepl restart`, `up`'s, a minor upgrade's): see `restart`.
            Do::Restart { upstream } => self.restart_node(node, upstream.as_deref()).await,
            Do::Switchover { .. } => self.switchover_step(node).await,
        }
    }

    /// Runs one of `up`'s steps on `node` (a [`Run`] method) and records what it did.
    async fn up_step<F>(&self, node: &str, f: F) -> Result<Option<String>, Fail>
    where
        F: for<'r> FnOnce(
            &'r Run<'r>,
            &'r Node,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Action>, Error>> + Send + 'r>>,
    {
        let n = Self::node_of(&self.after, node)?;
        let run = self.op.run(&self.after);
        let actions = f(&run, n).await?;
        let changed = !actions.is_empty();
        self.st().report.actions.extend(actions);
        Ok(changed.then(|| "changed".into()))
    }

    /// Promotes `node` and waits until it accepts writes. A promotion that is not
    /// confirmed is resolved: promoted after all (go on), confirmed not promoted (the plan
    /// is abandoned, the node started again as a standby), unknown (stop, undo nothing).
    async fn promote(&self, node: &str) -> Result<Option<String>, Fail> {
        let op = self.op;
        let h = self.host(node)?;
        let n = Self::node_of(self.before, node)?;
        let r_standby = op.render(self.before, node)?;
        let reload = self.st().reload.iter().any(|r| r == node);
        let t = Instant::now();
        op.progress.started(node, "promote");
        let promoted = promote(h, n.port, &r_standby, reload).await;
        op.progress.finished(node, "promote", if promoted.is_ok() { "done" } else { "failed" });
        if let Err(e) = promoted {
            match resolve_promotion(h, n.port, &r_standby, &op.caps).await {
                PromotionOutcome::Promoted => {
                    self.st().report.warnings.push(format!("{node}: the promotion was slow to confirm ({e}); it is promoted"))
                }
                PromotionOutcome::NotPromoted => {
                    return Err(Fail::AbandonWithIt(Error::node(
                        node,
                        format!("promotion failed ({e}); it was stopped before it could finish; nothing was promoted"),
                    )));
                }
                PromotionOutcome::Unknown(why) => {
                    let what = match &self.plan.operation {
                        plan::Operation::Switchover { .. } => format!(
                            "{} is stopped with standby settings and was NOT started again; check {node}, then `pgrepl switchover --to {node}` (if it is the primary) or `pgrepl up`",
                            self.plan.primary
                        ),
                        _ => format!("The old primary stays fenced; check {node} and run `pgrepl failover` or `pgrepl status`"),
                    };
                    return Err(Fail::Final(Error::node(
                        node,
                        format!(
                            "its promotion was requested but not confirmed ({e}) and its state is unknown ({why}): it may be the primary. {what}"
                        ),
                    )));
                }
            }
        }
        let mut st = self.st();
        let now = Instant::now();
        st.promoted_at = Some(now);
        st.report.changed = true;
        st.report.timings.promote_seconds = t.elapsed().as_secs_f64();
        st.report.timings.write_available_seconds = self.t0.elapsed().as_secs_f64();
        if let Some(g) = st.gap_started {
            st.report.timings.write_unavailable_seconds = g.elapsed().as_secs_f64();
        }
        act(&mut st.report.actions, node, "promote", t);
        Ok(None)
    }

    /// Points a node at its upstream in the cluster after: reloaded (13+) or restarted
    /// with new settings, or started when stopped (a stopped node only when its WAL fits the
    /// new history, unless `known_follow`: the old primary of a switchover, which stopped
    /// at the fork point); then waits until it streams.
    async fn repoint(&self, node: &str, known_follow: bool) -> Result<Option<String>, Fail> {
        let op = self.op;
        let t = Instant::now();
        let n = Self::node_of(&self.after, node)?.clone();
        let primary = self.after.primary().clone();
        let upstream = n.upstream.clone().unwrap_or_default();
        let mut rep =
            StandbyReport { node: node.to_string(), upstream, method: Repoint::Skipped, seconds: 0.0, streaming: false, error: None };
        let skipped = |rep: StandbyReport| {
            let mut st = self.st();
            if let Some(e) = &rep.error {
                st.report.warnings.push(format!("{node}: {e}"));
            }
            st.report.standbys.push(rep);
            Ok(Some("left alone".to_string()))
        };
        let Some(h) = op.handle(node) else {
            rep.error = Some("its host cannot be reached; `pgrepl up` points it at the new primary once it can".into());
            return skipped(rep);
        };
        if known_follow {
            // The old primary's stop is still finishing: it ends before it starts again.
            let task = {
                let mut st = self.st();
                st.stop_tasks.iter().position(|(s, _)| s == node).map(|i| st.stop_tasks.swap_remove(i).1)
            };
            if let Some(task) = task {
                if let Ok(Err(e)) = task.await {
                    self.st().report.warnings.push(format!("{node}: its stop command reported: {e}"));
                }
            }
        }
        let o = self.obs.get(node);
        let mut running = is_running(h).await.unwrap_or(o.runs());
        if !running && !known_follow {
            // Whether its WAL fits is read on the primary's host (an agent on its own host
            // reaches no other: a stopped node is left to its rejoin).
            let Some(ph) = op.handle(&primary.name) else {
                rep.error = Some(format!("{}: its host cannot be reached to check {node}'s WAL against its history", primary.name));
                return skipped(rep);
            };
            match op.fits_history(h, &primary, ph).await {
                Ok((Divergence::Follows, _)) => {}
                Ok((d, _)) => {
                    rep.error = Some(format!("its WAL does not fit the new primary's history ({d:?}): run `pgrepl rejoin {node}`"));
                    return skipped(rep);
                }
                Err(e) => {
                    rep.error = Some(format!("left stopped: {e}"));
                    return skipped(rep);
                }
            }
        }
        if running && o.writable() && !known_follow {
            rep.error = Some(format!("it accepts writes: run `pgrepl rejoin {node}`"));
            return skipped(rep);
        }
        if running && known_follow {
            let t = Instant::now();
            while running && t.elapsed() < SERVICE_TIMEOUT {
                tokio::time::sleep(FAST_POLL).await;
                running = is_running(h).await.unwrap_or(true);
            }
        }
        let prewritten = self.st().prewritten.iter().any(|p| p == node);
        let run = op.run(&self.after);
        match repoint(&run, &n, h, &op.caps, running, prewritten).await {
            Ok(m) => {
                rep.method = m;
                rep.seconds = t.elapsed().as_secs_f64();
                let what = match m {
                    Repoint::Reloaded => Some(format!("point at {} (reload)", rep.upstream)),
                    Repoint::Restarted => Some(format!("point at {} (restart)", rep.upstream)),
                    Repoint::Started => Some(format!("start as a standby of {}", rep.upstream)),
                    Repoint::Unchanged | Repoint::Skipped => None,
                };
                if let Some(w) = what {
                    let mut st = self.st();
                    act(&mut st.report.actions, node, w, t);
                    if m != Repoint::Unchanged {
                        st.report.changed = true;
                    }
                }
            }
            Err(e) => {
                rep.error = Some(e.to_string());
                return skipped(rep);
            }
        }
        let streamed = run.wait_streaming(&n).await;
        rep.streaming = streamed.is_ok();
        if let Err(e) = &streamed {
            rep.error = Some(e.to_string());
        }
        self.st().report.standbys.push(rep);
        match streamed {
            Ok(()) => Ok(None),
            Err(e) => Err(Fail::Abandon(Error::node(node, format!("not streaming: {e}")))),
        }
    }
}
