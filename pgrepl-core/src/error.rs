//! Errors.
//!
//! Convention: a variant's message describes *this* layer only ("db2: start failed"); the
//! cause goes in `#[source]` and never into the message as well. Callers print the chain
//! once (the CLI prints `error: …` then `caused by: …` lines). No message or `Debug`
//! output ever holds a secret.

use std::time::Duration;

use serde::Serialize;

pub use crate::spec_error::{SpecError, SpecErrors};

/// A safety check that stopped a destructive or risky step. Refusals are the safety
/// design working, not crashes: match on them and tell the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{node}: {reason}")]
pub struct Refusal {
    /// The node the step was for.
    pub node: String,
    /// Why it was refused and what to do.
    pub reason: String,
}

/// Why a pgrepl operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec is invalid.
    #[error("invalid cluster spec:\n{0}")]
    Spec(SpecErrors),
    /// A check refused to go on.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// A planner refused the operation (typed reason, see [`crate::plan::Refusal`]).
    #[error("refused: {0}")]
    Plan(crate::plan::Refusal),
    /// A guard of a plan's step did not hold right before the step; nothing of that step ran.
    #[error("refused: {0}")]
    Guard(crate::plan::GuardFailure),
    /// No usable PostgreSQL installation.
    #[error("{0}")]
    Discovery(String),
    /// A command, file or connection on a host failed.
    #[cfg(feature = "runtime")]
    #[error("{host}: {action}")]
    Transport {
        /// The host (or node) it happened on.
        host: String,
        /// What pgrepl was doing.
        action: String,
        /// What went wrong there.
        #[source]
        source: crate::transport::TransportError,
    },
    /// A SQL statement failed on a node.
    #[cfg(feature = "runtime")]
    #[error("{node}: {action}")]
    Sql {
        /// The node.
        node: String,
        /// What pgrepl was doing.
        action: String,
        /// The server's error.
        #[source]
        source: crate::sql::SqlError,
    },
    /// The provider could not create, list or destroy hosts.
    #[cfg(feature = "runtime")]
    #[error("provider {provider}: {action}")]
    Provider {
        /// `local`, `ssh`, `aws`.
        provider: String,
        /// What pgrepl was doing.
        action: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bounded wait ran out.
    #[error("{node}: timed out after {}s waiting for {waiting_for}", .waited.as_secs_f64().round())]
    Timeout {
        /// The node.
        node: String,
        /// How long pgrepl waited.
        waited: Duration,
        /// What it was waiting for.
        waiting_for: String,
    },
    /// A backup tool failed, with its cause named.
    #[error("{node}: {action}: {cause}\n{detail}")]
    Backup {
        /// The node whose host ran it.
        node: String,
        /// What pgrepl was doing.
        action: String,
        /// The cause, named.
        cause: crate::tool_failure::ToolFailure,
        /// The tool's last lines.
        detail: String,
    },
    /// A node is in a state pgrepl cannot work with (the message says what to do).
    #[error("{node}: {problem}")]
    Node {
        /// The node.
        node: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {action}")]
    Io {
        /// The path.
        path: String,
        /// What pgrepl was doing.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster's operation lock is held by another operation (or could not be taken
    /// on a majority of its hosts) past the wait (see the `oplock` module).
    #[error("cluster {cluster}: the operation lock is {holder} (gave up after {}s)", .waited.as_secs_f64().round())]
    Locked {
        /// The cluster.
        cluster: String,
        /// Who holds it, since when and until when (or why it could not be taken).
        holder: String,
        /// How long pgrepl waited.
        waited: Duration,
    },
    /// An operation that paused the cluster's agents failed (or could not resume them):
    /// its error, and what became of the agents.
    #[error("{error}; {agents}")]
    Agents {
        /// The operation's error.
        error: Box<Error>,
        /// The agents: resumed, or left paused and what to do.
        agents: String,
    },
}

impl From<SpecErrors> for Error {
    fn from(e: SpecErrors) -> Self {
        Error::Spec(e)
    }
}

impl From<crate::plan::Refusal> for Error {
    fn from(r: crate::plan::Refusal) -> Self {
        Error::Plan(r)
    }
}

impl From<crate::plan::GuardFailure> for Error {
    fn from(g: crate::plan::GuardFailure) -> Self {
        Error::Guard(g)
    }
}

impl From<crate::render::RenderError> for Error {
    fn from(e: crate::render::RenderError) -> Self {
        match e {
            crate::render::RenderError::UnknownMajor => Error::Discovery(e.to_string()),
            crate::render::RenderError::NoSuchNode { node, nodes } => {
                Error::node(node, format!("no such node (the cluster has: {})", nodes.join(", ")))
            }
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

impl Error {
    /// Whether a safety check refused (a plan's refusal, a failed guard, or another
    /// refusal): the CLI's exit status 3.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Agents { error, .. } => error.is_refusal(),
            _ => matches!(self, Error::Refused(_) | Error::Plan(_) | Error::Guard(_) | Error::Locked { .. }),
        }
    }

    /// A node-state error.
    pub fn node(node: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Node { node: node.into(), problem: problem.into() }
    }
}

/// A pgrepl result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line: `a: b: c` (at most 8 levels).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    for _ in 0..8 {
        let Some(c) = cur else { break };
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
