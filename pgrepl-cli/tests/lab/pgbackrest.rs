//! `[backup] tool = "pgbackrest"` against real parts: Debian 12's pgBackRest 2.45, S3 as
//! a moto server on loopback behind the lab's HAProxy terminating TLS with a certificate
//! made here (pgBackRest talks to S3 over TLS only and verifies it: the spec's `ca_file`
//! names the CA), and the in-place restore.

use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::backups_common::*;
use crate::common::*;

/// The keys are only in the nodes' pgBackRest configurations, each 0600 and the server's
/// OS user's; the settings PostgreSQL shows name none.
fn keys_only_in_private_files(lab: &BackupLab, cluster: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for node in ["db1", "db2", "db3"] {
        // The archiver's (written by `up`), and the operations' own when one ran there.
        let cli = lab.work.join(node).join("pgrepl/cli/pgbackrest").join(cluster).join("pgbackrest.conf");
        let conf = lab.work.join(node).join("pgrepl/pgbackrest").join(cluster).join("pgbackrest.conf");
        for conf in std::iter::once(conf).chain(cli.exists().then_some(cli)) {
            let meta = std::fs::metadata(&conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", conf.display());
            let owner = Command::new("id").args(["-u", "postgres"]).output().unwrap();
            assert_eq!(meta.uid().to_string(), String::from_utf8_lossy(&owner.stdout).trim(), "{}", conf.display());
            let text = std::fs::read_to_string(&conf).unwrap();
            assert!(text.contains(&format!("repo1-s3-key={KEY_ID}\n")), "{text}");
            assert!(text.contains("repo1-s3-ca-file="), "pgBackRest verifies TLS with the spec's CA: {text}");
            assert!(!text.contains("verify-tls"), "{text}");
        }
    }
}

/// Back up under load with pgBackRest, note T, write more, restore to T into a new
/// cluster: exactly the rows acknowledged before T; `backups` in text and JSON; a
/// backup from a standby; retention (keep = 1) removes the first backup and T is then
/// refused naming it; `verify --backup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_pitr_15() {
    let lab = BackupLab::new("brpitr15", "15", Tool::Pgbackrest, "", "retention = { keep = 1 }", true);
    let new_file = lab.wd.path.join("restored.toml");
    let new_name = "brpitr15-r";
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    assert!(out.contains("pgBackRest stanza ready"), "{out}");
    let (client, work, port) = (&lab.client, &lab.work, lab.port);
    let settings = psql(client, work, "db1", port, "SELECT current_setting('archive_mode') || ' ' || current_setting('archive_command')");
    assert!(settings.starts_with("on /usr/bin/pgbackrest --config-path=") && settings.ends_with("archive-push %p"), "{settings}");
    keys_only_in_private_files(&lab, "brpitr15");
    create_app_role(client, work, "db1", port);

    let writer = Writer::start(port, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    let first_id = out.lines().next().unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert!(first_id.ends_with('F'), "a full backup's label: {out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = writer.finish().await;
    switch_and_wait_archived(client, work, "db1", port);
    let before: Vec<i64> = rows.iter().filter(|r| r.acked < t).map(|r| r.id).collect();
    let after: Vec<i64> = rows.iter().filter(|r| r.sent > t).map(|r| r.id).collect();
    assert!(before.len() > 20 && after.len() > 20, "the load wrote too little: {} before, {} after", before.len(), after.len());

    // The list, for people and for programs.
    let (code, out, err) = lab.with(&["backups"]);
    assert_eq!(code, 0, "backups: {out}\n{err}");
    assert!(out.lines().any(|l| l.starts_with(&first_id) && l.contains("DONE") && l.contains("tl 1")), "{out}");
    let (code, out, err) = lab.with(&["backups", "--output", "json"]);
    assert_eq!(code, 0, "backups --output json: {out}\n{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b = &list.as_array().unwrap()[0];
    assert_eq!(b["id"], first_id.as_str());
    assert!(b["size_bytes"].as_u64().unwrap() > 1_000_000 && b["timeline"] == 1, "{out}");
    for k in ["begin_lsn", "end_lsn", "begin_time", "end_time"] {
        assert!(b[k].is_string(), "{k} in {out}");
    }

    // Restore to T into a new cluster.
    let new_port = free_ports(3);
    let (code, out, err) = lab.restore_into(&["--to-time", &rfc3339(t)], &new_file, new_name, new_port);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    let new_work = lab.wd.path.join(new_name);
    let got = ids_in(client, &new_work, "db1", new_port);
    for id in &before {
        assert!(got.contains(id), "row {id}, acknowledged before T, is missing from the restore");
    }
    for id in &after {
        assert!(!got.contains(id), "row {id}, sent after T, is in the restore");
    }
    assert!(got.len() - before.len() <= 1, "{} rows beyond those acknowledged before T", got.len() - before.len());
    assert_eq!(ids_in(client, &new_work, "db2", new_port + 1).len(), got.len(), "the restored cluster's standby streams");
    let (code, out, err) = lab.run(&new_file, &["status"]);
    assert_eq!(code, 0, "status of the restored cluster: {out}\n{err}");
    // The source still has every acknowledged row.
    let src = ids_in(client, work, "db1", port);
    assert!(rows.iter().all(|r| src.contains(&r.id)));

    // A backup from a standby (pgBackRest's --backup-standby, the primary on the same host).
    let (code, out, err) = lab.with(&["backup", "--from", "db2", "--apply-retention"]);
    assert_eq!(code, 0, "backup --from db2: {out}\n{err}");
    assert!(out.contains(&format!("retention removed: {first_id}")), "keep = 1: {out}");
    let (code, out, err) = lab.with(&["backups", "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len(), 1, "{out}");
    let other = lab.wd.path.join("other.toml");
    let (code, out, err) = lab.with(&["restore", "--to-time", &rfc3339(t), "--into", &other.to_string_lossy(), "--name", "other"]);
    assert_eq!(code, 3, "restore to a time retention no longer covers: {out}\n{err}");
    assert!(err.contains("retention (keep = 1) removed older ones"), "{err}");
    assert!(!other.exists());

    let (code, out, err) = lab.with(&["verify", "--backup", "--scratch-port", &free_ports(1).to_string()]);
    assert_eq!(code, 0, "verify --backup: {out}\n{err}");
    assert!(out.contains("restored, consistent, started"), "{out}");
    assert!(lab.work.join("db1/pgrepl/cli/pgbackrest/brpitr15/pgbackrest.conf").exists(), "the operations' own configuration");
    keys_only_in_private_files(&lab, "brpitr15");
}

/// pgBackRest 2.45 supports PostgreSQL up to 15: `up` of a 16 or 18 cluster with it is
/// refused before anything is created, naming the field and the installed version.
#[test]
fn pgbackrest_refuses_16_and_18() {
    for major in ["16", "18"] {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(&format!("brold{major}")).with_bin(&bin);
        let work = wd.path.join("src");
        let backup = "[backup]\ntool = \"pgbackrest\"\nbucket = \"pgrepl-never\"\nendpoint = \"https://127.0.0.1:9\"\n";
        let file = wd.path.join("c.toml");
        std::fs::write(&file, local_spec(&format!("brold{major}"), major, free_ports(3), &work.to_string_lossy(), backup)).unwrap();
        let (f, b, c) = (file.to_string_lossy(), bin.to_string_lossy(), client.to_string_lossy());
        let (code, out, err) = pgrepl_ok(&["up", "-f", &f, "--pg-bin", &b, "--pg-client-bin", &c]);
        assert_eq!(code, 3, "up of {major} with pgBackRest 2.45: {out}\n{err}");
        assert!(
            err.contains("backup.tool = \"pgbackrest\"")
                && err.contains("pgBackRest 2.45 (/usr/bin/pgbackrest)")
                && err.contains(&format!("PostgreSQL {major}")),
            "{err}"
        );
        assert!(!work.join("db1/data").exists(), "nothing is created for a refused cluster");
    }
}

/// `restore --in-place --yes`: refused while a server of the cluster runs (naming it);
/// after `down`, the primary is restored to T in its own place (its former data kept
/// aside), `up` clones the standbys: exactly the rows acknowledged before T everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_restore_in_place_15() {
    let lab = BackupLab::new("brinpl15", "15", Tool::Pgbackrest, "", "", true);
    let _destroy = lab.destroy_on_drop(&[]);
    lab.up_for_writes();
    let (client, work, port) = (&lab.client, &lab.work, lab.port);
    let writer = Writer::start(port, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = writer.finish().await;
    switch_and_wait_archived(client, work, "db1", port);
    let before: Vec<i64> = rows.iter().filter(|r| r.acked < t).map(|r| r.id).collect();
    let after: Vec<i64> = rows.iter().filter(|r| r.sent > t).map(|r| r.id).collect();
    assert!(before.len() > 20 && after.len() > 20, "the load wrote too little: {} before, {} after", before.len(), after.len());

    let target = rfc3339(t);
    let (code, out, err) = lab.with(&["restore", "--in-place", "--to-time", &target]);
    assert_eq!(code, 2, "without --yes: {out}\n{err}");
    assert!(err.contains("add --yes"), "{err}");
    let (code, out, err) = lab.with(&["restore", "--in-place", "--yes", "--to-time", &target]);
    assert_eq!(code, 3, "while the cluster runs: {out}\n{err}");
    assert!(err.contains("db1's server runs") && err.contains("pgrepl down"), "{err}");
    assert_eq!(ids_in(client, work, "db1", port).len(), rows.len(), "a refused restore changes nothing");
    let (code, out, err) = lab.with(&["down"]);
    assert_eq!(code, 0, "down: {out}\n{err}");
    // One standby still running is enough to refuse, and it is named.
    let data2 = work.join("db2/data");
    let o = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(lab.bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data2)
        .args(["-l"])
        .arg(work.join("db2/log/postgresql.log"))
        .args(["-w", "-t", "60", "start"])
        .env("LD_LIBRARY_PATH", lab.bin.join("../lib"))
        .output()
        .unwrap();
    assert!(o.status.success(), "start db2 by hand: {}", String::from_utf8_lossy(&o.stderr));
    let (code, out, err) = lab.with(&["restore", "--in-place", "--yes", "--to-time", &target]);
    assert_eq!(code, 3, "while db2 runs: {out}\n{err}");
    assert!(err.contains("db2's server runs"), "{err}");
    let (code, out, err) = lab.with(&["down"]);
    assert_eq!(code, 0, "down: {out}\n{err}");

    let (code, out, err) = lab.with(&["restore", "--in-place", "--yes", "--to-time", &target]);
    assert_eq!(code, 0, "restore --in-place: {out}\n{err}");
    assert!(out.contains("pre-restore"), "{out}");
    assert!(work.join("db1/data.pre-restore/PG_VERSION").exists(), "the former data directory is kept");
    for (i, node) in ["db1", "db2", "db3"].iter().enumerate() {
        let got = ids_in(client, work, node, port + i as u16);
        for id in &before {
            assert!(got.contains(id), "{node}: row {id}, acknowledged before T, is missing");
        }
        for id in &after {
            assert!(!got.contains(id), "{node}: row {id}, sent after T, is there");
        }
    }
    let (code, out, err) = lab.with(&["status"]);
    assert_eq!(code, 0, "status after the in-place restore: {out}\n{err}");
    // The restored primary archives again (a new timeline), into the same stanza.
    switch_and_wait_archived(client, work, "db1", port);
}

/// A missing bucket, an unreachable endpoint, a CA that does not sign the endpoint's
/// certificate: each a named error (exit 4) naming the spec's field; archiving fails
/// meanwhile and every WAL segment of the outage waits in pg_wal (a CHECKPOINT removes
/// none); once the bucket exists `up` creates the stanza, each segment reaches the
/// archive and a backup works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_failures_named_15() {
    let lab = BackupLab::new("brfail15", "15", Tool::Pgbackrest, "", "", false);
    let _destroy = lab.destroy_on_drop(&[]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up with a missing bucket: {out}\n{err}");
    assert!(out.contains("pgBackRest stanza not created yet"), "{out}");
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 4, "backup to a missing bucket: {out}\n{err}");
    assert!(err.contains("the bucket does not exist (backup.bucket)"), "{err}");
    let text = std::fs::read_to_string(&lab.file).unwrap();
    let endpoint = lab.endpoint();
    let dead = lab.wd.path.join("dead.toml");
    std::fs::write(&dead, text.replace(&endpoint, &format!("https://127.0.0.1:{}", free_ports(1)))).unwrap();
    let (code, out, err) = lab.run(&dead, &["backups"]);
    assert_eq!(code, 4, "unreachable endpoint: {out}\n{err}");
    assert!(err.contains("cannot be reached (backup.endpoint"), "{err}");
    let untrusted = lab.wd.path.join("untrusted.toml");
    std::fs::write(
        &untrusted,
        text.replace(&lab.proxy.as_ref().unwrap().ca.to_string_lossy().into_owned(), "/etc/ssl/certs/ca-certificates.crt"),
    )
    .unwrap();
    let (code, out, err) = lab.run(&untrusted, &["backups"]);
    assert_eq!(code, 4, "a CA that does not sign the endpoint's certificate: {out}\n{err}");
    assert!(err.contains("TLS certificate is not trusted (backup.ca_file"), "{err}");

    // The runs above wrote their own configurations into the nodes (each operation
    // writes the spec's): `up` writes the cluster's again. Archiving fails meanwhile, the
    // WAL waits in pg_wal; once the bucket exists `up` creates the stanza and every
    // segment of the outage reaches the archive.
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    outage_then_catch_up(&lab, || {
        lab.create_bucket();
        let (code, out, err) = lab.with(&["up"]);
        assert_eq!(code, 0, "up once fixed: {out}\n{err}");
        assert!(out.contains("pgBackRest stanza ready"), "{out}");
    });
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 0, "backup once fixed: {out}\n{err}");
}

/// With pgBackRest (`archive_mode = on`: only the primary archives): fail over under load
/// in synchronous mode, write more on the new primary, `restore --latest` into a new
/// cluster holds every acknowledged row of both timelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_failover_latest_15() {
    crate::backups::failover_then_latest("15", Tool::Pgbackrest).await;
}

/// On the local provider pgrepl installs no package on the machine it runs on: a backup
/// tool missing where the spec says (`bin_dir`) makes `up` fail (exit 4) before anything
/// is created, naming the tool and what to install; present, `up` goes on (the tests
/// above), and a second `up` installs nothing again.
#[test]
fn missing_tool_is_named_locally() {
    for (tool, extra, says) in [
        ("pgbackrest", "", "install pgBackRest (as root: `apt-get install pgbackrest`"),
        ("barman-cloud", "", "pip install 'barman[cloud]==3.19.1' psycopg2-binary"),
    ] {
        let (bin, client) = bins("15");
        let wd = WorkDir::new(&format!("notool-{tool}")).with_bin(&bin);
        let work = wd.path.join("src");
        let backup = format!(
            "[backup]\ntool = \"{tool}\"\nbucket = \"pgrepl-never\"\nendpoint = \"https://127.0.0.1:9\"\nbin_dir = \"{}/nowhere/bin\"\n{extra}",
            wd.path.display()
        );
        let file = wd.path.join("c.toml");
        std::fs::write(&file, local_spec("notool", "15", free_ports(3), &work.to_string_lossy(), &backup)).unwrap();
        let (f, b, c) = (file.to_string_lossy(), bin.to_string_lossy(), client.to_string_lossy());
        let (code, out, err) = pgrepl_ok(&["up", "-f", &f, "--pg-bin", &b, "--pg-client-bin", &c]);
        assert_eq!(code, 4, "up with {tool} missing: {out}\n{err}");
        assert!(err.contains("the backup tool is not installed (backup.bin_dir") && err.contains(says), "{tool}: {err}");
        assert!(err.contains(&format!("{}/nowhere/bin", wd.path.display())), "{err}");
        assert!(!work.join("db1/data").exists(), "nothing is created when the tool is missing");
        assert!(!wd.path.join("nowhere").exists(), "nothing is installed on this machine");
    }
}

/// pgBackRest's failover gap (`archive_mode = on`: a standby marks the segments it streams
/// as archived): db1's archiving held back (its archiver's configuration names a bucket
/// that does not exist), three segments completed there under a synchronous load and
/// never archived, db1 killed. The failover's step hands the old timeline's completed
/// segments the archive lacks to the new primary's archiver: they reach the archive, and
/// `restore --latest` holds every row acknowledged before the kill and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_failover_archives_old_timeline_15() {
    let tag = "brgap15";
    let lab = BackupLab::new(tag, "15", Tool::Pgbackrest, "[replication.sync]\nmode = \"any\"\ncount = 1\n", "", true);
    let new_file = lab.wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    lab.up_and_back_up();
    let (client, work, port) = (&lab.client, &lab.work, lab.port);

    // db1's archiver held back: its configuration (only `up` writes it) names a missing bucket.
    let conf = work.join("db1/pgrepl/pgbackrest").join(tag).join("pgbackrest.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let bucket_line = format!("repo1-s3-bucket={}\n", lab.bucket);
    assert!(text.contains(&bucket_line), "{text}");
    std::fs::write(&conf, text.replace(&bucket_line, &format!("repo1-s3-bucket={}-held\n", lab.bucket))).unwrap();
    let q = |sql: &str| psql(client, work, "db1", port, sql);
    let failed_before: u64 = q("SELECT failed_count FROM pg_stat_archiver").parse().unwrap();
    let w = Writer::start(port, 1).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.push(q("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while q("SELECT failed_count FROM pg_stat_archiver").parse::<u64>().unwrap() <= failed_before {
        assert!(std::time::Instant::now() < deadline, "db1's archiving never failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archived = lab.archived_segments();
    for s in &held {
        assert!(work.join("db1/data/pg_wal/archive_status").join(format!("{s}.ready")).is_file(), "{s} does not wait on db1");
        assert!(!archived.contains(s), "{s} is archived already: {archived:?}");
    }
    lab.kill9("db1");
    let first = w.finish().await;
    let (code, out, err) = lab.with(&["failover"]);
    assert_eq!(code, 0, "failover: {out}\n{err}");
    assert!(out.contains("to the archiver"), "the failover hands the old timeline's segments to the archiver: {out}");
    let (node, new_port) = lab.primary();
    assert_ne!(node, "db1");
    let w = Writer::start(new_port, 1_000_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = w.finish().await;
    assert!(first.len() > 20 && second.len() > 20, "too few rows: {} then {}", first.len(), second.len());

    let restored_port = free_ports(3);
    let (code, out, err) = lab.restore_into(&["--latest"], &new_file, &format!("{tag}-r"), restored_port);
    assert_eq!(code, 0, "restore --latest: {out}\n{err}");
    let got = ids_in(client, &lab.wd.path.join(format!("{tag}-r")), "db1", restored_port);
    for r in first.iter().chain(&second) {
        assert!(got.contains(&r.id), "row {} (acknowledged) is missing from the restore", r.id);
    }
    let archived = lab.archived_segments();
    for s in &held {
        assert!(archived.contains(s), "{s}, completed on db1 and streamed to {node}, is not in the archive: {archived:?}");
    }
}
