//! Guards: conditions a step needs, re-checked against a fresh observation right before
//! the step runs.

use std::fmt;

use serde::Serialize;

use crate::lsn::Lsn;
use crate::observe::ObservedCluster;

/// A condition a step needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "guard")]
pub enum Guard {
    /// No node but `except` answers as a primary.
    NoOtherWritable {
        /// The node allowed to (the candidate once promoted, or nobody).
        except: Option<String>,
    },
    /// The node does not accept writes (it is a standby, or stopped).
    NotWritable {
        /// The node.
        node: String,
    },
    /// The node's host answers and no server runs on its data directory.
    NotRunning {
        /// The node.
        node: String,
    },
    /// The node answers as a standby.
    IsStandby {
        /// The node.
        node: String,
    },
    /// The node has received or replayed WAL at least up to `lsn`.
    HasWal {
        /// The node.
        node: String,
        /// The position.
        lsn: Lsn,
    },
    /// The node's host can be reached.
    Reachable {
        /// The node.
        node: String,
    },
}

impl Guard {
    /// The nodes whose observation the guard reads (`None`: every node).
    pub fn nodes(&self) -> Option<Vec<&str>> {
        match self {
            Guard::NoOtherWritable { .. } => None,
            Guard::NotWritable { node }
            | Guard::NotRunning { node }
            | Guard::IsStandby { node }
            | Guard::HasWal { node, .. }
            | Guard::Reachable { node } => Some(vec![node.as_str()]),
        }
    }

    /// Checks the guard against an observation.
    pub fn check(&self, obs: &ObservedCluster) -> Result<(), GuardFailure> {
        let fail = |why: String| Err(GuardFailure { guard: self.clone(), why });
        match self {
            Guard::NoOtherWritable { except } => {
                let w: Vec<String> = obs.writable().into_iter().filter(|n| Some(n) != except.as_ref()).collect();
                if w.is_empty() { Ok(()) } else { fail(format!("{} accept(s) writes", w.join(", "))) }
            }
            Guard::NotWritable { node } => {
                let o = obs.get(node);
                if o.writable() {
                    fail(format!("{node} accepts writes"))
                } else if o.may_accept_writes() {
                    fail(format!("{node} runs, does not answer, and its data directory is not a standby's"))
                } else {
                    Ok(())
                }
            }
            Guard::NotRunning { node } => {
                let o = obs.get(node);
                if o.stopped() {
                    Ok(())
                } else if !o.host_reachable {
                    fail(format!("{node}'s host cannot be reached"))
                } else {
                    fail(format!("{node}'s server runs"))
                }
            }
            Guard::IsStandby { node } => {
                if obs.get(node).standby() {
                    Ok(())
                } else {
                    fail(format!("{node} is not a running standby"))
                }
            }
            Guard::HasWal { node, lsn } => match obs.get(node).position() {
                Some(p) if p >= *lsn => Ok(()),
                Some(p) => fail(format!("{node} has WAL up to {p}, short of {lsn}")),
                None => fail(format!("{node} reports no WAL position")),
            },
            Guard::Reachable { node } => {
                if obs.get(node).host_reachable {
                    Ok(())
                } else {
                    fail(format!("{node}'s host cannot be reached"))
                }
            }
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guard::NoOtherWritable { except: Some(e) } => write!(f, "no node but {e} accepts writes"),
            Guard::NoOtherWritable { except: None } => f.write_str("no node accepts writes"),
            Guard::NotWritable { node } => write!(f, "{node} does not accept writes"),
            Guard::NotRunning { node } => write!(f, "{node} is not running"),
            Guard::IsStandby { node } => write!(f, "{node} is a running standby"),
            Guard::HasWal { node, lsn } => write!(f, "{node} has WAL up to {lsn}"),
            Guard::Reachable { node } => write!(f, "{node} can be reached"),
        }
    }
}

/// A guard that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("guard \"{guard}\" failed: {why}")]
pub struct GuardFailure {
    /// The guard.
    pub guard: Guard,
    /// What was observed instead.
    pub why: String,
}
