//! SshTransport's `write_file` and `mkdir` for the `postgres` user on a host of the
//! network-namespace lab (`scripts/lab/netns.sh`, real sshd on 10.213.7.12): a symbolic
//! link the postgres user plants never makes root overwrite, chown or chmod something
//! outside postgres's reach. Logged in as root, and as the lab's sudoer `pgrepl-admin`.
//! Needs root (the lab); brought up here (and down) unless it is already up.

use std::path::PathBuf;
use std::process::{Command as Process, Output as ProcessOutput};

use pgrepl_core::transport::{Command, Transport, TransportExt};
use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshConfig, SshTransport};

fn lab_dir() -> PathBuf {
    PathBuf::from(std::env::var("PGREPL_LAB").unwrap_or_else(|_| "/opt/pgrepl-lab".to_string()))
}

fn netns_sh(args: &[&str]) -> ProcessOutput {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/netns.sh");
    Process::new("bash").arg(&script).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

/// The lab for this test: the lab's cross-process lock held (other lab tests rebuild it),
/// brought up here and down on drop unless it was already up.
struct Lab {
    started_here: bool,
    _lock: std::fs::File,
}

impl Lab {
    fn up_or_reuse() -> Lab {
        let lock = pgrepl_core::testing::lab_lock(&lab_dir(), "netns-tests.lock");
        if netns_sh(&["status"]).status.success() {
            return Lab { started_here: false, _lock: lock };
        }
        let up = netns_sh(&["up"]);
        let lab = Lab { started_here: true, _lock: lock };
        assert!(
            up.status.success(),
            "netns.sh up failed (run scripts/lab/install.sh first): {}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.started_here {
            let _ = netns_sh(&["down"]);
        }
    }
}

async fn connect(user: &str) -> SshTransport {
    let netns = lab_dir().join("netns");
    let config = SshConfig::builder("10.213.7.12")
        .with_user(user)
        .with_auth(SshAuth::KeyFile(netns.join("id_ed25519")))
        .with_known_hosts(netns.join("known_hosts"))
        .with_host_key_policy(HostKeyPolicy::Strict)
        .build()
        .unwrap();
    SshTransport::connect(config).await.unwrap_or_else(|e| panic!("connect to pgl-b as {user}: {e}"))
}

/// Runs a shell script as root on the host (the test's own setup and checks).
async fn sh(t: &SshTransport, script: &str) -> String {
    let c = Command::new("sh").args(["-c", script]);
    let c = if t.config().user() == "root" { c } else { c.user("root") };
    t.run(&c).await.unwrap_or_else(|e| panic!("{script}: {e}")).stdout.trim().to_string()
}

async fn symlinks_are_never_followed(t: &SshTransport, base: &str) {
    let who = t.config().user().to_string();
    sh(
        t,
        &format!(
            "set -e; rm -rf {base}; mkdir -p {base}/outside {base}/pg {base}/pg/real; chmod 755 {base} {base}/outside; \
             printf 'root only\\n' > {base}/outside/secret; chmod 600 {base}/outside/secret; \
             chown postgres {base}/pg {base}/pg/real; chmod 700 {base}/pg; \
             ln -s {base}/outside/secret {base}/pg/pgrepl.conf; ln -s {base}/outside {base}/pg/conf; \
             ln -s {base}/outside {base}/pg/run; ln -s {base}/pg/real {base}/pg/moved"
        ),
    )
    .await;
    let secret =
        format!("stat -c '%U %a' {base}/outside/secret; cat {base}/outside/secret; ls -A {base}/outside; stat -c '%U %a' {base}/outside");
    let before = sh(t, &secret).await;
    assert_eq!(before, "root 600\nroot only\nsecret\nroot 755");

    // A link at the target is replaced by the file, not followed.
    t.write_file(&format!("{base}/pg/pgrepl.conf"), b"port = 5432\n", 0o640, Some("postgres")).await.unwrap();
    assert_eq!(
        sh(t, &format!("stat -c '%F %U %a' {base}/pg/pgrepl.conf; cat {base}/pg/pgrepl.conf")).await,
        "regular file postgres 640\nport = 5432"
    );
    assert_eq!(sh(t, &secret).await, before, "as {who}: the link's target is untouched");

    // A directory swapped for a link into root's directory: refused, nothing planted there.
    let e = t.write_file(&format!("{base}/pg/conf/secret"), b"owned\n", 0o600, Some("postgres")).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "as {who}: {e}");
    assert_eq!(sh(t, &secret).await, before, "as {who}: root's file is neither replaced nor handed over, nothing is left there");

    // mkdir over a link: refused, root's directory keeps its mode and owner.
    let e = t.mkdir(&format!("{base}/pg/run"), 0o700, Some("postgres")).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "as {who}: {e}");
    assert_eq!(sh(t, &secret).await, before, "as {who}: mkdir left root's directory alone");

    // What must keep working: a link into postgres's own directory, a root-owned
    // directory named without links, and mkdir of a real directory.
    t.write_file(&format!("{base}/pg/moved/pgpass"), b"*:*:*:r:x\n", 0o600, Some("postgres")).await.unwrap();
    assert_eq!(sh(t, &format!("stat -c '%U %a' {base}/pg/real/pgpass")).await, "postgres 600");
    t.write_file(&format!("{base}/plain.conf"), b"x\n", 0o644, Some("postgres")).await.unwrap();
    assert_eq!(sh(t, &format!("stat -c '%U %a' {base}/plain.conf")).await, "postgres 644");
    t.mkdir(&format!("{base}/pg/log"), 0o700, Some("postgres")).await.unwrap();
    assert_eq!(sh(t, &format!("stat -c '%U %a %F' {base}/pg/log")).await, "postgres 700 directory");
    assert_eq!(sh(t, &format!("ls -A {base}/pg {base}")).await.matches(".pgrepl-tmp").count(), 0, "no temporary files left");

    t.remove_tree(base).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_write_file_and_mkdir_never_follow_a_planted_symlink() {
    let lab = Lab::up_or_reuse();
    let base = format!("/var/lib/postgresql/pgrepl-symlinks-{}", std::process::id());
    let root = connect("root").await;
    symlinks_are_never_followed(&root, &format!("{base}-root")).await;
    root.disconnect().await;
    let admin = connect("pgrepl-admin").await;
    symlinks_are_never_followed(&admin, &format!("{base}-sudo")).await;
    admin.disconnect().await;
    drop(lab);
}
