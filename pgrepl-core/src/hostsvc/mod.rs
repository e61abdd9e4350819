//! What pgrepl runs on a cluster's hosts besides PostgreSQL when `[ha]` is on and the
//! hosts are remote (SSH, EC2): an etcd member where `[ha.etcd] deploy` places one, and
//! the node's agent. This module decides (pure): which files each host gets (paths,
//! modes, contents), and how each service is started, checked and stopped, under systemd
//! where it runs and under `pgrepl supervise` otherwise. [`apply`] carries a host's plan
//! out through its [`Transport`](crate::transport::Transport).
//!
//! Certificates come from the caller (pgrepl-etcd's PKI): this crate holds no crypto.

#[cfg(feature = "runtime")]
pub mod apply;

use crate::cluster::Cluster;
use crate::render::{EtcdFiles, etcd_member_config, host_dir};
use crate::secret::Secret;

/// Where pgrepl's own binary goes on a host (the agent and `pgrepl supervise`).
pub const BINARY: &str = "/usr/local/lib/pgrepl/pgrepl";
/// The etcd server of Debian's `etcd-server` package.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// A file a host gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub path: String,
    /// Permission bits (0600 for keys and secrets).
    pub mode: u32,
    pub contents: Secret,
}

impl HostFile {
    fn new(path: impl Into<String>, mode: u32, contents: impl Into<String>) -> HostFile {
        HostFile { path: path.into(), mode, contents: Secret::new(contents) }
    }
}

/// A long-running program on a host: an etcd member or an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `pgrepl-<cluster>-etcd`, `pgrepl-<cluster>-agent` (the systemd unit's name too).
    pub name: String,
    /// The program and its arguments (no secrets).
    pub argv: Vec<String>,
    /// Environment (no secrets).
    pub env: Vec<(String, String)>,
    /// The supervisor's pid file (locked while it runs) and log.
    pub pid_file: String,
    pub log: String,
    /// The files it reads at start: a change restarts it.
    pub reads: Vec<String>,
    /// The pgrepl binary whose `supervise` keeps it running where systemd does not.
    pub supervisor: String,
}

impl Service {
    fn new(c: &Cluster, what: &str, argv: Vec<String>, env: Vec<(String, String)>, reads: Vec<String>) -> Service {
        let cluster = c.name.as_str();
        Service {
            reads,
            supervisor: agent_program(c),
            name: format!("pgrepl-{cluster}-{what}"),
            argv,
            env,
            pid_file: format!("{}/{what}.pid", run_dir(cluster)),
            log: format!("{}/{what}.log", log_dir(cluster)),
        }
    }

    /// The systemd unit (hosts where systemd runs): restarted always, after the network
    /// is online.
    pub fn unit(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("Environment={k}={v}\n")).collect();
        format!(
            "# Written by pgrepl: rewritten on every `pgrepl up`.\n\
             [Unit]\n\
             Description={name}\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             {env}ExecStart={exec}\n\
             Restart=always\n\
             RestartSec=1\n\
             KillMode=mixed\n\
             TimeoutStopSec=30\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            name = self.name,
            exec = self.argv.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" "),
        )
    }

    /// Where the unit file goes.
    pub fn unit_path(&self) -> String {
        format!("/etc/systemd/system/{}.service", self.name)
    }

    /// A script that starts the service under `pgrepl supervise` unless it runs (exit 0
    /// either way; the first line of output says which), waiting up to 5 s for the
    /// supervisor to hold its pid file.
    pub fn supervised_start_script(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={} ", shell_word(v))).collect();
        format!(
            "set -u\n\
             p={pid}\n\
             mkdir -p \"$(dirname \"$p\")\" {logdir}\n\
             if ! flock -n -E 75 \"$p\" true; then echo running; exit 0; fi\n\
             {env}setsid -f {bin} supervise --pid-file \"$p\" --log {log} -- {argv} </dev/null >/dev/null 2>&1\n\
             i=0\n\
             while [ $i -lt 50 ]; do\n\
             \x20 if ! flock -n -E 75 \"$p\" true; then echo started; exit 0; fi\n\
             \x20 sleep 0.1; i=$((i+1))\n\
             done\n\
             echo \"the supervisor of {name} did not start (see {log})\" >&2; exit 1\n",
            pid = shell_word(&self.pid_file),
            logdir = shell_word(&log_dir_of(&self.log)),
            log = shell_word(&self.log),
            bin = shell_word(&self.supervisor),
            argv = self.argv.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" "),
            name = self.name,
        )
    }

    /// A script that stops the supervised service (SIGTERM to the supervisor, which passes
    /// it on) and waits up to 40 s for it to let go of its pid file; exit 0 when it does
    /// not run (anymore).
    pub fn supervised_stop_script(&self) -> String {
        format!(
            "set -u\n\
             p={pid}\n\
             [ -e \"$p\" ] || exit 0\n\
             if flock -n -E 75 \"$p\" true; then exit 0; fi\n\
             pid=$(cat \"$p\")\n\
             case \"$pid\" in ''|*[!0-9]*) echo \"no pid in $p\" >&2; exit 1;; esac\n\
             kill -TERM \"$pid\" 2>/dev/null || true\n\
             i=0\n\
             while [ $i -lt 400 ]; do\n\
             \x20 if flock -n -E 75 \"$p\" true; then exit 0; fi\n\
             \x20 sleep 0.1; i=$((i+1))\n\
             done\n\
             echo \"{name} (pid $pid) did not stop within 40 s\" >&2; exit 1\n",
            pid = shell_word(&self.pid_file),
            name = self.name,
        )
    }

    /// A script that exits 0 when the service runs (supervised or as a unit), 3 when not.
    pub fn running_script(&self) -> String {
        format!(
            "if [ -d /run/systemd/system ] && [ -e {unit} ]; then systemctl is-active --quiet {name} && exit 0 || exit 3; fi\n\
             [ -e {pid} ] || exit 3\n\
             flock -n -E 75 {pid} true && exit 3 || exit 0\n",
            unit = shell_word(&self.unit_path()),
            name = self.name,
            pid = shell_word(&self.pid_file),
        )
    }
}

fn log_dir_of(log: &str) -> String {
    log.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_else(|| ".".into())
}

/// The pgrepl binary the hosts run (the agent, `pgrepl supervise`): the spec's
/// `[ha] agent_binary`, else the one pgrepl installs at [`BINARY`].
pub fn agent_program(cluster: &Cluster) -> String {
    match cluster.ha.as_ref().map(|h| &h.agent_binary) {
        Some(crate::cluster::AgentBinary::OnHost(p)) => p.clone(),
        _ => BINARY.to_string(),
    }
}

/// Where a cluster's pid files are on a host.
pub fn run_dir(cluster: &str) -> String {
    format!("/var/lib/pgrepl/{cluster}/run")
}

/// Where a cluster's service logs are on a host.
pub fn log_dir(cluster: &str) -> String {
    format!("/var/log/pgrepl/{cluster}")
}

/// The agent's state directory on its host (the replication password, 0600).
pub fn agent_state_dir(cluster: &str) -> String {
    format!("/var/lib/pgrepl/{cluster}/state")
}

/// The cluster file the agent on a host reads.
pub fn agent_spec_path(cluster: &str) -> String {
    format!("{}/cluster.toml", host_dir(cluster))
}

/// A word as the POSIX shell reads it back unchanged.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The certificates of one host, issued by the cluster's CA (PEM).
#[derive(Debug, Clone)]
pub struct HostCerts {
    pub ca: String,
    /// The etcd member's server and peer certificate (hosts holding a member).
    pub member: Option<(String, Secret)>,
    /// The agent's client certificate (hosts running an agent).
    pub client: Option<(String, Secret)>,
}

/// What one host gets.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// The node (or witness) the host carries.
    pub host: String,
    /// Directories created first: path, mode.
    pub dirs: Vec<(String, u32)>,
    pub files: Vec<HostFile>,
    /// The etcd member, when the host holds one.
    pub etcd: Option<Service>,
    /// The agent, when the host runs one.
    pub agent: Option<Service>,
}

/// What the agent of a node needs on its host beyond the certificates.
#[derive(Debug, Clone)]
pub struct AgentInputs {
    /// The cluster file as the agent reads it (written by the caller: the admin's spec
    /// with the host's paths for the etcd client certificate and state).
    pub spec_toml: String,
    /// The replication password (kept in the agent's state directory, 0600).
    pub replication_password: Secret,
    /// The agent's log filter (`PGREPL_LOG`).
    pub log_filter: String,
    /// The SHA-256 of pgrepl's binary on the host: a new one restarts the agent.
    pub binary_sha256: String,
}

/// The plan of host `host` (a node or a witness) of `cluster`: the etcd member it holds
/// (when `[ha.etcd] deploy` places one there), and the agent when `agent` is given.
pub fn host_plan(cluster: &Cluster, host: &str, certs: &HostCerts, agent: Option<&AgentInputs>) -> Result<HostPlan, String> {
    let ha = cluster.ha.as_ref().ok_or("the cluster has no [ha] section")?;
    let c = &cluster.name;
    let f = EtcdFiles::of(c);
    let mut plan = HostPlan {
        host: host.to_string(),
        dirs: vec![
            (host_dir(c), 0o700),
            (f.dir.clone(), 0o700),
            (format!("/var/lib/pgrepl/{c}"), 0o700),
            (run_dir(c), 0o700),
            (log_dir(c), 0o700),
        ],
        files: vec![HostFile::new(&f.ca, 0o644, &certs.ca)],
        etcd: None,
        agent: None,
    };
    let member = ha.etcd.deploy && ha.etcd_members.iter().any(|m| m == host);
    if member {
        let (cert, key) = certs.member.as_ref().ok_or_else(|| format!("{host}: no member certificate was issued"))?;
        plan.dirs.push((f.data_dir.clone(), 0o700));
        plan.files.push(HostFile::new(&f.cert, 0o644, cert));
        plan.files.push(HostFile { path: f.key.clone(), mode: 0o600, contents: key.clone() });
        plan.files.push(HostFile::new(&f.config, 0o600, etcd_member_config(cluster, host, false)?));
        plan.etcd = Some(Service::new(
            cluster,
            "etcd",
            vec![ETCD_BINARY.into(), "--config-file".into(), f.config.clone()],
            Vec::new(),
            vec![f.config.clone(), f.cert.clone(), f.key.clone(), f.ca.clone()],
        ));
    }
    if let Some(a) = agent {
        let witness = cluster.witnesses.iter().any(|w| w.name == host);
        if cluster.node(host).is_none() && !witness {
            return Err(format!("{host}: not a node or witness of the cluster"));
        }
        let (cert, key) = certs.client.as_ref().ok_or_else(|| format!("{host}: no client certificate was issued"))?;
        plan.dirs.push((agent_state_dir(c), 0o700));
        plan.files.push(HostFile::new(&f.client_cert, 0o644, cert));
        plan.files.push(HostFile { path: f.client_key.clone(), mode: 0o600, contents: key.clone() });
        plan.files.push(HostFile::new(agent_spec_path(c), 0o600, &a.spec_toml));
        let stamp = format!("{}/agent.binary", run_dir(c));
        plan.files.push(HostFile::new(&stamp, 0o600, format!("{}\n", a.binary_sha256)));
        // A witness runs no PostgreSQL: no replication password on its host.
        if !witness {
            plan.files.push(HostFile {
                path: format!("{}/replication", agent_state_dir(c)),
                mode: 0o600,
                contents: Secret::new(format!("{}\n", a.replication_password.expose())),
            });
        }
        plan.agent = Some(Service::new(
            cluster,
            "agent",
            vec![
                agent_program(cluster),
                "agent".into(),
                "--node".into(),
                host.to_string(),
                "--on-host".into(),
                "-f".into(),
                agent_spec_path(c),
                "--work-dir".into(),
                agent_state_dir(c),
            ],
            vec![("PGREPL_LOG".into(), a.log_filter.clone())],
            vec![
                f.client_cert.clone(),
                f.client_key.clone(),
                f.ca.clone(),
                agent_spec_path(c),
                format!("{}/replication", agent_state_dir(c)),
                stamp,
            ],
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let mut s = String::from(
            "name = \"geo\"\npostgres = \"15\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\n[ha.etcd]\ndeploy = true\nmembers = [\"d\", \"e\", \"w\"]\n",
        );
        for (n, r, a) in
            [("d", "primary", "10.0.0.1"), ("e", "standby", "10.0.0.2"), ("f", "standby", "10.0.0.3"), ("w", "witness", "10.0.0.5")]
        {
            s.push_str(&format!("[[nodes]]\nname = \"{n}\"\nrole = \"{r}\"\naddress = \"{a}\"\n"));
        }
        crate::spec::ClusterSpec::from_toml(&s).unwrap().validate().unwrap()
    }

    fn certs() -> HostCerts {
        HostCerts {
            ca: "CA".into(),
            member: Some(("MEMBER".into(), Secret::new("MEMBER KEY"))),
            client: Some(("CLIENT".into(), Secret::new("CLIENT KEY"))),
        }
    }

    fn agent() -> AgentInputs {
        AgentInputs {
            spec_toml: "name = \"geo\"\n".into(),
            replication_password: Secret::new("pw"),
            log_filter: "info".into(),
            binary_sha256: "abc".into(),
        }
    }

    #[test]
    fn keys_secrets_and_configs_are_0600_and_certificates_public() {
        let p = host_plan(&cluster(), "d", &certs(), Some(&agent())).unwrap();
        for f in &p.files {
            let secret = !f.path.ends_with(".crt");
            assert_eq!(f.mode, if secret { 0o600 } else { 0o644 }, "{}", f.path);
        }
        assert!(p.dirs.iter().all(|(_, m)| *m == 0o700), "{:?}", p.dirs);
        let pw = p.files.iter().find(|f| f.path == "/var/lib/pgrepl/geo/state/replication").unwrap();
        assert_eq!(pw.contents.expose(), "pw\n");
        let etcd = p.etcd.unwrap();
        assert_eq!(etcd.argv, ["/usr/bin/etcd", "--config-file", "/etc/pgrepl/geo/etcd/etcd.yml"]);
        let a = p.agent.unwrap();
        assert_eq!(a.argv[..4], ["/usr/local/lib/pgrepl/pgrepl", "agent", "--node", "d"]);
        assert!(a.argv.contains(&"--on-host".to_string()));
        // No secret reaches a command line.
        for s in [&etcd, &a] {
            for text in [s.supervised_start_script(), s.unit()] {
                assert!(!text.contains("pw") && !text.contains("KEY"), "{text}");
            }
        }
    }

    #[test]
    fn a_host_without_a_member_gets_no_etcd_and_a_witness_no_secret() {
        let p = host_plan(&cluster(), "f", &certs(), Some(&agent())).unwrap();
        assert!(p.etcd.is_none() && p.agent.is_some());
        assert!(!p.files.iter().any(|f| f.path.ends_with("member.key")));
        let w = host_plan(&cluster(), "w", &certs(), Some(&agent())).unwrap();
        assert!(w.etcd.is_some() && w.agent.is_some());
        assert!(!w.files.iter().any(|f| f.path.ends_with("/replication")), "a witness holds no replication password");
        let e = host_plan(&cluster(), "x", &certs(), Some(&agent())).unwrap_err();
        assert!(e.contains("not a node or witness"), "{e}");
        let no_cert = HostCerts { member: None, ..certs() };
        assert!(host_plan(&cluster(), "d", &no_cert, None).unwrap_err().contains("no member certificate"));
    }

    #[test]
    fn the_unit_restarts_always_after_the_network_is_online() {
        let a = host_plan(&cluster(), "d", &certs(), Some(&agent())).unwrap().agent.unwrap();
        let u = a.unit();
        assert!(u.contains("Restart=always") && u.contains("After=network-online.target") && u.contains("Wants=network-online.target"));
        assert!(u.contains("Environment=PGREPL_LOG=info"));
        assert!(u.contains("ExecStart=/usr/local/lib/pgrepl/pgrepl agent --node d --on-host -f /etc/pgrepl/geo/cluster.toml"), "{u}");
        assert_eq!(a.unit_path(), "/etc/systemd/system/pgrepl-geo-agent.service");
    }

    #[test]
    fn hosts_run_the_spec_binary_when_it_names_one() {
        let mut c = cluster();
        c.ha.as_mut().unwrap().agent_binary = crate::cluster::AgentBinary::OnHost("/opt/pgrepl/bin/pgrepl".into());
        let p = host_plan(&c, "d", &certs(), Some(&agent())).unwrap();
        let a = p.agent.unwrap();
        assert_eq!(a.argv[0], "/opt/pgrepl/bin/pgrepl");
        assert!(a.supervised_start_script().contains("setsid -f /opt/pgrepl/bin/pgrepl supervise"));
        assert!(p.etcd.unwrap().supervised_start_script().contains("setsid -f /opt/pgrepl/bin/pgrepl supervise"));
    }

    #[cfg(feature = "runtime")]
    #[test]
    fn uname_architectures_are_named_as_rust_names_them() {
        use super::apply::rust_arch;
        assert_eq!(rust_arch("x86_64\n"), "x86_64");
        assert_eq!(rust_arch("arm64"), "aarch64");
        assert_eq!(rust_arch("aarch64"), "aarch64");
    }

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("/usr/bin/etcd"), "/usr/bin/etcd");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
