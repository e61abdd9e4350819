//! What a killed server leaves behind and what its files say, for benches that kill a
//! primary: its child processes, PID and port after `kill -9` ([`watch_linger`]), what
//! `pg_ctl status` says then ([`status_probe`]), the timelines in `pg_controldata`
//! ([`control_summary`]) and `pg_waldump` of its WAL past a point ([`waldump_after`]).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{PgTools, is_root, path_str as s};

/// What the killed postmaster left behind, from the kill.
#[derive(Debug, Default)]
pub struct Linger {
    /// The postmaster's parent before the kill (who reaps it): "PID (name)".
    pub parent: String,
    pub children: usize,
    /// Until no child of the killed postmaster ran any more.
    pub children_gone: Option<f64>,
    /// Until its own PID was gone (reaped).
    pub postmaster_gone: Option<f64>,
    pub postmaster_zombie: bool,
    /// Until its TCP port refused connections.
    pub port_closed: Option<f64>,
}

/// What the killed postmaster's PID is now, and what `pg_ctl status` (which pgrepl asks)
/// says about its data directory.
pub async fn status_probe(pg: &PgTools, data: &Path, pid: u32, t_kill: Instant) -> String {
    let at = t_kill.elapsed().as_secs_f64();
    let state = match proc_stat(pid) {
        Some(('Z', _)) => "a zombie (dead, not yet reaped)".to_string(),
        Some((st, _)) => format!("in state {st}"),
        None => "gone".to_string(),
    };
    let said = match pg.run(pg.server("pg_ctl"), vec!["status".into(), "-D".into(), s(data)], Vec::new()).await {
        Ok(out) => format!("exit 0, {:?}", out.lines().next().unwrap_or("")),
        Err(e) => format!("{:?}", e.lines().nth(1).unwrap_or(e.as_str())),
    };
    format!("+{at:.3} s after the kill: PID {pid} is {state}; pg_ctl status: {said}")
}

/// The cluster state and the timelines pg_rewind looks at, from `pg_controldata`.
pub async fn control_summary(pg: &PgTools, data: &Path) -> String {
    match pg.run(pg.server("pg_controldata"), vec!["-D".into(), s(data)], Vec::new()).await {
        Ok(out) => {
            let get = |k: &str| {
                out.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_once(':')).map(|x| x.1.trim().to_string()).unwrap_or_default()
            };
            format!(
                "state \"{}\", latest checkpoint {} on timeline {}, min recovery end {} on timeline {}",
                get("Database cluster state"),
                get("Latest checkpoint location"),
                get("Latest checkpoint's TimeLineID"),
                get("Minimum recovery ending location"),
                get("Min recovery ending loc's timeline")
            )
        }
        Err(e) => format!("pg_controldata failed: {}", e.lines().next().unwrap_or("")),
    }
}

/// `pg_waldump` of the WAL in `data` on timeline `tli` from `start`: how many records and
/// commits, and how it ended.
pub async fn waldump_after(pg: &PgTools, data: &Path, tli: u32, start: &str) -> String {
    let prog = pg.server("pg_waldump");
    let args = vec!["-p".to_string(), s(&data.join("pg_wal")), "-t".into(), tli.to_string(), "-s".into(), start.to_string()];
    let env = pg.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new("timeout");
        c.args(["60", "runuser", "-u", "postgres", "--"]).arg(&prog).args(&args).envs(env).current_dir("/");
        if !is_root() {
            c = std::process::Command::new("timeout");
            c.arg("60").arg(&prog).args(&args).current_dir("/");
        }
        c.output()
    })
    .await;
    match out {
        Ok(Ok(o)) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let records = text.lines().filter(|l| l.starts_with("rmgr:")).count();
            let commits: Vec<&str> = text.lines().filter(|l| l.contains("desc: COMMIT")).collect();
            let err = String::from_utf8_lossy(&o.stderr);
            format!(
                "{records} record(s), {} commit(s){}; pg_waldump: {}",
                commits.len(),
                commits.last().map(|c| format!(" (last: {})", c.split("desc: ").nth(1).unwrap_or("").trim())).unwrap_or_default(),
                err.lines().last().unwrap_or("").trim()
            )
        }
        Ok(Err(e)) => format!("could not run pg_waldump: {e}"),
        Err(e) => format!("task: {e}"),
    }
}

/// The PIDs whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if proc_stat(child).is_some_and(|(_, ppid)| ppid == pid) {
                out.push(child);
            }
        }
    }
    out
}

/// (state, parent PID) of a process, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &st[st.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Watches what the killed postmaster left: its children, its own PID, its port (every
/// 2 ms, at most 30 s).
pub fn watch_linger(pid: u32, children: Vec<u32>, port: u16, t_kill: Instant) -> Linger {
    let mut l = Linger::default();
    let limit = Duration::from_secs(30);
    while t_kill.elapsed() < limit {
        let now = t_kill.elapsed().as_secs_f64();
        if l.children_gone.is_none() && children.iter().all(|c| proc_stat(*c).is_none_or(|(st, _)| st == 'Z')) {
            l.children_gone = Some(now);
        }
        if l.postmaster_gone.is_none() {
            match proc_stat(pid) {
                None => l.postmaster_gone = Some(now),
                Some(('Z', _)) => l.postmaster_zombie = true,
                _ => {}
            }
        }
        if l.port_closed.is_none()
            && std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(50)).is_err()
        {
            l.port_closed = Some(now);
        }
        if l.children_gone.is_some() && l.postmaster_gone.is_some() && l.port_closed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    l
}
