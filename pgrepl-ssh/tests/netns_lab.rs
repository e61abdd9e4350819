//! SshTransport against a host of the 3-host network-namespace lab
//! (`scripts/lab/netns.sh`): real sshd on 10.213.7.12:22 in namespace pgl-b, strict host
//! key checking with the lab's known_hosts. The test brings the lab up and down itself,
//! unless a lab is already up (then it is used and left running). Needs root.

use std::path::PathBuf;
use std::process::{Command as Process, Output as ProcessOutput};

use pgrepl_core::transport::{Command, Transport, TransportExt};
use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshConfig, SshTransport};

fn lab_dir() -> PathBuf {
    PathBuf::from(std::env::var("PGREPL_LAB").unwrap_or_else(|_| "/opt/pgrepl-lab".to_string()))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/netns.sh")
}

fn netns_sh(args: &[&str]) -> ProcessOutput {
    Process::new("bash").arg(script()).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()))
}

fn describe(o: &ProcessOutput) -> String {
    format!("{}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The lab for the duration of a test: brought up here (and down on drop) unless it was
/// already up.
struct Lab {
    started_here: bool,
}

impl Lab {
    fn up_or_reuse() -> Lab {
        if netns_sh(&["status"]).status.success() {
            eprintln!("netns lab already up: using it and leaving it running");
            return Lab { started_here: false };
        }
        let up = netns_sh(&["up"]);
        // Armed before the check, so a half-built lab is torn down too.
        let lab = Lab { started_here: true };
        assert!(up.status.success(), "netns.sh up failed (run scripts/lab/install.sh first if tools are missing): {}", describe(&up));
        let up_again = netns_sh(&["up"]);
        assert!(up_again.status.success(), "netns.sh up is idempotent: {}", describe(&up_again));
        lab
    }

    /// Takes the lab down (if this test started it) and checks nothing is left.
    fn down(mut self) {
        if !self.started_here {
            return;
        }
        self.started_here = false;
        let down = netns_sh(&["down"]);
        assert!(down.status.success(), "netns.sh down: {}", describe(&down));
        let status = netns_sh(&["status"]);
        assert_eq!(status.status.code(), Some(3), "status after down: {}", describe(&status));
        let ns = Process::new("ip").args(["netns", "list"]).output().unwrap();
        let ns = String::from_utf8_lossy(&ns.stdout);
        // This lab's namespaces only (the second lab, PGREPL_NETNS_SET=ha, may be up).
        let left: Vec<&str> =
            ns.lines().filter(|l| ["pgl-a ", "pgl-b ", "pgl-c "].iter().any(|p| l.starts_with(p) || l.trim() == p.trim())).collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        let br = Process::new("ip").args(["link", "show", "pglbr0"]).output().unwrap();
        assert!(!br.status.success(), "the bridge is left");
        let lab = lab_dir().join("netns");
        for h in ["a", "b", "c"] {
            assert!(!lab.join(h).join("sshd.pid").exists(), "pid file of {h} left");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.started_here {
            let down = netns_sh(&["down"]);
            if !down.status.success() {
                eprintln!("netns.sh down (cleanup after a failure): {}", describe(&down));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_netns_lab_host_pgl_b() {
    let lab = Lab::up_or_reuse();
    let netns = lab_dir().join("netns");
    let config = SshConfig::builder("10.213.7.12")
        .with_user("root")
        .with_auth(SshAuth::KeyFile(netns.join("id_ed25519")))
        .with_known_hosts(netns.join("known_hosts"))
        .with_host_key_policy(HostKeyPolicy::Strict)
        .build()
        .unwrap();
    let t = SshTransport::connect(config).await.unwrap_or_else(|e| panic!("connect to pgl-b: {e}"));

    // It is the lab host, with its own name and its own /var/lib/postgresql.
    let name = t.run(&Command::new("hostname")).await.unwrap();
    assert_eq!(name.stdout.trim(), "pgl-b");
    let marker = format!("pgrepl-netns-marker-{}", std::process::id());
    let inside = format!("/var/lib/postgresql/{marker}");
    t.write_file(&inside, b"b\n", 0o644, Some("postgres")).await.unwrap();
    let per_host = netns.join("b").join("var-lib-postgresql").join(&marker);
    assert_eq!(std::fs::read_to_string(&per_host).ok().as_deref(), Some("b\n"), "{}", per_host.display());
    assert!(!PathBuf::from(&inside).exists(), "the root namespace's /var/lib/postgresql must not see the host's files");
    t.remove_file(&inside).await.unwrap();

    pgrepl_core::testing::transport_suite(&t, "postgres", "/var/lib/postgresql").await;

    t.disconnect().await;
    lab.down();
}
