//! Helpers of the etcd tests: the lab's 3-member clusters (scripts/lab/etcd.sh) and
//! single members started by a test.

#![allow(dead_code)] // each test file uses some

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrepl_core::store::ConsensusStore;
use pgrepl_etcd::{EtcdOptions, EtcdStore};

/// The shared cluster (conformance suite, failover from a dead port): 23890-23892.
pub const SHARED_BASE: u16 = 23890;
/// The cluster whose members the quorum test stops: 23920-23922.
pub const QUORUM_BASE: u16 = 23920;

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/etcd.sh")
}

/// Runs etcd.sh; panics with its output when it fails. Its stdout.
pub fn etcd_sh(args: &[&str]) -> String {
    let out = Command::new("bash").arg(script()).args(args).output().expect("run scripts/lab/etcd.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "etcd.sh {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

pub fn endpoints(base: u16) -> Vec<String> {
    etcd_sh(&["endpoints", &base.to_string()]).trim().split(',').map(str::to_string).collect()
}

/// Users of a cluster in this test binary, and whether this binary started it.
static SHARED: Mutex<(usize, bool)> = Mutex::new((0, false));

/// The shared cluster, started if it does not run (etcd.sh serializes starts with its own
/// lock, so parallel test binaries share one). The last user in this binary stops it if
/// this binary started it.
#[derive(Debug)]
pub struct SharedCluster {
    pub endpoints: Vec<String>,
}

impl SharedCluster {
    pub fn get() -> SharedCluster {
        let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let out = etcd_sh(&["start", &SHARED_BASE.to_string()]);
        if out.contains("started member") {
            g.1 = true;
        }
        g.0 += 1;
        SharedCluster { endpoints: endpoints(SHARED_BASE) }
    }
}

impl Drop for SharedCluster {
    fn drop(&mut self) {
        let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 && g.1 {
            g.1 = false;
            etcd_sh(&["stop", &SHARED_BASE.to_string()]);
        }
    }
}

pub fn store(endpoints: &[String], timeout: Duration) -> EtcdStore {
    let mut o = EtcdOptions::new(endpoints.iter().cloned());
    o.request_timeout = timeout;
    EtcdStore::new(&o).expect("valid options")
}

/// Waits (at most `bound`) until `store` answers a read.
pub async fn wait_answers(store: &dyn ConsensusStore, bound: Duration) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < bound {
        match store.get_prefix("/pgrepl-test-ping/").await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{store:?} does not answer within {bound:?}: {last:?}");
}

/// A single etcd member started by a test, killed (by its handle) when dropped.
#[derive(Debug)]
pub struct Member {
    child: Child,
    pub dir: tempfile::TempDir,
    pub client_url: String,
}

impl Member {
    /// `etcd` on 127.0.0.1:`client_port` (peer `peer_port`) with `extra` flags; the
    /// client URL's scheme is `scheme`.
    pub fn start(client_port: u16, peer_port: u16, scheme: &str, extra: &[String]) -> Member {
        let dir = tempfile::tempdir().expect("tempdir");
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("solo={peer}"))
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd (scripts/lab/install.sh installs it)");
        Member { child, dir, client_url }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 POST to 127.0.0.1:`port` (to set etcd up): the status line and body.
pub fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}
