//! What only reads EC2: the cluster's instances, its network and placement, the image
//! to boot, its security groups. Nothing here creates or changes anything.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Image, Instance, SecurityGroup};
use pgrepl_core::cluster::Cluster;
use pgrepl_core::spec::zone_of_location;

use super::Ec2Provider;
use crate::error::ProviderError;
use crate::mapping::{self, Machine, PlacementError, SubnetChoice};

/// Most pages read from one paginated Describe call.
const MAX_PAGES: usize = 100;

/// The network nodes go to.
#[derive(Debug, Clone)]
pub(super) struct Network {
    pub(super) vpc_id: String,
    /// Subnets in spreading order.
    pub(super) order: Vec<SubnetChoice>,
}

/// The image nodes boot from.
#[derive(Debug, Clone)]
pub(super) struct ChosenImage {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) root_device: String,
}

impl Ec2Provider {
    /// The cluster's instances that still exist (pending, running, stopping, stopped).
    pub(super) async fn live_instances(&self, cluster: &str) -> Result<Vec<Instance>, ProviderError> {
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
    pub(super) async fn instances_by_id(&self, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
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
    pub(super) fn by_node<'a>(&self, cluster: &Cluster, instances: &'a [Instance]) -> Result<Vec<(String, &'a Instance)>, ProviderError> {
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

    pub(super) async fn network(&self) -> Result<Network, ProviderError> {
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
    pub(super) fn placement(&self, cluster: &Cluster, net: &Network) -> Result<Vec<(Machine, SubnetChoice)>, ProviderError> {
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
    pub(super) fn instance_type_of(&self, m: &Machine) -> &str {
        if m.witness { &self.settings.witness_instance_type } else { &self.settings.instance_type }
    }

    pub(super) async fn image(&self) -> Result<ChosenImage, ProviderError> {
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

    pub(super) async fn find_group(&self, cluster: &str, vpc_id: Option<&str>) -> Result<Vec<SecurityGroup>, ProviderError> {
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
}
