//! The old Debian clusters a major upgrade keeps beside the new ones until `upgrade
//! --finish` (or `destroy`) drops them: how they are marked, found and dropped. Below
//! both `upgrade` and `deploy` (whose `destroy` drops them too).

use crate::error::Error;
use crate::plan::upgrade::KeptDir;
use crate::provider::NodeHandle;
use crate::transport::{Command, TransportExt};

/// What the first line of an old Debian cluster's `start.conf` says once an upgrade has
/// kept it: `upgrade --finish` drops only clusters that carry it.
pub const RETIRED_MARKER: &str = "# pgrepl: upgraded to ";

/// `pg_dropcluster <version> <cluster>` (run as root): the cluster's data directory,
/// configuration and registration removed; refused by it while the cluster runs.
pub fn dropcluster(version: &str, cluster: &str) -> Command {
    Command::new("/usr/bin/pg_dropcluster").args([version, cluster]).user("root").timeout(std::time::Duration::from_secs(300))
}

/// `$1` the cluster's name, `$2` the marker: prints `<data dir> <version> running|stopped`
/// per Debian cluster of that name whose `start.conf` begins with the marker (`pg_lsclusters`
/// says where its data is and whether it runs).
const DEBIAN_KEPT_SCRIPT: &str = r#"c="$1"; m="$2"
for f in /etc/postgresql/*/"$c"/start.conf; do [ -f "$f" ] || continue
  head -n 1 "$f" | grep -qF -- "$m" || continue
  v=$(basename "$(dirname "$(dirname "$f")")")
  pg_lsclusters -h "$v" "$c" | while read -r ver name port status owner data rest; do
    r=stopped; case "$status" in online*) r=running ;; esac
    printf '%s	%s	%s
' "$data" "$ver" "$r"; done; done"#;

/// The lines of [`DEBIAN_KEPT_SCRIPT`] as kept directories of `node`'s cluster `name`.
pub(super) fn parse_debian_kept(node: &str, name: &str, out: &str) -> Vec<KeptDir> {
    out.lines()
        .filter_map(|line| match line.split('\t').collect::<Vec<_>>().as_slice() {
            [data, v, state] => Some(KeptDir {
                node: node.to_string(),
                path: data.to_string(),
                major: v.trim().parse().ok(),
                running: *state == "running",
                debian_cluster: Some((v.trim().to_string(), name.to_string())),
            }),
            _ => None,
        })
        .collect()
}

/// The old Debian clusters an upgrade kept on `h`'s host (those of its cluster name whose
/// `start.conf` carries [`RETIRED_MARKER`]); none on other layouts.
pub(crate) async fn kept_debian_clusters(h: &NodeHandle) -> Result<Vec<KeptDir>, Error> {
    let Some((_, name)) = &h.layout.debian_cluster else { return Ok(Vec::new()) };
    let c = Command {
        user: h.transport.admin_user().map(str::to_string),
        ..Command::new("sh").args(["-c", DEBIAN_KEPT_SCRIPT, "pgrepl-kept", name.as_str(), RETIRED_MARKER])
    };
    let out = h.transport.run(&c).await.map_err(|e| Error::Transport {
        host: h.name.clone(),
        action: "look for old clusters kept by an upgrade".into(),
        source: e,
    })?;
    Ok(parse_debian_kept(&h.name, name, &out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::PgMajor;

    #[test]
    fn debian_clusters_kept_by_an_upgrade_are_read() {
        let out = "/var/lib/postgresql/15/main\t15\tstopped\n/var/lib/postgresql/14/main\t14\trunning\nnoise\n";
        let k = parse_debian_kept("db1", "main", out);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].path, "/var/lib/postgresql/15/main");
        assert_eq!(k[0].major, Some(PgMajor::V15));
        assert_eq!(k[0].debian_cluster, Some(("15".into(), "main".into())));
        assert!(!k[0].running && k[1].running);
    }
}
