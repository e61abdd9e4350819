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
//!
//! The provider's parts: [`Ec2ProviderBuilder`] in `builder` (the AWS configuration),
//! the checked settings in `settings`, what only reads EC2 in `read`, what creates
//! resources in `resources`, the waits until instances run and answer on SSH in `ready`;
//! the public operations (`preflight`, `ensure`, `list`, `destroy`) are here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use pgrepl_core::cluster::Cluster;
use pgrepl_core::deploy::Progress;
use pgrepl_core::provider::{Host, Provider};

use crate::error::ProviderError;
use crate::mapping::{self, Machine, SubnetChoice};
use crate::wait::Backoff;

mod builder;
mod read;
mod ready;
mod resources;
mod settings;

pub use builder::Ec2ProviderBuilder;
use resources::{Launch, new_run_id};
use settings::{KeySource, Settings};

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

/// Rewrites a host before `ensure`/`list` return it and before its SSH port is probed.
///
/// This is the seam for tests against moto, whose addresses are fake and must never be
/// dialed: map each instance (by node or instance id) to a lab host's address.
pub type HostMapper = Arc<dyn Fn(Host) -> Host + Send + Sync>;

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
