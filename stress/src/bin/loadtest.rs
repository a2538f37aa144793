//! `loadtest`: many connections against an echo server from one thread's
//! epoll loop, one request (frame) outstanding per connection, every echo
//! verified; prints throughput, latency percentiles, errors and the
//! connection success rate.
//!
//! Exit codes: 0 no errors and every connection got an echo, 1 anything
//! else (including a run that could not start), 2 usage error, an address
//! that does not resolve, or one that is not loopback.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("loadtest: needs Linux (it is an epoll event loop)");
    std::process::ExitCode::from(2)
}

#[cfg(target_os = "linux")]
mod cli {
    use std::io::IsTerminal;
    use std::net::{SocketAddr, ToSocketAddrs};
    use std::process::ExitCode;
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use clap::Parser;
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use stress::load::{thousands, LoadProgress, DEFAULT_CONNECT_BATCH, DEFAULT_PAYLOAD_SIZE};
    use stress::{run_load_with_progress, LoadConfig, LoadStop};

    /// Load-test an echo server speaking length-prefixed frames.
    ///
    /// Opens CONNECTIONS connections (ramped in batches, retried with
    /// backoff), then keeps one request outstanding on each: a frame of
    /// --size payload bytes, whose echo must come back byte for byte. By
    /// default each connection sends its next request as soon as the last
    /// echo is verified (closed loop); with --rate, requests are due at a
    /// fixed rate and latency counts from when each was due. Only loopback
    /// servers are driven.
    #[derive(Debug, Parser)]
    #[command(
        name = "loadtest",
        version,
        after_help = "Examples:\n  loadtest -c 10000 -r 100000 127.0.0.1:8080\n  \
                      loadtest -c 1000 -d 10s --rate 50000 localhost:8080\n\n\
                      Exit status: 0 no errors and every connection got an echo, \
                      1 otherwise, 2 usage error or a HOST:PORT that is not loopback."
    )]
    struct Args {
        /// Connections, all open at once.
        #[arg(short = 'c', long = "connections", value_name = "CONNECTIONS",
              value_parser = clap::value_parser!(u32).range(1..))]
        connections: u32,

        /// Requests in total, spread over the connections (at least one each).
        #[arg(short = 'r', long = "requests", value_name = "REQUESTS",
              required_unless_present = "duration", conflicts_with = "duration",
              value_parser = clap::value_parser!(u64).range(1..))]
        requests: Option<u64>,

        /// Send for this long instead of a request count (e.g. 10, 10s,
        /// 500ms, 2m).
        #[arg(short = 'd', long = "duration", value_name = "DURATION",
              value_parser = parse_duration)]
        duration: Option<Duration>,

        /// Payload bytes per frame; keep it within the server's --max-frame.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_PAYLOAD_SIZE)]
        size: usize,

        /// Fixed offered rate in requests/s across all connections, latency
        /// measured from each request's intended send time (default: closed
        /// loop).
        #[arg(long, value_name = "R", value_parser = parse_rate)]
        rate: Option<f64>,

        /// Time limit for the whole run; requests unanswered by then are
        /// errors. Default 60 s (with -d: the duration plus 60 s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,

        /// Connects in flight at once while opening the connections.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_CONNECT_BATCH as u32,
              value_parser = clap::value_parser!(u32).range(1..))]
        connect_batch: u32,

        /// Spread IPv4 connections over 127.0.0.1 ..= 127.0.0.N (more
        /// ephemeral ports); switched on by itself when ports run out.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u8).range(1..=254))]
        source_addrs: u8,

        /// Print the report as one JSON object instead of text.
        #[arg(long)]
        json: bool,

        /// The echo server, e.g. 127.0.0.1:8080 or localhost:8080.
        #[arg(value_name = "HOST:PORT")]
        target: String,
    }

    pub fn main() -> ExitCode {
        // clap exits with 2 on a usage error.
        let args = Args::parse();
        let cfg = match config(&args) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("loadtest: {e:#}");
                return ExitCode::from(2);
            }
        };
        let bar = progress_bar(&cfg);
        let result = run_load_with_progress(&cfg, &mut |p| show_progress(&bar, p));
        bar.finish_and_clear();
        match result {
            Ok(report) => {
                if args.json {
                    println!("{}", report.render_json());
                } else {
                    print!("{}", report.render_text());
                }
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("loadtest: {e:#}");
                ExitCode::from(1)
            }
        }
    }

    /// The run `args` ask for, checked (loopback only, enough requests).
    fn config(args: &Args) -> Result<LoadConfig> {
        let addr = resolve(&args.target)?;
        let stop = match (args.requests, args.duration) {
            (Some(n), _) => LoadStop::Requests(n),
            (None, Some(d)) => LoadStop::Duration(d),
            (None, None) => bail!("give -r REQUESTS or -d DURATION"),
        };
        let timeout = args.timeout.unwrap_or(match stop {
            LoadStop::Duration(d) => d + Duration::from_secs(60),
            LoadStop::Requests(_) => Duration::from_secs(60),
        });
        let cfg = LoadConfig {
            payload_size: args.size,
            rate: args.rate,
            timeout,
            connect_batch: args.connect_batch as usize,
            source_addresses: usize::from(args.source_addrs),
            ..LoadConfig::new(addr, args.connections as usize, stop)
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `HOST:PORT` as an address, IPv4 first (`localhost` may resolve to ::1
    /// first while course servers listen on 127.0.0.1).
    fn resolve(target: &str) -> Result<SocketAddr> {
        let addrs: Vec<SocketAddr> = target
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {target} (expected HOST:PORT)"))?
            .collect();
        match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
            Some(addr) => Ok(*addr),
            None => bail!("{target} resolves to no address"),
        }
    }

    fn progress_bar(cfg: &LoadConfig) -> ProgressBar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let (len, template) = match (cfg.planned_requests(), cfg.stop) {
            (Some(n), _) => (n, "{msg} [{bar:30}] {pos}/{len} requests"),
            (None, LoadStop::Duration(d)) => (d.as_millis() as u64, "{msg} [{bar:30}]"),
            (None, LoadStop::Requests(n)) => (n, "{msg} [{bar:30}]"),
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    fn show_progress(bar: &ProgressBar, p: &LoadProgress) {
        if !p.loading {
            bar.set_message(format!("connecting {}/{}", p.open, p.connections));
            return;
        }
        bar.set_message(format!(
            "{} open, {} verified, {} errors",
            p.open,
            thousands(p.verified),
            p.errors
        ));
        match p.planned {
            Some(_) => bar.set_position(p.verified),
            None => bar.set_position(p.load_elapsed.as_millis() as u64),
        }
    }

    /// `10`, `2.5`, `10s`, `500ms`, `2m`: a positive duration, seconds by
    /// default.
    fn parse_duration(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = text.strip_suffix('m') {
            (n, 60.0)
        } else {
            (text, 1.0)
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (e.g. 10, 10s, 500ms, 2m)"))?;
        match Duration::try_from_secs_f64(value * scale) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(format!("the duration must be positive, not {text}")),
        }
    }

    fn parse_rate(text: &str) -> Result<f64, String> {
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
            _ => Err(format!(
                "`{text}` is not a positive number of requests per second"
            )),
        }
    }
}
