//! Backups and point-in-time recovery against real parts: PostgreSQL clusters of the lab,
//! Barman's cloud scripts (the lab's venv), and S3 as a moto server on loopback started
//! here. A client writes rows all along and records, for each, when it was sent and when
//! its commit was acknowledged.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::backups_common::*;
use crate::common::*;

/// Back up under load, note T, write more, restore to T into a new cluster: exactly the
/// rows acknowledged before T (the one in flight at T either way) and none sent after;
/// a time before the backup is refused; retention (keep = 1) removes the first backup and
/// a restore to T is then refused naming it; `backups` lists; `verify --backup` works.
async fn pitr(major: &str) {
    let name = format!("pitr{major}");
    let lab = BackupLab::new(&name, major, Tool::Barman, "", "retention = { keep = 1 }", true);
    let (client, src_work, port, wd) = (&lab.client, &lab.work, lab.port, &lab.wd);
    let new_name = format!("{name}-r");
    let new_file = wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    let with = |cmd: &[&str]| -> (i32, String, String) { lab.with(cmd) };
    let (b, c) = (lab.bin.to_string_lossy().into_owned(), lab.client.to_string_lossy().into_owned());

    let (code, out, err) = with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    let settings =
        psql(client, src_work, "db1", port, "SELECT current_setting('archive_mode') || ' ' || current_setting('archive_command')");
    assert!(settings.contains("barman-cloud-wal-archive") && !settings.contains(KEY_ID), "{settings}");
    create_app_role(client, src_work, "db1", port);

    let before_backup = rfc3339(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = Writer::start(port, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = with(&["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    let first_id = out.lines().next().unwrap().split_whitespace().nth(1).unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = writer.finish().await;
    switch_and_wait_archived(client, src_work, "db1", port);
    let before: Vec<i64> = rows.iter().filter(|r| r.acked < t).map(|r| r.id).collect();
    let after: Vec<i64> = rows.iter().filter(|r| r.sent > t).map(|r| r.id).collect();
    assert!(before.len() > 20 && after.len() > 20, "the load wrote too little: {} before, {} after", before.len(), after.len());

    // A time before the only backup ended is refused, with the reason.
    let (code, out, err) = with(&["restore", "--to-time", &before_backup, "--into", &new_file.to_string_lossy(), "--name", &new_name]);
    assert_eq!(code, 3, "restore before the backup: {out}\n{err}");
    assert!(err.contains("is not covered") && err.contains(&first_id), "{err}");
    assert!(!new_file.exists(), "a refused restore wrote {}", new_file.display());

    // Restore to T into a new cluster.
    let new_port = free_ports(3);
    let (code, out, err) = with(&[
        "restore",
        "--to-time",
        &rfc3339(t),
        "--into",
        &new_file.to_string_lossy(),
        "--name",
        &new_name,
        "--base-port",
        &new_port.to_string(),
    ]);
    let new_work = wd.path.join(&new_name);
    if code != 0 {
        // What the restored server said about its recovery (its log is kept beside the
        // data directory a failed restore removes).
        let log = std::fs::read_to_string(new_work.join("db1/log/postgresql.log")).unwrap_or_default();
        let said: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
        eprintln!("the restored server's log:\n{}", said[said.len().saturating_sub(60)..].join("\n"));
    }
    if code != 0 || std::env::var_os("PGREPL_LAB_ARCHIVE_REPORT").is_some() {
        eprintln!("the archive and the source's WAL:\n{}", archive_report(&lab));
    }
    assert_eq!(code, 0, "restore: {out}\n{}", err.lines().filter(|l| !l.contains(" DEBUG ")).collect::<Vec<_>>().join("\n"));
    eprintln!("restore:\n{out}\n{}", std::fs::read_to_string(&new_file).unwrap_or_default());
    let got = ids_in(client, &new_work, "db1", new_port);
    for id in &before {
        assert!(got.contains(id), "row {id}, acknowledged before T, is missing from the restore");
    }
    for id in &after {
        assert!(!got.contains(id), "row {id}, sent after T, is in the restore");
    }
    let ambiguous = got.len() - before.len();
    assert!(ambiguous <= 1, "{ambiguous} rows beyond those acknowledged before T");
    // The source is untouched: every acknowledged row is still there and it still archives.
    let src_ids = ids_in(client, src_work, "db1", port);
    assert!(rows.iter().all(|r| src_ids.contains(&r.id)));
    // The new cluster's standbys were cloned from its restored primary and stream.
    let nf = new_file.to_string_lossy().into_owned();
    let (code, out, err) = pgrepl_ok(&["status", "-f", &nf, "--pg-bin", &b, "--pg-client-bin", &c]);
    assert_eq!(code, 0, "status of the restored cluster: {out}\n{err}");
    assert_eq!(ids_in(client, &new_work, "db2", new_port + 1).len(), got.len());
    // Restoring again into that cluster, now running, is refused: nothing is written over.
    let (code, out, err) = with(&["restore", "--latest", "--into", &new_file.to_string_lossy()]);
    assert_eq!(code, 3, "restore into a running cluster: {out}\n{err}");
    assert!(err.contains("is not empty: a restore never writes over a data directory"), "{err}");
    assert_eq!(ids_in(client, &new_work, "db1", new_port), got);

    // Retention: a second backup with keep = 1 removes the first; T is then not covered.
    let (code, out, err) = with(&["backup", "--apply-retention"]);
    assert_eq!(code, 0, "second backup: {out}\n{err}");
    assert!(out.contains(&format!("retention removed: {first_id}")), "{out}");
    let (code, out, err) = with(&["backups", "--output", "json"]);
    assert_eq!(code, 0, "backups: {out}\n{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{out}");
    assert_ne!(list[0]["id"], first_id.as_str());
    assert!(list[0]["size_bytes"].as_u64().unwrap() > 1_000_000 && list[0]["timeline"] == 1, "{out}");
    let other = wd.path.join("other.toml");
    let (code, out, err) = with(&["restore", "--to-time", &rfc3339(t), "--into", &other.to_string_lossy(), "--name", "other"]);
    assert_eq!(code, 3, "restore to an uncovered time: {out}\n{err}");
    assert!(err.contains("retention (keep = 1) removed older ones"), "{err}");

    // verify --backup restores the latest into a scratch directory and starts it.
    let (code, out, err) = with(&["verify", "--backup", "--scratch-port", &free_ports(1).to_string()]);
    assert_eq!(code, 0, "verify --backup: {out}\n{err}");
    assert!(out.contains("restored, consistent, started"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_pitr_15() {
    pitr("15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_pitr_11() {
    pitr("11").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_pitr_18() {
    pitr("18").await;
}

/// Fail over under load (synchronous `ANY 1`), write more on the new primary, restore
/// `--latest` into a new cluster: every row acknowledged on both timelines is there, and
/// the restored primary runs on a timeline after the failover's.
pub(crate) async fn failover_then_latest(major: &str, tool: Tool) {
    let tag = format!("{}fo{major}", if tool == Tool::Barman { "bk" } else { "br" });
    let lab = BackupLab::new(&tag, major, tool, "[replication.sync]\nmode = \"any\"\ncount = 1\n", "", true);
    let new_file = lab.wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    lab.up_and_back_up();
    let w = Writer::start(lab.port, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.kill9("db1");
    let first = w.finish().await;
    let (code, out, err) = lab.with(&["failover"]);
    assert_eq!(code, 0, "failover: {out}\n{err}");
    let (node, port) = lab.primary();
    assert_ne!(node, "db1");
    let w = Writer::start(port, 1_000_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = w.finish().await;
    // No switch here: `restore` itself makes the new primary's WAL up to now reach the archive.
    assert!(first.len() > 20 && second.len() > 20, "too few rows: {} then {}", first.len(), second.len());

    let new_port = free_ports(3);
    let (code, out, err) = lab.restore_into(&["--latest"], &new_file, &format!("{tag}-r"), new_port);
    assert_eq!(code, 0, "restore --latest: {out}\n{err}");
    let tl: u32 = out.split("timeline ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).expect(&out);
    assert!(tl >= 3, "the restore promotes after the failover's timeline 2: {out}");
    let got = ids_in(&lab.client, &lab.wd.path.join(format!("{tag}-r")), "db1", new_port);
    for r in first.iter().chain(&second) {
        assert!(got.contains(&r.id), "row {} (acknowledged) is missing from the restore", r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_failover_latest_15() {
    failover_then_latest("15", Tool::Barman).await;
}

/// A missing bucket, an unreachable endpoint, no credentials: each a named error (exit 4),
/// the cluster untouched; archiving fails while the bucket is missing, every WAL segment
/// of the outage stays in pg_wal (a CHECKPOINT removes none), and once the bucket exists
/// each one is in the archive and a backup works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_tool_failures_15() {
    let lab = BackupLab::new("bkfail15", "15", Tool::Barman, "", "", false);
    let _destroy = lab.destroy_on_drop(&[]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");

    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 4, "backup to a missing bucket: {out}\n{err}");
    assert!(err.contains("the bucket does not exist (backup.bucket)"), "{err}");
    let text = std::fs::read_to_string(&lab.file).unwrap();
    let dead = lab.wd.path.join("dead.toml");
    std::fs::write(&dead, text.replace(&lab.moto.endpoint(), &format!("http://127.0.0.1:{}", free_ports(1)))).unwrap();
    let (code, out, err) = lab.run(&dead, &["backups"]);
    assert_eq!(code, 4, "unreachable endpoint: {out}\n{err}");
    assert!(err.contains("cannot be reached (backup.endpoint"), "{err}");
    let nocreds = lab.wd.path.join("nocreds.toml");
    std::fs::write(&nocreds, text.replace(&lab.creds.to_string_lossy().into_owned(), "/nonexistent/credentials")).unwrap();
    let (code, out, err) = lab.run(&nocreds, &["backups"]);
    assert_eq!(code, 4, "no credentials: {out}\n{err}");
    assert!(err.contains("refused the credentials"), "{err}");

    // Archiving fails meanwhile, the WAL waits in pg_wal; once the bucket exists every
    // segment of the outage reaches the archive.
    outage_then_catch_up(&lab, || lab.create_bucket());
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 0, "backup once fixed: {out}\n{err}");
    let (code, out, err) = lab.with(&["status"]);
    assert_eq!(code, 0, "status: {out}\n{err}");
}

/// `backup --from db2` (a standby) under load, then `restore --to-lsn L` into a new
/// cluster, L noted between two batches of rows: every row of the first batch and none of
/// the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_standby_to_lsn_15() {
    let lab = BackupLab::new("bklsn15", "15", Tool::Barman, "", "", true);
    let new_file = lab.wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    lab.up_for_writes();
    let w = Writer::start(lab.port, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = lab.with(&["backup", "--from", "db2"]);
    assert_eq!(code, 0, "backup --from db2: {out}\n{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = w.finish().await;
    let lsn = psql(&lab.client, &lab.work, "db1", lab.port, "SELECT pg_current_wal_lsn()");
    let w = Writer::start(lab.port, 1_000_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = w.finish().await;
    switch_and_wait_archived(&lab.client, &lab.work, "db1", lab.port);
    assert!(first.len() > 20 && second.len() > 20, "too few rows: {} then {}", first.len(), second.len());

    let new_port = free_ports(3);
    let (code, out, err) = lab.restore_into(&["--to-lsn", &lsn], &new_file, "bklsn15-r", new_port);
    assert_eq!(code, 0, "restore --to-lsn {lsn}: {out}\n{err}");
    assert!(out.contains(&format!("to LSN {lsn}")), "{out}");
    let got = ids_in(&lab.client, &lab.wd.path.join("bklsn15-r"), "db1", new_port);
    for r in &first {
        assert!(got.contains(&r.id), "row {} (before {lsn}) is missing from the restore", r.id);
    }
    for r in &second {
        assert!(!got.contains(&r.id), "row {} (after {lsn}) is in the restore", r.id);
    }
}

/// A restore never silently misses acknowledged rows (11: PostgreSQL up to 12 promotes at
/// the end of the archived WAL when it never reached the target). Every server killed
/// (`kill -9`) after rows were acknowledged and T noted: their WAL segment is not
/// archived, so `restore --to-time T` is refused saying the archive does not reach T, and
/// leaves nothing behind. Once the cluster runs again, `restore` itself makes the WAL up
/// to now reach the archive (a commit, a segment switch, pg_stat_archiver waited for):
/// the restore holds every row acknowledged before T, and none sent after.
async fn not_covered_then_pushed(major: &str) {
    let tag = format!("bkcov{major}");
    let lab = BackupLab::new(&tag, major, Tool::Barman, "", "", true);
    let new_file = lab.wd.path.join("restored.toml");
    let new_name = format!("{tag}-r");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    lab.up_and_back_up();
    let w = Writer::start(lab.port, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = w.finish().await;
    let before: Vec<i64> = rows.iter().filter(|r| r.acked < t).map(|r| r.id).collect();
    let after: Vec<i64> = rows.iter().filter(|r| r.sent > t).map(|r| r.id).collect();
    assert!(before.len() > 20 && after.len() > 20, "too few rows: {} before T, {} after", before.len(), after.len());
    for n in ["db1", "db2", "db3"] {
        lab.kill9(n);
    }
    let new_port = free_ports(3);
    let restore = |lab: &BackupLab| lab.restore_into(&["--to-time", &rfc3339(t)], &new_file, &new_name, new_port);
    let (code, out, err) = restore(&lab);
    assert_ne!(code, 0, "restore to T with its WAL not archived: {out}\n{err}");
    assert!(err.contains("without reaching") || err.contains("stopped during recovery"), "{err}");
    assert!(!new_file.exists(), "a refused restore wrote {}", new_file.display());
    let new_data = lab.wd.path.join(&new_name).join("db1/data");
    assert!(!new_data.join("PG_VERSION").exists(), "the refused restore left {}", new_data.display());

    // The cluster back up (crash recovery; the unarchived WAL is still in pg_wal).
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up after the kill: {out}\n{err}");
    let (node, _) = lab.primary();
    assert_eq!(node, "db1");
    let (code, out, err) = restore(&lab);
    assert_eq!(code, 0, "restore to T once the primary runs: {out}\n{err}");
    let got = ids_in(&lab.client, &lab.wd.path.join(&new_name), "db1", new_port);
    for id in &before {
        assert!(got.contains(id), "row {id}, acknowledged before T, is missing from the restore");
    }
    for id in &after {
        assert!(!got.contains(id), "row {id}, sent after T, is in the restore");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_needs_archived_wal_11() {
    not_covered_then_pushed("11").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_needs_archived_wal_15() {
    not_covered_then_pushed("15").await;
}

/// `tool = "directory"` on 15: the archive and `pg_basebackup -Ft` base backups in a
/// directory. A backup under load, T noted, more rows, `restore --to-time T` into a new
/// cluster (no WAL switch by the test: `restore` makes the WAL reach the archive) holds
/// exactly the rows acknowledged before T, its standbys stream; `backups --output json`;
/// `keep = 1`: a second backup removes the first and the WAL only it needed, and T is
/// then refused naming the retention; `verify --backup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_directory_pitr_15() {
    let (bin, client) = bins("15");
    let wd = WorkDir::new("bkdir15").with_bin(&bin);
    let archive = wd.path.join("archive");
    let work = wd.path.join("src");
    let port = free_ports(3);
    let section = format!("[backup]\ntool = \"directory\"\npath = \"{}\"\nretention = {{ keep = 1 }}\n", archive.display());
    let file = wd.path.join("src.toml");
    std::fs::write(&file, local_spec("bkdir15", "15", port, &work.to_string_lossy(), &section)).unwrap();
    let new_file = wd.path.join("restored.toml");
    let _destroy = Destroy(vec![(file.clone(), bin.clone(), client.clone()), (new_file.clone(), bin.clone(), client.clone())]);
    let (f, b, c) = (file.to_string_lossy().into_owned(), bin.to_string_lossy().into_owned(), client.to_string_lossy().into_owned());
    let with = |cmd: &[&str]| pgrepl_ok(&[cmd, &["-f", f.as_str(), "--pg-bin", b.as_str(), "--pg-client-bin", c.as_str()][..]].concat());

    let (code, out, err) = with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    create_app_role(&client, &work, "db1", port);
    let writer = Writer::start(port, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = with(&["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    let first_id = out.lines().next().unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert!(archive.join("bkdir15/base").join(&first_id).join("base.tar").is_file(), "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = writer.finish().await;
    let before: Vec<i64> = rows.iter().filter(|r| r.acked < t).map(|r| r.id).collect();
    let after: Vec<i64> = rows.iter().filter(|r| r.sent > t).map(|r| r.id).collect();
    assert!(before.len() > 20 && after.len() > 20, "the load wrote too little: {} before, {} after", before.len(), after.len());

    let new_port = free_ports(3);
    let (code, out, err) = with(&[
        "restore",
        "--to-time",
        &rfc3339(t),
        "--into",
        &new_file.to_string_lossy(),
        "--name",
        "bkdir15-r",
        "--base-port",
        &new_port.to_string(),
    ]);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    let new_work = wd.path.join("bkdir15-r");
    let got = ids_in(&client, &new_work, "db1", new_port);
    for id in &before {
        assert!(got.contains(id), "row {id}, acknowledged before T, is missing from the restore");
    }
    for id in &after {
        assert!(!got.contains(id), "row {id}, sent after T, is in the restore");
    }
    assert_eq!(ids_in(&client, &new_work, "db2", new_port + 1).len(), got.len(), "the restored cluster's standby streams");

    let (code, out, err) = with(&["backups", "--output", "json"]);
    assert_eq!(code, 0, "backups: {out}\n{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{out}");
    assert!(list[0]["size_bytes"].as_u64().unwrap() > 1_000_000 && list[0]["timeline"] == 1 && list[0]["status"] == "DONE", "{out}");
    let wal = archive.join("bkdir15/wal");
    let segments = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let wal_before = segments(&wal);
    let (code, out, err) = with(&["backup", "--apply-retention"]);
    assert_eq!(code, 0, "second backup: {out}\n{err}");
    assert!(out.contains(&format!("retention removed: {first_id}")), "{out}");
    assert!(!archive.join("bkdir15/base").join(&first_id).exists());
    let wal_after = segments(&wal);
    assert!(wal_before.iter().any(|s| !wal_after.contains(s)), "the WAL only the first backup needed is removed: {wal_after:?}");
    let other = wd.path.join("other.toml");
    let (code, out, err) = with(&["restore", "--to-time", &rfc3339(t), "--into", &other.to_string_lossy(), "--name", "other"]);
    assert_eq!(code, 3, "restore to an uncovered time: {out}\n{err}");
    assert!(err.contains("retention (keep = 1) removed older ones"), "{err}");

    let (code, out, err) = with(&["verify", "--backup", "--scratch-port", &free_ports(1).to_string()]);
    assert_eq!(code, 0, "verify --backup: {out}\n{err}");
    assert!(out.contains("restored, consistent, started"), "{out}");
}

/// pgrepl's rendered `restore_command` (Barman's) takes a segment from this cluster's
/// archive only: never a file another restore left in Barman's shared spool directory
/// (`/var/tmp/walrestore`, read before the archive by segment name), never a `.partial`
/// in place of the whole segment PostgreSQL asks for. Run by hand as the server's user
/// against moto, the way PostgreSQL runs it. (A spooled file of another test's cluster once
/// ended backup_pitr_11's recovery short of its target: its first page was of another
/// system.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barman_restore_command_takes_only_this_archives_segments() {
    let lab = BackupLab::new("bkspool", "15", Tool::Barman, "", "", true);
    let (f, b, c) =
        (lab.file.to_string_lossy().into_owned(), lab.bin.to_string_lossy().into_owned(), lab.client.to_string_lossy().into_owned());
    let (code, out, err) = pgrepl_ok(&["render", "-f", &f, "--node", "db2", "--pg-bin", &b, "--pg-client-bin", &c]);
    assert_eq!(code, 0, "render: {err}");
    let line = out.lines().find(|l| l.starts_with("restore_command = '")).unwrap_or_else(|| panic!("no restore_command in\n{out}"));
    let command = line.trim_start_matches("restore_command = '").trim_end_matches('\'').replace("''", "'");
    // Segment names of a timeline no test cluster reaches.
    let (decoy, partial) = ("0000000900000000000000AB", "0000000900000000000000AC");
    // A .partial of `partial` in the archive, as a promotion leaves one.
    let o = Command::new(lab_dir().join("venv/bin/python"))
        .args([
            "-c",
            "import boto3,sys\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
             s3.put_object(Bucket=sys.argv[2], Key='lab/bkspool/wals/0000000900000000/' + sys.argv[3] + '.partial', Body=b'x' * 16)\n",
        ])
        .args([&lab.moto.endpoint(), &lab.bucket, partial])
        .env("AWS_SHARED_CREDENTIALS_FILE", &lab.creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "put the .partial: {}", String::from_utf8_lossy(&o.stderr));
    // A decoy of `decoy` in Barman's shared spool directory, as another restore leaves one.
    let spool = Path::new("/var/tmp/walrestore");
    let made_spool = !spool.exists();
    if made_spool {
        std::fs::create_dir_all(spool).unwrap();
        chown_postgres(spool);
    }
    let decoy_file = spool.join(decoy);
    std::fs::write(&decoy_file, b"not this cluster's WAL").unwrap();
    chown_postgres(&decoy_file);
    let dest = lab.wd.path.join("fetched");
    std::fs::create_dir_all(&dest).unwrap();
    chown_postgres(&dest);
    let fetch = |seg: &str| -> (i32, bool, String) {
        let p = dest.join(seg);
        let cmd = command.replace("%f", seg).replace("%p", &p.to_string_lossy());
        let o = Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &cmd]).output().unwrap();
        (o.status.code().unwrap_or(-1), p.exists(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (decoy_code, decoy_fetched, decoy_err) = fetch(decoy);
    let decoy_left = decoy_file.exists();
    let _ = std::fs::remove_file(&decoy_file);
    if made_spool {
        let _ = std::fs::remove_dir(spool);
    }
    assert_eq!(
        (decoy_code, decoy_fetched),
        (1, false),
        "a segment the archive lacks is not found, whatever the shared spool holds: {decoy_err}"
    );
    assert!(decoy_left, "the shared spool's file is left alone");
    let (code, fetched, err) = fetch(partial);
    assert_eq!((code, fetched), (1, false), "a .partial is never handed over as the whole segment: {err}");
    // And a segment the archive holds is fetched (the command works at all).
    let (code, _, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {err}");
    let _destroy = lab.destroy_on_drop(&[]);
    switch_and_wait_archived(&lab.client, &lab.work, "db1", lab.port);
    let first = lab.archived_segments().into_iter().next().expect("a segment in the archive");
    let (code, fetched, err) = fetch(&first);
    assert_eq!((code, fetched), (0, true), "{first} from the archive: {err}");
    assert_eq!(std::fs::metadata(dest.join(&first)).unwrap().len(), 16 * 1024 * 1024);
}

fn chown_postgres(p: &Path) {
    let o = Command::new("chown").arg("postgres:postgres").arg(p).output().unwrap();
    assert!(o.status.success(), "chown {}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
}
