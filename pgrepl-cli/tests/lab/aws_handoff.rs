//! EC2 provisioning handed to the SSH deploy: one `up` provisions three instances on a
//! real EC2 API (moto on 127.0.0.1, started here) and deploys a streaming cluster onto the
//! lab hosts that stand in for them. moto's own addresses are never dialed: the test maps
//! each instance onto a netns lab host (10.213.7.11-13).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrepl_aws::{Credentials, Ec2Provider};
use pgrepl_core::PgMajor;
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::spec::{AwsProviderSpec, ClusterSpec, ProviderSpec, SshProviderSpec};
use pgrepl_ssh::SshConnector;

use crate::common::*;

const NOBLE_ARM: &str = "ami-0a1b2c3d4e5f60718";

/// moto with one current Ubuntu image (moto has none): owned by Canonical.
fn start_moto(dir: &std::path::Path) -> Moto {
    let catalogue = dir.join("amis.json");
    std::fs::write(
        &catalogue,
        format!(
            r#"[{{"ami_id": "{NOBLE_ARM}", "state": "available", "public": true, "owner_id": "099720109477",
  "image_location": "099720109477/ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250110", "sriov": "simple",
  "root_device_type": "ebs", "root_device_name": "/dev/sda1", "description": "Ubuntu 24.04", "image_type": "machine",
  "platform": null, "architecture": "arm64", "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250110",
  "virtualization_type": "hvm", "hypervisor": "xen", "creation_date": "2025-01-10T00:00:00.000Z"}}]"#
        ),
    )
    .unwrap();
    Moto::start_with(dir, &[("MOTO_AMIS_PATH", &catalogue)])
}

/// The aws provider's settings for moto, logging in to the lab hosts.
fn aws_spec(moto: &Moto) -> AwsProviderSpec {
    let key = NetnsLab::key();
    AwsProviderSpec {
        region: Some("us-east-2".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{}", moto.port)),
        admin_cidr: Some("10.213.7.1/32".into()),
        ssh_public_key_file: Some(PathBuf::from(format!("{}.pub", key.display()))),
        ssh: SshProviderSpec {
            user: Some("root".into()),
            key_file: Some(key),
            known_hosts: Some(NetnsLab::known_hosts()),
            connect_timeout_secs: Some(5),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The EC2 provider on moto, whose instances the lab hosts stand in for (moto's
/// addresses are fake).
async fn lab_provider(aws: &AwsProviderSpec) -> Ec2Provider {
    Ec2Provider::builder()
        .credentials(Credentials::new("testing", "testing", None, None, "pgrepl-tests"))
        .with_spec(aws)
        .map_node_addresses(LAB_HOSTS.iter().map(|(n, a, _)| (*n, *a)))
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_provision_then_ssh_deploy_on_lab_hosts() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("aws-handoff");
    let moto = start_moto(&wd.path);
    let aws = aws_spec(&moto);
    let mut spec = ClusterSpec::from_toml(
        "name = \"awslab\"\npostgres = \"15\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n",
    )
    .unwrap();
    spec.provider = ProviderSpec::Aws(aws.clone());
    let cluster = spec.validate_for(PgMajor::V15).unwrap();
    let deployment = || async {
        let provider = lab_provider(&aws).await;
        Deployment::new(
            cluster.clone(),
            Arc::new(provider),
            Arc::new(SshConnector::new("awslab", aws.ssh.clone(), PgMajor::V15)),
            wd.path.join("secrets"),
        )
    };

    let d = deployment().await;
    let report = d.up(&NoProgress).await.unwrap_or_else(|e| panic!("up: {e:?}"));
    assert!(report.changed());
    let hosts = d.provider().list_hosts(&cluster).await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|h| h.id.as_deref().is_some_and(|i| i.starts_with("i-")) && h.state == "running"), "{hosts:?}");
    let verify = d.verify(Duration::from_secs(30)).await.unwrap();
    assert!(verify.ok(), "{verify}");
    let repl = NetnsLab::psql("10.213.7.11", 5432, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
    assert_eq!(repl, "2");

    // A second up, with a new provider as a new process would build it: nothing new.
    let d2 = deployment().await;
    let again = d2.up(&NoProgress).await.unwrap();
    assert!(!again.changed(), "{again}");
    let ids_after: Vec<_> = d2.provider().list_hosts(&cluster).await.unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids_after, hosts.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), "the same instances");

    d2.destroy(&NoProgress).await.unwrap();
    let left = d2.provider().list_hosts(&cluster).await.unwrap();
    assert!(left.iter().all(|h| h.state != "running"), "instances terminated: {left:?}");
    let (_, clusters) = NetnsLab::ssh("10.213.7.11", "pg_lsclusters -h");
    assert_eq!(clusters, "", "the cluster on the host was dropped");
}

/// The same handoff with `[ha]` and etcd deployed by pgrepl, through the library as a
/// program embedding it would do: instances on moto mapped onto the lab hosts, their
/// addresses resolved, etcd members (TLS) on them, PostgreSQL, then pgrepl's agent binary
/// and the agents; the agents report and one leads; everything removed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_provision_then_ha_with_etcd_and_agents_on_lab_hosts() {
    use pgrepl_core::hostsvc::apply::Binary;
    use pgrepl_core::store::{ConsensusStore, Keys, StoreView};

    let _lab = NetnsLab::up();
    let wd = WorkDir::new("aws-ha");
    let moto = start_moto(&wd.path);
    let aws = aws_spec(&moto);
    let mut spec = ClusterSpec::from_toml(
        "name = \"awsha\"\npostgres = \"15\"\n[ha]\nttl = 10\n[ha.etcd]\ndeploy = true\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n",
    )
    .unwrap();
    spec.provider = ProviderSpec::Aws(aws.clone());
    let cluster = spec.validate_for(PgMajor::V15).unwrap();
    let provider = lab_provider(&aws).await;
    let d = Deployment::new(
        cluster.clone(),
        Arc::new(provider),
        Arc::new(SshConnector::new("awsha", aws.ssh.clone(), PgMajor::V15)),
        wd.path.join("secrets"),
    );
    // The instances first: etcd's members are rendered with their addresses.
    let d = d.with_host_addresses(true).await.unwrap();
    let addresses: Vec<_> = d.cluster().nodes.iter().map(|n| n.address.clone().unwrap_or_default()).collect();
    assert_eq!(addresses, ["10.213.7.11", "10.213.7.12", "10.213.7.13"]);

    let bytes = std::fs::read(env!("CARGO_BIN_EXE_pgrepl")).unwrap();
    let sha = pgrepl_etcd::hosts::sha256_hex(&bytes);
    let bin = Binary { bytes: &bytes, sha256: &sha };
    let (members, failed) = pgrepl_etcd::hosts::ensure_etcd(&d, bin).await.unwrap();
    assert!(failed.is_empty() && members.len() == 3, "{failed:?}");
    let pki = pgrepl_etcd::pki::AdminPki::in_state_dir(&wd.path.join("secrets"));
    let mut o = pgrepl_etcd::EtcdOptions::new(pgrepl_core::render::etcd_endpoints(d.cluster()));
    o.ca_file = Some(pki.ca_cert());
    o.cert_file = Some(pki.admin_cert());
    o.key_file = Some(pki.admin_key());
    o.request_timeout = Duration::from_secs(2);
    let store = pgrepl_etcd::EtcdStore::new(&o).unwrap();
    pgrepl_etcd::hosts::wait_ready(&store, Duration::from_secs(60)).await.unwrap();
    // Recorded in the state directory until the store holds it (published below).

    let report = d.up(&NoProgress).await.unwrap_or_else(|e| panic!("up: {e:?}"));
    assert!(report.changed());
    let store: Arc<dyn ConsensusStore> = Arc::new(store);
    pgrepl_core::agent::publish(&d, store.clone(), Duration::from_secs(30)).await.unwrap();
    let rollout = pgrepl_etcd::hosts::prepare_agents(&d, &spec, &sha, "info").await.unwrap();
    assert!(rollout.unreachable.is_empty(), "{:?}", rollout.unreachable);
    rollout.apply(bin).await.unwrap();

    let keys = Keys::new("awsha");
    let t0 = Instant::now();
    let view = loop {
        let v = StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await.unwrap());
        if v.leader_node() == Some("db1") && v.members.len() == 3 {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the agents did not report: {v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(view.members.values().all(|m| m.value.agent.is_some()), "{view:?}");
    for (_, addr, _) in LAB_HOSTS {
        let (code, _) = NetnsLab::ssh(addr, "! flock -n /var/lib/pgrepl/awsha/run/agent.pid true");
        assert_eq!(code, 0, "{addr}: its agent runs");
    }

    // The agents and etcd members off the hosts, then the instances (on EC2 the hosts go
    // with them; here the lab hosts stay, and must be clean).
    let (removed, unreachable) = pgrepl_etcd::hosts::stop_on_hosts(&d, true).await.unwrap();
    assert!(unreachable.is_empty() && removed.len() == 6, "{removed:?} {unreachable:?}");
    d.destroy(&NoProgress).await.unwrap();
    for (_, addr, _) in LAB_HOSTS {
        let (_, left) = NetnsLab::ssh(
            addr,
            // The machine's processes are all visible from a lab host (only the network and
            // mounts are per host): this cluster's only.
            "ls -d /etc/pgrepl/awsha /var/lib/pgrepl/awsha 2>/dev/null; pgrep -fa '[p]grepl/awsha/|[e]tcd --config-file /etc/[p]grepl/awsha/' || true",
        );
        assert_eq!(left, "", "{addr}: left {left}");
    }
}
