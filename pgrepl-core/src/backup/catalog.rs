//! The backups a tool holds, as pgrepl sees them: read from barman-cloud-backup-list's
//! JSON (the tool's own listing of the bucket; pgrepl talks to no S3 API itself).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::lsn::Lsn;

/// One base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupInfo {
    /// The tool's id (barman-cloud: `20261201T052635`).
    pub id: String,
    /// `DONE`, `FAILED`, ... as the tool says.
    pub status: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub begin_time: OffsetDateTime,
    /// When it ended: the earliest point in time it can be restored to.
    #[serde(with = "time::serde::rfc3339")]
    pub end_time: OffsetDateTime,
    /// WAL position where it starts.
    pub begin_lsn: Lsn,
    /// WAL position where it is consistent.
    pub end_lsn: Lsn,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The data directory's size in bytes (before compression).
    pub size_bytes: u64,
    /// PostgreSQL's version number (`150019`).
    pub server_version: u32,
}

impl BackupInfo {
    /// Complete and usable.
    pub fn done(&self) -> bool {
        self.status == "DONE"
    }
}

/// What barman-cloud-backup-list prints with `--format json`.
#[derive(Deserialize)]
struct BarmanList {
    backups_list: Vec<BarmanBackup>,
}

#[derive(Deserialize)]
struct BarmanBackup {
    backup_id: String,
    status: String,
    begin_time_iso: Option<String>,
    end_time_iso: Option<String>,
    begin_xlog: Option<String>,
    end_xlog: Option<String>,
    timeline: Option<u32>,
    cluster_size: Option<u64>,
    size: Option<u64>,
    version: Option<u32>,
}

/// Error reading a tool's listing.
#[derive(Debug, thiserror::Error)]
#[error("the backup list is not what barman-cloud-backup-list prints: {0}")]
pub struct CatalogError(pub String);

/// The backups in barman-cloud-backup-list's JSON, oldest first. Backups still running
/// or failed are kept (their status says so); ones without times or positions are
/// skipped (nothing can be restored from them).
pub fn parse_barman_list(json: &str) -> Result<Vec<BackupInfo>, CatalogError> {
    let list: BarmanList = serde_json::from_str(json).map_err(|e| CatalogError(e.to_string()))?;
    let mut out = Vec::new();
    for b in list.backups_list {
        let time = |s: &Option<String>| s.as_deref().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let lsn = |s: &Option<String>| s.as_deref().and_then(|l| l.parse::<Lsn>().ok());
        let (Some(begin_time), Some(end_time), Some(begin_lsn), Some(end_lsn)) =
            (time(&b.begin_time_iso), time(&b.end_time_iso), lsn(&b.begin_xlog), lsn(&b.end_xlog))
        else {
            continue;
        };
        out.push(BackupInfo {
            id: b.backup_id,
            status: b.status,
            begin_time,
            end_time,
            begin_lsn,
            end_lsn,
            timeline: b.timeline.unwrap_or(1),
            size_bytes: b.cluster_size.or(b.size).unwrap_or(0),
            server_version: b.version.unwrap_or(0),
        });
    }
    out.sort_by(|a, b| a.end_time.cmp(&b.end_time).then(a.id.cmp(&b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by barman-cloud-backup-list 3.19.1 against moto (one backup, PG 15).
    pub(crate) const ONE: &str = r#"{"backups_list": [{"backup_label": "'START WAL LOCATION: 0/4000028'", "begin_offset": 40, "begin_time": "Tue Dec  1 05:26:35 2026", "begin_wal": "000000010000000000000004", "begin_xlog": "0/4000028", "children_backup_ids": null, "cluster_size": 22429385, "compression": null, "config_file": "/tmp/bx/d/postgresql.conf", "data_checksums": "off", "end_offset": 256, "end_time": "Tue Dec  1 05:26:40 2026", "end_wal": "000000010000000000000004", "end_xlog": "0/4000100", "error": null, "mode": null, "parent_backup_id": null, "pgdata": "/tmp/bx/d", "server_name": "cloud", "size": null, "status": "DONE", "systemid": "7714202583128496336", "tablespaces": null, "timeline": 1, "version": 150019, "xlog_segment_size": 16777216, "backup_id": "20261201T052635", "begin_time_iso": "2026-12-01T05:26:35.354959+00:00", "end_time_iso": "2026-12-01T05:26:40.297147+00:00"}]}"#;

    #[test]
    fn reads_barmans_listing() {
        let l = parse_barman_list(ONE).unwrap();
        assert_eq!(l.len(), 1);
        let b = &l[0];
        assert_eq!(b.id, "20261201T052635");
        assert!(b.done());
        assert_eq!(b.end_lsn.to_string(), "0/4000100");
        assert_eq!(b.begin_lsn.to_string(), "0/4000028");
        assert_eq!(b.size_bytes, 22_429_385);
        assert_eq!(b.timeline, 1);
        assert_eq!(b.end_time.unix_timestamp(), 1_796_102_800);
        assert!(parse_barman_list(r#"{"backups_list": []}"#).unwrap().is_empty());
        assert!(parse_barman_list("Traceback ...").is_err());
    }
}
