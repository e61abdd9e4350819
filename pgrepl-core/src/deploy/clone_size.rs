//! What a clone's progress compares: the bytes pg_basebackup copies (the source's data
//! directory as it counts it: the regular files' sizes, without the WAL directory and the
//! directories whose contents it skips), the same measured in the clone's data directory
//! as it fills, and the WAL streamed beside it, shown apart. The script runs on a host
//! (one command); reading its output and the progress line are pure.

/// Prints `<data bytes> <wal bytes>` for the data directory `$1` whose WAL directory is
/// named `$2` (`pg_wal`, `pg_xlog`): regular files only (symbolic links are not followed,
/// so tablespaces are not counted), skipping what pg_basebackup skips (the contents of
/// `pg_dynshmem`, `pg_notify`, `pg_replslot`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp`,
/// `pg_subtrans`, and `postmaster.pid`, `postmaster.opts`). A directory that does not
/// exist (yet) counts 0.
pub const CLONE_SIZE_SCRIPT: &str = r#"d=$1 w=$2
sum() { awk '{ s += $1 } END { printf "%.0f", s }'; }
data=$(find "$d" -mindepth 1 \( -path "$d/$w" -o -path "$d/pg_dynshmem" -o -path "$d/pg_notify" -o -path "$d/pg_replslot" \
  -o -path "$d/pg_serial" -o -path "$d/pg_snapshots" -o -path "$d/pg_stat_tmp" -o -path "$d/pg_subtrans" \) -prune \
  -o -type f ! -name postmaster.pid ! -name postmaster.opts -printf '%s\n' 2>/dev/null | sum)
wal=$(find "$d/$w/" -type f -printf '%s\n' 2>/dev/null | sum)
echo "${data:-0} ${wal:-0}"
"#;

/// Bytes of a data directory, as [`CLONE_SIZE_SCRIPT`] prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirSize {
    /// What pg_basebackup copies of it (WAL apart).
    pub data: u64,
    /// The WAL directory's files.
    pub wal: u64,
}

/// Reads the script's output; `None` when it is not two numbers.
pub fn parse_dir_size(out: &str) -> Option<DirSize> {
    let mut it = out.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (it.next(), it.next(), it.next()) {
        (Some(Some(data)), Some(Some(wal)), None) => Some(DirSize { data, wal }),
        _ => None,
    }
}

/// "12 MB of 22 MB (54%), WAL 16 MB": the clone's data against the source's (never above
/// 100%: a source that grew meanwhile counts as large as what arrived), the WAL apart; only
/// the bytes when the source's size is unknown.
pub fn clone_progress(copied: DirSize, source_data: Option<u64>) -> String {
    let size = |b: u64| {
        if b >= 1 << 30 { format!("{:.1} GB", b as f64 / (1u64 << 30) as f64) } else { format!("{:.0} MB", b as f64 / (1u64 << 20) as f64) }
    };
    let wal = if copied.wal > 0 { format!(", WAL {}", size(copied.wal)) } else { String::new() };
    match source_data {
        Some(total) if total > 0 => {
            let total = total.max(copied.data);
            format!("{} of {} ({}%){wal}", size(copied.data), size(total), copied.data.saturating_mul(100) / total)
        }
        _ => format!("{}{wal}", size(copied.data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_well_and_never_passes_100() {
        let d = |data: u64, wal: u64| DirSize { data, wal };
        assert_eq!(clone_progress(d(300 << 20, 0), Some(600 << 20)), "300 MB of 600 MB (50%)");
        assert_eq!(clone_progress(d(11 << 20, 32 << 20), Some(22 << 20)), "11 MB of 22 MB (50%), WAL 32 MB");
        // More arrived than the source had when measured (it grew): 100%, never more.
        assert_eq!(clone_progress(d(3 << 30, 0), Some(2 << 30)), "3.0 GB of 3.0 GB (100%)");
        assert_eq!(clone_progress(d(5 << 20, 16 << 20), None), "5 MB, WAL 16 MB");
        assert_eq!(clone_progress(d(5 << 20, 0), Some(0)), "5 MB");
    }

    #[test]
    fn sizes_are_read_from_the_script() {
        assert_eq!(parse_dir_size("23456789 16777216\n"), Some(DirSize { data: 23_456_789, wal: 16_777_216 }));
        assert_eq!(parse_dir_size("0 0"), Some(DirSize { data: 0, wal: 0 }));
        assert_eq!(parse_dir_size(""), None);
        assert_eq!(parse_dir_size("12"), None);
        assert_eq!(parse_dir_size("1 2 3"), None);
        assert_eq!(parse_dir_size("x 2"), None);
    }

    #[test]
    fn the_script_counts_what_basebackup_copies() {
        // Run for real on a scratch directory shaped like a data directory.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (p, len) in [
            ("PG_VERSION", 3usize),
            ("base/1/1259", 8192),
            ("global/pg_control", 8192),
            ("pg_wal/000000010000000000000001", 16 << 10),
            ("pg_wal/archive_status/x.done", 0),
            ("pg_stat_tmp/global.stat", 1000),
            ("pg_replslot/s/state", 200),
            ("postmaster.pid", 100),
        ] {
            let f = d.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, vec![b'x'; len]).unwrap();
        }
        let out = std::process::Command::new("sh").args(["-c", CLONE_SIZE_SCRIPT, "sh"]).arg(d).arg("pg_wal").output().unwrap();
        let size = parse_dir_size(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(size, Some(DirSize { data: 3 + 8192 + 8192, wal: 16 << 10 }), "{out:?}");
        let out = std::process::Command::new("sh").args(["-c", CLONE_SIZE_SCRIPT, "sh", "/nonexistent/pgrepl", "pg_wal"]).output().unwrap();
        assert_eq!(parse_dir_size(&String::from_utf8_lossy(&out.stdout)), Some(DirSize { data: 0, wal: 0 }));
    }
}
