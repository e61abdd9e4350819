//! Connection settings: where to connect, as whom, how to authenticate and how to trust
//! the host's key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 22;

/// Default bound on the TCP connect, the SSH handshake and authentication (each attempt).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's host key is checked against the known_hosts file.
///
/// A host key is never accepted silently: with [`Strict`](HostKeyPolicy::Strict) an unknown
/// key is an error, and with either policy a key that differs from the recorded one is an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// The key must already be in the known_hosts file (the default).
    #[default]
    Strict,
    /// An unknown host's key is appended to the known_hosts file (like OpenSSH's
    /// `StrictHostKeyChecking=accept-new`); a *changed* key is still refused.
    AcceptNew,
}

/// How to authenticate. Password authentication is deliberately not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshAuth {
    /// A private key file without a passphrase (OpenSSH or PEM format). For a key with a
    /// passphrase, load it into an agent and use [`SshAuth::Agent`].
    KeyFile(PathBuf),
    /// The identities of the SSH agent at `$SSH_AUTH_SOCK`, tried in the agent's order.
    Agent,
}

/// Why an [`SshConfig`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("ssh config for \"{host}\": {setting} is required")]
    Missing {
        /// The host being configured.
        host: String,
        /// The setting's builder method, such as `with_user`.
        setting: &'static str,
    },
    /// A setting has a value that cannot work.
    #[error("ssh config for \"{host}\": {setting}: {problem}")]
    Invalid {
        /// The host being configured.
        host: String,
        /// The setting's builder method.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Everything needed to open an SSH session to one host. Build one with
/// [`SshConfig::builder`].
///
/// ```
/// use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshConfig};
///
/// let config = SshConfig::builder("10.213.7.12")
///     .with_user("root")
///     .with_auth(SshAuth::KeyFile("/opt/pgrepl-lab/netns/id_ed25519".into()))
///     .with_known_hosts("/opt/pgrepl-lab/netns/known_hosts")
///     .with_host_key_policy(HostKeyPolicy::Strict)
///     .build()?;
/// assert_eq!(config.port(), 22);
/// # Ok::<(), pgrepl_ssh::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SshConfig {
    host: String,
    port: u16,
    user: String,
    auth: SshAuth,
    known_hosts: PathBuf,
    host_key_policy: HostKeyPolicy,
    connect_timeout: Duration,
}

impl SshConfig {
    /// Starts a configuration for `host` (a DNS name or an IP address, without brackets).
    pub fn builder(host: impl Into<String>) -> SshConfigBuilder {
        SshConfigBuilder {
            host: host.into(),
            port: DEFAULT_PORT,
            user: None,
            auth: None,
            known_hosts: None,
            host_key_policy: HostKeyPolicy::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The host to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// How to authenticate.
    pub fn auth(&self) -> &SshAuth {
        &self.auth
    }

    /// The known_hosts file host keys are checked against.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// What to do with an unknown host key.
    pub fn host_key_policy(&self) -> HostKeyPolicy {
        self.host_key_policy
    }

    /// Bound on the TCP connect, the handshake and authentication, per attempt.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `host:port` (`[host]:port` for an IPv6 address), for messages.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }
}

impl fmt::Debug for SshConfig {
    // Written out so that a future secret-bearing field cannot leak through a derive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("auth", &self.auth)
            .field("known_hosts", &self.known_hosts)
            .field("host_key_policy", &self.host_key_policy)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Builder of an [`SshConfig`]; `with_user` and `with_auth` are required.
#[derive(Debug, Clone)]
#[must_use]
pub struct SshConfigBuilder {
    host: String,
    port: u16,
    user: Option<String>,
    auth: Option<SshAuth>,
    known_hosts: Option<PathBuf>,
    host_key_policy: HostKeyPolicy,
    connect_timeout: Duration,
}

impl SshConfigBuilder {
    /// The TCP port (default 22).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The login user (required).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// How to authenticate (required).
    pub fn with_auth(mut self, auth: SshAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The known_hosts file (default `$HOME/.ssh/known_hosts`).
    pub fn with_known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// What to do with an unknown host key (default [`HostKeyPolicy::Strict`]).
    pub fn with_host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.host_key_policy = policy;
        self
    }

    /// Bound on the TCP connect, the handshake and authentication, per attempt (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the settings and returns the configuration.
    pub fn build(self) -> Result<SshConfig, ConfigError> {
        let host = self.host;
        let invalid =
            |setting: &'static str, problem: &str| ConfigError::Invalid { host: host.clone(), setting, problem: problem.to_string() };
        let missing = |setting: &'static str| ConfigError::Missing { host: host.clone(), setting };
        if host.is_empty() {
            return Err(invalid("builder", "the host name is empty"));
        }
        if host.starts_with('[') || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("builder", "not a host name or IP address (give IPv6 addresses without brackets)"));
        }
        if self.port == 0 {
            return Err(invalid("with_port", "port 0 cannot be connected to"));
        }
        let user = self.user.ok_or_else(|| missing("with_user"))?;
        if user.is_empty() || user.chars().any(|c| c.is_control() || c.is_whitespace() || c == ':') {
            return Err(invalid("with_user", "not a valid user name"));
        }
        let auth = self.auth.ok_or_else(|| missing("with_auth"))?;
        if let SshAuth::KeyFile(p) = &auth {
            if p.as_os_str().is_empty() {
                return Err(invalid("with_auth", "the key file path is empty"));
            }
        }
        let known_hosts = match self.known_hosts {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(invalid("with_known_hosts", "the path is empty"));
            }
            Some(p) => p,
            None => match std::env::var_os("HOME") {
                Some(home) if !home.is_empty() => PathBuf::from(home).join(".ssh").join("known_hosts"),
                _ => {
                    return Err(invalid("with_known_hosts", "not given, and $HOME is not set"));
                }
            },
        };
        if self.connect_timeout.is_zero() {
            return Err(invalid("with_connect_timeout", "must be greater than zero"));
        }
        Ok(SshConfig {
            host,
            port: self.port,
            user,
            auth,
            known_hosts,
            host_key_policy: self.host_key_policy,
            connect_timeout: self.connect_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SshConfigBuilder {
        SshConfig::builder("db1").with_user("root").with_auth(SshAuth::Agent).with_known_hosts("/tmp/kh")
    }

    #[test]
    fn defaults() {
        let c = base().build().unwrap();
        assert_eq!(c.port(), 22);
        assert_eq!(c.host_key_policy(), HostKeyPolicy::Strict);
        assert_eq!(c.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.endpoint(), "db1:22");
    }

    #[test]
    fn ipv6_endpoint_is_bracketed() {
        let c = SshConfig::builder("::1")
            .with_user("root")
            .with_auth(SshAuth::Agent)
            .with_known_hosts("/tmp/kh")
            .with_port(2222)
            .build()
            .unwrap();
        assert_eq!(c.endpoint(), "[::1]:2222");
    }

    #[test]
    fn missing_user_is_named() {
        let e = SshConfig::builder("db1").with_auth(SshAuth::Agent).build().unwrap_err();
        assert_eq!(e.to_string(), "ssh config for \"db1\": with_user is required");
    }

    #[test]
    fn missing_auth_is_named() {
        let e = SshConfig::builder("db1").with_user("root").build().unwrap_err();
        assert!(e.to_string().contains("with_auth is required"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(SshConfig::builder("").with_user("u").with_auth(SshAuth::Agent).build().is_err());
        assert!(SshConfig::builder("[::1]").with_user("u").with_auth(SshAuth::Agent).build().is_err());
        assert!(base().with_port(0).build().is_err());
        assert!(base().with_user("a b").build().is_err());
        assert!(base().with_connect_timeout(Duration::ZERO).build().is_err());
        assert!(base().with_auth(SshAuth::KeyFile(PathBuf::new())).build().is_err());
    }
}
