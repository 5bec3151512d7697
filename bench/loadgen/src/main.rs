//! `loadgen`: SMTP load generator for bench/run.sh (throughput + accept latency, idle connections,
//! machine limits).

mod idle;
mod message;
mod probe;
mod smtp;
mod stats;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

/// SMTP load generator. Default mode sends M messages over N concurrent sessions, one connection
/// per message (like smtp-source) unless --reuse, and reports msgs/s and the latency from the
/// final "." to its 250. Exits 1 if any message was not accepted.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Args {
    /// Server address, e.g. 127.0.0.1:10025.
    #[arg(long, default_value = "127.0.0.1:10025")]
    server: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    sessions: u64,
    /// Total messages over all sessions.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Body size in bytes (headers not included, like smtp-source -l).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Recipients per message: user0@DOMAIN .. user{R-1}@DOMAIN.
    #[arg(long, default_value_t = 1)]
    rcpts: u64,
    /// Recipient domain.
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Envelope sender.
    #[arg(long, default_value = "loadgen@client.test")]
    from: String,
    /// EHLO name.
    #[arg(long, default_value = "client.test")]
    helo: String,
    /// Keep each session's connection open for its next message.
    #[arg(long)]
    reuse: bool,
    /// Seconds allowed for each connect, read or write.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Seconds after which no new message is started (the run is bounded even if the server stalls).
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Idle mode: open this many connections, read each 220, hold them for --hold seconds.
    #[arg(long)]
    idle: Option<u64>,
    /// Idle mode: seconds from the start until the connections are closed.
    #[arg(long, default_value_t = 15.0)]
    hold: f64,
    /// Idle mode: connections being set up at once.
    #[arg(long, default_value_t = 1000)]
    parallel: usize,
    /// Idle mode: each connection must get its 220 within this many seconds of the start.
    #[arg(long, default_value_t = 10.0)]
    greet_timeout: f64,
    /// Probe mode: measure fsync rates in this directory (on the data disk) and loopback bandwidth.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Runtime threads; 0 is one per core. Measured at 20 sessions of 1 KiB: one thread costs
    /// the client 3 % less CPU per message but the server gets ~10 % fewer messages per second.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Probe mode: seconds per probe.
    #[arg(long, default_value_t = 2.0)]
    probe_secs: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

fn run(args: Args) -> Result<ExitCode> {
    if let Some(dir) = &args.probe {
        println!("{}", probe::all(dir, args.probe_secs)?);
        return Ok(ExitCode::SUCCESS);
    }
    // 10k connections need 10k descriptors; the soft limit is often 1024.
    let nofile = rlimit::increase_nofile_limit(u64::MAX)?;
    let rt = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    if let Some(n) = args.idle {
        if nofile < n + 64 {
            eprintln!(
                "loadgen: warning: RLIMIT_NOFILE is {nofile}, fewer than {n} connections need"
            );
        }
        let rep = rt.block_on(idle::run(
            &args.server,
            n,
            args.parallel,
            secs(args.greet_timeout),
            secs(args.hold),
        ))?;
        println!("{}", rep.result_line());
        return Ok(if rep.greeted == n {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let plan = throughput::Plan {
        server: args.server,
        sessions: args.sessions,
        messages: args.messages,
        size: args.size,
        rcpts: args.rcpts.max(1),
        domain: args.domain,
        from: args.from,
        helo: args.helo,
        reuse: args.reuse,
        timeout: secs(args.timeout),
        deadline: secs(args.deadline),
    };
    let summary = rt.block_on(throughput::run(plan))?;
    println!("{}", summary.result_line());
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
