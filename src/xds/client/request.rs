//! One `DiscoveryRequest` as the client sends it (pure): the fields of
//! the protobuf, with the subscribed names shared with the subscription
//! instead of copied. A state-of-the-world ACK repeats every subscribed
//! name (10,000 EDS names at mesh scale), so building a
//! `DiscoveryRequest` per ACK made 10,000 strings per identity per EDS
//! push; [`Request::encode`] writes the same bytes prost would, straight
//! from the shared names.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use super::protocol::XdsType;

/// The names of a subscription, shared by its requests.
pub type Names = Arc<BTreeSet<Arc<str>>>;

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub type_: XdsType,
    pub version_info: String,
    /// Sent on the first request of a stream only.
    pub node: Option<Node>,
    pub resource_names: Names,
    pub response_nonce: String,
    /// Set on a NACK.
    pub error_detail: Option<Status>,
}

/// Field numbers of `DiscoveryRequest`.
const VERSION_INFO: u32 = 1;
const NODE: u32 = 2;
const RESOURCE_NAMES: u32 = 3;
const TYPE_URL: u32 = 4;
const RESPONSE_NONCE: u32 = 5;
const ERROR_DETAIL: u32 = 6;
const LEN: u32 = 2;

fn varint_len(v: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A length-delimited field's size on the wire (key, length, body).
fn field_len(tag: u32, body: usize) -> usize {
    varint_len(u64::from(tag << 3 | LEN)) + varint_len(body as u64) + body
}

fn put_field(tag: u32, body: &[u8], buf: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | LEN), buf);
    put_varint(body.len() as u64, buf);
    buf.extend_from_slice(body);
}

fn put_message<M: Message>(tag: u32, m: &M, buf: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | LEN), buf);
    put_varint(m.encoded_len() as u64, buf);
    m.encode_raw(buf);
}

/// A singular string: absent when empty (proto3).
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

impl Request {
    /// The protobuf (tests, and whoever wants it decoded).
    pub fn to_proto(&self) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version_info.clone(),
            node: self.node.clone(),
            resource_names: self.names(),
            type_url: self.type_.type_url(),
            response_nonce: self.response_nonce.clone(),
            error_detail: self.error_detail.clone(),
            ..Default::default()
        }
    }

    /// The subscribed names, copied.
    pub fn names(&self) -> Vec<String> {
        self.resource_names.iter().map(|n| n.to_string()).collect()
    }

    pub fn encoded_len(&self) -> usize {
        let type_url = self.type_.type_url();
        string_len(VERSION_INFO, &self.version_info)
            + self
                .node
                .as_ref()
                .map_or(0, |n| field_len(NODE, n.encoded_len()))
            + self
                .resource_names
                .iter()
                .map(|n| field_len(RESOURCE_NAMES, n.len()))
                .sum::<usize>()
            + string_len(TYPE_URL, &type_url)
            + string_len(RESPONSE_NONCE, &self.response_nonce)
            + self
                .error_detail
                .as_ref()
                .map_or(0, |s| field_len(ERROR_DETAIL, s.encoded_len()))
    }

    /// Appends the encoded `DiscoveryRequest` (fields in number order, as
    /// prost writes them).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let string = |tag, s: &str, buf: &mut Vec<u8>| {
            if !s.is_empty() {
                put_field(tag, s.as_bytes(), buf);
            }
        };
        string(VERSION_INFO, &self.version_info, buf);
        if let Some(n) = &self.node {
            put_message(NODE, n, buf);
        }
        for n in self.resource_names.iter() {
            put_field(RESOURCE_NAMES, n.as_bytes(), buf);
        }
        string(TYPE_URL, &self.type_.type_url(), buf);
        string(RESPONSE_NONCE, &self.response_nonce, buf);
        if let Some(s) = &self.error_detail {
            put_message(ERROR_DETAIL, s, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_bytes_prost_would() {
        let names: Names = Arc::new(
            ["outbound|80||a.svc", "", &"x".repeat(300)]
                .into_iter()
                .map(Arc::from)
                .collect(),
        );
        let full = Request {
            type_: XdsType::Endpoint,
            version_info: "2026-11-30T12:00:00Z/7".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: names,
            response_nonce: "n".into(),
            error_detail: Some(Status {
                code: 3,
                message: "cluster x: bad".into(),
                details: vec![],
            }),
        };
        let empty = Request {
            type_: XdsType::Cluster,
            version_info: String::new(),
            node: None,
            resource_names: Names::default(),
            response_nonce: String::new(),
            error_detail: None,
        };
        for r in [full, empty] {
            let mut got = Vec::new();
            r.encode(&mut got);
            let want = r.to_proto().encode_to_vec();
            assert_eq!(got, want);
            assert_eq!(r.encoded_len(), want.len());
            assert_eq!(
                DiscoveryRequest::decode(got.as_slice()).unwrap(),
                r.to_proto()
            );
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(v, &mut b);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
