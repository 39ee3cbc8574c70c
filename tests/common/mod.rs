//! Helpers shared by the root integration tests: echo servers and clients
//! that run inside pods, and environment checks.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use meshlane::sim::{self, Pod};

/// Fails (never skips) when the machine cannot run root tests.
pub fn require_root_env() {
    if let Err(e) = sim::can_run_root_tests() {
        panic!("root integration tests need root, bpffs and cgroup v2 (run `make test`): {e}");
    }
}

/// Echo server in `pod` on `addr`; one thread per connection, echoes until
/// EOF then closes its write side. Returns the bound address.
pub fn echo_server(pod: &Pod, addr: SocketAddr) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.thread(move || {
        let l = TcpListener::bind(addr).expect("bind echo server");
        tx.send(l.local_addr().unwrap()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    })
    .expect("echo server thread");
    rx.recv_timeout(Duration::from_secs(5))
        .expect("echo server up")
}

/// Deterministic test payload.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// Sends `data` on `s` while reading the echo; returns what came back.
pub fn echo_roundtrip(mut s: TcpStream, data: Vec<u8>, chunk: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let len = data.len();
    let writer = std::thread::spawn(move || {
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).expect("write");
        }
        w.shutdown(Shutdown::Write).expect("shutdown write");
    });
    let got = read_all(&mut s, len, Duration::from_secs(120));
    writer.join().unwrap();
    got
}

/// Reads to EOF like an event-driven app would: a spurious EAGAIN (which a
/// sockhash socket can return even in blocking mode, see
/// docs/ARCHITECTURE.md "Kernel notes") means "poll and read again".
pub fn read_all(s: &mut TcpStream, hint: usize, limit: Duration) -> Vec<u8> {
    let start = std::time::Instant::now();
    let mut got = Vec::with_capacity(hint);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                assert!(
                    start.elapsed() < limit,
                    "read stalled after {} bytes",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("read after {} bytes: {e}", got.len()),
        }
    }
}

/// Connects from inside `pod` and runs an echo round trip there.
pub fn echo_from(pod: &Pod, to: SocketAddr, data: Vec<u8>, chunk: usize) -> Vec<u8> {
    pod.run(move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        echo_roundtrip(s, data, chunk)
    })
    .expect("entering pod")
}
