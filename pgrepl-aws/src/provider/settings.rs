//! The provider's settings: the spec's `[provider]` section checked field by field,
//! with the defaults filled in, before anything is asked of AWS.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use pgrepl_core::is_cidr;
use pgrepl_core::spec::{AwsProviderSpec, is_availability_zone};

use crate::error::ProviderError;
use crate::mapping::{self, AmiQuery, Arch};

const VOLUME_TYPES: [&str; 7] = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

/// Where the key pair comes from.
#[derive(Clone)]
pub(super) enum KeySource {
    /// Import this public key as `pgrepl-<cluster>` (deleted by destroy).
    Import { path: PathBuf, material: Vec<u8> },
    /// Use an existing key pair (never deleted).
    Existing(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Import { path, material } => {
                write!(f, "Import({}, {} bytes)", path.display(), material.len())
            }
            KeySource::Existing(k) => write!(f, "Existing({k})"),
        }
    }
}

/// The provider's settings, resolved and checked.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) admin_cidr: String,
    pub(super) app_cidrs: Vec<String>,
    pub(super) api_cidrs: Vec<String>,
    pub(super) instance_type: String,
    pub(super) witness_instance_type: String,
    pub(super) arch: Arch,
    pub(super) ami: Option<String>,
    pub(super) ami_query: AmiQuery,
    pub(super) subnet_ids: Vec<String>,
    pub(super) locations: BTreeMap<String, String>,
    pub(super) key: KeySource,
    pub(super) volume_gb: u32,
    pub(super) volume_type: String,
    pub(super) ssh_port: u16,
    pub(super) user_data: Option<String>,
}

impl Settings {
    /// Checks the `[provider]` section (and what the builder adds: the AMI lookup, user
    /// data) and resolves the defaults; reads the public key file to import, if any.
    pub(super) fn from_spec(
        s: &AwsProviderSpec,
        ami_query: Option<AmiQuery>,
        user_data: Option<String>,
    ) -> Result<Settings, ProviderError> {
        let config = |field: &str, problem: String| ProviderError::Config { field: field.into(), problem };
        let admin_cidr = match &s.admin_cidr {
            None => return Err(config(
                "provider.admin_cidr",
                "missing: SSH is only opened to the CIDR you administer from (such as \"203.0.113.7/32\"), and never to 0.0.0.0/0 by default".into(),
            )),
            Some(c) if !is_cidr(c) => {
                return Err(config(
                    "provider.admin_cidr",
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"203.0.113.7/32\")"),
                ));
            }
            Some(c) => c.clone(),
        };
        if admin_cidr == "0.0.0.0/0" || admin_cidr == "::/0" {
            tracing::warn!(admin_cidr, "provider.admin_cidr opens SSH to the whole internet, as the spec asks");
        }
        for (i, c) in s.app_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                return Err(config(
                    &format!("provider.app_cidrs[{i}]"),
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"10.0.0.0/16\")"),
                ));
            }
            if c == "0.0.0.0/0" || c == "::/0" {
                tracing::warn!(cidr = %c, "provider.app_cidrs opens PostgreSQL to the whole internet, as the spec asks");
            }
        }
        for (i, c) in s.api_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                return Err(config(
                    &format!("provider.api_cidrs[{i}]"),
                    format!("\"{c}\" is not a CIDR (expected an address/prefix such as \"10.0.0.0/16\")"),
                ));
            }
            if c == "0.0.0.0/0" || c == "::/0" {
                tracing::warn!(cidr = %c, "provider.api_cidrs opens the agents' HTTP port to the whole internet, as the spec asks");
            }
        }
        let instance_type = s.instance_type.clone().unwrap_or_else(|| mapping::DEFAULT_INSTANCE_TYPE.into());
        let arch = mapping::arch_of_instance_type(&instance_type).map_err(|p| config("provider.instance_type", p))?;
        let witness_instance_type = s.witness_instance_type.clone().unwrap_or_else(|| instance_type.clone());
        let witness_arch =
            mapping::arch_of_instance_type(&witness_instance_type).map_err(|p| config("provider.witness_instance_type", p))?;
        if witness_arch != arch {
            return Err(config(
                "provider.witness_instance_type",
                format!(
                    "{witness_instance_type} is {witness_arch} but instance_type {instance_type} is {arch}: every instance boots the same AMI (expected an {arch} instance type)"
                ),
            ));
        }
        for (location, zone) in &s.locations {
            if !is_availability_zone(zone) {
                return Err(config(
                    &format!("provider.locations.{location}"),
                    format!("\"{zone}\" is not an availability zone name (expected a zone such as \"us-east-2a\")"),
                ));
            }
        }
        let volume_gb = s.volume_gb.unwrap_or(mapping::DEFAULT_VOLUME_GB);
        if !(1..=65536).contains(&volume_gb) {
            return Err(config("provider.volume_gb", format!("{volume_gb} GiB (expected 1 to 65536)")));
        }
        let volume_type = s.volume_type.clone().unwrap_or_else(|| mapping::DEFAULT_VOLUME_TYPE.into());
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            return Err(config(
                "provider.volume_type",
                format!("\"{volume_type}\" is not an EBS volume type (expected one of: {})", VOLUME_TYPES.join(", ")),
            ));
        }
        let key = match (&s.ssh_public_key_file, &s.key_name) {
            (Some(_), Some(_)) => {
                return Err(config("provider.key_name", "set together with provider.ssh_public_key_file: give one of them".into()));
            }
            (None, None) => {
                return Err(config(
                    "provider.ssh_public_key_file",
                    "missing: give the public key to import (such as \"~/.ssh/id_ed25519.pub\") or provider.key_name of an existing key pair".into(),
                ));
            }
            (None, Some(k)) if k.trim().is_empty() => {
                return Err(config("provider.key_name", "empty".into()));
            }
            (None, Some(k)) => KeySource::Existing(k.clone()),
            (Some(p), None) => {
                let path = expand_home(p);
                let material = std::fs::read(&path).map_err(|e| ProviderError::KeyFile { path: path.clone(), source: e })?;
                if material.iter().all(u8::is_ascii_whitespace) {
                    return Err(config("provider.ssh_public_key_file", format!("{} is empty", path.display())));
                }
                KeySource::Import { path, material }
            }
        };
        if let Some(a) = &s.ami {
            if !a.starts_with("ami-") {
                return Err(config("provider.ami", format!("\"{a}\" is not an AMI id (expected ami-...)")));
            }
        }
        for (i, id) in s.subnet_ids.iter().enumerate() {
            if !id.starts_with("subnet-") {
                return Err(config(&format!("provider.subnet_ids[{i}]"), format!("\"{id}\" is not a subnet id (expected subnet-...)")));
            }
        }
        Ok(Settings {
            admin_cidr,
            app_cidrs: s.app_cidrs.clone(),
            api_cidrs: s.api_cidrs.clone(),
            instance_type,
            witness_instance_type,
            arch,
            ami: s.ami.clone(),
            ami_query: ami_query.unwrap_or_default(),
            subnet_ids: s.subnet_ids.clone(),
            locations: s.locations.clone(),
            key,
            volume_gb,
            volume_type,
            ssh_port: s.ssh.port.unwrap_or(mapping::DEFAULT_SSH_PORT),
            user_data,
        })
    }
}

/// `~/x` → `$HOME/x`.
fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Ec2Provider;

    #[test]
    fn cidrs() {
        assert!(is_cidr("203.0.113.7/32"));
        assert!(is_cidr("2001:db8::/32"));
        assert!(!is_cidr("203.0.113.7"));
        assert!(!is_cidr("203.0.113.7/33"));
        assert!(!is_cidr("any"));
    }

    fn spec() -> AwsProviderSpec {
        AwsProviderSpec { admin_cidr: Some("203.0.113.7/32".into()), key_name: Some("mine".into()), ..Default::default() }
    }

    fn config_error(spec: AwsProviderSpec) -> (String, String) {
        match Ec2Provider::builder().with_spec(&spec).settings() {
            Err(ProviderError::Config { field, problem }) => (field, problem),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_defaults() {
        let s = Ec2Provider::builder().with_spec(&spec()).settings().unwrap();
        assert_eq!(s.instance_type, "t4g.small");
        assert_eq!(s.arch, Arch::Arm64);
        assert_eq!(s.volume_gb, 20);
        assert_eq!(s.volume_type, "gp3");
        assert_eq!(s.ssh_port, 22);
        assert_eq!(s.ami_query, AmiQuery::default());
        assert!(matches!(s.key, KeySource::Existing(ref k) if k == "mine"));
        assert_eq!(s.witness_instance_type, "t4g.small", "witnesses default to the nodes' type");
        let s = Ec2Provider::builder().with_spec(&AwsProviderSpec { witness_instance_type: Some("t4g.micro".into()), ..spec() }).settings();
        assert_eq!(s.unwrap().witness_instance_type, "t4g.micro");
    }

    #[test]
    fn settings_are_checked_with_field_names() {
        let (f, p) = config_error(AwsProviderSpec { admin_cidr: None, ..spec() });
        assert_eq!(f, "provider.admin_cidr");
        assert!(p.contains("missing") && p.contains("0.0.0.0/0"), "{p}");
        let (f, _) = config_error(AwsProviderSpec { admin_cidr: Some("1.2.3.4".into()), ..spec() });
        assert_eq!(f, "provider.admin_cidr");
        let (f, _) = config_error(AwsProviderSpec { app_cidrs: vec!["10.0.0.0/8".into(), "x".into()], ..spec() });
        assert_eq!(f, "provider.app_cidrs[1]");
        let (f, _) = config_error(AwsProviderSpec { api_cidrs: vec!["10.0.0.0/8".into(), "y".into()], ..spec() });
        assert_eq!(f, "provider.api_cidrs[1]");
        let (f, p) = config_error(AwsProviderSpec { instance_type: Some("t4g".into()), ..spec() });
        assert_eq!(f, "provider.instance_type");
        assert!(p.contains("not an instance type"));
        let (f, _) = config_error(AwsProviderSpec { volume_type: Some("ssd".into()), ..spec() });
        assert_eq!(f, "provider.volume_type");
        let (f, _) = config_error(AwsProviderSpec { volume_gb: Some(0), ..spec() });
        assert_eq!(f, "provider.volume_gb");
        let (f, _) = config_error(AwsProviderSpec { key_name: None, ..spec() });
        assert_eq!(f, "provider.ssh_public_key_file");
        let (f, _) = config_error(AwsProviderSpec { ssh_public_key_file: Some("/x.pub".into()), ..spec() });
        assert_eq!(f, "provider.key_name");
        let (f, _) = config_error(AwsProviderSpec { ami: Some("ubuntu".into()), ..spec() });
        assert_eq!(f, "provider.ami");
        let (f, _) = config_error(AwsProviderSpec { subnet_ids: vec!["sn-1".into()], ..spec() });
        assert_eq!(f, "provider.subnet_ids[0]");
        let (f, p) = config_error(AwsProviderSpec { witness_instance_type: Some("t3.micro".into()), ..spec() });
        assert_eq!(f, "provider.witness_instance_type");
        assert!(p.contains("t3.micro is x86_64") && p.contains("same AMI"), "{p}");
        let (f, _) = config_error(AwsProviderSpec { witness_instance_type: Some("micro".into()), ..spec() });
        assert_eq!(f, "provider.witness_instance_type");
        let (f, p) = config_error(AwsProviderSpec { locations: [("east".to_string(), "dc1".to_string())].into(), ..spec() });
        assert_eq!(f, "provider.locations.east");
        assert!(p.contains("\"dc1\" is not an availability zone"), "{p}");
    }

    #[test]
    fn unreadable_key_file_names_the_file() {
        let e = Ec2Provider::builder()
            .with_spec(&AwsProviderSpec { key_name: None, ssh_public_key_file: Some("/nonexistent/pgrepl-test.pub".into()), ..spec() })
            .settings()
            .unwrap_err();
        assert!(matches!(e, ProviderError::KeyFile { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/pgrepl-test.pub"), "{e}");
    }
}
