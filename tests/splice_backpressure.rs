//! Backpressure on spliced connections (bpf/splice.bpf.c, `may_splice`):
//! a redirect to the peer's ingress queue is not bounded by its receive
//! buffer, so a reader that falls behind must hand the direction back to TCP
//! (whose flow control bounds it) and get it spliced again once nothing is
//! left on the TCP path. These tests prove the three properties that matter:
//! a stalled reader cannot make the kernel queue without bound, no byte is
//! lost or reordered across any number of hand-overs, and splicing resumes.
mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use meshlane::loader::VerdictRemedy;
use meshlane::sim::{NodeOptions, Pod};

/// What a stalled reader may leave queued before the writer blocks: the
/// splice limit plus what TCP itself buffers (send buffer + receive window,
/// at most tcp_wmem[2] + tcp_rmem[2] on a default kernel). Without
/// backpressure the writer only stops when the node's TCP memory is
/// exhausted (about 1.5 GB on this machine) and then fails with ENOMEM.
const STALL_BOUND: usize = 64 * MIB;

/// A reader in `server_pod` that waits for `go`, then reads the Pattern
/// stream to EOF, checking every byte and publishing how far it got in
/// `progress`; returns how many bytes it read.
fn patient_reader(
    server_pod: &Pod,
    go: mpsc::Receiver<()>,
    chunk: usize,
    pause_every: usize,
    progress: Arc<AtomicU64>,
) -> (SocketAddr, std::thread::JoinHandle<u64>) {
    let (tx, rx) = mpsc::channel();
    let handle = server_pod
        .thread(move || {
            let l = listen("0.0.0.0:0".parse().unwrap());
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let (mut s, _) = l.accept().expect("accept");
            go.recv().expect("go signal");
            let pattern = Pattern::new(7);
            let deadline = Instant::now() + LIMIT * 2;
            let mut buf = vec![0u8; chunk];
            let mut offset = 0u64;
            let mut reads = 0usize;
            loop {
                let n = read_some(&mut s, &mut buf, deadline).expect("reading the stream");
                if n == 0 {
                    return offset;
                }
                pattern.check(offset, &buf[..n]);
                offset += n as u64;
                progress.store(offset, Ordering::Release);
                reads += 1;
                if pause_every > 0 && reads % pause_every == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .expect("reader thread");
    let port = rx.recv_timeout(Duration::from_secs(5)).expect("reader up");
    (SocketAddr::new(server_pod.ip4.into(), port), handle)
}

/// Writes the Pattern stream from `offset` until the socket stays
/// unwritable for `idle`; returns the new offset.
fn write_until_blocked(s: &mut TcpStream, mut offset: u64, idle: Duration, cap: usize) -> u64 {
    use std::io::{ErrorKind, Write};
    let pattern = Pattern::new(7);
    let mut buf = vec![0u8; 64 * 1024];
    s.set_nonblocking(true).unwrap();
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < idle && (offset as usize) < cap {
        pattern.fill(offset, &mut buf);
        match s.write(&buf) {
            Ok(n) => {
                offset += n as u64;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("write failed after {offset} bytes: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    offset
}

/// Bytes the socket sent that the peer has not acknowledged (SIOCOUTQ).
fn unacked(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQ");
    n
}

/// Writes `len` more bytes of the Pattern stream from `offset`.
fn write_pattern(s: &mut TcpStream, offset: u64, len: usize, chunk: usize) -> u64 {
    let pattern = Pattern::new(7);
    let deadline = Instant::now() + LIMIT * 2;
    let mut buf = vec![0u8; chunk];
    let mut at = offset;
    while at < offset + len as u64 {
        pattern.fill(at, &mut buf);
        write_all_by(s, &buf, deadline).expect("writing the stream");
        at += chunk as u64;
    }
    at
}

fn node_with_limit(limit: u32) -> (meshlane::sim::Node, Vec<Pod>) {
    node_with(limit, VerdictRemedy::Auto)
}

fn node_with(limit: u32, remedy: VerdictRemedy) -> (meshlane::sim::Node, Vec<Pod>) {
    accelerated_node(
        NodeOptions {
            splice_queue_limit: limit,
            verdict_remedy: remedy,
            ..Default::default()
        },
        &["reader", "writer"],
    )
}

#[test]
fn stalled_reader_bounds_the_queue_and_loses_nothing() {
    stalled_reader(VerdictRemedy::Auto);
}

#[test]
fn stalled_reader_bounds_the_queue_verdict_off() {
    stalled_reader(VerdictRemedy::Off);
}

fn stalled_reader(remedy: VerdictRemedy) {
    if no_splice_backpressure_here() {
        return;
    }
    let (node, pods) = node_with(1 << 20, remedy);
    let (go_tx, go_rx) = mpsc::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let (to, reader) = patient_reader(&pods[0], go_rx, 256 * 1024, 0, progress.clone());
    let before = SpliceCounters::read(&node);

    let (written, resumed_spliced) = pods[1]
        .run({
            let node_counter = node.layout.clone();
            move || {
                let mut s = connect(to);
                // 1. The reader does not read: the writer must block, not
                //    queue without bound, and never see an error.
                let stalled = write_until_blocked(&mut s, 0, Duration::from_millis(800), 2 << 30);
                assert!(
                    (stalled as usize) < STALL_BOUND,
                    "a stalled reader let {stalled} bytes queue (bound {STALL_BOUND})"
                );
                assert!(
                    stalled > 1 << 20,
                    "only {stalled} bytes went before blocking"
                );
                // 2. The reader catches up; with nothing left on the TCP
                //    path the next writes are spliced again. A write is
                //    spliced only if, when it is sent, the reader has read
                //    every byte before it; a writer streaming at full speed
                //    stays ahead of a reader that is slow to wake (as with
                //    TCP alone). So the writer goes in step with the
                //    reader, one 64 KiB write at a time, until one is
                //    spliced, then streams.
                go_tx.send(()).unwrap();
                let spliced = || meshlane::status::read_counters(&node_counter)["bytes_spliced"];
                let caught_up = |s: &TcpStream, at: u64| {
                    let deadline = Instant::now() + LIMIT;
                    while progress.load(Ordering::Acquire) < at || unacked(s) > 0 {
                        assert!(Instant::now() < deadline, "the reader never caught up");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                };
                caught_up(&s, stalled);
                let spliced_before = spliced();
                let mut at = stalled;
                for _ in 0..16 {
                    at = write_pattern(&mut s, at, 64 * 1024, 64 * 1024);
                    caught_up(&s, at);
                    if spliced() > spliced_before {
                        break;
                    }
                }
                let end = write_pattern(&mut s, at, 8 * MIB, 64 * 1024);
                let spliced_after = spliced();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                (end, spliced_after - spliced_before)
            }
        })
        .unwrap();

    let read = reader.join().expect("reader");
    assert_eq!(read, written, "reader got {read} of {written} bytes");
    let d = SpliceCounters::since(&node, &before);
    assert!(
        node.counter("splice_throttled") >= 1,
        "never throttled: {d:?}"
    );
    assert!(
        node.counter("splice_resumed") >= 1,
        "never resumed: {:?}\nml_sock_state: {}",
        meshlane::status::read_counters(&node.layout),
        map_dump(&node, meshlane::datapath::MapId::SockState)
    );
    assert!(
        d.bytes_fallback > 0,
        "nothing took the TCP path while throttled"
    );
    // Resumed: before another hand-over the reader's queue must fill up to
    // the limit again, so at least that much is spliced.
    assert!(
        resumed_spliced >= u64::from(node.opts.splice_queue_limit),
        "after the reader caught up only {resumed_spliced} bytes were spliced"
    );
    drop(pods);
    assert_no_leak(&node);
}

#[test]
fn slow_reader_many_handovers_keep_byte_order() {
    slow_reader(VerdictRemedy::Auto);
}

#[test]
fn slow_reader_many_handovers_verdict_off() {
    slow_reader(VerdictRemedy::Off);
}

fn slow_reader(remedy: VerdictRemedy) {
    if no_splice_backpressure_here() {
        return;
    }
    // A small limit and a reader that pauses: the direction goes back and
    // forth between splicing and TCP many times.
    let (node, pods) = node_with(64 * 1024, remedy);
    let (go_tx, go_rx) = mpsc::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let (to, reader) = patient_reader(&pods[0], go_rx, 16 * 1024, 8, progress.clone());
    go_tx.send(()).unwrap();
    let total = 48 * MIB;
    let written = pods[1]
        .run(move || {
            let mut s = connect(to);
            let mut at = 0u64;
            // Bursts; between them the reader catches up and every byte is
            // acknowledged, so nothing is left on the TCP path and the next
            // burst starts spliced (a resumption) until the reader falls
            // behind again (a hand-over).
            while (at as usize) < total {
                at = write_pattern(&mut s, at, 2 * MIB, 32 * 1024);
                let deadline = Instant::now() + LIMIT;
                while progress.load(Ordering::Acquire) < at || unacked(&s) > 0 {
                    assert!(Instant::now() < deadline, "the reader never caught up");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            at
        })
        .unwrap();
    let read = reader.join().expect("reader");
    assert_eq!(read, written);
    let throttled = node.counter("splice_throttled");
    let resumed = node.counter("splice_resumed");
    eprintln!(
        "{} MiB: throttled {throttled}x, resumed {resumed}x, spliced {:.1} MiB, TCP {:.1} MiB",
        total / MIB,
        mib(node.counter("bytes_spliced")),
        mib(node.counter("bytes_fallback"))
    );
    assert!(throttled >= 2, "only {throttled} hand-overs to TCP");
    assert!(
        resumed >= 2,
        "only {resumed} resumptions: {:?}",
        meshlane::status::read_counters(&node.layout)
    );
    drop(pods);
    assert_no_leak(&node);
}

#[test]
fn limit_zero_turns_backpressure_off() {
    let (node, pods) = node_with_limit(0);
    let (go_tx, go_rx) = mpsc::channel();
    let (to, reader) = patient_reader(&pods[0], go_rx, 256 * 1024, 0, Arc::default());
    let written = pods[1]
        .run(move || {
            let mut s = connect(to);
            // Without backpressure a stalled reader lets far more than
            // STALL_BOUND queue; stop at twice the bound.
            let n = write_until_blocked(&mut s, 0, Duration::from_millis(800), 2 * STALL_BOUND);
            go_tx.send(()).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            n
        })
        .unwrap();
    assert!(
        written as usize >= STALL_BOUND,
        "with the limit off the writer still blocked at {written} bytes"
    );
    assert_eq!(reader.join().expect("reader"), written);
    assert_eq!(node.counter("splice_throttled"), 0);
    drop(pods);
    assert_no_leak(&node);
}
