//! `backup`: base backup throughput to S3 (moto on loopback) and a restore to a point in
//! time, against the floor measured in the same run with the same binaries.
//!
//! A one-node local PostgreSQL 15 cluster with `[backup] tool = "barman-cloud"` (or
//! `--tool pgbackrest`: pgBackRest 2.45, moto behind the lab's HAProxy terminating TLS
//! with a certificate made here, pgBackRest speaking TLS only), compression off, is
//! deployed through the library and filled with `--mb` MB of rows.
//! Per run:
//!
//! 1. **backup**: `Deployment::take_backup` (barman-cloud-backup, the catalog listed
//!    before and after), MB/s of the data directory's size.
//! 2. **backup floor**: `pg_basebackup -Ft -X fetch` of the same server to local disk,
//!    then the same tar uploaded to the same moto bucket by boto3 (`upload_file`, through
//!    the same TLS proxy with pgBackRest): their sum is the floor.
//! 3. **restore**: `Deployment::restore_into` a new one-node cluster, target the time
//!    after the backup (the newest backup, the archive replayed to that time, promoted).
//! 4. **restore floor**: the tar of step 2 unpacked into a new data directory and
//!    started (its WAL replayed) until it answers.
//!
//! ```text
//! cargo run --release -p pgrepl-benches --bin backup -- [--pg-bin DIR] [--runs N] [--mb MB] [--tool pgbackrest]
//! ```
//!
//! Needs the test lab (`scripts/lab/install.sh`: PostgreSQL 15, moto, Barman's venv). Run
//! as root. Every server and moto started is stopped, the scratch directory removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use pgrepl_benches::{BenchArgs, PgTools, Scratch, chown_pg, free_ports, median, mkdir_pg, path_str, print_environment, run_pg};
use pgrepl_core::ClusterSpec;
use pgrepl_core::backup::{RestoreOptions, Target};
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    common: BenchArgs,
    /// MB of rows to back up.
    #[arg(long, default_value_t = 200)]
    mb: u32,
    /// The backup tool: barman-cloud or pgbackrest.
    #[arg(long, default_value = "barman-cloud")]
    tool: String,
}

fn lab() -> PathBuf {
    std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| "/opt/pgrepl-lab".into())
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy terminating TLS in front of moto (pgBackRest talks to S3 over TLS only), with
/// a self-signed certificate for 127.0.0.1; returns the process and the CA file.
fn tls_proxy(dir: &Path, port: u16, backend: u16) -> Result<(Moto, PathBuf), String> {
    let (cert, key, pem) = (dir.join("s3-cert.pem"), dir.join("s3-key.pem"), dir.join("s3.pem"));
    let o = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1", "-keyout", &path_str(&key), "-out", &path_str(&cert)])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !o.status.success() {
        return Err(format!("openssl: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let mut both = std::fs::read(&cert).map_err(|e| e.to_string())?;
    both.extend(std::fs::read(&key).map_err(|e| e.to_string())?);
    std::fs::write(&pem, both).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
    let cfg = dir.join("s3-haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
             frontend s3\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend moto\nbackend moto\n  server moto 127.0.0.1:{backend}\n",
            pem.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("/usr/sbin/haproxy")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("haproxy: {e}"))?;
    Ok((Moto(child), cert))
}

fn python(script: &str, args: &[&str], creds: &Path) -> Result<(), String> {
    let o = Command::new(lab().join("venv/bin/python"))
        .args(["-c", script])
        .args(args)
        .env("AWS_SHARED_CREDENTIALS_FILE", creds)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
}

/// Where the tool stores: its endpoint, and for pgBackRest the proxy's CA.
struct Store {
    tool: String,
    endpoint: String,
    ca: Option<PathBuf>,
}

fn spec(name: &str, work: &Path, port: u16, store: &Store, bucket: &str, creds: &Path) -> String {
    let tool_lines = match &store.ca {
        Some(ca) => format!("tool = \"pgbackrest\"\nca_file = \"{}\"\n", ca.display()),
        None => format!("tool = \"barman-cloud\"\nbin_dir = \"{}\"\n", lab().join("barman/bin").display()),
    };
    format!(
        "name = \"{name}\"\npostgres = \"15\"\n[backup]\n{tool_lines}bucket = \"{bucket}\"\nregion = \"us-east-1\"\n\
         endpoint = \"{}\"\ncredentials_file = \"{}\"\ncompression = \"none\"\n\
         [provider]\nkind = \"local\"\nwork_dir = \"{}\"\nbase_port = {port}\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n",
        store.endpoint,
        creds.display(),
        work.display()
    )
}

async fn open(text: &str, pg: &PgTools) -> Result<Deployment, String> {
    let s = ClusterSpec::from_toml(text).map_err(|e| e.to_string())?;
    let opts = OpenOptions {
        pg_bin: Some(PathBuf::from(&pg.b.bin_dir)),
        pg_client_bin: Some(PathBuf::from(&pg.b.client_bin_dir)),
        ..Default::default()
    };
    Deployment::open(&s, &opts, &[&LocalBackend]).await.map_err(|e| e.to_string())
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

async fn bench(a: &Args) -> Result<(), String> {
    let pg = PgTools::discover(&a.common.pg_bin_or_lab("15"), a.common.pg_client_bin.as_deref())?;
    print_environment(&pg.b);
    let env = pg.env_ref();
    let scratch = Scratch::new("pgrepl-bench-backup", Path::new(&pg.b.bin_dir), &env)?;
    let creds = scratch.path.join("aws-credentials");
    std::fs::write(&creds, "[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n").map_err(|e| e.to_string())?;
    chown_pg(&creds)?;
    let mport = free_ports(24000, 1).ok_or("no free port")?;
    let log = std::fs::File::create(scratch.path.join("moto.log")).map_err(|e| e.to_string())?;
    let _moto = Moto(
        Command::new(lab().join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &mport.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("moto_server: {e}"))?,
    );
    let endpoint = format!("http://127.0.0.1:{mport}");
    let (_proxy, store) = match a.tool.as_str() {
        "barman-cloud" => (None, Store { tool: a.tool.clone(), endpoint: endpoint.clone(), ca: None }),
        "pgbackrest" => {
            let pport = free_ports(24050, 1).ok_or("no free port")?;
            let (p, ca) = tls_proxy(&scratch.path, pport, mport)?;
            (Some(p), Store { tool: a.tool.clone(), endpoint: format!("https://127.0.0.1:{pport}"), ca: Some(ca) })
        }
        other => return Err(format!("--tool {other}: barman-cloud or pgbackrest")),
    };
    println!("tool: {} (endpoint {})", store.tool, store.endpoint);
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in [mport].into_iter().chain(store.ca.as_ref().map(|_| store.endpoint.rsplit(':').next().unwrap_or("0").parse().unwrap_or(0))) {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("nothing answers on 127.0.0.1:{p}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let bucket = "pgrepl-bench";
    python(
        "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
        &[&endpoint, bucket],
        &creds,
    )?;
    // The floor's upload goes where the tool's does (through the TLS proxy for pgBackRest).
    let verify = store.ca.as_ref().map(|c| path_str(c)).unwrap_or_else(|| "none".into());
    let port = free_ports(24100, 1).ok_or("no free port")?;
    let work = scratch.path.join("src");
    let d = open(&spec("bench-src", &work, port, &store, bucket, &creds), &pg).await?;
    d.up(&NoProgress).await.map_err(|e| e.to_string())?;
    let socket = work.join("db1/run");
    pg.psql(
        &socket,
        port,
        &format!("CREATE TABLE fill AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, {}) g", a.mb as u64 * 3000),
    )
    .await?;
    pg.psql(&socket, port, "CHECKPOINT").await?;

    let (mut ours, mut floor, mut restore, mut restore_floor) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=a.common.runs {
        // 1. pgrepl's backup.
        let t = Instant::now();
        let b = d.take_backup(None).await.map_err(|e| e.to_string())?;
        let ours_s = secs(t);
        let mb = b.size_bytes as f64 / 1e6;
        // 2. floor: pg_basebackup -Ft to local disk, then the same bytes to moto with boto3.
        let tar_dir = scratch.path.join(format!("tar{run}"));
        mkdir_pg(&tar_dir)?;
        let t = Instant::now();
        run_pg(
            &pg.client("pg_basebackup"),
            &[
                "-h",
                &path_str(&socket),
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-D",
                &path_str(&tar_dir),
                "-Ft",
                "-X",
                "fetch",
                "-c",
                "fast",
            ],
            &env,
            Duration::from_secs(1800),
        )?;
        let basebackup_s = secs(t);
        let tar = tar_dir.join("base.tar");
        let t = Instant::now();
        python(
            "import boto3,sys; v = None if sys.argv[4] == 'none' else sys.argv[4]\n\
             boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', verify=v).upload_file(sys.argv[3], sys.argv[2], 'floor/base.tar')",
            &[&store.endpoint, bucket, &path_str(&tar), &verify],
            &creds,
        )?;
        let upload_s = secs(t);
        let floor_s = basebackup_s + upload_s;
        println!(
            "run {run}: backup {mb:.0} MB: pgrepl {ours_s:.2} s ({:.1} MB/s) | floor {floor_s:.2} s ({:.1} MB/s: pg_basebackup -Ft {basebackup_s:.2} s + boto3 upload {upload_s:.2} s) | ratio {:.2}",
            mb / ours_s,
            mb / floor_s,
            ours_s / floor_s
        );
        ours.push(ours_s);
        floor.push(floor_s);
        // 3. restore to a time after the backup into a new cluster.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let target = time::OffsetDateTime::now_utc();
        // A commit after the target (recovery stops there) and its WAL archived.
        pg.psql(&socket, port, "CREATE TABLE IF NOT EXISTS after_target (i int); INSERT INTO after_target VALUES (1)").await?;
        let closed = pg.psql(&socket, port, "SELECT pg_walfile_name(pg_switch_wal())").await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let last = pg.psql(&socket, port, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
            if last.len() == 24 && last[8..] >= closed[8..] {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{closed} not archived within 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rport = free_ports(24200 + run * 10, 1).ok_or("no free port")?;
        let nd = open(&spec(&format!("bench-r{run}"), &scratch.path.join(format!("r{run}")), rport, &store, bucket, &creds), &pg).await?;
        let t = Instant::now();
        let r = d.restore_into(Target::Time(target), &nd, &RestoreOptions::default()).await.map_err(|e| e.to_string())?;
        let restore_s = secs(t);
        nd.down(&NoProgress).await.map_err(|e| e.to_string())?;
        // 4. floor: unpack the tar and start it (its WAL replayed) until it answers.
        let fdir = scratch.path.join(format!("floor{run}"));
        mkdir_pg(&fdir)?;
        let fport = free_ports(24300 + run * 10, 1).ok_or("no free port")?;
        let t = Instant::now();
        run_pg(Path::new("/bin/tar"), &["-xf", &path_str(&tar), "-C", &path_str(&fdir)], &[], Duration::from_secs(1800))?;
        let _ = std::fs::remove_file(fdir.join("pgrepl.conf"));
        std::fs::write(
            fdir.join("pgrepl.conf"),
            format!("port = {fport}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n", path_str(&fdir)),
        )
        .map_err(|e| e.to_string())?;
        chown_pg(&fdir.join("pgrepl.conf"))?;
        run_pg(
            &pg.server("pg_ctl"),
            &["-D", &path_str(&fdir), "-l", &path_str(&fdir.join("log")), "-w", "-t", "600", "start"],
            &env,
            Duration::from_secs(660),
        )?;
        pg.psql(&fdir, fport, "SELECT 1").await?;
        let restore_floor_s = secs(t);
        run_pg(&pg.server("pg_ctl"), &["-D", &path_str(&fdir), "-m", "immediate", "-w", "stop"], &env, Duration::from_secs(60))?;
        println!(
            "run {run}: restore to a time: pgrepl {restore_s:.2} s (download {:.2} s, replay and promote {:.2} s) | floor {restore_floor_s:.2} s (tar -x + start) | ratio {:.2}",
            r.download_seconds,
            r.recovery_seconds,
            restore_s / restore_floor_s
        );
        restore.push(restore_s);
        restore_floor.push(restore_floor_s);
        let _ = std::fs::remove_dir_all(&tar_dir);
    }
    println!(
        "median: backup {:.2} s vs floor {:.2} s ({:.2}x); restore {:.2} s vs floor {:.2} s ({:.2}x)",
        median(&ours),
        median(&floor),
        median(&ours) / median(&floor),
        median(&restore),
        median(&restore_floor),
        median(&restore) / median(&restore_floor)
    );
    d.down(&NoProgress).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let a = Args::parse();
    match bench(&a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backup: {e}");
            ExitCode::FAILURE
        }
    }
}
