//! `[ha]` on hosts reached over SSH, on the 5-host lab across locations
//! (`PGREPL_NETNS_SET=ha scripts/lab/netns.sh`: d, e "east"; f, g "west"; the witness w
//! "third"): pgrepl deploys etcd (TLS, client certificates) and its agents there, the
//! agents fail over with no command when a host vanishes, and bring it back by itself.

use std::time::{Duration, Instant};

use pgrepl_core::store::ConsensusStore;

use crate::common::pgrepl_wd as run;
use crate::common::*;

/// The store's view through `pgrepl status --output json`.
fn ha_view(f: &str, wd: &WorkDir) -> serde_json::Value {
    let (_, out, _) = run(f, wd, &["status", "--output", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).map(|v| v["ha"].clone()).unwrap_or(serde_json::Value::Null)
}

/// Waits up to `limit` for `ok` on the store's view; the last view on failure.
fn wait_view(f: &str, wd: &WorkDir, limit: Duration, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let t0 = Instant::now();
    let mut last = serde_json::Value::Null;
    while t0.elapsed() < limit {
        last = ha_view(f, wd);
        if ok(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: not within {limit:?}; last view: {last:#}");
}

fn member<'a>(v: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    v["members"].as_array()?.iter().find(|m| m["node"] == node)
}

fn sha256_of(path: &std::path::Path) -> String {
    let o = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

/// What a client of the deployed etcd gets with these files (`Ok`: it read the keys).
fn etcd_read(ca: Option<&std::path::Path>, cert: Option<(&std::path::Path, &std::path::Path)>) -> Result<(), String> {
    let mut o = pgrepl_etcd::EtcdOptions::new(vec!["https://10.213.8.22:2379"]);
    o.ca_file = ca.map(|p| p.to_path_buf());
    o.cert_file = cert.map(|c| c.0.to_path_buf());
    o.key_file = cert.map(|c| c.1.to_path_buf());
    o.request_timeout = Duration::from_secs(3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = pgrepl_etcd::EtcdStore::new(&o).map_err(|e| e.to_string())?;
        store.get_prefix("/pgrepl/").await.map(|_| ()).map_err(|e| e.to_string())
    })
}

/// up with `[ha]` and etcd deployed over TLS → a client without the CA, without a
/// certificate or with one of another CA is refused → the agent binary's upload and
/// checksum → every process of the primary's host killed: its standby in the same
/// location takes over with no command, the others follow → the host back: its agent
/// brings it back as a standby by itself → destroy removes etcd and the agents.
#[test]
fn ha_on_ssh_hosts_deploys_etcd_and_agents_and_fails_over_within_the_location() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-hosts");
    let f = wd.path.join("geo.toml");
    std::fs::write(&f, HaLab::spec("geo", "[replication.sync]\nmode = \"any\"\ncount = 1\n", "")).unwrap();
    let f = f.to_str().unwrap();

    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "up with [ha] over SSH: {out}\n{err}");
    assert!(err.contains("uploaded pgrepl") && err.contains("started pgrepl-geo-etcd"), "{err}");
    let v = wait_view(f, &wd, Duration::from_secs(30), "d leads, every member reports", |v| {
        v["leader"] == "d" && ["d", "e", "f", "g"].iter().all(|n| member(v, n).is_some())
    });
    assert_eq!(member(&v, "d").unwrap()["role"], "primary", "{v:#}");

    // On the hosts: pgrepl's binary as built here, keys and secrets 0600, agents and
    // etcd members running (the witness: a member, no agent, no PostgreSQL).
    let local = sha256_of(std::path::Path::new(env!("CARGO_BIN_EXE_pgrepl")));
    for (n, addr, _, _) in HA_HOSTS {
        let (_, sum) = HaLab::ssh(addr, "sha256sum /usr/local/lib/pgrepl/pgrepl | cut -d' ' -f1");
        assert_eq!(sum, local, "{n}: the binary uploaded");
        let (_, modes) = HaLab::ssh(addr, "stat -c '%a %n' /etc/pgrepl/geo/etcd/member.key /etc/pgrepl/geo/etcd/etcd.yml");
        assert!(modes.lines().all(|l| l.starts_with("600 ")), "{n}: {modes}");
        let (code, _) = HaLab::ssh(addr, "! flock -n /var/lib/pgrepl/geo/run/etcd.pid true");
        assert_eq!(code, 0, "{n}: its etcd member runs");
        let (code, _) = HaLab::ssh(addr, "! flock -n /var/lib/pgrepl/geo/run/agent.pid true");
        assert_eq!(code, 0, "{n}: an agent runs on every host, the witness's too");
    }
    // The witness's agent reports; its host holds no replication password.
    let v = wait_view(f, &wd, Duration::from_secs(30), "the witness reports", |v| member(v, "w").is_some());
    assert_eq!(member(&v, "w").unwrap()["role"], "witness", "{v:#}");
    let (code, _) = HaLab::ssh("10.213.8.25", "test -e /var/lib/pgrepl/geo/state/replication");
    assert_ne!(code, 0, "no replication password on the witness");
    let (_, health) = HaLab::ssh("10.213.8.25", "curl -s -o /dev/null -w '%{http_code}' http://10.213.8.25:8008/health");
    assert_eq!(health, "200", "the witness's /health");
    let (_, pw) =
        HaLab::ssh("10.213.8.22", "stat -c %a /var/lib/pgrepl/geo/state/replication; ps -eo args | grep -c '[p]gpass\\|[P]GPASSWORD'");
    assert_eq!(pw, "600\n0", "the agent's copy of the replication password");

    // TLS: only a client with a certificate of the cluster's CA reads.
    let pki = wd.path.join("secrets/etcd-pki");
    let (ca, cert, key) = (pki.join("ca.crt"), pki.join("admin.crt"), pki.join("admin.key"));
    assert_eq!(etcd_read(Some(&ca), Some((&cert, &key))), Ok(()));
    let e = etcd_read(None, Some((&cert, &key))).unwrap_err();
    assert!(e.to_lowercase().contains("certificate") || e.contains("tls") || e.contains("TLS"), "no CA: {e}");
    let e = etcd_read(Some(&ca), None).unwrap_err();
    assert!(!e.is_empty(), "no client certificate: refused");
    let other = pgrepl_etcd::pki::AdminPki::in_state_dir(&wd.path.join("other"));
    other.load_or_create("intruder", true).unwrap();
    let e = etcd_read(Some(&ca), Some((&other.admin_cert(), &other.admin_key()))).unwrap_err();
    assert!(!e.is_empty(), "a certificate of another CA: refused");

    // The checksum: a binary changed on a host is replaced on the next up, and only there.
    let (code, _) = HaLab::ssh(
        "10.213.8.23",
        "cp /usr/local/lib/pgrepl/pgrepl /tmp/p && echo corrupt >> /tmp/p && mv -f /tmp/p /usr/local/lib/pgrepl/pgrepl",
    );
    assert_eq!(code, 0);
    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let uploads: Vec<&str> = err.lines().filter(|l| l.contains("uploaded pgrepl")).collect();
    assert!(uploads.len() == 1 && uploads[0].starts_with("f: "), "{err}");
    let (_, sum) = HaLab::ssh("10.213.8.23", "sha256sum /usr/local/lib/pgrepl/pgrepl | cut -d' ' -f1");
    assert_eq!(sum, local);

    // Every process of d's host killed: e (same location) takes over, f and g follow it.
    HaLab::kill_host("d");
    let t0 = Instant::now();
    let v = wait_view(f, &wd, Duration::from_secs(60), "a new leader", |v| v["leader"].as_str().is_some_and(|l| l != "d"));
    assert_eq!(v["leader"], "e", "the standby in the old primary's location wins a tie: {v:#}");
    eprintln!("failover after the host was killed: {:.1}s (ttl 10 s)", t0.elapsed().as_secs_f64());
    wait_view(f, &wd, Duration::from_secs(60), "f and g stream from e", |v| {
        ["f", "g"].iter().all(|n| member(v, n).is_some_and(|m| m["upstream"] == "e" && m["streaming"] == true))
    });
    let (code, out) =
        HaLab::ssh("10.213.8.22", "runuser -u postgres -- psql -X -A -t -q -c 'CREATE TABLE after_failover (i int); SELECT 1'");
    assert_eq!((code, out.as_str()), (0, "1"), "e accepts writes");

    // The host back (its sshd again, then up): its agent brings it back as a standby of
    // e by itself (pg_rewind from e, reached from d's own host), never writable meanwhile.
    HaLab::ensure_up();
    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v = wait_view(f, &wd, Duration::from_secs(90), "d back as a standby of e", |v| {
        assert_ne!(member(v, "d").map(|m| m["role"].clone()), Some("primary".into()), "d writable again: {v:#}");
        member(v, "d").is_some_and(|m| m["role"] == "standby" && m["upstream"] == "e" && m["streaming"] == true)
    });
    assert_eq!(v["leader"], "e", "{v:#}");
    let (_, rows) = HaLab::ssh(
        "10.213.8.21",
        "runuser -u postgres -- psql -X -A -t -c \"SELECT count(*) FROM pg_tables WHERE tablename = 'after_failover'\"",
    );
    assert_eq!(rows, "1", "d replays e's timeline");

    let (code, out, err) = run(f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (n, addr, _, _) in HA_HOSTS {
        let (_, left) = HaLab::ssh(
            addr,
            // Every process of the machine is visible from a lab host: this cluster's only.
            "ls -d /etc/pgrepl/geo /var/lib/pgrepl/geo /var/log/pgrepl/geo 2>/dev/null; pgrep -fa '[p]grepl/geo/|[e]tcd --config-file /etc/[p]grepl/geo/' || true",
        );
        assert_eq!(left, "", "{n}: destroy left {left}");
    }
}

/// Every ~200 ms until told to stop: which data hosts accept writes, asked over each
/// host's own socket (so a host whose link is down is asked too). Returns the rounds in
/// which more than one did, and for each host the times (since start) it was writable.
/// The rounds in which more than one host accepted writes, and each (time, host) seen
/// accepting writes.
type Probed = (Vec<String>, Vec<(f64, String)>);

struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Probed>,
}

impl Prober {
    fn start(t0: Instant) -> Prober {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut doubles = Vec::new();
            let mut writable = Vec::new();
            // Bounded: at most 10 minutes of rounds.
            for _ in 0..3000 {
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let probes: Vec<_> =
                    ["d", "e", "f", "g"].iter().map(|h| std::thread::spawn(move || (h.to_string(), HaLab::writable(h)))).collect();
                let now: Vec<String> =
                    probes.into_iter().filter_map(|p| p.join().ok()).filter(|(_, w)| *w == Some(true)).map(|(h, _)| h).collect();
                let at = t0.elapsed().as_secs_f64();
                for h in &now {
                    writable.push((at, h.clone()));
                }
                if now.len() > 1 {
                    doubles.push(format!("{at:.1}s: {}", now.join(", ")));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (doubles, writable)
        });
        Prober { stop, handle }
    }

    fn finish(self) -> Probed {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// Writes numbered rows through the multi-host connection string (read-write), one
/// commit at a time, recording each acknowledged number.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<i64>>,
}

impl Writer {
    fn start() -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut cfg = tokio_postgres::Config::new();
                for (_, a, _, r) in HA_HOSTS {
                    if r != "witness" {
                        cfg.host(a).port(5432);
                    }
                }
                cfg.user("pgrepl_test").password(APP_PASSWORD).dbname("postgres");
                cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
                cfg.connect_timeout(Duration::from_secs(1));
                let mut acked = Vec::new();
                let mut client: Option<tokio_postgres::Client> = None;
                let t0 = Instant::now();
                let mut next = 0i64;
                // Bounded: 5 minutes at most.
                while !s.load(std::sync::atomic::Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(300) {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        match tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls)).await {
                            Ok(Ok((c, conn))) => {
                                tokio::spawn(async move {
                                    let _ = conn.await;
                                });
                                client = Some(c);
                            }
                            _ => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    next += 1;
                    let c = client.as_ref().unwrap();
                    match tokio::time::timeout(Duration::from_secs(5), c.execute("INSERT INTO acked (i) VALUES ($1)", &[&next])).await {
                        Ok(Ok(_)) => acked.push(next),
                        _ => client = None,
                    }
                }
                acked
            })
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// An app role and table for the writer, and pg_hba lines letting this machine in.
fn prepare_writes() {
    for (_, addr, _, r) in HA_HOSTS {
        if r == "witness" {
            continue;
        }
        let (code, out) = HaLab::ssh(
            addr,
            "echo 'host all pgrepl_test 10.213.8.1/32 scram-sha-256' >> /etc/postgresql/15/main/pg_hba.conf && runuser -u postgres -- psql -X -q -c 'SELECT pg_reload_conf()'",
        );
        assert_eq!(code, 0, "{addr}: {out}");
    }
    let (code, out) = HaLab::ssh(
        "10.213.8.21",
        &format!(
            "runuser -u postgres -- psql -X -q -c \"CREATE ROLE pgrepl_test SUPERUSER LOGIN PASSWORD '{APP_PASSWORD}'\" -c 'CREATE TABLE acked (i bigint PRIMARY KEY)'"
        ),
    );
    assert_eq!(code, 0, "{out}");
}

fn deploy(wd: &WorkDir, name: &str, extra: &str, ha_extra: &str) -> String {
    let f = wd.path.join(format!("{name}.toml"));
    std::fs::write(&f, HaLab::spec(name, extra, ha_extra)).unwrap();
    let f = f.to_str().unwrap().to_string();
    let (code, out, err) = run(&f, wd, &["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    wait_view(&f, wd, Duration::from_secs(30), "d leads, every member reports", |v| {
        v["leader"] == "d" && ["d", "e", "f", "g"].iter().all(|n| member(v, n).is_some())
    });
    f
}

/// The primary's link dropped under a write load (synchronous mode): it stops accepting
/// writes within the ttl, a standby takes over, at no moment do two hosts accept writes,
/// and once the link is back the old primary comes back as a standby by itself; every
/// acknowledged row is on the new primary.
#[test]
fn ha_link_drop_under_load_fences_the_primary_loses_nothing_and_it_rejoins() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-link");
    let f = deploy(&wd, "lnk", "[replication.sync]\nmode = \"any\"\ncount = 1\n", "");
    prepare_writes();
    let t0 = Instant::now();
    let prober = Prober::start(t0);
    let writer = Writer::start();
    std::thread::sleep(Duration::from_secs(3));

    let cut = t0.elapsed().as_secs_f64();
    HaLab::sh(&["link", "d", "down"]);
    let v = wait_view(&f, &wd, Duration::from_secs(60), "a new leader", |v| v["leader"].as_str().is_some_and(|l| l != "d"));
    let leader = v["leader"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(3));
    HaLab::sh(&["link", "d", "up"]);
    wait_view(&f, &wd, Duration::from_secs(120), "d back as a standby", |v| {
        member(v, "d").is_some_and(|m| m["role"] == "standby" && m["upstream"] == leader.as_str() && m["streaming"] == true)
    });
    let acked = writer.finish();
    let (doubles, writable) = prober.finish();

    assert!(doubles.is_empty(), "two hosts accepted writes at once: {doubles:?}");
    // d's last writable moment after its link went down: within the ttl (10 s; the guard
    // fences at the lease deadline, before any standby can take the key).
    let last_d = writable.iter().filter(|(_, h)| h == "d").map(|(t, _)| *t).fold(0.0, f64::max);
    assert!(last_d < cut + 10.5, "d accepted writes {:.1}s after its link went down (ttl 10 s)", last_d - cut);
    assert!(writable.iter().any(|(t, h)| *t > cut && *h == leader), "the new primary {leader} was seen writable");
    assert!(acked.len() > 10, "the writer wrote: {}", acked.len());
    let addr = HA_HOSTS.iter().find(|h| h.0 == leader).unwrap().1;
    let (_, have) = HaLab::ssh(addr, "runuser -u postgres -- psql -X -A -t -c 'SELECT i FROM acked ORDER BY i'");
    let have: std::collections::BTreeSet<i64> = have.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|i| !have.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged rows missing on {leader}: {lost:?} (of {})", acked.len());
    eprintln!("link drop: {} rows acknowledged, none lost; new leader {leader}; d fenced {:.1}s after the cut", acked.len(), last_d - cut);
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// A whole location cut off (east: the primary d and e) from the rest (asynchronous
/// replication): west and the witness hold the majority and carry on (one of f, g
/// promoted); the cut side promotes nothing and its primary stops accepting writes.
#[test]
fn ha_location_cut_the_majority_side_carries_on_and_the_cut_side_promotes_nothing() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-cut");
    // Asynchronous: with the east standby cut off too, west could not prove it holds
    // every commit a synchronous set of (e, f, g) acknowledged, and rightly would not
    // promote.
    // The agents run a pgrepl already on the hosts (`[ha] agent_binary`): nothing uploaded.
    let f = deploy(&wd, "cut", "", &format!("agent_binary = \"{}\"\n", env!("CARGO_BIN_EXE_pgrepl")));
    let (_, uploaded) =
        HaLab::ssh("10.213.8.23", "ls /usr/local/lib/pgrepl/pgrepl 2>/dev/null | wc -l; cat /var/lib/pgrepl/cut/run/agent.binary");
    assert!(uploaded.starts_with("0\n"), "nothing uploaded: {uploaded}");
    let t0 = Instant::now();
    let prober = Prober::start(t0);
    HaLab::sh(&["cut", "d", "e"]);
    let v = wait_view(&f, &wd, Duration::from_secs(60), "a leader in west", |v| v["leader"] == "f" || v["leader"] == "g");
    let leader = v["leader"].as_str().unwrap().to_string();
    // Long enough for the cut side to have done anything it would do.
    std::thread::sleep(Duration::from_secs(15));
    let (doubles, writable) = prober.finish();
    assert!(doubles.is_empty(), "two hosts accepted writes at once: {doubles:?}");
    let late: Vec<_> = writable.iter().filter(|(t, h)| *t > 12.0 && (h == "d" || h == "e")).collect();
    assert!(late.is_empty(), "the cut side accepted writes after the ttl: {late:?}");
    let (_, e) = HaLab::inside("e", "runuser -u postgres -- psql -X -A -t -c 'SELECT pg_is_in_recovery()'");
    assert_eq!(e, "t", "e (cut off with the old primary) was not promoted");
    let (code, out) = HaLab::ssh(
        HA_HOSTS.iter().find(|h| h.0 == leader).unwrap().1,
        "runuser -u postgres -- psql -X -A -t -q -c 'CREATE TABLE west_goes_on (i int); SELECT 1'",
    );
    assert_eq!((code, out.as_str()), (0, "1"), "{leader} accepts writes");
    HaLab::sh(&["heal"]);
    wait_view(&f, &wd, Duration::from_secs(120), "d and e back as standbys", |v| {
        ["d", "e"].iter().all(|n| member(v, n).is_some_and(|m| m["role"] == "standby" && m["streaming"] == true))
    });
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// A new agent binary rolled out by `up` while the agents run the cluster: they are paused
/// around their restart, so the primary's server runs on (same postmaster), the leader
/// stays, and they are resumed after. First a new build at `agent_binary`'s path, then one
/// from `agent_binary_url` over HTTPS: refused while the hosts do not trust its server,
/// refused when `agent_binary_sha256` is not its checksum (nothing changed either time),
/// then downloaded, checked and run on every host.
#[test]
fn ha_agents_rolled_onto_new_binaries_from_a_path_and_a_url_keep_the_primary_running() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-roll");
    // A pgrepl at a path every host sees (the hosts share this machine's other paths).
    let bin = wd.path.join("pgrepl");
    std::fs::copy(env!("CARGO_BIN_EXE_pgrepl"), &bin).unwrap();
    let f = deploy(&wd, "roll", "", &format!("agent_binary = \"{}\"\n", bin.display()));
    let pid = |h: &str| HaLab::inside(h, "head -1 /var/lib/postgresql/15/main/postmaster.pid").1;
    let before = pid("d");
    assert!(!before.is_empty());

    // Another build of pgrepl (the same program with bytes appended: another checksum).
    let next = wd.path.join("pgrepl.next");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.extend_from_slice(b"\npgrepl-test: another build\n");
    std::fs::write(&next, bytes).unwrap();
    std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&next, &bin).unwrap();

    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(err.matches("restarted pgrepl-roll-agent").count(), 5, "every agent restarted onto the new binary: {err}");
    let v = wait_view(&f, &wd, Duration::from_secs(30), "every agent back, resumed", |v| {
        v["paused"] == false && ["d", "e", "f", "g", "w"].iter().all(|n| member(v, n).is_some())
    });
    assert_eq!(v["leader"], "d", "no failover: {v:#}");
    assert_eq!(pid("d"), before, "the primary's server ran on through the agents' restart");
    let history = v["history"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(history, 0, "no promotion recorded: {v:#}");

    // Then from a URL (`agent_binary_url` + `agent_binary_sha256`): an HTTPS server inside
    // the witness's namespace serves a third build.
    let third = wd.path.join("www/pgrepl");
    std::fs::create_dir_all(third.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.extend_from_slice(b"\npgrepl-test: a build served over https\n");
    std::fs::write(&third, bytes).unwrap();
    let sha = sha256_of(&third);
    let server = HttpsServer::start(&wd, "10.213.8.25", 8443);
    let url = "https://10.213.8.25:8443/pgrepl";
    let stamp = |h: &str| HaLab::inside(h, "cat /var/lib/pgrepl/roll/run/agent.binary").1;
    let stamp_before = stamp("e");
    let up_with = |sum: &str| {
        std::fs::write(&f, HaLab::spec("roll", "", &format!("agent_binary_url = \"{url}\"\nagent_binary_sha256 = \"{sum}\"\n"))).unwrap();
        run(&f, &wd, &["up"])
    };
    let unchanged = |why: &str| {
        let v = wait_view(&f, &wd, Duration::from_secs(30), "the agents resumed", |v| v["paused"] == false);
        assert_eq!(v["leader"], "d", "{why}: {v:#}");
        assert_eq!(stamp("e"), stamp_before, "{why}: the agents run the binary they ran");
        assert_eq!(pid("d"), before, "{why}: the primary's server ran on");
    };
    // A server the hosts do not trust: curl refuses it, nothing changes.
    let (code, _, err) = up_with(&sha);
    assert_ne!(code, 0, "a download from an untrusted server must fail");
    assert!(err.contains(&format!("download {url}")), "the error names the download: {err}");
    unchanged("untrusted server");
    // The hosts trust the test CA (their own trust store, bind-mounted in their mount
    // namespaces), but the checksum given is not the file's: refused by field, removed.
    server.trust_on(&["d", "e", "f", "g", "w"]);
    let (code, _, err) = up_with(&"0".repeat(64));
    assert_ne!(code, 0);
    assert!(err.contains("agent_binary_sha256") && err.contains(&sha), "the error names the field and the file's checksum: {err}");
    let (_, left) = HaLab::inside("e", "ls /usr/local/lib/pgrepl/");
    assert!(!left.contains("pgrepl.new"), "the refused download was removed: {left}");
    unchanged("checksum refused");
    // The right checksum: every host downloads and checks it, every agent restarts onto it.
    let (code, out, err) = up_with(&sha);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(err.matches("restarted pgrepl-roll-agent").count(), 5, "every agent restarted onto the downloaded binary: {err}");
    for (h, ..) in HA_HOSTS {
        let (_, got) = HaLab::inside(h, "sha256sum /usr/local/lib/pgrepl/pgrepl");
        assert!(got.starts_with(&sha), "{h}: the downloaded binary is in place: {got}");
        assert!(stamp(h).contains(&sha), "{h}: its agent runs it: {}", stamp(h));
    }
    let v = wait_view(&f, &wd, Duration::from_secs(30), "every agent back, resumed", |v| {
        v["paused"] == false && ["d", "e", "f", "g", "w"].iter().all(|n| member(v, n).is_some())
    });
    assert_eq!(v["leader"], "d", "no failover: {v:#}");
    assert_eq!(pid("d"), before, "the primary's server ran on through the agents' restart");
    drop(server);
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// An HTTPS file server (Python's) inside a lab host's namespace, its certificate from a
/// CA made for the test; stopped by its PID on drop.
struct HttpsServer {
    child: std::process::Child,
    bundle: std::path::PathBuf,
}

impl HttpsServer {
    /// Serves `wd/www` on `addr:port` from inside the host that owns `addr` (the witness).
    fn start(wd: &WorkDir, addr: &str, port: u16) -> HttpsServer {
        let dir = wd.path.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("san.ext"), format!("subjectAltName=IP:{addr}\n")).unwrap();
        let script = "set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=pgrepl-test-ca
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj /CN=pgrepl-test-server
openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 -extfile san.ext
cat /etc/ssl/certs/ca-certificates.crt ca.crt > bundle.crt";
        let o = std::process::Command::new("sh").args(["-c", script]).current_dir(&dir).output().unwrap();
        assert!(o.status.success(), "openssl: {}", String::from_utf8_lossy(&o.stderr));
        let py = format!(
            "import http.server, ssl, functools\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory='{www}')\n\
             s = http.server.ThreadingHTTPServer(('{addr}', {port}), h)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain('{d}/srv.crt', '{d}/srv.key')\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             s.serve_forever()\n",
            www = wd.path.join("www").display(),
            d = dir.display()
        );
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let ns = HA_HOSTS.iter().find(|h| h.1 == addr).map(|h| format!("pgl-{}", h.0)).expect("a lab host's address");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "/usr/bin/python3", "-c", &py])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        loop {
            let (code, _) = HaLab::inside("w", &format!("curl -s -k -o /dev/null https://{addr}:{port}/"));
            if code == 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the HTTPS server did not answer: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        HttpsServer { child, bundle: dir.join("bundle.crt") }
    }

    /// The hosts trust the test CA: the system's bundle plus it, mounted over theirs in
    /// their own mount namespaces (gone with the lab).
    fn trust_on(&self, hosts: &[&str]) {
        for h in hosts {
            let (code, out) = HaLab::inside(h, &format!("mount --bind {} /etc/ssl/certs/ca-certificates.crt", self.bundle.display()));
            assert_eq!(code, 0, "{h}: {out}");
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `upgrade --minor` with the agents acting on the hosts (the plain layout, `pg_bin` moved
/// to a copy of the lab's 15 build): the nodes restart onto the copy, then the command
/// rolls every agent onto the rewritten cluster file as `up` does, binds the leader key to
/// the primary's new agent and resumes them: unpaused, every agent running and reporting,
/// the key on the writable node, no failover (the history holds the rolling restart's two
/// switchovers only).
#[test]
fn ha_minor_upgrade_on_hosts_rolls_the_agents_binds_the_key_and_resumes_them() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-minor");
    let bin = std::fs::canonicalize("/opt/pgrepl-lab/pg/15/bin").unwrap();
    let build = bin.parent().unwrap().to_path_buf();
    let spec = |bin: &std::path::Path| {
        HaLab::spec("hmin", &format!("pg_bin = \"{}\"\n", bin.display()), "").replace(
            "connect_timeout_secs = 3",
            "connect_timeout_secs = 3\nlayout = \"plain\"\ndata_root = \"/var/lib/postgresql/plainroot\"",
        )
    };
    let f = wd.path.join("hmin.toml");
    std::fs::write(&f, spec(&bin)).unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    let members = ["d", "e", "f", "g", "w"];
    wait_view(f, &wd, Duration::from_secs(30), "d leads, every member reports", |v| {
        v["leader"] == "d" && members.iter().all(|n| member(v, n).is_some())
    });

    const DATA: &str = "/var/lib/postgresql/plainroot/hmin/data";
    let postmaster = |h: &str| HaLab::inside(h, &format!("readlink /proc/$(head -1 {DATA}/postmaster.pid)/exe")).1;
    let writable = |h: &str, bin: &std::path::Path| {
        HaLab::inside(
            h,
            &format!(
                "timeout 3 runuser -u postgres -- {}/psql -X -A -t -h $(sed -n 5p {DATA}/postmaster.pid) -p $(sed -n 4p {DATA}/postmaster.pid) -d postgres -c 'SELECT NOT pg_is_in_recovery()'",
                bin.display()
            ),
        )
        .1
    };
    for h in ["d", "e", "f", "g"] {
        assert!(postmaster(h).starts_with(build.to_str().unwrap()), "{h} runs the lab's build first: {}", postmaster(h));
    }

    // A new build of the same major, where every host sees it; the cluster file names it.
    let new = wd.path.join("pg15-new");
    let st = std::process::Command::new("cp").arg("-a").arg(&build).arg(&new).status().unwrap();
    assert!(st.success());
    let new_bin = new.join("bin");
    std::fs::write(f, spec(&new_bin)).unwrap();
    let (code, out, err) = run(f, &wd, &["upgrade", "--minor"]);
    assert_eq!(code, 0, "upgrade --minor: {out}\n{err}");
    assert_eq!(err.matches("restarted pgrepl-hmin-agent").count(), 5, "every agent rolled onto the new cluster file: {err}");
    let all = format!("{out}\n{err}");
    assert!(all.contains("agents restarted on the new binaries"), "{all}");
    assert!(all.contains("the leader key bound to d's agent's lease") || all.contains("the leader key names d already"), "{all}");
    assert!(all.contains("were resumed"), "{all}");
    assert!(!all.contains("left paused"), "{all}");

    let v = wait_view(f, &wd, Duration::from_secs(30), "every agent back, resumed", |v| {
        v["paused"] == false && members.iter().all(|n| member(v, n).is_some())
    });
    assert_eq!(v["leader"], "d", "the key is on the primary: {v:#}");
    // The rolling restart's two switchovers (d to e and back), no failover.
    let moves = |v: &serde_json::Value| -> Vec<String> {
        v["history"].as_array().unwrap().iter().map(|h| format!("{}:{}->{}", h["kind"], h["from"], h["node"]).replace('"', "")).collect()
    };
    assert_eq!(moves(&v), ["switchover:d->e", "switchover:e->d"], "{v:#}");
    for (n, addr, _, _) in HA_HOSTS {
        let (code, _) = HaLab::ssh(addr, "! flock -n /var/lib/pgrepl/hmin/run/agent.pid true");
        assert_eq!(code, 0, "{n}: its agent runs");
    }
    for h in ["d", "e", "f", "g"] {
        assert!(postmaster(h).starts_with(new.to_str().unwrap()), "{h} runs the new build: {}", postmaster(h));
        assert_eq!(writable(h, &new_bin), if h == "d" { "t" } else { "f" }, "{h}: only d accepts writes");
    }
    // Settled: the agents, acting again, keep it so.
    std::thread::sleep(Duration::from_secs(5));
    let v = ha_view(f, &wd);
    assert_eq!(v["leader"], "d", "{v:#}");
    assert_eq!(moves(&v), ["switchover:d->e", "switchover:e->d"], "no failover: {v:#}");
    eprintln!("upgrade --minor said:\n{out}\n{err}");
    let _ = run(f, &wd, &["destroy", "--yes"]);
}
