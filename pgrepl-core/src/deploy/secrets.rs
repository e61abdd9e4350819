//! The replication password: loaded from the spec's file or pgrepl's own, created when
//! missing, and refused when a new one would not match what deployed nodes hold.

use super::{Deployment, tr};
use crate::error::{Error, Refusal};
use crate::provider::NodeHandle;
use crate::secret::{Secret, Secrets};
use crate::spec::AuthMethod;
use crate::transport::{Transport, TransportExt};

impl Deployment {
    /// Loads the replication password (spec's `password_file`, or pgrepl's own in the
    /// state directory), creating pgrepl's own when `create`.
    pub async fn secrets(&self, create: bool) -> Result<Secrets, Error> {
        let io = |path: &std::path::Path, action: &str, e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            action: action.into(),
            source: e,
        };
        let password = match &self.cluster.replication.password_file {
            Some(p) => {
                let text = tokio::fs::read_to_string(p).await.map_err(|e| io(p, "read the replication password file", e))?;
                Secret::new(text.trim_end_matches(['\n', '\r']))
            }
            None => {
                let p = self.state_dir.join("replication");
                match tokio::fs::read_to_string(&p).await {
                    Ok(t) => Secret::new(t.trim_end()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                        let s = Secret::generate();
                        crate::machine::LocalTransport.mkdir(&self.state_dir.to_string_lossy(), 0o700, None).await.map_err(|e| {
                            Error::Transport { host: "localhost".into(), action: "create the state directory".into(), source: e }
                        })?;
                        crate::machine::LocalTransport
                            .write_file(&p.to_string_lossy(), format!("{}\n", s.expose()).as_bytes(), 0o600, None)
                            .await
                            .map_err(|e| Error::Transport {
                                host: "localhost".into(),
                                action: "store the replication password".into(),
                                source: e,
                            })?;
                        s
                    }
                    Err(e) => {
                        return Err(io(&p, "read the replication password (run `pgrepl up` first)", e));
                    }
                }
            }
        };
        let verifier = match self.cluster.replication.auth.unwrap_or(AuthMethod::ScramSha256) {
            AuthMethod::ScramSha256 => postgres_protocol::password::scram_sha_256(password.expose().as_bytes()),
            AuthMethod::Md5 => postgres_protocol::password::md5(password.expose().as_bytes(), &self.cluster.replication.user),
        };
        Ok(Secrets { replication_password: password, replication_verifier: Secret::new(verifier) })
    }

    /// Only a brand-new cluster may get a generated replication password. When pgrepl's
    /// own password file is missing (pgrepl runs on another machine, or the state directory
    /// was lost) but a node already carries pgrepl's deployment (its `pgrepl.conf` or
    /// passfile, or on this machine's nodes a data directory), generating one would hand the
    /// nodes a password the servers do not know: refused, saying where the password is
    /// looked for and how to bring it over.
    pub(crate) async fn refuse_new_password_for_deployed(&self, handles: &[NodeHandle]) -> Result<(), Error> {
        if self.cluster.replication.password_file.is_some() {
            return Ok(());
        }
        let stored = self.state_dir.join("replication");
        if tokio::fs::symlink_metadata(&stored).await.is_ok() {
            return Ok(());
        }
        for h in handles {
            let l = &h.layout;
            let mut signs = vec![format!("{}/pgrepl.conf", l.config_dir), l.passfile()];
            if self.local_ports {
                signs.push(format!("{}/PG_VERSION", l.data_dir));
            }
            for found in signs {
                if h.transport.exists(&found, None).await.map_err(|e| tr(&h.name, "look for an existing deployment", e))? {
                    return Err(Refusal {
                        node: h.name.clone(),
                        reason: format!(
                            "the cluster is already deployed ({found} exists) but its replication password is not here: pgrepl looks for it in {stored} \
                             (the state directory's `replication` file), and generating a new one would change the password the standbys use. \
                             Copy that file from the machine that deployed the cluster to {stored} (mode 0600), or set replication.password_file \
                             in the spec to a file holding the password; nothing was changed",
                            stored = stored.display()
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}
