//! `up` installs Barman's cloud scripts on hosts that lack them, on the 3-host
//! network-namespace lab: each host's `/opt/pgrepl` (where `bin_dir` defaults to) is a
//! directory of its own, empty at first (whatever this machine has there), and the
//! hosts' pip reads the lab's PyPI mirror (`$LAB/wheelhouse`, no index: the namespaces have
//! no route out). S3 is a moto server inside pgl-c's namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const MOTO_ADDR: &str = "10.213.7.13";
const MOTO_PORT: u16 = 5000;

/// moto inside pgl-c's network namespace (`ip netns exec` runs it in place: the child
/// is moto itself), stopped by its pid on drop.
struct NsMoto(Child);

impl NsMoto {
    fn start(dir: &Path) -> NsMoto {
        let exe = lab_dir().join("venv/bin/moto_server");
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", "pgl-c"])
            .arg(&exe)
            .args(["-H", MOTO_ADDR, "-p", &MOTO_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((MOTO_ADDR, MOTO_PORT)).is_err() {
            assert!(Instant::now() < deadline, "moto did not answer on {MOTO_ADDR}:{MOTO_PORT}");
            std::thread::sleep(Duration::from_millis(100));
        }
        NsMoto(child)
    }
}

impl Drop for NsMoto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn endpoint() -> String {
    format!("http://{MOTO_ADDR}:{MOTO_PORT}")
}

/// boto3 (moto's venv) on the bucket: `create` it, or list its keys.
fn s3(creds: &Path, what: &str, bucket: &str) -> String {
    let script = "import boto3,sys\n\
                  s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
                  if sys.argv[2] == 'create':\n\
                  \x20   s3.create_bucket(Bucket=sys.argv[3])\n\
                  else:\n\
                  \x20   for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[3]):\n\
                  \x20       for o in page.get('Contents', []): print(o['Key'])\n";
    let o = Command::new(lab_dir().join("venv/bin/python"))
        .args(["-c", script, &endpoint(), what, bucket])
        .env("AWS_SHARED_CREDENTIALS_FILE", creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "s3 {what}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The test's AWS credentials, 0600 and postgres's, in each host's own
/// /var/lib/postgresql (where the spec's `credentials_file` points).
fn credentials_on_hosts(letters: &[&str]) -> PathBuf {
    let text = "[default]\naws_access_key_id = AKIDPGREPLLABKEY\naws_secret_access_key = pgrepl-lab-secret-7f3a\n";
    let mut local = PathBuf::new();
    for l in letters {
        let p = NetnsLab::host_dir(l).join("var-lib-postgresql/aws-credentials");
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Command::new("chown").arg("postgres").arg(&p).status().unwrap().success());
        local = p;
    }
    local
}

/// The hosts of the cluster lack Barman's scripts (their /opt/pgrepl is empty): `up`
/// installs them at `bin_dir`'s default (/opt/pgrepl/barman) from the lab's PyPI mirror on
/// each, archiving then works from db1 (a segment in the bucket, `pg_stat_archiver` says
/// so), and a second `up` installs nothing.
#[test]
fn barman_installed_by_up_on_hosts_15() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("bkinst");
    assert!(lab_dir().join("wheelhouse").is_dir(), "the lab's PyPI mirror is missing: run scripts/lab/install.sh");
    let _moto = NsMoto::start(&wd.path);
    let creds = credentials_on_hosts(&["a", "b"]);
    s3(&creds, "create", "pgrepl-bkinst");
    for addr in ["10.213.7.11", "10.213.7.12"] {
        let (code, out) = NetnsLab::ssh(addr, "ls -A /opt/pgrepl; test -e /opt/pgrepl/barman/bin/barman-cloud-wal-archive");
        assert!(code != 0 && out.is_empty(), "{addr}: /opt/pgrepl is not empty: {out}");
    }
    let f = wd.path.join("bkinst.toml");
    let mut spec = format!(
        "name = \"bkinst\"\npostgres = \"15\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n\
         host_key_policy = \"strict\"\nconnect_timeout_secs = 3\n\n[backup]\ntool = \"barman-cloud\"\nbucket = \"pgrepl-bkinst\"\n\
         region = \"us-east-1\"\nendpoint = \"{}\"\ncredentials_file = \"/var/lib/postgresql/aws-credentials\"\n",
        NetnsLab::key().display(),
        NetnsLab::known_hosts().display(),
        endpoint()
    );
    for (node, addr, role) in [("db1", "10.213.7.11", "primary"), ("db2", "10.213.7.12", "standby")] {
        spec.push_str(&format!("\n[[nodes]]\nname = \"{node}\"\naddress = \"{addr}\"\nrole = \"{role}\"\n"));
    }
    std::fs::write(&f, spec).unwrap();
    let fs = f.to_string_lossy().into_owned();
    let wds = wd.path.to_string_lossy().into_owned();
    let (code, out, err) = pgrepl_ok(&["up", "-f", &fs, "--work-dir", &wds, "--output", "json"]);
    if code != 0 {
        for addr in ["10.213.7.11", "10.213.7.12"] {
            let (_, log) = NetnsLab::ssh(addr, "tail -n 30 /var/log/postgresql/*.log 2>&1");
            eprintln!("{addr}'s server log:\n{log}");
        }
    }
    assert_eq!(code, 0, "up: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actions = v["up"]["actions"].to_string();
    assert_eq!(actions.matches("install barman-cloud").count(), 2, "installed on both hosts: {actions}");
    for addr in ["10.213.7.11", "10.213.7.12"] {
        let (code, out) = NetnsLab::ssh(addr, "/opt/pgrepl/barman/bin/barman-cloud-wal-archive --version 2>&1");
        assert_eq!(code, 0, "{addr}: {out}");
        assert!(out.contains("3.19.1"), "{addr}: {out}");
    }
    assert!(!Path::new("/opt/pgrepl/barman").exists(), "installed on this machine instead of the hosts");

    // Archiving from db1 with the installed scripts.
    let seg = NetnsLab::psql("10.213.7.11", 5432, "CREATE TABLE x (i int); SELECT pg_walfile_name(pg_switch_wal())");
    let seg = seg.lines().last().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = NetnsLab::psql("10.213.7.11", 5432, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.as_str() >= seg.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "{seg} not archived (last: {last})");
        std::thread::sleep(Duration::from_millis(300));
    }
    let keys = s3(&creds, "list", "pgrepl-bkinst");
    assert!(keys.lines().any(|k| k.contains(&seg)), "{seg} is not in the bucket: {keys}");

    let (code, out, err) = pgrepl_ok(&["up", "-f", &fs, "--work-dir", &wds, "--output", "json"]);
    assert_eq!(code, 0, "second up: {out}\n{err}");
    assert!(!out.contains("install barman-cloud"), "a second up installs nothing: {out}");
    let _ = pgrepl_ok(&["destroy", "--yes", "-f", &fs, "--work-dir", &wds]);
}
