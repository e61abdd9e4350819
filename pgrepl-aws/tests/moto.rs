//! `Ec2Provider` against a real EC2 API: moto on loopback.
//!
//! Every test starts its own `moto_server -H 127.0.0.1 -p <free port>` (state is
//! per-server, so tests do not see each other's resources) and kills it by pid on drop.
//! Most start it with a small AMI catalogue (`MOTO_AMIS_PATH`) holding Canonical-owned
//! Ubuntu images, because moto's built-in catalogue has no current Ubuntu AMIs.
//!
//! Known moto behaviour these tests respect:
//! * the addresses it reports are fake: nothing here dials them (`wait_for_ssh(false)`,
//!   or `map_host` to a loopback listener of the test);
//! * state persists until reset: one server per test, unique cluster names;
//! * it lets a security group in use be deleted (real EC2 answers DependencyViolation):
//!   the provider terminates and waits first anyway, so nothing depends on it;
//! * it accepts any credentials: the AuthFailure mapping is unit-tested in `mapping/sdk_error.rs`.
//!
//! A missing moto fails the tests with a message naming scripts/lab/install.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, Instance, SecurityGroup};
use pgrepl_aws::mapping::{self, Rule, Source};
use pgrepl_aws::{Credentials, Ec2Backend, Ec2Provider, ProviderError, SdkConfig};
use pgrepl_core::deploy::Deployment;
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::provider::{Connector, Host, NodeHandle, Provider};
use pgrepl_core::spec::{AwsProviderSpec, ClusterSpec, ProviderSpec, VersionChoice};
use pgrepl_core::{Cluster, Node, PgMajor};

const REGION: &str = "us-east-2";
const ADMIN_CIDR: &str = "203.0.113.7/32";
const APP_CIDR: &str = "10.20.0.0/16";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKtuaifWfQ2+p/tgxqamhJd07I8Xnza1H6fUgvWaRL3/ pgrepl-test\n";
const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(60);

const NOBLE_ARM: &str = "ami-0a1b0000000000001";
const NOBLE_ARM_OLD: &str = "ami-0a1b0000000000002";
const JAMMY_ARM: &str = "ami-0a1b0000000000003";
const ORACULAR_ARM: &str = "ami-0a1b0000000000004";
const NOBLE_AMD: &str = "ami-0a1b0000000000005";
const IMPOSTOR_ARM: &str = "ami-0a1b0000000000006";

// ---------------------------------------------------------------------------------------
// moto fixture

fn lab_dir() -> PathBuf {
    PathBuf::from(std::env::var("PGREPL_LAB").unwrap_or_else(|_| "/opt/pgrepl-lab".into()))
}

fn moto_server_path() -> PathBuf {
    let p = lab_dir().join("venv/bin/moto_server");
    assert!(p.is_file(), "moto_server not found at {}: run scripts/lab/install.sh (as root) to install the test lab", p.display());
    p
}

/// Which AMIs moto knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Amis {
    /// Our catalogue: Canonical Ubuntu images, LTS and not, arm64 and amd64, and an
    /// impostor with an Ubuntu name from another owner.
    Ubuntu,
    /// moto's built-in catalogue (old Ubuntu 14.04/16.04 amd64 only).
    Builtin,
}

fn ubuntu_catalogue() -> String {
    let img = |id: &str, name: &str, arch: &str, date: &str, owner: &str| {
        format!(
            r#"{{"ami_id": "{id}", "state": "available", "public": true, "owner_id": "{owner}",
  "image_location": "{owner}/{name}", "sriov": "simple", "root_device_type": "ebs",
  "root_device_name": "/dev/sda1", "description": "{name}", "image_type": "machine",
  "platform": null, "architecture": "{arch}", "name": "{name}", "virtualization_type": "hvm",
  "hypervisor": "xen", "creation_date": "{date}"}}"#
        )
    };
    let c = mapping::CANONICAL_OWNER;
    let list = [
        img(NOBLE_ARM, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250110", "arm64", "2025-01-10T00:00:00.000Z", c),
        img(NOBLE_ARM_OLD, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20240601", "arm64", "2024-06-01T00:00:00.000Z", c),
        img(JAMMY_ARM, "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-20250201", "arm64", "2025-02-01T00:00:00.000Z", c),
        img(ORACULAR_ARM, "ubuntu/images/hvm-ssd-gp3/ubuntu-oracular-24.10-arm64-server-20250301", "arm64", "2025-03-01T00:00:00.000Z", c),
        img(NOBLE_AMD, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250110", "x86_64", "2025-01-10T00:00:00.000Z", c),
        img(
            IMPOSTOR_ARM,
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20990101",
            "arm64",
            "2099-01-01T00:00:00.000Z",
            "111122223333",
        ),
    ];
    format!("[{}]", list.join(",\n"))
}

struct Moto {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal HTTP/1.0 request; the status code, or the I/O error.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))
}

impl Moto {
    fn start(amis: Amis) -> Moto {
        let exe = moto_server_path();
        let dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("moto-{port}.log"))).unwrap();
            let mut cmd = Command::new(&exe);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
            if amis == Amis::Ubuntu {
                let cat = dir.path().join("amis.json");
                std::fs::write(&cat, ubuntu_catalogue()).unwrap();
                cmd.env("MOTO_AMIS_PATH", &cat);
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}; run scripts/lab/install.sh", exe.display()));
            let deadline = Instant::now() + MOTO_READY_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "moto_server exited with {status}: {}",
                        std::fs::read_to_string(dir.path().join(format!("moto-{port}.log"))).unwrap_or_default()
                    );
                    break;
                }
                match http(port, "GET", "/moto-api/") {
                    Ok(200) => {
                        return Moto { child, url: format!("http://127.0.0.1:{port}"), dir };
                    }
                    Ok(code) => last = format!("GET /moto-api/ answered {code}"),
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("moto_server on port {port} did not answer within {}s: {last}", MOTO_READY_TIMEOUT.as_secs());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server did not start: {last}");
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Forgets every resource (moto keeps state until reset).
    fn reset(&self) {
        assert_eq!(http(self.port(), "POST", "/moto-api/reset").unwrap(), 200);
    }

    /// An EC2 client of the test itself, to check what the provider did.
    fn client(&self) -> Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .credentials_provider(creds())
            .endpoint_url(&self.url)
            .build();
        Client::from_conf(conf)
    }

    fn key_file(&self, file: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(file);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Only the process this fixture started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn creds() -> Credentials {
    Credentials::new("testing", "testing", None, None, "pgrepl-tests")
}

// ---------------------------------------------------------------------------------------
// helpers

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id() % 10000, UNIQUE.fetch_add(1, Ordering::Relaxed))
}

fn aws_spec(moto: &Moto) -> AwsProviderSpec {
    AwsProviderSpec {
        region: Some(REGION.into()),
        endpoint_url: Some(moto.url.clone()),
        admin_cidr: Some(ADMIN_CIDR.into()),
        app_cidrs: vec![APP_CIDR.into()],
        ssh_public_key_file: Some(moto.key_file("id_test.pub", PUBLIC_KEY)),
        volume_gb: Some(30),
        ..Default::default()
    }
}

/// A validated 3-node cluster (db1 primary, db2/db3 standbys) with this provider section.
fn cluster(name: &str, aws: &AwsProviderSpec) -> Cluster {
    cluster_spec(name, aws).validate().unwrap()
}

/// The spec of [`cluster`]: PostgreSQL 16, db1 primary, db2/db3 standbys, on EC2.
fn cluster_spec(name: &str, aws: &AwsProviderSpec) -> ClusterSpec {
    let mut spec = ClusterSpec::from_toml(&format!(
        r#"
name = "{name}"
postgres = "16"

[provider]
kind = "aws"
admin_cidr = "{ADMIN_CIDR}"

[[nodes]]
name = "db1"
role = "primary"

[[nodes]]
name = "db2"
role = "standby"

[[nodes]]
name = "db3"
role = "standby"
"#
    ))
    .unwrap();
    spec.provider = ProviderSpec::Aws(aws.clone());
    spec
}

async fn provider(aws: &AwsProviderSpec) -> Ec2Provider {
    builder(aws).build().await.unwrap()
}

fn builder(aws: &AwsProviderSpec) -> pgrepl_aws::Ec2ProviderBuilder {
    Ec2Provider::builder()
        .credentials(creds())
        .with_spec(aws)
        // moto's addresses are fake: never dial them.
        .wait_for_ssh(false)
        .poll_interval(Duration::from_millis(50))
        .ready_timeout(Duration::from_secs(60))
        .destroy_timeout(Duration::from_secs(60))
}

fn f(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Every instance moto knows, any state.
async fn all_instances(ec2: &Client) -> Vec<Instance> {
    let out = ec2.describe_instances().send().await.unwrap();
    out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect()
}

/// The cluster's instances that are not terminated, by node.
async fn live_by_node(ec2: &Client, cluster: &str) -> BTreeMap<String, Instance> {
    let mut m = BTreeMap::new();
    for i in all_instances(ec2).await {
        let state = mapping::instance_state(&i);
        if mapping::tag_value(i.tags(), mapping::TAG_CLUSTER) == Some(cluster) && state != "terminated" && state != "shutting-down" {
            let node = mapping::tag_value(i.tags(), mapping::TAG_NODE).unwrap().to_string();
            assert!(m.insert(node.clone(), i).is_none(), "two live instances for {node}");
        }
    }
    m
}

async fn groups(ec2: &Client) -> Vec<SecurityGroup> {
    ec2.describe_security_groups().send().await.unwrap().security_groups().to_vec()
}

async fn cluster_groups(ec2: &Client, cluster: &str) -> Vec<SecurityGroup> {
    groups(ec2).await.into_iter().filter(|g| mapping::belongs_to(g.tags(), cluster)).collect()
}

async fn key_names(ec2: &Client) -> BTreeSet<String> {
    ec2.describe_key_pairs().send().await.unwrap().key_pairs().iter().filter_map(|k| k.key_name().map(str::to_string)).collect()
}

/// Checks one cluster's instances, tags, group rules and key pair through the EC2 API.
async fn check_provisioned(ec2: &Client, name: &str, hosts: &[pgrepl_core::provider::Host]) {
    let live = live_by_node(ec2, name).await;
    assert_eq!(live.keys().collect::<Vec<_>>(), ["db1", "db2", "db3"]);
    let sgs = cluster_groups(ec2, name).await;
    assert_eq!(sgs.len(), 1, "one security group per cluster");
    let sg = &sgs[0];
    let sg_id = sg.group_id().unwrap();
    assert_eq!(sg.group_name(), Some(format!("pgrepl-{name}").as_str()));

    let mut zones = BTreeSet::new();
    for (node, i) in &live {
        assert_eq!(mapping::instance_state(i), "running");
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t4g.small"));
        assert_eq!(i.image_id(), Some(NOBLE_ARM), "newest Ubuntu LTS arm64 from Canonical");
        assert_eq!(i.key_name(), Some(format!("pgrepl-{name}").as_str()));
        assert!(i.security_groups().iter().any(|g| g.group_id() == Some(sg_id)), "{node} is in the cluster's group");
        let tags = i.tags();
        assert_eq!(mapping::tag_value(tags, "Name"), Some(format!("{name}-{node}").as_str()));
        assert_eq!(mapping::tag_value(tags, "pgrepl:cluster"), Some(name));
        assert_eq!(mapping::tag_value(tags, "pgrepl:node"), Some(node.as_str()));
        let role = if node == "db1" { "primary" } else { "standby" };
        assert_eq!(mapping::tag_value(tags, "pgrepl:role"), Some(role));
        zones.insert(i.placement().unwrap().availability_zone().unwrap().to_string());

        // The host handed to the deploy: private IP for replication, public for SSH.
        let h = hosts.iter().find(|h| &h.node == node).unwrap();
        assert_eq!(h.id.as_deref(), i.instance_id());
        assert_eq!(h.address.as_deref(), i.private_ip_address());
        assert_eq!(h.admin_address.as_deref(), i.public_ip_address());
        assert!(h.address.is_some());
        assert_eq!(h.state, "running");

        // Root volume: size from the spec, default type gp3.
        let vols = ec2.describe_volumes().filters(f("attachment.instance-id", i.instance_id().unwrap())).send().await.unwrap();
        let v = &vols.volumes()[0];
        assert_eq!(v.size(), Some(30), "{node} root volume size");
        assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"));
    }
    assert_eq!(zones.len(), 3, "spread over three zones: {zones:?}");
    assert_eq!(hosts.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["db1", "db2", "db3"], "hosts come in node order");

    // Rules: SSH only from the admin CIDR; 5432 only from the group itself and the app CIDR.
    let rules = mapping::rules_of(sg.ip_permissions());
    let expected: BTreeSet<Rule> = [
        Rule::tcp(22, Source::Cidr(ADMIN_CIDR.into())),
        Rule::tcp(5432, Source::Group(sg_id.into())),
        Rule::tcp(5432, Source::Cidr(APP_CIDR.into())),
    ]
    .into();
    assert_eq!(rules.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(!rules.iter().any(|r| r.covers(5432) && r.is_open_to_world()), "no 0.0.0.0/0 on 5432: {rules:?}");
    let ssh: Vec<_> = rules.iter().filter(|r| r.covers(22)).collect();
    assert_eq!(ssh, [&Rule::tcp(22, Source::Cidr(ADMIN_CIDR.into()))]);

    // The key pair pgrepl imported, tagged for the cluster.
    let keys = ec2.describe_key_pairs().key_names(format!("pgrepl-{name}")).send().await.unwrap();
    assert_eq!(keys.key_pairs().len(), 1);
    assert!(mapping::belongs_to(keys.key_pairs()[0].tags(), name));
}

// ---------------------------------------------------------------------------------------
// provisioning, idempotence, destroy

#[tokio::test]
async fn provisions_three_nodes_with_tags_rules_and_key_pair() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("prov");
    let aws = aws_spec(&moto);
    let c = cluster(&name, &aws);
    let events = Arc::new(Recorder::default());
    let p = builder(&aws).progress(events.clone()).build().await.unwrap();
    assert_eq!(p.kind(), "aws");
    assert_eq!(p.region(), REGION);
    assert_eq!(p.endpoint(), moto.url);

    let hosts = p.ensure_hosts(&c).await.unwrap();
    check_provisioned(&ec2, &name, &hosts).await;
    assert_eq!(p.list_hosts(&c).await.unwrap(), hosts);

    // Progress: every node's launch and wait were reported, and the cluster's group and key.
    let ev = events.0.lock().unwrap().clone();
    for node in ["db1", "db2", "db3"] {
        for step in ["launch", "wait until running"] {
            assert!(ev.iter().any(|e| e.starts_with(&format!("finished {node} {step}"))), "{node} {step}: {ev:?}");
        }
    }
    assert!(ev.iter().any(|e| e.starts_with("finished cluster create security group sg-")), "{ev:?}");
    assert!(ev.iter().any(|e| e.starts_with("finished cluster import key pair")), "{ev:?}");
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl pgrepl_core::deploy::Progress for Recorder {
    fn started(&self, node: &str, step: &str) {
        self.0.lock().unwrap().push(format!("started {node} {step}"));
    }
    fn finished(&self, node: &str, step: &str, outcome: &str) {
        self.0.lock().unwrap().push(format!("finished {node} {step} {outcome}"));
    }
}

#[tokio::test]
async fn second_ensure_creates_nothing_new() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("idem");
    let aws = aws_spec(&moto);
    let c = cluster(&name, &aws);
    let p = provider(&aws).await;

    let first = p.ensure_hosts(&c).await.unwrap();
    let (n_inst, n_sg, keys) = (all_instances(&ec2).await.len(), groups(&ec2).await.len(), key_names(&ec2).await);
    let rules_before = mapping::rules_of(cluster_groups(&ec2, &name).await[0].ip_permissions());

    // Same provider, and a new one (a second `pgrepl up`).
    let again = p.ensure_hosts(&c).await.unwrap();
    let p2 = provider(&aws).await;
    let third = p2.ensure_hosts(&c).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first, third);
    assert_eq!(all_instances(&ec2).await.len(), n_inst, "no new instance");
    assert_eq!(groups(&ec2).await.len(), n_sg, "no new security group");
    assert_eq!(key_names(&ec2).await, keys, "no new key pair");
    assert_eq!(mapping::rules_of(cluster_groups(&ec2, &name).await[0].ip_permissions()), rules_before, "rules unchanged");
    check_provisioned(&ec2, &name, &third).await;
}

#[tokio::test]
async fn ensure_repairs_rules_restarts_stopped_and_replaces_terminated_nodes() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("repair");
    let aws = aws_spec(&moto);
    let c = cluster(&name, &aws);
    let p = provider(&aws).await;
    let first = p.ensure(&c).await.unwrap();
    let id = |node: &str| first.iter().find(|h| h.node == node).unwrap().id.clone().unwrap();

    // Someone opens PostgreSQL to the world, stops db2 and terminates db3.
    let sg_id = cluster_groups(&ec2, &name).await[0].group_id().unwrap().to_string();
    ec2.authorize_security_group_ingress()
        .group_id(&sg_id)
        .ip_permissions(mapping::permission(&Rule::tcp(5432, Source::Cidr("0.0.0.0/0".into())), None))
        .send()
        .await
        .unwrap();
    ec2.stop_instances().instance_ids(id("db2")).send().await.unwrap();
    ec2.terminate_instances().instance_ids(id("db3")).send().await.unwrap();

    let second = p.ensure(&c).await.unwrap();
    let id2 = |node: &str| second.iter().find(|h| h.node == node).unwrap().id.clone().unwrap();
    assert_eq!(id2("db1"), id("db1"));
    assert_eq!(id2("db2"), id("db2"), "the stopped instance is started, not replaced");
    assert_ne!(id2("db3"), id("db3"), "the terminated node gets a new instance");
    assert!(second.iter().all(|h| h.state == "running"), "{second:?}");
    check_provisioned(&ec2, &name, &second).await; // includes: no 0.0.0.0/0 on 5432 again
}

#[tokio::test]
async fn destroy_removes_this_cluster_and_nothing_else() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let (alpha, beta) = (unique("alpha"), unique("beta"));

    // Things that are not pgrepl's: a key pair and a security group of the user.
    ec2.import_key_pair().key_name("user-key").public_key_material(aws_sdk_ec2::primitives::Blob::new(PUBLIC_KEY)).send().await.unwrap();
    let vpc = ec2.describe_vpcs().filters(f("is-default", "true")).send().await.unwrap().vpcs()[0].vpc_id().unwrap().to_string();
    let user_sg = ec2
        .create_security_group()
        .group_name("user-sg")
        .description("not pgrepl's")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();

    let aws_a = aws_spec(&moto);
    let aws_b = AwsProviderSpec { ssh_public_key_file: None, key_name: Some("user-key".into()), ..aws_spec(&moto) };
    let (ca, cb) = (cluster(&alpha, &aws_a), cluster(&beta, &aws_b));
    let (pa, pb) = (provider(&aws_a).await, provider(&aws_b).await);
    pa.ensure_hosts(&ca).await.unwrap();
    let beta_hosts = pb.ensure_hosts(&cb).await.unwrap();
    let beta_sg = cluster_groups(&ec2, &beta).await[0].group_id().unwrap().to_string();
    assert!(live_by_node(&ec2, &beta).await.values().all(|i| i.key_name() == Some("user-key")));
    assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{beta}")), "nothing imported with key_name");

    pa.destroy_hosts(&ca).await.unwrap();

    // Nothing of alpha is left.
    assert!(live_by_node(&ec2, &alpha).await.is_empty());
    assert!(cluster_groups(&ec2, &alpha).await.is_empty());
    assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{alpha}")));
    assert!(pa.list_hosts(&ca).await.unwrap().is_empty());
    // Beta and the user's own resources are untouched.
    let beta_live = live_by_node(&ec2, &beta).await;
    assert_eq!(beta_live.len(), 3);
    assert!(beta_live.values().all(|i| mapping::instance_state(i) == "running"));
    assert_eq!(pb.list_hosts(&cb).await.unwrap(), beta_hosts);
    let sg_ids: BTreeSet<String> = groups(&ec2).await.iter().filter_map(|g| g.group_id().map(str::to_string)).collect();
    assert!(sg_ids.contains(&beta_sg) && sg_ids.contains(&user_sg));
    assert!(key_names(&ec2).await.contains("user-key"));

    // Destroy is idempotent; destroying beta keeps the user's key pair it used.
    pa.destroy_hosts(&ca).await.unwrap();
    pb.destroy_hosts(&cb).await.unwrap();
    assert!(live_by_node(&ec2, &beta).await.is_empty());
    assert!(cluster_groups(&ec2, &beta).await.is_empty());
    assert!(key_names(&ec2).await.contains("user-key"));
    assert!(groups(&ec2).await.iter().any(|g| g.group_id() == Some(user_sg.as_str())));
    assert!(groups(&ec2).await.iter().any(|g| g.group_name() == Some("default")));
}

#[tokio::test]
async fn given_subnets_ami_type_and_volume_are_used() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let subnets = ec2.describe_subnets().filters(f("default-for-az", "true")).send().await.unwrap();
    let mut by_az: Vec<(String, String)> =
        subnets.subnets().iter().map(|s| (s.availability_zone().unwrap().to_string(), s.subnet_id().unwrap().to_string())).collect();
    by_az.sort();
    let (sa, sb) = (by_az[0].1.clone(), by_az[1].1.clone());
    let name = unique("given");
    let aws = AwsProviderSpec {
        subnet_ids: vec![sb.clone(), sa.clone()],
        ami: Some(NOBLE_AMD.into()),
        instance_type: Some("t3.small".into()),
        volume_gb: Some(12),
        volume_type: Some("gp2".into()),
        ..aws_spec(&moto)
    };
    let c = cluster(&name, &aws);
    let hosts = provider(&aws).await.ensure(&c).await.unwrap();
    assert_eq!(hosts.len(), 3);
    let live = live_by_node(&ec2, &name).await;
    let subnet_of = |n: &str| live[n].subnet_id().unwrap().to_string();
    assert_eq!(
        [subnet_of("db1"), subnet_of("db2"), subnet_of("db3")],
        [sb.clone(), sa.clone(), sb.clone()],
        "nodes alternate over the given subnets, in the given order"
    );
    for i in live.values() {
        assert_eq!(i.image_id(), Some(NOBLE_AMD));
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"));
        let v = ec2.describe_volumes().filters(f("attachment.instance-id", i.instance_id().unwrap())).send().await.unwrap();
        assert_eq!(v.volumes()[0].size(), Some(12));
        assert_eq!(v.volumes()[0].volume_type().map(|t| t.as_str()), Some("gp2"));
    }
}

// ---------------------------------------------------------------------------------------
// [ha]: etcd and agent ports, locations as availability zones, witnesses

/// The spec of an `[ha]` cluster with a deployed etcd: db1/db2 in "east", db3/db4 in
/// "west" (mapped by `[provider.locations]`), witness w1 in "us-east-2c" (a zone name
/// as its location): five etcd members over three zones.
fn geo_spec(name: &str, aws: &AwsProviderSpec) -> ClusterSpec {
    let mut spec = ClusterSpec::from_toml(&format!(
        r#"
name = "{name}"
postgres = "16"

[provider]
kind = "aws"
admin_cidr = "{ADMIN_CIDR}"

[ha.etcd]
deploy = true

[[nodes]]
name = "db1"
role = "primary"
location = "east"

[[nodes]]
name = "db2"
role = "standby"
location = "east"

[[nodes]]
name = "db3"
role = "standby"
location = "west"

[[nodes]]
name = "db4"
role = "standby"
location = "west"

[[nodes]]
name = "w1"
role = "witness"
location = "us-east-2c"
"#
    ))
    .unwrap();
    spec.provider = ProviderSpec::Aws(aws.clone());
    spec
}

/// [`aws_spec`] with east → us-east-2a, west → us-east-2b, and smaller witnesses.
fn geo_aws(moto: &Moto) -> AwsProviderSpec {
    AwsProviderSpec {
        locations: [("east".to_string(), "us-east-2a".to_string()), ("west".to_string(), "us-east-2b".to_string())].into(),
        witness_instance_type: Some("t4g.micro".into()),
        ..aws_spec(moto)
    }
}

/// The rules of the cluster's only group, and its id.
async fn group_rules(ec2: &Client, cluster: &str) -> (String, Vec<Rule>, Vec<Rule>) {
    let sgs = cluster_groups(ec2, cluster).await;
    assert_eq!(sgs.len(), 1, "one security group per cluster");
    let sg = &sgs[0];
    (sg.group_id().unwrap().to_string(), mapping::rules_of(sg.ip_permissions()), mapping::owned_rules_of(sg.ip_permissions()))
}

/// What an `[ha]` cluster with a deployed etcd must have, and nothing else.
fn ha_rules(sg: &str) -> BTreeSet<Rule> {
    let g = || Source::Group(sg.to_string());
    let admin = || Source::Cidr(ADMIN_CIDR.into());
    [
        Rule::tcp(22, admin()),
        Rule::tcp(5432, g()),
        Rule::tcp(5432, Source::Cidr(APP_CIDR.into())),
        Rule::tcp(8008, g()),
        Rule::tcp(8008, admin()),
        Rule::tcp(2379, g()),
        Rule::tcp(2379, admin()),
        Rule::tcp(2380, g()),
    ]
    .into()
}

#[tokio::test]
async fn ha_cluster_lands_in_its_zones_with_a_witness_and_etcd_and_agents_open_only_to_the_group_and_admin() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("geo");
    let aws = geo_aws(&moto);
    let c = geo_spec(&name, &aws).validate().unwrap();
    assert_eq!(c.witnesses.len(), 1);
    let p = provider(&aws).await;

    // The dry run already places every host, the witness too, in its zone.
    let pre = p.preflight(&c).await.unwrap();
    let planned: Vec<(&str, &str)> = pre.placement.iter().map(|(n, _, z)| (n.as_str(), z.as_str())).collect();
    assert_eq!(planned, [("db1", "us-east-2a"), ("db2", "us-east-2a"), ("db3", "us-east-2b"), ("db4", "us-east-2b"), ("w1", "us-east-2c")]);
    assert!(live_by_node(&ec2, &name).await.is_empty(), "preflight creates nothing");

    let hosts = p.ensure_hosts(&c).await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["db1", "db2", "db3", "db4", "w1"], "nodes, then the witness");
    assert!(hosts.iter().all(|h| h.state == "running" && h.address.is_some()), "{hosts:?}");

    // Each instance in its location's zone; the witness smaller, tagged as a witness.
    let live = live_by_node(&ec2, &name).await;
    assert_eq!(live.keys().collect::<Vec<_>>(), ["db1", "db2", "db3", "db4", "w1"]);
    let zone = |n: &str| live[n].placement().unwrap().availability_zone().unwrap().to_string();
    let zones: Vec<String> = ["db1", "db2", "db3", "db4", "w1"].iter().map(|n| zone(n)).collect();
    assert_eq!(zones, ["us-east-2a", "us-east-2a", "us-east-2b", "us-east-2b", "us-east-2c"]);
    for (node, i) in &live {
        let subnet = ec2.describe_subnets().subnet_ids(i.subnet_id().unwrap()).send().await.unwrap();
        assert_eq!(subnet.subnets()[0].availability_zone(), Some(zone(node).as_str()), "{node}'s subnet is in its zone");
        let (ty, role) = match node.as_str() {
            "w1" => ("t4g.micro", "witness"),
            "db1" => ("t4g.small", "primary"),
            _ => ("t4g.small", "standby"),
        };
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some(ty), "{node}");
        assert_eq!(mapping::tag_value(i.tags(), mapping::TAG_ROLE), Some(role), "{node}");
        let h = hosts.iter().find(|h| &h.node == node).unwrap();
        assert_eq!((h.id.as_deref(), h.address.as_deref()), (i.instance_id(), i.private_ip_address()));
    }

    // The group: etcd's client and peer ports and the agents' port from the group itself,
    // the client and agent ports from the admin CIDR too; nothing from 0.0.0.0/0.
    let (sg, rules, owned) = group_rules(&ec2, &name).await;
    assert!(live.values().all(|i| i.security_groups().iter().any(|g| g.group_id() == Some(sg.as_str()))));
    assert_eq!(rules.iter().cloned().collect::<BTreeSet<_>>(), ha_rules(&sg));
    assert!(!rules.iter().any(Rule::is_open_to_world), "{rules:?}");
    assert_eq!(owned, rules, "every rule carries pgrepl's description");

    // Again, with a new provider (a second `pgrepl up`): nothing changes.
    let n_instances = all_instances(&ec2).await.len();
    let again = provider(&aws).await.ensure_hosts(&c).await.unwrap();
    assert_eq!(again, hosts);
    assert_eq!(all_instances(&ec2).await.len(), n_instances, "no new instance");
    assert_eq!(group_rules(&ec2, &name).await.1, rules, "rules unchanged");
    assert_eq!(p.list_hosts(&c).await.unwrap(), hosts);

    // Destroy: every instance (the witness too), the group and its rules, the key pair.
    p.destroy_hosts(&c).await.unwrap();
    assert!(live_by_node(&ec2, &name).await.is_empty());
    let ids: BTreeSet<&str> = hosts.iter().filter_map(|h| h.id.as_deref()).collect();
    let states: Vec<(String, String)> = all_instances(&ec2)
        .await
        .iter()
        .filter(|i| ids.contains(i.instance_id().unwrap()))
        .map(|i| (i.instance_id().unwrap().to_string(), mapping::instance_state(i).to_string()))
        .collect();
    assert_eq!(states.len(), 5, "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "terminated"), "{states:?}");
    assert!(cluster_groups(&ec2, &name).await.is_empty());
    assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{name}")));
    assert!(p.list_hosts(&c).await.unwrap().is_empty());
}

#[tokio::test]
async fn ha_rules_are_repaired_and_revoked_with_the_ha_section() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("harules");
    let aws = aws_spec(&moto);
    let mut spec = cluster_spec(&name, &aws);
    spec.ha = Some(pgrepl_core::spec::HaSpec {
        etcd: pgrepl_core::spec::EtcdSpec { deploy: true, ..Default::default() },
        ..pgrepl_core::spec::HaSpec::with_endpoints(Vec::<String>::new())
    });
    let with_ha = spec.validate().unwrap();
    let p = provider(&aws).await;
    p.ensure_hosts(&with_ha).await.unwrap();
    let (sg, rules, _) = group_rules(&ec2, &name).await;
    assert_eq!(rules.iter().cloned().collect::<BTreeSet<_>>(), ha_rules(&sg));

    // Someone opens etcd's client port to the world and adds a rule of their own on 9100;
    // a pgrepl rule on the peer port goes missing.
    let world = Rule::tcp(2379, Source::Cidr("0.0.0.0/0".into()));
    let theirs = Rule::tcp(9100, Source::Cidr("10.0.0.0/8".into()));
    let peer = Rule::tcp(2380, Source::Group(sg.clone()));
    ec2.authorize_security_group_ingress()
        .group_id(&sg)
        .ip_permissions(mapping::permission(&world, None))
        .ip_permissions(mapping::permission(&theirs, Some("node exporter, by hand")))
        .send()
        .await
        .unwrap();
    let perms = cluster_groups(&ec2, &name).await[0].ip_permissions().to_vec();
    let as_found = mapping::permission(&peer, mapping::description_of(&peer, &perms).as_deref());
    ec2.revoke_security_group_ingress().group_id(&sg).ip_permissions(as_found).send().await.unwrap();
    p.ensure_hosts(&with_ha).await.unwrap();
    let (_, rules, _) = group_rules(&ec2, &name).await;
    let mut want = ha_rules(&sg);
    want.insert(theirs.clone());
    assert_eq!(rules.iter().cloned().collect::<BTreeSet<_>>(), want, "0.0.0.0/0 on 2379 revoked, the peer rule back, theirs kept");

    // API CIDRs reach the agents' port (HAProxy, Prometheus), and go again when removed.
    let api = Rule::tcp(8008, Source::Cidr("10.30.0.0/16".into()));
    let with_api = AwsProviderSpec { api_cidrs: vec!["10.30.0.0/16".into()], ..aws.clone() };
    provider(&with_api).await.ensure_hosts(&with_ha).await.unwrap();
    let (_, rules, _) = group_rules(&ec2, &name).await;
    assert!(rules.contains(&api), "{rules:?}");
    assert!(!rules.iter().any(|r| r.source == api.source && r.from != 8008), "the API CIDR reaches the agents only: {rules:?}");
    p.ensure_hosts(&with_ha).await.unwrap();
    assert!(!group_rules(&ec2, &name).await.1.contains(&api));

    // Without [ha]: pgrepl's etcd and agent rules go; PostgreSQL, SSH and theirs stay.
    let without = cluster(&name, &aws);
    p.ensure_hosts(&without).await.unwrap();
    let (_, rules, _) = group_rules(&ec2, &name).await;
    let want: BTreeSet<Rule> = [
        Rule::tcp(22, Source::Cidr(ADMIN_CIDR.into())),
        Rule::tcp(5432, Source::Group(sg.clone())),
        Rule::tcp(5432, Source::Cidr(APP_CIDR.into())),
        theirs,
    ]
    .into();
    assert_eq!(rules.iter().cloned().collect::<BTreeSet<_>>(), want);
    p.destroy_hosts(&without).await.unwrap();
    assert!(cluster_groups(&ec2, &name).await.is_empty());
}

#[tokio::test]
async fn a_location_whose_zone_has_no_subnet_is_refused_before_anything_is_created() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let subnets = ec2.describe_subnets().filters(f("default-for-az", "true")).send().await.unwrap();
    let in_zone =
        |z: &str| subnets.subnets().iter().find(|s| s.availability_zone() == Some(z)).and_then(|s| s.subnet_id()).unwrap().to_string();
    // Only subnets of us-east-2a and us-east-2b may be used; the witness asks for us-east-2c.
    let aws = AwsProviderSpec { subnet_ids: vec![in_zone("us-east-2a"), in_zone("us-east-2b")], ..geo_aws(&moto) };
    let name = unique("nozone");
    let c = geo_spec(&name, &aws).validate().unwrap();
    let (n_instances, n_groups, keys) = (all_instances(&ec2).await.len(), groups(&ec2).await.len(), key_names(&ec2).await);
    let e = provider(&aws).await.ensure(&c).await.unwrap_err();
    assert!(matches!(e, ProviderError::Invalid { .. }), "{e:?}");
    let text = pgrepl_core::error::chain(&e);
    for w in ["node w1", "us-east-2c", "us-east-2a, us-east-2b", "provider.subnet_ids"] {
        assert!(text.contains(w), "{text:?} lacks {w:?}");
    }
    assert_eq!(all_instances(&ec2).await.len(), n_instances, "no instance");
    assert_eq!(groups(&ec2).await.len(), n_groups, "no group");
    assert_eq!(key_names(&ec2).await, keys, "no key pair");

    // A location the provider cannot map (a spec built without validation) names the
    // field to fix.
    let mut unmapped = c.clone();
    unmapped.nodes[0].location = Some("north".into());
    let e = provider(&aws).await.ensure(&unmapped).await.unwrap_err();
    match &e {
        ProviderError::Config { field, problem } => {
            assert_eq!(field, "provider.locations.north");
            assert!(problem.contains("node db1"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// errors moto can produce

#[tokio::test]
async fn unknown_ami_is_an_error_naming_the_ami_and_the_code() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("noami");
    let aws = AwsProviderSpec { ami: Some("ami-0123456789abcdef0".into()), ..aws_spec(&moto) };
    let c = cluster(&name, &aws);
    let p = provider(&aws).await;
    let e = p.ensure(&c).await.unwrap_err();
    assert!(matches!(e, ProviderError::NotFound { .. }), "{e:?}");
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"));
    let msg = e.to_string();
    assert!(msg.contains("AMI ami-0123456789abcdef0") && msg.contains("InvalidAMIID.NotFound"), "{msg}");

    // Through the Provider trait: a pgrepl error of provider aws with the same chain.
    let core = p.ensure_hosts(&c).await.unwrap_err();
    assert!(matches!(core, pgrepl_core::Error::Provider { ref provider, .. } if provider == "aws"));
    let text = pgrepl_core::error::chain(&core);
    println!("{text}");
    assert!(text.starts_with(&format!("provider aws: provision the hosts of cluster {name}")), "{text}");
    assert!(text.contains("ami-0123456789abcdef0") && text.contains("InvalidAMIID.NotFound"), "{text}");

    // Nothing was created.
    assert!(live_by_node(&ec2, &name).await.is_empty());
    assert!(cluster_groups(&ec2, &name).await.is_empty());
    assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{name}")));
}

#[tokio::test]
async fn ami_of_the_wrong_architecture_is_refused() {
    let moto = Moto::start(Amis::Ubuntu);
    let name = unique("arch");
    let aws = AwsProviderSpec {
        ami: Some(NOBLE_AMD.into()), // x86_64, with the default t4g.small (arm64)
        ..aws_spec(&moto)
    };
    let e = provider(&aws).await.ensure(&cluster(&name, &aws)).await.unwrap_err();
    assert!(matches!(e, ProviderError::Invalid { .. }), "{e:?}");
    let msg = e.to_string();
    for w in [NOBLE_AMD, "x86_64", "t4g.small", "arm64"] {
        assert!(msg.contains(w), "{msg} lacks {w}");
    }
    assert!(live_by_node(&moto.client(), &name).await.is_empty());
}

#[tokio::test]
async fn unknown_key_pair_name_is_an_error_naming_the_key_and_the_code() {
    let moto = Moto::start(Amis::Ubuntu);
    let name = unique("nokey");
    let aws = AwsProviderSpec { ssh_public_key_file: None, key_name: Some("no-such-key".into()), ..aws_spec(&moto) };
    let e = provider(&aws).await.ensure(&cluster(&name, &aws)).await.unwrap_err();
    assert!(matches!(e, ProviderError::NotFound { .. }), "{e:?}");
    assert_eq!(e.code(), Some("InvalidKeyPair.NotFound"));
    assert!(e.to_string().contains("key pair no-such-key"), "{e}");
    assert!(cluster_groups(&moto.client(), &name).await.is_empty());
}

#[tokio::test]
async fn malformed_public_key_is_an_error_naming_the_key_pair_and_the_code() {
    let moto = Moto::start(Amis::Ubuntu);
    let name = unique("badkey");
    let aws = AwsProviderSpec { ssh_public_key_file: Some(moto.key_file("id_bad.pub", "ssh-ed25519 AAAA not-a-key\n")), ..aws_spec(&moto) };
    let e = provider(&aws).await.ensure(&cluster(&name, &aws)).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidKeyPair.Format"), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("key pair pgrepl-{name}")) && msg.contains("id_bad.pub"), "{msg}");
    let ec2 = moto.client();
    assert!(live_by_node(&ec2, &name).await.is_empty());
    assert!(cluster_groups(&ec2, &name).await.is_empty(), "nothing created");
    assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{name}")));
}

#[tokio::test]
async fn moto_without_ubuntu_images_gives_a_clear_ami_error() {
    // moto's built-in catalogue has only Ubuntu 14.04/16.04 for amd64: nothing for arm64
    // until one is registered.
    let moto = Moto::start(Amis::Builtin);
    let name = unique("builtin");
    let aws = aws_spec(&moto);
    let e = provider(&aws).await.ensure(&cluster(&name, &aws)).await.unwrap_err();
    assert!(matches!(e, ProviderError::Invalid { .. }), "{e:?}");
    let msg = e.to_string();
    for w in ["no available image", "099720109477", "ubuntu/images/", "arm64", "t4g.small", "provider.ami"] {
        assert!(msg.contains(w), "{msg} lacks {w}");
    }
    // For amd64 the newest built-in Ubuntu LTS is chosen (16.04 over 14.04).
    let amd = AwsProviderSpec { instance_type: Some("t3.small".into()), ..aws_spec(&moto) };
    let p = provider(&amd).await;
    let pre = p.preflight(&cluster(&name, &amd)).await.unwrap();
    assert!(pre.image.1.contains("ubuntu-xenial-16.04-amd64-server"), "{pre:?}");
    // A custom lookup (owner + name pattern, newest image wins) finds nothing here.
    let e = builder(&aws).ami_lookup(["self"], "debian-12-*").build().await.unwrap().preflight(&cluster(&name, &aws)).await.unwrap_err();
    assert!(e.to_string().contains("debian-12-*"), "{e}");
}

#[tokio::test]
async fn preflight_dry_run_checks_everything_and_creates_nothing() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let name = unique("dry");
    let aws = aws_spec(&moto);
    let c = cluster(&name, &aws);
    let (n_inst, n_sg, keys) = (all_instances(&ec2).await.len(), groups(&ec2).await.len(), key_names(&ec2).await);
    let p = provider(&aws).await;
    let pre = p.preflight(&c).await.unwrap();
    assert_eq!(pre.region, REGION);
    assert_eq!(pre.image.0, NOBLE_ARM);
    assert_eq!(pre.instance_type, ("t4g.small".to_string(), "arm64".to_string()));
    assert_eq!(pre.key_name, format!("pgrepl-{name}"));
    assert!(pre.existing.is_empty());
    let zones: BTreeSet<_> = pre.placement.iter().map(|(_, _, az)| az.clone()).collect();
    assert_eq!(zones.len(), 3, "{pre:?}");
    assert_eq!(all_instances(&ec2).await.len(), n_inst);
    assert_eq!(groups(&ec2).await.len(), n_sg);
    assert_eq!(key_names(&ec2).await, keys);

    // After provisioning, the dry run lists the existing nodes.
    p.ensure(&c).await.unwrap();
    let pre = p.preflight(&c).await.unwrap();
    assert_eq!(pre.existing, ["db1", "db2", "db3"]);
}

// ---------------------------------------------------------------------------------------
// configuration errors

#[tokio::test]
async fn missing_region_is_a_named_error() {
    let moto = Moto::start(Amis::Ubuntu);
    let aws = AwsProviderSpec { region: None, ..aws_spec(&moto) };
    // An AWS configuration without a region (as when the environment and profiles have none).
    let e = builder(&aws).sdk_config(SdkConfig::builder().build()).build().await.unwrap_err();
    assert!(matches!(e, ProviderError::MissingRegion), "{e:?}");
    assert!(e.to_string().contains("provider.region") && e.to_string().contains("AWS_REGION"));
}

#[tokio::test]
async fn missing_credentials_are_a_named_error() {
    let moto = Moto::start(Amis::Ubuntu);
    let aws = aws_spec(&moto);
    let e = Ec2Provider::builder().with_spec(&aws).wait_for_ssh(false).sdk_config(SdkConfig::builder().build()).build().await.unwrap_err();
    assert!(matches!(e, ProviderError::NoCredentials { .. }), "{e:?}");
    assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
}

#[tokio::test]
async fn missing_admin_cidr_is_refused_by_the_spec_and_the_builder() {
    let moto = Moto::start(Amis::Ubuntu);
    let aws = AwsProviderSpec { admin_cidr: None, ..aws_spec(&moto) };
    // The spec: core's validation.
    let mut spec = ClusterSpec::builder("nocidr").node(pgrepl_core::NodeSpec::primary("db1")).into_spec();
    spec.provider = ProviderSpec::Aws(aws.clone());
    let errs = spec.validate().unwrap_err();
    assert!(errs.get("provider.admin_cidr").is_some(), "{errs}");
    // The builder, for Rust callers who skip the spec.
    let e = builder(&aws).build().await.unwrap_err();
    match &e {
        ProviderError::Config { field, problem } => {
            assert_eq!(field, "provider.admin_cidr");
            assert!(problem.contains("0.0.0.0/0"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refuses_to_dial_a_local_mock_without_a_host_map() {
    let moto = Moto::start(Amis::Ubuntu);
    let aws = aws_spec(&moto);
    let e = Ec2Provider::builder().credentials(creds()).with_spec(&aws).build().await.unwrap_err();
    match &e {
        ProviderError::Config { field, problem } => {
            assert_eq!(field, "provider.endpoint_url");
            assert!(problem.contains("fake"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// waiting for SSH through the host map (never moto's addresses)

#[tokio::test]
async fn ssh_wait_dials_mapped_addresses() {
    let moto = Moto::start(Amis::Ubuntu);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mapped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = mapped.clone();
    let mut aws = aws_spec(&moto);
    aws.ssh.port = Some(port);
    let name = unique("ssh");
    let c = cluster(&name, &aws);
    let p = builder(&aws)
        .wait_for_ssh(true)
        .map_host(move |mut h| {
            seen.lock().unwrap().push((h.node.clone(), h.admin_address.clone()));
            // A lab would map each node to its own host; here all go to the test's listener.
            h.admin_address = Some("127.0.0.1".into());
            h
        })
        .build()
        .await
        .unwrap();
    let hosts = p.ensure(&c).await.unwrap();
    assert!(hosts.iter().all(|h| h.admin_address.as_deref() == Some("127.0.0.1")));
    assert!(accepted.load(Ordering::SeqCst) >= 3, "each host's SSH port was probed");
    assert_eq!(mapped.lock().unwrap().len(), 3);
    // The SSH rule follows the spec's port.
    let rules = mapping::rules_of(cluster_groups(&moto.client(), &name).await[0].ip_permissions());
    assert!(rules.contains(&Rule::tcp(port, Source::Cidr(ADMIN_CIDR.into()))));
    assert!(!rules.iter().any(|r| r.covers(22)));
    server.abort();
}

#[tokio::test]
async fn ssh_wait_times_out_naming_the_node_and_address() {
    let moto = Moto::start(Amis::Ubuntu);
    let closed = free_port(); // nothing listens there
    let mut aws = aws_spec(&moto);
    aws.ssh.port = Some(closed);
    let name = unique("sshto");
    let c = cluster(&name, &aws);
    let p = builder(&aws)
        .wait_for_ssh(true)
        .ready_timeout(Duration::from_secs(2))
        .map_node_addresses([("db1", "127.0.0.1"), ("db2", "127.0.0.1"), ("db3", "127.0.0.1")])
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let e = p.ensure(&c).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("SSH of node db") && msg.contains(&format!("127.0.0.1:{closed}")), "{msg}");
    assert!(e.is_retryable());
    // The mapped addresses are what list hands to the deploy, for replication and SSH.
    let hosts = p.list(&c).await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|h| h.address.as_deref() == Some("127.0.0.1") && h.admin_address.as_deref() == Some("127.0.0.1")));
}

// ---------------------------------------------------------------------------------------
// the standard AWS configuration chain, in a child process with a controlled environment

const CHILD_VAR: &str = "PGREPL_AWS_TEST_CHILD";

/// Runs this test binary again, only `test`, with exactly `env` (plus PATH).
fn run_child(test: &str, mode: &str, env: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(CHILD_VAR, mode)
        // No instance metadata service probing, no user profile files.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {mode} failed:\n{text}");
    assert!(text.contains(&format!("CHILD-OK {mode}")), "child {mode} did not run:\n{text}");
    text
}

async fn child(mode: &str) {
    let url = std::env::var("PGREPL_TEST_MOTO_URL").ok();
    let key = std::env::var("PGREPL_TEST_KEY_FILE").ok().map(PathBuf::from);
    let aws = AwsProviderSpec { admin_cidr: Some(ADMIN_CIDR.into()), ssh_public_key_file: key, ..Default::default() };
    let b = Ec2Provider::builder().with_spec(&aws).wait_for_ssh(false).poll_interval(Duration::from_millis(50));
    match mode {
        "no-region" => {
            let e = b.build().await.unwrap_err();
            assert!(matches!(e, ProviderError::MissingRegion), "{e:?}");
        }
        "env" | "profile" => {
            let p = b.build().await.unwrap();
            assert_eq!(p.region(), REGION);
            assert_eq!(Some(p.endpoint()), url.as_deref());
            let c = cluster(&format!("{mode}-chain"), &aws);
            let hosts = p.ensure(&c).await.unwrap();
            assert_eq!(hosts.len(), 3);
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("CHILD-OK {mode}");
}

#[tokio::test]
async fn configuration_comes_from_the_environment_and_profiles() {
    if let Ok(mode) = std::env::var(CHILD_VAR) {
        return child(&mode).await;
    }
    let test = "configuration_comes_from_the_environment_and_profiles";
    let moto = Moto::start(Amis::Ubuntu);
    let home = tempfile::tempdir().unwrap();
    let none = home.path().join("none");
    let base = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![
            ("HOME", home.path().display().to_string()),
            ("AWS_CONFIG_FILE", none.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", none.display().to_string()),
            ("PGREPL_TEST_KEY_FILE", moto.key_file("id_test.pub", PUBLIC_KEY).display().to_string()),
            ("PGREPL_TEST_MOTO_URL", moto.url.clone()),
        ];
        v.extend(extra.iter().cloned());
        v
    };

    // No region anywhere: the named error.
    run_child(test, "no-region", &base(&[]));

    // Region, endpoint and credentials from the environment.
    run_child(
        test,
        "env",
        &base(&[
            ("AWS_REGION", REGION.into()),
            ("AWS_ENDPOINT_URL", moto.url.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]),
    );

    // The same from a named profile in the AWS config files.
    let config = home.path().join("config");
    std::fs::write(&config, format!("[profile pgrepl-lab]\nregion = {REGION}\nendpoint_url = {}\n", moto.url)).unwrap();
    let credentials = home.path().join("credentials");
    std::fs::write(&credentials, "[pgrepl-lab]\naws_access_key_id = testing\naws_secret_access_key = testing\n").unwrap();
    let mut env = base(&[("AWS_PROFILE", "pgrepl-lab".into())]);
    for (k, v) in env.iter_mut() {
        if *k == "AWS_CONFIG_FILE" {
            *v = config.display().to_string();
        }
        if *k == "AWS_SHARED_CREDENTIALS_FILE" {
            *v = credentials.display().to_string();
        }
    }
    run_child(test, "profile", &env);

    // What the children created is really in this moto.
    let ec2 = moto.client();
    assert_eq!(live_by_node(&ec2, "env-chain").await.len(), 3);
    assert_eq!(live_by_node(&ec2, "profile-chain").await.len(), 3);
}

#[tokio::test]
async fn moto_state_persists_until_reset() {
    let moto = Moto::start(Amis::Ubuntu);
    let name = unique("reset");
    let aws = aws_spec(&moto);
    let c = cluster(&name, &aws);
    provider(&aws).await.ensure(&c).await.unwrap();
    // Another client run sees the same state...
    assert_eq!(provider(&aws).await.list(&c).await.unwrap().len(), 3);
    // ...until moto is reset.
    moto.reset();
    assert!(provider(&aws).await.list(&c).await.unwrap().is_empty());
    assert!(cluster_groups(&moto.client(), &name).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// the provider conformance suite (pgrepl_core::testing::provider_suite)

/// The provider, counting through the EC2 API how many instances exist (any state) after
/// each `ensure_hosts`: a second ensure must not launch any.
#[derive(Debug)]
struct CountingEnsures {
    p: Ec2Provider,
    ec2: Client,
    after_ensure: std::sync::Mutex<Vec<(String, usize)>>,
}

#[async_trait::async_trait]
impl Provider for CountingEnsures {
    fn kind(&self) -> &'static str {
        self.p.kind()
    }
    async fn ensure_hosts(&self, c: &Cluster) -> Result<Vec<pgrepl_core::provider::Host>, pgrepl_core::Error> {
        let hosts = self.p.ensure_hosts(c).await?;
        let n = all_instances(&self.ec2).await.len();
        self.after_ensure.lock().unwrap().push((c.name.clone(), n));
        Ok(hosts)
    }
    async fn list_hosts(&self, c: &Cluster) -> Result<Vec<pgrepl_core::provider::Host>, pgrepl_core::Error> {
        self.p.list_hosts(c).await
    }
    async fn destroy_hosts(&self, c: &Cluster) -> Result<(), pgrepl_core::Error> {
        self.p.destroy_hosts(c).await
    }
}

#[tokio::test]
async fn provider_conformance_suite() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let aws = aws_spec(&moto);
    let (a, b) = (unique("suite"), unique("suite-nb"));
    let p = CountingEnsures { p: provider(&aws).await, ec2: ec2.clone(), after_ensure: Default::default() };
    pgrepl_core::testing::provider_suite(&p, &cluster(&a, &aws), &cluster(&b, &aws), pgrepl_core::testing::HostLifecycle::Creates).await;

    // Through the EC2 API: the second ensure launched nothing, the neighbour its own three.
    let counts = p.after_ensure.lock().unwrap().clone();
    assert_eq!(counts, [(a.clone(), 3), (a.clone(), 3), (b.clone(), 6)], "instances after each ensure_hosts");
    // Nothing of either cluster is left: instances terminated, group and key pair deleted.
    for name in [&a, &b] {
        assert!(live_by_node(&ec2, name).await.is_empty(), "{name}: live instances left");
        assert!(cluster_groups(&ec2, name).await.is_empty(), "{name}: security group left");
        assert!(!key_names(&ec2).await.contains(&format!("pgrepl-{name}")), "{name}: key pair left");
    }
}

// ---------------------------------------------------------------------------------------
// opening a whole deployment through Ec2Backend (Deployment::open)

/// What the connector factory was asked for, and the hosts the connector was handed.
#[derive(Debug, Default)]
struct Seen {
    /// Cluster name, SSH login user, major: one per open.
    requests: std::sync::Mutex<Vec<(String, Option<String>, PgMajor)>>,
    hosts: std::sync::Mutex<Vec<Host>>,
}

/// Records every host it is asked to reach and refuses: moto's addresses are fake and
/// never dialed.
#[derive(Debug)]
struct RecordingConnector(Arc<Seen>);

#[async_trait::async_trait]
impl Connector for RecordingConnector {
    async fn connect(&self, _c: &Cluster, node: &Node, host: &Host) -> Result<NodeHandle, pgrepl_core::Error> {
        self.0.hosts.lock().unwrap().push(host.clone());
        Err(pgrepl_core::Error::node(&node.name, "not dialed: moto's addresses are fake"))
    }
}

/// The EC2 backend as a program pairs it, with the recording connector for SSH's and the
/// builder settings of these tests (moto's addresses are never dialed).
fn ec2_backend(seen: &Arc<Seen>) -> Ec2Backend {
    let seen = seen.clone();
    Ec2Backend::new(move |r| {
        seen.requests.lock().unwrap().push((r.cluster.name.clone(), r.ssh.user.clone(), r.major));
        Ok(Arc::new(RecordingConnector(seen.clone())))
    })
    .configure(|b| {
        b.credentials(creds())
            .wait_for_ssh(false)
            .poll_interval(Duration::from_millis(50))
            .ready_timeout(Duration::from_secs(60))
            .destroy_timeout(Duration::from_secs(60))
    })
}

#[tokio::test]
async fn deployment_opens_through_ec2_backend_and_hands_the_instances_to_the_callers_connector() {
    let moto = Moto::start(Amis::Ubuntu);
    let ec2 = moto.client();
    let aws = aws_spec(&moto);
    let name = unique("open");
    let state = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let backend = ec2_backend(&seen);
    let opts = OpenOptions::default().with_state_dir(state.path());
    let d = Deployment::open(&cluster_spec(&name, &aws), &opts, &[&LocalBackend, &backend]).await.unwrap();
    assert_eq!(d.provider().kind(), "aws");
    assert_eq!(d.cluster().major, Some(PgMajor::V16));
    assert_eq!(d.state_dir(), state.path());
    // The factory got the SSH settings with the images' login user, and the major.
    assert_eq!(*seen.requests.lock().unwrap(), [(name.clone(), Some("ubuntu".to_string()), PgMajor::V16)]);
    assert!(live_by_node(&ec2, &name).await.is_empty(), "opening creates nothing");

    // The deployment's own path: create the hosts, then reach each through the connector.
    let e = d.connect(true).await.unwrap_err();
    assert!(e.to_string().contains("not dialed"), "{e}");
    let mut hosts = std::mem::take(&mut *seen.hosts.lock().unwrap());
    hosts.sort_by(|a, b| a.node.cmp(&b.node));
    // Through the EC2 API: the instances exist, and the connector was handed exactly them
    // (instance id, private address for replication, public one for SSH).
    check_provisioned(&ec2, &name, &hosts).await;

    // A second open, as a new process would: finds the same instances, creates none.
    let d2 = Deployment::open(&cluster_spec(&name, &aws), &opts, &[&backend]).await.unwrap();
    let (_, handles, failed) = d2.connect_partial().await.unwrap();
    assert!(handles.is_empty());
    assert_eq!(failed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["db1", "db2", "db3"]);
    let mut again = std::mem::take(&mut *seen.hosts.lock().unwrap());
    again.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(again.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), hosts.iter().map(|h| h.id.clone()).collect::<Vec<_>>());
    assert_eq!(all_instances(&ec2).await.len(), 3, "no instance launched by the second open");

    d2.provider().destroy_hosts(d2.cluster()).await.unwrap();
    assert!(live_by_node(&ec2, &name).await.is_empty());
}

#[tokio::test]
async fn ec2_backend_refuses_detect_naming_the_field_unless_a_major_is_given() {
    let moto = Moto::start(Amis::Ubuntu);
    let aws = aws_spec(&moto);
    let name = unique("detect");
    let mut spec = cluster_spec(&name, &aws);
    spec.postgres = VersionChoice::Detect;
    let seen = Arc::new(Seen::default());
    let backend = ec2_backend(&seen);
    let e = Deployment::open(&spec, &OpenOptions::default(), &[&backend]).await.unwrap_err();
    let pgrepl_core::Error::Spec(errs) = &e else { panic!("expected a spec error, got {e:?}") };
    let p = errs.get("postgres").unwrap_or_else(|| panic!("no error on `postgres`: {errs}"));
    assert!(p.problem.contains("\"detect\" with the aws provider"), "{p}");
    assert!(seen.requests.lock().unwrap().is_empty(), "refused before making a connector");

    // Other problems of the spec are named with it.
    let mut broken = spec.clone();
    if let ProviderSpec::Aws(a) = &mut broken.provider {
        a.admin_cidr = None;
    }
    let e = Deployment::open(&broken, &OpenOptions::default(), &[&backend]).await.unwrap_err();
    let pgrepl_core::Error::Spec(errs) = &e else { panic!("{e:?}") };
    assert!(errs.get("postgres").is_some() && errs.get("provider.admin_cidr").is_some(), "{errs}");

    // A major given by the caller decides instead.
    let d = Deployment::open(&spec, &OpenOptions::default().with_major(PgMajor::V15), &[&backend]).await.unwrap();
    assert_eq!(d.cluster().major, Some(PgMajor::V15));
    assert_eq!(seen.requests.lock().unwrap().last().map(|r| r.2), Some(PgMajor::V15));
    assert!(live_by_node(&moto.client(), &name).await.is_empty(), "opening creates nothing");
}
