//! The cluster spec: what the user asked for, as written in `pgrepl.toml`.
//!
//! A [`ClusterSpec`] mirrors the file and may be inconsistent; [`ClusterSpec::validate`]
//! (in the validation module, which depends on this one and not the other way round)
//! turns it into a [`Cluster`](crate::cluster::Cluster) whose invariants hold, or into
//! [`SpecErrors`] naming every bad field at once. Rust callers
//! build the same spec with [`ClusterSpec::builder`] and get the same validation.
//!
//! ```toml
//! name = "demo"
//! postgres = "16"            # or "detect" (the default): the newest installed
//!
//! [replication]
//! user = "replicator"
//! slots = true               # default: on where the version has slots (9.4+)
//! sync = { mode = "any", count = 1 }
//!
//! [archive]
//! mode = "dir"
//! path = "/var/lib/pgrepl/archive"
//!
//! [settings]                 # extra settings for every node
//! shared_buffers = "256MB"
//!
//! [provider]
//! kind = "local"
//!
//! [[nodes]]
//! name = "db1"
//! role = "primary"
//!
//! [[nodes]]
//! name = "db2"
//! role = "standby"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec_error::{SpecError, SpecErrors};
use crate::version::PgMajor;

mod backup;
pub use backup::{BackupSpec, BackupTool, Compression, RetentionSpec, Sse, parse_window};

/// The whole cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// PostgreSQL major, or detect the newest installed.
    #[serde(default)]
    pub postgres: VersionChoice,
    /// Directory of the server binaries (`postgres`, `initdb`, `pg_ctl`); default: discovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bin: Option<PathBuf>,
    /// Directory of the client tools (`psql`, `pg_basebackup`, `pg_rewind`) when they are
    /// not beside the server binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_client_bin: Option<PathBuf>,
    /// Replication user, auth, slots and synchronous replication.
    #[serde(default)]
    pub replication: ReplicationSpec,
    /// WAL archiving.
    #[serde(default)]
    pub archive: ArchiveSpec,
    /// Extra settings for every node (postgresql.conf names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, SettingValue>,
    /// Where the hosts come from and how pgrepl reaches them.
    #[serde(default)]
    pub provider: ProviderSpec,
    /// The nodes; exactly one has `role = "primary"`.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Automatic failover: a `pgrepl agent` per node, the cluster's truth in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSpec>,
    /// Base backups and the WAL archive for point-in-time recovery (`[backup]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

/// `[ha]`: automatic failover. Each node runs `pgrepl agent`; the leader key in etcd,
/// bound to the leader's lease, says which node may accept writes.
///
/// ```toml
/// [ha]
/// ttl = 3                      # seconds: the leader lease
/// loop_wait = 1                # seconds between two loops of an agent
/// safety_margin = 1            # seconds: a primary stops writes this long before its lease can end
/// maximum_lag_on_failover = 1048576   # bytes: a standby further behind may not take over
/// api_port = 8008              # each agent's HTTP endpoint (local clusters: 8008, 8009, ... per node)
/// # api_listen = "0.0.0.0"     # default: the node's own address, never every interface
/// replica_max_lag = 16777216   # bytes: /replica answers 503 further behind (`?lag=` overrides)
///
/// [ha.etcd]
/// endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
/// # ca_file = "/etc/pgrepl/etcd-ca.pem"; cert_file/key_file: a client certificate
/// # user = "pgrepl"; password_file = "/etc/pgrepl/etcd.password"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSpec {
    /// The leader lease, in seconds (default 3).
    #[serde(default = "HaSpec::default_ttl")]
    pub ttl: f64,
    /// Seconds between two loops of an agent when nothing wakes it (default 1).
    #[serde(default = "HaSpec::default_loop_wait")]
    pub loop_wait: f64,
    /// Seconds before its lease can run out at which a primary that could not renew stops
    /// accepting writes (default 1).
    #[serde(default = "HaSpec::default_safety_margin")]
    pub safety_margin: f64,
    /// Bytes: a standby further behind the last known primary position may not take over
    /// (default 1 MiB).
    #[serde(default = "HaSpec::default_max_lag")]
    pub maximum_lag_on_failover: u64,
    /// The port of each agent's HTTP endpoint (health checks, `/metrics`; default 8008).
    /// On a local cluster, whose nodes share an address, node `i` (in spec order) uses
    /// `api_port + i`.
    #[serde(default = "HaSpec::default_api_port")]
    pub api_port: u16,
    /// The address the agents' HTTP endpoint listens on (default: the node's own address;
    /// `0.0.0.0` only when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<String>,
    /// Bytes: a standby further behind its primary answers 503 on `/replica` (default 16 MiB;
    /// `?lag=` overrides per check).
    #[serde(default = "HaSpec::default_replica_max_lag")]
    pub replica_max_lag: u64,
    /// SSH and EC2 hosts: a pgrepl binary already on every host (an absolute path), run
    /// as the agent instead of the one pgrepl uploads (which it does only when the host's
    /// architecture is this machine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_binary: Option<String>,
    /// SSH and EC2 hosts: where each host downloads the agent's pgrepl binary (https),
    /// checked against `agent_binary_sha256` before it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_binary_url: Option<String>,
    /// The SHA-256 (64 hex digits) of the binary at `agent_binary_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_binary_sha256: Option<String>,
    /// The etcd cluster.
    pub etcd: EtcdSpec,
}

impl HaSpec {
    fn default_ttl() -> f64 {
        3.0
    }
    fn default_loop_wait() -> f64 {
        1.0
    }
    fn default_safety_margin() -> f64 {
        1.0
    }
    fn default_max_lag() -> u64 {
        1 << 20
    }
    fn default_api_port() -> u16 {
        8008
    }
    fn default_replica_max_lag() -> u64 {
        16 << 20
    }

    /// An `[ha]` section with the defaults, for these etcd endpoints.
    pub fn with_endpoints(endpoints: impl IntoIterator<Item = impl Into<String>>) -> HaSpec {
        HaSpec {
            ttl: Self::default_ttl(),
            loop_wait: Self::default_loop_wait(),
            safety_margin: Self::default_safety_margin(),
            maximum_lag_on_failover: Self::default_max_lag(),
            api_port: Self::default_api_port(),
            api_listen: None,
            replica_max_lag: Self::default_replica_max_lag(),
            agent_binary: None,
            agent_binary_url: None,
            agent_binary_sha256: None,
            etcd: EtcdSpec { endpoints: endpoints.into_iter().map(Into::into).collect(), ..EtcdSpec::default() },
        }
    }
}

/// `[ha.etcd]`: how the agents and the CLI reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    /// Client URLs of every member (`http://host:port` or `https://host:port`); empty
    /// when pgrepl deploys etcd itself (`deploy = true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// pgrepl deploys the etcd cluster on the cluster's hosts (SSH and EC2), with peer and
    /// client TLS from a CA it generates and client certificates for the agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deploy: bool,
    /// With `deploy`: the nodes (witnesses included) that hold a member; default every
    /// node when their number is odd, else every node but the last data node. 3 or 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// With `deploy`: the client port of every member (default 2379).
    #[serde(default = "EtcdSpec::default_client_port")]
    pub client_port: u16,
    /// With `deploy`: the peer port of every member (default 2380).
    #[serde(default = "EtcdSpec::default_peer_port")]
    pub peer_port: u16,
    /// The CA certificate that signed etcd's (https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (with `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// An etcd user (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The file holding that user's password (never written in the spec itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl EtcdSpec {
    fn default_client_port() -> u16 {
        2379
    }
    fn default_peer_port() -> u16 {
        2380
    }
}

impl Default for EtcdSpec {
    fn default() -> Self {
        EtcdSpec {
            endpoints: Vec::new(),
            deploy: false,
            members: None,
            client_port: Self::default_client_port(),
            peer_port: Self::default_peer_port(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }
}

/// `postgres = "16"` or `postgres = "detect"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionChoice {
    /// Use the newest installed major.
    #[default]
    Detect,
    /// This major.
    Major(PgMajor),
}

impl Serialize for VersionChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            VersionChoice::Detect => s.serialize_str("detect"),
            VersionChoice::Major(m) => m.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for VersionChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Str(s) if s.eq_ignore_ascii_case("detect") => return Ok(VersionChoice::Detect),
            Raw::Str(s) => s,
            Raw::Num(n) if n.fract() == 0.0 => format!("{n:.0}"),
            Raw::Num(n) => format!("{n}"),
        };
        text.parse::<PgMajor>().map(VersionChoice::Major).map_err(|e| serde::de::Error::custom(format!("{e}, or \"detect\"")))
    }
}

/// A node's role in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The one writable node.
    Primary,
    /// A hot standby.
    Standby,
    /// A host with no PostgreSQL that holds an etcd member and an agent (`[ha]` only), so
    /// that a majority survives the loss of a whole location.
    Witness,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Witness => "witness",
        })
    }
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name: lowercase letters, digits, `-` and `_`; also the standby's `application_name`.
    pub name: String,
    /// Address PostgreSQL listens on and replicates over. Local provider: a loopback
    /// address (default 127.0.0.1). SSH: required. AWS: filled in by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Port; default 5432 (local provider: `base_port` + the node's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `primary` or `standby`.
    pub role: Role,
    /// The node a standby streams from (cascading); default the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Failover and synchronous priority: higher wins; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The replication slot this standby uses on its upstream; default `pgrepl_<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_name: Option<String>,
    /// SSH only: the host to connect to when it differs from `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// Where the node runs (a data centre, an availability zone): failover prefers a
    /// standby in the old primary's location; etcd members are spread over locations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Extra settings for this node; they win over the cluster's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, SettingValue>,
}

impl NodeSpec {
    /// A node with this name and role and every option at its default.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        NodeSpec {
            name: name.into(),
            address: None,
            port: None,
            role,
            upstream: None,
            priority: None,
            slot_name: None,
            ssh_host: None,
            location: None,
            settings: BTreeMap::new(),
        }
    }

    /// A primary named `name`.
    pub fn primary(name: impl Into<String>) -> Self {
        Self::new(name, Role::Primary)
    }

    /// A standby named `name`.
    pub fn standby(name: impl Into<String>) -> Self {
        Self::new(name, Role::Standby)
    }

    /// Sets the address.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Streams from `upstream` instead of the primary.
    pub fn with_upstream(mut self, upstream: impl Into<String>) -> Self {
        self.upstream = Some(upstream.into());
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Adds a setting for this node.
    pub fn with_setting(mut self, name: impl Into<String>, value: impl Into<SettingValue>) -> Self {
        self.settings.insert(name.into(), value.into());
        self
    }
}

/// `[replication]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSpec {
    /// The replication role; default `replicator`.
    #[serde(default = "default_user")]
    pub user: String,
    /// `scram-sha-256` (10+, the default there) or `md5` (the default before 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMethod>,
    /// A file holding the replication password. Default: pgrepl generates one and keeps
    /// it, mode 0600, in the cluster's state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Physical replication slots, one per standby; default on where the version has them (9.4+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<bool>,
    /// WAL kept on the primary for standbys, in MB (`wal_keep_size`, or the equivalent
    /// `wal_keep_segments`); default 512.
    #[serde(default = "default_wal_keep_mb")]
    pub wal_keep_mb: u32,
    /// Synchronous replication; default off.
    #[serde(default)]
    pub sync: SyncSpec,
}

fn default_user() -> String {
    "replicator".into()
}
fn default_wal_keep_mb() -> u32 {
    512
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec {
            user: default_user(),
            auth: None,
            password_file: None,
            slots: None,
            wal_keep_mb: default_wal_keep_mb(),
            sync: SyncSpec::default(),
        }
    }
}

/// Password authentication for the replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    /// `scram-sha-256` (10+).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `md5`.
    #[serde(rename = "md5")]
    Md5,
}

impl AuthMethod {
    /// The pg_hba.conf method name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }
}

/// `[replication.sync]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    /// `off`, `first` (priority) or `any` (quorum, 10+).
    #[serde(default)]
    pub mode: SyncMode,
    /// How many standbys must confirm a commit; default 1.
    #[serde(default = "one")]
    pub count: u32,
    /// Candidate standbys, by name; default every standby that streams from the primary,
    /// highest priority first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<Vec<String>>,
    /// `synchronous_commit`: `on` (default), `remote_write` or `remote_apply` (9.6+).
    #[serde(default)]
    pub commit: SyncCommit,
    /// When standbys are fenced or unreachable and fewer than `count` remain: `false`
    /// (default) lowers the count, or goes asynchronous, and says so; `true` keeps it, so
    /// commits wait until enough standbys are back (no acknowledged write without them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

fn one() -> u32 {
    1
}

impl Default for SyncSpec {
    fn default() -> Self {
        SyncSpec { mode: SyncMode::Off, count: 1, standbys: None, commit: SyncCommit::On, strict: false }
    }
}

/// Synchronous replication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication.
    #[default]
    Off,
    /// The `count` highest-priority connected standbys confirm (`FIRST n`).
    First,
    /// Any `count` of the candidates confirm (`ANY n`, quorum, 10+).
    Any,
}

/// `synchronous_commit` when synchronous replication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncCommit {
    /// Wait for the standby to flush the commit record.
    #[default]
    On,
    /// Wait for the standby to write it (9.2+).
    RemoteWrite,
    /// Wait for the standby to apply it, so reads there see it (9.6+).
    RemoteApply,
}

impl SyncCommit {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncCommit::On => "on",
            SyncCommit::RemoteWrite => "remote_write",
            SyncCommit::RemoteApply => "remote_apply",
        }
    }
}

/// `[archive]`: WAL archiving.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArchiveSpec {
    /// No archiving (default).
    #[default]
    None,
    /// Copy WAL into a directory every node can read (a shared mount, or this machine).
    Dir {
        /// Absolute path.
        path: PathBuf,
    },
    /// Your own pair of commands (`%p` and `%f` as in PostgreSQL).
    Command {
        /// `archive_command`.
        archive_command: String,
        /// `restore_command`.
        restore_command: String,
    },
}

/// A setting's value as written in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    /// `on`/`off`.
    Bool(bool),
    /// A number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Anything else, quoted in postgresql.conf.
    Text(String),
}

impl From<&str> for SettingValue {
    fn from(s: &str) -> Self {
        SettingValue::Text(s.to_string())
    }
}
impl From<String> for SettingValue {
    fn from(s: String) -> Self {
        SettingValue::Text(s)
    }
}
impl From<i64> for SettingValue {
    fn from(n: i64) -> Self {
        SettingValue::Int(n)
    }
}
impl From<bool> for SettingValue {
    fn from(b: bool) -> Self {
        SettingValue::Bool(b)
    }
}

/// `[provider]`: where the hosts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
// One value per spec, parsed once: the size difference costs nothing worth a Box in every match.
#[allow(clippy::large_enum_variant)]
pub enum ProviderSpec {
    /// Every node on this machine, each with its own data directory and port.
    Local(LocalProviderSpec),
    /// Existing hosts reached over SSH.
    Ssh(SshProviderSpec),
    /// EC2 instances that pgrepl provisions, then deploys over SSH.
    Aws(AwsProviderSpec),
}

impl Default for ProviderSpec {
    fn default() -> Self {
        ProviderSpec::Local(LocalProviderSpec::default())
    }
}

impl ProviderSpec {
    /// `local`, `ssh` or `aws`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::Local(_) => "local",
            ProviderSpec::Ssh(_) => "ssh",
            ProviderSpec::Aws(_) => "aws",
        }
    }
}

/// `[provider] kind = "local"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProviderSpec {
    /// Where nodes live (`<work_dir>/<node>/data`). Default: `/var/lib/pgrepl/<cluster>`
    /// as root, `$XDG_DATA_HOME/pgrepl/<cluster>` (or `~/.local/share/pgrepl/<cluster>`) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// The OS user PostgreSQL runs as. Default: `postgres` when pgrepl runs as root
    /// (PostgreSQL refuses to run as root), else the current user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
    /// The first node's port when nodes give none; default 5432.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_port: Option<u16>,
}

/// `[provider] kind = "ssh"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshProviderSpec {
    /// Login user; default `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH port; default 22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key file; default: ssh-agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// known_hosts file; default `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// `strict` (default): unknown or changed host keys are refused; `accept-new`: unknown
    /// keys are added, changed keys are still refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_policy: Option<String>,
    /// How to run commands as root or postgres when the login user is not root:
    /// `sudo` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#become: Option<String>,
    /// Connect timeout in seconds; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
    /// Where PostgreSQL lives on the hosts: `auto` (default: the distribution's layout,
    /// Debian or RHEL-like) or `plain` (`pg_ctl` with the spec's `pg_bin`, everything under
    /// `/var/lib/pgrepl/<cluster>`; for your own builds or other systems).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The plain layout's root on the hosts: pgrepl keeps `<data_root>/<cluster>/{data,run,log,pgrepl}`;
    /// default `/var/lib/pgrepl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
}

/// `[provider] kind = "aws"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsProviderSpec {
    /// Region; default from the AWS environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override (private endpoints, tests); also `AWS_ENDPOINT_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// CIDR allowed to reach SSH (22), and with `[ha]` the agents' HTTP port and a
    /// deployed etcd's client port (the admin's `pgrepl` reads them). Required: there is
    /// no open default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_cidr: Option<String>,
    /// Extra CIDRs allowed to reach PostgreSQL (applications).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_cidrs: Vec<String>,
    /// With `[ha]`: extra CIDRs allowed to reach the agents' HTTP port (`[ha] api_port`:
    /// HAProxy's checks, a Prometheus scrape); default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_cidrs: Vec<String>,
    /// Instance type; default `t4g.small`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// AMI id; default: the newest Ubuntu LTS for the instance type's architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<String>,
    /// Subnet ids to spread nodes over; default the default VPC's subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
    /// Public key file to import as the key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key_file: Option<PathBuf>,
    /// An existing key pair name instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Root volume size in GiB; default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_gb: Option<u32>,
    /// Root volume type; default `gp3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// Instance type of the witnesses (`role = "witness"`: an etcd member and an agent,
    /// no PostgreSQL); default `instance_type`. Same architecture as `instance_type`, since
    /// every instance boots the same AMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_instance_type: Option<String>,
    /// The availability zone of each node `location` (`[provider.locations]
    /// east = "us-east-2a"`). A location not listed here must itself be an availability
    /// zone name (`location = "us-east-2a"`); see [`AwsProviderSpec::zone_of`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, String>,
    /// How pgrepl logs in once the instances run.
    #[serde(default)]
    pub ssh: SshProviderSpec,
}

impl AwsProviderSpec {
    /// The availability zone a node with `location` goes to: the zone
    /// `[provider.locations]` maps it to, else the location itself when it is shaped like
    /// an availability zone name (see [`is_availability_zone`]), else `None` (validation
    /// refuses such a location on the AWS provider).
    ///
    /// ```
    /// use pgrepl_core::spec::AwsProviderSpec;
    /// let mut aws = AwsProviderSpec::default();
    /// aws.locations.insert("east".into(), "us-east-2a".into());
    /// assert_eq!(aws.zone_of("east"), Some("us-east-2a"));
    /// assert_eq!(aws.zone_of("us-east-2c"), Some("us-east-2c"));
    /// assert_eq!(aws.zone_of("west"), None);
    /// ```
    pub fn zone_of<'a>(&'a self, location: &'a str) -> Option<&'a str> {
        zone_of_location(&self.locations, location)
    }
}

/// [`AwsProviderSpec::zone_of`] for a map of locations to zones on its own.
pub fn zone_of_location<'a>(locations: &'a BTreeMap<String, String>, location: &'a str) -> Option<&'a str> {
    match locations.get(location) {
        Some(zone) => Some(zone.as_str()),
        None => is_availability_zone(location).then_some(location),
    }
}

/// Whether `s` is shaped like an EC2 availability zone name: a region name
/// (`us-east-2`, `ap-southeast-1`, `us-gov-west-1`) followed by a zone letter
/// (`us-east-2a`), or a Local Zone (`us-west-2-lax-1a`). Whether the zone exists is for
/// EC2 to say.
///
/// ```
/// use pgrepl_core::spec::is_availability_zone;
/// assert!(is_availability_zone("us-east-2a"));
/// assert!(is_availability_zone("us-west-2-lax-1a"));
/// assert!(!is_availability_zone("us-east-2"));
/// assert!(!is_availability_zone("east"));
/// ```
pub fn is_availability_zone(s: &str) -> bool {
    let Some(rest) = s.strip_suffix(|c: char| c.is_ascii_lowercase()) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    let alpha = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase());
    let digits = |p: &str| !p.is_empty() && p.len() <= 2 && p.chars().all(|c| c.is_ascii_digit());
    // <geo>-<direction...>-<n>, then optionally -<city>-<n> (a Local Zone).
    let Some(first_digit) = parts.iter().position(|p| digits(p)) else {
        return false;
    };
    let region_ok = first_digit >= 2 && parts[0].len() == 2 && parts[..first_digit].iter().all(|p| alpha(p));
    let tail = &parts[first_digit + 1..];
    region_ok && (tail.is_empty() || (tail.len() == 2 && alpha(tail[0]) && digits(tail[1])))
}

/// The region of an availability zone name (`us-east-2a` → `us-east-2`,
/// `us-west-2-lax-1a` → `us-west-2`), when it is one.
pub fn region_of_zone(zone: &str) -> Option<&str> {
    if !is_availability_zone(zone) {
        return None;
    }
    let bytes = zone.as_bytes();
    // The region ends at the first run of digits.
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let end = bytes[start..].iter().position(|b| !b.is_ascii_digit()).map_or(zone.len(), |k| start + k);
    Some(&zone[..end])
}

impl ClusterSpec {
    /// Parses a `pgrepl.toml`. Syntax errors name the line and key; call
    /// [`validate`](Self::validate) next.
    pub fn from_toml(text: &str) -> Result<ClusterSpec, SpecErrors> {
        toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            SpecErrors::one(SpecError::new(field, e.message().trim_end(), "a valid pgrepl.toml"))
        })
    }

    /// The spec as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a ClusterSpec always serializes")
    }

    /// Starts a spec in Rust code; finish with [`ClusterSpecBuilder::build`].
    ///
    /// ```
    /// use pgrepl_core::{ClusterSpec, NodeSpec, PgMajor};
    /// let cluster = ClusterSpec::builder("demo")
    ///     .postgres(PgMajor::V16)
    ///     .node(NodeSpec::primary("db1"))
    ///     .node(NodeSpec::standby("db2"))
    ///     .node(NodeSpec::standby("db3"))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cluster.primary().name, "db1");
    /// ```
    pub fn builder(name: impl Into<String>) -> ClusterSpecBuilder {
        ClusterSpecBuilder {
            spec: ClusterSpec {
                name: name.into(),
                postgres: VersionChoice::Detect,
                pg_bin: None,
                pg_client_bin: None,
                replication: ReplicationSpec::default(),
                archive: ArchiveSpec::None,
                settings: BTreeMap::new(),
                provider: ProviderSpec::default(),
                nodes: Vec::new(),
                ha: None,
                backup: None,
            },
        }
    }
}

/// Builds a [`ClusterSpec`] in code. See [`ClusterSpec::builder`].
#[derive(Debug, Clone)]
pub struct ClusterSpecBuilder {
    spec: ClusterSpec,
}

impl ClusterSpecBuilder {
    /// The PostgreSQL major.
    pub fn postgres(mut self, major: PgMajor) -> Self {
        self.spec.postgres = VersionChoice::Major(major);
        self
    }
    /// Automatic failover (`[ha]`).
    pub fn ha(mut self, ha: HaSpec) -> Self {
        self.spec.ha = Some(ha);
        self
    }
    /// Adds a node.
    pub fn node(mut self, node: NodeSpec) -> Self {
        self.spec.nodes.push(node);
        self
    }
    /// The replication section.
    pub fn replication(mut self, replication: ReplicationSpec) -> Self {
        self.spec.replication = replication;
        self
    }
    /// Synchronous replication.
    pub fn sync(mut self, mode: SyncMode, count: u32) -> Self {
        self.spec.replication.sync.mode = mode;
        self.spec.replication.sync.count = count;
        self
    }
    /// WAL archiving.
    pub fn archive(mut self, archive: ArchiveSpec) -> Self {
        self.spec.archive = archive;
        self
    }
    /// Base backups and the WAL archive (`[backup]`).
    pub fn backup(mut self, backup: BackupSpec) -> Self {
        self.spec.backup = Some(backup);
        self
    }
    /// A setting for every node.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<SettingValue>) -> Self {
        self.spec.settings.insert(name.into(), value.into());
        self
    }
    /// The provider.
    pub fn provider(mut self, provider: ProviderSpec) -> Self {
        self.spec.provider = provider;
        self
    }
    /// Server binaries directory.
    pub fn pg_bin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.pg_bin = Some(dir.into());
        self
    }
    /// The spec as built, unvalidated.
    pub fn into_spec(self) -> ClusterSpec {
        self.spec
    }
    // `build` (validate and return the cluster) lives with validation.
}
