//! Locations, witnesses and the etcd members pgrepl deploys: the checks of the spec that
//! concern them (pure; [`check`] is called by validation with the data nodes already
//! checked), and what the loss of one location would do ([`loss_report`]).
//!
//! The rules: a `role = "witness"` node holds an etcd member and an agent but no
//! PostgreSQL, so it needs `[ha]` with `etcd.deploy`, its own address, and none of a data
//! node's fields. Locations are all or nothing: when one node names a location, every
//! node does. The etcd members pgrepl deploys are 3 or 5 (an odd number: an even one adds
//! no tolerance), and with three locations or more no single location may hold a
//! majority of them, or its loss would stop every decision.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{ClusterSpec, ProviderSpec, Role};
use crate::spec_error::SpecError;

/// A witness: an etcd member and an agent, no PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Witness {
    /// Name, unique among all nodes.
    pub name: String,
    /// Its address (SSH: required; AWS: assigned by the provider).
    pub address: Option<String>,
    /// SSH host when it differs from the address.
    pub ssh_host: Option<String>,
    /// Its location.
    pub location: Option<String>,
}

/// The witnesses and etcd members the spec describes, once checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checked {
    /// The witnesses, in spec order.
    pub witnesses: Vec<Witness>,
    /// With `[ha.etcd] deploy`: the nodes that hold a member, in spec order.
    pub etcd_members: Vec<String>,
}

/// Member counts pgrepl deploys.
pub const MEMBER_COUNTS: [usize; 2] = [3, 5];

/// Checks what concerns witnesses, locations and deployed etcd members. `spec.nodes`
/// holds every node (witnesses too); errors name fields by their index there.
pub fn check(spec: &ClusterSpec) -> Result<Checked, Vec<SpecError>> {
    let mut errs = Vec::new();
    let mut err = |field: String, problem: String, expected: &str| errs.push(SpecError::new(field, problem, expected));
    let deploy = spec.ha.as_ref().is_some_and(|h| h.etcd.deploy);
    let mut witnesses = Vec::new();
    for (i, n) in spec.nodes.iter().enumerate().filter(|(_, n)| n.role == Role::Witness) {
        if spec.ha.is_none() {
            err(
                format!("nodes[{i}].role"),
                format!("\"{}\" is a witness but the cluster has no [ha]", n.name),
                "[ha] with etcd.deploy = true",
            );
        } else if !deploy {
            err(
                format!("nodes[{i}].role"),
                format!("\"{}\" is a witness but pgrepl does not deploy etcd (the etcd endpoints are given)", n.name),
                "[ha.etcd] deploy = true (a witness holds an etcd member), or no witness",
            );
        }
        if matches!(spec.provider, ProviderSpec::Local(_)) {
            err(
                format!("nodes[{i}].role"),
                format!("\"{}\" is a witness on the local provider", n.name),
                "a witness on a host of its own (SSH or AWS provider)",
            );
        }
        let unused: [(&str, bool); 5] = [
            ("port", n.port.is_some()),
            ("upstream", n.upstream.is_some()),
            ("priority", n.priority.is_some()),
            ("slot_name", n.slot_name.is_some()),
            ("settings", !n.settings.is_empty()),
        ];
        for (field, set) in unused {
            if set {
                err(format!("nodes[{i}].{field}"), format!("set on the witness \"{}\", which runs no PostgreSQL", n.name), "nothing");
            }
        }
        if matches!(spec.provider, ProviderSpec::Ssh(_)) && n.address.is_none() {
            err(format!("nodes[{i}].address"), "missing".into(), "the witness host's address (SSH provider)");
        }
        witnesses.push(Witness {
            name: n.name.clone(),
            address: n.address.clone(),
            ssh_host: n.ssh_host.clone(),
            location: n.location.clone(),
        });
    }

    // Locations: all or none, and well formed.
    let with: Vec<usize> = spec.nodes.iter().enumerate().filter(|(_, n)| n.location.is_some()).map(|(i, _)| i).collect();
    if !with.is_empty() {
        for (i, n) in spec.nodes.iter().enumerate() {
            match &n.location {
                None => err(
                    format!("nodes[{i}].location"),
                    format!("missing on \"{}\" while other nodes name theirs", n.name),
                    "a location on every node, or on none",
                ),
                Some(l) if !valid_location(l) => {
                    err(format!("nodes[{i}].location"), format!("\"{l}\""), "letters, digits, '-', '_' and '.', 1 to 64 characters")
                }
                _ => {}
            }
        }
    }

    // etcd members pgrepl deploys.
    let mut etcd_members = Vec::new();
    if let Some(h) = spec.ha.as_ref().filter(|h| h.etcd.deploy) {
        if matches!(spec.provider, ProviderSpec::Local(_)) {
            err(
                "ha.etcd.deploy".into(),
                "the local provider does not deploy etcd".into(),
                "etcd endpoints (scripts/lab/etcd.sh starts a local etcd)",
            );
        }
        if !h.etcd.endpoints.is_empty() {
            err(
                "ha.etcd.endpoints".into(),
                "set together with deploy = true".into(),
                "either endpoints (an etcd you run) or deploy = true",
            );
        }
        for (field, set) in
            [("ca_file", h.etcd.ca_file.is_some()), ("cert_file", h.etcd.cert_file.is_some()), ("key_file", h.etcd.key_file.is_some())]
        {
            if set {
                err(
                    format!("ha.etcd.{field}"),
                    "set together with deploy = true".into(),
                    "nothing: pgrepl generates the CA and the certificates",
                );
            }
        }
        if h.etcd.client_port == 0 || h.etcd.peer_port == 0 || h.etcd.client_port == h.etcd.peer_port {
            err(
                "ha.etcd.peer_port".into(),
                format!("client_port {} and peer_port {}", h.etcd.client_port, h.etcd.peer_port),
                "two different ports, 1-65535 (default 2379 and 2380)",
            );
        }
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        etcd_members = match &h.etcd.members {
            Some(m) => {
                for (k, name) in m.iter().enumerate() {
                    if !names.contains(&name.as_str()) {
                        err(format!("ha.etcd.members[{k}]"), format!("unknown node \"{name}\""), &format!("one of: {}", names.join(", ")));
                    } else if m[..k].contains(name) {
                        err(format!("ha.etcd.members[{k}]"), format!("\"{name}\" twice"), "each node at most once");
                    }
                }
                m.clone()
            }
            None => default_members(spec),
        };
        if !MEMBER_COUNTS.contains(&etcd_members.len()) {
            err(
                "ha.etcd.members".into(),
                format!("{} members ({})", etcd_members.len(), etcd_members.join(", ")),
                "3 or 5 etcd members (an odd number: a majority must survive a loss); add a witness or name them",
            );
        } else if let Some(r) = loss_report(spec, &etcd_members) {
            if r.locations >= 3 {
                if let Some((loc, n)) = r.majority_location() {
                    err(
                        "ha.etcd.members".into(),
                        format!("location \"{loc}\" holds {n} of {} members: its loss would stop every failover", r.members),
                        "no location with a majority of the members (spread them, or add a witness in another location)",
                    );
                }
            }
        }
    }
    if errs.is_empty() { Ok(Checked { witnesses, etcd_members }) } else { Err(errs) }
}

/// The default members: every node when their number is odd, else every node but the
/// last data node.
fn default_members(spec: &ClusterSpec) -> Vec<String> {
    let mut all: Vec<&crate::spec::NodeSpec> = spec.nodes.iter().collect();
    if all.len().is_multiple_of(2) {
        if let Some(k) = all.iter().rposition(|n| n.role != Role::Witness) {
            all.remove(k);
        }
    }
    all.iter().map(|n| n.name.clone()).collect()
}

fn valid_location(l: &str) -> bool {
    (1..=64).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How the etcd members spread over the locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossReport {
    /// Members per location, by name.
    pub per_location: BTreeMap<String, usize>,
    /// Members in all.
    pub members: usize,
    /// Locations of the cluster (data nodes and witnesses), members or not.
    pub locations: usize,
}

impl LossReport {
    /// The location holding a majority of the members, if one does.
    pub fn majority_location(&self) -> Option<(&str, usize)> {
        self.per_location.iter().find(|(_, n)| **n * 2 > self.members).map(|(l, n)| (l.as_str(), *n))
    }

    /// One line per location: what its loss does.
    pub fn lines(&self) -> Vec<String> {
        let quorum = self.members / 2 + 1;
        self.per_location
            .iter()
            .map(|(l, n)| {
                let left = self.members - n;
                if left >= quorum {
                    format!("losing {l} ({n} of {} etcd members) leaves {left}: a majority, failover goes on", self.members)
                } else {
                    format!(
                        "losing {l} ({n} of {} etcd members) leaves {left}, fewer than the {quorum} needed: \
                         no failover anywhere until it is back (primaries stop writes when their lease runs out)",
                        self.members
                    )
                }
            })
            .collect()
    }
}

/// The spread of `members` over the nodes' locations (`None`: no locations named).
pub fn loss_report(spec: &ClusterSpec, members: &[String]) -> Option<LossReport> {
    let loc = |name: &str| spec.nodes.iter().find(|n| n.name == name).and_then(|n| n.location.clone());
    let mut per_location: BTreeMap<String, usize> = BTreeMap::new();
    for n in &spec.nodes {
        if let Some(l) = &n.location {
            per_location.entry(l.clone()).or_default();
        }
    }
    if per_location.is_empty() {
        return None;
    }
    let locations = per_location.len();
    for m in members {
        if let Some(l) = loc(m) {
            *per_location.entry(l).or_default() += 1;
        }
    }
    Some(LossReport { per_location, members: members.len(), locations })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ClusterSpec {
        toml::from_str(text).unwrap()
    }

    const HEAD: &str = "name = \"geo\"\npostgres = \"15\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\n[ha]\n[ha.etcd]\ndeploy = true\n";

    fn node(name: &str, role: &str, addr: &str, loc: &str) -> String {
        format!("[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\naddress = \"{addr}\"\nlocation = \"{loc}\"\n")
    }

    fn geo(extra_members: Option<&str>) -> String {
        let mut s = HEAD.to_string();
        if let Some(m) = extra_members {
            s.push_str(&format!("members = {m}\n"));
        }
        s + &node("d", "primary", "10.0.0.1", "east")
            + &node("e", "standby", "10.0.0.2", "east")
            + &node("f", "standby", "10.0.0.3", "west")
            + &node("g", "standby", "10.0.0.4", "west")
            + &node("w", "witness", "10.0.0.5", "third")
    }

    #[test]
    fn two_locations_and_a_witness_hold_five_members_none_with_a_majority() {
        let c = check(&spec(&geo(None))).unwrap();
        assert_eq!(c.etcd_members, ["d", "e", "f", "g", "w"]);
        assert_eq!(c.witnesses.len(), 1);
        assert_eq!(c.witnesses[0].location.as_deref(), Some("third"));
        let r = loss_report(&spec(&geo(None)), &c.etcd_members).unwrap();
        assert_eq!(r.majority_location(), None);
        assert!(r.lines().iter().all(|l| l.contains("failover goes on")), "{:?}", r.lines());
    }

    #[test]
    fn a_location_with_a_majority_of_members_is_refused_with_three_locations() {
        let errs = check(&spec(&geo(Some("[\"d\", \"e\", \"w\"]")))).unwrap_err();
        assert!(errs.iter().any(|e| e.field == "ha.etcd.members" && e.problem.contains("\"east\" holds 2 of 3")), "{errs:?}");
    }

    #[test]
    fn even_and_too_few_members_are_refused() {
        let errs = check(&spec(&geo(Some("[\"d\", \"e\", \"f\", \"w\"]")))).unwrap_err();
        assert!(errs.iter().any(|e| e.field == "ha.etcd.members" && e.problem.starts_with("4 members")), "{errs:?}");
        let errs = check(&spec(&geo(Some("[\"d\", \"x\", \"w\"]")))).unwrap_err();
        assert!(errs.iter().any(|e| e.field == "ha.etcd.members[1]" && e.problem.contains("unknown node \"x\"")), "{errs:?}");
    }

    #[test]
    fn four_nodes_default_to_three_members_leaving_out_the_last_data_node() {
        let s = HEAD.to_string()
            + &node("a", "primary", "10.0.0.1", "x")
            + &node("b", "standby", "10.0.0.2", "y")
            + &node("c", "standby", "10.0.0.3", "z")
            + &node("w", "witness", "10.0.0.5", "z");
        assert_eq!(check(&spec(&s)).unwrap().etcd_members, ["a", "b", "w"]);
    }

    #[test]
    fn two_locations_say_what_losing_the_bigger_one_does() {
        let s = HEAD.to_string()
            + &node("a", "primary", "10.0.0.1", "east")
            + &node("b", "standby", "10.0.0.2", "east")
            + &node("c", "standby", "10.0.0.3", "west");
        let sp = spec(&s);
        let c = check(&sp).unwrap();
        let r = loss_report(&sp, &c.etcd_members).unwrap();
        assert_eq!(r.majority_location(), Some(("east", 2)));
        let lines = r.lines();
        assert!(lines[0].starts_with("losing east (2 of 3 etcd members) leaves 1, fewer than the 2 needed"), "{lines:?}");
        assert!(lines[1].contains("failover goes on"), "{lines:?}");
    }

    #[test]
    fn witness_fields_and_partial_locations_are_named() {
        let mut s = geo(None);
        s = s.replace("name = \"w\"\nrole = \"witness\"", "name = \"w\"\nrole = \"witness\"\nport = 5432\npriority = 3");
        s = s.replace("location = \"west\"\n[[nodes]]\nname = \"g\"", "[[nodes]]\nname = \"g\"");
        let errs = check(&spec(&s)).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"nodes[4].port") && fields.contains(&"nodes[4].priority"), "{errs:?}");
        assert!(errs.iter().any(|e| e.field == "nodes[2].location" && e.problem.contains("missing on \"f\"")), "{errs:?}");
    }

    #[test]
    fn a_witness_needs_deployed_etcd() {
        let s = geo(None).replace("deploy = true", "endpoints = [\"https://10.0.0.9:2379\"]");
        let errs = check(&spec(&s)).unwrap_err();
        assert!(errs.iter().any(|e| e.field == "nodes[4].role" && e.expected.contains("deploy = true")), "{errs:?}");
    }
}
