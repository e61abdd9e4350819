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
//! The old data directories are left for the operator to remove.

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
    /// Where the old data directory is kept (`<data_dir>-<old major>.old`).
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

/// Why an upgrade is refused: one variant per check, each naming what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "check")]
#[non_exhaustive]
pub enum UpgradeProblem {
    /// The cluster's major is not known.
    MajorUnknown,
    /// The major asked for is not a later one pgrepl can upgrade to.
    NotALaterMajor {
        /// Now.
        from: PgMajor,
        /// Asked.
        to: PgMajor,
    },
    /// Agents run the cluster.
    AgentsRunIt,
    /// The cluster file is not valid for the new major.
    Spec {
        /// The validation's words.
        why: String,
    },
    /// A node's host cannot be reached.
    Unreachable {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
    /// A node's server does not run.
    NotRunning {
        /// The node.
        node: String,
    },
    /// The primary does not accept writes (it is in recovery).
    PrimaryInRecovery {
        /// The node.
        node: String,
    },
    /// A standby is not a streaming standby.
    NotStreaming {
        /// The node.
        node: String,
    },
    /// A node's layout cannot be upgraded by pgrepl.
    Layout {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
    /// The new major's binaries are missing or of another major on a node's host.
    NewBinaries {
        /// The node.
        node: String,
        /// What is missing.
        why: String,
    },
    /// The name the old data directory would be kept under is taken.
    KeptDirectoryExists {
        /// The node.
        node: String,
        /// The path.
        path: String,
    },
    /// Logical slots would be lost.
    LogicalSlots {
        /// The slots.
        slots: Vec<String>,
        /// The old major.
        from: PgMajor,
    },
    /// Extensions the new binaries lack.
    MissingExtensions {
        /// `name (database)`.
        extensions: Vec<String>,
    },
    /// `pg_upgrade --check` failed.
    CheckFailed {
        /// What it found.
        findings: Vec<String>,
    },
    /// `pg_upgrade --check` could not run.
    CheckNotRun {
        /// Why.
        why: String,
    },
    /// Not enough free disk.
    Disk {
        /// The node.
        node: String,
        /// Bytes needed.
        need_bytes: u64,
        /// Bytes free.
        free_bytes: u64,
    },
    /// `upgrade --finish` cannot remove a kept directory.
    Finish {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
    /// The old cluster's encoding, locale or checksums could not be read.
    InitSettings {
        /// Why.
        why: String,
    },
}

impl fmt::Display for UpgradeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeProblem::MajorUnknown => f.write_str("the cluster's PostgreSQL major is not known: set `postgres` in the cluster file"),
            UpgradeProblem::NotALaterMajor { from, to } => {
                write!(f, "the cluster runs PostgreSQL {from}; {to} is not a later major pgrepl can upgrade it to (pg_upgrade goes forward only, 9.3 and later)")
            }
            UpgradeProblem::AgentsRunIt => f.write_str(
                "agents ([ha]) run this cluster and this deployment cannot reach their store to pause them during the upgrade (Deployment::with_consensus_store; the pgrepl command does it)",
            ),
            UpgradeProblem::Spec { why } => write!(f, "the cluster file is not valid for the new major: {why}"),
            UpgradeProblem::Unreachable { node, why } => write!(f, "{node}: its host cannot be reached ({why})"),
            UpgradeProblem::NotRunning { node } => write!(f, "{node}: its server does not run (`pgrepl up` first: the upgrade starts from a healthy cluster)"),
            UpgradeProblem::PrimaryInRecovery { node } => write!(f, "{node}: the primary is in recovery, not accepting writes"),
            UpgradeProblem::NotStreaming { node } => write!(f, "{node}: not a streaming standby (see `pgrepl status`)"),
            UpgradeProblem::Layout { node, why } | UpgradeProblem::Finish { node, why } => write!(f, "{node}: {why}"),
            UpgradeProblem::NewBinaries { node, why } => write!(f, "{node}: new binaries: {why}"),
            UpgradeProblem::KeptDirectoryExists { node, path } => {
                write!(f, "{node}: {path} exists (an earlier upgrade's old data directory?): the old data directory is kept under that name; remove or move it first")
            }
            UpgradeProblem::LogicalSlots { slots, from } => write!(
                f,
                "logical replication slots {} would be lost (pg_upgrade carries logical slots only from a 17 or later cluster; this one is {from}): drop them, upgrade, and create them again",
                slots.join(", ")
            ),
            UpgradeProblem::MissingExtensions { extensions } => write!(
                f,
                "extensions installed here are missing from the new binaries: {} (install them for the new major, or DROP EXTENSION them first)",
                extensions.join(", ")
            ),
            UpgradeProblem::CheckFailed { findings } => write!(f, "pg_upgrade --check failed: {}", findings.join("; ")),
            UpgradeProblem::CheckNotRun { why } => write!(f, "pg_upgrade --check could not run: {why}"),
            UpgradeProblem::Disk { node, need_bytes, free_bytes } => write!(
                f,
                "{node}: not enough free disk for a copy of the data ({} MB needed, {} MB free): free space, or use --link (the primary's files hard-linked)",
                need_bytes / (1024 * 1024),
                free_bytes / (1024 * 1024)
            ),
            UpgradeProblem::InitSettings { why } => write!(f, "the old cluster's encoding, locale or data checksums could not be read: {why}"),
        }
    }
}

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

    let mut steps = Vec::new();
    steps.push(UpgradeStep::StopPrimary { node: primary.to_string() });
    let standbys = standbys_upstream_first(cluster, primary);
    for s in &standbys {
        steps.push(UpgradeStep::StopStandby { node: s.clone() });
    }
    // Every old data directory is kept under its new name before anything new is made:
    // going back renames them all back; past the point of no return, a standby whose
    // clone failed has no data directory, which `up` clones (never an old major's files).
    for n in std::iter::once(primary.to_string()).chain(standbys.iter().cloned()) {
        let (data, kept) = kept_as(&n).expect("observed");
        steps.push(UpgradeStep::KeepOldData { node: n, from: data, to: kept });
    }
    steps.push(UpgradeStep::Initdb { node: primary.to_string(), settings: init });
    steps.push(UpgradeStep::WriteSettings { node: primary.to_string() });
    steps.push(UpgradeStep::PgUpgrade { node: primary.to_string(), link: req.link });
    let point_of_no_return = steps.len();
    steps.push(UpgradeStep::StartPrimary { node: primary.to_string() });
    steps.push(UpgradeStep::Analyze { node: primary.to_string() });
    let slots: Vec<String> = cluster.downstream(primary).filter_map(|d| d.slot.clone()).collect();
    steps.push(UpgradeStep::ReplicationRoleAndSlots { node: primary.to_string(), slots });
    for s in &standbys {
        let upstream = cluster.node(s).and_then(|n| n.upstream.clone()).unwrap_or_else(|| primary.to_string());
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
        writeln!(
            f,
            "  a failure before step {} goes back: the new data directory removed, the old ones renamed back, every node started on {}",
            self.point_of_no_return + 1,
            self.from
        )?;
        for (n, k) in &self.kept {
            writeln!(f, "  kept: {n}'s old data directory in {k} (remove it yourself once satisfied)")?;
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
mod tests {
    use super::*;
    use crate::{ClusterSpec, NodeSpec};

    fn cluster() -> Cluster {
        ClusterSpec::builder("c")
            .postgres(PgMajor::V14)
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .node(NodeSpec::standby("db3"))
            .into_spec()
            .validate()
            .unwrap()
    }

    fn node(name: &str, primary: bool) -> NodeFacts {
        NodeFacts {
            node: name.into(),
            unreachable: None,
            running: true,
            in_recovery: Some(!primary),
            streaming: !primary,
            data_dir: format!("/w/{name}/data"),
            kept_as: format!("/w/{name}/data-14.old"),
            kept_exists: false,
            layout_problem: None,
            new_binaries: Ok(PgMajor::V16),
            disk: Some((1 << 30, 10 << 30)),
        }
    }

    fn facts() -> UpgradeFacts {
        UpgradeFacts {
            from: Some(PgMajor::V14),
            primary: "db1".into(),
            ha: false,
            agents_held: false,
            spec_problem: None,
            nodes: vec![node("db1", true), node("db2", false), node("db3", false)],
            logical_slots: vec![],
            other_physical_slots: vec![],
            missing_extensions: vec![],
            check: CheckOutcome::Passed,
            init: Ok(InitSettings {
                encoding: "UTF8".into(),
                lc_collate: "C".into(),
                lc_ctype: "C".into(),
                checksums: true,
                superuser: "postgres".into(),
            }),
            auto_conf_settings: vec![],
        }
    }

    const COPY: UpgradeRequest = UpgradeRequest { to: PgMajor::V16, link: false };
    const LINK: UpgradeRequest = UpgradeRequest { to: PgMajor::V16, link: true };

    fn problems(r: Result<UpgradePlan, Refusal>) -> Vec<UpgradeProblem> {
        match r {
            Err(Refusal::UpgradeChecks { problems, .. }) => problems,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn healthy_cluster_copy_plan() {
        let p = upgrade(&cluster(), &facts(), &COPY).unwrap();
        let kinds: Vec<String> = p.steps.iter().map(|s| format!("{} {}", s.node(), serde_json::to_value(s).unwrap()["kind"])).collect();
        assert_eq!(
            kinds,
            [
                "db1 \"stop_primary\"",
                "db2 \"stop_standby\"",
                "db3 \"stop_standby\"",
                "db1 \"keep_old_data\"",
                "db2 \"keep_old_data\"",
                "db3 \"keep_old_data\"",
                "db1 \"initdb\"",
                "db1 \"write_settings\"",
                "db1 \"pg_upgrade\"",
                "db1 \"start_primary\"",
                "db1 \"analyze\"",
                "db1 \"replication_role_and_slots\"",
                "db2 \"clone\"",
                "db2 \"start_standby\"",
                "db3 \"clone\"",
                "db3 \"start_standby\"",
            ]
        );
        assert_eq!(p.steps[p.point_of_no_return], UpgradeStep::StartPrimary { node: "db1".into() });
        assert!(p.steps.contains(&UpgradeStep::PgUpgrade { node: "db1".into(), link: false }));
        assert!(
            p.steps.contains(&UpgradeStep::ReplicationRoleAndSlots {
                node: "db1".into(),
                slots: vec!["pgrepl_db2".into(), "pgrepl_db3".into()]
            })
        );
        assert_eq!(p.kept.len(), 3);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn link_plan_says_the_old_cluster_must_not_start() {
        let p = upgrade(&cluster(), &facts(), &LINK).unwrap();
        assert!(p.steps.contains(&UpgradeStep::PgUpgrade { node: "db1".into(), link: true }));
        assert!(
            p.warnings.iter().any(|w| w.contains("must never be started again") && w.contains("/w/db1/data-14.old")),
            "{:?}",
            p.warnings
        );
        let text = p.to_string();
        assert!(text.contains("pg_upgrade --link (hard links"), "{text}");
    }

    #[test]
    fn dry_run_text_lists_steps_point_of_no_return_and_kept_directories() {
        let text = upgrade(&cluster(), &facts(), &COPY).unwrap().to_string();
        assert!(text.starts_with("plan for cluster c: upgrade PostgreSQL 14 -> 16 (pg_upgrade, copying), primary db1\n"), "{text}");
        assert!(text.contains(" 1. db1        stop cleanly"), "{text}");
        assert!(text.contains("10. db1        start on the new major  [point of no return]"), "{text}");
        assert!(text.contains("a failure before step 10 goes back"), "{text}");
        assert!(text.contains("kept: db2's old data directory in /w/db2/data-14.old"), "{text}");
        assert!(
            text.contains("initdb (new major): encoding UTF8, LC_COLLATE C, LC_CTYPE C, data checksums on, superuser postgres"),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_reported_together() {
        let mut f = facts();
        f.nodes[1].new_binaries = Err("no pg_upgrade in /x/bin".into());
        f.nodes[2].streaming = false;
        f.logical_slots = vec!["sub1".into()];
        f.missing_extensions = vec!["adminpack (postgres)".into()];
        f.check = CheckOutcome::Failed {
            findings: vec!["Checking for presence of required libraries: could not load library \"$libdir/adminpack\"".into()],
        };
        f.nodes[0].disk = Some((5 << 30, 1 << 30));
        let got = problems(upgrade(&cluster(), &f, &COPY));
        assert_eq!(got.len(), 6, "{got:?}");
        let text = Refusal::UpgradeChecks { to: "16".into(), problems: got.clone() }.to_string();
        for want in [
            "db2: new binaries: no pg_upgrade",
            "db3: not a streaming standby",
            "logical replication slots sub1",
            "adminpack (postgres)",
            "pg_upgrade --check failed",
            "db1: not enough free disk for a copy of the data (5120 MB needed, 1024 MB free)",
        ] {
            assert!(text.contains(want), "{want} missing in {text}");
        }
        assert!(text.starts_with("the upgrade to PostgreSQL 16 is refused; nothing was changed:\n  - "), "{text}");
    }

    #[test]
    fn link_needs_no_disk_on_the_primary_but_the_standbys_still_copy() {
        let mut f = facts();
        f.nodes[0].disk = Some((5 << 30, 1 << 30));
        assert!(upgrade(&cluster(), &f, &LINK).is_ok());
        f.nodes[1].disk = Some((5 << 30, 1 << 30));
        let got = problems(upgrade(&cluster(), &f, &LINK));
        assert_eq!(got, [UpgradeProblem::Disk { node: "db2".into(), need_bytes: 5 << 30, free_bytes: 1 << 30 }]);
    }

    #[test]
    fn refusals_one_by_one() {
        type Change = Box<dyn Fn(&mut UpgradeFacts)>;
        let cases: Vec<(&str, Change, UpgradeRequest, &str)> = vec![
            ("same major", Box::new(|_| {}), UpgradeRequest { to: PgMajor::V14, link: false }, "not_a_later_major"),
            ("older", Box::new(|_| {}), UpgradeRequest { to: PgMajor::V13, link: false }, "not_a_later_major"),
            ("ha", Box::new(|f| f.ha = true), COPY, "agents_run_it"),
            ("spec", Box::new(|f| f.spec_problem = Some("settings.x: unknown".into())), COPY, "spec"),
            ("unreachable", Box::new(|f| f.nodes[2].unreachable = Some("timeout".into())), COPY, "unreachable"),
            ("stopped", Box::new(|f| f.nodes[1].running = false), COPY, "not_running"),
            ("primary in recovery", Box::new(|f| f.nodes[0].in_recovery = Some(true)), COPY, "primary_in_recovery"),
            ("layout", Box::new(|f| f.nodes[0].layout_problem = Some("Debian".into())), COPY, "layout"),
            ("wrong new major", Box::new(|f| f.nodes[0].new_binaries = Ok(PgMajor::V15)), COPY, "new_binaries"),
            ("kept exists", Box::new(|f| f.nodes[2].kept_exists = true), COPY, "kept_directory_exists"),
            ("logical slots", Box::new(|f| f.logical_slots = vec!["s".into()]), COPY, "logical_slots"),
            ("extensions", Box::new(|f| f.missing_extensions = vec!["e (db)".into()]), COPY, "missing_extensions"),
            ("check failed", Box::new(|f| f.check = CheckOutcome::Failed { findings: vec!["x".into()] }), COPY, "check_failed"),
            ("check not run", Box::new(|f| f.check = CheckOutcome::NotRun { why: "x".into() }), COPY, "check_not_run"),
            ("settings", Box::new(|f| f.init = Err("x".into())), COPY, "init_settings"),
        ];
        for (name, change, req, check) in cases {
            let mut f = facts();
            for n in &mut f.nodes {
                n.new_binaries = Ok(req.to);
            }
            change(&mut f);
            let got = problems(upgrade(&cluster(), &f, &req));
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert_eq!(serde_json::to_value(&got[0]).unwrap()["check"], check, "{name}");
        }
    }

    #[test]
    fn logical_slots_are_carried_from_17() {
        let mut f = facts();
        f.from = Some(PgMajor::V17);
        for n in &mut f.nodes {
            n.new_binaries = Ok(PgMajor::V18);
        }
        f.logical_slots = vec!["sub1".into()];
        let c = ClusterSpec::builder("c")
            .postgres(PgMajor::V17)
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .node(NodeSpec::standby("db3"))
            .into_spec()
            .validate()
            .unwrap();
        assert!(upgrade(&c, &f, &UpgradeRequest { to: PgMajor::V18, link: false }).is_ok());
    }

    #[test]
    fn agents_held_paused_are_no_refusal() {
        let mut f = facts();
        f.ha = true;
        f.agents_held = true;
        let p = upgrade(&cluster(), &f, &COPY).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("agents are paused during the upgrade")), "{:?}", p.warnings);
    }

    #[test]
    fn warnings_for_what_is_not_carried() {
        let mut f = facts();
        f.other_physical_slots = vec!["backup_slot".into()];
        f.auto_conf_settings = vec!["work_mem".into()];
        let p = upgrade(&cluster(), &f, &COPY).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("backup_slot")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("work_mem")), "{:?}", p.warnings);
    }

    #[test]
    fn finish_removes_only_old_majors_directories_of_upgraded_nodes() {
        let k = |node: &str, major: PgMajor, running: bool| KeptDir {
            node: node.into(),
            path: format!("/w/{node}/data-{major}.old"),
            major: Some(major),
            running,
        };
        let on16 = vec![("db1".to_string(), Some(PgMajor::V16)), ("db2".to_string(), Some(PgMajor::V16))];
        let kept = vec![k("db1", PgMajor::V14, false), k("db2", PgMajor::V14, false)];
        assert_eq!(finish(PgMajor::V16, &on16, &kept).unwrap(), kept);
        assert_eq!(finish(PgMajor::V16, &on16, &[]).unwrap(), []);
        let running = vec![k("db1", PgMajor::V14, true)];
        let e = finish(PgMajor::V16, &on16, &running).unwrap_err().to_string();
        assert!(e.contains("a server runs on the kept directory /w/db1/data-14.old"), "{e}");
        let not_done = vec![("db1".to_string(), Some(PgMajor::V14))];
        let e = finish(PgMajor::V16, &not_done, &[k("db1", PgMajor::V14, false)]).unwrap_err().to_string();
        assert!(e.contains("db1: its data directory is not on PostgreSQL 16 (14)"), "{e}");
        let e = finish(PgMajor::V16, &on16, &[k("db2", PgMajor::V16, false)]).unwrap_err().to_string();
        assert!(e.contains("the cluster's own major"), "{e}");
    }
}
