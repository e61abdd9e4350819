//! One way to open a deployment, whatever its provider: [`Deployment::open`] reads the
//! spec's `provider.kind` and hands the spec to the [`Backend`] of that kind among the
//! ones the program passes in.
//!
//! ```no_run
//! use pgrepl_core::deploy::{Deployment, NoProgress};
//! use pgrepl_core::local::LocalBackend;
//! use pgrepl_core::open::OpenOptions;
//!
//! # async fn demo(spec: pgrepl_core::ClusterSpec) -> Result<(), pgrepl_core::Error> {
//! // A program built with pgrepl-ssh and pgrepl-aws adds `&pgrepl_ssh::SshBackend` and an
//! // `pgrepl_aws::Ec2Backend` here; a spec of a kind not in the list is refused by name.
//! let d = Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend]).await?;
//! println!("{}", d.up(&NoProgress).await?);
//! # Ok(()) }
//! ```
//!
//! Design:
//! - The backends are passed in, not registered globally or chosen in a `match` here:
//!   pgrepl-core knows nothing of SSH or AWS (no dependency on either), and a program
//!   carries exactly the backends it was built with (the CLI's cargo features). A
//!   platform adds its own provider by implementing [`Backend`] next to its `Provider`
//!   and `Connector`, without touching pgrepl.
//! - Backends are paired by the caller: the EC2 backend (pgrepl-aws) provisions hosts
//!   but takes the [`Connector`](crate::provider::Connector) for them from the caller
//!   (pgrepl-cli passes one that builds pgrepl-ssh's), so pgrepl-aws does not depend on
//!   pgrepl-ssh either.
//! - One [`OpenOptions`] for every backend, flat rather than per backend: the major
//!   override is one field (`major`) that every backend honours, instead of a
//!   `DiscoveryOptions::major` for the local backend next to another major for the
//!   remote ones; each field says which backends read it, and a backend ignores the
//!   others (local binaries mean nothing to an SSH host).
//! - Only [`Deployment::open`] looks at the kind. Once open, a deployment is driven
//!   through its `Provider` and `Connector` alone; behaviour that differs per platform
//!   belongs in those traits or in what the backend sets on the deployment (such as
//!   [`Deployment::with_local_ports`]), never in a comparison with a backend's name.

use crate::deploy::Deployment;
use crate::error::Error;
use crate::spec::ClusterSpec;
use crate::{SpecError, SpecErrors};

pub use crate::backend::{Backend, OpenOptions};
pub use crate::local::LocalBackend;

impl Deployment {
    /// Opens a deployment of `spec` with the backend of its provider kind among
    /// `backends` (the first of that kind). A kind without a backend here is refused as a
    /// spec error on `provider.kind`, naming the kind and the backends this program has.
    pub async fn open(spec: &ClusterSpec, opts: &OpenOptions, backends: &[&dyn Backend]) -> Result<Deployment, Error> {
        let kind = spec.provider.kind();
        match backends.iter().find(|b| b.kind() == kind) {
            Some(b) => b.open(spec, opts).await,
            None => Err(Error::Spec(SpecErrors::one(SpecError::new(
                "provider.kind",
                format!("\"{kind}\" is not available in this program (it was built without that backend)"),
                if backends.is_empty() {
                    "a provider this program has (it was given none)".to_string()
                } else {
                    format!("one of: {}", backends.iter().map(|b| format!("\"{}\"", b.kind())).collect::<Vec<_>>().join(", "))
                },
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::*;
    use crate::NodeSpec;
    use crate::cluster::{Cluster, Node};
    use crate::hosts::ExistingHosts;
    use crate::provider::{Connector, Host, NodeHandle};
    use crate::spec::{LocalProviderSpec, ProviderSpec, SshProviderSpec};
    use crate::version::PgMajor;

    /// Never connects: these tests only open.
    #[derive(Debug)]
    struct NoConnector;

    #[async_trait]
    impl Connector for NoConnector {
        async fn connect(&self, _c: &Cluster, node: &Node, _h: &Host) -> Result<NodeHandle, Error> {
            Err(Error::node(&node.name, "not connected in this test"))
        }
    }

    /// A backend that records what it was asked to open.
    #[derive(Debug)]
    struct Recording {
        kind: &'static str,
        opened: Mutex<Vec<(String, OpenOptions)>>,
    }

    impl Recording {
        fn new(kind: &'static str) -> Self {
            Recording { kind, opened: Mutex::new(Vec::new()) }
        }
        fn opened(&self) -> Vec<(String, OpenOptions)> {
            self.opened.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Backend for Recording {
        fn kind(&self) -> &'static str {
            self.kind
        }
        async fn open(&self, spec: &ClusterSpec, opts: &OpenOptions) -> Result<Deployment, Error> {
            self.opened.lock().unwrap().push((spec.name.clone(), opts.clone()));
            let cluster = spec.validate_for(PgMajor::V16)?;
            Ok(Deployment::new(cluster, Arc::new(ExistingHosts), Arc::new(NoConnector), opts.remote_state_dir(spec)))
        }
    }

    fn spec(name: &str, provider: ProviderSpec) -> ClusterSpec {
        // The local provider's nodes are on loopback by default; the others need addresses.
        let remote = !matches!(provider, ProviderSpec::Local(_));
        let at = |mut n: NodeSpec, address: &str| {
            n.address = remote.then(|| address.to_string());
            n
        };
        ClusterSpec::builder(name)
            .postgres(PgMajor::V16)
            .provider(provider)
            .node(at(NodeSpec::primary("db1"), "10.0.0.11"))
            .node(at(NodeSpec::standby("db2"), "10.0.0.12"))
            .into_spec()
    }

    fn ssh_spec(name: &str) -> ClusterSpec {
        spec(name, ProviderSpec::Ssh(SshProviderSpec::default()))
    }

    #[tokio::test]
    async fn open_chooses_the_backend_of_the_spec_kind_and_passes_the_options() {
        let (local, ssh, other_ssh) = (Recording::new("local"), Recording::new("ssh"), Recording::new("ssh"));
        let opts = OpenOptions::default().with_state_dir("/nonexistent/state").with_major(PgMajor::V16);
        let d = Deployment::open(&ssh_spec("c1"), &opts, &[&local, &ssh, &other_ssh]).await.unwrap();
        assert_eq!(d.cluster().name, "c1");
        assert_eq!(d.state_dir(), Path::new("/nonexistent/state"));
        assert_eq!(ssh.opened(), [("c1".to_string(), opts.clone())], "the ssh backend opened it");
        assert!(local.opened().is_empty(), "the local backend was not asked");
        assert!(other_ssh.opened().is_empty(), "the first backend of the kind wins");

        // The order of the list does not decide, the kind does.
        let (local, ssh) = (Recording::new("local"), Recording::new("ssh"));
        let lspec = spec("c2", ProviderSpec::Local(LocalProviderSpec::default()));
        Deployment::open(&lspec, &OpenOptions::default(), &[&ssh, &local]).await.unwrap();
        assert_eq!(local.opened().len(), 1);
        assert!(ssh.opened().is_empty());
    }

    #[tokio::test]
    async fn a_kind_without_a_backend_is_a_spec_error_naming_it_and_the_backends() {
        let (local, ssh) = (Recording::new("local"), Recording::new("ssh"));
        let aws = spec("c3", ProviderSpec::Aws(Default::default()));
        let e = Deployment::open(&aws, &OpenOptions::default(), &[&local, &ssh]).await.unwrap_err();
        let Error::Spec(errs) = &e else { panic!("expected a spec error, got {e:?}") };
        let field = errs.get("provider.kind").unwrap_or_else(|| panic!("no provider.kind error in {errs}"));
        assert!(field.problem.contains("\"aws\""), "{field}");
        assert_eq!(field.expected, "one of: \"local\", \"ssh\"");
        assert!(local.opened().is_empty() && ssh.opened().is_empty(), "no backend was asked");

        let e = Deployment::open(&ssh_spec("c4"), &OpenOptions::default(), &[]).await.unwrap_err();
        assert!(e.to_string().contains("provider.kind: \"ssh\" is not available"), "{e}");
    }

    #[test]
    fn remote_state_dir_defaults() {
        let s = ssh_spec("c5");
        assert_eq!(OpenOptions::default().with_state_dir("/s").remote_state_dir(&s), Path::new("/s"));
        assert_eq!(OpenOptions::default().with_work_dir("/w").remote_state_dir(&s), Path::new("/w/secrets"));
        assert_eq!(OpenOptions::default().remote_state_dir(&s), crate::local::default_work_dir("c5").join("secrets"));
    }

    fn lab_bin(major: &str) -> PathBuf {
        let lab = std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/pgrepl-lab"));
        let bin = lab.join("pg").join(major).join("bin");
        assert!(
            bin.join("postgres").is_file(),
            "{} is missing: run scripts/lab/install.sh (as root) to install the test lab",
            bin.display()
        );
        bin
    }

    /// The real local backend through `Deployment::open`: binaries found where the
    /// options say, the work directory overridden, nothing created.
    #[tokio::test]
    async fn open_with_the_local_backend_discovers_binaries_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("cluster");
        let mut s =
            spec("c6", ProviderSpec::Local(LocalProviderSpec { work_dir: Some("/nonexistent/spec-dir".into()), ..Default::default() }));
        s.postgres = crate::spec::VersionChoice::Detect;
        let opts = OpenOptions::default().with_pg_bin(lab_bin("15")).with_work_dir(&work);
        let ssh = Recording::new("ssh");
        let d = Deployment::open(&s, &opts, &[&ssh, &LocalBackend]).await.unwrap();
        assert_eq!(d.provider().kind(), "local");
        assert_eq!(d.cluster().major, Some(PgMajor::V15), "the major of the binaries given");
        assert_eq!(d.binaries().map(|b| b.major), Some(PgMajor::V15));
        assert_eq!(d.state_dir(), work.join("secrets"), "the options' work dir wins over the spec's");
        assert!(d.hosts_on_this_machine());
        assert!(!work.exists(), "open creates nothing");
        assert!(ssh.opened().is_empty());

        // A major override that the binaries given do not have is refused by discovery.
        let e = Deployment::open(&s, &opts.clone().with_major(PgMajor::V16), &[&LocalBackend]).await.unwrap_err();
        assert!(matches!(e, Error::Discovery(_)), "{e:?}");
    }

    /// A backend refuses a spec of another kind even when called directly.
    #[tokio::test]
    async fn the_local_backend_refuses_another_kind() {
        let e = LocalBackend.open(&ssh_spec("c7"), &OpenOptions::default()).await.unwrap_err();
        let Error::Spec(errs) = &e else { panic!("{e:?}") };
        assert!(errs.get("provider.kind").is_some(), "{errs}");
    }
}
