//! What `up` tells while it runs ([`Progress`], [`NoProgress`]) and what it did
//! ([`Action`], [`UpReport`]).

use std::fmt;

use serde::Serialize;

/// Receives progress of long operations (the CLI draws spinners from it).
pub trait Progress: Send + Sync {
    /// A step began on `node`.
    fn started(&self, node: &str, step: &str);
    /// The step ended; `outcome` says what happened.
    fn finished(&self, node: &str, step: &str, outcome: &str);
    /// How far a running step is (a clone: bytes copied of the source's size).
    fn update(&self, _node: &str, _step: &str, _detail: &str) {}
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: &str, _: &str) {}
    fn finished(&self, _: &str, _: &str, _: &str) {}
}

/// One thing `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The node.
    pub node: String,
    /// What was done.
    pub what: String,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: String,
    /// Every change made, in order; empty when the cluster was already as specified.
    pub actions: Vec<Action>,
    /// The plan's steps as they ran (typed).
    pub steps: Vec<crate::plan::StepRecord>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Restarts left for later: settings that need a restart `up` did not apply (it never
    /// restarts the primary, nor a standby before the primary when the order forbids it).
    pub pending_restart: Vec<crate::plan::PendingRestart>,
}

impl UpReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.actions.is_empty()
    }
}

impl fmt::Display for UpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            writeln!(f, "cluster {} (PostgreSQL {}) is up as specified: nothing to do ({:.1}s)", self.cluster, self.major, self.seconds)?;
            return self.fmt_pending(f);
        }
        writeln!(f, "cluster {} (PostgreSQL {}): {} change(s) in {:.1}s", self.cluster, self.major, self.actions.len(), self.seconds)?;
        for a in &self.actions {
            writeln!(f, "  {:<10} {} ({:.1}s)", a.node, a.what, a.seconds)?;
        }
        self.fmt_pending(f)
    }
}

impl UpReport {
    fn fmt_pending(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pending_restart {
            writeln!(f, "pending restart: {p}")?;
        }
        Ok(())
    }
}
