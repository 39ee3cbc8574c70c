//! Bytes a socket sent through TCP before its peer could be spliced (the
//! peer was not yet established, or not yet paired across a REDIRECT) must
//! not be overtaken by bytes spliced later: the reader drains the psock queue
//! before the TCP receive queue, so splicing may only start once nothing of
//! the connection is left on the TCP path.
//!
//! The window is forced: an iptables rule in the client pod drops the bare
//! ACK that completes the handshake, so the client is established (and
//! sends its first message through TCP, its peer not being in the sockhash)
//! while the server is not; the first message's segment then completes the
//! server's handshake. The second message, sent once both are established,
//! must still arrive after the first, which the server has not read yet;
//! once the server has read both, a third message is spliced.
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshlane::loader::VerdictRemedy;
use meshlane::sim::NodeOptions;

const PORT: u16 = 9000;

fn first_message_is_not_overtaken(remedy: VerdictRemedy) {
    let (node, pods) = accelerated_node(
        NodeOptions {
            verdict_remedy: remedy,
            ..NodeOptions::default()
        },
        &["client", "server"],
    );
    let (client, server) = (&pods[0], &pods[1]);
    // The handshake's bare ACK (no payload: 52 bytes with timestamps).
    client
        .exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            &PORT.to_string(),
            "--tcp-flags",
            "ALL",
            "ACK",
            "-m",
            "length",
            "--length",
            "52",
            "-j",
            "DROP",
        ])
        .expect("dropping the handshake ACK");
    let first = payload(1000, 1);
    let second = payload(1000, 2);
    let third = payload(1000, 3);
    let (bound, reader) = serve_one(
        server,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        move |mut s| {
            // Read only after the client has sent both messages.
            std::thread::sleep(Duration::from_millis(300));
            let mut got = vec![0u8; 3000];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut n = 0;
            while n < got.len() {
                match s.read(&mut got[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("reading after {n} bytes: {e}"),
                }
            }
            got.truncate(n);
            got
        },
    );
    let to = SocketAddr::new(server.ip4.into(), bound.port());
    let c0 = SpliceCounters::read(&node);
    let (f, s2, s3) = (first.clone(), second.clone(), third.clone());
    let writer = client
        .thread(move || {
            let mut s = connect(to);
            s.write_all(&f).expect("first message");
            // The first message's segment completes the server's handshake.
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&s2).expect("second message");
            // The reader has read both by now: nothing is left on TCP.
            std::thread::sleep(Duration::from_millis(500));
            s.write_all(&s3).expect("third message");
            std::thread::sleep(Duration::from_millis(300));
        })
        .expect("client thread");
    let got = reader.join().expect("reader");
    writer.join().expect("writer");
    let d = SpliceCounters::since(&node, &c0);
    let mut want = first;
    want.extend_from_slice(&second);
    want.extend_from_slice(&third);
    assert_eq!(got.len(), want.len(), "{remedy:?}: bytes lost or added");
    assert!(
        got == want,
        "{remedy:?}: the second message overtook the first (got second first: {})",
        got[..1000] == want[1000..]
    );
    // The window really was forced: the first message took TCP.
    assert!(
        d.messages_fallback >= 1,
        "{remedy:?}: the first message was not sent through TCP: {d:?}"
    );
    eprintln!("{remedy:?}: {d:?}");
    // Held only until drained: the third message is spliced.
    assert!(
        d.bytes_spliced >= 1000,
        "{remedy:?}: splicing never started after the drain: {d:?}"
    );
}

#[test]
fn sent_before_peer_established_remedy_on() {
    if skip_if_verdict_on_refused() {
        return;
    }
    first_message_is_not_overtaken(VerdictRemedy::On);
}

#[test]
fn sent_before_peer_established_remedy_off() {
    first_message_is_not_overtaken(VerdictRemedy::Off);
}
