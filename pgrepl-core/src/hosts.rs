//! Existing hosts (SSH, or EC2 instances once provisioned): what they run and where
//! PostgreSQL lives on them, and installing it when it is missing.
//!
//! Detection is one shell command over the transport; its output is parsed purely
//! ([`HostFacts::parse`]), and the layout follows from the facts ([`HostFacts::layout`]):
//!
//! | OS family | binaries | data | config | control |
//! |---|---|---|---|---|
//! | Debian/Ubuntu | `/usr/lib/postgresql/<v>/bin` | `/var/lib/postgresql/<v>/main` | `/etc/postgresql/<v>/main` | `systemctl … postgresql@<v>-main` with systemd, else `pg_ctl -D <data> -o '-c config_file=/etc/…'` (the cluster stays `pg_ctlcluster`'s too) |
//! | RHEL-like (PGDG) | `/usr/pgsql-<v>/bin` | `/var/lib/pgsql/<v>/data` | the data directory | `systemctl … postgresql-<v>` with systemd, else `pg_ctl` |
//!
//! pgrepl starts the nodes itself: `up` turns off the OS's start at boot (Debian's `start.conf`
//! says `manual`; an enabled systemd unit is disabled), so a node fenced while unreachable
//! does not come back writable after a reboot.

use async_trait::async_trait;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::Error;
use crate::layout::{NodeLayout, ServiceControl};
use crate::provider::{Host, Provider};
use crate::render::shell_quote;
use crate::transport::{Command, Transport, TransportError};
use crate::version::PgMajor;

/// The OS family of a host, as far as packaging goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OsFamily {
    /// Debian, Ubuntu and derivatives (apt, postgresql-common).
    Debian,
    /// RHEL, Rocky, Alma, Fedora, Amazon Linux (dnf/yum, PGDG layout).
    RedHat,
    /// Anything else: a plain pg_ctl layout with binaries given explicitly.
    Other,
}

/// What pgrepl learned about a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// OS family.
    pub family: OsFamily,
    /// `ID` from /etc/os-release (debian, ubuntu, rocky, ...).
    pub os_id: String,
    /// `VERSION_CODENAME` (bookworm, jammy), for the PGDG apt repository.
    pub codename: String,
    /// systemd runs as PID 1.
    pub systemd: bool,
    /// PostgreSQL majors whose server binaries are installed.
    pub majors: Vec<PgMajor>,
    /// Debian's pg_ctlcluster is there.
    pub pg_ctlcluster: bool,
}

/// Where pgrepl keeps a cluster's own files (passfile, markers) on a host of `family`.
pub fn pgrepl_dir(cluster: &str, family: &OsFamily) -> String {
    match family {
        OsFamily::RedHat => format!("/var/lib/pgsql/pgrepl-{cluster}"),
        _ => format!("/var/lib/postgresql/pgrepl-{cluster}"),
    }
}

/// A node's layout on a host reached over SSH (or by its own agent there): the spec's
/// plain layout (`layout = "plain"`, `data_root`, the spec's `pg_bin`), else the
/// distribution's layout the host's facts name.
pub fn remote_layout(
    settings: &crate::spec::SshProviderSpec,
    pg_bin: Option<&str>,
    cluster: &str,
    major: PgMajor,
    facts: &HostFacts,
) -> Result<NodeLayout, String> {
    if settings.layout.as_deref() == Some("plain") {
        let bin = pg_bin.ok_or("layout = \"plain\" needs pg_bin in the spec")?;
        let root = settings.data_root.as_ref().map(|r| r.to_string_lossy().into_owned()).unwrap_or_else(|| "/var/lib/pgrepl".into());
        return Ok(NodeLayout::plain(&root, cluster, bin));
    }
    facts.layout(major, &pgrepl_dir(cluster, &facts.family))
}

/// The detection script: prints `KEY=value` lines.
pub const DETECT_SCRIPT: &str = r#"
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "ID=${ID:-}"
echo "ID_LIKE=${ID_LIKE:-}"
echo "VERSION_CODENAME=${VERSION_CODENAME:-}"
if [ -d /run/systemd/system ]; then echo "SYSTEMD=1"; fi
for d in /usr/lib/postgresql/*/bin /usr/pgsql-*/bin; do
  if [ -x "$d/postgres" ]; then echo "PGBIN=$d"; fi
done
if [ -x /usr/bin/pg_ctlcluster ]; then echo "PGCTLCLUSTER=1"; fi
"#;

impl HostFacts {
    /// Parses the output of [`DETECT_SCRIPT`].
    pub fn parse(out: &str) -> HostFacts {
        let mut id = String::new();
        let mut like = String::new();
        let mut codename = String::new();
        let mut systemd = false;
        let mut majors = Vec::new();
        let mut pg_ctlcluster = false;
        for line in out.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k {
                "ID" => id = v.trim().to_string(),
                "ID_LIKE" => like = v.trim().to_string(),
                "VERSION_CODENAME" => codename = v.trim().to_string(),
                "SYSTEMD" => systemd = true,
                "PGCTLCLUSTER" => pg_ctlcluster = true,
                "PGBIN" => {
                    // /usr/lib/postgresql/15/bin or /usr/pgsql-16/bin
                    let v = v.trim();
                    let ver = v.trim_end_matches("/bin").rsplit(['/', '-']).next().unwrap_or("");
                    if let Ok(m) = ver.parse::<PgMajor>() {
                        if !majors.contains(&m) {
                            majors.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        majors.sort();
        let words = format!("{id} {like}");
        let family = if words.split_whitespace().any(|w| w == "debian" || w == "ubuntu") {
            OsFamily::Debian
        } else if words.split_whitespace().any(|w| ["rhel", "fedora", "centos", "rocky", "almalinux", "amzn"].contains(&w)) {
            OsFamily::RedHat
        } else {
            OsFamily::Other
        };
        HostFacts { family, os_id: id, codename, systemd, majors, pg_ctlcluster }
    }

    /// The node's layout on this host for `major`; `pgrepl_dir` is where pgrepl keeps its
    /// own files (passfile, markers).
    pub fn layout(&self, major: PgMajor, pgrepl_dir: &str) -> Result<NodeLayout, String> {
        let v = major.to_string();
        match self.family {
            OsFamily::Debian => {
                let mut l = NodeLayout::debian(major, pgrepl_dir);
                if self.systemd {
                    l.service = ServiceControl::Systemd { unit: format!("postgresql@{v}-main") };
                } else if !self.pg_ctlcluster {
                    return Err("Debian host without pg_ctlcluster (postgresql-common is missing)".into());
                }
                Ok(l)
            }
            OsFamily::RedHat => Ok(NodeLayout {
                data_dir: format!("/var/lib/pgsql/{v}/data"),
                config_dir: format!("/var/lib/pgsql/{v}/data"),
                pgrepl_dir: pgrepl_dir.to_string(),
                socket_dir: "/run/postgresql".into(),
                log_file: None,
                bin_dir: format!("/usr/pgsql-{v}/bin"),
                client_bin_dir: format!("/usr/pgsql-{v}/bin"),
                lib_dir: None,
                os_user: "postgres".into(),
                superuser: "postgres".into(),
                service: if self.systemd { ServiceControl::Systemd { unit: format!("postgresql-{v}") } } else { ServiceControl::PgCtl },
                owns_postgresql_conf: true,
                debian_cluster: None,
                base_dir: None,
            }),
            OsFamily::Other => Err(format!(
                "OS \"{}\" has no distribution layout pgrepl knows (Debian/Ubuntu, RHEL-like): set [provider] layout = \"plain\" and pg_bin",
                self.os_id
            )),
        }
    }

    /// The commands that install PostgreSQL `major` on this host (as root), or `None` when
    /// it is installed. Debian: the distribution's package when apt has it, else the PGDG
    /// repository with a signed-by keyring. RHEL-like: PGDG with dnf.
    pub fn install_script(&self, major: PgMajor) -> Option<String> {
        if self.majors.contains(&major) {
            return None;
        }
        let v = major.to_string();
        Some(match self.family {
            OsFamily::Debian => format!(
                "set -e\nexport DEBIAN_FRONTEND=noninteractive\n\
                 apt-get update -qq\n\
                 if ! apt-cache policy postgresql-{v} | grep -q 'Candidate: [0-9]'; then\n\
                 \x20 apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg\n\
                 \x20 install -d -m 0755 /usr/share/postgresql-common/pgdg\n\
                 \x20 curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc\n\
                 \x20 echo \"deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt {codename}-pgdg main\" > /etc/apt/sources.list.d/pgdg.list\n\
                 \x20 apt-get update -qq\n\
                 fi\n\
                 # The package would create and start a cluster 'main'; pgrepl creates its own.\n\
                 install -d /etc/postgresql-common\n\
                 grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf\n\
                 apt-get install -y -qq --no-install-recommends postgresql-{v} postgresql-client-{v}\n",
                codename = shell_quote(&self.codename)
            ),
            OsFamily::RedHat => format!(
                "set -e\n\
                 rpm -q pgdg-redhat-repo >/dev/null 2>&1 || dnf install -y https://download.postgresql.org/pub/repos/yum/reporpms/EL-$(rpm -E %rhel)-$(uname -m)/pgdg-redhat-repo-latest.noarch.rpm\n\
                 dnf -qy module disable postgresql || true\n\
                 dnf install -y postgresql{v}-server postgresql{v}\n"
            ),
            OsFamily::Other => return None,
        })
    }
}

/// Runs the detection script on a host.
pub async fn detect(t: &dyn Transport) -> Result<HostFacts, TransportError> {
    let out = t.exec(&Command::new("sh").args(["-c", DETECT_SCRIPT])).await?;
    if !out.success() {
        return Err(TransportError::CommandFailed { program: "sh".into(), status: out.status, tail: out.tail() });
    }
    Ok(HostFacts::parse(&out.stdout))
}

/// The major to deploy on a set of hosts: the spec's, or else the newest major installed
/// on every host. Refuses to mix majors in one cluster.
pub fn choose_major(requested: Option<PgMajor>, facts: &[(String, HostFacts)]) -> Result<PgMajor, Error> {
    if let Some(m) = requested {
        return Ok(m);
    }
    let mut common: Option<Vec<PgMajor>> = None;
    for (_, f) in facts {
        common = Some(match common {
            None => f.majors.clone(),
            Some(c) => c.into_iter().filter(|m| f.majors.contains(m)).collect(),
        });
    }
    common.unwrap_or_default().into_iter().max().ok_or_else(|| {
        let per_host: Vec<String> = facts
            .iter()
            .map(|(h, f)| format!("{h}: {}", if f.majors.is_empty() { "none".to_string() } else { f.majors.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ") }))
            .collect();
        Error::Discovery(format!(
            "no PostgreSQL major is installed on every host ({}); one cluster needs one major on all nodes: set `postgres` in the spec and pgrepl installs it where missing",
            per_host.join("; ")
        ))
    })
}

/// Hosts that already exist, at the spec's addresses (the SSH provider). Creates
/// nothing and destroys nothing but what the deployment removes on them.
#[derive(Debug, Clone, Default)]
pub struct ExistingHosts;

#[async_trait]
impl Provider for ExistingHosts {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    async fn ensure_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error> {
        self.list_hosts(cluster).await
    }

    async fn list_hosts(&self, cluster: &Cluster) -> Result<Vec<Host>, Error> {
        Ok(cluster
            .nodes
            .iter()
            .map(|n| Host {
                node: n.name.clone(),
                address: n.address.clone(),
                admin_address: n.ssh_host.clone().or_else(|| n.address.clone()),
                id: None,
                state: "existing".into(),
            })
            .collect())
    }

    async fn destroy_hosts(&self, _cluster: &Cluster) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_LAB: &str = "ID=debian\nID_LIKE=\nVERSION_CODENAME=bookworm\nPGBIN=/usr/lib/postgresql/15/bin\nPGCTLCLUSTER=1\n";

    #[test]
    fn parses_debian_without_systemd() {
        let f = HostFacts::parse(DEBIAN_LAB);
        assert_eq!(f.family, OsFamily::Debian);
        assert_eq!(f.codename, "bookworm");
        assert!(!f.systemd && f.pg_ctlcluster);
        assert_eq!(f.majors, vec![PgMajor::V15]);
        let l = f.layout(PgMajor::V15, "/var/lib/postgresql/pgrepl-x").unwrap();
        assert_eq!(l.data_dir, "/var/lib/postgresql/15/main");
        assert_eq!(l.config_dir, "/etc/postgresql/15/main");
        assert_eq!(l.service, ServiceControl::PgCtlCluster { version: "15".into(), cluster: "main".into() });
        assert!(f.install_script(PgMajor::V15).is_none(), "installed: nothing to do");
        let s = f.install_script(PgMajor::V17).unwrap();
        assert!(s.contains("postgresql-17") && s.contains("signed-by=") && s.contains("bookworm-pgdg"));
    }

    #[test]
    fn parses_ubuntu_with_systemd_and_rhel() {
        let f = HostFacts::parse(
            "ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\nSYSTEMD=1\nPGBIN=/usr/lib/postgresql/16/bin\nPGBIN=/usr/lib/postgresql/14/bin\nPGCTLCLUSTER=1\n",
        );
        assert_eq!(f.family, OsFamily::Debian);
        assert_eq!(f.majors, vec![PgMajor::V14, PgMajor::V16]);
        let l = f.layout(PgMajor::V16, "/x").unwrap();
        assert_eq!(l.service, ServiceControl::Systemd { unit: "postgresql@16-main".into() });
        let r = HostFacts::parse("ID=rocky\nID_LIKE=\"rhel centos fedora\"\nSYSTEMD=1\nPGBIN=/usr/pgsql-16/bin\n");
        assert_eq!(r.family, OsFamily::RedHat);
        assert_eq!(r.majors, vec![PgMajor::V16]);
        let l = r.layout(PgMajor::V16, "/x").unwrap();
        assert_eq!(l.data_dir, "/var/lib/pgsql/16/data");
        assert_eq!(l.service, ServiceControl::Systemd { unit: "postgresql-16".into() });
        assert!(r.install_script(PgMajor::V17).unwrap().contains("postgresql17-server"));
    }

    /// The commands that turn off the OS's start at boot, per layout: Debian's start.conf
    /// (with and without systemd), the systemd unit (Debian, RHEL), nothing for pg_ctl.
    #[test]
    fn autostart_off_per_layout() {
        let spec = crate::ClusterSpec::from_toml(
            "name = \"a\"\n[provider]\nkind = \"local\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n",
        )
        .unwrap();
        let render = |facts: &str, major: PgMajor| {
            let layout = HostFacts::parse(facts).layout(major, "/var/lib/postgresql/pgrepl-a").unwrap();
            let cluster = spec.validate_for(major).unwrap();
            let r = crate::render::render_node(&cluster, "db2", &layout, None).unwrap();
            (r.commands.autostart.clone(), r.to_string())
        };
        let line = |c: &Option<crate::render::CommandLine>| c.as_ref().map(|c| format!("[{}] {c}", c.user));

        // Debian without systemd (pg_ctlcluster; the init script reads start.conf).
        let (a, text) = render(DEBIAN_LAB, PgMajor::V15);
        assert_eq!(a.start_conf.as_deref(), Some("/etc/postgresql/15/main/start.conf"));
        assert_eq!((a.reload_units, a.is_enabled, a.disable), (None, None, None));
        assert!(text.contains("no start at boot: /etc/postgresql/15/main/start.conf says manual"), "{text}");

        // Debian with systemd: start.conf (the generator reads it) and the instance unit.
        let (a, text) = render("ID=debian\nSYSTEMD=1\nPGBIN=/usr/lib/postgresql/16/bin\nPGCTLCLUSTER=1\n", PgMajor::V16);
        assert_eq!(a.start_conf.as_deref(), Some("/etc/postgresql/16/main/start.conf"));
        assert_eq!(line(&a.reload_units).as_deref(), Some("[root] /usr/bin/systemctl daemon-reload"));
        assert_eq!(line(&a.is_enabled).as_deref(), Some("[root] /usr/bin/systemctl is-enabled postgresql@16-main"));
        assert_eq!(line(&a.disable).as_deref(), Some("[root] /usr/bin/systemctl disable postgresql@16-main"));
        assert!(text.contains("no start at boot: [root] /usr/bin/systemctl disable postgresql@16-main"), "{text}");

        // RHEL with systemd: the PGDG unit; no start.conf.
        let (a, _) = render("ID=rocky\nID_LIKE=\"rhel centos fedora\"\nSYSTEMD=1\nPGBIN=/usr/pgsql-16/bin\n", PgMajor::V16);
        assert_eq!((a.start_conf, a.reload_units), (None, None));
        assert_eq!(line(&a.is_enabled).as_deref(), Some("[root] /usr/bin/systemctl is-enabled postgresql-16"));
        assert_eq!(line(&a.disable).as_deref(), Some("[root] /usr/bin/systemctl disable postgresql-16"));

        // RHEL without systemd: pg_ctl, nothing starts it at boot.
        let (a, text) = render("ID=rocky\nID_LIKE=rhel\nPGBIN=/usr/pgsql-16/bin\n", PgMajor::V16);
        assert!(a.is_empty(), "{a:?}");
        assert!(!text.contains("no start at boot"), "{text}");
    }

    #[test]
    fn start_conf_is_read_and_set_as_postgresql_common_does() {
        use crate::render::{start_conf_manual, start_conf_mode};
        let debian = "# Automatic startup configuration\n#   auto: automatically start the cluster\n#   manual: manual startup with pg_ctlcluster/postgresql@.service only\n#   disabled: refuse to start cluster\n# See pg_createcluster(1) for details. When running from systemd,\n# invoke 'systemctl daemon-reload' after editing this file.\n\nauto\n";
        assert_eq!(start_conf_mode(debian), "auto");
        let manual = start_conf_manual(debian);
        assert_eq!(start_conf_mode(&manual), "manual");
        assert_eq!(manual, debian.replace("\nauto\n", "\nmanual\n"), "comments kept, only the mode line changed");
        assert_eq!(start_conf_manual(&manual), manual, "idempotent");
        assert_eq!(start_conf_mode(""), "auto", "a missing or empty file means auto");
        assert_eq!(start_conf_manual(""), "manual\n");
        assert_eq!(start_conf_mode("  auto # at boot\n"), "auto");
        assert_eq!(start_conf_manual("  auto # at boot\n"), "manual # at boot\n");
        assert_eq!(start_conf_mode("disabled\n"), "disabled");
    }

    #[test]
    fn one_major_for_all_hosts() {
        let a = HostFacts::parse("ID=debian\nPGBIN=/usr/lib/postgresql/15/bin\nPGBIN=/usr/lib/postgresql/16/bin\n");
        let b = HostFacts::parse("ID=debian\nPGBIN=/usr/lib/postgresql/15/bin\n");
        let c = HostFacts::parse("ID=debian\nPGBIN=/usr/lib/postgresql/16/bin\n");
        assert_eq!(choose_major(None, &[("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap(), PgMajor::V15);
        let e = choose_major(None, &[("b".into(), b), ("c".into(), c)]).unwrap_err().to_string();
        assert!(e.contains("b: 15; c: 16") && e.contains("one major on all nodes"), "{e}");
        assert_eq!(choose_major(Some(PgMajor::V17), &[("a".into(), a)]).unwrap(), PgMajor::V17);
    }
}
