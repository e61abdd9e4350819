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
    /// The source's primary runs but the WAL up to now did not reach the archive in time:
    /// a restore would stop at the end of the archive, short of the target.
    #[error(
        "the archive does not cover {target} yet: {node}'s WAL segment {segment} is not archived after {waited_seconds} s \
         (pg_stat_archiver: {archiver}); fix archiving (see `pgrepl backups`), then restore again"
    )]
    ArchiveBehind {
        /// The target.
        target: String,
        /// The source's primary.
        node: String,
        /// The segment that must be archived.
        segment: String,
        /// How long pgrepl waited.
        waited_seconds: u64,
        /// What pg_stat_archiver said (last archived, last failed).
        archiver: String,
    },
    /// Recovery ended at the end of the archived WAL without reaching the target (11 and
    /// 12 promote there silently; pgrepl checks the timeline history the server wrote).
    #[error(
        "recovery ended at the end of the archived WAL ({end}) without reaching {target}: the archive does not cover it \
         (WAL missing, or no transaction committed after it was archived)"
    )]
    TargetNotReached {
        /// The target.
        target: String,
        /// Where recovery ended (the switch point in the history file).
        end: String,
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

/// Whether WAL segment `segment` (24 hex digits) is archived once `pg_stat_archiver`'s
/// `last_archived_wal` is `last_archived` (the archiver works oldest first; the timeline
/// is not compared, a promotion archives the new timeline's segments after the old ones;
/// `.backup` and `.partial` names count by their segment, history files never).
pub fn archived_through(last_archived: &str, segment: &str) -> bool {
    let seg = |n: &str| {
        let head = n.get(..24)?;
        head.chars().all(|c| c.is_ascii_hexdigit()).then(|| head[8..].to_ascii_uppercase())
    };
    matches!((seg(last_archived), seg(segment)), (Some(a), Some(s)) if a >= s)
}

/// Whether recovery stopped at `target`, read from the last line of the history file the
/// promoted server wrote for its new timeline (`<parent tli>\t<switch LSN>\t<reason>`):
/// PostgreSQL writes the configured target's kind with where it stopped, which is the
/// zero time (2000-01-01 in the server's zone) or LSN 0/0 when it never stopped there
/// but ran out of WAL. `Err` holds where recovery ended.
pub fn target_reached(history: &str, target: &Target) -> Result<(), String> {
    let Some(line) = history.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with('#')) else {
        return Err("no history line".into());
    };
    let mut parts = line.splitn(3, '\t');
    let (_, switch, reason) = (parts.next(), parts.next().unwrap_or("?").trim(), parts.next().unwrap_or("").trim());
    let stopped = match target {
        Target::Latest => true,
        Target::Time(_) => {
            let at = reason.trim_start_matches("before ").trim_start_matches("after ");
            (reason.starts_with("before ") || reason.starts_with("after "))
                && !at.starts_with("2000-01-01")
                && !at.starts_with("1999-12-31")
        }
        Target::Lsn(_) => reason.split_once("LSN ").and_then(|(_, l)| l.trim().parse::<Lsn>().ok()).is_some_and(|l| l != Lsn(0)),
    };
    if stopped { Ok(()) } else { Err(format!("LSN {switch}")) }
}

/// The backups retention removes (`tool = "directory"`; the other tools apply it
/// themselves): with `keep`, every complete backup but the newest `keep`; with a window
/// (seconds), those ended before `now - window`, except the newest of them (a restore to
/// the window's start needs it). Incomplete ones are left alone.
pub fn retention_removes(catalog: &[BackupInfo], keep: Option<u32>, window_seconds: Option<u64>, now: OffsetDateTime) -> Vec<String> {
    let mut done: Vec<&BackupInfo> = catalog.iter().filter(|b| b.done()).collect();
    done.sort_by(|a, b| a.end_time.cmp(&b.end_time).then(a.end_lsn.cmp(&b.end_lsn)));
    let kept_from = match (keep, window_seconds) {
        (Some(k), _) => done.len().saturating_sub(k as usize),
        (None, Some(w)) => {
            let start = now - time::Duration::seconds(i64::try_from(w).unwrap_or(i64::MAX));
            done.iter().rposition(|b| b.end_time < start).unwrap_or(0)
        }
        (None, None) => 0,
    };
    done[..kept_from].iter().map(|b| b.id.clone()).collect()
}

/// The name of the WAL segment holding `lsn` on timeline `tli` (segments of `seg_size` bytes).
pub fn segment_name(tli: u32, lsn: Lsn, seg_size: u64) -> String {
    let segno = lsn.0 / seg_size;
    let per_log = 0x1_0000_0000 / seg_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// The archived WAL files a directory archive no longer needs once `oldest` (a segment
/// name) begins the oldest backup kept: segments (and their `.backup` files) before it on
/// any timeline; history files and anything else are kept.
pub fn wal_removable<'a>(files: &'a [String], oldest: &str) -> Vec<&'a String> {
    let seg = |n: &str| n.get(..24).filter(|h| h.chars().all(|c| c.is_ascii_hexdigit())).map(|h| h[8..].to_ascii_uppercase());
    let Some(limit) = seg(oldest) else { return Vec::new() };
    files.iter().filter(|f| seg(f).is_some_and(|s| s < limit)).collect()
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

/// The options of barman-cloud-wal-restore that pgrepl's `restore_command` passes
/// (`--no-partial`, `--spool-dir`: see [`crate::render::backup_tool::restore_command`]).
pub const BARMAN_RESTORE_OPTIONS: [&str; 2] = ["--no-partial", "--spool-dir"];

/// Whether the installed barman-cloud-wal-restore (what `--help` printed, at `program`)
/// takes the options pgrepl's `restore_command` passes; the refusal names the spec's
/// field, what is missing and what to install.
pub fn check_barman_restore(help: &str, program: &str) -> Result<(), String> {
    let lacks: Vec<&str> = BARMAN_RESTORE_OPTIONS.iter().copied().filter(|o| !help.contains(o)).collect();
    if lacks.is_empty() {
        return Ok(());
    }
    Err(format!(
        "backup.bin_dir: {program} takes no {} (an older Barman): a restore or a standby would read Barman's shared spool \
         directory and .partial segments; install Barman {} there, or point backup.bin_dir at a newer one",
        lacks.join(" and no "),
        crate::render::backup_tool::BARMAN_VERSION
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn barman_without_the_restore_options_is_refused_by_name() {
        let new = "usage: barman-cloud-wal-restore [-V] [--no-partial] [-p PARALLEL] [--spool-dir SPOOL_DIR] source_url";
        assert!(check_barman_restore(new, "/opt/b/bin/barman-cloud-wal-restore").is_ok());
        let old = "usage: barman-cloud-wal-restore [-V] [--help] [-v | -q] [-t] [--no-partial] source_url";
        let e = check_barman_restore(old, "/opt/b/bin/barman-cloud-wal-restore").unwrap_err();
        assert!(e.starts_with("backup.bin_dir: /opt/b/bin/barman-cloud-wal-restore takes no --spool-dir "), "{e}");
        let e = check_barman_restore("usage: barman-cloud-wal-restore [-V] source_url", "p").unwrap_err();
        assert!(e.contains("no --no-partial and no --spool-dir") && e.contains("Barman 3.19.1"), "{e}");
    }

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
    fn directory_retention() {
        let c = catalog();
        assert_eq!(retention_removes(&c, Some(1), None, NOW), vec!["b1".to_string()]);
        assert!(retention_removes(&c, Some(2), None, NOW).is_empty());
        // A window of 1.5 h before 08:00: b2 (06:00) is the newest before 06:30, kept; b1 goes.
        assert_eq!(retention_removes(&c, None, Some(5400), NOW), vec!["b1".to_string()]);
        assert!(retention_removes(&c, None, Some(4 * 3600), NOW).is_empty());
        assert_eq!(segment_name(1, "0/5000028".parse().unwrap(), 16 << 20), "000000010000000000000005");
        assert_eq!(segment_name(2, "1/2000000".parse().unwrap(), 16 << 20), "000000020000000100000002");
        assert_eq!(segment_name(1, "0/50000000".parse().unwrap(), 64 << 20), "000000010000000000000014");
        let files: Vec<String> = [
            "000000010000000000000003",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000005",
            "00000002.history",
            "000000020000000000000004",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let gone: Vec<&str> = wal_removable(&files, "000000010000000000000005").into_iter().map(String::as_str).collect();
        assert_eq!(gone, ["000000010000000000000003", "000000010000000000000004.00000028.backup", "000000020000000000000004"]);
    }

    #[test]
    fn archived_through_compares_segments() {
        assert!(archived_through("000000010000000000000005", "000000010000000000000005"));
        assert!(archived_through("000000010000000000000006", "000000010000000000000005"));
        assert!(!archived_through("000000010000000000000004", "000000010000000000000005"));
        assert!(archived_through("00000001000000000000000A.00000028.backup", "000000010000000000000009"));
        assert!(archived_through("000000020000000100000000", "0000000100000000000000FF"));
        assert!(!archived_through("00000002.history", "000000010000000000000001"));
        assert!(!archived_through("", "000000010000000000000001"));
    }

    #[test]
    fn the_history_file_says_whether_the_target_was_reached() {
        let t = Target::Time(datetime!(2026-12-01 05:30 UTC));
        assert!(target_reached("1\t0/5000110\tbefore 2026-12-01 05:30:00.12+00\n", &t).is_ok());
        assert!(target_reached("1\t0/5000110\tafter 2026-12-01 05:30:00+00\n", &t).is_ok());
        // PostgreSQL 11 ran out of archived WAL: the stop time is the zero time.
        assert_eq!(target_reached("1\t0/4000060\tbefore 2000-01-01 00:00:00+00\n", &t), Err("LSN 0/4000060".into()));
        assert!(target_reached("1\t0/4000060\tbefore 1999-12-31 19:00:00-05\n", &t).is_err());
        // A failover earlier in the history, then the restore's own line last.
        let two = "1\t0/3000000\tno recovery target specified\n\n2\t0/7000000\tbefore 2026-12-01 05:30:01+00\n";
        assert!(target_reached(two, &t).is_ok());
        let l = Target::Lsn("0/5000000".parse().unwrap());
        assert!(target_reached("1\t0/5000028\tafter LSN 0/5000000\n", &l).is_ok());
        assert!(target_reached("1\t0/4000060\tbefore LSN 0/0\n", &l).is_err());
        assert!(target_reached("1\t0/4000060\tbefore LSN 0/00000000\n", &l).is_err());
        assert!(target_reached("1\t0/4000060\tno recovery target specified\n", &Target::Latest).is_ok());
        assert!(target_reached("1\t0/4000060\tno recovery target specified\n", &t).is_err());
    }

    #[test]
    fn in_place_only_when_every_server_is_down() {
        assert!(check_in_place(&[]).is_ok());
        let e = check_in_place(&["db2".into()]).unwrap_err();
        assert!(e.to_string().contains("db2's server runs"), "{e}");
    }
}
