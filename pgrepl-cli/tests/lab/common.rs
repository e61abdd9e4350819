//! Shared fixtures: lab binaries, work directories, free ports, running `pgrepl`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};

use pgrepl_core::PgMajor;

/// The lab directory (`PGREPL_LAB`, default /opt/pgrepl-lab).
pub fn lab_dir() -> PathBuf {
    std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/pgrepl-lab"))
}

/// Server and client bin directories for a major of the lab. Panics (fails the test)
/// naming the install script when the lab lacks it.
pub fn bins(major: &str) -> (PathBuf, PathBuf) {
    let bin = lab_dir().join("pg").join(major).join("bin");
    assert!(
        bin.join("postgres").is_file(),
        "PostgreSQL {major} is not installed in the test lab ({}): run scripts/lab/install.sh",
        bin.display()
    );
    let client = if bin.join("pg_basebackup").is_file() {
        bin.clone()
    } else {
        // The npm builds of 10-13 ship only the server; a newer client works against them.
        let c = PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(c.join("pg_basebackup").is_file(), "no client tools at {}: run scripts/lab/install.sh", c.display());
        c
    };
    (bin, client)
}

/// Majors installed in the lab, oldest first.
pub fn lab_majors() -> Vec<PgMajor> {
    PgMajor::ALL.iter().copied().filter(|m| lab_dir().join("pg").join(m.to_string()).join("bin/postgres").is_file()).collect()
}

/// A work directory that the `postgres` OS user can reach; servers under it are stopped
/// (by their own pid files, through pg_ctl) and it is removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
    pub bin: Option<PathBuf>,
}

impl WorkDir {
    pub fn new(name: &str) -> WorkDir {
        let base = PathBuf::from("/tmp/pgrepl-tests");
        std::fs::create_dir_all(&base).unwrap();
        set_mode(&base, 0o755);
        let path = base.join(format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        set_mode(&path, 0o755);
        WorkDir { path, bin: None }
    }

    pub fn with_bin(mut self, bin: &Path) -> Self {
        self.bin = Some(bin.to_path_buf());
        self
    }

    pub fn str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

static NEXT: AtomicU16 = AtomicU16::new(0);

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Stop servers this test started: pg_ctl signals the pid in each data directory's
        // postmaster.pid, i.e. only our own postmasters.
        if let (Some(bin), Ok(entries)) = (&self.bin, std::fs::read_dir(&self.path)) {
            for e in entries.flatten() {
                let data = e.path().join("data");
                if data.join("postmaster.pid").exists() {
                    let _ = Command::new("runuser")
                        .args(["-u", "postgres", "--"])
                        .arg(bin.join("pg_ctl"))
                        .args(["-D"])
                        .arg(&data)
                        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                        .output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A base port with `n` free ports after it, distinct across the tests of this process.
pub fn free_ports(n: u16) -> u16 {
    static LOCK: Mutex<()> = Mutex::new(());
    static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
    let _g = LOCK.lock().unwrap();
    // Below Linux's ephemeral range (32768-60999): a port picked here and bound later by a
    // server is never taken meanwhile by some client connection's local port.
    const FIRST: u16 = 20000;
    const END: u16 = 32768;
    if NEXT_PORT.load(Ordering::SeqCst) == 0 {
        NEXT_PORT.store(FIRST + (std::process::id() % 1200) as u16 * 10, Ordering::SeqCst);
    }
    for _ in 0..1000 {
        if NEXT_PORT.load(Ordering::SeqCst) + n >= END {
            NEXT_PORT.store(FIRST, Ordering::SeqCst);
        }
        let base = NEXT_PORT.fetch_add(n + 1, Ordering::SeqCst);
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports found on 127.0.0.1");
}

/// Runs the `pgrepl` binary.
pub fn pgrepl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgrepl")).args(args).env_remove("PGREPL_FILE").output().expect("pgrepl runs")
}

/// Runs `pgrepl` and returns (exit code, stdout, stderr).
pub fn pgrepl_ok(args: &[&str]) -> (i32, String, String) {
    let o = pgrepl(args);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A local cluster spec: `nodes` names, the first primary, on 127.0.0.1 from `base_port`.
pub fn local_spec(name: &str, major: &str, base_port: u16, work_dir: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\npostgres = \"{major}\"\n{extra}\n[provider]\nkind = \"local\"\nbase_port = {base_port}\nwork_dir = \"{work_dir}\"\n\n\
         [[nodes]]\nname = \"db1\"\nrole = \"primary\"\n\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
    )
}

/// Runs SQL through `psql` as the `postgres` OS user over the node's socket (the test's
/// own path to the server, independent of pgrepl's).
pub fn psql(client_bin: &Path, work_dir: &Path, node: &str, port: u16, sql: &str) -> String {
    let o = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(client_bin.join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(work_dir.join(node).join("run"))
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(o.status.success(), "psql on {node}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The password of the test's application role.
pub const APP_PASSWORD: &str = "test-app-password";

/// Creates (once per cluster, on the primary) a superuser `pgrepl_test` with a password,
/// for tokio-postgres clients that connect as applications do: TCP to 127.0.0.1.
pub fn create_app_role(client_bin: &Path, work_dir: &Path, primary: &str, port: u16) {
    psql(
        client_bin,
        work_dir,
        primary,
        port,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgrepl_test') THEN CREATE ROLE pgrepl_test SUPERUSER LOGIN PASSWORD '{APP_PASSWORD}'; END IF; END $$;"
        ),
    );
}

/// Connects with tokio-postgres over TCP to 127.0.0.1:`port` as `pgrepl_test`.
pub async fn connect(port: u16) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("pgrepl_test")
        .password(APP_PASSWORD)
        .dbname("postgres")
        .connect_timeout(std::time::Duration::from_secs(5));
    // A role just created on the primary may not have replayed on a standby yet: retry
    // "role does not exist" (and a starting server) for a bounded time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (client, conn) = loop {
        match cfg.connect(tokio_postgres::NoTls).await {
            Ok(x) => break x,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect to 127.0.0.1:{port}: {e:?}"),
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The 3-host network-namespace lab (`scripts/lab/netns.sh`), exclusive to one test at a
/// time in this process; brought up fresh and torn down (with its per-host data) on drop.
pub struct NetnsLab {
    _guard: std::sync::MutexGuard<'static, ()>,
    /// Held for the test's duration: other test processes on this machine wait for it.
    _lock: std::fs::File,
}

pub const LAB_HOSTS: [(&str, &str, &str); 3] = [("db1", "10.213.7.11", "a"), ("db2", "10.213.7.12", "b"), ("db3", "10.213.7.13", "c")];

/// `scripts/lab/netns.sh ARGS` on one of its labs (`PGREPL_NETNS_SET`: base, ha, systemd).
fn netns_set_sh(set: &str, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/netns.sh");
    Command::new("bash").arg(script).args(args).env("PGREPL_NETNS_SET", set).output().expect("netns.sh runs")
}

/// [`netns_set_sh`], which must succeed.
fn netns_set_ok(set: &str, args: &[&str]) {
    let o = netns_set_sh(set, args);
    assert!(
        o.status.success(),
        "PGREPL_NETNS_SET={set} scripts/lab/netns.sh {args:?} failed (run scripts/lab/install.sh first):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn netns_sh(args: &[&str]) -> Output {
    netns_set_sh("base", args)
}

impl NetnsLab {
    pub fn up() -> NetnsLab {
        static LOCK: Mutex<()> = Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // Exclusive across processes too (another test binary may want the lab).
        let lock = pgrepl_core::testing::lab_lock(&lab_dir(), "netns-tests.lock");
        // A fresh lab: no cluster left by an earlier test.
        let _ = netns_sh(&["down", "--purge"]);
        let o = netns_sh(&["up"]);
        assert!(
            o.status.success(),
            "scripts/lab/netns.sh up failed (run scripts/lab/install.sh first):\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        NetnsLab { _guard: guard, _lock: lock }
    }

    pub fn key() -> PathBuf {
        lab_dir().join("netns/id_ed25519")
    }

    pub fn known_hosts() -> PathBuf {
        lab_dir().join("netns/known_hosts")
    }

    /// A host's per-host directory on this machine (the source of its bind mounts).
    pub fn host_dir(letter: &str) -> PathBuf {
        lab_dir().join("netns").join(letter)
    }

    /// Runs a command on a lab host with the OpenSSH client (the test's own path,
    /// independent of pgrepl's transport).
    pub fn ssh(addr: &str, cmd: &str) -> (i32, String) {
        openssh(&Self::key(), &Self::known_hosts(), addr, cmd)
    }

    /// SQL on a lab host through psql as postgres over its socket.
    pub fn psql(addr: &str, port: u16, sql: &str) -> String {
        let (code, out) = Self::ssh(addr, &format!("runuser -u postgres -- psql -X -A -t -p {port} -d postgres -c \"{sql}\""));
        assert_eq!(code, 0, "psql on {addr}: {out}");
        out
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        let _ = netns_sh(&["down", "--purge"]);
    }
}

/// Runs `cmd` as root on a lab host with the OpenSSH client (the tests' own path,
/// independent of pgrepl's transport): the exit code and trimmed stdout.
fn openssh(key: &Path, known_hosts: &Path, addr: &str, cmd: &str) -> (i32, String) {
    let o = Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-o", &format!("UserKnownHostsFile={}", known_hosts.display())])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg(format!("root@{addr}"))
        .arg(cmd)
        .output()
        .expect("ssh runs");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `pgrepl ARGS[0] -f F --work-dir WD ARGS[1..]`: exit code, stdout, stderr.
pub fn pgrepl_wd(f: &str, wd: &WorkDir, args: &[&str]) -> (i32, String, String) {
    let mut a = vec![args[0], "-f", f, "--work-dir", wd.path.to_str().unwrap()];
    a.extend(&args[1..]);
    pgrepl_ok(&a)
}

/// An SSH spec for the lab hosts.
pub fn ssh_spec(name: &str, major: &str, known_hosts: &Path, policy: &str, extra: &str) -> String {
    let mut s = format!(
        "name = \"{name}\"\npostgres = \"{major}\"\n{extra}\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\nhost_key_policy = \"{policy}\"\nconnect_timeout_secs = 3\n",
        NetnsLab::key().display(),
        known_hosts.display()
    );
    for (i, (node, addr, _)) in LAB_HOSTS.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        s.push_str(&format!("\n[[nodes]]\nname = \"{node}\"\naddress = \"{addr}\"\nrole = \"{role}\"\n"));
    }
    s
}

/// The 5-host lab for automatic failover across locations (`PGREPL_NETNS_SET=ha
/// scripts/lab/netns.sh`): pgl-d/e ("east"), pgl-f/g ("west"), pgl-w (the witness,
/// "third"), 10.213.8.21-25; exclusive to one test at a time on this machine, brought up
/// fresh and torn down (with its per-host data) on drop.
pub struct HaLab {
    _guard: std::sync::MutexGuard<'static, ()>,
    _lock: std::fs::File,
}

/// The hosts of [`HaLab`]: node name, address, location, spec role.
pub const HA_HOSTS: [(&str, &str, &str, &str); 5] = [
    ("d", "10.213.8.21", "east", "primary"),
    ("e", "10.213.8.22", "east", "standby"),
    ("f", "10.213.8.23", "west", "standby"),
    ("g", "10.213.8.24", "west", "standby"),
    ("w", "10.213.8.25", "third", "witness"),
];

impl HaLab {
    pub fn up() -> HaLab {
        static LOCK: Mutex<()> = Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let lock = pgrepl_core::testing::lab_lock(&lab_dir(), "netns-ha-tests.lock");
        let _ = netns_set_sh("ha", &["down", "--purge"]);
        Self::ensure_up();
        HaLab { _guard: guard, _lock: lock }
    }

    /// `netns.sh up` again: idempotent; restarts a host's sshd that was killed.
    pub fn ensure_up() {
        netns_set_ok("ha", &["up"]);
    }

    /// `netns.sh ARGS` on this lab (cut, heal, link).
    pub fn sh(args: &[&str]) {
        netns_set_ok("ha", args);
    }

    pub fn key() -> PathBuf {
        lab_dir().join("netns-ha/id_ed25519")
    }

    pub fn known_hosts() -> PathBuf {
        lab_dir().join("netns-ha/known_hosts")
    }

    /// Runs a command on a lab host with the OpenSSH client.
    pub fn ssh(addr: &str, cmd: &str) -> (i32, String) {
        openssh(&Self::key(), &Self::known_hosts(), addr, cmd)
    }

    /// Kills every process of a host's namespace (SIGKILL): the host is gone.
    pub fn kill_host(letter: &str) {
        let pids = Command::new("ip").args(["netns", "pids", &format!("pgl-{letter}")]).output().unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }

    /// An SSH spec of the five hosts with `[ha]` and etcd deployed by pgrepl.
    /// `extra`: top-level TOML (before `[provider]`); `ha_extra`: lines of `[ha]`.
    pub fn spec(name: &str, extra: &str, ha_extra: &str) -> String {
        let mut s = format!(
            "name = \"{name}\"\npostgres = \"15\"\n{extra}\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\nhost_key_policy = \"strict\"\nconnect_timeout_secs = 3\n\n[ha]\nttl = 10\nloop_wait = 1\n{ha_extra}\n[ha.etcd]\ndeploy = true\n",
            Self::key().display(),
            Self::known_hosts().display()
        );
        for (n, a, l, r) in HA_HOSTS {
            s.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\naddress = \"{a}\"\nrole = \"{r}\"\nlocation = \"{l}\"\n"));
        }
        s
    }
}

impl Drop for HaLab {
    fn drop(&mut self) {
        let _ = netns_set_sh("ha", &["down", "--purge"]);
    }
}

impl HaLab {
    /// Runs `cmd` (sh) inside a host's mount and network namespaces, from this machine
    /// (through its sshd's namespaces): works while the host's link is down.
    pub fn inside(letter: &str, cmd: &str) -> (i32, String) {
        let pid = std::fs::read_to_string(lab_dir().join(format!("netns-ha/{letter}/sshd.pid"))).expect("the host's sshd pid file");
        let o = Command::new("nsenter").args(["-t", pid.trim(), "-m", "-n", "--", "sh", "-c", cmd]).output().expect("nsenter runs");
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Whether a host's server accepts writes now (asked over its own socket).
    pub fn writable(letter: &str) -> Option<bool> {
        let (code, out) =
            Self::inside(letter, "timeout 2 runuser -u postgres -- psql -X -A -t -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null");
        (code == 0).then(|| out == "t")
    }
}

/// The 3-host lab whose hosts run systemd as their PID 1 (`PGREPL_NETNS_SET=systemd
/// scripts/lab/netns.sh`: pgl-s/t/u, each on an overlay of this machine's root), exclusive
/// to one test at a time on this machine; brought up fresh and torn down on drop.
pub struct SystemdLab {
    _guard: std::sync::MutexGuard<'static, ()>,
    _lock: std::fs::File,
}

/// The hosts of [`SystemdLab`]: node name, address, host letter.
pub const SYSTEMD_HOSTS: [(&str, &str, &str); 3] = [("db1", "10.213.9.31", "s"), ("db2", "10.213.9.32", "t"), ("db3", "10.213.9.33", "u")];

impl SystemdLab {
    pub fn up() -> SystemdLab {
        static LOCK: Mutex<()> = Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let lock = pgrepl_core::testing::lab_lock(&lab_dir(), "netns-systemd-tests.lock");
        let _ = netns_set_sh("systemd", &["down", "--purge"]);
        Self::sh(&["up"]);
        SystemdLab { _guard: guard, _lock: lock }
    }

    /// `netns.sh ARGS` on this lab (crash HOST, boot HOST).
    pub fn sh(args: &[&str]) {
        netns_set_ok("systemd", args);
    }

    pub fn key() -> PathBuf {
        lab_dir().join("netns-systemd/id_ed25519")
    }

    pub fn known_hosts() -> PathBuf {
        lab_dir().join("netns-systemd/known_hosts")
    }

    /// Runs a command on a lab host with the OpenSSH client.
    pub fn ssh(addr: &str, cmd: &str) -> (i32, String) {
        openssh(&Self::key(), &Self::known_hosts(), addr, cmd)
    }

    /// An SSH spec of the three hosts (db1 the primary); `extra`: top-level TOML, and any
    /// sections after `[provider]`.
    pub fn spec(name: &str, extra: &str, sections: &str) -> String {
        let mut s = format!(
            "name = \"{name}\"\npostgres = \"15\"\n{extra}\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\nhost_key_policy = \"strict\"\nconnect_timeout_secs = 3\n\n{sections}\n",
            Self::key().display(),
            Self::known_hosts().display()
        );
        for (i, (n, a, _)) in SYSTEMD_HOSTS.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "standby" };
            s.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\naddress = \"{a}\"\nrole = \"{role}\"\n"));
        }
        s
    }
}

impl Drop for SystemdLab {
    fn drop(&mut self) {
        let _ = netns_set_sh("systemd", &["down", "--purge"]);
    }
}

/// A moto server on 127.0.0.1 (the lab's venv), on a free port, its log in `dir`; `env`
/// for moto's own settings. Stopped (by its pid) on drop.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Moto {
    pub fn start(dir: &Path) -> Moto {
        Moto::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, env: &[(&str, &Path)]) -> Moto {
        let exe = lab_dir().join("venv/bin/moto_server");
        assert!(exe.exists(), "{} is missing: run scripts/lab/install.sh", exe.display());
        let port = free_ports(1);
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not answer on 127.0.0.1:{port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
