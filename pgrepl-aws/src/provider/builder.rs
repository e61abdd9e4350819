//! [`Ec2ProviderBuilder`]: the AWS configuration chain, the client and the checks made
//! before anything is asked of EC2.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{ProvideCredentials, SharedCredentialsProvider};
use pgrepl_core::deploy::Progress;
use pgrepl_core::provider::Host;
use pgrepl_core::spec::AwsProviderSpec;

use super::settings::Settings;
use super::{
    API_ATTEMPT_TIMEOUT, API_CALL_TIMEOUT, CREDENTIALS_TIMEOUT, DEFAULT_DESTROY_TIMEOUT, DEFAULT_POLL_INTERVAL, DEFAULT_READY_TIMEOUT,
    Ec2Provider, HostMapper,
};
use crate::error::ProviderError;
use crate::mapping::AmiQuery;

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

    /// The settings of the spec and of this builder, checked (see [`Settings::from_spec`]).
    pub(super) fn settings(&self) -> Result<Settings, ProviderError> {
        Settings::from_spec(&self.spec, self.ami_query.clone(), self.user_data.clone())
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
}
