//! What the checker needs from the machine, and whether it has it: checked
//! before every run (shortfalls are reported with the fix) and shown whole
//! by `checker doctor`. Load probes fail obscurely on a machine that cannot
//! open enough sockets; better to say so up front.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Open files the checker may need at once: 10,000 client sockets of the
/// C10K lesson, plus margin for pipes and the server's own probes.
const FILES_NEEDED: u64 = 12_000;
/// Ephemeral ports for 10,000 held connections plus retries in TIME_WAIT.
const PORTS_NEEDED: u64 = 20_000;
/// A listen backlog this small overflows under the connect bursts.
const SOMAXCONN_NEEDED: u64 = 1_024;

pub struct Finding {
    pub what: &'static str,
    pub value: String,
    pub ok: bool,
    pub fix: &'static str,
}

/// Raises the checker's own open-file soft limit to the hard limit (the
/// servers it starts get the limit each lesson asks for).
pub fn raise_own_file_limit() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub fn findings() -> Vec<Finding> {
    let mut found = Vec::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    found.push(Finding {
        what: "Linux kernel",
        value: kernel.trim().to_string(),
        ok: !kernel.trim().is_empty(),
        fix: "the course needs Linux (epoll, /proc): use the devcontainer or a Linux VM",
    });
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    found.push(Finding {
        what: "open-file hard limit",
        value: hard.to_string(),
        ok: hard >= FILES_NEEDED,
        fix: "raise it (e.g. `ulimit -Hn 65536` as root, or nofile in /etc/security/limits.conf); the C10K lesson holds 10,000 connections",
    });
    let ports = read_numbers("/proc/sys/net/ipv4/ip_local_port_range");
    let port_count = match ports.as_slice() {
        [low, high] => high.saturating_sub(*low) + 1,
        _ => 0,
    };
    found.push(Finding {
        what: "ephemeral ports",
        value: format!("{port_count} ({})", ports.iter().map(u64::to_string).collect::<Vec<_>>().join("-")),
        ok: port_count >= PORTS_NEEDED,
        fix: "widen net.ipv4.ip_local_port_range (e.g. `sysctl -w net.ipv4.ip_local_port_range=\"15000 64000\"`)",
    });
    let somaxconn = read_numbers("/proc/sys/net/core/somaxconn")
        .first()
        .copied()
        .unwrap_or(0);
    found.push(Finding {
        what: "net.core.somaxconn",
        value: somaxconn.to_string(),
        ok: somaxconn >= SOMAXCONN_NEEDED,
        fix: "raise it (`sysctl -w net.core.somaxconn=4096`): connect bursts overflow a small accept queue",
    });
    let tw_reuse = read_numbers("/proc/sys/net/ipv4/tcp_tw_reuse")
        .first()
        .copied()
        .unwrap_or(0);
    found.push(Finding {
        what: "net.ipv4.tcp_tw_reuse",
        value: tw_reuse.to_string(),
        ok: tw_reuse != 0,
        fix: "set it to 1 or 2 (`sysctl -w net.ipv4.tcp_tw_reuse=1`) so back-to-back 10k runs can reuse ports in TIME_WAIT",
    });
    found.push(ptrace_finding());
    found
}

/// w04-l23's `perf` step counts the server's system calls with ptrace, as
/// `strace -c` does; a container's seccomp profile or
/// `kernel.yama.ptrace_scope` 3 forbids it. Tried on a `sleep` child.
fn ptrace_finding() -> Finding {
    use nix::sys::ptrace;
    use nix::unistd::Pid;
    let scope = read_numbers("/proc/sys/kernel/yama/ptrace_scope")
        .first()
        .map_or("no yama".to_string(), |s| format!("ptrace_scope {s}"));
    let allowed = match std::process::Command::new("sleep").arg("10").spawn() {
        Ok(mut child) => {
            let pid = Pid::from_raw(child.id() as i32);
            let seized = ptrace::seize(pid, ptrace::Options::empty()).is_ok();
            let _ = child.kill();
            let _ = child.wait();
            seized
        }
        Err(_) => false,
    };
    Finding {
        what: "ptrace of a child",
        value: format!("{} ({scope})", if allowed { "allowed" } else { "refused" }),
        ok: allowed,
        fix: "w04-l23 counts the server's system calls with ptrace: allow it (kernel.yama.ptrace_scope 0 or 1; in a container, `--cap-add SYS_PTRACE` or a seccomp profile that permits ptrace)",
    }
}

fn read_numbers(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// `checker doctor`: the whole table; true when everything is fine.
pub fn doctor() -> bool {
    let findings = findings();
    for f in &findings {
        println!(
            "{:<4} {:<24} {}",
            if f.ok { "ok" } else { "LOW" },
            f.what,
            f.value
        );
        if !f.ok {
            println!("     fix: {}", f.fix);
        }
    }
    findings.iter().all(|f| f.ok)
}

/// The shortfalls, one line each, for the start of a run.
pub fn warnings() -> Vec<String> {
    findings()
        .into_iter()
        .filter(|f| !f.ok)
        .map(|f| format!("machine: {} is {} — {}", f.what, f.value, f.fix))
        .collect()
}
