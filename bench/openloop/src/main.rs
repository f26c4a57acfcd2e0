//! Open-loop HTTP load generator: latency at a fixed request rate, below saturation.
//!
//!   openloop --url http://127.0.0.1:9100/v1/chat/completions --rate 4000 [--connections 10]
//!            [--duration 10] [--warmup 1] [--method POST] [--body '{...}']
//!            [--header 'Authorization: Bearer k']... [--spin-us 30]
//!
//! Why not wrk: a closed loop (each connection sends its next request when the previous answer
//! arrives) at c=10 keeps a one-core server saturated, so its latency is c / throughput, pure
//! queueing; and wrk's `delay()` pacing has millisecond timer granularity, so paced connections
//! fire together and queue behind each other. Here each connection runs its own Poisson process
//! at rate R/C (exponential gaps; their superposition is Poisson at R), on a schedule fixed in
//! advance and independent of the answers: the open loop that real independent users make.
//!
//! Coordinated omission: a connection carries one request at a time, so when an answer is late
//! the next request goes out late too. Its latency is measured from when it was *scheduled*, not
//! from when it was sent, so the server's stall is charged to every request it delayed (as wrk2
//! and HdrHistogram's author prescribe), not hidden by the generator politely waiting.
//!
//! Output: one `RESULT rate=… achieved=… p50=… … errors=…` line on stdout (latency in ms), and a
//! human line on stderr with the generator's own health: how late it woke up (its timer error
//! is part of every latency it reports) and its CPU time.

mod http;

use std::io::{self, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::{ResponseReader, Target, build_request};

struct Args {
    url: String,
    rate: f64,
    connections: usize,
    duration: f64,
    warmup: f64,
    method: Option<String>,
    body: Option<String>,
    headers: Vec<String>,
    spin_us: u64,
}

const USAGE: &str = "usage: openloop --url http://HOST:PORT/PATH --rate REQ_PER_S [--connections 10] \
    [--duration 10] [--warmup 1] [--method GET|POST] [--body JSON] [--header 'Name: value']... [--spin-us 30]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        rate: 0.0,
        connections: 10,
        duration: 10.0,
        warmup: 1.0,
        method: None,
        body: None,
        headers: Vec::new(),
        spin_us: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--rate" => args.rate = number(&value)?,
            "--connections" => args.connections = number(&value)? as usize,
            "--duration" => args.duration = number(&value)?,
            "--warmup" => args.warmup = number(&value)?,
            "--method" => args.method = Some(value),
            "--body" => args.body = Some(value),
            "--header" => args.headers.push(value),
            "--spin-us" => args.spin_us = number(&value)? as u64,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.url.is_empty() || args.rate <= 0.0 || args.connections == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        return Err(format!("--url and a positive --rate, --connections and --duration are needed\n{USAGE}"));
    }
    Ok(args)
}

/// Everything one connection's thread measured.
struct Stats {
    /// Scheduled send → last byte of the answer, ns.
    latency: Histogram<u64>,
    /// Scheduled send → first byte of the answer, ns.
    ttfb: Histogram<u64>,
    /// Actual wake-up − scheduled send, ns, for the requests whose time came while the
    /// connection was idle: the generator's own timer error.
    wake: Histogram<u64>,
    /// Answers (2xx) to requests scheduled inside the measured window.
    ok: u64,
    /// Body bytes of those answers (de-chunked): a check that the whole answer was read.
    body_bytes: u64,
    /// Non-2xx answers and connection errors, warm-up included.
    errors: u64,
    /// Requests scheduled in the window but never sent: the target fell behind by more than
    /// the grace period at the end.
    unsent: u64,
}

impl Stats {
    fn new() -> Self {
        Self { latency: histogram(), ttfb: histogram(), wake: histogram(), ok: 0, body_bytes: 0, errors: 0, unsent: 0 }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sleeps until `deadline` to within a few µs. The kernel's default timer slack (50 µs for a
/// normal thread) lets it defer a wake-up to batch timers, so it is set to 1 ns; sleep still
/// overshoots by the wake-up latency, so the last `spin` is busy-waited. The spin costs CPU on the
/// core the generator shares with the upstream, hence short and tunable.
fn sleep_until(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline > now + spin {
        thread::sleep(deadline - now - spin);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

fn set_timer_slack_1ns() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers and changes only this thread's slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

struct Plan {
    target: Target,
    request: Vec<u8>,
    /// Each connection's rate, requests per second.
    rate: f64,
    start: Instant,
    /// Requests scheduled from here on are recorded.
    measure_from: Instant,
    /// No request is scheduled from here on.
    end: Instant,
    spin: Duration,
}

/// After `end`, requests scheduled before it are still sent for this long (a connection may be a
/// little behind), then abandoned and counted as unsent.
const GRACE: Duration = Duration::from_secs(1);

/// The time to the next arrival of a Poisson process at `rate` per second.
fn exponential_gap(rng: &mut fastrand::Rng, rate: f64) -> Duration {
    // 1 - f64() is in (0, 1], so the log is finite.
    Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / rate)
}

fn connect(target: &Target) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    // A hung server is an error on that request, not a hung benchmark.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

fn run_connection(plan: &Plan) -> Stats {
    set_timer_slack_1ns();
    let mut stats = Stats::new();
    let mut rng = fastrand::Rng::new();
    let mut gap = || exponential_gap(&mut rng, plan.rate);
    let mut conn = connect(&plan.target).ok();
    let mut reader = ResponseReader::new();
    let mut scheduled = plan.start + gap();
    while scheduled < plan.end {
        let now = Instant::now();
        if now > plan.end + GRACE {
            while scheduled < plan.end {
                stats.unsent += u64::from(scheduled >= plan.measure_from);
                scheduled += gap();
            }
            break;
        }
        if scheduled > now {
            sleep_until(scheduled, plan.spin);
            stats.wake.saturating_record(ns(Instant::now() - scheduled).max(1));
        }
        // Else the previous answer came late: send at once, the delay counts as latency.
        let measured = scheduled >= plan.measure_from;
        match call(&mut conn, &mut reader, plan) {
            Ok((status, body_len, first_byte, done)) if (200..300).contains(&status) => {
                if measured {
                    stats.latency.saturating_record(ns(done - scheduled).max(1));
                    stats.ttfb.saturating_record(ns(first_byte - scheduled).max(1));
                    stats.ok += 1;
                    stats.body_bytes += body_len as u64;
                }
            }
            Ok(_) => stats.errors += 1,
            Err(_) => {
                stats.errors += 1;
                conn = None;
                reader = ResponseReader::new();
            }
        }
        scheduled += gap();
    }
    stats
}

/// One request on the keep-alive connection, (re)connecting first if there is none. Returns the
/// status, the body's length and when the first and the last byte of the answer arrived.
fn call(
    conn: &mut Option<TcpStream>,
    reader: &mut ResponseReader,
    plan: &Plan,
) -> io::Result<(u16, usize, Instant, Instant)> {
    let stream = match conn {
        Some(stream) => stream,
        None => conn.insert(connect(&plan.target)?),
    };
    stream.write_all(&plan.request)?;
    let response = reader.read_response(stream)?;
    let done = Instant::now();
    if response.close {
        *conn = None;
        *reader = ResponseReader::new();
    }
    Ok((response.status, response.body_len, response.first_byte, done))
}

/// CPU seconds (user + system) of the whole process so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; it is zeroed and of the right type.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let target = match Target::parse(&args.url) {
        Ok(target) => target,
        Err(msg) => {
            eprintln!("openloop: {msg}");
            return ExitCode::from(2);
        }
    };
    let method = args.method.unwrap_or_else(|| if args.body.is_some() { "POST" } else { "GET" }.to_string());
    let request = build_request(&method, &target, &args.headers, args.body.as_deref());
    // Leave the threads time to start and connect before the first scheduled request.
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        target,
        request,
        rate: args.rate / args.connections as f64,
        start,
        measure_from,
        end: measure_from + Duration::from_secs_f64(args.duration),
        spin: Duration::from_micros(args.spin_us),
    });
    let cpu_before = cpu_seconds();
    let threads: Vec<_> = (0..args.connections)
        .map(|_| {
            let plan = Arc::clone(&plan);
            thread::spawn(move || run_connection(&plan))
        })
        .collect();
    let mut total = Stats::new();
    for handle in threads {
        let Ok(stats) = handle.join() else {
            eprintln!("openloop: a connection thread panicked");
            return ExitCode::FAILURE;
        };
        // The histograms share bounds, so adding cannot fail.
        let _ = total.latency.add(&stats.latency);
        let _ = total.ttfb.add(&stats.ttfb);
        let _ = total.wake.add(&stats.wake);
        total.ok += stats.ok;
        total.body_bytes += stats.body_bytes;
        total.errors += stats.errors;
        total.unsent += stats.unsent;
    }
    let cpu = cpu_seconds() - cpu_before;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let (lat, ttfb, wake) = (&total.latency, &total.ttfb, &total.wake);
    println!(
        "RESULT rate={:.0} achieved={:.0} p50={:.3} p90={:.3} p99={:.3} p999={:.3} max={:.3} \
         ttfb_p50={:.3} ttfb_p99={:.3} errors={}",
        args.rate,
        total.ok as f64 / args.duration,
        ms(lat, 0.5),
        ms(lat, 0.9),
        ms(lat, 0.99),
        ms(lat, 0.999),
        lat.max() as f64 / 1e6,
        ms(ttfb, 0.5),
        ms(ttfb, 0.99),
        total.errors,
    );
    eprintln!(
        "openloop: {} ok in {:.1}s ({} body bytes each on average), {} errors, {} unsent; generator woke late by p50 {:.1} µs, \
         p99 {:.1} µs, max {:.1} µs; its CPU {:.0}% of one core",
        total.ok,
        args.duration,
        total.body_bytes / total.ok.max(1),
        total.errors,
        total.unsent,
        wake.value_at_quantile(0.5) as f64 / 1e3,
        wake.value_at_quantile(0.99) as f64 / 1e3,
        wake.max() as f64 / 1e3,
        100.0 * cpu / (args.warmup + args.duration),
    );
    // A run that measured only errors still succeeds: its RESULT line says so, and a script
    // running several scenarios goes on to the next.
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of arrivals per window of a Poisson process have mean and variance both equal to
    /// rate × window; a fixed seed keeps the test deterministic.
    #[test]
    fn arrivals_are_poisson_at_the_requested_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (rate, window, windows) = (400.0, Duration::from_millis(100), 5_000);
        let mut t = exponential_gap(&mut rng, rate);
        let mut counts = vec![0u32; windows];
        while t < window * windows as u32 {
            counts[(t.as_nanos() / window.as_nanos()) as usize] += 1;
            t += exponential_gap(&mut rng, rate);
        }
        let expected = rate * window.as_secs_f64();
        let mean = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / windows as f64;
        let variance = counts.iter().map(|&c| (f64::from(c) - mean).powi(2)).sum::<f64>() / windows as f64;
        assert!((mean - expected).abs() < 0.02 * expected, "mean {mean}, expected {expected}");
        assert!((variance - expected).abs() < 0.1 * expected, "variance {variance}, expected {expected}");
    }
}
