//! Settings that exist only in some majors.
//!
//! An unknown setting name in postgresql.conf (or an included file) stops the server
//! from starting (§4 of shared/docs/postgres-versions.md), so pgrepl refuses, at
//! validation time, to carry a setting into a major that lacks it. The table holds the
//! replication-related settings whose life span the reference documents; names not in
//! the table are passed through (the real-server test checks what pgrepl itself renders).

use super::PgMajor;

/// The life span of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingRule {
    /// The setting's name.
    pub name: &'static str,
    /// First major that has it.
    pub first: PgMajor,
    /// Last major that has it (`None`: still present in the newest).
    pub last: Option<PgMajor>,
    /// What replaces it, or why it is absent, for the error message.
    pub instead: &'static str,
    /// It is a recovery setting: before 12 it belongs in recovery.conf, never in postgresql.conf.
    pub recovery_only_before_12: bool,
}

impl SettingRule {
    /// Whether `major` has this setting as a postgresql.conf GUC.
    pub fn exists_in(&self, major: PgMajor) -> bool {
        major >= self.first && self.last.is_none_or(|l| major <= l)
    }
}

macro_rules! rule {
    ($name:literal, $first:ident, None, $instead:literal) => {
        SettingRule { name: $name, first: PgMajor::$first, last: None, instead: $instead, recovery_only_before_12: false }
    };
    ($name:literal, $first:ident, $last:ident, $instead:literal) => {
        SettingRule { name: $name, first: PgMajor::$first, last: Some(PgMajor::$last), instead: $instead, recovery_only_before_12: false }
    };
    (recovery $name:literal, $first:ident, $instead:literal) => {
        SettingRule { name: $name, first: PgMajor::$first, last: None, instead: $instead, recovery_only_before_12: true }
    };
}

/// Life spans from §2.2, §3 and §4 of the reference.
const RULES: &[SettingRule] = &[
    rule!("replication_timeout", V9_1, V9_2, "wal_sender_timeout (9.3+)"),
    rule!("wal_sender_timeout", V9_3, None, "replication_timeout (9.1-9.2)"),
    rule!("wal_receiver_timeout", V9_3, None, "nothing before 9.3"),
    rule!("unix_socket_directory", V9_0, V9_2, "unix_socket_directories (9.3+)"),
    rule!("unix_socket_directories", V9_3, None, "unix_socket_directory (up to 9.2)"),
    rule!("checkpoint_segments", V9_0, V9_4, "max_wal_size and min_wal_size (9.5+)"),
    rule!("max_wal_size", V9_5, None, "checkpoint_segments (up to 9.4)"),
    rule!("min_wal_size", V9_5, None, "checkpoint_segments (up to 9.4)"),
    rule!("max_replication_slots", V9_4, None, "no replication slots before 9.4"),
    rule!("wal_log_hints", V9_4, None, "data checksums (initdb -k, 9.3+)"),
    rule!("wal_compression", V9_5, None, "nothing before 9.5"),
    rule!("cluster_name", V9_5, None, "nothing before 9.5"),
    rule!("wal_retrieve_retry_interval", V9_5, None, "nothing before 9.5"),
    rule!("wal_keep_segments", V9_0, V12, "wal_keep_size in MB (13+)"),
    rule!("wal_keep_size", V13, None, "wal_keep_segments, in 16 MB segments (up to 12)"),
    rule!("max_slot_wal_keep_size", V13, None, "nothing before 13"),
    rule!("wal_receiver_create_temp_slot", V13, None, "nothing before 13"),
    rule!("stats_temp_directory", V9_0, V14, "nothing: removed in 15"),
    rule!("promote_trigger_file", V12, V15, "pg_ctl promote or pg_promote() (16+); trigger_file in recovery.conf (up to 11)"),
    rule!("vacuum_defer_cleanup_age", V9_0, V15, "hot_standby_feedback or replication slots (removed in 16)"),
    rule!("old_snapshot_threshold", V9_6, V16, "nothing: removed in 17"),
    rule!("db_user_namespace", V9_0, V16, "nothing: removed in 17"),
    rule!("trace_recovery_messages", V9_0, V16, "nothing: removed in 17"),
    rule!("archive_library", V15, None, "archive_command"),
    rule!("summarize_wal", V17, None, "nothing before 17"),
    rule!("sync_replication_slots", V17, None, "nothing before 17"),
    rule!("synchronized_standby_slots", V17, None, "nothing before 17 (standby_slot_names existed only in 17 betas)"),
    rule!("idle_replication_slot_timeout", V18, None, "max_slot_wal_keep_size (13+)"),
    rule!("max_active_replication_origins", V18, None, "max_replication_slots (before 18)"),
    rule!("md5_password_warnings", V18, None, "nothing before 18"),
    rule!("custom_variable_classes", V9_0, V9_1, "nothing: any x.y name is allowed from 9.2"),
    rule!("silent_mode", V9_0, V9_1, "nothing: removed in 9.2"),
    rule!("wal_sender_delay", V9_0, V9_1, "nothing: removed in 9.2"),
    rule!("standby_slot_names", V18, V9_0, "synchronized_standby_slots (17+)"),
    rule!(recovery "primary_conninfo", V12, "recovery.conf (up to 11)"),
    rule!(recovery "primary_slot_name", V12, "recovery.conf (up to 11)"),
    rule!(recovery "restore_command", V12, "recovery.conf (up to 11)"),
    rule!(recovery "archive_cleanup_command", V12, "recovery.conf (up to 11)"),
    rule!(recovery "recovery_end_command", V12, "recovery.conf (up to 11)"),
    rule!(recovery "recovery_min_apply_delay", V12, "recovery.conf (9.4-11)"),
    rule!(recovery "recovery_target_timeline", V12, "recovery.conf (up to 11)"),
    rule!(recovery "recovery_target_action", V12, "recovery.conf (9.5-11)"),
    rule!("standby_mode", V18, V9_0, "standby.signal (12+) or recovery.conf (up to 11)"),
    rule!("trigger_file", V18, V9_0, "recovery.conf (up to 11), promote_trigger_file (12-15)"),
];

/// The life span of `name`, if pgrepl's table knows it.
pub fn setting_rule(name: &str) -> Option<&'static SettingRule> {
    RULES.iter().find(|r| r.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_spans() {
        let r = setting_rule("wal_keep_segments").unwrap();
        assert!(r.exists_in(PgMajor::V12) && !r.exists_in(PgMajor::V13));
        let r = setting_rule("promote_trigger_file").unwrap();
        assert!(!r.exists_in(PgMajor::V11) && r.exists_in(PgMajor::V15) && !r.exists_in(PgMajor::V16));
        // never a GUC
        assert!(PgMajor::ALL.iter().all(|m| !setting_rule("standby_mode").unwrap().exists_in(*m)));
        assert!(setting_rule("shared_buffers").is_none());
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }
}
