//! Rendering: `(Cluster, node, NodeLayout, secrets)` → every file, SQL statement and
//! command that node needs. Pure: nothing here touches a host.
//!
//! What lands where:
//! - `pgrepl.conf` in the config directory, included from the distribution's
//!   `postgresql.conf` by one appended `include` line (the distribution's file is never
//!   rewritten wholesale). On 12+ standbys it also holds the recovery settings.
//! - a managed block at the top of `pg_hba.conf`: replication only from the cluster's
//!   other nodes (`/32` or `/128`), never from everywhere.
//! - `recovery.conf` (≤11) or `standby.signal` (12+) in a standby's data directory.
//! - the passfile (0600) with the replication password, so no password is ever in a
//!   command line or in `primary_conninfo`.
//!
//! Version differences come from [`Capabilities`]; this module never compares versions.
//!
//! Beside the nodes' own files, [`haproxy_config`] writes an HAProxy configuration that
//! routes applications to the primary and the standbys of an `[ha]` cluster.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::cluster::{Cluster, Node};
use crate::layout::{NodeLayout, ServiceControl};
use crate::secret::Secrets;
use crate::spec::{ArchiveSpec, Role, SettingValue, SyncMode};
use crate::version::{Capabilities, PgMajor, PromoteMethod, RecoveryStyle, SyncSyntax};

pub mod backup_tool;
mod etcd;
mod haproxy;
pub mod pgbackrest;
pub use etcd::{EtcdFiles, EtcdMember, etcd_endpoints, etcd_member_config, etcd_members, host_dir};
pub use haproxy::{HaproxyError, HaproxyOptions, haproxy_config};

/// The marker lines around pgrepl's block in pg_hba.conf.
pub const HBA_BEGIN: &str = "# pgrepl:begin (managed by pgrepl; edits inside this block are overwritten)";
/// See [`HBA_BEGIN`].
pub const HBA_END: &str = "# pgrepl:end";
/// The line pgrepl appends to postgresql.conf.
pub const INCLUDE_LINE: &str = "include 'pgrepl.conf'";
/// What a secret looks like in output rendered without secrets.
pub const REDACTED: &str = "********";

/// Everything one node needs.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedNode {
    /// Node name.
    pub node: String,
    /// Role it is rendered for.
    pub role: Role,
    /// PostgreSQL major.
    pub major: PgMajor,
    /// The settings of `pgrepl.conf`, in file order.
    pub settings: Vec<(String, String)>,
    /// Files, in the order they are written.
    pub files: Vec<RenderedFile>,
    /// SQL run on this node once it accepts writes (primary) or connections (slots of
    /// cascaded standbys).
    pub sql: Vec<Sql>,
    /// Commands.
    pub commands: Commands,
    /// The backup tool's own files (pgBackRest's `pgbackrest.conf` of the node): shown
    /// here with its S3 keys as `********`; the backup step of `up` and each backup
    /// operation write them on the host with the keys, 0600, the server's OS user's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_files: Vec<RenderedFile>,
}

/// How a file is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The whole file is pgrepl's.
    Whole,
    /// A block between [`HBA_BEGIN`] and [`HBA_END`] at the top of the file; the rest is kept.
    HbaBlock,
    /// One line that must be present at the end of the file; the rest is kept.
    IncludeLine,
}

/// One file.
#[derive(Clone, Serialize)]
pub struct RenderedFile {
    /// Absolute path on the node's host.
    pub path: String,
    /// Unix mode.
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    /// How it is placed.
    pub placement: Placement,
    /// Contents (or the block, or the line). Secret contents are redacted in `Debug`
    /// and JSON.
    #[serde(serialize_with = "redact_if_secret_contents")]
    pub contents: FileContents,
}

/// File contents that may hold a secret.
#[derive(Clone)]
pub struct FileContents {
    /// The text.
    pub text: String,
    /// Whether it holds a secret.
    pub secret: bool,
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("placement", &self.placement)
            .field("contents", &self.contents)
            .finish()
    }
}

impl fmt::Debug for FileContents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret { f.write_str(REDACTED) } else { fmt::Debug::fmt(&self.text, f) }
    }
}

fn octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

fn redact_if_secret_contents<S: Serializer>(c: &FileContents, s: S) -> Result<S::Ok, S::Error> {
    if c.secret { s.serialize_str(REDACTED) } else { s.serialize_str(&c.text) }
}

/// One SQL statement with what it is for.
#[derive(Clone)]
pub struct Sql {
    /// What it does.
    pub purpose: String,
    /// The statement. Redacted in `Debug` and JSON when it holds a secret.
    pub text: String,
    /// Whether the text holds a secret (a password hash).
    pub secret: bool,
}

impl Serialize for Sql {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Sql", 2)?;
        st.serialize_field("purpose", &self.purpose)?;
        st.serialize_field("text", if self.secret { REDACTED } else { &self.text })?;
        st.end()
    }
}

impl fmt::Debug for Sql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: &str = if self.secret { REDACTED } else { &self.text };
        f.debug_struct("Sql").field("purpose", &self.purpose).field("text", &text).finish()
    }
}

/// A command: a program and its arguments, never a shell string. Secrets never appear
/// here; they travel through files named in `env` (`PGPASSFILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLine {
    /// Absolute path of the program.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment variables (never secrets).
    pub env: Vec<(String, String)>,
    /// OS user it runs as.
    pub user: String,
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={} ", shell_quote(v))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        Ok(())
    }
}

/// How a standby is promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Promote {
    /// Run this SQL on the standby (12+: `pg_promote()`).
    Sql {
        /// The statement.
        sql: String,
    },
    /// Run this command.
    Command {
        /// The command.
        command: CommandLine,
    },
    /// Create this file (the trigger file).
    TriggerFile {
        /// Its path.
        path: String,
    },
}

/// The commands of one node.
#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    /// Creates the primary's cluster (initdb with data checksums).
    pub init: Option<CommandLine>,
    /// Clones a standby from its upstream (pg_basebackup; password from the passfile).
    pub clone: Option<CommandLine>,
    /// Starts the server.
    pub start: CommandLine,
    /// Stops the server (fast mode: clients are disconnected, a shutdown checkpoint is written).
    pub stop: CommandLine,
    /// Reloads the configuration.
    pub reload: CommandLine,
    /// Promotes it (standbys).
    pub promote: Option<Promote>,
    /// Removes the cluster where the distribution manages it (Debian: pg_dropcluster).
    pub drop: Option<CommandLine>,
    /// Turns off the OS's own start of the server at boot: pgrepl starts its nodes itself,
    /// so a node fenced while unreachable does not come back writable after a reboot.
    pub autostart: Autostart,
}

/// How the OS would start a node's server at boot, and how pgrepl turns that off. Empty
/// where nothing starts it (pg_ctl layouts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Autostart {
    /// Debian: the cluster's `start.conf`, which pgrepl makes say `manual` (the init script
    /// and systemd's postgresql generator then leave it alone at boot; `pg_ctlcluster` and
    /// `systemctl start` still start it, `pg_lsclusters` still lists it).
    pub start_conf: Option<String>,
    /// Debian with systemd: run after changing `start.conf`, so that systemd's postgresql
    /// generator drops the cluster from `postgresql.service`'s wants now, not only at the
    /// next boot (`systemctl daemon-reload`).
    pub reload_units: Option<CommandLine>,
    /// systemd: prints `enabled` when the unit starts at boot (`systemctl is-enabled <unit>`).
    pub is_enabled: Option<CommandLine>,
    /// systemd: stops the unit from starting at boot (`systemctl disable <unit>`).
    pub disable: Option<CommandLine>,
}

impl Autostart {
    /// Whether the layout has nothing that starts the server at boot.
    pub fn is_empty(&self) -> bool {
        self.start_conf.is_none() && self.disable.is_none()
    }
}

/// The mode a Debian `start.conf` sets, as postgresql-common reads it: the first word of the
/// first line that is not a comment (`auto`, `manual` or `disabled`); `auto` when there is
/// none (the file missing or empty).
pub fn start_conf_mode(text: &str) -> &str {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        return ["auto", "manual", "disabled"].into_iter().find(|m| line.starts_with(m)).unwrap_or(line);
    }
    "auto"
}

/// `start.conf` set to `manual`, as postgresql-common's `set_cluster_start_conf` does it: the
/// mode line replaced, comments kept; the line appended when there is none.
pub fn start_conf_manual(text: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for line in text.lines() {
        let t = line.trim_start();
        match ["auto", "manual", "disabled"]
            .into_iter()
            .find(|m| t.strip_prefix(m).is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')))
        {
            Some(m) => {
                out.push_str("manual");
                out.push_str(&t[m.len()..]);
                replaced = true;
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str("manual\n");
    }
    out
}

/// Why [`render_node`] could not render a node. Converts into [`Error`](crate::Error)
/// (`?` works): [`UnknownMajor`](RenderError::UnknownMajor) becomes
/// [`Error::Discovery`](crate::Error::Discovery) and [`NoSuchNode`](RenderError::NoSuchNode)
/// [`Error::Node`](crate::Error::Node), with the same messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The cluster's PostgreSQL major is not known yet, so neither are its rules.
    #[error(
        "the PostgreSQL major is not known yet: set `postgres` in the spec, pass --pg-version, or install PostgreSQL so it can be detected"
    )]
    UnknownMajor,
    /// The cluster has no node of that name.
    #[error("{node}: no such node (the cluster has: {})", .nodes.join(", "))]
    NoSuchNode {
        /// The name asked for.
        node: String,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
}

/// Renders every file, statement and command of `node_name`.
///
/// With `secrets` `None`, secret contents read `********` (a dry run); the executor
/// passes the real secrets.
pub fn render_node(
    cluster: &Cluster,
    node_name: &str,
    layout: &NodeLayout,
    secrets: Option<&Secrets>,
) -> Result<RenderedNode, RenderError> {
    let caps = cluster.caps().ok_or(RenderError::UnknownMajor)?;
    let node = cluster.node(node_name).ok_or_else(|| RenderError::NoSuchNode {
        node: node_name.to_string(),
        nodes: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
    })?;
    let settings = conf_settings(cluster, node, layout, &caps);
    let mut files = Vec::new();
    files.push(RenderedFile {
        path: format!("{}/pgrepl.conf", layout.config_dir),
        mode: 0o600,
        placement: Placement::Whole,
        contents: plain(conf_text(cluster, node, &caps, &settings)),
    });
    files.push(RenderedFile {
        path: format!("{}/postgresql.conf", layout.config_dir),
        mode: 0o600,
        placement: Placement::IncludeLine,
        contents: plain(INCLUDE_LINE.to_string()),
    });
    files.push(RenderedFile {
        path: format!("{}/pg_hba.conf", layout.config_dir),
        mode: 0o600,
        placement: Placement::HbaBlock,
        contents: plain(hba_block(cluster, node, layout)),
    });
    if node.role == Role::Standby {
        match caps.recovery {
            RecoveryStyle::RecoveryConf => files.push(RenderedFile {
                path: format!("{}/recovery.conf", layout.data_dir),
                mode: 0o600,
                placement: Placement::Whole,
                contents: plain(recovery_conf_text(cluster, node, layout, &caps)),
            }),
            RecoveryStyle::StandbySignal => files.push(RenderedFile {
                path: format!("{}/standby.signal", layout.data_dir),
                mode: 0o600,
                placement: Placement::Whole,
                contents: plain(String::new()),
            }),
        }
    }
    files.push(RenderedFile {
        path: layout.passfile(),
        mode: 0o600,
        placement: Placement::Whole,
        contents: FileContents {
            text: passfile_text(&cluster.replication.user, secrets.map(|s| s.replication_password.expose()).unwrap_or(REDACTED)),
            secret: secrets.is_some(),
        },
    });

    let mut sql = Vec::new();
    if node.role == Role::Primary {
        sql.extend(role_sql(cluster, secrets));
    }
    for d in cluster.downstream(&node.name) {
        if let Some(slot) = &d.slot {
            sql.push(Sql { purpose: format!("physical replication slot for {}", d.name), text: create_slot_sql(slot), secret: false });
        }
    }

    let commands = Commands {
        init: match (&layout.debian_cluster, node.role) {
            // Debian: pg_createcluster makes the config (and a data directory, which a
            // standby's clone then replaces).
            (Some(dc), _) => Some(createcluster_command(cluster, node, layout, dc, &caps)),
            (None, Role::Primary) if layout.owns_postgresql_conf => Some(initdb_command(cluster, layout, &caps)),
            (None, _) => None,
        },
        clone: match node.role {
            Role::Standby => Some(basebackup_command(cluster, node, layout, &caps)),
            Role::Primary | Role::Witness => None,
        },
        start: service_command(layout, "start"),
        stop: service_command(layout, "stop"),
        reload: service_command(layout, "reload"),
        promote: (node.role == Role::Standby).then(|| promote(layout, &caps)),
        drop: layout.debian_cluster.as_ref().map(|(v, c)| CommandLine {
            program: "/usr/bin/pg_dropcluster".into(),
            args: vec!["--stop".into(), v.clone(), c.clone()],
            env: Vec::new(),
            user: "root".into(),
        }),
        autostart: autostart(layout),
    };

    let backup_files = backup_tool_files(cluster, node, layout);
    Ok(RenderedNode { node: node.name.clone(), role: node.role, major: caps.major, settings, files, sql, commands, backup_files })
}

/// pgBackRest's configuration of `node` (its keys `********`), for [`RenderedNode::backup_files`].
fn backup_tool_files(cluster: &Cluster, node: &Node, layout: &NodeLayout) -> Vec<RenderedFile> {
    let Some(b) = cluster.backup.as_ref().filter(|b| b.tool == crate::spec::BackupTool::Pgbackrest) else { return Vec::new() };
    let dir = pgbackrest::config_path(&layout.pgrepl_dir, &cluster.name);
    let n =
        pgbackrest::PgbackrestNode { data_dir: &layout.data_dir, socket_dir: &layout.socket_dir, port: node.port, user: &layout.superuser };
    vec![RenderedFile {
        path: format!("{dir}/pgbackrest.conf"),
        mode: 0o600,
        placement: Placement::Whole,
        contents: FileContents { text: pgbackrest::config(b, &cluster.name, &dir, &n, None), secret: false },
    }]
}

fn plain(text: String) -> FileContents {
    FileContents { text, secret: false }
}

/// The settings of a node's `pgrepl.conf`, in order; user settings replace pgrepl's in place.
pub fn conf_settings(cluster: &Cluster, node: &Node, layout: &NodeLayout, caps: &Capabilities) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| s.push((k.to_string(), v));
    let n = cluster.nodes.len() as u32;
    set("listen_addresses", guc_quote(&node.address_or_placeholder()));
    set("port", node.port.to_string());
    set(caps.socket_dir_setting, guc_quote(&layout.socket_dir));
    if caps.cluster_name {
        set("cluster_name", guc_quote(&format!("{}/{}", cluster.name, node.name)));
    }
    set("wal_level", caps.wal_level.to_string());
    set("max_wal_senders", (n + 8).max(10).to_string());
    if caps.slots {
        set("max_replication_slots", (n + 8).max(10).to_string());
    }
    set(caps.wal_retention.setting(), guc_quote(&caps.wal_retention.value_for_mb(cluster.replication.wal_keep_mb)));
    if caps.slots {
        // wal_log_hints lets pg_rewind work even where checksums are off (9.4+).
        set("wal_log_hints", "on".into());
    }
    set("hot_standby", "on".into());
    set("hot_standby_feedback", "on".into());
    if caps.wal_retrieve_retry_interval {
        set("wal_retrieve_retry_interval", guc_quote("1s"));
    }
    match &cluster.archive {
        ArchiveSpec::None => {}
        ArchiveSpec::Dir { path } => {
            let dir = archive_dir_word(&path.to_string_lossy());
            set("archive_mode", "on".into());
            set("archive_command", guc_quote(&format!("test ! -f {dir}/%f && cp %p {dir}/%f")));
        }
        ArchiveSpec::Command { archive_command, .. } => {
            set("archive_mode", "on".into());
            set("archive_command", guc_quote(archive_command));
        }
    }
    if let Some(b) = &cluster.backup {
        // Every node archives: the one promoted after a switchover or a failover carries
        // on, and with `always` (9.5+) a standby also archives what it received, so the
        // segments a dying primary had not archived yet and the new timeline's history
        // file reach the archive from the others (the same bytes, uploaded again).
        // pgBackRest refuses backups with `always` (its `archive-mode-check`): a segment
        // pushed from a standby may differ in checksum from the primary's copy. With it
        // only the node that is primary archives (a promoted standby starts at once).
        let always = caps.archive_mode_always && b.tool != crate::spec::BackupTool::Pgbackrest;
        set("archive_mode", if always { "always" } else { "on" }.into());
        set("archive_command", guc_quote(&backup_tool::archive_command(b, &cluster.name, &layout.pgrepl_dir)));
    }
    let sync = &cluster.replication.sync;
    if node.role == Role::Primary && sync.mode != SyncMode::Off {
        if let Some(names) = sync_standby_names(caps.sync_syntax, sync.mode, sync.count, &sync.standbys) {
            set("synchronous_standby_names", guc_quote(&names));
            set("synchronous_commit", sync.commit.as_str().to_string());
        }
    }
    if node.role == Role::Standby && caps.recovery == RecoveryStyle::StandbySignal {
        for (k, v) in recovery_settings(cluster, node, layout, caps) {
            set(k, v);
        }
    }
    for (k, v) in cluster.settings.iter().chain(node.settings.iter()) {
        let value = setting_value(v);
        match s.iter_mut().find(|(name, _)| name.eq_ignore_ascii_case(k)) {
            Some(slot) => slot.1 = value,
            None => s.push((k.clone(), value)),
        }
    }
    s
}

/// The recovery settings of a standby (recovery.conf ≤11, pgrepl.conf 12+), without `standby_mode`.
fn recovery_settings(cluster: &Cluster, node: &Node, layout: &NodeLayout, caps: &Capabilities) -> Vec<(&'static str, String)> {
    let mut s = Vec::new();
    let upstream = node.upstream.as_deref().and_then(|u| cluster.node(u)).expect("a validated standby has an upstream");
    s.push(("primary_conninfo", guc_quote(&primary_conninfo(cluster, node, upstream, layout, caps))));
    if let (Some(slot), true) = (&node.slot, caps.slots) {
        s.push(("primary_slot_name", guc_quote(slot)));
    }
    s.push(("recovery_target_timeline", guc_quote("latest")));
    if let Some(trigger) = caps.trigger_setting {
        s.push((trigger, guc_quote(&trigger_file(layout))));
    }
    match &cluster.archive {
        ArchiveSpec::None => {}
        ArchiveSpec::Dir { path } => {
            s.push(("restore_command", guc_quote(&format!("cp {}/%f %p", archive_dir_word(&path.to_string_lossy())))))
        }
        ArchiveSpec::Command { restore_command, .. } => s.push(("restore_command", guc_quote(restore_command))),
    }
    if let Some(b) = &cluster.backup {
        // A standby that fell behind what its upstream keeps catches up from the archive.
        s.push(("restore_command", guc_quote(&backup_tool::restore_command(b, &cluster.name, &layout.pgrepl_dir))));
    }
    s
}

/// The archive directory as one word of `archive_command`/`restore_command`: quoted for
/// the shell PostgreSQL runs them with, and with `%` doubled (PostgreSQL expands `%f`,
/// `%p`, `%r` and `%%` in those commands before the shell sees them).
pub fn archive_dir_word(dir: &str) -> String {
    shell_quote(dir).replace('%', "%%")
}

/// The connection string a standby uses to reach `upstream`: minimal on purpose (older
/// servers reject options a newer libpq would add), with the password in the passfile.
pub fn primary_conninfo(cluster: &Cluster, node: &Node, upstream: &Node, layout: &NodeLayout, caps: &Capabilities) -> String {
    let mut parts = vec![
        format!("host={}", conninfo_quote(&upstream.address_or_placeholder())),
        format!("port={}", upstream.port),
        format!("user={}", conninfo_quote(&cluster.replication.user)),
        format!("application_name={}", conninfo_quote(&node.name)),
    ];
    if caps.conninfo_passfile {
        parts.push(format!("passfile={}", conninfo_quote(&layout.passfile())));
    }
    parts.push("connect_timeout=5".into());
    parts.join(" ")
}

/// Where the trigger file goes (for versions that have one).
pub fn trigger_file(layout: &NodeLayout) -> String {
    format!("{}/promote.trigger", layout.data_dir)
}

fn conf_text(cluster: &Cluster, node: &Node, caps: &Capabilities, settings: &[(String, String)]) -> String {
    let mut t = format!(
        "# Managed by pgrepl: cluster \"{}\", node \"{}\" ({}, PostgreSQL {}).\n# Rewritten by every `pgrepl up`; put your own settings in the cluster spec.\n",
        cluster.name, node.name, node.role, caps.major
    );
    for (k, v) in settings {
        t.push_str(&format!("{k} = {v}\n"));
    }
    t
}

fn recovery_conf_text(cluster: &Cluster, node: &Node, layout: &NodeLayout, caps: &Capabilities) -> String {
    let mut t = format!("# Managed by pgrepl: cluster \"{}\", standby \"{}\" (PostgreSQL {}).\n", cluster.name, node.name, caps.major);
    t.push_str("standby_mode = 'on'\n");
    for (k, v) in recovery_settings(cluster, node, layout, caps) {
        t.push_str(&format!("{k} = {v}\n"));
    }
    t
}

/// The managed pg_hba.conf block: local superuser access over the socket, and
/// replication from every other node of the cluster (any of them may become a standby
/// of this one after a switchover), each as a single address.
pub fn hba_block(cluster: &Cluster, node: &Node, layout: &NodeLayout) -> String {
    let method = cluster.replication.auth.map(|a| a.as_str()).unwrap_or("scram-sha-256");
    let user = &cluster.replication.user;
    let mut lines = vec![
        HBA_BEGIN.to_string(),
        format!("local   all           {:<14} peer", layout.superuser),
        format!("local   replication   {:<14} peer", layout.superuser),
    ];
    let mut seen: Vec<String> = Vec::new();
    for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
        let addr = hba_address(&other.address_or_placeholder());
        if seen.contains(&addr) {
            continue;
        }
        lines.push(format!("host    replication   {user:<14} {addr:<18} {method}"));
        // pg_rewind of a former primary reads this node over a normal connection.
        lines.push(format!("host    postgres      {user:<14} {addr:<18} {method}"));
        seen.push(addr);
    }
    lines.push(HBA_END.to_string());
    lines.join("\n") + "\n"
}

/// An address as a pg_hba.conf address field: `/32` for IPv4, `/128` for IPv6, a host
/// name as it is.
pub fn hba_address(addr: &str) -> String {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => format!("{addr}/32"),
        Ok(std::net::IpAddr::V6(_)) => format!("{addr}/128"),
        Err(_) => addr.to_string(),
    }
}

/// `synchronous_standby_names` in the grammar of the version, or `None` when it has none.
pub fn sync_standby_names(syntax: SyncSyntax, mode: SyncMode, count: u32, standbys: &[String]) -> Option<String> {
    let list = standbys.iter().map(|s| sync_name_quote(s)).collect::<Vec<_>>().join(", ");
    match (syntax, mode) {
        (_, SyncMode::Off) | (SyncSyntax::None, _) => None,
        (SyncSyntax::List, _) => Some(list),
        (SyncSyntax::Priority, _) => Some(format!("{count} ({list})")),
        (SyncSyntax::FirstAny, SyncMode::First) => Some(format!("FIRST {count} ({list})")),
        (SyncSyntax::FirstAny, SyncMode::Any) => Some(format!("ANY {count} ({list})")),
    }
}

fn sync_name_quote(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// The passfile line: any host, port and database, for the replication user.
pub fn passfile_text(user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

/// The replication role. Its statements commit locally (`synchronous_commit = local`):
/// during bootstrap the primary's synchronous standbys do not exist yet, and a commit
/// waiting for them would hang forever.
fn role_sql(cluster: &Cluster, secrets: Option<&Secrets>) -> Vec<Sql> {
    let user = &cluster.replication.user;
    let verifier = secrets.map(|s| s.replication_verifier.expose()).unwrap_or(REDACTED);
    let mut sql = vec![Sql {
        purpose: format!("replication role {user}"),
        text: format!(
            "SET synchronous_commit = local; DO $pgrepl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {ident} WITH REPLICATION LOGIN; END IF; END $pgrepl$;",
            lit = sql_literal(user),
            ident = sql_ident(user)
        ),
        secret: false,
    }];
    // 11+: pg_rewind's functions, so that any node can later rewind from whichever primary
    // with this role (an agent on its own host reaches the primary only over the network).
    let grants = cluster.caps().and_then(|c| c.rewind).map(|r| r.source_grants).unwrap_or(&[]);
    if !grants.is_empty() {
        sql.push(Sql {
            purpose: format!("pg_rewind's functions for {user}"),
            text: format!(
                "SET synchronous_commit = local; {}",
                grants.iter().map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {};", sql_ident(user))).collect::<Vec<_>>().join(" ")
            ),
            secret: false,
        });
    }
    sql.push(Sql {
        purpose: format!("password of {user} (a hash; the password itself never reaches the server)"),
        text: format!(
            "SET synchronous_commit = local; ALTER ROLE {} WITH REPLICATION LOGIN PASSWORD {};",
            sql_ident(user),
            sql_literal(verifier)
        ),
        secret: secrets.is_some(),
    });
    sql
}

/// Creates a physical slot unless it exists.
pub fn create_slot_sql(slot: &str) -> String {
    format!(
        "SELECT pg_catalog.pg_create_physical_replication_slot({lit}) WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {lit});",
        lit = sql_literal(slot)
    )
}

fn initdb_command(cluster: &Cluster, layout: &NodeLayout, caps: &Capabilities) -> CommandLine {
    let mut args = vec![
        format!("--pgdata={}", layout.data_dir),
        format!("--username={}", layout.superuser),
        "--encoding=UTF8".into(),
        "--locale=C".into(),
        "--auth-local=peer".into(),
        format!("--auth-host={}", cluster.replication.auth.map(|a| a.as_str()).unwrap_or("scram-sha-256")),
    ];
    if let Some(flag) = caps.initdb_checksums {
        args.push(flag.to_string());
    }
    CommandLine { program: layout.server_tool("initdb"), args, env: server_env(layout), user: layout.os_user.clone() }
}

fn createcluster_command(cluster: &Cluster, node: &Node, layout: &NodeLayout, dc: &(String, String), caps: &Capabilities) -> CommandLine {
    let mut args =
        vec![format!("--port={}", node.port), "--encoding=UTF8".into(), "--locale=C".into(), dc.0.clone(), dc.1.clone(), "--".into()];
    args.push(format!("--auth-host={}", cluster.replication.auth.map(|a| a.as_str()).unwrap_or("scram-sha-256")));
    if let Some(flag) = caps.initdb_checksums {
        args.push(flag.to_string());
    }
    if node.role == Role::Standby {
        // Its data directory is removed for the clone: not worth initdb's fsync (-N: 9.3+).
        args.push("-N".into());
    }
    let _ = layout;
    CommandLine { program: "/usr/bin/pg_createcluster".into(), args, env: Vec::new(), user: "root".into() }
}

fn basebackup_command(cluster: &Cluster, node: &Node, layout: &NodeLayout, caps: &Capabilities) -> CommandLine {
    let upstream = node.upstream.as_deref().and_then(|u| cluster.node(u)).expect("a validated standby has an upstream");
    let mut args = vec![
        format!("--pgdata={}", layout.data_dir),
        format!("--host={}", upstream.address_or_placeholder()),
        format!("--port={}", upstream.port),
        format!("--username={}", cluster.replication.user),
        "--no-password".into(),
        "--checkpoint=fast".into(),
    ];
    if let Some(flag) = caps.basebackup_wal_flag {
        args.push(format!("{flag}=stream"));
    }
    if let (Some(slot), false) = (&node.slot, caps.basebackup_slot == crate::version::BasebackupSlot::None) {
        // The slot is created on the upstream first, so the WAL the backup needs is kept.
        args.push(format!("--slot={slot}"));
    }
    args.push("--progress".into());
    CommandLine {
        program: layout.client_tool("pg_basebackup"),
        args,
        env: vec![("PGPASSFILE".into(), layout.passfile()), ("PGCONNECT_TIMEOUT".into(), "10".into())],
        user: layout.os_user.clone(),
    }
}

/// The environment the server and server tools run with.
pub fn server_env(layout: &NodeLayout) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(lib) = &layout.lib_dir {
        // Relocatable builds load the system libpq otherwise, and a 16+ walreceiver then
        // rejects its own connection string.
        env.push(("LD_LIBRARY_PATH".into(), lib.clone()));
    }
    // Before 10 primary_conninfo cannot name a passfile; the walreceiver's libpq reads this.
    env.push(("PGPASSFILE".into(), layout.passfile()));
    env
}

fn service_command(layout: &NodeLayout, verb: &str) -> CommandLine {
    match &layout.service {
        ServiceControl::PgCtl => {
            let mut args = vec!["-D".to_string(), layout.config_dir.clone()];
            match verb {
                "start" => {
                    if let Some(log) = &layout.log_file {
                        args.extend(["-l".to_string(), log.clone()]);
                    }
                    args.extend(["-w".into(), "-t".into(), "300".into(), "start".into()]);
                }
                "stop" => args.extend(["-m".into(), "fast".into(), "-w".into(), "-t".into(), "300".into(), "stop".into()]),
                other => args.push(other.to_string()),
            }
            CommandLine { program: layout.server_tool("pg_ctl"), args, env: server_env(layout), user: layout.os_user.clone() }
        }
        ServiceControl::PgCtlCluster { version, cluster } => debian_pg_ctl(layout, version, cluster, verb),
        ServiceControl::Systemd { unit } => CommandLine {
            program: "/usr/bin/systemctl".into(),
            args: vec![verb.to_string(), unit.clone()],
            env: Vec::new(),
            user: "root".into(),
        },
    }
}

/// Debian's cluster driven by `pg_ctl` directly, as Patroni does (`pg_ctlcluster` is a
/// Perl wrapper that costs seconds per start): the data directory with the cluster's
/// configuration file from `/etc/postgresql/<v>/<c>`, the log where `pg_ctlcluster` puts
/// it, so `pg_lsclusters` and `pg_ctlcluster` keep seeing and controlling the cluster as
/// theirs. Before a start, the `stats_temp_directory` the configuration names (up to 14,
/// under `/var/run/postgresql`, gone after a reboot) is created, as `pg_ctlcluster` does.
fn debian_pg_ctl(layout: &NodeLayout, version: &str, cluster: &str, verb: &str) -> CommandLine {
    let pg_ctl = layout.server_tool("pg_ctl");
    let conf = format!("{}/postgresql.conf", layout.config_dir);
    let mut args = vec!["-D".to_string(), layout.data_dir.clone()];
    match verb {
        "start" => {
            let log = layout.log_file.clone().unwrap_or_else(|| format!("/var/log/postgresql/postgresql-{version}-{cluster}.log"));
            args.extend([
                "-o".to_string(),
                format!("-c config_file={}", shell_quote(&conf)),
                "-l".into(),
                log,
                "-w".into(),
                "-t".into(),
                "300".into(),
                "start".into(),
            ]);
            let mut line = vec!["-c".to_string(), DEBIAN_START_SCRIPT.to_string(), "pgrepl-start".into(), conf, pg_ctl];
            line.extend(args);
            CommandLine { program: "/bin/sh".into(), args: line, env: server_env(layout), user: layout.os_user.clone() }
        }
        _ => {
            if verb == "stop" {
                args.extend(["-m".into(), "fast".into(), "-w".into(), "-t".into(), "300".into()]);
            }
            args.push(verb.to_string());
            CommandLine { program: pg_ctl, args, env: server_env(layout), user: layout.os_user.clone() }
        }
    }
}

/// Creates the `stats_temp_directory` the configuration file (`$1`) names, if any, then
/// runs the rest of the arguments (`pg_ctl … start`).
const DEBIAN_START_SCRIPT: &str = r#"conf=$1; shift
d=$(sed -n "s/^[[:space:]]*stats_temp_directory[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$conf" 2>/dev/null | tail -n 1)
if [ -n "$d" ] && [ ! -d "$d" ]; then mkdir -p -m 0700 -- "$d"; fi
exec "$@""#;

/// What starts the node's server at boot on its layout: Debian's `start.conf` (read by the
/// init script and by systemd's postgresql generator) and, where systemd runs, the unit.
fn autostart(layout: &NodeLayout) -> Autostart {
    let systemctl = |args: &[&str]| CommandLine {
        program: "/usr/bin/systemctl".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        user: "root".into(),
    };
    let systemd = match &layout.service {
        ServiceControl::Systemd { unit } => Some(unit),
        ServiceControl::PgCtl | ServiceControl::PgCtlCluster { .. } => None,
    };
    let start_conf = layout.debian_cluster.as_ref().map(|_| format!("{}/start.conf", layout.config_dir));
    Autostart {
        reload_units: systemd.filter(|_| start_conf.is_some()).map(|_| systemctl(&["daemon-reload"])),
        start_conf,
        is_enabled: systemd.map(|u| systemctl(&["is-enabled", u])),
        disable: systemd.map(|u| systemctl(&["disable", u])),
    }
}

fn promote(layout: &NodeLayout, caps: &Capabilities) -> Promote {
    match caps.promote {
        // Asked without waiting (pg_promote(true) checks every 100 ms), then the end of
        // recovery polled inside the server every 5 ms, for 60 s at most; the last row says
        // whether it accepts writes.
        PromoteMethod::PgPromote => Promote::Sql {
            sql: "DO $$BEGIN IF NOT pg_catalog.pg_promote(false) THEN RAISE EXCEPTION 'the promotion was not requested'; END IF; \
                  FOR i IN 1..12000 LOOP EXIT WHEN NOT pg_catalog.pg_is_in_recovery(); PERFORM pg_catalog.pg_sleep(0.005); END LOOP; END$$; \
                  SELECT NOT pg_catalog.pg_is_in_recovery();"
                .into(),
        },
        PromoteMethod::PgCtlPromote => {
            let mut args = vec!["-D".to_string(), layout.config_dir.clone()];
            if caps.pg_ctl_waits_by_default {
                args.extend(["-w".into(), "-t".into(), "60".into()]);
            }
            args.push("promote".into());
            Promote::Command {
                command: CommandLine { program: layout.server_tool("pg_ctl"), args, env: server_env(layout), user: layout.os_user.clone() },
            }
        }
        PromoteMethod::TriggerFile => Promote::TriggerFile { path: trigger_file(layout) },
    }
}

/// Quotes a postgresql.conf / recovery.conf string value: single quotes, with `'`
/// doubled and `\` escaped (guc-file.l treats backslash escapes in quoted strings).
pub fn guc_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A user setting's value in postgresql.conf syntax.
pub fn setting_value(v: &SettingValue) -> String {
    match v {
        SettingValue::Bool(true) => "on".into(),
        SettingValue::Bool(false) => "off".into(),
        SettingValue::Int(n) => n.to_string(),
        SettingValue::Float(f) => f.to_string(),
        SettingValue::Text(t) => guc_quote(t),
    }
}

/// Quotes a libpq connection-string value when it needs it.
pub fn conninfo_quote(s: &str) -> String {
    if !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return s.to_string();
    }
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier, double-quoted.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a word for a POSIX shell (for display and for remote execution).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl fmt::Display for RenderedNode {
    /// The dry-run view: every file, statement and command, as `pgrepl render` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "=== {} ({}, PostgreSQL {}) ===", self.node, self.role, self.major)?;
        for file in &self.files {
            let how = match file.placement {
                Placement::Whole => "whole file",
                Placement::HbaBlock => "managed block at the top",
                Placement::IncludeLine => "line appended if missing",
            };
            writeln!(f, "--- {} (mode {:04o}, {how})", file.path, file.mode)?;
            let text = if file.contents.secret { REDACTED } else { &file.contents.text };
            if text.is_empty() {
                writeln!(f, "(empty file)")?;
            } else {
                write!(f, "{text}")?;
                if !text.ends_with('\n') {
                    writeln!(f)?;
                }
            }
        }
        for file in &self.backup_files {
            writeln!(f, "--- {} (mode {:04o}, whole file; written with the S3 keys by the backup step)", file.path, file.mode)?;
            write!(f, "{}", file.contents.text)?;
        }
        if !self.sql.is_empty() {
            writeln!(f, "--- SQL on {}", self.node)?;
            for s in &self.sql {
                writeln!(f, "-- {}", s.purpose)?;
                writeln!(f, "{}", if s.secret { REDACTED } else { &s.text })?;
            }
        }
        writeln!(f, "--- commands (run as the OS user shown)")?;
        let c = &self.commands;
        if let Some(i) = &c.init {
            writeln!(f, "init:    [{}] {i}", i.user)?;
        }
        if let Some(b) = &c.clone {
            writeln!(f, "clone:   [{}] {b}", b.user)?;
        }
        writeln!(f, "start:   [{}] {}", c.start.user, c.start)?;
        writeln!(f, "stop:    [{}] {}", c.stop.user, c.stop)?;
        writeln!(f, "reload:  [{}] {}", c.reload.user, c.reload)?;
        if let Some(sc) = &c.autostart.start_conf {
            writeln!(f, "no start at boot: {sc} says manual")?;
        }
        if let Some(d) = &c.autostart.disable {
            writeln!(f, "no start at boot: [{}] {d}", d.user)?;
        }
        match &c.promote {
            Some(Promote::Sql { sql }) => writeln!(f, "promote: {sql}")?,
            Some(Promote::Command { command }) => writeln!(f, "promote: [{}] {command}", command.user)?,
            Some(Promote::TriggerFile { path }) => writeln!(f, "promote: create {path}")?,
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_clusters_are_driven_by_pg_ctl_with_their_configuration_file() {
        let l = NodeLayout::debian(PgMajor::V15, "/var/lib/postgresql/pgrepl-x");
        let start = service_command(&l, "start");
        assert_eq!((start.program.as_str(), start.user.as_str()), ("/bin/sh", "postgres"));
        assert_eq!(start.args[..2], ["-c".to_string(), DEBIAN_START_SCRIPT.to_string()]);
        assert_eq!(
            start.args[2..],
            [
                "pgrepl-start",
                "/etc/postgresql/15/main/postgresql.conf",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-D",
                "/var/lib/postgresql/15/main",
                "-o",
                "-c config_file=/etc/postgresql/15/main/postgresql.conf",
                "-l",
                "/var/log/postgresql/postgresql-15-main.log",
                "-w",
                "-t",
                "300",
                "start"
            ]
            .map(String::from)
        );
        let stop = service_command(&l, "stop");
        assert_eq!(stop.program, "/usr/lib/postgresql/15/bin/pg_ctl");
        assert_eq!(stop.args.join(" "), "-D /var/lib/postgresql/15/main -m fast -w -t 300 stop");
        assert_eq!(service_command(&l, "reload").args.join(" "), "-D /var/lib/postgresql/15/main reload");
    }

    #[test]
    fn guc_quoting() {
        assert_eq!(guc_quote("abc"), "'abc'");
        assert_eq!(guc_quote("it's"), "'it''s'");
        assert_eq!(guc_quote(r"C:\x"), r"'C:\\x'");
        assert_eq!(guc_quote(""), "''");
    }

    #[test]
    fn conninfo_quoting() {
        assert_eq!(conninfo_quote("10.0.0.1"), "10.0.0.1");
        assert_eq!(conninfo_quote("/a b/pgpass"), "'/a b/pgpass'");
        assert_eq!(conninfo_quote("o'k"), r"'o\'k'");
        assert_eq!(conninfo_quote(""), "''");
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_literal("a'b"), "'a''b'");
        assert_eq!(sql_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--port=5432"), "--port=5432");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    /// What PostgreSQL's configuration parser makes of a quoted string value.
    fn guc_unquote(v: &str) -> String {
        let inner = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).expect("a quoted value");
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\'', Some('\'')) | ('\\', Some(_)) => out.push(chars.next().unwrap_or(c)),
                _ => out.push(c),
            }
        }
        out
    }

    /// What PostgreSQL hands the shell: `%f`, `%p` and `%%` expanded.
    fn pg_expand(cmd: &str) -> String {
        cmd.replace("%%", "\u{0}")
            .replace("%f", "000000010000000000000003")
            .replace("%p", "pg_wal/000000010000000000000003")
            .replace('\u{0}', "%")
    }

    #[test]
    fn archive_dir_is_shell_quoted_in_archive_and_restore_commands() {
        use crate::spec::{ClusterSpec, NodeSpec};
        let dir = "/srv/archive with space/it's 100%";
        let cluster = ClusterSpec::builder("q")
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .archive(ArchiveSpec::Dir { path: dir.into() })
            .into_spec()
            .validate_for(PgMajor::V16)
            .expect("an archive path with a space, a quote and a percent sign is valid");
        let bins = crate::layout::Binaries::assumed(PgMajor::V16);
        let layout = NodeLayout::local("/w", "db2", &bins, "postgres");
        let caps = PgMajor::V16.caps();
        let value = |node: &str, key: &str| {
            let n = cluster.node(node).unwrap();
            let s = conf_settings(&cluster, n, &layout, &caps);
            s.into_iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_else(|| panic!("{key} on {node}"))
        };
        let word = r"'/srv/archive with space/it'\''s 100%%'";
        let archive = value("db1", "archive_command");
        assert_eq!(archive, format!("'test ! -f {w}/%f && cp %p {w}/%f'", w = word.replace('\\', "\\\\").replace('\'', "''")));
        assert_eq!(guc_unquote(&archive), format!("test ! -f {word}/%f && cp %p {word}/%f"));
        let restore = value("db2", "restore_command");
        assert_eq!(guc_unquote(&restore), format!("cp {word}/%f %p"));
        // A real shell splits the expanded command into exactly the intended words.
        let expanded = pg_expand(&guc_unquote(&restore));
        let args = expanded.strip_prefix("cp ").unwrap();
        let out = std::process::Command::new("sh").args(["-c", &format!("printf '[%s]\\n' {args}")]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[/srv/archive with space/it's 100%/000000010000000000000003]\n[pg_wal/000000010000000000000003]\n"
        );
        let expanded = pg_expand(&guc_unquote(&archive));
        let out = std::process::Command::new("sh")
            .args(["-c", &expanded.replace("test ! -f ", "printf '[%s]\\n' ").replace(" && cp ", "; printf '{%s}\\n' ")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[/srv/archive with space/it's 100%/000000010000000000000003]\n{pg_wal/000000010000000000000003}\n{/srv/archive with space/it's 100%/000000010000000000000003}\n"
        );
        // A plain path stays as it was (the golden files do not change).
        assert_eq!(archive_dir_word("/var/lib/pgrepl/a-archive"), "/var/lib/pgrepl/a-archive");
    }

    #[test]
    fn passfile_escapes_colons_and_backslashes() {
        assert_eq!(passfile_text("rep", "a:b\\c"), "*:*:*:rep:a\\:b\\\\c\n");
    }

    #[test]
    fn hba_addresses_are_single_hosts() {
        assert_eq!(hba_address("10.1.2.3"), "10.1.2.3/32");
        assert_eq!(hba_address("::1"), "::1/128");
        assert_eq!(hba_address("db1.internal"), "db1.internal");
    }

    #[test]
    fn sync_names_per_syntax() {
        let s = vec!["db2".to_string(), "db-3".to_string()];
        assert_eq!(sync_standby_names(SyncSyntax::List, SyncMode::First, 1, &s).unwrap(), "db2, \"db-3\"");
        assert_eq!(sync_standby_names(SyncSyntax::Priority, SyncMode::First, 2, &s).unwrap(), "2 (db2, \"db-3\")");
        assert_eq!(sync_standby_names(SyncSyntax::FirstAny, SyncMode::First, 1, &s).unwrap(), "FIRST 1 (db2, \"db-3\")");
        assert_eq!(sync_standby_names(SyncSyntax::FirstAny, SyncMode::Any, 2, &s).unwrap(), "ANY 2 (db2, \"db-3\")");
        assert_eq!(sync_standby_names(SyncSyntax::FirstAny, SyncMode::Off, 1, &s), None);
    }
}
