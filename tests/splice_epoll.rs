//! nginx and FIONREAD in meshed pods. Some stable kernels (6.6.128+,
//! 6.12.75+, 6.18.14+ and 6.19+ until fixed) stop counting, in FIONREAD,
//! bytes that reach a sockhash socket through the TCP stack when no verdict
//! program is attached; readers that size reads with FIONREAD (nginx as a
//! proxy, Java, .NET) then stall, and with a verdict program the kernel
//! duplicates overlapping retransmissions (tests/integrity.rs). meshlane
//! therefore keeps application sockets out of the sockhash. Here real nginx
//! (epoll) serves and proxies 64 MiB to curl as an application of meshed
//! pods, over loopback, pod to pod and to and from an unmeshed pod, with
//! every --verdict-remedy setting: every transfer completes byte-exact, no
//! application socket is spliced, and FIONREAD counts what TCP queued.
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use meshlane::loader::VerdictRemedy;
use meshlane::sim::{Nginx, NginxSend, Node, NodeOptions, Pod};

const NGINX_PORT: u16 = 8080;
const NGINX_FILE: &str = "big.bin";
const NGINX_FILE_LEN: u64 = 64 * MIB as u64;
/// curl's overall limit: a stalled transfer fails the fetch.
const FETCH_LIMIT_S: &str = "60";

/// Writes the 64 MiB file nginx serves.
fn write_big_file(path: &Path, pattern: &Pattern) {
    let mut f = std::fs::File::create(path).expect("creating the served file");
    let mut chunk = vec![0u8; MIB];
    let mut off = 0u64;
    while off < NGINX_FILE_LEN {
        pattern.fill(off, &mut chunk);
        f.write_all(&chunk).expect("writing the served file");
        off += MIB as u64;
    }
}

/// Checks a downloaded file against the pattern, byte for byte.
fn check_download(path: &Path, pattern: &Pattern) {
    let got = std::fs::read(path).expect("reading the download");
    assert_eq!(got.len() as u64, NGINX_FILE_LEN, "downloaded length");
    for (k, chunk) in got.chunks(MIB).enumerate() {
        pattern.check((k * MIB) as u64, chunk);
    }
}

/// Where nginx and curl run, and what meshlane sees of their connection.
#[derive(Debug, Clone, Copy)]
enum Flow {
    /// Both in pod `a`, over 127.0.0.1: spliced both ways.
    Loopback,
    /// nginx in `a`, curl in `b`: spliced both ways.
    PodToPod,
    /// nginx in `a`, curl in the unmeshed pod `c`: nginx's socket is in the
    /// sockhash without a peer, so every send passes to the TCP stack.
    ToUnmeshedClient,
    /// nginx in the unmeshed pod `c`, curl in `a`: curl's socket is in the
    /// sockhash and the whole file reaches it through the TCP stack (the
    /// receive path the stable-kernel regression breaks).
    FromUnmeshedServer,
}

const ALL_FLOWS: [Flow; 4] = [
    Flow::Loopback,
    Flow::PodToPod,
    Flow::ToUnmeshedClient,
    Flow::FromUnmeshedServer,
];

impl Flow {
    /// (nginx's pod, curl's pod, the IP curl dials).
    fn places(self, s: &Setup) -> (&Pod, &Pod, std::net::IpAddr) {
        let lo = std::net::Ipv4Addr::LOCALHOST.into();
        match self {
            Flow::Loopback => (&s.a, &s.a, lo),
            Flow::PodToPod => (&s.a, &s.b, s.a.ip4.into()),
            Flow::ToUnmeshedClient => (&s.a, s.unmeshed(), s.a.ip4.into()),
            Flow::FromUnmeshedServer => (s.unmeshed(), &s.a, s.unmeshed().ip4.into()),
        }
    }

    /// Fails unless the counters show that no socket of nginx or curl
    /// (applications) entered the sockhash.
    fn check_path(self, _node: &Node, d: &SpliceCounters) {
        assert!(
            d.sockets_inserted == 0 && d.bytes_spliced == 0 && d.messages_fallback == 0,
            "{self:?}: an application socket entered the sockhash: {d:?}"
        );
    }
}

/// nginx (epoll) serves 64 MiB; curl (poll) fetches it along `flow`.
/// Fails when the transfer stalls (curl gives up after 60 s) or differs;
/// returns how long it took.
fn nginx_fetch(remedy: VerdictRemedy, send: NginxSend, flow: Flow) -> Duration {
    let s = Setup::apps_with_unmeshed_pod(NodeOptions {
        verdict_remedy: remedy,
        ..Default::default()
    });
    let (server, client, ip) = flow.places(&s);
    let nginx = Nginx::start(server, NGINX_PORT, send).expect("starting nginx");
    let pattern = Pattern::new(0xa5);
    write_big_file(&nginx.docroot().join(NGINX_FILE), &pattern);
    let label = format!("nginx {send:?}, remedy {remedy:?}, {flow:?}");
    let url = format!("http://{}/{NGINX_FILE}", SocketAddr::new(ip, nginx.port));
    let (took, d) = curl_fetch(&s.node, client, &url, &pattern, &label, &[&nginx]);
    flow.check_path(&s.node, &d);
    drop(nginx);
    assert_no_leak(&s.node);
    took
}

/// curl in `client` downloads `url`; fails unless it gets all 64 MiB of
/// `pattern` within 60 s. Returns the time and the counters' change.
fn curl_fetch(
    node: &Node,
    client: &Pod,
    url: &str,
    pattern: &Pattern,
    label: &str,
    servers: &[&Nginx],
) -> (Duration, SpliceCounters) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = out_dir.path().join("download");
    let out_s = out.to_string_lossy().into_owned();
    let before = SpliceCounters::read(node);
    let started = Instant::now();
    let res = client
        .command(&[
            "curl",
            "-sS",
            "--max-time",
            FETCH_LIMIT_S,
            "-o",
            &out_s,
            "-w",
            "%{http_code} %{size_download}",
            url,
        ])
        .output()
        .expect("running curl");
    let took = started.elapsed();
    let d = SpliceCounters::since(node, &before);
    let summary = String::from_utf8_lossy(&res.stdout).into_owned();
    eprintln!(
        "{label}: curl {} \"{summary}\" in {:.2} s; \
         spliced {:.1} MiB in {} messages, fallback {:.1} MiB in {} messages",
        res.status,
        took.as_secs_f64(),
        mib(d.bytes_spliced),
        d.messages_spliced,
        mib(d.bytes_fallback),
        d.messages_fallback
    );
    let logs: Vec<String> = servers.iter().map(|n| n.error_log()).collect();
    assert!(
        res.status.success(),
        "{label}: fetching 64 MiB failed after {:.1} s ({}): {} {}; nginx logs: {}",
        took.as_secs_f64(),
        res.status,
        summary,
        String::from_utf8_lossy(&res.stderr).trim(),
        logs.join(" | ").trim()
    );
    assert_eq!(
        summary,
        format!("200 {NGINX_FILE_LEN}"),
        "{label}: curl's summary"
    );
    check_download(&out, pattern);
    (took, d)
}

/// Where the proxy's backend runs.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// The unmeshed pod `c`: the proxy's upstream socket is in the sockhash
    /// with no peer, so the 64 MiB reach it through the TCP stack, and
    /// nginx sizes its reads with FIONREAD: the case the stable-kernel
    /// regression stalls.
    Unmeshed,
    /// Meshed pod `b` (curl's pod): both hops are spliced.
    Meshed,
}

/// A sidecar-like proxy: nginx in meshed pod `a` proxies to an nginx file
/// server (see [`Backend`]); curl in meshed pod `b` fetches through it.
fn nginx_proxy_fetch(remedy: VerdictRemedy, backend_at: Backend) -> Duration {
    nginx_proxy_fetch_with(
        NodeOptions {
            verdict_remedy: remedy,
            ..Default::default()
        },
        backend_at,
    )
}

fn nginx_proxy_fetch_with(opts: NodeOptions, backend_at: Backend) -> Duration {
    const PROXY_PORT: u16 = 8081;
    let remedy = opts.verdict_remedy;
    let s = Setup::apps_with_unmeshed_pod(opts);
    let backend_pod = match backend_at {
        Backend::Unmeshed => s.unmeshed(),
        Backend::Meshed => &s.b,
    };
    let backend = Nginx::start(backend_pod, NGINX_PORT, NginxSend::Sendfile)
        .expect("starting the backend nginx");
    let pattern = Pattern::new(0x3c);
    write_big_file(&backend.docroot().join(NGINX_FILE), &pattern);
    let upstream = SocketAddr::new(backend_pod.ip4.into(), NGINX_PORT);
    let proxy = Nginx::start_proxy(&s.a, PROXY_PORT, upstream).expect("starting the proxy");
    let url = format!("http://{}:{PROXY_PORT}/{NGINX_FILE}", s.a.ip4);
    let label = format!("nginx proxy, {backend_at:?} backend, remedy {remedy:?}");
    let (took, d) = curl_fetch(&s.node, &s.b, &url, &pattern, &label, &[&proxy, &backend]);
    Flow::Loopback.check_path(&s.node, &d);
    drop(proxy);
    drop(backend);
    assert_no_leak(&s.node);
    took
}

#[test]
fn nginx_proxy_64mib_default_config() {
    nginx_proxy_fetch(VerdictRemedy::Auto, Backend::Unmeshed);
    nginx_proxy_fetch(VerdictRemedy::Auto, Backend::Meshed);
}

#[test]
fn nginx_proxy_64mib_remedy_on() {
    if skip_if_verdict_on_refused() {
        return;
    }
    nginx_proxy_fetch(VerdictRemedy::On, Backend::Unmeshed);
    nginx_proxy_fetch(VerdictRemedy::On, Backend::Meshed);
}

/// Without the remedy, a proxy whose upstream is purely spliced does not
/// depend on TCP-path bytes, so it must not stall on any kernel. (With
/// backpressure on, a lagging reader puts bytes on the TCP path, which
/// stalls on affected kernels without the remedy: that is why `auto`
/// turns it on there, and why this case turns backpressure off.)
#[test]
fn nginx_proxy_64mib_remedy_off_meshed_backend() {
    nginx_proxy_fetch_with(
        NodeOptions {
            verdict_remedy: VerdictRemedy::Off,
            splice_queue_limit: 0,
            ..Default::default()
        },
        Backend::Meshed,
    );
}

/// Stalled until curl's 60 s limit on this kernel while nginx's upstream
/// socket sat in the sockhash without a verdict; an application socket is
/// no longer put there.
#[test]
fn nginx_proxy_64mib_remedy_off() {
    nginx_proxy_fetch(VerdictRemedy::Off, Backend::Unmeshed);
}

/// The agent's default (`VerdictRemedy::Auto`): what users get.
#[test]
fn nginx_64mib_default_config() {
    for flow in ALL_FLOWS {
        nginx_fetch(VerdictRemedy::Auto, NginxSend::Sendfile, flow);
    }
}

#[test]
fn nginx_64mib_default_config_write_path() {
    for flow in ALL_FLOWS {
        nginx_fetch(VerdictRemedy::Auto, NginxSend::Write, flow);
    }
}

/// The remedy, when attached, must never break a transfer.
#[test]
fn nginx_64mib_remedy_on() {
    if skip_if_verdict_on_refused() {
        return;
    }
    for flow in ALL_FLOWS {
        nginx_fetch(VerdictRemedy::On, NginxSend::Sendfile, flow);
    }
}

#[test]
fn nginx_64mib_remedy_off() {
    for flow in ALL_FLOWS {
        nginx_fetch(VerdictRemedy::Off, NginxSend::Sendfile, flow);
    }
    for flow in ALL_FLOWS {
        nginx_fetch(VerdictRemedy::Off, NginxSend::Write, flow);
    }
}

// ------------------------------------------------- TCP path visibility ---

/// What a reader in a meshed pod sees of bytes that reach its (sockhash)
/// socket through the TCP stack, before it reads any.
#[derive(Debug)]
struct Visibility {
    /// poll(POLLIN) reported the socket readable within the limit.
    poll_readable: bool,
    /// ioctl(FIONREAD) once the sender saw every byte acknowledged.
    fionread: i32,
}

/// Small enough to fit the receiver's initial window.
const VISIBLE_LEN: usize = 32 * 1024;

fn tcp_path_visibility(remedy: VerdictRemedy) -> Visibility {
    let s = Setup::apps_with_unmeshed_pod(NodeOptions {
        verdict_remedy: remedy,
        ..Default::default()
    });
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (addr, server) = serve_one(s.unmeshed(), s.any_port(), move |mut st| {
        write_all_by(&mut st, &payload(VISIBLE_LEN, 9), Instant::now() + LIMIT).expect("write");
        wait_all_acked(&st);
        arrived_tx.send(()).expect("reporting arrival");
        let _ = release_rx.recv_timeout(LIMIT);
    });
    let to: SocketAddr = (s.unmeshed().ip4, addr.port()).into();
    let before = SpliceCounters::read(&s.node);
    let (vis, got) =
        s.a.run(move || {
            let mut st = connect(to);
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&st),
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).expect("poll");
            arrived_rx
                .recv_timeout(LIMIT)
                .expect("the server's bytes were never acked");
            let fionread = bytes_readable(&st);
            let got = read_exact_by(&mut st, VISIBLE_LEN, Instant::now() + LIMIT);
            (
                Visibility {
                    poll_readable: n == 1,
                    fionread,
                },
                got,
            )
        })
        .expect("entering pod a");
    let _ = release_tx.send(());
    server.join().expect("server");
    let d = SpliceCounters::since(&s.node, &before);
    assert_eq!(
        d.sockets_inserted, 0,
        "an application socket entered the sockhash: {d:?}"
    );
    assert!(got == payload(VISIBLE_LEN, 9), "bytes differ");
    eprintln!("remedy {remedy:?}: {vis:?}");
    vis
}

/// Waits until the peer has acknowledged every byte sent on `st` (they are
/// then in the peer's receive queue).
fn wait_all_acked(st: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut unacked: libc::c_int = -1;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let rc = unsafe { libc::ioctl(st.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        assert_eq!(rc, 0, "SIOCOUTQ failed");
        if unacked == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{unacked} bytes never acked");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// ioctl(FIONREAD): bytes the kernel says are ready to read.
fn bytes_readable(st: &std::net::TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut avail: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(st.as_raw_fd(), libc::FIONREAD, &mut avail) };
    assert_eq!(rc, 0, "FIONREAD failed");
    avail
}

/// What users get (`VerdictRemedy::Auto`): bytes that came by TCP are
/// seen by poll and counted by FIONREAD.
#[test]
fn tcp_path_bytes_visible_default_config() {
    let v = tcp_path_visibility(VerdictRemedy::Auto);
    assert!(v.poll_readable, "poll did not see the bytes: {v:?}");
    assert_eq!(v.fionread as usize, VISIBLE_LEN, "FIONREAD: {v:?}");
}

/// Whatever the verdict setting, an application's socket is plain TCP.
#[test]
fn tcp_path_bytes_visible_every_remedy() {
    let remedies = if verdict_on_refused_here() {
        vec![VerdictRemedy::Off]
    } else {
        vec![VerdictRemedy::On, VerdictRemedy::Off]
    };
    for remedy in remedies {
        let v = tcp_path_visibility(remedy);
        assert!(
            v.poll_readable,
            "{remedy:?}: poll did not see the bytes: {v:?}"
        );
        assert_eq!(
            v.fionread as usize, VISIBLE_LEN,
            "{remedy:?}: FIONREAD: {v:?}"
        );
    }
}
