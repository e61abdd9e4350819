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

/// WAL archiving into a directory whose path holds a space and a quote: the quoted
/// archive_command is accepted by the server, and a switched WAL segment lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_into_a_directory_with_a_space() {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("archive-space").with_bin(&bin);
    let port = free_ports(3);
    let archive = wd.path.join("wal archive").join("it's here");
    let spec = wd.path.join("pgrepl.toml");
    let extra = format!("[archive]\nmode = \"dir\"\npath = \"{}\"\n", archive.display());
    std::fs::write(&spec, local_spec("arch", "16", port, &wd.str(), &extra)).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let command = psql(&client, &wd.path, "db1", port, "SHOW archive_command");
    assert!(command.contains("'") && command.contains("wal archive"), "{command}");
    psql(&client, &wd.path, "db1", port, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let segment = psql(&client, &wd.path, "db1", port, "SELECT pg_walfile_name(pg_switch_wal())");
    assert_eq!(segment.len(), 24, "{segment}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(&segment).is_file() {
        let failed =
            psql(&client, &wd.path, "db1", port, "SELECT failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver");
        assert!(Instant::now() < deadline, "{segment} never reached {} (archiver: {failed})", archive.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(psql(&client, &wd.path, "db1", port, "SELECT failed_count FROM pg_stat_archiver"), "0");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// `up` of a running cluster from where its replication password is missing (the state
/// directory's `replication` file moved away) is refused (exit 3) naming that file, and
/// changes nothing: the role's password, the passfiles and replication are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_without_the_replication_password_is_refused() {
    let (bin, client) = bins("16");
    let wd = WorkDir::new("no-password").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("nopw", "16", port, &wd.str(), "")).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let role = "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'";
    let hash = psql(&client, &wd.path, "db1", port, role);
    assert!(hash.starts_with("SCRAM-SHA-256$"), "{hash}");
    let passfiles = || ["db1", "db2", "db3"].map(|n| std::fs::read(wd.path.join(n).join("pgrepl/pgpass")).unwrap());
    let before = passfiles();

    let stored = wd.path.join("secrets/replication");
    let moved = wd.path.join("replication.moved");
    std::fs::rename(&stored, &moved).unwrap();
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 3, "refused: {out}\n{err}");
    assert!(err.contains(&stored.display().to_string()) && err.contains("0600") && err.contains("replication.password_file"), "{err}");
    assert!(!stored.exists(), "no new password was stored");
    assert_eq!(psql(&client, &wd.path, "db1", port, role), hash, "the role's password is untouched");
    assert!(passfiles() == before, "the passfiles are untouched");
    let streaming = psql(
        &client,
        &wd.path,
        "db1",
        port,
        "SELECT string_agg(application_name || ' ' || state, ',' ORDER BY application_name) FROM pg_stat_replication",
    );
    assert_eq!(streaming, "db2 streaming,db3 streaming");

    // With the file brought back, up is whole again and changes nothing.
    std::fs::rename(&moved, &stored).unwrap();
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing to do"), "{out}");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// "Is it running" on a systemd layout (built as detection builds Debian's with systemd, but
/// on a local data directory): a server started outside systemd (pg_ctl by hand) runs, though
/// `systemctl is-active` says otherwise (here systemctl is absent or has no systemd to ask).
/// The pid file decides with the process it names: a stale pid file naming another program,
/// another cluster's postmaster or a killed, unreaped postgres is no running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_server_state_on_a_systemd_layout_started_by_hand() {
    use pgrepl_core::deploy::{ServerState, is_running, server_state};
    use pgrepl_core::hosts::HostFacts;
    use pgrepl_core::layout::ServiceControl;
    use pgrepl_core::provider::NodeHandle;
    use std::process::Command;

    let (bin, _) = bins("15");
    let wd = WorkDir::new("state-systemd").with_bin(&bin);
    let port = free_ports(1);
    let node = wd.path.join("db1");
    let (data, run) = (node.join("data"), node.join("run"));
    std::fs::create_dir_all(&run).unwrap();
    let o = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&node).output().unwrap();
    assert!(o.status.success());
    let as_postgres = |tool: &str, args: &[&str]| {
        let o = Command::new("runuser").args(["-u", "postgres", "--"]).arg(bin.join(tool)).args(args).output().unwrap();
        assert!(o.status.success(), "{tool} {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    };
    as_postgres("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync"]);

    let mut layout = HostFacts::parse("ID=debian\nSYSTEMD=1\nPGBIN=/usr/lib/postgresql/15/bin\nPGCTLCLUSTER=1\n")
        .layout(pgrepl_core::PgMajor::V15, &node.join("pgrepl").to_string_lossy())
        .unwrap();
    assert_eq!(layout.service, ServiceControl::Systemd { unit: "postgresql@15-main".into() });
    layout.service = ServiceControl::Systemd { unit: format!("postgresql@15-pgrepltest{port}") };
    layout.data_dir = data.to_string_lossy().into_owned();
    layout.config_dir = layout.data_dir.clone();
    layout.socket_dir = run.to_string_lossy().into_owned();
    let h = NodeHandle {
        name: "db1".into(),
        transport: std::sync::Arc::new(pgrepl_core::local::LocalTransport),
        layout: layout.clone(),
        install_script: None,
    };
    assert_eq!(server_state(&h).await.unwrap(), ServerState::Stopped, "initdb only");

    // Started by hand, outside systemd.
    let opts = format!("-p {port} -k {} -c listen_addresses=''", run.display());
    let log = node.join("server.log");
    as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
    assert!(is_running(&h).await.unwrap(), "a postmaster runs on the data directory though systemd does not know it");
    assert_eq!(server_state(&h).await.unwrap(), ServerState::Running);

    // A pid file in another data directory naming... (not under <node>/data, whose pid files
    // WorkDir's cleanup signals)
    let fake = wd.path.join("fake").join("pgdata");
    std::fs::create_dir_all(&fake).unwrap();
    let fake_h = NodeHandle {
        layout: pgrepl_core::layout::NodeLayout { data_dir: fake.to_string_lossy().into_owned(), ..layout.clone() },
        ..h.clone()
    };
    let pidfile = |pid: u32| {
        std::fs::write(fake.join("postmaster.pid"), format!("{pid}\n{}\n1700000000\n{port}\n\n\n0 0\nready   \n", fake.display())).unwrap()
    };
    // ... another cluster's live postmaster (its own data directory),
    let postmaster: u32 = std::fs::read_to_string(data.join("postmaster.pid")).unwrap().lines().next().unwrap().parse().unwrap();
    pidfile(postmaster);
    assert_eq!(server_state(&fake_h).await.unwrap(), ServerState::Stopped, "another data directory's postmaster");
    // ... another program (a recycled pid),
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    pidfile(sleeper.id());
    let other = server_state(&fake_h).await;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(other.unwrap(), ServerState::Stopped, "a pid that is now another program");
    // ... a postgres killed and not reaped yet (a zombie; here `postgres -V` left unwaited,
    // in that data directory).
    let mut zombie = Command::new(bin.join("postgres")).arg("-V").current_dir(&fake).stdout(std::process::Stdio::null()).spawn().unwrap();
    let zpid = zombie.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{zpid}/status")).unwrap_or_default().contains("State:\tZ") {
        assert!(Instant::now() < deadline, "postgres -V never exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    pidfile(zpid);
    let z = server_state(&fake_h).await;
    let _ = zombie.wait();
    assert_eq!(z.unwrap(), ServerState::Stopped, "a zombie runs nothing");
    // No pid file at all.
    std::fs::remove_file(fake.join("postmaster.pid")).unwrap();
    assert_eq!(server_state(&fake_h).await.unwrap(), ServerState::Stopped, "no pid file");

    as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "-t", "60", "stop"]);
    assert!(!is_running(&h).await.unwrap(), "stopped by hand");
}

/// The server's OS user swaps a configuration file pgrepl merges into (postgresql.conf)
/// for a symbolic link to a file only root can read: `up` must not copy that file's text
/// into a file the server's user owns (it reads what it merges as that user, and fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_config_file_is_not_read_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let (bin, client) = bins("16");
    let wd = WorkDir::new("conf-link").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("cl", "16", port, &wd.str(), "")).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let secret = wd.path.join("root-only");
    std::fs::write(&secret, "root-only-text-7f3a\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = wd.path.join("db1/data/postgresql.conf");
    let saved = wd.path.join("postgresql.conf.saved");
    std::fs::rename(&conf, &saved).unwrap();
    std::os::unix::fs::symlink(&secret, &conf).unwrap();
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("postgresql.conf"), "{err}");
    for n in ["db1", "db2", "db3"] {
        for e in std::fs::read_dir(wd.path.join(n).join("data")).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                let text = std::fs::read(e.path()).unwrap();
                assert!(
                    !String::from_utf8_lossy(&text).contains("root-only-text-7f3a"),
                    "root's text was copied into {}",
                    e.path().display()
                );
            }
        }
    }
    assert!(std::fs::symlink_metadata(&conf).unwrap().file_type().is_symlink(), "the link is left for the operator to see");
    std::fs::remove_file(&conf).unwrap();
    std::fs::rename(&saved, &conf).unwrap();
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// Dry runs on a real cluster, through the CLI (`up`'s before it exists too): each prints its plan (text and JSON) and
/// touches nothing; a refused operation is refused the same way; the real switchover then
/// carries out its plan and reports every step done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_show_the_plan_and_touch_nothing() {
    let (bin, client) = bins("15");
    let wd = WorkDir::new("dry-runs").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("dry", "15", port, &wd.str(), "")).unwrap();
    let f = spec.to_str().unwrap().to_string();
    let base = ["-f", f.as_str(), "--pg-bin", bin.to_str().unwrap()];
    let run = |args: &[&str]| pgrepl_ok(&[args, &base[..]].concat());
    let recovery = |node: &str| {
        let i = ["db1", "db2", "db3"].iter().position(|n| *n == node).unwrap() as u16;
        psql(&client, &wd.path, node, port + i, "SELECT pg_is_in_recovery()")
    };

    // Before anything exists: up's plan initialises db1 and clones the standbys.
    let (code, out, err) = run(&["up", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("initdb") && out.contains("clone from db1"), "{out}");
    assert!(!wd.path.join("db1/data/PG_VERSION").exists(), "a dry run creates nothing");
    assert_eq!(run(&["up"]).0, 0);
    let (code, out, _) = run(&["up", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    // A switchover's plan, in JSON: steps with guards, one point of no return; nothing moved.
    let (code, out, err) = run(&["switchover", "--to", "db2", "--dry-run", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.iter().filter(|s| s["commits"] == true).count(), 1, "{out}");
    assert!(steps.iter().any(|s| s["action"]["kind"] == "promote" && s["node"] == "db2" && !s["guards"].as_array().unwrap().is_empty()));
    assert_eq!((recovery("db1"), recovery("db2")), ("f".to_string(), "t".to_string()), "nothing moved");
    // Rejoin of a streaming standby: nothing to do. Failover while db1 runs: refused, exit 3.
    let (code, out, _) = run(&["rejoin", "db3", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    let (code, out, err) = run(&["failover", "--dry-run"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("db1 accepts writes"), "{err}");

    // The real switchover: every step of its plan done.
    let (code, out, err) = run(&["switchover", "--to", "db2", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["steps"].as_array().unwrap().iter().all(|s| s["outcome"] == "done"), "{out}");
    assert_eq!((recovery("db1"), recovery("db2")), ("t".to_string(), "f".to_string()));
    let _ = run(&["destroy", "--yes"]);
}
