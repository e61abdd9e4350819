//! The standby's steps of `up` and of the HA executor: clone or settings, the guarded
//! removal of an unfinished clone, the clone itself with its progress (measured by
//! `clone_size`), the wait for streaming.

use std::time::{Duration, Instant};

use super::clone_size::{CLONE_SIZE_SCRIPT, clone_progress, parse_dir_size};
use super::{Action, CLONE_PROGRESS_INTERVAL, CLONE_TIMEOUT, DataDir, POLL_INTERVAL, Run, STREAMING_DEADLINE, tr};
use crate::cluster::Node;
use crate::error::{Error, Refusal};
use crate::observe::server_state::is_running;
use crate::provider::NodeHandle;
use crate::render::{self, RenderedNode, render_node};
use crate::transport::{Command, TransportExt};

impl Run<'_> {
    /// `up`'s step `Clone` or `WriteSettings` on a standby: whatever its data directory
    /// (read again now) needs: a clone when it is empty or a clone was left unfinished (an
    /// unused cluster the host came with is replaced; a primary with data of its own, a
    /// former primary's directory, or foreign files are refused), otherwise the OS's start
    /// at boot turned off and its settings written where they differ and applied when it
    /// runs. Starting it is the next step.
    pub(crate) async fn standby_clone_or_settings(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let t = &*h.transport;
        let marker = h.layout.clone_marker();
        let unfinished = t.exists(&marker, None).await.map_err(|e| tr(&n.name, "look for an unfinished clone", e))?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        let mut unfinished = unfinished;
        let mut running = running;
        if running && !unfinished {
            let rows = self.sql(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the standby's role").await?;
            if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() != Some("t") {
                if self.is_pristine(n, h).await? {
                    // A cluster nobody used (as a distribution package creates and starts
                    // one): no user database, table or role. It is replaced by the clone.
                    self.step(&n.name, "stop the unused cluster the host came with", &mut actions, async {
                        h.transport
                            .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
                            .await
                            .map_err(|e| tr(&n.name, "stop the server", e))?;
                        t.write_file(&marker, b"replacing an unused cluster\n", 0o600, Some(&h.layout.os_user))
                            .await
                            .map_err(|e| tr(&n.name, "mark the clone as started", e))
                    })
                    .await?;
                    unfinished = true;
                    running = false;
                } else {
                    return Err(Refusal {
                        node: n.name.clone(),
                        reason: format!(
                            "the spec makes it a standby but it runs as a primary (not in recovery) and holds data of its own; pgrepl will not demote it here: use `pgrepl rejoin {}`",
                            n.name
                        ),
                    }
                    .into());
                }
            }
        }
        let data = self.data_dir(h).await?;
        let needs_clone = match (data, unfinished) {
            (_, true) => {
                if running {
                    return Err(Refusal {
                        node: n.name.clone(),
                        reason: format!(
                            "an unfinished clone is recorded ({marker}) but a server runs on {}; stop it before pgrepl re-clones",
                            h.layout.data_dir
                        ),
                    }
                    .into());
                }
                true
            }
            (DataDir::Missing, false) => true,
            (DataDir::Cluster { standby: true }, false) => false,
            (DataDir::Cluster { standby: false }, false) => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds a cluster that is not a standby (no standby.signal or recovery.conf): it may be a former primary with writes of its own. pgrepl will not overwrite it; use `pgrepl rejoin {}`, or move the directory away to clone afresh",
                        h.layout.data_dir, n.name
                    ),
                }
                .into());
            }
            (DataDir::Unknown, false) => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds files but no PostgreSQL cluster; pgrepl will not clone over them (move them away first)",
                        h.layout.data_dir
                    ),
                }
                .into());
            }
        };
        if needs_clone {
            self.clone_standby(n, h, &r, &mut actions).await?;
        } else {
            actions.extend(self.ensure_autostart_off(n, h, &r).await?);
            let changed = self.write_files(h, &r, true).await?;
            if changed {
                actions.push(Action { node: n.name.clone(), what: "write settings and pg_hba.conf".into(), seconds: 0.0 });
            }
            if running && changed {
                self.apply_config(n, h, &r, &mut actions).await?;
            }
        }
        Ok(actions)
    }

    /// Whether a running, writable cluster was never used: no database besides the
    /// defaults, no table, view or sequence outside the system schemas, no role besides
    /// the bootstrap superuser and the predefined ones.
    pub(crate) async fn is_pristine(&self, n: &Node, h: &NodeHandle) -> Result<bool, Error> {
        let q = "SELECT (SELECT count(*) FROM pg_catalog.pg_database WHERE datname NOT IN ('template0', 'template1', 'postgres')) \
                 + (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
                    WHERE s.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND s.nspname NOT LIKE 'pg\\_%') \
                 + (SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user);";
        let rows = self.sql(h, n.port, q, "check whether the cluster was ever used").await?;
        Ok(rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("0"))
    }

    /// Removes a standby's data directory. Guarded: reached only with pgrepl's
    /// unfinished-clone marker written, and refused while a server runs on it.
    pub(crate) async fn remove_unfinished_data(&self, n: &Node, h: &NodeHandle) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        if t.exists(&l.data_dir, None).await.map_err(|e| tr(&n.name, "inspect the data directory", e))? {
            if is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
                return Err(
                    Refusal { node: n.name.clone(), reason: format!("a server runs on {}; refusing to remove it", l.data_dir) }.into()
                );
            }
            t.remove_tree(&l.data_dir).await.map_err(|e| tr(&n.name, "remove the unfinished clone", e))?;
        }
        Ok(())
    }

    /// `up`'s step `PrepareClone`, run while the upstream is still being set up: when the
    /// standby has no data directory yet (read again now) and no server runs, everything
    /// its clone needs but the upstream ([`Self::clone_ready`]). Otherwise nothing: the
    /// clone step decides.
    pub(crate) async fn standby_prepare_clone(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        self.prepare_dirs(h).await?;
        let t = &*h.transport;
        let unfinished = t.exists(&h.layout.clone_marker(), None).await.map_err(|e| tr(&n.name, "look for an unfinished clone", e))?;
        if !unfinished && self.data_dir(h).await? != DataDir::Missing {
            return Ok(actions);
        }
        if is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
            return Ok(actions);
        }
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.clone_ready(n, h, &r, &mut actions).await?;
        Ok(actions)
    }

    /// Everything a clone needs on the standby's host: the passfile, the clone marker,
    /// the layout's configuration (Debian: `pg_createcluster`, whose data directory the
    /// clone replaces), the OS's start at boot off, no data directory. Idempotent: the
    /// clone runs it again (cheaply) after `PrepareClone` did.
    async fn clone_ready(&self, n: &Node, h: &NodeHandle, r: &RenderedNode, actions: &mut Vec<Action>) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let marker = l.clone_marker();
        let upstream = n.upstream.as_deref().expect("a validated standby has an upstream");
        // The passfile first: pg_basebackup reads it.
        let pass = r.files.iter().find(|f| f.path == l.passfile()).expect("rendered passfile");
        t.write_file(&pass.path, pass.contents.text.as_bytes(), 0o600, Some(&l.os_user))
            .await
            .map_err(|e| tr(&n.name, "write the passfile", e))?;
        t.write_file(&marker, format!("cloning from {upstream}\n").as_bytes(), 0o600, Some(&l.os_user))
            .await
            .map_err(|e| tr(&n.name, "mark the clone as started", e))?;
        // Debian: the cluster's configuration comes from pg_createcluster; its data
        // directory is then replaced by the clone.
        if let (Some(_), Some(init)) = (&l.debian_cluster, &r.commands.init) {
            if !t
                .exists(&format!("{}/postgresql.conf", l.config_dir), None)
                .await
                .map_err(|e| tr(&n.name, "inspect the configuration", e))?
            {
                self.remove_unfinished_data(n, h).await?;
                self.create_debian_cluster(n, h, init, actions).await?;
            }
        }
        // Before the clone: a reboot must not start a copy that has no standby settings yet.
        actions.extend(self.ensure_autostart_off(n, h, r).await?);
        self.remove_unfinished_data(n, h).await?;
        // Whatever the clone leaves in the data directory is pgrepl's (recorded first, so a
        // clone that fails midway is still known as pgrepl's).
        self.record_created(h, |c| c.data_dir = Some(l.data_dir.clone())).await?;
        Ok(())
    }

    /// Debian's configuration of node `n` made with `init` (its `pg_createcluster` line),
    /// recorded as pgrepl's.
    async fn create_debian_cluster(
        &self,
        n: &Node,
        h: &NodeHandle,
        init: &crate::render::CommandLine,
        actions: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let t = &*h.transport;
        self.step(&n.name, "create the cluster's configuration (pg_createcluster)", actions, async {
            t.run(&Command::from_line(init).timeout(Duration::from_secs(300))).await.map_err(|e| tr(&n.name, "pg_createcluster", e))?;
            Ok(())
        })
        .await?;
        self.record_created(h, |c| c.debian_cluster = h.layout.debian_cluster.clone()).await
    }

    /// A restore's new primary on a layout whose configuration the OS's tools make
    /// (Debian: `pg_createcluster`): that configuration made when missing, the data
    /// directory it created removed (the restore fills it), the start at boot off.
    pub(crate) async fn layout_ready_for_restore(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<Vec<Action>, Error> {
        let (t, l) = (&*h.transport, &h.layout);
        let mut actions = Vec::new();
        if let (Some(_), Some(init)) = (&l.debian_cluster, &r.commands.init) {
            let conf = format!("{}/postgresql.conf", l.config_dir);
            if !t.exists(&conf, None).await.map_err(|e| tr(&n.name, "inspect the configuration", e))? {
                self.create_debian_cluster(n, h, init, &mut actions).await?;
                self.record_created(h, |c| c.data_dir = Some(l.data_dir.clone())).await?;
                t.remove_tree(&l.data_dir).await.map_err(|e| tr(&n.name, "empty the data directory pg_createcluster made", e))?;
            }
        }
        actions.extend(self.ensure_autostart_off(n, h, r).await?);
        Ok(actions)
    }

    pub(crate) async fn clone_standby(&self, n: &Node, h: &NodeHandle, r: &RenderedNode, actions: &mut Vec<Action>) -> Result<(), Error> {
        let t = &*h.transport;
        let marker = h.layout.clone_marker();
        let upstream = n.upstream.as_deref().expect("a validated standby has an upstream");
        self.clone_ready(n, h, r, actions).await?;
        let clone = r.commands.clone.as_ref().expect("standbys have a clone command");
        // What pg_basebackup will copy of the source (WAL apart), to report the clone's
        // progress against (best effort).
        let wal_dir = self.cluster.caps().map(|c| c.wal_dir).unwrap_or("pg_wal");
        let size_of = |h: &NodeHandle| Command {
            user: h.transport.admin_user().map(str::to_string),
            ..Command::new("sh").args(["-c", CLONE_SIZE_SCRIPT, "pgrepl-clone-size", h.layout.data_dir.as_str(), wal_dir])
        };
        let total = match self.handle(upstream) {
            Ok(uh) => uh.transport.exec(&size_of(uh)).await.ok().and_then(|o| parse_dir_size(&o.stdout)).map(|s| s.data),
            Err(_) => None,
        };
        let step = format!("clone from {upstream} (pg_basebackup)");
        self.step(&n.name, &step, actions, async {
            let clone_cmd = Command::from_line(clone).timeout(CLONE_TIMEOUT);
            let run = t.run(&clone_cmd);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(CLONE_PROGRESS_INTERVAL);
            tick.tick().await;
            // Ends with the clone, whose own time limit bounds it.
            loop {
                tokio::select! {
                    r = &mut run => {
                        r.map_err(|e| tr(&n.name, &format!("clone from {upstream}"), e))?;
                        return Ok(());
                    }
                    _ = tick.tick() => {
                        if let Ok(out) = t.exec(&size_of(h)).await {
                            if let Some(copied) = parse_dir_size(&out.stdout) {
                                self.progress.update(&n.name, &step, &clone_progress(copied, total));
                            }
                        }
                    }
                }
            }
        })
        .await?;
        self.write_files(h, r, true).await?;
        t.remove_file(&marker).await.map_err(|e| tr(&n.name, "clear the clone marker", e))?;
        actions.push(Action { node: n.name.clone(), what: "write standby settings".into(), seconds: 0.0 });
        Ok(())
    }

    /// Waits until `n` streams from its upstream (pg_stat_replication there).
    pub(crate) async fn wait_streaming(&self, n: &Node) -> Result<(), Error> {
        let upstream = n.upstream.as_deref().expect("standby");
        // Asked of the upstream; an agent on its own host reaches no other: there the
        // standby's own WAL receiver answers (9.6+).
        let own = self.handle(upstream).is_err() && self.cluster.caps().is_some_and(|c| c.wal_receiver_view);
        let (uh, port, q) = if own {
            let address = self.cluster.node(upstream).and_then(|u| u.address.clone()).unwrap_or_default();
            let pattern = render::sql_literal(&format!("%host={address} %"));
            (self.handle(&n.name)?, n.port, format!("SELECT status FROM pg_catalog.pg_stat_wal_receiver WHERE conninfo LIKE {pattern};"))
        } else {
            let up = self.cluster.node(upstream).expect("validated");
            (
                self.handle(upstream)?,
                up.port,
                format!("SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = {};", render::sql_literal(&n.name)),
            )
        };
        self.progress.started(&n.name, "wait until streaming");
        let start = Instant::now();
        let max_polls = (STREAMING_DEADLINE.as_millis() / POLL_INTERVAL.as_millis()) as usize;
        for _ in 0..max_polls {
            let rows = self.sql(uh, port, &q, "check replication").await?;
            if rows.iter().any(|r| r.first().cloned().flatten().as_deref() == Some("streaming")) {
                self.progress.finished(&n.name, "wait until streaming", "streaming");
                return Ok(());
            }
            if start.elapsed() > STREAMING_DEADLINE {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.progress.finished(&n.name, "wait until streaming", "timed out");
        Err(Error::Timeout {
            node: n.name.clone(),
            waited: start.elapsed(),
            waiting_for: format!("streaming from {upstream} (see the standby's server log)"),
        })
    }
}
