//! The decisions of a restore, pure: which backup covers a target, and when pgrepl
//! refuses (with the reason, as data).

use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use super::catalog::BackupInfo;
use crate::lsn::Lsn;
use crate::render::pgbackrest::{PgbackrestVersion, minimum_for, parse_version};
use crate::version::PgMajor;

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// Replay everything archived (on the latest timeline).
    Latest,
    /// Stop at this time (commits after it are not replayed).
    #[serde(with = "time::serde::rfc3339")]
    Time(OffsetDateTime),
    /// Stop at this WAL position.
    Lsn(Lsn),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("the latest archived WAL"),
            Target::Time(t) => write!(f, "{}", super::format_time(*t)),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

/// Why a restore is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum RestoreRefusal {
    /// The archive holds no complete backup.
    #[error("no complete base backup in the archive (take one with `pgrepl backup`)")]
    NoBackup,
    /// The target is older than every backup kept: retention removed what covered it.
    #[error(
        "{target} is not covered: the oldest backup kept ({oldest_id}) ends at {oldest_end}{retention}; \
         a restore can only reach points after a backup ends"
    )]
    NotCovered {
        /// The target asked for.
        target: String,
        /// The oldest complete backup.
        oldest_id: String,
        /// Its end.
        oldest_end: String,
        /// ", and retention (...) removed older ones" when a retention policy is set.
        retention: String,
    },
    /// The target time has not happened yet.
    #[error("{target} is in the future (now: {now})")]
    InTheFuture {
        /// The target.
        target: String,
        /// Now.
        now: String,
    },
    /// In place while a server runs.
    #[error("{node}'s server runs: an in-place restore replaces its data directory; run `pgrepl down` first")]
    ServerRunning {
        /// The node.
        node: String,
    },
    /// The data directory to restore into is not empty.
    #[error("{path} on {node} is not empty: a restore never writes over a data directory")]
    NotEmpty {
        /// The node.
        node: String,
        /// The directory.
        path: String,
    },
}

/// The backup to restore to reach `target`: the newest complete one that ends before it
/// (for `Latest`, the newest). `retention` describes the policy for the refusal's reason.
pub fn choose_backup<'a>(
    catalog: &'a [BackupInfo],
    target: &Target,
    now: OffsetDateTime,
    retention: Option<&str>,
) -> Result<&'a BackupInfo, RestoreRefusal> {
    let mut done: Vec<&BackupInfo> = catalog.iter().filter(|b| b.done()).collect();
    done.sort_by(|a, b| a.end_time.cmp(&b.end_time).then(a.end_lsn.cmp(&b.end_lsn)));
    let oldest = *done.first().ok_or(RestoreRefusal::NoBackup)?;
    let not_covered = || RestoreRefusal::NotCovered {
        target: target.to_string(),
        oldest_id: oldest.id.clone(),
        oldest_end: match target {
            Target::Lsn(_) => format!("LSN {} ({})", oldest.end_lsn, super::format_time(oldest.end_time)),
            _ => super::format_time(oldest.end_time),
        },
        retention: retention.map(|r| format!(", and retention ({r}) removed older ones")).unwrap_or_default(),
    };
    match target {
        Target::Latest => Ok(*done.last().expect("not empty")),
        Target::Time(t) => {
            if *t > now {
                return Err(RestoreRefusal::InTheFuture { target: target.to_string(), now: super::format_time(now) });
            }
            done.iter().rev().find(|b| b.end_time < *t).copied().ok_or_else(not_covered)
        }
        Target::Lsn(l) => done.iter().rev().find(|b| b.end_lsn <= *l).copied().ok_or_else(not_covered),
    }
}

/// An in-place restore replaces the data directory of the primary: refused while any
/// node's server runs (`running`: the nodes observed running).
pub fn check_in_place(running: &[String]) -> Result<(), RestoreRefusal> {
    match running.first() {
        Some(n) => Err(RestoreRefusal::ServerRunning { node: n.clone() }),
        None => Ok(()),
    }
}

/// Whether the installed pgBackRest (what `pgbackrest version` printed, at `program`)
/// supports PostgreSQL `major`; the refusal names the spec's field and the installed
/// version.
pub fn check_pgbackrest(version_output: &str, program: &str, major: PgMajor) -> Result<PgbackrestVersion, String> {
    let Some(v) = parse_version(version_output) else {
        let first = version_output.lines().next().unwrap_or_default();
        return Err(format!("backup.tool = \"pgbackrest\": `{program} version` printed \"{first}\", not a pgBackRest version"));
    };
    match minimum_for(major) {
        Some(min) if v < min => Err(format!(
            "backup.tool = \"pgbackrest\": the installed pgBackRest {v} ({program}) does not support PostgreSQL {major} \
             (it needs pgBackRest {min} or later); install a newer pgBackRest, or use tool = \"barman-cloud\""
        )),
        _ => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn pgbackrest_245_stops_at_15() {
        assert!(check_pgbackrest("pgBackRest 2.45\n", "/usr/bin/pgbackrest", PgMajor::V15).is_ok());
        assert!(check_pgbackrest("pgBackRest 2.45\n", "/usr/bin/pgbackrest", PgMajor::V11).is_ok());
        let e = check_pgbackrest("pgBackRest 2.45\n", "/usr/bin/pgbackrest", PgMajor::V16).unwrap_err();
        assert!(e.contains("backup.tool") && e.contains("pgBackRest 2.45 (/usr/bin/pgbackrest)") && e.contains("PostgreSQL 16"), "{e}");
        assert!(check_pgbackrest("pgBackRest 2.46", "p", PgMajor::V16).is_ok());
        assert!(check_pgbackrest("pgBackRest 2.53.1", "p", PgMajor::V17).is_err());
        assert!(check_pgbackrest("sh: 1: pgbackrest: not found", "p", PgMajor::V15).unwrap_err().contains("not a pgBackRest version"));
    }

    fn b(id: &str, end: OffsetDateTime, end_lsn: &str, status: &str) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            status: status.into(),
            begin_time: end - time::Duration::seconds(5),
            end_time: end,
            begin_lsn: "0/1000028".parse().unwrap(),
            end_lsn: end_lsn.parse().unwrap(),
            timeline: 1,
            size_bytes: 1,
            server_version: 150000,
        }
    }

    fn catalog() -> Vec<BackupInfo> {
        vec![
            b("b2", datetime!(2026-12-01 06:00 UTC), "0/9000100", "DONE"),
            b("b1", datetime!(2026-12-01 05:00 UTC), "0/4000100", "DONE"),
            b("b3", datetime!(2026-12-01 07:00 UTC), "0/F000100", "FAILED"),
        ]
    }

    const NOW: OffsetDateTime = datetime!(2026-12-01 08:00 UTC);

    #[test]
    fn the_newest_backup_ending_before_the_target() {
        let c = catalog();
        assert_eq!(choose_backup(&c, &Target::Time(datetime!(2026-12-01 05:30 UTC)), NOW, None).unwrap().id, "b1");
        assert_eq!(choose_backup(&c, &Target::Time(datetime!(2026-12-01 07:30 UTC)), NOW, None).unwrap().id, "b2");
        assert_eq!(choose_backup(&c, &Target::Latest, NOW, None).unwrap().id, "b2", "a failed backup is never chosen");
        assert_eq!(choose_backup(&c, &Target::Lsn("0/9000100".parse().unwrap()), NOW, None).unwrap().id, "b2");
        assert_eq!(choose_backup(&c, &Target::Lsn("0/9000000".parse().unwrap()), NOW, None).unwrap().id, "b1");
    }

    #[test]
    fn refusals_say_why() {
        let c = catalog();
        let e = choose_backup(&c, &Target::Time(datetime!(2026-12-01 04:00 UTC)), NOW, Some("keep 2")).unwrap_err();
        assert!(matches!(e, RestoreRefusal::NotCovered { ref oldest_id, .. } if oldest_id == "b1"));
        let text = e.to_string();
        assert!(text.contains("2026-12-01 05:00:00") && text.contains("retention (keep 2) removed older ones"), "{text}");
        // The end of a backup itself is not enough: recovery must reach consistency first.
        assert!(choose_backup(&c, &Target::Time(datetime!(2026-12-01 05:00 UTC)), NOW, None).is_err());
        assert!(matches!(
            choose_backup(&c, &Target::Time(datetime!(2026-12-02 00:00 UTC)), NOW, None),
            Err(RestoreRefusal::InTheFuture { .. })
        ));
        assert!(matches!(choose_backup(&[], &Target::Latest, NOW, None), Err(RestoreRefusal::NoBackup)));
        let only_failed = vec![b("x", NOW, "0/1", "FAILED")];
        assert!(matches!(choose_backup(&only_failed, &Target::Latest, NOW, None), Err(RestoreRefusal::NoBackup)));
        assert!(matches!(choose_backup(&c, &Target::Lsn("0/100".parse().unwrap()), NOW, None), Err(RestoreRefusal::NotCovered { .. })));
    }

    #[test]
    fn in_place_only_when_every_server_is_down() {
        assert!(check_in_place(&[]).is_ok());
        let e = check_in_place(&["db2".into()]).unwrap_err();
        assert!(e.to_string().contains("db2's server runs"), "{e}");
    }
}
