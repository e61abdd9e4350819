//! The acting part of backups: commands run on the nodes' hosts through their
//! transports, after the pure decisions of [`decide`](super::decide).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::catalog::{BackupInfo, parse_barman_list, parse_pgbackrest_info};
use super::decide::{RestoreRefusal, Target, check_in_place, choose_backup};
use super::pgbackrest;
use super::recovery::recovery_files;
use crate::deploy::{CLONE_TIMEOUT, DataDir, Deployment, NoProgress, Run, SQL_TIMEOUT, is_running, tr};
use crate::error::{Error, Refusal};
use crate::provider::NodeHandle;
use crate::render::backup_tool as tool;
use crate::render::pgbackrest::{self as pgbr, PgbackrestNode};
use crate::render::{CommandLine, render_node, server_env, shell_quote};
use crate::spec::{BackupSpec, BackupTool};
use crate::sql;
use crate::tool_failure::classify_failure;
use crate::transport::{Command, Transport, TransportExt};

/// How long a restored server may take to replay the archive and promote.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(1800);
/// Time limit of listing or deleting backups.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of a restore into a new cluster.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The backup to use instead of the one [`choose_backup`] picks (must cover the target).
    pub backup_id: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The cluster restored into.
    pub cluster: String,
    /// Its primary.
    pub primary: String,
    /// The backup restored.
    pub backup: BackupInfo,
    /// The target.
    pub target: Target,
    /// The timeline the restored primary runs on.
    pub timeline: Option<u32>,
    /// Seconds: download of the base backup.
    pub download_seconds: f64,
    /// Seconds: replay and promotion.
    pub recovery_seconds: f64,
}

/// What `verify --backup` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyBackupReport {
    /// The backup restored.
    pub backup: BackupInfo,
    /// The scratch directory used (removed afterwards).
    pub scratch: String,
    /// Whether the server reached consistency, started and answered.
    pub ok: bool,
    /// Seconds from the start of the download to an answer.
    pub seconds: f64,
    /// What went wrong, if anything.
    pub problem: Option<String>,
}

impl Deployment {
    /// The spec's `[backup]`, or an error naming the missing section.
    pub fn backup_spec(&self) -> Result<&BackupSpec, Error> {
        self.cluster.backup.as_ref().ok_or_else(|| Error::node(&self.cluster.name, "the spec has no [backup] section"))
    }

    fn major(&self) -> Result<crate::version::PgMajor, Error> {
        self.cluster.major.ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))
    }

    /// Runs one of the tool's command lines on `h`; a failure is named
    /// ([`ToolFailure`](super::ToolFailure)).
    async fn run_tool(&self, h: &NodeHandle, line: &CommandLine, timeout: Duration, action: &str) -> Result<String, Error> {
        let out = h.transport.exec(&Command::from_line(line).timeout(timeout)).await.map_err(|e| tr(&h.name, action, e))?;
        if out.success() {
            return Ok(out.stdout);
        }
        let all = format!("{}\n{}", out.stdout, out.stderr);
        Err(Error::Backup { node: h.name.clone(), action: action.into(), cause: classify_failure(out.status, &all), detail: out.tail() })
    }

    /// The current primary's handle (the recorded topology applied), or `from`'s. Only
    /// that node's host must answer (after a failover the former primary's may not).
    pub(super) async fn node_handle(&self, from: Option<&str>) -> Result<(crate::cluster::Cluster, NodeHandle), Error> {
        let (cluster, handles, failed) = self.connect_partial().await?;
        let name = from.map(str::to_string).unwrap_or_else(|| cluster.primary().name.clone());
        if let Some((_, e)) = failed.into_iter().find(|(n, _)| *n == name) {
            return Err(e);
        }
        let h = handles.into_iter().find(|h| h.name == name).ok_or_else(|| Error::node(&name, "no such node in the cluster"))?;
        Ok((cluster, h))
    }

    /// The backups in the archive, oldest first (the tool's own listing, run on the primary's host).
    pub async fn backups(&self) -> Result<Vec<BackupInfo>, Error> {
        let b = self.backup_spec()?;
        let (cluster, h) = self.node_handle(None).await?;
        self.pgbackrest_ready(b, &cluster, &h).await?;
        self.list_on(b, &self.cluster.name, &h).await
    }

    /// For pgBackRest: the installed version checked, and `h`'s configuration of this
    /// cluster written again from the spec as it is now (its endpoint, keys, retention).
    async fn pgbackrest_ready(&self, b: &BackupSpec, cluster: &crate::cluster::Cluster, h: &NodeHandle) -> Result<(), Error> {
        if b.tool != BackupTool::Pgbackrest {
            return Ok(());
        }
        pgbackrest::check_version(b, self.major()?, h).await?;
        let n = cluster.node(&h.name).ok_or_else(|| Error::node(&h.name, "no such node"))?;
        let l = &h.layout;
        let node = PgbackrestNode { data_dir: &l.data_dir, socket_dir: &l.socket_dir, port: n.port, user: &l.superuser };
        pgbackrest::write_config(b, &cluster.name, &cli_dir(l), &node, h).await
    }

    /// The backups of cluster `server` (pgBackRest: its stanza, configured in `h`'s pgrepl directory).
    pub(super) async fn list_on(&self, b: &BackupSpec, server: &str, h: &NodeHandle) -> Result<Vec<BackupInfo>, Error> {
        let l = &h.layout;
        if b.tool == BackupTool::Pgbackrest {
            let line = pgbr::command(b, &cli_dir(l), server, &l.os_user, &["info", "--output=json"]);
            let out = self.run_tool(h, &line, TOOL_TIMEOUT, "list the backups").await?;
            return parse_pgbackrest_info(&out, server).map_err(|e| Error::Backup {
                node: h.name.clone(),
                action: "list the backups".into(),
                cause: classify_failure(1, &e.0),
                // The first line says what failed, the last the store's answer (S3's XML).
                detail: match (e.0.lines().next(), e.0.lines().last()) {
                    (Some(f), Some(l)) if f != l => format!("{f}\n{l}"),
                    _ => e.0.clone(),
                },
            });
        }
        if b.tool == BackupTool::Directory {
            return super::directory::list(b, server, h).await;
        }
        let out = self.run_tool(h, &tool::barman_list(b, server, &l.os_user), TOOL_TIMEOUT, "list the backups").await?;
        parse_barman_list(&out).map_err(|e| Error::node(&h.name, e.to_string()))
    }

    /// pgBackRest's `stanza-create` of this cluster on `h` (it does nothing when the
    /// stanza exists for this system).
    pub(super) async fn stanza_create(&self, b: &BackupSpec, h: &NodeHandle, dir: &str) -> Result<(), Error> {
        let l = &h.layout;
        let line = pgbr::command(b, dir, &self.cluster.name, &l.os_user, &["stanza-create"]);
        self.run_tool(h, &line, TOOL_TIMEOUT, "create pgBackRest's stanza").await.map(|_| ())
    }

    /// A full base backup now, from the primary or from `from`; returns it as listed.
    pub async fn take_backup(&self, from: Option<&str>) -> Result<BackupInfo, Error> {
        let b = self.backup_spec()?;
        let (cluster, h) = self.node_handle(from).await?;
        let node = cluster.node(&h.name).ok_or_else(|| Error::node(&h.name, "no such node"))?;
        if !is_running(&h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
            return Err(Refusal {
                node: h.name.clone(),
                reason: "its server does not run: a base backup is taken from a running server".into(),
            }
            .into());
        }
        if b.tool == BackupTool::Pgbackrest && b.repo_host.is_some() {
            self.pgbackrest_ready(b, &cluster, &h).await?;
            return self.repo_host_backup(b, &cluster, &h, from.is_some_and(|f| f != cluster.primary().name)).await;
        }
        if b.tool == BackupTool::Pgbackrest {
            self.pgbackrest_ready(b, &cluster, &h).await?;
            // Created through the primary (pgBackRest refuses on a standby alone).
            let ph = if cluster.primary().name == h.name { h.clone() } else { self.node_handle(None).await?.1 };
            self.pgbackrest_ready(b, &cluster, &ph).await?;
            self.stanza_create(b, &ph, &cli_dir(&ph.layout)).await?;
        }
        if b.tool == BackupTool::Directory {
            return self.directory_backup(b, &cluster.name, &h, node.port).await;
        }
        let before: Vec<String> = self.list_on(b, &cluster.name, &h).await?.into_iter().map(|x| x.id).collect();
        let line = match b.tool {
            BackupTool::Pgbackrest => self.pgbackrest_backup_line(b, &cluster, &h).await?,
            _ => {
                let mut line = tool::barman_backup(b, &cluster.name, &h.layout.socket_dir, node.port, &h.layout.superuser);
                line.user = h.layout.os_user.clone();
                line.env.extend(server_env(&h.layout).into_iter().filter(|(k, _)| k == "LD_LIBRARY_PATH"));
                line
            }
        };
        let primary = cluster.primary().clone();
        if b.tool == BackupTool::BarmanCloud && primary.name != h.name {
            // From a standby, the backup's end waits until the WAL segment holding it is
            // archived, and a standby cannot switch segments: the primary does, while the
            // tool waits (pgBackRest stops its backups on the primary, which switches).
            let (_, ph) = self.node_handle(None).await?;
            let tool_run = self.run_tool(&h, &line, CLONE_TIMEOUT, "take a base backup");
            let switch = cluster.caps().map(|c| c.lsn.switch).unwrap_or("pg_switch_wal");
            let nudge = nudge_wal_switch(&h, node.port, &ph, primary.port, switch);
            tokio::pin!(tool_run, nudge);
            tokio::select! {
                r = &mut tool_run => { r?; }
                () = &mut nudge => { tool_run.await?; }
            }
        } else {
            self.run_tool(&h, &line, CLONE_TIMEOUT, "take a base backup").await?;
        }
        let after = self.list_on(b, &cluster.name, &h).await?;
        after
            .into_iter()
            .rev()
            .find(|x| !before.contains(&x.id))
            .ok_or_else(|| Error::node(&h.name, "the backup tool succeeded but no new backup is listed"))
    }

    /// pgBackRest's full backup on `h`. From a standby pgBackRest also needs the primary
    /// (`--backup-standby`, the primary as `pg2`): pgrepl gives it when the primary is on
    /// the same host; otherwise it would need a pgBackRest repository host over SSH.
    async fn pgbackrest_backup_line(
        &self,
        b: &BackupSpec,
        cluster: &crate::cluster::Cluster,
        h: &NodeHandle,
    ) -> Result<CommandLine, Error> {
        let l = &h.layout;
        let primary = cluster.primary();
        let mut tail = vec!["--type=full".to_string()];
        if primary.name != h.name {
            let node = cluster.node(&h.name).ok_or_else(|| Error::node(&h.name, "no such node"))?;
            let (_, handles) = self.connect(false).await?;
            let ph = handles.iter().find(|x| x.name == primary.name).ok_or_else(|| Error::node(&primary.name, "no host"))?;
            if node.address != primary.address || !self.local_ports {
                return Err(Refusal {
                    node: h.name.clone(),
                    reason: format!(
                        "with backup.tool = \"pgbackrest\" a backup from a standby also connects to the primary ({}), which is on another host: \
                         that needs a pgBackRest repository host over SSH, which pgrepl does not set up; take the backup from the primary",
                        primary.name
                    ),
                }
                .into());
            }
            let pl = &ph.layout;
            tail.extend([
                "--backup-standby".to_string(),
                format!("--pg2-path={}", pl.data_dir),
                format!("--pg2-socket-path={}", pl.socket_dir),
                format!("--pg2-port={}", primary.port),
                format!("--pg2-user={}", pl.superuser),
            ]);
        }
        tail.push("backup".into());
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        Ok(pgbr::command(b, &cli_dir(l), &cluster.name, &l.os_user, &tail))
    }

    /// Applies `[backup] retention` (barman-cloud-backup-delete: backups and the WAL only
    /// they need); returns the ids removed.
    pub async fn apply_retention(&self) -> Result<Vec<String>, Error> {
        let b = self.backup_spec()?;
        if b.tool == BackupTool::Directory {
            let (cluster, h) = self.node_handle(None).await?;
            return self.directory_retention(b, &cluster.name, &h, cluster.primary().port).await;
        }
        let Some(policy) = b.retention.as_ref().and_then(tool::barman_retention_policy) else {
            return Ok(Vec::new());
        };
        let (cluster, h) = self.node_handle(None).await?;
        self.pgbackrest_ready(b, &cluster, &h).await?;
        let before = self.list_on(b, &self.cluster.name, &h).await?;
        let l = &h.layout;
        if let Some(repo) = self.repo_host(b).await? {
            // The policy is in the repository host's configuration.
            let line = super::repo_host::RepoHost::command(b, &self.cluster.name, &["expire"]);
            repo.run(&line, TOOL_TIMEOUT, "apply the retention policy").await?;
            let after: Vec<String> = self.list_on(b, &self.cluster.name, &h).await?.into_iter().map(|x| x.id).collect();
            return Ok(before.into_iter().map(|x| x.id).filter(|id| !after.contains(id)).collect());
        }
        let line = match b.tool {
            // The policy is in the node's configuration (repo1-retention-full).
            BackupTool::Pgbackrest => pgbr::command(b, &cli_dir(l), &self.cluster.name, &l.os_user, &["expire"]),
            _ => tool::barman_delete(b, &self.cluster.name, &policy, &l.os_user),
        };
        self.run_tool(&h, &line, TOOL_TIMEOUT, "apply the retention policy").await?;
        let after: Vec<String> = self.list_on(b, &self.cluster.name, &h).await?.into_iter().map(|x| x.id).collect();
        Ok(before.into_iter().map(|x| x.id).filter(|id| !after.contains(id)).collect())
    }

    /// The retention policy in words, for refusals.
    fn retention_words(&self) -> Option<String> {
        let r = self.cluster.backup.as_ref()?.retention.as_ref()?;
        r.keep.map(|k| format!("keep = {k}")).or_else(|| r.window.as_ref().map(|w| format!("window = \"{w}\"")))
    }

    /// Restores this cluster's archive to `target` into `new`, a cluster that does not
    /// exist yet (its primary's data directory must be empty): the base backup that
    /// covers the target, the archive replayed up to it, promoted there. Nothing of this
    /// cluster is touched. `new`'s standbys are cloned by `new.up()` afterwards.
    pub async fn restore_into(&self, target: Target, new: &Deployment, opts: &RestoreOptions) -> Result<RestoreReport, Error> {
        let b = self.backup_spec()?.clone();
        let source = self.cluster.name.clone();
        let (cluster, handles) = new.connect(true).await?;
        let primary = cluster.primary().clone();
        let h = handles.iter().find(|x| x.name == primary.name).ok_or_else(|| Error::node(&primary.name, "no host"))?;
        let new_node = PgbackrestNode {
            data_dir: &h.layout.data_dir,
            socket_dir: &h.layout.socket_dir,
            port: primary.port,
            user: &h.layout.superuser,
        };
        // Decide first: which backup, and whether the place is free. pgBackRest lists
        // through the source's primary, whose configuration `up` wrote.
        let catalog = match b.tool {
            BackupTool::Pgbackrest => {
                pgbackrest::check_version(&b, new.major()?, h).await?;
                let (source_cluster, sh) = self.node_handle(None).await?;
                self.pgbackrest_ready(&b, &source_cluster, &sh).await?;
                self.list_on(&b, &source, &sh).await?
            }
            _ => self.list_on(&b, &source, h).await?,
        };
        let now = time::OffsetDateTime::now_utc();
        let refuse = |r: RestoreRefusal| -> Error { Refusal { node: source.clone(), reason: r.to_string() }.into() };
        let mut chosen = choose_backup(&catalog, &target, now, self.retention_words().as_deref()).map_err(refuse)?.clone();
        if let Some(id) = &opts.backup_id {
            let asked =
                catalog.iter().find(|x| &x.id == id).ok_or_else(|| Error::node(&source, format!("no backup {id} in the archive")))?;
            if asked.end_time > chosen.end_time {
                return Err(refuse(RestoreRefusal::NotCovered {
                    target: target.to_string(),
                    oldest_id: id.clone(),
                    oldest_end: super::format_time(asked.end_time),
                    retention: String::new(),
                }));
            }
            chosen = asked.clone();
        }
        let running = is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))?;
        let has_cluster = h
            .transport
            .exists(&format!("{}/PG_VERSION", h.layout.data_dir), None)
            .await
            .map_err(|e| tr(&h.name, "inspect the data directory", e))?;
        if running || has_cluster {
            return Err(refuse(RestoreRefusal::NotEmpty { node: h.name.clone(), path: h.layout.data_dir.clone() }));
        }
        let secrets_src = self.state_dir().join("replication");
        let secrets_dst = new.state_dir().join("replication");
        if tokio::fs::symlink_metadata(&secrets_dst).await.is_err() && tokio::fs::symlink_metadata(&secrets_src).await.is_ok() {
            // The restored primary knows the source's replication password (its role is in
            // the backup): the new cluster keeps it.
            let bytes = tokio::fs::read(&secrets_src).await.map_err(|e| Error::Io {
                path: secrets_src.display().to_string(),
                action: "read the replication password".into(),
                source: e,
            })?;
            crate::machine::LocalTransport
                .mkdir(&new.state_dir().to_string_lossy(), 0o700, None)
                .await
                .map_err(|e| tr("localhost", "create the state directory", e))?;
            crate::machine::LocalTransport
                .write_file(&secrets_dst.to_string_lossy(), &bytes, 0o600, None)
                .await
                .map_err(|e| tr("localhost", "write the replication password", e))?;
        }
        let secrets = new.secrets(true).await?;
        let run = Run { cluster: &cluster, handles: &handles, secrets: &secrets, progress: &NoProgress, local_ports: new.local_ports };
        run.prepare_dirs(h).await?;
        if running || run.data_dir(h).await? != DataDir::Missing {
            return Err(refuse(RestoreRefusal::NotEmpty { node: h.name.clone(), path: h.layout.data_dir.clone() }));
        }
        // The WAL up to now in the archive, when the source's primary runs (refused
        // otherwise: the archive would not reach the target).
        self.archive_up_to_now(&target).await?;
        // Act.
        let t0 = Instant::now();
        let l = &h.layout;
        run.layout_ready_for_restore(&primary, h, &render_node(&cluster, &primary.name, l, Some(&secrets))?).await?;
        h.transport.mkdir(&l.data_dir, 0o700, Some(&l.os_user)).await.map_err(|e| tr(&h.name, "create the data directory", e))?;
        let download = match b.tool {
            BackupTool::Pgbackrest => {
                if let Some(repo) = self.repo_host(&b).await? {
                    // The new primary's host reaches the repository host over SSH too.
                    repo.ensure_trust(&b, &source, &cluster, &[h]).await?;
                }
                // The source's stanza, configured on the new primary's host, restored into its data directory.
                pgbackrest::write_config(&b, &source, &l.pgrepl_dir, &new_node, h).await?;
                let set = format!("--set={}", chosen.id);
                pgbr::command(&b, &l.pgrepl_dir, &source, &l.os_user, &[set.as_str(), "--type=none", "restore"])
            }
            BackupTool::Directory => super::directory::restore_line(&b, &source, &chosen.id, &l.data_dir, &l.os_user),
            _ => tool::barman_restore(&b, &source, &chosen.id, &l.data_dir, &l.os_user),
        };
        self.run_tool(h, &download, CLONE_TIMEOUT, "download the base backup").await?;
        if let Some(nb) = cluster.backup.as_ref().filter(|nb| nb.tool == BackupTool::Pgbackrest) {
            // The restored server archives into its own cluster's stanza from the start.
            pgbackrest::write_config(nb, &cluster.name, &l.pgrepl_dir, &new_node, h).await?;
        }
        let download_seconds = t0.elapsed().as_secs_f64();
        let caps = cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known".into()))?;
        let r = render_node(&cluster, &primary.name, l, Some(&secrets))?;
        run.write_files(h, &r, false).await?;
        let rec = recovery_files(&caps, &tool::recovery_restore_command(&b, &source, &l.pgrepl_dir), &target);
        let write = |path: String, text: String| async move {
            h.transport
                .write_file(&path, text.as_bytes(), 0o600, Some(&l.os_user))
                .await
                .map_err(|e| tr(&h.name, &format!("write {path}"), e))
        };
        for (name, text) in &rec.files {
            write(format!("{}/{name}", l.data_dir), text.clone()).await?;
        }
        if let Some(extra) = &rec.auto_conf {
            let path = format!("{}/postgresql.auto.conf", l.data_dir);
            let cur = h.transport.read_file_as(&path, &l.os_user).await.map_err(|e| tr(&h.name, "read postgresql.auto.conf", e))?;
            let mut text = cur.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(extra);
            write(path, text).await?;
        }
        let t1 = Instant::now();
        let promoted = async {
            if let Err(e) = run.start(&primary, h, &r).await {
                return Err(Error::node(
                    &primary.name,
                    format!("the restored server did not reach the target: {}", crate::error::chain(&e)),
                ));
            }
            let timeline = wait_promoted(h, primary.port, RECOVERY_DEADLINE).await?;
            super::coverage::check_target_reached(h, primary.port, &caps, &target).await?;
            Ok(timeline)
        };
        let timeline = match promoted.await {
            Ok(t) => t,
            Err(e) => return Err(super::coverage::abandon(h, &r, e).await),
        };
        for name in &rec.reset_after {
            run.sql(h, primary.port, &format!("ALTER SYSTEM RESET {name};"), "remove the recovery settings").await?;
        }
        if !rec.reset_after.is_empty() {
            run.sql(h, primary.port, "SELECT pg_catalog.pg_reload_conf();", "reload").await?;
        }
        Ok(RestoreReport {
            cluster: cluster.name.clone(),
            primary: primary.name.clone(),
            backup: chosen,
            target,
            timeline,
            download_seconds,
            recovery_seconds: t1.elapsed().as_secs_f64(),
        })
    }

    /// Restores this cluster's archive to `target` in place, after `pgrepl down`: refused
    /// while any node's server runs (naming it). The primary's data directory is moved
    /// aside (`<data>.pre-restore`, which must not exist yet: nothing is ever removed
    /// that could be the only copy), the standbys' data directories are removed (copies
    /// of the primary: `up` clones them again), then the primary is restored as by
    /// [`restore_into`](Self::restore_into) and promoted at the target. Returns the report
    /// and the directory moved aside.
    pub async fn restore_in_place(&self, target: Target, opts: &RestoreOptions) -> Result<(RestoreReport, String), Error> {
        let b = self.backup_spec()?.clone();
        let _lock = self.lock_operation("restore", self.lock_wait()).await?;
        let (cluster, handles) = self.connect(false).await?;
        let primary = cluster.primary().name.clone();
        // Guard: every server down, checked on every node before anything changes.
        let mut running = Vec::new();
        for h in &handles {
            if is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
                running.push(h.name.clone());
            }
        }
        check_in_place(&running).map_err(|r| Error::from(Refusal { node: r_node(&r), reason: r.to_string() }))?;
        let ph = handles.iter().find(|h| h.name == primary).ok_or_else(|| Error::node(&primary, "no host"))?;
        let aside = format!("{}.pre-restore", ph.layout.data_dir.trim_end_matches('/'));
        if ph.transport.exists(&aside, None).await.map_err(|e| tr(&primary, "look for an earlier pre-restore copy", e))? {
            return Err(Refusal {
                node: primary.clone(),
                reason: format!("{aside} exists (kept by an earlier in-place restore): remove it or move it away first"),
            }
            .into());
        }
        // Decide before changing anything: a target no backup covers is refused here.
        self.pgbackrest_ready(&b, &cluster, ph).await?;
        let catalog = self.list_on(&b, &cluster.name, ph).await?;
        let now = time::OffsetDateTime::now_utc();
        choose_backup(&catalog, &target, now, self.retention_words().as_deref())
            .map_err(|r| Error::from(Refusal { node: cluster.name.clone(), reason: r.to_string() }))?;
        // Act: the primary's data aside, the standbys' removed.
        let mv = Command::new("mv").args(["--", ph.layout.data_dir.as_str(), aside.as_str()]).user("root");
        if ph.transport.exists(&ph.layout.data_dir, None).await.map_err(|e| tr(&primary, "inspect the data directory", e))? {
            ph.transport.run(&mv).await.map_err(|e| tr(&primary, "move the data directory aside", e))?;
        }
        for h in handles.iter().filter(|h| h.name != primary) {
            if h.transport.exists(&h.layout.data_dir, None).await.map_err(|e| tr(&h.name, "inspect the data directory", e))? {
                h.transport.remove_tree(&h.layout.data_dir).await.map_err(|e| tr(&h.name, "remove the standby's data directory", e))?;
            }
        }
        let report = self.restore_into(target, self, opts).await?;
        Ok((report, aside))
    }

    /// Restores the latest backup into `scratch` (on the primary's host; it must not
    /// exist; default: `verify-backup-<pid>` beside the primary's node directory), starts it on `port` (local socket only, archiving off), checks that it
    /// reaches consistency, promotes and answers, then stops it and removes `scratch`.
    pub async fn verify_backup(&self, scratch: Option<&str>, port: u16) -> Result<VerifyBackupReport, Error> {
        let b = self.backup_spec()?;
        let (cluster, h) = self.node_handle(None).await?;
        self.pgbackrest_ready(b, &cluster, &h).await?;
        let default_scratch = {
            let d = h.layout.data_dir.trim_end_matches('/');
            let node_dir = d.rsplit_once('/').map(|(p, _)| p).unwrap_or(d);
            let base = node_dir.rsplit_once('/').map(|(p, _)| p).unwrap_or(node_dir);
            format!("{base}/verify-backup-{}", std::process::id())
        };
        let scratch = scratch.unwrap_or(&default_scratch);
        let catalog = self.list_on(b, &self.cluster.name, &h).await?;
        let now = time::OffsetDateTime::now_utc();
        let backup = choose_backup(&catalog, &Target::Latest, now, None)
            .map_err(|r| Error::from(Refusal { node: self.cluster.name.clone(), reason: r.to_string() }))?
            .clone();
        let l = &h.layout;
        let t = &*h.transport;
        if t.exists(scratch, None).await.map_err(|e| tr(&h.name, "look at the scratch directory", e))? {
            return Err(Refusal {
                node: h.name.clone(),
                reason: format!("{scratch} exists: verify --backup restores into a directory of its own"),
            }
            .into());
        }
        let t0 = Instant::now();
        let data = format!("{scratch}/data");
        t.mkdir(scratch, 0o700, Some(&l.os_user)).await.map_err(|e| tr(&h.name, "create the scratch directory", e))?;
        t.mkdir(&data, 0o700, Some(&l.os_user)).await.map_err(|e| tr(&h.name, "create the scratch directory", e))?;
        let result = async {
            let download = match b.tool {
                BackupTool::Pgbackrest => {
                    // A configuration of its own in the scratch directory: pg1 is the scratch data.
                    let node = PgbackrestNode { data_dir: &data, socket_dir: scratch, port, user: &l.superuser };
                    pgbackrest::write_config(b, &self.cluster.name, scratch, &node, &h).await?;
                    let set = format!("--set={}", backup.id);
                    pgbr::command(b, scratch, &self.cluster.name, &l.os_user, &[set.as_str(), "--type=none", "restore"])
                }
                BackupTool::Directory => super::directory::restore_line(b, &self.cluster.name, &backup.id, &data, &l.os_user),
                _ => tool::barman_restore(b, &self.cluster.name, &backup.id, &data, &l.os_user),
            };
            self.run_tool(&h, &download, CLONE_TIMEOUT, "download the base backup").await?;
            let caps = self.cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known".into()))?;
            let rec = recovery_files(&caps, &tool::recovery_restore_command(b, &self.cluster.name, scratch), &Target::Latest);
            for (name, text) in &rec.files {
                t.write_file(&format!("{data}/{name}"), text.as_bytes(), 0o600, Some(&l.os_user))
                    .await
                    .map_err(|e| tr(&h.name, "write the recovery settings", e))?;
            }
            if let Some(extra) = &rec.auto_conf {
                let path = format!("{data}/postgresql.auto.conf");
                let cur = t.read_file_as(&path, &l.os_user).await.map_err(|e| tr(&h.name, "read postgresql.auto.conf", e))?;
                let text = format!("{}\n{extra}", cur.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default());
                t.write_file(&path, text.as_bytes(), 0o600, Some(&l.os_user))
                    .await
                    .map_err(|e| tr(&h.name, "write the recovery settings", e))?;
            }
            // Settings on the command line win over the restored files: another port, the
            // socket in the scratch directory, no TCP, no archiving into the real archive.
            let opts = format!(
                "-c port={port} -c listen_addresses='' -c unix_socket_directories={} -c archive_mode=off -c hot_standby=on",
                shell_quote(scratch)
            );
            let start = Command::new(l.server_tool("pg_ctl"))
                .args(["-D", data.as_str(), "-l", &format!("{scratch}/server.log"), "-o", opts.as_str(), "-w", "-t", "600", "start"])
                .user(l.os_user.clone())
                .timeout(Duration::from_secs(660));
            let start = server_env(l).into_iter().fold(start, |c, (k, v)| c.env(k, v));
            let out = t.exec(&start).await.map_err(|e| tr(&h.name, "start the restored server", e))?;
            if !out.success() {
                let log =
                    t.read_file(&format!("{scratch}/server.log")).await.ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
                let tail: Vec<&str> = log.as_deref().unwrap_or("").lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(Error::node(&h.name, format!("the restored backup did not start: {}\n{}", out.tail(), tail.join("\n"))));
            }
            let mut scratch_layout = l.clone();
            scratch_layout.socket_dir = scratch.to_string();
            let mut sh = h.clone();
            sh.layout = scratch_layout;
            wait_promoted(&sh, port, RECOVERY_DEADLINE).await.map(|_| ())
        }
        .await;
        let stop = Command::new(l.server_tool("pg_ctl")).args(["-D", data.as_str(), "-m", "fast", "-w", "stop"]).user(l.os_user.clone());
        let stop = server_env(l).into_iter().fold(stop, |c, (k, v)| c.env(k, v));
        let _ = t.exec(&stop).await;
        let _ = t.remove_tree(scratch).await;
        let seconds = t0.elapsed().as_secs_f64();
        match result {
            Ok(()) => Ok(VerifyBackupReport { backup, scratch: scratch.into(), ok: true, seconds, problem: None }),
            Err(e @ Error::Backup { .. }) => Err(e),
            Err(e) => {
                Ok(VerifyBackupReport { backup, scratch: scratch.into(), ok: false, seconds, problem: Some(crate::error::chain(&e)) })
            }
        }
    }
}

/// Where pgrepl's own pgBackRest commands (`backup`, `backups`, retention, a restore's
/// listing) keep the configuration they write from the spec they are given: beside the
/// one `archive_command` reads (written by `up`), never over it, so that an operation run
/// with another spec (another endpoint, say) cannot break archiving.
fn cli_dir(l: &crate::layout::NodeLayout) -> String {
    format!("{}/cli", l.pgrepl_dir.trim_end_matches('/'))
}

/// While a backup from the standby `sh` waits for its last WAL segment to be archived
/// (`pg_backup_stop`/`pg_stop_backup` still running there), switches the primary `ph`'s
/// WAL segment, at most every 5 s. Ends by itself after [`CLONE_TIMEOUT`] (the backup's
/// own limit); the caller drops it when the backup ends.
async fn nudge_wal_switch(sh: &NodeHandle, sport: u16, ph: &NodeHandle, pport: u16, switch: &str) {
    let waiting = "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid <> pg_catalog.pg_backend_pid() \
                   AND state = 'active' AND (query ILIKE '%pg_backup_stop%' OR query ILIKE '%pg_stop_backup%');";
    let t0 = Instant::now();
    let mut last_switch: Option<Instant> = None;
    while t0.elapsed() < CLONE_TIMEOUT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopping = sql::query(&*sh.transport, &sh.layout, sport, waiting, SQL_TIMEOUT)
            .await
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.first().cloned().flatten()))
            .is_some_and(|n| n != "0");
        if stopping && last_switch.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            let _ = sql::query(&*ph.transport, &ph.layout, pport, &format!("SELECT pg_catalog.{switch}();"), SQL_TIMEOUT).await;
            last_switch = Some(Instant::now());
        }
    }
}

/// The node a restore refusal names.
fn r_node(r: &RestoreRefusal) -> String {
    match r {
        RestoreRefusal::ServerRunning { node } | RestoreRefusal::NotEmpty { node, .. } | RestoreRefusal::ArchiveBehind { node, .. } => {
            node.clone()
        }
        _ => String::new(),
    }
}

/// Waits (bounded) until the server at `port` is out of recovery; its timeline then.
async fn wait_promoted(h: &NodeHandle, port: u16, deadline: Duration) -> Result<Option<u32>, Error> {
    let t0 = Instant::now();
    let q = "SELECT pg_catalog.pg_is_in_recovery(), (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint());";
    loop {
        match sql::query(&*h.transport, &h.layout, port, q, SQL_TIMEOUT).await {
            Ok(rows) => {
                let row = rows.first().cloned().unwrap_or_default();
                if row.first().cloned().flatten().as_deref() == Some("f") {
                    return Ok(row.get(1).cloned().flatten().and_then(|t| t.parse().ok()));
                }
            }
            Err(_) if t0.elapsed() > Duration::from_secs(5) && !is_running(h).await.unwrap_or(true) => {
                let log = match &h.layout.log_file {
                    Some(l) => h.transport.read_file(l).await.ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned()),
                    None => None,
                };
                let tail: Vec<&str> = log.as_deref().unwrap_or("").lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Error::node(
                    &h.name,
                    format!(
                        "the restored server stopped during recovery (a target after the last archived commit is never reached: use --latest, or archive WAL past it)\n{}",
                        tail.join("\n")
                    ),
                ));
            }
            Err(_) => {}
        }
        if t0.elapsed() > deadline {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: deadline,
                waiting_for: "the restored server to reach its target and promote".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
