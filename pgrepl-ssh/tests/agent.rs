//! `SshAuth::Agent` against a real `ssh-agent` and sshd.
//!
//! The agent is found through `SSH_AUTH_SOCK`, which a test cannot set for itself without
//! `unsafe` (`std::env::set_var`); so the test starts sshd and an agent, then runs itself
//! again as a child process with the variable set.

mod common;

use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::Sshd;
use pgrepl_core::transport::{Command, Transport, TransportError};
use pgrepl_ssh::{SshAuth, SshConfig, SshTransport};

const CHILD_ENV: &str = "PGREPL_SSH_AGENT_TEST_CHILD";

/// An `ssh-agent -D` on a socket in `dir`, killed on drop.
struct Agent(Child);

impl Agent {
    fn start(sock: &Path) -> Agent {
        let child = Process::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ssh-agent: {e} ({})", common::INSTALL_HINT));
        let agent = Agent(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not create {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    fn add(&self, sock: &Path, key: &Path) {
        let st = Process::new("ssh-add").arg("-q").arg(key).env("SSH_AUTH_SOCK", sock).status().expect("run ssh-add");
        assert!(st.success(), "ssh-add {}", key.display());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn agent_identities_authenticate() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child().await;
    }
    let sshd = Sshd::start();
    // A wrong key first, then the right one: every identity is tried in order.
    let wrong = sshd.dir.path().join("wrong_key");
    common::keygen(&wrong, "ed25519");
    let sock = sshd.dir.path().join("agent.sock");
    let agent = Agent::start(&sock);
    agent.add(&sock, &wrong);
    agent.add(&sock, &sshd.user_key);

    let empty_sock = sshd.dir.path().join("empty-agent.sock");
    let _empty_agent = Agent::start(&empty_sock);

    for (sock, expect_ok) in [(&sock, true), (&empty_sock, false)] {
        let out = Process::new(std::env::current_exe().unwrap())
            .args(["agent_identities_authenticate", "--exact", "--nocapture"])
            .env(CHILD_ENV, if expect_ok { "ok" } else { "refused" })
            .env("SSH_AUTH_SOCK", sock)
            .env("PGREPL_TEST_SSHD_PORT", sshd.port.to_string())
            .env("PGREPL_TEST_KNOWN_HOSTS", &sshd.known_hosts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child ({}) failed:\n{}\n{}",
            if expect_ok { "agent with the key" } else { "empty agent" },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "the child ran the test:\n{stdout}");
    }
}

async fn child() {
    let port: u16 = std::env::var("PGREPL_TEST_SSHD_PORT").unwrap().parse().unwrap();
    let kh = std::env::var("PGREPL_TEST_KNOWN_HOSTS").unwrap();
    let config =
        SshConfig::builder("127.0.0.1").with_port(port).with_user("root").with_auth(SshAuth::Agent).with_known_hosts(kh).build().unwrap();
    let r = SshTransport::connect(config).await;
    if std::env::var(CHILD_ENV).unwrap() == "ok" {
        let t = r.unwrap_or_else(|e| panic!("agent auth: {e}"));
        assert_eq!(t.exec(&Command::new("id").args(["-un"])).await.unwrap().stdout, "root\n");
    } else {
        let err = r.unwrap_err();
        assert!(matches!(&err, TransportError::Auth(m) if m.contains(&format!("root@127.0.0.1:{port}")) && m.contains("agent")), "{err:?}");
    }
}
