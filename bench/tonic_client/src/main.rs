//! `tonic-echo`: the pure Rust baseline of Synapse's benchmarks. It calls a
//! worker's `synapse.v1.ProbeService` (`Echo`, `EchoStream`) with the same
//! client stack as the NIF (`synapse_client::Worker`: one lazily connected
//! tonic channel per address, or with `--lane` the worker's lane), with no
//! BEAM in the way.
//!
//! ```text
//! tonic-echo latency    --address A [--lane L] --calls N --warmup W --payload BYTES
//! tonic-echo throughput --address A [--lane L] --concurrency C --seconds S --payload BYTES
//!                       [--warmup-seconds S]
//! tonic-echo stream     --address A [--lane L] --count N --payload BYTES --repeat R [--warmup R]
//! ```
//!
//! `A` is `unix:PATH` or `tcp://HOST:PORT`, or several of them separated by
//! commas (a pool: calls go round-robin over them); `L`, as many lane
//! sockets (`unix:PATH`), one per address: calls then take them. Every
//! subcommand also
//! takes `--max-seconds S` (default 300): past it the process gives up with
//! exit code 3, so a stuck worker never hangs the harness. The result is one
//! JSON object on stdout; errors go to stderr, with a non-zero exit code.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use synapse_client::proto::{methods, EchoReply, EchoRequest, EchoStreamRequest};
use synapse_client::{Address, Worker, WorkerOptions};

/// A worker's client, as the NIF's: gRPC, or its lane.
type Client = Arc<Worker>;

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

const USAGE: &str = "usage:
  tonic-echo latency    --address A [--lane L] --calls N --warmup W --payload BYTES
  tonic-echo throughput --address A [--lane L] --concurrency C --seconds S --payload BYTES [--warmup-seconds S]
  tonic-echo stream     --address A [--lane L] --count N --payload BYTES --repeat R [--warmup R]
A: unix:PATH or tcp://HOST:PORT, several comma-separated for a pool (round-robin);
L: the workers' lanes (unix:PATH), one per address, for calls on the lane.
Every subcommand also takes --max-seconds S (default 300).";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tonic-echo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(argv: Vec<String>) -> Result<String, String> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(USAGE.to_owned());
    };
    if command == "-h" || command == "--help" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let mut args = Args::parse(rest)?;
    let addresses = args.take_str("address", None)?;
    let payload = vec![b'x'; args.take("payload", Some(64))?];
    let lanes = args.take_str("lane", Some(""))?;
    let max_seconds: f64 = args.take("max-seconds", Some(300.0))?;
    let command = match command.as_str() {
        "latency" => Command::Latency {
            calls: positive(args.take("calls", Some(1000))?, "calls")?,
            warmup: args.take("warmup", Some(100))?,
        },
        "throughput" => Command::Throughput {
            concurrency: positive(args.take("concurrency", Some(1))?, "concurrency")?,
            seconds: duration(args.take("seconds", Some(5.0))?, "seconds")?,
            warmup: duration(args.take("warmup-seconds", Some(0.5))?, "warmup-seconds")?,
        },
        "stream" => Command::Stream {
            count: positive(args.take("count", Some(1000))?, "count")?,
            repeat: positive(args.take("repeat", Some(10))?, "repeat")?,
            warmup: args.take("warmup", Some(1))?,
        },
        other => return Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    };
    args.finish()?;
    watchdog(duration(max_seconds, "max-seconds")?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let clients = clients(&addresses, &lanes)?;
        let lane = !lanes.is_empty();
        let workers = clients.len();
        match command {
            Command::Latency { calls, warmup } => latency(&clients, calls, warmup, &payload).await,
            Command::Throughput {
                concurrency,
                seconds,
                warmup,
            } => throughput(&clients, concurrency, seconds, warmup, &payload).await,
            Command::Stream {
                count,
                repeat,
                warmup,
            } => stream(&clients, count, repeat, warmup, &payload).await,
        }
        .map(|json| {
            format!(
                "{{\"client\": \"tonic\", \"lane\": {lane}, \"workers\": {workers}, \"payload\": {}, {json}}}",
                payload.len()
            )
        })
    })
}

enum Command {
    Latency {
        calls: usize,
        warmup: usize,
    },
    Throughput {
        concurrency: usize,
        seconds: Duration,
        warmup: Duration,
    },
    Stream {
        count: usize,
        repeat: usize,
        warmup: usize,
    },
}

/// One client per address: one HTTP/2 connection, or one lane connection.
fn clients(addresses: &str, lanes: &str) -> Result<Vec<Client>, String> {
    let addresses: Vec<&str> = addresses.split(',').map(str::trim).collect();
    let lanes: Vec<Option<&str>> = if lanes.is_empty() {
        vec![None; addresses.len()]
    } else {
        lanes.split(',').map(|lane| Some(lane.trim())).collect()
    };
    if lanes.len() != addresses.len() {
        return Err("give one --lane per --address".to_owned());
    }
    addresses
        .iter()
        .zip(lanes)
        .map(|(address, lane)| {
            let lane = match lane.map(Address::parse).transpose() {
                Ok(None) => None,
                Ok(Some(Address::Unix(path))) => Some(path),
                Ok(Some(Address::Tcp(_))) => return Err("a lane is unix:PATH".to_owned()),
                Err(e) => return Err(e.to_string()),
            };
            let worker = Worker::connect(WorkerOptions {
                address: &Address::parse(address).map_err(|e| e.to_string())?,
                lane,
                tls: None,
                authorization: None,
                max_message_bytes: MAX_MESSAGE_BYTES,
                // A pure Rust client: tokio reads the lane.
                lane_reader: None,
            })
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(worker))
        })
        .collect()
}

async fn echo(client: &Client, payload: &[u8]) -> Result<(), String> {
    let request = EchoRequest {
        payload: payload.to_vec(),
    };
    let reply = client
        .unary(methods::PROBE_SERVICE_ECHO, request.encode_to_vec(), None)
        .await
        .map_err(|status| format!("Echo failed: {status}"))?;
    let reply = EchoReply::decode(reply).map_err(|e| format!("Echo answered garbage: {e}"))?;
    if reply.payload.len() != payload.len() {
        return Err("Echo answered a different payload".to_owned());
    }
    Ok(())
}

async fn latency(
    clients: &[Client],
    calls: usize,
    warmup: usize,
    payload: &[u8],
) -> Result<String, String> {
    // Every channel connects during the warmup, whatever its length.
    for i in 0..warmup.max(clients.len()) {
        echo(&clients[i % clients.len()], payload).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let client = &clients[i % clients.len()];
        let start = Instant::now();
        echo(client, payload).await?;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    Ok(format!(
        "\"calls\": {calls}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"mean_us\": {:.3}, \"min_us\": {:.3}, \"max_us\": {:.3}",
        micros(percentile(&samples, 0.50)),
        micros(percentile(&samples, 0.99)),
        micros(total) / calls as f64,
        micros(samples[0]),
        micros(samples[calls - 1]),
    ))
}

async fn throughput(
    clients: &[Client],
    concurrency: usize,
    seconds: Duration,
    warmup: Duration,
    payload: &[u8],
) -> Result<String, String> {
    for client in clients {
        echo(client, payload).await?;
    }
    if !warmup.is_zero() {
        loops(clients, concurrency, warmup, payload).await?;
    }
    let cpu_before = cpu_time()?;
    let start = Instant::now();
    let calls = loops(clients, concurrency, seconds, payload).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_time()? - cpu_before;
    Ok(format!(
        "\"concurrency\": {concurrency}, \"calls\": {calls}, \"seconds\": {elapsed:.6}, \"calls_per_s\": {:.3}, \"cpu_seconds\": {cpu:.6}, \"cpu_us_per_call\": {:.3}",
        calls as f64 / elapsed,
        cpu * 1e6 / calls.max(1) as f64,
    ))
}

/// `concurrency` loops, each one call in flight, starting calls until
/// `seconds` have passed; answers the number of calls made.
async fn loops(
    clients: &[Client],
    concurrency: usize,
    seconds: Duration,
    payload: &[u8],
) -> Result<u64, String> {
    let deadline = Instant::now() + seconds;
    let tasks: Vec<_> = (0..concurrency)
        .map(|k| {
            let clients = clients.to_vec();
            let payload = payload.to_vec();
            tokio::spawn(async move {
                let mut calls = 0u64;
                let mut next = k;
                while Instant::now() < deadline {
                    echo(&clients[next % clients.len()], &payload).await?;
                    next += 1;
                    calls += 1;
                }
                Ok::<_, String>(calls)
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task
            .await
            .map_err(|e| format!("a call loop failed: {e}"))??;
    }
    Ok(calls)
}

async fn stream(
    clients: &[Client],
    count: usize,
    repeat: usize,
    warmup: usize,
    payload: &[u8],
) -> Result<String, String> {
    for i in 0..warmup.max(clients.len()) {
        one_stream(&clients[i % clients.len()], count, payload).await?;
    }
    let (mut first, mut per_event, mut total) = (vec![], vec![], vec![]);
    for i in 0..repeat {
        let (f, p, t) = one_stream(&clients[i % clients.len()], count, payload).await?;
        first.push(f);
        per_event.push(p);
        total.push(t);
    }
    Ok(format!(
        "\"count\": {count}, \"repeat\": {repeat}, \"first_event_us\": {:.3}, \"per_event_us\": {:.3}, \"total_us\": {:.3}",
        median(first),
        median(per_event),
        median(total),
    ))
}

/// One EchoStream of `count` replies: microseconds to the first reply, per
/// reply after it, and to the end of the stream.
async fn one_stream(
    client: &Client,
    count: usize,
    payload: &[u8],
) -> Result<(f64, f64, f64), String> {
    let start = Instant::now();
    let request = EchoStreamRequest {
        payload: payload.to_vec(),
        count: i32::try_from(count).map_err(|_| "count too large".to_owned())?,
    };
    let mut replies = client
        .server_streaming(
            methods::PROBE_SERVICE_ECHO_STREAM,
            request.encode_to_vec(),
            None,
        )
        .await
        .map_err(|status| format!("EchoStream failed: {status}"))?;
    let (mut first, mut last, mut received) = (start, start, 0usize);
    while let Some(reply) = replies
        .message()
        .await
        .map_err(|status| format!("EchoStream failed: {status}"))?
    {
        last = Instant::now();
        if received == 0 {
            first = last;
        }
        received += 1;
        let reply =
            EchoReply::decode(reply).map_err(|e| format!("EchoStream answered garbage: {e}"))?;
        if reply.payload.len() != payload.len() {
            return Err("EchoStream answered a different payload".to_owned());
        }
    }
    let end = start.elapsed();
    if received != count {
        return Err(format!(
            "EchoStream answered {received} replies, not {count}"
        ));
    }
    let per_event = if count > 1 {
        micros(last - first) / (count - 1) as f64
    } else {
        0.0
    };
    Ok((micros(first - start), per_event, micros(end)))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// User plus system CPU time of this process so far, in seconds.
fn cpu_time() -> Result<f64, String> {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Err(format!(
                "getrusage failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Ends the process (exit code 3) once `limit` has passed.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "tonic-echo: gave up after {:.1} s (--max-seconds)",
            limit.as_secs_f64()
        );
        std::process::exit(3);
    });
}

fn positive(n: usize, name: &str) -> Result<usize, String> {
    if n == 0 {
        Err(format!("--{name} must be at least 1"))
    } else {
        Ok(n)
    }
}

fn duration(seconds: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("--{name}: bad duration {seconds}"))
}

/// `--name value` pairs, each name at most once.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(argv: &[String]) -> Result<Self, String> {
        let mut map = HashMap::new();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag:?}\n{USAGE}"))?;
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name, value.to_owned()),
                None => (
                    name,
                    it.next()
                        .ok_or_else(|| format!("{flag} needs a value"))?
                        .clone(),
                ),
            };
            if map.insert(name.to_owned(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self(map))
    }

    fn take_str(&mut self, name: &str, default: Option<&str>) -> Result<String, String> {
        match (self.0.remove(name), default) {
            (Some(value), _) => Ok(value),
            (None, Some(default)) => Ok(default.to_owned()),
            (None, None) => Err(format!("--{name} is required\n{USAGE}")),
        }
    }

    fn take<T: std::str::FromStr>(&mut self, name: &str, default: Option<T>) -> Result<T, String> {
        match (self.0.remove(name), default) {
            (Some(value), _) => value
                .parse()
                .map_err(|_| format!("--{name}: bad value {value:?}")),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(format!("--{name} is required\n{USAGE}")),
        }
    }

    /// Fails on any option no subcommand took.
    fn finish(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(name) => Err(format!("unknown option --{name}\n{USAGE}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_micros(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_micros(1));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn arguments() {
        let argv: Vec<String> = ["--calls", "5", "--payload=10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut args = Args::parse(&argv).unwrap();
        assert_eq!(args.take::<usize>("calls", None), Ok(5));
        assert_eq!(args.take::<usize>("payload", None), Ok(10));
        assert_eq!(args.take::<usize>("warmup", Some(7)), Ok(7));
        assert!(args.take_str("address", None).is_err());
        assert!(args.finish().is_ok());
        assert!(Args::parse(&["x".to_owned()]).is_err());
        assert!(Args::parse(&["--a".to_owned()]).is_err());
    }
}
