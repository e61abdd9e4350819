//! `[ha]` on hosts reached over SSH, on the 5-host lab across locations
//! (`PGREPL_NETNS_SET=ha scripts/lab/netns.sh`: d, e "east"; f, g "west"; the witness w
//! "third"): pgrepl deploys etcd (TLS, client certificates) and its agents there, the
//! agents fail over with no command when a host vanishes, and bring it back by itself.

use std::time::{Duration, Instant};

use pgrepl_core::store::ConsensusStore;

use crate::common::*;

fn run(f: &str, wd: &WorkDir, args: &[&str]) -> (i32, String, String) {
    let mut a = vec![args[0], "-f", f, "--work-dir", wd.path.to_str().unwrap()];
    a.extend(&args[1..]);
    pgrepl_ok(&a)
}

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
/// reports again and its server never accepts writes → destroy removes etcd and the
/// agents.
#[test]
fn ha_on_ssh_hosts_deploys_etcd_and_agents_and_fails_over_within_the_location() {
    let _lab = HaLab::up();
    let wd = WorkDir::new("ha-hosts");
    let f = wd.path.join("geo.toml");
    std::fs::write(&f, HaLab::spec("geo", "[replication.sync]\nmode = \"any\"\ncount = 1\n")).unwrap();
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
    for (n, addr, _, role) in HA_HOSTS {
        let (_, sum) = HaLab::ssh(addr, "sha256sum /usr/local/lib/pgrepl/pgrepl | cut -d' ' -f1");
        assert_eq!(sum, local, "{n}: the binary uploaded");
        let (_, modes) = HaLab::ssh(addr, "stat -c '%a %n' /etc/pgrepl/geo/etcd/member.key /etc/pgrepl/geo/etcd/etcd.yml");
        assert!(modes.lines().all(|l| l.starts_with("600 ")), "{n}: {modes}");
        let (code, _) = HaLab::ssh(addr, "! flock -n /var/lib/pgrepl/geo/run/etcd.pid true");
        assert_eq!(code, 0, "{n}: its etcd member runs");
        let (code, _) = HaLab::ssh(addr, "! flock -n /var/lib/pgrepl/geo/run/agent.pid true");
        assert_eq!(code, i32::from(role == "witness"), "{n}: an agent runs on every data node, none on the witness");
    }
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

    // The host back (its sshd again, then up): its agent reports again, and the old
    // primary stays out of the way: never writable while e leads.
    HaLab::ensure_up();
    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v = wait_view(f, &wd, Duration::from_secs(60), "d's agent reports again", |v| member(v, "d").is_some());
    assert_eq!(v["leader"], "e", "{v:#}");
    assert_ne!(member(&v, "d").unwrap()["role"], "primary", "{v:#}");
    let (_, w) = HaLab::ssh("10.213.8.21", "runuser -u postgres -- psql -X -A -t -c 'SELECT pg_is_in_recovery()' 2>&1 || true");
    assert!(
        w == "t" || w.contains("No such file") || w.contains("could not connect") || w.contains("failed"),
        "d must not accept writes: {w}"
    );

    let (code, out, err) = run(f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (n, addr, _, _) in HA_HOSTS {
        let (_, left) =
            HaLab::ssh(addr, "ls /etc/pgrepl /var/lib/pgrepl 2>/dev/null; pgrep -fc 'pgrepl (agent|supervise)|etcd --config-file' || true");
        assert_eq!(left, "0", "{n}: destroy left {left}");
    }
}
