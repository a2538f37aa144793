//! Every cause id a step can give (`StepOutcome::cause_as`, `death_cause`,
//! `explains_death`): `<step>.<what>`, named after the step whose probe
//! reads the evidence. `--format json` prints the id of a failing
//! step's cause (`cause_id`), a test pins the one a fixture bug plants, and
//! a lesson's `causes:` map in course.yaml names the hints that apply to
//! each; `checker validate` refuses an id in `causes:` that is not listed
//! here. A unit test below keeps the list equal to the ids written in the
//! check modules: a new cause id is one more line here.

/// The cause ids of every check module.
pub const CAUSE_IDS: &[&str] = &[
    // start
    "start.exits-after-a-client",
    "start.no-accept",
    // echo
    "echo.client-error-ends-the-server",
    "echo.closed-early",
    "echo.closed-while-sending",
    "echo.never-accepted",
    "echo.no-accept",
    "echo.no-echo",
    "echo.reset",
    "echo.short-write",
    "echo.stopped-accepting",
    "echo.stuck-on-closed-client",
    "echo.wrong-bytes",
    // stress
    "stress.closed-mid-run",
    "stress.died",
    "stress.died-between-runs",
    "stress.framing",
    "stress.refused",
    "stress.stopped-answering",
    "stress.stopped-by-the-checker",
    "stress.unclassified",
    // frames
    "frames.died-after-a-client",
    "frames.empty-frame",
    "frames.large-frame",
    "frames.pipelined",
    "frames.prefix-byte-order",
    "frames.split-prefix",
    "frames.split-read",
    "frames.stopped-accepting",
    // oversize
    "oversize.echoed",
    "oversize.error-ends-the-server",
    "oversize.limit-exclusive",
    "oversize.next-client-unserved",
    "oversize.not-closed",
    "oversize.not-logged",
    "oversize.stopped-accepting",
    // concurrency
    "concurrency.died-after-clients-left",
    "concurrency.echo-fails-beside-others",
    "concurrency.held-client-dropped",
    "concurrency.no-proc-status",
    "concurrency.one-at-a-time",
    "concurrency.single-client-fails",
    "concurrency.stopped-accepting",
    "concurrency.thread-limit",
    "concurrency.too-few-threads",
    // pool
    "pool.clients-lost",
    "pool.died",
    "pool.drops-unserved",
    "pool.lock-held-while-serving",
    "pool.too-few-workers",
    "pool.too-many-at-once",
    "pool.workers-not-reused",
    "pool.wrong-echo",
    // process
    "process.child-processes",
    "process.died",
    "process.extra-threads",
    "process.too-few-threads",
    // hold
    "hold.blocking-sockets",
    "hold.closed-held",
    "hold.logs-while-idle",
    "hold.one-at-a-time",
    "hold.reset-disturbs-others",
    "hold.reset-ends-the-server",
    "hold.served-only-some",
    "hold.sockets-not-kept",
    "hold.stopped-accepting",
    "hold.stuck-in-a-blocking-call",
    // stalled_client
    "stalled_client.blocks-on-partial-frame",
    "stalled_client.closed-on-half-a-frame",
    "stalled_client.no-accept",
    "stalled_client.partial-frame-lost",
    "stalled_client.stopped-accepting",
    // idle_cpu
    "idle_cpu.died",
    "idle_cpu.no-echo",
    "idle_cpu.spins",
    "idle_cpu.stopped-accepting",
    // slow_reader
    "slow_reader.blocks-on-write",
    "slow_reader.bytes-lost",
    "slow_reader.closed-early",
    "slow_reader.died",
    "slow_reader.echo-stalled",
    "slow_reader.no-accept",
    "slow_reader.stopped-accepting",
    // epoll
    "epoll.client-not-registered",
    "epoll.echoes-lost-while-slow",
    "epoll.extra-threads",
    "epoll.forked",
    "epoll.modify-drops-et",
    "epoll.no-epoll-instance",
    "epoll.not-edge-triggered",
    "epoll.not-serving",
    "epoll.reset-ends-the-server",
    "epoll.reset-left-open",
    "epoll.reset-starves-others",
    "epoll.spins",
    "epoll.stopped-accepting",
    "epoll.stopped-reading",
    "epoll.waits-elsewhere",
    "epoll.waits-in-poll",
    // burst
    "burst.died",
    "burst.died-after-the-burst",
    "burst.framing",
    "burst.no-accept",
    "burst.read-stall",
    // connect_burst
    "connect_burst.accept-stall",
    "connect_burst.died",
    "connect_burst.died-after-the-burst",
    "connect_burst.logs-would-block",
    // c10k
    "c10k.accept-fails-at-the-fd-limit",
    "c10k.died-connecting",
    "c10k.died-echoing",
    "c10k.extra-threads",
    "c10k.memory-per-connection",
    "c10k.unserved-at-the-fd-limit",
    // stats
    "stats.echo-disturbed",
    "stats.lines-late",
    "stats.lines-not-every-second",
    "stats.misshapen-line",
    "stats.no-lines",
    "stats.stopped-accepting",
    "stats.wrong-connection-counts",
    "stats.wrong-rates",
    // shutdown
    "shutdown.closes-late",
    "shutdown.closing-count",
    "shutdown.died-before-the-signal",
    "shutdown.eintr-ends-the-loop",
    "shutdown.errors-count",
    "shutdown.exit-slow",
    "shutdown.exit-status",
    "shutdown.exit-status-with-non-readers",
    "shutdown.lines-missing",
    "shutdown.no-grace-bound",
    "shutdown.no-signal-handler",
    "shutdown.others-held-by-a-non-reader",
    "shutdown.pending-echoes-lost",
    "shutdown.polls-while-pending",
    "shutdown.requests-count",
    "shutdown.reset-on-close",
    "shutdown.second-signal-spins",
    "shutdown.signal-not-handled",
    "shutdown.stopped-accepting",
    "shutdown.stopped-reading-before-the-signal",
    "shutdown.unread-input-lost",
    "shutdown.unserved-before-the-signal",
    // backpressure
    "backpressure.bytes-lost",
    "backpressure.died",
    "backpressure.died-after-a-client",
    "backpressure.never-resumes",
    "backpressure.no-accept",
    "backpressure.no-echo",
    "backpressure.unbounded-buffering",
    "backpressure.unbounded-buffering-ends-the-server",
    // bad_input
    "bad_input.error-ends-the-server",
    "bad_input.no-accept",
    "bad_input.not-logged",
    "bad_input.others-disturbed",
    "bad_input.replied",
    "bad_input.stopped-accepting",
    "bad_input.trusts-the-length",
    // idle_timeout
    "idle_timeout.active-client-closed",
    "idle_timeout.closed-too-early",
    "idle_timeout.died",
    "idle_timeout.died-while-connecting",
    "idle_timeout.echo-broken",
    "idle_timeout.not-closed",
    "idle_timeout.spins",
    // disconnects
    "disconnects.close-mid-frame",
    "disconnects.eof-behind-a-frame-missed",
    "disconnects.half-close-drops-echoes",
    "disconnects.reset-ends-the-server",
    // fd_leak
    "fd_leak.died",
    "fd_leak.echo-fails-after-cycles",
    "fd_leak.no-echo",
    "fd_leak.sockets-kept",
    // fd_exhaustion
    "fd_exhaustion.accept-retried-forever",
    "fd_exhaustion.dies-at-the-fd-limit",
    "fd_exhaustion.never-recovers",
    "fd_exhaustion.spins-at-the-fd-limit",
    // capacity
    "capacity.held-unserved-after-refusal",
    "capacity.never-comes-back",
    "capacity.no-limit",
    "capacity.over-the-limit-not-closed",
    "capacity.refusal-closes-held",
    "capacity.refusal-ends-the-server",
    "capacity.refuses-below-the-limit",
    // http
    "http.405-without-allow",
    "http.bad-content-length-accepted",
    "http.body-parsed-as-request",
    "http.body-split-lost",
    "http.bytes-after-the-response",
    "http.closed-after-405",
    "http.closed-before-response",
    "http.closed-without-400",
    "http.connection-header-case",
    "http.dot-segment-refused",
    "http.file-not-served",
    "http.head-limit-too-small",
    "http.head-limit-waits-for-the-end",
    "http.head-with-body",
    "http.http10-kept-open",
    "http.malformed-request-accepted",
    "http.malformed-response",
    "http.missing-not-404",
    "http.no-content-length",
    "http.no-head-limit",
    "http.not-405",
    "http.not-closed-after-400",
    "http.not-closed-after-close",
    "http.path-leaves-the-root",
    "http.pipelined-unanswered",
    "http.request-unanswered",
    "http.reset",
    "http.split-request-refused",
    "http.stopped-accepting",
    "http.wrong-body",
    "http.wrong-content-length",
    "http.wrong-content-type",
    // http_process, http_idle_cpu
    "http_process.child-processes",
    "http_process.not-served",
    "http_process.thread-per-connection",
    "http_process.thread-per-request",
    "http_idle_cpu.not-served",
    "http_idle_cpu.spins",
    // http_load
    "http_load.failed-transactions",
    "http_load.fds-leaked",
    "http_load.rss-grew",
    // broken_pipes
    "broken_pipes.error-ends-the-server",
    "broken_pipes.retries-failed-write",
    // perf
    "perf.buffers-kept",
    "perf.burst-quadratic",
    "perf.burst-slow",
    "perf.epoll-ctl-per-event",
    "perf.one-event-per-wait",
    "perf.read-until-eagain",
    "perf.user-cpu",
    "perf.writes-per-echo",
    // loops
    "loops.listener-unserved",
    "loops.one-loop-works",
    "loops.too-few-loops",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"<step>.<name>"` string in the check modules' sources.
    fn ids_in_the_sources() -> std::collections::BTreeSet<String> {
        let steps = super::super::STEP_NAMES.join("|");
        let id =
            regex::Regex::new(&format!(r#""((?:{steps})\.[a-z0-9]+(?:-[a-z0-9]+)*)""#)).unwrap();
        let mut found = std::collections::BTreeSet::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/checks"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && path.file_name().is_some_and(|n| n != "causes.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    found.extend(id.captures_iter(&text).map(|c| c[1].to_string()));
                }
            }
        }
        found
    }

    #[test]
    fn every_cause_id_of_the_checks_is_listed_and_every_listed_one_is_given() {
        let listed: std::collections::BTreeSet<String> =
            CAUSE_IDS.iter().map(|id| id.to_string()).collect();
        assert_eq!(listed.len(), CAUSE_IDS.len(), "an id is listed twice");
        let written = ids_in_the_sources();
        let unlisted: Vec<&String> = written.difference(&listed).collect();
        let unused: Vec<&String> = listed.difference(&written).collect();
        assert!(
            unlisted.is_empty(),
            "cause ids given in checker/src/checks but missing from CAUSE_IDS (checks/causes.rs): {unlisted:?}"
        );
        assert!(
            unused.is_empty(),
            "CAUSE_IDS (checks/causes.rs) lists ids no check gives: {unused:?}"
        );
    }

    #[test]
    fn every_cause_id_is_a_step_name_then_a_kebab_case_name() {
        let shape = regex::Regex::new(r"^([a-z0-9_]+)\.[a-z0-9]+(-[a-z0-9]+)*$").unwrap();
        for id in CAUSE_IDS {
            let step = shape
                .captures(id)
                .unwrap_or_else(|| panic!("`{id}` is not `<step>.<kebab-case>`"))[1]
                .to_string();
            assert!(
                super::super::STEP_NAMES.contains(&step.as_str()),
                "`{id}` does not begin with a step name"
            );
        }
    }
}
