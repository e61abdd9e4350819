//! Base backups, the WAL archive and point-in-time recovery (`[backup]`).
//!
//! Split as everywhere in pgrepl: [`catalog`] reads what the tool holds (its own JSON
//! listing: pgrepl talks to no S3 API; the directory tool's `backup.json`), [`decide`]
//! chooses (which backup covers a target, whether recovery reached it, what retention
//! removes, refusals with their reason, pure), [`recovery`] renders the recovery settings
//! of a restore per version (pure), [`schedule`] reads `[backup] schedule` and says which
//! slot is due (pure), and the runtime modules act through the nodes' transports: `run`
//! (`Deployment::take_backup`, `backups`, `apply_retention`, `restore_into`,
//! `verify_backup`), `coverage` (the archive made to reach a restore's target, the target
//! checked after it), `directory` (`tool = "directory"`), `pgbackrest` (its version and
//! node configuration), `install` (`up`'s steps). The tools' command lines are rendered
//! in [`render::backup_tool`](crate::render::backup_tool); the agents' scheduler is in
//! `agent::backups`.

#[cfg(feature = "runtime")]
pub(crate) mod archive_gap;
pub mod catalog;
#[cfg(feature = "runtime")]
mod coverage;
pub mod decide;
#[cfg(feature = "runtime")]
mod directory;
#[cfg(feature = "runtime")]
mod install;
#[cfg(feature = "runtime")]
mod pgbackrest;
pub mod recovery;
#[cfg(feature = "runtime")]
mod repo_host;
#[cfg(feature = "runtime")]
mod run;
pub mod schedule;
pub mod timeline_gap;

pub use crate::tool_failure::{ToolFailure, classify_failure};
pub use catalog::{BackupInfo, parse_barman_list, parse_basebackup_verbose, parse_pgbackrest_info};
#[cfg(feature = "runtime")]
pub use coverage::ARCHIVE_WAIT;
pub use decide::{
    RestoreRefusal, Target, archived_through, check_in_place, check_pgbackrest, choose_backup, retention_removes, segment_name,
    target_reached, wal_removable,
};
#[cfg(feature = "runtime")]
pub(crate) use install::{after_up, ensure_tool};
#[cfg(feature = "runtime")]
pub use run::{RestoreOptions, RestoreReport, VerifyBackupReport};
pub use schedule::{Schedule, ScheduledBackup};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2026-12-01 05:26:40.297147+00`: how pgrepl prints times and writes `recovery_target_time`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00");
    t.format(&f).unwrap_or_else(|_| t.to_string())
}

/// A target time as given on the command line: RFC 3339 (`2026-12-01T05:30:00Z`,
/// `2026-12-01 05:30:00.123+01:00`); a time without an offset is refused (ambiguous).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    let t = s.trim();
    let normalized = if t.len() > 10 && t.as_bytes()[10] == b' ' { format!("{}T{}", &t[..10], &t[11..]) } else { t.to_string() };
    let normalized = match normalized.strip_suffix("+00") {
        Some(head) if !head.ends_with(':') => format!("{head}+00:00"),
        _ => normalized,
    };
    OffsetDateTime::parse(&normalized, &Rfc3339)
        .map_err(|_| format!("\"{s}\" is not a time with its offset, such as 2026-12-01T05:30:00Z or \"2026-12-01 05:30:00+01:00\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = parse_time("2026-12-01 05:26:40.297147+00").unwrap();
        assert_eq!(format_time(t), "2026-12-01 05:26:40.297147+00");
        assert_eq!(format_time(parse_time("2026-12-01T06:26:40+01:00").unwrap()), "2026-12-01 05:26:40.000000+00");
        assert!(parse_time("2026-12-01 05:26:40").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
