//! The facts an upgrade is decided on, gathered through each node's transport. Nothing
//! here changes a node: `pg_upgrade --check` runs against the live primary with a
//! scratch new cluster in pgrepl's own directory, removed afterwards.

use futures_util::future::join_all;

use super::UpgradeOptions;
use super::tools;
use crate::cluster::Cluster;
use crate::deploy::{Deployment, Progress, SQL_TIMEOUT, is_running};
use crate::error::Error;
use crate::layout::NodeLayout;
use crate::observe::{ObservedCluster, ServerState};
use crate::plan::upgrade::{CheckOutcome, DebianFacts, InitSettings, NodeFacts, UpgradeFacts};
use crate::provider::NodeHandle;
use crate::secret::Secrets;
use crate::spec::{ClusterSpec, VersionChoice};
use crate::sql;
use crate::topology::Topology;
use crate::transport::{Command, TransportExt};
use crate::version::PgMajor;

/// Checks the new binaries: `$1` server dir, `$2` client dir, `$3` "primary" when
/// pg_upgrade is needed too; prints `missing: …` or `postgres --version`.
const BINARIES_SCRIPT: &str = r#"b="$1"; c="$2"; missing=""
tools="postgres initdb pg_ctl"; [ "$3" = primary ] && tools="$tools pg_upgrade"
for t in $tools; do [ -x "$b/$t" ] || missing="$missing $b/$t"; done
for t in psql pg_basebackup vacuumdb; do [ -x "$c/$t" ] || missing="$missing $c/$t"; done
if [ -n "$missing" ]; then echo "missing:$missing"; exit 0; fi
"$b/postgres" --version"#;

/// `$1` the directory to measure (KiB used, or `-`), `$2` a directory on the filesystem
/// to ask (KiB free): prints `used free`.
const DISK_SCRIPT: &str = r#"u=-; [ -n "$1" ] && u=$(du -sk "$1" 2>/dev/null | cut -f1)
f=$(df -Pk "$2" | awk 'NR==2 {print $4}')
echo "${u:--} ${f:--}""#;

/// `$1` the new binaries' dir, then extension names: prints those without a control file.
const EXTENSIONS_SCRIPT: &str = r#"b="$1"; shift
if [ -x "$b/pg_config" ]; then s=$("$b/pg_config" --sharedir); else s="$b/../share"; fi
for e in "$@"; do [ -f "$s/extension/$e.control" ] || echo "$e"; done"#;

/// postgresql-common's own choice of a port for a new cluster: none configured for a
/// cluster on the host, none listened on.
const NEXT_FREE_PORT_SCRIPT: &str = "perl -MPgCommon -e 'print PgCommon::next_free_port(), qq(\\n)'";

/// Everything one upgrade works with.
pub(super) struct Ctx<'a> {
    pub(super) d: &'a Deployment,
    pub(super) opts: &'a UpgradeOptions,
    pub(super) progress: &'a dyn Progress,
    /// The cluster now (recorded primary applied, addresses from the hosts).
    pub(super) cluster: Cluster,
    /// The same cluster on the new major, or why the spec is not valid for it.
    pub(super) new_cluster: Result<Cluster, String>,
    /// The reachable nodes' handles, on the old major.
    pub(super) handles: Vec<NodeHandle>,
    /// The same on the new major's binaries, or why a node's layout cannot be upgraded.
    pub(super) new_handles: Vec<(String, Result<NodeHandle, String>)>,
    pub(super) observed: ObservedCluster,
    pub(super) secrets: Secrets,
    pub(super) topology: Topology,
}

impl<'a> Ctx<'a> {
    pub(super) async fn open(
        d: &'a Deployment,
        spec: &ClusterSpec,
        opts: &'a UpgradeOptions,
        progress: &'a dyn Progress,
    ) -> Result<Ctx<'a>, Error> {
        let topology = d.topology().await?;
        progress.started("cluster", "observe every node");
        let (cluster, handles, observed) = d.observe().await?;
        progress.finished("cluster", "observe every node", "done");
        let secrets = d.secrets(false).await?;
        let new_cluster = new_cluster(spec, opts.to, &cluster, &topology);
        let new_handles =
            handles.iter().map(|h| (h.name.clone(), opts.new_layout(&h.layout).map(|layout| NodeHandle { layout, ..h.clone() }))).collect();
        Ok(Ctx { d, opts, progress, cluster, new_cluster, handles, new_handles, observed, secrets, topology })
    }

    pub(super) fn handle(&self, node: &str) -> Option<&NodeHandle> {
        self.handles.iter().find(|h| h.name == node)
    }

    pub(super) fn new_handle(&self, node: &str) -> Option<&NodeHandle> {
        self.new_handles.iter().find(|(n, _)| n == node).and_then(|(_, h)| h.as_ref().ok())
    }

    /// Gathers every fact; what cannot be learned is a fact too (a problem the planner names).
    pub(super) async fn facts(&self) -> UpgradeFacts {
        let primary = self.cluster.primary().name.clone();
        let from = self.cluster.major;
        self.progress.started("cluster", "check the new binaries, disk and data directories");
        let primary_size = match self.handle(&primary) {
            Some(h) => dir_size(h, &h.layout.data_dir).await,
            None => None,
        };
        let nodes = join_all(self.cluster.nodes.iter().map(|n| self.node_facts(&n.name, &primary, from, primary_size))).await;
        self.progress.finished("cluster", "check the new binaries, disk and data directories", "done");
        let mut facts = UpgradeFacts {
            from,
            primary: primary.clone(),
            ha: self.cluster.ha.is_some(),
            agents_held: self.d.consensus_store().is_some(),
            spec_problem: self.new_cluster.as_ref().err().cloned(),
            nodes,
            logical_slots: Vec::new(),
            other_physical_slots: Vec::new(),
            missing_extensions: Vec::new(),
            check: CheckOutcome::NotRun { why: format!("{primary} does not run") },
            init: Err(format!("{primary} does not run")),
            auto_conf_settings: Vec::new(),
        };
        let (Some(h), Some(port)) = (self.handle(&primary), self.cluster.node(&primary).map(|n| n.port)) else {
            facts.check = CheckOutcome::NotRun { why: format!("{primary}'s host cannot be reached") };
            return facts;
        };
        let primary_runs = facts.nodes.iter().any(|f| f.node == primary && f.running);
        if !primary_runs {
            return facts;
        }
        self.progress.started(&primary, "check slots, extensions, settings");
        self.slots(h, port, &mut facts).await;
        facts.init = init_settings(h, port).await;
        if let Some(text) =
            h.transport.read_file_as(&format!("{}/postgresql.auto.conf", h.layout.data_dir), &h.layout.os_user).await.ok().flatten()
        {
            facts.auto_conf_settings = tools::auto_conf_names(&String::from_utf8_lossy(&text));
        }
        let new_ok = facts.nodes.iter().any(|f| f.node == primary && f.new_binaries.as_ref().is_ok_and(|m| *m == self.opts.to));
        let nh = self.new_handle(&primary);
        if let (true, Some(nh)) = (new_ok, nh) {
            facts.missing_extensions = missing_extensions(h, nh, port).await;
        }
        self.progress.finished(&primary, "check slots, extensions, settings", "done");
        facts.check = match (&facts.init, nh, new_ok) {
            (Ok(init), Some(nh), true) => {
                self.progress.started(&primary, "pg_upgrade --check");
                let c = run_check(h, nh, self.opts.to, port, init, self.opts.link).await;
                self.progress.finished(&primary, "pg_upgrade --check", if c == CheckOutcome::Passed { "passed" } else { "failed" });
                c
            }
            (Err(e), _, _) => CheckOutcome::NotRun { why: format!("the old cluster's settings could not be read: {e}") },
            _ => CheckOutcome::NotRun { why: format!("no usable PostgreSQL {} binaries on {primary}'s host", self.opts.to) },
        };
        facts
    }

    async fn node_facts(&self, node: &str, primary: &str, from: Option<PgMajor>, primary_size: Option<u64>) -> NodeFacts {
        let o = self.observed.nodes.iter().find(|o| o.node == node);
        let data_dir = self.handle(node).map(|h| h.layout.data_dir.clone()).unwrap_or_default();
        let kept_as = format!("{data_dir}-{}.old", from.map(|m| m.to_string()).unwrap_or_else(|| "old".into()));
        let upstream = self.cluster.node(node).and_then(|n| n.upstream.clone()).unwrap_or_else(|| primary.to_string());
        let streaming = self
            .observed
            .nodes
            .iter()
            .find(|u| u.node == upstream)
            .is_some_and(|u| u.senders.iter().any(|s| s.name == node && s.state == "streaming"));
        let mut f = NodeFacts {
            node: node.to_string(),
            unreachable: None,
            running: o.is_some_and(|o| o.server == ServerState::Running),
            in_recovery: o.and_then(|o| o.in_recovery),
            streaming,
            data_dir: data_dir.clone(),
            kept_as: kept_as.clone(),
            kept_exists: false,
            layout_problem: None,
            new_binaries: Err("not checked".into()),
            disk: None,
            debian: None,
        };
        let Some(h) = self.handle(node) else {
            f.unreachable = Some("its host cannot be reached".into());
            return f;
        };
        f.kept_exists = h.transport.exists(&kept_as, None).await.unwrap_or(false) && h.layout.debian_cluster.is_none();
        match self.new_handles.iter().find(|(n, _)| n == node).map(|(_, r)| r) {
            Some(Ok(nh)) => {
                f.new_binaries = new_binaries(nh, node == primary).await;
                if let (Some((old_version, cluster)), Some(_)) = (&h.layout.debian_cluster, &nh.layout.debian_cluster) {
                    // Upgraded beside the old cluster, which stays where it is.
                    f.kept_as = data_dir.clone();
                    f.debian = Some(debian_facts(h, nh, old_version, cluster).await);
                }
            }
            Some(Err(why)) if why.contains("--new-pg-bin") => f.new_binaries = Err(why.clone()),
            Some(Err(why)) => {
                f.layout_problem = Some(why.clone());
                f.new_binaries = Err("its layout is not upgraded by pgrepl".into());
            }
            None => {}
        }
        let parent = data_dir.rsplit_once('/').map(|(p, _)| p.to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        if let (Some(need), Some(free)) = (primary_size, disk_free(h, &parent).await) {
            f.disk = Some((need, free));
        }
        f
    }

    async fn slots(&self, h: &NodeHandle, port: u16, facts: &mut UpgradeFacts) {
        let managed: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .filter_map(|n| n.slot.clone())
            .chain(self.cluster.nodes.iter().map(|n| crate::default_slot_name(&n.name)))
            .collect();
        let rows = sql::query(
            &*h.transport,
            &h.layout,
            port,
            "SELECT slot_name, slot_type FROM pg_catalog.pg_replication_slots ORDER BY 1;",
            SQL_TIMEOUT,
        )
        .await
        .unwrap_or_default();
        for r in rows {
            let (Some(Some(name)), Some(Some(kind))) = (r.first().cloned(), r.get(1).cloned()) else { continue };
            if kind == "logical" {
                facts.logical_slots.push(name);
            } else if !managed.contains(&name) {
                facts.other_physical_slots.push(name);
            }
        }
    }
}

/// The cluster on the new major: the spec validated for it, the recorded topology applied,
/// the addresses of the cluster now.
fn new_cluster(spec: &ClusterSpec, to: PgMajor, now: &Cluster, topology: &Topology) -> Result<Cluster, String> {
    let mut s = spec.clone();
    s.postgres = VersionChoice::Major(to);
    let mut c = s.validate_for(to).map_err(|e| e.to_string())?;
    if let Some(p) = &topology.primary {
        if *p != c.primary().name {
            c = c.with_primary(p).map_err(|e| e.to_string())?;
        }
    }
    crate::cluster::exclude_from_sync(&mut c, &topology.fenced);
    for n in &mut c.nodes {
        if n.address.is_none() {
            n.address = now.node(&n.name).and_then(|o| o.address.clone());
        }
    }
    Ok(c)
}

/// A Debian node's cluster: a spare port on its host, and whether the new cluster exists.
async fn debian_facts(h: &NodeHandle, nh: &NodeHandle, old_version: &str, cluster: &str) -> DebianFacts {
    let c = Command { user: h.transport.admin_user().map(str::to_string), ..Command::new("sh").args(["-c", NEXT_FREE_PORT_SCRIPT]) };
    let spare_port = match h.transport.exec(&c).await {
        Ok(out) if out.success() => out
            .stdout
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("postgresql-common's next_free_port said \"{}\", not a port", out.stdout.trim())),
        Ok(out) => Err(format!("postgresql-common's next_free_port failed: {}", out.tail())),
        Err(e) => Err(format!("postgresql-common's next_free_port could not run: {e}")),
    };
    let t = &*h.transport;
    let conf = t.exists(&format!("{}/postgresql.conf", nh.layout.config_dir), None).await.unwrap_or(true);
    let data = t.exists(&nh.layout.data_dir, None).await.unwrap_or(true);
    DebianFacts { cluster: cluster.to_string(), old_version: old_version.to_string(), spare_port, new_exists: conf || data }
}

/// A layout's `postgresql.conf` when it is not in the data directory (Debian): pg_upgrade
/// is told where it is.
pub(super) fn config_file(l: &NodeLayout) -> Option<String> {
    (l.config_dir != l.data_dir).then(|| format!("{}/postgresql.conf", l.config_dir))
}

/// The new binaries' major on the node's host, or what is missing.
async fn new_binaries(nh: &NodeHandle, primary: bool) -> Result<PgMajor, String> {
    let l = &nh.layout;
    let mut c = Command::new("sh").args([
        "-c",
        BINARIES_SCRIPT,
        "pgrepl-new-binaries",
        &l.bin_dir,
        &l.client_bin_dir,
        if primary { "primary" } else { "standby" },
    ]);
    c.env = tools::tool_env(l);
    let out = nh.transport.exec(&c).await.map_err(|e| format!("could not check them: {e}"))?;
    let text = out.stdout.trim();
    if let Some(missing) = text.strip_prefix("missing:") {
        return Err(format!("not found or not executable:{missing}"));
    }
    if !out.success() {
        return Err(format!("{}/postgres --version failed: {}", l.bin_dir, out.tail()));
    }
    // "postgres (PostgreSQL) 16.4"
    let version = text.split(") ").nth(1).unwrap_or(text);
    version.parse::<PgMajor>().map_err(|_| format!("{}/postgres says \"{text}\", not a PostgreSQL version pgrepl knows", l.bin_dir))
}

/// Bytes used by `dir` (a copy of the primary's data needs about as much).
async fn dir_size(h: &NodeHandle, dir: &str) -> Option<u64> {
    let c = Command {
        user: h.transport.admin_user().map(str::to_string),
        ..Command::new("sh").args(["-c", DISK_SCRIPT, "pgrepl-disk", dir, dir])
    };
    let out = h.transport.exec(&c).await.ok()?;
    out.stdout.split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024)
}

/// Bytes free on the filesystem of `dir`.
async fn disk_free(h: &NodeHandle, dir: &str) -> Option<u64> {
    let c = Command {
        user: h.transport.admin_user().map(str::to_string),
        ..Command::new("sh").args(["-c", DISK_SCRIPT, "pgrepl-disk", "", dir])
    };
    let out = h.transport.exec(&c).await.ok()?;
    out.stdout.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
}

/// The old cluster's encoding, locale, data checksums and bootstrap superuser.
async fn init_settings(h: &NodeHandle, port: u16) -> Result<InitSettings, String> {
    let q = "SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, \
             (SELECT rolname FROM pg_catalog.pg_authid WHERE oid = 10), pg_catalog.current_setting('data_checksums') \
             FROM pg_catalog.pg_database d WHERE d.datname = 'template0';";
    let rows = sql::query(&*h.transport, &h.layout, port, q, SQL_TIMEOUT).await.map_err(|e| e.to_string())?;
    let r = rows.first().ok_or("template0 not found")?;
    let get = |i: usize| r.get(i).cloned().flatten().ok_or_else(|| format!("column {i} of template0's settings is empty"));
    Ok(InitSettings { encoding: get(0)?, lc_collate: get(1)?, lc_ctype: get(2)?, superuser: get(3)?, checksums: get(4)? == "on" })
}

/// Extensions of every database the new binaries have no control file for (`name (db)`).
async fn missing_extensions(h: &NodeHandle, nh: &NodeHandle, port: u16) -> Vec<String> {
    let dbs = sql::query(
        &*h.transport,
        &h.layout,
        port,
        "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY 1;",
        SQL_TIMEOUT,
    )
    .await
    .unwrap_or_default();
    let mut installed: Vec<(String, String)> = Vec::new();
    for db in dbs.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        let rows =
            sql::query_in(&*h.transport, &h.layout, port, &db, "SELECT extname FROM pg_catalog.pg_extension ORDER BY 1;", SQL_TIMEOUT)
                .await
                .unwrap_or_default();
        installed.extend(rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).map(|e| (e, db.clone())));
    }
    let mut names: Vec<String> = installed.iter().map(|(e, _)| e.clone()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["-c".to_string(), EXTENSIONS_SCRIPT.into(), "pgrepl-extensions".into(), nh.layout.bin_dir.clone()];
    args.extend(names);
    let mut c = Command::new("sh").args(args);
    c.env = tools::tool_env(&nh.layout);
    let Ok(out) = nh.transport.exec(&c).await else { return Vec::new() };
    let missing: Vec<&str> = out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    installed.into_iter().filter(|(e, _)| missing.contains(&e.as_str())).map(|(e, db)| format!("{e} (database {db})")).collect()
}

/// `pg_upgrade --check` against the running primary, with a scratch new cluster.
async fn run_check(h: &NodeHandle, nh: &NodeHandle, to: PgMajor, port: u16, init: &InitSettings, link: bool) -> CheckOutcome {
    let scratch = format!("{}/upgrade-check", h.layout.pgrepl_dir);
    let data = format!("{scratch}/data");
    let t = &*h.transport;
    let l: &NodeLayout = &nh.layout;
    let prepare = async {
        t.remove_tree(&scratch).await?;
        t.mkdir(&scratch, 0o700, Some(&l.os_user)).await?;
        t.run(&tools::initdb(l, &data, init, to, "scram-sha-256")).await
    };
    if let Err(e) = prepare.await {
        let _ = t.remove_tree(&scratch).await;
        return CheckOutcome::NotRun { why: format!("initdb of a scratch cluster in {scratch} failed: {e}") };
    }
    let cmd = tools::pg_upgrade(&tools::PgUpgradeArgs {
        old_bin: &h.layout.bin_dir,
        new: l,
        old_data: &h.layout.data_dir,
        new_data: &data,
        old_config: config_file(&h.layout).as_deref(),
        new_config: None,
        superuser: &init.superuser,
        old_port: port,
        new_port: tools::check_port(port),
        work_dir: &scratch,
        check: true,
        link,
    });
    let outcome = match t.exec(&cmd).await {
        Ok(out) if out.success() => CheckOutcome::Passed,
        Ok(out) => {
            let (failed, files) = tools::check_failures(&out.stdout, &scratch);
            let mut findings = failed;
            for f in files {
                if let Ok(Some(b)) = t.read_file_as(&f, &l.os_user).await {
                    let text = String::from_utf8_lossy(&b);
                    let lines: Vec<&str> = text.lines().map(str::trim).filter(|s| !s.is_empty()).take(20).collect();
                    findings.push(format!("{}: {}", f.rsplit('/').next().unwrap_or(&f), lines.join(" | ")));
                }
            }
            if findings.is_empty() {
                findings.push(out.tail());
            }
            CheckOutcome::Failed { findings }
        }
        Err(e) => CheckOutcome::NotRun { why: e.to_string() },
    };
    let _ = t.remove_tree(&scratch).await;
    outcome
}

/// Whether a node's server runs (through its own data directory's postmaster).
pub(super) async fn runs(h: &NodeHandle) -> Result<bool, Error> {
    is_running(h).await.map_err(|e| crate::deploy::tr(&h.name, "check whether the server runs", e))
}
