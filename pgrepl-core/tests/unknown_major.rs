//! A deployment whose PostgreSQL major is unknown (a cluster validated with
//! `postgres = "detect"` and no binaries) reports that in `status` instead of panicking.

use std::sync::Arc;

use async_trait::async_trait;
use pgrepl_core::cluster::{Cluster, Node};
use pgrepl_core::deploy::Deployment;
use pgrepl_core::layout::{Binaries, NodeLayout};
use pgrepl_core::local::{LocalProvider, LocalTransport, current_user};
use pgrepl_core::provider::{Connector, Host, NodeHandle};
use pgrepl_core::{ClusterSpec, Error, NodeSpec, PgMajor};

/// Nodes on this machine under a work directory (nothing is started).
#[derive(Debug)]
struct Here(String);

#[async_trait]
impl Connector for Here {
    async fn connect(&self, _cluster: &Cluster, node: &Node, _host: &Host) -> Result<NodeHandle, Error> {
        Ok(NodeHandle {
            name: node.name.clone(),
            transport: Arc::new(LocalTransport),
            layout: NodeLayout::local(&self.0, &node.name, &Binaries::assumed(PgMajor::V16), current_user()),
            install_script: None,
        })
    }
}

#[tokio::test]
async fn status_with_an_unknown_major_reports_instead_of_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_string_lossy().into_owned();
    for n in ["db1", "db2"] {
        std::fs::create_dir(tmp.path().join(n)).unwrap();
    }
    let cluster =
        ClusterSpec::builder("unknown").node(NodeSpec::primary("db1")).node(NodeSpec::standby("db2")).into_spec().validate().unwrap();
    assert_eq!(cluster.major, None, "postgres = \"detect\" without binaries");
    let d = Deployment::new(
        cluster,
        Arc::new(LocalProvider::new(&work, current_user())),
        Arc::new(Here(work.clone())),
        tmp.path().join("secrets"),
    );
    let status = d.status().await;
    assert!(!status.healthy());
    assert!(status.major.is_none());
    assert!(status.problems.iter().any(|p| p.contains("PostgreSQL major is not known")), "{:?}", status.problems);
}
