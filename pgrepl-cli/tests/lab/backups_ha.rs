//! `[backup] schedule` with `[ha]`: the scheduled base backups are taken by the agent of
//! the node holding the leader key (real agents on a real etcd, Barman's scripts to moto),
//! without any command, and after a failover by the new primary's agent.

use std::time::{Duration, Instant};

use crate::auto::{AutoLab, etcd_endpoints, kill};
use crate::backups_common::*;
use crate::common::*;

/// The backups `pgrepl backups --output json` lists.
fn listed(lab: &AutoLab) -> Vec<serde_json::Value> {
    let (code, out, err) = lab.cli(&["backups", "--output", "json"]);
    assert_eq!(code, 0, "backups: {out}\n{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until `node`'s agent says it took a scheduled backup (`after` such
/// lines already there).
fn wait_taken(lab: &AutoLab, node: &str, after: usize, limit: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let taken: Vec<String> = agent_lines(lab, node, "scheduled base backup").into_iter().filter(|l| l.contains("taken")).collect();
        if taken.len() > after {
            return taken;
        }
        assert!(t.elapsed() < limit, "{node}'s agent took no scheduled backup within {limit:?}; logs in {}", lab.wd.path.display());
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every agent's log lines that mention `what`.
fn agent_lines(lab: &AutoLab, node: &str, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [lab.agents_dir(), lab.wd.path.clone()] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(node) && (name.ends_with(".log") || name.ends_with(".err")) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.extend(text.lines().filter(|l| l.contains(what)).map(String::from));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_schedule_by_the_leaders_agent_pg15() {
    let s3 = WorkDir::new("bksched-s3");
    let moto = Moto::start(&s3.path);
    let creds = credentials(&s3.path);
    let bucket = "pgrepl-bksched";
    create_bucket(&moto, &creds, bucket);
    // Every minute: the agents take one per minute, one at a time.
    let section = barman_section(&moto, bucket, &creds, "schedule = \"* * * * *\"");
    let lab = AutoLab::up_with("bksched", "15", None, &etcd_endpoints(), &section);

    let (code, out, err) = lab.cli(&["render"]);
    assert_eq!(code, 0, "render: {out}\n{err}");
    assert!(out.contains("taken by the agent of the node holding the leader key") && !out.contains("/etc/cron.d"), "{out}");

    // Without any command, a backup appears (the next minute's slot), taken by db1's agent.
    wait_taken(&lab, "db1", 0, Duration::from_secs(150));
    let first = listed(&lab);
    assert!(!first.is_empty() && first.iter().all(|b| b["status"] == "DONE"), "{first:?}");
    for n in ["db2", "db3"] {
        assert!(agent_lines(&lab, n, "scheduled base backup").is_empty(), "{n}'s agent took one while db1 led");
    }

    // db1 lost (agent, guard and server killed): the new leader's agent takes the next ones.
    let agent = lab.agent_pid("db1");
    let guard = lab.guard_pid(agent).expect("db1's agent runs a guard");
    let pm = lab.postmaster_pid("db1");
    kill("KILL", agent);
    kill("KILL", guard);
    kill("KILL", pm);
    let leader = lab.wait_leader(&["db2", "db3"], 2, Duration::from_secs(60));
    wait_taken(&lab, &leader, 0, Duration::from_secs(180));
    let after = listed(&lab);
    assert!(after.len() > first.len(), "{after:?}");
    let newest = after.last().unwrap();
    assert_eq!(newest["status"], "DONE", "{after:?}");
    assert!(newest["timeline"].as_u64().unwrap() >= 2, "taken on the new primary's timeline: {newest}");
    lab.finish();
}
