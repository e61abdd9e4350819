//! The operation lock against real parts: two `pgrepl failover` processes started at the
//! same moment on a real local cluster whose primary was killed (`kill -9`) leave exactly
//! one writable primary; over SSH, an operation from another admin machine (another
//! process with its own state directory) is refused or waits while the lock is held on
//! the three netns hosts, also with one host's link down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgrepl_core::ClusterSpec;

use crate::common::*;

const NODES: [&str; 3] = ["db1", "db2", "db3"];

/// Starts `pgrepl` with `args` (stdout and stderr captured).
fn spawn_pgrepl(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(args)
        .env_remove("PGREPL_FILE")
        .env_remove("PGREPL_LOCK_WAIT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgrepl starts")
}

/// Waits for a child (at most `limit`, then kills it and fails): (exit code, stdout, stderr).
fn finish(mut c: Child, limit: Duration) -> (i32, String, String) {
    let deadline = Instant::now() + limit;
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("pgrepl did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `SELECT pg_is_in_recovery()` on a node, asked directly (psql over its socket);
/// `None` when it does not answer.
fn in_recovery(client: &Path, wd: &Path, node: &str, port: u16) -> Option<bool> {
    let o = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(client.join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(wd.join(node).join("run"))
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c", "SELECT pg_is_in_recovery()"])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    match String::from_utf8_lossy(&o.stdout).trim() {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    }
}

/// The nodes that accept writes (answer and are not in recovery).
fn writable(client: &Path, wd: &Path, port: u16) -> Vec<String> {
    NODES
        .iter()
        .enumerate()
        .filter(|(i, n)| in_recovery(client, wd, n, port + *i as u16) == Some(false))
        .map(|(_, n)| n.to_string())
        .collect()
}

/// `kill -9` of the node's postmaster (its own postmaster.pid), then waits until it is gone.
fn kill9(wd: &Path, node: &str) {
    let pidfile = std::fs::read_to_string(wd.join(node).join("data/postmaster.pid")).unwrap();
    let pid: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Two failovers at the same moment, to two different standbys, of a 3-node PostgreSQL 15
/// cluster whose primary was killed: one promotes, the other is refused (exit 3) naming
/// the lock's holder or the node that now accepts writes; exactly one node accepts
/// writes. Then again with `--lock-wait 0` after the new primary is killed too: the one
/// that comes second is refused by the lock itself, naming the first.
#[test]
fn two_failovers_at_once_leave_one_primary() {
    let major = "15";
    let (bin, client) = bins(major);
    let wd = WorkDir::new("oplock-fo").with_bin(&bin);
    let port = free_ports(3);
    let f = wd.path.join("pgrepl.toml");
    std::fs::write(&f, local_spec("oplock-fo", major, port, &wd.str(), "")).unwrap();
    let f = f.to_string_lossy().into_owned();
    let base = ["-f", f.as_str(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(base.iter()).map(|s| s.to_string()).collect() };
    let (code, out, err) = pgrepl_ok(&with(&["up"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "up: {out}{err}");
    assert_eq!(writable(&client, &wd.path, port), ["db1"]);

    // Round 1: the primary dies; two operators (or two scripts) fail over at once.
    kill9(&wd.path, "db1");
    let a = with(&["failover", "--to", "db2"]);
    let b = with(&["failover", "--to", "db3"]);
    let ca = spawn_pgrepl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let cb = spawn_pgrepl(&b.iter().map(String::as_str).collect::<Vec<_>>());
    let ra = finish(ca, Duration::from_secs(240));
    let rb = finish(cb, Duration::from_secs(240));
    eprintln!("failover --to db2: exit {}\n{}{}\nfailover --to db3: exit {}\n{}{}", ra.0, ra.1, ra.2, rb.0, rb.1, rb.2);
    let (won, lost, new) = match (ra.0, rb.0) {
        (0, 3) => (&ra, &rb, "db2"),
        (3, 0) => (&rb, &ra, "db3"),
        _ => panic!("expected one failover to succeed (0) and the other to be refused (3): db2 → {}, db3 → {}", ra.0, rb.0),
    };
    assert!(won.1.contains(new), "{}", won.1);
    assert!(
        lost.2.contains("operation lock is held") || lost.2.contains(&format!("{new} accepts writes")),
        "the refusal names the holder or the writable node: {}",
        lost.2
    );
    assert_eq!(writable(&client, &wd.path, port), [new], "exactly one node accepts writes");

    // Round 2: the new primary dies too; the only candidate left is the other standby,
    // asked twice at once with no wait: the second is refused by the lock.
    let other = if new == "db2" { "db3" } else { "db2" };
    kill9(&wd.path, new);
    let c = with(&["failover", "--to", other, "--lock-wait", "0"]);
    let c1 = spawn_pgrepl(&c.iter().map(String::as_str).collect::<Vec<_>>());
    let c2 = spawn_pgrepl(&c.iter().map(String::as_str).collect::<Vec<_>>());
    let r1 = finish(c1, Duration::from_secs(240));
    let r2 = finish(c2, Duration::from_secs(240));
    eprintln!("round 2: exit {} / {}\n{}{}\n{}{}", r1.0, r2.0, r1.1, r1.2, r2.1, r2.2);
    let lost = match (r1.0, r2.0) {
        (0, 3) => &r2,
        (3, 0) => &r1,
        _ => panic!("expected exits 0 and 3, got {} and {}", r1.0, r2.0),
    };
    assert!(
        lost.2.contains("the operation lock is held on this machine by failover") && lost.2.contains("pid "),
        "refused by the lock, naming its holder: {}",
        lost.2
    );
    assert_eq!(writable(&client, &wd.path, port), [other], "exactly one node accepts writes");
}

/// Puts a lab host's link back when dropped (also when the test fails).
#[cfg(feature = "ssh")]
struct LinkDown(&'static str);

#[cfg(feature = "ssh")]
impl LinkDown {
    fn cut(veth: &'static str) -> LinkDown {
        assert!(Command::new("ip").args(["link", "set", veth, "down"]).status().unwrap().success());
        LinkDown(veth)
    }
}

#[cfg(feature = "ssh")]
impl Drop for LinkDown {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "set", self.0, "up"]).status();
    }
}

#[cfg(feature = "ssh")]
async fn pgrepl_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || pgrepl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// Two admin machines on the 3-host SSH lab: this test process holds the lock through
/// the library; `pgrepl failover` of another process (its own state directory, as on
/// another machine) is refused naming it, or waits and goes on once it is released.
/// With one host's link down, the lock is still taken on the two others.
#[cfg(feature = "ssh")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lock_on_the_ssh_lab_serialises_admin_machines() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("oplock-ssh");
    let name = "oplockssh";
    let text = ssh_spec(name, "15", &NetnsLab::known_hosts(), "strict", "");
    let f = wd.path.join("pgrepl.toml");
    std::fs::write(&f, &text).unwrap();
    let spec = ClusterSpec::from_toml(&text).unwrap();
    let admin_b: PathBuf = wd.path.join("admin-b");
    let b_args = |wait: &str| -> Vec<String> {
        ["failover", "-f", f.to_str().unwrap(), "--work-dir", admin_b.to_str().unwrap(), "--lock-wait", wait]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let me = format!("pid {}", std::process::id());

    // Admin machine A takes the lock on all three hosts.
    let opts_a = pgrepl_ssh::SshOptions { state_dir: Some(wd.path.join("admin-a")), major: None };
    let open = || pgrepl_ssh::open(&spec, &opts_a);
    let d = open().await.unwrap();
    let lock = d.lock_operation("test-failover", Duration::ZERO).await.unwrap();
    assert_eq!(lock.hosts(), ["db1", "db2", "db3"]);
    for (node, addr, _) in LAB_HOSTS {
        // Checked on the host itself, with OpenSSH.
        let (code, rec) = NetnsLab::ssh(addr, &format!("cat /var/lib/pgrepl/.oplock/{name}/{node}/oplock/holder"));
        assert_eq!(code, 0, "{node}: {rec}");
        assert!(rec.contains("test-failover") && rec.contains(&lock.holder().token), "{node}: {rec}");
    }

    // Admin machine B is refused after its wait, naming A.
    let t0 = Instant::now();
    let (code, out, err) = pgrepl_async(b_args("2")).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "it waited");
    assert!(err.contains("the operation lock is held by test-failover") && err.contains(&me) && err.contains("db1, db2"), "{err}");

    // B waits; A releases after 3 s; B goes past the lock (and then fails for another
    // reason: this lab cluster was never deployed, so there is no replication password).
    let t0 = Instant::now();
    let waiting = tokio::spawn(pgrepl_async(b_args("60")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "B waits while A holds the lock");
    lock.release().await;
    let (code, out, err) = waiting.await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(3));
    assert!(code != 3 && !err.contains("operation lock"), "B went past the lock: exit {code}\n{out}{err}");
    assert!(err.contains("replication password"), "{err}");
    for (node, addr, _) in LAB_HOSTS {
        let (code, _) = NetnsLab::ssh(addr, &format!("test -e /var/lib/pgrepl/.oplock/{name}/{node}/oplock"));
        assert_ne!(code, 0, "{node}: every lock was released");
    }

    // db1's link is down: A still takes 2 of 3, and B (which reaches only db2 and db3
    // too) is refused naming A.
    {
        let _cut = LinkDown::cut("veth-a");
        let d = open().await.unwrap();
        let lock = d.lock_operation("test-failover", Duration::ZERO).await.unwrap();
        assert_eq!(lock.hosts(), ["db2", "db3"]);
        let (code, out, err) = pgrepl_async(b_args("0")).await;
        assert_eq!(code, 3, "{out}{err}");
        assert!(err.contains("held by test-failover") && err.contains(&me) && err.contains("on db2"), "{err}");
        assert!(err.contains("not taken on db1: ") && !err.contains("db1: db1:"), "{err}");
        lock.release().await;
    }
}
