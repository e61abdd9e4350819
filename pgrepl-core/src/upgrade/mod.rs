//! Major upgrades with `pg_upgrade`: [`Deployment::plan_upgrade`] (the checks and the
//! plan, touching nothing) and [`Deployment::upgrade`] (the same, then carried out).
//!
//! Observe, decide, act, as for the other operations: `observe` gathers the facts through
//! each node's [`Transport`](crate::transport::Transport) (the new binaries on every host,
//! `pg_upgrade --check` against the running primary with a scratch new cluster, the
//! extensions of every database against the new binaries' control files, slots, free disk,
//! the servers' states, the old cluster's encoding, locale, checksums and bootstrap
//! superuser); [`crate::plan::upgrade()`] decides (pure: every problem at once, or the
//! steps); `run` carries the steps out and, when a step fails before the upgraded primary
//! starts, goes back to the old major (new data directory removed, old one renamed back,
//! every node started again). `tools` holds the command lines.
//!
//! ```no_run
//! use pgrepl_core::deploy::{Deployment, NoProgress};
//! use pgrepl_core::upgrade::UpgradeOptions;
//! use pgrepl_core::PgMajor;
//!
//! # async fn demo(d: Deployment, spec: pgrepl_core::ClusterSpec) -> Result<(), pgrepl_core::Error> {
//! let opts = UpgradeOptions::new(PgMajor::V16).with_bin_dir("/usr/lib/postgresql/16/bin");
//! println!("{}", d.plan_upgrade(&spec, &opts, &NoProgress).await?);   // a refusal lists every problem
//! let report = d.upgrade(&spec, &opts, &NoProgress).await?;
//! println!("{report}");
//! // The caller's spec now says `postgres = "16"` (the CLI rewrites the cluster file).
//! # Ok(()) }
//! ```
//!
//! Layouts: the local provider's and the plain layout over SSH (`pg_ctl` with binaries
//! pgrepl is given: the data directory renamed aside, a new one made with initdb), and
//! Debian's postgresql-common clusters driven with `pg_ctl` (the new cluster made beside
//! the old one, as `pg_upgradecluster` does: see [`mod@crate::plan::upgrade`]); a service of
//! systemd is refused by the checks, naming the node. Agents (`[ha]`) are refused too.

mod finish;

mod observe;
mod run;
pub mod tools;

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use crate::deploy::{Deployment, Progress};
use crate::error::Error;
use crate::layout::{Binaries, NodeLayout, ServiceControl};
use crate::plan::upgrade::UpgradePlan;
use crate::spec::ClusterSpec;
use crate::version::PgMajor;

/// What to upgrade to, and with which binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeOptions {
    /// The new major.
    pub to: PgMajor,
    /// `pg_upgrade --link`.
    pub link: bool,
    /// The new major's server binaries (`postgres`, `initdb`, `pg_ctl`, `pg_upgrade`) on
    /// every host.
    pub bin_dir: Option<String>,
    /// Its client tools (`psql`, `pg_basebackup`, `vacuumdb`), when not in `bin_dir`.
    pub client_bin_dir: Option<String>,
    /// A library directory for `LD_LIBRARY_PATH` (relocatable builds).
    pub lib_dir: Option<String>,
}

impl UpgradeOptions {
    /// To `to`, copying, binaries still to be given.
    pub fn new(to: PgMajor) -> Self {
        UpgradeOptions { to, link: false, bin_dir: None, client_bin_dir: None, lib_dir: None }
    }

    /// `pg_upgrade --link`.
    pub fn link(mut self, link: bool) -> Self {
        self.link = link;
        self
    }

    /// The new major's binaries on every host.
    pub fn with_bin_dir(mut self, dir: impl Into<String>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The binaries found on this machine (local clusters).
    pub fn with_binaries(mut self, b: &Binaries) -> Self {
        self.bin_dir = Some(b.bin_dir.clone());
        self.client_bin_dir = Some(b.client_bin_dir.clone());
        self.lib_dir = b.lib_dir.clone();
        self
    }

    /// A node's layout on the new major: the same paths, the new binaries; for a cluster
    /// of Debian's postgresql-common driven with `pg_ctl`, the new cluster
    /// `<to>/<cluster>` beside the old one (`/var/lib/postgresql/<to>/<cluster>`,
    /// `/etc/postgresql/<to>/<cluster>`, binaries in `/usr/lib/postgresql/<to>/bin` unless
    /// given). `Err` names why pgrepl cannot upgrade that layout.
    pub fn new_layout(&self, old: &NodeLayout) -> Result<NodeLayout, String> {
        let bins = |default: Option<String>| -> Result<(String, String), String> {
            let bin = self
                .bin_dir
                .clone()
                .or(default)
                .ok_or_else(|| format!("no directory given for PostgreSQL {}'s binaries (--new-pg-bin DIR)", self.to))?;
            Ok((bin.clone(), self.client_bin_dir.clone().unwrap_or(bin)))
        };
        match (&old.service, &old.debian_cluster) {
            (ServiceControl::PgCtlCluster { cluster, .. }, Some(_)) => {
                let v = self.to.to_string();
                let (bin_dir, client_bin_dir) = bins(Some(format!("/usr/lib/postgresql/{v}/bin")))?;
                Ok(NodeLayout {
                    data_dir: format!("/var/lib/postgresql/{v}/{cluster}"),
                    config_dir: format!("/etc/postgresql/{v}/{cluster}"),
                    bin_dir,
                    client_bin_dir,
                    lib_dir: self.lib_dir.clone(),
                    service: ServiceControl::PgCtlCluster { version: v.clone(), cluster: cluster.clone() },
                    debian_cluster: Some((v, cluster.clone())),
                    ..old.clone()
                })
            }
            (ServiceControl::PgCtl, None) => {
                let (bin_dir, client_bin_dir) = bins(None)?;
                Ok(NodeLayout { bin_dir, client_bin_dir, lib_dir: self.lib_dir.clone(), ..old.clone() })
            }
            _ => Err(
                "its PostgreSQL is a service of systemd: pgrepl upgrades the layouts it drives with pg_ctl (the local provider, layout = \"plain\", Debian's clusters without systemd); use pg_upgradecluster or your distribution's procedure"
                    .into(),
            ),
        }
    }
}

/// What became of one step.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeStepRecord {
    /// The node.
    pub node: String,
    /// What it did.
    pub step: String,
    /// `done`, `failed`, `warning` (a step whose failure does not stop the upgrade).
    pub outcome: String,
    /// What it found or why it failed.
    pub detail: Option<String>,
    /// Seconds.
    pub seconds: f64,
}

/// What an upgrade did.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    /// The cluster.
    pub cluster: String,
    /// The old major.
    pub from: PgMajor,
    /// The new major.
    pub to: PgMajor,
    /// `--link` was used.
    pub link: bool,
    /// The primary.
    pub primary: String,
    /// The primary runs the new major: the cluster's spec must say so from now on.
    pub primary_upgraded: bool,
    /// The steps as they ran.
    pub steps: Vec<UpgradeStepRecord>,
    /// Where each node's old data directory is kept: `(node, path)`.
    pub kept: Vec<(String, String)>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// Set when a step after the point of no return failed: what failed and what to do.
    pub failed: Option<String>,
    /// `[ha]`: the upgrade paused the agents and left them paused (their processes run
    /// the old major's binaries): restart them on the new ones, then resume them (the
    /// `pgrepl` command does both).
    pub agents_paused_here: bool,
    /// `[ha]`: what became of the agents, one line.
    pub agents: Option<String>,
    /// Seconds in all.
    pub total_seconds: f64,
}

impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster {}: PostgreSQL {} -> {} ({})", self.cluster, self.from, self.to, if self.link { "--link" } else { "copy" })?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:<10} {:<7} {:>7.2}s  {}{}",
                s.node,
                s.outcome,
                s.seconds,
                s.step,
                s.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
            )?;
        }
        for (n, k) in &self.kept {
            writeln!(
                f,
                "kept: {n}'s old data directory (PostgreSQL {}) in {k}: `pgrepl upgrade --finish` removes it once you are satisfied",
                self.from
            )?;
        }
        if self.link {
            writeln!(f, "--link: the old cluster in the kept directory must never be started again (its files are the new cluster's)")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if let Some(a) = &self.agents {
            writeln!(f, "agents: {a}")?;
        }
        if let Some(e) = &self.failed {
            writeln!(f, "FAILED: {e}")?;
        }
        writeln!(f, "total {:.2}s", self.total_seconds)
    }
}

impl Deployment {
    /// The checks and the plan of an upgrade of this cluster (whose spec is `spec`) to
    /// `opts.to`; touches nothing but a scratch directory of `pg_upgrade --check` in
    /// pgrepl's own directory on the primary's host, removed afterwards. Every problem the
    /// checks find is returned at once as [`crate::plan::Refusal::UpgradeChecks`].
    pub async fn plan_upgrade(&self, spec: &ClusterSpec, opts: &UpgradeOptions, progress: &dyn Progress) -> Result<UpgradePlan, Error> {
        let ctx = observe::Ctx::open(self, spec, opts, progress).await?;
        let facts = ctx.facts().await;
        Ok(crate::plan::upgrade(&ctx.cluster, &facts, &crate::plan::UpgradeRequest { to: opts.to, link: opts.link })?)
    }

    /// Upgrades the cluster to `opts.to` under the operation lock: the checks, then the
    /// plan carried out. A refusal changes nothing. A failure before the upgraded primary
    /// starts goes back to the old major (and is returned as the error, saying so); a
    /// failure after it is in the report's `failed`, with what to do. The caller's spec
    /// must say `postgres = "<to>"` once the report says `primary_upgraded`.
    ///
    /// `[ha]` (bound to the agents' store, [`Deployment::with_consensus_store`]): the
    /// agents are held paused while it runs, the leader key left with the primary. Once the
    /// primary runs the new major they stay paused ([`UpgradeReport::agents_paused_here`]):
    /// their processes must first run on the new binaries. A failure before that (the
    /// cluster back on the old major) puts the flag back as it was, and says so.
    pub async fn upgrade(&self, spec: &ClusterSpec, opts: &UpgradeOptions, progress: &dyn Progress) -> Result<UpgradeReport, Error> {
        let lock = self.lock_operation("upgrade", self.lock_wait()).await?;
        let t0 = Instant::now();
        let hold = match self.hold_agents().await {
            Ok(h) => h,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        let result = async {
            let ctx = observe::Ctx::open(self, spec, opts, progress).await?;
            let facts = ctx.facts().await;
            let plan = crate::plan::upgrade(&ctx.cluster, &facts, &crate::plan::UpgradeRequest { to: opts.to, link: opts.link })?;
            lock.check()?;
            let mut report = run::Exec::new(&ctx, &plan).run().await?;
            report.total_seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        .await;
        let result = match (hold, result) {
            (None, r) => r,
            (Some(h), Ok(mut report)) if report.primary_upgraded => {
                report.agents_paused_here = h.paused_here();
                report.agents = Some(if h.paused_here() {
                    "paused for the upgrade and left paused: they run the old major's binaries; restart them on the new ones, then resume them"
                } else {
                    "paused before the upgrade, left paused; they run the old major's binaries: restart them on the new ones"
                }.into());
                h.keep_paused();
                Ok(report)
            }
            (Some(h), r) => {
                let paused_here = h.paused_here();
                h.release_after(r).await.map(|mut report| {
                    report.agents = Some(if paused_here { "paused for the upgrade, resumed" } else { "left paused" }.into());
                    report
                })
            }
        };
        lock.release().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_clusters_are_upgraded_into_the_new_versions_directories() {
        let old = NodeLayout::debian(PgMajor::V15, "/var/lib/postgresql/pgrepl-c");
        let new = UpgradeOptions::new(PgMajor::V16).new_layout(&old).unwrap();
        assert_eq!(new.data_dir, "/var/lib/postgresql/16/main");
        assert_eq!(new.config_dir, "/etc/postgresql/16/main");
        assert_eq!(new.bin_dir, "/usr/lib/postgresql/16/bin");
        assert_eq!(new.client_bin_dir, "/usr/lib/postgresql/16/bin");
        assert_eq!(new.service, ServiceControl::PgCtlCluster { version: "16".into(), cluster: "main".into() });
        assert_eq!(new.debian_cluster, Some(("16".into(), "main".into())));
        assert_eq!(new.pgrepl_dir, old.pgrepl_dir);
        assert_eq!(new.socket_dir, old.socket_dir);
        let given = UpgradeOptions::new(PgMajor::V16).with_bin_dir("/opt/pg16/bin").new_layout(&old).unwrap();
        assert_eq!((given.bin_dir.as_str(), given.data_dir.as_str()), ("/opt/pg16/bin", "/var/lib/postgresql/16/main"));
    }

    #[test]
    fn plain_layouts_need_the_new_binaries_and_systemd_is_refused() {
        let plain = NodeLayout::plain("/var/lib/pgrepl", "c", "/opt/pg15/bin");
        let e = UpgradeOptions::new(PgMajor::V16).new_layout(&plain).unwrap_err();
        assert!(e.contains("--new-pg-bin"), "{e}");
        let new = UpgradeOptions::new(PgMajor::V16).with_bin_dir("/opt/pg16/bin").new_layout(&plain).unwrap();
        assert_eq!((new.data_dir.as_str(), new.bin_dir.as_str()), (plain.data_dir.as_str(), "/opt/pg16/bin"));
        let mut systemd = NodeLayout::debian(PgMajor::V15, "/x");
        systemd.service = ServiceControl::Systemd { unit: "postgresql@15-main".into() };
        let e = UpgradeOptions::new(PgMajor::V16).new_layout(&systemd).unwrap_err();
        assert!(e.contains("systemd") && e.contains("pg_upgradecluster"), "{e}");
    }
}
