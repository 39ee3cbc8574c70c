//! The splicing data path of issue 2, end to end on a simulated node with
//! Istio pods in accelerate mode (splicing only): byte-exact echo at every
//! message size (also with a splice-only install, whose sockops program is
//! splice.bpf.o's rather than the one that carries both features) and for a
//! 256 MiB stream, 1,000 concurrent connections, no map entries left
//! behind, pairs in intercept pods found without the NAT registration, a
//! full sockhash falling back to the TCP stack without loss, and short
//! connections learned per destination and kept out of the sockhash (and
//! let back in after a longer one). Every test also proves, from the
//! node's counters, that the bytes took the path they should. Connection
//! endings live in splice_endings.rs, the epoll regression check in
//! splice_epoll.rs.
mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use meshlane::pods::{PodMode, PodSpec};
use meshlane::sim::{self, Node, NodeOptions};

const MESSAGE_SIZES: [usize; 5] = [1, 64, 1024, 64 * 1024, MIB];
/// How long a peer may take to notice that the other side ended.
const END_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- echo ---

/// One connection per size: the message goes out in one write(2), the echo
/// is read back and compared, and the counters must show both directions
/// spliced.
fn echo_every_size(route: Route, opts: NodeOptions) {
    let s = Setup::new(opts);
    let server = echo_server(&s.a, s.any_port());
    let (client, to) = s.client(route, server.port());
    for size in MESSAGE_SIZES {
        let msg = payload(size, size as u8);
        let before = SpliceCounters::read(&s.node);
        let got = echo_one_message(connect_spliced(&s.node, client, to), &msg);
        assert!(
            got == msg,
            "{route:?}: {size} B echo differs ({} bytes back)",
            got.len()
        );
        let d = SpliceCounters::since(&s.node, &before);
        assert!(
            d.bytes_spliced >= 2 * size as u64,
            "{route:?}: {size} B each way but only {} B spliced ({d:?})",
            d.bytes_spliced
        );
    }
    assert_no_leak(&s.node);
}

/// Writes `msg` in a single write(2) while reading its echo, then checks
/// that the server ends the stream after our shutdown.
fn echo_one_message(mut s: TcpStream, msg: &[u8]) -> Vec<u8> {
    // One write for the whole message: let it block as long as the limit.
    s.set_write_timeout(Some(LIMIT)).expect("SO_SNDTIMEO");
    let deadline = Instant::now() + LIMIT;
    let mut reader = s.try_clone().expect("clone socket");
    let got = std::thread::scope(|scope| {
        let echo = scope.spawn(|| read_exact_by(&mut reader, msg.len(), deadline));
        let n = s.write(msg).expect("write");
        assert_eq!(n, msg.len(), "the message did not go out in one write");
        echo.join().expect("reader thread")
    });
    s.shutdown(Shutdown::Write).expect("shutdown write");
    let rest = read_to_end_by(&mut s, END_LIMIT).expect("EOF after the echo");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    got
}

#[test]
fn echo_each_message_size_loopback() {
    echo_every_size(Route::Loopback, NodeOptions::default());
}

#[test]
fn echo_each_message_size_pod_to_pod() {
    echo_every_size(Route::PodToPod, NodeOptions::default());
}

/// Without interception the sockops program is splice.bpf.o's own.
#[test]
fn echo_each_message_size_splice_only_install() {
    echo_every_size(
        Route::PodToPod,
        NodeOptions {
            intercept: false,
            ..NodeOptions::default()
        },
    );
}

/// Streams `total` bytes through the echo server in 1 MiB writes while
/// checking every byte that comes back.
fn echo_stream(route: Route, total: u64) {
    let s = Setup::new(NodeOptions::default());
    let server = echo_server(&s.a, s.any_port());
    let (client, to) = s.client(route, server.port());
    let before = SpliceCounters::read(&s.node);
    let started = Instant::now();
    let back = client
        .run(move || stream_through(connect(to), total))
        .expect("entering the client pod");
    let took = started.elapsed();
    assert_eq!(back, total, "{route:?}: stream length differs");
    let d = SpliceCounters::since(&s.node, &before);
    eprintln!(
        "{route:?}: {:.0} MiB echoed in {:.2} s; spliced {:.0} MiB in {} messages, fallback {} B",
        mib(total),
        took.as_secs_f64(),
        mib(d.bytes_spliced),
        d.messages_spliced,
        d.bytes_fallback
    );
    assert_spliced(&s.node, &d, 2 * total, &format!("{route:?} stream"));
    assert_no_leak(&s.node);
}

fn stream_through(mut s: TcpStream, total: u64) -> u64 {
    let pattern = Pattern::new(0x5a);
    let deadline = Instant::now() + LIMIT * 3;
    let mut writer = s.try_clone().expect("clone socket");
    std::thread::scope(|scope| {
        let pattern = &pattern;
        scope.spawn(move || {
            let mut chunk = vec![0u8; MIB];
            let mut off = 0u64;
            while off < total {
                let n = (total - off).min(MIB as u64) as usize;
                pattern.fill(off, &mut chunk[..n]);
                write_all_by(&mut writer, &chunk[..n], deadline).expect("write");
                off += n as u64;
            }
            writer.shutdown(Shutdown::Write).expect("shutdown write");
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match read_some(&mut s, &mut buf, deadline) {
                Ok(0) => return got,
                Ok(n) => {
                    pattern.check(got, &buf[..n]);
                    got += n as u64;
                }
                Err(e) => panic!("read after {got} bytes: {e}"),
            }
        }
    })
}

#[test]
fn stream_256mib_loopback() {
    echo_stream(Route::Loopback, 256 * MIB as u64);
}

#[test]
fn stream_256mib_pod_to_pod() {
    echo_stream(Route::PodToPod, 256 * MIB as u64);
}

// ---------------------------------------------------------- concurrency ---

/// Opens `n` connections and holds them all open, checks that every socket
/// of both ends is in ml_socks at once, then echoes a distinct 16 KiB
/// message on each from 8 threads.
fn concurrent_connections(route: Route, n: usize) {
    const MSG: usize = 16 * 1024;
    const WORKERS: usize = 8;
    raise_nofile(4 * n as u64 + 1024);
    let s = Setup::new(NodeOptions::default());
    let server = echo_server(&s.a, s.any_port());
    let (client, to) = s.client(route, server.port());
    let before = SpliceCounters::read(&s.node);
    let streams: Vec<TcpStream> = client
        .run(move || (0..n).map(|_| connect(to)).collect())
        .expect("entering the client pod");

    // Both ends of every connection are in the sockhash at the same time.
    let deadline = Instant::now() + END_LIMIT;
    let mut in_map = s.node.map_entries("ml_socks");
    while in_map < 2 * n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        in_map = s.node.map_entries("ml_socks");
    }
    assert_eq!(in_map, 2 * n, "{route:?}: sockets in ml_socks while open");

    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, st) in streams.into_iter().enumerate() {
        groups[i % WORKERS].push((i, st));
    }
    std::thread::scope(|scope| {
        for group in groups {
            scope.spawn(move || echo_group(group, MSG));
        }
    });

    let d = SpliceCounters::since(&s.node, &before);
    assert!(
        d.sockets_inserted >= 2 * n as u64,
        "{route:?}: {} sockets inserted for {n} connections",
        d.sockets_inserted
    );
    assert!(
        d.bytes_spliced >= (2 * n * MSG) as u64,
        "{route:?}: only {} B spliced for {n} echoes of {MSG} B",
        d.bytes_spliced
    );
    assert_eq!(
        d.bytes_fallback, 0,
        "{route:?}: bytes took the TCP stack although both ends were in the map"
    );
    assert_no_leak(&s.node);
}

/// Writes every connection's message, then reads and checks every echo,
/// then closes each one and waits for the server's end of stream.
fn echo_group(mut group: Vec<(usize, TcpStream)>, len: usize) {
    let deadline = Instant::now() + LIMIT;
    for (i, st) in group.iter_mut() {
        write_all_by(st, &payload(len, *i as u8), deadline).expect("write");
    }
    for (i, st) in group.iter_mut() {
        let got = read_exact_by(st, len, deadline);
        assert!(
            got == payload(len, *i as u8),
            "connection {i}: echo differs"
        );
        st.shutdown(Shutdown::Write).expect("shutdown write");
    }
    for (i, st) in group.iter_mut() {
        let rest = read_to_end_by(st, END_LIMIT)
            .unwrap_or_else(|(_, e)| panic!("connection {i} did not end cleanly: {e}"));
        assert!(rest.is_empty(), "connection {i}: bytes after the echo");
    }
}

#[test]
fn thousand_concurrent_connections_pod_to_pod() {
    concurrent_connections(Route::PodToPod, 1000);
}

#[test]
fn thousand_concurrent_connections_loopback() {
    concurrent_connections(Route::Loopback, 1000);
}

// ----------------------------------------------------------------- leaks ---

/// One 4 KiB echo on each stream (stream `i` sends bytes of value `i`).
fn echo_once_each(streams: &mut [TcpStream]) {
    let deadline = Instant::now() + LIMIT;
    for (i, st) in streams.iter_mut().enumerate() {
        let msg = payload(4096, i as u8);
        write_all_by(st, &msg, deadline).expect("write");
        assert!(
            read_exact_by(st, msg.len(), deadline) == msg,
            "echo {i} differs"
        );
    }
}

/// The leak check must see entries to mean anything: with connections
/// open, every per-connection map holds them; after close, nothing.
#[test]
fn no_entries_left_after_connections_close() {
    const OPEN: usize = 20;
    let s = Setup::new(NodeOptions::default());
    let server = echo_server(&s.a, s.any_port());
    let mut streams = Vec::new();
    for route in ROUTES {
        let (client, to) = s.client(route, server.port());
        let mut some: Vec<TcpStream> = client
            .run(move || (0..OPEN / 2).map(|_| connect(to)).collect())
            .expect("entering the client pod");
        streams.append(&mut some);
    }
    echo_once_each(&mut streams);
    let (socks, state, active, _) = connection_entries(&s.node);
    assert_eq!(
        socks,
        2 * OPEN,
        "ml_socks while {OPEN} connections are open"
    );
    assert_eq!(
        state,
        2 * OPEN,
        "ml_sock_state while {OPEN} connections are open"
    );
    assert_eq!(active, OPEN, "ml_active while {OPEN} connections are open");
    // Half by a clean close, half by reset.
    for (i, st) in streams.into_iter().enumerate() {
        if i % 2 == 1 {
            reset_on_close(&st);
        }
        drop(st);
    }
    assert_no_leak(&s.node);
}

/// In a pod without istio-init's rules nothing NATs a connection, so both
/// ends pair by their mirror tuples alone: no socket registers in
/// ml_active, while every spliced socket has its one ml_sock_state entry.
#[test]
fn intercept_pods_pair_without_the_nat_registration() {
    const OPEN: usize = 10;
    require_root_env();
    let mut node = Node::new(NodeOptions::default()).expect("creating the simulated node");
    let pod = node.pod("a").expect("creating a pod");
    let mut spec = PodSpec::istio("a");
    spec.mode = PodMode::Intercept;
    sim::as_own_proxy(&mut spec);
    node.register(&pod, &spec).expect("registering the pod");
    let server = echo_server(&pod, ([0, 0, 0, 0], 0).into());
    let to = ([127, 0, 0, 1], server.port()).into();
    let before = SpliceCounters::read(&node);
    let mut streams: Vec<TcpStream> = (0..OPEN)
        .map(|_| connect_spliced(&node, &pod, to))
        .collect();
    echo_once_each(&mut streams);
    let (socks, state, active, _) = connection_entries(&node);
    assert_eq!(
        (socks, state, active),
        (2 * OPEN, 2 * OPEN, 0),
        "(ml_socks, ml_sock_state, ml_active) while {OPEN} connections are open"
    );
    let d = SpliceCounters::since(&node, &before);
    assert!(
        d.bytes_spliced >= (2 * OPEN * 4096) as u64,
        "not every echo was spliced: {d:?}"
    );
    drop(streams);
    assert_no_leak(&node);
}

// ------------------------------------------------------- full sockhash ---

/// With room for 17 sockets, 40 connections held open at once: the first
/// 8 are spliced (both ends in the map), the 9th has only its client end
/// in the map (its bytes fall back in the sk_msg program, the other way
/// they arrive by TCP at a socket in the sockhash), the rest never enter
/// the map and use the TCP stack. Every byte must arrive. Once they close,
/// the map has room again and splicing resumes.
#[test]
fn full_sockhash_falls_back_without_loss() {
    const ROOM: u32 = 17;
    const CONNS: usize = 40;
    const MSG: usize = 64 * 1024;
    let s = Setup::new(NodeOptions {
        sockhash_size: ROOM,
        ..Default::default()
    });
    let server = echo_server(&s.a, s.any_port());
    let before = SpliceCounters::read(&s.node);
    let mut streams = Vec::new();
    for (k, route) in ROUTES.into_iter().enumerate() {
        let (client, to) = s.client(route, server.port());
        let mut some: Vec<(usize, TcpStream)> = client
            .run(move || {
                (0..CONNS / 2)
                    .map(|i| (k * CONNS + i, connect(to)))
                    .collect()
            })
            .expect("entering the client pod");
        streams.append(&mut some);
    }
    // Only whole pairs stay: the active end of the pair that found no room
    // for its passive end was taken out again.
    assert_eq!(
        s.node.map_entries("ml_socks"),
        ROOM as usize - 1,
        "ml_socks should hold {} whole pairs while {CONNS} connections are open",
        ROOM / 2
    );
    std::thread::scope(|scope| {
        for (i, st) in streams {
            scope.spawn(move || {
                let msg = payload(MSG, i as u8);
                let got = echo_roundtrip(st, msg.clone(), 4096);
                assert!(got == msg, "connection {i}: echo differs ({} B)", got.len());
            });
        }
    });
    let d = SpliceCounters::since(&s.node, &before);
    eprintln!("full sockhash: {d:?}");
    assert!(d.sockets_insert_failed > 0, "no insert failed: {d:?}");
    assert!(d.sockets_inserted >= u64::from(ROOM), "{d:?}");
    assert!(
        d.sockets_evicted >= 1,
        "an active end without room for its passive end stayed: {d:?}"
    );
    assert!(d.bytes_spliced > 0, "nothing was spliced: {d:?}");
    assert!(
        d.bytes_spliced < (2 * CONNS * MSG) as u64,
        "every byte was spliced although the map was full: {d:?}"
    );
    assert_no_leak(&s.node);

    // Room again: a new connection is spliced both ways.
    let before = SpliceCounters::read(&s.node);
    let (client, to) = s.client(Route::PodToPod, server.port());
    let msg = payload(MSG, 0xee);
    assert!(
        echo_roundtrip(connect_spliced(&s.node, client, to), msg.clone(), MSG) == msg,
        "echo after the map emptied"
    );
    let d = SpliceCounters::since(&s.node, &before);
    assert!(
        d.bytes_spliced >= 2 * MSG as u64,
        "splicing did not resume once the map had room: {d:?}"
    );
}

// --------------------------------------------------- short connections ---

/// Sends 64 B and reads the echo back, `exchanges` times.
fn echo_64b(st: &mut TcpStream, exchanges: usize) {
    let deadline = Instant::now() + LIMIT;
    for i in 0..exchanges {
        let msg = payload(64, i as u8);
        write_all_by(st, &msg, deadline).expect("write");
        assert!(read_exact_by(st, 64, deadline) == msg, "echo {i} differs");
    }
}

/// Connects from `client` to `to`, echoes 64 B `exchanges` times, closes,
/// and waits until both ends have left ml_sock_state (the last end's close
/// is what teaches the destination's profile; other connections' entries
/// stay). Returns how many sockets entered ml_socks and how many active
/// ends were kept out as short.
fn short_connection(
    node: &Node,
    client: &sim::Pod,
    to: std::net::SocketAddr,
    exchanges: usize,
) -> (u64, u64) {
    let (inserted, skipped) = (
        node.counter("sockets_inserted"),
        node.counter("sockets_short_not_spliced"),
    );
    let states = connection_entries(node).1;
    client
        .run(move || echo_64b(&mut connect(to), exchanges))
        .expect("entering the client pod");
    wait_sock_states_at_most(node, states);
    (
        node.counter("sockets_inserted") - inserted,
        node.counter("sockets_short_not_spliced") - skipped,
    )
}

/// A destination whose connections each carry one small exchange stops
/// being spliced after eight of them (a psock costs more than splicing two
/// messages saves); every 16th new connection is spliced all the same, one
/// of those carrying more messages makes the destination spliced again, and
/// so does a second without short connections.
#[test]
fn short_connections_stop_being_spliced_and_a_long_one_resumes() {
    const SPLICED: (u64, u64) = (2, 0);
    const SKIPPED: (u64, u64) = (0, 1);
    let s = Setup::new(NodeOptions::default());
    let server = echo_server(&s.a, s.any_port());
    let (client, to) = s.client(Route::PodToPod, server.port());
    let expect = |n: usize, exchanges: usize, want: (u64, u64), what: &str| {
        for i in 0..n {
            let got = short_connection(&s.node, client, to, exchanges);
            assert!(
                got == want,
                "{what}, connection {i}: (inserted, skipped) {got:?}, want {want:?}\n{}",
                map_dump(&s.node, meshlane::datapath::MapId::DestProfile)
            );
        }
    };
    expect(8, 1, SPLICED, "learning");
    assert_eq!(s.node.map_entries("ml_dest_profile"), 1);
    expect(15, 1, SKIPPED, "short destination");
    // The 16th is the probe: spliced, and this one carries 10 messages each
    // way.
    let before = SpliceCounters::read(&s.node);
    expect(1, 10, SPLICED, "the probe");
    let d = SpliceCounters::since(&s.node, &before);
    assert!(d.messages_spliced > 0, "the probe was not spliced: {d:?}");
    // One long connection cleared the streak: spliced again.
    expect(8, 1, SPLICED, "after the probe");
    expect(1, 1, SKIPPED, "short again");
    // The next probe is held open: the 8th message of either end alone
    // clears the streak.
    expect(14, 1, SKIPPED, "short again");
    let inserted = s.node.counter("sockets_inserted");
    let held = client
        .run(move || {
            let mut st = connect(to);
            echo_64b(&mut st, 10);
            st
        })
        .expect("entering the client pod");
    assert_eq!(
        s.node.counter("sockets_inserted") - inserted,
        2,
        "the held probe"
    );
    expect(1, 1, SPLICED, "while a long probe is open");
    // Its close clears the streak again (the connection above began one).
    drop(held);
    wait_sock_states_at_most(&s.node, 0);
    expect(8, 1, SPLICED, "learning again");
    expect(1, 1, SKIPPED, "short again");
    // A streak counts only while short connections keep coming: a second
    // after the last one, the destination is spliced again.
    std::thread::sleep(Duration::from_millis(1100));
    expect(1, 1, SPLICED, "a stale streak");
    assert_no_leak(&s.node);
}

/// `splice_min_messages` 0 splices every connection and learns nothing.
#[test]
fn min_messages_zero_splices_every_connection() {
    let s = Setup::new(NodeOptions {
        splice_min_messages: 0,
        ..NodeOptions::default()
    });
    let server = echo_server(&s.a, s.any_port());
    let (client, to) = s.client(Route::PodToPod, server.port());
    for i in 0..12 {
        let got = short_connection(&s.node, client, to, 1);
        assert_eq!(got, (2, 0), "connection {i} (inserted, skipped)");
    }
    assert_eq!(s.node.map_entries("ml_dest_profile"), 0);
    assert_no_leak(&s.node);
}
