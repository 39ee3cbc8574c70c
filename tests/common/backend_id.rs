//! Servers that say which backend answered: the bypass tests tell by the
//! first byte which endpoint a connection reached.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use meshlane::sim::Pod;

use super::listen;

/// A server in `pod` on `port`: each connection gets `id` (one byte),
/// then an echo of what it sends until EOF. Dual stack when the pod has
/// an IPv6 address.
pub fn id_server(pod: &Pod, port: u16, id: u8) {
    let any: IpAddr = if pod.ip6.is_some() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    serve_each(pod, SocketAddr::new(any, port), move |mut s| {
        if s.write_all(&[id]).is_ok() && echo_until_eof(&mut s) {
            let _ = s.shutdown(Shutdown::Write);
        }
    });
}

/// Listens on `addr` in `pod` and runs `handle` for each connection on a
/// thread of its own; returns once the listener is up.
pub fn serve_each(
    pod: &Pod,
    addr: SocketAddr,
    handle: impl Fn(TcpStream) + Clone + Send + 'static,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.thread(move || {
        let l = listen(addr);
        tx.send(()).expect("report");
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let handle = handle.clone();
            std::thread::spawn(move || handle(s));
        }
    })
    .expect("server thread");
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// Echoes what `s` receives until EOF or an error; false if a write
/// failed.
pub fn echo_until_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return false;
                }
            }
        }
    }
}

/// Connects (on the calling thread, inside a pod) and reads who answered.
pub fn dial(to: SocketAddr) -> (TcpStream, u8) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut id = [0u8; 1];
    s.read_exact(&mut id).expect("the server's id");
    (s, id[0])
}
