//! Where hosts go: the cluster's machines (nodes, then witnesses) and their subnets, in
//! the availability zone of their location or spread over the zones.

use std::collections::BTreeSet;
use std::fmt;

use pgrepl_core::cluster::Cluster;
use pgrepl_core::spec::Role;

// ---------------------------------------------------------------------------------------
// Availability zones

/// A subnet a node may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChoice {
    /// Subnet id.
    pub id: String,
    /// Its availability zone.
    pub az: String,
}

/// Orders subnets so that consecutive nodes land in different zones: zones in order of
/// first appearance, then one subnet of each zone in turn (the first subnet of every zone,
/// then the second, ...). Node `i` goes to `order[i % order.len()]`.
pub fn spread_order(subnets: &[SubnetChoice]) -> Vec<SubnetChoice> {
    let mut zones: Vec<(&str, Vec<&SubnetChoice>)> = Vec::new();
    for s in subnets {
        match zones.iter_mut().find(|(az, _)| *az == s.az) {
            Some((_, v)) => {
                if !v.iter().any(|x| x.id == s.id) {
                    v.push(s)
                }
            }
            None => zones.push((&s.az, vec![s])),
        }
    }
    let depth = zones.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for k in 0..depth {
        for (_, v) in &zones {
            if let Some(s) = v.get(k) {
                out.push((*s).clone());
            }
        }
    }
    out
}

/// The subnet of the `index`-th node of the cluster.
pub fn subnet_for(index: usize, order: &[SubnetChoice]) -> Option<&SubnetChoice> {
    if order.is_empty() { None } else { order.get(index % order.len()) }
}

/// One host of the cluster as the provider sees it: a data node or a witness, each with
/// an instance of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The node's name (the `pgrepl:node` tag).
    pub name: String,
    /// `primary`, `standby` or `witness` (the `pgrepl:role` tag).
    pub role: String,
    /// The node's `location`, if any.
    pub location: Option<String>,
    /// A witness: an etcd member and an agent, no PostgreSQL.
    pub witness: bool,
}

/// The hosts of a cluster: its data nodes in spec order, then its witnesses in spec order.
pub fn machines(cluster: &Cluster) -> Vec<Machine> {
    let nodes = cluster.nodes.iter().map(|n| Machine {
        name: n.name.clone(),
        role: n.role.to_string(),
        location: n.location.clone(),
        witness: false,
    });
    let witnesses = cluster.witnesses.iter().map(|w| Machine {
        name: w.name.clone(),
        role: Role::Witness.to_string(),
        location: w.location.clone(),
        witness: true,
    });
    nodes.chain(witnesses).collect()
}

/// Why a host has no subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// There is no subnet at all.
    NoSubnet,
    /// No subnet is in the zone the host's location asks for.
    NoSubnetInZone {
        /// The host.
        node: String,
        /// Its zone.
        zone: String,
        /// The zones there are subnets in.
        zones: Vec<String>,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NoSubnet => f.write_str("no subnet to launch into"),
            PlacementError::NoSubnetInZone { node, zone, zones } => write!(
                f,
                "node {node} goes to availability zone {zone} (its location), but no subnet pgrepl may use is there (subnets are in: {}); add a subnet of {zone} to provider.subnet_ids, or map the location to one of those zones",
                if zones.is_empty() { "none".to_string() } else { zones.join(", ") }
            ),
        }
    }
}

/// The subnet of each host, in the order given: a host with a zone (from its location)
/// goes to a subnet of that zone (hosts sharing a zone take its subnets in turn); a host
/// without goes to `order[i % len]` as [`subnet_for`] says, `i` its index in `hosts`.
pub fn place(hosts: &[(&str, Option<&str>)], order: &[SubnetChoice]) -> Result<Vec<SubnetChoice>, PlacementError> {
    if order.is_empty() {
        return Err(PlacementError::NoSubnet);
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, (node, zone)) in hosts.iter().enumerate() {
        let chosen = match zone {
            None => subnet_for(i, order).cloned().ok_or(PlacementError::NoSubnet)?,
            Some(zone) => {
                let in_zone: Vec<&SubnetChoice> = order.iter().filter(|s| s.az == *zone).collect();
                if in_zone.is_empty() {
                    let zones: BTreeSet<String> = order.iter().map(|s| s.az.clone()).collect();
                    return Err(PlacementError::NoSubnetInZone {
                        node: node.to_string(),
                        zone: zone.to_string(),
                        zones: zones.into_iter().collect(),
                    });
                }
                let before = hosts[..i].iter().filter(|(_, z)| z == &Some(*zone)).count();
                in_zone[before % in_zone.len()].clone()
            }
        };
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixtures::{WITNESS, aws_cluster};

    fn sn(id: &str, az: &str) -> SubnetChoice {
        SubnetChoice { id: id.into(), az: az.into() }
    }

    #[test]
    fn nodes_spread_over_zones() {
        let order = spread_order(&[sn("s-a1", "a"), sn("s-a2", "a"), sn("s-b1", "b"), sn("s-c1", "c")]);
        let ids: Vec<_> = order.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s-a1", "s-b1", "s-c1", "s-a2"]);
        let zones: Vec<_> = (0..3).map(|i| subnet_for(i, &order).unwrap().az.clone()).collect();
        assert_eq!(zones, ["a", "b", "c"]);
        assert_eq!(subnet_for(3, &order).unwrap().id, "s-a2");
        assert_eq!(subnet_for(5, &order).unwrap().id, "s-b1");
        // Two subnets, three nodes: a, b, a.
        let two = spread_order(&[sn("x", "z1"), sn("y", "z2")]);
        let z: Vec<_> = (0..3).map(|i| subnet_for(i, &two).unwrap().id.clone()).collect();
        assert_eq!(z, ["x", "y", "x"]);
        // Duplicates collapse; empty gives none.
        assert_eq!(spread_order(&[sn("x", "z1"), sn("x", "z1")]).len(), 1);
        assert!(subnet_for(0, &[]).is_none());
    }

    #[test]
    fn machines_are_the_nodes_then_the_witnesses() {
        let c = aws_cluster(&format!("[ha]\n[ha.etcd]\ndeploy = true\n{WITNESS}"));
        let m = machines(&c);
        let names: Vec<(&str, &str, Option<&str>, bool)> =
            m.iter().map(|m| (m.name.as_str(), m.role.as_str(), m.location.as_deref(), m.witness)).collect();
        assert_eq!(
            names,
            [
                ("db1", "primary", Some("east"), false),
                ("db2", "standby", Some("east"), false),
                ("db3", "standby", Some("west"), false),
                ("db4", "standby", Some("west"), false),
                ("w1", "witness", Some("third"), true),
            ]
        );
    }

    #[test]
    fn hosts_go_to_their_zone_and_share_its_subnets_in_turn() {
        let order = spread_order(&[sn("s-a1", "za"), sn("s-a2", "za"), sn("s-b1", "zb"), sn("s-c1", "zc")]);
        let hosts = [("db1", Some("za")), ("db2", Some("za")), ("db3", Some("zb")), ("db4", Some("za")), ("w", Some("zc"))];
        let placed: Vec<String> = place(&hosts, &order).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(placed, ["s-a1", "s-a2", "s-b1", "s-a1", "s-c1"]);
        // Without locations: spread as before, by index.
        let free = [("db1", None), ("db2", None), ("db3", None), ("w", None)];
        let placed: Vec<String> = place(&free, &order).unwrap().into_iter().map(|s| s.az).collect();
        assert_eq!(placed, ["za", "zb", "zc", "za"]);
        // A zone with no subnet: named, with the zones there are.
        let e = place(&[("db1", Some("za")), ("w", Some("zd"))], &order).unwrap_err();
        assert_eq!(
            e,
            PlacementError::NoSubnetInZone { node: "w".into(), zone: "zd".into(), zones: vec!["za".into(), "zb".into(), "zc".into()] }
        );
        let text = e.to_string();
        assert!(text.contains("node w") && text.contains("zone zd") && text.contains("za, zb, zc"), "{text}");
        assert_eq!(place(&free, &[]).unwrap_err(), PlacementError::NoSubnet);
    }
}
