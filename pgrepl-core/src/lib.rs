//! # pgrepl-core
//!
//! PostgreSQL streaming replication, from a cluster spec to a running primary with hot
//! standbys: the spec and its validation, one table of version rules for 9.0 to 18,
//! exact rendering of every file and command per version, and (with the default
//! `runtime` feature) the executor that deploys, checks and describes a cluster through
//! a [`Transport`](transport::Transport) and a [`Provider`](provider::Provider).
//!
//! ```no_run
//! use pgrepl_core::{ClusterSpec, NodeSpec, PgMajor};
//! use pgrepl_core::deploy::Deployment;
//! use pgrepl_core::local::LocalBackend;
//!
//! # async fn demo() -> Result<(), pgrepl_core::Error> {
//! let spec = ClusterSpec::builder("demo")
//!     .postgres(PgMajor::V16)
//!     .node(NodeSpec::primary("db1"))
//!     .node(NodeSpec::standby("db2"))
//!     .node(NodeSpec::standby("db3"))
//!     .into_spec();
//! // The backend of the spec's provider kind opens it (with pgrepl-ssh and pgrepl-aws,
//! // pass their `SshBackend` and `Ec2Backend` too).
//! let deployment = Deployment::open(&spec, &Default::default(), &[&LocalBackend]).await?;
//! let report = deployment.up(&pgrepl_core::deploy::NoProgress).await?;
//! println!("{report}");
//! let status = deployment.status().await;
//! println!("{status}");
//! # Ok(()) }
//! ```
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `runtime` | yes | tokio: the executor, the local provider and transport, discovery, status, verify |
//!
//! Modules: [`spec`] (input) → [`validate`](spec::ClusterSpec::validate) → [`cluster`]
//! → [`render`] (pure, with [`version`] rules and a [`layout`]) → `deploy` (effects).

pub mod agent;
#[cfg(feature = "runtime")]
mod backend;
pub mod backup;
pub mod cluster;
pub mod error;
#[cfg(feature = "runtime")]
pub mod guard;
#[cfg(feature = "runtime")]
pub mod ha;
pub mod ha_settings;
#[cfg(feature = "runtime")]
pub mod hosts;
pub mod hostsvc;
pub mod layout;
pub mod locations;
pub mod lsn;
pub mod observe;
#[cfg(feature = "runtime")]
pub mod onhost;
pub mod pgcontrol;
pub mod plan;
pub mod render;
pub mod secret;
pub mod spec;
mod spec_error;
pub mod store;
pub mod tool_failure;
pub mod topology;
mod validate;
pub mod version;

#[cfg(feature = "runtime")]
mod debian_kept;
#[cfg(feature = "runtime")]
pub mod deploy;
#[cfg(feature = "runtime")]
pub mod discovery;
#[cfg(feature = "runtime")]
mod dry_run;
#[cfg(feature = "runtime")]
pub mod local;
#[cfg(feature = "runtime")]
mod machine;
#[cfg(feature = "runtime")]
mod node_handle;
#[cfg(feature = "runtime")]
pub mod open;
#[cfg(feature = "runtime")]
pub mod oplock;
#[cfg(feature = "runtime")]
mod oplock_holder;
#[cfg(feature = "runtime")]
mod oplock_options;
#[cfg(feature = "runtime")]
pub mod provider;
#[cfg(feature = "runtime")]
pub mod sql;
#[cfg(feature = "runtime")]
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "runtime")]
pub mod transport;
#[cfg(feature = "runtime")]
pub mod upgrade;

pub use cluster::{Cluster, Node, default_slot_name};
pub use error::{Error, Refusal, SpecError, SpecErrors};
pub use lsn::Lsn;
pub use spec::{ClusterSpec, NodeSpec, Role};
pub use validate::is_cidr;
pub use version::PgMajor;
