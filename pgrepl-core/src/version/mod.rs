//! PostgreSQL major versions and what each one can do.
//!
//! [`PgMajor`] names a major release as users write it (`9.6`, `16`). [`Capabilities`]
//! (in `caps`) holds every fact pgrepl needs about one major. By convention, only
//! `caps.rs` compares versions; everything else reads capability fields, so adding a
//! major is a change to one file.

mod caps;
mod settings;
mod upgrade;

pub use caps::{
    BasebackupSlot, Capabilities, ChangeContext, LsnNames, PasswordAuth, PromoteMethod, RecoveryStyle, RewindCaps, Support, SyncSyntax,
    WalRetention,
};
pub use settings::{SettingRule, setting_rule};
pub use upgrade::UpgradeCaps;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PostgreSQL major version, from 9.0 to 18.
///
/// `Display` and `FromStr` use the users' notation: `9.6`, `10`, `18`. Full versions
/// (`16.4`, `9.6.24`) parse to their major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PgMajor {
    /// 9.0
    V9_0,
    /// 9.1
    V9_1,
    /// 9.2
    V9_2,
    /// 9.3
    V9_3,
    /// 9.4
    V9_4,
    /// 9.5
    V9_5,
    /// 9.6
    V9_6,
    /// 10
    V10,
    /// 11
    V11,
    /// 12
    V12,
    /// 13
    V13,
    /// 14
    V14,
    /// 15
    V15,
    /// 16
    V16,
    /// 17
    V17,
    /// 18
    V18,
}

impl PgMajor {
    /// Whether client tools of this major (psql, pg_basebackup) work with a server of
    /// `server`'s: the same major or a newer one.
    pub fn client_tools_serve(self, server: PgMajor) -> bool {
        self >= server
    }

    /// Every major pgrepl knows, oldest first. Keep in step with the enum.
    pub const ALL: &'static [PgMajor] = &[
        PgMajor::V9_0,
        PgMajor::V9_1,
        PgMajor::V9_2,
        PgMajor::V9_3,
        PgMajor::V9_4,
        PgMajor::V9_5,
        PgMajor::V9_6,
        PgMajor::V10,
        PgMajor::V11,
        PgMajor::V12,
        PgMajor::V13,
        PgMajor::V14,
        PgMajor::V15,
        PgMajor::V16,
        PgMajor::V17,
        PgMajor::V18,
    ];

    /// The newest major pgrepl knows.
    pub const NEWEST: PgMajor = PgMajor::V18;

    /// The majors pgrepl can deploy (see [`Support`]).
    pub fn supported() -> impl Iterator<Item = PgMajor> {
        Self::ALL.iter().copied().filter(|m| matches!(m.caps().support, Support::Supported))
    }

    /// `(major, minor)` as in "9.6" = (9, 6) and "16" = (16, 0).
    pub fn parts(self) -> (u32, u32) {
        match self {
            PgMajor::V9_0 => (9, 0),
            PgMajor::V9_1 => (9, 1),
            PgMajor::V9_2 => (9, 2),
            PgMajor::V9_3 => (9, 3),
            PgMajor::V9_4 => (9, 4),
            PgMajor::V9_5 => (9, 5),
            PgMajor::V9_6 => (9, 6),
            PgMajor::V10 => (10, 0),
            PgMajor::V11 => (11, 0),
            PgMajor::V12 => (12, 0),
            PgMajor::V13 => (13, 0),
            PgMajor::V14 => (14, 0),
            PgMajor::V15 => (15, 0),
            PgMajor::V16 => (16, 0),
            PgMajor::V17 => (17, 0),
            PgMajor::V18 => (18, 0),
        }
    }

    /// The major of a `server_version_num` (`90624` is 9.6, `160004` is 16).
    pub fn from_version_num(num: u32) -> Result<PgMajor, VersionError> {
        let (a, b) = if num >= 100_000 { (num / 10_000, 0) } else { (num / 10_000, (num / 100) % 100) };
        Self::from_parts(a, b).ok_or_else(|| VersionError::Unknown(num.to_string()))
    }

    fn from_parts(a: u32, b: u32) -> Option<PgMajor> {
        Self::ALL.iter().copied().find(|m| m.parts() == (a, b))
    }
}

impl fmt::Display for PgMajor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (9, minor) => write!(f, "9.{minor}"),
            (major, _) => write!(f, "{major}"),
        }
    }
}

/// Why a version string is not a major pgrepl knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// Not a version at all, or one outside 9.0–18.
    #[error("unknown PostgreSQL version \"{0}\" (expected a major from 9.0 to 18, such as \"9.6\" or \"16\")")]
    Unknown(String),
}

impl FromStr for PgMajor {
    type Err = VersionError;

    /// Parses "9.6", "9.6.24", "16", "16.4", "16beta2", "PG16" and "postgres (PostgreSQL) 16.4".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || VersionError::Unknown(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix("postgres (PostgreSQL) ").or_else(|| t.strip_prefix("PG")).or_else(|| t.strip_prefix("pg")).unwrap_or(t);
        let digits_and_dots: String = t.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut it = digits_and_dots.split('.');
        let major: u32 = it.next().and_then(|p| p.parse().ok()).ok_or_else(unknown)?;
        let minor = if major < 10 { it.next().and_then(|p| p.parse::<u32>().ok()).ok_or_else(unknown)? } else { 0 };
        Self::from_parts(major, minor).ok_or_else(unknown)
    }
}

impl Serialize for PgMajor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PgMajor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Str(s) => s,
            Raw::Num(n) if n.fract() == 0.0 => format!("{n:.0}"),
            Raw::Num(n) => format!("{n}"),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_notation() {
        assert_eq!("9.6".parse::<PgMajor>().unwrap(), PgMajor::V9_6);
        assert_eq!("9.6.24".parse::<PgMajor>().unwrap(), PgMajor::V9_6);
        assert_eq!("16".parse::<PgMajor>().unwrap(), PgMajor::V16);
        assert_eq!("16.4".parse::<PgMajor>().unwrap(), PgMajor::V16);
        assert_eq!("18beta1".parse::<PgMajor>().unwrap(), PgMajor::V18);
        assert_eq!("PG13".parse::<PgMajor>().unwrap(), PgMajor::V13);
        assert_eq!("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".parse::<PgMajor>().unwrap(), PgMajor::V15);
    }

    #[test]
    fn rejects_unknown() {
        for bad in ["", "8.4", "9", "9.7", "19", "abc", "1.0", "-1"] {
            let err = bad.parse::<PgMajor>().unwrap_err();
            assert!(err.to_string().contains("expected a major from 9.0 to 18"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for m in PgMajor::ALL {
            assert_eq!(m.to_string().parse::<PgMajor>().unwrap(), *m);
        }
        assert_eq!(PgMajor::V9_6.to_string(), "9.6");
        assert_eq!(PgMajor::V16.to_string(), "16");
    }

    #[test]
    fn version_num() {
        assert_eq!(PgMajor::from_version_num(90624).unwrap(), PgMajor::V9_6);
        assert_eq!(PgMajor::from_version_num(90300).unwrap(), PgMajor::V9_3);
        assert_eq!(PgMajor::from_version_num(100023).unwrap(), PgMajor::V10);
        assert_eq!(PgMajor::from_version_num(180004).unwrap(), PgMajor::V18);
        assert!(PgMajor::from_version_num(190000).is_err());
    }

    #[test]
    fn all_is_sorted_and_complete() {
        assert!(PgMajor::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(PgMajor::ALL.len(), 16);
        assert_eq!(*PgMajor::ALL.last().unwrap(), PgMajor::NEWEST);
    }

    #[test]
    fn serde_accepts_numbers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            v: PgMajor,
        }
        let t: T = toml::from_str("v = 16").unwrap();
        assert_eq!(t.v, PgMajor::V16);
        let t: T = toml::from_str("v = \"9.6\"").unwrap();
        assert_eq!(t.v, PgMajor::V9_6);
        let t: T = toml::from_str("v = 9.4").unwrap();
        assert_eq!(t.v, PgMajor::V9_4);
    }
}
