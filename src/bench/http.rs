//! Just enough HTTP/1.1 for the benchmark: messages with a Content-Length
//! body on keep-alive connections, read incrementally so a partial message
//! survives a read timeout. Used by the server and the load generator.

use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::time::Instant;

use super::net;

/// Largest header block accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A connection's receive buffer.
pub struct Conn {
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Default for Conn {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// (header length, content length) of a complete header block in `b`.
fn parse_head(b: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        if b.len() > MAX_HEAD {
            return Err(bad("HTTP header block too large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..end]).map_err(|_| bad("HTTP header not UTF-8"))?;
    let mut len = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            }
        }
    }
    Ok(Some((end + 4, len)))
}

impl Conn {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(8192),
            chunk: vec![0u8; 64 * 1024],
        }
    }

    /// Reads one whole message; returns its first line's status code for a
    /// response (0 for a request). Bytes of the next message stay buffered.
    pub fn read_message(&mut self, s: &mut TcpStream, deadline: Instant) -> io::Result<u16> {
        loop {
            if let Some((head, body)) = parse_head(&self.buf)? {
                if self.buf.len() >= head + body {
                    let status = std::str::from_utf8(&self.buf[..head])
                        .ok()
                        .and_then(|h| h.strip_prefix("HTTP/1.1 "))
                        .and_then(|r| r.get(..3))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    self.buf.drain(..head + body);
                    return Ok(status);
                }
            }
            let n = net::read_some(s, &mut self.chunk, deadline)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed mid-message",
                ));
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// A POST request with `body`.
pub fn request(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: server\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A POST request with `body` that asks the server to close afterwards.
pub fn request_closing(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: server\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n").unwrap(), None);
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap(),
            Some((38, 3))
        );
        assert!(parse_head(b"X\r\ncontent-length: x\r\n\r\n").is_err());
    }
}
