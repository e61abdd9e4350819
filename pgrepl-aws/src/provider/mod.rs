//! [`Ec2Provider`]: the cluster's hosts as EC2 instances.
//!
//! What it keeps in AWS, all tagged `pgrepl:cluster=<cluster>` and found again by that
//! tag (so a second `up` creates nothing new and `destroy` removes only this cluster's
//! resources):
//!
//! ```text
//! security group  pgrepl-<cluster>   22 from admin_cidr; each PostgreSQL port from the group
//!                                    itself and from app_cidrs; with [ha] the agents' port and
//!                                    a deployed etcd's ports from the group (client and agent
//!                                    ports from admin_cidr too, agents' from api_cidrs); never
//!                                    0.0.0.0/0 by default
//! key pair        pgrepl-<cluster>   imported from ssh_public_key_file (not with key_name)
//! instance        <cluster>-<node>   one per node and per witness, tags Name, pgrepl:cluster,
//!                                    pgrepl:node, pgrepl:role; in its location's zone, else
//!                                    spread over zones; root volume tagged too
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, Image, Instance, InstanceMetadataOptionsRequest, InstanceType, ResourceType,
    SecurityGroup, TagSpecification, VolumeType,
};
use pgrepl_core::cluster::Cluster;
use pgrepl_core::deploy::Progress;
use pgrepl_core::provider::{Host, Provider};
use pgrepl_core::spec::{AwsProviderSpec, is_availability_zone, zone_of_location};
use tokio::task::JoinSet;

use crate::error::ProviderError;
use crate::mapping::{self, AmiQuery, Arch, Machine, PlacementError, SubnetChoice};
use crate::wait::Backoff;

/// How long `ensure` waits for instances to run and answer on SSH, by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `destroy` waits for instances to terminate and groups to be free, by default.
pub const DEFAULT_DESTROY_TIMEOUT: Duration = Duration::from_secs(600);
/// First delay between polls (it grows ×1.5 up to [`MAX_POLL_INTERVAL`]).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest delay between polls.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// Time limit of one TCP connection attempt to a host's SSH port.
pub const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of one EC2 API call attempt (the SDK retries up to 3 times).
pub const API_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one EC2 API call, retries included.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of resolving credentials in [`Ec2ProviderBuilder::build`].
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one RunInstances (same client token each time) on retryable errors.
pub const LAUNCH_ATTEMPTS: u32 = 3;
/// Most pages read from one paginated Describe call.
const MAX_PAGES: usize = 100;

const VOLUME_TYPES: [&str; 7] = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

/// Rewrites a host before `ensure`/`list` return it and before its SSH port is probed.
///
/// This is the seam for tests against moto, whose addresses are fake and must never be
/// dialed: map each instance (by node or instance id) to a lab host's address.
pub type HostMapper = Arc<dyn Fn(Host) -> Host + Send + Sync>;

/// Where the key pair comes from.
#[derive(Clone)]
enum KeySource {
    /// Import this public key as `pgrepl-<cluster>` (deleted by destroy).
    Import { path: PathBuf, material: Vec<u8> },
    /// Use an existing key pair (never deleted).
    Existing(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Import { path, material } => {
                write!(f, "Import({}, {} bytes)", path.display(), material.len())
            }
            KeySource::Existing(k) => write!(f, "Existing({k})"),
        }
    }
}

/// The provider's settings, resolved and checked.
#[derive(Debug, Clone)]
struct Settings {
    admin_cidr: String,
    app_cidrs: Vec<String>,
    api_cidrs: Vec<String>,
    instance_type: String,
    witness_instance_type: String,
    arch: Arch,
    ami: Option<String>,
    ami_query: AmiQuery,
    subnet_ids: Vec<String>,
    locations: BTreeMap<String, String>,
    key: KeySource,
    volume_gb: u32,
    volume_type: String,
    ssh_port: u16,
    user_data: Option<String>,
}

/// Builds an [`Ec2Provider`]: the standard AWS configuration chain (environment,
/// profiles, SSO, web identity, instance and task roles), with the region, endpoint
/// and credentials taken from this builder first, then from the spec, then from the
/// environment.
///
/// ```no_run
/// # async fn demo(spec: &pgrepl_core::spec::AwsProviderSpec) -> Result<(), pgrepl_aws::ProviderError> {
/// let provider = pgrepl_aws::Ec2Provider::builder()
///     .region("us-east-2")
///     .with_spec(spec)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct Ec2ProviderBuilder {
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<SharedCredentialsProvider>,
    profile: Option<String>,
    sdk_config: Option<SdkConfig>,
    spec: AwsProviderSpec,
    ami_query: Option<AmiQuery>,
    user_data: Option<String>,
    wait_for_ssh: bool,
    host_mapper: Option<HostMapper>,
    ready_timeout: Duration,
    destroy_timeout: Duration,
    poll_interval: Duration,
    progress: Option<Arc<dyn Progress>>,
}

impl fmt::Debug for Ec2ProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2ProviderBuilder")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .field("profile", &self.profile)
            .field("spec", &self.spec)
            .field("ami_query", &self.ami_query)
            .field("wait_for_ssh", &self.wait_for_ssh)
            .field("host_mapper", &self.host_mapper.as_ref().map(|_| "<set>"))
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Ec2ProviderBuilder {
    fn default() -> Self {
        Ec2ProviderBuilder {
            region: None,
            endpoint_url: None,
            credentials: None,
            profile: None,
            sdk_config: None,
            spec: AwsProviderSpec::default(),
            ami_query: None,
            user_data: None,
            wait_for_ssh: true,
            host_mapper: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            destroy_timeout: DEFAULT_DESTROY_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            progress: None,
        }
    }
}

impl Ec2ProviderBuilder {
    /// The region (wins over the spec and the environment).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// An endpoint override, such as a VPC endpoint or a local EC2 mock (wins over the
    /// spec and `AWS_ENDPOINT_URL`).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Fixed credentials or any credentials provider, instead of the default chain.
    pub fn credentials(mut self, credentials: impl ProvideCredentials + 'static) -> Self {
        self.credentials = Some(SharedCredentialsProvider::new(credentials));
        self
    }

    /// The AWS profile to use (instead of `AWS_PROFILE` or `default`).
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.profile = Some(name.into());
        self
    }

    /// A loaded AWS configuration to start from instead of the default chain (the
    /// region, endpoint and credentials set here still override it).
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The `[provider]` section of the spec: region, endpoint, CIDRs, instance types,
    /// AMI, subnets, locations, key, volume, SSH port.
    pub fn with_spec(mut self, spec: &AwsProviderSpec) -> Self {
        self.spec = spec.clone();
        self
    }

    /// Find the AMI by these owners and name pattern (newest image of the instance
    /// type's architecture) instead of the newest Ubuntu LTS from Canonical. Unused when
    /// the spec names an AMI.
    pub fn ami_lookup(mut self, owners: impl IntoIterator<Item = impl Into<String>>, name_pattern: impl Into<String>) -> Self {
        self.ami_query =
            Some(AmiQuery { owners: owners.into_iter().map(Into::into).collect(), name_pattern: name_pattern.into(), ubuntu_lts: false });
        self
    }

    /// User data (a cloud-init script, for instance) for new instances.
    pub fn user_data(mut self, user_data: impl Into<String>) -> Self {
        self.user_data = Some(user_data.into());
        self
    }

    /// Whether `ensure` waits until each host's SSH port accepts connections (default
    /// yes). Turn it off, or map hosts with [`map_host`](Self::map_host), against an EC2
    /// mock: its addresses are fake and must never be dialed.
    pub fn wait_for_ssh(mut self, wait: bool) -> Self {
        self.wait_for_ssh = wait;
        self
    }

    /// Rewrites every host before it is returned or probed (see [`HostMapper`]).
    pub fn map_host(mut self, f: impl Fn(Host) -> Host + Send + Sync + 'static) -> Self {
        self.host_mapper = Some(Arc::new(f));
        self
    }

    /// Points each listed node at a fixed address, used for both replication and SSH
    /// (lab hosts standing in for a mock's instances); other nodes keep theirs. A
    /// shorthand for [`map_host`](Self::map_host).
    pub fn map_node_addresses<N: Into<String>, A: Into<String>>(self, addresses: impl IntoIterator<Item = (N, A)>) -> Self {
        let map: Vec<(String, String)> = addresses.into_iter().map(|(n, a)| (n.into(), a.into())).collect();
        self.map_host(move |mut h| {
            if let Some((_, a)) = map.iter().find(|(n, _)| *n == h.node) {
                h.address = Some(a.clone());
                h.admin_address = Some(a.clone());
            }
            h
        })
    }

    /// Overall limit of waiting for instances to run and answer on SSH (one deadline
    /// for both).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Overall limit of waiting for instances to terminate and groups to be deletable.
    pub fn destroy_timeout(mut self, timeout: Duration) -> Self {
        self.destroy_timeout = timeout;
        self
    }

    /// First delay between polls (default [`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Receives progress (launches, waits, deletions) besides `tracing` events.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Checks the settings, loads the AWS configuration, resolves credentials once and
    /// makes the client. Nothing is created in AWS.
    pub async fn build(self) -> Result<Ec2Provider, ProviderError> {
        let settings = self.settings()?;

        let region = self.region.clone().or_else(|| self.spec.region.clone());
        let endpoint = self.endpoint_url.clone().or_else(|| self.spec.endpoint_url.clone());

        let base = match self.sdk_config.clone() {
            Some(c) => c,
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(r) = &region {
                    loader = loader.region(Region::new(r.clone()));
                }
                if let Some(e) = &endpoint {
                    loader = loader.endpoint_url(e.clone());
                }
                if let Some(c) = &self.credentials {
                    loader = loader.credentials_provider(c.clone());
                }
                if let Some(p) = &self.profile {
                    loader = loader.profile_name(p.clone());
                }
                loader.load().await
            }
        };
        let mut conf = aws_sdk_ec2::config::Builder::from(&base).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(API_ATTEMPT_TIMEOUT)
                .operation_timeout(API_CALL_TIMEOUT)
                .build(),
        );
        if let Some(r) = &region {
            conf = conf.region(Region::new(r.clone()));
        }
        if let Some(e) = &endpoint {
            conf = conf.endpoint_url(e.clone());
        }
        if let Some(c) = &self.credentials {
            conf = conf.credentials_provider(c.clone());
        }
        let conf = conf.build();

        let region = conf.region().map(|r| r.as_ref().to_string()).filter(|r| !r.is_empty()).ok_or(ProviderError::MissingRegion)?;
        let endpoint = endpoint
            .or_else(|| base.endpoint_url().map(str::to_string))
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_EC2").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());

        if self.wait_for_ssh && self.host_mapper.is_none() {
            if let Some(e) = &endpoint {
                if is_local_endpoint(e) {
                    return Err(ProviderError::Config {
                        field: "provider.endpoint_url".into(),
                        problem: format!(
                            "{e} is a local EC2 mock whose instance addresses are fake and must not be dialed: turn off wait_for_ssh or map hosts to real addresses"
                        ),
                    });
                }
            }
        }

        let Some(creds) = self.credentials.clone().or_else(|| base.credentials_provider()) else {
            return Err(ProviderError::NoCredentials { source: "no credentials provider is configured".into() });
        };
        match tokio::time::timeout(CREDENTIALS_TIMEOUT, creds.provide_credentials()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ProviderError::NoCredentials { source: Box::new(e) });
            }
            Err(_) => {
                return Err(ProviderError::NoCredentials {
                    source: format!("the credential chain gave no answer within {}s", CREDENTIALS_TIMEOUT.as_secs()).into(),
                });
            }
        }

        let endpoint_label = endpoint.unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        Ok(Ec2Provider {
            client: Client::from_conf(conf),
            region,
            endpoint: endpoint_label,
            settings,
            wait_for_ssh: self.wait_for_ssh,
            host_mapper: self.host_mapper,
            ready_timeout: self.ready_timeout,
            destroy_timeout: self.destroy_timeout,
            poll_interval: self.poll_interval,
            progress: self.progress,
        })
    }

    fn settings(&self) -> Result<Settings, ProviderError> {
        let s = &self.spec;
        let config = |field: &str, problem: String| ProviderError::Config { field: field.into(), problem };
        let admin_cidr = match &s.admin_cidr {
            None => return Err(config(
                "provider.admin_cidr",
                "missing: SSH is only opened to the CIDR you administer from (such as \"203.0.113.7/32\"), and never to 0.0.0.0/0 by default".into(),
            )),
            Some(c) if !is_cidr(c) => {
                return Err(config(
                    "provider.admin_cidr",
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"203.0.113.7/32\")"),
                ));
            }
            Some(c) => c.clone(),
        };
        if admin_cidr == "0.0.0.0/0" || admin_cidr == "::/0" {
            tracing::warn!(admin_cidr, "provider.admin_cidr opens SSH to the whole internet, as the spec asks");
        }
        for (i, c) in s.app_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                return Err(config(
                    &format!("provider.app_cidrs[{i}]"),
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"10.0.0.0/16\")"),
                ));
            }
            if c == "0.0.0.0/0" || c == "::/0" {
                tracing::warn!(cidr = %c, "provider.app_cidrs opens PostgreSQL to the whole internet, as the spec asks");
            }
        }
        for (i, c) in s.api_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                return Err(config(
                    &format!("provider.api_cidrs[{i}]"),
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"10.0.0.0/16\")"),
                ));
            }
            if c == "0.0.0.0/0" || c == "::/0" {
                tracing::warn!(cidr = %c, "provider.api_cidrs opens the agents' HTTP port to the whole internet, as the spec asks");
            }
        }
        let instance_type = s.instance_type.clone().unwrap_or_else(|| mapping::DEFAULT_INSTANCE_TYPE.into());
        let arch = mapping::arch_of_instance_type(&instance_type).map_err(|p| config("provider.instance_type", p))?;
        let witness_instance_type = s.witness_instance_type.clone().unwrap_or_else(|| instance_type.clone());
        let witness_arch =
            mapping::arch_of_instance_type(&witness_instance_type).map_err(|p| config("provider.witness_instance_type", p))?;
        if witness_arch != arch {
            return Err(config(
                "provider.witness_instance_type",
                format!(
                    "{witness_instance_type} is {witness_arch} but instance_type {instance_type} is {arch}: every instance boots the same AMI (expected an {arch} instance type)"
                ),
            ));
        }
        for (location, zone) in &s.locations {
            if !is_availability_zone(zone) {
                return Err(config(
                    &format!("provider.locations.{location}"),
                    format!("\"{zone}\" is not an availability zone name (expected a zone such as \"us-east-2a\")"),
                ));
            }
        }
        let volume_gb = s.volume_gb.unwrap_or(mapping::DEFAULT_VOLUME_GB);
        if !(1..=65536).contains(&volume_gb) {
            return Err(config("provider.volume_gb", format!("{volume_gb} GiB (expected 1 to 65536)")));
        }
        let volume_type = s.volume_type.clone().unwrap_or_else(|| mapping::DEFAULT_VOLUME_TYPE.into());
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            return Err(config(
                "provider.volume_type",
                format!("\"{volume_type}\" is not an EBS volume type (expected one of: {})", VOLUME_TYPES.join(", ")),
            ));
        }
        let key = match (&s.ssh_public_key_file, &s.key_name) {
            (Some(_), Some(_)) => {
                return Err(config("provider.key_name", "set together with provider.ssh_public_key_file: give one of them".into()));
            }
            (None, None) => {
                return Err(config(
                    "provider.ssh_public_key_file",
                    "missing: give the public key to import (such as \"~/.ssh/id_ed25519.pub\") or provider.key_name of an existing key pair".into(),
                ));
            }
            (None, Some(k)) if k.trim().is_empty() => {
                return Err(config("provider.key_name", "empty".into()));
            }
            (None, Some(k)) => KeySource::Existing(k.clone()),
            (Some(p), None) => {
                let path = expand_home(p);
                let material = std::fs::read(&path).map_err(|e| ProviderError::KeyFile { path: path.clone(), source: e })?;
                if material.iter().all(u8::is_ascii_whitespace) {
                    return Err(config("provider.ssh_public_key_file", format!("{} is empty", path.display())));
                }
                KeySource::Import { path, material }
            }
        };
        if let Some(a) = &s.ami {
            if !a.starts_with("ami-") {
                return Err(config("provider.ami", format!("\"{a}\" is not an AMI id (expected ami-...)")));
            }
        }
        for (i, id) in s.subnet_ids.iter().enumerate() {
            if !id.starts_with("subnet-") {
                return Err(config(&format!("provider.subnet_ids[{i}]"), format!("\"{id}\" is not a subnet id (expected subnet-...)")));
            }
        }
        Ok(Settings {
            admin_cidr,
            app_cidrs: s.app_cidrs.clone(),
            api_cidrs: s.api_cidrs.clone(),
            instance_type,
            witness_instance_type,
            arch,
            ami: s.ami.clone(),
            ami_query: self.ami_query.clone().unwrap_or_default(),
            subnet_ids: s.subnet_ids.clone(),
            locations: s.locations.clone(),
            key,
            volume_gb,
            volume_type,
            ssh_port: s.ssh.port.unwrap_or(mapping::DEFAULT_SSH_PORT),
            user_data: self.user_data.clone(),
        })
    }
}

/// The cluster's hosts as EC2 instances.
///
/// What it keeps in AWS, all tagged `pgrepl:cluster=<cluster>` and found again by that
/// tag (a second `ensure` creates nothing new; `destroy` removes only these):
///
/// ```text
/// security group  pgrepl-<cluster>   22 from admin_cidr; each PostgreSQL port from the group
///                                    itself and from app_cidrs; with [ha] the agents' port and
///                                    a deployed etcd's ports from the group (client and agent
///                                    ports from admin_cidr too, agents' from api_cidrs); never
///                                    0.0.0.0/0 by default
/// key pair        pgrepl-<cluster>   imported from ssh_public_key_file (not with key_name)
/// instance        <cluster>-<node>   one per node and per witness, tags Name, pgrepl:cluster,
///                                    pgrepl:node, pgrepl:role; in its location's zone, else
///                                    spread over zones; root volume tagged too
/// ```
pub struct Ec2Provider {
    client: Client,
    region: String,
    endpoint: String,
    settings: Settings,
    wait_for_ssh: bool,
    host_mapper: Option<HostMapper>,
    ready_timeout: Duration,
    destroy_timeout: Duration,
    poll_interval: Duration,
    progress: Option<Arc<dyn Progress>>,
}

impl fmt::Debug for Ec2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Provider")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .field("wait_for_ssh", &self.wait_for_ssh)
            .field("host_mapper", &self.host_mapper.as_ref().map(|_| "<set>"))
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

/// The network nodes go to.
#[derive(Debug, Clone)]
struct Network {
    vpc_id: String,
    /// Subnets in spreading order.
    order: Vec<SubnetChoice>,
}

/// The image nodes boot from.
#[derive(Debug, Clone)]
struct ChosenImage {
    id: String,
    name: String,
    root_device: String,
}

/// What [`Ec2Provider::preflight`] found: everything `ensure` would use, checked
/// against AWS with nothing created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Preflight {
    /// The region.
    pub region: String,
    /// The VPC.
    pub vpc_id: String,
    /// The AMI id and name.
    pub image: (String, String),
    /// The instance type and its architecture.
    pub instance_type: (String, String),
    /// Per node: its subnet and zone.
    pub placement: Vec<(String, String, String)>,
    /// The key pair name (existing or to import).
    pub key_name: String,
    /// The nodes that already have an instance.
    pub existing: Vec<String>,
}

/// One launch: the node, its subnet, the token.
struct Launch<'a> {
    node: &'a str,
    role: String,
    instance_type: &'a str,
    subnet: &'a SubnetChoice,
    token: String,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number that differs between `ensure` runs (for client tokens).
fn new_run_id() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 40) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Ec2Provider {
    /// Starts a builder.
    pub fn builder() -> Ec2ProviderBuilder {
        Ec2ProviderBuilder::default()
    }

    /// The region in use.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The EC2 endpoint in use (the override, or the regional endpoint).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The EC2 client (for checks the provider does not offer).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The name of the key pair instances get, for `cluster`.
    pub fn key_name(&self, cluster: &str) -> String {
        match &self.settings.key {
            KeySource::Existing(k) => k.clone(),
            KeySource::Import { .. } => mapping::resource_name(cluster),
        }
    }

    fn err<E, R>(&self, action: &str, resource: &str) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> ProviderError + '_
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let (action, resource) = (action.to_string(), resource.to_string());
        move |e| mapping::map_sdk_error(e, &action, &resource, &self.endpoint)
    }

    fn started(&self, node: &str, step: &str) {
        tracing::info!(node, step, "started");
        if let Some(p) = &self.progress {
            p.started(node, step);
        }
    }

    fn finished(&self, node: &str, step: &str, outcome: &str) {
        tracing::info!(node, step, outcome, "finished");
        if let Some(p) = &self.progress {
            p.finished(node, step, outcome);
        }
    }

    fn map(&self, host: Host) -> Host {
        match &self.host_mapper {
            Some(f) => f(host),
            None => host,
        }
    }

    // ---- reading --------------------------------------------------------------------

    /// The cluster's instances that still exist (pending, running, stopping, stopped).
    async fn live_instances(&self, cluster: &str) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .describe_instances()
                .filters(mapping::cluster_filter(cluster))
                .filters(mapping::filter("instance-state-name", &mapping::LIVE_STATES))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(self.err("describe", &format!("the instances of cluster {cluster}")))?;
            for r in page.reservations() {
                out.extend(
                    r.instances()
                        .iter()
                        .filter(|i| mapping::belongs_to(i.tags(), cluster))
                        .filter(|i| mapping::LIVE_STATES.contains(&mapping::instance_state(i)))
                        .cloned(),
                );
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The instances with these ids (missing ones are left out: EC2 is eventually
    /// consistent right after a launch).
    async fn instances_by_id(&self, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = match self
                .client
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(self.err("describe", &format!("instances {}", ids.join(", "))))
            {
                Ok(p) => p,
                Err(ProviderError::NotFound { .. }) => return Ok(out),
                Err(e) => return Err(e),
            };
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// One live instance per node of the spec, refusing two for one node.
    fn by_node<'a>(&self, cluster: &Cluster, instances: &'a [Instance]) -> Result<Vec<(String, &'a Instance)>, ProviderError> {
        let mut out: Vec<(String, &Instance)> = Vec::new();
        for i in instances {
            let Some(node) = mapping::tag_value(i.tags(), mapping::TAG_NODE) else {
                continue;
            };
            if let Some((_, other)) = out.iter().find(|(n, _)| n == node) {
                return Err(ProviderError::Invalid {
                    resource: format!("node {node} of cluster {}", cluster.name),
                    problem: format!(
                        "two live instances carry it ({} and {}); terminate the one that should not be there",
                        other.instance_id().unwrap_or("?"),
                        i.instance_id().unwrap_or("?")
                    ),
                });
            }
            out.push((node.to_string(), i));
        }
        Ok(out)
    }

    async fn network(&self) -> Result<Network, ProviderError> {
        let subnets = if self.settings.subnet_ids.is_empty() {
            let vpcs = self
                .client
                .describe_vpcs()
                .filters(mapping::filter("is-default", &["true"]))
                .send()
                .await
                .map_err(self.err("find", "the default VPC"))?;
            let Some(vpc) = vpcs.vpcs().iter().find_map(|v| v.vpc_id()) else {
                return Err(ProviderError::Invalid {
                    resource: format!("default VPC of region {}", self.region),
                    problem: "there is none: give provider.subnet_ids".into(),
                });
            };
            let out = self
                .client
                .describe_subnets()
                .filters(mapping::filter("vpc-id", &[vpc]))
                .filters(mapping::filter("default-for-az", &["true"]))
                .send()
                .await
                .map_err(self.err("describe", &format!("the subnets of VPC {vpc}")))?;
            let mut subnets = out.subnets().to_vec();
            subnets.sort_by(|a, b| (a.availability_zone(), a.subnet_id()).cmp(&(b.availability_zone(), b.subnet_id())));
            if subnets.is_empty() {
                return Err(ProviderError::Invalid {
                    resource: format!("default VPC {vpc}"),
                    problem: "it has no default subnets: give provider.subnet_ids".into(),
                });
            }
            subnets
        } else {
            let out = self
                .client
                .describe_subnets()
                .set_subnet_ids(Some(self.settings.subnet_ids.clone()))
                .send()
                .await
                .map_err(self.err("describe", &format!("subnets {}", self.settings.subnet_ids.join(", "))))?;
            // Keep the user's order.
            let mut subnets = Vec::new();
            for id in &self.settings.subnet_ids {
                match out.subnets().iter().find(|s| s.subnet_id() == Some(id)) {
                    Some(s) => subnets.push(s.clone()),
                    None => {
                        return Err(ProviderError::Invalid {
                            resource: format!("subnet {id}"),
                            problem: "EC2 does not list it in this region".into(),
                        });
                    }
                }
            }
            subnets
        };
        let vpcs: BTreeSet<&str> = subnets.iter().filter_map(|s| s.vpc_id()).collect();
        if vpcs.len() != 1 {
            return Err(ProviderError::Invalid {
                resource: "provider.subnet_ids".into(),
                problem: format!(
                    "the subnets are in {} VPCs ({}); give subnets of one VPC",
                    vpcs.len(),
                    vpcs.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let vpc_id = vpcs.into_iter().next().unwrap_or_default().to_string();
        let choices: Vec<SubnetChoice> = subnets
            .iter()
            .map(|s| SubnetChoice {
                id: s.subnet_id().unwrap_or_default().to_string(),
                az: s.availability_zone().unwrap_or_default().to_string(),
            })
            .collect();
        Ok(Network { vpc_id, order: mapping::spread_order(&choices) })
    }

    /// Each host of the cluster (data nodes, then witnesses) with its subnet: in the
    /// availability zone of its location when it has one, else spread over the zones.
    fn placement(&self, cluster: &Cluster, net: &Network) -> Result<Vec<(Machine, SubnetChoice)>, ProviderError> {
        let machines = mapping::machines(cluster);
        let mut zones: Vec<Option<&str>> = Vec::with_capacity(machines.len());
        for m in &machines {
            zones.push(match &m.location {
                None => None,
                Some(l) => Some(zone_of_location(&self.settings.locations, l).ok_or_else(|| ProviderError::Config {
                    field: format!("provider.locations.{l}"),
                    problem: format!(
                        "node {} is in location \"{l}\", which is neither listed in [provider.locations] nor an availability zone name (expected {l} = \"<zone>\")",
                        m.name
                    ),
                })?),
            });
        }
        let hosts: Vec<(&str, Option<&str>)> = machines.iter().zip(&zones).map(|(m, z)| (m.name.as_str(), *z)).collect();
        let subnets = mapping::place(&hosts, &net.order).map_err(|e| ProviderError::Invalid {
            resource: match &e {
                PlacementError::NoSubnetInZone { node, .. } => format!("node {node} of cluster {}", cluster.name),
                PlacementError::NoSubnet => format!("VPC {}", net.vpc_id),
            },
            problem: e.to_string(),
        })?;
        Ok(machines.into_iter().zip(subnets).collect())
    }

    /// The instance type of a host: the witnesses' type for a witness.
    fn instance_type_of(&self, m: &Machine) -> &str {
        if m.witness { &self.settings.witness_instance_type } else { &self.settings.instance_type }
    }

    async fn image(&self) -> Result<ChosenImage, ProviderError> {
        let s = &self.settings;
        let image: Image = match &s.ami {
            Some(ami) => {
                let resource = format!("AMI {ami}");
                let out = self.client.describe_images().image_ids(ami).send().await.map_err(self.err("describe", &resource))?;
                let Some(img) = out.images().iter().find(|i| i.image_id() == Some(ami)) else {
                    return Err(ProviderError::Invalid {
                        resource,
                        problem: format!("EC2 does not list it in region {} (not found, or not shared with this account)", self.region),
                    });
                };
                match mapping::arch_of_image(img) {
                    Some(a) if a == s.arch => {}
                    other => {
                        return Err(ProviderError::Invalid {
                            resource,
                            problem: format!(
                                "its architecture is {} but instance type {} needs {}; choose an {} AMI or another instance type",
                                other.map(|a| a.to_string()).unwrap_or_else(|| {
                                    img.architecture().map(|a| a.as_str().to_string()).unwrap_or_else(|| "unknown".into())
                                }),
                                s.instance_type,
                                s.arch,
                                s.arch
                            ),
                        });
                    }
                }
                img.clone()
            }
            None => {
                let q = &s.ami_query;
                let resource = format!("AMI ({q}, {})", s.arch);
                let out = self
                    .client
                    .describe_images()
                    .set_owners(Some(q.owners.clone()))
                    .set_filters(Some(mapping::ami_filters(q, s.arch)))
                    .send()
                    .await
                    .map_err(self.err("find", &resource))?;
                match mapping::pick_image(out.images(), s.arch, q.ubuntu_lts) {
                    Some(i) => i.clone(),
                    None => {
                        return Err(ProviderError::Invalid {
                            resource: "AMI".into(),
                            problem: format!(
                                "no available image in region {} matches {q} for architecture {} (the architecture of {}); give provider.ami",
                                self.region, s.arch, s.instance_type
                            ),
                        });
                    }
                }
            }
        };
        Ok(ChosenImage {
            id: image.image_id().unwrap_or_default().to_string(),
            name: image.name().unwrap_or_default().to_string(),
            root_device: image.root_device_name().unwrap_or("/dev/sda1").to_string(),
        })
    }

    async fn find_group(&self, cluster: &str, vpc_id: Option<&str>) -> Result<Vec<SecurityGroup>, ProviderError> {
        let mut req = self.client.describe_security_groups().filters(mapping::cluster_filter(cluster));
        if let Some(v) = vpc_id {
            req = req.filters(mapping::filter("vpc-id", &[v]));
        }
        let out = req.send().await.map_err(self.err("describe", &format!("the security groups of cluster {cluster}")))?;
        let mut groups: Vec<SecurityGroup> =
            out.security_groups().iter().filter(|g| mapping::belongs_to(g.tags(), cluster)).cloned().collect();
        groups.sort_by(|a, b| a.group_id().cmp(&b.group_id()));
        Ok(groups)
    }

    /// The cluster's security group in `vpc_id`, created if missing, with its rules
    /// brought in line with the spec. Returns its id.
    async fn ensure_group(&self, cluster: &Cluster, vpc_id: &str) -> Result<String, ProviderError> {
        let name = mapping::resource_name(&cluster.name);
        let resource = format!("security group {name}");
        let groups = self.find_group(&cluster.name, Some(vpc_id)).await?;
        let found = groups.first().map(|g| g.ip_permissions().to_vec()).unwrap_or_default();
        let (id, existing, owned) = match groups.first() {
            Some(g) => (
                g.group_id().unwrap_or_default().to_string(),
                mapping::rules_of(g.ip_permissions()),
                mapping::owned_rules_of(g.ip_permissions()),
            ),
            None => {
                self.started("cluster", "create security group");
                let created = self
                    .client
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("pgrepl cluster {}: SSH from the admin CIDR, PostgreSQL between the nodes", cluster.name))
                    .vpc_id(vpc_id)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::SecurityGroup)
                            .set_tags(Some(mapping::cluster_tags(&cluster.name)))
                            .build(),
                    )
                    .send()
                    .await;
                match created {
                    Ok(out) => {
                        let id = out.group_id().unwrap_or_default().to_string();
                        self.finished("cluster", "create security group", &id);
                        (id, Vec::new(), Vec::new())
                    }
                    Err(e) => {
                        return Err(match self.err("create", &resource)(e) {
                            ProviderError::AlreadyExists { code, .. } => ProviderError::Invalid {
                                resource: format!("{resource} in VPC {vpc_id}"),
                                problem: format!(
                                    "a group of that name exists ({code}) without the tag {}={}; pgrepl does not adopt it: delete it, or tag it if it is this cluster's",
                                    mapping::TAG_CLUSTER,
                                    cluster.name
                                ),
                            },
                            other => other,
                        });
                    }
                }
            }
        };
        let st = &self.settings;
        let exposure = mapping::Exposure::of(cluster, st.ssh_port, &st.admin_cidr, &st.app_cidrs, &st.api_cidrs);
        let desired = exposure.rules(&id);
        let diff = mapping::reconcile_rules(&desired, &existing, &owned, &exposure.managed_ports());
        if !diff.add.is_empty() {
            let perms = diff.add.iter().map(|r| mapping::permission(r, Some(exposure.description(r)))).collect();
            self.client
                .authorize_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(perms))
                .send()
                .await
                .map_err(self.err("add ingress rules to", &format!("{resource} ({id})")))?;
            for r in &diff.add {
                tracing::info!(group = %id, rule = %r, "authorized");
            }
        }
        if !diff.remove.is_empty() {
            // As found, description included: EC2 ignores it, moto compares it.
            let perms = diff.remove.iter().map(|r| mapping::permission(r, mapping::description_of(r, &found).as_deref())).collect();
            self.client
                .revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(perms))
                .send()
                .await
                .map_err(self.err("revoke ingress rules of", &format!("{resource} ({id})")))?;
            for r in &diff.remove {
                tracing::warn!(group = %id, rule = %r, "revoked a rule the spec does not ask for");
            }
        }
        Ok(id)
    }

    /// Checks the key pair exists, importing pgrepl's if needed (when `create`).
    /// Returns its name and whether it exists now.
    async fn key_pair(&self, cluster: &str, create: bool) -> Result<(String, bool), ProviderError> {
        match &self.settings.key {
            KeySource::Existing(name) => {
                self.client.describe_key_pairs().key_names(name).send().await.map_err(self.err("find", &format!("key pair {name}")))?;
                Ok((name.clone(), true))
            }
            KeySource::Import { path, material } => {
                let name = mapping::resource_name(cluster);
                let resource = format!("key pair {name}");
                let out = self
                    .client
                    .describe_key_pairs()
                    .filters(mapping::filter("key-name", &[&name]))
                    .send()
                    .await
                    .map_err(self.err("find", &resource))?;
                if let Some(k) = out.key_pairs().iter().find(|k| k.key_name() == Some(&name)) {
                    if mapping::belongs_to(k.tags(), cluster) {
                        return Ok((name, true));
                    }
                    return Err(ProviderError::Invalid {
                        resource,
                        problem: format!(
                            "it exists but pgrepl did not import it for cluster {cluster} (no tag {}={cluster}); set provider.key_name = \"{name}\" to use it, or delete it",
                            mapping::TAG_CLUSTER
                        ),
                    });
                }
                if !create {
                    return Ok((name, false));
                }
                self.started("cluster", "import key pair");
                self.client
                    .import_key_pair()
                    .key_name(&name)
                    .public_key_material(Blob::new(material.clone()))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::KeyPair)
                            .set_tags(Some(mapping::cluster_tags(cluster)))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(self.err(&format!("import {} as", path.display()), &resource))?;
                self.finished("cluster", "import key pair", &name);
                Ok((name, true))
            }
        }
    }

    async fn run_instance(
        &self,
        cluster: &str,
        launch: &Launch<'_>,
        image: &ChosenImage,
        group_id: Option<&str>,
        key_name: Option<&str>,
        dry_run: bool,
    ) -> Result<Instance, ProviderError> {
        let s = &self.settings;
        let tags = mapping::node_tags(cluster, launch.node, &launch.role);
        let resource = format!(
            "instance {} ({} from {} in {})",
            mapping::instance_name(cluster, launch.node),
            launch.instance_type,
            image.id,
            launch.subnet.az
        );
        let mut backoff = Backoff::new(self.poll_interval, MAX_POLL_INTERVAL, self.ready_timeout);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .client
                .run_instances()
                .image_id(&image.id)
                .instance_type(InstanceType::from(launch.instance_type))
                .min_count(1)
                .max_count(1)
                .subnet_id(&launch.subnet.id)
                .set_key_name(key_name.map(str::to_string))
                .set_security_group_ids(group_id.map(|g| vec![g.to_string()]))
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&image.root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(i32::try_from(s.volume_gb).unwrap_or(i32::MAX))
                                .volume_type(VolumeType::from(s.volume_type.as_str()))
                                .delete_on_termination(true)
                                .encrypted(true)
                                .build(),
                        )
                        .build(),
                )
                .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags.clone())).build())
                .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags.clone())).build())
                .metadata_options(InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build())
                .client_token(&launch.token)
                .dry_run(dry_run);
            if let Some(u) = &s.user_data {
                req = req.user_data(mapping::base64(u.as_bytes()));
            }
            match req.send().await.map_err(self.err("launch", &resource)) {
                Ok(out) => {
                    return out
                        .instances()
                        .first()
                        .cloned()
                        .ok_or_else(|| ProviderError::Invalid { resource, problem: "RunInstances answered without an instance".into() });
                }
                Err(e) if e.is_retryable() && attempt < LAUNCH_ATTEMPTS => {
                    tracing::warn!(node = launch.node, error = %e, attempt, "launch failed; retrying with the same client token");
                    if !backoff.pause().await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ---- the three operations ----------------------------------------------------------

    /// Checks everything `ensure` needs against AWS without creating anything: the
    /// network, the AMI (and its architecture), the key pair, and a RunInstances dry run
    /// (`DryRunOperation` means the launch would be allowed).
    pub async fn preflight(&self, cluster: &Cluster) -> Result<Preflight, ProviderError> {
        let live = self.live_instances(&cluster.name).await?;
        let existing: Vec<String> = self.by_node(cluster, &live)?.into_iter().map(|(n, _)| n).collect();
        let net = self.network().await?;
        let image = self.image().await?;
        let (key_name, key_exists) = self.key_pair(&cluster.name, false).await?;
        let groups = self.find_group(&cluster.name, Some(&net.vpc_id)).await?;
        let group = groups.first().and_then(|g| g.group_id()).map(str::to_string);
        let placed = self.placement(cluster, &net)?;
        let placement = placed.iter().map(|(m, s)| (m.name.clone(), s.id.clone(), s.az.clone())).collect();
        if let Some((first, subnet)) = placed.first() {
            let launch = Launch {
                node: &first.name,
                role: first.role.clone(),
                instance_type: self.instance_type_of(first),
                subnet,
                token: mapping::client_token(&cluster.name, &first.name, new_run_id()),
            };
            match self.run_instance(&cluster.name, &launch, &image, group.as_deref(), key_exists.then_some(key_name.as_str()), true).await {
                Err(ProviderError::DryRun { .. }) => {}
                Err(e) => return Err(e),
                Ok(i) => {
                    return Err(ProviderError::Invalid {
                        resource: format!("instance {}", i.instance_id().unwrap_or("?")),
                        problem: "EC2 launched it although the request was a dry run; terminate it".into(),
                    });
                }
            }
        }
        Ok(Preflight {
            region: self.region.clone(),
            vpc_id: net.vpc_id,
            image: (image.id, image.name),
            instance_type: (self.settings.instance_type.clone(), self.settings.arch.to_string()),
            placement,
            key_name,
            existing,
        })
    }

    /// Makes sure every node and every witness has a running instance and returns the
    /// hosts: the nodes in spec order, then the witnesses (the typed version of
    /// [`Provider::ensure_hosts`]).
    pub async fn ensure(&self, cluster: &Cluster) -> Result<Vec<Host>, ProviderError> {
        let run_id = new_run_id();
        let live = self.live_instances(&cluster.name).await?;
        let have = self.by_node(cluster, &live)?;
        let net = self.network().await?;
        // Every host's subnet is known before anything is created: a location without a
        // subnet in its zone leaves nothing behind.
        let placed = self.placement(cluster, &net)?;
        let missing: Vec<&(Machine, SubnetChoice)> = placed.iter().filter(|(m, _)| !have.iter().any(|(name, _)| *name == m.name)).collect();
        // What can be checked without creating anything comes first, so an unknown AMI
        // or key pair leaves nothing behind.
        let prepared = if missing.is_empty() {
            None
        } else {
            let image = self.image().await?;
            // Imports pgrepl's key pair when missing: AWS judges the key file before any
            // other resource exists.
            let (key_name, _) = self.key_pair(&cluster.name, true).await?;
            Some((image, key_name))
        };
        let group_id = self.ensure_group(cluster, &net.vpc_id).await?;
        let mut ids: Vec<(String, String)> = Vec::new(); // (node, instance id)
        for (node, inst) in &have {
            let id = inst.instance_id().unwrap_or_default().to_string();
            self.finished(node, "launch", &format!("exists: {id}"));
            match mapping::instance_state(inst) {
                "stopped" => {
                    self.started(node, "start");
                    self.client
                        .start_instances()
                        .instance_ids(&id)
                        .send()
                        .await
                        .map_err(self.err("start", &format!("instance {id} of node {node}")))?;
                    self.finished(node, "start", &id);
                }
                "stopping" => {
                    return Err(ProviderError::Invalid {
                        resource: format!("instance {id} of node {node}"),
                        problem: "it is stopping; run again once it has stopped (it is then started)".into(),
                    });
                }
                _ => {}
            }
            if let Some((m, subnet)) = placed.iter().find(|(m, _)| m.name == *node) {
                let zone = inst.placement().and_then(|p| p.availability_zone()).unwrap_or("?");
                if m.location.is_some() && zone != subnet.az {
                    tracing::warn!(
                        node = %node,
                        instance = %id,
                        zone,
                        wanted = %subnet.az,
                        "the instance is in another availability zone than its location asks; pgrepl does not move it (terminate it and run again to replace it)"
                    );
                }
                let role = &m.role;
                if mapping::tag_value(inst.tags(), mapping::TAG_ROLE) != Some(role.as_str()) {
                    self.client
                        .create_tags()
                        .resources(&id)
                        .tags(aws_sdk_ec2::types::Tag::builder().key(mapping::TAG_ROLE).value(role).build())
                        .send()
                        .await
                        .map_err(self.err("tag", &format!("instance {id} of node {node}")))?;
                }
            }
            ids.push((node.clone(), id));
        }

        if let Some((image, key_name)) = prepared {
            tracing::info!(image = %image.id, name = %image.name, "AMI");
            for (node, subnet) in missing {
                let launch = Launch {
                    node: &node.name,
                    role: node.role.clone(),
                    instance_type: self.instance_type_of(node),
                    subnet,
                    token: mapping::client_token(&cluster.name, &node.name, run_id),
                };
                self.started(&node.name, "launch");
                let inst = self.run_instance(&cluster.name, &launch, &image, Some(&group_id), Some(&key_name), false).await?;
                let id = inst.instance_id().unwrap_or_default().to_string();
                self.finished(&node.name, "launch", &format!("{id} in {}", subnet.az));
                ids.push((node.name.clone(), id));
            }
        }

        // One deadline for both waits: running, then SSH answering.
        let waiting_since = tokio::time::Instant::now();
        let running = self.wait_running(&ids).await?;
        let mut hosts = Vec::new();
        for (n, _) in &placed {
            if let Some(i) = running.iter().find(|i| mapping::tag_value(i.tags(), mapping::TAG_NODE) == Some(n.name.as_str())) {
                if let Some(h) = mapping::host_of(i) {
                    hosts.push(self.map(h));
                }
            }
        }
        if self.wait_for_ssh {
            let left = self.ready_timeout.saturating_sub(waiting_since.elapsed());
            self.wait_ssh(&hosts, left.max(SSH_PROBE_TIMEOUT)).await?;
        }
        Ok(hosts)
    }

    /// Polls until every instance runs, with backoff, within the ready timeout.
    async fn wait_running(&self, ids: &[(String, String)]) -> Result<Vec<Instance>, ProviderError> {
        let all: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
        for (node, _) in ids {
            self.started(node, "wait until running");
        }
        let mut backoff = Backoff::new(self.poll_interval, MAX_POLL_INTERVAL, self.ready_timeout);
        let mut reported: BTreeSet<String> = BTreeSet::new();
        loop {
            let seen = self.instances_by_id(&all).await?;
            let mut waiting = Vec::new();
            for (node, id) in ids {
                match seen.iter().find(|i| i.instance_id() == Some(id)) {
                    Some(i) => match mapping::instance_state(i) {
                        "running" => {
                            if reported.insert(id.clone()) {
                                self.finished(node, "wait until running", "running");
                            }
                        }
                        s @ ("shutting-down" | "terminated") => {
                            let why = i.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                            return Err(ProviderError::Invalid {
                                resource: format!("instance {id} of node {node}"),
                                problem: format!("it is {s} instead of starting ({why})"),
                            });
                        }
                        s => waiting.push(format!("{node} ({id}) {s}")),
                    },
                    None => waiting.push(format!("{node} ({id}) not listed yet")),
                }
            }
            if waiting.is_empty() {
                return Ok(seen);
            }
            tracing::info!(waiting = %waiting.join(", "), elapsed_s = backoff.elapsed().as_secs(), "waiting for instances to run");
            if !backoff.pause().await {
                return Err(ProviderError::Timeout {
                    waiting_for: "instances to run".into(),
                    waited: backoff.elapsed(),
                    last: waiting.join(", "),
                });
            }
        }
    }

    /// Polls each host's SSH port (admin address, else address) until it accepts a TCP
    /// connection, concurrently, within `timeout` (what is left of the ready timeout).
    async fn wait_ssh(&self, hosts: &[Host], timeout: Duration) -> Result<(), ProviderError> {
        let mut set = JoinSet::new();
        for h in hosts {
            let Some(addr) = h.admin_address.clone().or_else(|| h.address.clone()) else {
                return Err(ProviderError::Invalid {
                    resource: format!("node {}", h.node),
                    problem: "its instance has no address to reach SSH at".into(),
                });
            };
            let target = format_target(&addr, self.settings.ssh_port);
            let node = h.node.clone();
            self.started(&node, "wait for SSH");
            let interval = self.poll_interval;
            set.spawn(async move {
                let r = probe_until_open(&target, interval, timeout).await;
                (node, target, r)
            });
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((node, target, Ok(()))) => self.finished(&node, "wait for SSH", &format!("{target} answers")),
                Ok((node, target, Err((waited, last)))) => {
                    self.finished(&node, "wait for SSH", "timed out");
                    first_err.get_or_insert(ProviderError::Timeout {
                        waiting_for: format!("SSH of node {node} at {target}"),
                        waited,
                        last,
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(ProviderError::Invalid {
                        resource: "SSH wait".into(),
                        problem: format!("the probe task failed: {e}"),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The hosts that exist now: nodes, then witnesses, in spec order (nodes the spec no
    /// longer has at the end). Nothing is created (the typed version of [`Provider::list_hosts`]).
    pub async fn list(&self, cluster: &Cluster) -> Result<Vec<Host>, ProviderError> {
        let live = self.live_instances(&cluster.name).await?;
        let by_node = self.by_node(cluster, &live)?;
        let machines = mapping::machines(cluster);
        let mut hosts: Vec<Host> = Vec::new();
        for n in &machines {
            if let Some((_, i)) = by_node.iter().find(|(name, _)| *name == n.name) {
                hosts.extend(mapping::host_of(i));
            }
        }
        let mut extra: Vec<Host> =
            by_node.iter().filter(|(name, _)| !machines.iter().any(|m| m.name == *name)).filter_map(|(_, i)| mapping::host_of(i)).collect();
        extra.sort_by(|a, b| a.node.cmp(&b.node));
        hosts.extend(extra);
        Ok(hosts.into_iter().map(|h| self.map(h)).collect())
    }

    /// Terminates the cluster's instances, then deletes its security groups and the key
    /// pair pgrepl imported: only resources tagged `pgrepl:cluster=<cluster>` (the typed
    /// version of [`Provider::destroy_hosts`]).
    pub async fn destroy(&self, cluster: &Cluster) -> Result<(), ProviderError> {
        let name = &cluster.name;
        let live = self.live_instances(name).await?;
        let ids: Vec<String> =
            live.iter().filter(|i| mapping::belongs_to(i.tags(), name)).filter_map(|i| i.instance_id().map(str::to_string)).collect();
        if !ids.is_empty() {
            self.started("cluster", "terminate instances");
            self.client
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
                .map_err(self.err("terminate", &format!("instances {} of cluster {name}", ids.join(", "))))?;
            let mut backoff = Backoff::new(self.poll_interval, MAX_POLL_INTERVAL, self.destroy_timeout);
            loop {
                let seen = self.instances_by_id(&ids).await?;
                let left: Vec<String> = seen
                    .iter()
                    .filter(|i| mapping::instance_state(i) != "terminated")
                    .map(|i| format!("{} {}", i.instance_id().unwrap_or("?"), mapping::instance_state(i)))
                    .collect();
                if left.is_empty() {
                    break;
                }
                tracing::info!(left = %left.join(", "), "waiting for instances to terminate");
                if !backoff.pause().await {
                    return Err(ProviderError::Timeout {
                        waiting_for: format!("the instances of cluster {name} to terminate"),
                        waited: backoff.elapsed(),
                        last: left.join(", "),
                    });
                }
            }
            self.finished("cluster", "terminate instances", &ids.join(", "));
        }

        for g in self.find_group(name, None).await? {
            let id = g.group_id().unwrap_or_default().to_string();
            let resource = format!("security group {} ({id})", g.group_name().unwrap_or("?"));
            self.started("cluster", "delete security group");
            // Real EC2 refuses while terminated instances' interfaces linger
            // (DependencyViolation); retry within the destroy timeout.
            let mut backoff = Backoff::new(self.poll_interval, MAX_POLL_INTERVAL, self.destroy_timeout);
            loop {
                match self.client.delete_security_group().group_id(&id).send().await.map_err(self.err("delete", &resource)) {
                    Ok(_) | Err(ProviderError::NotFound { .. }) => break,
                    Err(e @ ProviderError::InUse { .. }) | Err(e @ ProviderError::Throttled { .. }) => {
                        tracing::info!(group = %id, error = %e, "security group still in use; retrying");
                        if !backoff.pause().await {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.finished("cluster", "delete security group", &id);
        }

        let keys = self
            .client
            .describe_key_pairs()
            .filters(mapping::cluster_filter(name))
            .send()
            .await
            .map_err(self.err("describe", &format!("the key pairs of cluster {name}")))?;
        for k in keys.key_pairs() {
            if !mapping::belongs_to(k.tags(), name) {
                continue;
            }
            let Some(key) = k.key_name() else { continue };
            self.started("cluster", "delete key pair");
            match self.client.delete_key_pair().key_name(key).send().await.map_err(self.err("delete", &format!("key pair {key}"))) {
                Ok(_) | Err(ProviderError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            self.finished("cluster", "delete key pair", key);
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for Ec2Provider {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn ensure_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, pgrepl_core::Error> {
        self.ensure(cluster).await.map_err(|e| e.into_core(format!("provision the hosts of cluster {} in {}", cluster.name, self.region)))
    }

    async fn list_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, pgrepl_core::Error> {
        self.list(cluster).await.map_err(|e| e.into_core(format!("list the hosts of cluster {} in {}", cluster.name, self.region)))
    }

    async fn destroy_hosts(&self, cluster: &Cluster) -> Result<(), pgrepl_core::Error> {
        self.destroy(cluster).await.map_err(|e| e.into_core(format!("destroy the hosts of cluster {} in {}", cluster.name, self.region)))
    }
}

/// `host:port`, bracketing IPv6 addresses.
fn format_target(addr: &str, port: u16) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => SocketAddr::from((v6, port)).to_string(),
        _ => format!("{addr}:{port}"),
    }
}

/// Connects to `target` until a TCP connection succeeds; on timeout, how long it waited
/// and the last error.
async fn probe_until_open(target: &str, interval: Duration, timeout: Duration) -> Result<(), (Duration, String)> {
    let mut backoff = Backoff::new(interval, MAX_POLL_INTERVAL, timeout);
    loop {
        let limit = SSH_PROBE_TIMEOUT.min(backoff.remaining().max(Duration::from_millis(100)));
        let last = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}ms", limit.as_millis()),
        };
        tracing::debug!(target, last, "SSH port not open yet");
        if !backoff.pause().await {
            return Err((backoff.elapsed(), last));
        }
    }
}

/// Whether an endpoint URL points at this machine (an EC2 mock).
fn is_local_endpoint(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

use pgrepl_core::is_cidr;

/// `~/x` → `$HOME/x`.
fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints_are_recognised() {
        for u in ["http://127.0.0.1:5000", "http://localhost:5000/", "http://[::1]:5000", "127.0.0.2:80", "http://user@127.0.0.1:1"] {
            assert!(is_local_endpoint(u), "{u}");
        }
        for u in ["https://ec2.us-east-2.amazonaws.com", "https://vpce-1.ec2.us-east-1.vpce.amazonaws.com", "http://10.0.0.5:443"] {
            assert!(!is_local_endpoint(u), "{u}");
        }
    }

    #[test]
    fn targets_bracket_ipv6() {
        assert_eq!(format_target("10.0.0.1", 22), "10.0.0.1:22");
        assert_eq!(format_target("2001:db8::1", 22), "[2001:db8::1]:22");
        assert_eq!(format_target("host.example", 2222), "host.example:2222");
    }

    #[test]
    fn cidrs() {
        assert!(is_cidr("203.0.113.7/32"));
        assert!(is_cidr("2001:db8::/32"));
        assert!(!is_cidr("203.0.113.7"));
        assert!(!is_cidr("203.0.113.7/33"));
        assert!(!is_cidr("any"));
    }

    fn spec() -> AwsProviderSpec {
        AwsProviderSpec { admin_cidr: Some("203.0.113.7/32".into()), key_name: Some("mine".into()), ..Default::default() }
    }

    fn config_error(spec: AwsProviderSpec) -> (String, String) {
        match Ec2Provider::builder().with_spec(&spec).settings() {
            Err(ProviderError::Config { field, problem }) => (field, problem),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_defaults() {
        let s = Ec2Provider::builder().with_spec(&spec()).settings().unwrap();
        assert_eq!(s.instance_type, "t4g.small");
        assert_eq!(s.arch, Arch::Arm64);
        assert_eq!(s.volume_gb, 20);
        assert_eq!(s.volume_type, "gp3");
        assert_eq!(s.ssh_port, 22);
        assert_eq!(s.ami_query, AmiQuery::default());
        assert!(matches!(s.key, KeySource::Existing(ref k) if k == "mine"));
        assert_eq!(s.witness_instance_type, "t4g.small", "witnesses default to the nodes' type");
        let s = Ec2Provider::builder().with_spec(&AwsProviderSpec { witness_instance_type: Some("t4g.micro".into()), ..spec() }).settings();
        assert_eq!(s.unwrap().witness_instance_type, "t4g.micro");
    }

    #[test]
    fn settings_are_checked_with_field_names() {
        let (f, p) = config_error(AwsProviderSpec { admin_cidr: None, ..spec() });
        assert_eq!(f, "provider.admin_cidr");
        assert!(p.contains("missing") && p.contains("0.0.0.0/0"), "{p}");
        let (f, _) = config_error(AwsProviderSpec { admin_cidr: Some("1.2.3.4".into()), ..spec() });
        assert_eq!(f, "provider.admin_cidr");
        let (f, _) = config_error(AwsProviderSpec { app_cidrs: vec!["10.0.0.0/8".into(), "x".into()], ..spec() });
        assert_eq!(f, "provider.app_cidrs[1]");
        let (f, _) = config_error(AwsProviderSpec { api_cidrs: vec!["10.0.0.0/8".into(), "y".into()], ..spec() });
        assert_eq!(f, "provider.api_cidrs[1]");
        let (f, p) = config_error(AwsProviderSpec { instance_type: Some("t4g".into()), ..spec() });
        assert_eq!(f, "provider.instance_type");
        assert!(p.contains("not an instance type"));
        let (f, _) = config_error(AwsProviderSpec { volume_type: Some("ssd".into()), ..spec() });
        assert_eq!(f, "provider.volume_type");
        let (f, _) = config_error(AwsProviderSpec { volume_gb: Some(0), ..spec() });
        assert_eq!(f, "provider.volume_gb");
        let (f, _) = config_error(AwsProviderSpec { key_name: None, ..spec() });
        assert_eq!(f, "provider.ssh_public_key_file");
        let (f, _) = config_error(AwsProviderSpec { ssh_public_key_file: Some("/x.pub".into()), ..spec() });
        assert_eq!(f, "provider.key_name");
        let (f, _) = config_error(AwsProviderSpec { ami: Some("ubuntu".into()), ..spec() });
        assert_eq!(f, "provider.ami");
        let (f, _) = config_error(AwsProviderSpec { subnet_ids: vec!["sn-1".into()], ..spec() });
        assert_eq!(f, "provider.subnet_ids[0]");
        let (f, p) = config_error(AwsProviderSpec { witness_instance_type: Some("t3.micro".into()), ..spec() });
        assert_eq!(f, "provider.witness_instance_type");
        assert!(p.contains("t3.micro is x86_64") && p.contains("same AMI"), "{p}");
        let (f, _) = config_error(AwsProviderSpec { witness_instance_type: Some("micro".into()), ..spec() });
        assert_eq!(f, "provider.witness_instance_type");
        let (f, p) = config_error(AwsProviderSpec { locations: [("east".to_string(), "dc1".to_string())].into(), ..spec() });
        assert_eq!(f, "provider.locations.east");
        assert!(p.contains("\"dc1\" is not an availability zone"), "{p}");
    }

    #[test]
    fn unreadable_key_file_names_the_file() {
        let e = Ec2Provider::builder()
            .with_spec(&AwsProviderSpec { key_name: None, ssh_public_key_file: Some("/nonexistent/pgrepl-test.pub".into()), ..spec() })
            .settings()
            .unwrap_err();
        assert!(matches!(e, ProviderError::KeyFile { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/pgrepl-test.pub"), "{e}");
    }

    #[test]
    fn run_ids_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
    }
}
