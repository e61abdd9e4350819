//! SshTransport against a real OpenSSH server on loopback (see `common::Sshd`).
//! Run as root: sshd needs it, and the suite switches to the `postgres` user.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Sshd, keygen};
use pgrepl_core::transport::{Command, Transport, TransportError};
use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshTransport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_over_loopback_sshd_as_root() {
    let sshd = Sshd::start();
    let t = SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", sshd.log()));
    pgrepl_core::testing::transport_suite(&t, "postgres", "/tmp").await;
    // Everything above went through one SSH connection.
    let logins = sshd.log().matches("Accepted publickey for root").count();
    assert_eq!(logins, 1, "one session is reused:\n{}", sshd.log());
}

#[tokio::test]
async fn strict_host_key_refuses_a_different_key_for_the_host() {
    let sshd = Sshd::start();
    let other = keygen(&sshd.dir.path().join("impostor_key"), "ed25519");
    let kh = sshd.dir.path().join("known_hosts_other");
    fs::write(&kh, format!("[127.0.0.1]:{} {other}\n", sshd.port)).unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let cfg = sshd.config("root").with_known_hosts(&kh).with_host_key_policy(policy);
        let err = SshTransport::connect(cfg.build().unwrap()).await.unwrap_err();
        let TransportError::HostKey(msg) = &err else {
            panic!("{policy:?}: expected a HostKey error, got {err:?}");
        };
        assert!(msg.contains(&sshd.endpoint()), "{policy:?}: the message names the host: {msg}");
        assert!(msg.contains("does not match"), "{msg}");
        assert!(msg.contains("ssh-keygen -R"), "the message says what to do: {msg}");
        assert!(msg.contains("SHA256:"), "the message shows the fingerprint: {msg}");
    }
    // The file was left alone, even with AcceptNew.
    assert_eq!(fs::read_to_string(&kh).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn strict_refuses_an_unknown_host() {
    let sshd = Sshd::start();
    for (name, exists) in [("known_hosts_empty", true), ("known_hosts_missing", false)] {
        let kh = sshd.dir.path().join(name);
        if exists {
            fs::write(&kh, "# nothing yet\n").unwrap();
        }
        let err = SshTransport::connect(sshd.config("root").with_known_hosts(&kh).build().unwrap()).await.unwrap_err();
        let TransportError::HostKey(msg) = &err else {
            panic!("expected a HostKey error, got {err:?}");
        };
        assert!(msg.contains(&sshd.endpoint()) && msg.contains("is not in"), "{msg}");
        assert!(msg.contains("ssh-keyscan") && msg.contains("AcceptNew"), "says what to do: {msg}");
        assert_eq!(kh.exists(), exists, "Strict never writes the file");
    }
}

#[tokio::test]
async fn accept_new_records_an_unknown_key_then_strict_accepts_it() {
    let sshd = Sshd::start();
    let kh = sshd.dir.path().join("new").join("known_hosts");
    let cfg = sshd.config("root").with_known_hosts(&kh).with_host_key_policy(HostKeyPolicy::AcceptNew);
    let t = SshTransport::connect(cfg.build().unwrap()).await.unwrap_or_else(|e| panic!("AcceptNew: {e}"));
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    let text = fs::read_to_string(&kh).unwrap();
    assert_eq!(text, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key));

    // Strict now connects with that file, and ssh-keygen can read it.
    SshTransport::connect(sshd.config("root").with_known_hosts(&kh).build().unwrap())
        .await
        .unwrap_or_else(|e| panic!("Strict after AcceptNew: {e}"));
    let found = common::run("ssh-keygen", &["-F", &format!("[127.0.0.1]:{}", sshd.port), "-f", kh.to_str().unwrap()]);
    assert!(found.contains(&sshd.host_key), "{found}");
}

#[tokio::test]
async fn recorded_key_type_is_preferred_when_the_server_has_several() {
    // The server offers ed25519, ecdsa and rsa keys; the file knows only the ecdsa one.
    // Without asking for the known type first, libssh2 would pick another key and report
    // a mismatch.
    let sshd = Sshd::start_with_host_keys(&["ed25519", "ecdsa", "rsa"]);
    for kind in ["ecdsa", "rsa"] {
        let public = fs::read_to_string(sshd.dir.path().join(format!("ssh_host_{kind}_key.pub"))).unwrap();
        let kh = sshd.dir.path().join(format!("known_hosts_{kind}"));
        fs::write(&kh, format!("[127.0.0.1]:{} {public}", sshd.port)).unwrap();
        let t = SshTransport::connect(sshd.config("root").with_known_hosts(&kh).build().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    }
}

#[tokio::test]
async fn hashed_known_hosts_entries_match() {
    let sshd = Sshd::start();
    let kh = sshd.dir.path().join("known_hosts_hashed");
    fs::copy(&sshd.known_hosts, &kh).unwrap();
    common::run("ssh-keygen", &["-H", "-f", kh.to_str().unwrap()]);
    assert!(fs::read_to_string(&kh).unwrap().starts_with("|1|"));
    SshTransport::connect(sshd.config("root").with_known_hosts(&kh).build().unwrap()).await.unwrap_or_else(|e| panic!("hashed entry: {e}"));
}

#[tokio::test]
async fn wrong_user_key_is_an_auth_error_naming_user_and_host() {
    let sshd = Sshd::start();
    let wrong = sshd.dir.path().join("wrong_key");
    keygen(&wrong, "ed25519");
    let started = Instant::now();
    let err = SshTransport::connect(sshd.config("root").with_auth(SshAuth::KeyFile(wrong)).build().unwrap()).await.unwrap_err();
    let TransportError::Auth(msg) = &err else {
        panic!("expected an Auth error, got {err:?}");
    };
    assert!(msg.contains(&format!("root@{}", sshd.endpoint())), "{msg}");
    assert!(msg.contains("authorized_keys"), "says what to check: {msg}");
    assert!(started.elapsed() < Duration::from_secs(5), "auth failures are not retried");

    let missing = sshd.dir.path().join("no_such_key");
    let err = SshTransport::connect(sshd.config("root").with_auth(SshAuth::KeyFile(missing)).build().unwrap()).await.unwrap_err();
    assert!(matches!(&err, TransportError::Auth(m) if m.contains("no_such_key")), "{err:?}");
}

#[tokio::test]
async fn unreachable_port_is_a_connect_error_after_bounded_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = pgrepl_ssh::SshConfig::builder("127.0.0.1")
        .with_port(port)
        .with_user("root")
        .with_auth(SshAuth::KeyFile(dir.path().join("k")))
        .with_known_hosts(dir.path().join("kh"))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = SshTransport::connect(cfg).await.unwrap_err();
    let took = started.elapsed();
    let TransportError::Connect(msg) = &err else {
        panic!("expected a Connect error, got {err:?}");
    };
    assert!(msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("4 attempts"), "{msg}");
    assert!(err.is_retryable());
    let backoff: Duration = pgrepl_ssh::CONNECT_RETRY_DELAYS.iter().sum();
    assert!(took >= backoff && took < backoff + Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn silent_server_is_bounded_by_the_connect_timeout() {
    // Accepts TCP connections (the kernel does, from the backlog) but never speaks SSH.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pgrepl_ssh::SshConfig::builder("127.0.0.1")
        .with_port(port)
        .with_user("root")
        .with_auth(SshAuth::KeyFile(dir.path().join("k")))
        .with_known_hosts(dir.path().join("kh"))
        .with_connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = SshTransport::connect(cfg).await.unwrap_err();
    assert!(matches!(&err, TransportError::Connect(m) if m.contains("handshake")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    drop(listener);
}

#[tokio::test]
async fn reconnects_after_the_connection_is_killed() {
    let sshd = Sshd::start();
    let t = SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap();
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    assert!(sshd.kill_sessions() > 0, "there was a session to kill");

    let out = t
        .exec(&Command::new("echo").args(["again"]))
        .await
        .unwrap_or_else(|e| panic!("exec after the connection was killed: {e}\n{}", sshd.log()));
    assert_eq!(out.stdout, "again\n");
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 2);

    // An explicit disconnect, then lazy reconnection.
    t.disconnect().await;
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 3);
}

#[tokio::test]
async fn reconnects_after_sshd_restarts() {
    let mut sshd = Sshd::start();
    let t = SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap();
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    sshd.restart();
    let out =
        t.exec(&Command::new("echo").args(["back"])).await.unwrap_or_else(|e| panic!("exec after sshd restarted: {e}\n{}", sshd.log()));
    assert_eq!(out.stdout, "back\n");
}

#[tokio::test]
async fn a_command_cut_off_by_a_dropped_connection_is_not_run_again() {
    let sshd = Sshd::start();
    let t = std::sync::Arc::new(SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap());
    let marker = sshd.dir.path().join("runs");
    let script = format!("echo run >> {}; sleep 30", marker.display());
    let task = {
        let t = t.clone();
        tokio::spawn(async move { t.exec(&Command::new("sh").args(["-c", script.as_str()]).timeout(Duration::from_secs(60))).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sshd.kill_sessions();
    let started = Instant::now();
    let r = task.await.unwrap();
    let err = r.expect_err("the command's connection was killed");
    assert!(matches!(&err, TransportError::Io(_)), "{err:?}");
    assert!(err.to_string().contains(&sshd.endpoint()), "{err}");
    assert!(err.is_retryable(), "a lost connection is retryable for idempotent steps");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fs::read_to_string(&marker).unwrap(), "run\n", "ran exactly once");
    // The next call reconnects.
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
}

#[tokio::test]
async fn a_server_frozen_mid_command_is_bounded_by_the_local_deadline() {
    let sshd = Sshd::start();
    let cfg = sshd.config("root").with_connect_timeout(Duration::from_secs(1));
    let t = std::sync::Arc::new(SshTransport::connect(cfg.build().unwrap()).await.unwrap());
    let marker = sshd.dir.path().join("started");
    let script = format!("touch {}; sleep 3", marker.display());
    let started = Instant::now();
    let task = {
        let t = t.clone();
        tokio::spawn(async move { t.exec(&Command::new("sh").args(["-c", script.as_str()]).timeout(Duration::from_secs(1))).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Freeze the server side of the connection and the command (and its remote
    // `timeout`): nothing will ever come back.
    assert!(sshd.signal_sessions("STOP") > 0);
    let r = task.await.unwrap();
    let took = started.elapsed();
    sshd.signal_sessions("CONT");
    // Limit 1 s + 5 s kill delay + 1 s connect timeout.
    assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
    assert!(took >= Duration::from_secs(6) && took < Duration::from_secs(10), "{took:?}");
    // The session was dropped; the next call reconnects.
    assert_eq!(t.exec(&Command::new("true")).await.unwrap().status, 0);
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 2);
}

#[tokio::test]
async fn a_session_frozen_while_idle_is_replaced_before_the_command_starts() {
    let sshd = Sshd::start();
    let cfg = sshd.config("root").with_connect_timeout(Duration::from_secs(1));
    let t = SshTransport::connect(cfg.build().unwrap()).await.unwrap();
    assert!(sshd.signal_sessions("STOP") > 0);
    // Opening a channel times out (1 s): the command had not started, so the transport
    // reconnects once and runs it on the new session.
    let started = Instant::now();
    let out = t.exec(&Command::new("echo").args(["hi"])).await.unwrap();
    assert_eq!(out.stdout, "hi\n");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 2);
}

#[tokio::test]
async fn concurrent_calls_share_the_session() {
    let sshd = Sshd::start();
    let t = std::sync::Arc::new(SshTransport::new(sshd.config("root").build().unwrap()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.exec(&Command::new("echo").args([i.to_string()])).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.stdout, format!("{i}\n"));
    }
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_a_connection_cut_mid_command_fails_it_and_the_next_reconnects() {
    let sshd = Sshd::start();
    let t = SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap();
    pgrepl_core::testing::dropped_connection_mid_command(&t, "/tmp", || async { assert!(sshd.kill_sessions() > 0, "a session to cut") })
        .await;
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 2, "{}", sshd.log());
}

#[tokio::test]
async fn output_of_a_background_process_after_its_command_never_reaches_the_next_command() {
    let sshd = Sshd::start();
    let t = SshTransport::connect(sshd.config("root").build().unwrap()).await.unwrap();
    // The command ends at once; a child it left writes on its stdout, or its stderr, later.
    for late in ["echo late", "echo late >&2"] {
        let script = format!("(sleep 0.3; {late}) & echo now");
        let o = t.exec(&Command::new("sh").args(["-c", script.as_str()])).await.unwrap();
        assert_eq!((o.status, o.stdout.as_str()), (0, "now\n"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        for i in 0..3 {
            let o = t.exec(&Command::new("echo").args([i.to_string()])).await.unwrap();
            assert_eq!((o.stdout, o.stderr), (format!("{i}\n"), String::new()), "after `{late}`");
        }
    }
    assert_eq!(sshd.log().matches("Accepted publickey for root").count(), 1, "the connection itself is kept");
}
