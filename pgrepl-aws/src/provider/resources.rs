//! What creates resources in EC2: the cluster's security group (and its rules), the key
//! pair, one instance per launch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, Instance, InstanceMetadataOptionsRequest, InstanceType, ResourceType,
    TagSpecification, VolumeType,
};
use pgrepl_core::cluster::Cluster;

use super::read::ChosenImage;
use super::settings::KeySource;
use super::{Ec2Provider, LAUNCH_ATTEMPTS, MAX_POLL_INTERVAL};
use crate::error::ProviderError;
use crate::mapping::{self, SubnetChoice};
use crate::wait::Backoff;

/// One launch: the node, its subnet, the token.
pub(super) struct Launch<'a> {
    pub(super) node: &'a str,
    pub(super) role: String,
    pub(super) instance_type: &'a str,
    pub(super) subnet: &'a SubnetChoice,
    pub(super) token: String,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number that differs between `ensure` runs (for client tokens).
pub(super) fn new_run_id() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 40) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Ec2Provider {
    /// The cluster's security group in `vpc_id`, created if missing, with its rules
    /// brought in line with the spec. Returns its id.
    pub(super) async fn ensure_group(&self, cluster: &Cluster, vpc_id: &str) -> Result<String, ProviderError> {
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
    pub(super) async fn key_pair(&self, cluster: &str, create: bool) -> Result<(String, bool), ProviderError> {
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

    pub(super) async fn run_instance(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
    }
}
