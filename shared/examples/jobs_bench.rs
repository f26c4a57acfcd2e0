//! Background-jobs benchmark on PostgreSQL (run by `bench/jobs.sh`).
//!
//! ```text
//! jobs_bench throughput --url ADMIN_URL [--jobs 50000] [--workers 1] [--concurrency 16] [--batch 64]
//! jobs_bench latency    --url ADMIN_URL [--jobs 1000] [--gap-ms 5]
//! ```
//!
//! Each run creates a scratch database on the server of `ADMIN_URL` (a role that may CREATE
//! DATABASE) and drops it at the end. Worker processes are this binary run again (`worker`),
//! each with its own pool, as in production.
//!
//! - `throughput`: enqueues `--jobs` no-op jobs, starts `--workers` processes, and times from
//!   the moment they are told to start until the queue is empty.
//! - `latency`: one worker process with a one-minute poll interval (so only `LISTEN/NOTIFY`
//!   wakes it) and jobs enqueued one at a time, each in its own transaction, `--gap-ms` apart;
//!   the worker reports enqueue-to-start latency (job creation time to handler start).
#![allow(clippy::print_stdout)]

use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use serde::{Deserialize, Serialize};
use shared::config::{DatabaseConfig, DatabaseOverride, DomainDatabase, PoolConfig};
use shared::db::Db;
use shared::jobs::{
    EnqueueOptions, Handler, Job, JobContext, JobError, Jobs, JobsConfig, JobsObserver, NoObserver, Registry, Worker,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// No run goes on longer than this.
const DEADLINE: Duration = Duration::from_secs(300);

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const KIND: &'static str = "bench.noop";
}

/// Job number and start time (wall clock, µs since the epoch) of each job.
type Starts = Arc<Mutex<Vec<(u64, i64)>>>;

/// Does nothing; in the latency run, remembers when each job started.
#[derive(Debug, Default)]
struct NoopHandler {
    starts: Option<Starts>,
}

#[async_trait]
impl Handler<Noop> for NoopHandler {
    async fn handle(&self, job: Noop, _ctx: &JobContext) -> Result<(), JobError> {
        if let Some(starts) = &self.starts {
            let now = chrono::Utc::now().timestamp_micros();
            starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((job.n, now));
        }
        Ok(())
    }
}

/// Collects pickup latencies and says when `expected` jobs have started.
#[derive(Debug)]
struct Latencies {
    seconds: Mutex<Vec<f64>>,
    expected: usize,
    done: tokio::sync::Notify,
}

impl JobsObserver for Latencies {
    fn pickup_latency(&self, _domain: &str, _queue: &str, seconds: f64) {
        let mut all = self.seconds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.push(seconds);
        if all.len() >= self.expected {
            self.done.notify_one();
        }
    }
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let mut options = HashMap::new();
    while let Some(key) = args.next() {
        let key = key.strip_prefix("--").ok_or_else(|| format!("unexpected argument {key}"))?.to_owned();
        options.insert(key, args.next().ok_or("an option without a value")?);
    }
    let get = |key: &str, default: u64| -> Result<u64, Error> {
        Ok(options.get(key).map(|v| v.parse()).transpose()?.unwrap_or(default))
    };
    let url = options.get("url").cloned().unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into());
    match mode.as_str() {
        "throughput" => {
            throughput(&url, get("jobs", 50_000)?, get("workers", 1)?, get("concurrency", 16)?, get("batch", 64)?)
        }
        "latency" => latency(&url, get("jobs", 1_000)?, get("gap-ms", 5)?),
        "worker" => worker(&url, get("concurrency", 16)?, get("batch", 64)?, get("poll-ms", 1_000)?, get("expect", 0)?),
        _ => Err("usage: jobs_bench throughput|latency --url POSTGRES_ADMIN_URL [options]".into()),
    }
}

/// A scratch database, dropped at the end.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    fn create(admin: &str) -> Result<Self, Error> {
        let name = format!("keel_bench_jobs_{}", uuid::Uuid::now_v7().simple());
        PgConnection::establish(admin)?.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
        let (base, query) = admin.split_once('?').map_or((admin, ""), |(b, q)| (b, q));
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_end..].find('/') {
            Some(slash) => &base[..authority_end + slash],
            None => base,
        };
        let url = if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") };
        Ok(Self { admin: admin.to_owned(), name, url })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

fn settings(url: &str, pool: u32) -> Result<DomainDatabase, Error> {
    let config = DatabaseConfig {
        url: url.into(),
        pool: PoolConfig { max_size: pool, min_idle: Some(2), ..PoolConfig::default() },
        ..DatabaseConfig::default()
    };
    Ok(config.for_domain("bench", &DatabaseOverride::default())?)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// A worker process, spoken to over its stdin and stdout.
struct WorkerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl WorkerProcess {
    fn spawn(args: &[String]) -> Result<Self, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    fn expect_line(&mut self, prefix: &str) -> Result<String, Error> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(format!("worker exited before saying {prefix:?}").into());
            }
            if line.starts_with(prefix) {
                return Ok(line.trim_end().to_owned());
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")?;
        Ok(stdin.flush()?)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Closing stdin asks for a graceful stop; a worker still there after 10 s is killed.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn throughput(admin: &str, jobs: u64, workers: u64, concurrency: u64, batch: u64) -> Result<(), Error> {
    let scratch = Scratch::create(admin)?;
    let rt = runtime()?;
    let settings = settings(&scratch.url, 4)?;
    let db = Db::connect(&settings)?;
    shared::jobs::migrate(&db)?;
    let queue = Jobs::new(db.clone(), &settings);
    let started = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(5_000) {
        let chunk: Vec<Noop> = chunk.iter().map(|&n| Noop { n }).collect();
        let queue = queue.clone();
        rt.block_on(db.transaction(move |conn| queue.enqueue_many(conn, &chunk, EnqueueOptions::default())))?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    // ANALYZE as autovacuum would, so that the claim's plan is the one of a settled table.
    rt.block_on(db.run(|conn| {
        Ok::<_, shared::db::DbError>(diesel::connection::SimpleConnection::batch_execute(conn, "ANALYZE keel_jobs")?)
    }))?;

    let args = [
        "--url".into(),
        scratch.url.clone(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--batch".into(),
        batch.to_string(),
        "--poll-ms".into(),
        "1000".into(),
    ];
    let mut children = (0..workers).map(|_| WorkerProcess::spawn(&args)).collect::<Result<Vec<_>, _>>()?;
    for child in &mut children {
        child.expect_line("waiting")?;
    }
    let start = Instant::now();
    for child in &mut children {
        child.say("go")?;
    }
    let remaining = |db: &Db| -> Result<bool, Error> {
        let any = rt.block_on(db.run(|conn| {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Any {
                #[diesel(sql_type = diesel::sql_types::Bool)]
                any: bool,
            }
            Ok::<_, shared::db::DbError>(
                diesel::sql_query("SELECT EXISTS (SELECT 1 FROM keel_jobs) AS any").get_result::<Any>(conn)?.any,
            )
        }))?;
        Ok(any)
    };
    while remaining(&db)? {
        if start.elapsed() > DEADLINE {
            return Err("the queue did not drain in time".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(children);
    println!(
        "throughput  workers={workers} concurrency={concurrency} batch={batch}  {jobs} no-op jobs in {secs:.2} s  = {:.0} jobs/s   (enqueue: {:.0} jobs/s)",
        jobs as f64 / secs,
        jobs as f64 / enqueue_secs
    );
    Ok(())
}

fn latency(admin: &str, jobs: u64, gap_ms: u64) -> Result<(), Error> {
    let scratch = Scratch::create(admin)?;
    let rt = runtime()?;
    let settings = settings(&scratch.url, 2)?;
    let db = Db::connect(&settings)?;
    shared::jobs::migrate(&db)?;
    let queue = Jobs::new(db, &settings);
    // A one-minute poll: pickup within the run needs LISTEN/NOTIFY.
    let args =
        ["--url".into(), scratch.url.clone(), "--poll-ms".into(), "60000".into(), "--expect".into(), jobs.to_string()];
    let mut child = WorkerProcess::spawn(&args)?;
    child.expect_line("waiting")?;
    child.say("go")?;
    child.expect_line("ready")?;
    let start = Instant::now();
    let mut commits = Vec::new();
    let mut committed_at = HashMap::new();
    for n in 0..jobs {
        let enqueue = Instant::now();
        rt.block_on(queue.push(Noop { n }, EnqueueOptions::default()))?;
        committed_at.insert(n, chrono::Utc::now().timestamp_micros());
        commits.push(enqueue.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(gap_ms));
        if start.elapsed() > DEADLINE {
            return Err("latency run took too long".into());
        }
    }
    let line = child.expect_line("latency")?;
    println!("{line}   ({jobs} jobs enqueued one per transaction, {gap_ms} ms apart, poll interval 60 s)");
    println!(
        "          of which the enqueue transaction itself (insert, notify, commit): p50 {:.2} ms  p99 {:.2} ms",
        percentile(&mut commits, 0.50) * 1e3,
        percentile(&mut commits, 0.99) * 1e3
    );
    // The pickup itself: from the moment the enqueuer's commit returned to the handler's start
    // (the notification leaves at commit, so a start can even come first: counted as 0).
    let starts = child.expect_line("starts")?;
    let mut after_commit = Vec::new();
    for pair in starts.split_whitespace().skip(1) {
        let (n, at) = pair.split_once(':').ok_or("malformed starts line")?;
        if let Some(committed) = committed_at.get(&n.parse::<u64>()?) {
            after_commit.push((at.parse::<i64>()? - committed).max(0) as f64 / 1e6);
        }
    }
    println!(
        "latency  commit-to-start    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  over {} jobs",
        percentile(&mut after_commit, 0.50) * 1e3,
        percentile(&mut after_commit, 0.99) * 1e3,
        percentile(&mut after_commit, 1.0) * 1e3,
        after_commit.len()
    );

    Ok(())
}

fn worker(url: &str, concurrency: u64, batch: u64, poll_ms: u64, expect: u64) -> Result<(), Error> {
    let rt = runtime()?;
    rt.block_on(async {
        let settings = settings(url, 8)?;
        let db = Db::connect(&settings)?;
        let jobs = Jobs::new(db, &settings);
        let mut registry = Registry::new();
        let starts: Starts = Arc::new(Mutex::new(Vec::new()));
        registry.register::<Noop>(NoopHandler { starts: (expect > 0).then(|| starts.clone()) })?;
        let config = JobsConfig {
            poll_interval_ms: poll_ms,
            concurrency: u32::try_from(concurrency)?,
            batch_size: u32::try_from(batch)?,
            ..JobsConfig::default()
        };
        let latencies = Arc::new(Latencies {
            seconds: Mutex::new(Vec::new()),
            expected: usize::try_from(expect)?,
            done: tokio::sync::Notify::new(),
        });
        let observer: Arc<dyn JobsObserver> = if expect > 0 { latencies.clone() } else { Arc::new(NoObserver) };
        // stdin: a "go" line starts the worker; closing stdin stops it.
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        let closed = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::stdin().lock().lines();
            let _ = lines.next();
            let _ = go_tx.send(());
            for _ in lines {}
        });
        println!("waiting");
        go_rx.await?;
        let handle = Worker::start(&jobs, registry, &config, observer)?;
        handle.ready().await;
        println!("ready");
        if expect > 0 {
            tokio::time::timeout(DEADLINE, latencies.done.notified()).await?;
            let mut all = latencies.seconds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            println!(
                "latency  enqueue-to-start  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  over {} jobs",
                percentile(&mut all, 0.50) * 1e3,
                percentile(&mut all, 0.99) * 1e3,
                percentile(&mut all, 1.0) * 1e3,
                all.len()
            );
            // The observer hears of a pickup just before the handler runs: let the last one run.
            for _ in 0..1_000 {
                if starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() >= latencies.expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let starts = starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let pairs: Vec<String> = starts.iter().map(|(n, at)| format!("{n}:{at}")).collect();
            println!("starts {}", pairs.join(" "));
        } else {
            closed.await?;
        }
        handle.shutdown().await;
        Ok::<_, Error>(())
    })
}

/// The `q` quantile (nearest rank) of `values`; 0 for none.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (values.len() as f64 * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}
