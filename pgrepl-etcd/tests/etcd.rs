//! EtcdStore against real etcd 3.4 members on loopback: the store conformance suite on
//! the lab's 3-member cluster (scripts/lab/etcd.sh, base port 23890), failover between
//! endpoints (a dead port, a stopped member), quorum loss (two of three members stopped
//! on a cluster of its own, base 23920), and user/password authentication on a single
//! member the test starts (ports 23950/23960).
//!
//! `cargo test -p pgrepl-etcd` (needs `etcd`: scripts/lab/install.sh). A cluster the tests
//! start is stopped by them; one already running is used and left alone.

mod common;

use std::time::{Duration, Instant};

use common::{Member, QUORUM_BASE, SharedCluster, etcd_sh, post, store, wait_answers};
use pgrepl_core::secret::Secret;
use pgrepl_core::store::{ConsensusStore, StoreError};
use pgrepl_core::testing::{RealTime, store_suite};
use pgrepl_etcd::{DEFAULT_REQUEST_TIMEOUT, EtcdOptions, EtcdStore};

/// A timeout for calls that must succeed, generous for a busy 2-core machine.
const PATIENT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn the_conformance_suite_passes_on_a_3_member_cluster() {
    let c = SharedCluster::get();
    let s = store(&c.endpoints, PATIENT);
    wait_answers(&s, Duration::from_secs(10)).await;
    store_suite(&s, "/pgrepl-suite/", &RealTime).await;
}

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped_and_the_live_one_remembered() {
    let c = SharedCluster::get();
    // Port 23899: in the cluster's range, never listened on.
    let mut eps = vec!["http://127.0.0.1:23899".to_string()];
    eps.extend(c.endpoints.iter().cloned());
    let s = store(&eps, PATIENT);
    wait_answers(&s, Duration::from_secs(10)).await;
    let key = format!("/pgrepl-test/failover-{}", std::process::id());
    let r = s.put(&key, b"v", None).await.expect("put through the second endpoint");
    assert!(r > 0);
    assert!(format!("{s:?}").contains("preferred: 1"), "the endpoint that worked is remembered: {s:?}");
    // Every call, the dead endpoint listed first or not.
    let only_dead = store(&["http://127.0.0.1:23899".to_string()], Duration::from_millis(300));
    let t = Instant::now();
    let e = only_dead.get_prefix("/").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)) && t.elapsed() < Duration::from_secs(1), "{e:?} after {:?}", t.elapsed());
    s.delete_prefix(&key).await.expect("cleanup");
}

/// Stops the quorum cluster at the end if this test started it (also on panic).
struct StopIfStarted(bool);

impl Drop for StopIfStarted {
    fn drop(&mut self) {
        if self.0 {
            etcd_sh(&["stop", &QUORUM_BASE.to_string()]);
        } else {
            // Give back what was taken: every member runs again.
            for n in ["1", "2", "3"] {
                let _ =
                    std::process::Command::new("bash").arg(common::script()).args(["start-member", &QUORUM_BASE.to_string(), n]).output();
            }
        }
    }
}

fn unavailable_quickly<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>, took: Duration, limit: Duration) {
    eprintln!("{what} without quorum, after {took:?}: {r:?}");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{what} without quorum: {r:?}");
    assert!(took <= limit, "{what} without quorum took {took:?}, more than {limit:?}");
}

#[tokio::test]
async fn a_stopped_member_is_skipped_and_quorum_loss_is_unavailable_within_the_timeout() {
    let base = QUORUM_BASE.to_string();
    let started = etcd_sh(&["start", &base]).contains("started member");
    let _guard = StopIfStarted(started);
    let eps = common::endpoints(QUORUM_BASE);
    let patient = store(&eps, PATIENT);
    wait_answers(&patient, Duration::from_secs(15)).await;
    let prefix = format!("/pgrepl-test/quorum-{}/", std::process::id());
    let lease = patient.grant(Duration::from_secs(30)).await.expect("grant");
    assert!(patient.create(&format!("{prefix}leader"), b"me", Some(lease)).await.expect("create"));

    // Member 1, the first endpoint, stopped: every call still succeeds through the others.
    etcd_sh(&["stop-member", &base, "1"]);
    let s = store(&eps, PATIENT);
    wait_answers(&s, Duration::from_secs(10)).await;
    assert_eq!(s.get_prefix(&prefix).await.expect("get_prefix").kvs.len(), 1);
    s.put(&format!("{prefix}k"), b"1", None).await.expect("put with member 1 down");
    assert!(s.keep_alive(lease).await.expect("keep_alive").is_some());
    assert!(!s.create(&format!("{prefix}leader"), b"other", None).await.expect("create"));
    let mut w = s.watch(&prefix, 0).await.expect("watch with member 1 down");
    assert!(w.next().await.expect("watch").is_some());

    // Member 2 too: no quorum. Every call is Unavailable within the default timeout (a
    // little slack for a busy machine).
    etcd_sh(&["stop-member", &base, "2"]);
    let quick = store(&eps, DEFAULT_REQUEST_TIMEOUT);
    let limit = DEFAULT_REQUEST_TIMEOUT + Duration::from_millis(300);
    // Twice: before and after the last member notices it has no leader (election timeout 500 ms).
    for round in 0..2 {
        let t = Instant::now();
        unavailable_quickly("get_prefix", quick.get_prefix(&prefix).await, t.elapsed(), limit);
        let t = Instant::now();
        unavailable_quickly("put", quick.put(&format!("{prefix}k"), b"2", None).await, t.elapsed(), limit);
        let t = Instant::now();
        unavailable_quickly("create", quick.create(&format!("{prefix}c{round}"), b"x", None).await, t.elapsed(), limit);
        let t = Instant::now();
        unavailable_quickly("keep_alive", quick.keep_alive(lease).await, t.elapsed(), limit);
        let t = Instant::now();
        unavailable_quickly("grant", quick.grant(Duration::from_secs(3)).await, t.elapsed(), limit);
        if round == 1 {
            // A watch needs no quorum to be created: only once the member knows it has no
            // leader does it refuse one.
            let t = Instant::now();
            unavailable_quickly("watch", quick.watch(&prefix, 0).await.map(drop), t.elapsed(), limit);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // Both back on their data: calls succeed again, and nothing written without quorum landed.
    etcd_sh(&["start-member", &base, "1"]);
    etcd_sh(&["start-member", &base, "2"]);
    wait_answers(&quick, Duration::from_secs(15)).await;
    let snap = patient.get_prefix(&prefix).await.expect("get_prefix after quorum is back");
    let keys: Vec<String> = snap.kvs.iter().map(|kv| kv.key.trim_start_matches(&prefix).to_string()).collect();
    assert_eq!(keys, ["k", "leader"], "{snap:?}");
    assert_eq!(snap.kvs[0].value, b"1");
    patient.put(&format!("{prefix}k"), b"3", None).await.expect("put after quorum is back");
    patient.revoke(lease).await.expect("revoke");
    patient.delete_prefix(&prefix).await.expect("cleanup");
}

#[tokio::test]
async fn user_and_password_authenticate_and_a_token_is_renewed_when_it_expires() {
    // Tokens live 2 s here (etcd's default is 5 minutes), to see one expire.
    let m = Member::start(23950, 23960, "http", &["--auth-token-ttl".to_string(), "2".to_string()]);
    let url = vec![m.client_url.clone()];
    let anon = store(&url, PATIENT);
    let start = Instant::now();
    while anon.get_prefix("/").await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(15), "etcd did not start: {}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"s3cret-root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let out = post(23950, path, body, None);
        assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    }

    let with = |user: Option<&str>, password: Option<&str>| {
        let mut o = EtcdOptions::new(url.clone());
        o.request_timeout = PATIENT;
        o.user = user.map(str::to_string);
        o.password = password.map(Secret::new);
        EtcdStore::new(&o).expect("options")
    };
    let root = with(Some("root"), Some("s3cret-root"));
    assert!(!format!("{root:?}").contains("s3cret"), "{root:?}");
    let r = root.put("/auth/k", b"v", None).await.expect("put as root");
    assert!(r > 0);

    let e = anon.get_prefix("/").await.unwrap_err();
    assert!(matches!(e, StoreError::Rejected(_)), "no user with auth enabled: {e:?}");
    let e = with(Some("root"), Some("wrong")).get_prefix("/").await.unwrap_err();
    assert!(matches!(&e, StoreError::Rejected(m) if !m.contains("wrong")), "a wrong password: {e:?}");
    assert!(!format!("{e}").contains("s3cret"));

    // The token expires; the next call authenticates again by itself.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(root.get_prefix("/auth/").await.expect("get after the token expired").kvs.len(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut w = root.watch("/auth/", 0).await.expect("watch after the token expired");
    assert!(w.next().await.expect("watch").is_some());

    // The whole contract holds with authentication on.
    store_suite(&root, "/pgrepl-suite/", &RealTime).await;
}

#[tokio::test]
async fn a_silent_endpoint_times_out_within_the_request_timeout_and_the_next_call_moves_on() {
    let c = SharedCluster::get();
    // Accepts connections and never answers (a hung member).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..16 {
            match silent.accept().await {
                Ok((s, _)) => conns.push(s),
                Err(_) => break,
            }
        }
        conns
    });
    let mut eps = vec![silent_url];
    eps.extend(c.endpoints.iter().cloned());
    let live = store(&c.endpoints, PATIENT);
    wait_answers(&live, Duration::from_secs(10)).await;
    let s = store(&eps, DEFAULT_REQUEST_TIMEOUT);
    let key = format!("/pgrepl-test/silent-{}", std::process::id());
    let t = Instant::now();
    let e = s.put(&key, b"v", None).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(took >= DEFAULT_REQUEST_TIMEOUT && took < DEFAULT_REQUEST_TIMEOUT + Duration::from_millis(300), "gave up after {took:?}");
    // The next call starts at the next endpoint.
    s.put(&key, b"v", None).await.expect("put through the next endpoint");
    assert_eq!(s.get_prefix(&key).await.expect("get").kvs.len(), 1);
    s.delete_prefix(&key).await.expect("cleanup");
    hold.abort();
}

/// etcd's leadership moved off a member (what a primary's agent does for its own host's
/// member), on a cluster of its own (base 24400, started and stopped here).
#[tokio::test]
async fn the_leadership_moves_to_another_member_when_asked_of_the_leader() {
    const BASE: u16 = 24400;
    // Stopped at the end, also when the start fails half-way (members it did start).
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            etcd_sh(&["stop", &BASE.to_string()]);
        }
    }
    let _stop = Stop;
    etcd_sh(&["start", &BASE.to_string()]);
    let eps = common::endpoints(BASE);
    let all = store(&eps, PATIENT);
    wait_answers(&all, Duration::from_secs(20)).await;
    // The leader's own endpoint.
    let mut leader_ep = None;
    for ep in &eps {
        let one = store(std::slice::from_ref(ep), PATIENT);
        let (me, leader) = one.member_and_leader().await.expect("status");
        if me == leader {
            leader_ep = Some((ep.clone(), me));
        }
    }
    let (ep, was) = leader_ep.expect("one member leads");
    let on_leader = store(std::slice::from_ref(&ep), PATIENT);
    let members = on_leader.member_names().await.expect("member list");
    assert_eq!(members.len(), 3, "{members:?}");
    let target = members.iter().map(|(id, _)| *id).find(|id| *id != was).unwrap();
    on_leader.move_leader(target).await.expect("move the leadership");
    let t = Instant::now();
    loop {
        let (_, leader) = on_leader.member_and_leader().await.expect("status");
        if leader == target {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the leadership did not move to {target:x} (leader {leader:x})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asked of a member that does not lead: refused, nothing moves.
    let e = on_leader.move_leader(was).await.unwrap_err();
    assert!(matches!(e, StoreError::Rejected(_) | StoreError::Unavailable(_)), "{e:?}");
}
