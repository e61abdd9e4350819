//! The backups a tool holds, as pgrepl sees them: read from barman-cloud-backup-list's
//! JSON or `pgbackrest info --output=json` (the tools' own listings of the bucket;
//! pgrepl talks to no S3 API itself).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::lsn::Lsn;

/// One base backup (with `tool = "directory"` also its `backup.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// What `pg_basebackup -v` says of a backup's WAL: (start LSN, timeline, end LSN), from
/// `write-ahead log start point: 0/2000028 on timeline 1` and `write-ahead log end
/// point: 0/2000100` (10+; `transaction log` before).
pub fn parse_basebackup_verbose(stderr: &str) -> Option<(Lsn, u32, Lsn)> {
    let after = |marker: &str| -> Option<&str> {
        stderr.lines().find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim())).or_else(|| {
            let old = marker.replace("write-ahead", "transaction");
            stderr.lines().find_map(|l| l.find(old.as_str()).map(|i| l[i + old.len()..].trim()))
        })
    };
    let start = after("write-ahead log start point:")?;
    let mut words = start.split_whitespace();
    let begin: Lsn = words.next()?.parse().ok()?;
    let timeline = start.rsplit(' ').next()?.parse().ok()?;
    let end: Lsn = after("write-ahead log end point:")?.split_whitespace().next()?.parse().ok()?;
    Some((begin, timeline, end))
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
#[error("the backup tool's listing could not be read: {0}")]
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

/// What `pgbackrest info --output=json` prints: one object per stanza.
#[derive(Deserialize)]
struct PgbrStanza {
    name: String,
    #[serde(default)]
    backup: Vec<PgbrBackup>,
    #[serde(default)]
    db: Vec<PgbrDb>,
    status: Option<PgbrStatus>,
    #[serde(default)]
    repo: Vec<PgbrRepo>,
}

#[derive(Deserialize)]
struct PgbrStatus {
    code: i32,
    message: String,
}

#[derive(Deserialize)]
struct PgbrRepo {
    status: Option<PgbrStatus>,
}

#[derive(Deserialize)]
struct PgbrDb {
    id: u32,
    version: String,
}

#[derive(Deserialize)]
struct PgbrBackup {
    label: String,
    #[serde(default)]
    error: Option<bool>,
    timestamp: PgbrRange<i64>,
    lsn: Option<PgbrRange<String>>,
    archive: Option<PgbrRange<Option<String>>>,
    info: PgbrInfo,
    database: PgbrDatabase,
}

#[derive(Deserialize)]
struct PgbrRange<T> {
    start: T,
    stop: T,
}

#[derive(Deserialize)]
struct PgbrInfo {
    size: u64,
}

#[derive(Deserialize)]
struct PgbrDatabase {
    id: u32,
}

/// The backups of `stanza` in `pgbackrest info --output=json` (2.45), oldest first.
/// pgBackRest records times in whole seconds: the end is rounded up to the next second,
/// so that a target after it is after the backup's consistent point. The timeline is the
/// one of the first WAL segment of the backup. `status`: `DONE`, or `FAILED` when
/// pgBackRest marks it as having errors.
pub fn parse_pgbackrest_info(json: &str, stanza: &str) -> Result<Vec<BackupInfo>, CatalogError> {
    let list: Vec<PgbrStanza> = serde_json::from_str(json).map_err(|e| CatalogError(format!("pgbackrest info: {e}")))?;
    let Some(st) = list.into_iter().find(|s| s.name == stanza) else { return Ok(Vec::new()) };
    // `info` exits 0 when the repository cannot be read and says why in its status: 0 ok,
    // 1 no stanza yet, 2 no backup yet (both: an empty list); anything else is an error.
    if let Some(status) = st.status.as_ref().filter(|s| !matches!(s.code, 0..=2)) {
        let repo: Vec<&str> =
            st.repo.iter().filter_map(|r| r.status.as_ref()).filter(|s| s.code != 0).map(|s| s.message.as_str()).collect();
        let why = if repo.is_empty() { status.message.clone() } else { repo.join("\n") };
        return Err(CatalogError(format!("pgbackrest info: {why}")));
    }
    let mut out = Vec::new();
    for b in st.backup {
        let time = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).ok();
        let lsn = |s: &str| s.parse::<Lsn>().ok();
        let Some(l) = &b.lsn else { continue };
        let (Some(begin_time), Some(end_time), Some(begin_lsn), Some(end_lsn)) =
            (time(b.timestamp.start), time(b.timestamp.stop + 1), lsn(&l.start), lsn(&l.stop))
        else {
            continue;
        };
        let timeline = b
            .archive
            .as_ref()
            .and_then(|a| a.start.as_deref())
            .and_then(|w| w.get(..8))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .unwrap_or(1);
        let version = st.db.iter().find(|d| d.id == b.database.id).map(|d| d.version.as_str()).unwrap_or("0");
        let server_version = version.split('.').next().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0) * 10_000;
        out.push(BackupInfo {
            id: b.label,
            status: if b.error == Some(true) { "FAILED".into() } else { "DONE".into() },
            begin_time,
            end_time,
            begin_lsn,
            end_lsn,
            timeline,
            size_bytes: b.info.size,
            server_version,
        });
    }
    out.sort_by(|a, b| a.end_time.cmp(&b.end_time).then(a.id.cmp(&b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basebackup_verbose_lines() {
        let e = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                 pg_basebackup: checkpoint completed\n\
                 pg_basebackup: write-ahead log start point: 0/2000028 on timeline 3\n\
                 pg_basebackup: write-ahead log end point: 0/2000100\n\
                 pg_basebackup: base backup completed\n";
        assert_eq!(parse_basebackup_verbose(e), Some(("0/2000028".parse().unwrap(), 3, "0/2000100".parse().unwrap())));
        let old =
            "pg_basebackup: transaction log start point: 0/4000028 on timeline 1\npg_basebackup: transaction log end point: 0/40000F8\n";
        assert_eq!(parse_basebackup_verbose(old), Some(("0/4000028".parse().unwrap(), 1, "0/40000F8".parse().unwrap())));
        assert_eq!(parse_basebackup_verbose("pg_basebackup: error: could not connect"), None);
    }

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

    /// Printed by pgBackRest 2.45 against moto behind HAProxy (one full backup, PG 15).
    const PGBR: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000003","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000020000000000000002","stop":"000000020000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22279825,"repository":{"delta":2898715,"size":2898715},"size":22279825},"label":"20261201-103937F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796121577,"stop":1796121582},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714283418301432430,"version":"15"}],"name":"x","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn reads_pgbackrests_info() {
        let l = parse_pgbackrest_info(PGBR, "x").unwrap();
        assert_eq!(l.len(), 1);
        let b = &l[0];
        assert_eq!(b.id, "20261201-103937F");
        assert!(b.done());
        assert_eq!((b.begin_lsn.to_string(), b.end_lsn.to_string()), ("0/2000028".into(), "0/3000050".into()));
        assert_eq!(b.timeline, 2);
        assert_eq!(b.size_bytes, 22_279_825);
        assert_eq!(b.server_version, 150_000);
        assert_eq!(b.end_time.unix_timestamp(), 1_796_121_583, "rounded up to the next second");
        assert!(parse_pgbackrest_info(PGBR, "other").unwrap().is_empty());
        assert!(parse_pgbackrest_info(r#"[{"name":"x","backup":[],"db":[]}]"#, "x").unwrap().is_empty());
        assert!(parse_pgbackrest_info("ERROR: [037]", "x").is_err());
        let refused = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"x","repo":[{"cipher":"none","key":1,"status":{"code":99,"message":"[HostConnectError] unable to connect to '127.0.0.1:1': [111] Connection refused"}}],"status":{"code":99,"lock":{"backup":{"held":false}},"message":"other"}}]"#;
        let e = parse_pgbackrest_info(refused, "x").unwrap_err();
        assert!(e.0.contains("Connection refused"), "{e}");
        let missing = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"x","repo":[{"cipher":"none","key":1,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":{"backup":{"held":false}},"message":"missing stanza path"}}]"#;
        assert!(parse_pgbackrest_info(missing, "x").unwrap().is_empty());
    }
}
