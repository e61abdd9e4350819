//! The local provider end to end, against real servers of every lab major: up, verify,
//! status, down; `up` again changes nothing; a clone killed midway converges; bad input
//! leaves existing data alone.

use std::time::{Duration, Instant};

use crate::common::*;

/// up → replication checked independently (pg_stat_replication on the primary,
/// pg_stat_wal_receiver on the standbys) → verify → status → up again is a no-op →
/// down → status reports stopped → destroy.
async fn lifecycle(major: &str, bin_override: Option<&str>) {
    let (bin, client) = match bin_override {
        Some(b) => (std::path::PathBuf::from(b), std::path::PathBuf::from(b)),
        None => bins(major),
    };
    let wd = WorkDir::new(&format!("e2e-{major}")).with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("e2e", major, port, &wd.str(), "")).unwrap();
    let f = spec.to_str().unwrap();
    let binflags = ["--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let args = |cmd: &'static str| -> Vec<String> {
        let mut v: Vec<String> = vec![cmd.into(), "-f".into(), f.into()];
        v.extend(binflags.iter().map(|s| s.to_string()));
        v
    };
    let run = |cmd: &'static str, extra: &[&str]| {
        let mut a = args(cmd);
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        pgrepl_ok(&a)
    };

    let (code, out, err) = run("up", &["--output", "json"]);
    assert_eq!(code, 0, "up {major}: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!v["up"]["actions"].as_array().unwrap().is_empty());
    assert_eq!(v["status"]["problems"].as_array().unwrap().len(), 0, "{out}");

    // Independent check over the application path: TCP with a password.
    create_app_role(&client, &wd.path, "db1", port);
    let primary = connect(port).await;
    let rows = primary.query("SELECT application_name, state FROM pg_stat_replication ORDER BY 1", &[]).await.unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("db2".into(), "streaming".into()), ("db3".into(), "streaming".into())], "{major}");
    for (i, name) in ["db2", "db3"].iter().enumerate() {
        let standby = connect(port + 1 + i as u16).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status: String = loop {
            let s: Option<String> = standby.query_opt("SELECT status FROM pg_stat_wal_receiver", &[]).await.unwrap().map(|r| r.get(0));
            if s.as_deref() == Some("streaming") || Instant::now() > deadline {
                break s.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, "streaming", "{major} {name}");
        let in_recovery: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
        assert!(in_recovery, "{name} is a standby");
    }

    let (code, out, err) = run("verify", &[]);
    assert_eq!(code, 0, "verify {major}: {out}{err}");
    assert!(out.contains("db2        ok") && out.contains("db3        ok"), "{out}");

    let (code, out, _) = run("status", &["--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["role"], "primary");
    assert_eq!(nodes[0]["timeline"], 1);
    for n in &nodes[1..] {
        assert_eq!(n["role"], "standby");
        assert_eq!(n["streaming"], true);
        assert_eq!(n["slot_active"], true);
        assert!(n["lag_bytes"].as_u64().is_some());
    }
    assert!(s["connections"]["read_write"].as_str().unwrap().contains("target_session_attrs=read-write"));

    // A second up changes nothing and says so.
    let (code, out, err) = run("up", &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["up"]["actions"].as_array().unwrap().len(), 0, "second up changed things: {out}");
    let (_, text, _) = run("up", &[]);
    assert!(text.contains("nothing to do"), "{text}");

    drop(primary);
    let (code, out, err) = run("down", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped: db1, db2, db3"), "{out}");
    let (code, out, _) = run("status", &[]);
    assert_eq!(code, 1, "status exits 1 when nodes are down");
    assert!(out.contains("problem: db1: stopped"), "{out}");

    let (code, _, err) = run("destroy", &["--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(!wd.path.join("db1").exists());
}

macro_rules! lifecycle_tests {
    ($($name:ident => $major:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            lifecycle($major, None).await;
        }
    )*};
}

lifecycle_tests! {
    local_lifecycle_pg10 => "10",
    local_lifecycle_pg11 => "11",
    local_lifecycle_pg12 => "12",
    local_lifecycle_pg13 => "13",
    local_lifecycle_pg14 => "14",
    local_lifecycle_pg15 => "15",
    local_lifecycle_pg16 => "16",
    local_lifecycle_pg17 => "17",
    local_lifecycle_pg18 => "18",
}

/// Debian's own PostgreSQL 15 build (its binaries, its libpq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_lifecycle_debian_pg15() {
    assert!(
        std::path::Path::new("/usr/lib/postgresql/15/bin/postgres").exists(),
        "Debian's postgresql-15 is missing: run scripts/lab/install.sh"
    );
    lifecycle("15", Some("/usr/lib/postgresql/15/bin")).await;
}

/// A standby whose pg_basebackup is killed midway: the next `up` sees pgrepl's
/// unfinished-clone marker, re-clones, and converges; the primary's data is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clone_converges() {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("killed-clone").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("kc", "16", port, &wd.str(), "")).unwrap();
    let f = spec.to_str().unwrap().to_string();
    let base = ["-f", f.as_str(), "--pg-bin", bin.to_str().unwrap()];
    let (code, _, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{err}");
    // Enough data that a base backup takes a while.
    psql(&client, &wd.path, "db1", port, "CREATE TABLE big AS SELECT g, repeat('x', 2000) AS pad FROM generate_series(1, 150000) g");
    let rows_before = psql(&client, &wd.path, "db1", port, "SELECT count(*), sum(g) FROM big");
    // Take db2 away (the test's own servers and files), so that up clones it again.
    let db2 = wd.path.join("db2");
    let stop = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(db2.join("data"))
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    std::fs::remove_dir_all(db2.join("data")).unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args([&["up"][..], &base[..]].concat())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the clone is under way (marker present, data arriving), then kill
    // pgrepl and the pg_basebackup it started (found by its data directory, our own path).
    let marker = db2.join("pgrepl/clone-in-progress");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = marker.exists() && db2.join("data/base").exists();
        if started || Instant::now() > deadline {
            assert!(started, "the clone never started");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let target = format!("--pgdata={}", db2.join("data").display());
    let mut killed = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("pg_basebackup") && cmd.contains(&target) {
            std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            killed += 1;
        }
    }
    assert!(killed > 0 || !db2.join("data/standby.signal").exists(), "the clone finished before it could be killed; make the data bigger");
    assert!(marker.exists(), "the marker of the unfinished clone stays");

    let (code, out, err) = pgrepl_ok(&[&["up", "--output", "json"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actions = v["up"]["actions"].to_string();
    assert!(actions.contains("clone from db1"), "re-cloned: {actions}");
    assert!(!marker.exists());
    assert_eq!(v["status"]["problems"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(psql(&client, &wd.path, "db1", port, "SELECT count(*), sum(g) FROM big"), rows_before, "primary data untouched");
    assert_eq!(psql(&client, &wd.path, "db2", port + 1, "SELECT count(*), sum(g) FROM big"), rows_before, "standby has it all");
    let (code, out, _) = pgrepl_ok(&[&["verify"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// A port already in use: a clear error naming node and port, and nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_refused_before_any_change() {
    let (bin, _) = bins("16");
    let wd = WorkDir::new("port-busy").with_bin(&bin);
    let port = free_ports(3);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("busy", "16", port, &wd.str(), "")).unwrap();
    let (code, _, err) = pgrepl_ok(&["up", "-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("db2: port {} on 127.0.0.1 is already in use", port + 1)), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!wd.path.join("db1/data").exists(), "no data directory was created");
}

/// A standby data directory that holds a non-standby cluster (e.g. a former primary) is
/// never overwritten: up refuses and names the node and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_cluster_in_standby_dir_is_refused() {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("foreign").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("fx", "16", port, &wd.str(), "")).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap()];
    assert_eq!(pgrepl_ok(&[&["up"][..], &base[..]].concat()).0, 0);
    // Make db2 look like a diverged former primary: promote it and write there.
    psql(&client, &wd.path, "db2", port + 1, "SELECT pg_promote(true, 60)");
    psql(&client, &wd.path, "db2", port + 1, "CREATE TABLE mine AS SELECT 1 AS x");
    let (code, _, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 3, "refused: {err}");
    assert!(err.contains("db2: the spec makes it a standby but it runs as a primary"), "{err}");
    assert_eq!(psql(&client, &wd.path, "db2", port + 1, "SELECT count(*) FROM mine"), "1", "its data is untouched");
    // Stopped, it is still refused (no standby.signal): never wiped.
    let _ = pgrepl_ok(&[&["down"][..], &base[..]].concat());
    let (code, _, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("holds a cluster that is not a standby"), "{err}");
    assert!(wd.path.join("db2/data/PG_VERSION").exists());
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// Synchronous replication from the spec bootstraps (pgrepl's own writes commit locally
/// while no standby exists yet) and status reports the sync states.
/// Regression: the first `up` of a sync cluster hung creating the replication role.
async fn sync_bootstrap(major: &str, sync: &str, expect: &[&str]) {
    let (bin, client) = bins(major);
    let wd = WorkDir::new(&format!("sync-{major}")).with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("sy", major, port, &wd.str(), &format!("[replication]\nsync = {sync}\n"))).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let (code, out, err) = pgrepl_ok(&[&["up", "--output", "json"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut states: Vec<String> =
        v["status"]["nodes"].as_array().unwrap()[1..].iter().map(|n| n["sync_state"].as_str().unwrap_or("").to_string()).collect();
    states.sort();
    assert_eq!(states, expect, "{out}");
    // A write commits (a sync standby confirms it) and reaches both standbys.
    let (code, out, _) = pgrepl_ok(&[&["verify"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_first_bootstraps_pg11() {
    sync_bootstrap("11", "{ mode = \"first\", count = 1 }", &["potential", "sync"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_any_bootstraps_pg17() {
    sync_bootstrap("17", "{ mode = \"any\", count = 1, commit = \"remote_apply\" }", &["quorum", "quorum"]).await;
}
