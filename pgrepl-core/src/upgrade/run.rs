//! Carries an [`UpgradePlan`] out, step by step, and goes back to the old major when a
//! step before the point of no return fails.
//!
//! Guards checked right before the destructive steps, on the host: a data directory is
//! renamed only when no server runs on it and its new name is free; the new data
//! directory is removed (going back) only when pgrepl created it in this run and no server
//! runs on it (a Debian cluster: dropped with `pg_dropcluster`); the old one is never
//! removed.

use std::time::{Duration, Instant};

use super::observe::{Ctx, config_file, runs};
use super::{UpgradeReport, UpgradeStepRecord, tools};
use crate::cluster::Cluster;
use crate::deploy::{Action, Run, tr};
use crate::error::{Error, Refusal, chain};
use crate::plan::upgrade::{UpgradePlan, UpgradeStep};
use crate::provider::NodeHandle;
use crate::render::render_node;
use crate::sql;
use crate::transport::{Command, TransportExt};

/// What going back needs to know.
#[derive(Debug, Default)]
struct Undo {
    /// Nodes stopped, in order.
    stopped: Vec<String>,
    /// Data directories renamed, in order: (node, data dir, kept as).
    renamed: Vec<(String, String, String)>,
    /// The new data directory was created on this node.
    created_new: Option<String>,
    /// Debian: the new cluster `(node, version, cluster)` was made by pg_createcluster.
    created_cluster: Option<(String, String, String)>,
}

pub(super) struct Exec<'a> {
    ctx: &'a Ctx<'a>,
    plan: &'a UpgradePlan,
    new_cluster: &'a Cluster,
    new_handles: Vec<NodeHandle>,
}

impl<'a> Exec<'a> {
    pub(super) fn new(ctx: &'a Ctx<'a>, plan: &'a UpgradePlan) -> Exec<'a> {
        let new_cluster = ctx.new_cluster.as_ref().expect("the planner refuses a spec invalid for the new major");
        let new_handles = ctx.new_handles.iter().filter_map(|(_, h)| h.as_ref().ok().cloned()).collect();
        Exec { ctx, plan, new_cluster, new_handles }
    }

    fn old_run(&self) -> Run<'_> {
        Run {
            cluster: &self.ctx.cluster,
            handles: &self.ctx.handles,
            secrets: &self.ctx.secrets,
            progress: self.ctx.progress,
            local_ports: self.ctx.d.local_ports,
        }
    }

    fn new_run(&self) -> Run<'_> {
        Run {
            cluster: self.new_cluster,
            handles: &self.new_handles,
            secrets: &self.ctx.secrets,
            progress: self.ctx.progress,
            local_ports: self.ctx.d.local_ports,
        }
    }

    fn old(&self, node: &str) -> Result<&NodeHandle, Error> {
        self.ctx.handle(node).ok_or_else(|| Error::node(node, "its host cannot be reached"))
    }

    fn new_h(&self, node: &str) -> Result<&NodeHandle, Error> {
        self.new_handles.iter().find(|h| h.name == node).ok_or_else(|| Error::node(node, "no layout on the new major"))
    }

    fn port(&self, node: &str) -> u16 {
        self.ctx.cluster.node(node).map(|n| n.port).expect("validated")
    }

    /// pgrepl's working directory for `pg_upgrade` on the node (its logs before 15).
    fn work_dir(&self, node: &str) -> Result<String, Error> {
        Ok(format!("{}/upgrade", self.old(node)?.layout.pgrepl_dir))
    }

    pub(super) async fn run(self) -> Result<UpgradeReport, Error> {
        let p = self.plan;
        let mut report = UpgradeReport {
            cluster: p.cluster.clone(),
            from: p.from,
            to: p.to,
            link: p.link,
            primary: p.primary.clone(),
            primary_upgraded: false,
            steps: Vec::new(),
            kept: p.kept.clone(),
            warnings: p.warnings.clone(),
            failed: None,
            agents_paused_here: false,
            agents: None,
            total_seconds: 0.0,
        };
        let mut undo = Undo::default();
        for (i, step) in p.steps.iter().enumerate() {
            let node = step.node().to_string();
            let what = step.to_string();
            let t = Instant::now();
            self.ctx.progress.started(&node, &what);
            let r = self.step(step, &mut undo).await;
            self.ctx.progress.finished(&node, &what, if r.is_ok() { "done" } else { "failed" });
            let record = |outcome: &str, detail: Option<String>| UpgradeStepRecord {
                node: node.clone(),
                step: what.clone(),
                outcome: outcome.into(),
                detail,
                seconds: t.elapsed().as_secs_f64(),
            };
            match r {
                Ok(detail) => report.steps.push(record("done", detail)),
                Err(e) if matches!(step, UpgradeStep::Analyze { .. } | UpgradeStep::RetireOldCluster { .. }) => {
                    report.warnings.push(format!("{node}: {what} failed (run it by hand): {}", chain(&e)));
                    report.steps.push(record("warning", Some(chain(&e))));
                }
                Err(e) => {
                    report.steps.push(record("failed", Some(chain(&e))));
                    if i < p.point_of_no_return {
                        let back = self.go_back(&undo).await;
                        return Err(Error::node(
                            &p.primary,
                            format!("the upgrade to PostgreSQL {} failed at step {} ({node}: {what}): {}\n{back}", p.to, i + 1, chain(&e)),
                        ));
                    }
                    let kept: Vec<String> = p.kept.iter().map(|(n, k)| format!("{n}: {k}")).collect();
                    report.failed = Some(format!(
                        "step {} ({node}: {what}) failed: {}. The primary {} runs PostgreSQL {} (upgraded); the cluster file says so now. Bring the standbys that are missing back with `pgrepl up` (with the new binaries: it clones them); the old data directories are kept ({})",
                        i + 1,
                        chain(&e),
                        p.primary,
                        p.to,
                        kept.join(", ")
                    ));
                    break;
                }
            }
            if i == p.point_of_no_return {
                report.primary_upgraded = true;
            }
        }
        Ok(report)
    }

    async fn stop(&self, node: &str) -> Result<(), Error> {
        let h = self.old(node)?;
        let r = render_node(&self.ctx.cluster, node, &h.layout, Some(&self.ctx.secrets))?;
        h.transport
            .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
            .await
            .map_err(|e| tr(node, "stop the server", e))?;
        if runs(h).await? {
            return Err(Error::node(node, "the server still runs after pg_ctl stop"));
        }
        Ok(())
    }

    async fn rename(&self, h: &NodeHandle, from: &str, to: &str) -> Result<(), Error> {
        if runs(h).await? {
            return Err(Refusal { node: h.name.clone(), reason: format!("a server runs on {from}: it is not renamed") }.into());
        }
        if h.transport.exists(to, None).await.map_err(|e| tr(&h.name, "inspect the kept directory", e))? {
            return Err(Refusal { node: h.name.clone(), reason: format!("{to} exists: {from} is not renamed over it") }.into());
        }
        let c = Command { user: h.transport.admin_user().map(str::to_string), ..Command::new("mv").args(["-T", from, to]) };
        h.transport.run(&c).await.map_err(|e| tr(&h.name, &format!("rename {from} to {to}"), e))?;
        Ok(())
    }

    async fn step(&self, step: &UpgradeStep, undo: &mut Undo) -> Result<Option<String>, Error> {
        let mut actions: Vec<Action> = Vec::new();
        match step {
            UpgradeStep::StopPrimary { node } | UpgradeStep::StopStandby { node } => {
                self.stop(node).await?;
                undo.stopped.push(node.clone());
                Ok(None)
            }
            UpgradeStep::KeepOldData { node, from, to } => {
                self.rename(self.old(node)?, from, to).await?;
                undo.renamed.push((node.clone(), from.clone(), to.clone()));
                Ok(Some(format!("kept in {to}")))
            }
            UpgradeStep::Initdb { node, settings } => {
                let nh = self.new_h(node)?;
                let auth = self.new_cluster.replication.auth.map(|a| a.as_str()).unwrap_or("scram-sha-256");
                undo.created_new = Some(node.clone());
                nh.transport
                    .run(&tools::initdb(&nh.layout, &nh.layout.data_dir, settings, self.plan.to, auth))
                    .await
                    .map_err(|e| tr(node, "initdb (new major)", e))?;
                Ok(None)
            }
            UpgradeStep::CreateCluster { node, version, cluster, port, settings } => {
                let nh = self.new_h(node)?;
                let auth = self.new_cluster.replication.auth.map(|a| a.as_str()).unwrap_or("scram-sha-256");
                undo.created_cluster = Some((node.clone(), version.clone(), cluster.clone()));
                nh.transport
                    .run(&tools::createcluster(&nh.layout, version, cluster, *port, settings, self.plan.to, auth))
                    .await
                    .map_err(|e| tr(node, "pg_createcluster (new major)", e))?;
                // The new cluster is pgrepl's to destroy when the old one was.
                let old = self.old(node)?;
                if crate::deploy::read_created(old, &self.ctx.cluster.name).await?.debian_cluster == old.layout.debian_cluster {
                    self.new_run()
                        .record_created(nh, |c| {
                            c.debian_cluster = nh.layout.debian_cluster.clone();
                            c.data_dir = Some(nh.layout.data_dir.clone());
                        })
                        .await?;
                }
                Ok(Some(format!("{version}/{cluster}")))
            }
            UpgradeStep::RetireOldCluster { node, version, cluster, port, disable } => {
                self.retire(node, version, cluster, *port, *disable).await
            }
            UpgradeStep::WriteSettings { node } => {
                let nh = self.new_h(node)?;
                let n = self.new_cluster.node(node).expect("validated");
                let r = render_node(self.new_cluster, node, &nh.layout, Some(&self.ctx.secrets))?;
                let run = self.new_run();
                run.prepare_dirs(nh).await?;
                // pg_createcluster's start.conf says auto: pgrepl starts its nodes itself.
                actions.extend(run.ensure_autostart_off(n, nh, &r).await?);
                run.write_files(nh, &r, false).await?;
                Ok(describe(&actions))
            }
            UpgradeStep::PgUpgrade { node, link } => self.pg_upgrade(node, *link).await,
            UpgradeStep::StartPrimary { node } => {
                let nh = self.new_h(node)?;
                let n = self.new_cluster.node(node).expect("validated");
                let r = render_node(self.new_cluster, node, &nh.layout, Some(&self.ctx.secrets))?;
                self.new_run().start(n, nh, &r).await?;
                let v = sql::query_one(&*nh.transport, &nh.layout, n.port, "SHOW server_version;", crate::deploy::SQL_TIMEOUT)
                    .await
                    .map_err(|e| crate::deploy::sqlerr(node, "read the server's version", e))?;
                self.record_new_timeline(nh, n.port).await;
                Ok(v.map(|v| format!("server_version {v}")))
            }
            UpgradeStep::Analyze { node } => {
                let nh = self.new_h(node)?;
                let port = self.port(node);
                nh.transport.run(&tools::analyze(&nh.layout, port)).await.map_err(|e| tr(node, "vacuumdb --analyze-in-stages", e))?;
                let script = format!("{}/update_extensions.sql", self.work_dir(node)?);
                if nh
                    .transport
                    .exists(&script, Some(&nh.layout.os_user))
                    .await
                    .map_err(|e| tr(node, "look for update_extensions.sql", e))?
                {
                    nh.transport
                        .run(&tools::psql_file(&nh.layout, port, &script))
                        .await
                        .map_err(|e| tr(node, "run pg_upgrade's update_extensions.sql", e))?;
                    return Ok(Some("statistics rebuilt; update_extensions.sql run".into()));
                }
                Ok(Some("statistics rebuilt".into()))
            }
            UpgradeStep::ReplicationRoleAndSlots { node, .. } => {
                let n = self.new_cluster.node(node).expect("validated");
                let run = self.new_run();
                actions.extend(run.replication_role(n).await?);
                actions.extend(run.ensure_slots(n, self.new_h(node)?).await?);
                Ok(describe(&actions))
            }
            UpgradeStep::Clone { node, .. } => {
                let n = self.new_cluster.node(node).expect("validated");
                actions.extend(self.new_run().standby_clone_or_settings(n).await?);
                Ok(describe(&actions))
            }
            UpgradeStep::StartStandby { node, .. } => {
                let n = self.new_cluster.node(node).expect("validated");
                let run = self.new_run();
                run.start_if_stopped(n).await?;
                run.wait_streaming(n).await?;
                Ok(Some("streaming".into()))
            }
        }
    }

    async fn pg_upgrade(&self, node: &str, link: bool) -> Result<Option<String>, Error> {
        let h = self.old(node)?;
        let nh = self.new_h(node)?;
        // The old data directory: renamed aside, or (Debian) where it is.
        let old_data = self
            .plan
            .steps
            .iter()
            .find_map(|s| match s {
                UpgradeStep::KeepOldData { node: n, to, .. } if n == node => Some(to.clone()),
                _ => None,
            })
            .unwrap_or_else(|| h.layout.data_dir.clone());
        let superuser = self
            .plan
            .steps
            .iter()
            .find_map(|s| match s {
                UpgradeStep::Initdb { settings, .. } | UpgradeStep::CreateCluster { settings, .. } => Some(settings.superuser.clone()),
                _ => None,
            })
            .ok_or_else(|| Error::node(node, "the plan makes no new cluster before pg_upgrade"))?;
        if old_data == nh.layout.data_dir {
            return Err(Error::node(node, format!("the old and the new data directory are both {old_data}")));
        }
        let work = self.work_dir(node)?;
        let t = &*nh.transport;
        t.remove_tree(&work).await.map_err(|e| tr(node, "clear pg_upgrade's working directory", e))?;
        t.mkdir(&work, 0o700, Some(&nh.layout.os_user)).await.map_err(|e| tr(node, "create pg_upgrade's working directory", e))?;
        let port = self.port(node);
        let cmd = tools::pg_upgrade(&tools::PgUpgradeArgs {
            old_bin: &h.layout.bin_dir,
            new: &nh.layout,
            old_data: &old_data,
            new_data: &nh.layout.data_dir,
            old_config: config_file(&h.layout).as_deref(),
            new_config: config_file(&nh.layout).as_deref(),
            superuser: &superuser,
            old_port: port,
            new_port: port,
            work_dir: &work,
            check: false,
            link,
        });
        let out = t.exec(&cmd).await.map_err(|e| tr(node, "pg_upgrade", e))?;
        if !out.success() {
            let (failed, _) = tools::check_failures(&out.stdout, &work);
            return Err(Error::node(
                node,
                format!(
                    "pg_upgrade failed{}: {} (its logs: {work}, and pg_upgrade_output.d in the new data directory, copied to {work} when going back)",
                    if failed.is_empty() { String::new() } else { format!(" ({})", failed.join("; ")) },
                    out.tail()
                ),
            ));
        }
        Ok(Some(if link { "files hard-linked".into() } else { "files copied".into() }))
    }

    /// Debian: the old cluster kept as `pg_upgradecluster` leaves it: not started
    /// (`start.conf` `manual`, or `disabled`, under pgrepl's marker), on the spare port (its
    /// `postgresql.conf` and pgrepl's included file); the new cluster's `postgresql.conf`
    /// on the node's port.
    async fn retire(&self, node: &str, version: &str, cluster: &str, port: u16, disable: bool) -> Result<Option<String>, Error> {
        let h = self.old(node)?;
        let nh = self.new_h(node)?;
        if runs(h).await? {
            return Err(
                Refusal { node: node.to_string(), reason: format!("the old cluster {version}/{cluster} runs: it is not changed") }.into()
            );
        }
        let t = &*h.transport;
        let user = h.layout.os_user.as_str();
        let old_name = format!("{version}/{cluster}");
        let new_name = nh.layout.debian_cluster.as_ref().map(|(v, c)| format!("{v}/{c}")).unwrap_or_default();
        let start_conf = format!("{}/start.conf", h.layout.config_dir);
        let text = tools::retired_start_conf(&self.ctx.cluster.name, &old_name, &new_name, disable);
        t.write_file(&start_conf, text.as_bytes(), 0o644, Some(user)).await.map_err(|e| tr(node, &format!("write {start_conf}"), e))?;
        let node_port = self.port(node);
        for (dir, file, mode, port) in [
            (&h.layout.config_dir, "postgresql.conf", 0o644, port),
            (&h.layout.config_dir, "pgrepl.conf", 0o600, port),
            (&nh.layout.config_dir, "postgresql.conf", 0o644, node_port),
        ] {
            let path = format!("{dir}/{file}");
            let Some(text) = t.read_file_as(&path, user).await.map_err(|e| tr(node, &format!("read {path}"), e))? else { continue };
            let new = tools::with_port(&String::from_utf8_lossy(&text), port);
            t.write_file(&path, new.as_bytes(), mode, Some(user)).await.map_err(|e| tr(node, &format!("write {path}"), e))?;
        }
        Ok(Some(format!(
            "{old_name}: port {port}, start.conf {}; {new_name}: port {node_port}",
            if disable { "disabled" } else { "manual" }
        )))
    }

    /// The recorded timeline follows the upgraded primary (pg_upgrade starts the new
    /// cluster on timeline 1; a record from before would mark every node as behind).
    async fn record_new_timeline(&self, nh: &NodeHandle, port: u16) {
        let tli = sql::query_one(
            &*nh.transport,
            &nh.layout,
            port,
            "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint();",
            crate::deploy::SQL_TIMEOUT,
        )
        .await
        .ok()
        .flatten()
        .and_then(|t| t.parse::<u32>().ok());
        let mut topo = self.ctx.topology.clone();
        topo.timeline = tli;
        topo.last_primary_lsn = None;
        if let Err(e) = self.ctx.d.save_topology(&topo).await {
            tracing::warn!("the recorded topology was not updated after the upgrade: {}", chain(&e));
        }
    }

    /// Back to the old major after a failure before the upgraded primary started: the new
    /// data directory removed (pg_upgrade's output copied to its working directory first),
    /// the old one renamed back, every stopped node started. Returns what it did.
    async fn go_back(&self, undo: &Undo) -> String {
        let mut said = Vec::new();
        let p = self.plan;
        if let Some((node, version, cluster)) = &undo.created_cluster {
            // Debian: the old cluster never moved; the new one is dropped.
            let (Ok(h), Ok(nh)) = (self.old(node), self.new_h(node)) else {
                return format!("could not go back: {node}'s host cannot be reached; its old cluster is where it was");
            };
            let t = &*nh.transport;
            let old_data = &h.layout.data_dir;
            if *node == p.primary && p.link && t.exists(&format!("{old_data}/global/pg_control.old"), None).await.unwrap_or(true) {
                return format!(
                    "NOT gone back: pg_upgrade --link had begun linking ({old_data}/global/pg_control.old exists): the old cluster must not be started. Finish by hand (see pg_upgrade's logs in {}) or restore a backup",
                    self.work_dir(node).unwrap_or_default()
                );
            }
            match runs(nh).await {
                Ok(false) => {
                    self.keep_upgrade_logs(nh, node).await;
                    if let Err(e) = t.run(&tools::dropcluster(version, cluster)).await {
                        return format!(
                            "could not go back: pg_dropcluster {version} {cluster} failed: {e}; the old cluster {} is untouched",
                            h.layout.debian_cluster.as_ref().map(|(v, c)| format!("{v}/{c}")).unwrap_or_default()
                        );
                    }
                    said.push(format!("{node}: the new cluster {version}/{cluster} dropped"));
                }
                _ => return format!("could not go back: a server runs on the new cluster {version}/{cluster} ({})", nh.layout.data_dir),
            }
        }
        for (node, data, kept) in undo.renamed.iter().rev() {
            let Ok(h) = self.old(node) else {
                return format!("could not go back: {node}'s host cannot be reached; its old data directory is in {kept}");
            };
            let t = &*h.transport;
            if *node == p.primary && p.link && t.exists(&format!("{kept}/global/pg_control.old"), None).await.unwrap_or(true) {
                return format!(
                    "NOT gone back: pg_upgrade --link had begun linking ({kept}/global/pg_control.old exists): the old cluster in {kept} must not be started. Finish by hand (see pg_upgrade's logs in {}) or restore a backup",
                    self.work_dir(node).unwrap_or_default()
                );
            }
            if undo.created_new.as_deref() == Some(node.as_str()) {
                match runs(h).await {
                    Ok(false) => {
                        self.keep_upgrade_logs(h, node).await;
                        if let Err(e) = t.remove_tree(data).await {
                            return format!(
                                "could not go back: removing the new data directory {data} failed: {e}; the old one is in {kept}"
                            );
                        }
                    }
                    _ => return format!("could not go back: a server runs on the new data directory {data}; the old one is in {kept}"),
                }
            }
            if let Err(e) = self.rename(h, kept, data).await {
                return format!("could not go back: {}; the old data directory is in {kept}", chain(&e));
            }
            said.push(format!("{node}'s data directory is {data} again"));
        }
        let old_run = self.old_run();
        for node in &undo.stopped {
            let (Ok(h), Some(n)) = (self.old(node), self.ctx.cluster.node(node)) else { continue };
            let started = match render_node(&self.ctx.cluster, node, &h.layout, Some(&self.ctx.secrets)) {
                Ok(r) => old_run.start(n, h, &r).await,
                Err(e) => Err(e.into()),
            };
            match started {
                Ok(()) => said.push(format!("{node} started on PostgreSQL {}", p.from)),
                Err(e) => said.push(format!("{node} did NOT start: {}", chain(&e))),
            }
        }
        format!("went back to PostgreSQL {}: {}", p.from, said.join("; "))
    }
}

impl Exec<'_> {
    /// pg_upgrade's logs in the new data directory (`pg_upgrade_output.d`) copied to its
    /// working directory, before the new data directory goes (best effort).
    async fn keep_upgrade_logs(&self, h: &NodeHandle, node: &str) {
        let t = &*h.transport;
        let work = self.work_dir(node).unwrap_or_default();
        let data = self.new_h(node).map(|nh| nh.layout.data_dir.clone()).unwrap_or_else(|_| h.layout.data_dir.clone());
        let copy = Command {
            user: t.admin_user().map(str::to_string),
            ..Command::new("sh").args([
                "-c",
                "[ -d \"$1/pg_upgrade_output.d\" ] && cp -a \"$1/pg_upgrade_output.d\" \"$2/\" || true",
                "pgrepl-keep-logs",
                data.as_str(),
                work.as_str(),
            ])
        };
        let _ = t.exec(&copy).await;
    }
}

fn describe(actions: &[Action]) -> Option<String> {
    (!actions.is_empty()).then(|| actions.iter().map(|a| a.what.clone()).collect::<Vec<_>>().join("; "))
}
