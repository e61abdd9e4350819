//! pgrepl's edits to files it shares with the distribution: its block in pg_hba.conf and
//! the include line (with its comment) it appends to postgresql.conf. `run` makes them,
//! `destroy` takes them out.

use crate::render::{HBA_BEGIN, HBA_END};

/// The line pgrepl writes before its include line in postgresql.conf.
pub(super) const INCLUDE_COMMENT: &str = "# Added by pgrepl: its settings for this node.";

/// Replaces pgrepl's block in a pg_hba.conf (or puts it first), keeping every other line.
pub fn merge_hba_block(current: &str, block: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut rest = String::new();
    for line in current.lines() {
        if line.trim() == HBA_BEGIN || line.starts_with("# pgrepl:begin") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim() == HBA_END {
                inside = false;
            }
            continue;
        }
        rest.push_str(line);
        rest.push('\n');
    }
    out.push_str(block);
    out.push_str(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_block_is_replaced_in_place_and_first() {
        let block = format!("{HBA_BEGIN}\nhost replication r 10.0.0.2/32 scram-sha-256\n{HBA_END}\n");
        let original = "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let once = merge_hba_block(original, &block);
        assert!(once.starts_with(HBA_BEGIN));
        assert!(once.ends_with(original));
        let twice = merge_hba_block(&once, &block);
        assert_eq!(once, twice, "merging is idempotent");
        let block2 = format!("{HBA_BEGIN}\nhost replication r 10.0.0.3/32 scram-sha-256\n{HBA_END}\n");
        let changed = merge_hba_block(&once, &block2);
        assert!(changed.contains("10.0.0.3") && !changed.contains("10.0.0.2"));
    }
}
