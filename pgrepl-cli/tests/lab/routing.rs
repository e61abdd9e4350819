//! Where applications connect and what operators watch: the agents' HTTP endpoints on a
//! real `[ha]` cluster (every check's code on every role, a lagging standby leaving
//! `/replica` and coming back, `/metrics` parsed by a Prometheus text parser and checked
//! against the servers, its failover counter after an automatic failover).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auto::{AutoLab, NODES, kill};

/// One HTTP/1.0 request to 127.0.0.1:`port`: the status code and the body (`None`: no
/// answer within 3 s).
pub(crate) async fn http(port: u16, path: &str) -> Option<(u16, String)> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
    };
    tokio::time::timeout(Duration::from_secs(3), ask).await.ok().flatten()
}

async fn code(port: u16, path: &str) -> u16 {
    http(port, path).await.map_or(0, |(c, _)| c)
}

/// Polls (every 100 ms, at most `limit`) until `path` on `port` answers `want`.
async fn wait_code(port: u16, path: &str, want: u16, limit: Duration) {
    let t = Instant::now();
    loop {
        let got = code(port, path).await;
        if got == want {
            return;
        }
        assert!(t.elapsed() < limit, "{path} on port {port}: {got}, not {want}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` of `port`, parsed.
async fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (c, body) = http(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(c, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a valid Prometheus exposition")
}

fn sample(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v))).and_then(|x| match x.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_endpoints_and_metrics_on_every_role_pg15() {
    let lab = AutoLab::up("routing-15-endpoints", "15", Some("{ mode = \"any\", count = 1 }"));
    let api = |node: &str| lab.api_port + NODES.iter().position(|n| *n == node).unwrap() as u16;
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(30));
    }
    // Every check on every role.
    let limit = Duration::from_secs(15);
    for (path, want) in
        [("/primary", [200, 503, 503]), ("/replica", [503, 200, 200]), ("/read-only", [200, 200, 200]), ("/health", [200, 200, 200])]
    {
        for (n, w) in NODES.iter().zip(want) {
            wait_code(api(n), path, w, limit).await;
        }
    }
    assert_eq!(code(api("db2"), "/replica?lag=nonsense").await, 400);
    let (_, cluster) = http(api("db3"), "/cluster").await.unwrap();
    let cluster: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(cluster["leader"], "db1", "{cluster}");
    assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3), "{cluster}");

    // /metrics against the servers.
    let m = scrape(api("db1")).await;
    assert_eq!(sample(&m, "pgrepl_up", None), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_primary", None), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_role", Some(("role", "primary"))), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_timeline", None), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_store_reachable", None), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_failovers_total", None), Some(0.0));
    let left = sample(&m, "pgrepl_lease_seconds_left", None).expect("the leader's lease left");
    assert!(left > 0.0 && left <= 3.0, "lease left {left}");
    let lsn = sample(&m, "pgrepl_wal_lsn_bytes", None).expect("a position");
    let now: f64 = lab.sql("db1", "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").trim().parse().unwrap();
    assert!(lsn > 0.0 && lsn <= now, "published {lsn}, server at {now}");
    assert!(sample(&m, "pgrepl_slot_retained_wal_bytes", Some(("slot", "pgrepl_db3"))).is_some(), "db3's slot on db1");
    let s3 = scrape(api("db3")).await;
    assert_eq!(sample(&s3, "pgrepl_role", Some(("role", "standby"))), Some(1.0));
    assert_eq!(sample(&s3, "pgrepl_primary", None), Some(0.0));

    // A lagging standby: db3's walreceiver stopped while db1 writes.
    let receiver: i32 = lab.sql("db3", "SELECT pid FROM pg_stat_wal_receiver").trim().parse().expect("db3's walreceiver");
    kill("STOP", receiver);
    lab.sql("db1", "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)");
    wait_code(api("db3"), "/replica?lag=64kB", 503, limit).await;
    assert_eq!(code(api("db3"), "/replica?lag=1GB").await, 200, "still streaming, within a large limit");
    assert_eq!(code(api("db2"), "/replica?lag=64kB").await, 200, "db2 is not behind");
    let lagging = scrape(api("db3")).await;
    let behind = sample(&lagging, "pgrepl_standby_lag_bytes", None).expect("db3's lag");
    assert!(behind >= 65536.0, "db3 is {behind} bytes behind");
    let m = scrape(api("db1")).await;
    let seen = sample(&m, "pgrepl_replication_lag_bytes", Some(("standby", "db3"))).expect("db1 sees db3's lag");
    assert!(seen >= 65536.0, "db1 sees db3 {seen} bytes behind");
    kill("CONT", receiver);
    wait_code(api("db3"), "/replica?lag=64kB", 200, Duration::from_secs(30)).await;
    let caught_up = sample(&scrape(api("db3")).await, "pgrepl_standby_lag_bytes", None).unwrap();
    assert!(caught_up < behind, "the lag shrinks once the walreceiver runs: {behind} then {caught_up}");

    // The whole primary node killed: the new leader answers /primary, its counter moved.
    let agent = lab.agent_pid("db1");
    let guard = lab.guard_pid(agent);
    let postmaster = lab.postmaster_pid("db1");
    kill("KILL", agent);
    if let Some(g) = guard {
        kill("KILL", g);
    }
    kill("KILL", postmaster);
    let leader = lab.wait_leader(&["db2", "db3"], 2, Duration::from_secs(30));
    wait_code(api(&leader), "/primary", 200, limit).await;
    let other = if leader == "db2" { "db3" } else { "db2" };
    wait_code(api(other), "/replica", 200, Duration::from_secs(30)).await;
    assert_eq!(code(api(other), "/primary").await, 503);
    assert_eq!(code(api("db1"), "/health").await, 0, "db1's agent is gone: no answer");
    let m = scrape(api(&leader)).await;
    assert_eq!(sample(&m, "pgrepl_failovers_total", None), Some(1.0));
    assert_eq!(sample(&m, "pgrepl_timeline", None), Some(2.0));
    assert!(sample(&m, "pgrepl_last_failover_seconds", None).is_some_and(|s| s > 0.0 && s < 30.0));
    lab.finish();
}

/// HAProxy (Debian's, from the lab) running the configuration `pgrepl render --haproxy`
/// wrote; stopped by its PID when dropped.
struct Haproxy(std::process::Child);

impl Haproxy {
    fn start(cfg: &std::path::Path, log: &std::path::Path) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("haproxy is not installed: run scripts/lab/install.sh"));
        let out = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(bin)
            .args(["-db", "-f"])
            .arg(cfg)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("haproxy starts");
        Haproxy(child)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// New sessions through the read-only port every 50 ms: when, on which server port,
/// whether that server was in recovery.
struct ReadProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, u16, bool)>>,
}

impl ReadProbe {
    fn start(port: u16) -> ReadProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(port)
                .user("pgrepl_test")
                .password(crate::common::APP_PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(1));
            let mut seen = Vec::new();
            // Bounded by the test's own length (at most 10 minutes of samples).
            for _ in 0..12_000 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let sample = async {
                    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let r = c.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await.ok()?;
                    Some((Instant::now(), r.get::<_, i32>(1) as u16, r.get::<_, bool>(0)))
                };
                if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(2), sample).await {
                    seen.push(s);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        });
        ReadProbe { stop, task }
    }

    async fn finish(self) -> Vec<(Instant, u16, bool)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The first acknowledged write after `after` by the server on `port`.
fn first_ack_on(acks: &[crate::ha::Ack], port: u16, after: Instant) -> Option<Instant> {
    acks.iter().find(|a| a.at > after && a.port == port).map(|a| a.at)
}

/// The write gap: the longest time without an acknowledged write between `from` and the
/// first write on `port` after it (writes may go on on the old primary for a while).
fn gap_until(acks: &[crate::ha::Ack], from: Instant, port: u16) -> Duration {
    let Some(end) = first_ack_on(acks, port, from) else { return Duration::MAX };
    let mut gap = Duration::ZERO;
    let mut last = acks.iter().rev().find(|a| a.at <= from).map_or(from, |a| a.at);
    for a in acks.iter().filter(|a| a.at > from && a.at <= end) {
        gap = gap.max(a.at - last);
        last = a.at;
    }
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_through_haproxy_failover_and_switchover_pg15() {
    let lab = AutoLab::up("routing-15-haproxy", "15", Some("{ mode = \"any\", count = 1 }"));
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(30));
    }
    let rw = crate::common::free_ports(2);
    let ro = rw + 1;
    let (code, cfg, err) = lab.cli(&["render", "--haproxy", "--rw-port", &rw.to_string(), "--ro-port", &ro.to_string()]);
    assert_eq!(code, 0, "render --haproxy: {err}");
    let cfg_path = lab.wd.path.join("haproxy.cfg");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let _haproxy = Haproxy::start(&cfg_path, &lab.wd.path.join("haproxy.log"));
    // HAProxy counts every server as up until its first check (the generated file says
    // so): the probes start once every server has been checked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let reads = ReadProbe::start(ro);
    let load = crate::ha::Load::start(vec![rw]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Automatic failover: the whole primary node killed, writes go on through the same port.
    let agent = lab.agent_pid("db1");
    let guard = lab.guard_pid(agent);
    let postmaster = lab.postmaster_pid("db1");
    let t_fault = Instant::now();
    kill("KILL", agent);
    if let Some(g) = guard {
        kill("KILL", g);
    }
    kill("KILL", postmaster);
    let leader = lab.wait_leader(&["db2", "db3"], 2, Duration::from_secs(30));
    let other = if leader == "db2" { "db3" } else { "db2" };
    lab.wait_standby_of(other, &leader, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A switchover through the agents, the same port again.
    let t_switch = Instant::now();
    let (code, out, err) = lab.cli(&["switchover", "--to", other]);
    assert_eq!(code, 0, "switchover: {out}{err}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = load.finish().await;
    let samples = reads.finish().await;

    let (p_leader, p_other) = (lab.port_of(&leader), lab.port_of(other));
    let failover_gap = gap_until(&acks, t_fault, p_leader);
    let switchover_gap = gap_until(&acks, t_switch, p_other);
    eprintln!("through HAProxy: automatic failover write gap {failover_gap:?}, switchover write gap {switchover_gap:?}");
    assert!(acks.iter().any(|a| a.at < t_fault && a.port == lab.port_of("db1")), "writes reached db1 through HAProxy first");
    assert!(failover_gap < Duration::from_secs(30), "writes resumed on {leader} through HAProxy");
    assert!(switchover_gap < Duration::from_secs(30), "writes resumed on {other} through HAProxy");
    // Every acknowledged row is on the last primary.
    let missing = crate::auto::missing_on(&lab, other, &acks);
    assert!(missing.is_empty(), "{} acknowledged rows missing on {other}: {:?}", missing.len(), &missing[..missing.len().min(20)]);

    // The read-only port reached standbys only: a server in recovery, except a standby
    // promoted a moment before, until HAProxy's checks drop it (its `fall` of 2 checks).
    let promoted = [
        (p_leader, t_fault, first_ack_on(&acks, p_leader, t_fault).unwrap()),
        (p_other, t_switch, first_ack_on(&acks, p_other, t_switch).unwrap()),
    ];
    let window = Duration::from_secs(3);
    assert!(samples.len() > 20, "the read-only port answered: {} samples in {:?}", samples.len(), t0.elapsed());
    let wrong: Vec<_> = samples
        .iter()
        .filter(|(at, port, in_recovery)| {
            !in_recovery && !promoted.iter().any(|(p, from, writable)| p == port && *at >= *from && *at <= *writable + window)
        })
        .map(|(at, port, _)| (at.duration_since(t0), *port))
        .collect();
    assert!(wrong.is_empty(), "the read-only port reached a primary: {wrong:?}");
    lab.finish();
}
