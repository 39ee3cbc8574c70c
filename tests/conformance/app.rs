//! The application side of the conformance runs: a tiny HTTP server that
//! answers with what it sees (its peer and its local address), a client
//! probe that reports what it sees (getpeername) and what the server saw,
//! and a DNS-proxy stand-in on the proxy's DNS port. All of them are real
//! sockets inside the pods; nothing is simulated.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshlane::sim::Pod;

use crate::common::{read_exact_by, read_some, serve_one, set_io_slices, write_all_by};

/// Switches the calling thread (only it: raw syscalls, not the libc
/// wrappers that change every thread) to `uid`/`gid`, so its sockets are
/// owned by them for iptables' owner match and the BPF uid/gid checks.
pub fn become_thread(uid: u32, gid: u32) {
    become_thread_split((uid, uid), (gid, gid));
}

/// [`become_thread`] with different real and effective ids: `(real,
/// effective)` for the uid and the gid. The fs ids follow the effective
/// ones, and they are what iptables' owner match compares.
pub fn become_thread_split(uid: (u32, u32), gid: (u32, u32)) {
    // SAFETY: plain syscalls on the current thread's credentials.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, gid.0, gid.1, gid.1), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid.0, uid.1, uid.1), 0);
    }
}

/// A server thread that stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if start.elapsed() > Duration::from_secs(20) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
    Some(got)
}

/// HTTP server in `pod` on `addr`: each response body is
/// `peer=<ip> local=<ip:port>` as the accepted socket sees them.
pub fn http_server(pod: &Pod, addr: SocketAddr) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stop.clone();
    let thread = pod
        .thread(move || {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind {addr}: {e}")));
                    return;
                }
            };
            l.set_nonblocking(true).expect("nonblocking listener");
            let _ = tx.send(Ok(l.local_addr().expect("local addr")));
            while !st.load(Ordering::Relaxed) {
                let (mut s, peer) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    if read_request(&mut s).is_none() {
                        return;
                    }
                    let local = s.local_addr().map_or("?".into(), |a| a.to_string());
                    let body = format!("peer={} local={}", peer.ip(), local);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        body.len(),
                        body
                    );
                    let _ = s.write_all(resp.as_bytes());
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    // Let the peer read to EOF before the socket goes away.
                    let mut sink = [0u8; 512];
                    let _ = s.read(&mut sink);
                });
            }
        })
        .expect("server thread");
    let addr = match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("server on {addr} did not start: {e}"),
    };
    Server {
        addr,
        stop,
        thread: Some(thread),
    }
}

/// What one client connection observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Served: the server's peer IP and local address, the app's getpeername.
    Served {
        server_peer: std::net::IpAddr,
        server_local: SocketAddr,
        app_peer: SocketAddr,
    },
    /// connect() was refused.
    Refused,
    /// Anything else (timeout, reset, garbage), with the detail.
    Failed(String),
}

/// Options of one probe connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct As {
    /// Run the client as this (uid, gid); None = root.
    pub ids: Option<(u32, u32)>,
    /// Run the client with these ((ruid, euid), (rgid, egid)) instead.
    pub split_ids: Option<((u32, u32), (u32, u32))>,
    /// Connect with an MPTCP socket (IPPROTO_MPTCP) instead of TCP.
    pub mptcp: bool,
}

/// Connects like `TcpStream::connect_timeout`, over MPTCP when asked.
fn connect(to: SocketAddr, mptcp: bool) -> std::io::Result<TcpStream> {
    if !mptcp {
        return TcpStream::connect_timeout(&to, Duration::from_secs(5));
    }
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_MPTCP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let addr = nix::sys::socket::SockaddrStorage::from(to);
    nix::sys::socket::connect(fd, &addr).map_err(std::io::Error::from)?;
    Ok(TcpStream::from(owned))
}

fn parse_body(resp: &[u8]) -> Option<(std::net::IpAddr, SocketAddr)> {
    let text = String::from_utf8_lossy(resp);
    let (_, body) = text.split_once("\r\n\r\n")?;
    let mut peer = None;
    let mut local = None;
    for w in body.split_whitespace() {
        if let Some(v) = w.strip_prefix("peer=") {
            peer = v.parse().ok();
        }
        if let Some(v) = w.strip_prefix("local=") {
            local = v.parse().ok();
        }
    }
    Some((peer?, local?))
}

/// A connection the peer closed or reset before answering. FIN or RST
/// depends on whether the request reached the closing proxy first, a race
/// each run loses differently, so the two read the same.
const NO_ANSWER: &str = "closed without an answer";

fn closed_by_peer(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Connects from inside `pod` to `to` and does one request.
pub fn probe(pod: &Pod, to: SocketAddr, who: As) -> Seen {
    pod.run(move || {
        if let Some((u, g)) = who.ids {
            become_thread(u, g);
        }
        if let Some((u, g)) = who.split_ids {
            become_thread_split(u, g);
        }
        let mut s = match connect(to, who.mptcp) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Seen::Refused,
            Err(e) => return Seen::Failed(format!("connect {to}: {e}")),
        };
        let app_peer = match s.peer_addr() {
            Ok(a) => a,
            Err(e) => return Seen::Failed(format!("getpeername: {e}")),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        if let Err(e) = s.write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n") {
            if closed_by_peer(&e) {
                return Seen::Failed(NO_ANSWER.into());
            }
            return Seen::Failed(format!("write: {e}"));
        }
        let start = Instant::now();
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if start.elapsed() > Duration::from_secs(20) {
                        return Seen::Failed("read timed out".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if resp.is_empty() && closed_by_peer(&e) => {
                    return Seen::Failed(NO_ANSWER.into())
                }
                Err(e) if resp.is_empty() => return Seen::Failed(format!("read: {e}")),
                Err(_) => break,
            }
        }
        match parse_body(&resp) {
            None if resp.is_empty() => Seen::Failed(NO_ANSWER.into()),
            Some((server_peer, server_local)) => Seen::Served {
                server_peer,
                server_local,
                app_peer,
            },
            None => Seen::Failed(format!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&resp)
            )),
        }
    })
    .expect("entering pod")
}

/// A one-connection echo server in `pod` on 0.0.0.0:`port`: echoes until
/// EOF; join the handle for the peer address the server saw.
pub fn one_shot_echo_server(pod: &Pod, port: u16) -> JoinHandle<SocketAddr> {
    let (_, h) = serve_one(pod, ([0, 0, 0, 0], port).into(), |mut s| {
        let peer = s.peer_addr().expect("echo server peer");
        // The client enforces the limits; the server just waits.
        let far = Instant::now() + Duration::from_secs(3600);
        let mut buf = [0u8; 4096];
        loop {
            match read_some(&mut s, &mut buf, far) {
                Ok(0) => break,
                Ok(n) => write_all_by(&mut s, &buf[..n], far).expect("echo server write"),
                Err(e) => panic!("echo server: {e}"),
            }
        }
        peer
    });
    h
}

/// Writes `msg` and reads the same number of bytes back, byte for byte
/// what the peer sent; panics on EOF, an error, or no echo within 20 s.
pub fn echo_once(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    set_io_slices(s);
    write_all_by(s, msg, deadline).expect("echo write");
    read_exact_by(s, msg.len(), deadline)
}

/// A DNS-proxy stand-in on `port` (UDP and TCP, IPv4 and IPv6 loopback)
/// running as the proxy `uid`/`gid`. UDP: answers each datagram with
/// `dns-proxy:<payload>`. TCP: writes `dns-proxy` and closes.
pub struct DnsProxy {
    pub stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// How many datagrams/connections it served.
    pub served: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn dns_proxy(pod: &Pod, port: u16, uid: u32, gid: u32) -> DnsProxy {
    dns_server(
        pod,
        vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")],
        "dns-proxy",
        uid,
        gid,
    )
}

/// A DNS server stand-in on every address of `binds`, UDP and TCP,
/// answering with `tag` (UDP: `tag:<payload>`).
pub fn dns_server(
    pod: &Pod,
    binds: Vec<String>,
    tag: &'static str,
    uid: u32,
    gid: u32,
) -> DnsProxy {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let n = binds.len() * 2;
    for bind in binds {
        let (st, sv, up) = (stop.clone(), served.clone(), tx.clone());
        let b = bind.clone();
        threads.push(
            pod.thread(move || {
                // Owned by the proxy user from creation (the owner match
                // of Istio's conntrack zone rules looks at the socket).
                become_thread(uid, gid);
                let u = UdpSocket::bind(&b).expect("dns udp bind");
                u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let _ = up.send(b.clone());
                let mut buf = [0u8; 512];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        let mut out = format!("{tag}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        let _ = u.send_to(&out, from);
                        sv.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("dns udp thread"),
        );
        let (st, sv, up) = (stop.clone(), served.clone(), tx.clone());
        threads.push(
            pod.thread(move || {
                become_thread(uid, gid);
                let l = TcpListener::bind(&bind).expect("dns tcp bind");
                l.set_nonblocking(true).unwrap();
                let _ = up.send(bind.clone());
                while !st.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(tag.as_bytes());
                            sv.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .expect("dns tcp thread"),
        );
    }
    for _ in 0..n {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("dns proxy listeners up");
    }
    DnsProxy {
        stop,
        threads,
        served,
    }
}

/// An unconnected UDP socket of `server`'s family on any port, with a 3 s
/// read timeout.
fn udp_client(server: SocketAddr) -> Result<UdpSocket, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    u.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    Ok(u)
}

/// UDP query from `pod` to `server`: (reply, the address recvfrom reports).
pub fn dns_udp(
    pod: &Pod,
    server: SocketAddr,
    ids: Option<(u32, u32)>,
) -> Result<(String, SocketAddr), String> {
    pod.run(move || {
        if let Some((u, g)) = ids {
            become_thread(u, g);
        }
        let u = udp_client(server)?;
        u.send_to(b"q", server).map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 512];
        let (n, from) = u.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .expect("entering pod")
}

/// TCP to `server` from `pod`: (what it read, getpeername).
pub fn dns_tcp(pod: &Pod, server: SocketAddr) -> Result<(String, SocketAddr), String> {
    pod.run(move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        let peer = s.peer_addr().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let start = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock
                        && start.elapsed() < Duration::from_secs(3) =>
                {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok((String::from_utf8_lossy(&got).into_owned(), peer))
    })
    .expect("entering pod")
}

/// Connected UDP (what glibc's resolver does): connect, send, recv;
/// returns the reply and getpeername.
pub fn dns_udp_connected(pod: &Pod, server: SocketAddr) -> Result<(String, SocketAddr), String> {
    pod.run(move || {
        let u = udp_client(server)?;
        u.connect(server).map_err(|e| format!("connect: {e}"))?;
        let peer = u.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
        u.send(b"c").map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 512];
        let n = u.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), peer))
    })
    .expect("entering pod")
}
