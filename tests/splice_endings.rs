//! How spliced connections end, on a simulated node with accelerated Istio
//! pods, over loopback and pod to pod, with either side going first:
//! half-close (one side shuts down its write side, the other keeps sending,
//! then closes), full close, and reset (SO_LINGER 0). The peer must see EOF
//! or a reset promptly, never hang, every byte sent before the end must
//! arrive, and no map entry may be left behind.
mod common;

use std::io::ErrorKind;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use meshlane::sim::NodeOptions;

/// How long a peer may take to notice that the other side ended.
const END_LIMIT: Duration = Duration::from_secs(10);

/// What one side of a connection does; the same roles run as client or as
/// server, so "either side first" is the same test with the roles swapped.
type Role = fn(TcpStream) -> Outcome;

/// What a role saw.
#[derive(Debug)]
struct Outcome {
    received: Vec<u8>,
    /// How the stream ended for this side: None = EOF.
    end_error: Option<ErrorKind>,
    /// Error of the first failing write after the end, if the role wrote.
    write_after_end: Option<ErrorKind>,
}

const REQUEST_LEN: usize = 300 * 1024;
const RESPONSE_LEN: usize = 2 * MIB;
const HELLO_LEN: usize = 1024;

fn request() -> Vec<u8> {
    payload(REQUEST_LEN, 0x11)
}

fn response() -> Vec<u8> {
    payload(RESPONSE_LEN, 0x22)
}

fn hello() -> Vec<u8> {
    payload(HELLO_LEN, 0x33)
}

/// Sends the request, shuts down its write side, reads the reply to EOF.
fn shut_write_then_read(mut s: TcpStream) -> Outcome {
    let deadline = Instant::now() + LIMIT;
    write_all_by(&mut s, &request(), deadline).expect("write request");
    s.shutdown(Shutdown::Write).expect("shutdown write");
    end_of(read_to_end_by(&mut s, LIMIT))
}

/// Reads the request to EOF, then keeps sending (64 KiB writes) and closes.
fn send_after_peer_shut(mut s: TcpStream) -> Outcome {
    let end = read_to_end_by(&mut s, LIMIT);
    let deadline = Instant::now() + LIMIT;
    for chunk in response().chunks(64 * 1024) {
        write_all_by(&mut s, chunk, deadline).expect("write after the peer's shutdown");
    }
    end_of(end)
}

/// Sends the request and closes at once (full close).
fn close_first(mut s: TcpStream) -> Outcome {
    write_all_by(&mut s, &request(), Instant::now() + LIMIT).expect("write request");
    Outcome {
        received: Vec::new(),
        end_error: None,
        write_after_end: None,
    }
}

/// Exchanges a hello, then closes with SO_LINGER 0: the peer gets a RST.
fn reset_first(mut s: TcpStream) -> Outcome {
    let deadline = Instant::now() + LIMIT;
    write_all_by(&mut s, &hello(), deadline).expect("write hello");
    let received = read_exact_by(&mut s, HELLO_LEN, deadline);
    reset_on_close(&s);
    drop(s);
    Outcome {
        received,
        end_error: None,
        write_after_end: None,
    }
}

/// Waits for the peer's end (EOF or reset) within END_LIMIT, then writes
/// until the dead connection refuses (also within END_LIMIT).
fn see_end_then_write(mut s: TcpStream) -> Outcome {
    let end = read_to_end_by(&mut s, END_LIMIT);
    let mut out = end_of(end);
    out.write_after_end = Some(write_until_refused(&mut s));
    out
}

/// Exchanges a hello, then does what `see_end_then_write` does.
fn hello_then_see_end(mut s: TcpStream) -> Outcome {
    let deadline = Instant::now() + LIMIT;
    let received = read_exact_by(&mut s, HELLO_LEN, deadline);
    write_all_by(&mut s, &hello(), deadline).expect("write hello");
    let mut out = see_end_then_write(s);
    out.received = [received, out.received].concat();
    out
}

fn end_of(r: Result<Vec<u8>, (Vec<u8>, std::io::Error)>) -> Outcome {
    let (received, end_error) = match r {
        Ok(got) => (got, None),
        Err((got, e)) => (got, Some(e.kind())),
    };
    Outcome {
        received,
        end_error,
        write_after_end: None,
    }
}

fn write_until_refused(s: &mut TcpStream) -> ErrorKind {
    let deadline = Instant::now() + END_LIMIT;
    let chunk = vec![0x77u8; 16 * 1024];
    loop {
        match write_all_by(s, &chunk, deadline) {
            Ok(()) => assert!(
                Instant::now() < deadline,
                "writes into a closed connection kept succeeding"
            ),
            Err(e) => return e.kind(),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Which side runs the first role.
#[derive(Debug, Clone, Copy)]
enum First {
    Client,
    Server,
}

/// Runs `first` on one side and `second` on the other, on every route,
/// with the client and then the server going first, and hands `check` a
/// label, the outcomes (first role, second role) and the bytes spliced.
fn endings(first: Role, second: Role, check: impl Fn(&str, &Outcome, &Outcome, u64)) {
    let s = Setup::new(NodeOptions::default());
    for route in ROUTES {
        for who in [First::Client, First::Server] {
            let (server_role, client_role) = match who {
                First::Client => (second, first),
                First::Server => (first, second),
            };
            let before = SpliceCounters::read(&s.node);
            let (addr, server) = serve_one(&s.a, s.any_port(), server_role);
            let (client, to) = s.client(route, addr.port());
            let client_out = client
                .run(move || client_role(connect(to)))
                .expect("entering the client pod");
            let server_out = server.join().expect("server role");
            let spliced = SpliceCounters::since(&s.node, &before).bytes_spliced;
            let what = format!("{route:?}, {who:?} first");
            let (a, b) = match who {
                First::Client => (&client_out, &server_out),
                First::Server => (&server_out, &client_out),
            };
            eprintln!(
                "{what}: first ended with {:?}, second with {:?} then write {:?}; {spliced} B spliced",
                a.end_error, b.end_error, b.write_after_end
            );
            check(&what, a, b, spliced);
        }
    }
    assert_no_leak(&s.node);
}

#[test]
fn half_close_either_side_first() {
    endings(
        shut_write_then_read,
        send_after_peer_shut,
        |what, a, b, spliced| {
            assert!(
                b.received == request(),
                "{what}: the request differs ({} B)",
                b.received.len()
            );
            assert_eq!(
                b.end_error, None,
                "{what}: the half-closed side did not end with EOF"
            );
            assert!(
                a.received == response(),
                "{what}: the response sent after the shutdown differs ({} B)",
                a.received.len()
            );
            assert_eq!(
                a.end_error, None,
                "{what}: the response did not end with EOF"
            );
            assert!(
                spliced >= (REQUEST_LEN + RESPONSE_LEN) as u64,
                "{what}: only {spliced} B spliced"
            );
        },
    );
}

#[test]
fn close_either_side_first() {
    endings(close_first, see_end_then_write, |what, _a, b, spliced| {
        assert!(
            b.received == request(),
            "{what}: bytes sent just before close differ ({} B)",
            b.received.len()
        );
        assert_eq!(b.end_error, None, "{what}: the close did not read as EOF");
        assert!(
            matches!(
                b.write_after_end,
                Some(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
            ),
            "{what}: writing to the closed peer ended with {:?}",
            b.write_after_end
        );
        assert!(
            spliced >= REQUEST_LEN as u64,
            "{what}: only {spliced} B spliced"
        );
    });
}

#[test]
fn reset_either_side_first() {
    endings(reset_first, hello_then_see_end, |what, a, b, spliced| {
        assert!(
            a.received == hello(),
            "{what}: hello to the resetting side differs"
        );
        assert!(
            b.received == hello(),
            "{what}: hello from the resetting side differs"
        );
        assert!(
            matches!(
                b.end_error,
                None | Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted)
            ),
            "{what}: the reset read as {:?}",
            b.end_error
        );
        assert!(
            matches!(
                b.write_after_end,
                Some(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
            ),
            "{what}: writing after the reset ended with {:?}",
            b.write_after_end
        );
        assert!(
            spliced >= 2 * HELLO_LEN as u64,
            "{what}: only {spliced} B spliced"
        );
    });
}
