//! Backups and point-in-time recovery against real parts: PostgreSQL clusters of the lab,
//! Barman's cloud scripts (the lab's venv), and S3 as a moto server on loopback started
//! here. A client writes rows all along and records, for each, when it was sent and when
//! its commit was acknowledged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
}

impl Moto {
    pub(crate) fn start(dir: &Path) -> Moto {
        let exe = lab_dir().join("venv/bin/moto_server");
        assert!(exe.exists(), "{} is missing: run scripts/lab/install.sh", exe.display());
        let port = free_ports(1);
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not answer on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with boto3 (moto's own venv has it), with the test's credentials.
    pub(crate) fn create_bucket(&self, creds: &Path, bucket: &str) {
        let o = Command::new(lab_dir().join("venv/bin/python"))
            .args([
                "-c",
                "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
            ])
            .args([&self.endpoint(), bucket])
            .env("AWS_SHARED_CREDENTIALS_FILE", creds)
            .output()
            .unwrap();
        assert!(o.status.success(), "create bucket: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgrepl destroy --yes` of every cluster file given, when the test ends (passes or not).
pub(crate) struct Destroy(pub(crate) Vec<(PathBuf, PathBuf, PathBuf)>);

impl Drop for Destroy {
    fn drop(&mut self) {
        for (file, bin, client) in &self.0 {
            if file.exists() {
                let _ = pgrepl(&[
                    "destroy",
                    "--yes",
                    "-f",
                    &file.to_string_lossy(),
                    "--pg-bin",
                    &bin.to_string_lossy(),
                    "--pg-client-bin",
                    &client.to_string_lossy(),
                ]);
            }
        }
    }
}

/// The lab's Barman scripts.
fn barman_bin() -> PathBuf {
    let b = lab_dir().join("barman/bin");
    assert!(b.join("barman-cloud-wal-archive").is_file(), "Barman's cloud scripts are not in {}: run scripts/lab/install.sh", b.display());
    b
}

/// A credentials file of the AWS configuration (moto accepts any key), 0600, the server's.
pub(crate) fn credentials(dir: &Path) -> PathBuf {
    let p = dir.join("aws-credentials");
    std::fs::write(&p, "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("chown").arg("postgres").arg(&p).output().unwrap();
    assert!(o.status.success());
    p
}

fn backup_section(moto: &Moto, bucket: &str, creds: &Path, retention: &str) -> String {
    format!(
        "[backup]\ntool = \"barman-cloud\"\nbucket = \"{bucket}\"\nprefix = \"lab\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
         credentials_file = \"{}\"\nbin_dir = \"{}\"\n{retention}\n",
        moto.endpoint(),
        creds.display(),
        barman_bin().display()
    )
}

/// One acknowledged row: its id, when it was sent, when its commit was acknowledged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) sent: SystemTime,
    pub(crate) acked: SystemTime,
}

/// Writes rows one after the other into `t` until stopped; every acknowledged one recorded.
pub(crate) struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    rows: Arc<Mutex<Vec<Row>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) async fn start(port: u16, first_id: i64) -> Writer {
        let client = connect(port).await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS t (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rows = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), rows.clone());
        let task = tokio::spawn(async move {
            let mut id = first_id;
            // Bounded: stops when asked, or after 10 minutes.
            let end = Instant::now() + Duration::from_secs(600);
            while !s.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                let sent = SystemTime::now();
                if client.execute("INSERT INTO t (id) VALUES ($1)", &[&id]).await.is_ok() {
                    r.lock().unwrap().push(Row { id, sent, acked: SystemTime::now() });
                }
                id += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { stop, rows, task }
    }

    pub(crate) async fn finish(self) -> Vec<Row> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap();
        self.rows.lock().unwrap().clone()
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128).unwrap();
    dt.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// `pg_switch_wal()` as a statement of its own, then waits (bounded) until the archiver
/// has archived the segment it closed.
pub(crate) fn switch_and_wait_archived(client_bin: &Path, work: &Path, node: &str, port: u16) {
    let closed = psql(client_bin, work, node, port, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = psql(client_bin, work, node, port, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.len() == 24 && last[8..] >= closed[8..] {
            return;
        }
        assert!(Instant::now() < deadline, "{closed} was not archived within 120 s (last archived: {last:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn ids_in(client_bin: &Path, work: &Path, node: &str, port: u16) -> Vec<i64> {
    let out = psql(client_bin, work, node, port, "SELECT id FROM t ORDER BY id");
    out.lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
}

/// Back up under load, note T, write more, restore to T into a new cluster: exactly the
/// rows acknowledged before T (the one in flight at T either way) and none sent after;
/// a time before the backup is refused; retention (keep = 1) removes the first backup and
/// a restore to T is then refused naming it; `backups` lists; `verify --backup` works.
async fn pitr(major: &str) {
    let (bin, client) = bins(major);
    let wd = WorkDir::new(&format!("pitr{major}")).with_bin(&bin);
    let moto = Moto::start(&wd.path);
    let creds = credentials(&wd.path);
    let bucket = format!("pgrepl-pitr-{major}");
    moto.create_bucket(&creds, &bucket);
    let name = format!("pitr{major}");
    let src_work = wd.path.join("src");
    let port = free_ports(3);
    let spec =
        local_spec(&name, major, port, &src_work.to_string_lossy(), &backup_section(&moto, &bucket, &creds, "retention = { keep = 1 }"));
    let file = wd.path.join("src.toml");
    std::fs::write(&file, spec).unwrap();
    let new_name = format!("{name}-r");
    let new_file = wd.path.join("restored.toml");
    let _destroy = Destroy(vec![(file.clone(), bin.clone(), client.clone()), (new_file.clone(), bin.clone(), client.clone())]);
    let f = file.to_string_lossy().into_owned();
    let (b, c) = (bin.to_string_lossy().into_owned(), client.to_string_lossy().into_owned());
    let common = ["-f", f.as_str(), "--pg-bin", b.as_str(), "--pg-client-bin", c.as_str()];
    let with = |cmd: &[&str]| -> (i32, String, String) { pgrepl_ok(&[cmd, &common[..]].concat()) };

    let (code, out, err) = with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    let settings =
        psql(&client, &src_work, "db1", port, "SELECT current_setting('archive_mode') || ' ' || current_setting('archive_command')");
    assert!(settings.contains("barman-cloud-wal-archive") && !settings.contains("testing"), "{settings}");
    create_app_role(&client, &src_work, "db1", port);

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
    switch_and_wait_archived(&client, &src_work, "db1", port);
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
    assert_eq!(code, 0, "restore: {out}\n{err}");
    eprintln!("restore:\n{out}\n{}", std::fs::read_to_string(&new_file).unwrap_or_default());
    let new_work = wd.path.join(&new_name);
    let got = ids_in(&client, &new_work, "db1", new_port);
    for id in &before {
        assert!(got.contains(id), "row {id}, acknowledged before T, is missing from the restore");
    }
    for id in &after {
        assert!(!got.contains(id), "row {id}, sent after T, is in the restore");
    }
    let ambiguous = got.len() - before.len();
    assert!(ambiguous <= 1, "{ambiguous} rows beyond those acknowledged before T");
    // The source is untouched: every acknowledged row is still there and it still archives.
    let src_ids = ids_in(&client, &src_work, "db1", port);
    assert!(rows.iter().all(|r| src_ids.contains(&r.id)));
    // The new cluster's standbys were cloned from its restored primary and stream.
    let nf = new_file.to_string_lossy().into_owned();
    let (code, out, err) = pgrepl_ok(&["status", "-f", &nf, "--pg-bin", &b, "--pg-client-bin", &c]);
    assert_eq!(code, 0, "status of the restored cluster: {out}\n{err}");
    assert_eq!(ids_in(&client, &new_work, "db2", new_port + 1).len(), got.len());
    // Restoring again into that cluster, now running, is refused: nothing is written over.
    let (code, out, err) = with(&["restore", "--latest", "--into", &new_file.to_string_lossy()]);
    assert_eq!(code, 3, "restore into a running cluster: {out}\n{err}");
    assert!(err.contains("is not empty: a restore never writes over a data directory"), "{err}");
    assert_eq!(ids_in(&client, &new_work, "db1", new_port), got);

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

/// A cluster with `[backup]` on moto, for the tests below; the moto server, credentials
/// and work directory live as long as it.
struct Lab {
    wd: WorkDir,
    moto: Moto,
    creds: PathBuf,
    bucket: String,
    file: PathBuf,
    work: PathBuf,
    port: u16,
    bin: PathBuf,
    client: PathBuf,
}

impl Lab {
    fn new(tag: &str, major: &str, extra: &str, create_bucket: bool) -> Lab {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(tag).with_bin(&bin);
        let moto = Moto::start(&wd.path);
        let creds = credentials(&wd.path);
        let bucket = format!("pgrepl-{tag}");
        if create_bucket {
            moto.create_bucket(&creds, &bucket);
        }
        let work = wd.path.join("src");
        let port = free_ports(3);
        let spec =
            local_spec(tag, major, port, &work.to_string_lossy(), &format!("{extra}\n{}", backup_section(&moto, &bucket, &creds, "")));
        let file = wd.path.join("src.toml");
        std::fs::write(&file, spec).unwrap();
        Lab { wd, moto, creds, bucket, file, work, port, bin, client }
    }

    fn run(&self, file: &Path, cmd: &[&str]) -> (i32, String, String) {
        let (f, b, c) = (file.to_string_lossy(), self.bin.to_string_lossy(), self.client.to_string_lossy());
        pgrepl_ok(&[cmd, &["-f", &f, "--pg-bin", &b, "--pg-client-bin", &c][..]].concat())
    }

    fn with(&self, cmd: &[&str]) -> (i32, String, String) {
        self.run(&self.file, cmd)
    }

    fn destroy_on_drop(&self, more: &[&Path]) -> Destroy {
        let mut v = vec![(self.file.clone(), self.bin.clone(), self.client.clone())];
        v.extend(more.iter().map(|p| (p.to_path_buf(), self.bin.clone(), self.client.clone())));
        Destroy(v)
    }

    /// The node that accepts writes now, and its port.
    fn primary(&self) -> (String, u16) {
        for (i, n) in ["db1", "db2", "db3"].iter().enumerate() {
            let port = self.port + i as u16;
            let o = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.client.join("psql"))
                .args(["-X", "-A", "-t", "-h"])
                .arg(self.work.join(n).join("run"))
                .args(["-p", &port.to_string(), "-d", "postgres", "-c", "SELECT pg_is_in_recovery()"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&o.stdout).trim() == "f" {
                return (n.to_string(), port);
            }
        }
        panic!("no node accepts writes");
    }

    fn kill9(&self, node: &str) {
        let pidfile = std::fs::read_to_string(self.work.join(node).join("data/postmaster.pid")).unwrap();
        let pid: u32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    }
}

/// Fail over under load (synchronous `ANY 1`), write more on the new primary, restore
/// `--latest` into a new cluster: every row acknowledged on both timelines is there, and
/// the restored primary runs on a timeline after the failover's.
async fn failover_then_latest(major: &str) {
    let tag = format!("bkfo{major}");
    let lab = Lab::new(&tag, major, "[replication.sync]\nmode = \"any\"\ncount = 1\n", true);
    let new_file = lab.wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    create_app_role(&lab.client, &lab.work, "db1", lab.port);
    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
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
    switch_and_wait_archived(&lab.client, &lab.work, &node, port);
    assert!(first.len() > 20 && second.len() > 20, "too few rows: {} then {}", first.len(), second.len());

    let new_port = free_ports(3);
    let (code, out, err) = lab.with(&[
        "restore",
        "--latest",
        "--into",
        &new_file.to_string_lossy(),
        "--name",
        &format!("{tag}-r"),
        "--base-port",
        &new_port.to_string(),
    ]);
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
    failover_then_latest("15").await;
}

/// A missing bucket, an unreachable endpoint, no credentials: each a named error (exit 4),
/// the cluster untouched; archiving fails while the bucket is missing, WAL stays in
/// pg_wal, and once the bucket exists everything is archived and a backup works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_tool_failures_15() {
    let lab = Lab::new("bkfail15", "15", "", false);
    let _destroy = lab.destroy_on_drop(&[]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");

    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 4, "backup to a missing bucket: {out}\n{err}");
    assert!(err.contains("the bucket does not exist (backup.bucket)"), "{err}");
    // Archiving fails meanwhile, and the WAL waits in pg_wal.
    let closed = psql(&lab.client, &lab.work, "db1", lab.port, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&lab.client, &lab.work, "db1", lab.port, "SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archiving to a missing bucket never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = lab.work.join("db1/data/pg_wal/archive_status").join(format!("{closed}.ready"));
    assert!(ready.exists(), "{} should wait in pg_wal", closed);

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

    // Fixed: the bucket exists. The archiver catches up by itself, nothing was lost.
    lab.moto.create_bucket(&lab.creds, &lab.bucket);
    switch_and_wait_archived(&lab.client, &lab.work, "db1", lab.port);
    assert!(!ready.exists(), "{closed} is still waiting in pg_wal");
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
    let lab = Lab::new("bklsn15", "15", "", true);
    let new_file = lab.wd.path.join("restored.toml");
    let _destroy = lab.destroy_on_drop(&[&new_file]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    create_app_role(&lab.client, &lab.work, "db1", lab.port);
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
    let (code, out, err) = lab.with(&[
        "restore",
        "--to-lsn",
        &lsn,
        "--into",
        &new_file.to_string_lossy(),
        "--name",
        "bklsn15-r",
        "--base-port",
        &new_port.to_string(),
    ]);
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
