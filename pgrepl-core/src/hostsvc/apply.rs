//! Carrying out a [`HostPlan`] on one host through its transport: pgrepl's binary
//! (uploaded when its checksum differs, and checked again after the upload), the files
//! (written only when they changed), then the services (started when they do not run,
//! restarted when a file they read changed). Idempotent: a second run on a host in the
//! planned state changes nothing.

use std::time::Duration;

use super::{BINARY, ETCD_BINARY, HostPlan, Service, shell_word};
use crate::cluster::AgentBinary;
use crate::error::Error;
use crate::transport::{Command, Transport, TransportError, TransportExt};

/// pgrepl's binary as this machine has it.
#[derive(Debug, Clone, Copy)]
pub struct Binary<'a> {
    pub bytes: &'a [u8],
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: &'a str,
}

/// What was done on a host (empty: nothing had to be).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub host: String,
    pub actions: Vec<String>,
}

fn tr(host: &str, action: impl Into<String>) -> impl FnOnce(TransportError) -> Error {
    let (host, action) = (host.to_string(), action.into());
    move |source| Error::Transport { host, action, source }
}

fn sh(t: &dyn Transport, script: impl Into<String>, timeout: Duration) -> Command {
    let c = Command::new("sh").args(["-c".to_string(), script.into()]).timeout(timeout);
    match t.admin_user() {
        Some(u) => c.user(u),
        None => c,
    }
}

/// The SHA-256 of a file on the host (`None`: no such file).
pub async fn remote_sha256(t: &dyn Transport, path: &str) -> Result<Option<String>, TransportError> {
    let out = t.exec(&sh(t, format!("[ -e {p} ] || exit 3; sha256sum {p}", p = shell_word(path)), Duration::from_secs(60))).await?;
    match out.status {
        0 => Ok(out.stdout.split_whitespace().next().map(str::to_string)),
        3 => Ok(None),
        s => Err(TransportError::CommandFailed { program: "sha256sum".into(), status: s, tail: out.stderr }),
    }
}

/// Puts `bin` at [`BINARY`] unless the host has it already (same SHA-256): uploaded
/// beside it, its checksum checked on the host, then renamed into place, so a host never
/// runs a truncated or corrupted binary. `Ok(true)`: it was uploaded.
pub async fn install_binary(t: &dyn Transport, host: &str, bin: Binary<'_>) -> Result<bool, Error> {
    if remote_sha256(t, BINARY).await.map_err(tr(host, "checksum pgrepl's binary"))?.as_deref() == Some(bin.sha256) {
        return Ok(false);
    }
    let dir = BINARY.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
    t.mkdir(dir, 0o755, None).await.map_err(tr(host, format!("create {dir}")))?;
    let tmp = format!("{BINARY}.new");
    t.write_file(&tmp, bin.bytes, 0o755, None).await.map_err(tr(host, format!("upload pgrepl's binary to {tmp}")))?;
    let got = remote_sha256(t, &tmp).await.map_err(tr(host, "checksum the uploaded binary"))?;
    if got.as_deref() != Some(bin.sha256) {
        let _ = t.remove_file(&tmp).await;
        return Err(Error::node(
            host,
            format!(
                "the binary uploaded to {tmp} has SHA-256 {}, not {} as sent: removed, not installed (a disk or transfer fault)",
                got.unwrap_or_else(|| "(missing)".into()),
                bin.sha256
            ),
        ));
    }
    t.run(&sh(t, format!("mv -f {} {}", shell_word(&tmp), shell_word(BINARY)), Duration::from_secs(30)))
        .await
        .map_err(tr(host, "move the binary into place"))?;
    Ok(true)
}

/// The architecture `uname -m` names, as Rust names it (`arm64` is `aarch64`).
pub fn rust_arch(uname_m: &str) -> &str {
    match uname_m.trim() {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        other => other,
    }
}

/// Makes sure the host has the pgrepl binary the cluster's `[ha]` names, and returns
/// whether it was (re)installed now and its SHA-256: `bin` uploaded (only when the host's
/// architecture is this machine's, [`std::env::consts::ARCH`]), the spec's path checked,
/// or the spec's URL downloaded by the host and checked before it is installed.
pub async fn ensure_binary(t: &dyn Transport, host: &str, source: &AgentBinary, bin: Binary<'_>) -> Result<(bool, String), Error> {
    match source {
        AgentBinary::Upload => {
            let out = t.run(&Command::new("uname").args(["-m"])).await.map_err(tr(host, "read the host's architecture"))?;
            let theirs = rust_arch(&out.stdout).to_string();
            if theirs != std::env::consts::ARCH {
                return Err(Error::node(
                    host,
                    format!(
                        "its architecture is {theirs}, this machine's pgrepl is built for {}: set [ha] agent_binary (a pgrepl for {theirs} on the hosts) or agent_binary_url with agent_binary_sha256",
                        std::env::consts::ARCH
                    ),
                ));
            }
            Ok((install_binary(t, host, bin).await?, bin.sha256.to_string()))
        }
        AgentBinary::OnHost(path) => match remote_sha256(t, path).await.map_err(tr(host, format!("checksum {path}")))? {
            Some(sum) => Ok((false, sum)),
            None => Err(Error::node(host, format!("[ha] agent_binary {path}: no such file on the host"))),
        },
        AgentBinary::Url { url, sha256 } => {
            if remote_sha256(t, BINARY).await.map_err(tr(host, "checksum pgrepl's binary"))?.as_deref() == Some(sha256.as_str()) {
                return Ok((false, sha256.clone()));
            }
            let dir = BINARY.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
            t.mkdir(dir, 0o755, None).await.map_err(tr(host, format!("create {dir}")))?;
            let tmp = format!("{BINARY}.new");
            let script = format!(
                "set -e\ncurl -fsSL --proto '=https' --max-time 600 -o {tmp} {url}\nchmod 0755 {tmp}\n",
                tmp = shell_word(&tmp),
                url = shell_word(url)
            );
            t.run(&sh(t, script, Duration::from_secs(660))).await.map_err(tr(host, format!("download {url}")))?;
            let got = remote_sha256(t, &tmp).await.map_err(tr(host, "checksum the downloaded binary"))?;
            if got.as_deref() != Some(sha256.as_str()) {
                let _ = t.remove_file(&tmp).await;
                return Err(Error::node(
                    host,
                    format!(
                        "{url} has SHA-256 {}, not {sha256} as [ha] agent_binary_sha256 says: removed, not installed",
                        got.unwrap_or_else(|| "(missing)".into())
                    ),
                ));
            }
            t.run(&sh(t, format!("mv -f {} {}", shell_word(&tmp), shell_word(BINARY)), Duration::from_secs(30)))
                .await
                .map_err(tr(host, "move the binary into place"))?;
            Ok((true, sha256.clone()))
        }
    }
}

/// Whether systemd runs on the host (it then runs pgrepl's services as units).
pub async fn has_systemd(t: &dyn Transport) -> Result<bool, TransportError> {
    Ok(t.exec(&Command::new("test").args(["-d", "/run/systemd/system"])).await?.success())
}

/// Carries out `plan` on its host (a service restarts when a file it reads changed: the
/// agent's include the checksum of pgrepl's binary, so a new binary restarts it).
pub async fn apply(t: &dyn Transport, plan: &HostPlan) -> Result<Applied, Error> {
    let host = plan.host.as_str();
    let mut done = Applied { host: host.to_string(), actions: Vec::new() };
    let systemd = has_systemd(t).await.map_err(tr(host, "check for systemd"))?;
    for (d, mode) in &plan.dirs {
        t.mkdir(d, *mode, None).await.map_err(tr(host, format!("create {d}")))?;
    }
    let mut changed = Vec::new();
    for f in &plan.files {
        let now = t.read_file(&f.path).await.map_err(tr(host, format!("read {}", f.path)))?;
        if now.as_deref() != Some(f.contents.expose().as_bytes()) {
            t.write_file(&f.path, f.contents.expose().as_bytes(), f.mode, None).await.map_err(tr(host, format!("write {}", f.path)))?;
            done.actions.push(format!("wrote {}", f.path));
            changed.push(f.path.clone());
        }
    }
    if let Some(etcd) = &plan.etcd {
        if !t.exists(ETCD_BINARY, None).await.map_err(tr(host, "look for etcd"))? {
            install_etcd(t, host, systemd).await?;
            done.actions.push("installed etcd-server".into());
        }
        let reads_changed = changed.iter().any(|p| etcd.reads.contains(p));
        ensure_service(t, host, etcd, systemd, reads_changed, &mut done).await?;
    }
    if let Some(agent) = &plan.agent {
        let reads_changed = changed.iter().any(|p| agent.reads.contains(p));
        ensure_service(t, host, agent, systemd, reads_changed, &mut done).await?;
    }
    Ok(done)
}

/// Debian's etcd-server, with the OS's own etcd service off (pgrepl runs its member).
async fn install_etcd(t: &dyn Transport, host: &str, systemd: bool) -> Result<(), Error> {
    let mut script = String::from("DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >/dev/null\n");
    if systemd {
        script.push_str("systemctl disable --now etcd 2>/dev/null || true\n");
    }
    t.run(&sh(t, script, Duration::from_secs(600))).await.map_err(tr(host, "install etcd-server"))?;
    Ok(())
}

/// Starts `s` unless it runs; restarts it when `restart` (a file it reads changed).
async fn ensure_service(t: &dyn Transport, host: &str, s: &Service, systemd: bool, restart: bool, done: &mut Applied) -> Result<(), Error> {
    if systemd {
        let unit = s.unit();
        let path = s.unit_path();
        let now = t.read_file(&path).await.map_err(tr(host, format!("read {path}")))?;
        let unit_changed = now.as_deref() != Some(unit.as_bytes());
        if unit_changed {
            t.write_file(&path, unit.as_bytes(), 0o644, None).await.map_err(tr(host, format!("write {path}")))?;
        }
        let verb = if restart || unit_changed { "restart" } else { "start" };
        let script = format!("systemctl daemon-reload && systemctl enable --quiet {n} && systemctl {verb} {n}", n = s.name);
        if restart || unit_changed || !running(t, s).await.map_err(tr(host, format!("check {}", s.name)))? {
            t.run(&sh(t, script, Duration::from_secs(90))).await.map_err(tr(host, format!("{verb} {}", s.name)))?;
            done.actions.push(format!("{verb}ed {} (systemd)", s.name));
        }
        return Ok(());
    }
    if restart {
        t.run(&sh(t, s.supervised_stop_script(), Duration::from_secs(60))).await.map_err(tr(host, format!("stop {}", s.name)))?;
    }
    let out = t.run(&sh(t, s.supervised_start_script(), Duration::from_secs(30))).await.map_err(tr(host, format!("start {}", s.name)))?;
    if out.stdout.trim() == "started" {
        done.actions.push(format!("{} {}", if restart { "restarted" } else { "started" }, s.name));
    }
    Ok(())
}

/// Whether `s` runs on the host.
pub async fn running(t: &dyn Transport, s: &Service) -> Result<bool, TransportError> {
    Ok(t.exec(&sh(t, s.running_script(), Duration::from_secs(15))).await?.success())
}

/// Stops `s` (a unit: stopped and disabled; supervised: SIGTERM to its supervisor).
pub async fn stop(t: &dyn Transport, host: &str, s: &Service) -> Result<(), Error> {
    let script = format!(
        "if [ -d /run/systemd/system ] && [ -e {unit} ]; then systemctl disable --now --quiet {name}; exit $?; fi\n{stop}",
        unit = shell_word(&s.unit_path()),
        name = s.name,
        stop = s.supervised_stop_script(),
    );
    t.run(&sh(t, script, Duration::from_secs(60))).await.map_err(tr(host, format!("stop {}", s.name)))?;
    Ok(())
}

/// Stops the host's services and removes what `plan` put there (units, configuration,
/// certificates, the etcd member's data, the agent's state; pgrepl's binary stays when
/// `keep_binary`, as other clusters on the host may use it).
pub async fn remove(t: &dyn Transport, plan: &HostPlan, keep_binary: bool) -> Result<Vec<String>, Error> {
    let host = plan.host.as_str();
    let mut removed = Vec::new();
    for s in plan.agent.iter().chain(plan.etcd.iter()) {
        stop(t, host, s).await?;
        t.remove_file(&s.unit_path()).await.map_err(tr(host, "remove the unit"))?;
        removed.push(s.name.clone());
    }
    for (d, _) in plan.dirs.iter().rev() {
        t.remove_tree(d).await.map_err(tr(host, format!("remove {d}")))?;
    }
    if !keep_binary {
        t.remove_file(BINARY).await.map_err(tr(host, "remove pgrepl's binary"))?;
    }
    Ok(removed)
}
