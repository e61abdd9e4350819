//! Clusters and exposures the mapping's tests share.

use pgrepl_core::cluster::Cluster;

use super::Exposure;

/// A 3-node EC2 cluster with `extra` appended (an `[ha]` section, a witness).
pub(super) fn aws_cluster(extra: &str) -> Cluster {
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

pub(super) const WITNESS: &str = "[[nodes]]\nname = \"w1\"\nrole = \"witness\"\nlocation = \"third\"\n";

/// The exposure of a plain 3-node cluster (no `[ha]`).
pub(super) fn exposure() -> Exposure {
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
