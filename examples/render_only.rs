//! Rendering only: what every node of a spec gets, for a given PostgreSQL major,
//! without touching anything. Useful to review or diff configs in an in-house tool.
//!
//! ```sh
//! cargo run -p pgrepl-examples --example render_only -- examples/five-node-cascade-quorum.toml 12
//! ```

use pgrepl_core::layout::{Binaries, NodeLayout};
use pgrepl_core::render::render_node;
use pgrepl_core::{ClusterSpec, PgMajor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args.next().unwrap_or_else(|| "examples/three-node.toml".into());
    let major: PgMajor = args.next().unwrap_or_else(|| "16".into()).parse()?;
    let mut spec = ClusterSpec::from_toml(&std::fs::read_to_string(&file)?)?;
    spec.postgres = pgrepl_core::spec::VersionChoice::Major(major);
    let cluster = spec.validate_for(major)?;
    let bins = Binaries::assumed(major);
    for node in &cluster.nodes {
        let layout = NodeLayout::local("/var/lib/pgrepl/example", &node.name, &bins, "postgres");
        println!("{}", render_node(&cluster, &node.name, &layout, None)?);
    }
    Ok(())
}
