//! The primary's steps of `up`: initdb, its settings, the replication role.

use std::time::Duration;

use super::{Action, DataDir, Run, tr};
use crate::cluster::Node;
use crate::error::{Error, Refusal};
use crate::observe::server_state::is_running;
use crate::provider::NodeHandle;
use crate::render::{self, render_node};
use crate::transport::{Command, TransportExt};

impl Run<'_> {
    /// `up`'s step `Initdb` on the primary: its directories, then initdb with checksums
    /// when its data directory is empty and no server runs; nothing when it holds a cluster.
    pub(crate) async fn primary_initdb(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        if let DataDir::Missing = self.data_dir(h).await? {
            if running {
                return Err(Refusal { node: n.name.clone(), reason: format!("a server runs but {} is empty", h.layout.data_dir) }.into());
            }
            let init = r.commands.init.as_ref().ok_or_else(|| {
                Error::node(
                    &n.name,
                    format!("no PostgreSQL cluster in {} and this layout has no initdb step; create the cluster first", h.layout.data_dir),
                )
            })?;
            self.step(&n.name, "initdb (data checksums on)", &mut actions, async {
                h.transport.run(&Command::from_line(init).timeout(Duration::from_secs(300))).await.map_err(|e| tr(&n.name, "initdb", e))?;
                Ok(())
            })
            .await?;
            let l = &h.layout;
            self.record_created(h, |c| {
                c.data_dir = Some(l.data_dir.clone());
                if l.debian_cluster.is_some() {
                    c.debian_cluster = l.debian_cluster.clone();
                }
            })
            .await?;
        }
        Ok(actions)
    }

    /// `up`'s step `WriteSettings` on the primary: refused when its data directory is not a
    /// primary's or it runs as a standby; the OS's start at boot turned off; settings and
    /// pg_hba.conf written where they differ and, when it runs, applied.
    pub(crate) async fn primary_settings(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        self.prepare_dirs(h).await?;
        let running = is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))?;
        match self.data_dir(h).await? {
            DataDir::Missing | DataDir::Unknown => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!(
                        "{} holds files but no PostgreSQL cluster; pgrepl will not initialise over them (move them away first)",
                        h.layout.data_dir
                    ),
                }
                .into());
            }
            DataDir::Cluster { standby: true } if !running => {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: format!("the spec makes it the primary but {} holds a standby (standby.signal or recovery.conf); after a failover, update the spec's roles or use `pgrepl switchover`", h.layout.data_dir),
                }
                .into());
            }
            DataDir::Cluster { .. } => {}
        }
        if running {
            let rows = self.sql(h, n.port, "SELECT pg_catalog.pg_is_in_recovery();", "check the primary's role").await?;
            if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("t") {
                return Err(Refusal {
                    node: n.name.clone(),
                    reason: "the spec makes it the primary but it runs as a standby (in recovery); after a failover, update the spec's roles or use `pgrepl switchover`".into(),
                }
                .into());
            }
        }
        actions.extend(self.ensure_autostart_off(n, h, &r).await?);
        let changed = self.write_files(h, &r, false).await?;
        if changed {
            actions.push(Action { node: n.name.clone(), what: "write settings and pg_hba.conf".into(), seconds: 0.0 });
            if running {
                self.apply_config(n, h, &r, &mut actions).await?;
                if self.restart_to_replicate(n, h).await? {
                    let step = "restart: replication's settings need it, and no standby streams from it yet";
                    self.step(&n.name, step, &mut actions, self.restart_server(n, h, &r)).await?;
                }
            }
        }
        Ok(actions)
    }

    /// Whether a running primary that `up` is setting replication up on must restart for
    /// it: a setting replication needs (listening on the network, WAL for standbys,
    /// senders, slots, archiving) waits for a restart, and no standby streams from it yet
    /// (a cluster being adopted). A primary that already serves standbys is never
    /// restarted by `up` (the restart planner reports it pending).
    async fn restart_to_replicate(&self, n: &Node, h: &NodeHandle) -> Result<bool, Error> {
        let pending = if self.cluster.caps().is_some_and(|c| c.pending_restart) {
            "EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart AND name IN \
             ('listen_addresses', 'port', 'wal_level', 'max_wal_senders', 'max_replication_slots', 'archive_mode', 'wal_log_hints'))"
        } else {
            "true" // before 9.5 the server cannot say: as before, restart a primary no standby uses
        };
        let q = format!("SELECT {pending} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_replication);");
        let rows = self.sql(h, n.port, &q, "check whether replication's settings wait for a restart").await?;
        Ok(rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("t"))
    }

    /// `up`'s step `EnsureReplicationRole`: created, and given its password, only when missing.
    pub(crate) async fn replication_role(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
        let user = &self.cluster.replication.user;
        let rows = self
            .sql(
                h,
                n.port,
                &format!(
                    "SELECT rolreplication AND rolcanlogin AND rolpassword IS NOT NULL FROM pg_catalog.pg_authid WHERE rolname = {};",
                    render::sql_literal(user)
                ),
                "check the replication role",
            )
            .await?;
        if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() != Some("t") {
            let text = r.sql.iter().filter(|s| s.purpose.contains(user.as_str())).map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n");
            self.step(&n.name, &format!("create replication role {user}"), &mut actions, async {
                self.sql(h, n.port, &text, "create the replication role").await.map(|_| ())
            })
            .await?;
        }
        Ok(actions)
    }
}
