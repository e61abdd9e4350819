//! The certificates of an etcd cluster pgrepl deploys: a CA of the cluster's own
//! (generated once, kept with the cluster's secrets, 0600), a certificate per member for
//! its client and peer ports (server and client use, the host's address as subject
//! alternative name), and client certificates for the agents and the CLI.
//!
//! ECDSA P-256 keys, generated with rcgen on ring. The CA's key never leaves the admin
//! machine; a member gets its own key and certificate and the CA's certificate only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use pgrepl_core::secret::Secret;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &"<certificate>").field("key_pem", &self.key_pem).finish()
    }
}

/// Something went wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// The cluster's CA. Reloaded from its files, it signs as the same issuer: the same
/// name and key (what a certificate's chain is checked against), rebuilt in memory.
pub struct Ca {
    cert_pem: String,
    signer: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Validity: from 2025 to 2045; the CA and the certificates outlive the hosts (a later
/// `up` issues new member certificates when a host's address changes).
fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("pgrepl {cluster} etcd CA"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p);
    p
}

impl Ca {
    /// A new CA for `cluster`.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let signer = ca_params(cluster).self_signed(&key)?;
        Ok(Ca { cert_pem: signer.pem(), signer, key })
    }

    /// The CA of `cluster` from its certificate and key (PEM).
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let signer = ca_params(cluster).self_signed(&key)?;
        Ok(Ca { cert_pem: cert_pem.to_string(), signer, key })
    }

    /// Its certificate (PEM): what every member and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Its key (PEM): kept on the admin machine only.
    pub fn key_pem(&self) -> Secret {
        Secret::new(self.key.serialize_pem())
    }

    /// A member's certificate: server and client use (peers authenticate each other),
    /// valid for `addresses` (IP addresses or DNS names) and 127.0.0.1.
    pub fn issue_member(&self, name: &str, addresses: &[String]) -> Result<Issued, PkiError> {
        let mut sans = vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1])), SanType::DnsName("localhost".try_into()?)];
        for a in addresses {
            match a.parse::<IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(
                    a.clone().try_into().map_err(|_| PkiError::Invalid(format!("\"{a}\" is neither an IP address nor a DNS name")))?,
                )),
            }
        }
        self.issue(&format!("etcd member {name}"), sans, &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A client certificate (the agents, the CLI): client use only.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, PkiError> {
        self.issue(common_name, Vec::new(), &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(&self, cn: &str, sans: Vec<SanType>, eku: &[ExtendedKeyUsagePurpose]) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.extended_key_usages = eku.to_vec();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut p);
        let cert = p.signed_by(&key, &self.signer, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: Secret::new(key.serialize_pem()) })
    }
}

/// Where the admin machine keeps a cluster's etcd certificates: `ca.crt`, `ca.key`,
/// and the CLI's own client certificate `admin.crt`, `admin.key` (keys 0600, the
/// directory 0700).
#[derive(Debug, Clone)]
pub struct AdminPki {
    pub dir: PathBuf,
}

impl AdminPki {
    /// Under the cluster's state directory.
    pub fn in_state_dir(state_dir: &Path) -> AdminPki {
        AdminPki { dir: state_dir.join("etcd-pki") }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }

    /// The CA (created with the CLI's client certificate when `create` and missing).
    pub fn load_or_create(&self, cluster: &str, create: bool) -> Result<Ca, PkiError> {
        let io = |p: &Path, e: std::io::Error| PkiError::Io { path: p.display().to_string(), source: e };
        match (std::fs::read_to_string(self.ca_cert()), std::fs::read_to_string(self.ca_key())) {
            (Ok(c), Ok(k)) => Ca::from_pem(cluster, &c, &k),
            (Err(e), _) | (_, Err(e)) if e.kind() != std::io::ErrorKind::NotFound || !create => Err(io(&self.ca_cert(), e)),
            _ => {
                let ca = Ca::generate(cluster)?;
                let admin = ca.issue_client(&format!("pgrepl {cluster} admin"))?;
                create_private_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
                write_private(&self.ca_key(), ca.key_pem().expose().as_bytes()).map_err(|e| io(&self.ca_key(), e))?;
                write_private(&self.admin_key(), admin.key_pem.expose().as_bytes()).map_err(|e| io(&self.admin_key(), e))?;
                write_private(&self.admin_cert(), admin.cert_pem.as_bytes()).map_err(|e| io(&self.admin_cert(), e))?;
                // The CA certificate last: its presence says the rest is there.
                write_private(&self.ca_cert(), ca.cert_pem().as_bytes()).map_err(|e| io(&self.ca_cert(), e))?;
                Ok(ca)
            }
        }
    }
}

impl AdminPki {
    /// The certificate kept as `<stem>.crt` / `<stem>.key` here, issued by `issue` (and
    /// kept, 0600) the first time: a host gets the same certificate on every `up`, so
    /// nothing restarts for a new one.
    pub fn kept(&self, stem: &str, issue: impl FnOnce() -> Result<Issued, PkiError>) -> Result<Issued, PkiError> {
        let io = |p: &Path, e: std::io::Error| PkiError::Io { path: p.display().to_string(), source: e };
        let (crt, key) = (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")));
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
            return Ok(Issued { cert_pem: c, key_pem: Secret::new(k) });
        }
        let i = issue()?;
        create_private_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        write_private(&key, i.key_pem.expose().as_bytes()).map_err(|e| io(&key, e))?;
        write_private(&crt, i.cert_pem.as_bytes()).map_err(|e| io(&crt, e))?;
        Ok(i)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Written through a temporary file created 0600, then renamed.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_members_and_clients_and_reloads_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = AdminPki::in_state_dir(dir.path());
        assert!(pki.load_or_create("geo", false).is_err(), "nothing is created unless asked");
        let ca = pki.load_or_create("geo", true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [pki.ca_key(), pki.admin_key(), pki.ca_cert()] {
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
        let again = pki.load_or_create("geo", true).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem(), "the same CA on the next run");
        let m = again.issue_member("d", &["10.213.8.21".into(), "pgl-d".into()]).unwrap();
        assert!(m.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.key_pem.expose().contains("PRIVATE KEY"));
        assert!(!format!("{m:?}").contains("PRIVATE"), "keys stay out of Debug");
        let kept = pki.kept("member-d", || Ok(m.clone())).unwrap();
        let again = pki.kept("member-d", || panic!("issued twice")).unwrap();
        assert_eq!(kept.cert_pem, again.cert_pem);
        assert_eq!(std::fs::metadata(pki.dir.join("member-d.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
