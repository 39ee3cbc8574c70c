//! The apps on the server side of every workload, run as threads inside a
//! server pod's netns: an echo server (ping-pong and connection rate), an
//! HTTP/1.1 keep-alive server answering each request with a 1 KiB body, and
//! a sink for bulk streams that reports the byte count at EOF. One thread
//! per connection; all stop (and are joined) when the set is dropped.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::{BenchError, Result};
use super::{http, net};
use crate::sim::Pod;

pub const ECHO_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 5201;
/// Body of every HTTP response.
pub const HTTP_BODY: usize = 1024;

type Handler = fn(TcpStream, &AtomicBool);

/// The three servers of one pod.
pub struct ServerSet {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptors: Vec<JoinHandle<()>>,
}

impl ServerSet {
    /// Starts echo, HTTP and sink servers in `pod` (on all addresses),
    /// every thread pinned to `cpu`.
    pub fn start(pod: &Pod, cpu: Option<usize>) -> Result<Self> {
        let mut set = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
            acceptors: Vec::new(),
        };
        let servers: [(u16, Handler); 3] = [
            (ECHO_PORT, echo),
            (HTTP_PORT, http_serve),
            (SINK_PORT, sink),
        ];
        for (port, handler) in servers {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = set.stop.clone();
            let threads = set.threads.clone();
            let h = pod
                .thread(move || {
                    let bound = net::pin_thread(cpu).and_then(|()| {
                        let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    });
                    match bound {
                        Ok(l) => {
                            let _ = tx.send(Ok(()));
                            accept_loop(l, handler, &stop, &threads);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .map_err(BenchError::setup_anyhow(format!(
                    "server thread in {}",
                    pod.name
                )))?;
            set.acceptors.push(h);
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(BenchError::setup(
                        format!("server on port {port} in pod {}", pod.name),
                        e,
                    ))
                }
                Err(_) => {
                    return Err(BenchError::setup(
                        format!("server on port {port} in pod {}", pod.name),
                        "did not start",
                    ))
                }
            }
        }
        Ok(set)
    }
}

impl Drop for ServerSet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.acceptors.drain(..) {
            let _ = h.join();
        }
        let conns: Vec<_> = self
            .threads
            .lock()
            .map(|mut v| v.drain(..).collect())
            .unwrap_or_default();
        for h in conns {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    l: TcpListener,
    handler: Handler,
    stop: &Arc<AtomicBool>,
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                if s.set_nonblocking(false)
                    .and_then(|()| net::prepare(&s))
                    .is_err()
                {
                    continue;
                }
                let stop = stop.clone();
                let h = std::thread::spawn(move || handler(s, &stop));
                if let Ok(mut v) = threads.lock() {
                    // Reap finished connection threads as we go.
                    v.retain(|h| !h.is_finished());
                    v.push(h);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                net::poll_fd(l.as_raw_fd(), libc::POLLIN, 100);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A deadline that only the stop flag ends (idle keep-alive connections).
fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn read_or_stop(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        // Short slices so a stop is seen within one read timeout.
        match net::read_some(s, buf, Instant::now() + Duration::from_millis(250)) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == ErrorKind::TimedOut => continue,
            Err(_) => return None,
        }
    }
}

fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_or_stop(&mut s, &mut buf, stop) {
        if net::write_all(&mut s, &buf[..n], far()).is_err() {
            return;
        }
    }
}

fn sink(mut s: TcpStream, stop: &AtomicBool) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while let Some(n) = read_or_stop(&mut s, &mut buf, stop) {
        total += n as u64;
    }
    let _ = net::write_all(
        &mut s,
        &total.to_le_bytes(),
        Instant::now() + Duration::from_secs(5),
    );
}

fn http_serve(mut s: TcpStream, stop: &AtomicBool) {
    let body = net::payload(HTTP_BODY, 7);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {HTTP_BODY}\r\n\r\n"
    );
    let mut resp = head.into_bytes();
    resp.extend_from_slice(&body);
    let mut conn = http::Conn::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match conn.read_message(&mut s, Instant::now() + Duration::from_millis(250)) {
            Ok(_) => {
                if net::write_all(&mut s, &resp, far()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
    }
}
