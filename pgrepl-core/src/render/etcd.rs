//! The etcd cluster pgrepl deploys on the cluster's hosts (`[ha.etcd] deploy = true`):
//! where each member's files go, its configuration file (etcd 3.4's YAML), the client
//! URLs, and the service that runs it. Pure: the certificates come from the caller.
//!
//! Every member serves clients and peers over TLS only, and asks both for a certificate
//! signed by the cluster's CA (`client-cert-auth`): a client without one is refused
//! before it reads anything.

use crate::cluster::Cluster;

/// Where pgrepl keeps a cluster's files on a host.
pub fn host_dir(cluster: &str) -> String {
    format!("/etc/pgrepl/{cluster}")
}

/// The files of the etcd member (and of the agent's etcd client) on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFiles {
    /// Directory of the configuration and certificates (0700).
    pub dir: String,
    /// The member's configuration file.
    pub config: String,
    /// The cluster CA's certificate.
    pub ca: String,
    /// The member's certificate and key (server and peer).
    pub cert: String,
    pub key: String,
    /// The agent's client certificate and key.
    pub client_cert: String,
    pub client_key: String,
    /// The member's data directory (0700).
    pub data_dir: String,
    /// Its log file.
    pub log: String,
}

impl EtcdFiles {
    /// The paths for `cluster` on any host.
    pub fn of(cluster: &str) -> EtcdFiles {
        let dir = format!("{}/etcd", host_dir(cluster));
        EtcdFiles {
            config: format!("{dir}/etcd.yml"),
            ca: format!("{dir}/ca.crt"),
            cert: format!("{dir}/member.crt"),
            key: format!("{dir}/member.key"),
            client_cert: format!("{dir}/client.crt"),
            client_key: format!("{dir}/client.key"),
            data_dir: format!("/var/lib/pgrepl/{cluster}/etcd"),
            log: format!("/var/log/pgrepl/{cluster}-etcd.log"),
            dir,
        }
    }
}

/// A member: the node (or witness) it runs on and that host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub name: String,
    pub address: String,
}

/// The members pgrepl deploys, with their addresses (`Err`: a member without an address
/// yet, or a cluster that does not deploy etcd).
pub fn etcd_members(cluster: &Cluster) -> Result<Vec<EtcdMember>, String> {
    let ha = cluster.ha.as_ref().filter(|h| h.etcd.deploy).ok_or("the cluster does not deploy etcd ([ha.etcd] deploy)")?;
    ha.etcd_members
        .iter()
        .map(|m| {
            let address = cluster
                .nodes
                .iter()
                .find(|n| &n.name == m)
                .map(|n| n.address.clone())
                .or_else(|| cluster.witnesses.iter().find(|w| &w.name == m).map(|w| w.address.clone()))
                .ok_or_else(|| format!("etcd member {m}: no such node"))?
                .ok_or_else(|| format!("etcd member {m}: its host has no address yet"))?;
            Ok(EtcdMember { name: m.clone(), address })
        })
        .collect()
}

/// An address as it goes in a URL (IPv6 in brackets).
fn url_host(address: &str) -> String {
    if address.contains(':') { format!("[{address}]") } else { address.to_string() }
}

/// The client URLs of the etcd cluster: the deployed members' (https), else the spec's.
pub fn etcd_endpoints(cluster: &Cluster) -> Vec<String> {
    match cluster.ha.as_ref() {
        Some(h) if h.etcd.deploy => etcd_members(cluster)
            .map(|ms| ms.iter().map(|m| format!("https://{}:{}", url_host(&m.address), h.etcd.client_port)).collect())
            .unwrap_or_default(),
        Some(h) => h.etcd.endpoints.clone(),
        None => Vec::new(),
    }
}

/// Member `name`'s configuration file (etcd 3.4, `etcd --config-file`). `existing`: the
/// member joins the cluster it already belongs to (its data directory holds it).
pub fn etcd_member_config(cluster: &Cluster, name: &str, existing: bool) -> Result<String, String> {
    let ha = cluster.ha.as_ref().ok_or("no [ha]")?;
    let members = etcd_members(cluster)?;
    let me = members.iter().find(|m| m.name == name).ok_or_else(|| format!("{name} holds no etcd member"))?;
    let f = EtcdFiles::of(&cluster.name);
    let (cp, pp) = (ha.etcd.client_port, ha.etcd.peer_port);
    let peer = |m: &EtcdMember| format!("https://{}:{pp}", url_host(&m.address));
    let client = format!("https://{}:{cp}", url_host(&me.address));
    let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, peer(m))).collect();
    let tls = |what: &str| {
        format!("{what}:\n  cert-file: {}\n  key-file: {}\n  trusted-ca-file: {}\n  client-cert-auth: true\n", f.cert, f.key, f.ca)
    };
    Ok(format!(
        "# etcd member {name} of the pgrepl cluster \"{cluster}\", written by pgrepl: it is\n\
         # rewritten on every `pgrepl up`.\n\
         name: {name}\n\
         data-dir: {data}\n\
         listen-client-urls: {client}\n\
         advertise-client-urls: {client}\n\
         listen-peer-urls: {peer_me}\n\
         initial-advertise-peer-urls: {peer_me}\n\
         initial-cluster: {initial}\n\
         initial-cluster-token: pgrepl-{cluster}\n\
         initial-cluster-state: {state}\n\
         # etcd's defaults: a heartbeat every 100 ms, a new etcd leader after 1 s without one.\n\
         heartbeat-interval: 100\n\
         election-timeout: 1000\n\
         # The JSON gateway pgrepl's client speaks (off by default with a config file).\n\
         enable-grpc-gateway: true\n\
         # Only the keys pgrepl writes: a small backend, compacted every hour.\n\
         quota-backend-bytes: 1073741824\n\
         auto-compaction-mode: periodic\n\
         auto-compaction-retention: \"1\"\n\
         {client_tls}{peer_tls}",
        cluster = cluster.name,
        data = f.data_dir,
        peer_me = peer(me),
        initial = initial.join(","),
        state = if existing { "existing" } else { "new" },
        client_tls = tls("client-transport-security"),
        peer_tls = tls("peer-transport-security"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let mut s =
            String::from("name = \"geo\"\npostgres = \"15\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\n[ha.etcd]\ndeploy = true\n");
        for (n, r, a) in [("d", "primary", "10.0.0.1"), ("e", "standby", "10.0.0.2"), ("w", "witness", "fd00::5")] {
            s.push_str(&format!("[[nodes]]\nname = \"{n}\"\nrole = \"{r}\"\naddress = \"{a}\"\n"));
        }
        crate::ClusterSpec::from_toml(&s).unwrap().validate().unwrap()
    }

    #[test]
    fn members_and_endpoints_come_from_the_hosts() {
        let c = cluster();
        assert_eq!(etcd_endpoints(&c), ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://[fd00::5]:2379"]);
    }

    #[test]
    fn the_member_config_is_tls_only_with_client_certificates() {
        let text = etcd_member_config(&cluster(), "e", false).unwrap();
        assert!(text.contains("listen-client-urls: https://10.0.0.2:2379\n"), "{text}");
        assert!(text.contains("initial-cluster: d=https://10.0.0.1:2380,e=https://10.0.0.2:2380,w=https://[fd00::5]:2380\n"), "{text}");
        assert!(text.contains("initial-cluster-state: new\n"), "{text}");
        assert_eq!(text.matches("client-cert-auth: true").count(), 2, "{text}");
        assert!(!text.contains("http://"), "{text}");
        assert!(text.contains("enable-grpc-gateway: true\n"), "{text}");
        assert!(etcd_member_config(&cluster(), "e", true).unwrap().contains("initial-cluster-state: existing\n"));
        assert!(etcd_member_config(&cluster(), "x", false).unwrap_err().contains("x holds no etcd member"));
    }
}
