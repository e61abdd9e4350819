//! The rejoin executor: the node's WAL examined, then [`crate::plan::rejoin`]'s plan carried out.

use super::*;

// =======================================================================================
// Rejoin

/// What a pg_rewind did (timings and actions), for the report.
#[derive(Default)]
pub(super) struct Rewound {
    pub(super) prepare_seconds: f64,
    pub(super) rewind_seconds: f64,
    pub(super) actions: Vec<Action>,
}

impl Deployment {
    /// Brings `node` (a former primary, a fenced node, a diverged or stopped standby) back
    /// as a standby of its upstream: as it is when its WAL is a prefix of the primary's
    /// history, with pg_rewind when it diverged onto its own timeline (the cluster has
    /// checksums or wal_log_hints), with a fresh clone when rewind is impossible (no
    /// pg_rewind of its major, a superuser-only source across hosts on ≤10, a divergence on
    /// the timeline it shares with the primary) or fails. It is only ever started with
    /// standby settings, never writable. A node that already streams is left as it is.
    pub async fn rejoin(&self, node: &str, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let lock = self.lock_operation("rejoin", self.lock_wait()).await?;
        let t0 = Instant::now();
        let result = async {
            let mut op = Op::open(self, progress).await?;
            op.lock = Some(&lock);
            let obs = op.observe().await;
            let mut plan = plan::rejoin(&op.cluster, &obs, &plan::RejoinRequest { node: node.to_string() }, None)?;
            // The cluster once it is back: it counts as a synchronous standby again.
            let primary = op.cluster.primary().name.clone();
            let remaining: Vec<String> = op.topology.fenced.iter().filter(|f| *f != node).cloned().collect();
            let mut target = op.cluster.clone();
            target.replication.sync =
                self.cluster.clone().with_primary(&primary).map(|c| c.replication.sync).unwrap_or(target.replication.sync);
            exclude_from_sync(&mut target, &remaining);
            plan.after = Some(target);
            let exec = Exec::new(&op, &plan, &obs, t0);
            let upstream = op.cluster.node(node).and_then(|n| n.upstream.clone()).unwrap_or_else(|| primary.clone());
            exec.st().report.rejoin = Some(RejoinDetails {
                node: node.to_string(),
                upstream: upstream.clone(),
                method: RejoinMethod::AlreadyStreaming,
                reason: format!("it already streams from {upstream}"),
                divergence: None,
                node_wal_end: None,
                node_timeline: None,
                primary_timeline: obs.get(&primary).timeline,
                streaming: plan.noop || !plan.has(node, |a| matches!(a, plan::Action::Rejoin { .. })),
            });
            exec.run().await?;
            let mut report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
            if let Some(r) = report.rejoin.as_mut() {
                if r.method == RejoinMethod::AlreadyStreaming && report.changed {
                    r.reason.push_str("; it is no longer fenced");
                }
            }
            report.warnings.retain(|w| !w.starts_with(&format!("{node}: its WAL is examined")));
            report.timings.total_seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        .await;
        lock.release().await;
        result
    }

    /// The pg_rewind of the node's own major on its host, or why there is none.
    pub(super) async fn rewind_tool(&self, op: &Op<'_>, h: &NodeHandle) -> Result<String, String> {
        if op.caps.rewind.is_none() {
            return Err(format!("PostgreSQL {} has no pg_rewind", op.caps.major));
        }
        if let Some(b) = self.binaries() {
            if !b.has_rewind {
                return Err(format!("no pg_rewind of PostgreSQL {} is installed", op.caps.major));
            }
        }
        let mut paths = vec![h.layout.server_tool("pg_rewind")];
        if self.binaries().is_none_or(|b| b.has_rewind) {
            paths.push(h.layout.client_tool("pg_rewind"));
        }
        for p in paths {
            if h.transport.exists(&p, None).await.unwrap_or(false) {
                return Ok(p);
            }
        }
        Err(format!("pg_rewind is not installed at {}", h.layout.server_tool("pg_rewind")))
    }

    /// pg_rewind of `n` from the primary: a clean shutdown first (started in recovery and
    /// stopped, so it is never writable), a CHECKPOINT on the source where the major needs
    /// one, then the rewind over a normal connection, then pgrepl's settings written again
    /// (pg_rewind copied the source's).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn rewind(
        &self,
        op: &Op<'_>,
        target: &Cluster,
        n: &Node,
        h: &NodeHandle,
        primary: &Node,
        ph: Option<&NodeHandle>,
        r: &RenderedNode,
        tool: &str,
        report: &mut Rewound,
    ) -> Result<(), Error> {
        let caps = &op.caps;
        let rc = caps.rewind.expect("checked");
        let run = op.run(target);
        // A target that did not shut down cleanly (a killed primary): start it in recovery
        // (standby settings) to replay its own WAL, then stop it: "shut down in recovery".
        let control = read_control(h, caps).await?;
        if !control.state.is_clean_shutdown() {
            let t = Instant::now();
            op.progress.started(&n.name, "clean shutdown in recovery (for pg_rewind)");
            run.write_files(h, r, true).await?;
            let _ = h.transport.exec(&Command::from_line(&r.commands.start).timeout(CLEAN_SHUTDOWN_DEADLINE)).await;
            stop_server(h, r, FENCE_STOP_TIMEOUT, false).await?;
            op.progress.finished(&n.name, "clean shutdown in recovery (for pg_rewind)", "done");
            let c = read_control(h, caps).await?;
            if !c.state.is_clean_shutdown() {
                return Err(Error::node(&n.name, format!("it could not be shut down cleanly (pg_control: {})", c.state)));
            }
            report.prepare_seconds = t.elapsed().as_secs_f64();
            act(&mut report.actions, &n.name, "replay its own WAL in recovery, shut down cleanly", t);
        }
        // ≤15: a freshly promoted source's pg_control names its new timeline only after a checkpoint.
        // From a node's own host (no handle on the primary): the promotion's own checkpoint
        // (its last step) and the grants made with the replication role stand in.
        if let (true, Some(ph)) = (rc.checkpoint_source_first, ph) {
            let t = Instant::now();
            run.sql(ph, primary.port, "CHECKPOINT;", "checkpoint on the rewind source").await?;
            act(&mut report.actions, &primary.name, "CHECKPOINT (pg_rewind source)", t);
        }
        let source = if !rc.source_grants.is_empty() {
            let user = &target.replication.user;
            if let Some(ph) = ph {
                let grants: String = rc
                    .source_grants
                    .iter()
                    .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {};", sql_ident(user)))
                    .collect::<Vec<_>>()
                    .join(" ");
                run.sql(
                    ph,
                    primary.port,
                    &format!("SET synchronous_commit = local; {grants}"),
                    "grant pg_rewind's functions to the replication role",
                )
                .await?;
            }
            format!(
                "host={} port={} user={} dbname=postgres passfile={} connect_timeout=10",
                conninfo_quote(&primary.address_or_placeholder()),
                primary.port,
                conninfo_quote(user),
                conninfo_quote(&h.layout.passfile())
            )
        } else if let (true, Some(ph)) = (op.d.hosts_on_this_machine(), ph) {
            // ≤10: a superuser source; on one machine, over the primary's Unix socket.
            format!(
                "host={} port={} user={} dbname=postgres",
                conninfo_quote(&ph.layout.socket_dir),
                primary.port,
                conninfo_quote(&ph.layout.superuser)
            )
        } else {
            return Err(Error::node(
                &n.name,
                format!(
                    "pg_rewind of PostgreSQL {} needs a superuser source connection, which pgrepl does not open across hosts",
                    caps.major
                ),
            ));
        };
        let mut args = vec![format!("--target-pgdata={}", h.layout.data_dir), format!("--source-server={source}")];
        if rc.config_file && h.layout.config_dir != h.layout.data_dir {
            args.push(format!("--config-file={}/postgresql.conf", h.layout.config_dir));
        }
        let mut cmd = Command::new(tool).args(args).user(h.layout.os_user.clone()).timeout(REWIND_TIMEOUT);
        for (k, v) in render::server_env(&h.layout) {
            cmd = cmd.env(k, v);
        }
        let t = Instant::now();
        op.progress.started(&n.name, &format!("pg_rewind from {}", primary.name));
        let out = h.transport.exec(&cmd).await.map_err(|e| tr(&n.name, "pg_rewind", e))?;
        op.progress.finished(&n.name, &format!("pg_rewind from {}", primary.name), if out.success() { "done" } else { "failed" });
        if !out.success() {
            return Err(Error::node(&n.name, format!("pg_rewind exited with status {}: {}", out.status, out.tail())));
        }
        if ph.is_some() && format!("{}{}", out.stdout, out.stderr).contains("no rewind required") {
            // pgrepl found a divergence that pg_rewind does not see: nothing was rewound.
            return Err(Error::node(&n.name, "pg_rewind found no divergence although its WAL diverged"));
        }
        report.rewind_seconds = t.elapsed().as_secs_f64();
        act(&mut report.actions, &n.name, format!("pg_rewind from {}", primary.name), t);
        // pg_rewind copied the source's configuration: pgrepl's, for this node, again.
        run.write_files(h, r, true).await?;
        Ok(())
    }

    /// What status should mark (fenced, diverged, old timeline), from a status report and
    /// the recorded topology.
    pub async fn ha_marks(&self, status: &StatusReport) -> Result<Vec<NodeMark>, Error> {
        Ok(mark_nodes(status, &self.topology().await?))
    }
}

impl Exec<'_> {
    /// Brings the node back (it is stopped, its standby settings written): as it is, by
    /// pg_rewind or by a fresh clone, as its WAL allows (examined now, when `how` is not
    /// given), falling back to the next way when one fails; then waits until it streams.
    pub(super) async fn rejoin_node(&self, node: &str, how: Option<plan::RejoinHow>) -> Result<Option<String>, execute::Fail> {
        let op = self.op;
        let caps = op.caps;
        let d = op.d;
        let target = &self.after;
        let n = target.node(node).ok_or_else(|| Error::node(node, "not a node of the cluster"))?.clone();
        let primary = target.primary().clone();
        let h = op.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))?;
        // `None`: an agent on its own host, which reaches the primary over the network only.
        let ph = op.handle(&primary.name);
        let upstream = n.upstream.clone().unwrap_or_else(|| primary.name.clone());
        let run = op.run(target);
        let r = op.render(target, node)?;
        let mut reason = String::new();
        let (mut divergence, mut wal_end, mut wal_tli) = (None, None, None);
        // How: as it is, rewind, or clone.
        let mut method = match how {
            Some(plan::RejoinHow::AsItIs) => RejoinMethod::Restarted,
            Some(plan::RejoinHow::Rewind) => RejoinMethod::Rewound,
            Some(plan::RejoinHow::Reclone) => RejoinMethod::Recloned,
            None => match run.data_dir(h).await? {
                DataDir::Missing => {
                    reason = "its data directory is empty".into();
                    RejoinMethod::Recloned
                }
                DataDir::Unknown => {
                    return Err(execute::Fail::Abandon(refused(
                        node,
                        format!(
                            "{} holds files but no PostgreSQL cluster; pgrepl will not clone over them (move them away first)",
                            h.layout.data_dir
                        ),
                    )));
                }
                DataDir::Cluster { .. } if ph.is_none() => {
                    let (m, why) = from_own_host(h, &primary, &caps, &target.replication.user).await;
                    reason = why;
                    match m {
                        Some(m) => m,
                        None => return Err(execute::Fail::Abandon(refused(node, reason))),
                    }
                }
                DataDir::Cluster { .. } => {
                    let ph = ph.expect("the arm above");
                    let pc = read_control(ph, &caps).await;
                    let nc = read_control(h, &caps).await;
                    match (pc, nc) {
                        (Ok(pc), Ok(nc)) if pc.system_identifier != nc.system_identifier => {
                            reason = format!(
                                "it is another database system (identifier {} vs the primary's {})",
                                nc.system_identifier, pc.system_identifier
                            );
                            RejoinMethod::Recloned
                        }
                        (_, Err(e)) => {
                            reason = format!("its pg_control could not be read ({e})");
                            RejoinMethod::Recloned
                        }
                        _ => match op.fits_history(h, &primary, ph).await {
                            Ok((dv, end)) => {
                                divergence = Some(dv);
                                wal_end = end.map(|e| e.0);
                                wal_tli = end.map(|e| e.1);
                                let (m, why) = rejoin_method(dv);
                                reason = why;
                                m
                            }
                            Err(e) => {
                                reason = format!("whether it diverged is unknown ({e})");
                                RejoinMethod::Rewound
                            }
                        },
                    }
                }
            },
        };
        let rewind_tool = d.rewind_tool(op, h).await;
        if method == RejoinMethod::Rewound {
            if let Err(why) = &rewind_tool {
                reason.push_str(&format!("; {why}"));
                method = RejoinMethod::Recloned;
            }
        }
        let mut actions = Vec::new();
        let mut warnings = Vec::new();
        let mut timings = Timings::default();
        let mut streaming = false;

        // Its slot on the upstream, before it connects.
        if let (Some(un), Some(un_h)) = (target.node(&upstream), op.handle(&upstream)) {
            actions.extend(run.ensure_slots(un, un_h).await?);
        }
        if method == RejoinMethod::Restarted {
            run.write_files(h, &r, true).await?;
            match start_and_stream(&run, &n, h, &r, &upstream, &mut actions).await? {
                Ok(secs) => {
                    timings.streaming_seconds = secs;
                    streaming = true;
                }
                Err(e) => {
                    warnings.push(format!("it did not stream as it was ({e}); trying pg_rewind or a clone"));
                    stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                    method = if rewind_tool.is_ok() { RejoinMethod::Rewound } else { RejoinMethod::Recloned };
                }
            }
        }
        if method == RejoinMethod::Rewound {
            let tool = rewind_tool.as_ref().expect("checked").clone();
            let mut rw = rejoin::Rewound::default();
            let res = d.rewind(op, target, &n, h, &primary, ph, &r, &tool, &mut rw).await;
            timings.prepare_seconds = rw.prepare_seconds;
            timings.rewind_seconds = rw.rewind_seconds;
            actions.extend(rw.actions);
            match res {
                Ok(()) => match start_and_stream(&run, &n, h, &r, &upstream, &mut actions).await? {
                    Ok(secs) => {
                        timings.streaming_seconds = secs;
                        streaming = true;
                    }
                    Err(e) => {
                        warnings.push(format!("after pg_rewind it did not stream ({e}); cloning afresh"));
                        stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                        method = RejoinMethod::Recloned;
                    }
                },
                Err(e) => {
                    warnings.push(format!("pg_rewind failed ({e}); cloning afresh"));
                    if is_running(h).await.unwrap_or(true) {
                        stop_server(h, &r, FENCE_STOP_TIMEOUT, true).await?;
                    }
                    method = RejoinMethod::Recloned;
                }
            }
        }
        if method == RejoinMethod::Recloned {
            if is_running(h).await.map_err(|e| tr(node, "check whether the server runs", e))? {
                return Err(execute::Fail::Abandon(refused(node, "its server runs; pgrepl will not clone over it")));
            }
            let t = Instant::now();
            run.prepare_dirs(h).await?;
            run.clone_standby(&n, h, &r, &mut actions).await?;
            timings.clone_seconds = t.elapsed().as_secs_f64();
            timings.streaming_seconds = start_and_stream(&run, &n, h, &r, &upstream, &mut actions).await??;
            streaming = true;
        }
        let mut st = self.st();
        st.report.changed = true;
        st.report.actions.extend(actions);
        st.report.warnings.extend(warnings);
        let tm = &mut st.report.timings;
        tm.prepare_seconds = timings.prepare_seconds;
        tm.rewind_seconds = timings.rewind_seconds;
        tm.clone_seconds = timings.clone_seconds;
        tm.streaming_seconds = timings.streaming_seconds;
        if let Some(rd) = st.report.rejoin.as_mut() {
            rd.method = method;
            rd.reason = reason;
            rd.divergence = divergence;
            rd.node_wal_end = wal_end;
            rd.node_timeline = wal_tli;
            rd.streaming = streaming;
        }
        Ok(None)
    }
}

/// How a node comes back when only its own host is at hand (an agent there): the
/// primary's system and timeline over a replication connection from the node's host
/// (`IDENTIFY_SYSTEM`), against its own pg_control. `None`: refused, with the reason.
async fn from_own_host(h: &NodeHandle, primary: &Node, caps: &Capabilities, user: &str) -> (Option<RejoinMethod>, String) {
    let control = match read_control(h, caps).await {
        Ok(c) => c,
        Err(e) => return (Some(RejoinMethod::Recloned), format!("its pg_control could not be read ({e})")),
    };
    let conninfo = format!(
        "host={} port={} user={} dbname=replication replication=true passfile={} connect_timeout=5",
        conninfo_quote(&primary.address_or_placeholder()),
        primary.port,
        conninfo_quote(user),
        conninfo_quote(&h.layout.passfile())
    );
    let mut cmd = Command::new(h.layout.client_tool("psql"))
        .args([conninfo.as_str(), "-X", "-A", "-t", "-c", "IDENTIFY_SYSTEM"])
        .user(h.layout.os_user.clone())
        .timeout(Duration::from_secs(15));
    for (k, v) in render::server_env(&h.layout) {
        cmd = cmd.env(k, v);
    }
    let out = match h.transport.exec(&cmd).await {
        Ok(o) if o.success() => o,
        Ok(o) => return (None, format!("the primary {} did not answer IDENTIFY_SYSTEM: {}", primary.name, o.tail())),
        Err(e) => return (None, format!("the primary {} could not be asked: {e}", primary.name)),
    };
    let (system, timeline) = match parse_identify_system(&out.stdout) {
        Some(x) => x,
        None => return (None, format!("IDENTIFY_SYSTEM of {} answered {:?}", primary.name, out.stdout.trim())),
    };
    own_host_method(control.system_identifier, control.timeline, system, timeline)
}

/// `IDENTIFY_SYSTEM` through `psql -A -t`: the system identifier and the timeline.
pub(super) fn parse_identify_system(out: &str) -> Option<(u64, u32)> {
    let mut f = out.lines().find(|l| !l.trim().is_empty())?.split('|');
    Some((f.next()?.trim().parse().ok()?, f.next()?.trim().parse().ok()?))
}

/// The rule for [`from_own_host`] (pure): another system is cloned afresh; a timeline
/// behind the primary's is rewound (pg_rewind finds the fork in the histories); on the
/// primary's own timeline it wrote WAL of its own as a primary, which pg_rewind cannot
/// see and nothing from its host can compare: cloned afresh; ahead of the primary: refused.
pub(super) fn own_host_method(system: u64, tli: u32, primary_system: u64, primary_tli: u32) -> (Option<RejoinMethod>, String) {
    if system != primary_system {
        return (
            Some(RejoinMethod::Recloned),
            format!("it is another database system (identifier {system} vs the primary's {primary_system})"),
        );
    }
    match tli.cmp(&primary_tli) {
        std::cmp::Ordering::Less => (
            Some(RejoinMethod::Rewound),
            format!("its timeline {tli} is behind the primary's {primary_tli}: pg_rewind finds where they forked"),
        ),
        std::cmp::Ordering::Equal => (
            Some(RejoinMethod::Recloned),
            format!("it is on the primary's timeline {tli} with WAL of its own, which cannot be compared from its host: a fresh clone"),
        ),
        std::cmp::Ordering::Greater => (
            None,
            format!("its timeline {tli} is ahead of the primary's {primary_tli}: it must not follow it (check which holds the newer data)"),
        ),
    }
}

/// How a node's WAL lets it back, and why (pure).
pub(super) fn rejoin_method(d: Divergence) -> (RejoinMethod, String) {
    match d {
        Divergence::Follows => (RejoinMethod::Restarted, "its WAL is a prefix of the primary's history".into()),
        Divergence::Diverged { bytes } => {
            (RejoinMethod::Rewound, format!("its WAL goes {bytes} bytes past where its timeline ends in the primary's history"))
        }
        Divergence::ForeignTimeline => (RejoinMethod::Rewound, "its timeline is not in the primary's history".into()),
        // pg_rewind finds divergence through timeline histories only: on a shared timeline
        // it sees none and would leave the node's own WAL in place. A fresh clone is the only
        // safe way back.
        Divergence::Conflicting => (
            RejoinMethod::Recloned,
            "it has WAL of its own on a timeline it shares with the primary (it was written to as a primary): pg_rewind cannot see that divergence".into(),
        ),
        Divergence::Unverifiable => (
            RejoinMethod::Recloned,
            "whether its WAL matches the primary's cannot be checked (the primary no longer has that WAL)".into(),
        ),
    }
}

/// Starts a node as a standby of `upstream` and waits until it streams: `Ok(Err(_))` when
/// it started but does not stream, with the seconds until it streamed otherwise.
async fn start_and_stream(
    run: &Run<'_>,
    n: &Node,
    h: &NodeHandle,
    r: &RenderedNode,
    upstream: &str,
    actions: &mut Vec<Action>,
) -> Result<Result<f64, Error>, Error> {
    let t = Instant::now();
    run.start(n, h, r).await?;
    act(actions, &n.name, format!("start as a standby of {upstream}"), t);
    Ok(run.wait_streaming(n).await.map(|()| t.elapsed().as_secs_f64()))
}
