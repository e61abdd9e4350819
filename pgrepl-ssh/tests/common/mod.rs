//! A real OpenSSH server on loopback for tests: a temp dir with generated host and user
//! keys and sshd_config, a free port, readiness by polling TCP connects with a deadline,
//! and the server killed (by the PID this fixture started) on drop.
//!
//! Needs root and `/usr/sbin/sshd`; when sshd is missing the fixture fails and names
//! `scripts/lab/install.sh`.

#![allow(dead_code)] // each test binary uses a different part of it

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshConfig, SshConfigBuilder};

pub const SSHD: &str = "/usr/sbin/sshd";
const READY_DEADLINE: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// The lab installer, relative to the workspace root.
pub const INSTALL_HINT: &str = "run scripts/lab/install.sh as root (it installs openssh-server)";

/// A running sshd.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// `ssh-ed25519 AAAA…` of the server's ed25519 host key.
    pub host_key: String,
    /// The authorized user key.
    pub user_key: PathBuf,
    /// A known_hosts file holding the server's ed25519 key.
    pub known_hosts: PathBuf,
}

/// Runs a program to completion; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} ({INSTALL_HINT})"));
    assert!(out.status.success(), "{program} {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a key pair (`path`, `path.pub`) of `kind`; returns the public key line's
/// first two fields (`type base64`).
pub fn keygen(path: &Path, kind: &str) -> String {
    let p = path.to_str().expect("utf-8 temp path");
    run("ssh-keygen", &["-q", "-t", kind, "-N", "", "-C", "pgrepl-test", "-f", p]);
    let public = fs::read_to_string(format!("{p}.pub")).expect("read the public key");
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Sshd {
    /// Starts sshd with an ed25519 host key.
    pub fn start() -> Sshd {
        Sshd::start_with_host_keys(&["ed25519"])
    }

    /// Starts sshd with one host key per type in `kinds` (`ed25519`, `ecdsa`, `rsa`).
    pub fn start_with_host_keys(kinds: &[&str]) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: {INSTALL_HINT}; the SSH transport tests need a real sshd");
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (sshd's privilege separation dir)");
        let dir = tempfile::Builder::new().prefix("pgrepl-sshd-").tempdir().expect("temp dir");
        let d = dir.path();
        let mut host_key = String::new();
        let mut host_key_lines = String::new();
        for kind in kinds {
            let path = d.join(format!("ssh_host_{kind}_key"));
            let public = keygen(&path, kind);
            if *kind == "ed25519" {
                host_key = public;
            }
            host_key_lines.push_str(&format!("HostKey {}\n", path.display()));
        }
        let user_key = d.join("id_ed25519");
        let user_pub = keygen(&user_key, "ed25519");
        fs::write(d.join("authorized_keys"), format!("{user_pub} pgrepl-test\n")).expect("authorized_keys");

        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = d.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     {host_key_lines}\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {ak}\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     UseDNS no\n\
                     LogLevel VERBOSE\n\
                     MaxStartups 100\n",
                    pid = d.join("sshd.pid").display(),
                    ak = d.join("authorized_keys").display(),
                ),
            )
            .expect("write sshd_config");
            let log_path = d.join("sshd.log");
            let mut child = spawn_sshd(d);
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    let known_hosts = d.join("known_hosts");
                    fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).expect("known_hosts");
                    return Sshd { port, child, host_key, user_key, known_hosts, dir };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = format!("{why}\n{}", fs::read_to_string(&log_path).unwrap_or_default());
                }
            }
        }
        panic!("sshd did not start after {START_ATTEMPTS} attempts:\n{last_log}");
    }

    /// A config builder for `user` on this server: the authorized key, the known_hosts
    /// file with this server's key, strict checking.
    pub fn config(&self, user: &str) -> SshConfigBuilder {
        SshConfig::builder("127.0.0.1")
            .with_port(self.port)
            .with_user(user)
            .with_auth(SshAuth::KeyFile(self.user_key.clone()))
            .with_known_hosts(&self.known_hosts)
            .with_host_key_policy(HostKeyPolicy::Strict)
            .with_connect_timeout(Duration::from_secs(5))
    }

    /// The PID of the listening sshd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:<port>`, as error messages name it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// PIDs of the per-connection sshd processes (descendants of the listener).
    pub fn session_pids(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) to every per-connection process; returns
    /// how many there were.
    pub fn signal_sessions(&self, signal: &str) -> usize {
        let pids = self.session_pids();
        if !pids.is_empty() {
            let mut args = vec![format!("-{signal}")];
            args.extend(pids.iter().map(u32::to_string));
            let _ = Command::new("kill").args(&args).status();
        }
        pids.len()
    }

    /// Kills the connections (not the listener) and waits until their processes are gone.
    pub fn kill_sessions(&self) -> usize {
        let n = self.signal_sessions("KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.session_pids().is_empty() {
            assert!(Instant::now() < deadline, "sshd session processes survived SIGKILL");
            thread::sleep(Duration::from_millis(20));
        }
        n
    }
}

impl Sshd {
    /// Stops the server and its connections, then starts it again on the same port with
    /// the same keys.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_sshd(self.dir.path());
        if let Err(why) = wait_ready(&mut self.child, self.port) {
            panic!("sshd did not come back: {why}\n{}", self.log());
        }
    }

    fn stop(&mut self) {
        // Only processes this fixture started: the listener and its descendants.
        let _ = self.signal_sessions("CONT");
        let _ = self.signal_sessions("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `sshd -D -e -f <dir>/sshd_config`, appending its log to `<dir>/sshd.log`.
fn spawn_sshd(dir: &Path) -> Child {
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("sshd.log")).expect("open sshd.log");
    Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e} ({INSTALL_HINT})"))
}

/// Waits until `port` accepts TCP connections while `child` is alive.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited early with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("sshd not accepting on port {port} after {READY_DEADLINE:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// All descendants of `pid`, from /proc (bounded depth).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut out = Vec::new();
    for _ in 0..8 {
        let next: Vec<u32> = parents.iter().filter(|(p, pp)| found.contains(pp) && !out.contains(p)).map(|(p, _)| *p).collect();
        if next.is_empty() {
            break;
        }
        out.extend(&next);
        found = next;
    }
    out
}
