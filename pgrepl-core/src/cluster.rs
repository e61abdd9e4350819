//! The validated cluster: every invariant of the spec holds.
//!
//! Only [`ClusterSpec::validate`](crate::ClusterSpec::validate) builds a [`Cluster`], so
//! later layers rely on: exactly one primary; names and address:port pairs unique; every
//! standby has an upstream that exists, with no cycle; the sync count fits the standbys;
//! the version (when known) supports everything asked.

use serde::Serialize;

use crate::error::{SpecError, SpecErrors};
use crate::spec::{ArchiveSpec, AuthMethod, ClusterSpec, ProviderSpec, Role, SettingValue, SyncCommit, SyncMode};
use crate::version::{Capabilities, PgMajor};

/// A validated cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// Cluster name.
    pub name: String,
    /// The PostgreSQL major, once known (`postgres = "detect"` leaves it open until
    /// binaries are found).
    pub major: Option<PgMajor>,
    /// Replication settings, defaults resolved.
    pub replication: Replication,
    /// WAL archiving.
    pub archive: ArchiveSpec,
    /// Extra settings for every node, in name order.
    pub settings: Vec<(String, SettingValue)>,
    /// The nodes in spec order.
    pub nodes: Vec<Node>,
    /// The spec it was validated from (provider details, binaries).
    #[serde(skip)]
    pub spec: ClusterSpec,
}

/// Replication settings with defaults resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replication {
    /// Replication role name.
    pub user: String,
    /// Auth method (resolved from the version when the spec names none).
    pub auth: Option<AuthMethod>,
    /// Whether standbys use slots.
    pub slots: bool,
    /// WAL kept for standbys, MB.
    pub wal_keep_mb: u32,
    /// Synchronous replication.
    pub sync: Sync,
}

/// Synchronous replication, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sync {
    /// Mode.
    pub mode: SyncMode,
    /// Number of confirming standbys.
    pub count: u32,
    /// Candidate standbys, highest priority first.
    pub standbys: Vec<String>,
    /// `synchronous_commit`.
    pub commit: SyncCommit,
    /// Keep the count when standbys are missing (commits wait) instead of degrading.
    pub strict: bool,
}

/// A validated node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Name (also `application_name`).
    pub name: String,
    /// Replication address; `None` until a provider assigns one (AWS).
    pub address: Option<String>,
    /// Port.
    pub port: u16,
    /// Role in the spec.
    pub role: Role,
    /// The node it streams from (standbys only).
    pub upstream: Option<String>,
    /// Priority (higher wins).
    pub priority: u32,
    /// Slot on the upstream (standbys with slots on).
    pub slot: Option<String>,
    /// SSH host when it differs from the address.
    pub ssh_host: Option<String>,
    /// This node's extra settings, in name order.
    pub settings: Vec<(String, SettingValue)>,
}

impl Node {
    /// The address, or a placeholder naming it when not yet assigned.
    pub fn address_or_placeholder(&self) -> String {
        self.address.clone().unwrap_or_else(|| format!("<{} address>", self.name))
    }
}

impl Cluster {
    /// The primary.
    pub fn primary(&self) -> &Node {
        self.nodes.iter().find(|n| n.role == Role::Primary).expect("a validated cluster has a primary")
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The standbys that stream directly from `name`.
    pub fn downstream<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.upstream.as_deref() == Some(name))
    }

    /// The standbys, in deploy order: every node after its upstream.
    pub fn standbys_in_order(&self) -> Vec<Vec<&Node>> {
        let mut levels: Vec<Vec<&Node>> = Vec::new();
        let mut frontier = vec![self.primary().name.as_str()];
        // The validated tree has no cycles, so this ends within nodes.len() levels.
        for _ in 0..self.nodes.len() {
            let level: Vec<&Node> = self.nodes.iter().filter(|n| n.upstream.as_deref().is_some_and(|u| frontier.contains(&u))).collect();
            if level.is_empty() {
                break;
            }
            frontier = level.iter().map(|n| n.name.as_str()).collect();
            levels.push(level);
        }
        levels
    }

    /// The version's capabilities, once the major is known.
    pub fn caps(&self) -> Option<Capabilities> {
        self.major.map(PgMajor::caps)
    }

    /// The provider section.
    pub fn provider(&self) -> &ProviderSpec {
        &self.spec.provider
    }

    /// The same cluster with `new_primary` as its primary: the old primary becomes a
    /// standby of it, standbys that streamed from the old primary stream from it, and
    /// cascaded standbys keep their upstream. Synchronous candidates are recomputed (an
    /// explicit list has the new primary swapped for the old one). Validated again, so
    /// every invariant of [`Cluster`] holds.
    pub fn with_primary(&self, new_primary: &str) -> Result<Cluster, SpecErrors> {
        let old = self.primary().name.clone();
        if old == new_primary {
            return Ok(self.clone());
        }
        if self.node(new_primary).is_none() {
            return Err(SpecErrors::one(SpecError::new(
                "primary",
                format!("unknown node \"{new_primary}\""),
                format!("one of: {}", self.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")),
            )));
        }
        let mut spec = self.spec.clone();
        for (i, n) in spec.nodes.iter_mut().enumerate() {
            let current = &self.nodes[i];
            if n.name == new_primary {
                n.role = Role::Primary;
                n.upstream = None;
                n.slot_name = None;
            } else {
                n.role = Role::Standby;
                let up = if n.name == old { Some(new_primary.to_string()) } else { current.upstream.clone() };
                n.upstream = match up.as_deref() {
                    Some(u) if u == old => Some(new_primary.to_string()),
                    other => other.map(str::to_string),
                };
                if n.slot_name.is_none() {
                    n.slot_name = current.slot.clone();
                }
            }
        }
        if let Some(list) = &mut spec.replication.sync.standbys {
            for s in list.iter_mut() {
                if s == new_primary {
                    *s = old.clone();
                }
            }
        }
        match self.major {
            Some(m) => spec.validate_for(m),
            None => spec.validate(),
        }
    }
}

/// `cluster` with `primary` as its primary (addresses kept) and `excluded` nodes left out
/// of the synchronous standbys; and what was degraded.
pub fn retarget(cluster: &Cluster, primary: &str, excluded: &[String]) -> Result<(Cluster, Option<String>), SpecErrors> {
    let mut c = cluster.with_primary(primary)?;
    for n in &mut c.nodes {
        if n.address.is_none() {
            n.address = cluster.node(&n.name).and_then(|o| o.address.clone());
        }
    }
    let degraded = exclude_from_sync(&mut c, excluded);
    Ok((c, degraded))
}

/// Leaves `excluded` nodes (fenced, or gone) out of the synchronous standbys: the count
/// shrinks to what is left, and replication is asynchronous when nothing is, so commits
/// do not wait forever for standbys that cannot confirm. Returns what was degraded.
pub fn exclude_from_sync(cluster: &mut Cluster, excluded: &[String]) -> Option<String> {
    let s = &mut cluster.replication.sync;
    if s.mode == SyncMode::Off || excluded.is_empty() {
        return None;
    }
    let gone: Vec<String> = s.standbys.iter().filter(|n| excluded.contains(n)).cloned().collect();
    if gone.is_empty() {
        return None;
    }
    let available = s.standbys.len() - gone.len();
    if s.strict {
        // The spec asks for no acknowledged write without `count` standbys: keep waiting.
        return (available < s.count as usize).then(|| {
            format!(
                "{} synchronous standby(s) asked but only {available} available ({} fenced or unreachable): commits wait until enough are back (replication.sync.strict = true)",
                s.count,
                gone.join(", ")
            )
        });
    }
    s.standbys.retain(|n| !excluded.contains(n));
    let left = s.standbys.len() as u32;
    if left >= s.count {
        return None;
    }
    let asked = s.count;
    if left == 0 {
        s.mode = SyncMode::Off;
        s.count = 0;
        return Some(format!(
            "{asked} synchronous standby(s) asked but none is available ({} fenced or unreachable): commits are asynchronous until `pgrepl rejoin` brings a standby back",
            gone.join(", ")
        ));
    }
    s.count = left;
    Some(format!(
        "{asked} synchronous standbys asked but only {left} available ({} fenced or unreachable): commits wait for {left} until `pgrepl rejoin` brings the others back",
        gone.join(", ")
    ))
}
