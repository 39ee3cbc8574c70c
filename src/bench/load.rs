//! Load generators, run on threads inside the client pod's netns (threads
//! they start inherit the netns and the CPU pinning):
//! - ping-pong RTT on one connection,
//! - connection setup rate (connect + 64 B exchange + close, back to back),
//! - HTTP/1.1 at a fixed rate like fortio: `c` connections, uniform pacing,
//!   no catch-up (slots already missed are skipped and counted), latency
//!   measured from the intended send time,
//! - HTTP/1.1 closed loop (maximum request rate),
//! - bulk streams (bytes counted by the receiving sink).

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::error::{BenchError, Result};
use super::{http, net, servers};

/// Latencies are recorded in nanoseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos() as u64).clamp(1, 60_000_000_000);
    let _ = h.record(ns);
}

/// What one step of a workload measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Per-operation latency (ns): round trip, connection, or request.
    pub hist: Option<Histogram<u64>>,
    /// Operations completed (round trips, connections, requests).
    pub ops: u64,
    /// Bytes moved (bulk).
    pub bytes: u64,
    /// Wall time the operations took.
    pub elapsed: Duration,
    /// Fixed-rate slots skipped because the previous request was late.
    pub missed: u64,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::workload(what, e)
}

/// Ping-pong of `size`-byte messages on one connection for `dur`.
pub fn rtt(to: SocketAddr, size: usize, dur: Duration, cpu: Option<usize>) -> Result<Measured> {
    net::pin_thread(cpu).map_err(io_err("pinning"))?;
    let what = format!("ping-pong {size} B to {to}");
    let mut s = net::connect(to, Duration::from_secs(3)).map_err(io_err(&what))?;
    let msg = net::payload(size, size as u64);
    let mut back = vec![0u8; size];
    let h = histogram();
    // A few untimed exchanges: connection set up, splicing paired.
    for _ in 0..20 {
        let dl = Instant::now() + Duration::from_secs(3);
        net::write_all(&mut s, &msg, dl).map_err(io_err(&what))?;
        net::read_exact(&mut s, &mut back, dl).map_err(io_err(&what))?;
    }
    if back != msg {
        return Err(BenchError::workload(&what, "echo came back different"));
    }
    timed_ops(dur, h, |dl| {
        net::write_all(&mut s, &msg, dl).map_err(io_err(&what))?;
        net::read_exact(&mut s, &mut back, dl).map_err(io_err(&what))
    })
}

/// Runs `op` back to back for `dur`, timing each run into `h`; `op` gets
/// its own 3 s deadline.
fn timed_ops(
    dur: Duration,
    mut h: Histogram<u64>,
    mut op: impl FnMut(Instant) -> Result<()>,
) -> Result<Measured> {
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < dur {
        let t0 = Instant::now();
        op(t0 + Duration::from_secs(3))?;
        record(&mut h, t0.elapsed());
        ops += 1;
    }
    Ok(Measured {
        hist: Some(h),
        ops,
        bytes: 0,
        elapsed: start.elapsed(),
        missed: 0,
    })
}

/// New connections back to back for `dur`, each: connect, 64 B echo, close.
pub fn connect_rate(to: SocketAddr, dur: Duration, cpu: Option<usize>) -> Result<Measured> {
    net::pin_thread(cpu).map_err(io_err("pinning"))?;
    let what = format!("connect + 64 B exchange + close to {to}");
    let msg = net::payload(64, 64);
    let mut back = vec![0u8; 64];
    timed_ops(dur, histogram(), |dl| {
        let mut s = net::connect(to, Duration::from_secs(3)).map_err(io_err(&what))?;
        net::write_all(&mut s, &msg, dl).map_err(io_err(&what))?;
        net::read_exact(&mut s, &mut back, dl).map_err(io_err(&what))
    })
}

/// One HTTP connection's share of a fixed-rate or closed-loop run.
fn http_conn(
    to: SocketAddr,
    dur: Duration,
    pace: Option<(Duration, Duration)>,
    cpu: Option<usize>,
) -> Result<Measured> {
    net::pin_thread(cpu).map_err(io_err("pinning"))?;
    net::fine_timer_slack();
    let what = format!("HTTP/1.1 POST 1 KiB to {to}");
    let mut s = net::connect(to, Duration::from_secs(3)).map_err(io_err(&what))?;
    let req = http::request(&net::payload(1024, 11));
    let mut conn = http::Conn::new();
    let mut exchange = |s: &mut std::net::TcpStream| -> Result<()> {
        let dl = Instant::now() + Duration::from_secs(5);
        net::write_all(s, &req, dl).map_err(io_err(&what))?;
        match conn.read_message(s, dl).map_err(io_err(&what))? {
            200 => Ok(()),
            code => Err(BenchError::workload(&what, format!("HTTP status {code}"))),
        }
    };
    // One untimed request: connection set up through every hop.
    exchange(&mut s)?;
    let mut h = histogram();
    let (mut ops, mut missed) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + dur;
    match pace {
        None => {
            while Instant::now() < end {
                let t0 = Instant::now();
                exchange(&mut s)?;
                record(&mut h, t0.elapsed());
                ops += 1;
            }
        }
        Some((period, offset)) => {
            (ops, missed) = paced(start + offset, end, period, &mut h, || exchange(&mut s))?;
        }
    }
    Ok(Measured {
        hist: Some(h),
        ops,
        bytes: 0,
        elapsed: start.elapsed(),
        missed,
    })
}

/// Runs `op` at `first`, `first + period`, ... until `end`, each timed
/// from its intended start (a late start counts as latency) into `h`; no
/// catch-up: slots that already passed are skipped. (ops, skipped slots).
fn paced(
    first: Instant,
    end: Instant,
    period: Duration,
    h: &mut Histogram<u64>,
    mut op: impl FnMut() -> Result<()>,
) -> Result<(u64, u64)> {
    let (mut ops, mut missed, mut k) = (0u64, 0u64, 0u64);
    loop {
        let intended = first + period * k as u32;
        if intended >= end {
            return Ok((ops, missed));
        }
        let now = Instant::now();
        if now < intended {
            std::thread::sleep(intended - now);
        }
        super::interrupt::check()?;
        op()?;
        record(h, intended.elapsed());
        ops += 1;
        let next = ((Instant::now() - first).as_nanos() / period.as_nanos()) as u64;
        let next = next.max(k + 1);
        missed += next - (k + 1);
        k = next;
    }
}

/// One worker of the connection-per-request workload: at its slots,
/// connect, POST 1 KiB with `Connection: close`, read the response, close.
fn http_close_worker(
    to: SocketAddr,
    dur: Duration,
    period: Duration,
    offset: Duration,
    cpu: Option<usize>,
) -> Result<Measured> {
    net::pin_thread(cpu).map_err(io_err("pinning"))?;
    net::fine_timer_slack();
    let what = format!("HTTP/1.1 POST 1 KiB to {to}, one connection per request");
    let req = http::request_closing(&net::payload(1024, 11));
    let mut h = histogram();
    let start = Instant::now();
    let (ops, missed) = paced(start + offset, start + dur, period, &mut h, || {
        let dl = Instant::now() + Duration::from_secs(5);
        let mut s = net::connect(to, Duration::from_secs(3)).map_err(io_err(&what))?;
        net::write_all(&mut s, &req, dl).map_err(io_err(&what))?;
        match http::Conn::new()
            .read_message(&mut s, dl)
            .map_err(io_err(&what))?
        {
            200 => Ok(()),
            code => Err(BenchError::workload(&what, format!("HTTP status {code}"))),
        }
    })?;
    Ok(Measured {
        hist: Some(h),
        ops,
        bytes: 0,
        elapsed: start.elapsed(),
        missed,
    })
}

/// HTTP at `qps` with a new connection per request, paced over `workers`
/// threads (each one request in flight at most).
pub fn http_close_load(
    to: SocketAddr,
    qps: u32,
    workers: u32,
    dur: Duration,
    cpu: Option<usize>,
) -> Result<Measured> {
    let period = Duration::from_nanos(1_000_000_000 * u64::from(workers) / u64::from(qps));
    let parts: Vec<Result<Measured>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..workers)
            .map(|i| {
                sc.spawn(move || http_close_worker(to, dur, period, period * i / workers, cpu))
            })
            .collect();
        joined(hs)
    });
    merge(parts)
}

/// Every HTTP client thread's result; a panicked thread is an error.
fn joined(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<Measured>>>,
) -> Vec<Result<Measured>> {
    handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(BenchError::workload(
                    "HTTP load",
                    "a client thread panicked",
                ))
            })
        })
        .collect()
}

fn merge(parts: Vec<Result<Measured>>) -> Result<Measured> {
    let mut out = Measured {
        hist: Some(histogram()),
        ops: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        missed: 0,
    };
    for p in parts {
        let p = p?;
        if let (Some(a), Some(b)) = (out.hist.as_mut(), p.hist.as_ref()) {
            let _ = a.add(b);
        }
        out.ops += p.ops;
        out.bytes += p.bytes;
        out.missed += p.missed;
        out.elapsed = out.elapsed.max(p.elapsed);
    }
    Ok(out)
}

/// HTTP at `qps` over `conns` connections (uniform pacing), or closed loop
/// when `qps` is None.
pub fn http_load(
    to: SocketAddr,
    qps: Option<u32>,
    conns: u32,
    dur: Duration,
    cpu: Option<usize>,
) -> Result<Measured> {
    let parts: Vec<Result<Measured>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                let pace = qps.map(|q| {
                    // Each connection sends every conns/qps seconds; the
                    // connections are spread evenly over one period.
                    let period =
                        Duration::from_nanos(1_000_000_000 * u64::from(conns) / u64::from(q));
                    (period, period * i / conns)
                });
                sc.spawn(move || http_conn(to, dur, pace, cpu))
            })
            .collect();
        joined(handles)
    });
    merge(parts)
}

fn bulk_stream(to: SocketAddr, dur: Duration, cpu: Option<usize>) -> Result<Measured> {
    net::pin_thread(cpu).map_err(io_err("pinning"))?;
    let what = format!("bulk stream to {to}");
    let mut s = net::connect(to, Duration::from_secs(3)).map_err(io_err(&what))?;
    let chunk = net::payload(128 * 1024, 5);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        net::write_all(&mut s, &chunk, Instant::now() + Duration::from_secs(5))
            .map_err(io_err(&what))?;
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write).map_err(io_err(&what))?;
    let mut count = [0u8; 8];
    net::read_exact(&mut s, &mut count, Instant::now() + Duration::from_secs(10))
        .map_err(io_err(&what))?;
    let got = u64::from_le_bytes(count);
    if got != sent {
        return Err(BenchError::workload(
            &what,
            format!(
                "the sink received {got} bytes but the client wrote {sent}: the path lost or duplicated data"
            ),
        ));
    }
    Ok(Measured {
        hist: None,
        ops: 1,
        bytes: got,
        elapsed: start.elapsed(),
        missed: 0,
    })
}

/// `streams` parallel bulk streams for `dur`.
pub fn bulk(to: SocketAddr, streams: u32, dur: Duration, cpu: Option<usize>) -> Result<Measured> {
    let parts: Vec<Result<Measured>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..streams)
            .map(|_| sc.spawn(move || bulk_stream(to, dur, cpu)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::workload("bulk", "a stream thread panicked"))
                })
            })
            .collect()
    });
    let mut m = merge(parts)?;
    m.hist = None;
    Ok(m)
}

/// The port of the server app a workload talks to.
pub fn port_for(w: super::Workload) -> u16 {
    use super::Workload::*;
    match w {
        Rtt64 | Rtt1k | Rtt16k | Connect => servers::ECHO_PORT,
        Http | HttpMax | Http2 | Http16 | Http64 | HttpClose => servers::HTTP_PORT,
        Bulk1 | Bulk4 => servers::SINK_PORT,
    }
}
