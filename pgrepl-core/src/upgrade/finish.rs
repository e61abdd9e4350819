//! `upgrade --finish`: the old data directories an upgrade kept, found on each host and
//! removed once the decision ([`crate::plan::upgrade::finish`]) allows it: renamed
//! directories removed, Debian's old clusters (those whose `start.conf` carries pgrepl's
//! marker) dropped with `pg_dropcluster`.

use futures_util::future::join_all;

use super::tools;
use crate::deploy::{Deployment, tr};
use crate::error::Error;
use crate::plan::upgrade::KeptDir;
use crate::provider::NodeHandle;
use crate::transport::{Command, TransportExt};
use crate::version::PgMajor;

/// `$1` the data directory: prints `self <PG_VERSION>`, then `<kept dir> <PG_VERSION>
/// running|stopped` per `<data dir>-*.old` (running: its postmaster.pid names a live process).
const KEPT_SCRIPT: &str = r#"d="$1"; printf 'self\t%s\n' "$(cat "$d/PG_VERSION" 2>/dev/null)"
for k in "$d"-*.old; do [ -d "$k" ] || continue
  v=$(cat "$k/PG_VERSION" 2>/dev/null); r=stopped
  if [ -f "$k/postmaster.pid" ]; then p=$(head -n 1 "$k/postmaster.pid"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && r=running; fi
  printf '%s\t%s\t%s\n' "$k" "$v" "$r"; done"#;

async fn look(h: &NodeHandle) -> Result<(Option<PgMajor>, Vec<KeptDir>), Error> {
    let c = Command {
        user: h.transport.admin_user().map(str::to_string),
        ..Command::new("sh").args(["-c", KEPT_SCRIPT, "pgrepl-kept", h.layout.data_dir.as_str()])
    };
    let out = h.transport.run(&c).await.map_err(|e| tr(&h.name, "look for kept data directories", e))?;
    let mut own = None;
    let mut kept = Vec::new();
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["self", v] => own = v.trim().parse().ok(),
            [path, v, state] => kept.push(KeptDir {
                node: h.name.clone(),
                path: path.to_string(),
                major: v.trim().parse().ok(),
                running: *state == "running",
                debian_cluster: None,
            }),
            _ => {}
        }
    }
    kept.extend(crate::debian_kept::kept_debian_clusters(h).await?);
    Ok((own, kept))
}

impl Deployment {
    /// Removes the old data directories an upgrade kept (`<data_dir>-<old major>.old`) on
    /// every node whose own data directory runs the cluster's major; with `dry_run`, only
    /// says which. Refused, removing nothing, when a server runs on one or a node has not
    /// been upgraded.
    pub async fn finish_upgrade(&self, dry_run: bool) -> Result<Vec<KeptDir>, Error> {
        let lock = if dry_run { None } else { Some(self.lock_operation("upgrade --finish", self.lock_wait()).await?) };
        let result = async {
            let (cluster, handles) = self.connect(false).await?;
            let current =
                cluster.major.ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
            let looked = join_all(handles.iter().map(look)).await;
            let mut on = Vec::new();
            let mut kept = Vec::new();
            for (h, r) in handles.iter().zip(looked) {
                let (own, k) = r?;
                on.push((h.name.clone(), own));
                kept.extend(k);
            }
            let remove = crate::plan::upgrade::finish(current, &on, &kept)?;
            if !dry_run {
                for k in &remove {
                    let h = handles.iter().find(|h| h.name == k.node).expect("found through it");
                    match &k.debian_cluster {
                        Some((v, c)) => h
                            .transport
                            .run(&tools::dropcluster(v, c))
                            .await
                            .map(|_| ())
                            .map_err(|e| tr(&k.node, &format!("pg_dropcluster {v} {c}"), e))?,
                        None => h.transport.remove_tree(&k.path).await.map_err(|e| tr(&k.node, &format!("remove {}", k.path), e))?,
                    }
                }
            }
            Ok(remove)
        }
        .await;
        if let Some(l) = lock {
            l.release().await;
        }
        result
    }
}
