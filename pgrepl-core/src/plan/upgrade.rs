//! The major upgrade, decided: what was observed ([`UpgradeFacts`]) and the request
//! ([`UpgradeRequest`]) in, a plan of typed steps ([`UpgradePlan`]) or every problem the
//! checks found ([`Refusal::UpgradeChecks`]) out. Pure: the facts are gathered by
//! `pgrepl_core::upgrade` (the new binaries on every host, `pg_upgrade --check` against
//! the running primary, extensions, slots, disk, the servers' states) and the same module
//! carries the plan out.
//!
//! The plan, for a primary P and standbys S…:
//!
//! 1. P stopped cleanly (its shutdown checkpoint written: nothing writes after it), then
//!    every S stopped;
//! 2. every node's data directory kept under a new name (`data` → `data-14.old`); on P a
//!    new one made with the new major's `initdb` and the old cluster's encoding, locale,
//!    data checksums and bootstrap superuser, pgrepl's settings for the new major written
//!    into it;
//! 3. `pg_upgrade` (a copy, or hard links with `--link`), then P started on the new major:
//!    this is the point of no return (before it, the executor goes back: the new directory
//!    removed, the old ones renamed back, every node started again);
//! 4. statistics rebuilt (`vacuumdb --all --analyze-in-stages`), the replication role and
//!    the standbys' slots ensured (physical slots are not carried by `pg_upgrade`);
//! 5. each S: cloned from P with `pg_basebackup` of the new major, started, and streaming
//!    checked (upstreams first).
//!
//! The old data directories are kept until `pgrepl upgrade --finish` removes them.
//!
//! A node in a cluster of Debian's postgresql-common ([`DebianFacts`]) follows
//! `pg_upgradecluster`'s conventions instead of renaming: the new cluster is
//! `<new major>/<cluster>` beside the old one, made by `pg_createcluster` (on the primary,
//! with the old cluster's encoding, locale, checksums and superuser, on a spare port);
//! `pg_upgrade` runs with both clusters' configuration files; once the new primary runs,
//! each old cluster is kept, not started (`start.conf` `manual`, `disabled` after
//! `--link`), on the spare port, the new one on the node's port; a standby's new cluster is
//! made by its clone. Going back drops the new cluster (`pg_dropcluster`); `--finish`
//! drops the old ones.

use std::fmt;

use serde::Serialize;

use super::Refusal;
use crate::cluster::Cluster;
use crate::spec::Role;
use crate::version::PgMajor;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpgradeRequest {
    /// The new major.
    pub to: PgMajor,
    /// `pg_upgrade --link`: hard links instead of a copy (fast, little disk; the old
    /// cluster must never be started again once linking began).
    pub link: bool,
}

/// The new cluster's `initdb` settings, read from the old cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitSettings {
    /// `template0`'s encoding (`UTF8`).
    pub encoding: String,
    /// `template0`'s `LC_COLLATE`.
    pub lc_collate: String,
    /// `template0`'s `LC_CTYPE`.
    pub lc_ctype: String,
    /// Data checksums (pg_control's "Data page checksum version" is not 0).
    pub checksums: bool,
    /// The bootstrap superuser (the role with OID 10): the new cluster's must have its name.
    pub superuser: String,
}

/// What `pg_upgrade --check` said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CheckOutcome {
    /// Every check passed.
    Passed,
    /// It failed: the checks that failed and what the files it names say.
    Failed {
        /// One line per finding (the check's name, then the file's lines).
        findings: Vec<String>,
    },
    /// It could not run (no binaries, the primary down, …): why.
    NotRun {
        /// Why.
        why: String,
    },
}

/// One node as observed for an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// The node.
    pub node: String,
    /// Why its host cannot be reached, if it cannot.
    pub unreachable: Option<String>,
    /// Its server runs and answers.
    pub running: bool,
    /// It is in recovery (a standby), when it answered.
    pub in_recovery: Option<bool>,
    /// A standby: its upstream lists it as streaming.
    pub streaming: bool,
    /// Its data directory.
    pub data_dir: String,
    /// Where the old data directory is kept (`<data_dir>-<old major>.old`; a Debian
    /// cluster's stays where it is: its own data directory).
    pub kept_as: String,
    /// Something is already there (an earlier upgrade's directory).
    pub kept_exists: bool,
    /// Why its layout cannot be upgraded by pgrepl (a distribution's service, say).
    pub layout_problem: Option<String>,
    /// The new binaries on its host: their major, or what is missing.
    pub new_binaries: Result<PgMajor, String>,
    /// Bytes its filesystem must have free for the upgrade (a copy of the primary's
    /// data), and bytes free there, when measured.
    pub disk: Option<(u64, u64)>,
    /// Its cluster is one of Debian's postgresql-common (upgraded beside the old one, as
    /// `pg_upgradecluster` does), not a data directory pgrepl renames.
    pub debian: Option<DebianFacts>,
}

/// A node's cluster of Debian's postgresql-common, as observed for an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianFacts {
    /// The cluster's name (`main`): the new cluster is `<new major>/<name>`.
    pub cluster: String,
    /// The old cluster's version directory (`15`).
    pub old_version: String,
    /// A port no cluster on the host is configured with and nothing listens on
    /// (postgresql-common's `next_free_port`): the new cluster's while it is made, the old
    /// one's afterwards; or why it could not be learned.
    pub spare_port: Result<u16, String>,
    /// The new cluster exists already on the host (its configuration or data directory).
    pub new_exists: bool,
}

/// Everything the upgrade planner decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeFacts {
    /// The cluster's major now.
    pub from: Option<PgMajor>,
    /// The current primary.
    pub primary: String,
    /// Agents run the cluster (`[ha]`).
    pub ha: bool,
    /// With `ha`: the upgrade holds the agents paused while it runs (the deployment
    /// reaches their store); without, it cannot keep them from acting.
    pub agents_held: bool,
    /// Why the cluster file is not valid for the new major, if it is not.
    pub spec_problem: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeFacts>,
    /// Logical replication slots on the primary.
    pub logical_slots: Vec<String>,
    /// Physical slots on the primary that pgrepl does not manage (lost by `pg_upgrade`).
    pub other_physical_slots: Vec<String>,
    /// Extensions installed in a database whose control file the new binaries lack
    /// (`name (database)`).
    pub missing_extensions: Vec<String>,
    /// `pg_upgrade --check` against the running primary.
    pub check: CheckOutcome,
    /// The new cluster's initdb settings, or why they could not be read.
    pub init: Result<InitSettings, String>,
    /// `postgresql.auto.conf` on the primary holds settings (`ALTER SYSTEM`): not carried.
    pub auto_conf_settings: Vec<String>,
}

mod problems;
pub use problems::UpgradeProblem;

/// One step of an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UpgradeStep {
    /// Stop the primary cleanly: its shutdown checkpoint is written, nothing writes after it.
    StopPrimary {
        /// The node.
        node: String,
    },
    /// Stop a standby.
    StopStandby {
        /// The node.
        node: String,
    },
    /// Rename the old data directory (kept for the operator).
    KeepOldData {
        /// The node.
        node: String,
        /// The data directory.
        from: String,
        /// Its new name.
        to: String,
    },
    /// `initdb` of the new major into the data directory, with the old cluster's settings.
    Initdb {
        /// The node.
        node: String,
        /// Encoding, locale, checksums, superuser.
        settings: InitSettings,
    },
    /// Debian: `pg_createcluster` of the new major (configuration in
    /// `/etc/postgresql/<version>/<cluster>`), with the old cluster's settings, on a spare
    /// port until the old cluster gives up its own.
    CreateCluster {
        /// The node.
        node: String,
        /// The new version directory (`16`).
        version: String,
        /// The cluster's name (`main`).
        cluster: String,
        /// The port its `postgresql.conf` gets now.
        port: u16,
        /// Encoding, locale, checksums, superuser.
        settings: InitSettings,
    },
    /// Debian: the old cluster kept, not started: `start.conf` says so (`manual`, or
    /// `disabled` when `--link` made its files the new cluster's), its port becomes the
    /// spare one, the new cluster's `postgresql.conf` gets the node's port (as
    /// `pg_upgradecluster` does).
    RetireOldCluster {
        /// The node.
        node: String,
        /// The old version directory (`15`).
        version: String,
        /// The cluster's name (`main`).
        cluster: String,
        /// The old cluster's port from now on.
        port: u16,
        /// `disabled` rather than `manual`.
        disable: bool,
    },
    /// pgrepl's settings and pg_hba block for the new major.
    WriteSettings {
        /// The node.
        node: String,
    },
    /// `pg_upgrade` from the kept directory into the new one.
    PgUpgrade {
        /// The node.
        node: String,
        /// Hard links instead of a copy.
        link: bool,
    },
    /// Start the upgraded primary (the point of no return).
    StartPrimary {
        /// The node.
        node: String,
    },
    /// `vacuumdb --all --analyze-in-stages` (pg_upgrade carries no optimizer statistics
    /// before 18), and the extension updates pg_upgrade wrote, if any.
    Analyze {
        /// The node.
        node: String,
    },
    /// The replication role and the standbys' physical slots.
    ReplicationRoleAndSlots {
        /// The node.
        node: String,
        /// The slots.
        slots: Vec<String>,
    },
    /// `pg_basebackup` of the new major from the upstream, standby settings written.
    Clone {
        /// The node.
        node: String,
        /// Its upstream.
        from: String,
    },
    /// Start a standby and wait until it streams.
    StartStandby {
        /// The node.
        node: String,
        /// Its upstream.
        from: String,
    },
}

impl UpgradeStep {
    /// The node it acts on.
    pub fn node(&self) -> &str {
        match self {
            UpgradeStep::StopPrimary { node }
            | UpgradeStep::StopStandby { node }
            | UpgradeStep::KeepOldData { node, .. }
            | UpgradeStep::Initdb { node, .. }
            | UpgradeStep::CreateCluster { node, .. }
            | UpgradeStep::RetireOldCluster { node, .. }
            | UpgradeStep::WriteSettings { node }
            | UpgradeStep::PgUpgrade { node, .. }
            | UpgradeStep::StartPrimary { node }
            | UpgradeStep::Analyze { node }
            | UpgradeStep::ReplicationRoleAndSlots { node, .. }
            | UpgradeStep::Clone { node, .. }
            | UpgradeStep::StartStandby { node, .. } => node,
        }
    }
}

impl fmt::Display for UpgradeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeStep::StopPrimary { .. } => f.write_str("stop cleanly (shutdown checkpoint; no write after it)"),
            UpgradeStep::StopStandby { .. } => f.write_str("stop"),
            UpgradeStep::KeepOldData { from, to, .. } => write!(f, "keep the old data directory: {from} -> {to}"),
            UpgradeStep::Initdb { settings: s, .. } => write!(
                f,
                "initdb (new major): encoding {}, LC_COLLATE {}, LC_CTYPE {}, data checksums {}, superuser {}",
                s.encoding,
                s.lc_collate,
                s.lc_ctype,
                if s.checksums { "on" } else { "off" },
                s.superuser
            ),
            UpgradeStep::CreateCluster { version, cluster, port, settings: s, .. } => write!(
                f,
                "pg_createcluster {version} {cluster} (new major, port {port} until the upgrade is done): encoding {}, LC_COLLATE {}, LC_CTYPE {}, data checksums {}, superuser {}",
                s.encoding,
                s.lc_collate,
                s.lc_ctype,
                if s.checksums { "on" } else { "off" },
                s.superuser
            ),
            UpgradeStep::RetireOldCluster { version, cluster, port, disable, .. } => write!(
                f,
                "keep the old cluster {version}/{cluster}, not started (start.conf {}), on port {port}; the new one on the node's port",
                if *disable { "disabled: --link made its files the new cluster's" } else { "manual" }
            ),
            UpgradeStep::WriteSettings { .. } => f.write_str("write pgrepl's settings and pg_hba.conf for the new major"),
            UpgradeStep::PgUpgrade { link: true, .. } => {
                f.write_str("pg_upgrade --link (hard links: the old cluster must not be started afterwards)")
            }
            UpgradeStep::PgUpgrade { link: false, .. } => f.write_str("pg_upgrade (a copy: the old data directory stays usable)"),
            UpgradeStep::StartPrimary { .. } => f.write_str("start on the new major"),
            UpgradeStep::Analyze { .. } => {
                f.write_str("vacuumdb --all --analyze-in-stages; the extension updates pg_upgrade wrote, if any")
            }
            UpgradeStep::ReplicationRoleAndSlots { slots, .. } if slots.is_empty() => f.write_str("ensure the replication role"),
            UpgradeStep::ReplicationRoleAndSlots { slots, .. } => {
                write!(f, "ensure the replication role; create slots {}", slots.join(", "))
            }
            UpgradeStep::Clone { from, .. } => write!(f, "clone from {from} (pg_basebackup of the new major), standby settings"),
            UpgradeStep::StartStandby { from, .. } => write!(f, "start; wait until it streams from {from}"),
        }
    }
}

/// The plan of a major upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradePlan {
    /// The cluster.
    pub cluster: String,
    /// The major now.
    pub from: PgMajor,
    /// The new major.
    pub to: PgMajor,
    /// `--link`.
    pub link: bool,
    /// The primary.
    pub primary: String,
    /// The steps, in order.
    pub steps: Vec<UpgradeStep>,
    /// The index of the step that is the point of no return (the new primary's start):
    /// a failure before it goes back to the old major.
    pub point_of_no_return: usize,
    /// Where each node's old data directory is kept: `(node, path)`.
    pub kept: Vec<(String, String)>,
    /// Things to know.
    pub warnings: Vec<String>,
}

/// Decides a major upgrade: every check's problem at once ([`Refusal::UpgradeChecks`]), or
/// the plan.
pub fn upgrade(cluster: &Cluster, facts: &UpgradeFacts, req: &UpgradeRequest) -> Result<UpgradePlan, Refusal> {
    let mut problems = Vec::new();
    let refuse = |problems: Vec<UpgradeProblem>| Refusal::UpgradeChecks { to: req.to.to_string(), problems };
    let Some(from) = facts.from else {
        return Err(refuse(vec![UpgradeProblem::MajorUnknown]));
    };
    if !from.upgrades_to(req.to) {
        problems.push(UpgradeProblem::NotALaterMajor { from, to: req.to });
    }
    if facts.ha && !facts.agents_held {
        problems.push(UpgradeProblem::AgentsRunIt);
    }
    if let Some(why) = &facts.spec_problem {
        problems.push(UpgradeProblem::Spec { why: why.clone() });
    }
    let primary = facts.primary.as_str();
    for n in &cluster.nodes {
        let Some(f) = facts.nodes.iter().find(|f| f.node == n.name) else {
            problems.push(UpgradeProblem::Unreachable { node: n.name.clone(), why: "not observed".into() });
            continue;
        };
        if let Some(why) = &f.unreachable {
            problems.push(UpgradeProblem::Unreachable { node: n.name.clone(), why: why.clone() });
            continue;
        }
        if let Some(why) = &f.layout_problem {
            problems.push(UpgradeProblem::Layout { node: n.name.clone(), why: why.clone() });
        }
        if !f.running {
            problems.push(UpgradeProblem::NotRunning { node: n.name.clone() });
        } else if n.name == primary {
            if f.in_recovery != Some(false) {
                problems.push(UpgradeProblem::PrimaryInRecovery { node: n.name.clone() });
            }
        } else if f.in_recovery != Some(true) || !f.streaming {
            problems.push(UpgradeProblem::NotStreaming { node: n.name.clone() });
        }
        match &f.new_binaries {
            Ok(m) if *m == req.to => {}
            Ok(m) => {
                problems.push(UpgradeProblem::NewBinaries { node: n.name.clone(), why: format!("they are PostgreSQL {m}, not {}", req.to) })
            }
            Err(why) => problems.push(UpgradeProblem::NewBinaries { node: n.name.clone(), why: why.clone() }),
        }
        if f.kept_exists {
            problems.push(UpgradeProblem::KeptDirectoryExists { node: n.name.clone(), path: f.kept_as.clone() });
        }
        if let Some(d) = &f.debian {
            if d.new_exists {
                problems.push(UpgradeProblem::NewClusterExists { node: n.name.clone(), cluster: format!("{}/{}", req.to, d.cluster) });
            }
            if let Err(why) = &d.spare_port {
                problems.push(UpgradeProblem::Layout { node: n.name.clone(), why: format!("no spare port for the old cluster: {why}") });
            }
        }
        if let Some((need, free)) = f.disk {
            // With --link the primary's files are linked; a standby's clone is a copy anyway.
            let needed = if n.name == primary && req.link { 0 } else { need };
            if needed > free {
                problems.push(UpgradeProblem::Disk { node: n.name.clone(), need_bytes: needed, free_bytes: free });
            }
        }
    }
    if !facts.logical_slots.is_empty() && !from.upgrade_caps().keeps_logical_slots {
        problems.push(UpgradeProblem::LogicalSlots { slots: facts.logical_slots.clone(), from });
    }
    if !facts.missing_extensions.is_empty() {
        problems.push(UpgradeProblem::MissingExtensions { extensions: facts.missing_extensions.clone() });
    }
    match &facts.check {
        CheckOutcome::Passed => {}
        CheckOutcome::Failed { findings } => problems.push(UpgradeProblem::CheckFailed { findings: findings.clone() }),
        CheckOutcome::NotRun { why } => problems.push(UpgradeProblem::CheckNotRun { why: why.clone() }),
    }
    let init = match &facts.init {
        Ok(s) => Some(s.clone()),
        Err(why) => {
            problems.push(UpgradeProblem::InitSettings { why: why.clone() });
            None
        }
    };
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    let init = init.expect("no problem: settings read");
    let kept_as = |node: &str| facts.nodes.iter().find(|f| f.node == node).map(|f| (f.data_dir.clone(), f.kept_as.clone()));
    // A Debian cluster's (name, old version, spare port): checked above.
    let debian = |node: &str| {
        facts
            .nodes
            .iter()
            .find(|f| f.node == node)
            .and_then(|f| f.debian.as_ref())
            .and_then(|d| d.spare_port.as_ref().ok().map(|p| (d.cluster.clone(), d.old_version.clone(), *p)))
    };
    let retire = |node: &str, disable: bool| {
        debian(node).map(|(cluster, version, port)| UpgradeStep::RetireOldCluster {
            node: node.to_string(),
            version,
            cluster,
            port,
            disable,
        })
    };

    let mut steps = Vec::new();
    steps.push(UpgradeStep::StopPrimary { node: primary.to_string() });
    let standbys = standbys_upstream_first(cluster, primary);
    for s in &standbys {
        steps.push(UpgradeStep::StopStandby { node: s.clone() });
    }
    // Every old data directory is kept under its new name before anything new is made:
    // going back renames them all back; past the point of no return, a standby whose
    // clone failed has no data directory, which `up` clones (never an old major's files).
    // A Debian cluster stays where it is: the new one is made beside it.
    for n in std::iter::once(primary.to_string()).chain(standbys.iter().cloned()).filter(|n| debian(n).is_none()) {
        let (data, kept) = kept_as(&n).expect("observed");
        steps.push(UpgradeStep::KeepOldData { node: n, from: data, to: kept });
    }
    match debian(primary) {
        Some((cluster, _, port)) => {
            steps.push(UpgradeStep::CreateCluster { node: primary.to_string(), version: req.to.to_string(), cluster, port, settings: init })
        }
        None => steps.push(UpgradeStep::Initdb { node: primary.to_string(), settings: init }),
    }
    steps.push(UpgradeStep::WriteSettings { node: primary.to_string() });
    steps.push(UpgradeStep::PgUpgrade { node: primary.to_string(), link: req.link });
    let point_of_no_return = steps.len();
    steps.push(UpgradeStep::StartPrimary { node: primary.to_string() });
    steps.extend(retire(primary, req.link));
    steps.push(UpgradeStep::Analyze { node: primary.to_string() });
    let slots: Vec<String> = cluster.downstream(primary).filter_map(|d| d.slot.clone()).collect();
    steps.push(UpgradeStep::ReplicationRoleAndSlots { node: primary.to_string(), slots });
    for s in &standbys {
        let upstream = cluster.node(s).and_then(|n| n.upstream.clone()).unwrap_or_else(|| primary.to_string());
        // Its old cluster gives up the node's port to the new one its clone makes.
        steps.extend(retire(s, false));
        steps.push(UpgradeStep::Clone { node: s.clone(), from: upstream.clone() });
        let slots: Vec<String> = cluster.downstream(s).filter_map(|d| d.slot.clone()).collect();
        if !slots.is_empty() {
            // A cascading standby's own standbys use slots on it (created in recovery).
            steps.push(UpgradeStep::StartStandby { node: s.clone(), from: upstream });
            steps.push(UpgradeStep::ReplicationRoleAndSlots { node: s.clone(), slots });
        } else {
            steps.push(UpgradeStep::StartStandby { node: s.clone(), from: upstream });
        }
    }
    let kept: Vec<(String, String)> =
        std::iter::once(primary.to_string()).chain(standbys.iter().cloned()).filter_map(|n| kept_as(&n).map(|(_, k)| (n, k))).collect();
    let mut warnings = Vec::new();
    if req.link {
        warnings.push(format!(
            "--link: once pg_upgrade has linked the files, the old cluster in {} must never be started again (it would corrupt the new one); going back means restoring a backup",
            kept.first().map(|(_, k)| k.as_str()).unwrap_or("the kept directory")
        ));
    }
    if facts.ha {
        warnings.push(format!(
            "[ha]: the agents are paused during the upgrade (the leader key stays with {primary}); `pgrepl upgrade` then restarts them on the new binaries and resumes them if it paused them"
        ));
    }
    if !facts.other_physical_slots.is_empty() {
        warnings.push(format!(
            "physical slots pgrepl does not manage are not carried by pg_upgrade and will be gone: {}",
            facts.other_physical_slots.join(", ")
        ));
    }
    if let Some((cluster, version, _)) = debian(primary) {
        warnings.push(format!(
            "the new cluster's configuration is pg_createcluster's for {} with pgrepl's settings included: what you changed by hand in /etc/postgresql/{version}/{cluster} (postgresql.conf, conf.d, pg_ident.conf) is not carried (pg_upgradecluster would copy it); set it in the cluster file's [settings]",
            req.to
        ));
    }
    if !facts.auto_conf_settings.is_empty() {
        warnings.push(format!(
            "postgresql.auto.conf (ALTER SYSTEM) is not carried to the new major: {} (set them in the cluster file's [settings], or again with ALTER SYSTEM)",
            facts.auto_conf_settings.join(", ")
        ));
    }
    Ok(UpgradePlan {
        cluster: cluster.name.clone(),
        from,
        to: req.to,
        link: req.link,
        primary: primary.to_string(),
        steps,
        point_of_no_return,
        kept,
        warnings,
    })
}

/// The standbys, each after its upstream (breadth first from the primary).
fn standbys_upstream_first(cluster: &Cluster, primary: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut frontier = vec![primary.to_string()];
    // Bounded by the number of nodes: each is added once.
    for _ in 0..cluster.nodes.len() {
        let mut next = Vec::new();
        for up in &frontier {
            for d in cluster.downstream(up) {
                if d.role != Role::Primary && d.name != primary && !out.contains(&d.name) {
                    out.push(d.name.clone());
                    next.push(d.name.clone());
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    out
}

impl fmt::Display for UpgradePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for cluster {}: upgrade PostgreSQL {} -> {} ({}), primary {}",
            self.cluster,
            self.from,
            self.to,
            if self.link { "pg_upgrade --link" } else { "pg_upgrade, copying" },
            self.primary
        )?;
        writeln!(
            f,
            "  checks passed: the new binaries on every host, pg_upgrade --check, extensions, logical slots, disk, every node up and streaming"
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "  {:>2}. {:<10} {}{}",
                i + 1,
                s.node(),
                s,
                if i == self.point_of_no_return { "  [point of no return]" } else { "" }
            )?;
        }
        let made = self.steps.iter().find_map(|s| match s {
            UpgradeStep::CreateCluster { version, cluster, .. } => Some(format!("{version}/{cluster}")),
            _ => None,
        });
        writeln!(
            f,
            "  a failure before step {} goes back: {}, every node started on {}",
            self.point_of_no_return + 1,
            match &made {
                Some(c) => format!("the new cluster {c} dropped (pg_dropcluster), the old ones untouched"),
                None => "the new data directory removed, the old ones renamed back".into(),
            },
            self.from
        )?;
        for (n, k) in &self.kept {
            writeln!(f, "  kept: {n}'s old data directory in {k} (`pgrepl upgrade --finish` removes it once you are satisfied)")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// An old data directory an upgrade kept, as found on its node's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptDir {
    /// The node.
    pub node: String,
    /// Its path (`<data_dir>-<major>.old`).
    pub path: String,
    /// The major its `PG_VERSION` says.
    pub major: Option<PgMajor>,
    /// A live postmaster runs on it (its `postmaster.pid` names a running process).
    pub running: bool,
    /// Debian's old cluster `(version, name)` the upgrade kept (dropped with
    /// `pg_dropcluster`), rather than a renamed data directory.
    pub debian_cluster: Option<(String, String)>,
}

/// What `upgrade --finish` removes: every kept directory, once the node's own data
/// directory runs `current` (the upgrade is complete there). Refused, naming each, when
/// a server runs on a kept directory or a node is not on `current` yet; nothing is
/// removed then.
pub fn finish(current: PgMajor, nodes_on: &[(String, Option<PgMajor>)], kept: &[KeptDir]) -> Result<Vec<KeptDir>, Refusal> {
    let mut problems = Vec::new();
    for k in kept {
        if k.running {
            problems.push(UpgradeProblem::Finish {
                node: k.node.clone(),
                why: format!("a server runs on the kept directory {}: stop it first", k.path),
            });
        }
        if k.major == Some(current) {
            problems.push(UpgradeProblem::Finish {
                node: k.node.clone(),
                why: format!(
                    "{} holds PostgreSQL {current}, the cluster's own major: not an old major's directory; remove it by hand if you must",
                    k.path
                ),
            });
        }
    }
    for (node, on) in nodes_on {
        if *on != Some(current) && kept.iter().any(|k| k.node == *node) {
            problems.push(UpgradeProblem::Finish {
                node: node.clone(),
                why: format!(
                    "its data directory is not on PostgreSQL {current} ({}): the upgrade is not complete there; its kept directory is the way back",
                    on.map(|m| m.to_string()).unwrap_or_else(|| "none found".into())
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(Refusal::UpgradeChecks { to: format!("{current} (--finish)"), problems });
    }
    Ok(kept.to_vec())
}

#[cfg(test)]
mod tests;
