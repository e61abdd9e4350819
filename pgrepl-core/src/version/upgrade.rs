//! What a major upgrade with `pg_upgrade` depends on, per major: kept apart from the
//! replication table of `caps.rs` because only `pgrepl upgrade` reads it.
//!
//! Sources: the `pg_upgrade` reference page of each major (D X/pgupgrade) and the release
//! notes (RN 17.0 "pg_upgrade": logical slots are migrated when the old cluster is 17 or
//! later; RN 18.0 "Migration": `initdb` enables data checksums by default,
//! `--no-data-checksums` turns them off).

use serde::Serialize;

use super::PgMajor;

/// Facts about one major as the old or the new cluster of a `pg_upgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpgradeCaps {
    /// As the old cluster: `pg_upgrade` carries its logical replication slots (17+).
    /// Before 17 they are lost, so pgrepl refuses while any exists.
    pub keeps_logical_slots: bool,
    /// As the new cluster: the `initdb` flag that turns data checksums off, when `initdb`
    /// turns them on by default (18: `--no-data-checksums`); `None` when off is the default.
    pub initdb_no_checksums: Option<&'static str>,
    /// Whether pgrepl drives `pg_upgrade` for this major at all (as old or new): 9.3+,
    /// the majors pgrepl deploys.
    pub supported: bool,
}

impl PgMajor {
    /// The `pg_upgrade` facts of this major.
    pub fn upgrade_caps(self) -> UpgradeCaps {
        let (major, _) = self.parts();
        UpgradeCaps {
            keeps_logical_slots: major >= 17,
            initdb_no_checksums: if major >= 18 { Some("--no-data-checksums") } else { None },
            supported: self >= PgMajor::V9_3,
        }
    }

    /// Whether `pg_upgrade` can take a cluster of this major to `to`: `to` is a later
    /// major and both are majors pgrepl drives `pg_upgrade` for.
    pub fn upgrades_to(self, to: PgMajor) -> bool {
        to > self && self.upgrade_caps().supported && to.upgrade_caps().supported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        assert!(!PgMajor::V16.upgrade_caps().keeps_logical_slots);
        assert!(PgMajor::V17.upgrade_caps().keeps_logical_slots);
        assert_eq!(PgMajor::V17.upgrade_caps().initdb_no_checksums, None);
        assert_eq!(PgMajor::V18.upgrade_caps().initdb_no_checksums, Some("--no-data-checksums"));
        assert!(PgMajor::V14.upgrades_to(PgMajor::V16));
        assert!(!PgMajor::V16.upgrades_to(PgMajor::V16));
        assert!(!PgMajor::V18.upgrades_to(PgMajor::V16));
        assert!(!PgMajor::V9_2.upgrades_to(PgMajor::V16));
    }
}
