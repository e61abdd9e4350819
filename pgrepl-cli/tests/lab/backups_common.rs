//! What the backup tests share: S3 as a moto server (behind HAProxy's TLS for pgBackRest,
//! which speaks TLS only), a cluster with `[backup]` of either tool, a client that records
//! when each row was sent and acknowledged, and readings of the archive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

/// Keys no pgrepl output, command line or readable file may show (moto takes any key).
pub(crate) const KEY_ID: &str = "AKIDPGREPLLABKEY";
pub(crate) const KEY_SECRET: &str = "pgrepl-lab-secret-7f3a";

/// The backup tool of a lab cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    /// Barman's cloud scripts (the lab's venv), moto over plain HTTP.
    Barman,
    /// Debian's pgBackRest 2.45, moto behind HAProxy's TLS.
    Pgbackrest,
}

/// Creates a bucket with boto3 (moto's venv has it), with the test's credentials.
pub(crate) fn create_bucket(moto: &Moto, creds: &Path, bucket: &str) {
    let o = Command::new(lab_dir().join("venv/bin/python"))
        .args([
            "-c",
            "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
        ])
        .args([&moto.endpoint(), bucket])
        .env("AWS_SHARED_CREDENTIALS_FILE", creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "create bucket: {}", String::from_utf8_lossy(&o.stderr));
}

/// The WAL segments (24 hex digits, sorted, distinct) among the keys of `bucket` under
/// `prefix` (boto3 on moto): what the archive holds, whatever the tool's layout; none
/// while the bucket does not exist.
pub(crate) fn archived_segments(moto: &Moto, creds: &Path, bucket: &str, prefix: &str) -> Vec<String> {
    let o = Command::new(lab_dir().join("venv/bin/python"))
        .args([
            "-c",
            "import boto3,sys\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
             try:\n\
             \x20   for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):\n\
             \x20       for o in page.get('Contents', []): print(o['Key'])\n\
             except s3.exceptions.NoSuchBucket:\n\
             \x20   pass\n",
        ])
        .args([&moto.endpoint(), bucket, prefix])
        .env("AWS_SHARED_CREDENTIALS_FILE", creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "list the bucket: {}", String::from_utf8_lossy(&o.stderr));
    let mut segs: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|k| {
            let name = k.rsplit('/').next()?;
            let head = name.get(..24)?;
            let rest = &name[24..];
            let whole = rest.is_empty() || rest.starts_with('-') || rest.starts_with(".gz") || rest.starts_with(".lz4");
            (head.chars().all(|c| c.is_ascii_hexdigit()) && whole).then(|| head.to_string())
        })
        .collect();
    segs.sort();
    segs.dedup();
    segs
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
pub(crate) fn barman_bin() -> PathBuf {
    let b = lab_dir().join("barman/bin");
    assert!(b.join("barman-cloud-wal-archive").is_file(), "Barman's cloud scripts are not in {}: run scripts/lab/install.sh", b.display());
    b
}

/// A credentials file of the AWS configuration with the test's keys, 0600, the server's.
pub(crate) fn credentials(dir: &Path) -> PathBuf {
    let p = dir.join("aws-credentials");
    std::fs::write(&p, format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {KEY_SECRET}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("chown").arg("postgres").arg(&p).output().unwrap();
    assert!(o.status.success());
    p
}

/// `[backup]` with Barman's scripts on moto.
pub(crate) fn barman_section(moto: &Moto, bucket: &str, creds: &Path, retention: &str) -> String {
    format!(
        "[backup]\ntool = \"barman-cloud\"\nbucket = \"{bucket}\"\nprefix = \"lab\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
         credentials_file = \"{}\"\nbin_dir = \"{}\"\n{retention}\n",
        moto.endpoint(),
        creds.display(),
        barman_bin().display()
    )
}

/// HAProxy in front of moto, terminating TLS with a self-signed certificate for
/// 127.0.0.1 made with openssl. Stopped (by its pid) on drop.
pub(crate) struct TlsProxy {
    child: Child,
    port: u16,
    pub(crate) ca: PathBuf,
}

impl TlsProxy {
    pub(crate) fn start(dir: &Path, backend_port: u16) -> TlsProxy {
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

    pub(crate) fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-node cluster of PostgreSQL `major` on this machine with `[backup]` of `tool`
/// on its own moto server; the servers, moto and the work directory live as long as it.
pub(crate) struct BackupLab {
    pub(crate) wd: WorkDir,
    pub(crate) moto: Moto,
    pub(crate) proxy: Option<TlsProxy>,
    pub(crate) creds: PathBuf,
    pub(crate) bucket: String,
    pub(crate) file: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) port: u16,
    pub(crate) bin: PathBuf,
    pub(crate) client: PathBuf,
}

impl BackupLab {
    /// `up` (exit 0), then the application role the writers use.
    pub(crate) fn up_for_writes(&self) {
        let (code, out, err) = self.with(&["up"]);
        assert_eq!(code, 0, "up: {out}\n{err}");
        create_app_role(&self.client, &self.work, "db1", self.port);
    }

    /// [`up_for_writes`](Self::up_for_writes), then a first base backup (exit 0).
    pub(crate) fn up_and_back_up(&self) {
        self.up_for_writes();
        let (code, out, err) = self.with(&["backup"]);
        assert_eq!(code, 0, "backup: {out}\n{err}");
    }

    /// `extra`: more of the spec (`[replication.sync]`, say); `backup_extra`: more lines
    /// of `[backup]` (retention); without `create_bucket` the bucket is missing.
    pub(crate) fn new(tag: &str, major: &str, tool: Tool, extra: &str, backup_extra: &str, create_bucket_now: bool) -> BackupLab {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(tag).with_bin(&bin);
        let moto = Moto::start(&wd.path);
        let creds = credentials(&wd.path);
        let bucket = format!("pgrepl-{tag}");
        if create_bucket_now {
            create_bucket(&moto, &creds, &bucket);
        }
        let work = wd.path.join("src");
        let port = free_ports(3);
        let (proxy, backup) = match tool {
            Tool::Barman => (None, barman_section(&moto, &bucket, &creds, backup_extra)),
            Tool::Pgbackrest => {
                let proxy = TlsProxy::start(&wd.path, moto.port);
                let s = format!(
                    "[backup]\ntool = \"pgbackrest\"\nbucket = \"{bucket}\"\nprefix = \"lab\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
                     ca_file = \"{}\"\ncredentials_file = \"{}\"\n{backup_extra}\n",
                    proxy.endpoint(),
                    proxy.ca.display(),
                    creds.display()
                );
                (Some(proxy), s)
            }
        };
        let file = wd.path.join("src.toml");
        std::fs::write(&file, local_spec(tag, major, port, &work.to_string_lossy(), &format!("{extra}\n{backup}"))).unwrap();
        BackupLab { wd, moto, proxy, creds, bucket, file, work, port, bin, client }
    }

    /// The endpoint the spec names (HAProxy's for pgBackRest, moto's otherwise).
    pub(crate) fn endpoint(&self) -> String {
        self.proxy.as_ref().map(TlsProxy::endpoint).unwrap_or_else(|| self.moto.endpoint())
    }

    pub(crate) fn create_bucket(&self) {
        create_bucket(&self.moto, &self.creds, &self.bucket);
    }

    /// The segments in the archive (every cluster's, under the spec's prefix).
    pub(crate) fn archived_segments(&self) -> Vec<String> {
        archived_segments(&self.moto, &self.creds, &self.bucket, "lab/")
    }

    /// Runs pgrepl on `file`; its output must never hold the keys.
    pub(crate) fn run(&self, file: &Path, cmd: &[&str]) -> (i32, String, String) {
        let (f, b, c) = (file.to_string_lossy(), self.bin.to_string_lossy(), self.client.to_string_lossy());
        let (code, out, err) = pgrepl_ok(&[cmd, &["-v", "-f", &f, "--pg-bin", &b, "--pg-client-bin", &c][..]].concat());
        for text in [&out, &err] {
            assert!(!text.contains(KEY_ID) && !text.contains(KEY_SECRET), "pgrepl {cmd:?} printed a key:\n{text}");
        }
        (code, out, err)
    }

    pub(crate) fn with(&self, cmd: &[&str]) -> (i32, String, String) {
        self.run(&self.file, cmd)
    }

    /// `restore TARGET... --into FILE --name NAME --base-port PORT`: into a new cluster.
    pub(crate) fn restore_into(&self, target: &[&str], file: &Path, name: &str, port: u16) -> (i32, String, String) {
        let (file, port) = (file.to_string_lossy(), port.to_string());
        let mut cmd = vec!["restore"];
        cmd.extend(target);
        cmd.extend(["--into", &file, "--name", name, "--base-port", &port]);
        self.with(&cmd)
    }

    pub(crate) fn destroy_on_drop(&self, more: &[&Path]) -> Destroy {
        let mut v = vec![(self.file.clone(), self.bin.clone(), self.client.clone())];
        v.extend(more.iter().map(|p| (p.to_path_buf(), self.bin.clone(), self.client.clone())));
        Destroy(v)
    }

    /// The node that accepts writes now, and its port.
    pub(crate) fn primary(&self) -> (String, u16) {
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

    pub(crate) fn kill9(&self, node: &str) {
        let pidfile = std::fs::read_to_string(self.work.join(node).join("data/postmaster.pid")).unwrap();
        let pid: u32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    }
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
    wait_archived(client_bin, work, node, port, &closed, Duration::from_secs(120));
}

/// Waits (bounded by `limit`) until `node`'s archiver has archived `segment`.
pub(crate) fn wait_archived(client_bin: &Path, work: &Path, node: &str, port: u16, segment: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let last = psql(client_bin, work, node, port, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.len() >= 24 && last[8..24] >= segment[8..24] {
            return;
        }
        assert!(Instant::now() < deadline, "{segment} was not archived within {} s (last archived: {last:?})", limit.as_secs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn ids_in(client_bin: &Path, work: &Path, node: &str, port: u16) -> Vec<i64> {
    let out = psql(client_bin, work, node, port, "SELECT id FROM t ORDER BY id");
    out.lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
}

/// An archive outage on `lab`'s running cluster (its bucket missing, or whatever the test
/// broke) and its end: WAL segments are filled and switched while archiving fails; a
/// CHECKPOINT removes none of them from `pg_wal` (each waits with its `.ready`); `fix`
/// repairs the store; then every one of them reaches the archive (pg_stat_archiver and
/// the bucket's listing) and none waits any more.
pub(crate) fn outage_then_catch_up(lab: &BackupLab, fix: impl FnOnce()) {
    let (client, work, port) = (&lab.client, &lab.work, lab.port);
    let q = |sql: &str| psql(client, work, "db1", port, sql);
    let failed_before: u64 = q("SELECT failed_count FROM pg_stat_archiver").parse().unwrap();
    let mut outage = Vec::new();
    for i in 0..3 {
        q(&format!("CREATE TABLE IF NOT EXISTS outage (i int); INSERT INTO outage VALUES ({i})"));
        outage.push(q("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while q("SELECT failed_count FROM pg_stat_archiver").parse::<u64>().unwrap() <= failed_before {
        assert!(Instant::now() < deadline, "archiving during the outage never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    q("CHECKPOINT");
    q("CHECKPOINT");
    let wal = work.join("db1/data/pg_wal");
    for s in &outage {
        assert!(wal.join(s).is_file(), "{s} was removed from pg_wal before it was archived");
        assert!(wal.join("archive_status").join(format!("{s}.ready")).is_file(), "{s} does not wait for the archiver");
    }
    let archived = lab.archived_segments();
    assert!(outage.iter().all(|s| !archived.contains(s)), "archived during the outage? {archived:?}");

    fix();
    // A new segment wakes the archiver at once (otherwise it retries within 60 s).
    q("INSERT INTO outage VALUES (99)");
    let last = q("SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(client, work, "db1", port, &last, Duration::from_secs(240));
    let archived = lab.archived_segments();
    for s in outage.iter().chain([&last]) {
        assert!(archived.contains(s), "{s}, written during the outage, is not in the archive: {archived:?}");
        assert!(!wal.join("archive_status").join(format!("{s}.ready")).exists(), "{s} still waits in pg_wal");
    }
}

/// What the archive and the source's nodes hold of each WAL segment, for a failed
/// restore's report: every key under `lab/` (size, ETag, time), and for each segment in
/// the archive its first page header (magic, timeline, page address, system identifier)
/// and SHA-256 next to the same of each node's `pg_wal` copy of it.
pub(crate) fn archive_report(lab: &BackupLab) -> String {
    let nodes: Vec<String> =
        ["db1", "db2", "db3"].iter().map(|n| lab.work.join(n).join("data/pg_wal").to_string_lossy().into_owned()).collect();
    let script = "import boto3,sys,hashlib,struct,os,gzip,bz2\n\
s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
def head(b):\n\
\x20   if len(b) < 40: return 'short(%d)' % len(b)\n\
\x20   magic, info, tli, addr = struct.unpack_from('<HHIQ', b, 0)\n\
\x20   sysid = struct.unpack_from('<Q', b, 24)[0]\n\
\x20   return 'magic=%04x info=%x tli=%d pageaddr=%X/%X sysid=%d sha=%s' % (magic, info, tli, addr >> 32, addr & 0xffffffff, sysid, hashlib.sha256(b).hexdigest()[:16])\n\
keys = []\n\
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix='lab/'):\n\
\x20   for o in page.get('Contents', []):\n\
\x20       keys.append(o['Key'])\n\
\x20       print('key %s size=%d etag=%s at=%s' % (o['Key'], o['Size'], o['ETag'], o['LastModified'].isoformat()))\n\
for k in keys:\n\
\x20   name = k.rsplit('/', 1)[-1]\n\
\x20   seg = name[:24]\n\
\x20   if '/wals/' not in k or len(seg) != 24: continue\n\
\x20   b = s3.get_object(Bucket=sys.argv[2], Key=k)['Body'].read()\n\
\x20   if name.endswith('.gz'): b = gzip.decompress(b)\n\
\x20   elif name.endswith('.bz2'): b = bz2.decompress(b)\n\
\x20   print('archive %s: %s' % (name, head(b)))\n\
\x20   for d in sys.argv[3:]:\n\
\x20       p = os.path.join(d, seg)\n\
\x20       if os.path.exists(p):\n\
\x20           print('  %s: %s' % (p, head(open(p, 'rb').read())))\n";
    let o = Command::new(lab_dir().join("venv/bin/python"))
        .args(["-c", script, &lab.moto.endpoint(), &lab.bucket])
        .args(&nodes)
        .env("AWS_SHARED_CREDENTIALS_FILE", &lab.creds)
        .output();
    match o {
        Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("the archive report did not run: {e}"),
    }
}
