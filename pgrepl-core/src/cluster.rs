//! The validated cluster: every invariant of the spec holds.
//!
//! Only [`ClusterSpec::validate`](crate::ClusterSpec::validate) builds a [`Cluster`], so
//! later layers rely on: exactly one primary; names and address:port pairs unique; every
//! standby has an upstream that exists, with no cycle; the sync count fits the standbys;
//! the version (when known) supports everything asked.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::spec::{ArchiveSpec, AuthMethod, ProviderSpec, Role, SettingValue, SyncCommit, SyncMode, SyncSpec};
use crate::spec_error::{SpecError, SpecErrors};
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
    /// Base backups and the WAL archive (`[backup]`), checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::spec::BackupSpec>,
    /// Extra settings for every node, in name order.
    pub settings: Vec<(String, SettingValue)>,
    /// The nodes in spec order.
    pub nodes: Vec<Node>,
    /// Automatic failover (`[ha]`), checked.
    pub ha: Option<Ha>,
    /// Hosts with an etcd member and an agent but no PostgreSQL (`role = "witness"`);
    /// not in [`nodes`](Self::nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<crate::locations::Witness>,
    /// Where the hosts come from and how pgrepl reaches them (the spec's `[provider]`,
    /// checked by validation); read through [`provider`](Self::provider).
    #[serde(skip)]
    pub(crate) provider: ProviderSpec,
    /// Synchronous replication as the spec asks for it (its candidate list, if explicit,
    /// follows the primary), before fenced standbys are left out of [`Replication::sync`]:
    /// [`with_primary`](Self::with_primary) recomputes the synchronous standbys from it.
    #[serde(skip)]
    pub(crate) sync_asked: SyncSpec,
}

/// Automatic failover, checked: the settings the agents start with and the etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ha {
    /// ttl, loop wait, safety margin, maximum lag (the `config` key's first value).
    pub settings: crate::ha_settings::HaSettings,
    /// The etcd cluster.
    pub etcd: crate::spec::EtcdSpec,
    /// With `etcd.deploy`: the nodes (witnesses too) that hold a member, in spec order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<String>,
    /// The agents' HTTP port (see [`Cluster::agent_api`]).
    pub api_port: u16,
    /// The address the agents' HTTP endpoint listens on, when not the node's own.
    pub api_listen: Option<String>,
    /// `/replica`'s default lag limit in bytes.
    pub replica_max_lag: u64,
    /// Where the agents' binary comes from on remote hosts.
    pub agent_binary: AgentBinary,
}

/// Where the agents' pgrepl binary comes from on SSH and EC2 hosts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub enum AgentBinary {
    /// Uploaded from the admin machine (the host's architecture must match).
    #[default]
    Upload,
    /// Already on every host at this path.
    OnHost(String),
    /// Downloaded by each host from this URL, with this SHA-256.
    Url { url: String, sha256: String },
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
    /// The file holding the replication password (absolute), when the spec names one;
    /// `None`: pgrepl generates the password and keeps it in the state directory.
    #[serde(skip)]
    pub password_file: Option<PathBuf>,
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
    /// Where it runs (see [`NodeSpec::location`](crate::spec::NodeSpec::location)).
    pub location: Option<String>,
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
    /// Where `node`'s agent serves HTTP: the address it listens on and the port (`None`
    /// without `[ha]`, for an unknown node, or before the node has an address). Nodes that
    /// share an address (a local cluster) get consecutive ports from `api_port`, in spec
    /// order.
    pub fn agent_api(&self, node: &str) -> Option<(String, u16)> {
        let ha = self.ha.as_ref()?;
        let i = self.nodes.iter().position(|n| n.name == node)?;
        let n = &self.nodes[i];
        let address = n.address.clone()?;
        let shared = self.nodes.iter().filter(|o| o.address.as_deref() == Some(address.as_str())).count() > 1;
        let port = if shared { ha.api_port.checked_add(u16::try_from(i).ok()?)? } else { ha.api_port };
        Some((ha.api_listen.clone().unwrap_or(address), port))
    }

    /// Where others reach `node`'s agent over HTTP (`address:port`; its own address even
    /// when it listens on every interface).
    pub fn agent_url_base(&self, node: &str) -> Option<String> {
        let (_, port) = self.agent_api(node)?;
        let address = self.node(node)?.address.clone()?;
        Some(if address.contains(':') { format!("http://[{address}]:{port}") } else { format!("http://{address}:{port}") })
    }

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
        &self.provider
    }

    /// The same cluster with `new_primary` as its primary: the old primary becomes a
    /// standby of it, standbys that streamed from the old primary stream from it, and
    /// cascaded standbys keep their upstream. Synchronous candidates are recomputed from
    /// what the spec asks (an explicit list has the new primary swapped for the old one),
    /// so standbys left out for being fenced count again. Every invariant of [`Cluster`]
    /// still holds: the result is the cluster a spec with that primary validates to.
    /// Fails for an unknown node, or when the old primary's default slot name is already
    /// another standby's slot.
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
        let mut c = self.clone();
        let slots = c.replication.slots;
        for n in &mut c.nodes {
            if n.name == new_primary {
                n.role = Role::Primary;
                n.upstream = None;
                n.slot = None;
            } else {
                n.role = Role::Standby;
                if n.name == old || n.upstream.as_deref() == Some(old.as_str()) {
                    n.upstream = Some(new_primary.to_string());
                }
                if slots && n.slot.is_none() {
                    n.slot = Some(default_slot_name(&n.name));
                }
            }
        }
        // The old primary's default slot name may be taken by another standby's own.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, n) in c.nodes.iter().enumerate() {
            if let Some(s) = n.slot.as_deref() {
                if let Some(j) = seen.insert(s, i) {
                    return Err(SpecErrors::one(SpecError::new(
                        format!("nodes[{i}].slot_name"),
                        format!("slot \"{s}\" is also used by nodes[{j}] (\"{}\")", c.nodes[j].name),
                        "a unique slot name per standby",
                    )));
                }
            }
        }
        if let Some(list) = &mut c.sync_asked.standbys {
            for s in list.iter_mut() {
                if s == new_primary {
                    *s = old.clone();
                }
            }
        }
        let asked = &c.sync_asked;
        let standbys = match &asked.standbys {
            Some(list) => list.clone(),
            None => {
                let mut direct: Vec<&Node> =
                    c.nodes.iter().filter(|n| n.role == Role::Standby && n.upstream.as_deref() == Some(new_primary)).collect();
                direct.sort_by_key(|n| std::cmp::Reverse(n.priority));
                direct.iter().map(|n| n.name.clone()).collect()
            }
        };
        c.replication.sync = Sync { mode: asked.mode, count: asked.count, standbys, commit: asked.commit, strict: asked.strict };
        Ok(c)
    }
}

/// The slot name pgrepl uses for a standby by default.
pub fn default_slot_name(node: &str) -> String {
    format!("pgrepl_{}", node.replace('-', "_"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ClusterSpec, NodeSpec};
    use crate::version::PgMajor;

    /// A 3-node spec (db1, db2, db3) with `primary` as its primary, the given explicit
    /// upstreams, and synchronous replication `mode`/`count` over `sync_list` (implicit
    /// when `None`).
    fn spec(primary: &str, upstreams: &[(&str, &str)], mode: SyncMode, count: u32, sync_list: Option<&[&str]>) -> ClusterSpec {
        let mut b = ClusterSpec::builder("t").postgres(PgMajor::V16);
        for (name, priority) in [("db1", 100), ("db2", 90), ("db3", 100)] {
            let mut n = if name == primary { NodeSpec::primary(name) } else { NodeSpec::standby(name) };
            n = n.with_priority(priority);
            if let Some((_, up)) = upstreams.iter().find(|(d, _)| *d == name) {
                n = n.with_upstream(*up);
            }
            b = b.node(n);
        }
        let mut s = b.sync(mode, count).into_spec();
        s.replication.sync.standbys = sync_list.map(|l| l.iter().map(|n| n.to_string()).collect());
        s
    }

    /// Every combination asked: the cluster `with_primary` gives is the one a spec with
    /// that primary validates to.
    #[test]
    fn with_primary_is_the_cluster_validated_with_that_primary() {
        struct Case {
            what: &'static str,
            from: ClusterSpec,
            to: &'static str,
            expected: ClusterSpec,
        }
        let mut cases = Vec::new();
        for (mode, count) in [(SyncMode::First, 1), (SyncMode::First, 2), (SyncMode::Any, 1), (SyncMode::Any, 2)] {
            // Implicit upstreams and candidates.
            for to in ["db2", "db3"] {
                cases.push(Case {
                    what: "implicit upstreams",
                    from: spec("db1", &[], mode, count, None),
                    to,
                    expected: spec(to, &[], mode, count, None),
                });
            }
            // Explicit upstreams to the primary, explicit candidates: the new primary is
            // swapped for the old one in the list.
            cases.push(Case {
                what: "explicit upstreams and candidates",
                from: spec("db1", &[("db2", "db1"), ("db3", "db1")], mode, count, Some(&["db2", "db3"])),
                to: "db2",
                expected: spec("db2", &[("db1", "db2"), ("db3", "db2")], mode, count, Some(&["db1", "db3"])),
            });
        }
        for (mode, count) in [(SyncMode::First, 1), (SyncMode::Any, 1)] {
            // Cascading: db3 streams from db2. Promoting db2 keeps db3 on it; promoting db3
            // moves db2 (which streamed from the old primary) onto db3.
            cases.push(Case {
                what: "cascading, promote the middle",
                from: spec("db1", &[("db3", "db2")], mode, count, None),
                to: "db2",
                expected: spec("db2", &[("db3", "db2")], mode, count, None),
            });
            cases.push(Case {
                what: "cascading, promote the leaf",
                from: spec("db1", &[("db3", "db2")], mode, count, None),
                to: "db3",
                expected: spec("db3", &[("db1", "db3"), ("db2", "db3")], mode, count, None),
            });
            cases.push(Case {
                what: "cascading, explicit candidates",
                from: spec("db1", &[("db3", "db2")], mode, count, Some(&["db2"])),
                to: "db2",
                expected: spec("db2", &[("db3", "db2")], mode, count, Some(&["db1"])),
            });
        }
        for c in cases {
            let what = format!("{} ({:?} {}, to {})", c.what, c.from.replication.sync.mode, c.from.replication.sync.count, c.to);
            let from = c.from.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
            let expected = c.expected.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
            let moved = from.with_primary(c.to).unwrap();
            assert_eq!(moved, expected, "{what}");
            // And back: the original roles and slots (standbys of the old primary follow the
            // new one, so a cascade is not rebuilt).
            let back = moved.with_primary("db1").unwrap();
            assert_eq!(
                back.nodes.iter().map(|n| (&n.name, n.role, &n.slot)).collect::<Vec<_>>(),
                from.nodes.iter().map(|n| (&n.name, n.role, &n.slot)).collect::<Vec<_>>(),
                "{what}"
            );
        }
    }

    #[test]
    fn with_primary_restores_the_asked_sync_of_a_degraded_cluster() {
        let c = spec("db1", &[], SyncMode::First, 2, None).validate().unwrap();
        let mut degraded = c.clone();
        assert!(exclude_from_sync(&mut degraded, &["db3".into()]).is_some());
        assert_eq!((degraded.replication.sync.count, degraded.replication.sync.standbys.len()), (1, 1));
        let expected = spec("db2", &[], SyncMode::First, 2, None).validate().unwrap();
        assert_eq!(degraded.with_primary("db2").unwrap(), expected);
        // Same primary: unchanged, degraded as it was.
        assert_eq!(degraded.with_primary("db1").unwrap(), degraded);
    }

    #[test]
    fn with_primary_keeps_the_other_fields_and_refuses_what_validation_refuses() {
        let c = spec("db1", &[], SyncMode::Off, 1, None).validate().unwrap();
        let moved = c.with_primary("db3").unwrap();
        assert_eq!((moved.provider(), &moved.replication.password_file), (c.provider(), &c.replication.password_file));
        assert_eq!(c.with_primary("db9").unwrap_err().to_string(), "primary: unknown node \"db9\" (expected one of: db1, db2, db3)");

        // db3's own slot is the name db1 gets by default as a standby: the same error as
        // validating the spec with db2 primary.
        let mut s = spec("db1", &[], SyncMode::Off, 1, None);
        s.nodes[2].slot_name = Some(default_slot_name("db1"));
        let mut moved_spec = spec("db2", &[], SyncMode::Off, 1, None);
        moved_spec.nodes[2].slot_name = Some(default_slot_name("db1"));
        let by_validation = moved_spec.validate().unwrap_err().to_string();
        assert_eq!(s.validate().unwrap().with_primary("db2").unwrap_err().to_string(), by_validation);
    }
}
