//! An HAProxy 2.6 configuration in front of an `[ha]` cluster (`pgrepl render --haproxy`).
//! Pure: the text is built from the validated cluster and the options, nothing is read or
//! written.
//!
//! Two TCP listeners: a read-write one routed to the node whose agent answers 200 on
//! `/primary` (only the holder of the leader lease that accepts writes does), and a
//! read-only one balanced over the nodes whose agent answers 200 on `/replica` (streaming
//! standbys within `[ha] replica_max_lag`). HAProxy asks the agents (`pgrepl agent`, on
//! [`Cluster::agent_api`]'s port), not PostgreSQL: only the agents know who holds the
//! lease. Optionally HAProxy's own stats page.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::cluster::Cluster;

/// What to listen on. The defaults listen on loopback only: every interface only when
/// asked (`bind = "0.0.0.0"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// The address HAProxy listens on (an IP address; default `127.0.0.1`).
    pub bind: String,
    /// The read-write port (default 5000).
    pub rw_port: u16,
    /// The read-only port (default 5001).
    pub ro_port: u16,
    /// HAProxy's stats page (HTTP, read-only) on this port; `None` (the default): none.
    pub stats_port: Option<u16>,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        HaproxyOptions { bind: "127.0.0.1".into(), rw_port: 5000, ro_port: 5001, stats_port: None }
    }
}

/// Why [`haproxy_config`] wrote nothing. Each is a problem of the request or the spec,
/// not of a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HaproxyError {
    /// Without `[ha]` no agent serves `/primary` and `/replica`, so there is nothing to check.
    #[error(
        "HAProxy routing needs the agents' health endpoints (/primary, /replica), which only clusters with an [ha] section have: cluster {cluster} has none (see examples/ha-local.toml; `pgrepl connstr` gives libpq multi-host strings instead)"
    )]
    NoHa {
        /// The cluster.
        cluster: String,
    },
    /// A node has no address yet (an EC2 node before it is provisioned).
    #[error("{node}: no address yet (HAProxy needs every node's address; on EC2, run `pgrepl up` first)")]
    NoAddress {
        /// The node.
        node: String,
    },
    /// The listen address is not an IP address.
    #[error("bind address \"{bind}\" is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)")]
    BadBind {
        /// What was given.
        bind: String,
    },
    /// A port is 0 or used twice.
    #[error("ports: {problem}")]
    BadPorts {
        /// Which.
        problem: String,
    },
}

/// `address:port` as HAProxy reads it (IPv6 in brackets).
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// The HAProxy 2.6 configuration of `cluster`'s read-write and read-only listeners (and
/// the stats page when asked), as the file's text.
///
/// ```
/// use pgrepl_core::ClusterSpec;
/// use pgrepl_core::render::{HaproxyOptions, haproxy_config};
///
/// let spec = ClusterSpec::from_toml(r#"
/// name = "app"
/// [ha.etcd]
/// endpoints = ["http://127.0.0.1:2379"]
/// [provider]
/// kind = "local"
/// base_port = 6432
/// [[nodes]]
/// name = "db1"
/// role = "primary"
/// [[nodes]]
/// name = "db2"
/// role = "standby"
/// "#).unwrap();
/// let cfg = haproxy_config(&spec.validate().unwrap(), &HaproxyOptions::default()).unwrap();
/// assert!(cfg.contains("bind 127.0.0.1:5000"));
/// assert!(cfg.contains("server db2 127.0.0.1:6433 check port 8009"));
/// ```
pub fn haproxy_config(cluster: &Cluster, opts: &HaproxyOptions) -> Result<String, HaproxyError> {
    let ha = cluster.ha.as_ref().ok_or_else(|| HaproxyError::NoHa { cluster: cluster.name.clone() })?;
    if opts.bind.parse::<IpAddr>().is_err() {
        return Err(HaproxyError::BadBind { bind: opts.bind.clone() });
    }
    let mut ports = vec![("read-write", opts.rw_port), ("read-only", opts.ro_port)];
    ports.extend(opts.stats_port.map(|p| ("stats", p)));
    for (i, (what, p)) in ports.iter().enumerate() {
        if *p == 0 {
            return Err(HaproxyError::BadPorts { problem: format!("the {what} port is 0 (expected 1-65535)") });
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
            return Err(HaproxyError::BadPorts { problem: format!("the {other} and {what} ports are both {p}") });
        }
    }
    // One `server` line per node: PostgreSQL at the node's address, the check at its
    // agent's port (and address, when the agent listens on another one).
    let mut servers = String::new();
    for n in &cluster.nodes {
        let address = n.address.as_deref().ok_or_else(|| HaproxyError::NoAddress { node: n.name.clone() })?;
        let (listen, api_port) = cluster.agent_api(&n.name).ok_or_else(|| HaproxyError::NoAddress { node: n.name.clone() })?;
        let check_addr = match listen.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => None,
            _ if listen == address => None,
            _ => Some(listen),
        };
        let _ = write!(servers, "    server {} {} check port {api_port}", n.name, host_port(address, n.port));
        if let Some(a) = check_addr {
            let _ = write!(servers, " addr {a}");
        }
        servers.push('\n');
    }
    let name = &cluster.name;
    let rw = host_port(&opts.bind, opts.rw_port);
    let ro = host_port(&opts.bind, opts.ro_port);
    let lag = ha.replica_max_lag;
    let mut out = String::new();
    let _ = write!(
        out,
        "\
# HAProxy 2.6 configuration for the pgrepl cluster \"{name}\", written by
# `pgrepl render --haproxy`: render it again when the cluster's nodes change.
#
#   {rw:<w$}  read-write: the node whose agent answers 200 on /primary (only
#   {blank:<w$}  the holder of the leader lease that accepts writes does)
#   {ro:<w$}  read-only: balanced over the nodes whose agent answers 200 on
#   {blank:<w$}  /replica (streaming standbys at most {lag} bytes behind, the
#   {blank:<w$}  spec's [ha] replica_max_lag); never the primary
#
# The health checks ask each node's agent (`pgrepl agent`, on [ha] api_port) over HTTP,
# not PostgreSQL: only the agents know which node holds the lease. HAProxy counts a node
# as up until its first check, all within the first second after it starts: a session
# opened in that second may reach the wrong node (PostgreSQL refuses writes on a standby).
# Check the file with `haproxy -c -f FILE`, run it with `haproxy -f FILE`.

global
    # Servers going UP and DOWN are logged on stdout (connections too at \"info\").
    log stdout format raw local0 notice
    maxconn 1024

defaults
    mode tcp
    log global
    # A connection to PostgreSQL is made quickly or not at all.
    timeout connect 1s
    # Database sessions wait between queries, and pools keep them open for long: only a
    # session silent in both directions for 30 minutes is closed.
    timeout client 30m
    timeout server 30m
    # An agent that does not answer within a second has failed the check.
    timeout check 1s
    # A refused connection (a primary that has just stopped, not yet marked down) is
    # tried again at once through the balancer (redispatch on every retry): a retry on
    # the same server would first wait a turn-around of up to 1 s, which is what made
    # switchovers through HAProxy half a second slower than through libpq.
    retries 3
    option redispatch 1
    # Per listener; each PostgreSQL refuses what exceeds its own max_connections.
    maxconn 500

listen {name}-rw
    bind {rw}
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    # Every node is checked every 200 ms (an agent answers from memory), so a new primary
    # gets connections within 200 ms of its agent answering 200 (rise 1: only the lease
    # holder does). A node that fails a check is checked again after 100 ms (fastinter)
    # and dropped after two failures (fall 2), within 0.3 s of its agent answering 503
    # (an agent stepping down says so before it stops its server): one slow answer does
    # not cut the primary's sessions. on-marked-down shutdown-sessions: a dropped node's
    # sessions are closed, so clients reconnect to the new primary instead of hanging on
    # the old.
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
listen {name}-ro
    bind {ro}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /replica
    http-check expect status 200
    # As above: a standby that falls too far behind, stops streaming or is promoted is
    # dropped within about 0.3 s (a check every 200 ms, then two failures 100 ms apart)
    # and its read sessions closed, so none reads from the primary after that.
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}",
        blank = "",
        w = rw.len().max(ro.len()),
    );
    if let Some(p) = opts.stats_port {
        let _ = write!(
            out,
            "
listen {name}-stats
    # HAProxy's own stats page (read-only: no admin actions).
    mode http
    bind {stats}
    maxconn 10
    timeout client 10s
    stats enable
    stats uri /
    stats refresh 5s
",
            stats = host_port(&opts.bind, p),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterSpec;

    fn cluster(extra: &str, nodes: &str) -> Cluster {
        ClusterSpec::from_toml(&format!("name = \"t\"\n{extra}\n[provider]\nkind = \"local\"\nbase_port = 6432\n{nodes}"))
            .unwrap()
            .validate()
            .unwrap()
    }

    const HA: &str = "[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    const TWO: &str = "[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n";

    #[test]
    fn without_ha_it_is_refused_naming_why() {
        let e = haproxy_config(&cluster("", TWO), &HaproxyOptions::default()).unwrap_err();
        assert_eq!(e, HaproxyError::NoHa { cluster: "t".into() });
        assert!(e.to_string().contains("needs the agents' health endpoints") && e.to_string().contains("[ha]"), "{e}");
    }

    #[test]
    fn bad_bind_and_ports_are_refused() {
        let c = cluster(HA, TWO);
        let bad = |o: HaproxyOptions| haproxy_config(&c, &o).unwrap_err().to_string();
        assert!(bad(HaproxyOptions { bind: "localhost".into(), ..Default::default() }).contains("\"localhost\" is not an IP address"));
        assert!(bad(HaproxyOptions { ro_port: 5000, ..Default::default() }).contains("read-write and read-only ports are both 5000"));
        assert!(bad(HaproxyOptions { stats_port: Some(5001), ..Default::default() }).contains("read-only and stats ports are both 5001"));
        assert!(bad(HaproxyOptions { rw_port: 0, ..Default::default() }).contains("read-write port is 0"));
    }

    #[test]
    fn each_node_is_checked_at_its_agent() {
        let cfg = haproxy_config(&cluster(HA, TWO), &HaproxyOptions::default()).unwrap();
        // Local nodes share 127.0.0.1: agents on api_port + index.
        assert_eq!(cfg.matches("server db1 127.0.0.1:6432 check port 8008\n").count(), 2, "{cfg}");
        assert_eq!(cfg.matches("server db2 127.0.0.1:6433 check port 8009\n").count(), 2, "{cfg}");
        assert!(cfg.contains("uri /primary") && cfg.contains("uri /replica"));
        assert!(!cfg.contains("stats enable"), "no stats page unless asked");
        assert!(!cfg.contains("0.0.0.0") && !cfg.contains("bind :"), "loopback by default:\n{cfg}");
    }

    #[test]
    fn an_agent_listening_elsewhere_is_checked_there_and_ipv6_is_bracketed() {
        let nodes = "[[nodes]]\nname = \"db1\"\nrole = \"primary\"\naddress = \"::1\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\naddress = \"127.0.0.2\"\n";
        let c = cluster(&format!("[ha]\napi_listen = \"127.0.0.9\"\n{HA}"), nodes);
        let cfg = haproxy_config(&c, &HaproxyOptions { bind: "::1".into(), stats_port: Some(7000), ..Default::default() }).unwrap();
        assert!(cfg.contains("server db1 [::1]:6432 check port 8008 addr 127.0.0.9\n"), "{cfg}");
        assert!(cfg.contains("bind [::1]:5000") && cfg.contains("bind [::1]:7000"), "{cfg}");
        // Listening on every interface: checked at the node's own address.
        let c = cluster(&format!("[ha]\napi_listen = \"0.0.0.0\"\n{HA}"), nodes);
        let cfg = haproxy_config(&c, &HaproxyOptions::default()).unwrap();
        assert!(cfg.contains("server db2 127.0.0.2:6433 check port 8008\n"), "{cfg}");
    }
}
