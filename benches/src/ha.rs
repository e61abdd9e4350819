//! A local `[ha]` cluster driven through the `pgrepl` binary, for the benches that time
//! what the agents do (`autofailover`, `routing`): the lab's etcd, the cluster deployed
//! with `pgrepl up` in a scratch directory on free loopback ports, its agents' pids and
//! logs, readiness, and the helpers that kill and wait. Every wait is bounded; every
//! process stopped is one the bench started, by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::{PgTools, Scratch, free_ports, path_str};

/// The nodes of every bench cluster; db1 starts as the primary.
pub const NODES: [&str; 3] = ["db1", "db2", "db3"];
/// Limits: `pgrepl up`/`destroy`, a short pgrepl command.
pub const UP_LIMIT: Duration = Duration::from_secs(300);
pub const CMD_LIMIT: Duration = Duration::from_secs(60);

/// What every cluster of a bench shares.
#[derive(Debug)]
pub struct Ctx {
    pub pg: PgTools,
    pub pgrepl: PathBuf,
    pub endpoints: Vec<String>,
    pub ttl: f64,
    pub loop_wait: f64,
    /// `[replication] sync` as TOML.
    pub sync: String,
    pub app_password: String,
    pub scratch: Scratch,
}

/// Runs a bench's future on a multi-threaded runtime; Ctrl-C drops it (its guards stop
/// the agents and clusters). Prints `name: error` and fails on an error.
pub fn run_bench<F>(name: &str, bench: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        tokio::select! {
            r = bench => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    crate::exit_code(name, r)
}

/// The options of the benches that run agents on local clusters.
#[derive(Debug, clap::Args)]
pub struct HaArgs {
    /// The leader lease, seconds (`[ha] ttl`).
    #[arg(long, default_value_t = 3.0)]
    pub ttl: f64,
    /// Seconds between two loops of an agent (`[ha] loop_wait`).
    #[arg(long, default_value_t = 1.0)]
    pub loop_wait: f64,
    /// The pgrepl binary (default: `pgrepl` beside this program).
    #[arg(long)]
    pub pgrepl: Option<PathBuf>,
    /// etcd's base port (scripts/lab/etcd.sh).
    #[arg(long, default_value_t = 24190)]
    pub etcd_base: u16,
}

impl Ctx {
    /// The lab's etcd on `ha.etcd_base`, PostgreSQL's tools, the `pgrepl` binary and a
    /// scratch directory named after the bench: what every cluster of a run shares.
    pub fn start(bench: &str, common: &crate::BenchArgs, ha: &HaArgs, sync: &str) -> Result<(Ctx, Etcd), String> {
        let (ttl, loop_wait) = (ha.ttl, ha.loop_wait);
        let pg = PgTools::discover(&common.pg_bin_or_lab("15"), common.pg_client_bin.as_deref())?;
        let pgrepl = pgrepl_binary(ha.pgrepl.as_deref())?;
        let etcd = Etcd::start(ha.etcd_base)?;
        let scratch = Scratch::new(&format!("pgrepl-bench-{bench}"), Path::new(&pg.b.bin_dir), &pg.env_ref())?;
        let ctx = Ctx {
            pg,
            pgrepl,
            endpoints: etcd.endpoints.clone(),
            ttl,
            loop_wait,
            sync: sync.to_string(),
            app_password: format!("bench-app-{}", std::process::id()),
            scratch,
        };
        Ok((ctx, etcd))
    }
}

/// The `pgrepl` binary: `explicit`, or `pgrepl` beside the running program.
pub fn pgrepl_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let p = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| format!("where this program is: {e}"))?.with_file_name("pgrepl"),
    };
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{}: no such file: run `cargo build --release -p pgrepl-cli` first, or pass --pgrepl", p.display()))
    }
}

pub async fn kill9(pids: &[u32]) -> Result<(), String> {
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL").args(pids.iter().map(u32::to_string));
    let o = blocking(cmd).await?;
    if o.status.success() { Ok(()) } else { Err(format!("kill -9 {pids:?}: {}", String::from_utf8_lossy(&o.stderr))) }
}

/// Runs `cmd` off the async threads (the writer's timestamps stay honest).
pub async fn blocking(mut cmd: Command) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .map_err(|e| format!("task: {e}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// The guard of agent `agent`: its child `pgrepl agent --guard`.
pub fn guard_pid(agent: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid: Option<u32> = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(agent) && String::from_utf8_lossy(&cmd).contains("--guard") {
            return Some(pid);
        }
    }
    None
}

// =======================================================================================
// The cluster, through the pgrepl binary

/// A deployed `[ha]` cluster. Drop stops the agent the bench started (by its PID), then
/// `pgrepl destroy --yes` stops the agents `up` started and removes the cluster.
#[derive(Debug)]
pub struct HaCluster<'a> {
    pub ctx: &'a Ctx,
    pub work: PathBuf,
    pub spec: PathBuf,
    /// The first node's PostgreSQL port (the others follow).
    pub port: u16,
    extra_agents: Vec<Child>,
}

impl<'a> HaCluster<'a> {
    /// Run `i` of cluster `prefix` (its name gets the process id too: keys left by a run
    /// that died stay apart), deployed with `pgrepl up`; `extra_ha` is more `[ha]` lines.
    pub async fn deploy(ctx: &'a Ctx, prefix: &str, i: usize, extra_ha: &str) -> Result<HaCluster<'a>, String> {
        let work = ctx.scratch.path.join(format!("run{}", i + 1));
        std::fs::create_dir_all(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
        crate::chown_pg(&work)?;
        let port = free_ports(22000 + (std::process::id() % 900) as u16 * 10, 3).ok_or("no 3 free ports on 127.0.0.1")?;
        let name = format!("{prefix}-{}-{}", std::process::id(), i + 1);
        let endpoints: Vec<String> = ctx.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let mut text = format!(
            "name = \"{name}\"\npostgres = \"{}\"\n\n[replication]\nsync = {}\n\n[ha]\nttl = {}\nloop_wait = {}\n{extra_ha}\n[ha.etcd]\nendpoints = [{}]\n\n\
             [provider]\nkind = \"local\"\nbase_port = {port}\nwork_dir = \"{}\"\n",
            ctx.pg.b.major,
            ctx.sync,
            ctx.ttl,
            ctx.loop_wait,
            endpoints.join(", "),
            work.display()
        );
        for (k, n) in NODES.iter().enumerate() {
            text.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\nrole = \"{}\"\n", if k == 0 { "primary" } else { "standby" }));
        }
        let spec = work.join("pgrepl.toml");
        std::fs::write(&spec, text).map_err(|e| format!("write {}: {e}", spec.display()))?;
        let c = HaCluster { ctx, work, spec, port, extra_agents: Vec::new() };
        c.pgrepl(&["up"], UP_LIMIT).await.map_err(|e| format!("up: {e}"))?;
        Ok(c)
    }

    /// `pgrepl ARGS -f spec --pg-bin .. --pg-client-bin ..`, bounded by `timeout(1)`:
    /// whether it succeeded, its stdout and stderr.
    pub async fn pgrepl_raw(&self, args: &[&str], limit: Duration) -> Result<(bool, String, String), String> {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &limit.as_secs().to_string()]).arg(&self.ctx.pgrepl).args(args).args(self.common_args());
        let o = blocking(cmd).await?;
        Ok((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()))
    }

    /// The same, an error unless it succeeded: its stdout.
    pub async fn pgrepl(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        match self.pgrepl_raw(args, limit).await? {
            (true, out, _) => Ok(out),
            (false, out, err) => Err(format!("pgrepl {}: {out}{err}", args.join(" "))),
        }
    }

    pub async fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.pgrepl(args, CMD_LIMIT).await
    }

    pub fn common_args(&self) -> Vec<String> {
        ["-f", &path_str(&self.spec), "--pg-bin", &self.ctx.pg.b.bin_dir, "--pg-client-bin", &self.ctx.pg.b.client_bin_dir]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn port_of(&self, node: &str) -> u16 {
        self.port + NODES.iter().position(|n| *n == node).unwrap_or(0) as u16
    }

    pub fn node_of(&self, port: i32) -> Result<String, String> {
        NODES.iter().find(|n| i32::from(self.port_of(n)) == port).map(|n| n.to_string()).ok_or_else(|| format!("port {port}: not a node"))
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        self.work.join(node).join("run")
    }

    pub fn agents_dir(&self) -> PathBuf {
        self.work.join("secrets").join("agents")
    }

    /// The pid in `up`'s pid file of `node`'s agent, when that process is still it.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.agents_dir().join(format!("{node}.pid"))).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.contains(&&b"agent"[..]) && args.windows(2).any(|w| w[0] == b"--node" && w[1] == node.as_bytes());
        ours.then_some(pid)
    }

    pub fn postmaster_pid(&self, node: &str) -> Result<u32, String> {
        let f = self.work.join(node).join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        text.lines().next().and_then(|l| l.trim().parse().ok()).ok_or_else(|| format!("{}: no pid", f.display()))
    }

    /// Until the leader key names a node, `members` members report, the leader accepts
    /// writes and every other reporting member streams from it (`node`, when given, among
    /// them): the leader.
    pub async fn wait_ready(&self, members: usize, node: Option<&str>, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.ready(members, node).await {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready within {limit:?}: {last}"))
    }

    pub async fn ready(&self, members: usize, node: Option<&str>) -> Result<String, String> {
        // Its exit status says whether every node is healthy: not what is asked here.
        let (_, out, err) = self.pgrepl_raw(&["status", "--output", "json"], CMD_LIMIT).await?;
        let st: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("status json: {e}: {out}{err}"))?;
        let leader = st["ha"]["leader"].as_str().ok_or("no leader")?.to_string();
        let n = st["ha"]["members"].as_array().map_or(0, Vec::len);
        if n < members {
            return Err(format!("{n} members report"));
        }
        let streaming = self
            .ctx
            .pg
            .psql(
                &self.socket(&leader),
                self.port_of(&leader),
                "SELECT application_name FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' AND NOT pg_catalog.pg_is_in_recovery()",
            )
            .await?;
        let streaming: Vec<&str> = streaming.lines().collect();
        if streaming.len() + 1 < members || node.is_some_and(|n| !streaming.contains(&n)) {
            return Err(format!("{leader} leads; streaming from it: {streaming:?}"));
        }
        Ok(leader)
    }

    /// `pgrepl agent --node NODE -f spec` again, kept as a child (stopped on drop).
    pub async fn restart_agent(&mut self, node: &str) -> Result<(), String> {
        let log = self.agents_dir().join(format!("{node}-restarted.log"));
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.ctx.pgrepl);
        cmd.args(["agent", "--node", node]).args(self.common_args()).env("PGREPL_LOG", "info").stdin(Stdio::null()).stdout(f).stderr(f2);
        // Its own process group, as `up` starts agents: a Ctrl-C reaches the bench only.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("start the agent of {node}: {e}"))?;
        self.extra_agents.push(child);
        Ok(())
    }

    /// The agents' log lines (every node, the restarted agent too) from `since` to
    /// `since + for_secs`, as `+S.SSS s node: message`, in time order.
    pub fn agent_log_since(&self, since: SystemTime, for_secs: f64) -> Vec<String> {
        let t0 = time_of_day(since);
        let mut lines: Vec<(f64, String)> = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.agents_dir()) else { return Vec::new() };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_suffix(".log") else { continue };
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            for l in text.lines() {
                let Some(at) = log_time(l) else { continue };
                let mut off = at - t0;
                if off < -43200.0 {
                    off += 86400.0; // past midnight UTC
                }
                if (-0.05..=for_secs).contains(&off) {
                    lines.push((off, format!("{off:+7.3} s {node:<13} {}", strip_log(l))));
                }
            }
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        lines.into_iter().map(|(_, l)| l).collect()
    }

    pub fn print_agent_logs(&self) {
        let Ok(dir) = std::fs::read_dir(self.agents_dir()) else { return };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {} (last 40 lines)", e.path().display());
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for HaCluster<'_> {
    fn drop(&mut self) {
        for c in &mut self.extra_agents {
            let guard = guard_pid(c.id());
            // SIGTERM: a leader stops its server first and revokes its lease.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(g) = guard.filter(|g| Path::new(&format!("/proc/{g}")).exists()) {
                let _ = Command::new("kill").args(["-KILL", &g.to_string()]).status();
            }
        }
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &UP_LIMIT.as_secs().to_string()])
            .arg(&self.ctx.pgrepl)
            .args(["destroy", "--yes"])
            .args(self.common_args());
        match cmd.stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("destroy ({}): {}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("destroy: {e}"),
        }
        // Anything left (destroy failed): the scratch directory's servers are stopped at the end.
        self.ctx.scratch.stop_servers_under(&self.work);
    }
}

/// Seconds since midnight UTC.
pub fn time_of_day(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| (d.as_secs() % 86400) as f64 + f64::from(d.subsec_micros()) / 1e6)
}

/// The time of day of a log line of the agents (`2026-12-01T21:58:04.123456Z  INFO ...`).
pub fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut it = t.split(':');
    let (h, m, s): (f64, f64, f64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    (line.as_bytes().get(10) == Some(&b'T')).then_some(h * 3600.0 + m * 60.0 + s)
}

/// A log line without its timestamp and module path.
pub fn strip_log(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let (level, rest) = rest.split_once(' ').unwrap_or(("", rest));
    let rest = rest.trim_start();
    let rest = match rest.split_once(": ") {
        Some((module, msg)) if !module.contains(' ') => msg,
        _ => rest,
    };
    let s = if level == "INFO" { rest.to_string() } else { format!("{level} {rest}") };
    s.chars().take(220).collect()
}

// =======================================================================================
// etcd

/// The lab's 3-member etcd; on drop, the members this program started are stopped.
#[derive(Debug)]
pub struct Etcd {
    base: u16,
    pub endpoints: Vec<String>,
    /// The members this program started (stopped on drop).
    pub started: Vec<String>,
}

impl Etcd {
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scripts").join("lab").join("etcd.sh")
    }

    pub fn start(base: u16) -> Result<Etcd, String> {
        let o = Command::new("bash")
            .arg(Self::script())
            .args(["start", &base.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("etcd.sh: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // "etcd.sh: started member m2 (pid ...)": the members to stop at the end.
        let started: Vec<String> =
            out.lines().filter_map(|l| l.strip_prefix("etcd.sh: started member m")).filter_map(|r| r.get(..1)).map(String::from).collect();
        let mut etcd = Etcd { base, endpoints: Vec::new(), started };
        if !o.status.success() {
            return Err(format!("scripts/lab/etcd.sh start {base}: {out}{}", String::from_utf8_lossy(&o.stderr)));
        }
        let o = Command::new("bash")
            .arg(Self::script())
            .args(["endpoints", &base.to_string()])
            .output()
            .map_err(|e| format!("etcd.sh: {e}"))?;
        etcd.endpoints = String::from_utf8_lossy(&o.stdout).trim().split(',').map(String::from).collect();
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &self.started {
            let _ =
                Command::new("bash").arg(Self::script()).args(["stop-member", &self.base.to_string(), m]).stdout(Stdio::null()).status();
        }
    }
}
