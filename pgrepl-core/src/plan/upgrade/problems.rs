//! Why an upgrade is refused: [`UpgradeProblem`], one variant per check.

use std::fmt;

use serde::Serialize;

use crate::version::PgMajor;

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
    /// Debian's new cluster (`16/main`) exists already on a node's host.
    NewClusterExists {
        /// The node.
        node: String,
        /// `<version>/<cluster>`.
        cluster: String,
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
            UpgradeProblem::NewClusterExists { node, cluster } => write!(
                f,
                "{node}: the cluster {cluster} exists already (pg_lsclusters lists it): the upgrade makes it; drop it (pg_dropcluster) if it is not needed"
            ),
        }
    }
}
