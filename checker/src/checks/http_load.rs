//! `http_load`: a keep-alive HTTP load like siege's benchmark mode.
//! `users` threads each hold one connection and send GET requests back to
//! back (the next as soon as the last response is whole and verified) for
//! `duration_ms`, against a temporary document root (`--root` added). A
//! connection the server closes is reopened. Reports siege's figures
//! (transactions, availability, elapsed time, data transferred, response
//! time, transaction rate, throughput, concurrency, successful and failed
//! transactions, longest and shortest transaction) plus the server's RSS
//! and open fds before and after. Requires 100 % availability, fds back to
//! their count before the load (within `fd_tolerance`) and RSS grown by at
//! most `rss_growth_kib`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::http::{get, DocRoot, HttpConn};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLoad {
    /// Concurrent users, one connection each.
    pub users: usize,
    /// How long the users send, in milliseconds.
    pub duration_ms: u64,
    /// Most RSS growth from before to after the load, in KiB.
    pub rss_growth_kib: u64,
    /// Most open fds above the count before the load, once clients closed.
    pub fd_tolerance: usize,
    pub args: Vec<String>,
}

impl Default for HttpLoad {
    fn default() -> Self {
        HttpLoad {
            users: 25,
            duration_ms: 5000,
            rss_growth_kib: 16 * 1024,
            fd_tolerance: 2,
            args: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    bytes: u64,
    connects: u64,
    total_time: Duration,
    longest: Duration,
    shortest: Option<Duration>,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, line: String) {
        self.failed += 1;
        if self.failures.len() < 5 {
            self.failures.push(line);
        }
    }
}

fn user(addr: std::net::SocketAddr, id: usize, until: Instant, index_len: usize) -> Tally {
    let mut tally = Tally::default();
    let request = get("/index.html");
    let mut conn: Option<HttpConn> = None;
    while Instant::now() < until {
        if conn.is_none() {
            match HttpConn::connect(addr, Duration::from_secs(5)) {
                Ok(c) => {
                    tally.connects += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    tally.fail(format!("user {id}: connect failed: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        if c.send(&request).is_err() {
            // Closed by the server between requests: reopen, like siege.
            conn = None;
            continue;
        }
        match c.response(false) {
            Ok(r) if r.status == 200 && r.body.len() == index_len => {
                let took = started.elapsed();
                tally.ok += 1;
                tally.bytes += r.body.len() as u64;
                tally.total_time += took;
                tally.longest = tally.longest.max(took);
                tally.shortest = Some(tally.shortest.map_or(took, |s| s.min(took)));
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            Ok(r) => {
                tally.fail(format!(
                    "user {id}: {:?} with a {}-byte body (expected 200 and {index_len} bytes)",
                    r.status_line,
                    r.body.len()
                ));
                conn = None;
            }
            // EOF before any byte: the server closed an idle keep-alive
            // connection as the request crossed it; reopen (siege does).
            Err(super::http::Missing::ClosedBefore) => conn = None,
            Err(m) => {
                tally.fail(format!("user {id}: {}", m.describe()));
                conn = None;
            }
        }
    }
    tally
}

impl Check for HttpLoad {
    fn summary(&self) -> String {
        format!(
            "{} keep-alive users GET /index.html for {} ms: 100 % availability, RSS and fds stable",
            self.users, self.duration_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let docs = DocRoot::create(ctx.seed)?;
        let mut args = self.args.clone();
        args.extend(docs.args());
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        std::thread::sleep(Duration::from_millis(200));
        let rss_before = procfs::rss_kib(server.pid)?;
        let fds_before = procfs::open_fds(server.pid)?.len();
        let index_len = docs.index.len();
        let addr = server.addr;
        let started = Instant::now();
        let until = started + Duration::from_millis(self.duration_ms);
        let total = Arc::new(Mutex::new(Tally::default()));
        let handles: Vec<_> = (0..self.users)
            .map(|id| {
                let total = Arc::clone(&total);
                std::thread::spawn(move || {
                    let t = user(addr, id, until, index_len);
                    if let Ok(mut sum) = total.lock() {
                        sum.ok += t.ok;
                        sum.failed += t.failed;
                        sum.bytes += t.bytes;
                        sum.connects += t.connects;
                        sum.total_time += t.total_time;
                        sum.longest = sum.longest.max(t.longest);
                        sum.shortest = match (sum.shortest, t.shortest) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        for f in t.failures {
                            if sum.failures.len() < 5 {
                                sum.failures.push(f);
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.join();
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Every user's connection is closed now: let the server see it.
        std::thread::sleep(Duration::from_millis(500));
        let t = std::mem::take(
            &mut *total
                .lock()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?,
        );
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail("the server died under the HTTP load")
                .cause("a client's request must never end the server")
                .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        let rss_after = procfs::rss_kib(server.pid)?;
        let fds_after = procfs::open_fds(server.pid)?.len();
        let transactions = t.ok + t.failed;
        let availability = if transactions > 0 {
            100.0 * t.ok as f64 / transactions as f64
        } else {
            0.0
        };
        let mb = t.bytes as f64 / 1_000_000.0;
        let avg_ms = if t.ok > 0 {
            t.total_time.as_secs_f64() * 1000.0 / t.ok as f64
        } else {
            0.0
        };
        let concurrency = t.total_time.as_secs_f64() / elapsed.max(0.001);
        let report = vec![
            format!("Transactions:            {} hits", transactions),
            format!("Availability:            {availability:.2} %"),
            format!("Elapsed time:            {elapsed:.2} secs"),
            format!("Data transferred:        {mb:.2} MB"),
            format!("Response time:           {avg_ms:.2} ms (average)"),
            format!(
                "Transaction rate:        {:.2} trans/sec",
                t.ok as f64 / elapsed.max(0.001)
            ),
            format!(
                "Throughput:              {:.2} MB/sec",
                mb / elapsed.max(0.001)
            ),
            format!("Concurrency:             {concurrency:.2}"),
            format!("Successful transactions: {}", t.ok),
            format!("Failed transactions:     {}", t.failed),
            format!(
                "Longest transaction:     {:.2} ms",
                t.longest.as_secs_f64() * 1000.0
            ),
            format!(
                "Shortest transaction:    {:.2} ms",
                t.shortest.unwrap_or_default().as_secs_f64() * 1000.0
            ),
            format!("Connections opened:      {}", t.connects),
            format!("Server RSS:              {rss_before} KiB before, {rss_after} KiB after"),
            format!(
                "Server open fds:         {fds_before} before, {fds_after} after (clients closed)"
            ),
        ];
        for line in &report {
            ctx.log.detail(line);
        }
        let with_report = |outcome: StepOutcome| {
            outcome
                .figure("transactions", transactions)
                .figure("availability_pct", format!("{availability:.2}"))
                .figure("response_time_avg_ms", format!("{avg_ms:.2}"))
                .figure(
                    "longest_transaction_ms",
                    format!("{:.2}", t.longest.as_secs_f64() * 1000.0),
                )
                .figure("rss_before_kib", rss_before)
                .figure("rss_after_kib", rss_after)
                .figure("fds_before", fds_before)
                .figure("fds_after", fds_after)
        };
        if t.failed > 0 || t.ok == 0 {
            return Ok(with_report(StepOutcome::fail(format!(
                "availability {availability:.2} % ({} of {transactions} transactions failed), 100 % required",
                t.failed
            )))
            .cause_as("http_load.failed-transactions", "under load every request must get a whole, correct response: keep each connection open between requests and answer requests that arrive while others are still being written")
            .evidence(t.failures.iter().cloned().chain(report.clone()).chain(Ctx::server_evidence(&mut server))));
        }
        if fds_after > fds_before + self.fd_tolerance {
            return Ok(with_report(StepOutcome::fail(format!(
                "open fds: {fds_before} before the load, {fds_after} after every client closed (tolerance {})",
                self.fd_tolerance
            )))
            .cause_as("http_load.fds-leaked", "a connection's socket (or an opened file) is not closed: close the connection when the client closes, and drop files once read")
            .evidence(report.clone()));
        }
        if rss_after > rss_before + self.rss_growth_kib {
            return Ok(with_report(StepOutcome::fail(format!(
                "server RSS grew from {rss_before} KiB to {rss_after} KiB over the load (tolerance {} KiB)",
                self.rss_growth_kib
            )))
            .cause_as("http_load.rss-grew", "memory kept per request: drop each request's bytes once answered and each connection's buffers when it closes")
            .evidence(report.clone()));
        }
        Ok(with_report(StepOutcome::pass(format!(
            "{transactions} transactions, availability 100.00 %, {avg_ms:.2} ms average"
        )))
        .proof_line(format!(
            "http_load: {} keep-alive users for {} ms: {transactions} transactions, availability 100.00 %, 0 failed",
            self.users, self.duration_ms
        ))
        .proof_line(format!(
            "http_load: response time {avg_ms:.2} ms average, longest {:.2} ms; {:.2} trans/sec, {:.2} MB/sec",
            t.longest.as_secs_f64() * 1000.0,
            t.ok as f64 / elapsed.max(0.001),
            mb / elapsed.max(0.001)
        ))
        .proof_line(format!(
            "http_load: server RSS {rss_before} KiB before, {rss_after} KiB after; open fds {fds_before} before, {fds_after} after"
        )))
    }
}
