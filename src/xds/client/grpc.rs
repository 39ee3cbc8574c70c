//! The ADS call as plain gRPC framing over a tonic [`Channel`], so that
//! memory follows what is being applied rather than the largest message
//! ever received. tonic's generated client decodes through a receive
//! buffer that keeps the capacity of the largest message of its stream
//! for the stream's life (the mesh's EDS, 2.9 MB at 10,000 services), so
//! every identity's idle stream pinned that much; and it decodes each
//! response into owned protobuf, two allocations per resource.
//!
//! Here each response is received into a buffer of exactly its size
//! ([`MessageBuf`]: anonymous memory of its own for large messages, given
//! back to the kernel when dropped, so neither an idle stream nor the
//! allocator keeps it), read in place ([`super::wire`]) and dropped once
//! applied. Requests are encoded one frame each. No compression is asked
//! for, so a compressed message is a protocol error.

use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::http;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::ServiceExt;

const PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// gRPC's message prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;
/// Messages at least this large get anonymous memory of their own
/// (glibc's default mmap threshold, fixed: glibc raises its own after
/// each large free, and would then keep such buffers in the heap).
const OWN_MAPPING: usize = 128 << 10;

/// Opens the ADS stream: `requests` (each one message made by [`frame`])
/// are sent as they come; the stream's request side ends when their
/// sender is dropped.
pub async fn open(
    channel: Channel,
    requests: mpsc::Receiver<Bytes>,
    bearer: Option<MetadataValue<Ascii>>,
    max_message: usize,
) -> Result<Responses, Status> {
    let frames =
        ReceiverStream::new(requests).map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
    let body = tonic::body::Body::new(StreamBody::new(frames));
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(PATH)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(b) = bearer {
        let value = http::HeaderValue::from_bytes(b.as_encoded_bytes())
            .map_err(|_| Status::invalid_argument("bearer token is not a header value"))?;
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let request = builder
        .body(body)
        .map_err(|e| Status::internal(format!("ADS request: {e}")))?;
    let response = channel
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let (parts, body) = response.into_parts();
    // A trailers-only answer (the call refused at once).
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Err(match status.code() {
            Code::Ok => Status::unavailable("ADS call ended before any response"),
            _ => status,
        });
    }
    if parts.status != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "ADS call answered HTTP {}",
            parts.status
        )));
    }
    if parts
        .headers
        .get("grpc-encoding")
        .is_some_and(|v| v != "identity")
    {
        return Err(Status::unimplemented(
            "ADS responses are compressed; no compression was offered",
        ));
    }
    Ok(Responses {
        _channel: channel,
        body,
        framer: Framer::new(max_message),
        ready: VecDeque::new(),
    })
}

/// One gRPC message of `len` bytes, written by `encode`.
pub fn frame(len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut b = Vec::with_capacity(PREFIX + len);
    b.push(0);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    encode(&mut b);
    debug_assert_eq!(b.len(), PREFIX + len, "encoded length");
    Bytes::from(b)
}

/// The response side of the stream.
pub struct Responses {
    /// The connection is kept for the stream's life.
    _channel: Channel,
    body: tonic::body::Body,
    framer: Framer,
    ready: VecDeque<MessageBuf>,
}

impl Responses {
    /// The next response's bytes; None when the server ended the stream
    /// with OK; the status it ended with otherwise.
    pub async fn next(&mut self) -> Result<Option<MessageBuf>, Status> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Some(m));
            }
            let Some(frame) = self.body.frame().await else {
                return match self.framer.mid_message() {
                    true => Err(Status::internal("ADS stream ended inside a message")),
                    false => Ok(None),
                };
            };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => self.framer.push(data, &mut self.ready)?,
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    return match Status::from_header_map(&trailers) {
                        Some(s) if s.code() != Code::Ok => Err(s),
                        _ => Ok(None),
                    };
                }
            }
        }
    }
}

/// Splits received data into gRPC messages.
#[derive(Debug)]
struct Framer {
    max_message: usize,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// The message being received.
    body: Option<MessageBuf>,
}

impl Framer {
    fn new(max_message: usize) -> Self {
        Self {
            max_message,
            prefix: [0; PREFIX],
            prefix_len: 0,
            body: None,
        }
    }

    fn mid_message(&self) -> bool {
        self.prefix_len > 0 || self.body.is_some()
    }

    /// Takes `data`, queueing each message it completes.
    fn push(&mut self, mut data: Bytes, out: &mut VecDeque<MessageBuf>) -> Result<(), Status> {
        while data.has_remaining() {
            if self.body.is_none() {
                let n = (PREFIX - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
                self.prefix_len += n;
                data.advance(n);
                if self.prefix_len < PREFIX {
                    return Ok(());
                }
                self.prefix_len = 0;
                self.body = Some(self.start()?);
            }
            if let Some(body) = &mut self.body {
                let n = body.missing().min(data.len());
                body.fill(&data[..n]);
                data.advance(n);
                if body.missing() == 0 {
                    out.extend(self.body.take());
                }
            }
        }
        Ok(())
    }

    /// The buffer for the message whose prefix was just read.
    fn start(&self) -> Result<MessageBuf, Status> {
        if self.prefix[0] != 0 {
            return Err(Status::internal(
                "ADS response is compressed; no compression was offered",
            ));
        }
        let len = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "ADS response of {len} bytes, the limit is {} bytes",
                self.max_message
            )));
        }
        MessageBuf::with_len(len)
            .map_err(|e| Status::resource_exhausted(format!("ADS response of {len} bytes: {e}")))
    }
}

/// One received message: heap memory when small, else an anonymous
/// mapping of its own, unmapped when dropped.
#[derive(Debug)]
pub struct MessageBuf {
    mem: Memory,
    filled: usize,
}

#[derive(Debug)]
enum Memory {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut, usize),
}

impl MessageBuf {
    fn with_len(len: usize) -> std::io::Result<Self> {
        let mem = if len >= OWN_MAPPING {
            Memory::Mapped(memmap2::MmapMut::map_anon(len)?, len)
        } else {
            Memory::Heap(Vec::with_capacity(len))
        };
        let filled = 0;
        Ok(Self { mem, filled })
    }

    fn len(&self) -> usize {
        match &self.mem {
            Memory::Heap(v) => v.capacity(),
            Memory::Mapped(_, len) => *len,
        }
    }

    fn missing(&self) -> usize {
        self.len() - self.filled
    }

    fn fill(&mut self, data: &[u8]) {
        match &mut self.mem {
            Memory::Heap(v) => v.extend_from_slice(data),
            Memory::Mapped(m, _) => m[self.filled..self.filled + data.len()].copy_from_slice(data),
        }
        self.filled += data.len();
    }
}

impl std::ops::Deref for MessageBuf {
    type Target = [u8];

    /// The message's bytes (those received so far).
    fn deref(&self) -> &[u8] {
        match &self.mem {
            Memory::Heap(v) => v,
            Memory::Mapped(m, _) => &m[..self.filled],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.push(0);
            out.extend((m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    fn split_every(wire: &[u8], step: usize, max: usize) -> Result<Vec<Vec<u8>>, Status> {
        let mut f = Framer::new(max);
        let mut out = VecDeque::new();
        for chunk in wire.chunks(step) {
            f.push(Bytes::copy_from_slice(chunk), &mut out)?;
        }
        assert!(!f.mid_message());
        Ok(out.into_iter().map(|m| m.to_vec()).collect())
    }

    #[test]
    fn messages_come_out_whole_however_the_data_is_split() {
        let big = vec![7u8; OWN_MAPPING + 3];
        let msgs: [&[u8]; 4] = [b"abc", b"", &big, b"z"];
        let wire = framed(&msgs);
        for step in [1, 2, 5, 6, 4096, wire.len()] {
            let got = split_every(&wire, step, 1 << 20).unwrap();
            assert_eq!(got.len(), 4, "step {step}");
            for (g, m) in got.iter().zip(msgs) {
                assert_eq!(g.as_slice(), m, "step {step}");
            }
        }
        let m = MessageBuf::with_len(OWN_MAPPING).unwrap();
        assert!(matches!(m.mem, Memory::Mapped(..)), "large: own mapping");
        assert!(matches!(
            MessageBuf::with_len(10).unwrap().mem,
            Memory::Heap(_)
        ));
    }

    #[test]
    fn oversized_compressed_and_cut_messages_are_refused() {
        let wire = framed(&[&[1u8; 100]]);
        let e = split_every(&wire, 7, 99).unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        assert!(e.message().contains("100 bytes"), "{e}");
        let mut compressed = wire.clone();
        compressed[0] = 1;
        assert_eq!(
            split_every(&compressed, 7, 1000).unwrap_err().code(),
            Code::Internal
        );
        let mut f = Framer::new(1000);
        let mut out = VecDeque::new();
        f.push(Bytes::copy_from_slice(&wire[..50]), &mut out)
            .unwrap();
        assert!(out.is_empty() && f.mid_message());
    }

    #[test]
    fn a_request_is_one_message() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use prost::Message;
        let r = DiscoveryRequest {
            version_info: "1".into(),
            resource_names: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let b = frame(r.encoded_len(), |b| r.encode_raw(b));
        let mut f = Framer::new(1 << 20);
        let mut out = VecDeque::new();
        f.push(b, &mut out).unwrap();
        let m = out.pop_front().unwrap();
        assert_eq!(DiscoveryRequest::decode(&*m).unwrap(), r);
    }
}
