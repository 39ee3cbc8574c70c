//! Issue 9: per-connection interception state lives exactly as long as its
//! socket. 5,000 live redirected connections keep their original
//! destination (the proxy's SO_ORIGINAL_DST) and the app's getpeername
//! through a flood of 100,000 SYNs that never complete, at the default map
//! sizes, and the bookkeeping map is back to its idle fill afterwards. (A
//! node-wide LRU keyed by connection lost live entries here: every SYN
//! steered inbound used to add an entry nobody deleted.)
mod common;
mod conformance;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;

use common::{listen, raise_nofile, require_root_env};
use conformance::app::become_thread;
use meshlane::pods::PodSpec;
use meshlane::sim::{Node, NodeOptions};

const LIVE: u16 = 5_000;
const FIRST_PORT: u16 = 20_000;
const SPOOFED_HOSTS: u8 = 50;
const PORTS_PER_HOST: u16 = 2_000;

/// SO_ORIGINAL_DST of an IPv4 socket, as the calling thread.
fn orig_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    // SAFETY: zeroed sockaddr_in is valid; buffer and length match.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            80,
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        )
    })
}

/// The proxy's view: app port -> SO_ORIGINAL_DST, for every accepted socket.
type ProxyView = HashMap<u16, Option<SocketAddrV4>>;

fn proxy_view(accepted: &[TcpStream]) -> ProxyView {
    accepted
        .iter()
        .map(|s| (s.peer_addr().map_or(0, |p| p.port()), orig_dst(s)))
        .collect()
}

/// Checks both views of every live connection; returns the mismatches.
fn wrong(apps: &[TcpStream], proxy: &ProxyView, b: Ipv4Addr) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, s) in apps.iter().enumerate() {
        let want = SocketAddrV4::new(b, FIRST_PORT + i as u16);
        let peer = s.peer_addr().ok();
        if peer != Some(SocketAddr::V4(want)) {
            bad.push(format!("app {i}: getpeername {peer:?}, want {want}"));
        }
        let port = s.local_addr().map_or(0, |l| l.port());
        match proxy.get(&port) {
            Some(Some(o)) if *o == want => {}
            other => bad.push(format!("app {i}: SO_ORIGINAL_DST {other:?}, want {want}")),
        }
    }
    bad
}

#[test]
fn syn_flood_does_not_touch_live_original_destinations() {
    require_root_env();
    raise_nofile(2 * LIVE as u64 + 1024);
    let mut node = Node::new(NodeOptions::default()).expect("node");
    let a = node.pod("a").expect("pod a");
    let b = node.pod("b").expect("pod b");
    let c = node.pod("c").expect("pod c");
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        node.register(pod, &PodSpec::istio(name)).expect("register");
    }
    let idle = node.map_entries("ml_orig_pending");
    let full_before = node.counter("bookkeeping_insert_failed");

    // B's proxy listens on its inbound port: the flood is steered there.
    let b_inbound = b
        .run(|| {
            become_thread(1337, 1337);
            listen("0.0.0.0:15006".parse().unwrap())
        })
        .expect("B inbound listener");

    // A's proxy: accepts LIVE connections, answers what it sees before
    // and after the flood (as the proxy uid: only it may ask).
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (view_tx, view_rx) = mpsc::channel::<ProxyView>();
    let (listening_tx, listening_rx) = mpsc::channel::<()>();
    let proxy = a
        .thread(move || {
            become_thread(1337, 1337);
            let l = listen("127.0.0.1:15001".parse().unwrap());
            listening_tx.send(()).unwrap();
            let accepted: Vec<TcpStream> =
                (0..LIVE).map(|_| l.accept().expect("accept").0).collect();
            view_tx.send(proxy_view(&accepted)).unwrap();
            go_rx.recv().unwrap();
            view_tx.send(proxy_view(&accepted)).unwrap();
            go_rx.recv().unwrap();
        })
        .expect("A proxy");
    // The apps connect only once the proxy listens (else ECONNREFUSED).
    listening_rx.recv().expect("A proxy listening");

    let bip = b.ip4;
    let apps: Vec<TcpStream> = a
        .run(move || {
            (0..LIVE)
                .map(|i| {
                    let to = SocketAddr::new(IpAddr::V4(bip), FIRST_PORT + i);
                    TcpStream::connect(to).expect("connect")
                })
                .collect()
        })
        .expect("A apps");
    let before = view_rx.recv().unwrap();
    let bad = wrong(&apps, &before, bip);
    assert!(
        bad.is_empty(),
        "before the flood: {} wrong, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );

    // 100,000 SYNs from spoofed addresses of the pods' subnet to B:8080.
    let o = bip.octets();
    let sent = c
        .run(move || {
            let sources = (0..SPOOFED_HOSTS).flat_map(move |h| {
                let ip = Ipv4Addr::new(o[0], o[1], o[2], 100 + h);
                (0..PORTS_PER_HOST).map(move |p| SocketAddrV4::new(ip, 1024 + p))
            });
            meshlane::overlap::send_syns(SocketAddrV4::new(bip, 8080), sources)
        })
        .expect("C")
        .expect("sending SYNs");
    assert_eq!(
        sent,
        usize::from(SPOOFED_HOSTS) * usize::from(PORTS_PER_HOST)
    );
    eprintln!(
        "flood sent: {sent} SYNs; inbound steered {}, ml_orig_pending {} (idle {idle})",
        node.counter("inbound_steered"),
        node.map_entries("ml_orig_pending")
    );

    go_tx.send(()).unwrap();
    let after = view_rx.recv().unwrap();
    let bad = wrong(&apps, &after, bip);
    assert!(
        bad.is_empty(),
        "after the flood: {} wrong, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(
        node.map_entries("ml_orig_pending"),
        idle,
        "bookkeeping grew with the flood"
    );
    assert_eq!(
        node.counter("bookkeeping_insert_failed"),
        full_before,
        "state could not be kept"
    );

    drop(apps);
    go_tx.send(()).unwrap();
    proxy.join().expect("proxy thread");
    drop(b_inbound);
    assert_eq!(node.map_entries("ml_orig_pending"), idle);
}
