//! Taking a cluster down: `down` stops the nodes, `destroy` removes what pgrepl and the
//! provider created (and only that).

use std::time::Duration;

use super::conf_edits::INCLUDE_COMMENT;
use super::created::created_path;
use super::{Deployment, Progress, merge_hba_block, read_created, tr};
use crate::cluster::{Cluster, Node};
use crate::error::{Error, Refusal};
use crate::observe::server_state::is_running;
use crate::provider::NodeHandle;
use crate::render::{INCLUDE_LINE, render_node};
use crate::spec::Role;
use crate::transport::{Command, TransportExt};

impl Deployment {
    /// Stops every running node: the primary first (its walsenders hand the last WAL,
    /// including the shutdown checkpoint, to the standbys), then the standbys. Returns
    /// the nodes stopped.
    pub async fn down(&self, progress: &dyn Progress) -> Result<Vec<String>, Error> {
        let (cluster, handles) = self.connect(false).await?;
        let mut order: Vec<&Node> = vec![cluster.primary()];
        order.extend(cluster.nodes.iter().filter(|n| n.role == Role::Standby));
        let mut stopped = Vec::new();
        for n in order {
            let Some(h) = handles.iter().find(|h| h.name == n.name) else {
                continue;
            };
            if is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
                progress.started(&n.name, "stop");
                let r = render_node(&cluster, &n.name, &h.layout, None)?;
                h.transport
                    .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
                    .await
                    .map_err(|e| tr(&n.name, "stop the server", e))?;
                progress.finished(&n.name, "stop", "stopped");
                stopped.push(n.name.clone());
            }
        }
        Ok(stopped)
    }

    /// Stops every node and removes what the provider created for the cluster (the
    /// local provider: the node directories), pgrepl's stored secrets and its record of
    /// the cluster's roles (topology). On hosts pgrepl
    /// did not create (SSH), it removes only what its record on each host says it created
    /// (see [`Created`](super::Created)); a cluster that was there before keeps its data. Returns what was
    /// left, one line per thing (`node: what, and why`); empty when everything is gone.
    pub async fn destroy(&self, progress: &dyn Progress) -> Result<Vec<String>, Error> {
        let lock = self.lock_operation("destroy", self.lock_wait()).await?;
        self.down(progress).await?;
        let (_, handles) = self.connect(false).await?;
        for h in &handles {
            if is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
                return Err(Refusal {
                    node: h.name.clone(),
                    reason: "its server still runs after stopping it; nothing was removed".into(),
                }
                .into());
            }
        }
        progress.started("cluster", "destroy");
        let mut left = Vec::new();
        if !self.hosts_on_this_machine() {
            // Every server was checked stopped above.
            let (cluster, handles) = self.connect(false).await?;
            for h in &handles {
                left.extend(self.destroy_on_host(&cluster, h).await?);
            }
        }
        self.provider.destroy_hosts(&self.cluster).await?;
        // The record of roles goes with the cluster: a cluster deployed again under the same
        // name starts from its spec, not from the primary a switchover left on record.
        let _ = tokio::fs::remove_file(self.state_dir.join("topology.json")).await;
        let secret = self.state_dir.join("replication");
        if self.cluster.replication.password_file.is_none() {
            let _ = tokio::fs::remove_file(&secret).await;
            lock.remove_local_file();
            let _ = tokio::fs::remove_dir(&self.state_dir).await;
        }
        progress.finished("cluster", "destroy", if left.is_empty() { "removed" } else { "removed what pgrepl created" });
        Ok(left)
    }

    /// Removes from a node's host what pgrepl's record there says it created, takes
    /// pgrepl's settings out of a cluster that was there before, removes pgrepl's own
    /// directory and the record; returns what it left.
    async fn destroy_on_host(&self, cluster: &Cluster, h: &NodeHandle) -> Result<Vec<String>, Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let n = h.name.as_str();
        let created = read_created(h, &cluster.name).await?;
        let r = render_node(cluster, n, l, None)?;
        let mut left = Vec::new();
        let exists = |p: String| async move { t.exists(&p, None).await.map_err(|e| tr(n, &format!("inspect {p}"), e)) };
        let data_ours = created.data_dir.as_deref() == Some(l.data_dir.as_str());
        let remove_data = || async {
            if t.exists(&l.data_dir, None).await.map_err(|e| tr(n, "inspect the data directory", e))? {
                t.remove_tree(&l.data_dir).await.map_err(|e| tr(n, "remove the data directory", e))?;
            }
            Ok::<(), Error>(())
        };
        let not_recorded =
            "it is not recorded as created by pgrepl (it was there before pgrepl, or was deployed by a pgrepl that kept no record)";
        match (&l.debian_cluster, &r.commands.drop) {
            (Some((v, c)), Some(drop)) => {
                let registered = exists(format!("{}/postgresql.conf", l.config_dir)).await?;
                if created.debian_cluster.as_ref() == Some(&(v.clone(), c.clone())) {
                    if registered {
                        t.run(&Command::from_line(drop).timeout(Duration::from_secs(120)))
                            .await
                            .map_err(|e| tr(n, "drop the cluster", e))?;
                    }
                    // pg_dropcluster leaves files it does not know: pgrepl's own, then the empty directory.
                    t.remove_file(&format!("{}/pgrepl.conf", l.config_dir)).await.map_err(|e| tr(n, "remove pgrepl.conf", e))?;
                    let _ = t
                        .exec(&Command { user: t.admin_user().map(str::to_string), ..Command::new("rmdir").args([l.config_dir.as_str()]) })
                        .await;
                    if data_ours {
                        remove_data().await?;
                    }
                    // The old major's clusters an upgrade kept until `upgrade --finish`:
                    // pgrepl's too (the new cluster is recorded as pgrepl's only when the
                    // old one was). One that runs is left, named.
                    for k in crate::debian_kept::kept_debian_clusters(h).await? {
                        let (kv, kc) = k.debian_cluster.clone().unwrap_or_default();
                        if k.running {
                            left.push(format!(
                                "{n}: Debian cluster {kv}/{kc} kept by an upgrade runs: not dropped (stop it, then `pg_dropcluster {kv} {kc}`)"
                            ));
                        } else {
                            t.run(&crate::debian_kept::dropcluster(&kv, &kc))
                                .await
                                .map_err(|e| tr(n, &format!("drop the cluster {kv}/{kc} an upgrade kept"), e))?;
                        }
                    }
                } else if registered {
                    self.take_settings_out(h).await?;
                    if data_ours {
                        remove_data().await?;
                        left.push(format!(
                            "{n}: Debian cluster {v}/{c}, its registration and configuration in {}: the cluster existed before pgrepl, so it was not dropped; its data directory {} held pgrepl's clone and was removed (`pg_dropcluster {v} {c}` removes the rest)",
                            l.config_dir, l.data_dir
                        ));
                    } else {
                        left.push(format!(
                            "{n}: Debian cluster {v}/{c} with its data in {} (stopped): {not_recorded}; pgrepl took its own settings out, the replication role \"{}\" and slots it made inside are kept",
                            l.data_dir, cluster.replication.user
                        ));
                    }
                } else if data_ours {
                    remove_data().await?;
                } else if exists(l.data_dir.clone()).await? {
                    left.push(format!("{n}: the data directory {}: {not_recorded}", l.data_dir));
                }
            }
            _ => match &l.base_dir {
                Some(base) if created.base_dir.as_deref() == Some(base.as_str()) => {
                    t.remove_tree(base).await.map_err(|e| tr(n, "remove the node's directory", e))?
                }
                _ if data_ours => remove_data().await?,
                _ => {
                    if exists(format!("{}/PG_VERSION", l.data_dir)).await? {
                        self.take_settings_out(h).await?;
                        left.push(format!(
                            "{n}: the cluster in {} (stopped): {not_recorded}; pgrepl took its own settings out, the replication role \"{}\" and slots it made inside are kept",
                            l.data_dir, cluster.replication.user
                        ));
                    } else if exists(l.data_dir.clone()).await? {
                        left.push(format!("{n}: the data directory {}: {not_recorded}", l.data_dir));
                    }
                    if let Some(base) = &l.base_dir {
                        if exists(base.clone()).await? {
                            left.push(format!("{n}: the directory {base}: {not_recorded}"));
                        }
                    }
                }
            },
        }
        // pgrepl's own directory (passfile, markers), named after the cluster.
        t.remove_tree(&l.pgrepl_dir).await.map_err(|e| tr(n, "remove pgrepl's directory", e))?;
        let (path, dir) = created_path(&cluster.name, n);
        t.remove_file(&path).await.map_err(|e| tr(n, &format!("remove pgrepl's record {path}"), e))?;
        let _ = t.exec(&Command { user: t.admin_user().map(str::to_string), ..Command::new("rmdir").args([dir.as_str()]) }).await;
        Ok(left)
    }

    /// Takes pgrepl's settings out of a cluster it did not create: its `pgrepl.conf`, the
    /// include line it appended to `postgresql.conf`, its block in `pg_hba.conf`. The rest
    /// of the configuration is kept as it is.
    async fn take_settings_out(&self, h: &NodeHandle) -> Result<(), Error> {
        let t = &*h.transport;
        let l = &h.layout;
        let owner = Some(l.os_user.as_str());
        let map = |what: &str, e| tr(&h.name, &format!("take pgrepl's settings out of {what}"), e);
        let conf = format!("{}/postgresql.conf", l.config_dir);
        if let Some(b) = t.read_file(&conf).await.map_err(|e| map(&conf, e))? {
            let text = String::from_utf8_lossy(&b).into_owned();
            let kept: String =
                text.lines().filter(|x| x.trim() != INCLUDE_LINE && x.trim() != INCLUDE_COMMENT).map(|x| format!("{x}\n")).collect();
            if kept != text {
                t.write_file(&conf, kept.as_bytes(), 0o600, owner).await.map_err(|e| map(&conf, e))?;
            }
        }
        let hba = format!("{}/pg_hba.conf", l.config_dir);
        if let Some(b) = t.read_file(&hba).await.map_err(|e| map(&hba, e))? {
            let text = String::from_utf8_lossy(&b).into_owned();
            let kept = merge_hba_block(&text, "");
            if kept != text {
                t.write_file(&hba, kept.as_bytes(), 0o600, owner).await.map_err(|e| map(&hba, e))?;
            }
        }
        let ours = format!("{}/pgrepl.conf", l.config_dir);
        t.remove_file(&ours).await.map_err(|e| map(&ours, e))
    }
}
