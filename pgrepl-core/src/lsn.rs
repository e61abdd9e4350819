//! WAL positions: one type for every LSN pgrepl reads, compares or reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL position (`XLogRecPtr`), shown as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` up to `self` (0 when `other` is ahead).
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s.trim().split_once('/').ok_or_else(|| format!("\"{s}\" is not a WAL position (X/Y)"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("\"{s}\" is not a WAL position (X/Y)"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("\"{s}\" is not a WAL position (X/Y)"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_subtracts() {
        let a: Lsn = "0/3000060".parse().unwrap();
        let b: Lsn = "0/3000000".parse().unwrap();
        assert_eq!(a.bytes_after(b), 0x60);
        assert_eq!(b.bytes_after(a), 0);
        assert_eq!("1/0".parse::<Lsn>().unwrap().bytes_after("0/FFFFFFFF".parse().unwrap()), 1);
        assert_eq!(a.to_string(), "0/3000060");
        assert!("junk".parse::<Lsn>().is_err());
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(j, "\"0/3000060\"");
        assert_eq!(serde_json::from_str::<Lsn>(&j).unwrap(), a);
    }
}
