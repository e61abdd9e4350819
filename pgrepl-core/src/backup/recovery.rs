//! The recovery settings of a restore, per version (pure): `recovery.conf` up to 11,
//! `recovery.signal` and settings in `postgresql.auto.conf` from 12.

use super::decide::Target;
use crate::render::guc_quote;
use crate::version::{Capabilities, RecoveryStyle};

/// What a restored data directory gets before its server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFiles {
    /// Files to write whole: (name in the data directory, contents).
    pub files: Vec<(String, String)>,
    /// Lines appended to `postgresql.auto.conf` (12+).
    pub auto_conf: Option<String>,
    /// Settings to reset with `ALTER SYSTEM RESET` once it is promoted (12+), so that the
    /// standbys cloned from it later do not inherit a recovery target.
    pub reset_after: Vec<&'static str>,
}

/// The settings: fetch WAL with `restore_command`, stop at the target, promote there.
pub fn recovery_settings(restore_command: &str, target: &Target) -> Vec<(&'static str, String)> {
    let mut s = vec![("restore_command", guc_quote(restore_command))];
    match target {
        Target::Latest => {}
        Target::Time(t) => s.push(("recovery_target_time", guc_quote(&super::format_time(*t)))),
        Target::Lsn(l) => s.push(("recovery_target_lsn", guc_quote(&l.to_string()))),
    }
    s.push(("recovery_target_timeline", guc_quote("latest")));
    s.push(("recovery_target_action", guc_quote("promote")));
    s
}

/// The files of a restore for this version.
pub fn recovery_files(caps: &Capabilities, restore_command: &str, target: &Target) -> RecoveryFiles {
    let settings = recovery_settings(restore_command, target);
    let text: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let header = "# pgrepl restore: point-in-time recovery\n";
    match caps.recovery {
        RecoveryStyle::RecoveryConf => {
            RecoveryFiles { files: vec![("recovery.conf".into(), format!("{header}{text}"))], auto_conf: None, reset_after: Vec::new() }
        }
        RecoveryStyle::StandbySignal => RecoveryFiles {
            files: vec![("recovery.signal".into(), String::new())],
            auto_conf: Some(format!("{header}{text}")),
            reset_after: settings.iter().map(|(k, _)| *k).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::PgMajor;
    use time::macros::datetime;

    #[test]
    fn per_version() {
        let t = Target::Time(datetime!(2026-12-01 05:30:00.5 UTC));
        let v11 = recovery_files(&PgMajor::V11.caps(), "x %f %p", &t);
        assert_eq!(v11.files[0].0, "recovery.conf");
        assert!(v11.files[0].1.contains("recovery_target_time = '2026-12-01 05:30:00.500000+00'\n"), "{}", v11.files[0].1);
        assert!(v11.files[0].1.contains("restore_command = 'x %f %p'\n"));
        assert!(v11.auto_conf.is_none());
        let v15 = recovery_files(&PgMajor::V15.caps(), "x %f %p", &Target::Lsn("0/5000000".parse().unwrap()));
        assert_eq!(v15.files, vec![("recovery.signal".to_string(), String::new())]);
        let auto = v15.auto_conf.unwrap();
        assert!(auto.contains("recovery_target_lsn = '0/5000000'\n") && auto.contains("recovery_target_action = 'promote'\n"), "{auto}");
        assert_eq!(v15.reset_after, vec!["restore_command", "recovery_target_lsn", "recovery_target_timeline", "recovery_target_action"]);
        let latest = recovery_settings("c", &Target::Latest);
        assert!(!latest.iter().any(|(k, _)| *k == "recovery_target_time" || *k == "recovery_target_lsn"));
    }
}
