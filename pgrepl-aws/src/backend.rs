//! [`Ec2Backend`]: opens a deployment of a spec whose provider is `aws`, for
//! [`Deployment::open`]. The hosts come from an [`Ec2Provider`]; how they are reached
//! (the [`Connector`]) is the caller's choice, so this crate does not depend on an SSH
//! implementation: pgrepl-cli passes one that builds `pgrepl_ssh::SshConnector`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pgrepl_aws::Ec2Backend;
//! use pgrepl_core::deploy::Deployment;
//! use pgrepl_core::local::LocalBackend;
//! use pgrepl_core::open::OpenOptions;
//! # #[derive(Debug)] struct MyConnector;
//! # #[async_trait::async_trait]
//! # impl pgrepl_core::provider::Connector for MyConnector {
//! #     async fn connect(&self, _: &pgrepl_core::Cluster, n: &pgrepl_core::Node, _: &pgrepl_core::provider::Host)
//! #         -> Result<pgrepl_core::provider::NodeHandle, pgrepl_core::Error> { Err(pgrepl_core::Error::node(&n.name, "demo")) }
//! # }
//!
//! # async fn demo(spec: pgrepl_core::ClusterSpec) -> Result<(), pgrepl_core::Error> {
//! let ec2 = Ec2Backend::new(|_req| Ok(Arc::new(MyConnector)))
//!     .configure(|b| b.poll_interval(std::time::Duration::from_secs(2)));
//! let d = Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend, &ec2]).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pgrepl_core::cluster::Cluster;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::open::{Backend, OpenOptions};
use pgrepl_core::provider::Connector;
use pgrepl_core::spec::{ClusterSpec, ProviderSpec, SshProviderSpec, VersionChoice};
use pgrepl_core::{Error, PgMajor, SpecError, SpecErrors};

use crate::{Ec2Provider, Ec2ProviderBuilder};

/// What [`Ec2Backend`] hands the caller's connector factory.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectorRequest<'a> {
    /// The cluster, validated for `major`.
    pub cluster: &'a Cluster,
    /// The spec's `[provider.ssh]` settings for the instances, with the login user
    /// defaulted to `ubuntu` (the user of the Ubuntu images the provider launches).
    pub ssh: &'a SshProviderSpec,
    /// The PostgreSQL major to install and run on the instances.
    pub major: PgMajor,
}

type ConnectorFactory = dyn Fn(&ConnectorRequest<'_>) -> Result<Arc<dyn Connector>, Error> + Send + Sync;
type Configure = dyn Fn(Ec2ProviderBuilder) -> Ec2ProviderBuilder + Send + Sync;

/// The [`Backend`] of provider kind `aws`: EC2 instances that the [`Ec2Provider`]
/// provisions, reached through the connector the caller's factory makes. Reads
/// [`OpenOptions`]' `major` (over the spec's `postgres`, which must not be `detect`:
/// the instances do not exist yet) and `state_dir` (default `<work_dir>/secrets`).
#[derive(Clone)]
pub struct Ec2Backend {
    connector: Arc<ConnectorFactory>,
    configure: Option<Arc<Configure>>,
}

impl fmt::Debug for Ec2Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Backend").field("configure", &self.configure.as_ref().map(|_| "<set>")).finish_non_exhaustive()
    }
}

impl Ec2Backend {
    /// A backend whose instances are reached through the connector `connector` makes
    /// (called once per open, after the spec is validated).
    pub fn new(connector: impl Fn(&ConnectorRequest<'_>) -> Result<Arc<dyn Connector>, Error> + Send + Sync + 'static) -> Self {
        Ec2Backend { connector: Arc::new(connector), configure: None }
    }

    /// Adjusts the provider's builder after the spec's `[provider]` section is applied
    /// (credentials, host mapping, waits, progress, ...): settings made here win over the
    /// spec's.
    pub fn configure(mut self, f: impl Fn(Ec2ProviderBuilder) -> Ec2ProviderBuilder + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }
}

#[async_trait]
impl Backend for Ec2Backend {
    fn kind(&self) -> &'static str {
        "aws"
    }

    /// Validates the spec for its major, builds the [`Ec2Provider`] (AWS configuration
    /// and credentials checked; nothing created) and the caller's connector. Instances
    /// are created by [`Deployment::up`].
    async fn open(&self, spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error> {
        let aws = match &spec.provider {
            ProviderSpec::Aws(a) => a,
            other => {
                return Err(Error::Spec(SpecErrors::one(SpecError::new(
                    "provider.kind",
                    format!("\"{}\" given to the EC2 deployment", other.kind()),
                    "\"aws\"",
                ))));
            }
        };
        let major = match (opts.major, spec.postgres) {
            (Some(m), _) | (None, VersionChoice::Major(m)) => m,
            (None, VersionChoice::Detect) => {
                // Structure first: every other problem of the spec is named with this one.
                let mut errs = match spec.validate() {
                    Err(SpecErrors(errs)) => errs,
                    Ok(_) => Vec::new(),
                };
                errs.insert(
                    0,
                    SpecError::new(
                        "postgres",
                        "\"detect\" with the aws provider: the instances do not exist yet",
                        "a major such as \"16\" (pgrepl installs it on the instances)",
                    ),
                );
                return Err(Error::Spec(SpecErrors(errs)));
            }
        };
        let cluster = spec.validate_for(major)?;
        let mut builder = Ec2Provider::builder().with_spec(aws);
        if let Some(f) = &self.configure {
            builder = f(builder);
        }
        let provider = builder.build().await.map_err(|e| e.into_core("configure the EC2 provider"))?;
        let mut ssh = aws.ssh.clone();
        ssh.user.get_or_insert_with(|| "ubuntu".into());
        let connector = (self.connector)(&ConnectorRequest { cluster: &cluster, ssh: &ssh, major })?;
        Ok(Deployment::new(cluster, Arc::new(provider), connector, opts.remote_state_dir(spec)))
    }
}
