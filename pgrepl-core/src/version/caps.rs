//! The version table: one row of facts per PostgreSQL major.
//!
//! This is the only place in pgrepl that knows how majors differ. Each row lists
//! *every* field, so a reader can check one version against
//! `shared/docs/postgres-versions.md` (cited as §N below) line by line, and the compiler
//! refuses a new [`PgMajor`] variant without a row. Rendering, validation and planning
//! read these fields and never compare version numbers themselves.

use serde::Serialize;

use super::PgMajor;
use crate::pgcontrol::ControlLayout;

/// Whether pgrepl deploys this major, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Support {
    /// Deployable.
    Supported,
    /// Known (it renders in messages) but not deployable.
    Unsupported(&'static str),
}

/// Where a standby's recovery settings live (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStyle {
    /// `recovery.conf` in the data directory with `standby_mode = 'on'` (9.0–11).
    RecoveryConf,
    /// An empty `standby.signal` in the data directory; settings are GUCs (12+).
    StandbySignal,
}

/// How pgrepl promotes a standby of this major (§9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteMethod {
    /// Create the file named by the trigger setting (the only way in 9.0).
    TriggerFile,
    /// `pg_ctl promote -D …` (9.1+).
    PgCtlPromote,
    /// `SELECT pg_promote(true, 60)` over SQL (12+).
    PgPromote,
}

/// How the primary keeps WAL for standbys without slots (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "unit")]
pub enum WalRetention {
    /// `wal_keep_segments`, a count of 16 MB segments (≤12).
    Segments {
        /// The setting's name.
        setting: &'static str,
    },
    /// `wal_keep_size`, in megabytes (13+).
    Megabytes {
        /// The setting's name.
        setting: &'static str,
    },
}

impl WalRetention {
    /// The setting's name.
    pub fn setting(self) -> &'static str {
        match self {
            WalRetention::Segments { setting } | WalRetention::Megabytes { setting } => setting,
        }
    }

    /// The value that keeps about `mb` megabytes of WAL, in this setting's unit.
    pub fn value_for_mb(self, mb: u32) -> String {
        match self {
            WalRetention::Segments { .. } => mb.div_ceil(16).to_string(),
            WalRetention::Megabytes { .. } => format!("{mb}MB"),
        }
    }
}

/// Names of WAL position functions and columns (§5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LsnNames {
    /// Current write position on a primary.
    pub current: &'static str,
    /// Last position received by a standby.
    pub last_receive: &'static str,
    /// Last position replayed by a standby.
    pub last_replay: &'static str,
    /// Difference in bytes between two positions.
    pub diff: &'static str,
    /// WAL file name of a position (primary only).
    pub walfile_name: &'static str,
    /// Ends the current WAL segment (primary only).
    pub switch: &'static str,
    /// Suffix of the position columns of `pg_stat_replication` (`_location` or `_lsn`).
    pub stat_column_suffix: &'static str,
}

/// What `pg_basebackup` can do with slots (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BasebackupSlot {
    /// No slot options (≤9.5).
    None,
    /// `-S/--slot` streams through an existing slot (9.6–10).
    UseSlot,
    /// `-S` plus `-C/--create-slot` (11+).
    CreateSlot,
}

/// When a changed `primary_conninfo` takes effect (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeContext {
    /// A restart of the standby (≤12; recovery.conf is read once at start ≤11).
    Restart,
    /// A reload (13+).
    Reload,
}

/// The grammar of `synchronous_standby_names` (§8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncSyntax {
    /// No synchronous replication (9.0).
    None,
    /// `'a, b'`: the first connected standby is the one sync standby (9.1–9.5).
    List,
    /// `'N (a, b)'`: N sync standbys by priority (9.6).
    Priority,
    /// `'FIRST N (…)'` and quorum `'ANY N (…)'` (10+).
    FirstAny,
}

/// Password storage and authentication (§10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PasswordAuth {
    /// `scram-sha-256` exists (10+).
    pub scram: bool,
    /// The auth method pgrepl uses when the spec names none.
    pub default_method: &'static str,
    /// The value of `password_encryption` that stores md5 hashes (`on` ≤9.6, `md5` 10+).
    pub md5_encryption_value: &'static str,
}

/// What `pg_rewind` of this major offers (§9.3). `None` in [`Capabilities::rewind`]
/// means there is no pg_rewind (≤9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RewindCaps {
    /// The source role may be a non-superuser with grants (11+).
    pub non_superuser_source: bool,
    /// The source may be a standby (14+).
    pub standby_source: bool,
    /// `-R/--write-recovery-conf` (13+).
    pub write_recovery_conf: bool,
    /// `-c/--restore-target-wal` (13+).
    pub restore_target_wal: bool,
    /// `--config-file` (15+).
    pub config_file: bool,
    /// A `CHECKPOINT` on a freshly promoted source is needed first (≤15).
    pub checkpoint_source_first: bool,
    /// Runs crash recovery on an unclean target itself (13+); before, the target must
    /// have been shut down cleanly.
    pub ensures_clean_shutdown: bool,
    /// What a non-superuser source role must be granted (11+, §9.3); empty when the
    /// source must be a superuser.
    pub source_grants: &'static [&'static str],
}

/// Every fact pgrepl needs about one PostgreSQL major. Get it with [`PgMajor::caps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The major this row describes.
    pub major: PgMajor,
    /// Whether pgrepl deploys it.
    pub support: Support,
    /// Where standby settings live.
    pub recovery: RecoveryStyle,
    /// The promotion pgrepl uses.
    pub promote: PromoteMethod,
    /// The trigger-file setting, if the major has one (`trigger_file` ≤11 in recovery.conf,
    /// `promote_trigger_file` 12–15, none from 16).
    pub trigger_setting: Option<&'static str>,
    /// The `wal_level` value that allows hot standby (`hot_standby` ≤9.5, `replica` 9.6+).
    pub wal_level: &'static str,
    /// How WAL is kept for standbys.
    pub wal_retention: WalRetention,
    /// The WAL directory inside the data directory (`pg_xlog` ≤9.6, `pg_wal` 10+).
    pub wal_dir: &'static str,
    /// WAL position function and column names.
    pub lsn: LsnNames,
    /// `pg_basebackup`'s long option for the WAL method (`--xlog-method` 9.2–9.6,
    /// `--wal-method` 10+); `None` before 9.2.
    pub basebackup_wal_flag: Option<&'static str>,
    /// What `pg_basebackup -R` writes (9.3+). pgrepl writes its own recovery settings
    /// because a newer client writes options an older server rejects.
    pub basebackup_writes: Option<RecoveryStyle>,
    /// `pg_basebackup` slot options.
    pub basebackup_slot: BasebackupSlot,
    /// Physical replication slots (9.4+).
    pub slots: bool,
    /// `pg_rewind`, if the major has one (9.5+).
    pub rewind: Option<RewindCaps>,
    /// When a changed `primary_conninfo`/`primary_slot_name` takes effect.
    pub conninfo_change: ChangeContext,
    /// Grammar of `synchronous_standby_names`.
    pub sync_syntax: SyncSyntax,
    /// `synchronous_commit = remote_apply` (9.6+).
    pub remote_apply: bool,
    /// Password storage and auth methods.
    pub password: PasswordAuth,
    /// `passfile=` in a connection string, so `primary_conninfo` need not hold a password (10+).
    pub conninfo_passfile: bool,
    /// `pg_settings.pending_restart` (9.5+).
    pub pending_restart: bool,
    /// `pg_stat_wal_receiver` (9.6+).
    pub wal_receiver_view: bool,
    /// `write_lag`/`flush_lag`/`replay_lag` in `pg_stat_replication` (10+).
    pub lag_columns: bool,
    /// `pg_control_checkpoint()` and friends (9.6+).
    pub control_functions: bool,
    /// `cluster_name` (9.5+).
    pub cluster_name: bool,
    /// `wal_retrieve_retry_interval` (9.5+): a short value makes promotion and re-pointing fast.
    pub wal_retrieve_retry_interval: bool,
    /// `archive_mode = always` (9.5+).
    pub archive_mode_always: bool,
    /// The sender timeout setting (`replication_timeout` 9.1–9.2, `wal_sender_timeout` 9.3+).
    pub sender_timeout_setting: &'static str,
    /// The socket directory setting (`unix_socket_directory` ≤9.2, `unix_socket_directories` 9.3+).
    pub socket_dir_setting: &'static str,
    /// A streaming standby follows a sibling's promotion without a shared archive (9.3+).
    pub streaming_timeline_follow: bool,
    /// `initdb` flag for data checksums (9.3+); on by default from 18.
    pub initdb_checksums: Option<&'static str>,
    /// `initdb` enables checksums without being asked (18).
    pub checksums_by_default: bool,
    /// `pg_ctl` waits for start/stop/promote by default (10+); pgrepl always passes `-w`.
    pub pg_ctl_waits_by_default: bool,
    /// `max_wal_senders` counts against `max_connections` (≤11).
    pub senders_in_max_connections: bool,
    /// Where pg_control keeps the fields pgrepl reads without a server (the last
    /// checkpoint, the state, the timeline), and its `pg_control_version`.
    pub pg_control: ControlLayout,
    /// WAL records have the 9.5+ format (`XLogRecord` of 24 bytes with a CRC-32C), which
    /// pgrepl reads to find the end of a stopped node's WAL without `pg_waldump`.
    pub wal_end_scan: bool,
    /// The oldest pgBackRest that supports this major, as (major, minor, patch); `None`
    /// when every 2.x does. From pgBackRest's release notes: 16 came in 2.46, 17 in 2.54
    /// (2.53.1 supported its beta), 18 in 2.56; checked here: Debian 12's 2.45 refuses 16.
    pub pgbackrest_min: Option<(u32, u32, u32)>,
}

const LSN_XLOG: LsnNames = LsnNames {
    current: "pg_current_xlog_location",
    last_receive: "pg_last_xlog_receive_location",
    last_replay: "pg_last_xlog_replay_location",
    diff: "pg_xlog_location_diff",
    walfile_name: "pg_xlogfile_name",
    switch: "pg_switch_xlog",
    stat_column_suffix: "_location",
};

const LSN_WAL: LsnNames = LsnNames {
    current: "pg_current_wal_lsn",
    last_receive: "pg_last_wal_receive_lsn",
    last_replay: "pg_last_wal_replay_lsn",
    diff: "pg_wal_lsn_diff",
    walfile_name: "pg_walfile_name",
    switch: "pg_switch_wal",
    stat_column_suffix: "_lsn",
};

const PW_MD5_ONLY: PasswordAuth = PasswordAuth { scram: false, default_method: "md5", md5_encryption_value: "on" };
const PW_SCRAM: PasswordAuth = PasswordAuth { scram: true, default_method: "scram-sha-256", md5_encryption_value: "md5" };

const SEGMENTS: WalRetention = WalRetention::Segments { setting: "wal_keep_segments" };
const MEGABYTES: WalRetention = WalRetention::Megabytes { setting: "wal_keep_size" };

const fn rewind(major: u32) -> RewindCaps {
    RewindCaps {
        non_superuser_source: major >= 11,
        standby_source: major >= 14,
        write_recovery_conf: major >= 13,
        restore_target_wal: major >= 13,
        config_file: major >= 15,
        checkpoint_source_first: major <= 15,
        ensures_clean_shutdown: major >= 13,
        source_grants: if major >= 11 { REWIND_SOURCE_GRANTS } else { &[] },
    }
}

/// The functions a non-superuser pg_rewind source role needs (D 12/app-pgrewind "Notes").
const REWIND_SOURCE_GRANTS: &[&str] = &[
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// pg_control layout: `checkPointCopy` follows `prevCheckPoint` until 10 (offset 48), and
/// `checkPoint` directly from 11 (offset 40); CRC-32C from 9.5.
const fn control(version: u32, checkpoint_copy_offset: usize, crc32c: bool) -> ControlLayout {
    ControlLayout { version, checkpoint_copy_offset, crc32c }
}

const UNSUPPORTED_PRE_93: &str = "pgrepl needs 9.3 or later: pg_basebackup -X stream, pg_basebackup -R and \
     standbys that follow a promoted sibling over streaming all arrive in 9.3";

impl PgMajor {
    /// The row of the version table for this major.
    pub const fn caps(self) -> Capabilities {
        use BasebackupSlot as B;
        use ChangeContext::*;
        use PromoteMethod::*;
        use RecoveryStyle::*;
        use SyncSyntax as S;
        match self {
            // 9.0: SR and hot standby arrive; no pg_basebackup, no sync rep (§1).
            PgMajor::V9_0 => Capabilities {
                major: self,
                support: Support::Unsupported(UNSUPPORTED_PRE_93),
                recovery: RecoveryConf,
                promote: TriggerFile,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: None,
                basebackup_writes: None,
                basebackup_slot: B::None,
                slots: false,
                rewind: None,
                conninfo_change: Restart,
                sync_syntax: S::None,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: false,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: false,
                wal_retrieve_retry_interval: false,
                archive_mode_always: false,
                sender_timeout_setting: "replication_timeout",
                socket_dir_setting: "unix_socket_directory",
                streaming_timeline_follow: false,
                initdb_checksums: None,
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(903, 48, false),
                wal_end_scan: false,
                pgbackrest_min: None,
            },
            // 9.1: pg_basebackup, sync rep (list), pg_ctl promote (§1).
            PgMajor::V9_1 => Capabilities {
                major: self,
                support: Support::Unsupported(UNSUPPORTED_PRE_93),
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: None,
                basebackup_writes: None,
                basebackup_slot: B::None,
                slots: false,
                rewind: None,
                conninfo_change: Restart,
                sync_syntax: S::List,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: false,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: false,
                wal_retrieve_retry_interval: false,
                archive_mode_always: false,
                sender_timeout_setting: "replication_timeout",
                socket_dir_setting: "unix_socket_directory",
                streaming_timeline_follow: false,
                initdb_checksums: None,
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(903, 48, false),
                wal_end_scan: false,
                pgbackrest_min: None,
            },
            // 9.2: cascading, pg_basebackup -X (§1, §7).
            PgMajor::V9_2 => Capabilities {
                major: self,
                support: Support::Unsupported(UNSUPPORTED_PRE_93),
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: Some("--xlog-method"),
                basebackup_writes: None,
                basebackup_slot: B::None,
                slots: false,
                rewind: None,
                conninfo_change: Restart,
                sync_syntax: S::List,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: false,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: false,
                wal_retrieve_retry_interval: false,
                archive_mode_always: false,
                sender_timeout_setting: "replication_timeout",
                socket_dir_setting: "unix_socket_directory",
                streaming_timeline_follow: false,
                initdb_checksums: None,
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(922, 48, false),
                wal_end_scan: false,
                pgbackrest_min: None,
            },
            // 9.3: timeline following over streaming, -R, wal_sender_timeout, checksums (§1).
            PgMajor::V9_3 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: Some("--xlog-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::None,
                slots: false,
                rewind: None,
                conninfo_change: Restart,
                sync_syntax: S::List,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: false,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: false,
                wal_retrieve_retry_interval: false,
                archive_mode_always: false,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(937, 48, false),
                wal_end_scan: false,
                pgbackrest_min: None,
            },
            // 9.4: replication slots, wal_log_hints (§1).
            PgMajor::V9_4 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: Some("--xlog-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::None,
                slots: true,
                rewind: None,
                conninfo_change: Restart,
                sync_syntax: S::List,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: false,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: false,
                wal_retrieve_retry_interval: false,
                archive_mode_always: false,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(942, 48, false),
                wal_end_scan: false,
                pgbackrest_min: None,
            },
            // 9.5: pg_rewind, archive_mode=always, cluster_name, pending_restart (§1).
            PgMajor::V9_5 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "hot_standby",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: Some("--xlog-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::None,
                slots: true,
                rewind: Some(rewind(9)),
                conninfo_change: Restart,
                sync_syntax: S::List,
                remote_apply: false,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: true,
                wal_receiver_view: false,
                lag_columns: false,
                control_functions: false,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(942, 48, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 9.6: wal_level=replica, `N (…)` sync, remote_apply, pg_stat_wal_receiver, -S (§1).
            PgMajor::V9_6 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "replica",
                wal_retention: SEGMENTS,
                wal_dir: "pg_xlog",
                lsn: LSN_XLOG,
                basebackup_wal_flag: Some("--xlog-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::UseSlot,
                slots: true,
                rewind: Some(rewind(9)),
                conninfo_change: Restart,
                sync_syntax: S::Priority,
                remote_apply: true,
                password: PW_MD5_ONLY,
                conninfo_passfile: false,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: false,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: false,
                senders_in_max_connections: true,
                pg_control: control(960, 48, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 10: pg_wal, *_lsn, FIRST/ANY, lag columns, scram, passfile (§1, §5).
            PgMajor::V10 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "replica",
                wal_retention: SEGMENTS,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::UseSlot,
                slots: true,
                rewind: Some(rewind(10)),
                conninfo_change: Restart,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: true,
                pg_control: control(1002, 48, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 11: pg_basebackup -C, non-superuser pg_rewind source (§1).
            PgMajor::V11 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: RecoveryConf,
                promote: PgCtlPromote,
                trigger_setting: Some("trigger_file"),
                wal_level: "replica",
                wal_retention: SEGMENTS,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(RecoveryConf),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(11)),
                conninfo_change: Restart,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: true,
                pg_control: control(1100, 40, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 12: recovery.conf gone, standby.signal, promote_trigger_file, pg_promote() (§1, §2).
            PgMajor::V12 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: Some("promote_trigger_file"),
                wal_level: "replica",
                wal_retention: SEGMENTS,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(12)),
                conninfo_change: Restart,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1201, 40, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 13: wal_keep_size, primary_conninfo on reload, pg_rewind -R/-c (§1, §2.2).
            PgMajor::V13 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: Some("promote_trigger_file"),
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(13)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1300, 40, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 14: scram by default, standby as pg_rewind source (§1).
            PgMajor::V14 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: Some("promote_trigger_file"),
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(14)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1300, 40, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 15: pg_backup_start, pg_rewind --config-file (§1).
            PgMajor::V15 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: Some("promote_trigger_file"),
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(15)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1300, 40, true),
                wal_end_scan: true,
                pgbackrest_min: None,
            },
            // 16: promote_trigger_file removed (§1, §4).
            PgMajor::V16 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: None,
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(16)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1300, 40, true),
                wal_end_scan: true,
                pgbackrest_min: Some((2, 46, 0)),
            },
            // 17: failover slots, incremental backup (§1).
            PgMajor::V17 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: None,
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(17)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: false,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1700, 40, true),
                wal_end_scan: true,
                pgbackrest_min: Some((2, 54, 0)),
            },
            // 18: checksums on by default, md5 deprecated (§1).
            PgMajor::V18 => Capabilities {
                major: self,
                support: Support::Supported,
                recovery: StandbySignal,
                promote: PgPromote,
                trigger_setting: None,
                wal_level: "replica",
                wal_retention: MEGABYTES,
                wal_dir: "pg_wal",
                lsn: LSN_WAL,
                basebackup_wal_flag: Some("--wal-method"),
                basebackup_writes: Some(StandbySignal),
                basebackup_slot: B::CreateSlot,
                slots: true,
                rewind: Some(rewind(18)),
                conninfo_change: Reload,
                sync_syntax: S::FirstAny,
                remote_apply: true,
                password: PW_SCRAM,
                conninfo_passfile: true,
                pending_restart: true,
                wal_receiver_view: true,
                lag_columns: true,
                control_functions: true,
                cluster_name: true,
                wal_retrieve_retry_interval: true,
                archive_mode_always: true,
                sender_timeout_setting: "wal_sender_timeout",
                socket_dir_setting: "unix_socket_directories",
                streaming_timeline_follow: true,
                initdb_checksums: Some("--data-checksums"),
                checksums_by_default: true,
                pg_ctl_waits_by_default: true,
                senders_in_max_connections: false,
                pg_control: control(1800, 40, true),
                wal_end_scan: true,
                pgbackrest_min: Some((2, 56, 0)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: &str) -> Capabilities {
        m.parse::<PgMajor>().unwrap().caps()
    }

    #[test]
    fn every_row_names_its_own_major() {
        for m in PgMajor::ALL {
            assert_eq!(m.caps().major, *m);
        }
    }

    #[test]
    fn recovery_conf_until_11_signal_from_12() {
        for m in PgMajor::ALL {
            let expect = if *m <= PgMajor::V11 { RecoveryStyle::RecoveryConf } else { RecoveryStyle::StandbySignal };
            assert_eq!(m.caps().recovery, expect, "{m}");
        }
    }

    #[test]
    fn wal_keep_segments_until_12_size_from_13() {
        assert_eq!(at("12").wal_retention.setting(), "wal_keep_segments");
        assert_eq!(at("13").wal_retention.setting(), "wal_keep_size");
        assert_eq!(at("12").wal_retention.value_for_mb(512), "32");
        assert_eq!(at("13").wal_retention.value_for_mb(512), "512MB");
    }

    #[test]
    fn slots_from_94_scram_from_10_rewind_from_95() {
        for m in PgMajor::ALL {
            let c = m.caps();
            assert_eq!(c.slots, *m >= PgMajor::V9_4, "{m}");
            assert_eq!(c.password.scram, *m >= PgMajor::V10, "{m}");
            assert_eq!(c.rewind.is_some(), *m >= PgMajor::V9_5, "{m}");
            assert_eq!(c.wal_dir == "pg_wal", *m >= PgMajor::V10, "{m}");
            assert_eq!(c.wal_level == "replica", *m >= PgMajor::V9_6, "{m}");
        }
    }

    #[test]
    fn trigger_setting_names() {
        assert_eq!(at("9.6").trigger_setting, Some("trigger_file"));
        assert_eq!(at("11").trigger_setting, Some("trigger_file"));
        assert_eq!(at("12").trigger_setting, Some("promote_trigger_file"));
        assert_eq!(at("15").trigger_setting, Some("promote_trigger_file"));
        assert_eq!(at("16").trigger_setting, None);
        assert_eq!(at("18").trigger_setting, None);
    }

    #[test]
    fn basebackup_flags() {
        assert_eq!(at("9.6").basebackup_wal_flag, Some("--xlog-method"));
        assert_eq!(at("10").basebackup_wal_flag, Some("--wal-method"));
        assert_eq!(at("10").basebackup_slot, BasebackupSlot::UseSlot);
        assert_eq!(at("11").basebackup_slot, BasebackupSlot::CreateSlot);
        assert_eq!(at("9.5").basebackup_slot, BasebackupSlot::None);
    }

    #[test]
    fn pg_control_layout_and_wal_format() {
        for m in PgMajor::ALL {
            let c = m.caps();
            // prevCheckPoint was removed in 11; CRC-32C and the 9.5 WAL record format arrived together.
            assert_eq!(c.pg_control.checkpoint_copy_offset, if *m >= PgMajor::V11 { 40 } else { 48 }, "{m}");
            assert_eq!(c.pg_control.crc32c, *m >= PgMajor::V9_5, "{m}");
            assert_eq!(c.wal_end_scan, *m >= PgMajor::V9_5, "{m}");
            assert_eq!(c.rewind.is_some_and(|r| !r.source_grants.is_empty()), c.rewind.is_some_and(|r| r.non_superuser_source), "{m}");
        }
        // Checked against pg_control_system() on 10-18 by the lab test ha_pgcontrol_and_wal_end_match_the_server.
        assert_eq!(at("10").pg_control.version, 1002);
        assert_eq!(at("12").pg_control.version, 1201);
        assert_eq!(at("16").pg_control.version, 1300);
        assert_eq!(at("18").pg_control.version, 1800);
    }

    #[test]
    fn supported_range_is_93_to_18() {
        let s: Vec<_> = PgMajor::supported().collect();
        assert_eq!(s.first(), Some(&PgMajor::V9_3));
        assert_eq!(s.last(), Some(&PgMajor::V18));
    }
}
