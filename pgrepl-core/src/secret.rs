//! Secrets: never in `Debug`, `Display`, JSON, logs or process arguments.

use std::fmt;

/// A secret string. `Debug` prints a placeholder and there is no `Display`; read it
/// with [`Secret::expose`] only where it goes into a 0600 file or a process's stdin.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A new random password of 32 characters from `[A-Za-z0-9]` (190 bits).
    #[cfg(feature = "runtime")]
    pub fn generate() -> Secret {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut out = String::with_capacity(32);
        let mut buf = [0u8; 64];
        // Rejection sampling keeps the distribution uniform: 62 * 4 = 248 < 256.
        // 64 random bytes hold 32 accepted ones with overwhelming probability; the
        // outer bound keeps the loop finite regardless.
        for _ in 0..16 {
            getrandom::fill(&mut buf).expect("the OS random source works");
            for b in buf {
                if out.len() == 32 {
                    return Secret(out);
                }
                if b < 248 {
                    out.push(ALPHABET[(b % 62) as usize] as char);
                }
            }
        }
        Secret(out)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// The secrets rendering needs to produce files and SQL exactly as they land on hosts.
/// Without them ([`render_node`](crate::render::render_node) with `None`), secrets are
/// shown as `********`.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The replication role's password (goes into the 0600 passfile).
    pub replication_password: Secret,
    /// The hashed form stored by `ALTER ROLE … PASSWORD` (SCRAM verifier or md5 hash),
    /// so the plain password never reaches the server's SQL.
    pub replication_verifier: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(********)");
        assert!(!format!("{:?}", Some(s)).contains("hunter2"));
    }

    #[cfg(feature = "runtime")]
    #[test]
    fn generated_passwords_are_distinct_and_plain() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
