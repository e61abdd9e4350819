//! pgBackRest's failover gap, decided (pure).
//!
//! With `archive_mode = on` (pgBackRest refuses `always`) only the primary archives, and a
//! standby marks every segment it streamed as archived (`archive_status/<seg>.done`:
//! PostgreSQL's walreceiver does so unless the mode is `always`). The segments a dying
//! primary had completed but not archived yet (its archive failing or slow) are then in
//! the new primary's `pg_wal`, marked done, and nothing archives them: a restore
//! following the old timeline stops before them.
//!
//! After a promotion (failover or switchover) the executor's step
//! [`Action::ArchiveOldTimeline`](crate::plan::Action::ArchiveOldTimeline) reads the new
//! timeline's history file (its last line: the parent timeline and the switch point), lists `pg_wal` and `archive_status`, and lists the archive
//! (`pgbackrest repo-ls`); what is decided here: which of the parent timeline's segments
//! the new primary holds whole (ending at or before the switch point, streamed: `.done`),
//! which of those the archive lacks. Those are marked `.ready` again, so the new primary's
//! archiver pushes them (retrying until the archive takes them; a checkpoint removes none
//! meanwhile). Only segments the archive lacks are marked: a segment already archived is
//! never pushed again (pgBackRest refuses one with a different checksum, which would hold
//! the archiver on it).

use crate::lsn::Lsn;

fn segment(name: &str) -> Option<(u32, u64, u64)> {
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log, seg))
}

/// The parent timeline's segments the new primary holds whole: named in `pg_wal` (the
/// file names in `wal_files`), of timeline `parent`, ending at or before `switch`, and
/// streamed (a `<seg>.done` among `status_files`; a segment without one is a recycled or
/// preallocated file, or one the archiver handles already). Sorted.
pub fn old_timeline_segments(parent: u32, switch: Lsn, wal_files: &[String], status_files: &[String], seg_size: u64) -> Vec<String> {
    if seg_size == 0 {
        return Vec::new();
    }
    let per_log = 0x1_0000_0000 / seg_size;
    let mut out: Vec<String> = wal_files
        .iter()
        .filter(|f| {
            segment(f).is_some_and(|(tli, log, seg)| {
                let end = (log * per_log + seg + 1) * seg_size;
                tli == parent && seg < per_log && end <= switch.0
            })
        })
        .filter(|f| status_files.iter().any(|s| s.strip_suffix(".done") == Some(f.as_str())))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The archive id to look in, from `pgbackrest repo-ls archive/<stanza>`: the entries
/// `<major>-<db id>`, the highest db id (the current one after a `stanza-upgrade`).
pub fn archive_id(listing: &str) -> Option<String> {
    listing
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let (major, id) = l.split_once('-')?;
            (!major.is_empty() && major.chars().all(|c| c.is_ascii_digit())).then_some(())?;
            Some((id.parse::<u64>().ok()?, l.to_string()))
        })
        .max()
        .map(|(_, l)| l)
}

/// The directories of the archive id holding `segments` (`<tli><log>`, 16 hex digits).
pub fn archive_dirs(segments: &[String]) -> Vec<String> {
    let mut d: Vec<String> = segments.iter().filter_map(|s| s.get(..16).map(str::to_string)).collect();
    d.sort();
    d.dedup();
    d
}

/// `segments` the archive lacks, given the file names listed in their directories
/// (`000000010000000000000003-<sha1>.gz`: the segment's name, then its checksum).
pub fn missing_from_archive(segments: &[String], listed: &[String]) -> Vec<String> {
    segments.iter().filter(|s| !listed.iter().any(|l| l.trim().get(..24) == Some(s.as_str()))).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn only_whole_streamed_segments_of_the_parent() {
        let wal = v(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",         // holds the switch point: not whole
            "000000010000000000000005.partial", // the new primary archives it itself
            "000000010000000000000006",         // recycled, past the switch point
            "000000020000000000000005",         // the new timeline's
            "00000002.history",
            "archive_status",
        ]);
        let status = v(&[
            "000000010000000000000003.done",
            "000000010000000000000004.done",
            "000000010000000000000005.partial.ready",
            "000000010000000000000006.done",
            "00000002.history.ready",
        ]);
        let switch: Lsn = "0/5000060".parse().unwrap();
        assert_eq!(old_timeline_segments(1, switch, &wal, &status, SEG), v(&["000000010000000000000003", "000000010000000000000004"]));
        // A segment waiting for the archiver already (.ready) or with no status (a
        // preallocated file) is left alone.
        let status = v(&["000000010000000000000003.ready"]);
        assert!(old_timeline_segments(1, switch, &wal, &status, SEG).is_empty());
        // A switch exactly at a segment's end: that segment is whole.
        let at_end: Lsn = "0/6000000".parse().unwrap();
        let status = v(&["000000010000000000000005.done"]);
        assert_eq!(old_timeline_segments(1, at_end, &wal, &status, SEG), v(&["000000010000000000000005"]));
        // Another timeline than the parent: nothing.
        assert!(old_timeline_segments(3, switch, &wal, &v(&["000000010000000000000003.done"]), SEG).is_empty());
        // Past 4 GB: the log part counts.
        let wal = v(&["0000000100000001000000FF"]);
        let st = v(&["0000000100000001000000FF.done"]);
        assert_eq!(old_timeline_segments(1, "2/00000028".parse().unwrap(), &wal, &st, SEG), wal);
        assert!(old_timeline_segments(1, "1/FF000028".parse().unwrap(), &wal, &st, SEG).is_empty());
    }

    #[test]
    fn the_archive_id_and_what_it_lacks() {
        assert_eq!(archive_id("15-1\narchive.info\narchive.info.copy\n").as_deref(), Some("15-1"));
        assert_eq!(archive_id("15-1\n16-2\narchive.info\n").as_deref(), Some("16-2"));
        assert_eq!(archive_id("archive.info\n"), None);
        let segs = v(&["000000010000000000000003", "000000010000000000000004", "000000010000000100000000"]);
        assert_eq!(archive_dirs(&segs), v(&["0000000100000000", "0000000100000001"]));
        let listed = v(&["000000010000000000000003-0123456789abcdef0123456789abcdef01234567.gz", "00000001.history"]);
        assert_eq!(missing_from_archive(&segs, &listed), v(&["000000010000000000000004", "000000010000000100000000"]));
    }
}
