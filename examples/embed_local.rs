//! Embedding pgrepl: build a cluster spec in code, deploy it on this machine, check it,
//! print its status and connection strings, then remove it.
//!
//! ```sh
//! cargo run -p pgrepl-examples --example embed_local -- /tmp/pgrepl-embed
//! ```
//! (As root, PostgreSQL runs as the `postgres` OS user, which must be able to reach the
//! work directory: pick one under /tmp or /var/lib.)

use std::time::Duration;

use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec, SyncMode};
use pgrepl_core::{ClusterSpec, NodeSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work_dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp/pgrepl-embed".into());
    let spec = ClusterSpec::builder("embedded")
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        // One synchronous standby: a commit waits until db2 or db3 has it.
        .sync(SyncMode::First, 1)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work_dir.into()), base_port: Some(6543), ..Default::default() }))
        .into_spec();

    // The backend of the spec's provider kind opens it: here only the local one (a program
    // built with pgrepl-ssh or pgrepl-aws adds theirs). Finds the newest PostgreSQL
    // installed (or set OpenOptions' pg_bin or major).
    let deployment = Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend]).await?;
    let report = deployment.up(&NoProgress).await?;
    print!("{report}");

    let verify = deployment.verify(Duration::from_secs(30)).await?;
    print!("{verify}");
    assert!(verify.ok());

    let status = deployment.status().await;
    print!("{status}");
    println!("applications write through: {}", status.connections.read_write);

    deployment.destroy(&NoProgress).await?;
    Ok(())
}
