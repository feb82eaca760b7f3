//! Free-port selection for test clusters.
//!
//! Every node listens on TCP (wire protocol) and UDP (QUIC) on the same port number, so a port
//! counts as free only when both bind. Ports are drawn from a range below the kernel's ephemeral
//! range (32768-60999 on Linux), so an outgoing client socket can never grab a port between the
//! check and the server binding it; a process-wide set keeps parallel tests apart.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    sync::{Mutex, OnceLock},
};

use rand::Rng;

/// Lowest port handed out.
const PORT_LOW: u16 = 12_000;
/// One past the highest port handed out (below the ephemeral range).
const PORT_HIGH: u16 = 32_000;
/// How many random candidates are tried before giving up.
const PORT_ATTEMPTS_MAX: usize = 2_000;

fn taken() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Whether nothing on 127.0.0.1 holds `port`, on TCP nor on UDP.
pub fn port_is_free(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// Reserves one free port for this process.
pub fn free_port() -> anyhow::Result<u16> {
    free_port_block(1)
}

/// Reserves `count` consecutive free ports and returns the first (for `shoal up`, which puts the
/// router on PORT and the replica-set members after it; see `up::up_ports`).
pub fn free_port_block(count: u16) -> anyhow::Result<u16> {
    anyhow::ensure!(count > 0, "a port block needs at least one port");
    anyhow::ensure!(
        count < PORT_HIGH - PORT_LOW,
        "port block of {count} is too large"
    );
    let mut rng = rand::rng();
    let mut set = taken()
        .lock()
        .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
    for _ in 0..PORT_ATTEMPTS_MAX {
        let base = rng.random_range(PORT_LOW..PORT_HIGH - count);
        let block = base..base + count;
        if block.clone().any(|port| set.contains(&port)) {
            continue;
        }
        if block.clone().all(port_is_free) {
            set.extend(block);
            return Ok(base);
        }
    }
    anyhow::bail!("no block of {count} free ports after {PORT_ATTEMPTS_MAX} attempts")
}
