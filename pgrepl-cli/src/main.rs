//! `pgrepl`: deploy and operate PostgreSQL streaming replication.
//!
//! Parse, call pgrepl-core, print. Exit codes: 0 ok; 1 a check failed (status found a
//! problem, verify failed); 2 usage or spec error; 3 refused by a safety check;
//! 4 infrastructure error (a command, host or server failed).

mod args;
mod backup;
mod day2;
mod ha;
mod ha_upgrade;
mod hosts_ha;
mod output;
mod supervise;
mod upgrade;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::layout::{Binaries, NodeLayout};
use pgrepl_core::local::{LocalBackend, default_os_user, default_work_dir, port_in_use};
use pgrepl_core::open::{Backend, OpenOptions};
use pgrepl_core::render::render_node;
use pgrepl_core::spec::{ClusterSpec, LocalProviderSpec, NodeSpec, ProviderSpec, VersionChoice};
use pgrepl_core::{Error, PgMajor};

use args::{Cli, Cmd, Common, HaproxyArgs, OutputFormat};
use output::Spinners;

/// The built-in default cluster's name.
const DEFAULT_CLUSTER: &str = "pgrepl-local";

/// How long `status --watch` runs at most: a forgotten watch does not query the cluster
/// forever.
const WATCH_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A mistake in how pgrepl was called, found by the CLI itself (exit 2): a cluster file
/// that does not exist, options that do not go together.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,pgrepl_core=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGREPL_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(4);
        }
    };
    // Host locks of an operation that failed are released before the runtime goes.
    let result = rt.block_on(async {
        let r = run(cli).await;
        pgrepl_core::oplock::finish_releases(Duration::from_secs(15)).await;
        r
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The options an agent started by `up` gets from this command: the same binaries, major
/// and work directory.
fn agent_args(common: &Common) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    if let Some(p) = &common.pg_bin {
        v.extend(["--pg-bin".into(), p.into()]);
    }
    if let Some(p) = &common.pg_client_bin {
        v.extend(["--pg-client-bin".into(), p.into()]);
    }
    if let Some(m) = common.pg_version {
        v.extend(["--pg-version".into(), m.to_string().into()]);
    }
    if let Some(w) = &common.work_dir {
        v.extend(["--work-dir".into(), w.into()]);
    }
    v
}

/// Prints a plan (a dry run): text, or JSON.
fn print_plan(common: &Common, plan: &pgrepl_core::plan::Plan) -> anyhow::Result<u8> {
    match common.output {
        OutputFormat::Text => print!("{plan}"),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(plan)?),
    }
    Ok(0)
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::Spec(_)) => 2,
        Some(e) if e.is_refusal() => 3,
        Some(Error::Discovery(_)) => 4,
        Some(_) => 4,
        None if e.downcast_ref::<pgrepl_core::SpecErrors>().is_some() => 2,
        None if e.downcast_ref::<clap::Error>().is_some() => 2,
        None if e.downcast_ref::<UsageError>().is_some() => 2,
        None if e.downcast_ref::<pgrepl_core::render::HaproxyError>().is_some() => 2,
        None => 4,
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Cmd::Render { common, haproxy: true, haproxy_args, .. } => render_haproxy(&common, &haproxy_args),
        Cmd::Render { common, node, .. } => render(&common, node.as_deref()),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, "pgrepl", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Up { common, dry_run: true } => {
            let (d, _) = open(&common, false).await?;
            print_plan(&common, &d.plan_up().await?)
        }
        Cmd::Up { common, dry_run: false } => {
            let (d, spec_path) = open(&common, true).await?;
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            if common.output == OutputFormat::Text {
                eprintln!("cluster file: {}", spec_path.display());
            }
            // The etcd cluster pgrepl deploys on the hosts comes first: everything after
            // reads or writes the store. Its members are rendered with the hosts'
            // addresses: EC2's instances are made first for that.
            let d = if hosts_ha::deploys_etcd(&d) { ha::with_store_records(d.with_host_addresses(true).await?)? } else { d };
            let etcd_done = hosts_ha::ensure_etcd(&d).await?;
            hosts_ha::say(&etcd_done, common.output == OutputFormat::Text);
            // Agents running the cluster: `up` holds them paused while it converges the
            // nodes (they see the pause before anything changes) and puts them back after;
            // the primary is never restarted by `up` either way.
            let agents_own = if hosts_ha::on_hosts(&d) { ha::agents_in_charge(&d).await? } else { ha::agents_lead(&d).await? };
            let report = if agents_own { d.up_with_agents_held(&spinners).await? } else { d.up(&spinners).await? };
            if agents_own && common.output == OutputFormat::Text {
                eprintln!("agents run cluster {}: held paused while up converged the nodes, then resumed", d.cluster().name);
            }
            spinners.clear();
            // Deployed is not enough: a canary write must reach every standby.
            let verify = d.verify(Duration::from_secs(30)).await?;
            let mut started_now: Vec<String> = Vec::new();
            if d.cluster().ha.is_some() {
                let store = ha::open_store(&d)?;
                ha::publish(&d, &store).await?;
                if matches!(d.cluster().provider(), ProviderSpec::Local(_)) {
                    let started = ha::start_agents(&d, &spec_path, &agent_args(&common))?;
                    if common.output == OutputFormat::Text && !started.is_empty() {
                        eprintln!("agents started: {} (logs in {})", started.join(", "), d.state_dir().join("agents").display());
                    }
                    started_now = started;
                } else {
                    started_now = hosts_ha::ensure_agents_saying(&d, &read_spec(&spec_path)?, common.output == OutputFormat::Text).await?;
                }
            }
            let status = d.status().await;
            match common.output {
                OutputFormat::Text => {
                    print!("{report}");
                    println!();
                    print!("{status}");
                    print!("{verify}");
                }
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&serde_json::json!({"up": report, "status": status, "verify": verify}))?)
                }
            }
            // With agents acting, a node whose agent `up` just started is theirs to bring
            // back (an old primary rejoins by itself): not a failure of `up`.
            let left_to_agents = |node: &str| agents_own && started_now.iter().any(|n| n == node);
            let status_ok = status.problems.iter().all(|p| p.split_once(':').is_some_and(|(n, _)| left_to_agents(n)));
            let verify_ok =
                verify.standbys.iter().all(|s| (s.error.is_none() && s.read_only && s.canary_seconds.is_some()) || left_to_agents(&s.node));
            Ok(if status_ok && verify_ok { 0 } else { 1 })
        }
        Cmd::Status { common, watch: None, .. } => {
            let (d, _) = open(&common, false).await?;
            let view = status_once(&d).await?;
            match common.output {
                OutputFormat::Text => print!("{}", view.text),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&view.json)?),
            }
            Ok(view.code)
        }
        Cmd::Status { common, watch: Some(every), count } => {
            let (d, spec_path) = open(&common, false).await?;
            status_watch(&d, &spec_path, common.output, every, count).await
        }
        Cmd::Restart { common, rolling, no_switch_back, pending, dry_run, nodes } => {
            day2::restart(&common, day2::mode(rolling, !no_switch_back), pending, dry_run, nodes).await
        }
        Cmd::Switchover { common, to, dry_run: true } => {
            let (d, _) = open(&common, false).await?;
            print_plan(&common, &d.plan_switchover(&to).await?)
        }
        Cmd::Failover { common, to, force, dry_run: true } => {
            let (d, _) = open(&common, false).await?;
            print_plan(&common, &d.plan_failover(&pgrepl_core::ha::FailoverOptions { to, force }).await?)
        }
        Cmd::Rejoin { common, node, dry_run: true } => {
            let (d, _) = open(&common, false).await?;
            print_plan(&common, &d.plan_rejoin(&node).await?)
        }
        Cmd::Switchover { common, to, dry_run: false } => {
            let (d, _) = open(&common, false).await?;
            let filed = if ha::agents_in_charge(&d).await? {
                ha::under_lock(&d, "switchover request", ha::file_switchover(&d, &to)).await?
            } else {
                None
            };
            if let Some(filed) = filed {
                let r = ha::await_switchover(filed, Duration::from_secs(120)).await?;
                match common.output {
                    OutputFormat::Text => println!("switchover {} -> {} by the agents: {:.3}s", r.from, r.to, r.seconds),
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                }
                return Ok(0);
            }
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            let report = d.switchover(&to, &spinners).await?;
            ha::hand_over_leader(&d).await?;
            spinners.clear();
            print_report(&common, &report)?;
            Ok(0)
        }
        Cmd::Failover { common, to, force, dry_run: false } => {
            let (d, _) = open(&common, false).await?;
            if ha::agents_in_charge(&d).await? {
                let r = ha::failover_via_agents(&d, to.as_deref(), Duration::from_secs(120)).await?;
                match common.output {
                    OutputFormat::Text => println!("the agents elected {} ({:.3}s waited)", r.leader, r.seconds),
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                }
                return Ok(0);
            }
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            let report = d.failover(pgrepl_core::ha::FailoverOptions { to, force }, &spinners).await?;
            ha::hand_over_leader(&d).await?;
            spinners.clear();
            print_report(&common, &report)?;
            Ok(0)
        }
        Cmd::Rejoin { common, node, dry_run: false } => {
            let (d, _) = open(&common, false).await?;
            if ha::agents_in_charge(&d).await? {
                let r = ha::rejoin_via_agents(&d, &node, Duration::from_secs(300)).await?;
                match common.output {
                    OutputFormat::Text => {
                        println!("{} is a standby of {} again, by its agent ({:.3}s waited)", r.node, r.leader, r.seconds)
                    }
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                }
                return Ok(0);
            }
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            let report = d.rejoin(&node, &spinners).await?;
            ha::hand_over_leader(&d).await?;
            spinners.clear();
            print_report(&common, &report)?;
            Ok(0)
        }
        Cmd::Verify { common, backup: true, scratch, scratch_port, .. } => {
            backup::verify_backup(&common, scratch.as_deref(), scratch_port).await
        }
        Cmd::Backup { common, from, apply_retention } => backup::backup(&common, from.as_deref(), apply_retention).await,
        Cmd::Backups { common } => backup::backups(&common).await,
        Cmd::Restore { common, to_time, to_lsn, latest: _, into, in_place: _, yes, name, base_port, backup_id, no_standbys } => {
            let target = backup::target(to_time.as_deref(), to_lsn.as_deref())?;
            match into {
                Some(into) => backup::restore(&common, target, &into, name.as_deref(), base_port, backup_id, no_standbys).await,
                None if !yes => Err(UsageError(
                    "--in-place replaces this cluster's data with the backup's (the primary's data directory is moved aside, the standbys' removed): add --yes".into(),
                )
                .into()),
                None => backup::restore_in_place(&common, target, backup_id, no_standbys).await,
            }
        }
        Cmd::Verify { common, timeout, .. } => {
            let (d, _) = open(&common, false).await?;
            let report = d.verify(Duration::from_secs(timeout)).await?;
            match common.output {
                OutputFormat::Text => print!("{report}"),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.ok() { 0 } else { 1 })
        }
        Cmd::Down { common } => {
            let (d, _) = open(&common, false).await?;
            if hosts_ha::on_hosts(&d) {
                stop_host_services(&d, false).await?;
            } else if d.cluster().ha.is_some() {
                ha::stop_agents(&d, Duration::from_secs(60)).await;
            }
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            let stopped = d.down(&spinners).await?;
            spinners.clear();
            match common.output {
                OutputFormat::Text if stopped.is_empty() => println!("nothing was running"),
                OutputFormat::Text => println!("stopped: {}", stopped.join(", ")),
                OutputFormat::Json => println!("{}", serde_json::json!({ "stopped": stopped })),
            }
            Ok(0)
        }
        Cmd::Destroy { common, yes } => {
            let (d, _) = open(&common, false).await?;
            if !yes && !confirm(&format!("Destroy cluster {} and remove all its data? [y/N] ", d.cluster().name))? {
                eprintln!("not destroyed");
                return Ok(3);
            }
            if hosts_ha::on_hosts(&d) {
                stop_host_services(&d, false).await?;
            } else if d.cluster().ha.is_some() {
                ha::stop_agents(&d, Duration::from_secs(60)).await;
            }
            let spinners = Spinners::new(common.output == OutputFormat::Text);
            let left = d.destroy(&spinners).await?;
            spinners.clear();
            if hosts_ha::deploys_etcd(&d) {
                // The etcd members go with the cluster (their data holds only its keys).
                stop_host_services(&d, true).await?;
            } else if d.cluster().ha.is_some() {
                if let Err(e) = ha::forget(&d).await {
                    eprintln!("warning: the cluster's keys in etcd were not removed: {e}");
                }
            }
            match common.output {
                OutputFormat::Text => {
                    println!("cluster {} destroyed", d.cluster().name);
                    // What pgrepl did not create is not removed: said, not hidden.
                    for l in &left {
                        println!("left: {l}");
                    }
                }
                OutputFormat::Json => println!("{}", serde_json::json!({ "destroyed": d.cluster().name, "left": left })),
            }
            Ok(0)
        }
        Cmd::Agent { common: _, guard: true, data_dir: Some(dir), .. } => ha::guard(&dir).await,
        Cmd::Agent { common, node: Some(node), on_host: true, .. } => {
            let file = common.file.as_ref().context("agent --on-host needs the cluster file `up` wrote on the host (-f)")?;
            let spec = read_spec(file)?;
            let state = common.work_dir.clone().unwrap_or_else(|| PathBuf::from(pgrepl_core::hostsvc::agent_state_dir(&spec.name)));
            ha::set_agent_on_host(&node);
            let d = pgrepl_core::onhost::open_on_host(&spec, &node, state)?;
            if d.cluster().witnesses.iter().any(|w| w.name == node) {
                return ha::witness_agent(d, &node).await;
            }
            let d = ha::with_store_records(d)?;
            ha::agent(d, &node).await
        }
        Cmd::Agent { common, node: Some(node), .. } => {
            let (d, _) = open(&common, false).await?;
            ha::agent(d, &node).await
        }
        Cmd::Agent { .. } => anyhow::bail!("agent: --node NAME is required"),
        Cmd::Supervise { pid_file, log, program } => {
            let (bin, args) = program.split_first().context("supervise: a program to run after --")?;
            supervise::supervise(&pid_file, &log, Path::new(bin), args).await
        }
        Cmd::Upgrade { common, minor: true, in_place, no_switch_back, dry_run, .. } => {
            day2::upgrade_minor(&common, day2::mode(!in_place, !no_switch_back), dry_run).await
        }
        Cmd::Upgrade { common, to, finish, link, new_pg_bin, new_pg_client_bin, dry_run, yes, .. } => {
            upgrade::upgrade(&common, upgrade::UpgradeArgs { to, finish, link, new_pg_bin, new_pg_client_bin, dry_run, yes }).await
        }
        Cmd::Pause { common } => {
            let (d, _) = open(&common, false).await?;
            ha::set_paused(&d, true).await?;
            println!("paused: the agents of {} observe only", d.cluster().name);
            Ok(0)
        }
        Cmd::Resume { common } => {
            let (d, _) = open(&common, false).await?;
            ha::set_paused(&d, false).await?;
            println!("resumed: the agents of {} act again", d.cluster().name);
            Ok(0)
        }
        Cmd::Connstr { common } => {
            let (d, _) = open(&common, false).await?;
            let c = pgrepl_core::status::connection_strings(d.cluster());
            match common.output {
                OutputFormat::Text => println!("writes: {}\nreads:  {}", c.read_write, c.read_only),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
            }
            Ok(0)
        }
    }
}

/// One look at the cluster as `status` shows it: the report, the marks worth showing
/// (fenced, diverged, old timeline), and with `[ha]` what the store says.
struct StatusView {
    /// For humans.
    text: String,
    /// For programs.
    json: serde_json::Value,
    /// The exit status: 0 healthy, 1 a problem (or a diverged node).
    code: u8,
}

async fn status_once(d: &Deployment) -> anyhow::Result<StatusView> {
    use std::fmt::Write as _;
    let status = d.status().await;
    let marks: Vec<_> =
        d.ha_marks(&status).await.unwrap_or_default().into_iter().filter(|m| m.fenced || m.diverged || m.old_timeline).collect();
    let (ha_lines, ha_json) = if d.cluster().ha.is_some() { ha::status_lines(d).await } else { (Vec::new(), serde_json::Value::Null) };
    let mut text = status.to_string();
    for m in &marks {
        let _ = writeln!(text, "mark: {}: {}", m.node, m.note);
    }
    for l in &ha_lines {
        let _ = writeln!(text, "{l}");
    }
    let mut json = serde_json::to_value(&status)?;
    json["marks"] = serde_json::to_value(&marks)?;
    if d.cluster().ha.is_some() {
        json["ha"] = ha_json;
    }
    let code = if status.healthy() && marks.iter().all(|m| !m.diverged) { 0 } else { 1 };
    Ok(StatusView { text, json, code })
}

/// `status --watch`: [`status_once`] every `every` (the next refresh starts `every` after
/// the last one started, or at once when it took longer), until Ctrl-C, `count` refreshes
/// or [`WATCH_LIMIT`]. Text is redrawn in place on a terminal and separated by a line
/// otherwise; JSON is one compact object per line, with the refresh's number and time.
/// Returns the last refresh's exit status.
async fn status_watch(d: &Deployment, spec_path: &Path, output: OutputFormat, every: Duration, count: Option<u64>) -> anyhow::Result<u8> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut code = 0;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            r = &mut ctrl_c => { r.context("could not listen for Ctrl-C")?; break; }
            _ = ticks.tick() => {}
        }
        if started.elapsed() >= WATCH_LIMIT {
            eprintln!("status --watch: stopped after 24 hours (its limit); run it again to go on watching");
            break;
        }
        // A refresh waiting on an unreachable node is not waited for after Ctrl-C.
        let view = tokio::select! {
            r = &mut ctrl_c => { r.context("could not listen for Ctrl-C")?; break; }
            v = status_once(d) => v?,
        };
        n += 1;
        code = view.code;
        let now = pgrepl_core::oplock::fmt_utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
        let mut out = std::io::stdout().lock();
        match output {
            OutputFormat::Json => {
                let mut v = view.json;
                v["refresh"] = n.into();
                v["time"] = now.into();
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            }
            OutputFormat::Text => {
                let header = format!("{} every {}s, refresh {n}, {now} (Ctrl-C to stop)", spec_path.display(), every.as_secs_f64());
                if tty {
                    // Home and clear the screen, then draw the whole refresh at once.
                    write!(out, "\x1b[H\x1b[2J{header}\n\n{}", view.text)?;
                } else {
                    if n > 1 {
                        writeln!(out, "{}", "-".repeat(72))?;
                    }
                    write!(out, "{header}\n{}", view.text)?;
                }
            }
        }
        out.flush()?;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(code)
}

/// `render --haproxy`: the HAProxy configuration of an `[ha]` cluster, on stdout or in a
/// file. Needs no PostgreSQL binaries: nothing in it depends on the version.
fn render_haproxy(common: &Common, a: &HaproxyArgs) -> anyhow::Result<u8> {
    if common.output == OutputFormat::Json {
        return Err(UsageError("render --haproxy writes HAProxy's own format: --output json does not apply".into()).into());
    }
    let file = common.file.as_ref().ok_or_else(|| UsageError("render needs a cluster file: pgrepl render -f pgrepl.toml".into()))?;
    let cluster = read_spec(file)?.validate()?;
    let opts =
        pgrepl_core::render::HaproxyOptions { bind: a.bind.clone(), rw_port: a.rw_port, ro_port: a.ro_port, stats_port: a.stats_port };
    let cfg = pgrepl_core::render::haproxy_config(&cluster, &opts)?;
    match &a.out_file {
        None => print!("{cfg}"),
        Some(path) => {
            // Written beside the target, then renamed over it.
            let name = path.file_name().with_context(|| format!("-o {}: not a file name", path.display()))?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".tmp-{}", std::process::id()));
            let tmp = path.with_file_name(tmp_name);
            std::fs::write(&tmp, &cfg).with_context(|| format!("could not write {}", tmp.display()))?;
            if let Err(e) = std::fs::rename(&tmp, path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(anyhow::Error::new(e).context(format!("could not write {}", path.display())));
            }
            eprintln!("wrote {} (check it with `haproxy -c -f {}`)", path.display(), path.display());
        }
    }
    Ok(0)
}

fn print_report<R: std::fmt::Display + serde::Serialize>(common: &Common, report: &R) -> anyhow::Result<()> {
    match common.output {
        OutputFormat::Text => print!("{report}"),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

fn confirm(prompt: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("refusing to destroy without confirmation: stdin is not a terminal (pass --yes)");
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn read_spec(path: &Path) -> anyhow::Result<ClusterSpec> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // A path that names no file is a mistake in the command line, not a failure of
        // this machine.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UsageError(format!("could not read cluster file {}: it does not exist", path.display())).into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {
            return Err(UsageError(format!("could not read cluster file {}: it is a directory", path.display())).into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("could not read cluster file {}", path.display()))),
    };
    ClusterSpec::from_toml(&text).map_err(|e| Error::Spec(e).into())
}

/// The spec of the built-in default cluster: 3 nodes on 127.0.0.1, ports from the first
/// free run of three at or above 5432.
async fn default_spec() -> ClusterSpec {
    let mut base = 5432u16;
    for _ in 0..200 {
        let mut free = true;
        for p in base..base + 3 {
            if port_in_use("127.0.0.1", p).await {
                free = false;
                break;
            }
        }
        if free {
            break;
        }
        base += 3;
    }
    ClusterSpec::builder(DEFAULT_CLUSTER)
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .provider(ProviderSpec::Local(LocalProviderSpec { base_port: Some(base), ..Default::default() }))
        .into_spec()
}

/// Stops the agents on the cluster's hosts (`remove_all`: the etcd members too, and
/// what pgrepl put there), saying which hosts could not be reached.
async fn stop_host_services(d: &Deployment, remove_all: bool) -> anyhow::Result<()> {
    let (stopped, unreachable) = hosts_ha::stop_on_hosts(d, remove_all).await?;
    for s in &stopped {
        tracing::info!("stopped {s}");
    }
    for (h, e) in &unreachable {
        eprintln!("warning: {h} cannot be reached, its pgrepl services were left: {e}");
    }
    Ok(())
}

fn discovery_options(common: &Common) -> DiscoveryOptions {
    DiscoveryOptions { pg_bin: common.pg_bin.clone(), pg_client_bin: common.pg_client_bin.clone(), major: common.pg_version }
}

/// Opens the deployment named by `-f`, or the built-in default (created by `up`).
async fn open(common: &Common, create_default: bool) -> anyhow::Result<(Deployment, PathBuf)> {
    let (spec, path) = match &common.file {
        Some(f) => (read_spec(f)?, f.clone()),
        None => {
            let dir = common.work_dir.clone().unwrap_or_else(|| default_work_dir(DEFAULT_CLUSTER));
            let path = dir.join("pgrepl.toml");
            if path.exists() {
                (read_spec(&path)?, path)
            } else if create_default {
                let mut spec = default_spec().await;
                if let ProviderSpec::Local(l) = &mut spec.provider {
                    l.work_dir = Some(dir.clone());
                }
                std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
                std::fs::write(&path, format!("# The built-in default cluster, written by `pgrepl up`.\n{}", spec.to_toml()))
                    .with_context(|| format!("could not write {}", path.display()))?;
                (spec, path)
            } else {
                return Err(UsageError(format!(
                    "no cluster file given (-f) and no default cluster at {} (run `pgrepl up` to create it)",
                    path.display()
                ))
                .into());
            }
        }
    };
    // `--work-dir` is the local cluster's directory (over the spec's), and for remote
    // providers where the secrets are kept (`<dir>/secrets`).
    let opts = OpenOptions {
        major: common.pg_version,
        pg_bin: common.pg_bin.clone(),
        pg_client_bin: common.pg_client_bin.clone(),
        work_dir: common.work_dir.clone(),
        state_dir: None,
    };
    let backends = backends();
    let d = Deployment::open(&spec, &opts, &backends.iter().map(|b| &**b).collect::<Vec<_>>()).await?;
    // A deployed etcd is reached at its hosts' addresses (EC2: known once they exist).
    let d = if pgrepl_etcd::hosts::deploys_etcd(&d) && d.cluster().nodes.iter().any(|n| n.address.is_none()) {
        d.with_host_addresses(false).await?
    } else {
        d
    };
    // Before the hosts exist, a deployed etcd has no address yet: `up` makes them, then
    // records in the store.
    let unplaced = d.cluster().nodes.iter().any(|n| n.address.is_none());
    let d = if pgrepl_etcd::hosts::deploys_etcd(&d) && unplaced { d } else { ha::with_store_records(d)? };
    Ok((d.with_lock_wait(Duration::from_secs(common.lock_wait)), path))
}

/// The backends of this build: local always, SSH and EC2 with their features (EC2's
/// instances are reached over SSH).
fn backends() -> Vec<Box<dyn Backend>> {
    #[allow(unused_mut)]
    let mut b: Vec<Box<dyn Backend>> = vec![Box::new(LocalBackend)];
    #[cfg(feature = "ssh")]
    b.push(Box::new(pgrepl_ssh::SshBackend));
    #[cfg(feature = "aws")]
    b.push(Box::new(pgrepl_aws::Ec2Backend::new(|r| {
        Ok(std::sync::Arc::new(pgrepl_ssh::SshConnector::new(&r.cluster.name, r.ssh.clone(), r.major)))
    })));
    b
}

fn render(common: &Common, only: Option<&str>) -> anyhow::Result<u8> {
    let file = common.file.as_ref().ok_or_else(|| UsageError("render needs a cluster file: pgrepl render -f pgrepl.toml".into()))?;
    let spec = read_spec(file)?;
    let unversioned = spec.validate()?;
    let major = match (common.pg_version, unversioned.major) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) => discover(&discovery_options(common))?.major,
    };
    let mut spec_for = spec.clone();
    if common.pg_version.is_some() {
        spec_for.postgres = VersionChoice::Major(major);
    }
    let cluster = spec_for.validate_for(major)?;
    let bins = match &common.pg_bin {
        Some(_) => discover(&discovery_options(common))?,
        None => Binaries::assumed(major),
    };
    let mut out = Vec::new();
    for n in &cluster.nodes {
        if only.is_some_and(|o| o != n.name) {
            continue;
        }
        let layout = match &spec.provider {
            ProviderSpec::Local(l) => {
                let wd = common.work_dir.clone().or(l.work_dir.clone()).unwrap_or_else(|| default_work_dir(&spec.name));
                NodeLayout::local(&wd.to_string_lossy(), &n.name, &bins, &l.os_user.clone().unwrap_or_else(default_os_user))
            }
            _ => NodeLayout::debian(major, &format!("/var/lib/postgresql/pgrepl-{}", spec.name)),
        };
        out.push(render_node(&cluster, &n.name, &layout, None)?);
    }
    if let Some(o) = only {
        if out.is_empty() {
            return Err(Error::node(
                o,
                format!("no such node (the cluster has: {})", cluster.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")),
            )
            .into());
        }
    }
    match common.output {
        OutputFormat::Text => {
            for (i, r) in out.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{r}");
            }
            // `[backup] schedule`: run by the agents with `[ha]`; otherwise the line that runs
            // it (cron on the admin machine).
            match (cluster.backup.as_ref().and_then(|b| b.schedule.as_deref()), cluster.ha.is_some()) {
                (Some(s), true) => println!(
                    "\n=== backup schedule \"{s}\" (UTC): taken by the agent of the node holding the leader key, one at a time (no cron line) ==="
                ),
                _ => {
                    if let Some(line) = cluster.backup.as_ref().and_then(|b| {
                        let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
                        pgrepl_core::render::backup_tool::schedule_line(b, &path.to_string_lossy())
                    }) {
                        println!("\n=== backup schedule (/etc/cron.d/pgrepl-{}) ===\n{line}", cluster.name);
                    }
                }
            }
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(0)
}

#[allow(dead_code)]
fn _majors() -> &'static [PgMajor] {
    PgMajor::ALL
}
