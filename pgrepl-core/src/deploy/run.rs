//! [`Run`]: one `up` or HA operation's view of the nodes (their handles, the secrets, the
//! progress sink) and the per-node steps both roles share: directories, files, starting,
//! applying a configuration, the OS's start at boot, slots. The role-specific steps are in
//! `primary` and `standby`.

use futures_util::future::join_all;
use std::time::{Duration, Instant};

use super::conf_edits::INCLUDE_COMMENT;
use super::created::write_created;
use super::{Action, Created, POLL_INTERVAL, Progress, SQL_TIMEOUT, merge_hba_block, read_created, sqlerr, tr};
use crate::cluster::{Cluster, Node};
use crate::error::Error;
use crate::observe::server_state::{is_running, process_alive};
use crate::provider::NodeHandle;
use crate::render::{self, INCLUDE_LINE, Placement, RenderedNode, render_node};
use crate::secret::Secrets;
use crate::sql;
use crate::transport::{Command, TransportExt};

/// Prints what the data directory `$1` holds: `standby` or `primary` (a cluster, with or
/// without standby.signal / recovery.conf), `files` (no PG_VERSION), `missing` (absent or
/// empty).
const DATA_DIR_SCRIPT: &str = r#"if [ -e "$1/PG_VERSION" ]; then
  if [ -e "$1/standby.signal" ] || [ -e "$1/recovery.conf" ]; then echo standby; else echo primary; fi
elif [ -n "$(ls -A -- "$1" 2>/dev/null)" ]; then echo files
else echo missing
fi"#;

/// The state of a node's data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataDir {
    /// Absent or empty.
    Missing,
    /// Holds files but no cluster (`PG_VERSION` missing).
    Unknown,
    /// A cluster; `standby` when standby.signal or recovery.conf is present.
    Cluster { standby: bool },
}

/// One operation's view of the cluster's nodes: their handles, the secrets, where progress
/// goes. The per-node steps are its methods (here, and in `primary` and `standby`).
pub(crate) struct Run<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) handles: &'a [NodeHandle],
    pub(crate) secrets: &'a Secrets,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) local_ports: bool,
}

impl Run<'_> {
    pub(crate) fn handle(&self, node: &str) -> Result<&NodeHandle, Error> {
        self.handles.iter().find(|h| h.name == node).ok_or_else(|| Error::node(node, "no host for this node"))
    }

    pub(crate) async fn step<T, F>(&self, node: &str, step: &str, actions: &mut Vec<Action>, f: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let t = Instant::now();
        self.progress.started(node, step);
        let r = f.await;
        self.progress.finished(node, step, if r.is_ok() { "done" } else { "failed" });
        if r.is_ok() {
            actions.push(Action { node: node.to_string(), what: step.to_string(), seconds: t.elapsed().as_secs_f64() });
        }
        r
    }

    /// What the data directory holds, read again now (one command).
    pub(crate) async fn data_dir(&self, h: &NodeHandle) -> Result<DataDir, Error> {
        let t = &*h.transport;
        let d = &h.layout.data_dir;
        let out = t
            .run(&Command {
                user: t.admin_user().map(str::to_string),
                ..Command::new("sh").args(["-c", DATA_DIR_SCRIPT, "pgrepl-data-dir", d.as_str()])
            })
            .await
            .map_err(|e| tr(&h.name, "inspect the data directory", e))?;
        Ok(match out.stdout.trim() {
            "standby" => DataDir::Cluster { standby: true },
            "primary" => DataDir::Cluster { standby: false },
            "files" => DataDir::Unknown,
            _ => DataDir::Missing,
        })
    }

    /// Records on the node's host that pgrepl created something there (see [`Created`]), so
    /// that `destroy` removes it and nothing else. Not for the local provider, whose node
    /// directories are pgrepl's whole.
    pub(crate) async fn record_created(&self, h: &NodeHandle, change: impl FnOnce(&mut Created)) -> Result<(), Error> {
        if self.local_ports {
            return Ok(());
        }
        let mut c = read_created(h, &self.cluster.name).await?;
        let before = c.clone();
        change(&mut c);
        if c == before {
            return Ok(());
        }
        write_created(h, &self.cluster.name, &c).await
    }

    pub(crate) async fn prepare_dirs(&self, h: &NodeHandle) -> Result<(), Error> {
        let l = &h.layout;
        let owner = Some(l.os_user.as_str());
        let t = &*h.transport;
        let map = |e| tr(&h.name, "create pgrepl's directories", e);
        if let Some(base) = &l.base_dir {
            let new = !t.exists(base, None).await.map_err(map)?;
            t.mkdir(base, 0o700, owner).await.map_err(map)?;
            if new {
                self.record_created(h, |c| c.base_dir = Some(base.clone())).await?;
            }
        }
        t.mkdir(&l.pgrepl_dir, 0o700, owner).await.map_err(map)?;
        if l.owns_postgresql_conf {
            t.mkdir(&l.socket_dir, 0o700, owner).await.map_err(map)?;
            if let Some(log) = &l.log_file {
                if let Some(dir) = log.rsplit_once('/').map(|(d, _)| d) {
                    t.mkdir(dir, 0o700, owner).await.map_err(map)?;
                }
            }
        }
        if let crate::spec::ArchiveSpec::Dir { path } = &self.cluster.archive {
            t.mkdir(&path.to_string_lossy(), 0o700, owner).await.map_err(map)?;
        }
        Ok(())
    }

    /// Writes every file of `r` that differs from what is on the host; returns whether any
    /// changed. The files are read all at once, then the changed ones written all at once
    /// (over SSH each is a round trip; a connection runs several commands together).
    pub(crate) async fn write_files(&self, h: &NodeHandle, r: &RenderedNode, include_recovery: bool) -> Result<bool, Error> {
        let t = &*h.transport;
        let owner = Some(h.layout.os_user.as_str());
        let files: Vec<_> = r
            .files
            .iter()
            .filter(|f| include_recovery || !(f.path.ends_with("/recovery.conf") || f.path.ends_with("/standby.signal")))
            .collect();
        let map = |path: &str, e| tr(&h.name, &format!("write {path}"), e);
        // A file whose current text is kept (merged) is read as its owner: read as root, a
        // symbolic link planted there would copy, say, /etc/shadow into a file they own.
        let reads = files.iter().map(|f| async move {
            match f.placement {
                Placement::Whole => t.read_file(&f.path).await,
                Placement::HbaBlock | Placement::IncludeLine => t.read_file_as(&f.path, &h.layout.os_user).await,
            }
        });
        let mut writes = Vec::new();
        for (f, current) in files.iter().zip(join_all(reads).await) {
            let current = current.map_err(|e| map(&f.path, e))?.map(|b| String::from_utf8_lossy(&b).into_owned());
            let desired = match f.placement {
                Placement::Whole => f.contents.text.clone(),
                Placement::HbaBlock => merge_hba_block(current.as_deref().unwrap_or(""), &f.contents.text),
                Placement::IncludeLine => {
                    let cur = current.clone().unwrap_or_default();
                    if cur.lines().any(|l| l.trim() == INCLUDE_LINE) {
                        cur
                    } else {
                        let sep = if cur.is_empty() || cur.ends_with('\n') { "" } else { "\n" };
                        format!("{cur}{sep}{INCLUDE_COMMENT}\n{INCLUDE_LINE}\n")
                    }
                }
            };
            if current.as_deref() != Some(desired.as_str()) {
                writes.push((f, desired));
            }
        }
        let changed = !writes.is_empty();
        let done = join_all(writes.iter().map(|(f, desired)| t.write_file(&f.path, desired.as_bytes(), f.mode, owner))).await;
        for ((f, _), r) in writes.iter().zip(done) {
            r.map_err(|e| map(&f.path, e))?;
        }
        Ok(changed)
    }

    pub(crate) async fn sql(&self, h: &NodeHandle, port: u16, text: &str, action: &str) -> Result<Vec<sql::Row>, Error> {
        sql::query(&*h.transport, &h.layout, port, text, SQL_TIMEOUT).await.map_err(|e| sqlerr(&h.name, action, e))
    }

    pub(crate) async fn start(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<(), Error> {
        // A postmaster killed and not yet reaped leaves a pid file naming a zombie, which
        // PostgreSQL's own check takes for a live server: such a file is stale.
        // The same holds for the socket's lock file.
        for lock in [format!("{}/postmaster.pid", h.layout.data_dir), format!("{}/.s.PGSQL.{}.lock", h.layout.socket_dir, n.port)] {
            let Some(bytes) = h.transport.read_file(&lock).await.map_err(|e| tr(&n.name, "read a lock file", e))? else { continue };
            let Some(pid) = String::from_utf8_lossy(&bytes).lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { continue };
            let st = h
                .transport
                .exec(&Command::new("ps").args(["-o", "stat=", "-p", &pid.to_string()]))
                .await
                .map_err(|e| tr(&n.name, "inspect the old postmaster", e))?;
            if !process_alive(&st.stdout) {
                h.transport.remove_file(&lock).await.map_err(|e| tr(&n.name, "remove a stale lock file", e))?;
            }
        }
        if self.local_ports {
            if let Some(a) = &n.address {
                if crate::machine::port_in_use(a, n.port).await {
                    return Err(Error::node(
                        &n.name,
                        format!(
                            "port {} on {a} is already in use by another process; choose a free port in the spec (nodes[].port, or provider.base_port)",
                            n.port
                        ),
                    ));
                }
            }
        }
        let out = h
            .transport
            .exec(&Command::from_line(&r.commands.start).timeout(Duration::from_secs(330)))
            .await
            .map_err(|e| tr(&n.name, "start the server", e))?;
        if !out.success() {
            let log = match &h.layout.log_file {
                Some(l) => h.transport.read_file(l).await.ok().flatten().map(|b| {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(6)..].join("\n")
                }),
                None => None,
            };
            return Err(Error::node(
                &n.name,
                format!("the server did not start: {}{}", out.tail(), log.map(|l| format!("\nserver log:\n{l}")).unwrap_or_default()),
            ));
        }
        Ok(())
    }

    /// After a configuration change on a running server: reload, and wait until the
    /// server has read its files again (`pg_conf_load_time` moves), so that what it then
    /// says is pending a restart is current. Never a restart: settings that need one are
    /// left to the restart planner ([`crate::plan::restart()`]): `up` restarts the
    /// standbys the order allows, `pgrepl restart` the rest.
    pub(crate) async fn apply_config(&self, n: &Node, h: &NodeHandle, r: &RenderedNode, actions: &mut Vec<Action>) -> Result<(), Error> {
        let q = "SELECT pg_catalog.pg_conf_load_time()::text;";
        let loaded = |rows: Vec<crate::sql::Row>| rows.first().and_then(|r| r.first().cloned().flatten());
        let before = loaded(self.sql(h, n.port, q, "read when the configuration was loaded").await?);
        h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&n.name, "reload the configuration", e))?;
        // A reload is asynchronous: bounded wait for the postmaster to process it.
        for _ in 0..50 {
            tokio::time::sleep(POLL_INTERVAL).await;
            if loaded(self.sql(h, n.port, q, "read when the configuration was loaded").await?) != before {
                break;
            }
        }
        actions.push(Action { node: n.name.clone(), what: "reload configuration".into(), seconds: 0.0 });
        Ok(())
    }

    /// Restarts a running server (fast stop, start with what its files and binaries say
    /// now), as `up`'s and `restart`'s plans ask.
    pub(crate) async fn restart_server(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<(), Error> {
        h.transport
            .run(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(330)))
            .await
            .map_err(|e| tr(&n.name, "stop the server", e))?;
        self.start(n, h, r).await
    }

    /// `up`'s step `Start`: the node's server started when it does not run.
    pub(crate) async fn start_if_stopped(&self, n: &Node) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let h = self.handle(&n.name)?;
        if !is_running(h).await.map_err(|e| tr(&n.name, "check whether the server runs", e))? {
            let r = render_node(self.cluster, &n.name, &h.layout, Some(self.secrets))?;
            self.step(&n.name, "start", &mut actions, self.start(n, h, &r)).await?;
        }
        Ok(actions)
    }

    /// Turns off the OS's own start of the node's server at boot (pgrepl starts its nodes
    /// itself: a node fenced while unreachable must not come back writable after a reboot):
    /// Debian's `start.conf` says `manual`, a systemd unit enabled at boot is disabled. What
    /// it changed is recorded on the host in `<pgrepl_dir>/autostart-off`. Nothing to do
    /// when it is off already.
    pub(crate) async fn ensure_autostart_off(&self, n: &Node, h: &NodeHandle, r: &RenderedNode) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let a = &r.commands.autostart;
        let t = &*h.transport;
        let l = &h.layout;
        let mut start_conf: Option<(&str, String)> = None;
        let mut changes: Vec<String> = Vec::new();
        if let Some(path) = &a.start_conf {
            let current = t.read_file(path).await.map_err(|e| tr(&n.name, "read start.conf", e))?;
            let current = match current {
                Some(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                // Missing means `auto` to postgresql-common, once the cluster's configuration exists.
                None if t
                    .exists(&format!("{}/postgresql.conf", l.config_dir), None)
                    .await
                    .map_err(|e| tr(&n.name, "inspect the configuration", e))? =>
                {
                    Some(String::new())
                }
                None => None,
            };
            if let Some(text) = current {
                if render::start_conf_mode(&text) == "auto" {
                    changes.push(format!("{path}: auto -> manual"));
                    start_conf = Some((path.as_str(), render::start_conf_manual(&text)));
                }
            }
        }
        let mut disable = None;
        if let (Some(check), Some(d)) = (&a.is_enabled, &a.disable) {
            let out =
                t.exec(&Command::from_line(check)).await.map_err(|e| tr(&n.name, "check whether the OS starts the server at boot", e))?;
            if out.stdout.trim() == "enabled" {
                changes.push(format!("systemd unit {}: enabled -> disabled", d.args.last().map(String::as_str).unwrap_or("")));
                disable = Some(d);
            }
        }
        if changes.is_empty() {
            return Ok(actions);
        }
        let step = format!("turn off the OS's start at boot ({})", changes.join("; "));
        self.step(&n.name, &step, &mut actions, async {
            if let Some((path, text)) = &start_conf {
                t.write_file(path, text.as_bytes(), 0o644, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "write start.conf", e))?;
                if let Some(reload) = &a.reload_units {
                    t.run(&Command::from_line(reload)).await.map_err(|e| tr(&n.name, "reload systemd's units", e))?;
                }
            }
            if let Some(d) = disable {
                t.run(&Command::from_line(d)).await.map_err(|e| tr(&n.name, "disable the systemd unit", e))?;
            }
            // The record: what pgrepl changed, so it can be told (and undone) later.
            let record = format!("{}/autostart-off", l.pgrepl_dir);
            t.mkdir(&l.pgrepl_dir, 0o700, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "create pgrepl's directory", e))?;
            let old = t.read_file(&record).await.map_err(|e| tr(&n.name, "read the autostart record", e))?;
            let mut text = match old {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => "# pgrepl starts this node itself (`pgrepl up`); it turned off the OS's start at boot:\n".to_string(),
            };
            for c in &changes {
                text.push_str(c);
                text.push('\n');
            }
            t.write_file(&record, text.as_bytes(), 0o600, Some(&l.os_user)).await.map_err(|e| tr(&n.name, "record the autostart change", e))
        })
        .await?;
        Ok(actions)
    }

    /// Creates on `n` the slots its direct standbys use, where missing.
    pub(crate) async fn ensure_slots(&self, n: &Node, h: &NodeHandle) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        let wanted: Vec<&str> = self.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).collect();
        if wanted.is_empty() {
            return Ok(actions);
        }
        let rows = self.sql(h, n.port, "SELECT slot_name FROM pg_catalog.pg_replication_slots;", "list replication slots").await?;
        let have: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        for slot in wanted.into_iter().filter(|s| !have.iter().any(|h| h == s)) {
            self.step(&n.name, &format!("create slot {slot}"), &mut actions, async {
                self.sql(h, n.port, &render::create_slot_sql(slot), "create a replication slot").await.map(|_| ())
            })
            .await?;
        }
        Ok(actions)
    }
}
