//! Load generator for `tiermap-server` (used by `scripts/loadtest.sh`).
//!
//! `load --addr 127.0.0.1:PORT [--pid PID] [--duration SECS] [--concurrency N]
//! [--max-requests N] [--key-space N] [--huge-keys N] [--huge-every SECS]`
//!
//! 1. Small requests for 40% of `--duration` (each phase also stops at `--max-requests`):
//!    `--concurrency` keep-alive connections, each sending 75% `GET /lookup/kN` (N drawn from
//!    `--key-space`) and 25% small `POST /ingest` (5 to 50 keys). Prints throughput and latency
//!    percentiles per kind of request.
//! 2. One huge ingest (`--huge-keys` keys) on a quiet server, with the server's held memory
//!    (`/stats`) and RSS (`/proc/PID/status`) before, during (the peak seen by polling every
//!    2 ms) and after.
//! 3. The same small requests for the rest of `--duration`, plus a huge ingest every
//!    `--huge-every` seconds on its own connection.
//! 4. `POST /admin/clear`, then `POST /admin/clear?trim=true`, and the memory after each.
//!
//! It only talks to the address it is given, which must be a loopback address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::Value;
use tiermap_server::client::{pid_status_bytes, Conn, Error, Reply};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    addr: SocketAddr,
    pid: Option<u32>,
    duration: Duration,
    concurrency: usize,
    max_requests: u64,
    key_space: u64,
    huge_keys: usize,
    huge_every: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        pid: None,
        duration: Duration::from_secs(20),
        concurrency: 8,
        max_requests: 2_000_000,
        key_space: 100_000,
        huge_keys: 150_000,
        huge_every: Duration::from_secs(6),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--addr" => addr = Some(value.parse::<SocketAddr>().map_err(|_| bad(()))?),
            "--pid" => args.pid = Some(value.parse().map_err(|_| bad(()))?),
            "--duration" => {
                args.duration = Duration::from_secs_f64(value.parse().map_err(|_| bad(()))?)
            }
            "--concurrency" => args.concurrency = value.parse().map_err(|_| bad(()))?,
            "--max-requests" => args.max_requests = value.parse().map_err(|_| bad(()))?,
            "--key-space" => args.key_space = value.parse().map_err(|_| bad(()))?,
            "--huge-keys" => args.huge_keys = value.parse().map_err(|_| bad(()))?,
            "--huge-every" => {
                args.huge_every = Duration::from_secs_f64(value.parse().map_err(|_| bad(()))?)
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    args.addr = addr.ok_or("--addr is required")?;
    if !args.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", args.addr));
    }
    if args.concurrency == 0 || args.key_space == 0 {
        return Err("--concurrency and --key-space must be positive".into());
    }
    if args.duration > Duration::from_secs(600) {
        return Err("--duration is capped at 600 s".into());
    }
    Ok(args)
}

/// xorshift64*: enough for picking keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn object(keys: impl Iterator<Item = (String, i64)>) -> Bytes {
    let mut body = String::from("{");
    for (i, (key, value)) in keys.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("\"{key}\":{value}"));
    }
    body.push('}');
    Bytes::from(body)
}

fn huge_body(keys: usize) -> Bytes {
    object((0..keys).map(|i| (format!("huge-key-{i:08}"), (i % 1000) as i64)))
}

#[derive(Default)]
struct Kind {
    latencies_us: Vec<u32>,
    errors: u64,
    non_2xx: u64,
}

impl Kind {
    fn record(&mut self, started: Instant, result: &Result<Reply, Error>) {
        self.latencies_us
            .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        match result {
            Ok(reply) if reply.status.is_success() => {}
            Ok(_) => self.non_2xx += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Kind) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.non_2xx += other.non_2xx;
    }

    fn line(&mut self, name: &str, elapsed: Duration) -> String {
        let n = self.latencies_us.len();
        if n == 0 {
            return format!("{name:<14} {n:>8}");
        }
        self.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            ms(self.latencies_us[i])
        };
        format!(
            "{name:<14} {n:>8} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            n as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(0.999),
            ms(self.latencies_us[n - 1]),
            if self.errors + self.non_2xx > 0 {
                format!("{} errors, {} non-2xx", self.errors, self.non_2xx)
            } else {
                String::new()
            }
        )
    }
}

fn ms(us: u32) -> String {
    format!("{:.3}", f64::from(us) / 1000.0)
}

async fn timed(conn: &mut Conn, method: Method, path: &str, body: Bytes) -> Result<Reply, Error> {
    let content_type = (method == Method::POST).then_some("application/json");
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        conn.request(method, path, content_type, body),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err("request timed out".into()),
    }
}

#[derive(Default)]
struct Worker {
    lookups: Kind,
    ingests: Kind,
}

async fn worker(
    addr: SocketAddr,
    seed: u64,
    key_space: u64,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    max_requests: u64,
    small_bodies: Arc<Vec<Bytes>>,
) -> Worker {
    let mut conn = Conn::new(addr);
    let mut rng = Rng(seed | 1);
    let mut w = Worker::default();
    while Instant::now() < deadline && sent.fetch_add(1, Relaxed) < max_requests {
        if rng.below(100) < 75 {
            let path = format!("/lookup/k{}", rng.below(key_space));
            let started = Instant::now();
            let result = timed(&mut conn, Method::GET, &path, Bytes::new()).await;
            w.lookups.record(started, &result);
        } else {
            let body = small_bodies[rng.below(small_bodies.len() as u64) as usize].clone();
            let started = Instant::now();
            let result = timed(&mut conn, Method::POST, "/ingest", body).await;
            w.ingests.record(started, &result);
        }
    }
    w
}

/// What the server holds at one instant.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    cache_len: u64,
    cache_held: u64,
    pool_idle: u64,
    pool_retained: u64,
    rss: Option<u64>,
    hwm: Option<u64>,
}

async fn snapshot(conn: &mut Conn, pid: Option<u32>) -> Result<Snapshot, Error> {
    let reply = timed(conn, Method::GET, "/stats", Bytes::new()).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("/stats: {} {}", reply.status, reply.text()).into());
    }
    let stats: Value = reply.json()?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let (rss, hwm) = match pid {
        Some(pid) => (
            pid_status_bytes(pid, "VmRSS:")?,
            pid_status_bytes(pid, "VmHWM:")?,
        ),
        None => (
            stats["server"]["rss_bytes"].as_u64(),
            stats["server"]["peak_rss_bytes"].as_u64(),
        ),
    };
    Ok(Snapshot {
        cache_len: n(&stats["cache"]["len"]),
        cache_held: n(&stats["cache"]["held_bytes"]),
        pool_idle: n(&stats["pool"]["idle"]),
        pool_retained: n(&stats["pool"]["retained_bytes"]),
        rss,
        hwm,
    })
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

fn print_header() {
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>13} {:>9} {:>9}",
        "memory", "cache len", "cache MiB", "pool idle", "pool kept KiB", "RSS MiB", "HWM MiB"
    );
}

fn print_row(label: &str, s: &Snapshot) {
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>13.1} {:>9} {:>9}",
        label,
        s.cache_len,
        mib(Some(s.cache_held)),
        s.pool_idle,
        s.pool_retained as f64 / 1024.0,
        mib(s.rss),
        mib(s.hwm),
    );
}

/// Runs `concurrency` workers until `duration` or `max_requests`, with a huge ingest every
/// `huge_every` if given, and prints the figures.
async fn load_phase(
    args: &Args,
    duration: Duration,
    huge_every: Option<Duration>,
    small_bodies: &Arc<Vec<Bytes>>,
    huge: &Bytes,
) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = started + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            tokio::spawn(worker(
                args.addr,
                0x9e37_79b9 * (i as u64 + 1) + started.elapsed().as_nanos() as u64,
                args.key_space,
                deadline,
                sent.clone(),
                args.max_requests,
                small_bodies.clone(),
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let huge_task = huge_every.map(|every| {
        let (addr, huge, stop) = (args.addr, huge.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut kind = Kind::default();
            let mut next = Instant::now() + every / 2;
            loop {
                let now = Instant::now();
                let wake = next.min(deadline);
                if wake > now {
                    tokio::time::sleep(wake - now).await;
                }
                if stop.load(Relaxed) || Instant::now() >= deadline {
                    return kind;
                }
                let t = Instant::now();
                let result = timed(&mut conn, Method::POST, "/ingest", huge.clone()).await;
                kind.record(t, &result);
                next += every;
            }
        })
    });
    let mut lookups = Kind::default();
    let mut ingests = Kind::default();
    for w in workers {
        let w = w.await?;
        lookups.merge(w.lookups);
        ingests.merge(w.ingests);
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    let mut huge_kind = match huge_task {
        Some(task) => task.await?,
        None => Kind::default(),
    };
    let total = lookups.latencies_us.len() + ingests.latencies_us.len();
    println!(
        "{total} small requests in {:.1} s: {:.0} requests/s{}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        if huge_every.is_some() {
            format!(" (plus {} huge)", huge_kind.latencies_us.len())
        } else {
            String::new()
        }
    );
    println!(
        "{:<14} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "request", "count", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut all = Kind::default();
    all.latencies_us.extend(&lookups.latencies_us);
    all.latencies_us.extend(&ingests.latencies_us);
    all.errors = lookups.errors + ingests.errors;
    all.non_2xx = lookups.non_2xx + ingests.non_2xx;
    println!("{}", all.line("all small", elapsed));
    println!("{}", lookups.line("GET /lookup", elapsed));
    println!("{}", ingests.line("POST /ingest", elapsed));
    if huge_every.is_some() {
        println!("{}", huge_kind.line("huge ingest", elapsed));
    }
    Ok(())
}

async fn clear(conn: &mut Conn, trim: bool) -> Result<Value, Error> {
    let path = if trim {
        "/admin/clear?trim=true"
    } else {
        "/admin/clear"
    };
    let reply = timed(conn, Method::POST, path, Bytes::new()).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("{path}: {} {}", reply.status, reply.text()).into());
    }
    Ok(reply.json()?)
}

async fn run(args: Args) -> Result<(), Error> {
    let mut control = Conn::new(args.addr);
    let mut table: Vec<(String, Snapshot)> = Vec::new();
    table.push(("at start".into(), snapshot(&mut control, args.pid).await?));

    // Small bodies, made once.
    let mut rng = Rng(0x5eed);
    let small_bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..256)
            .map(|_| {
                let keys = 5 + rng.below(46);
                object((0..keys).map(|_| {
                    let k = rng.below(1000);
                    (format!("item-{k}"), rng.below(100) as i64)
                }))
            })
            .collect(),
    );
    let huge = huge_body(args.huge_keys);
    let huge_mib = huge.len() as f64 / 1048576.0;
    let small_phase = args.duration.mul_f64(0.4);
    let mixed_phase = args.duration.saturating_sub(small_phase);

    // 1. Small requests only.
    println!(
        "== 1. small requests only: {} connections, {:.0} s (at most {} requests), 75% \
         GET /lookup over {} keys, 25% POST /ingest of 5-50 keys",
        args.concurrency,
        small_phase.as_secs_f64(),
        args.max_requests,
        args.key_space,
    );
    load_phase(&args, small_phase, None, &small_bodies, &huge).await?;
    table.push((
        "after small requests".into(),
        snapshot(&mut control, args.pid).await?,
    ));

    // 2. One huge request on a quiet server.
    println!();
    println!(
        "== 2. one huge POST /ingest ({} keys, {huge_mib:.1} MiB) on a quiet server",
        args.huge_keys
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = snapshot(&mut control, args.pid).await?;
    let request = {
        let (addr, huge) = (args.addr, huge.clone());
        tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let t = Instant::now();
            let result = timed(&mut conn, Method::POST, "/ingest", huge).await;
            (t.elapsed(), result)
        })
    };
    // "During": the peak RSS and held bytes seen while it runs.
    let mut during = before.clone();
    let mut samples = 0;
    let poll_deadline = Instant::now() + REQUEST_TIMEOUT;
    while !request.is_finished() && Instant::now() < poll_deadline {
        if let Ok(s) = snapshot(&mut control, args.pid).await {
            samples += 1;
            during.rss = during.rss.max(s.rss);
            during.hwm = s.hwm;
            during.cache_held = during.cache_held.max(s.cache_held);
            during.cache_len = s.cache_len;
            during.pool_idle = s.pool_idle;
            during.pool_retained = during.pool_retained.max(s.pool_retained);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (huge_latency, result) = request.await?;
    let reply = result?;
    let after = snapshot(&mut control, args.pid).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = snapshot(&mut control, args.pid).await?;
    let summary: Value = reply.json().unwrap_or(Value::Null);
    println!(
        "{} in {:.1} ms: {} keys, scratch map capacity {} (pool ceiling {})",
        reply.status,
        huge_latency.as_secs_f64() * 1000.0,
        summary["keys"],
        summary["scratch_capacity"],
        after_ceiling(&mut control).await,
    );
    table.push(("before the huge request".into(), before));
    table.push((format!("during it (peak of {samples} polls)"), during));
    table.push(("right after it".into(), after));
    table.push(("500 ms after it".into(), settled));

    // 3. Small requests with a rare huge one.
    println!();
    println!(
        "== 3. mixed: the same small requests for {:.0} s, plus a huge ingest every {:.0} s",
        mixed_phase.as_secs_f64(),
        args.huge_every.as_secs_f64()
    );
    load_phase(
        &args,
        mixed_phase,
        Some(args.huge_every),
        &small_bodies,
        &huge,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    table.push((
        "after the mixed load".into(),
        snapshot(&mut control, args.pid).await?,
    ));

    // 4. Clear.
    println!();
    println!("== 4. POST /admin/clear, then POST /admin/clear?trim=true (malloc_trim)");
    let cleared = clear(&mut control, false).await?;
    println!(
        "clear_and_release: released {} bytes ({:.1} MiB), pending {}; pool idle maps dropped {}",
        cleared["released"]["released_bytes"],
        cleared["released"]["released_bytes"]
            .as_f64()
            .unwrap_or(0.0)
            / 1048576.0,
        cleared["released"]["pending_bytes"],
        cleared["pool_idle_dropped"],
    );
    table.push((
        "after /admin/clear".into(),
        snapshot(&mut control, args.pid).await?,
    ));
    let trimmed = clear(&mut control, true).await?;
    println!(
        "malloc_trim ran: {}; RSS {} -> {} MiB",
        trimmed["trimmed"],
        mib(trimmed["rss_before"].as_u64()),
        mib(trimmed["rss_after"].as_u64()),
    );
    table.push((
        "after /admin/clear?trim=true".into(),
        snapshot(&mut control, args.pid).await?,
    ));

    println!();
    print_header();
    for (label, s) in &table {
        print_row(label, s);
    }
    println!(
        "(cache MiB: the map's held_bytes, shallow: the key and value strings it owns show in \
         RSS only; pool kept: the idle scratch maps' retained_bytes; RSS and HWM from \
         /proc/{}/status)",
        args.pid.map_or_else(|| "self".into(), |p| p.to_string())
    );
    Ok(())
}

async fn after_ceiling(conn: &mut Conn) -> String {
    match timed(conn, Method::GET, "/stats", Bytes::new()).await {
        Ok(reply) => reply
            .json::<Value>()
            .map(|v| v["pool_capacity_ceiling"].to_string())
            .unwrap_or_default(),
        Err(_) => "?".into(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}
