//! `pgrepl supervise`, the way pgrepl keeps its agents and etcd members running on hosts
//! without systemd: a program that exits is started again, a second supervisor of the
//! same pid file is refused, and SIGTERM stops the program and the supervisor.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn supervise(dir: &Path, script: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(["supervise", "--pid-file"])
        .arg(dir.join("s.pid"))
        .arg("--log")
        .arg(dir.join("s.log"))
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgrepl supervise starts")
}

/// Polls (every 50 ms, at most `limit`) until `f` holds.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn a_program_that_exits_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let mut s = supervise(dir.path(), &format!("echo run >> {}; exit 3", runs.display()));
    // 1 s, then 2 s between starts: three starts within about 3 s.
    wait_for(Duration::from_secs(15), "three starts", || std::fs::read_to_string(&runs).unwrap_or_default().lines().count() >= 3);
    let log = std::fs::read_to_string(dir.path().join("s.log")).unwrap();
    assert!(log.contains("exit status: 3") && log.contains("starting again in 1s"), "{log}");
    let pid: u32 = std::fs::read_to_string(dir.path().join("s.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pid, s.id(), "the pid file holds the supervisor's pid");
    s.kill().unwrap();
    s.wait().unwrap();
}

#[test]
fn a_second_supervisor_is_refused_and_sigterm_stops_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child.pid");
    let mut s = supervise(dir.path(), &format!("echo $$ > {}; exec sleep 600", child_pid.display()));
    wait_for(Duration::from_secs(10), "the program runs", || std::fs::read_to_string(&child_pid).is_ok_and(|t| t.ends_with('\n')));
    let program: u32 = std::fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap();
    assert!(alive(program));

    let second = supervise(dir.path(), "exit 0").wait_with_output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is held by a running supervisor"), "{err}");

    sigterm(s.id());
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "the supervisor did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    wait_for(Duration::from_secs(5), "the program stops with it", || !alive(program));
    assert!(!dir.path().join("s.pid").exists(), "the pid file is removed");
    let log = std::fs::read_to_string(dir.path().join("s.log")).unwrap();
    assert!(log.contains("SIGTERM: stopping the program"), "{log}");
}

fn sigterm(pid: u32) {
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(st.success());
}
