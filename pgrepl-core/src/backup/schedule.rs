//! `[backup] schedule`, pure: the cron expression read (five fields, by the `croner`
//! crate), and whether a scheduled base backup is due.
//!
//! With `[ha]`, the agent of the node holding the leader key takes the scheduled backups
//! (one at a time cluster-wide: a `backup/running` key bound to its lease; the slot taken
//! recorded in `backup/last`, so that after a failover the new primary's agent goes on
//! with the next slot). Without agents, `pgrepl render` prints the cron line to install
//! (`pgrepl backup --apply-retention`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron);

impl Schedule {
    /// Parses five cron fields (minute hour day-of-month month day-of-week, UTC).
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        if expr.split_whitespace().count() != 5 {
            return Err(format!("\"{expr}\" is not five cron fields"));
        }
        croner::Cron::new(expr).parse().map(Schedule).map_err(|e| format!("\"{expr}\" is not a cron expression: {e}"))
    }

    /// The first slot strictly after `t` (UTC); `None` if there is none.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let c = chrono::DateTime::<chrono::Utc>::from_timestamp(t.unix_timestamp(), t.nanosecond())?;
        let next = self.0.find_next_occurrence(&c, false).ok()?;
        OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
    }
}

/// A scheduled base backup as recorded in the store (`backup/running`, `backup/last`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledBackup {
    /// The slot of the schedule it is for.
    #[serde(with = "time::serde::rfc3339")]
    pub slot: OffsetDateTime,
    /// The node whose agent took it (the primary then).
    pub node: String,
    /// The backup's id, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The slot due now, if any: the first slot after the last one taken (`last`; without
/// one, after `since`, when this agent began watching the schedule) that is not after
/// `now`. Slots missed while no agent led are not made up one by one: one backup covers
/// them (the latest due slot is returned).
pub fn due(s: &Schedule, last: Option<OffsetDateTime>, since: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let mut slot = s.next_after(last.unwrap_or(since))?;
    if slot > now {
        return None;
    }
    // The latest slot not after now (bounded: a schedule fires at most once a minute).
    for _ in 0..100_000 {
        match s.next_after(slot) {
            Some(n) if n <= now => slot = n,
            _ => break,
        }
    }
    Some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_five_fields_only() {
        assert!(Schedule::parse("0 3 * * *").is_ok());
        assert!(Schedule::parse("*/5 * * * 1-5").is_ok());
        assert!(Schedule::parse("daily").is_err());
        assert!(Schedule::parse("0 0 3 * * *").is_err(), "seconds are not a field here");
        assert!(Schedule::parse("61 3 * * *").is_err());
    }

    #[test]
    fn next_slot() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(s.next_after(datetime!(2026-12-01 02:59:59 UTC)), Some(datetime!(2026-12-01 03:00 UTC)));
        assert_eq!(s.next_after(datetime!(2026-12-01 03:00 UTC)), Some(datetime!(2026-12-02 03:00 UTC)), "strictly after");
    }

    #[test]
    fn due_slots() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let since = datetime!(2026-12-01 01:00 UTC);
        // Not yet.
        assert_eq!(due(&s, None, since, datetime!(2026-12-01 02:59 UTC)), None);
        // Due from the slot on, until it is recorded as taken.
        assert_eq!(due(&s, None, since, datetime!(2026-12-01 03:00:05 UTC)), Some(datetime!(2026-12-01 03:00 UTC)));
        assert_eq!(due(&s, Some(datetime!(2026-12-01 03:00 UTC)), since, datetime!(2026-12-01 09:00 UTC)), None);
        // A slot taken by another node's agent (before a failover) is not taken again.
        assert_eq!(
            due(&s, Some(datetime!(2026-12-01 03:00 UTC)), datetime!(2026-12-01 05:00 UTC), datetime!(2026-12-02 03:00:01 UTC)),
            Some(datetime!(2026-12-02 03:00 UTC))
        );
        // Three missed days: one backup, for the latest slot.
        assert_eq!(
            due(&s, Some(datetime!(2026-12-01 03:00 UTC)), since, datetime!(2026-12-04 04:00 UTC)),
            Some(datetime!(2026-12-04 03:00 UTC))
        );
        // An agent that starts after a slot does not take it (no record: from its start on).
        assert_eq!(due(&s, None, datetime!(2026-12-01 03:30 UTC), datetime!(2026-12-01 04:00 UTC)), None);
    }

    #[test]
    fn records_round_trip() {
        let r = ScheduledBackup { slot: datetime!(2026-12-01 03:00 UTC), node: "db2".into(), id: Some("x".into()), error: None };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ScheduledBackup>(&j).unwrap(), r);
    }
}
