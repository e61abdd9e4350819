//! Security group rules: flattened to one source each, read from and written as EC2
//! permissions, and compared with what the spec asks for.

use std::collections::BTreeSet;
use std::fmt;

use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range, PrefixListId, UserIdGroupPair};

// ---------------------------------------------------------------------------------------
// Security group rules

/// Where traffic may come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// An IPv4 CIDR.
    Cidr(String),
    /// An IPv6 CIDR.
    Cidr6(String),
    /// Another (or the same) security group.
    Group(String),
    /// A managed prefix list.
    PrefixList(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cidr(c) | Source::Cidr6(c) => f.write_str(c),
            Source::Group(g) => write!(f, "security group {g}"),
            Source::PrefixList(p) => write!(f, "prefix list {p}"),
        }
    }
}

/// One ingress rule, flattened: a protocol, a port range and one source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// `tcp`, `udp`, `-1` (all).
    pub protocol: String,
    /// First port (-1 for all).
    pub from: i32,
    /// Last port.
    pub to: i32,
    /// Where from.
    pub source: Source,
}

impl Rule {
    /// TCP on one port.
    pub fn tcp(port: u16, source: Source) -> Rule {
        Rule { protocol: "tcp".into(), from: port.into(), to: port.into(), source }
    }

    /// Whether the rule lets traffic reach `port`.
    pub fn covers(&self, port: u16) -> bool {
        let p = i32::from(port);
        self.protocol == "-1" || (self.from <= p && p <= self.to) || self.from == -1
    }

    /// Whether the source is the whole internet.
    pub fn is_open_to_world(&self) -> bool {
        matches!(&self.source, Source::Cidr(c) if c == "0.0.0.0/0") || matches!(&self.source, Source::Cidr6(c) if c == "::/0")
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}/{} from {}", self.protocol, self.from, self.source)
        } else {
            write!(f, "{}/{}-{} from {}", self.protocol, self.from, self.to, self.source)
        }
    }
}

pub(super) fn cidr_source(cidr: &str) -> Source {
    if cidr.contains(':') { Source::Cidr6(cidr.to_string()) } else { Source::Cidr(cidr.to_string()) }
}

/// The rules a cluster's group must have: SSH only from the admin CIDR; each PostgreSQL
/// port from the group itself (the cluster's nodes) and from the application CIDRs. No
/// 0.0.0.0/0 unless the user listed it as an application CIDR.
pub fn desired_rules(group_id: &str, ssh_port: u16, admin_cidr: &str, pg_ports: &[u16], app_cidrs: &[String]) -> Vec<Rule> {
    let mut rules = BTreeSet::new();
    rules.insert(Rule::tcp(ssh_port, cidr_source(admin_cidr)));
    for &p in pg_ports {
        rules.insert(Rule::tcp(p, Source::Group(group_id.to_string())));
        for c in app_cidrs {
            rules.insert(Rule::tcp(p, cidr_source(c)));
        }
    }
    rules.into_iter().collect()
}

/// How every rule description pgrepl writes begins: a rule whose description begins so
/// is pgrepl's to revoke when the spec no longer asks for it.
pub const DESCRIPTION_PREFIX: &str = "pgrepl:";

/// The ingress rules of a group, flattened to one source each.
pub fn rules_of(permissions: &[IpPermission]) -> Vec<Rule> {
    flatten(permissions, |_| true)
}

/// The ingress rules pgrepl added to a group: those whose description starts with
/// [`DESCRIPTION_PREFIX`].
pub fn owned_rules_of(permissions: &[IpPermission]) -> Vec<Rule> {
    flatten(permissions, |d| d.is_some_and(|d| d.starts_with(DESCRIPTION_PREFIX)))
}

/// The description `rule` carries in a group's `permissions`, if any. Revoking with it
/// matches the rule exactly (EC2 ignores it; moto compares a group source with it).
pub fn description_of(rule: &Rule, permissions: &[IpPermission]) -> Option<String> {
    let mut found = None;
    visit(permissions, |r, d| {
        if found.is_none() && r == *rule {
            found = d.map(str::to_string);
        }
    });
    found
}

fn flatten(permissions: &[IpPermission], keep: impl Fn(Option<&str>) -> bool) -> Vec<Rule> {
    let mut out = Vec::new();
    visit(permissions, |r, d| {
        if keep(d) {
            out.push(r)
        }
    });
    out.sort();
    out.dedup();
    out
}

/// Calls `f` with every (rule, description) of `permissions`, one source at a time.
fn visit(permissions: &[IpPermission], mut f: impl FnMut(Rule, Option<&str>)) {
    for p in permissions {
        let protocol = p.ip_protocol().unwrap_or("-1").to_string();
        let from = p.from_port().unwrap_or(-1);
        let to = p.to_port().unwrap_or(-1);
        let mut push = |source, description: Option<&str>| f(Rule { protocol: protocol.clone(), from, to, source }, description);
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip() {
                push(Source::Cidr(c.to_string()), r.description());
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(c) = r.cidr_ipv6() {
                push(Source::Cidr6(c.to_string()), r.description());
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                push(Source::Group(id.to_string()), g.description());
            }
        }
        for l in p.prefix_list_ids() {
            if let Some(id) = l.prefix_list_id() {
                push(Source::PrefixList(id.to_string()), l.description());
            }
        }
    }
}

/// What to authorize and what to revoke.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// Desired rules the group lacks.
    pub add: Vec<Rule>,
    /// Rules on ports pgrepl manages that the spec does not ask for (an old application
    /// CIDR, a hand-added 0.0.0.0/0). Rules on other ports are left alone.
    pub remove: Vec<Rule>,
}

impl RuleDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Compares a group's rules with the desired ones, on `managed_ports` only.
pub fn diff_rules(desired: &[Rule], existing: &[Rule], managed_ports: &[u16]) -> RuleDiff {
    let add = desired.iter().filter(|d| !existing.contains(d)).cloned().collect();
    let remove = existing.iter().filter(|e| !desired.contains(e)).filter(|e| managed_ports.iter().any(|&p| e.covers(p))).cloned().collect();
    RuleDiff { add, remove }
}

/// What brings a group in line with the spec: [`diff_rules`] on `managed_ports`, plus
/// revoking the rules pgrepl added (`owned`, see [`owned_rules_of`]) that the spec no
/// longer asks for on any port (an etcd port after `[ha]` is gone, an old PostgreSQL
/// port). Rules someone else added on other ports are left alone.
pub fn reconcile_rules(desired: &[Rule], existing: &[Rule], owned: &[Rule], managed_ports: &[u16]) -> RuleDiff {
    let mut d = diff_rules(desired, existing, managed_ports);
    for o in owned {
        if existing.contains(o) && !desired.contains(o) && !d.remove.contains(o) {
            d.remove.push(o.clone());
        }
    }
    d.remove.sort();
    d
}

/// A rule as an EC2 permission (with a description when adding).
pub fn permission(rule: &Rule, description: Option<&str>) -> IpPermission {
    let b = IpPermission::builder().ip_protocol(&rule.protocol).from_port(rule.from).to_port(rule.to);
    match &rule.source {
        Source::Cidr(c) => b.ip_ranges(IpRange::builder().cidr_ip(c).set_description(description.map(str::to_string)).build()),
        Source::Cidr6(c) => b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).set_description(description.map(str::to_string)).build()),
        Source::Group(g) => {
            b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).set_description(description.map(str::to_string)).build())
        }
        Source::PrefixList(p) => {
            b.prefix_list_ids(PrefixListId::builder().prefix_list_id(p).set_description(description.map(str::to_string)).build())
        }
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixtures::exposure;

    #[test]
    fn rules_allow_ssh_only_from_admin_and_postgres_only_from_the_group_and_apps() {
        let rules = desired_rules("sg-1", 22, "203.0.113.7/32", &[5432], &["10.1.0.0/16".into(), "2001:db8::/32".into()]);
        assert!(rules.contains(&Rule::tcp(22, Source::Cidr("203.0.113.7/32".into()))));
        assert!(rules.contains(&Rule::tcp(5432, Source::Group("sg-1".into()))));
        assert!(rules.contains(&Rule::tcp(5432, Source::Cidr("10.1.0.0/16".into()))));
        assert!(rules.contains(&Rule::tcp(5432, Source::Cidr6("2001:db8::/32".into()))));
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| !r.is_open_to_world()));
        let ssh: Vec<_> = rules.iter().filter(|r| r.covers(22)).collect();
        assert_eq!(ssh.len(), 1);
        // Nodes on other ports get a rule per port.
        let multi = desired_rules("sg-1", 2222, "198.51.100.0/24", &[5432, 5433], &[]);
        assert_eq!(multi.len(), 3);
        assert!(multi.contains(&Rule::tcp(2222, Source::Cidr("198.51.100.0/24".into()))));
        assert!(multi.contains(&Rule::tcp(5433, Source::Group("sg-1".into()))));
    }

    #[test]
    fn rule_diff_adds_missing_and_revokes_strays_on_managed_ports_only() {
        let desired = desired_rules("sg-1", 22, "203.0.113.7/32", &[5432], &[]);
        let existing_perms = vec![
            permission(&Rule::tcp(22, Source::Cidr("0.0.0.0/0".into())), None),
            permission(&Rule::tcp(5432, Source::Group("sg-1".into())), Some("x")),
            permission(&Rule::tcp(9100, Source::Cidr("10.0.0.0/8".into())), None),
            IpPermission::builder().ip_protocol("-1").ip_ranges(IpRange::builder().cidr_ip("192.0.2.0/24").build()).build(),
        ];
        let existing = rules_of(&existing_perms);
        assert_eq!(existing.len(), 4);
        let d = diff_rules(&desired, &existing, &[22, 5432]);
        assert_eq!(d.add, vec![Rule::tcp(22, Source::Cidr("203.0.113.7/32".into()))]);
        let removed: Vec<String> = d.remove.iter().map(|r| r.to_string()).collect();
        assert!(removed.contains(&"tcp/22 from 0.0.0.0/0".to_string()), "{removed:?}");
        assert!(removed.iter().any(|r| r.contains("192.0.2.0/24")), "all-traffic rule covers 5432: {removed:?}");
        assert!(!removed.iter().any(|r| r.contains("9100")), "other ports are left alone");
        // In sync: nothing to do.
        let now = rules_of(&desired.iter().map(|r| permission(r, None)).collect::<Vec<_>>());
        assert!(diff_rules(&desired, &now, &[22, 5432]).is_empty());
    }

    #[test]
    fn permissions_round_trip() {
        for r in [
            Rule::tcp(22, Source::Cidr("203.0.113.7/32".into())),
            Rule::tcp(5432, Source::Cidr6("2001:db8::/32".into())),
            Rule::tcp(5432, Source::Group("sg-9".into())),
            Rule::tcp(5432, Source::PrefixList("pl-1".into())),
        ] {
            let described = [permission(&r, Some(exposure().description(&r)))];
            assert_eq!(rules_of(&described), vec![r.clone()]);
            assert_eq!(owned_rules_of(&described), vec![r.clone()], "pgrepl's description marks it as pgrepl's");
            assert!(owned_rules_of(&[permission(&r, Some("added by hand"))]).is_empty());
            assert!(owned_rules_of(&[permission(&r, None)]).is_empty());
            assert_eq!(description_of(&r, &described).as_deref(), Some(exposure().description(&r)));
            assert_eq!(description_of(&Rule::tcp(1, Source::Cidr("192.0.2.1/32".into())), &described), None);
        }
    }

    #[test]
    fn reconcile_revokes_what_pgrepl_added_and_no_longer_wants_on_any_port() {
        let g = || Source::Group("sg-1".into());
        let desired = exposure().rules("sg-1");
        // The group as [ha] left it, plus a rule of the user's on 9100 and one by hand on 5432.
        let mut existing: Vec<Rule> = desired.clone();
        let old_etcd = [Rule::tcp(2379, g()), Rule::tcp(2379, Source::Cidr("203.0.113.7/32".into())), Rule::tcp(2380, g())];
        existing.extend(old_etcd.iter().cloned());
        existing.push(Rule::tcp(9100, Source::Cidr("10.0.0.0/8".into())));
        existing.push(Rule::tcp(5432, Source::Cidr("0.0.0.0/0".into())));
        let owned: Vec<Rule> = desired.iter().chain(&old_etcd).cloned().collect();
        let d = reconcile_rules(&desired, &existing, &owned, &exposure().managed_ports());
        assert!(d.add.is_empty(), "{d:?}");
        let mut want: Vec<Rule> = old_etcd.to_vec();
        want.push(Rule::tcp(5432, Source::Cidr("0.0.0.0/0".into())));
        want.sort();
        assert_eq!(d.remove, want, "pgrepl's old etcd rules and the hand-added 0.0.0.0/0; the user's 9100 stays");
        // An owned rule that is already gone is not revoked twice; in sync: nothing.
        assert!(reconcile_rules(&desired, &desired, &owned, &exposure().managed_ports()).is_empty());
    }
}
