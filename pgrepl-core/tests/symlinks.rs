//! The local transport writes files and creates directories for the `postgres` OS user as
//! root (as the local provider does), and never follows a symbolic link that user could
//! plant: nothing outside their reach is overwritten, chowned or chmodded. Runs as root
//! (as `scripts/test.sh` does) with the lab's `postgres` user.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use pgrepl_core::local::{LocalTransport, running_as_root};
use pgrepl_core::transport::{Transport, TransportExt};

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", user]).output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no OS user {user}: run scripts/lab/install.sh"))
}

/// (content, uid, mode) of a file, not following a link.
fn fingerprint(p: &Path) -> (String, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (std::fs::read_to_string(p).unwrap(), m.uid(), m.mode() & 0o7777)
}

fn chown(p: &Path, user: &str) {
    assert!(std::process::Command::new("chown").args([user, p.to_str().unwrap()]).status().unwrap().success());
}

struct Scene {
    _tmp: tempfile::TempDir,
    /// Root's: 0755, holding `secret` (root, 0600).
    outside: std::path::PathBuf,
    /// postgres's: 0700.
    pg: std::path::PathBuf,
    base: std::path::PathBuf,
}

fn scene() -> Scene {
    assert!(running_as_root(), "this test needs root: it writes files for the postgres OS user as the local provider does");
    let tmp = tempfile::Builder::new().prefix("pgrepl-symlinks-").tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(outside.join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(outside.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let pg = base.join("pg");
    std::fs::create_dir(&pg).unwrap();
    std::fs::set_permissions(&pg, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&pg, "postgres");
    Scene { _tmp: tmp, outside, pg, base }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn write_file_replaces_a_symlink_at_the_target_instead_of_following_it() {
    let sc = scene();
    let secret = sc.outside.join("secret");
    let before = fingerprint(&secret);
    let target = sc.pg.join("pgrepl.conf");
    symlink(&secret, &target).unwrap();
    LocalTransport.write_file(s(&target), b"port = 5432\n", 0o640, Some("postgres")).await.unwrap();
    assert_eq!(fingerprint(&secret), before, "the file the link pointed at is untouched");
    let m = std::fs::symlink_metadata(&target).unwrap();
    assert!(m.file_type().is_file(), "the link was replaced by a regular file");
    assert_eq!((m.uid(), m.mode() & 0o7777), (uid_of("postgres"), 0o640));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "port = 5432\n");
}

#[tokio::test]
async fn write_file_refuses_a_directory_link_into_a_place_the_owner_cannot_write() {
    let sc = scene();
    let secret = sc.outside.join("secret");
    let before = fingerprint(&secret);
    // postgres swaps a directory of theirs for a link to root's directory.
    let link = sc.pg.join("conf");
    symlink(&sc.outside, &link).unwrap();
    let e = LocalTransport.write_file(s(&link.join("secret")), b"owned\n", 0o600, Some("postgres")).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link") && e.to_string().contains(s(&sc.outside)), "{e}");
    assert_eq!(fingerprint(&secret), before, "root's file is neither replaced nor handed over");
    let names: Vec<String> =
        std::fs::read_dir(&sc.outside).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["secret"], "nothing is left in root's directory");

    // A link into a directory postgres owns is fine (a relocated data directory, say).
    let real = sc.pg.join("real");
    std::fs::create_dir(&real).unwrap();
    chown(&real, "postgres");
    symlink(&real, sc.pg.join("moved")).unwrap();
    LocalTransport.write_file(s(&sc.pg.join("moved/pgpass")), b"*:*:*:r:x\n", 0o600, Some("postgres")).await.unwrap();
    let m = std::fs::symlink_metadata(real.join("pgpass")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (uid_of("postgres"), 0o600));
    // And a root-owned directory named without links still gets postgres's files.
    LocalTransport.write_file(s(&sc.base.join("plain.conf")), b"x\n", 0o644, Some("postgres")).await.unwrap();
    assert_eq!(std::fs::symlink_metadata(sc.base.join("plain.conf")).unwrap().uid(), uid_of("postgres"));
}

#[tokio::test]
async fn mkdir_refuses_a_symlink_instead_of_chowning_its_target() {
    let sc = scene();
    let before = std::fs::symlink_metadata(&sc.outside).unwrap();
    let link = sc.pg.join("run");
    symlink(&sc.outside, &link).unwrap();
    let e = LocalTransport.mkdir(s(&link), 0o700, Some("postgres")).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let after = std::fs::symlink_metadata(&sc.outside).unwrap();
    assert_eq!((after.uid(), after.mode() & 0o7777), (before.uid(), 0o755), "root's directory keeps its owner and mode");

    // A real directory is created, or fixed, as asked.
    let sub = sc.pg.join("log");
    LocalTransport.mkdir(s(&sub), 0o700, Some("postgres")).await.unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    LocalTransport.mkdir(s(&sub), 0o700, Some("postgres")).await.unwrap();
    let m = std::fs::symlink_metadata(&sub).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777, m.is_dir()), (uid_of("postgres"), 0o700, true));
}
