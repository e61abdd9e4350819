//! Pure mapping between pgrepl and EC2: names and tags, security group rules (with
//! `[ha]`: the agents' and etcd's ports, see [`Exposure`]), AMI choice, placing nodes and
//! witnesses in availability zones (by location, or spread), client tokens,
//! instance → host, and SDK errors → [`ProviderError`].
//!
//! Nothing here talks to AWS, sleeps or reads files, so every rule is unit-tested below;
//! `provider.rs` sends what this module builds.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Image, Instance, IpPermission, IpRange, Ipv6Range, PrefixListId, Tag, UserIdGroupPair};
use pgrepl_core::cluster::Cluster;
use pgrepl_core::provider::Host;
use pgrepl_core::spec::Role;

use crate::error::{AwsError, BoxError, ProviderError};

/// Tag holding the cluster name on everything pgrepl creates.
pub const TAG_CLUSTER: &str = "pgrepl:cluster";
/// Tag holding the node name on instances (and their volumes).
pub const TAG_NODE: &str = "pgrepl:node";
/// Tag holding the node's role in the spec (`primary`, `standby`) at creation.
pub const TAG_ROLE: &str = "pgrepl:role";
/// The console's name tag.
pub const TAG_NAME: &str = "Name";

/// Default instance type.
pub const DEFAULT_INSTANCE_TYPE: &str = "t4g.small";
/// Default root volume size, GiB.
pub const DEFAULT_VOLUME_GB: u32 = 20;
/// Default root volume type.
pub const DEFAULT_VOLUME_TYPE: &str = "gp3";
/// Canonical's AWS account: the owner of the official Ubuntu AMIs.
pub const CANONICAL_OWNER: &str = "099720109477";
/// Name pattern of Canonical's Ubuntu server AMIs (both `hvm-ssd` and `hvm-ssd-gp3`).
pub const UBUNTU_NAME_PATTERN: &str = "ubuntu/images/hvm-ssd*/ubuntu-*-server-*";
/// PostgreSQL's port when a node gives none.
pub const DEFAULT_PG_PORT: u16 = 5432;
/// SSH port when the spec gives none.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// The states of an instance that still exists (not being or already terminated).
pub const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

// ---------------------------------------------------------------------------------------
// Names and tags

/// Name of the security group and of the imported key pair of a cluster: `pgrepl-<cluster>`.
pub fn resource_name(cluster: &str) -> String {
    format!("pgrepl-{cluster}")
}

/// The `Name` tag of a node's instance: `<cluster>-<node>`.
pub fn instance_name(cluster: &str, node: &str) -> String {
    format!("{cluster}-{node}")
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Tags of a node's instance and root volume.
pub fn node_tags(cluster: &str, node: &str, role: &str) -> Vec<Tag> {
    vec![tag(TAG_NAME, &instance_name(cluster, node)), tag(TAG_CLUSTER, cluster), tag(TAG_NODE, node), tag(TAG_ROLE, role)]
}

/// Tags of the cluster's security group and key pair.
pub fn cluster_tags(cluster: &str) -> Vec<Tag> {
    vec![tag(TAG_NAME, &resource_name(cluster)), tag(TAG_CLUSTER, cluster)]
}

/// The value of tag `key`.
pub fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Whether `tags` mark the resource as pgrepl's, for `cluster`.
pub fn belongs_to(tags: &[Tag], cluster: &str) -> bool {
    tag_value(tags, TAG_CLUSTER) == Some(cluster)
}

/// A filter on one value.
pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| v.to_string()).collect())).build()
}

/// The filter that finds a cluster's resources: `tag:pgrepl:cluster=<cluster>`.
pub fn cluster_filter(cluster: &str) -> Filter {
    filter(&format!("tag:{TAG_CLUSTER}"), &[cluster])
}

// ---------------------------------------------------------------------------------------
// Architecture

/// A CPU architecture as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `x86_64` (Ubuntu says `amd64`).
    X86_64,
    /// `arm64` (Graviton).
    Arm64,
}

impl Arch {
    /// EC2's name: `x86_64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The architecture of an instance type, from its name: Graviton families carry a `g`
/// after the generation digit (`t4g`, `m7g`, `c6gn`, `x2gd`, `im4gn`, `g5g`), plus `a1`
/// and the Apple-silicon `mac2*`. Everything else is x86_64.
pub fn arch_of_instance_type(instance_type: &str) -> Result<Arch, String> {
    let Some((family, size)) = instance_type.split_once('.') else {
        return Err(format!("\"{instance_type}\" is not an instance type (expected family.size, such as t4g.small)"));
    };
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid(family) || !valid(size) || !family.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("\"{instance_type}\" is not an instance type (expected family.size, such as t4g.small)"));
    }
    if family == "a1" || family.starts_with("mac2") {
        return Ok(Arch::Arm64);
    }
    // Attributes are the letters after the first run of digits: "t4g" -> "g", "c6gn" -> "gn".
    let attributes: String = family
        .trim_start_matches(|c: char| c.is_ascii_lowercase())
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    if attributes.contains('g') { Ok(Arch::Arm64) } else { Ok(Arch::X86_64) }
}

/// The architecture of an image, when EC2 reports one pgrepl knows.
pub fn arch_of_image(image: &Image) -> Option<Arch> {
    match image.architecture().map(|a| a.as_str()) {
        Some("x86_64") => Some(Arch::X86_64),
        Some("arm64") => Some(Arch::Arm64),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// AMI choice

/// How to find an AMI when the spec names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmiQuery {
    /// Owner account ids (or `self`, `amazon`).
    pub owners: Vec<String>,
    /// A name pattern with `*` wildcards.
    pub name_pattern: String,
    /// Keep only Ubuntu LTS releases (YY.04 with an even YY), newest release first.
    pub ubuntu_lts: bool,
}

impl Default for AmiQuery {
    /// The newest Ubuntu LTS server image from Canonical.
    fn default() -> Self {
        AmiQuery { owners: vec![CANONICAL_OWNER.into()], name_pattern: UBUNTU_NAME_PATTERN.into(), ubuntu_lts: true }
    }
}

impl fmt::Display for AmiQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "owner {} and name \"{}\"{}",
            self.owners.join(","),
            self.name_pattern,
            if self.ubuntu_lts { " (Ubuntu LTS)" } else { "" }
        )
    }
}

/// DescribeImages filters for `query` and `arch` (owners go in `Owners`).
pub fn ami_filters(query: &AmiQuery, arch: Arch) -> Vec<Filter> {
    vec![filter("name", &[&query.name_pattern]), filter("architecture", &[arch.as_str()]), filter("state", &["available"])]
}

/// The Ubuntu release in a Canonical image name, such as `(24, 4)` in
/// `ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250115`.
pub fn ubuntu_version(name: &str) -> Option<(u32, u32)> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix("ubuntu-")?;
    if !rest.contains("-server-") {
        return None;
    }
    rest.split('-').find_map(|part| {
        let (y, m) = part.split_once('.')?;
        if y.len() == 2 && m.len() == 2 { Some((y.parse().ok()?, m.parse().ok()?)) } else { None }
    })
}

/// Whether an Ubuntu release is an LTS (April of an even year).
pub fn is_ubuntu_lts((year, month): (u32, u32)) -> bool {
    month == 4 && year % 2 == 0
}

/// Chooses among `images` the one to launch: available, of `arch`, an EBS-backed HVM
/// image when EC2 says so; with `ubuntu_lts` only LTS releases and the newest release
/// wins; then the newest creation date; then the id (for determinism).
pub fn pick_image(images: &[Image], arch: Arch, ubuntu_lts: bool) -> Option<&Image> {
    images
        .iter()
        .filter(|i| arch_of_image(i) == Some(arch))
        .filter(|i| i.state().is_none_or(|s| s.as_str() == "available"))
        .filter(|i| i.root_device_type().is_none_or(|t| t.as_str() == "ebs"))
        .filter(|i| i.virtualization_type().is_none_or(|t| t.as_str() == "hvm"))
        .filter_map(|i| {
            let version = ubuntu_version(i.name().unwrap_or(""));
            if ubuntu_lts { version.filter(|v| is_ubuntu_lts(*v)).map(|v| (i, Some(v))) } else { Some((i, None)) }
        })
        .max_by(|(a, va), (b, vb)| {
            va.cmp(vb).then_with(|| a.creation_date().cmp(&b.creation_date())).then_with(|| a.image_id().cmp(&b.image_id()))
        })
        .map(|(i, _)| i)
}

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

fn cidr_source(cidr: &str) -> Source {
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
    /// who may use it. Always starts with [`DESCRIPTION_PREFIX`], which marks the rule as
    /// pgrepl's (see [`owned_rules_of`]); only characters EC2 allows in descriptions.
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

// ---------------------------------------------------------------------------------------
// Client tokens

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The RunInstances client token of a node's launch in one `ensure` run: the same for
/// every retry of that launch (EC2 then returns the first launch instead of a second
/// instance), different for another node or another run (so a later `up` after `destroy`
/// launches anew). At most 64 ASCII characters, as EC2 requires.
pub fn client_token(cluster: &str, node: &str, run_id: u64) -> String {
    format!("pgrepl-{:016x}-{:016x}", fnv1a(&[cluster, node]), run_id)
}

// ---------------------------------------------------------------------------------------
// Instances -> hosts

/// The state name of an instance (`pending`, `running`, ...), or `unknown`.
pub fn instance_state(instance: &Instance) -> &str {
    instance.state().and_then(|s| s.name()).map(|n| n.as_str()).unwrap_or("unknown")
}

/// A host for an instance carrying pgrepl's node tag: `address` is the private IP
/// (replication), `admin_address` the public IP (SSH) when there is one, `id` the
/// instance id.
pub fn host_of(instance: &Instance) -> Option<Host> {
    let node = tag_value(instance.tags(), TAG_NODE)?;
    Some(Host {
        node: node.to_string(),
        address: instance.private_ip_address().map(str::to_string),
        admin_address: instance.public_ip_address().map(str::to_string),
        id: instance.instance_id().map(str::to_string),
        state: instance_state(instance).to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// User data

/// Standard base64 with padding (EC2 wants user data base64-encoded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { ALPHABET[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { ALPHABET[n as usize & 63] as char } else { '=' });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Errors

/// What an AWS error code means to pgrepl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The credentials were rejected.
    Auth,
    /// A missing IAM permission.
    Unauthorized,
    /// The resource does not exist.
    NotFound,
    /// A quota or capacity limit.
    Quota,
    /// Throttling.
    Throttled,
    /// Still in use.
    InUse,
    /// Already exists.
    Duplicate,
    /// A successful dry run.
    DryRun,
    /// Anything else.
    Other,
}

/// Classifies an AWS error code.
pub fn classify(code: &str) -> ErrorClass {
    match code {
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "IncompleteSignature"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "MissingAuthenticationToken" => ErrorClass::Auth,
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" | "OptInRequired" | "Blocked" => ErrorClass::Unauthorized,
        "DryRunOperation" => ErrorClass::DryRun,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorClass::Throttled,
        "DependencyViolation" | "InvalidGroup.InUse" => ErrorClass::InUse,
        c if c.ends_with(".Duplicate") || c == "AlreadyExists" => ErrorClass::Duplicate,
        c if c.ends_with(".NotFound") || c.ends_with("NotFound") || c.starts_with("InvalidAMIID.") => ErrorClass::NotFound,
        c if c.ends_with("LimitExceeded")
            || c.starts_with("Insufficient")
            || c == "MaxSpotInstanceCountExceeded"
            || c == "ResourceLimitExceeded" =>
        {
            ErrorClass::Quota
        }
        _ => ErrorClass::Other,
    }
}

/// Codes of server-side trouble worth retrying.
pub fn is_transient_code(code: &str) -> bool {
    matches!(code, "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable") || classify(code) == ErrorClass::Throttled
}

fn chain_mentions(e: &(dyn StdError + 'static), words: &[&str]) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    // The chain is finite; the bound only guards against a cyclic `source()`.
    for _ in 0..32 {
        let Some(err) = cur else { break };
        let text = err.to_string().to_ascii_lowercase();
        if words.iter().any(|w| text.contains(w)) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Maps an SDK error of `action` on `resource` (at `endpoint`) to a [`ProviderError`]
/// naming both and, for EC2 answers, the AWS error code.
pub fn map_sdk_error<E, R>(err: SdkError<E, R>, action: &str, resource: &str, endpoint: &str) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let (action, resource, endpoint) = (action.to_string(), resource.to_string(), endpoint.to_string());
    match err {
        SdkError::ServiceError(se) => {
            let e = se.into_err();
            let aws = AwsError {
                code: e.code().unwrap_or("Unknown").to_string(),
                message: e.message().map(str::to_string),
                request_id: e.meta().extra("aws_request_id").map(str::to_string),
            };
            from_aws(aws, action, resource)
        }
        SdkError::TimeoutError(_) => ProviderError::ApiTimeout { action, resource, endpoint, source: Box::new(err) },
        SdkError::DispatchFailure(ref d) => {
            if d.is_timeout() {
                ProviderError::ApiTimeout { action, resource, endpoint, source: Box::new(err) }
            } else if !d.is_io() && chain_mentions(&err, &["credential", "identity"]) {
                ProviderError::NoCredentials { source: Box::new(err) }
            } else {
                ProviderError::Unreachable { action, resource, endpoint, source: Box::new(err) }
            }
        }
        other => {
            if chain_mentions(&other, &["region must be set", "no region"]) {
                ProviderError::MissingRegion
            } else {
                let source: BoxError = Box::new(other);
                ProviderError::Sdk { action, resource, source }
            }
        }
    }
}

/// Maps an EC2 error answer.
pub fn from_aws(aws: AwsError, action: String, resource: String) -> ProviderError {
    let code = aws.code.clone();
    let aws = Box::new(aws);
    match classify(&code) {
        ErrorClass::Auth => ProviderError::AuthFailure { action: format!("{action} {resource}"), code, source: aws },
        ErrorClass::Unauthorized => ProviderError::Unauthorized { action, resource, code, source: aws },
        ErrorClass::NotFound => ProviderError::NotFound { action, resource, code, source: aws },
        ErrorClass::Quota => ProviderError::Quota { action, resource, code, source: aws },
        ErrorClass::Throttled => ProviderError::Throttled { action, resource, code, source: aws },
        ErrorClass::InUse => ProviderError::InUse { action, resource, code, source: aws },
        ErrorClass::Duplicate => ProviderError::AlreadyExists { action, resource, code, source: aws },
        ErrorClass::DryRun => ProviderError::DryRun { action, resource, code },
        ErrorClass::Other => ProviderError::Aws { action, resource, code, source: aws },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ec2::operation::describe_images::DescribeImagesError;
    use aws_sdk_ec2::types::{ArchitectureValues, DeviceType, ImageState, InstanceState, InstanceStateName, VirtualizationType};

    fn image(id: &str, name: &str, arch: &str, date: &str) -> Image {
        Image::builder()
            .image_id(id)
            .name(name)
            .architecture(ArchitectureValues::from(arch))
            .creation_date(date)
            .state(ImageState::Available)
            .root_device_type(DeviceType::Ebs)
            .virtualization_type(VirtualizationType::Hvm)
            .build()
    }

    #[test]
    fn node_tags_carry_name_cluster_node_and_role() {
        let tags = node_tags("demo", "db2", "standby");
        assert_eq!(tag_value(&tags, "Name"), Some("demo-db2"));
        assert_eq!(tag_value(&tags, TAG_CLUSTER), Some("demo"));
        assert_eq!(tag_value(&tags, TAG_NODE), Some("db2"));
        assert_eq!(tag_value(&tags, TAG_ROLE), Some("standby"));
        assert!(belongs_to(&tags, "demo"));
        assert!(!belongs_to(&tags, "demo2"));
        let ct = cluster_tags("demo");
        assert_eq!(tag_value(&ct, "Name"), Some("pgrepl-demo"));
        assert!(belongs_to(&ct, "demo"));
        assert_eq!(tag_value(&ct, TAG_NODE), None);
    }

    #[test]
    fn instance_type_architectures() {
        for t in [
            "t4g.small",
            "t4g.nano",
            "m7g.large",
            "c6gn.xlarge",
            "x2gd.medium",
            "im4gn.large",
            "is4gen.large",
            "g5g.xlarge",
            "r8g.large",
            "hpc7g.4xlarge",
            "a1.medium",
            "mac2.metal",
            "mac2-m2pro.metal",
        ] {
            assert_eq!(arch_of_instance_type(t), Ok(Arch::Arm64), "{t}");
        }
        for t in [
            "t3.small",
            "t2.micro",
            "m5.large",
            "m7i.large",
            "g5.xlarge",
            "m5zn.large",
            "r7iz.large",
            "c5n.large",
            "mac1.metal",
            "inf2.xlarge",
            "u-6tb1.metal",
        ] {
            assert_eq!(arch_of_instance_type(t), Ok(Arch::X86_64), "{t}");
        }
        for bad in ["t4g", "", ".small", "T4G.small", "t4g.", "4g.small"] {
            let e = arch_of_instance_type(bad).unwrap_err();
            assert!(e.contains("not an instance type"), "{bad}: {e}");
        }
    }

    #[test]
    fn ubuntu_versions_and_lts() {
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250115"), Some((24, 4)));
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-20170727"), Some((14, 4)));
        assert_eq!(ubuntu_version("al2023-ami-2023.6-arm64"), None);
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd/ubuntu-noble-24.04-amd64-minimal-2024"), None);
        assert!(is_ubuntu_lts((24, 4)));
        assert!(is_ubuntu_lts((22, 4)));
        assert!(!is_ubuntu_lts((23, 4)));
        assert!(!is_ubuntu_lts((24, 10)));
    }

    #[test]
    fn newest_lts_of_the_right_architecture_wins() {
        let images = vec![
            image("ami-jammy-arm", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-20250101", "arm64", "2025-01-01T00:00:00.000Z"),
            image(
                "ami-noble-arm-old",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20240601",
                "arm64",
                "2024-06-01T00:00:00.000Z",
            ),
            image(
                "ami-noble-arm",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250110",
                "arm64",
                "2025-01-10T00:00:00.000Z",
            ),
            image(
                "ami-oracular-arm",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-oracular-24.10-arm64-server-20250201",
                "arm64",
                "2025-02-01T00:00:00.000Z",
            ),
            image(
                "ami-noble-amd",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250301",
                "x86_64",
                "2025-03-01T00:00:00.000Z",
            ),
        ];
        let arm = pick_image(&images, Arch::Arm64, true).unwrap();
        assert_eq!(arm.image_id(), Some("ami-noble-arm"));
        let amd = pick_image(&images, Arch::X86_64, true).unwrap();
        assert_eq!(amd.image_id(), Some("ami-noble-amd"));
        // Without the LTS rule the newest image of the architecture wins.
        let any = pick_image(&images, Arch::Arm64, false).unwrap();
        assert_eq!(any.image_id(), Some("ami-oracular-arm"));
        // Nothing of the architecture: none.
        assert!(pick_image(&images[..4], Arch::X86_64, true).is_none());
        // An image that is not available yet is not chosen.
        let pending = Image::builder()
            .image_id("ami-new")
            .name("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20260101")
            .architecture(ArchitectureValues::Arm64)
            .creation_date("2026-01-01T00:00:00.000Z")
            .state(ImageState::Pending)
            .build();
        let mut with_pending = images.clone();
        with_pending.push(pending);
        assert_eq!(pick_image(&with_pending, Arch::Arm64, true).unwrap().image_id(), Some("ami-noble-arm"));
    }

    #[test]
    fn ami_query_default_is_canonical_ubuntu() {
        let q = AmiQuery::default();
        assert_eq!(q.owners, vec![CANONICAL_OWNER.to_string()]);
        assert!(q.ubuntu_lts);
        let f = ami_filters(&q, Arch::Arm64);
        let names: Vec<_> = f.iter().map(|f| f.name().unwrap()).collect();
        assert_eq!(names, ["name", "architecture", "state"]);
        assert_eq!(f[1].values(), ["arm64"]);
        assert_eq!(f[0].values(), [UBUNTU_NAME_PATTERN]);
        assert!(q.to_string().contains("099720109477"));
    }

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

    /// A 3-node EC2 cluster with `extra` appended (an `[ha]` section, a witness).
    fn aws_cluster(extra: &str) -> Cluster {
        let text = format!(
            r#"
name = "geo"
postgres = "16"
[provider]
kind = "aws"
region = "us-east-2"
admin_cidr = "203.0.113.7/32"
key_name = "k"
[provider.locations]
east = "us-east-2a"
west = "us-east-2b"
third = "us-east-2c"
[[nodes]]
name = "db1"
role = "primary"
location = "east"
[[nodes]]
name = "db2"
role = "standby"
location = "east"
[[nodes]]
name = "db3"
role = "standby"
location = "west"
[[nodes]]
name = "db4"
role = "standby"
location = "west"
{extra}
"#
        );
        pgrepl_core::ClusterSpec::from_toml(&text).unwrap().validate().unwrap_or_else(|e| panic!("{e}"))
    }

    const WITNESS: &str = "[[nodes]]\nname = \"w1\"\nrole = \"witness\"\nlocation = \"third\"\n";

    /// The exposure of a plain 3-node cluster (no `[ha]`).
    fn exposure() -> Exposure {
        Exposure {
            ssh_port: 22,
            admin_cidr: "203.0.113.7/32".into(),
            pg_ports: vec![5432],
            app_cidrs: vec!["10.1.0.0/16".into()],
            agent_ports: vec![],
            api_cidrs: vec![],
            etcd: None,
        }
    }

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

    #[test]
    fn client_tokens_are_stable_per_launch_and_short() {
        let a = client_token("demo", "db1", 7);
        assert_eq!(a, client_token("demo", "db1", 7));
        assert_ne!(a, client_token("demo", "db2", 7));
        assert_ne!(a, client_token("demo", "db1", 8));
        assert_ne!(client_token("ab", "c", 1), client_token("a", "bc", 1));
        let long = client_token(&"x".repeat(40), &"y".repeat(40), u64::MAX);
        assert!(long.len() <= 64 && long.is_ascii(), "{long}");
    }

    #[test]
    fn host_of_instance_uses_private_for_replication_and_public_for_ssh() {
        let i = Instance::builder()
            .instance_id("i-1")
            .private_ip_address("172.31.0.5")
            .public_ip_address("54.1.2.3")
            .state(InstanceState::builder().name(InstanceStateName::Running).build())
            .set_tags(Some(node_tags("demo", "db1", "primary")))
            .build();
        let h = host_of(&i).unwrap();
        assert_eq!(h.node, "db1");
        assert_eq!(h.address.as_deref(), Some("172.31.0.5"));
        assert_eq!(h.admin_address.as_deref(), Some("54.1.2.3"));
        assert_eq!(h.id.as_deref(), Some("i-1"));
        assert_eq!(h.state, "running");
        // Not pgrepl's: no host.
        assert!(host_of(&Instance::builder().instance_id("i-2").build()).is_none());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    fn service_error(code: &str, message: &str) -> SdkError<DescribeImagesError, ()> {
        let meta = ErrorMetadata::builder().code(code).message(message).custom("aws_request_id", "req-1").build();
        SdkError::service_error(DescribeImagesError::generic(meta), ())
    }

    fn chain(e: &dyn StdError) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(" / ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn sdk_errors_map_to_errors_naming_resource_and_code() {
        let ep = "http://127.0.0.1:5000";
        type Case = (&'static str, &'static str, fn(&ProviderError) -> bool, &'static [&'static str]);
        let cases: Vec<Case> = vec![
            (
                "AuthFailure",
                "AWS was not able to validate the provided access credentials",
                |e| matches!(e, ProviderError::AuthFailure { .. }),
                &["rejected the credentials", "AuthFailure", "AMI ami-1"],
            ),
            (
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
                |e| matches!(e, ProviderError::Unauthorized { .. }),
                &["not authorized", "AMI ami-1", "UnauthorizedOperation", "IAM"],
            ),
            (
                "InvalidAMIID.NotFound",
                "The image id '[ami-1]' does not exist",
                |e| matches!(e, ProviderError::NotFound { .. }),
                &["AMI ami-1 does not exist", "InvalidAMIID.NotFound"],
            ),
            (
                "InstanceLimitExceeded",
                "You have requested more instances than your current instance limit",
                |e| matches!(e, ProviderError::Quota { .. }),
                &["quota", "InstanceLimitExceeded", "AMI ami-1"],
            ),
            ("VcpuLimitExceeded", "vCPU limit", |e| matches!(e, ProviderError::Quota { .. }), &["VcpuLimitExceeded"]),
            ("InsufficientInstanceCapacity", "no capacity", |e| matches!(e, ProviderError::Quota { .. }), &["capacity"]),
            (
                "RequestLimitExceeded",
                "Request limit exceeded.",
                |e| matches!(e, ProviderError::Throttled { .. }) && e.is_retryable(),
                &["throttled", "RequestLimitExceeded"],
            ),
            (
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
                |e| matches!(e, ProviderError::DryRun { .. }),
                &["dry run", "DryRunOperation"],
            ),
            (
                "DependencyViolation",
                "resource sg-1 has a dependent object",
                |e| matches!(e, ProviderError::InUse { .. }) && e.is_retryable(),
                &["in use", "DependencyViolation"],
            ),
            ("InvalidKeyPair.Duplicate", "exists", |e| matches!(e, ProviderError::AlreadyExists { .. }), &["already exists"]),
            (
                "InvalidParameterValue",
                "Invalid value 'x' for instanceType",
                |e| matches!(e, ProviderError::Aws { .. }) && !e.is_retryable(),
                &["InvalidParameterValue", "AMI ami-1"],
            ),
            ("InternalError", "oops", |e| matches!(e, ProviderError::Aws { .. }) && e.is_retryable(), &["InternalError"]),
        ];
        for (code, message, is, words) in cases {
            let e = map_sdk_error(service_error(code, message), "describe", "AMI ami-1", ep);
            assert!(is(&e), "{code}: {e:?}");
            assert_eq!(e.code(), Some(code));
            let text = chain(&e);
            for w in words {
                assert!(text.contains(w), "{code}: {text:?} lacks {w:?}");
            }
            if code != "DryRunOperation" {
                assert!(text.contains(message), "{code}: AWS's words are in the chain: {text}");
                assert!(text.contains("req-1"), "{code}: request id in the chain: {text}");
            }
        }
    }

    #[test]
    fn transport_failures_name_the_endpoint() {
        let ep = "http://127.0.0.1:1";
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::dispatch_failure(ConnectorError::io(Box::new(io))),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(ep), "{e}");
        assert!(chain(&e).contains("connection refused"));
        assert!(e.is_retryable());

        let e = map_sdk_error(SdkError::<DescribeImagesError, ()>::timeout_error("took too long"), "describe", "images", ep);
        assert!(matches!(e, ProviderError::ApiTimeout { .. }), "{e:?}");
        assert!(e.to_string().contains("did not answer in time"));

        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::dispatch_failure(ConnectorError::other(
                "failed to load credentials: no providers in chain provided credentials".into(),
                None,
            )),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::NoCredentials { .. }), "{e:?}");
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");

        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::construction_failure("A region must be set when sending requests to EC2."),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::MissingRegion), "{e:?}");
        assert!(e.to_string().contains("AWS_REGION"));
    }

    #[test]
    fn provider_errors_become_core_provider_errors() {
        let e = map_sdk_error(service_error("AuthFailure", "bad key"), "describe", "images", "x");
        let core = e.into_core("ensure hosts of cluster demo");
        match &core {
            pgrepl_core::Error::Provider { provider, action, source } => {
                assert_eq!(provider, "aws");
                assert_eq!(action, "ensure hosts of cluster demo");
                assert!(source.to_string().contains("AuthFailure"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(core.to_string(), "provider aws: ensure hosts of cluster demo");
        let via_from: pgrepl_core::Error = ProviderError::MissingRegion.into();
        assert!(matches!(via_from, pgrepl_core::Error::Provider { .. }));
    }
}
