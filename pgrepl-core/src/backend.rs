//! What every backend implements and reads: the [`Backend`] trait and the
//! [`OpenOptions`]. Below the backends (such as [`crate::local`]) and below
//! [`crate::open`], which picks one and re-exports both.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::deploy::Deployment;
use crate::discovery::DiscoveryOptions;
use crate::error::Error;
use crate::spec::ClusterSpec;
use crate::version::PgMajor;

/// Options for opening a deployment, beyond the spec; every backend reads the fields
/// that apply to it and ignores the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The PostgreSQL major to deploy, overriding the spec's `postgres` (all backends:
    /// the local backend looks for binaries of this major, the remote ones install and
    /// use it on the hosts).
    pub major: Option<PgMajor>,
    /// Directory of the server binaries on this machine (local backend; overrides the
    /// spec's `pg_bin`).
    pub pg_bin: Option<PathBuf>,
    /// Directory of the client tools on this machine, when not beside the server's
    /// (local backend; overrides the spec's `pg_client_bin`).
    pub pg_client_bin: Option<PathBuf>,
    /// The cluster's directory on this machine: the local provider's work directory
    /// (overrides the spec's `provider.work_dir`); for the remote backends, the
    /// directory whose `secrets/` is the default state directory. Default:
    /// [`default_work_dir`](crate::machine::default_work_dir) of the cluster's name.
    pub work_dir: Option<PathBuf>,
    /// Where pgrepl keeps the cluster's secrets and topology on this machine (all
    /// backends). Default: `<work dir>/secrets`.
    pub state_dir: Option<PathBuf>,
}

impl OpenOptions {
    /// Sets [`major`](Self::major).
    pub fn with_major(mut self, major: PgMajor) -> Self {
        self.major = Some(major);
        self
    }

    /// Sets [`pg_bin`](Self::pg_bin).
    pub fn with_pg_bin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pg_bin = Some(dir.into());
        self
    }

    /// Sets [`pg_client_bin`](Self::pg_client_bin).
    pub fn with_pg_client_bin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pg_client_bin = Some(dir.into());
        self
    }

    /// Sets [`work_dir`](Self::work_dir).
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Sets [`state_dir`](Self::state_dir).
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Binary discovery on this machine from these options (the spec's `pg_bin`,
    /// `pg_client_bin` and `postgres` are the local backend's fallbacks).
    pub fn discovery(&self) -> DiscoveryOptions {
        DiscoveryOptions { pg_bin: self.pg_bin.clone(), pg_client_bin: self.pg_client_bin.clone(), major: self.major }
    }

    /// The state directory of `spec`'s cluster for a backend whose nodes are not on this
    /// machine: [`state_dir`](Self::state_dir), else `<work_dir>/secrets`, else
    /// `secrets/` in the default work directory of the cluster's name.
    pub fn remote_state_dir(&self, spec: &ClusterSpec) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.work_dir.clone().unwrap_or_else(|| crate::machine::default_work_dir(&spec.name)).join("secrets"))
    }
}

/// Opens deployments of one provider kind. Object safe: a program passes the backends
/// it has to [`Deployment::open`] as `&[&dyn Backend]`.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The provider kind it opens, as [`ProviderSpec::kind`](crate::spec::ProviderSpec::kind)
    /// spells it (`local`, `ssh`, `aws`).
    fn kind(&self) -> &'static str;

    /// Validates `spec` (whose provider is of this kind), prepares what the deployment
    /// needs (binaries, host detection, API clients) and returns it. Nothing is created
    /// until [`Deployment::up`].
    async fn open(&self, spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error>;
}
