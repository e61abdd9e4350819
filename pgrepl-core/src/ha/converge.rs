//! After a promotion: fencing the nodes the plan names, and pointing the others at the
//! new primary.

use super::*;

/// The standbys' reports once the new primary is in place: each non-fenced node pointed
/// at its upstream (`known_follow` nodes are started without checking their WAL; other
/// stopped nodes only when their WAL fits the new history), slots made and cleaned, the
/// synchronous standbys waited for, streaming confirmed.
pub(super) struct Converged {
    pub(super) standbys: Vec<StandbyReport>,
    pub(super) created: Vec<String>,
    pub(super) dropped: Vec<String>,
    pub(super) sync_ready: Option<Duration>,
    pub(super) warnings: Vec<String>,
    pub(super) problems: Vec<String>,
}

impl Op<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn converge(
        &self,
        new: &Cluster,
        obs: &ObservedCluster,
        fenced: &[String],
        known_follow: &[String],
        prewritten: &[String],
        promoted_at: Instant,
        actions: &mut Vec<Action>,
    ) -> Converged {
        let run = self.run(new);
        let primary = new.primary();
        let mut out = Converged {
            standbys: Vec::new(),
            created: Vec::new(),
            dropped: Vec::new(),
            sync_ready: None,
            warnings: Vec::new(),
            problems: Vec::new(),
        };
        let Some(ph) = self.handle(&primary.name) else {
            out.problems.push(format!("{}: its host cannot be reached", primary.name));
            return out;
        };
        // Slots (normally made before the promotion already).
        match make_slots(&run, primary, ph).await {
            Ok(a) => {
                out.created.extend(a.iter().map(|a| format!("{}:{}", a.node, a.what.trim_start_matches("create slot "))));
                actions.extend(a);
            }
            Err(e) => out.problems.push(format!("{}: creating slots failed: {e}", primary.name)),
        }
        let others: Vec<&Node> = new.nodes.iter().filter(|n| n.name != primary.name).collect();
        let repoints = join_all(others.iter().map(|n| {
            let run = &run;
            async move {
                let t = Instant::now();
                let upstream = n.upstream.clone().unwrap_or_default();
                let mut rep =
                    StandbyReport { node: n.name.clone(), upstream, method: Repoint::Skipped, seconds: 0.0, streaming: false, error: None };
                if fenced.contains(&n.name) {
                    rep.error = Some(format!("fenced: `pgrepl rejoin {}` brings it back", n.name));
                    return (rep, None);
                }
                let Some(h) = self.handle(&n.name) else {
                    rep.error = Some("its host cannot be reached; `pgrepl up` points it at the new primary once it can".into());
                    return (rep, None);
                };
                let o = obs.get(&n.name);
                let running = is_running(h).await.unwrap_or(o.runs());
                if !running && !known_follow.contains(&n.name) {
                    // A stopped node starts only if its WAL fits the new history.
                    match self.fits_history(h, primary, ph).await {
                        Ok((Divergence::Follows, _)) => {}
                        Ok((d, _)) => {
                            rep.error =
                                Some(format!("its WAL does not fit the new primary's history ({d:?}): run `pgrepl rejoin {}`", n.name));
                            return (rep, None);
                        }
                        Err(e) => {
                            rep.error = Some(format!("left stopped: {e}"));
                            return (rep, None);
                        }
                    }
                }
                if running && o.writable() {
                    rep.error = Some(format!("it accepts writes: run `pgrepl rejoin {}`", n.name));
                    return (rep, None);
                }
                let mut running = running;
                if running && known_follow.contains(&n.name) {
                    // The old primary's stop is still finishing: wait for it before starting it again.
                    let t = Instant::now();
                    while running && t.elapsed() < SERVICE_TIMEOUT {
                        tokio::time::sleep(FAST_POLL).await;
                        running = is_running(h).await.unwrap_or(true);
                    }
                }
                match repoint(run, n, h, &self.caps, running, prewritten.contains(&n.name)).await {
                    Ok(m) => {
                        rep.method = m;
                        rep.seconds = t.elapsed().as_secs_f64();
                        let what = match m {
                            Repoint::Unchanged => None,
                            Repoint::Reloaded => Some(format!("point at {} (reload)", rep.upstream)),
                            Repoint::Restarted => Some(format!("point at {} (restart)", rep.upstream)),
                            Repoint::Started => Some(format!("start as a standby of {}", rep.upstream)),
                            Repoint::Skipped => None,
                        };
                        (rep, what.map(|w| Action { node: n.name.clone(), what: w, seconds: t.elapsed().as_secs_f64() }))
                    }
                    Err(e) => {
                        rep.error = Some(e.to_string());
                        (rep, None)
                    }
                }
            }
        }));
        // Meanwhile: when synchronous standbys confirm commits, writes are possible again.
        let sync_wait = async {
            let r = wait_sync_ready(ph, primary.port, &new.replication.sync, SYNC_READY_DEADLINE).await;
            (r, promoted_at.elapsed())
        };
        let (results, (sync_res, sync_at)) = tokio::join!(repoints, sync_wait);
        for (rep, a) in results {
            actions.extend(a);
            out.standbys.push(rep);
        }
        match sync_res {
            Ok(()) => {
                if new.replication.sync.mode != SyncMode::Off {
                    out.sync_ready = Some(sync_at);
                }
            }
            Err(e) => out.problems.push(format!("{e}: commits wait until enough synchronous standbys stream")),
        }
        let waits = join_all(out.standbys.iter().filter(|s| s.method != Repoint::Skipped).map(|s| {
            let n = new.node(&s.node).expect("known").clone();
            let run = &run;
            async move { (n.name.clone(), run.wait_streaming(&n).await) }
        }))
        .await;
        for (name, w) in waits {
            let rep = out.standbys.iter_mut().find(|s| s.node == name).expect("known");
            match w {
                Ok(()) => rep.streaming = true,
                Err(e) => {
                    rep.error = Some(e.to_string());
                    out.problems.push(format!("{name}: not streaming: {e}"));
                }
            }
        }
        for s in &out.standbys {
            if s.method == Repoint::Skipped {
                if let Some(e) = &s.error {
                    out.warnings.push(format!("{}: {e}", s.node));
                }
            }
        }
        // Slots left on former upstreams hold WAL: drop them.
        let managed = self.managed_slots(new);
        for s in out.standbys.iter().filter(|s| s.streaming) {
            let n = new.node(&s.node).expect("known");
            if let Some(h) = self.handle(&n.name) {
                match drop_stale_slots(&run, n, h, &managed).await {
                    Ok(d) => out.dropped.extend(d),
                    Err(e) => out.warnings.push(format!("{}: stale slots not dropped: {e}", n.name)),
                }
            }
        }
        match drop_stale_slots(&run, primary, ph, &managed).await {
            Ok(d) => out.dropped.extend(d),
            Err(e) => out.warnings.push(format!("{}: stale slots not dropped: {e}", primary.name)),
        }
        for d in &out.dropped {
            actions.push(Action {
                node: d.split(':').next().unwrap_or_default().into(),
                what: format!("drop stale slot {d}"),
                seconds: 0.0,
            });
        }
        out
    }

    /// Fences one node as `plan` says: stopped (and confirmed stopped), standby settings
    /// written into its data directory. Refuses when it still accepts writes afterwards.
    pub(super) async fn fence_node(
        &self,
        name: &str,
        plan: &FencePlan,
        new: &Cluster,
        obs: &ObservedCluster,
    ) -> Result<(FenceReport, Vec<Action>), Error> {
        let t = Instant::now();
        let mut actions = Vec::new();
        let n = self.cluster.node(name).expect("known");
        let mut fr =
            FenceReport { node: name.to_string(), outcome: FenceOutcome::RecordedOnly, demoted: false, seconds: 0.0, detail: None };
        let Some(h) = self.handle(name) else {
            fr.detail = obs.get(name).error.clone();
            return Ok((fr, actions));
        };
        if plan.stop.iter().any(|s| s == name) {
            self.progress.started(name, "fence: stop");
            let r = self.render(&self.cluster, name)?;
            let stopped = stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await;
            self.progress.finished(name, "fence: stop", if stopped.is_ok() { "stopped" } else { "FAILED" });
            if let Err(e) = stopped {
                return Err(refused(
                    name,
                    format!("it could not be stopped ({e}); nothing was promoted, because it may still accept writes"),
                ));
            }
            fr.outcome = FenceOutcome::Stopped;
            act(&mut actions, name, "fence: stop", t);
        } else if obs.get(name).host_reachable {
            fr.outcome = FenceOutcome::NotRunning;
        }
        if plan.demote.iter().any(|s| s == name) {
            // Standby settings in its data directory: if anything starts it, it is read-only.
            let demoted = async {
                if is_running(h).await.map_err(|e| tr(name, "check whether the server runs", e))? {
                    return Err(Error::node(name, "its server runs"));
                }
                if !matches!(self.run(new).data_dir(h).await?, DataDir::Cluster { .. }) {
                    return Err(Error::node(name, "no cluster in its data directory"));
                }
                let r = self.render(new, name)?;
                self.run(new).write_files(h, &r, true).await
            }
            .await;
            match demoted {
                Ok(_) => {
                    fr.demoted = true;
                    act(&mut actions, name, "fence: standby settings written (it cannot start as a primary)", t);
                }
                Err(e) => fr.detail = Some(format!("standby settings not written: {e}")),
            }
        }
        // Never promote while it still answers as a primary.
        if fr.outcome == FenceOutcome::Stopped
            && is_running(h).await.unwrap_or(false)
            && query_one(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check").await.ok().flatten().as_deref() == Some("f")
        {
            return Err(refused(name, "it still accepts writes after fencing; nothing was promoted"));
        }
        fr.seconds = t.elapsed().as_secs_f64();
        Ok((fr, actions))
    }

    /// Whether a stopped node's WAL fits the history of `primary` (running); with its end of WAL.
    pub(super) async fn fits_history(
        &self,
        h: &NodeHandle,
        primary: &Node,
        ph: &NodeHandle,
    ) -> Result<(Divergence, Option<(Lsn, u32)>), Error> {
        let control = read_control(h, &self.caps).await?;
        let ptl =
            primary_timeline(ph, primary.port, &self.caps).await?.ok_or_else(|| Error::node(&primary.name, "its timeline is unknown"))?;
        let history = read_history(ph, &self.caps, ptl).await?;
        let scanned = scan_wal_end(h, &self.caps, &control).await?;
        let end = match &scanned {
            Some((e, tli, _)) => Some((e.end, *tli)),
            // Without a scan, a clean shutdown's checkpoint is its last record.
            None if control.state.is_clean_shutdown() => Some((Lsn(control.checkpoint.0 + 1), control.timeline)),
            None => None,
        };
        let Some((end_lsn, tli)) = end else {
            return Err(Error::node(&h.name, "the end of its WAL could not be read"));
        };
        let mut verdict = divergence(tli, end_lsn, ptl, &history);
        // Timelines can agree while the contents do not: a standby started without its
        // standby settings becomes a primary on the same timeline and writes its own WAL.
        if let (Divergence::Follows, Some((e, _, seg_size))) = (verdict, &scanned) {
            let plsn = current_lsn(ph, primary.port, &self.caps).await?;
            verdict = if tli == ptl && plsn.is_some_and(|p| p < e.end) {
                // Ahead of the primary on its own timeline: WAL nobody else wrote.
                Divergence::Conflicting
            } else {
                // Its last record (the header holds the previous record's position and a CRC
                // of the whole record) must be the same bytes in the primary's WAL.
                let n = e.end.bytes_after(e.last_record).min(64);
                let mine = read_wal_bytes(h, &self.caps, e.last_record, n, *seg_size).await?;
                let theirs = read_wal_bytes(ph, &self.caps, e.last_record, n, *seg_size).await?;
                match (mine, theirs) {
                    (Some(a), Some(b)) if a == b => Divergence::Follows,
                    (Some(_), Some(_)) => Divergence::Conflicting,
                    _ => Divergence::Unverifiable,
                }
            };
        }
        Ok((verdict, Some((end_lsn, tli))))
    }
}
