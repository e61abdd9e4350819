//! What a cluster's security group lets in, and from where ([`Exposure`]): SSH,
//! PostgreSQL and, with `[ha]`, the agents' and a deployed etcd's ports.

use std::collections::BTreeSet;

use pgrepl_core::cluster::Cluster;

use super::rules::{Rule, Source, cidr_source, desired_rules};

/// etcd's ports, when pgrepl deploys etcd on the cluster's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdPorts {
    /// Clients (agents, the admin's `pgrepl`): `[ha.etcd] client_port`.
    pub client: u16,
    /// Members among themselves: `[ha.etcd] peer_port`.
    pub peer: u16,
}

/// What a cluster's security group lets in, and from where.
///
/// | port | from |
/// |---|---|
/// | SSH | the admin CIDR |
/// | each PostgreSQL port | the group itself, the application CIDRs |
/// | each agent HTTP port (`[ha]`) | the group itself, the admin CIDR (`pgrepl status` reads the agents), the API CIDRs |
/// | etcd client port (`deploy = true`) | the group itself, the admin CIDR (`pgrepl` reads and writes the store) |
/// | etcd peer port (`deploy = true`) | the group itself |
///
/// Never 0.0.0.0/0 unless the spec lists it (as `admin_cidr`, an application or an API CIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// SSH's port.
    pub ssh_port: u16,
    /// Where the admin works from.
    pub admin_cidr: String,
    /// The nodes' PostgreSQL ports.
    pub pg_ports: Vec<u16>,
    /// Application CIDRs (PostgreSQL only).
    pub app_cidrs: Vec<String>,
    /// The agents' HTTP ports; empty without `[ha]`.
    pub agent_ports: Vec<u16>,
    /// API CIDRs (`provider.api_cidrs`: the agents' HTTP port only).
    pub api_cidrs: Vec<String>,
    /// etcd's ports when pgrepl deploys it (`[ha.etcd] deploy = true`).
    pub etcd: Option<EtcdPorts>,
}

impl Exposure {
    /// The exposure of `cluster`: its nodes' PostgreSQL ports; with `[ha]` each agent's
    /// port ([`Cluster::agent_api`], `api_port` for a node without an address yet and for
    /// the witnesses, which run an agent too); with `[ha.etcd] deploy` etcd's two ports.
    pub fn of(cluster: &Cluster, ssh_port: u16, admin_cidr: &str, app_cidrs: &[String], api_cidrs: &[String]) -> Exposure {
        let mut pg_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        pg_ports.sort_unstable();
        pg_ports.dedup();
        let (agent_ports, etcd) = match &cluster.ha {
            None => (Vec::new(), None),
            Some(ha) => {
                let mut ports: Vec<u16> =
                    cluster.nodes.iter().map(|n| cluster.agent_api(&n.name).map_or(ha.api_port, |(_, p)| p)).collect();
                if !cluster.witnesses.is_empty() {
                    ports.push(ha.api_port);
                }
                ports.sort_unstable();
                ports.dedup();
                let etcd = ha.etcd.deploy.then_some(EtcdPorts { client: ha.etcd.client_port, peer: ha.etcd.peer_port });
                (ports, etcd)
            }
        };
        let api_cidrs = if agent_ports.is_empty() { Vec::new() } else { api_cidrs.to_vec() };
        Exposure { ssh_port, admin_cidr: admin_cidr.to_string(), pg_ports, app_cidrs: app_cidrs.to_vec(), agent_ports, api_cidrs, etcd }
    }

    /// The rules the group must have (see the table above), sorted.
    pub fn rules(&self, group_id: &str) -> Vec<Rule> {
        let mut rules: BTreeSet<Rule> =
            desired_rules(group_id, self.ssh_port, &self.admin_cidr, &self.pg_ports, &self.app_cidrs).into_iter().collect();
        let group = || Source::Group(group_id.to_string());
        for &p in &self.agent_ports {
            rules.insert(Rule::tcp(p, group()));
            rules.insert(Rule::tcp(p, cidr_source(&self.admin_cidr)));
            for c in &self.api_cidrs {
                rules.insert(Rule::tcp(p, cidr_source(c)));
            }
        }
        if let Some(e) = self.etcd {
            rules.insert(Rule::tcp(e.client, group()));
            rules.insert(Rule::tcp(e.client, cidr_source(&self.admin_cidr)));
            rules.insert(Rule::tcp(e.peer, group()));
        }
        rules.into_iter().collect()
    }

    /// The ports on which any rule the spec does not ask for is revoked (a hand-added
    /// 0.0.0.0/0 among them), sorted.
    pub fn managed_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.pg_ports.iter().chain(&self.agent_ports).copied().collect();
        ports.push(self.ssh_port);
        if let Some(e) = self.etcd {
            ports.extend([e.client, e.peer]);
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The description pgrepl puts on `rule` when it adds it: what the port is for and
    /// who may use it. Always starts with [`DESCRIPTION_PREFIX`](super::DESCRIPTION_PREFIX),
    /// which marks the rule as pgrepl's (see [`owned_rules_of`](super::owned_rules_of));
    /// only characters EC2 allows in descriptions.
    pub fn description(&self, rule: &Rule) -> &'static str {
        let on = |p: u16| rule.from == i32::from(p) && rule.to == i32::from(p);
        let from_group = matches!(rule.source, Source::Group(_));
        if on(self.ssh_port) {
            "pgrepl: SSH from the admin CIDR"
        } else if self.pg_ports.iter().any(|&p| on(p)) {
            if from_group { "pgrepl: PostgreSQL between the cluster nodes" } else { "pgrepl: PostgreSQL from an application CIDR" }
        } else if self.etcd.is_some_and(|e| on(e.client)) {
            if from_group { "pgrepl: etcd clients on the cluster nodes" } else { "pgrepl: etcd clients from the admin CIDR" }
        } else if self.etcd.is_some_and(|e| on(e.peer)) {
            "pgrepl: etcd peers between the cluster nodes"
        } else if self.agent_ports.iter().any(|&p| on(p)) {
            if from_group {
                "pgrepl: agent HTTP between the cluster nodes"
            } else if rule.source == cidr_source(&self.admin_cidr) {
                "pgrepl: agent HTTP from the admin CIDR"
            } else {
                "pgrepl: agent HTTP from an API CIDR"
            }
        } else {
            "pgrepl: cluster rule"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::DESCRIPTION_PREFIX;
    use crate::mapping::fixtures::{WITNESS, aws_cluster};

    #[test]
    fn exposure_without_ha_opens_no_agent_or_etcd_port() {
        let c = aws_cluster("");
        let e = Exposure::of(&c, 22, "203.0.113.7/32", &[], &["10.2.0.0/16".into()]);
        assert_eq!((e.pg_ports.as_slice(), e.agent_ports.as_slice(), e.etcd), (&[5432][..], &[][..], None));
        assert!(e.api_cidrs.is_empty(), "no agents: the API CIDRs open nothing");
        assert_eq!(e.rules("sg-1"), desired_rules("sg-1", 22, "203.0.113.7/32", &[5432], &[]));
        assert_eq!(e.managed_ports(), [22, 5432]);
    }

    #[test]
    fn exposure_with_ha_and_deployed_etcd_opens_its_ports_to_the_group_and_the_admin_only() {
        let c = aws_cluster(&format!("[ha]\napi_port = 8100\n[ha.etcd]\ndeploy = true\nclient_port = 12379\npeer_port = 12380\n{WITNESS}"));
        let e = Exposure::of(&c, 22, "203.0.113.7/32", &["10.1.0.0/16".into()], &["10.2.0.0/16".into()]);
        assert_eq!(e.agent_ports, [8100], "one instance per node: every agent on api_port, witnesses too");
        assert_eq!(e.etcd, Some(EtcdPorts { client: 12379, peer: 12380 }));
        let rules: BTreeSet<Rule> = e.rules("sg-1").into_iter().collect();
        let g = || Source::Group("sg-1".into());
        let admin = || Source::Cidr("203.0.113.7/32".into());
        let expected: BTreeSet<Rule> = [
            Rule::tcp(22, admin()),
            Rule::tcp(5432, g()),
            Rule::tcp(5432, Source::Cidr("10.1.0.0/16".into())),
            Rule::tcp(8100, g()),
            Rule::tcp(8100, admin()),
            Rule::tcp(8100, Source::Cidr("10.2.0.0/16".into())),
            Rule::tcp(12379, g()),
            Rule::tcp(12379, admin()),
            Rule::tcp(12380, g()),
        ]
        .into();
        assert_eq!(rules, expected);
        assert!(rules.iter().all(|r| !r.is_open_to_world()));
        // Application CIDRs reach PostgreSQL only, API CIDRs the agents only.
        assert!(rules.iter().filter(|r| r.source == Source::Cidr("10.1.0.0/16".into())).all(|r| r.covers(5432) && r.from == 5432));
        assert!(rules.iter().filter(|r| r.source == Source::Cidr("10.2.0.0/16".into())).all(|r| r.covers(8100) && r.from == 8100));
        assert_eq!(e.managed_ports(), [22, 5432, 8100, 12379, 12380]);

        // Every rule's description says what it is, as pgrepl's, in characters EC2 allows.
        let allowed = |c: char| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c);
        let mut seen = BTreeSet::new();
        for r in &rules {
            let d = e.description(r);
            assert!(d.starts_with(DESCRIPTION_PREFIX) && d.chars().all(allowed) && d.len() <= 255, "{d:?}");
            assert!(d != "pgrepl: cluster rule", "{r}: {d}");
            seen.insert(d);
        }
        assert_eq!(seen.len(), rules.len(), "one description per kind of rule: {seen:?}");
        assert!(e.description(&Rule::tcp(12380, g())).contains("etcd peers"));
        assert!(e.description(&Rule::tcp(8100, admin())).contains("agent HTTP from the admin CIDR"));
    }

    #[test]
    fn exposure_with_ha_and_given_etcd_endpoints_opens_only_the_agents() {
        let c = aws_cluster("[ha]\n[ha.etcd]\nendpoints = [\"https://10.9.0.1:2379\"]\n");
        let e = Exposure::of(&c, 22, "203.0.113.7/32", &[], &[]);
        assert_eq!((e.agent_ports.as_slice(), e.etcd), (&[8008][..], None));
        assert!(!e.rules("sg-1").iter().any(|r| r.covers(2379) || r.covers(2380)));
    }
}
