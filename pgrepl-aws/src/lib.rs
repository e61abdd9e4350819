//! # pgrepl-aws
//!
//! An EC2 [`Provider`](pgrepl_core::provider::Provider) for pgrepl over aws-sdk-ec2:
//! it provisions one instance per node and per witness, in the availability zone of its
//! location when it has one (plus the cluster's security group and key pair),
//! finds them again by their tags, waits until they run and answer on SSH, and removes
//! exactly what it created. Deploying PostgreSQL onto the hosts is the SSH transport's
//! job; this crate only hands over [`Host`](pgrepl_core::provider::Host)s:
//! `address` = private IP (replication), `admin_address` = public IP (SSH),
//! `id` = instance id.
//!
//! ```no_run
//! use pgrepl_core::ClusterSpec;
//! use pgrepl_core::spec::ProviderSpec;
//!
//! # async fn demo(text: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ClusterSpec::from_toml(text)?;
//! let cluster = spec.validate()?;
//! let ProviderSpec::Aws(aws) = cluster.provider() else { return Ok(()) };
//! let provider = pgrepl_aws::Ec2Provider::builder()
//!     .with_spec(aws)                 // region, endpoint, CIDRs, type, AMI, subnets, key
//!     .build()                        // AWS config chain; credentials checked once
//!     .await?;
//! let hosts = provider.ensure(&cluster).await?;   // idempotent
//! for h in &hosts {
//!     println!("{} {} {:?} {:?}", h.node, h.state, h.address, h.admin_address);
//! }
//! provider.destroy(&cluster).await?;    // only this cluster's tagged resources
//! # Ok(()) }
//! ```
//!
//! Configuration comes from the builder first, then the spec's `[provider]`, then the
//! standard AWS chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_PROFILE`, SSO, web
//! identity, ECS/instance roles). Against a local EC2 mock (moto), turn off
//! [`wait_for_ssh`](Ec2ProviderBuilder::wait_for_ssh) or
//! [`map_host`](Ec2ProviderBuilder::map_host) to lab addresses: the mock's addresses are
//! fake and are never dialed (the builder refuses a loopback endpoint otherwise).
//!
//! To open a whole deployment of an `aws` spec, pass an [`Ec2Backend`] to
//! [`Deployment::open`](pgrepl_core::deploy::Deployment::open): it builds this provider
//! and pairs it with the connector the caller makes for the instances (pgrepl-cli's
//! builds `pgrepl_ssh::SshConnector`; this crate does not depend on pgrepl-ssh).
//!
//! Modules: [`mapping`] (pure: tags, rules, AMI choice, zones, tokens, errors),
//! [`error`] ([`ProviderError`], [`AwsError`]), the provider itself in `provider`,
//! [`Ec2Backend`] in `backend`.
//! aws-sdk-ec2 is a dependency of this crate only.

mod backend;
pub mod error;
pub mod mapping;
mod provider;
mod wait;

pub use aws_config::SdkConfig;
pub use aws_sdk_ec2::config::Credentials;
pub use backend::{ConnectorRequest, Ec2Backend};
pub use error::{AwsError, ProviderError};
pub use provider::{
    API_ATTEMPT_TIMEOUT, API_CALL_TIMEOUT, CREDENTIALS_TIMEOUT, DEFAULT_DESTROY_TIMEOUT, DEFAULT_POLL_INTERVAL, DEFAULT_READY_TIMEOUT,
    Ec2Provider, Ec2ProviderBuilder, HostMapper, LAUNCH_ATTEMPTS, MAX_POLL_INTERVAL, Preflight, SSH_PROBE_TIMEOUT,
};
pub use wait::MAX_ATTEMPTS;
