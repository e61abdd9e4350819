//! The transport conformance suite (`pgrepl_core::testing::transport_suite`) against
//! [`LocalTransport`] on this machine, as the local provider uses it: run as root,
//! switching to the `postgres` OS user (created by the lab installer's PostgreSQL
//! package). Needs the `testing` feature: `cargo test -p pgrepl-core --features testing`.

#![cfg(feature = "testing")]

use std::os::unix::fs::PermissionsExt;

use pgrepl_core::local::{LocalTransport, running_as_root};
use pgrepl_core::testing::{Fault, FlakyTransport, Match, When, transport_suite};
use pgrepl_core::transport::{Command, Transport, TransportError};

const OTHER_USER: &str = "postgres";

/// Fails (never skips) when the machine is not set up as the suite needs.
fn require_root_and_postgres_user() {
    assert!(running_as_root(), "the local transport suite runs as root (it switches to the {OTHER_USER} OS user with runuser)");
    let id = std::process::Command::new("id").args(["-u", OTHER_USER]).output().expect("id runs");
    assert!(
        id.status.success(),
        "no OS user \"{OTHER_USER}\" on this machine: run scripts/lab/install.sh as root (its PostgreSQL package creates it)"
    );
}

/// A scratch directory the other user can traverse (tempfile makes 0700 ones).
fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("pgrepl-core-transport-").tempdir_in("/tmp").expect("a temp dir in /tmp");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_transport_conformance_as_root_with_postgres() {
    require_root_and_postgres_user();
    let d = scratch();
    transport_suite(&LocalTransport, OTHER_USER, d.path().to_str().unwrap()).await;
    // The suite cleans up after itself.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the suite left files in its scratch dir");
}

/// A FlakyTransport around the real local transport: a step whose link dropped after it
/// ran is retried and converges (the effect happened exactly once more, as an idempotent
/// step must allow).
#[tokio::test]
async fn flaky_local_transport_drop_after_run_then_retry() {
    require_root_and_postgres_user();
    let d = scratch();
    let log = d.path().join("appends");
    let log = log.to_str().unwrap();
    let t = FlakyTransport::new(LocalTransport).with(When::command(Match::program("sh")).times(2), Fault::drop_after_run());
    let append = Command::new("sh").args(["-c", "echo x >> \"$1\"", "sh", log]);
    let mut attempts = 0;
    let out = loop {
        attempts += 1;
        assert!(attempts <= 5, "bounded retries");
        match t.exec(&append).await {
            Ok(o) => break o,
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("not retryable: {e}"),
        }
    };
    assert!(out.success());
    assert_eq!(attempts, 3);
    assert_eq!(std::fs::read_to_string(log).unwrap(), "x\nx\nx\n", "every attempt ran on the host, the dropped ones too");
    assert_eq!(t.injected().len(), 2);
    assert!(t.injected().iter().all(|i| i.reached_inner && i.inner_result.as_deref() == Some("exit 0")));

    // A timeout of the real transport is retryable too, unlike a failed command.
    let e = t.exec(&Command::new("sleep").args(["5"]).timeout(std::time::Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }) && e.is_retryable(), "{e:?}");
    assert_eq!(t.host(), "localhost");
}

/// The suite fails a transport that breaks its promises (a test must be able to fail):
/// here one that reports a missing program as a dropped connection, which would make
/// callers retry a step that can never succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_a_missing_program_reported_as_retryable() {
    require_root_and_postgres_user();

    #[derive(Debug)]
    struct MissingLooksRetryable;

    #[async_trait::async_trait]
    impl Transport for MissingLooksRetryable {
        fn host(&self) -> &str {
            "broken-localhost"
        }
        async fn exec(&self, cmd: &Command) -> Result<pgrepl_core::transport::Output, TransportError> {
            if cmd.program.starts_with("pgrepl-suite-no-such") {
                return Err(TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")));
            }
            LocalTransport.exec(cmd).await
        }
        async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
            LocalTransport.write_file(path, contents, mode, owner).await
        }
        async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
            LocalTransport.read_file(path).await
        }
    }

    let d = scratch();
    let dir = d.path().to_str().unwrap().to_string();
    let caught = tokio::spawn(async move { transport_suite(&MissingLooksRetryable, OTHER_USER, &dir).await }).await.unwrap_err();
    let msg = caught.into_panic();
    let msg = msg.downcast_ref::<String>().map(String::as_str).unwrap_or("<not a string>");
    assert!(
        msg.contains("broken-localhost: exit codes: a missing program (user None) must fail with a non-retryable error naming it"),
        "{msg}"
    );
}
