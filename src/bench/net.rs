//! Socket and thread helpers shared by the servers and load generators:
//! reads and writes that behave like an event-driven app (a spurious EAGAIN,
//! which a sockhash socket can return even in blocking mode, means "poll and
//! try again"), deadlines and the stop flag honoured everywhere, TCP_NODELAY,
//! and pinning the calling thread to one CPU.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::interrupt;

/// How long one blocking call may wait before the loop re-checks deadline
/// and stop flag.
const SLICE: Duration = Duration::from_millis(200);

/// Waits up to `ms` for `events` on `fd` (interrupted waits return early).
pub fn poll_fd(fd: i32, events: i16, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn expired(deadline: Instant) -> io::Result<()> {
    if interrupt::requested() {
        return Err(io::Error::new(ErrorKind::Interrupted, "interrupted"));
    }
    if Instant::now() >= deadline {
        return Err(io::Error::new(
            ErrorKind::TimedOut,
            "stalled: no progress before the deadline",
        ));
    }
    Ok(())
}

/// Sets the socket options every benchmark socket uses.
pub fn prepare(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(SLICE))?;
    s.set_write_timeout(Some(SLICE))?;
    Ok(())
}

pub fn connect(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, timeout)?;
    prepare(&s)?;
    Ok(s)
}

/// Some bytes (0 = EOF), waiting through spurious EAGAINs until `deadline`.
pub fn read_some(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if retry(&e) => {
                expired(deadline)?;
                poll_fd(s.as_raw_fd(), libc::POLLIN, 20);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exactly `buf.len()` bytes; EOF first is an error.
pub fn read_exact(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(s, &mut buf[got..], deadline)? {
            0 => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("connection closed after {got} of {} bytes", buf.len()),
                ))
            }
            n => got += n,
        }
    }
    Ok(())
}

pub fn write_all(s: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "peer closed")),
            Ok(n) => buf = &buf[n..],
            Err(e) if retry(&e) => {
                expired(deadline)?;
                poll_fd(s.as_raw_fd(), libc::POLLOUT, 20);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Pins the calling thread (and the threads and processes it starts later)
/// to `cpu`.
pub fn pin_thread(cpu: Option<usize>) -> io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Finest timer slack for the calling thread, so paced sleeps wake on time.
pub fn fine_timer_slack() {
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Deterministic payload bytes for a seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
