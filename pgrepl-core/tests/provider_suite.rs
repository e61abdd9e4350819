//! The provider conformance suite (`pgrepl_core::testing::provider_suite`) against the
//! local provider (real directories on this machine, owned by the `postgres` OS user, as
//! root) and the existing-hosts provider of the SSH deploy (the addresses of the lab's
//! three hosts, `scripts/lab/netns.sh`; listing them needs no connection). EC2 runs the
//! same suite on moto in pgrepl-aws's tests. Needs the `testing` feature:
//! `cargo test -p pgrepl-core --features testing`.

#![cfg(feature = "testing")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use pgrepl_core::hosts::ExistingHosts;
use pgrepl_core::local::{LocalProvider, running_as_root};
use pgrepl_core::provider::Provider;
use pgrepl_core::testing::{HostLifecycle, provider_suite};
use pgrepl_core::{Cluster, ClusterSpec};

fn cluster(toml: &str) -> Cluster {
    ClusterSpec::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}")).validate().unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

fn local_cluster(name: &str, nodes: &[&str], base_port: u16) -> Cluster {
    let mut t = format!("name = \"{name}\"\n[provider]\nkind = \"local\"\nbase_port = {base_port}\n");
    for (i, n) in nodes.iter().enumerate() {
        t.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\nrole = \"{}\"\n", if i == 0 { "primary" } else { "standby" }));
    }
    cluster(&t)
}

const LAB_HOSTS: [(&str, &str); 3] = [("db1", "10.213.7.11"), ("db2", "10.213.7.12"), ("db3", "10.213.7.13")];

fn lab_cluster(name: &str, port: u16) -> Cluster {
    let mut t = format!("name = \"{name}\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\n");
    for (i, (n, a)) in LAB_HOSTS.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        t.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\naddress = \"{a}\"\nport = {port}\nrole = \"{role}\"\n"));
    }
    cluster(&t)
}

#[tokio::test]
async fn local_provider_conformance() {
    assert!(running_as_root(), "the local provider suite runs as root (node directories are owned by the postgres OS user)");
    let id = std::process::Command::new("id").args(["-u", "postgres"]).output().expect("id runs");
    assert!(id.status.success(), "no OS user \"postgres\": run scripts/lab/install.sh as root");
    let base = tempfile::Builder::new().prefix("pgrepl-core-provider-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wd = base.path().join("work");

    // What the provider did not create, in its work directory: left alone by destroy.
    std::fs::create_dir_all(wd.join("secrets")).unwrap();
    std::fs::write(wd.join("secrets/replication"), "pw\n").unwrap();
    std::fs::write(wd.join("pgrepl.toml"), "name = \"suite\"\n").unwrap();

    let p = LocalProvider::new(&wd, "postgres");
    assert_eq!(p.kind(), "local");
    let c = local_cluster("suite", &["db1", "db2", "db3"], 6500);
    // The local provider keeps one cluster's nodes per work directory: the neighbour has
    // other node names.
    let n = local_cluster("suite-neighbour", &["nb1", "nb2"], 6600);

    // Node directories as ensure_hosts creates them: owned by postgres, 0700.
    let hosts = p.ensure_hosts(&c).await.unwrap();
    let pg_uid = String::from_utf8_lossy(&id.stdout).trim().parse::<u32>().unwrap();
    for h in &hosts {
        let dir = h.id.as_deref().unwrap();
        assert_eq!(Path::new(dir), wd.join(&h.node));
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (pg_uid, 0o700), "{dir}");
        assert_eq!(h.address.as_deref(), Some("127.0.0.1"));
    }
    p.destroy_hosts(&c).await.unwrap();

    provider_suite(&p, &c, &n, HostLifecycle::Creates).await;

    for kept in ["secrets/replication", "pgrepl.toml"] {
        assert!(wd.join(kept).is_file(), "destroy_hosts removed {kept}, which it did not create");
    }
    let mut left: Vec<String> = std::fs::read_dir(&wd).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["pgrepl.toml", "secrets"], "node directories left behind");
}

#[tokio::test]
async fn existing_hosts_provider_conformance_on_the_lab_addresses() {
    let p = ExistingHosts;
    assert_eq!(p.kind(), "ssh");
    let c = lab_cluster("suite-ssh", 5432);
    // Another cluster on the same hosts, on other ports.
    let n = lab_cluster("suite-ssh-neighbour", 5433);
    provider_suite(&p, &c, &n, HostLifecycle::Existing).await;

    // The hosts are the spec's: replication and SSH at the node's address.
    let hosts = p.list_hosts(&c).await.unwrap();
    let got: Vec<(&str, Option<&str>, Option<&str>)> =
        hosts.iter().map(|h| (h.node.as_str(), h.address.as_deref(), h.admin_address.as_deref())).collect();
    let want: Vec<(&str, Option<&str>, Option<&str>)> = LAB_HOSTS.iter().map(|(n, a)| (*n, Some(*a), Some(*a))).collect();
    assert_eq!(got, want);
}

/// The suite fails a provider that breaks its promises (a test must be able to fail).
#[tokio::test]
async fn the_suite_catches_a_provider_that_creates_on_every_ensure() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pgrepl_core::provider::Host;

    /// Hands out new host ids on every ensure (as a provider that does not find its
    /// hosts again would), and lists what it made.
    #[derive(Debug, Default)]
    struct Forgetful {
        next: AtomicUsize,
        made: Mutex<Vec<(String, Host)>>,
    }

    #[async_trait::async_trait]
    impl Provider for Forgetful {
        fn kind(&self) -> &'static str {
            "forgetful"
        }
        async fn ensure_hosts(&self, c: &Cluster) -> Result<Vec<Host>, pgrepl_core::Error> {
            let hosts: Vec<Host> = c
                .nodes
                .iter()
                .map(|n| Host {
                    node: n.name.clone(),
                    address: Some("127.0.0.1".into()),
                    admin_address: None,
                    id: Some(format!("i-{}", self.next.fetch_add(1, Ordering::SeqCst))),
                    state: "running".into(),
                })
                .collect();
            let mut made = self.made.lock().unwrap();
            made.retain(|(cl, _)| cl != &c.name);
            made.extend(hosts.iter().map(|h| (c.name.clone(), h.clone())));
            Ok(hosts)
        }
        async fn list_hosts(&self, c: &Cluster) -> Result<Vec<Host>, pgrepl_core::Error> {
            Ok(self.made.lock().unwrap().iter().filter(|(cl, _)| cl == &c.name).map(|(_, h)| h.clone()).collect())
        }
        async fn destroy_hosts(&self, c: &Cluster) -> Result<(), pgrepl_core::Error> {
            self.made.lock().unwrap().retain(|(cl, _)| cl != &c.name);
            Ok(())
        }
    }

    let c = local_cluster("suite-a", &["db1", "db2"], 6700);
    let n = local_cluster("suite-b", &["db1", "db2"], 6800);
    let p = Forgetful::default();
    let caught = tokio::spawn(async move { provider_suite(&p, &c, &n, HostLifecycle::Creates).await }).await.unwrap_err();
    let msg = caught.into_panic();
    let msg = msg.downcast_ref::<String>().map(String::as_str).unwrap_or("<not a string>");
    assert!(msg.contains("forgetful provider: a second ensure_hosts (it must create nothing) of suite-a"), "{msg}");
}
