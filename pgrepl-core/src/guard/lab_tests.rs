//! [`StopPostmaster`] against a real PostgreSQL 15 of the lab (`/opt/pgrepl-lab/pg/15`, or
//! `$PGREPL_LAB/pg/15`), run as the `postgres` OS user on a free loopback port. Skipped,
//! with the reason printed, when the lab's binaries are absent or the test does not run
//! as root (the server must run as `postgres`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::proc;
use super::{Fence, FenceError, FenceReport, StopPostmaster};

const APP: &str = "pgrepl-guard-test";

/// A throwaway server: its data directory and socket directory in a temp dir (0755, so
/// `postgres` can traverse it). Dropped, it is stopped (immediate) if it still runs.
#[derive(Debug)]
struct Server {
    bin: PathBuf,
    base: tempfile::TempDir,
    port: u16,
}

/// The lab's PostgreSQL 15 binaries, or why the test cannot run.
fn lab_bin() -> Result<PathBuf, String> {
    let lab = std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/pgrepl-lab"));
    let bin = lab.join("pg/15/bin");
    if let Some(missing) = ["initdb", "pg_ctl", "postgres", "psql"].iter().find(|p| !bin.join(p).is_file()) {
        return Err(format!("{} is missing (scripts/lab/install.sh installs the lab)", bin.join(missing).display()));
    }
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root: the server runs as the postgres OS user through runuser".into());
    }
    if !Command::new("id").arg("postgres").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        return Err("no postgres OS user".into());
    }
    Ok(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn check(out: std::io::Result<Output>, what: &str) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Server {
    fn new(bin: PathBuf) -> Server {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::Builder::new().prefix("pgrepl-guard-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Server { bin, base, port: free_port() };
        for d in [s.data(), s.run()] {
            std::fs::create_dir(&d).unwrap();
            check(Command::new("chown").arg("postgres:postgres").arg(&d).output(), "chown");
        }
        check(
            s.as_postgres("initdb", &["-D", s.data().to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]),
            "initdb",
        );
        s
    }

    fn data(&self) -> PathBuf {
        self.base.path().join("data")
    }

    fn run(&self) -> PathBuf {
        self.base.path().join("run")
    }

    /// `tool` of the lab as `postgres`, killed after 60 s.
    fn as_postgres(&self, tool: &str, args: &[&str]) -> std::io::Result<Output> {
        let lib = self.bin.join("../lib");
        Command::new("timeout")
            .args(["--kill-after=5", "60", "runuser", "-u", "postgres", "--", "env"])
            .arg(format!("LD_LIBRARY_PATH={}", lib.display()))
            .arg(self.bin.join(tool))
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
    }

    fn start(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.run().display());
        let log = self.run().join("log");
        let out = self.as_postgres(
            "pg_ctl",
            &["-D", self.data().to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        );
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            eprintln!("server log (last lines, newest first):\n{}", tail.join("\n"));
        }
        check(out, "pg_ctl start");
    }

    fn psql_command(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .env("LD_LIBRARY_PATH", self.bin.join("../lib"))
            .env("PGCONNECT_TIMEOUT", "10");
        c
    }

    fn psql(&self, sql: &str) -> String {
        let out = check(self.psql_command().args(["-q", "-c", sql]).output(), sql);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn postmaster(&self) -> i32 {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.as_postgres("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// Every process of the server: the postmaster and its children, with start times.
fn processes(postmaster: i32) -> Vec<(i32, u64)> {
    let mut all = vec![(postmaster, proc::stat(postmaster).unwrap().unwrap().starttime)];
    all.extend(proc::children(postmaster).unwrap().into_iter().map(|(pid, st)| (pid, st.starttime)));
    all
}

fn running(procs: &[(i32, u64)]) -> Vec<i32> {
    procs.iter().filter(|(pid, start)| proc::still_running(*pid, *start).unwrap()).map(|(pid, _)| *pid).collect()
}

/// Refusals against a live postmaster; then a session inside a transaction, the fence
/// (SIGQUIT path): every process gone within the bound, COMMIT fails, and the row is not
/// there after a restart; then a postmaster that ignores SIGQUIT (stopped) is killed with
/// its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_stops_a_real_server_and_its_open_transaction_never_commits() {
    let bin = match lab_bin() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let server = Server::new(bin);
    server.start();
    let pm = server.postmaster();

    // A postmaster.pid elsewhere naming this postmaster, or one of its backends: refused,
    // and the server runs on.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("postmaster.pid"), format!("{pm}\n")).unwrap();
    let e = StopPostmaster::new(other.path()).fence().await.unwrap_err();
    assert!(matches!(&e, FenceError::NotOurPostmaster { reason, .. } if reason.contains("data directory")), "{e:?}");
    let child = proc::children(pm).unwrap()[0].0;
    std::fs::write(other.path().join("postmaster.pid"), format!("{child}\n")).unwrap();
    let e = StopPostmaster::new(other.path()).fence().await.unwrap_err();
    assert!(matches!(&e, FenceError::NotOurPostmaster { reason, .. } if reason.contains("child process")), "{e:?}");
    assert_eq!(server.psql("SELECT 1"), "1", "a refused fence touched the server");

    // A session inside a transaction that wrote a row.
    let mut session = tokio::process::Command::from(server.psql_command())
        .env("PGAPPNAME", APP)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"BEGIN;\nCREATE TABLE fenced (x int);\nINSERT INTO fenced VALUES (1);\n").await.unwrap();
    stdin.flush().await.unwrap();
    let backend = {
        let q = format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{APP}' AND state = 'idle in transaction'");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = server.psql(&q);
            if !pid.is_empty() {
                break pid.parse::<i32>().unwrap();
            }
            assert!(Instant::now() < until, "the session never got inside its transaction");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let procs = processes(pm);
    assert!(procs.iter().any(|(p, _)| *p == backend), "the session's backend {backend} is not a child of {pm}");

    let fence = StopPostmaster::new(server.data());
    let started = Instant::now();
    let report = fence.fence().await.unwrap();
    let took = started.elapsed();
    assert!(matches!(report, FenceReport::Stopped { pid, .. } if pid as i32 == pm), "{report:?}");
    assert!(took < fence.quit_wait, "took {took:?}");
    assert_eq!(running(&procs), Vec::<i32>::new(), "processes of the server outlived the fence");

    // The transaction cannot commit.
    let _ = stdin.write_all(b"COMMIT;\n").await;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), session.wait_with_output()).await.expect("psql ended").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "psql: {}\n{stdout}", out.status);
    assert!(!stdout.contains("COMMIT"), "{stdout}");
    // A fence of a stopped server finds nothing to do.
    assert!(matches!(fence.fence().await.unwrap(), FenceReport::NotRunning { .. }));

    // After crash recovery, nothing of the transaction is there.
    server.start();
    assert_eq!(server.psql("SELECT to_regclass('public.fenced') IS NULL"), "t");

    // A postmaster that does not act on SIGQUIT (stopped): killed, children first.
    let pm = server.postmaster();
    let procs = processes(pm);
    assert!(procs.len() > 2, "{procs:?}");
    rustix::process::kill_process(rustix::process::Pid::from_raw(pm).unwrap(), rustix::process::Signal::STOP).unwrap();
    let fence = StopPostmaster { quit_wait: Duration::from_millis(300), ..StopPostmaster::new(server.data()) };
    let report = fence.fence().await.unwrap();
    assert!(matches!(report, FenceReport::Killed { pid, children, .. } if pid as i32 == pm && children >= 3), "{report:?} {procs:?}");
    assert_eq!(running(&procs), Vec::<i32>::new());

    // Leave nothing behind: recover and stop cleanly (the next start cleans up the killed
    // postmaster's postmaster.pid and shared memory). It refuses while the postmaster is
    // a zombie not yet reaped by init (kill(pid, 0) succeeds on it): wait for that.
    let until = Instant::now() + Duration::from_secs(30);
    while proc::stat(pm).unwrap().is_some() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.start();
    check(server.as_postgres("pg_ctl", &["-D", server.data().to_str().unwrap(), "-m", "fast", "-w", "stop"]), "pg_ctl stop");
    assert!(!Path::new(&server.data().join("postmaster.pid")).exists());
}
