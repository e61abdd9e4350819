//! Restarts: `pgrepl restart [--rolling]`, the restarts `up` may do, and minor upgrades.
//! Observe (with the nodes' settings), plan ([`crate::plan::restart()`]), carry the plan
//! out with the one executor: its steps [`plan::Action::Restart`] (here: one server
//! restarted, back when it streams again) and [`plan::Action::Switchover`] (a whole
//! switchover, planned on a fresh look when the step runs, under the same operation lock).
//!
//! A failure stops the plan where it is and undoes nothing (a restart cannot be undone,
//! and a switchover done is recorded): the error says which node, and `pgrepl status`
//! shows the rest.

use super::execute::{Exec, Fail};
use super::*;
use crate::plan::{BinaryCheck, RestartMode, RestartRequest};

impl Deployment {
    /// The plan `restart` would carry out now (observes, decides, touches nothing).
    pub async fn plan_restart(&self, req: &RestartRequest) -> Result<plan::Plan, Error> {
        let op = Op::open(self, &crate::deploy::NoProgress).await?;
        let obs = op.observe_settings().await;
        Ok(plan::restart(&op.cluster, &obs, req)?)
    }

    /// Restarts the nodes `req` names (every node when it names none): standbys one at a
    /// time, each back and streaming before the next, in the order PostgreSQL's rule for
    /// the [`STANDBY_LIMITS`](crate::observe::STANDBY_LIMITS) allows; the primary in place
    /// ([`RestartMode::InPlace`]) or through a switchover with no acknowledged write lost
    /// to a restarted standby, and back ([`RestartMode::Rolling`]). Under the operation
    /// lock. See [`crate::plan::restart()`] for the order.
    ///
    /// An `[ha]` cluster bound to its agents' store ([`Deployment::with_consensus_store`]):
    /// the agents are held paused while it runs (under the same lock) and put back as they
    /// were, also when it fails (the error then says what became of them); each switchover
    /// moves the leader key with the primary role ([`crate::store::operator`]).
    pub async fn restart(&self, req: &RestartRequest, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let lock = self.lock_operation("restart", self.lock_wait()).await?;
        let t0 = Instant::now();
        let result = self
            .with_agents_held(async {
                let mut op = Op::open(self, progress).await?;
                op.lock = Some(&lock);
                let obs = op.observe_settings().await;
                let plan = plan::restart(&op.cluster, &obs, req)?;
                run_restart(&op, &plan, &obs, t0).await
            })
            .await;
        lock.release().await;
        result
    }

    /// The checks of a minor upgrade: on each node, the major of the binaries its layout
    /// names now (`postgres --version`) and of its data directory (`PG_VERSION`).
    pub async fn minor_upgrade_checks(&self) -> Result<Vec<BinaryCheck>, Error> {
        let (_, handles) = self.connect(false).await?;
        let checks = join_all(handles.iter().map(|h| async move {
            let postgres = h.layout.server_tool("postgres");
            let out = h.transport.exec(&Command::new(postgres.as_str()).args(["--version"])).await.ok();
            let binaries = out.filter(|o| o.success()).and_then(|o| parse_version_major(&o.stdout));
            let data = h
                .transport
                .read_file(&format!("{}/PG_VERSION", h.layout.data_dir))
                .await
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .filter(|s| !s.is_empty());
            BinaryCheck { node: h.name.clone(), path: h.layout.bin_dir.clone(), binaries, data }
        }))
        .await;
        Ok(checks)
    }

    /// A minor upgrade: every node restarted onto the binaries its layout names now (the
    /// spec's `pg_bin`, or the layout's, changed to a new build of the same major), as
    /// `mode` says (rolling by default in the CLI). Refused with
    /// [`plan::Refusal::MajorMismatch`] when a node's binaries are of another major than
    /// its data directory, before anything is restarted.
    pub async fn upgrade_minor(&self, mode: RestartMode, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let binaries = self.minor_upgrade_checks().await?;
        self.restart(&RestartRequest { binaries, ..RestartRequest::all(mode) }, progress).await
    }

    /// The plan of [`Deployment::upgrade_minor`] (checks the binaries, touches nothing).
    pub async fn plan_upgrade_minor(&self, mode: RestartMode) -> Result<plan::Plan, Error> {
        let binaries = self.minor_upgrade_checks().await?;
        self.plan_restart(&RestartRequest { binaries, ..RestartRequest::all(mode) }).await
    }
}

/// The major in `postgres --version`'s answer ("postgres (PostgreSQL) 15.4 ..." -> "15";
/// "9.6.24" -> "9.6").
pub fn parse_version_major(out: &str) -> Option<String> {
    let v = out.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 { Some(first.to_string()) } else { Some(format!("{first}.{}", parts.next()?.parse::<u32>().ok()?)) }
}

/// Carries out a restart plan; the report's `to` is the primary at the end.
pub(super) async fn run_restart(op: &Op<'_>, plan: &plan::Plan, obs: &ObservedCluster, t0: Instant) -> Result<OperationReport, Error> {
    let exec = Exec::new(op, plan, obs, t0);
    exec.run().await?;
    let mut report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
    if let Some(last) = report.switchovers.last() {
        report.to = last.to.clone();
    }
    report.changed = !report.actions.is_empty();
    report.timings.total_seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

impl Op<'_> {
    /// An observation with every answering node's settings read too.
    pub(super) async fn observe_settings(&self) -> ObservedCluster {
        let mut obs = self.observe().await;
        crate::observe::probe::observe_settings(&self.cluster, &self.handles, &self.caps, &mut obs).await;
        obs
    }
}

/// A restart step's failure: the plan stops there, nothing is undone.
fn stop(e: Error) -> Fail {
    Fail::Final(e)
}

impl Exec<'_> {
    /// [`plan::Action::Restart`]: the node restarted (its role checked first: a standby
    /// must still be one, the primary must accept writes), then back: a standby streaming
    /// from `upstream`, the primary accepting writes.
    pub(super) async fn restart_node(&self, node: &str, upstream: Option<&str>) -> Result<Option<String>, Fail> {
        let op = self.op;
        let h = op.handle(node).ok_or_else(|| stop(Error::node(node, "its host cannot be reached")))?;
        let mut n = op.cluster.node(node).ok_or_else(|| stop(Error::node(node, "not a node of the cluster")))?.clone();
        n.upstream = upstream.map(str::to_string);
        let r = op.render(self.before, node).map_err(stop)?;
        let recovery = query_one(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check its role").await.map_err(stop)?;
        match (upstream, recovery.as_deref()) {
            (Some(_), Some("t")) | (None, Some("f")) => {}
            (Some(_), _) => return Err(stop(refused(node, "it accepts writes now: not restarted as a standby (see `pgrepl status`)"))),
            (None, _) => {
                return Err(stop(refused(node, "it does not accept writes now: not restarted as the primary (see `pgrepl status`)")));
            }
        }
        let run = op.run(self.before);
        if let Some(u) = upstream {
            // Caught up first: a standby starting checks its values against those of the
            // primary's last parameter change it replayed (kept in its pg_control). After
            // the primary restarted with a lower max_* value, a standby that has not
            // replayed that record yet refuses to start with the lower value.
            run.wait_streaming(&n).await.map_err(stop)?;
            self.wait_caught_up(&n, h, u).await.map_err(stop)?;
        }
        if upstream.is_none() {
            // The primary: a CHECKPOINT while writes still flow leaves its shutdown
            // checkpoint little to write, so writes pause for less (as before a
            // switchover's stop). Its failure only makes the pause longer.
            let t = Instant::now();
            match run.sql(h, n.port, "CHECKPOINT;", "checkpoint before the restart").await {
                Ok(_) => act(&mut self.st().report.actions, node, "CHECKPOINT (a short shutdown checkpoint)", t),
                Err(e) => tracing::warn!(node, "CHECKPOINT before the restart failed: {e}"),
            }
        }
        let t = Instant::now();
        op.progress.started(node, "restart");
        let restarted = run.restart_server(&n, h, &r).await;
        op.progress.finished(node, "restart", if restarted.is_ok() { "done" } else { "failed" });
        restarted.map_err(stop)?;
        let detail = match upstream {
            Some(u) => {
                run.wait_streaming(&n).await.map_err(stop)?;
                format!("restarted; streams from {u} again")
            }
            None => {
                let rec = query_one(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check it accepts writes").await.map_err(stop)?;
                if rec.as_deref() != Some("f") {
                    return Err(stop(Error::node(node, "restarted, but it does not accept writes")));
                }
                self.st().report.timings.write_unavailable_seconds += t.elapsed().as_secs_f64();
                "restarted in place; accepts writes again".to_string()
            }
        };
        let mut st = self.st();
        act(&mut st.report.actions, node, detail.clone(), t);
        Ok(Some(detail))
    }

    /// Waits (bounded: [`CATCHUP_DEADLINE`]) until standby `n` has replayed what its
    /// upstream `u` had when asked.
    async fn wait_caught_up(&self, n: &Node, h: &NodeHandle, u: &str) -> Result<(), Error> {
        let op = self.op;
        let l = &op.caps.lsn;
        let uh = op.handle(u).ok_or_else(|| Error::node(u, "its host cannot be reached"))?;
        let up = op.cluster.node(u).ok_or_else(|| Error::node(u, "not a node of the cluster"))?;
        let q = format!(
            "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{}() ELSE pg_catalog.{}() END)::text;",
            l.last_replay, l.current
        );
        let target = lsn_of(query_one(uh, up.port, &q, "read its WAL position").await?)
            .ok_or_else(|| Error::node(u, "its WAL position is not known"))?;
        let q = format!("SELECT pg_catalog.{}()::text;", l.last_replay);
        op.progress.started(&n.name, "catch up before the restart");
        let start = Instant::now();
        loop {
            if lsn_of(query_one(h, n.port, &q, "read its replay position").await?).is_some_and(|r| r >= target) {
                op.progress.finished(&n.name, "catch up before the restart", "done");
                return Ok(());
            }
            if start.elapsed() > CATCHUP_DEADLINE {
                op.progress.finished(&n.name, "catch up before the restart", "timed out");
                return Err(Error::Timeout {
                    node: n.name.clone(),
                    waited: start.elapsed(),
                    waiting_for: format!("replay up to {target}, {u}'s position (is its replay paused? see its server log)"),
                });
            }
            tokio::time::sleep(FAST_POLL * 5).await;
        }
    }

    /// [`plan::Action::Switchover`] to `to`: the whole switchover (observe, plan, carry
    /// out) under this operation's lock; its report kept with this one's.
    pub(super) async fn switchover_step(&self, to: &str) -> Result<Option<String>, Fail> {
        let op = self.op;
        let lock = op.lock.ok_or_else(|| stop(Error::node(to, "a switchover inside a plan needs the operation lock held")))?;
        let t = Instant::now();
        let r = Box::pin(op.d.switchover_under(to, op.progress, lock)).await.map_err(stop)?;
        let mut st = self.st();
        st.report.timings.write_unavailable_seconds += r.timings.write_unavailable_seconds;
        let what = format!("switchover {} -> {} (writes unavailable {:.3}s)", r.from, r.to, r.timings.write_unavailable_seconds);
        act(&mut st.report.actions, to, what.clone(), t);
        st.report.warnings.extend(r.warnings.iter().map(|w| format!("switchover to {to}: {w}")));
        st.report.problems.extend(r.problems.iter().map(|p| format!("switchover to {to}: {p}")));
        st.report.switchovers.push(r);
        Ok(Some(what))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_major_of_postgres_version() {
        use super::parse_version_major as m;
        assert_eq!(m("postgres (PostgreSQL) 15.4\n").as_deref(), Some("15"));
        assert_eq!(m("postgres (PostgreSQL) 18beta1").as_deref(), Some("18"));
        assert_eq!(m("postgres (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
        assert_eq!(m("postgres (PostgreSQL) 10.23 (Debian 10.23-1)").as_deref(), Some("10"));
        assert_eq!(m("nonsense"), None);
    }
}
