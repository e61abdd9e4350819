//! Pure mapping between pgrepl and EC2: names and tags, security group rules (with
//! `[ha]`: the agents' and etcd's ports, see [`Exposure`]), AMI choice, placing nodes and
//! witnesses in availability zones (by location, or spread), client tokens,
//! instance → host, and SDK errors → [`ProviderError`](crate::ProviderError).
//!
//! Nothing here talks to AWS, sleeps or reads files, so every rule is unit-tested next to
//! it; the provider sends what this module builds. Names, tags, filters, client tokens,
//! instance → host and user data are here; the image (architecture, AMI choice) in
//! `image`, zones and subnets in `placement`, security group rules in `rules` and what
//! a cluster's group lets in in `exposure`, SDK errors in `sdk_error`; all of them are
//! re-exported here.

use aws_sdk_ec2::types::{Filter, Instance, Tag};
use pgrepl_core::provider::Host;

mod exposure;
#[cfg(test)]
mod fixtures;
mod image;
mod placement;
mod rules;
mod sdk_error;

pub use exposure::{EtcdPorts, Exposure};
pub use image::{AmiQuery, Arch, ami_filters, arch_of_image, arch_of_instance_type, is_ubuntu_lts, pick_image, ubuntu_version};
pub use placement::{Machine, PlacementError, SubnetChoice, machines, place, spread_order, subnet_for};
pub use rules::{
    DESCRIPTION_PREFIX, Rule, RuleDiff, Source, description_of, desired_rules, diff_rules, owned_rules_of, permission, reconcile_rules,
    rules_of,
};
pub use sdk_error::{ErrorClass, classify, from_aws, is_transient_code, map_sdk_error};

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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceState, InstanceStateName};

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
}
