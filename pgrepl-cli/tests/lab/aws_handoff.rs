//! EC2 provisioning handed to the SSH deploy: one `up` provisions three instances on a
//! real EC2 API (moto on 127.0.0.1, started here) and deploys a streaming cluster onto the
//! lab hosts that stand in for them. moto's own addresses are never dialed: the test maps
//! each instance onto a netns lab host (10.213.7.11-13).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrepl_aws::{Credentials, Ec2Provider};
use pgrepl_core::PgMajor;
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::spec::{AwsProviderSpec, ClusterSpec, ProviderSpec, SshProviderSpec};
use pgrepl_ssh::SshConnector;

use crate::common::*;

const NOBLE_ARM: &str = "ami-0a1b2c3d4e5f60718";

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(dir: &std::path::Path) -> Moto {
        let exe = lab_dir().join("venv/bin/moto_server");
        assert!(exe.exists(), "{} is missing: run scripts/lab/install.sh", exe.display());
        // moto has no current Ubuntu images: give it one, owned by Canonical.
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
        let port = free_ports(1);
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_AMIS_PATH", &catalogue)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not answer on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_provision_then_ssh_deploy_on_lab_hosts() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("aws-handoff");
    let moto = Moto::start(&wd.path);
    let key = NetnsLab::key();
    let aws = AwsProviderSpec {
        region: Some("us-east-2".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{}", moto.port)),
        admin_cidr: Some("10.213.7.1/32".into()),
        ssh_public_key_file: Some(PathBuf::from(format!("{}.pub", key.display()))),
        ssh: SshProviderSpec {
            user: Some("root".into()),
            key_file: Some(key.clone()),
            known_hosts: Some(NetnsLab::known_hosts()),
            connect_timeout_secs: Some(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut spec = ClusterSpec::from_toml(
        "name = \"awslab\"\npostgres = \"15\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n",
    )
    .unwrap();
    spec.provider = ProviderSpec::Aws(aws.clone());
    let cluster = spec.validate_for(PgMajor::V15).unwrap();
    let deployment = || async {
        let provider = Ec2Provider::builder()
            .credentials(Credentials::new("testing", "testing", None, None, "pgrepl-tests"))
            .with_spec(&aws)
            // The lab hosts stand in for the instances (moto's addresses are fake).
            .map_node_addresses(LAB_HOSTS.iter().map(|(n, a, _)| (*n, *a)))
            .poll_interval(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
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
