//! The TCP sockets of a process's network namespace, from
//! `/proc/PID/net/tcp` and `tcp6`: what the kernel holds for each
//! connection (bytes unread by the process, bytes not yet acknowledged by
//! the peer), where no reading of the process's own could be trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

use anyhow::{Context, Result};
use nix::unistd::Pid;

/// One row of /proc/PID/net/tcp (or tcp6).
#[derive(Debug, PartialEq)]
pub(super) struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes in the send queue (not yet acknowledged by the peer).
    pub tx_queue: u64,
    /// Bytes received and not yet read by the process.
    pub rx_queue: u64,
}

/// The server's side of the checker's connection `stream`.
pub(super) fn server_side<'a>(
    sockets: &'a [TcpSocket],
    stream: &TcpStream,
) -> Option<&'a TcpSocket> {
    let mine = canonical(stream.local_addr().ok()?);
    let theirs = canonical(stream.peer_addr().ok()?);
    sockets
        .iter()
        .find(|s| s.local == theirs && s.remote == mine)
}

/// The checker's own side of its connection `stream`.
pub(super) fn client_side<'a>(
    sockets: &'a [TcpSocket],
    stream: &TcpStream,
) -> Option<&'a TcpSocket> {
    let mine = canonical(stream.local_addr().ok()?);
    let theirs = canonical(stream.peer_addr().ok()?);
    sockets
        .iter()
        .find(|s| s.local == mine && s.remote == theirs)
}

/// An address with IPv4-mapped IPv6 written as IPv4 (a dual-stack
/// listener's sockets show in tcp6).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Every TCP socket in the network namespace of `pid` (the server's and
/// the checker's sides of each loopback connection alike).
pub(super) fn tcp_sockets(pid: Pid) -> Result<Vec<TcpSocket>> {
    let mut found = Vec::new();
    for file in ["tcp", "tcp6"] {
        let path = format!("/proc/{}/net/{file}", pid.as_raw());
        match std::fs::read_to_string(&path) {
            Ok(text) => found.extend(text.lines().skip(1).filter_map(parse_tcp_line)),
            // No IPv6 in this kernel: only tcp matters.
            Err(_) if file == "tcp6" => {}
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        }
    }
    Ok(found)
}

/// `  0: 0100007F:1F90 0100007F:C350 01 00000000:00000010 ...`
fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let mut fields = line.split_whitespace();
    fields.next()?; // the slot number
    let local = parse_proc_addr(fields.next()?)?;
    let remote = parse_proc_addr(fields.next()?)?;
    fields.next()?; // the state
    let (tx, rx) = fields.next()?.split_once(':')?;
    Some(TcpSocket {
        local,
        remote,
        tx_queue: u64::from_str_radix(tx, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
    })
}

/// An address as the kernel prints it: the IP as 32-bit words in host
/// byte order (one for IPv4, four for IPv6), `:`, the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_the_queues_of_a_proc_net_tcp_line() {
        let line = "   3: 0100007F:1F90 0100007F:C350 01 00000020:000005DC 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1";
        let socket = parse_tcp_line(line).expect("a socket");
        assert_eq!(socket.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(socket.remote, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(socket.tx_queue, 0x20);
        assert_eq!(socket.rx_queue, 1500);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_mapped_ipv6_address_reads_as_ipv4() {
        let addr = parse_proc_addr("0000000000000000FFFF00000100007F:1F90").expect("an address");
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn the_header_line_is_no_socket() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_tcp_line(header), None);
    }
}
