//! Host key verification against an OpenSSH known_hosts file.
//!
//! libssh2 does the matching (plain, comma-separated and hashed `|1|` host names), but it
//! reads a file all-or-nothing and ignores key types, so this module:
//! - reads the file itself, line by line, skipping lines libssh2 cannot parse (such as
//!   `@cert-authority` lines or unsupported key types) instead of failing on them;
//! - honours `@revoked` lines for the exact key;
//! - finds the key types recorded for the host, so the handshake can ask the server for
//!   those first (OpenSSH does the same; otherwise a server with several host keys may
//!   present one the file does not hold, which would look like a changed key);
//! - appends an unknown key itself (libssh2 would rewrite the whole file and lose lines).
//!
//! Host patterns with wildcards (`*`, `?`, `!`) are not supported by libssh2; such lines
//! never match.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use ssh2::{CheckResult, HostKeyType, KnownHostFileKind, Session};

/// Host key algorithms offered when nothing is known about the host, best first (the
/// order of OpenSSH 9's client). SHA-1 `ssh-rsa` and `ssh-dss` are left out on purpose.
const DEFAULT_HOSTKEY_ALGS: &[&str] =
    &["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256"];

/// A key that matches nothing, used to find out whether a line is about our host: libssh2
/// answers "mismatch" when the host matches and the key does not.
const PROBE_KEY: &[u8] = b"pgrepl-probe-not-a-key";

/// The known_hosts name of a host: `host` for port 22, `[host]:port` otherwise, lower case.
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 { host } else { format!("[{host}]:{port}") }
}

/// What a known_hosts file says about one host.
#[derive(Debug, Default)]
pub(crate) struct HostEntries {
    /// The lines whose host part matches.
    lines: Vec<String>,
    /// Key type names of those lines (`ssh-ed25519`, …), in file order, without repeats.
    key_types: Vec<String>,
    /// Base64 key blobs of `@revoked` lines.
    revoked: Vec<String>,
    /// Whether the file exists.
    pub(crate) file_exists: bool,
}

/// The verdict on the key a server presented.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The file has this key for the host.
    Match,
    /// The file has nothing for the host.
    NotFound,
    /// The file has other keys for the host: it changed, or someone is in the middle.
    Mismatch,
    /// The key is marked `@revoked`.
    Revoked,
}

impl HostEntries {
    /// Reads `path` (a missing file reads as empty) and keeps what concerns `name`.
    pub(crate) fn load(sess: &Session, path: &Path, name: &str) -> io::Result<HostEntries> {
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HostEntries::default()),
            Err(e) => return Err(e),
        };
        let mut out = HostEntries { file_exists: true, ..HostEntries::default() };
        let mut skipped = 0usize;
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.contains('\0') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let Some(marker) = fields.first().filter(|f| f.starts_with('@')) {
                if *marker == "@revoked" {
                    if let Some(key) = fields.get(3) {
                        out.revoked.push((*key).to_string());
                    }
                } else {
                    skipped += 1;
                }
                continue;
            }
            let mut one = sess.known_hosts().map_err(io::Error::from)?;
            if one.read_str(line, KnownHostFileKind::OpenSSH).is_err() {
                skipped += 1;
                continue;
            }
            if matches!(one.check(name, PROBE_KEY), CheckResult::Mismatch) {
                out.lines.push(line.to_string());
                if let Some(t) = fields.get(1) {
                    if !out.key_types.iter().any(|k| k == t) {
                        out.key_types.push((*t).to_string());
                    }
                }
            }
        }
        if skipped > 0 {
            tracing::debug!(path = %path.display(), skipped, "known_hosts lines libssh2 cannot use were skipped");
        }
        Ok(out)
    }

    /// The host key algorithms to offer, best first: those matching the recorded key types,
    /// then the defaults.
    pub(crate) fn hostkey_preference(&self) -> String {
        let mut algs: Vec<&str> = Vec::new();
        for t in &self.key_types {
            let for_type: &[&str] = match t.as_str() {
                "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256"],
                "ssh-ed25519" => &["ssh-ed25519"],
                "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
                "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
                "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
                _ => &[],
            };
            algs.extend(for_type);
        }
        for a in DEFAULT_HOSTKEY_ALGS {
            if !algs.contains(a) {
                algs.push(a);
            }
        }
        algs.join(",")
    }

    /// Checks the key the server presented.
    pub(crate) fn verify(&self, sess: &Session, name: &str, key: &[u8]) -> io::Result<Verdict> {
        let b64 = base64(key);
        if self.revoked.contains(&b64) {
            return Ok(Verdict::Revoked);
        }
        if self.lines.is_empty() {
            return Ok(Verdict::NotFound);
        }
        let mut kh = sess.known_hosts().map_err(io::Error::from)?;
        for line in &self.lines {
            // Each line was parsed once already in `load`.
            kh.read_str(line, KnownHostFileKind::OpenSSH).map_err(io::Error::from)?;
        }
        Ok(match kh.check(name, key) {
            CheckResult::Match => Verdict::Match,
            CheckResult::NotFound => Verdict::NotFound,
            CheckResult::Mismatch => Verdict::Mismatch,
            CheckResult::Failure => {
                return Err(io::Error::other("libssh2 could not check the key"));
            }
        })
    }

    /// The recorded key types, for messages.
    pub(crate) fn key_types(&self) -> &[String] {
        &self.key_types
    }
}

/// The OpenSSH name of a host key type (`ssh-ed25519`, …).
pub(crate) fn key_type_name(t: HostKeyType) -> Option<&'static str> {
    match t {
        HostKeyType::Rsa => Some("ssh-rsa"),
        HostKeyType::Dss => Some("ssh-dss"),
        HostKeyType::Ecdsa256 => Some("ecdsa-sha2-nistp256"),
        HostKeyType::Ecdsa384 => Some("ecdsa-sha2-nistp384"),
        HostKeyType::Ecdsa521 => Some("ecdsa-sha2-nistp521"),
        HostKeyType::Ed25519 => Some("ssh-ed25519"),
        HostKeyType::Unknown => None,
    }
}

/// Appends `name type key` to the known_hosts file, creating it (and its directory) if needed.
pub(crate) fn append(path: &Path, name: &str, key_type: &str, key: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
    }
    let needs_newline = match fs::read(path) {
        Ok(bytes) => !bytes.is_empty() && !bytes.ends_with(b"\n"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let line = format!("{}{name} {key_type} {}\n", if needs_newline { "\n" } else { "" }, base64(key));
    let mut f = fs::OpenOptions::new().append(true).create(true).mode(0o644).open(path)?;
    // One write of a short line: concurrent appenders do not interleave within it.
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// `SHA256:…` as OpenSSH prints fingerprints.
pub(crate) fn fingerprint_sha256(sess: &Session) -> String {
    match sess.host_key_hash(ssh2::HashType::Sha256) {
        Some(h) => format!("SHA256:{}", base64(h).trim_end_matches('=')),
        None => "SHA256:(unavailable)".to_string(),
    }
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn lookup_names_follow_openssh() {
        assert_eq!(lookup_name("DB1.example", 22), "db1.example");
        assert_eq!(lookup_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
        assert_eq!(lookup_name("::1", 2222), "[::1]:2222");
    }

    const ED_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHmxS1PmLj5rj7pPSqcbwOcHZ6mS4HnH0zkBjv05yfDk";

    fn load_str(text: &str, name: &str) -> HostEntries {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        fs::write(&p, text).unwrap();
        let sess = Session::new().unwrap();
        HostEntries::load(&sess, &p, name).unwrap()
    }

    #[test]
    fn load_keeps_matching_lines_and_skips_what_libssh2_cannot_read() {
        let text = format!(
            "# comment\n\
             @cert-authority *.example ssh-ed25519 {ED_KEY}\n\
             garbage line\n\
             other,[127.0.0.1]:2222 ssh-ed25519 {ED_KEY} c\n\
             127.0.0.1 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCg=\n\
             [127.0.0.1]:2223 ssh-ed25519 {ED_KEY}\n"
        );
        let e = load_str(&text, "[127.0.0.1]:2222");
        assert!(e.file_exists);
        assert_eq!(e.lines.len(), 1, "{e:?}");
        assert_eq!(e.key_types(), ["ssh-ed25519"]);
        assert!(e.hostkey_preference().starts_with("ssh-ed25519,"));
    }

    #[test]
    fn rsa_entries_prefer_rsa_sha2() {
        let e = HostEntries { key_types: vec!["ssh-rsa".into()], ..HostEntries::default() };
        assert!(e.hostkey_preference().starts_with("rsa-sha2-512,rsa-sha2-256,ssh-ed25519"));
    }

    #[test]
    fn missing_file_reads_as_empty() {
        let sess = Session::new().unwrap();
        let e = HostEntries::load(&sess, Path::new("/nonexistent/pgrepl/known_hosts"), "h").unwrap();
        assert!(!e.file_exists);
        assert_eq!(e.verify(&sess, "h", b"k").unwrap(), Verdict::NotFound);
    }

    #[test]
    fn revoked_key_is_reported() {
        let key = b"raw-key-bytes";
        let e = load_str(&format!("@revoked * ssh-ed25519 {}\n", base64(key)), "h");
        let sess = Session::new().unwrap();
        assert_eq!(e.verify(&sess, "h", key).unwrap(), Verdict::Revoked);
        assert_eq!(e.verify(&sess, "h", b"other").unwrap(), Verdict::NotFound);
    }

    #[test]
    fn append_adds_a_line_and_fixes_a_missing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("known_hosts");
        append(&p, "[h]:2222", "ssh-ed25519", b"key").unwrap();
        fs::write(&p, fs::read_to_string(&p).unwrap().trim_end()).unwrap();
        append(&p, "h2", "ssh-ed25519", b"key").unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text, "[h]:2222 ssh-ed25519 a2V5\nh2 ssh-ed25519 a2V5\n");
    }
}
