//! The operation lock's tests: local flock, host locks with leases, their holders.

//! Real locks: flock on real files, the host script through [`LocalTransport`] with
//! one directory per "host", a second process (this test binary again) as the other
//! holder, killed with SIGKILL to play an admin machine that dies.

use super::*;
use crate::cluster::{Cluster, Node};
use crate::hosts::ExistingHosts;
use crate::layout::{Binaries, NodeLayout};
use crate::local::LocalTransport;
use crate::provider::{Connector, Host, NodeHandle};
use crate::{ClusterSpec, PgMajor};
use async_trait::async_trait;
use tokio::io::AsyncBufReadExt;

/// Hosts on this machine reached through [`LocalTransport`]; `down` cannot be reached.
#[derive(Debug)]
struct LocalHosts {
    down: Vec<String>,
}

#[async_trait]
impl Connector for LocalHosts {
    async fn connect(&self, _: &Cluster, node: &Node, _: &Host) -> Result<NodeHandle, Error> {
        if self.down.contains(&node.name) {
            return Err(Error::node(&node.name, "no route to host"));
        }
        Ok(NodeHandle {
            name: node.name.clone(),
            transport: Arc::new(LocalTransport),
            layout: NodeLayout::local("/nonexistent", &node.name, &Binaries::assumed(PgMajor::V16), "postgres"),
            install_script: None,
        })
    }
}

fn cluster(name: &str) -> Cluster {
    ClusterSpec::from_toml(&format!(
        "name = \"{name}\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
    ))
    .unwrap()
    .validate_for(PgMajor::V16)
    .unwrap()
}

/// A deployment of a 3-node cluster: `host_dir: None` is the local provider's case
/// (flock only), `Some` locks on the "hosts" too, under that directory.
fn deployment(name: &str, state: &Path, host_dir: Option<&Path>, down: &[&str], lease: u64, renew: Duration) -> Deployment {
    let d = Deployment::new(
        cluster(name),
        Arc::new(ExistingHosts),
        Arc::new(LocalHosts { down: down.iter().map(|s| s.to_string()).collect() }),
        state,
    );
    let opts = LockOptions {
        lease: Duration::from_secs(lease),
        renew_every: renew,
        host_dir: host_dir.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        ..LockOptions::default()
    };
    let d = d.with_lock_options(opts);
    if host_dir.is_some() { d } else { d.with_local_ports() }
}

fn locked_text(r: Result<OperationLock, Error>) -> String {
    match r {
        Err(e @ Error::Locked { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Locked, got {e}"),
        Ok(l) => panic!("expected Error::Locked, got the lock for {}", l.holder()),
    }
}

fn tombstones(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("oplock.broken.")).count())
        .unwrap_or(0)
}

/// Sets a lock directory's mtime `secs` in the past (a holder that stopped renewing).
fn age_lock(dir: &Path, secs: u64) {
    let st = std::process::Command::new("touch").args(["-d", &format!("@{}", unix_now() - secs)]).arg(dir.join("oplock")).status().unwrap();
    assert!(st.success());
}

/// This test binary again, running [`child_holder`]: another process that takes the
/// lock and holds it until it is killed (at most 60 s).
struct Child {
    child: tokio::process::Child,
    pid: u32,
}

impl Child {
    async fn start(state: &Path, host_dir: Option<&Path>) -> Child {
        let arg = format!("{}|{}", state.display(), host_dir.map(|p| p.display().to_string()).unwrap_or_default());
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["oplock::tests::child_holder", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("PGREPL_OPLOCK_CHILD", arg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let holding = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("HOLDING ") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(holding, Ok(true)), "the child process did not take the lock");
        Child { child, pid }
    }

    /// SIGKILL: no release, no renewal, as when an admin machine dies.
    async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }
}

#[tokio::test]
#[ignore = "the other process of the tests below (run by them)"]
async fn child_holder() {
    let Ok(arg) = std::env::var("PGREPL_OPLOCK_CHILD") else { return };
    let (state, hosts) = arg.split_once('|').unwrap();
    let host_dir = (!hosts.is_empty()).then(|| PathBuf::from(hosts));
    let d = deployment("oplock-t", Path::new(state), host_dir.as_deref(), &[], 2, Duration::from_millis(300));
    let lock = d.lock_operation("child-failover", Duration::from_secs(10)).await.unwrap();
    println!("HOLDING {}", std::process::id());
    tokio::time::sleep(Duration::from_secs(60)).await;
    lock.release().await;
}

#[tokio::test]
async fn local_lock_waits_for_the_holder_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
    let a = d.lock_operation("failover", Duration::ZERO).await.unwrap();
    assert!(a.hosts().is_empty(), "the local provider locks on this machine only");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);

    let t0 = Instant::now();
    let e = locked_text(d.lock_operation("switchover", Duration::from_millis(300)).await);
    assert!(t0.elapsed() >= Duration::from_millis(300), "it waited");
    assert!(e.contains("held on this machine by failover") && e.contains(&format!("pid {}", std::process::id())), "{e}");

    // A waiter gets it once the holder releases.
    let d2 = d.clone();
    let waiter = tokio::spawn(async move {
        let t0 = Instant::now();
        (d2.lock_operation("switchover", Duration::from_secs(20)).await, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the second locker waits while the first holds");
    a.release().await;
    let (b, waited) = waiter.await.unwrap();
    let b = b.unwrap();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    let record: LockHolder = serde_json::from_slice(&std::fs::read(state.join("oplock")).unwrap()).unwrap();
    assert_eq!(record.operation, "switchover");
    assert_eq!(record.lease_secs, None);

    // Dropped without release: released at once.
    drop(b);
    d.lock_operation("rejoin", Duration::ZERO).await.unwrap().release().await;
}

/// `destroy` removes the lock file while it holds it: a waiter that locked the removed
/// file must not count as holding the lock.
#[tokio::test]
async fn local_lock_file_removed_while_held_is_not_a_second_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let path = state.join("oplock");
    let a = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY).lock_operation("destroy", Duration::ZERO).await.unwrap();
    // A waiter that opened the file before it was removed.
    let stale = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    a.remove_local_file();
    drop(a);
    rustix::fs::flock(&stale, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    assert!(matches!(try_flock(&path).unwrap(), TryLocal::Got(_)), "the path's new file is free: the stale one is not the lock");
    // The same check in the acquisition path.
    std::fs::write(&path, b"").unwrap();
    let old = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"").unwrap();
    drop(old);
    assert!(matches!(try_flock(&path).unwrap(), TryLocal::Got(_)));
}

/// Refused in the moment between the holder's flock and its record: the refusal
/// still names the holder (not an empty or a stale record).
#[tokio::test]
async fn a_refusal_waits_for_the_holders_record() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let path = state.join("oplock");
    // A stale record of a process that is gone, then a holder that has not written yet.
    let mut gone = LockHolder::this_process("stale-op", None);
    gone.pid = u32::MAX - 1;
    std::fs::write(&path, serde_json::to_vec(&gone).unwrap()).unwrap();
    let TryLocal::Got(f) = try_flock(&path).unwrap() else { panic!("free") };
    let late = LockHolder::this_process("late-writer", None);
    let body = serde_json::to_vec(&late).unwrap();
    let writer = tokio::spawn(async move {
        // Well inside the refusal's second of reading again, even on a loaded machine.
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.set_len(0).unwrap();
        f.write_all_at(&body, 0).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(f);
    });
    let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
    let e = locked_text(d.lock_operation("failover", Duration::ZERO).await);
    assert!(e.contains("held on this machine by late-writer") && !e.contains("stale-op"), "{e}");
    writer.await.unwrap();
    // Released: the record is cleared with it.
    d.lock_operation("failover", Duration::ZERO).await.unwrap().release().await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn local_lock_of_another_process_and_its_death() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let child = Child::start(&state, None).await;
    let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
    let e = locked_text(d.lock_operation("failover", Duration::from_millis(300)).await);
    assert!(e.contains("child-failover") && e.contains(&format!("pid {}", child.pid)), "{e}");
    // The kernel releases a dead process's flock.
    child.kill9().await;
    d.lock_operation("failover", Duration::from_secs(10)).await.unwrap().release().await;
}

#[tokio::test]
async fn host_lock_on_a_majority_refuses_others_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    // Two admin machines: their own state directories, the same hosts.
    let a = deployment("oplock-t", &tmp.path().join("admin-a"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let b = deployment("oplock-t", &tmp.path().join("admin-b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
    assert_eq!(la.hosts(), ["db1", "db2", "db3"]);
    la.check().unwrap();
    for n in ["db1", "db2", "db3"] {
        let rec: LockHolder =
            serde_json::from_slice(&std::fs::read(hosts.join("oplock-t").join(n).join("oplock/holder")).unwrap()).unwrap();
        assert_eq!(rec, *la.holder());
        assert_eq!(rec.lease_secs, Some(60));
    }
    let e = locked_text(b.lock_operation("switchover", Duration::from_millis(400)).await);
    assert!(e.contains("held by failover") && e.contains("on db1, db2,") && e.contains("until"), "{e}");

    let waiter = tokio::spawn(async move { b.lock_operation("switchover", Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!waiter.is_finished());
    la.release().await;
    let lb = waiter.await.unwrap().unwrap();
    assert_eq!(lb.hosts(), ["db1", "db2", "db3"]);
    // Dropped without release (an operation that failed): released by a task.
    drop(lb);
    finish_releases(Duration::from_secs(20)).await;
    for n in ["db1", "db2", "db3"] {
        assert!(!hosts.join("oplock-t").join(n).join("oplock").exists(), "{n} released");
    }
    a.lock_operation("up", Duration::ZERO).await.unwrap().release().await;
}

#[tokio::test]
async fn unreachable_hosts_count_as_not_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    // The dead primary's host does not answer: 2 of 3 is a majority.
    let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &["db1"], 60, DEFAULT_RENEW_EVERY);
    let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
    assert_eq!(la.hosts(), ["db2", "db3"]);
    // Another admin machine that reaches every host gets only db1: refused.
    let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let e = locked_text(b.lock_operation("failover", Duration::ZERO).await);
    assert!(e.contains("on db2, db3"), "{e}");
    assert!(!hosts.join("oplock-t/db1/oplock").exists(), "what b took on db1 was given back");
    la.release().await;
    // Two of three unreachable: no majority, and the message says why.
    let c = deployment("oplock-t", &tmp.path().join("c"), Some(&hosts), &["db1", "db2"], 60, DEFAULT_RENEW_EVERY);
    let e = locked_text(c.lock_operation("failover", Duration::from_millis(500)).await);
    assert!(e.contains("only 1 of 3 hosts could be locked (2 needed)") && e.contains("db1: ") && e.contains("no route to host"), "{e}");
    assert!(!hosts.join("oplock-t/db3/oplock").exists(), "db3 given back");

    // A host whose lock directory cannot be made counts as not taken too.
    let t: Arc<dyn Transport> = Arc::new(LocalTransport);
    let h = |node: &str, root: String| LockHost { node: node.into(), root, transport: Ok(t.clone()) };
    let set = vec![
        h("db1", tmp.path().join("x1").display().to_string()),
        h("db2", "/proc/pgrepl-cannot-exist/db2".into()),
        h("db3", tmp.path().join("x3").display().to_string()),
    ];
    let holder = LockHolder::this_process("failover", Some(60));
    let now = Instant::now();
    let l = HostLock::acquire("oplock-t", set, &holder, &LockOptions::default(), now, now).await.unwrap();
    assert_eq!(l.taken_nodes(), ["db1", "db3"]);
    l.release().await;
}

/// Several takers find an expired lock at once: exactly one breaks it.
#[tokio::test]
async fn an_expired_lock_is_broken_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("h").display().to_string();
    let dead = LockHolder::this_process("failover", Some(2));
    assert_eq!(acquire_on_host(&LocalTransport, &root, &dead, 2).await.unwrap(), HostAnswer::Taken { broke: false });
    // Not expired yet: held.
    let other = LockHolder::this_process("switchover", Some(2));
    let a = acquire_on_host(&LocalTransport, &root, &other, 2).await.unwrap();
    assert!(matches!(&a, HostAnswer::Held { lease: 2, holder: Some(h), .. } if *h == dead), "{a:?}");
    age_lock(Path::new(&root), 10);
    let takers: Vec<LockHolder> = (0..8).map(|_| LockHolder::this_process("failover", Some(60))).collect();
    let root = &root;
    let answers = join_all(takers.iter().map(|h| async move { acquire_on_host(&LocalTransport, root, h, 60).await.unwrap() })).await;
    let winners: Vec<usize> = (0..8).filter(|i| answers[*i] == HostAnswer::Taken { broke: true }).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert!(answers.iter().filter(|a| matches!(a, HostAnswer::Held { .. })).count() == 7, "{answers:?}");
    assert_eq!(tombstones(Path::new(&root)), 1);
    let token = std::fs::read_to_string(Path::new(&root).join("oplock/token")).unwrap();
    assert_eq!(token.trim(), takers[winners[0]].token);

    // The same race between two admin machines on three hosts.
    let hosts = tmp.path().join("hosts");
    let old = deployment("oplock-t", &tmp.path().join("old"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    // Its holder dies: no more renewal, no release.
    let mut dead = old.lock_operation("failover", Duration::ZERO).await.unwrap();
    let h = dead.hosts.take().unwrap();
    h.stop_renewing();
    drop((h, dead));
    for n in ["db1", "db2", "db3"] {
        age_lock(&hosts.join("oplock-t").join(n), 120);
    }
    let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let (ra, rb) = tokio::join!(a.lock_operation("failover", Duration::ZERO), b.lock_operation("failover", Duration::ZERO));
    assert!(ra.is_ok() != rb.is_ok(), "exactly one of two racing takers gets it: {:?} / {:?}", ra.as_ref().err(), rb.as_ref().err());
    for n in ["db1", "db2", "db3"] {
        assert_eq!(tombstones(&hosts.join("oplock-t").join(n)), 1, "{n}");
    }
    for r in [ra, rb].into_iter().flatten() {
        r.release().await;
    }
}

/// An admin process that dies holding the host lock: renewed while it lived, broken
/// once its lease ran out.
#[tokio::test]
async fn a_dead_holders_host_lock_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    let child = Child::start(&tmp.path().join("dead-admin"), Some(&hosts)).await;
    let d = deployment("oplock-t", &tmp.path().join("admin"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    // Longer than its 2 s lease: it renews while it lives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = locked_text(d.lock_operation("failover", Duration::ZERO).await);
    assert!(e.contains("child-failover") && e.contains(&format!("pid {}", child.pid)) && e.contains("on db1, db2"), "{e}");
    child.kill9().await;
    let t0 = Instant::now();
    let l = d.lock_operation("failover", Duration::from_secs(20)).await.unwrap();
    let waited = t0.elapsed();
    // Not before its lease ran out (a live holder's lock is never broken).
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert_eq!(l.hosts(), ["db1", "db2", "db3"]);
    for n in ["db1", "db2", "db3"] {
        assert_eq!(tombstones(&hosts.join("oplock-t").join(n)), 1, "{n}: the dead holder's lock was broken");
    }
    l.release().await;
}

/// A holder whose lease ran out (a partition longer than the lease) learns it lost
/// the lock, and its late release leaves the new holder's lock alone.
#[tokio::test]
async fn a_lost_lease_is_detected_and_not_released_from_under_the_new_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    // Lease 1 s and no renewal within the test.
    let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &[], 1, Duration::from_secs(3600));
    let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let lb = b.lock_operation("switchover", Duration::from_secs(5)).await.unwrap();
    let e = la.check().unwrap_err().to_string();
    assert!(e.contains("lost") && e.contains("0 of 3"), "{e}");
    la.release().await;
    let c = deployment("oplock-t", &tmp.path().join("c"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
    let e = locked_text(c.lock_operation("rejoin", Duration::ZERO).await);
    assert!(e.contains("held by switchover"), "{e}");
    lb.check().unwrap();
    lb.release().await;
}

#[test]
fn utc_format() {
    assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(fmt_utc(1_700_000_000), "2023-11-14T22:13:20Z");
}
