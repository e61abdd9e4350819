//! `up`: what comes before the plan (the lock, hosts, secrets, PostgreSQL installed where
//! missing, free ports), then observe, [`crate::plan::up()`], carry the plan out with the
//! executor of the HA operations, then what comes after (fenced nodes' start at boot
//! off, the synchronous standbys on record).

use super::*;
use crate::deploy::{Run, UpReport};
use crate::render::render_node;

impl Deployment {
    /// Deploys or converges the cluster: installs PostgreSQL where missing, then carries out
    /// [`crate::plan::up()`]'s plan with the HA operations' executor: the primary (initdb with
    /// checksums, settings, pg_hba, start, replication role, slots), then each level of
    /// standbys in parallel (clone, recovery settings, start), then waits until every
    /// standby streams.
    pub async fn up(&self, progress: &dyn Progress) -> Result<UpReport, Error> {
        let lock = self.lock_operation("up", self.lock_wait()).await?;
        let r = self.up_locked(&lock, progress).await;
        lock.release().await;
        r
    }

    /// [`up`](Self::up) of an `[ha]` cluster whose agents act: they are held paused while
    /// it converges the nodes (under the same operation lock; the hold waits until every
    /// reporting agent has seen the pause), and put back as they were afterwards, also
    /// when it fails (the error then says what became of them). Without a bound store
    /// ([`Deployment::with_consensus_store`]) it is [`up`](Self::up).
    pub async fn up_with_agents_held(&self, progress: &dyn Progress) -> Result<UpReport, Error> {
        // Not "up" (refused by the store's lock while agents act): this one pauses them
        // under the lock before it acts, as restarts and upgrades do.
        let lock = self.lock_operation("up, agents held", self.lock_wait()).await?;
        let r = self.with_agents_held(self.up_locked(&lock, progress)).await;
        lock.release().await;
        r
    }

    async fn up_locked(&self, lock: &crate::oplock::OperationLock, progress: &dyn Progress) -> Result<UpReport, Error> {
        let t0 = Instant::now();
        let (cluster, handles) = self.connect(true).await?;
        self.refuse_new_password_for_deployed(&handles).await?;
        let secrets = self.secrets(true).await?;
        let major = cluster.major.map(|m| m.to_string()).unwrap_or_default();
        let mut actions = Vec::new();
        let run = Run { cluster: &cluster, handles: &handles, secrets: &secrets, progress, local_ports: self.local_ports };
        // The synchronous standbys on record: every standby the primary may name while `up`
        // changes its settings (the union, the smaller count) before, the exact set after.
        let primary_name = cluster.primary().name.clone();
        let sync_target = crate::topology::SyncRecord::of(&primary_name, &cluster.replication.sync);
        let mut topo = self.topology().await?;
        let during = topo.sync_in_force(&primary_name, &cluster.replication.sync).widened(&sync_target);
        if topo.sync.as_ref() != Some(&during) {
            topo.sync = Some(during);
            self.save_topology(&topo).await?;
        }
        // Hosts without the cluster's PostgreSQL get it installed (the same major everywhere).
        let installs = join_all(handles.iter().filter(|h| h.install_script.is_some()).map(|h| async move {
            let t = &*h.transport;
            let postgres = h.layout.server_tool("postgres");
            if t.exists(&postgres, None).await.map_err(|e| tr(&h.name, "look for the PostgreSQL binaries", e))? {
                return Ok::<Option<Action>, Error>(None);
            }
            let t0 = Instant::now();
            progress.started(&h.name, "install PostgreSQL");
            let script = h.install_script.clone().unwrap_or_default();
            let r = t
                .run(&Command::new("sh").args(["-c", script.as_str()]).user("root").timeout(Duration::from_secs(1200)))
                .await
                .map_err(|e| tr(&h.name, "install PostgreSQL", e));
            progress.finished(&h.name, "install PostgreSQL", if r.is_ok() { "installed" } else { "failed" });
            r?;
            if !t.exists(&postgres, None).await.map_err(|e| tr(&h.name, "look for the PostgreSQL binaries", e))? {
                return Err(Error::node(&h.name, format!("the install finished but {postgres} is still missing")));
            }
            Ok(Some(Action { node: h.name.clone(), what: "install PostgreSQL".into(), seconds: t0.elapsed().as_secs_f64() }))
        }))
        .await;
        for i in installs {
            actions.extend(i?);
        }
        // The backup tool on every host that lacks it (Barman's cloud scripts in a venv,
        // pgBackRest's package); on this machine only said what to install.
        for h in &handles {
            actions.extend(crate::backup::ensure_tool(&run, h, progress).await?);
        }
        // Preflight: a node that is not running must find its port free, before anything changes.
        if self.local_ports {
            for h in &handles {
                let n = cluster.node(&h.name).expect("handles are nodes");
                if let Some(a) = &n.address {
                    if !is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?
                        && crate::machine::port_in_use(a, n.port).await
                    {
                        return Err(Error::node(
                            &n.name,
                            format!(
                                "port {} on {a} is already in use by another process; nothing was changed. Choose a free port in the spec (nodes[].port, or provider.base_port)",
                                n.port
                            ),
                        ));
                    }
                }
            }
        }
        // Observe, plan, carry the plan out: the same executor as the HA operations.
        let (done, steps, pending_restart) = execute_up(self, &cluster, &handles, &secrets, lock, progress).await?;
        actions.extend(done);
        // pgBackRest's stanza, once the primary runs.
        actions.extend(crate::backup::after_up(self, &cluster, &handles).await);
        // A node fenced by a failover is left alone (stopped, never started as a primary)
        // until `pgrepl rejoin` brings it back; the OS must not start it at boot either.
        let fenced = self.topology().await?.fenced;
        for n in cluster.nodes.iter().filter(|n| fenced.contains(&n.name)) {
            let h = run.handle(&n.name)?;
            let r = render_node(&cluster, &n.name, &h.layout, None)?;
            actions.extend(run.ensure_autostart_off(n, h, &r).await?);
        }
        if topo.sync.as_ref() != Some(&sync_target) {
            topo.sync = Some(sync_target);
            self.save_topology(&topo).await?;
        }
        Ok(UpReport { cluster: cluster.name.clone(), major, actions, steps, seconds: t0.elapsed().as_secs_f64(), pending_restart })
    }
}

/// Observes every node of `cluster` (reached through `handles`), plans `up` and carries
/// the plan out with the executor of the HA operations; then, on a fresh look at the
/// nodes' settings, the restarts the order allows ([`plan::restart()`] in
/// [`plan::RestartMode::Up`]: standbys only, never the primary). Returns what it did and
/// what it left pending. The caller (`Deployment::up`) holds the operation lock and has
/// installed PostgreSQL where missing.
async fn execute_up(
    d: &Deployment,
    cluster: &Cluster,
    handles: &[NodeHandle],
    secrets: &Secrets,
    lock: &crate::oplock::OperationLock,
    progress: &dyn Progress,
) -> Result<(Vec<Action>, Vec<StepRecord>, Vec<plan::PendingRestart>), Error> {
    let t0 = Instant::now();
    let caps = cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
    let op = Op {
        d,
        cluster: cluster.clone(),
        handles: handles.to_vec(),
        unreachable: Vec::new(),
        caps,
        secrets: secrets.clone(),
        progress,
        topology: d.topology().await?,
        lock: Some(lock),
    };
    let obs = op.observe().await;
    let plan = plan::up(cluster, &obs)?;
    let exec = Exec::new(&op, &plan, &obs, t0);
    exec.run().await?;
    let report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
    if let Some(p) = report.problems.first() {
        return Err(Error::node(&plan.primary, p.clone()));
    }
    let (mut actions, mut steps) = (report.actions, report.steps);
    // Settings that need a restart: the nodes whose files changed (what a server before
    // 9.5 cannot tell about itself), and what every server says is pending.
    let changed: Vec<String> = actions.iter().filter(|a| a.what == "write settings and pg_hba.conf").map(|a| a.node.clone()).collect();
    let obs = op.observe_settings().await;
    let rplan = plan::restart(cluster, &obs, &plan::RestartRequest { nodes: changed, ..plan::RestartRequest::all(plan::RestartMode::Up) })?;
    if !rplan.steps.is_empty() {
        let r = super::restart::run_restart(&op, &rplan, &obs, t0).await?;
        actions.extend(r.actions);
        steps.extend(r.steps);
    }
    Ok((actions, steps, rplan.pending))
}
