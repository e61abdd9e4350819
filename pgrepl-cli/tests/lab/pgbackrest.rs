//! `[backup] tool = "pgbackrest"` against real parts: Debian 12's pgBackRest 2.45, S3 as
//! a moto server on loopback behind the lab's HAProxy terminating TLS with a certificate
//! made here (pgBackRest talks to S3 over TLS only and verifies it: the spec's `ca_file`
//! names the CA), and the in-place restore.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::backups::*;
use crate::common::*;

/// Keys no pgrepl output, command line or readable file may show (moto takes any key).
const KEY_ID: &str = "AKIDPGREPLLABKEY";
const KEY_SECRET: &str = "pgrepl-lab-secret-7f3a";

/// HAProxy in front of moto, terminating TLS with a self-signed certificate for
/// 127.0.0.1 made with openssl. Stopped (by its pid) on drop.
struct TlsProxy {
    child: Child,
    port: u16,
    ca: PathBuf,
}

impl TlsProxy {
    fn start(dir: &Path, backend_port: u16) -> TlsProxy {
        let haproxy = PathBuf::from("/usr/sbin/haproxy");
        assert!(haproxy.is_file(), "HAProxy is not installed: run scripts/lab/install.sh");
        let (cert, key, pem) = (dir.join("s3-cert.pem"), dir.join("s3-key.pem"), dir.join("s3-haproxy.pem"));
        let o = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl: {}", String::from_utf8_lossy(&o.stderr));
        let mut both = std::fs::read(&cert).unwrap();
        both.extend(std::fs::read(&key).unwrap());
        std::fs::write(&pem, both).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_ports(1);
        let cfg = dir.join("s3-haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
                 frontend s3\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend moto\n\
                 backend moto\n  server moto 127.0.0.1:{backend_port}\n",
                pem.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("s3-haproxy.log")).unwrap();
        let child =
            Command::new(&haproxy).arg("-f").arg(&cfg).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "HAProxy did not answer on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsProxy { child, port, ca: cert }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A credentials file with the test's keys, 0600, the server's OS user's.
fn lab_credentials(dir: &Path) -> PathBuf {
    let p = credentials(dir);
    std::fs::write(&p, format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {KEY_SECRET}\n")).unwrap();
    p
}

/// A cluster of PostgreSQL `major` backed up with pgBackRest to moto through HAProxy's TLS.
struct BrLab {
    wd: WorkDir,
    _moto: Moto,
    _proxy: TlsProxy,
    creds: PathBuf,
    bucket: String,
    file: PathBuf,
    work: PathBuf,
    port: u16,
    bin: PathBuf,
    client: PathBuf,
}

impl BrLab {
    fn new(tag: &str, major: &str, retention: &str) -> BrLab {
        let lab = BrLab::new_without_bucket(tag, major).with_retention(retention);
        lab._moto.create_bucket(&lab.creds, &lab.bucket);
        lab
    }

    /// The spec's `[backup]` gets `line` too.
    fn with_retention(self, line: &str) -> BrLab {
        let text = std::fs::read_to_string(&self.file).unwrap();
        std::fs::write(&self.file, text.replacen("[backup]\n", &format!("[backup]\n{line}\n"), 1)).unwrap();
        self
    }

    fn new_without_bucket(tag: &str, major: &str) -> BrLab {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(tag).with_bin(&bin);
        let moto = Moto::start(&wd.path);
        let proxy = TlsProxy::start(&wd.path, moto.port);
        let creds = lab_credentials(&wd.path);
        let bucket = format!("pgrepl-{tag}");
        let work = wd.path.join("src");
        let port = free_ports(3);
        let backup = format!(
            "[backup]\ntool = \"pgbackrest\"\nbucket = \"{bucket}\"\nprefix = \"lab\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             ca_file = \"{}\"\ncredentials_file = \"{}\"\n",
            proxy.endpoint(),
            proxy.ca.display(),
            creds.display()
        );
        let file = wd.path.join("src.toml");
        std::fs::write(&file, local_spec(tag, major, port, &work.to_string_lossy(), &backup)).unwrap();
        BrLab { wd, _moto: moto, _proxy: proxy, creds, bucket, file, work, port, bin, client }
    }

    /// Runs pgrepl on `file`; its output must never hold the keys.
    fn run(&self, file: &Path, cmd: &[&str]) -> (i32, String, String) {
        let (f, b, c) = (file.to_string_lossy(), self.bin.to_string_lossy(), self.client.to_string_lossy());
        let (code, out, err) = pgrepl_ok(&[cmd, &["-v", "-f", &f, "--pg-bin", &b, "--pg-client-bin", &c][..]].concat());
        for text in [&out, &err] {
            assert!(!text.contains(KEY_ID) && !text.contains(KEY_SECRET), "pgrepl {cmd:?} printed a key:\n{text}");
        }
        (code, out, err)
    }

    fn with(&self, cmd: &[&str]) -> (i32, String, String) {
        self.run(&self.file, cmd)
    }

    fn destroy_on_drop(&self, more: &[&Path]) -> Destroy {
        let mut v = vec![(self.file.clone(), self.bin.clone(), self.client.clone())];
        v.extend(more.iter().map(|p| (p.to_path_buf(), self.bin.clone(), self.client.clone())));
        Destroy(v)
    }
}

/// The keys are only in the nodes' pgBackRest configurations, each 0600 and the server's
/// OS user's; the settings PostgreSQL shows name none.
fn keys_only_in_private_files(lab: &BrLab, cluster: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for node in ["db1", "db2", "db3"] {
        let conf = lab.work.join(node).join("pgrepl/pgbackrest").join(cluster).join("pgbackrest.conf");
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

/// Back up under load with pgBackRest, note T, write more, restore to T into a new
/// cluster: exactly the rows acknowledged before T; `backups` in text and JSON; a
/// backup from a standby; retention (keep = 1) removes the first backup and T is then
/// refused naming it; `verify --backup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_pitr_15() {
    let lab = BrLab::new("brpitr15", "15", "retention = { keep = 1 }");
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
    let (code, out, err) = lab.with(&[
        "restore",
        "--to-time",
        &rfc3339(t),
        "--into",
        &new_file.to_string_lossy(),
        "--name",
        new_name,
        "--base-port",
        &new_port.to_string(),
    ]);
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
    let lab = BrLab::new("brinpl15", "15", "");
    let _destroy = lab.destroy_on_drop(&[]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    let (client, work, port) = (&lab.client, &lab.work, lab.port);
    create_app_role(client, work, "db1", port);
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
/// meanwhile and the WAL waits in pg_wal; once the bucket exists, `up` creates the stanza.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_failures_named_15() {
    let lab = BrLab::new_without_bucket("brfail15", "15");
    let _destroy = lab.destroy_on_drop(&[]);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up with a missing bucket: {out}\n{err}");
    assert!(out.contains("pgBackRest stanza not created yet"), "{out}");
    let (client, work, port) = (&lab.client, &lab.work, lab.port);

    let (code, out, err) = lab.with(&["backup"]);
    assert_eq!(code, 4, "backup to a missing bucket: {out}\n{err}");
    assert!(err.contains("the bucket does not exist (backup.bucket)"), "{err}");
    let closed = psql(client, work, "db1", port, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(client, work, "db1", port, "SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archiving to a missing bucket never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = work.join("db1/data/pg_wal/archive_status").join(format!("{closed}.ready"));
    assert!(ready.exists(), "{closed} should wait in pg_wal");

    let text = std::fs::read_to_string(&lab.file).unwrap();
    let endpoint = lab._proxy.endpoint();
    let dead = lab.wd.path.join("dead.toml");
    std::fs::write(&dead, text.replace(&endpoint, &format!("https://127.0.0.1:{}", free_ports(1)))).unwrap();
    let (code, out, err) = lab.run(&dead, &["backups"]);
    assert_eq!(code, 4, "unreachable endpoint: {out}\n{err}");
    assert!(err.contains("cannot be reached (backup.endpoint"), "{err}");
    let untrusted = lab.wd.path.join("untrusted.toml");
    std::fs::write(&untrusted, text.replace(&lab._proxy.ca.to_string_lossy().into_owned(), "/etc/ssl/certs/ca-certificates.crt")).unwrap();
    let (code, out, err) = lab.run(&untrusted, &["backups"]);
    assert_eq!(code, 4, "a CA that does not sign the endpoint's certificate: {out}\n{err}");
    assert!(err.contains("TLS certificate is not trusted (backup.ca_file"), "{err}");

    // Fixed: the bucket exists; `up` writes the spec's configuration again (the runs
    // above wrote theirs) and creates the stanza. (That the waiting WAL is then archived
    // is not checked here yet: in this lab PostgreSQL's archiver did not retry within
    // 150 s after its failures; to be investigated.)
    lab._moto.create_bucket(&lab.creds, &lab.bucket);
    let (code, out, err) = lab.with(&["up"]);
    assert_eq!(code, 0, "up once fixed: {out}\n{err}");
    assert!(out.contains("pgBackRest stanza ready"), "{out}");
    let (code, out, err) = lab.with(&["backups"]);
    assert_eq!(code, 0, "backups once fixed: {out}\n{err}");
    assert!(out.contains("(no backups)"), "{out}");
}
