//! `ClusterSpec` → `Cluster`: the only producer of [`SpecError`]s, and the home of
//! [`ClusterSpec::validate`] (here rather than in `spec`, so the spec does not depend on
//! what it validates to).
//!
//! Every check names the field as written in pgrepl.toml and what was expected; all
//! problems are collected, never just the first; nothing here panics on bad input.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::cluster::{Cluster, Node, Replication, Sync, default_slot_name};
use crate::spec::{
    ArchiveSpec, AuthMethod, ClusterSpec, ClusterSpecBuilder, ProviderSpec, Role, SettingValue, SyncCommit, SyncMode, VersionChoice,
};
use crate::spec_error::{SpecError, SpecErrors};
use crate::version::{PgMajor, Support, SyncSyntax, setting_rule};

mod backup;

/// Settings pgrepl writes itself from other fields; setting them by hand would break it.
const MANAGED: &[(&str, &str)] = &[
    ("port", "nodes[].port"),
    ("listen_addresses", "nodes[].address (pgrepl listens on the node's address)"),
    ("hot_standby", "nothing (pgrepl turns it on: standbys serve reads and verify checks them)"),
    ("wal_log_hints", "nothing (pgrepl turns it on from 9.4 so pg_rewind can rejoin a former primary)"),
    ("primary_conninfo", "nodes[].upstream (pgrepl writes it)"),
    ("primary_slot_name", "nodes[].slot_name"),
    ("standby_mode", "nodes[].role"),
    ("trigger_file", "nothing (pgrepl promotes)"),
    ("promote_trigger_file", "nothing (pgrepl promotes)"),
    ("recovery_target_timeline", "nothing (pgrepl sets 'latest')"),
    ("synchronous_standby_names", "[replication.sync]"),
    ("synchronous_commit", "[replication.sync] commit"),
    ("archive_mode", "[archive] or [backup]"),
    ("archive_command", "[archive] or [backup]"),
    ("restore_command", "[archive] or [backup]"),
    ("wal_level", "nothing (pgrepl sets the hot-standby level of the version)"),
    ("wal_keep_segments", "[replication] wal_keep_mb"),
    ("wal_keep_size", "[replication] wal_keep_mb"),
    ("data_directory", "the provider's layout"),
    ("hba_file", "the provider's layout"),
    ("config_file", "the provider's layout"),
    ("include", "nothing"),
    ("include_dir", "nothing"),
    ("include_if_exists", "nothing"),
];

impl ClusterSpec {
    /// Checks the spec and returns the cluster it describes, or every problem found.
    /// With `postgres = "detect"` the version rules wait until the major is known:
    /// call [`validate_for`](Self::validate_for) then.
    pub fn validate(&self) -> Result<Cluster, SpecErrors> {
        validate(self, None)
    }

    /// Like [`validate`](Self::validate), for the given major (an explicit `postgres`
    /// in the spec must agree with it).
    pub fn validate_for(&self, major: PgMajor) -> Result<Cluster, SpecErrors> {
        validate(self, Some(major))
    }
}

impl ClusterSpecBuilder {
    /// Validates and returns the cluster.
    pub fn build(self) -> Result<Cluster, SpecErrors> {
        self.into_spec().validate()
    }
}

/// Witnesses are checked apart ([`crate::locations::check`]); the data nodes go through
/// the rules below, their fields renamed back to their index among all nodes.
fn validate(spec: &ClusterSpec, detected: Option<PgMajor>) -> Result<Cluster, SpecErrors> {
    let index: Vec<usize> = spec.nodes.iter().enumerate().filter(|(_, n)| n.role != Role::Witness).map(|(i, _)| i).collect();
    let data = ClusterSpec { nodes: index.iter().map(|&i| spec.nodes[i].clone()).collect(), ..spec.clone() };
    let placed = crate::locations::check(spec);
    let zones = aws_zones(spec);
    match (validate_data(&data, detected), placed) {
        (Ok(mut c), Ok(placed)) if zones.is_empty() => {
            c.witnesses = placed.witnesses;
            if let Some(h) = c.ha.as_mut() {
                h.etcd_members = placed.etcd_members;
            }
            Ok(c)
        }
        (r, placed) => {
            let mut errs: Vec<SpecError> = r.err().map(|e| e.0).unwrap_or_default();
            for e in &mut errs {
                e.field = renumber(&e.field, &index);
                e.problem = renumber(&e.problem, &index);
            }
            errs.extend(placed.err().unwrap_or_default());
            errs.extend(zones);
            Err(SpecErrors(errs))
        }
    }
}

/// On the AWS provider: every node's `location` (witnesses too) has an availability zone
/// (`[provider.locations]`, or the location is itself a zone name), and every zone is
/// shaped like one and in the spec's region when it names one.
fn aws_zones(spec: &ClusterSpec) -> Vec<SpecError> {
    let ProviderSpec::Aws(a) = &spec.provider else {
        return Vec::new();
    };
    let mut errs = Vec::new();
    let region = a.region.as_deref();
    let in_region = |zone: &str| match (region, crate::spec::region_of_zone(zone)) {
        (Some(r), Some(zr)) => r == zr,
        _ => true,
    };
    for (location, zone) in &a.locations {
        let field = format!("provider.locations.{location}");
        if !crate::spec::is_availability_zone(zone) {
            errs.push(SpecError::new(field, format!("\"{zone}\" is not an availability zone name"), "a zone such as \"us-east-2a\""));
        } else if !in_region(zone) {
            errs.push(SpecError::new(
                field,
                format!("zone \"{zone}\" is not in region {}", region.unwrap_or_default()),
                format!("a zone of {} (such as \"{}a\")", region.unwrap_or_default(), region.unwrap_or_default()),
            ));
        }
    }
    for (i, n) in spec.nodes.iter().enumerate() {
        let Some(location) = &n.location else { continue };
        let field = format!("nodes[{i}].location");
        match a.zone_of(location) {
            None => errs.push(SpecError::new(
                field,
                format!("\"{location}\" of \"{}\" is neither in [provider.locations] nor an availability zone name", n.name),
                format!("[provider.locations] {location} = \"<zone>\", or an availability zone as the location (such as \"us-east-2a\")"),
            )),
            Some(zone) if !a.locations.contains_key(location) && !in_region(zone) => errs.push(SpecError::new(
                field,
                format!("zone \"{zone}\" of \"{}\" is not in region {}", n.name, region.unwrap_or_default()),
                format!("a zone of {}", region.unwrap_or_default()),
            )),
            Some(_) => {}
        }
    }
    errs
}

/// `nodes[k]` in `text` as `nodes[index[k]]`.
fn renumber(text: &str, index: &[usize]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("nodes[") {
        let (head, tail) = rest.split_at(at + "nodes[".len());
        out.push_str(head);
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        match (tail[..digits].parse::<usize>().ok().and_then(|k| index.get(k)), tail[digits..].starts_with(']')) {
            (Some(i), true) => out.push_str(&i.to_string()),
            _ => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

fn validate_data(spec: &ClusterSpec, detected: Option<PgMajor>) -> Result<Cluster, SpecErrors> {
    let mut errs: Vec<SpecError> = Vec::new();
    let mut err = |field: String, problem: String, expected: &str| errs.push(SpecError::new(field, problem, expected));

    // --- name
    if let Err(p) = check_name(&spec.name) {
        err("name".into(), p, "lowercase letters, digits, '-' and '_', 1 to 40 characters, starting with a letter or digit");
    }

    // --- version
    let major = match (spec.postgres, detected) {
        (VersionChoice::Major(m), Some(d)) if m != d => {
            err(
                "postgres".into(),
                format!("the spec asks for PostgreSQL {m} but the binaries are {d}"),
                "the spec's major to match the binaries (or postgres = \"detect\")",
            );
            Some(d)
        }
        (VersionChoice::Major(m), _) => Some(m),
        (VersionChoice::Detect, d) => d,
    };
    if let Some(m) = major {
        if let Support::Unsupported(why) = m.caps().support {
            let supported: Vec<String> = PgMajor::supported().map(|m| m.to_string()).collect();
            err("postgres".into(), format!("PostgreSQL {m} is not supported: {why}"), &format!("one of {}", supported.join(", ")));
        }
    }
    let caps = major.map(PgMajor::caps);

    // --- nodes
    if spec.nodes.is_empty() {
        err("nodes".into(), "no nodes".into(), "at least one [[nodes]] entry with role = \"primary\"");
    }
    let primaries: Vec<usize> = spec.nodes.iter().enumerate().filter(|(_, n)| n.role == Role::Primary).map(|(i, _)| i).collect();
    if primaries.is_empty() && !spec.nodes.is_empty() {
        err("nodes".into(), "no node has role = \"primary\"".into(), "exactly one primary");
    }
    for &i in primaries.iter().skip(1) {
        err(
            format!("nodes[{i}].role"),
            format!("\"{}\" is a second primary (\"{}\" is already primary)", spec.nodes[i].name, spec.nodes[primaries[0]].name),
            "exactly one primary",
        );
    }
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        if let Err(p) = check_name(&n.name) {
            err(
                format!("nodes[{i}].name"),
                p,
                "lowercase letters, digits, '-' and '_', 1 to 40 characters, starting with a letter or digit",
            );
        }
        if let Some(j) = seen_names.insert(n.name.as_str(), i) {
            err(format!("nodes[{i}].name"), format!("duplicate node name \"{}\" (also nodes[{j}])", n.name), "unique node names");
        }
    }

    // Provider-specific address and port rules.
    let (default_address, base_port): (Option<&str>, Option<u16>) = match &spec.provider {
        ProviderSpec::Local(l) => (Some("127.0.0.1"), Some(l.base_port.unwrap_or(5432))),
        ProviderSpec::Ssh(_) => (None, None),
        ProviderSpec::Aws(_) => (None, None),
    };
    let mut addresses: Vec<Option<String>> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    let mut seen_endpoints: HashMap<(String, u16), usize> = HashMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let address = n.address.clone().or_else(|| default_address.map(str::to_string));
        let port = n.port.unwrap_or_else(|| match base_port {
            Some(b) => b.saturating_add(i as u16),
            None => 5432,
        });
        if port == 0 {
            err(format!("nodes[{i}].port"), "port 0".into(), "a port from 1 to 65535");
        }
        match (&spec.provider, &address) {
            (ProviderSpec::Local(_), Some(a)) => match a.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => {}
                _ => err(
                    format!("nodes[{i}].address"),
                    format!("\"{a}\" is not a loopback address"),
                    "a loopback address such as 127.0.0.1 for the local provider",
                ),
            },
            (ProviderSpec::Ssh(_), None) => err(
                format!("nodes[{i}].address"),
                "missing".into(),
                "the address the host's PostgreSQL listens and replicates on (SSH provider)",
            ),
            (ProviderSpec::Ssh(_), Some(a)) => {
                if let Err(p) = check_host(a) {
                    err(format!("nodes[{i}].address"), p, "an IP address or host name");
                }
            }
            (ProviderSpec::Aws(_), Some(_)) => {
                err(format!("nodes[{i}].address"), "set by hand".into(), "no address: the AWS provider assigns it")
            }
            _ => {}
        }
        if let Some(a) = &address {
            if let Some(j) = seen_endpoints.insert((a.clone(), port), i) {
                err(
                    format!("nodes[{i}].port"),
                    format!("{a}:{port} is also used by nodes[{j}] (\"{}\")", spec.nodes[j].name),
                    "a unique address:port per node",
                );
            }
        }
        addresses.push(address);
        ports.push(port);
    }

    // Upstreams: exist, not self, primary has none, no cycles, reach the primary.
    let primary_name = primaries.first().map(|&i| spec.nodes[i].name.clone());
    let mut upstreams: Vec<Option<String>> = Vec::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let up = match (n.role, &n.upstream) {
            (Role::Primary, Some(u)) => {
                err(format!("nodes[{i}].upstream"), format!("the primary cannot stream from \"{u}\""), "no upstream on the primary");
                None
            }
            // Witnesses are checked apart and never reach here.
            (Role::Primary | Role::Witness, None) | (Role::Witness, Some(_)) => None,
            (Role::Standby, Some(u)) if u == &n.name => {
                err(format!("nodes[{i}].upstream"), format!("\"{u}\" streams from itself"), "another node's name");
                None
            }
            (Role::Standby, Some(u)) if !names.contains(&u.as_str()) => {
                err(format!("nodes[{i}].upstream"), format!("unknown node \"{u}\""), &format!("one of: {}", names.join(", ")));
                None
            }
            (Role::Standby, Some(u)) => Some(u.clone()),
            (Role::Standby, None) => primary_name.clone(),
        };
        upstreams.push(up);
    }
    for (i, n) in spec.nodes.iter().enumerate() {
        if n.role != Role::Standby {
            continue;
        }
        // Walk up at most nodes.len() steps; longer means a cycle.
        let mut cur = upstreams[i].clone();
        let mut path = vec![n.name.clone()];
        let mut reached_primary = false;
        for _ in 0..spec.nodes.len() {
            let Some(c) = cur else { break };
            if Some(&c) == primary_name.as_ref() {
                reached_primary = true;
                break;
            }
            if path.contains(&c) {
                break;
            }
            path.push(c.clone());
            cur = names.iter().position(|x| *x == c).and_then(|j| upstreams[j].clone());
        }
        if !reached_primary && upstreams[i].is_some() && primary_name.is_some() {
            path.push(
                path.iter().find(|p| upstreams[names.iter().position(|x| x == p).unwrap_or(0)].is_some()).cloned().unwrap_or_default(),
            );
            err(
                format!("nodes[{i}].upstream"),
                format!("upstream chain of \"{}\" never reaches the primary (cycle: {})", n.name, path.join(" -> ")),
                "every standby's upstream chain to end at the primary",
            );
        }
    }

    // --- replication
    let r = &spec.replication;
    if let Err(p) = check_identifier(&r.user) {
        err(
            "replication.user".into(),
            p,
            "a role name of lowercase letters, digits and '_', starting with a letter, at most 63 characters",
        );
    }
    let auth = match (r.auth, caps) {
        (Some(AuthMethod::ScramSha256), Some(c)) if !c.password.scram => {
            err(
                "replication.auth".into(),
                format!("scram-sha-256 does not exist in PostgreSQL {}", c.major),
                "\"md5\" before PostgreSQL 10",
            );
            Some(AuthMethod::Md5)
        }
        (Some(a), _) => Some(a),
        (None, Some(c)) => Some(if c.password.scram { AuthMethod::ScramSha256 } else { AuthMethod::Md5 }),
        (None, None) => None,
    };
    let slots = match (r.slots, caps) {
        (Some(true), Some(c)) if !c.slots => {
            err("replication.slots".into(), format!("PostgreSQL {} has no replication slots", c.major), "slots = false before 9.4");
            false
        }
        (Some(s), _) => s,
        (None, Some(c)) => c.slots,
        (None, None) => true,
    };
    if r.wal_keep_mb == 0 && !slots {
        err(
            "replication.wal_keep_mb".into(),
            "0 with slots off: a standby that falls behind would need a re-clone".into(),
            "a positive size in MB, or slots on",
        );
    }
    if let Some(p) = &r.password_file {
        if !p.is_absolute() {
            err("replication.password_file".into(), format!("\"{}\" is relative", p.display()), "an absolute path");
        }
    }

    // Slot names.
    let mut node_slots: Vec<Option<String>> = Vec::new();
    let mut seen_slots: HashMap<String, usize> = HashMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let slot = match (&n.slot_name, n.role) {
            (Some(s), Role::Primary | Role::Witness) => {
                err(format!("nodes[{i}].slot_name"), format!("\"{s}\" set on the {}", n.role), "slot_name only on standbys");
                None
            }
            (Some(s), Role::Standby) => {
                if let Err(p) = check_slot_name(s) {
                    err(format!("nodes[{i}].slot_name"), p, "lowercase letters, digits and '_', 1 to 63 characters");
                }
                if !slots {
                    err(
                        format!("nodes[{i}].slot_name"),
                        "set while replication slots are off".into(),
                        "no slot_name, or [replication] slots = true",
                    );
                }
                Some(s.clone())
            }
            (None, Role::Standby) if slots => Some(default_slot_name(&n.name)),
            (None, _) => None,
        };
        if let Some(s) = &slot {
            if let Some(j) = seen_slots.insert(s.clone(), i) {
                err(
                    format!("nodes[{i}].slot_name"),
                    format!("slot \"{s}\" is also used by nodes[{j}] (\"{}\")", spec.nodes[j].name),
                    "a unique slot name per standby",
                );
            }
        }
        node_slots.push(slot.filter(|_| slots));
    }

    // Synchronous replication.
    let s = &r.sync;
    let direct: Vec<&crate::spec::NodeSpec> = {
        let mut d: Vec<&crate::spec::NodeSpec> = spec
            .nodes
            .iter()
            .zip(&upstreams)
            .filter(|(n, u)| n.role == Role::Standby && u.is_some() && u.as_ref() == primary_name.as_ref())
            .map(|(n, _)| n)
            .collect();
        d.sort_by_key(|n| std::cmp::Reverse(n.priority.unwrap_or(100)));
        d
    };
    let sync_standbys: Vec<String> = match &s.standbys {
        Some(list) => {
            for (k, name) in list.iter().enumerate() {
                match spec.nodes.iter().position(|n| &n.name == name) {
                    None => err(
                        format!("replication.sync.standbys[{k}]"),
                        format!("unknown node \"{name}\""),
                        &format!("one of: {}", direct.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")),
                    ),
                    Some(j) if !direct.iter().any(|d| &d.name == name) => err(
                        format!("replication.sync.standbys[{k}]"),
                        format!(
                            "\"{name}\" does not stream from the primary ({})",
                            if spec.nodes[j].role == Role::Primary {
                                "it is the primary".to_string()
                            } else {
                                format!("its upstream is \"{}\"", upstreams[j].clone().unwrap_or_default())
                            }
                        ),
                        "standbys that stream directly from the primary",
                    ),
                    _ => {}
                }
            }
            list.clone()
        }
        None => direct.iter().map(|n| n.name.clone()).collect(),
    };
    if s.mode != SyncMode::Off {
        if s.count == 0 {
            err("replication.sync.count".into(), "0".into(), "at least 1 (or mode = \"off\")");
        } else if sync_standbys.is_empty() {
            err(
                "replication.sync.count".into(),
                format!("{} synchronous standbys asked but no standby streams from the primary", s.count),
                "at least one standby streaming from the primary, or mode = \"off\"",
            );
        } else if s.count as usize > sync_standbys.len() {
            err(
                "replication.sync.count".into(),
                format!(
                    "{} synchronous standbys asked but only {} candidate(s) stream from the primary ({})",
                    s.count,
                    sync_standbys.len(),
                    sync_standbys.join(", ")
                ),
                &format!("a count from 1 to {}", sync_standbys.len()),
            );
        }
        if let Some(c) = caps {
            match (c.sync_syntax, s.mode) {
                (SyncSyntax::None, _) => {
                    err("replication.sync.mode".into(), format!("PostgreSQL {} has no synchronous replication", c.major), "mode = \"off\"")
                }
                (SyncSyntax::List | SyncSyntax::Priority, SyncMode::Any) => err(
                    "replication.sync.mode".into(),
                    format!("quorum (\"any\") needs PostgreSQL 10, this is {}", c.major),
                    "mode = \"first\" before 10",
                ),
                (SyncSyntax::List, SyncMode::First) if s.count > 1 => err(
                    "replication.sync.count".into(),
                    format!("PostgreSQL {} has one synchronous standby at most", c.major),
                    "count = 1 before 9.6",
                ),
                _ => {}
            }
            if s.commit == SyncCommit::RemoteApply && !c.remote_apply {
                err(
                    "replication.sync.commit".into(),
                    format!("remote_apply needs PostgreSQL 9.6, this is {}", c.major),
                    "\"on\" or \"remote_write\"",
                );
            }
        }
    }

    // --- archive
    match &spec.archive {
        ArchiveSpec::None => {}
        ArchiveSpec::Dir { path } => {
            if !path.is_absolute() {
                err("archive.path".into(), format!("\"{}\" is relative", path.display()), "an absolute directory path");
            }
            // Quotes, spaces and `%` are quoted in the commands; a line break cannot be.
            if path.to_string_lossy().chars().any(char::is_control) {
                err("archive.path".into(), "contains a control character (such as a line break)".into(), "a one-line path");
            }
        }
        ArchiveSpec::Command { archive_command, restore_command } => {
            if archive_command.trim().is_empty() {
                err("archive.archive_command".into(), "empty".into(), "a command using %p and %f");
            }
            if restore_command.trim().is_empty() {
                err("archive.restore_command".into(), "empty".into(), "a command using %f and %p");
            }
        }
    }

    // --- backup
    if let Some(b) = &spec.backup {
        backup::check_backup(b, &spec.archive, &mut err);
    }

    // --- ha
    let ha = spec.ha.as_ref().map(|h| check_ha(h, &mut err));

    // --- settings
    let mut check_settings = |prefix: &str, settings: &BTreeMap<String, SettingValue>| {
        for (name, value) in settings {
            let field = format!("{prefix}.{name}");
            if !is_setting_name(name) {
                err(field.clone(), format!("\"{name}\" is not a setting name"), "a postgresql.conf name: letters, digits, '_' and '.'");
                continue;
            }
            if let Some((_, instead)) = MANAGED.iter().find(|(m, _)| m.eq_ignore_ascii_case(name)) {
                err(field.clone(), "managed by pgrepl".into(), &format!("to set it through {instead}"));
                continue;
            }
            if let (Some(rule), Some(m)) = (setting_rule(name), major) {
                if !rule.exists_in(m) {
                    let why = if rule.recovery_only_before_12 {
                        format!("PostgreSQL {m} has no setting \"{name}\" in postgresql.conf (it lives in {})", rule.instead)
                    } else {
                        format!("PostgreSQL {m} has no setting \"{name}\"")
                    };
                    err(field.clone(), why, &format!("a setting of PostgreSQL {m} (instead: {})", rule.instead));
                }
            }
            if let SettingValue::Text(t) = value {
                if t.contains('\n') {
                    err(field.clone(), "value spans lines".into(), "a one-line value");
                }
            }
            if name.eq_ignore_ascii_case("password_encryption") {
                if let (SettingValue::Text(t), Some(c)) = (value, caps) {
                    if t == "scram-sha-256" && !c.password.scram {
                        err(field.clone(), format!("scram-sha-256 does not exist in PostgreSQL {}", c.major), "\"on\" (md5) before 10");
                    }
                }
            }
        }
    };
    check_settings("settings", &spec.settings);
    for (i, n) in spec.nodes.iter().enumerate() {
        check_settings(&format!("nodes[{i}].settings"), &n.settings);
    }

    // --- provider
    if let ProviderSpec::Local(l) = &spec.provider {
        if let Some(w) = &l.work_dir {
            if !w.is_absolute() {
                err("provider.work_dir".into(), format!("\"{}\" is relative", w.display()), "an absolute directory path");
            }
        }
        if let Some(u) = &l.os_user {
            if u == "root" {
                err("provider.os_user".into(), "PostgreSQL refuses to run as root".into(), "an unprivileged OS user such as \"postgres\"");
            }
        }
    }
    if let ProviderSpec::Ssh(s) = &spec.provider {
        match s.layout.as_deref() {
            None | Some("auto") => {}
            Some("plain") if spec.pg_bin.is_none() => {
                err("pg_bin".into(), "missing with layout = \"plain\"".into(), "the directory of postgres, initdb and pg_ctl on the hosts")
            }
            Some("plain") => {}
            Some(other) => err("provider.layout".into(), format!("\"{other}\""), "\"auto\" or \"plain\""),
        }
        if let Some(p) = &s.host_key_policy {
            if p != "strict" && p != "accept-new" {
                err("provider.host_key_policy".into(), format!("\"{p}\""), "\"strict\" or \"accept-new\"");
            }
        }
    }
    if let ProviderSpec::Aws(a) = &spec.provider {
        match &a.admin_cidr {
            None => err(
                "provider.admin_cidr".into(),
                "missing: SSH would be open to nobody, and pgrepl never opens it to 0.0.0.0/0 by default".into(),
                "the CIDR you administer from, such as \"203.0.113.7/32\"",
            ),
            Some(c) if !is_cidr(c) => {
                err("provider.admin_cidr".into(), format!("\"{c}\" is not a CIDR"), "an address/prefix such as \"203.0.113.7/32\"")
            }
            _ => {}
        }
        match (&a.ssh_public_key_file, &a.key_name) {
            (None, None) => err(
                "provider.ssh_public_key_file".into(),
                "missing: no key pair for the instances".into(),
                "ssh_public_key_file (a public key to import) or key_name (an existing key pair)",
            ),
            (Some(_), Some(_)) => {
                err("provider.key_name".into(), "set together with ssh_public_key_file".into(), "one of ssh_public_key_file and key_name")
            }
            _ => {}
        }
        if let Some(ami) = &a.ami {
            if !ami.starts_with("ami-") {
                err("provider.ami".into(), format!("\"{ami}\" is not an AMI id"), "an id such as \"ami-0123456789abcdef0\"");
            }
        }
        for (k, sn) in a.subnet_ids.iter().enumerate() {
            if !sn.starts_with("subnet-") {
                err(format!("provider.subnet_ids[{k}]"), format!("\"{sn}\" is not a subnet id"), "an id such as \"subnet-0123abcd\"");
            }
        }
        if let Some(v) = &a.volume_type {
            if !["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"].contains(&v.as_str()) {
                err("provider.volume_type".into(), format!("\"{v}\""), "one of gp3, gp2, io1, io2, st1, sc1, standard");
            }
        }
        for (k, c) in a.app_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                err(format!("provider.app_cidrs[{k}]"), format!("\"{c}\" is not a CIDR"), "an address/prefix such as \"10.0.0.0/16\"");
            }
        }
        for (k, c) in a.api_cidrs.iter().enumerate() {
            if !is_cidr(c) {
                err(format!("provider.api_cidrs[{k}]"), format!("\"{c}\" is not a CIDR"), "an address/prefix such as \"10.0.0.0/16\"");
            }
        }
    }

    if !errs.is_empty() {
        return Err(SpecErrors(errs));
    }

    let nodes = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Node {
            name: n.name.clone(),
            address: addresses[i].clone(),
            port: ports[i],
            role: n.role,
            upstream: upstreams[i].clone(),
            priority: n.priority.unwrap_or(100),
            slot: node_slots[i].clone(),
            ssh_host: n.ssh_host.clone(),
            location: n.location.clone(),
            settings: n.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect();
    Ok(Cluster {
        name: spec.name.clone(),
        major,
        replication: Replication {
            user: r.user.clone(),
            auth,
            slots,
            wal_keep_mb: r.wal_keep_mb,
            sync: Sync { mode: s.mode, count: s.count, standbys: sync_standbys, commit: s.commit, strict: s.strict },
            password_file: r.password_file.clone(),
        },
        archive: spec.archive.clone(),
        backup: spec.backup.clone(),
        settings: spec.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        nodes,
        ha,
        witnesses: Vec::new(),
        provider: spec.provider.clone(),
        sync_asked: s.clone(),
    })
}

/// Checks `[ha]`; the settings in milliseconds.
fn check_ha(h: &crate::spec::HaSpec, err: &mut impl FnMut(String, String, &str)) -> crate::cluster::Ha {
    let mut ms = |field: &str, v: f64| -> u64 {
        if !v.is_finite() || v <= 0.0 || v > 3600.0 {
            err(
                format!("ha.{field}"),
                format!("{v} is not a duration in seconds"),
                "seconds, more than 0 and at most 3600 (e.g. 3 or 0.5)",
            );
            return 0;
        }
        (v * 1000.0).round() as u64
    };
    let settings = crate::ha_settings::HaSettings {
        ttl_ms: ms("ttl", h.ttl),
        loop_wait_ms: ms("loop_wait", h.loop_wait),
        safety_margin_ms: ms("safety_margin", h.safety_margin),
        maximum_lag_on_failover: h.maximum_lag_on_failover,
        paused: false,
    };
    if settings.ttl_ms > 0 && settings.loop_wait_ms > 0 && settings.safety_margin_ms > 0 {
        for p in settings.problems() {
            let field = p.split(':').next().unwrap_or("ttl").to_string();
            err(format!("ha.{field}"), p, "ttl >= 1 s, loop_wait <= ttl / 2, safety_margin + loop_wait <= ttl");
        }
    }
    let e = &h.etcd;
    if e.endpoints.is_empty() && !e.deploy {
        err("ha.etcd.endpoints".into(), "empty".into(), "the client URLs of every etcd member, e.g. [\"http://10.0.0.5:2379\"]");
    }
    for (i, url) in e.endpoints.iter().enumerate() {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| {
            let hostport = r.trim_end_matches('/');
            !hostport.is_empty() && !hostport.contains('/') && !hostport.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        if !ok {
            err(format!("ha.etcd.endpoints[{i}]"), format!("\"{url}\" is not an etcd client URL"), "http://host:port or https://host:port");
        }
    }
    if e.cert_file.is_some() != e.key_file.is_some() {
        err("ha.etcd.cert_file".into(), "a client certificate needs both cert_file and key_file".into(), "both, or neither");
    }
    if e.user.is_some() != e.password_file.is_some() {
        err("ha.etcd.user".into(), "etcd authentication needs both user and password_file".into(), "both, or neither");
    }
    for (field, p) in [("ca_file", &e.ca_file), ("cert_file", &e.cert_file), ("key_file", &e.key_file), ("password_file", &e.password_file)]
    {
        if let Some(p) = p {
            if !p.is_absolute() {
                err(format!("ha.etcd.{field}"), format!("\"{}\" is relative", p.display()), "an absolute path");
            }
        }
    }
    if h.api_port == 0 {
        err("ha.api_port".into(), "0".into(), "a TCP port, 1-65535 (default 8008)");
    }
    if let Some(a) = &h.api_listen {
        if a.parse::<std::net::IpAddr>().is_err() {
            err(
                "ha.api_listen".into(),
                format!("\"{a}\" is not an IP address"),
                "an IP address of the hosts (0.0.0.0 or :: for every interface)",
            );
        }
    }
    if let Some(u) = h.agent_binary_url.as_ref().filter(|u| !u.starts_with("https://")) {
        err("ha.agent_binary_url".into(), format!("\"{u}\""), "an https:// URL");
    }
    if let Some(sum) = h.agent_binary_sha256.as_ref().filter(|s| s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit())) {
        err("ha.agent_binary_sha256".into(), format!("\"{sum}\""), "the binary's SHA-256: 64 hex digits");
    }
    let agent_binary = match (&h.agent_binary, &h.agent_binary_url, &h.agent_binary_sha256) {
        (Some(p), None, None) => {
            if !p.starts_with('/') {
                err("ha.agent_binary".into(), format!("\"{p}\" is relative"), "an absolute path on the hosts");
            }
            crate::cluster::AgentBinary::OnHost(p.clone())
        }
        (None, Some(u), Some(sum)) => crate::cluster::AgentBinary::Url { url: u.clone(), sha256: sum.to_ascii_lowercase() },
        (None, None, None) => crate::cluster::AgentBinary::Upload,
        (Some(_), Some(_), _) => {
            err("ha.agent_binary_url".into(), "set together with agent_binary".into(), "one of agent_binary or agent_binary_url");
            crate::cluster::AgentBinary::Upload
        }
        (_, Some(_), None) => {
            err("ha.agent_binary_sha256".into(), "missing".into(), "the SHA-256 of the binary at agent_binary_url");
            crate::cluster::AgentBinary::Upload
        }
        (_, None, Some(_)) => {
            err("ha.agent_binary_sha256".into(), "set without agent_binary_url".into(), "agent_binary_url with it");
            crate::cluster::AgentBinary::Upload
        }
    };
    crate::cluster::Ha {
        settings,
        etcd: e.clone(),
        etcd_members: Vec::new(),
        api_port: h.api_port,
        api_listen: h.api_listen.clone(),
        replica_max_lag: h.replica_max_lag,
        agent_binary,
    }
}

fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.len() > 40 {
        return Err(format!("\"{s}\" is {} characters long", s.len()));
    }
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
        return Err(format!("\"{s}\" has characters outside a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

fn check_identifier(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(format!("\"{s}\" is not a plain role name")) }
}

fn check_slot_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("\"{s}\" is not a valid slot name"));
    }
    Ok(())
}

fn check_host(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok { Ok(()) } else { Err(format!("\"{s}\" is neither an IP address nor a host name")) }
}

fn is_setting_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Whether `s` is an address/prefix (`10.0.0.0/16`, `2001:db8::/32`).
pub fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}
