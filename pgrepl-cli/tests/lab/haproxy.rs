//! Where applications connect and what operators watch, with real parts:
//! - HAProxy 2.6 (Debian's, installed by `scripts/lab/install.sh`) accepts what `pgrepl
//!   render --haproxy` writes, with no warning, and routes by the agents' answers: writes
//!   to the node answering 200 on `/primary`, reads over those answering 200 on `/replica`,
//!   sessions on a node marked down closed. The agents here are stand-ins that answer as
//!   told, and so are the "servers" (they say their name): this checks the configuration,
//!   not the agents' endpoints themselves.
//! - `status --watch` on a real cluster: one JSON object per refresh, text with a
//!   separator when stdout is not a terminal, `[ha]` lines, Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// Debian's HAProxy; fails the test naming the script to run when it is not installed.
fn haproxy() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/haproxy");
    assert!(p.is_file(), "HAProxy is not installed ({}): run scripts/lab/install.sh", p.display());
    p
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

/// `haproxy -c -dW`: the file is valid and draws no warning.
fn haproxy_check(cfg: &Path) {
    let o = Command::new(haproxy()).args(["-c", "-dW", "-f"]).arg(cfg).output().expect("haproxy runs");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "haproxy -c -dW -f {} refused it:\n{text}\n{}", cfg.display(), std::fs::read_to_string(cfg).unwrap());
    assert!(text.contains("Configuration file is valid"), "{text}");
}

#[test]
fn haproxy_accepts_the_rendered_config() {
    let dir = tempfile::tempdir().unwrap();
    // The example with the defaults, and a cluster on hosts with every option set.
    let hosts = dir.path().join("hosts.toml");
    std::fs::write(
        &hosts,
        "name = \"hosts\"\n[ha]\napi_listen = \"0.0.0.0\"\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
         [provider]\nkind = \"ssh\"\nuser = \"root\"\n\
         [[nodes]]\nname = \"db1\"\naddress = \"127.0.0.11\"\nrole = \"primary\"\n\
         [[nodes]]\nname = \"db2\"\naddress = \"::1\"\nrole = \"standby\"\n",
    )
    .unwrap();
    let cases: [(PathBuf, &[&str]); 2] = [
        (example("ha-local.toml"), &[]),
        (hosts, &["--bind", "0.0.0.0", "--rw-port", "6000", "--ro-port", "6001", "--stats-port", "7000"]),
    ];
    for (i, (spec, extra)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("haproxy-{i}.cfg"));
        let mut args = vec!["render", "--haproxy", "-f", spec.to_str().unwrap(), "-o", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, out, err) = pgrepl_ok(&args);
        assert_eq!(code, 0, "{out}{err}");
        haproxy_check(&cfg);
    }
}

/// Stand-ins for one node: a "server" that writes its name to each connection and keeps
/// it open until the other side closes it, and an "agent" answering `/primary` and
/// `/replica` by the node's current role. Both stop with the test.
struct FakeNode {
    role: Arc<Mutex<&'static str>>,
    stop: Arc<AtomicBool>,
}

impl FakeNode {
    fn start(name: &'static str, pg_port: u16, agent_port: u16, role: &'static str) -> FakeNode {
        let role = Arc::new(Mutex::new(role));
        let stop = Arc::new(AtomicBool::new(false));
        let pg = TcpListener::bind(("127.0.0.1", pg_port)).unwrap();
        let agent = TcpListener::bind(("127.0.0.1", agent_port)).unwrap();
        pg.set_nonblocking(true).unwrap();
        agent.set_nonblocking(true).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match pg.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            let _ = c.write_all(format!("{name}\n").as_bytes());
                            // Held open until the peer (HAProxy) closes it.
                            let _ = c.read(&mut [0u8; 64]);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let (s, r) = (stop.clone(), role.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match agent.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut req = Vec::new();
                        let mut buf = [0u8; 512];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                        let role = *r.lock().unwrap();
                        let ok = (line.starts_with("GET /primary ") && role == "primary")
                            || (line.starts_with("GET /replica ") && role == "standby");
                        let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                        let _ = c.write_all(format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeNode { role, stop }
    }

    fn set_role(&self, role: &'static str) {
        *self.role.lock().unwrap() = role;
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// HAProxy in the foreground, stopped (by its pid, which this test started) on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to `port` and reads the name of the node HAProxy routed to (`None`: no node,
/// HAProxy closed the connection). The session stays open while the stream lives.
fn routed(port: u16) -> (Option<String>, Option<BufReader<TcpStream>>) {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { return (None, None) };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => (Some(line.trim().to_string()), Some(r)),
        _ => (None, None),
    }
}

/// The state HAProxy gives each server, from its stats page (`/;csv`): `(listener,
/// server)` → `UP`, `DOWN`, ... (`None`: the page does not answer yet).
fn server_states(stats_port: u16) -> Option<Vec<(String, String, String)>> {
    let mut s = TcpStream::connect(("127.0.0.1", stats_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /;csv HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, mut body) = response.split_once("\r\n\r\n")?;
    // HAProxy answers in chunks even to HTTP/1.0.
    let mut csv = String::new();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        loop {
            let (size, rest) = body.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            csv.push_str(rest.get(..size)?);
            body = rest.get(size + 2..)?;
        }
    } else {
        csv.push_str(body);
    }
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
    Some(
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| (f[px].to_string(), f[sv].to_string(), f[status].to_string()))
            .collect(),
    )
}

/// Polls until every server of both listeners has the state `expected` gives it
/// (bounded: fails after 20 s). A state HAProxy reports, not a guess from timing.
fn wait_states(stats_port: u16, expected: &[(&str, &str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = server_states(stats_port);
        let ok = got
            .as_ref()
            .is_some_and(|g| expected.iter().all(|(px, sv, st)| g.iter().any(|(p, s, t)| p.ends_with(px) && s == sv && t == st)));
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "HAProxy's servers never reached {expected:?}: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until a connection to `port` reaches `node` (bounded: fails after 20 s).
fn wait_routed(port: u16, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, _) = routed(port);
        if got.as_deref() == Some(node) {
            return;
        }
        assert!(Instant::now() < deadline, "port {port} never reached {node} (last: {got:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn haproxy_routes_by_the_agents_answers() {
    let dir = tempfile::tempdir().unwrap();
    let pg = free_ports(3);
    let api = free_ports(3);
    let front = free_ports(3);
    let spec = dir.path().join("route.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"route\"\n[ha]\napi_port = {api}\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
             [provider]\nkind = \"local\"\nbase_port = {pg}\n\
             [[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n\
             [[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
        ),
    )
    .unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let (rw, ro, stats) = (front.to_string(), (front + 1).to_string(), (front + 2).to_string());
    let (code, out, err) = pgrepl_ok(&[
        "render",
        "--haproxy",
        "-f",
        spec.to_str().unwrap(),
        "--rw-port",
        &rw,
        "--ro-port",
        &ro,
        "--stats-port",
        &stats,
        "-o",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    haproxy_check(&cfg);
    let nodes = [
        FakeNode::start("db1", pg, api, "primary"),
        FakeNode::start("db2", pg + 1, api + 1, "standby"),
        FakeNode::start("db3", pg + 2, api + 2, "standby"),
    ];
    let _haproxy = Haproxy(
        Command::new(haproxy()).args(["-db", "-f"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("haproxy starts"),
    );

    // HAProxy counts every server as up until its first check: wait for the checks.
    let stats = front + 2;
    wait_states(
        stats,
        &[
            ("-rw", "db1", "UP"),
            ("-rw", "db2", "DOWN"),
            ("-rw", "db3", "DOWN"),
            ("-ro", "db1", "DOWN"),
            ("-ro", "db2", "UP"),
            ("-ro", "db3", "UP"),
        ],
    );
    // Writes reach the primary only; reads are spread over both standbys, never the primary.
    wait_routed(front, "db1");
    wait_routed(front + 1, "db2");
    wait_routed(front + 1, "db3");
    for _ in 0..6 {
        assert_eq!(routed(front).0.as_deref(), Some("db1"));
        let r = routed(front + 1).0;
        assert!(matches!(r.as_deref(), Some("db2" | "db3")), "a read reached {r:?}");
    }

    // db2 takes over: a write session left on db1 is closed when db1 is marked down,
    // new writes reach db2, and reads stop reaching db2.
    let (on, session) = routed(front);
    assert_eq!(on.as_deref(), Some("db1"));
    let mut session = session.unwrap();
    nodes[0].set_role("standby");
    nodes[1].set_role("primary");
    wait_routed(front, "db2");
    session.get_mut().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = String::new();
    let n = session.read_line(&mut rest);
    assert!(matches!(n, Ok(0)), "the session on db1 was not closed when db1 was marked down: {n:?} {rest:?}");
    wait_states(
        stats,
        &[
            ("-rw", "db1", "DOWN"),
            ("-rw", "db2", "UP"),
            ("-rw", "db3", "DOWN"),
            ("-ro", "db1", "UP"),
            ("-ro", "db2", "DOWN"),
            ("-ro", "db3", "UP"),
        ],
    );
    wait_routed(front + 1, "db1");
    for _ in 0..6 {
        assert_eq!(routed(front).0.as_deref(), Some("db2"));
        let r = routed(front + 1).0;
        assert!(matches!(r.as_deref(), Some("db1" | "db3")), "a read reached {r:?}");
    }
}

/// A two-node cluster of PostgreSQL 16 for `status --watch`: (work dir, spec, bin flags).
fn watch_cluster() -> (WorkDir, PathBuf, Vec<String>) {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("watch").with_bin(&bin);
    let port = free_ports(2);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"watch\"\npostgres = \"16\"\n[provider]\nkind = \"local\"\nbase_port = {port}\nwork_dir = \"{}\"\n\
             [[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n",
            wd.str()
        ),
    )
    .unwrap();
    let flags =
        vec!["--pg-bin".into(), bin.to_string_lossy().into_owned(), "--pg-client-bin".into(), client.to_string_lossy().into_owned()];
    (wd, spec, flags)
}

fn run_with(spec: &Path, flags: &[String], args: &[&str]) -> (i32, String, String) {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-f", spec.to_str().unwrap()]);
    a.extend(flags.iter().map(String::as_str));
    pgrepl_ok(&a)
}

#[test]
fn status_watch_refreshes_a_real_cluster() {
    let (_wd, spec, flags) = watch_cluster();
    let (code, out, err) = run_with(&spec, &flags, &["up"]);
    assert_eq!(code, 0, "up: {out}{err}");

    // JSON: one compact object per line per refresh, numbered.
    let (code, out, err) = run_with(&spec, &flags, &["status", "--watch", "0.2", "--count", "2", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("line {i}: {e}: {l}"));
        assert_eq!(v["refresh"], i as u64 + 1, "{l}");
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes[0]["role"], "primary", "{l}");
        assert_eq!(nodes[1]["role"], "standby", "{l}");
        assert!(nodes[1]["lag_bytes"].as_u64().is_some(), "{l}");
    }

    // Text to a pipe: no screen clearing, a separator line between two refreshes.
    let (code, out, err) = run_with(&spec, &flags, &["status", "-W", "0.2", "--count", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains('\x1b'), "escape codes written to a pipe: {out:?}");
    assert_eq!(out.lines().filter(|l| l.chars().all(|c| c == '-') && l.len() > 10).count(), 1, "{out}");
    let sep = "-".repeat(72);
    let refreshes: Vec<&str> = out.split(&sep).collect();
    assert_eq!(refreshes.len(), 2, "{out}");
    for (i, r) in refreshes.iter().enumerate() {
        assert!(r.contains(&format!("refresh {},", i + 1)), "{r}");
        assert!(r.contains("db1") && r.contains("db2") && r.contains("primary") && r.contains("standby"), "{r}");
    }

    // -W alone: every 2 s.
    let (code, out, _) = run_with(&spec, &flags, &["status", "-W", "--count", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every 2s, refresh 1,"), "{out}");

    // Ctrl-C ends it: the exit status is the last refresh's, not a signal's.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(["status", "--watch", "0.2", "--output", "json", "-f", spec.to_str().unwrap()])
        .args(&flags)
        .env_remove("PGREPL_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"refresh\":1"), "{first}");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("status --watch did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");

    let (code, _, err) = run_with(&spec, &flags, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{err}");
}

/// `[ha]` lines in every refresh: here the store cannot be reached (nothing listens on
/// its endpoint), which `status` says on its `ha:` line and in `ha` of the JSON.
#[test]
fn status_watch_shows_the_ha_lines() {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("watch-ha").with_bin(&bin);
    let port = free_ports(2);
    let etcd = free_ports(1);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"watch-ha\"\npostgres = \"16\"\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:{etcd}\"]\n\
             [provider]\nkind = \"local\"\nbase_port = {port}\nwork_dir = \"{}\"\n\
             [[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n",
            wd.str()
        ),
    )
    .unwrap();
    let flags =
        vec!["--pg-bin".into(), bin.to_string_lossy().into_owned(), "--pg-client-bin".into(), client.to_string_lossy().into_owned()];
    // Nothing runs: every refresh finds a problem (exit 1) and says why the store is silent.
    let (code, out, err) = run_with(&spec, &flags, &["status", "-W", "0.2", "--count", "2"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ha: ")).count(), 2, "{out}");
    let (code, out, err) = run_with(&spec, &flags, &["status", "-W", "0.2", "--count", "2", "--output", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["ha"]["error"].as_str().is_some(), "{l}");
    }
    assert_eq!(out.lines().count(), 2, "{out}");
}
