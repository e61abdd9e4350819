//! Where a node's files live on its host, and how its server is controlled.
//!
//! A layout is plain data: the local provider makes one per node under the cluster's
//! work directory; the SSH provider detects the host's (Debian, RHEL-like or plain
//! pg_ctl). Rendering only reads it.

use serde::Serialize;

use crate::version::PgMajor;

/// How the node's server is started and stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ServiceControl {
    /// `pg_ctl -D <data_dir>` (local provider, plain installs).
    PgCtl,
    /// A cluster of Debian's postgresql-common (`pg_lsclusters` lists it, `pg_ctlcluster
    /// <version> <cluster>` controls it too), which pgrepl drives with `pg_ctl` directly:
    /// the data directory and `-c config_file=/etc/postgresql/<version>/<cluster>/postgresql.conf`,
    /// logging where `pg_ctlcluster` does.
    PgCtlCluster {
        /// The version directory name, such as `15`.
        version: String,
        /// The cluster name, usually `main`.
        cluster: String,
    },
    /// `systemctl <verb> <unit>` (a host where systemd runs).
    Systemd {
        /// The unit, such as `postgresql@15-main` or `postgresql-16`.
        unit: String,
    },
}

/// The paths and tools of one node on its host. All paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLayout {
    /// The data directory (`PG_VERSION`, `standby.signal`, `recovery.conf` live here).
    pub data_dir: String,
    /// Where `postgresql.conf` and `pg_hba.conf` live (the data directory, or
    /// `/etc/postgresql/<v>/<cluster>` on Debian).
    pub config_dir: String,
    /// A directory pgrepl owns on the host for its own files (passfile, markers).
    pub pgrepl_dir: String,
    /// The Unix socket directory pgrepl connects through.
    pub socket_dir: String,
    /// The server log (`pg_ctl -l`), if pgrepl chooses it.
    pub log_file: Option<String>,
    /// Server binaries (`postgres`, `initdb`, `pg_ctl`).
    pub bin_dir: String,
    /// Client tools (`psql`, `pg_basebackup`, `pg_rewind`); often `bin_dir`.
    pub client_bin_dir: String,
    /// A library directory the server needs on `LD_LIBRARY_PATH`, if any (relocatable builds).
    pub lib_dir: Option<String>,
    /// The OS user that owns the data directory and runs the server.
    pub os_user: String,
    /// The database superuser pgrepl connects as over the socket (peer authentication).
    pub superuser: String,
    /// How the server is controlled.
    pub service: ServiceControl,
    /// pgrepl writes `postgresql.conf` itself only when it created the cluster with
    /// initdb; on a distribution cluster it only appends its include line.
    pub owns_postgresql_conf: bool,
    /// Debian's `(version, cluster)` when the cluster is managed by postgresql-common
    /// (created with pg_createcluster, removed with pg_dropcluster).
    pub debian_cluster: Option<(String, String)>,
    /// A directory pgrepl created for this node on a host it does not own, holding
    /// everything of the node; `destroy` removes it whole (the plain layout).
    pub base_dir: Option<String>,
}

impl NodeLayout {
    /// The layout the local provider uses: `<work_dir>/<node>/{data,run,log,pgrepl}`.
    pub fn local(work_dir: &str, node: &str, bins: &Binaries, os_user: &str) -> NodeLayout {
        let base = format!("{}/{}", work_dir.trim_end_matches('/'), node);
        NodeLayout {
            data_dir: format!("{base}/data"),
            config_dir: format!("{base}/data"),
            pgrepl_dir: format!("{base}/pgrepl"),
            socket_dir: format!("{base}/run"),
            log_file: Some(format!("{base}/log/postgresql.log")),
            bin_dir: bins.bin_dir.clone(),
            client_bin_dir: bins.client_bin_dir.clone(),
            lib_dir: bins.lib_dir.clone(),
            os_user: os_user.to_string(),
            superuser: os_user.to_string(),
            service: ServiceControl::PgCtl,
            owns_postgresql_conf: true,
            debian_cluster: None,
            base_dir: None,
        }
    }

    /// The plain layout on a host pgrepl reaches over SSH: `pg_ctl` with the given binaries,
    /// everything under `<root>/<cluster>` (data, run, log, pgrepl); `root` is usually
    /// `/var/lib/pgrepl`.
    pub fn plain(root: &str, cluster: &str, bin_dir: &str) -> NodeLayout {
        let base = format!("{}/{cluster}", root.trim_end_matches('/'));
        NodeLayout {
            data_dir: format!("{base}/data"),
            config_dir: format!("{base}/data"),
            pgrepl_dir: format!("{base}/pgrepl"),
            socket_dir: format!("{base}/run"),
            log_file: Some(format!("{base}/log/postgresql.log")),
            bin_dir: bin_dir.to_string(),
            client_bin_dir: bin_dir.to_string(),
            lib_dir: None,
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            service: ServiceControl::PgCtl,
            owns_postgresql_conf: true,
            debian_cluster: None,
            base_dir: Some(base),
        }
    }

    /// Debian/Ubuntu's postgresql-common layout for cluster `main` of `major`.
    pub fn debian(major: PgMajor, pgrepl_dir: &str) -> NodeLayout {
        let v = major.to_string();
        NodeLayout {
            data_dir: format!("/var/lib/postgresql/{v}/main"),
            config_dir: format!("/etc/postgresql/{v}/main"),
            pgrepl_dir: pgrepl_dir.to_string(),
            socket_dir: "/var/run/postgresql".into(),
            log_file: None,
            bin_dir: format!("/usr/lib/postgresql/{v}/bin"),
            client_bin_dir: format!("/usr/lib/postgresql/{v}/bin"),
            lib_dir: None,
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            service: ServiceControl::PgCtlCluster { version: v.clone(), cluster: "main".into() },
            owns_postgresql_conf: false,
            debian_cluster: Some((v, "main".into())),
            base_dir: None,
        }
    }

    /// The passfile pgrepl writes for replication connections (mode 0600).
    pub fn passfile(&self) -> String {
        format!("{}/pgpass", self.pgrepl_dir)
    }

    /// The marker present while a standby is being cloned; a marker found on a later run
    /// means the clone did not finish and the data directory may be rebuilt.
    pub fn clone_marker(&self) -> String {
        format!("{}/clone-in-progress", self.pgrepl_dir)
    }

    /// A server binary.
    pub fn server_tool(&self, name: &str) -> String {
        format!("{}/{name}", self.bin_dir)
    }

    /// A client tool.
    pub fn client_tool(&self, name: &str) -> String {
        format!("{}/{name}", self.client_bin_dir)
    }
}

impl Binaries {
    /// The binaries a Debian install of `major` would have (`/usr/lib/postgresql/<v>/bin`):
    /// for rendering a dry run where none is installed.
    pub fn assumed(major: PgMajor) -> Binaries {
        Binaries {
            major,
            version: major.to_string(),
            bin_dir: format!("/usr/lib/postgresql/{major}/bin"),
            client_bin_dir: format!("/usr/lib/postgresql/{major}/bin"),
            lib_dir: None,
            has_rewind: major.caps().rewind.is_some(),
        }
    }
}

/// PostgreSQL binaries of one major: where the server and the client tools are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binaries {
    /// The major, read from `postgres --version`.
    pub major: PgMajor,
    /// The full version string.
    pub version: String,
    /// Server binaries.
    pub bin_dir: String,
    /// Client tools (`psql`, `pg_basebackup`, `pg_rewind` if any).
    pub client_bin_dir: String,
    /// Library directory for `LD_LIBRARY_PATH`, for relocatable builds.
    pub lib_dir: Option<String>,
    /// Whether a `pg_rewind` of this major was found.
    pub has_rewind: bool,
}
